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
