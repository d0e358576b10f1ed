//! deploy/'s monitoring files and the native histograms against a real Prometheus.
//!
//! 1. Debian's `prometheus` scrapes a real teeproxy process (a primary and a shadow, fake
//!    upstreams, traffic on every path) every second with the alert rules of
//!    `deploy/prometheus/rules.yml` loaded. Every PromQL expression of
//!    `deploy/grafana/teeproxy.json` (the template variables' `label_values` queries
//!    included) must return data, with the variables set to `.*` and to real values, and
//!    every alert rule must evaluate without error. This Prometheus runs without native
//!    histograms: it scrapes OpenMetrics text and reads the classic buckets.
//! 2. A Prometheus with `--enable-feature=native-histograms` (it asks for the protobuf
//!    exposition) scrapes `teeproxy demo`, whose candidate is 25 % slower on
//!    `/api/search`; `histogram_quantile` over the native histograms must see the
//!    shadow/primary ratio of medians within 5 % of the true one, and the dashboard's
//!    latency queries must return data from native histograms too.
//!
//! Prometheus is found at `$PROMETHEUS` or on the PATH; `.ci/run` installs it. Without it
//! the tests fail under CI (`CI` set) and are reported as skipped on a developer machine.
//! Every process a test starts (Prometheus, teeproxy) is killed by its process id when the
//! test ends, pass or fail.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use teeproxy_tests::process::{ProxyProcess, http_get};
use teeproxy_tests::*;

/// How long Prometheus gets to start, scrape and evaluate before the test gives up.
const SETTLE: Duration = Duration::from_secs(40);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn prometheus_bin() -> Option<PathBuf> {
    teeproxy_tests::find_program("prometheus", "PROMETHEUS", &[])
}

/// Prometheus, or `None` after saying the test is skipped (a failure under CI).
fn prometheus_or_skip() -> Option<PathBuf> {
    let bin = prometheus_bin();
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install prometheus (.ci/run does)"
        );
        eprintln!("skipped: no prometheus on this machine (apt-get install prometheus)");
    }
    bin
}

/// A fresh temporary directory for one process of this test binary (tests run in
/// parallel, each with its own).
fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "teeproxy-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A Prometheus server on 127.0.0.1 with its storage in a temporary directory; killed
/// (by its process id) and its directory removed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `bin` scraping `target` every second with `rules` loaded (if any) and the
    /// extra command-line `flags`, and waits until it is ready. The port is picked free,
    /// and picked again if another process takes it before Prometheus binds it.
    async fn start(
        bin: &Path,
        target: SocketAddr,
        rules: Option<&Path>,
        flags: &[&str],
    ) -> Prometheus {
        let dir = temp_dir("prometheus");
        let config = dir.join("prometheus.yml");
        let rule_files = rules.map_or(String::new(), |r| format!("rule_files: [{r:?}]\n"));
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 {rule_files}\
                 scrape_configs:\n  - job_name: teeproxy\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write the Prometheus config");
        let log = dir.join("prometheus.log");
        let mut last = String::new();
        for _attempt in 0..5 {
            let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind 127.0.0.1:0");
            let out = fs::File::create(&log).expect("create the Prometheus log");
            let err = out.try_clone().expect("clone the log file");
            let child = Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--storage.tsdb.retention.time=1h")
                .args(flags)
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut p = Prometheus {
                child,
                addr,
                dir: dir.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some((200, _)) = http_get(addr, "/-/ready", Duration::from_secs(1)).await {
                    return p;
                }
                if let Ok(Some(status)) = p.child.try_wait() {
                    last = p.log();
                    assert!(
                        last.contains("address already in use"),
                        "prometheus exited with {status}:\n{last}"
                    );
                    break; // the port was taken: another one
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready within 20 s:\n{}",
                    p.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("prometheus could not bind a free port:\n{last}");
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GETs an API path and returns its `data`, or the error Prometheus gave.
    async fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http_get(self.addr, path, Duration::from_secs(10))
            .await
            .ok_or_else(|| format!("no answer to {path} within 10 s"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("{path}: {status}, not JSON ({e}): {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!(
                "{path}: {status} {}: {}",
                v["errorType"], v["error"]
            ));
        }
        Ok(v["data"].clone())
    }

    /// An instant query's result vector (an error is a failure of the test).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await
            .unwrap_or_else(|e| panic!("query {expr}\n{e}"));
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {expr}: no result vector in {data}"))
            .clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        teeproxy_tests::process::end_child(&mut self.child, "prometheus", &self.dir);
    }
}

/// Percent-encodes a query parameter value (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the dashboard's panels (rows' nested panels included), with its
/// panel's title.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((
                        p["title"].as_str().unwrap_or("?").to_string(),
                        e.to_string(),
                    ));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// The template variables' `label_values(METRIC, LABEL)` queries as PromQL
