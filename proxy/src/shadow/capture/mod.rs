//! Recording a shadow's exchanges to a JSON-lines file (`record:` of a shadow policy), for
//! `loadgen replay`. Of the copies actually exchanged, `sample` percent are taken (a draw of
//! its own, independent of the policy's sampling); the request, both answers, their
//! latencies and the comparison's result become one line, redacted before it leaves the
//! exchange's task. Lines go through a bounded channel to one writer thread per file, which
//! appends them, rotates the file past `max_bytes`, and ends when the last sender (the
//! `Recorder` of its config generation, held by the policy and by queued copies) is gone.
//! Nothing waits on the writer: a full channel drops the line (`record_full`). `line`
//! builds a line from an exchange.

pub(crate) mod line;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use serde_json::{Value, json};

use super::compare::BodySide;
use super::sample;
use crate::config::RecordConfig;
use crate::metrics::RecordMetrics;

/// What replaces a redacted value.
pub(crate) const REDACTED: &str = "[redacted]";

/// The sending side of one record file's writer, with what each line needs.
pub(crate) struct Recorder {
    tx: SyncSender<Vec<u8>>,
    /// Bytes of the lines in the channel (shared with the writer, which gives them back).
    queued: Arc<AtomicUsize>,
    threshold: u64,
    /// Lower-case header names.
    headers: Vec<String>,
    pointers: Vec<String>,
    metrics: RecordMetrics,
}

/// Bytes the lines waiting for one file's writer may hold together (the channel's `queue`
/// bounds their number; lines can be large: bodies are base64).
const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// Headers that carry credentials: never written, whatever `redact` lists.
const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

impl Recorder {
    /// Starts the file's writer thread; `None` (logged) when no thread can be started.
    pub(crate) fn start(c: &RecordConfig, metrics: RecordMetrics) -> Option<Arc<Recorder>> {
        match spawn_writer(c, metrics.clone()) {
            Ok((tx, queued, _)) => Some(Arc::new(Self::new(c, tx, queued, metrics))),
            Err(e) => {
                tracing::error!(path = %c.path.display(), error = %e, "record writer not started");
                None
            }
        }
    }

    fn new(
        c: &RecordConfig,
        tx: SyncSender<Vec<u8>>,
        queued: Arc<AtomicUsize>,
        metrics: RecordMetrics,
    ) -> Self {
        let (pointers, mut headers): (Vec<String>, Vec<String>) =
            c.redact.iter().cloned().partition(|r| r.starts_with('/'));
        // Credentials never reach the file, listed or not.
        headers.extend(ALWAYS_REDACTED.iter().map(|h| h.to_string()));
        Recorder {
            tx,
            queued,
            threshold: sample::threshold(c.sample),
            headers: headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            pointers,
            metrics,
        }
    }

    /// Hands a line to the writer without waiting; a full channel (in lines or in bytes)
    /// drops it.
    fn send(&self, line: Vec<u8>) {
        let len = line.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.metrics.full.inc();
            return;
        }
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                self.metrics.full.inc();
            }
            // The writer thread is gone (it only ends when every sender is).
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                self.metrics.write_error.inc();
            }
        }
    }

    fn headers_json(&self, h: &HeaderMap) -> Value {
        Value::Array(
            h.iter()
                .map(|(name, value)| {
                    let v = if self.headers.iter().any(|r| r == name.as_str()) {
                        REDACTED.to_string()
                    } else {
                        String::from_utf8_lossy(value.as_bytes()).into_owned()
                    };
                    json!([name.as_str(), v])
                })
                .collect(),
        )
    }

    /// The body as base64, JSON pointers redacted. With pointers to redact, a body that is
    /// not JSON (a form, compressed bytes, ...) is not written at all (`null`): redaction
    /// fails closed.
    fn body_b64(&self, body: &[u8]) -> Value {
        if self.pointers.is_empty() || body.is_empty() {
            return Value::String(BASE64.encode(body));
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
            return Value::Null;
        };
        for p in &self.pointers {
            if let Some(slot) = v.pointer_mut(p) {
                *slot = Value::String(REDACTED.into());
            }
        }
        serde_json::to_vec(&v).map_or(Value::Null, |out| Value::String(BASE64.encode(out)))
    }

    /// `body`, `body_len`, `truncated` of an answer's body as kept for comparison.
    fn answer_body(&self, side: Option<&BodySide>, limit: usize) -> Value {
        match side.map(BodySide::joined) {
            Some(BodySide::Complete(b)) => json!({
                "body": self.body_b64(&b), "body_len": b.len(), "truncated": false,
            }),
            Some(BodySide::TooLarge) => json!({
                "body": null, "body_len": null, "truncated": true, "body_limit": limit,
            }),
            _ => json!({ "body": null, "body_len": null, "truncated": false }),
        }
    }
}

