//! Record and replay end to end: a shadow policy's `record:` file holds one redacted line
//! per exchange (a secret header, a JSON body field and the same field in the answers never
//! reach the disk), `loadgen replay` sends the same requests again, and with `compare`
//! reports answers that differ from the recorded primary's. The writer thread of a
//! replaced config ends (real process, `/proc/<pid>/task`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use teeproxy_loadgen::replay::{Pace, ReplayOptions, parse, replay};
use teeproxy_tests::process::*;
use teeproxy_tests::*;

const SECRET_TOKEN: &str = "Bearer topsecret-token-4711";
const SECRET_EMAIL: &str = "secret.person@example.com";
const PRIMARY_EMAIL: &str = "answer.person@example.com";

fn answer_body() -> String {
    format!(r#"{{"user":{{"email":"{PRIMARY_EMAIL}","name":"n"}},"plan":"pro"}}"#)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("teeproxy-record-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn record_yaml(primary: &str, candidate: &str, file: &Path, extra: &str) -> String {
    shadow_yaml(
        primary,
        candidate,
        "",
        &format!(
            "methods: any, record: {{ path: \"{}\", redact: [authorization, /user/email]{extra} }}",
            file.display()
        ),
    )
}

fn lines_metric() -> &'static str {
    "teeproxy_record_lines_total{route=\"all\",shadow=\"candidate\"}"
}

/// The request mix: (method, path and query, body).
fn mix() -> Vec<(Method, String, String)> {
    let post = format!(r#"{{"user":{{"email":"{SECRET_EMAIL}","name":"a"}},"n":1}}"#);
    vec![
        (Method::GET, "/api/items/1?x=1".into(), String::new()),
        (Method::GET, "/api/items/2".into(), String::new()),
        (Method::POST, "/api/users".into(), post.clone()),
        (Method::GET, "/api/search?q=a%20b".into(), String::new()),
        (Method::PUT, "/api/users/7".into(), post),
    ]
}

/// Runs the mix through a recording proxy; returns the record file's text.
async fn record_run(dir: &Path) -> String {
    let primary = FakeUpstream::builder()
        .header("content-type", "application/json")
        // Not a compared header: a recording keeps the primary's headers all the same.
        .header("x-primary-only", "kept")
        .body(answer_body())
        .start()
        .await;
    let candidate = FakeUpstream::builder()
        .header("content-type", "application/json")
        .body(answer_body())
        .start()
        .await;
    let file = dir.join("candidate.jsonl");
    let proxy = TestProxy::start(&record_yaml(&primary.url(), &candidate.url(), &file, "")).await;
    let client = h1_client();
    for (method, uri, body) in mix() {
        let req = Request::builder()
            .method(method)
            .uri(proxy.url(&uri))
            .header("authorization", SECRET_TOKEN)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let (status, _, _) = send(&client, req).await;
        assert_eq!(status, StatusCode::OK);
    }
    let n = mix().len() as f64;
    assert_eventually!(proxy.metric(lines_metric()).await == n);
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_record_dropped_total{route=\"all\",shadow=\"candidate\",reason=\"record_full\"}"
        ),
        0.0
    );
    std::fs::read_to_string(&file).unwrap()
}

fn b64(v: &Value) -> String {
    String::from_utf8(BASE64.decode(v.as_str().expect("base64 string")).unwrap()).unwrap()
}