/// (`group by (LABEL) (METRIC)`), by variable name.
fn variable_queries(dash: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for v in dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .expect("a variable query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not a label_values query: {q}"));
        let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        let label = label.trim().to_string();
        out.push((
            v["name"].as_str().expect("variable name").to_string(),
            format!("group by ({label}) ({})", metric.trim()),
            label,
        ));
    }
    out
}

/// The alerting and recording rules Prometheus has loaded, over every group.
async fn rules(prom: &Prometheus) -> Vec<Value> {
    let data = prom.api("/api/v1/rules").await.expect("/api/v1/rules");
    data["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Replaces Grafana's variables in an expression.
fn substitute(expr: &str, vars: &[(&str, &str)]) -> String {
    let mut e = expr.to_string();
    for (k, v) in vars {
        e = e.replace(k, v);
    }
    e
}

/// A config with a route `api` (path templates, mirrored to `candidate`) and a route
/// `default`, both served by `primary`.
fn config(primary: &str, candidate: &str) -> String {
    yaml(&format!(
        "clusters:\n  primary: {{ endpoints: [\"{primary}\"] }}\n  candidate: {{ endpoints: [\"{candidate}\"] }}\n\
         routes:\n  - name: api\n    match: {{ path_prefix: \"/api/\" }}\n    primary: primary\n    paths: [\"/api/users/{{id}}\"]\n    shadows: [{{ cluster: candidate }}]\n\
         \x20 - name: default\n    primary: primary\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_dashboard_query_and_alert_rule() {
    let Some(bin) = prometheus_or_skip() else {
        return;
    };
    let root = repo_root();
    let dash: Value = serde_json::from_str(
        &fs::read_to_string(root.join("deploy/grafana/teeproxy.json")).expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dash);
    let variables = variable_queries(&dash);
    assert!(queries.len() >= 20, "dashboard queries: {queries:?}");
    assert_eq!(
        variables.iter().map(|v| v.0.as_str()).collect::<Vec<_>>(),
        ["route", "path", "shadow"]
    );
    let rules_file = root.join("deploy/prometheus/rules.yml");
    let rule_count = fs::read_to_string(&rules_file)
        .expect("read rules.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(rule_count >= 4, "alert rules in rules.yml: {rule_count}");

    let json = "{\"ok\":true}";
    let primary = FakeUpstream::builder()
        .name("primary")
        .header("content-type", "application/json")
        .body(json)
        .start()
        .await;
    let candidate = FakeUpstream::builder()
        .name("candidate")
        .header("content-type", "application/json")
        .body(json)
        .start()
        .await;
    let proxy = ProxyProcess::start(&config(&primary.url(), &candidate.url())).await;
    // Every series exists once each path has been served and mirrored once.
    for path in ["/api/users/1", "/api/orders/7", "/other"] {
        let (status, _) = http_get(proxy.addr(), path, Duration::from_secs(5))
            .await
            .expect("an answer");
        assert_eq!(status, 200, "{path}");
    }
    assert_eventually!(candidate.count() == 2, "both /api/ requests mirrored");

    // Steady traffic while Prometheus scrapes, so rates are over real requests (bounded:
    // at most 2000 requests, and stopped when the test ends).
    let addr = proxy.addr();
    let traffic = tokio::spawn(async move {
        for i in 0..2000u32 {
            let path = ["/api/users/2", "/api/orders/9", "/other"][(i % 3) as usize];
            let _ = http_get(addr, path, Duration::from_secs(5)).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });

    let prom = Prometheus::start(&bin, proxy.admin(), Some(&rules_file), &[]).await;

    // Variables at `.*`, then at real values (a path template's braces escaped as Grafana
    // escapes a regex value: a backslash, written doubled in a PromQL string).
    let all = [
        ("$__rate_interval", "15s"),
        ("$__interval", "1s"),
        ("$__range", "1m"),
        ("$route", ".*"),
        ("$path", ".*"),
        ("$shadow", ".*"),
    ];
    let real = [
        ("$__rate_interval", "15s"),
        ("$__interval", "1s"),
        ("$__range", "1m"),
        ("$route", "api"),
        ("$path", "/api/users/\\\\{id\\\\}"),
        ("$shadow", "candidate"),
    ];
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut empty = Vec::new();
        for vars in [&all[..], &real[..]] {
            for (title, expr) in &queries {
                let e = substitute(expr, vars);
                if prom.query(&e).await.is_empty() {
                    empty.push(format!("{title}: {e}"));
                }
            }
            for (name, expr, _) in &variables {
                let e = substitute(expr, vars);
                if prom.query(&e).await.is_empty() {
                    empty.push(format!("${name}: {e}"));
                }
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries still empty after {SETTLE:?}:\n{}\nprometheus log:\n{}",
            empty.join("\n"),
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The variables offer the real values.
    for (name, expr, label) in &variables {
        let values: Vec<String> = prom
            .query(&substitute(expr, &all))
            .await
            .iter()
            .filter_map(|s| s["metric"][label.as_str()].as_str().map(String::from))
            .collect();
        let want = match name.as_str() {
            "route" => "api",
            "path" => "/api/users/{id}",
            _ => "candidate",
        };
        assert!(values.iter().any(|v| v == want), "${name}: {values:?}");
    }

    // Every alert rule loaded and evaluated without error, in an evaluation that began
    // after the data above was there (an evaluation over no data cannot fail).
    let before: Vec<(Value, Value)> = rules(&prom)
        .await
        .iter()
        .map(|r| (r["name"].clone(), r["lastEvaluation"].clone()))
        .collect();
    let deadline = Instant::now() + SETTLE;
    let rules = loop {
        let rules = rules(&prom).await;
        let evaluated_since = |r: &Value| {
            r["health"] != "unknown"
                && !before
                    .iter()
                    .any(|(n, t)| *n == r["name"] && *t == r["lastEvaluation"])
        };
        if rules.len() == rule_count && rules.iter().all(evaluated_since) {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all evaluated after {SETTLE:?} ({} of {rule_count} loaded): {rules:#?}\nprometheus log:\n{}",
            rules.len(),
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for r in &rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed to evaluate: {}",
            r["name"], r["lastError"]
        );
        assert_eq!(r["type"], "alerting", "{}", r["name"]);
    }

    traffic.abort();
    drop(prom);
    drop(proxy);
}

/// `teeproxy demo` (its own primary and candidate upstreams in-process, no built-in
/// traffic): killed by its process id when dropped, its stdout and stderr in a temporary
/// directory.
struct Demo {
    child: Child,
    dir: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Demo {
    /// Starts the demo on loopback ports picked by the system and reads them from its
    /// first line (`teeproxy demo: proxy on http://ADDR, admin on http://ADDR`).
    async fn start() -> Demo {
        let dir = temp_dir("demo");
        let out = dir.join("stdout.log");
        let child = Command::new(teeproxy_tests::process::teeproxy_bin())
            .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--rate", "0", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(fs::File::create(&out).expect("stdout file")))
            .stderr(Stdio::from(
                fs::File::create(dir.join("stderr.log")).expect("stderr file"),
            ))
            .spawn()
            .expect("spawn teeproxy demo");
        let mut demo = Demo {
            child,
            dir,
            proxy: "127.0.0.1:0".parse().expect("an address"),
            admin: "127.0.0.1:0".parse().expect("an address"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(&out).unwrap_or_default();
            let addrs: Vec<SocketAddr> = text
                .lines()
                .next()
                .filter(|_| text.contains('\n'))
                .into_iter()
                .flat_map(|l| l.split("http://").skip(1))
                .filter_map(|s| s.split([',', ' ']).next()?.parse().ok())
                .collect();
            if let [proxy, admin] = addrs[..] {
                (demo.proxy, demo.admin) = (proxy, admin);
                break;
            }
            if let Ok(Some(status)) = demo.child.try_wait() {
                panic!("teeproxy demo exited with {status}:\n{}", demo.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "teeproxy demo printed no addresses within 20 s:\n{text}\n{}",
                demo.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(
            http_get(demo.admin, "/ready", Duration::from_secs(1)).await,
            Some((200, _))
        ) {
            assert!(Instant::now() < deadline, "the demo not ready within 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        demo
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        teeproxy_tests::process::end_child(&mut self.child, "teeproxy demo", &self.dir);
    }
}

/// What the demo's candidate adds on `/api/search` (proxy/src/demo/mod.rs): the primary
/// waits 24 ms there, the candidate 24 ms x 5/4 = 30 ms.
const SEARCH_EXTRA_MS: f64 = 6.0;

/// Requests sent to `/api/search` (each mirrored to the candidate).
const SEARCH_REQUESTS: usize = 600;

/// A classic histogram's quantile from a text exposition, as Prometheus'
/// `histogram_quantile` computes it (linear within the bucket). `series` is the start of
/// the bucket lines' label set after `le` (`route="api",path=...`).
fn classic_quantile(text: &str, q: f64, series: &str) -> f64 {
    let prefix = "teeproxy_path_latency_seconds_bucket{le=\"";
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let (le, rest) = rest.split_once("\",")?;
            let value = rest.strip_prefix(series)?.strip_prefix("} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let mut below = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            return below.0 + (le - below.0) * (rank - below.1) / (count - below.1);
        }
        below = (le, count);
    }
    f64::NAN
}

/// Waits (up to SETTLE) until Prometheus' latest `/api/search` native histograms count at
/// least `n` exchanges on each leg.
async fn wait_for_search_counts(prom: &Prometheus, search: &str, n: usize) {
    let query =
        format!("histogram_count(sum by (leg) (teeproxy_path_latency_seconds{{{search}}}))");
    let deadline = Instant::now() + SETTLE;
    loop {
        let counts: Vec<(String, f64)> = prom
            .query(&query)
            .await
            .iter()
            .map(|s| {
                let leg = s["metric"]["leg"].as_str().unwrap_or("?").to_string();
                let v = s["value"][1].as_str().and_then(|v| v.parse().ok());
                (leg, v.unwrap_or(0.0))
            })
            .collect();
        if counts.len() == 2 && counts.iter().all(|(_, c)| *c >= n as f64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has not seen {n} /api/search exchanges per leg after {SETTLE:?}: {counts:?}\nprometheus log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_histograms_in_prometheus_see_the_candidate_slower_on_search() {
    let Some(bin) = prometheus_or_skip() else {
        return;
    };
    let demo = Demo::start().await;
    let prom = Prometheus::start(
        &bin,
        demo.admin,
        None,
        &["--enable-feature=native-histograms"],
    )
    .await;

    // Prometheus holds a request of both legs (the shadow's copy is fire-and-forget, so it
    // is waited for) as native histograms before the measured traffic starts, so that a
    // rate over the window counts all of it (a rate counts from a series' first sample).
    // The demo's baseline is a shadow leg too: the comparison is primary vs candidate.
    let search = "route=\"api\",path=\"/api/search\",cluster!=\"baseline\"";
    let search_series = "route=\"api\",path=\"/api/search\"";
    let (status, _) = http_get(demo.proxy, "/api/search?q=first", Duration::from_secs(10))
        .await
        .expect("an answer to the first /api/search");
    assert_eq!(status, 200);
    wait_for_search_counts(&prom, search, 1).await;

    // Traffic at the demo's slower path: 4 clients, SEARCH_REQUESTS in all, each answer
    // checked (on loopback; bounded by the count, each request by its own timeout).
    let proxy = demo.proxy;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            tokio::spawn(async move {
                for i in 0..SEARCH_REQUESTS / 4 {
                    let path = format!("/api/search?q=q{c}x{i}");
                    let (status, _) = http_get(proxy, &path, Duration::from_secs(10))
                        .await
                        .unwrap_or_else(|| panic!("no answer to {path}"));
                    assert_eq!(status, 200, "{path}");
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("a traffic client");
    }

    // Prometheus holds every request of both legs, as native histograms: the samples are
    // histograms, not floats.
    wait_for_search_counts(&prom, search, 1 + SEARCH_REQUESTS).await;
    let raw = prom
        .query(&format!(
            "teeproxy_path_latency_seconds{{{search},leg=\"shadow\"}}"
        ))
        .await;
    assert!(
        raw.len() == 1 && raw[0]["histogram"].is_array() && raw[0]["value"].is_null(),
        "a native histogram sample: {raw:?}"
    );

    // The fleet view: medians from the native histograms over the last two minutes.
    let median = format!(
        "histogram_quantile(0.5, sum by (leg) (rate(teeproxy_path_latency_seconds{{{search}}}[2m])))"
    );
    let medians = prom.query(&median).await;
    let leg_median = |leg: &str| {
        medians
            .iter()
            .find(|s| s["metric"]["leg"] == leg)
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {leg} median in {medians:?}"))
    };
    let (primary_s, shadow_s) = (leg_median("primary"), leg_median("shadow"));
    let measured = shadow_s / primary_s;

    // The true ratio. The demo's configuration says what the candidate adds on this path
    // (SEARCH_EXTRA_MS: 30 ms instead of 24 ms); everything else on a leg (the proxy, the
    // loopback, the timer's rounding of the upstream's sleep) is the same for both legs
    // and not in the configuration, so the primary's median is read from teeproxy's own
    // per-path quantiles (/api/paths, recorded by teeproxy, not by Prometheus) and the
    // candidate's is that plus SEARCH_EXTRA_MS. (The bare configured 30/24 = 1.25 would
    // ignore the shared overhead, which grows on a loaded machine.)
    let (status, body) = http_get(demo.admin, "/api/paths", Duration::from_secs(5))
        .await
        .expect("/api/paths answers");
    assert_eq!(status, 200, "{body}");
    let paths: Value = serde_json::from_str(&body).expect("/api/paths is JSON");
    let row = paths["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["path"] == "/api/search" && r["shadow"] == "candidate")
        .unwrap_or_else(|| panic!("no /api/search row in {paths}"));
    let primary_ms = row["primary"]["p50_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no primary p50_ms in {row}"));
    let truth = (primary_ms + SEARCH_EXTRA_MS) / primary_ms;
    eprintln!(
        "/api/search p50: Prometheus (native) primary {:.2} ms, shadow {:.2} ms, ratio {measured:.4}; \
         true ratio {truth:.4} (primary p50 {primary_ms} ms + {SEARCH_EXTRA_MS} ms); \
         configured 30/24 = 1.25; /api/paths ratio_p50 {}",
        primary_s * 1e3,
        shadow_s * 1e3,
        row["ratio_p50"]
    );
    assert!(
        (measured / truth - 1.0).abs() < 0.05,
        "shadow/primary p50 from native histograms {measured:.4} is not within 5 % of the true {truth:.4} \
         (primary {primary_s} s, shadow {shadow_s} s)"
    );

    // The dashboard's latency panels read native histograms too (their classic fallback
    // is checked by the other test, whose Prometheus takes no native histograms).
    let dash: Value = serde_json::from_str(
        &fs::read_to_string(repo_root().join("deploy/grafana/teeproxy.json"))
            .expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let vars = [
        ("$__rate_interval", "2m"),
        ("$route", ".*"),
        ("$path", ".*"),
        ("$shadow", ".*"),
    ];
    let latency: Vec<(String, String)> = dashboard_queries(&dash)
        .into_iter()
        .filter(|(_, e)| e.contains("histogram_quantile"))
        .collect();
    assert!(latency.len() >= 8, "latency queries: {latency:?}");
    for (title, expr) in &latency {
        let e = substitute(expr, &vars);
        let result = prom.query(&e).await;
        assert!(
            !result.is_empty(),
            "{title}: no data from native histograms: {e}"
        );
    }

    // A text scraper gets the classic buckets (1, 1.5, 2, 3, 4, 5, 7.5 per decade, 1 ms to
    // 60 s), and even they show the candidate slower (not by how much: a bucket is up
    // to 1.5x wide).
    let (status, text) = http_get(demo.admin, "/metrics", Duration::from_secs(5))
        .await
        .expect("/metrics answers");
    assert_eq!(status, 200);
    for leg in [
        "leg=\"primary\",cluster=\"primary\"",
        "leg=\"shadow\",cluster=\"candidate\"",
    ] {
        let series = format!("{search_series},{leg}");
        let buckets = text
            .lines()
            .filter(|l| {
                l.starts_with("teeproxy_path_latency_seconds_bucket{le=") && l.contains(&series)
            })
            .count();
        assert_eq!(buckets, 35, "classic buckets for {series}");
        for le in ["0.001", "0.02", "0.03", "0.04", "7.5", "60.0", "+Inf"] {
            let line = format!("teeproxy_path_latency_seconds_bucket{{le=\"{le}\",{series}}}");
            assert!(text.contains(&line), "{line}");
        }
    }
    let classic = |leg: &str| classic_quantile(&text, 0.5, &format!("{search_series},{leg}"));
    let (p, s) = (
        classic("leg=\"primary\",cluster=\"primary\""),
        classic("leg=\"shadow\",cluster=\"candidate\""),
    );
    eprintln!(
        "/api/search p50 from the classic buckets: primary {:.2} ms, shadow {:.2} ms",
        p * 1e3,
        s * 1e3
    );
    assert!(
        s > p,
        "the classic buckets show the shadow slower: primary {p}, shadow {s}"
    );

    drop(prom);
    drop(demo);
}
