//! The `teeproxy` binary: `check` accepts every shipped config, and bad configs exit 64
//! with the file, line:column and key in the message.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_teeproxy"))
}

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

#[test]
fn check_accepts_every_shipped_config() {
    let mut files = Vec::new();
    yaml_files(&config_dir(), &mut files);
    assert!(
        files.len() >= 3,
        "config/tee.yaml and the examples: {files:?}"
    );
    for file in files {
        let out = bin()
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .expect("run teeproxy check");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}{}",
            file.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok"), "{stdout}");
        assert!(stdout.contains("routes (first match wins):"), "{stdout}");
        if std::fs::read_to_string(&file).unwrap().contains("shadows:") {
            assert!(stdout.contains("shadow "), "shadows listed: {stdout}");
        }
    }
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("teeproxy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp config");
    path
}

#[test]
fn bad_config_exits_64_naming_file_place_and_key() {
    let path = write_temp(
        "bad.yaml",
        "listeners: [{ name: a, address: \"127.0.0.1:0\" }]\nclusters:\n  p: { endpoints: [\"http://127.0.0.1:1\"] }\nroutes:\n  - name: r\n    primary: missing\n",
    );
    for args in [vec!["check", "--config"], vec!["--config"]] {
        let out = bin().args(&args).arg(&path).output().expect("run teeproxy");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}:6:14: routes[0].primary: unknown cluster \"missing\"",
                path.display()
            )),
            "{err}"
        );
    }
}

#[test]
fn unknown_key_and_missing_file_exit_64() {
    let path = write_temp("typo.yaml", "listeners: []\nclustrs: {}\n");
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("clustrs"));

    let out = bin()
        .args(["check", "--config", "/nonexistent/tee.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tee.yaml: cannot read"));

    let out = bin().output().unwrap();
    assert_eq!(out.status.code(), Some(64), "no --config is a usage error");
}

/// Sends one HTTP/1.1 request over a plain socket and returns the whole response text.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn demo_serves_on_its_own_and_exits_0_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = bin()
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("demo prints its addresses").unwrap();
    // "teeproxy demo: proxy on http://A, admin on http://B"
    let addrs: Vec<&str> = first
        .split("http://")
        .skip(1)
        .filter_map(|s| s.split([',', ' ']).next())
        .collect();
    let (proxy, admin) = (addrs[0], addrs[1]);

    let resp = http_get(proxy, "/api/users/42");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"name\":\"user-42\""), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("x-request-id: "),
        "{resp}"
    );
    let ready = http_get(admin, "/ready");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.contains("teeproxy_requests_total{route=\"api\",status_class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("teeproxy_shadow_offered_total{route=\"api\",shadow=\"candidate\"} 1"),
        "the demo mirrors to its candidate: {metrics}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "demo did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

/// Runs `teeproxy --config` with JSON logs, sends one request, stops it with SIGTERM and
/// returns everything it logged.
fn serve_one_request_and_collect_logs(access_log: bool) -> String {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = write_temp(
        &format!("serve-{access_log}.yaml"),
        &format!(
            "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\nclusters:\n  p: {{ endpoints: [\"http://{dead}\"] }}\nroutes:\n  - {{ name: r, primary: p }}\naccess_log: {{ enabled: {access_log} }}\n"
        ),
    );
    let mut child = bin()
        .args(["--log-format", "json", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start teeproxy");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut logs = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "teeproxy exited early: {logs}"
        );
        logs.push_str(&line);
        if line.contains("\"listening\"") {
            let at = line.find("\"addr\":\"").expect("addr field") + 8;
            break line[at..].split('"').next().unwrap().to_string();
        }
    };
    let resp = http_get(&addr, "/logged?x=1");
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    stderr.read_to_string(&mut logs).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    logs
}

#[test]
fn access_log_lines_are_json_and_can_be_switched_off() {
    let logs = serve_one_request_and_collect_logs(true);
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"target\":\"teeproxy::access\""))
        .collect();
    assert_eq!(access.len(), 1, "{logs}");
    for field in [
        "\"route\":\"r\"",
        "\"method\":\"GET\"",
        "\"path\":\"/logged\"",
        "\"status\":502",
        "\"request_id\":\"",
        "\"duration_ms\":",
        "\"endpoint\":\"http://",
    ] {
        assert!(
            access[0].contains(field),
            "{field} missing in {}",
            access[0]
        );
    }
    let logs = serve_one_request_and_collect_logs(false);
    assert!(!logs.contains("teeproxy::access"), "{logs}");
    assert!(
        logs.contains("upstream failure"),
        "errors are still logged: {logs}"
    );
}