/// Starts the writer thread of `c`'s file; it ends once every sender is dropped.
#[allow(clippy::type_complexity)]
fn spawn_writer(
    c: &RecordConfig,
    metrics: RecordMetrics,
) -> io::Result<(
    SyncSender<Vec<u8>>,
    Arc<AtomicUsize>,
    std::thread::JoinHandle<()>,
)> {
    let (tx, rx) = sync_channel(c.queue);
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = Writer {
        queued: queued.clone(),
        path: c.path.clone(),
        max_bytes: c.max_bytes,
        rotate: c.rotate,
        file: None,
        size: 0,
        failing: false,
        metrics,
    };
    let handle = std::thread::Builder::new()
        .name("teeproxy-record".into())
        .spawn(move || writer.run(rx))?;
    Ok((tx, queued, handle))
}

/// The writer thread of one record file.
struct Writer {
    /// The bytes of lines waiting; given back as each is taken.
    queued: Arc<AtomicUsize>,
    path: PathBuf,
    max_bytes: u64,
    rotate: usize,
    file: Option<File>,
    size: u64,
    /// A write failed and has been logged; logged again only once writing works again.
    failing: bool,
    metrics: RecordMetrics,
}

impl Writer {
    fn run(mut self, rx: Receiver<Vec<u8>>) {
        while let Ok(line) = rx.recv() {
            self.queued.fetch_sub(line.len(), Ordering::Relaxed);
            match self.write(&line) {
                Ok(()) => {
                    self.metrics.lines.inc();
                    if self.failing {
                        self.failing = false;
                        tracing::info!(path = %self.path.display(), "record file written again");
                    }
                }
                Err(e) => {
                    self.metrics.write_error.inc();
                    self.file = None;
                    if !self.failing {
                        self.failing = true;
                        tracing::warn!(path = %self.path.display(), error = %e, "record line not written");
                    }
                }
            }
        }
        tracing::debug!(path = %self.path.display(), "record writer done");
    }

    /// Appends one line, rotating first when it would take the file past `max_bytes`.
    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.open()?;
        }
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.file = None;
            rotate(&self.path, self.rotate)?;
            self.open()?;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("not open"))?;
        file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn open(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }
}

