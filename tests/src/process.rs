//! A real `teeproxy` process for black-box tests: spawn, configure, observe, stop.
//!
//! `ProxyProcess::start(yaml)` writes the config to a temporary directory, spawns the
//! binary with its stderr going to a file there, and waits for one `listening` log line
//! per configured listener and the `admin listening` line: they carry the bound
//! addresses, so every listener may use port 0. (With a binary that does not log the
//! admin address, the admin port is picked by binding 127.0.0.1:0 and releasing it; when
//! another process takes it in between, the proxy exits with a bind error and the start
//! is retried with another port.)
//!
//! The binary (see `teeproxy_bin`): `TEEPROXY_BIN` if set, else `teeproxy` in the
//! target profile directory of the running test (`target/debug`). This module never runs
//! cargo: `cargo test --workspace` builds the binary (it is needed by the `teeproxy`
//! package's own integration test), and a missing binary fails the test with the command
//! that builds it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use teeproxy::config::Config;

use crate::metric_value;

/// The admin line `crate::yaml` writes; given a picked port when the binary does not log
/// the admin address.
const ADMIN_PORT_0: &str = "admin: { address: \"127.0.0.1:0\" }";

/// Signals a test may send to the proxy (by name, through `kill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    Hup,
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Kill => "KILL",
        }
    }
}

/// Log line format passed as `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Options for a proxy process; `start` spawns it.
pub struct ProxyProcessBuilder {
    yaml: String,
    env: Vec<(String, String)>,
    nofile: Option<u64>,
    log_format: LogFormat,
    watch: bool,
}

impl ProxyProcessBuilder {
    /// An extra environment variable for the process (`RUST_LOG` defaults to `info`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs the binary under `ulimit -n n` (through `sh`, which then `exec`s it: the
    /// process id stays the proxy's).
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    pub fn log_format(mut self, f: LogFormat) -> Self {
        self.log_format = f;
        self
    }

    /// Lets the proxy watch its config file (off by default here, with `--no-watch`, so
    /// that tests which rewrite the file and send SIGHUP see one reload, not two).
    pub fn watch_config(mut self) -> Self {
        self.watch = true;
        self
    }

    /// Spawns the proxy and waits (up to 20 s) until every listener is bound.
    pub async fn start(self) -> ProxyProcess {
        let bin = teeproxy_bin();
        let dir = temp_dir();
        // Admin on port 0 first: the admin listener logs its bound address. A binary that
        // does not gets a port picked here instead (free a moment ago: retried if lost).
        let mut pick_port = false;
        let mut last_err = String::new();
        for _attempt in 0..6 {
            let yaml = with_admin_port(&self.yaml, if pick_port { free_port() } else { 0 });
            let config = Config::from_yaml(&yaml)
                .unwrap_or_else(|e| panic!("black-box test config: {e}\n{yaml}"));
            let admin = config.admin.address;
            let names: Vec<String> = config
                .listener_addrs()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            let config_path = dir.join("config.yaml");
            let stderr_path = dir.join("stderr.log");
            fs::write(&config_path, &yaml).expect("write the config");
            let child = self.spawn(bin, &config_path, &stderr_path);
            let mut p = ProxyProcess {
                child,
                listeners: Vec::new(),
                admin,
                dir: dir.clone(),
                stderr_path,
            };
            match p.wait_listening(&names, admin.port() == 0).await {
                Ok(()) => return p,
                Err(Started::AdminUnknown) => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    pick_port = true;
                }
                Err(Started::Failed(stderr))
                    if pick_port
                        && stderr.contains("cannot listen on")
                        && stderr.contains("(admin)") =>
                {
                    // The picked port was taken before the proxy bound it: another one.
                    last_err = stderr;
                }
                Err(Started::Failed(stderr)) => panic!(
                    "teeproxy did not start ({}):\n{stderr}\nconfig:\n{yaml}",
                    bin.display()
                ),
            }
        }
        panic!("teeproxy could not bind a free admin port:\n{last_err}");
    }

    fn spawn(&self, bin: &Path, config: &Path, stderr: &Path) -> Child {
        let mut cmd = match self.nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--config")
            .arg(config)
            .arg("--log-format")
            .arg(match self.log_format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            });
        if !self.watch {
            cmd.arg("--no-watch");
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let err = fs::File::create(stderr).expect("create the stderr file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
    }
}

