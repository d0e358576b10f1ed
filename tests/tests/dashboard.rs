//! The live dashboard in a real headless Chromium: after traffic, the rendered page lists
//! the paths with their figures, flags the slow and the different ones, and shows the
//! mismatches grouped by signature.
//!
//! Chromium is found at `$CHROMIUM`, `/usr/bin/chromium` or on the PATH; `.ci/run`
//! installs it. Without it the test fails under CI (`CI` set) and is reported as skipped
//! on a developer machine.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use teeproxy_tests::*;

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
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium (.ci/run does)"
        );
        eprintln!("skipped: no chromium on this machine");
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
    for _ in 0..40 {
        for path in ["/slow", "/ok", "/broken"] {
            assert_eq!(get(&proxy.url(path)).await.0, 200);
        }
    }
    assert_eventually!(c.count() == 120);
    assert_eventually!(
        ShadowCounts::from_metrics(&proxy.metrics().await, "all", "candidate").balanced()
    );
    assert_eventually!(
        admin_json(&proxy, "/api/paths").await["paths"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["compared"] == 40)),
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
    assert!(
        flags(broken).contains("different") && flags(broken).contains("errors"),
        "{broken}"
    );
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
    assert!(ok.contains("<td>40</td>"), "request count shown: {ok}");
    assert!(
        dom.contains("id=\"sum-paths\">3<"),
        "three paths in the summary"
    );
    assert!(dom.contains("status mismatch"), "mismatch groups rendered");
    assert!(
        dom.contains("GET /broken"),
        "the group's example names its request"
    );
    // The forty /broken mismatches are one group: one signature, counted, with times.
    let group = dom
        .find("class=\"mismatch-group\" data-route=\"all\" data-path=\"/broken\"")
        .map(|at| &dom[at..at + dom[at..].find("</li>").expect("end of group")])
        .unwrap_or_else(|| panic!("no /broken group in:\n{dom}"));
    assert!(
        group.contains("data-count=\"40\"") && group.contains("40×"),
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