/// `path.{n}` -> `path.{n+1}` ... `path` -> `path.1`, keeping `keep` old files; with
/// `keep` 0 the file is removed.
fn rotate(path: &Path, keep: usize) -> io::Result<()> {
    let numbered = |n: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    };
    if keep == 0 {
        return ignore_missing(std::fs::remove_file(path));
    }
    for n in (1..keep).rev() {
        ignore_missing(std::fs::rename(numbered(n), numbered(n + 1)))?;
    }
    std::fs::rename(path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use prometheus_client::metrics::counter::Counter;
    use std::time::Duration;

    fn metrics() -> RecordMetrics {
        RecordMetrics {
            lines: Counter::default(),
            full: Counter::default(),
            write_error: Counter::default(),
        }
    }

    fn config(path: &Path) -> RecordConfig {
        RecordConfig {
            path: path.to_path_buf(),
            sample: 100.0,
            max_bytes: 1024,
            rotate: 2,
            redact: vec!["authorization".into(), "/user/email".into()],
            queue: 2,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("teeproxy-capture-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Catches: a full writer channel that blocks the exchange or loses lines uncounted.
    #[test]
    fn a_full_channel_drops_and_counts_without_waiting() {
        let (tx, _rx) = sync_channel(2); // a writer that never reads
        let m = metrics();
        let rec = Recorder::new(
            &config(Path::new("/nonexistent")),
            tx,
            Arc::default(),
            m.clone(),
        );
        let started = std::time::Instant::now();
        for _ in 0..5 {
            rec.send(b"{}\n".to_vec());
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(m.full.get(), 3, "two fit in the channel, three dropped");
        assert_eq!(m.lines.get(), 0);
    }

    /// Catches: large lines queued without a bound in bytes (only in number).
    #[test]
    fn lines_waiting_are_bounded_in_bytes_too() {
        let (tx, _rx) = sync_channel(100); // room for 100 lines, a writer that never reads
        let m = metrics();
        let queued = Arc::new(AtomicUsize::new(0));
        let rec = Recorder::new(
            &config(Path::new("/nonexistent")),
            tx,
            queued.clone(),
            m.clone(),
        );
        let big = vec![b'x'; MAX_QUEUED_BYTES / 3];
        for _ in 0..5 {
            rec.send(big.clone());
        }
        assert_eq!(m.full.get(), 2, "three fit in the byte bound, two dropped");
        assert_eq!(queued.load(Ordering::Relaxed), 3 * big.len());
    }

    /// Catches: credentials, header names or JSON pointers reaching the file unredacted.
    #[test]
    fn headers_and_json_pointers_are_redacted() {
        let (tx, _rx) = sync_channel(1);
        let rec = Recorder::new(&config(Path::new("/x")), tx, Arc::default(), metrics());
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        h.insert("cookie", HeaderValue::from_static("session=c00kie"));
        let v = rec.headers_json(&h).to_string();
        assert!(
            !v.contains("s3cret")
                && !v.contains("c00kie")
                && v.contains(REDACTED)
                && v.contains("kept"),
            "{v}"
        );
        let b64 = |v: Value| BASE64.decode(v.as_str().expect("a body")).unwrap();
        let body = br#"{"user":{"email":"a@b.c","name":"n"}}"#;
        let out = b64(rec.body_b64(body));
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("a@b.c") && out.contains(REDACTED) && out.contains("\"n\""),
            "{out}"
        );
        // Not JSON while pointers are to be redacted: not written.
        assert_eq!(rec.body_b64(b"email=a@b.c"), Value::Null);
        // Without pointers, bodies are written as they are.
        let (tx, _rx) = sync_channel(1);
        let mut c = config(Path::new("/x"));
        c.redact.retain(|r| !r.starts_with('/'));
        let plain = Recorder::new(&c, tx, Arc::default(), metrics());
        assert_eq!(b64(plain.body_b64(b"not json")), b"not json");
        // Credentials even when the list does not name them.
        c.redact.clear();
        let (tx, _rx) = sync_channel(1);
        let bare = Recorder::new(&c, tx, Arc::default(), metrics());
        let v = bare.headers_json(&h).to_string();
        assert!(!v.contains("s3cret") && !v.contains("c00kie"), "{v}");
    }

    /// Catches: a file growing past max_bytes, or rotation keeping more (or fewer) files.
    #[test]
    fn files_rotate_at_max_bytes_keeping_rotate_old_ones() {
        let dir = temp_dir("rotate");
        let path = dir.join("r.jsonl");
        let m = metrics();
        let mut w = Writer {
            queued: Arc::default(),
            path: path.clone(),
            max_bytes: 1024,
            rotate: 2,
            file: None,
            size: 0,
            failing: false,
            metrics: m,
        };
        let line = [b'x'; 399]
            .iter()
            .copied()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        for _ in 0..10 {
            w.write(&line).unwrap();
        }
        // 2 lines per file: 10 lines -> current + .1 + .2 (.3 never kept).
        for p in [path.clone(), dir.join("r.jsonl.1"), dir.join("r.jsonl.2")] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert_eq!(len, 800, "{}", p.display());
        }
        assert!(!dir.join("r.jsonl.3").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Catches: a writer thread that outlives its config generation (a leak per reload),
    /// or one that ends before writing what was queued.
    #[test]
    fn the_writer_ends_when_its_recorder_is_dropped() {
        let dir = temp_dir("ends");
        let m = metrics();
        let c = config(&dir.join("e.jsonl"));
        let (tx, queued, handle) = spawn_writer(&c, m.clone()).unwrap();
        let rec = Recorder::new(&c, tx, queued, m.clone());
        rec.send(b"{}\n".to_vec());
        drop(rec);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(handle.join().is_ok());
        });
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(10)),
            Ok(true),
            "the writer thread ended"
        );
        assert_eq!(m.lines.get(), 1, "the queued line was written first");
        assert_eq!(std::fs::read(dir.join("e.jsonl")).unwrap(), b"{}\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Catches: a write failure that is lost (not counted) or that stops the writer.
    #[test]
    fn write_errors_are_counted_and_the_writer_goes_on() {
        let dir = temp_dir("errors");
        let m = metrics();
        let c = config(&dir.join("missing-dir").join("w.jsonl"));
        let (tx, _, handle) = spawn_writer(&c, m.clone()).unwrap();
        tx.send(b"{}\n".to_vec()).unwrap();
        tx.send(b"{}\n".to_vec()).unwrap();
        drop(tx);
        handle.join().unwrap();
        assert_eq!((m.write_error.get(), m.lines.get()), (2, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