/// A `teeproxy` process started by this test; killed (by its process id) when dropped.
pub struct ProxyProcess {
    child: Child,
    listeners: Vec<(String, SocketAddr)>,
    admin: SocketAddr,
    dir: PathBuf,
    stderr_path: PathBuf,
}

impl ProxyProcess {
    /// A builder for `yaml`: a full config as `crate::yaml` and friends write it (admin
    /// on `127.0.0.1:0`), or one without an `admin` key (admin on 127.0.0.1, port 0, is
    /// added). The file the proxy reads is `dir()/config.yaml`.
    pub fn builder(yaml: &str) -> ProxyProcessBuilder {
        ProxyProcessBuilder {
            yaml: yaml.to_string(),
            env: Vec::new(),
            nofile: None,
            log_format: LogFormat::Json,
            watch: false,
        }
    }

    /// Starts a proxy with JSON logs and default options.
    pub async fn start(yaml: &str) -> ProxyProcess {
        Self::builder(yaml).start().await
    }

    /// Waits for a `listening` line per listener and, when `admin_from_log`, the
    /// `admin listening` line.
    async fn wait_listening(
        &mut self,
        names: &[String],
        admin_from_log: bool,
    ) -> Result<(), Started> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut listeners_up_at = None;
        loop {
            let stderr = self.stderr();
            let found: Vec<(String, SocketAddr)> =
                stderr.lines().filter_map(parse_listening).collect();
            let admin = stderr.lines().find_map(parse_admin_listening);
            if names.iter().all(|n| found.iter().any(|(f, _)| f == n)) {
                self.listeners = names
                    .iter()
                    .filter_map(|n| found.iter().find(|(f, _)| f == n).cloned())
                    .collect();
                if !admin_from_log {
                    return Ok(());
                }
                if let Some(admin) = admin {
                    self.admin = admin;
                    return Ok(());
                }
                // The admin task logs on its own; give it a moment after the listeners.
                let up = *listeners_up_at.get_or_insert_with(Instant::now);
                if up.elapsed() > Duration::from_secs(2) {
                    return Err(Started::AdminUnknown);
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Started::Failed(format!(
                    "exited with {status}; stderr:\n{}",
                    self.stderr()
                )));
            }
            if Instant::now() > deadline {
                return Err(Started::Failed(format!(
                    "no `listening` line for {names:?} within 20 s; stderr:\n{}",
                    self.stderr()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The first listener's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    /// A named listener's bound address.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
            .1
    }

    /// `http://ADDR{path}` on the first listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory with `config.yaml` and `stderr.log` (removed on drop unless the
    /// test is panicking).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asserts the process is running (with its stderr when it is not).
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("teeproxy exited with {status}; stderr:\n{}", self.stderr());
        }
    }

    /// Sends a signal with `kill -SIG PID` (only while the process has not been reaped,
    /// so the id is still this child's).
    pub fn signal(&mut self, sig: Signal) {
        assert!(self.alive(), "signal {sig:?} to a process that exited");
        let status = Command::new("kill")
            .arg(format!("-{}", sig.name()))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{} {}", sig.name(), self.pid());
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Memory, CPU and descriptors from /proc, or `None` when any of it cannot be read
    /// (no /proc, another pid namespace, a hardened mount). Take the baseline with
    /// `usage_or_skip!`, later samples with `usage_now`: a test never asserts on a value
    /// it could not read.
    pub fn usage(&self) -> Option<Usage> {
        Some(Usage {
            rss_kib: self.rss_kib()?,
            peak_rss_kib: self.peak_rss_kib()?,
            cpu_ticks: self.cpu_ticks()?,
            open_fds: self.open_fds()?,
        })
    }

    /// `usage` after a baseline was read: /proc going unreadable mid-test is a failure.
    pub fn usage_now(&self) -> Usage {
        self.usage().unwrap_or_else(|| {
            panic!(
                "/proc/{} was readable for the baseline and is not now",
                self.pid()
            )
        })
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status).
    fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident memory in KiB (`VmHWM`).
    fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Open file descriptors (entries of /proc/PID/fd).
    fn open_fds(&self) -> Option<usize> {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .ok()
            .map(Iterator::count)
    }

    /// The soft `Max open files` limit the process runs with.
    pub fn fd_limit(&self) -> Option<u64> {
        let limits = fs::read_to_string(format!("/proc/{}/limits", self.pid())).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// User plus system CPU time used so far, in clock ticks (see `clock_ticks_per_sec`).
    fn cpu_ticks(&self) -> Option<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the command name (which is in parentheses and may hold spaces):
        // state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }

    /// A GET to the admin listener: `(status, body)`, or `None` when it does not answer
    /// within `limit`.
    pub async fn admin_get(&self, path: &str, limit: Duration) -> Option<(u16, String)> {
        http_get(self.admin, path, limit).await
    }

    /// Whether `/live` answers 200 within 2 s.
    pub async fn live(&self) -> bool {
        matches!(
            self.admin_get("/live", Duration::from_secs(2)).await,
            Some((200, _))
        )
    }

    /// The `/metrics` text (panics when admin does not answer within 5 s).
    pub async fn metrics(&self) -> String {
        match self.admin_get("/metrics", Duration::from_secs(5)).await {
            Some((200, body)) => body,
            other => panic!(
                "admin /metrics answered {other:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// One sample of `/metrics` (0 when absent); see `crate::metric_value`.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        end_child(&mut self.child, "teeproxy", &self.dir);
    }
}

/// For a `Drop`: kills `child` (by its own process id) if it still runs and reaps it; its
/// folder `dir` is removed, or kept and named when a test is failing.
pub fn end_child(child: &mut Child, what: &str, dir: &Path) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
    if std::thread::panicking() {
        eprintln!(
            "{what} (pid {}) files kept in {}",
            child.id(),
            dir.display()
        );
    } else {
        let _ = fs::remove_dir_all(dir);
    }
}

/// One reading of a process's resources from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `VmRSS`.
    pub rss_kib: u64,
    /// `VmHWM`.
    pub peak_rss_kib: u64,
    /// User plus system CPU time in clock ticks (usually 10 ms).
    pub cpu_ticks: u64,
    /// Entries of /proc/PID/fd.
    pub open_fds: usize,
}

/// The baseline `Usage` of a `ProxyProcess`, or: prints `SKIPPED <test>: /proc/<pid>
/// unreadable` to stderr and returns from the (unit-returning) test. Memory and CPU
/// assertions then skip loudly instead of passing on numbers nobody read.
#[macro_export]
macro_rules! usage_or_skip {
    ($proxy:expr) => {
        match $proxy.usage() {
            Some(u) => u,
            None => {
                eprintln!(
                    "SKIPPED {}: /proc/{} unreadable",
                    std::thread::current().name().unwrap_or(module_path!()),
                    $proxy.pid()
                );
                return;
            }
        }
    };
}

/// A GET over a fresh HTTP/1.1 connection: see `crate::h1::get`.
pub use crate::h1::get as http_get;

/// Why a start attempt did not give a running proxy.
enum Started {
    /// Listening, but the admin address (port 0) was not logged.
    AdminUnknown,
    /// Exited or never listened; the stderr.
    Failed(String),
}

/// The address from an `admin listening` log line, JSON or text.
fn parse_admin_listening(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    if line.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        if v.get("message")? != "admin listening" {
            return None;
        }
        return v.get("addr")?.as_str()?.parse().ok();
    }
    if !line.contains(" admin listening") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?
        .parse()
        .ok()
}

/// `(listener, addr)` from a `listening` log line, JSON or text.
fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let line = strip_ansi(line);
    if line.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        let msg = v
            .get("message")
            .or_else(|| v.get("fields")?.get("message"))?;
        if msg != "listening" {
            return None;
        }
        let field = |k: &str| v.get(k).or_else(|| v.get("fields")?.get(k))?.as_str();
        return Some((field("listener")?.to_string(), field("addr")?.parse().ok()?));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    if !words
        .windows(2)
        .any(|w| w[1] == "listening" && w[0] != "admin")
    {
        return None;
    }
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k));
    Some((
        field("listener=")?.to_string(),
        field("addr=")?.parse().ok()?,
    ))
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn with_admin_port(yaml: &str, port: u16) -> String {
    let admin = format!("admin: {{ address: \"127.0.0.1:{port}\" }}");
    if yaml.contains(ADMIN_PORT_0) {
        yaml.replace(ADMIN_PORT_0, &admin)
    } else if !yaml.lines().any(|l| l.starts_with("admin:")) {
        format!("{admin}\n{yaml}")
    } else {
        yaml.to_string()
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn temp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "teeproxy-blackbox-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The `teeproxy` binary to run. Never built here: `TEEPROXY_BIN` if set, else
/// `teeproxy` in the profile directory of the running test (`target/<profile>`, found by
/// walking up from `target/<profile>/deps/<test>`). `cargo test --workspace` (or
/// `cargo test -p teeproxy-tests -p teeproxy`) builds it, because the `teeproxy` package
/// has an integration test (`proxy/tests/cli.rs`) and cargo builds a package's binaries
/// for those. When it is missing every test that needs it fails, naming the command.
pub fn teeproxy_bin() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("TEEPROXY_BIN") {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("TEEPROXY_BIN={} is not a file", p.display()))
            };
        }
        let exe = std::env::current_exe().map_err(|e| format!("current test executable: {e}"))?;
        let name = format!("teeproxy{}", std::env::consts::EXE_SUFFIX);
        let mut dir = exe.parent();
        while let Some(d) = dir {
            let bin = d.join(&name);
            if bin.is_file() {
                return Ok(bin);
            }
            if d.file_name().is_some_and(|n| n == "deps") {
                dir = d.parent();
            } else {
                break;
            }
        }
        let profile_dir = exe.parent().and_then(Path::parent);
        let profile = profile_dir
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let flag = match profile {
            "debug" => String::new(),
            "release" => " --release".to_string(),
            p => format!(" --profile {p}"),
        };
        Err(format!(
            "no teeproxy binary next to {} (looked in {}); build it with \
             `cargo build -p teeproxy{flag}` (or run `cargo test --workspace`), or set TEEPROXY_BIN",
            exe.display(),
            profile_dir.map_or_else(|| "?".to_string(), |d| d.display().to_string()),
        ))
    });
    match found {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_parse_in_both_formats() {
        let json = r#"{"timestamp":"t","level":"INFO","message":"listening","listener":"public","addr":"127.0.0.1:4242","target":"teeproxy"}"#;
        assert_eq!(
            parse_listening(json),
            Some(("public".into(), "127.0.0.1:4242".parse().unwrap()))
        );
        let text = "2025-01-01T00:00:00Z  \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mteeproxy\u{1b}[0m\u{1b}[2m:\u{1b}[0m listening \u{1b}[3mlistener\u{1b}[0m\u{1b}[2m=\u{1b}[0mpublic \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:80";
        assert_eq!(
            parse_listening(text),
            Some(("public".into(), "127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(parse_listening("INFO teeproxy: draining"), None);
        let admin = r#"{"timestamp":"t","level":"INFO","message":"admin listening","addr":"127.0.0.1:9901","target":"teeproxy::admin"}"#;
        assert_eq!(parse_listening(admin), None);
        assert_eq!(
            parse_admin_listening(admin),
            Some("127.0.0.1:9901".parse().unwrap())
        );
        let admin_text =
            "2025-01-01T00:00:00Z  INFO teeproxy::admin: admin listening addr=127.0.0.1:9901";
        assert_eq!(parse_listening(admin_text), None);
        assert_eq!(
            parse_admin_listening(admin_text),
            Some("127.0.0.1:9901".parse().unwrap())
        );
        assert_eq!(parse_admin_listening(json), None);
    }

    #[test]
    fn the_admin_line_gets_a_port() {
        assert_eq!(
            with_admin_port("listeners: []\nadmin: { address: \"127.0.0.1:0\" }\n", 9),
            "listeners: []\nadmin: { address: \"127.0.0.1:9\" }\n"
        );
        assert!(with_admin_port("listeners: []\n", 9).starts_with("admin: "));
    }
}
