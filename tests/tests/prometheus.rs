//! deploy/'s monitoring files against a real Prometheus: Debian's `prometheus` scrapes a
//! real teeproxy process (a primary and a shadow, fake upstreams, traffic on every path)
//! every second with the alert rules of `deploy/prometheus/rules.yml` loaded. Every PromQL
//! expression of `deploy/grafana/teeproxy.json` (the template variables' `label_values`
//! queries included) must return data, with the variables set to `.*` and to real values,
//! and every alert rule must evaluate without error.
//!
//! Prometheus is found at `$PROMETHEUS` or on the PATH; `.ci/run` installs it. Without it
//! the test fails under CI (`CI` set) and is reported as skipped on a developer machine.
//! The Prometheus process is killed by its process id when the test ends, pass or fail.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A Prometheus server on 127.0.0.1 with its storage in a temporary directory; killed
/// (by its process id) and its directory removed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `bin` scraping `target` every second with `rules` loaded, and waits until it
    /// is ready. The port is picked free, and picked again if another process takes it
    /// before Prometheus binds it.
    async fn start(bin: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("teeproxy-prometheus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the Prometheus directory");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 rule_files: [{rules:?}]\n\
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
    let Some(bin) = prometheus_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install prometheus (.ci/run does)"
        );
        eprintln!("skipped: no prometheus on this machine (apt-get install prometheus)");
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

    let prom = Prometheus::start(&bin, proxy.admin(), &rules_file).await;

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
