//! The live dashboard in a real headless Chromium: after traffic, the rendered page lists
//! the paths with their figures, flags the slow and the different ones, and shows the
//! mismatches grouped by signature; with a candidate and its baseline, the verdict view
//! shows the overall state, each row's state, flags, ratio interval, noise learned and its
//! sparklines as `/api/verdict` gives them.
//!
//! Chromium is found at `$CHROMIUM`, `/usr/bin/chromium` or on the PATH; `.ci/run`
//! installs it. Without it the test fails under CI (`CI` set) and is reported as skipped
//! on a developer machine.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use teeproxy_tests::*;

/// Chromium, or `None` (the test then reports itself skipped) on a developer machine
/// without it; under CI it must be there.
fn chromium_or_skip() -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium (.ci/run does)"
        );
        eprintln!("skipped: no chromium on this machine");
    }
    found
}

fn chromium() -> Option<PathBuf> {
    find_program(
        "chromium",
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    )
}

/// Loads `url` in headless Chromium, lets its scripts run, returns the rendered DOM.
fn rendered_dom(browser: &PathBuf, url: &str) -> String {
    let profile = std::env::temp_dir().join(format!("teeproxy-chromium-{}", std::process::id()));
    // Under coreutils' `timeout`: a browser that hangs fails this test instead of the run.
    let out = Command::new("timeout")
        .args(["--kill-after=5", "60"])
        .arg(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `<tr>` of a path in the rendered table.
fn row<'a>(dom: &'a str, path: &str) -> &'a str {
    let start = dom
        .find(&format!("data-path=\"{path}\""))
        .unwrap_or_else(|| panic!("no row for {path} in:\n{dom}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

fn flags(row: &str) -> &str {
    let at = row.find("data-flags=\"").expect("flags attribute") + 12;
    &row[at..at + row[at..].find('"').expect("closing quote")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_dashboard_tells_which_path_is_slower_or_different() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    let base = Duration::from_millis(5);
    let p = FakeUpstream::builder()
        .delay(base)
        .header("content-type", "application/json")
        .body("{\"ok\":true}")
        .start()
        .await;
    let c = FakeUpstream::builder()
        .delay(base)
        .delay_on("/slow", Duration::from_millis(40))
        .status_on("/broken", 500)
        .header("content-type", "application/json")
        .body("{\"ok\":true}")
        .start()
        .await;
    let proxy = TestProxy::start(&shadow_yaml(&p.url(), &c.url(), "", "")).await;
    // 60 requests per path: past the verdict's `min_pairs` (50), which the flags need.
    for _ in 0..60 {
        for path in ["/slow", "/ok", "/broken"] {
            assert_eq!(get(&proxy.url(path)).await.0, 200);
        }
    }
    assert_eventually!(c.count() == 180);
    assert_eventually!(
        ShadowCounts::from_metrics(&proxy.metrics().await, "all", "candidate").balanced()
    );
    assert_eventually!(
        admin_json(&proxy, "/api/paths").await["paths"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["compared"] == 60)),
        "every comparison done"
    );

    // A shadow paused at runtime shows as paused, with its runtime change.
    let (status, _) = admin_post(
        proxy.admin,
        "/api/shadows/all/candidate",
        r#"{"paused": true}"#,
        None,
    )
    .await;
    assert_eq!(status, 200);

    let url = format!("http://{}/", proxy.admin);
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&browser, &url))
        .await
        .unwrap();
    let table = &dom[dom.find("id=\"paths-body\"").expect("table body")..];
    let table = &table[..table.find("</tbody>").expect("end of table")];
    assert!(
        !table.contains("no traffic yet"),
        "the table was filled by the page's script:\n{table}"
    );
    let slow = row(&dom, "/slow");
    assert!(flags(slow).contains("slower"), "{slow}");
    assert!(!flags(slow).contains("different"), "{slow}");
    let broken = row(&dom, "/broken");
    // The flags are the verdict's: a shadow that fails is flagged `errors`, and its
    // failures are not also counted as differences.
    assert_eq!(flags(broken), "errors", "{broken}");
    assert!(
        broken.contains("100.0 %</td>"),
        "every /broken answer differed: {broken}"
    );
    let ratio = slow
        .split("class=\"ratio-p50 bad\">")
        .nth(1)
        .and_then(|r| r.split('×').next())
        .and_then(|r| r.parse::<f64>().ok());
    assert!(
        ratio.is_some_and(|r| r > 3.0),
        "the /slow ratio is shown and marked: {slow}"
    );
    let ok = row(&dom, "/ok");
    assert_eq!(flags(ok), "", "{ok}");
    assert!(ok.contains("<td>60</td>"), "request count shown: {ok}");
    assert!(
        dom.contains("id=\"sum-paths\">3<"),
        "three paths in the summary"
    );
    assert!(dom.contains("status mismatch"), "mismatch groups rendered");
    assert!(
        dom.contains("GET /broken"),
        "the group's example names its request"
    );
    // The sixty /broken mismatches are one group: one signature, counted, with times.
    let group = dom
        .find("class=\"mismatch-group\" data-route=\"all\" data-path=\"/broken\"")
        .map(|at| &dom[at..at + dom[at..].find("</li>").expect("end of group")])
        .unwrap_or_else(|| panic!("no /broken group in:\n{dom}"));
    assert!(
        group.contains("data-count=\"60\"") && group.contains("60×"),
        "{group}"
    );
    assert!(group.contains("data-fields=\"status\""), "{group}");
    assert!(
        group.contains("first seen") && group.contains("last seen"),
        "{group}"
    );
    assert_eq!(
        // (The page's script holds the template, with `${...}` in place of "all".)
        dom.matches("class=\"mismatch-group\" data-route=\"all\"")
            .count(),
        1,
        "only /broken differs"
    );
    let shadow = dom
        .find("data-shadow=\"all/candidate\"")
        .map(|at| &dom[at..at + dom[at..].find("</tr>").expect("end of row")])
        .unwrap_or_else(|| panic!("no shadow row in:\n{dom}"));
    assert!(
        shadow.contains("class=\"shadow-paused\"") && shadow.contains("<strong>paused</strong>"),
        "{shadow}"
    );
    assert!(shadow.contains("set at runtime"), "{shadow}");
}

/// The `<tr>` of a verdict row, found by its path and shadow.
fn verdict_row<'a>(dom: &'a str, path: &str, shadow: &str) -> &'a str {
    let path_attr = format!("data-verdict-path=\"{path}\"");
    let shadow_attr = format!("data-verdict-shadow=\"{shadow}\"");
    let mut from = 0;
    while let Some(at) = dom[from..].find("<tr ") {
        let start = from + at;
        let head_end = start + dom[start..].find('>').expect("end of tag");
        let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
        let head = &dom[start..head_end];
        if head.contains(&path_attr) && head.contains(&shadow_attr) {
            return &dom[start..end];
        }
        from = head_end;
    }
    panic!("no verdict row for {path} / {shadow} in:\n{dom}")
}

