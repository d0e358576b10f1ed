//! What the binary's tests share: the binary, a guard that never leaves it running, the
//! shipped configs, temporary files, and the third-party tools some tests need.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_teeproxy"))
}

/// A `teeproxy` process started by a test: killed (by its process id) when dropped, so a
/// failing assertion never leaves it running, holding the test run's output open.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The repository's `config/` folder.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// Every `.yaml`/`.yml` file below `dir`.
pub fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
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

/// Writes `text` to `name` in a folder of this test process; returns its path.
pub fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("teeproxy-bin-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// `teeproxy check --json --config <a file with yaml>`: the printed config, as JSON text
/// (the command must succeed).
pub fn check_json_text(yaml: &str, name: &str) -> String {
    let path = write_temp(name, yaml);
    let out = bin()
        .args(["check", "--json", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run teeproxy check --json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The first of `candidates` that runs `--version` successfully; `None` (the caller
/// skips) when none does, except under CI (env `CI`), where the tool is required and
/// `install` says how `.ci/run` provides it.
pub fn tool(name: &str, candidates: &[PathBuf], install: &str) -> Option<PathBuf> {
    for c in candidates {
        let ok = Command::new(c)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(c.clone());
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name} is required under CI ({install})"
    );
    eprintln!("SKIPPED: {name} not found ({install})");
    None
}

/// Test certificates made with rcgen: a self-signed certificate for `names` (`CN=<first>`),
/// written as `<dir>/<stem>.crt` and `<dir>/<stem>.key`.
pub fn write_self_signed(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().copied().unwrap_or(stem),
    );
    if stem.ends_with("ca") {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    std::fs::create_dir_all(dir).expect("dir");
    let (c, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    (c, k)
}

/// A shipped config's text with its `/etc/teeproxy/tls/` files made (self-signed, by
/// rcgen) in a temporary folder and the paths pointing there, so `teeproxy check` can read
/// them.
pub fn with_test_tls_files(text: &str, name: &str) -> String {
    const DIR: &str = "/etc/teeproxy/tls/";
    if !text.contains(DIR) {
        return text.to_string();
    }
    let dir = std::env::temp_dir().join(format!(
        "teeproxy-bin-tests-{}/tls-{name}",
        std::process::id()
    ));
    let mut rest = text;
    while let Some(at) = rest.find(DIR) {
        let file: String = rest[at + DIR.len()..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | ',' | '}' | ']'))
            .collect();
        if let Some(stem) = file
            .strip_suffix(".crt")
            .or_else(|| file.strip_suffix(".key"))
            && !dir.join(format!("{stem}.crt")).exists()
        {
            write_self_signed(&dir, stem, &[stem]);
        }
        rest = &rest[at + DIR.len()..];
    }
    text.replace(DIR, &format!("{}/", dir.display()))
}