/// Catches: a missing or unparseable line, a missing field, or a secret (header, request
/// JSON field, the same field in an answer) written to the disk.
#[tokio::test]
async fn a_recorded_run_has_one_redacted_line_per_exchange() {
    let dir = temp_dir("lines");
    let text = record_run(&dir).await;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), mix().len(), "{text}");
    for (line, (method, uri, _)) in lines.iter().zip(mix()) {
        // One shadow task per copy: lines may come in any order.
        assert!(
            lines
                .iter()
                .any(|l| l["method"] == method.as_str() && l["uri"] == uri.as_str())
        );
        for key in [
            "time_ms",
            "request_id",
            "route",
            "shadow",
            "template",
            "method",
            "uri",
        ] {
            assert!(!line[key].is_null(), "{key} in {line}");
        }
        assert_eq!(line["route"], "all");
        assert_eq!(line["shadow"], "candidate");
        assert!(line["request"]["headers"].is_array());
        assert_eq!(line["request"]["truncated"], false);
        assert_eq!(line["primary"]["status"], 200);
        assert_eq!(line["primary"]["truncated"], false);
        assert!(line["primary"]["latency_ms"]["headers"].as_f64().is_some());
        assert!(
            line["primary"]["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p[0] == "x-primary-only" && p[1] == "kept"),
            "{line}"
        );
        assert_eq!(line["shadow_answer"]["outcome"], "ok");
        assert_eq!(line["shadow_answer"]["status"], 200);
        assert!(
            line["shadow_answer"]["latency_ms"]["body"]
                .as_f64()
                .is_some()
        );
        assert_eq!(line["result"], "match");
        let auth = line["request"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == "authorization")
            .expect("the header is listed");
        assert_eq!(auth[1], "[redacted]");
        // Bodies decoded: the JSON field is redacted in the request and in both answers.
        for body in [
            &line["request"]["body"],
            &line["primary"]["body"],
            &line["shadow_answer"]["body"],
        ] {
            let body = b64(body);
            assert!(
                !body.contains(SECRET_EMAIL) && !body.contains(PRIMARY_EMAIL),
                "{body}"
            );
        }
        assert!(b64(&line["primary"]["body"]).contains("\"plan\":\"pro\""));
        if line["method"] != "GET" {
            let body: Value = serde_json::from_str(&b64(&line["request"]["body"])).unwrap();
            assert_eq!(body["user"]["email"], "[redacted]");
            assert_eq!(body["user"]["name"], "a");
        }
    }
    for secret in [SECRET_TOKEN, "topsecret", SECRET_EMAIL, PRIMARY_EMAIL] {
        assert!(!text.contains(secret), "{secret} reached the file");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("candidate.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o037,
        0,
        "no write for the group, nothing for others: {mode:o}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn options(target: &str, compare: bool) -> ReplayOptions {
    ReplayOptions {
        target: target.parse().unwrap(),
        pace: Pace::Speed(10.0),
        connections: 4,
        duration: None,
        compare,
        timeout: Duration::from_secs(5),
    }
}

/// Catches: a replay that loses, reorders into other methods, or alters requests
/// (method, path and query, body), or sends the recorded Host.
#[tokio::test]
async fn replaying_a_record_sends_the_same_requests() {
    let dir = temp_dir("replay");
    let text = record_run(&dir).await;
    let records = parse(&text).unwrap();
    let target = FakeUpstream::start().await;
    let report = replay(records.clone(), options(&target.url(), false)).await;
    assert_eq!(report.sent, mix().len() as u64);
    assert_eq!(report.completed, mix().len() as u64, "{}", report.summary());
    let mut want: Vec<(String, String, Bytes)> = records
        .iter()
        .map(|r| (r.method.to_string(), r.uri.clone(), r.body.clone()))
        .collect();
    let mut got: Vec<(String, String, Bytes)> = target
        .received()
        .iter()
        .map(|r| (r.method.to_string(), r.uri.to_string(), r.body.clone()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let mut methods_paths: Vec<(String, String)> = mix()
        .into_iter()
        .map(|(m, u, _)| (m.to_string(), u))
        .collect();
    methods_paths.sort();
    let mut replayed: Vec<(String, String)> = got.into_iter().map(|(m, u, _)| (m, u)).collect();
    replayed.sort();
    assert_eq!(replayed, methods_paths, "the mix as the clients sent it");
    for r in target.received() {
        assert_eq!(
            r.headers.get("host").and_then(|h| h.to_str().ok()),
            Some(target.url().trim_start_matches("http://")),
            "Host rewritten to the target"
        );
        if r.method != Method::GET {
            assert!(String::from_utf8_lossy(&r.body).contains("[redacted]"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Catches: `--compare` missing a changed status or a changed JSON field, or flagging an
/// unchanged answer (the redacted field differs from the recording by design).
#[tokio::test]
async fn replay_with_compare_reports_the_differences() {
    let dir = temp_dir("compare");
    let text = record_run(&dir).await;
    let records = parse(&text).unwrap();
    let same = FakeUpstream::builder()
        .header("content-type", "application/json")
        .body(answer_body())
        .start()
        .await;
    let report = replay(records.clone(), options(&same.url(), true)).await;
    assert_eq!(report.compared, mix().len() as u64, "{}", report.summary());
    assert_eq!(report.differences, 0, "{}", report.summary());

    let changed = FakeUpstream::builder()
        .header("content-type", "application/json")
        .body(answer_body().replace("\"pro\"", "\"free\""))
        .status_on("/api/search", 500)
        .start()
        .await;
    let report = replay(records, options(&changed.url(), true)).await;
    assert_eq!(
        report.differences,
        mix().len() as u64,
        "{}",
        report.summary()
    );
    let summary = report.summary();
    assert!(summary.contains("/plan: \"pro\" -> \"free\""), "{summary}");
    assert!(summary.contains("status 200 -> 500"), "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Catches: `--rate` ignored, or `--duration` not stopping the replay.
#[tokio::test]
async fn a_fixed_rate_replay_stops_at_its_duration() {
    let line = |i: u64| {
        format!(
            r#"{{"time_ms":{},"method":"GET","uri":"/r/{i}","request":{{"headers":[],"body":""}},"primary":{{"status":200}}}}"#,
            1000 + i * 60_000
        )
    };
    let text: Vec<String> = (0..5).map(line).collect();
    let records = parse(&text.join("\n")).unwrap();
    let target = FakeUpstream::start().await;
    let mut opts = options(&target.url(), false);
    // Recorded a minute apart; at 10/s the five would take 400 ms: 250 ms lets three go.
    opts.pace = Pace::Rate(10.0);
    opts.duration = Some(Duration::from_millis(250));
    let started = std::time::Instant::now();
    let report = replay(records, opts).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.sent, 3, "{}", report.summary());
    assert_eq!(target.count(), 3);
}

/// Threads of the process named `teeproxy-record` (`None` without /proc).
fn record_threads(pid: u32) -> Option<usize> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .filter_map(Result::ok)
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "teeproxy-record")
            })
            .count(),
    )
}

/// Catches: a record writer that outlives its config (one thread leaked per reload), and
/// rotation by `max_bytes` on the real binary.
#[tokio::test]
async fn reloads_leave_one_writer_and_files_rotate() {
    let dir = temp_dir("reload");
    let primary = FakeUpstream::start().await;
    let candidate = FakeUpstream::start().await;
    let file = dir.join("r.jsonl");
    let mut p = ProxyProcess::start(&record_yaml(
        &primary.url(),
        &candidate.url(),
        &file,
        ", max_bytes: 1KiB, rotate: 2",
    ))
    .await;
    let Some(n) = record_threads(p.pid()) else {
        println!("SKIPPED: /proc/<pid>/task not readable");
        return;
    };
    assert_eq!(n, 1);
    let config = p.dir().join("config.yaml");
    let rotating = ", max_bytes: 1KiB, rotate: 2";
    for i in 1..=4 {
        // Three changed configs, then back to recording everything.
        let sample = if i < 4 {
            format!(", sample: {}", 100 - i)
        } else {
            String::new()
        };
        let yaml = record_yaml(
            &primary.url(),
            &candidate.url(),
            &file,
            &format!("{rotating}{sample}"),
        );
        std::fs::write(&config, yaml).unwrap();
        p.signal(Signal::Hup);
        assert_eventually!(
            p.metric("teeproxy_config_reloads_total{result=\"ok\"}")
                .await
                == f64::from(i),
            "{}",
            p.stderr()
        );
        let (status, _) = http_get(p.addr(), "/after-reload", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    assert_eventually!(record_threads(p.pid()) == Some(1), "old writers end");
    // Enough lines for several files of 1 KiB (a line is several hundred bytes).
    for _ in 0..30 {
        let (status, _) = http_get(p.addr(), "/fill", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    assert_eventually!(
        p.metric("teeproxy_record_lines_total{route=\"all\",shadow=\"candidate\"}")
            .await
            >= 25.0
    );
    assert_eventually!(dir.join("r.jsonl.2").exists());
    assert!(
        !dir.join("r.jsonl.3").exists(),
        "only `rotate` old files kept"
    );
    for f in ["r.jsonl", "r.jsonl.1", "r.jsonl.2"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.len() <= 1024, "{f}: {} bytes", text.len());
        for l in text.lines() {
            serde_json::from_str::<Value>(l).expect("whole lines in every file");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