/// The value of attribute `name` in the first tag of `html` that has it.
fn attr<'a>(html: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    let at = html
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + key.len();
    &html[at..at + html[at..].find('"').expect("closing quote")]
}

/// The points plotted by the `<path class="line {leg}">` lines of the chart `which`
/// (`p50`, `p99`, `mismatch`) of a row: `M x,y L x,y ...` read back as numbers.
fn plotted(row: &str, which: &str, leg: &str) -> Vec<(f64, f64)> {
    let svg = &row[row
        .find(&format!("data-chart=\"{which}\""))
        .unwrap_or_else(|| panic!("no {which} chart in {row}"))..];
    let svg = &svg[..svg.find("</svg>").expect("end of svg")];
    let mut points = Vec::new();
    for line in svg.split("<path ").skip(1) {
        if attr(line, "class") != format!("line {leg}") {
            continue;
        }
        for xy in attr(line, "d").split(['M', 'L']).map(str::trim) {
            if let Some((x, y)) = xy.split_once(',') {
                points.push((x.parse().expect("x"), y.parse().expect("y")));
            }
        }
    }
    points
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_verdict_shows_states_flags_intervals_and_charts() {
    let Some(browser) = chromium_or_skip() else {
        return;
    };
    // The baseline runs the primary's version; the candidate is twice as slow on /slow.
    // Each upstream names itself in `x-upstream`, a header the comparison is told to
    // check: the baseline differs from the primary there on every request, so it is
    // noise learned, not a difference of the candidate.
    let base = Duration::from_millis(10);
    let upstream = |name: &str| {
        FakeUpstream::builder()
            .name(name)
            .delay(base)
            .header("content-type", "application/json")
            .body("{\"ok\":true}")
    };
    let p = upstream("primary").start().await;
    let b = upstream("baseline").start().await;
    let c = upstream("candidate").delay_on("/slow", base).start().await;
    let proxy = TestProxy::start(&yaml(&format!(
        "clusters:
  primary: {{ endpoints: [\"{}\"] }}
  candidate: {{ endpoints: [\"{}\"] }}
  baseline: {{ endpoints: [\"{}\"] }}
routes:
  - name: all
    primary: primary
    critical: true
    verdict: {{ window: 30s, min_pairs: 50, confidence: 99%, slower_by: 10% }}
    shadows:
      - cluster: candidate
        compare: {{ body: json, headers: [content-type, x-upstream], baseline: baseline }}
",
        p.url(),
        c.url(),
        b.url()
    )))
    .await;

    // 10 rounds, 0.7 s apart (so the window's chart has several points), of 16 requests
    // on /slow and /ok each, 8 at a time; and 4 on /rare, too few for a verdict.
    let mut rounds = tokio::time::interval(Duration::from_millis(700));
    for round in 0..10 {
        rounds.tick().await;
        let mut batch = tokio::task::JoinSet::new();
        for worker in 0..8 {
            let (slow, ok) = (proxy.url("/slow"), proxy.url("/ok"));
            let rare = (round == 0 && worker < 4).then(|| proxy.url("/rare"));
            batch.spawn(async move {
                for _ in 0..2 {
                    assert_eq!(get(&slow).await.0, 200);
                    assert_eq!(get(&ok).await.0, 200);
                }
                if let Some(rare) = rare {
                    assert_eq!(get(&rare).await.0, 200);
                }
            });
        }
        while let Some(done) = batch.join_next().await {
            done.expect("a request worker");
        }
    }

    // The API reaches the expected verdict (the copies are answered asynchronously).
    let row_of = |v: &serde_json::Value, path: &str, shadow: &str| {
        v["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["path"] == path && r["shadow"] == shadow)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let verdict = loop {
        let v = admin_json(&proxy, "/api/verdict").await;
        let slow = row_of(&v, "/slow", "candidate");
        let ok = row_of(&v, "/ok", "candidate");
        if v["state"] == "fail"
            && slow["state"] == "fail"
            && slow["flags"] == serde_json::json!(["slower"])
            && ok["state"] == "pass"
            && ok["window"]["n"] == 160
            && row_of(&v, "/rare", "candidate")["window"]["n"] == 4
        {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the verdict never became: /slow fail (slower), /ok pass:\n{v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let slow = row_of(&verdict, "/slow", "candidate");
    assert_eq!(slow["role"], "candidate");
    assert_eq!(slow["control"], "baseline");
    assert_eq!(row_of(&verdict, "/rare", "candidate")["state"], "no_data");
    assert_eq!(row_of(&verdict, "/ok", "baseline")["role"], "baseline");

    let url = format!("http://{}/", proxy.admin);
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&browser, &url))
        .await
        .unwrap();

    // The overall state, prominently, with the failing count.
    let overall = &dom[dom.find("id=\"verdict-overall\"").expect("overall state")..];
    let overall = &overall[..overall.find("</div>").expect("end of overall")];
    assert_eq!(attr(overall, "data-verdict-state"), "fail", "{overall}");
    assert!(
        dom.contains("id=\"verdict-failing\">1 failing<"),
        "the failing count shown"
    );

    // The slow path: failing, a `slower` badge, its median ratio with the interval the
    // API gives, the candidate compared with the baseline.
    let row = verdict_row(&dom, "/slow", "candidate");
    assert_eq!(attr(row, "data-verdict-state"), "fail", "{row}");
    assert_eq!(attr(row, "data-verdict-flags"), "slower", "{row}");
    assert!(row.contains("class=\"vflag vflag-slower\""), "{row}");
    assert!(row.contains("candidate vs baseline"), "{row}");
    let ratio = &slow["window"]["latency"]["ratio"];
    let est = ratio["estimate"].as_f64().expect("a ratio");
    assert!(est > 1.5, "the candidate is twice as slow: {ratio}");
    let shown = row
        .split("class=\"vratio\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_else(|| panic!("no ratio in {row}"));
    // "×1.98 [1.90, 2.05]": the API's estimate and bounds, to two decimals.
    let numbers: Vec<Option<f64>> = shown
        .trim_start_matches('×')
        .split([' ', '[', ',', ']'])
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 3, "estimate and interval: {shown}");
    for (n, key) in numbers.iter().zip(["estimate", "lo", "hi"]) {
        match (n, ratio[key].as_f64()) {
            (Some(n), Some(v)) => assert!((n - v).abs() < 0.0051, "{key}: {shown} vs {ratio}"),
            (None, None) => assert!(shown.contains('–'), "{shown}"),
            _ => panic!("{key}: {shown} vs {ratio}"),
        }
    }

    // A passing row: no badge.
    let ok = verdict_row(&dom, "/ok", "candidate");
    assert_eq!(attr(ok, "data-verdict-state"), "pass", "{ok}");
    assert_eq!(attr(ok, "data-verdict-flags"), "", "{ok}");
    assert!(!ok.contains("class=\"vflag"), "{ok}");
    // Too few pairs: no data.
    let rare = verdict_row(&dom, "/rare", "candidate");
    assert_eq!(attr(rare, "data-verdict-state"), "no_data", "{rare}");
    // The noise the baseline showed, on the candidate's row.
    assert!(
        ok.contains("class=\"vnoise\"") && ok.contains("x-upstream"),
        "the noisy header learned: {ok}"
    );
    // The baseline's own row, against the primary.
    let baseline = verdict_row(&dom, "/ok", "baseline");
    assert!(baseline.contains("baseline vs primary"), "{baseline}");

    // The charts: p50 and p99 of both legs and the mismatch rate, each with plotted
    // points (several slices of the window had traffic), inside the drawing.
    for (which, legs) in [
        ("p50", &["control", "shadow"][..]),
        ("p99", &["control", "shadow"][..]),
        ("mismatch", &["shadow"][..]),
    ] {
        for leg in legs {
            let points = plotted(row, which, leg);
            assert!(
                points.len() >= 2,
                "the {which} {leg} line has points: {points:?} in {row}"
            );
            assert!(
                points
                    .iter()
                    .all(|&(x, y)| (0.0..=120.0).contains(&x) && (0.0..=30.0).contains(&y)),
                "{which} {leg}: {points:?}"
            );
        }
    }
    // The slow leg is drawn above the control (smaller y is higher).
    let (control, shadow) = (
        plotted(row, "p50", "control"),
        plotted(row, "p50", "shadow"),
    );
    let mean = |v: &[(f64, f64)]| v.iter().map(|p| p.1).sum::<f64>() / v.len() as f64;
    assert!(mean(&shadow) < mean(&control), "{control:?} {shadow:?}");
}
