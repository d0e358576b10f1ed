//! Black-box suite: a real `teeproxy` process (the built binary, see
//! `teeproxy_tests::process`) driven from outside over raw sockets on 127.0.0.1, with
//! in-process fake upstreams in every fault mode. One module per group of the
//! reliability catalogue (A framing, B headers and upgrades, C HTTP/2 abuse, D slow
//! clients, E client aborts and primary faults, F shadow faults, G lifecycle and reload). Every case checks the status or the
//! connection's fate, what the primary and the shadow received (nothing, for refused or
//! aborted requests), and that the process still serves afterwards.
//!
//! The helpers here are shared by every module: `Rig` (a primary, a shadow and a proxy
//! process mirroring everything), raw exchanges with a small HTTP/1.1 response parser,
//! and upstreams the library does not have (a byte-counting one for huge bodies, a
//! scripted one that misbehaves by path).

mod a_framing;
mod b_headers;
mod b_websocket;
mod c_http2;
mod d_slow;
mod d_slow_reader;
mod e_faults;
mod f_shadow;
mod f_shadow_memory;
mod g_lifecycle;
mod g_reload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teeproxy_tests::process::{ProxyProcess, http_get};
use teeproxy_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the rig's primary answers (`FakeUpstream`'s default body).
pub const PRIMARY_BODY: &str = "hello from upstream";

/// A primary, a shadow (`candidate`) and a proxy process whose one route `all` sends
/// everything to the primary and mirrors every method to the shadow.
pub struct Rig {
    pub primary: FakeUpstream,
    pub shadow: FakeUpstream,
    pub proxy: ProxyProcess,
    healthy: u32,
}

impl Rig {
    /// Default upstreams; `extra` is appended to the config (top-level keys).
    pub async fn start(extra: &str) -> Rig {
        Self::with(FakeUpstream::builder(), "methods: any", extra).await
    }

    /// A rig with this primary, these shadow options and extra top-level config.
    pub async fn with(primary: FakeUpstreamBuilder, shadow_opts: &str, extra: &str) -> Rig {
        let primary = primary.name("primary").start().await;
        let shadow = FakeUpstream::builder()
            .name("candidate")
            .body("from candidate")
            .start()
            .await;
        let yaml = format!(
            "{}{extra}",
            shadow_yaml(&primary.url(), &shadow.url(), "", shadow_opts)
        );
        let proxy = ProxyProcess::start(&yaml).await;
        Rig {
            primary,
            shadow,
            proxy,
            healthy: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    pub async fn metrics(&self) -> String {
        self.proxy.metrics().await
    }

    /// Waits until everything the proxy started has landed: no request in flight, and
    /// every copy sent to the shadow was recorded there and has its outcome. After this,
    /// "the shadow received nothing more" is a fact, not a race. (A primary request the
    /// proxy aborted may show up late, or never, as incomplete: the primary is checked
    /// through `teeproxy_upstream_requests_total` where that matters.)
    pub async fn settle(&self) {
        settle(&self.proxy, &self.primary, &self.shadow).await;
    }

    /// Sends `request` raw and asserts it is answered with one of `want` and the
    /// connection closed; then that neither upstream received anything. Returns what
    /// was read.
    pub async fn refused(&mut self, request: &[u8], want: &[u16]) -> Exchange {
        let (p, s) = (self.primary.count(), self.shadow.count());
        let forwarded = self.forwarded().await;
        let ex = exchange(self.addr(), request).await;
        assert!(
            want.contains(&ex.status()),
            "{:?} answered {:?}, want one of {want:?}",
            String::from_utf8_lossy(request),
            ex.text()
        );
        assert!(
            ex.closed,
            "{:?}: the connection is closed after the refusal",
            String::from_utf8_lossy(request)
        );
        self.settle().await;
        assert_eq!(
            (self.forwarded().await, self.primary.count()),
            (forwarded, p),
            "{:?} was forwarded to the primary",
            String::from_utf8_lossy(request)
        );
        assert_eq!(
            self.shadow.count(),
            s,
            "{:?} reached the shadow",
            String::from_utf8_lossy(request)
        );
        ex
    }

    /// Requests the proxy sent to the primary (`teeproxy_upstream_requests_total`).
    pub async fn forwarded(&self) -> f64 {
        self.proxy
            .metric("teeproxy_upstream_requests_total{cluster=\"primary\",leg=\"primary\"}")
            .await
    }

    /// The process runs, admin answers `/live`, and a normal request is served by the
    /// primary and mirrored to the shadow.
    pub async fn assert_healthy(&mut self) {
        self.healthy += 1;
        let path = format!("/healthy/{}", self.healthy);
        assert_serves(&mut self.proxy, &path).await;
        assert_eventually!(
            self.primary
                .received()
                .iter()
                .any(|r| r.uri == path.as_str()),
            "the primary got {path}"
        );
        assert_eventually!(
            self.shadow
                .received()
                .iter()
                .any(|r| r.uri == path.as_str()),
            "the shadow got {path}"
        );
    }
}

/// See `Rig::settle`: the barrier for a proxy in front of `primary` mirroring route
/// `all` to shadow `candidate` at `shadow`.
pub async fn settle(proxy: &ProxyProcess, primary: &FakeUpstream, shadow: &FakeUpstream) {
    let sent_to_primary = "teeproxy_upstream_requests_total{cluster=\"primary\",leg=\"primary\"}";
    assert_eventually!(
        {
            let m = proxy.metrics().await;
            let n = ShadowCounts::from_metrics(&m, "all", "candidate");
            let outcomes: f64 = [
                "ok",
                "connect_error",
                "protocol_error",
                "body_error",
                "timeout",
            ]
            .iter()
            .map(|o| outcome(&m, "all", "candidate", o))
            .sum();
            metric_value(&m, "teeproxy_requests_in_flight") == 0.0
                && primary.count() as f64 <= metric_value(&m, sent_to_primary)
                && n.balanced()
                && outcomes == n.sent
                && shadow.count() as f64 == n.sent
        },
        "the proxy, the primary ({} recorded) and the shadow ({} recorded) agree; metrics:\n{}",
        primary.count(),
        shadow.count(),
        brief(&proxy.metrics().await)
    );
}

/// The non-zero counters and gauges of a `/metrics` text (no histograms, comments).
pub fn brief(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && !l.contains("_seconds_")
                && !l.ends_with(" 0")
                && !l.ends_with(" 0.0")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The process is alive, `/live` answers, and `GET path` through the first listener is
/// answered 200 by a primary that answers `PRIMARY_BODY`.
pub async fn assert_serves(proxy: &mut ProxyProcess, path: &str) {
    proxy.assert_alive();
    assert!(proxy.live().await, "admin /live answers");
    let got = http_get(proxy.addr(), path, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        Some((200, PRIMARY_BODY.to_string())),
        "a normal request is served"
    );
}

/// What came back on one raw connection.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    /// The proxy closed the connection (within the read limit).
    pub closed: bool,
}

impl Exchange {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
    /// The first response's status (0 when there is none).
    pub fn status(&self) -> u16 {
        raw_status(&self.text())
    }
    pub fn responses(&self) -> Vec<RawResponse> {
        parse_responses(&self.bytes)
    }
}

/// Writes `request` on a new connection (write errors are ignored: the proxy may close
/// early) and reads until the proxy closes, up to 5 s.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let _ = s.write_all(request).await;
    read_all(&mut s, Duration::from_secs(5)).await
}

/// Reads until EOF (or a reset) or `limit`.
pub async fn read_all(s: &mut TcpStream, limit: Duration) -> Exchange {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    Exchange { bytes, closed }
}

/// Reads from `s` until `needle` has been seen (or 5 s pass); returns what was read.
pub async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !out.windows(needle.len()).any(|w| w == needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    out
}

/// One HTTP/1.1 response parsed from raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// The body ended as its framing says (false: the bytes ran out first).
    pub complete: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The responses in `bytes`, in order (interim 1xx answers included). Bodies framed by
/// `Content-Length` or chunked; otherwise delimited by the end of the bytes. Responses
/// to HEAD are not supported.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        let mut r = RawResponse {
            status,
            headers: headers.clone(),
            body: Vec::new(),
            trailers: Vec::new(),
            complete: true,
        };
        if (100..200).contains(&status) || status == 204 || status == 304 {
        } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            let (body, trailers, used, complete) = dechunk(bytes);
            r.body = body;
            r.trailers = trailers;
            r.complete = complete;
            bytes = &bytes[used..];
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let n = len.min(bytes.len());
            r.body = bytes[..n].to_vec();
            r.complete = n == len;
            bytes = &bytes[n..];
        } else {
            r.body = bytes.to_vec();
            bytes = &[];
        }
        out.push(r);
    }
    out
}

/// Decodes a chunked body: (body, trailers, bytes used, whether the last chunk and the
/// final CRLF arrived).
fn dechunk(bytes: &[u8]) -> (Vec<u8>, Vec<(String, String)>, usize, bool) {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&bytes[at..], b"\r\n") else {
            return (body, Vec::new(), bytes.len(), false);
        };
        let line = String::from_utf8_lossy(&bytes[at..at + eol]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (body, Vec::new(), bytes.len(), false);
        };
        at += eol + 2;
        if size == 0 {
            if bytes[at..].starts_with(b"\r\n") {
                return (body, Vec::new(), at + 2, true);
            }
            let Some(end) = find(&bytes[at..], b"\r\n\r\n") else {
                return (body, Vec::new(), bytes.len(), false);
            };
            let trailers = String::from_utf8_lossy(&bytes[at..at + end])
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return (body, trailers, at + end + 4, true);
        }
        if bytes.len() < at + size + 2 {
            body.extend_from_slice(&bytes[at..bytes.len().min(at + size)]);
            return (body, Vec::new(), bytes.len(), false);
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A configured cluster name and endpoint for `yaml` builders.
pub fn cluster(name: &str, url: &str, extra: &str) -> String {
    if extra.is_empty() {
        format!("  {name}: {{ endpoints: [\"{url}\"] }}\n")
    } else {
        format!("  {name}: {{ endpoints: [\"{url}\"], {extra} }}\n")
    }
}

/// One request as `CountingUpstream` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub path: String,
    /// Body bytes received (framing excluded).
    pub bytes: u64,
    /// The body ended as its framing said.
    pub complete: bool,
}

/// A raw HTTP/1.1 upstream that reads request bodies (by `Content-Length` or chunked)
/// and only counts their bytes, for bodies too large to keep. Answers 200 `counted`,
/// keeps connections alive. `received_bytes` grows while a body streams in.
pub struct CountingUpstream {
    pub addr: SocketAddr,
    pub received_bytes: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<Counted>>>,
    task: JoinHandle<()>,
}

impl CountingUpstream {
    pub async fn start() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received_bytes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (bytes, reqs) = (received_bytes.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(count_connection(s, bytes.clone(), reqs.clone()));
            }
        });
        CountingUpstream {
            addr,
            received_bytes,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Counted> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Buffered reads for the raw upstreams.
struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    fn new(s: TcpStream) -> Self {
        Reader {
            s,
            buf: vec![0u8; 256 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// Reads more; false on EOF, error, or a full buffer.
    async fn fill(&mut self) -> bool {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return false;
        }
        match self.s.read(&mut self.buf[self.end..]).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.end += n;
                true
            }
        }
    }

    /// The bytes up to `delim` (consumed with it), or `None` when the stream ends first.
    async fn until(&mut self, delim: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf[self.start..self.end], delim) {
                let got = self.buf[self.start..self.start + i].to_vec();
                self.start += i + delim.len();
                return Some(got);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Consumes `n` bytes, reporting each piece's length; false when the stream ends
    /// first.
    async fn skip(&mut self, mut n: u64, mut each: impl FnMut(u64)) -> bool {
        while n > 0 {
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
                if !self.fill().await {
                    return false;
                }
            }
            let take = n.min((self.end - self.start) as u64);
            each(take);
            n -= take;
            self.start += take as usize;
        }
        true
    }
}

async fn count_connection(s: TcpStream, total: Arc<AtomicU64>, requests: Arc<Mutex<Vec<Counted>>>) {
    let mut r = Reader::new(s);
    loop {
        let Some(head) = r.until(b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let field = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        let mut counted = 0u64;
        let mut count = |n: u64| {
            counted += n;
            total.fetch_add(n, Ordering::Relaxed);
        };
        let complete = if field("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            // A size line, its data, a CRLF; then the last chunk, trailers, empty line.
            loop {
                let Some(line) = r.until(b"\r\n").await else {
                    break false;
                };
                let line = String::from_utf8_lossy(&line).into_owned();
                let Ok(size) = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                else {
                    break false;
                };
                if size == 0 {
                    let mut ok = true;
                    loop {
                        match r.until(b"\r\n").await {
                            Some(l) if l.is_empty() => break,
                            Some(_) => {}
                            None => {
                                ok = false;
                                break;
                            }
                        }
                    }
                    break ok;
                }
                if !r.skip(size, &mut count).await || !r.skip(2, |_| {}).await {
                    break false;
                }
            }
        } else {
            let len: u64 = field("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            r.skip(len, &mut count).await
        };
        requests.lock().expect("lock").push(Counted {
            path,
            bytes: counted,
            complete,
        });
        if !complete {
            return;
        }
        if r.s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ncounted")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A raw HTTP/1.1 upstream that misbehaves by path (request bodies are not expected):
/// - `/garbage...`: bytes that are not HTTP, then close;
/// - `/reset...`: a reset (RST) instead of an answer;
/// - `/huge-header...`: a response head with a 1 MiB header, then the connection is
///   kept open (a client that reused it would be seen);
/// - `/cut-length...`: `Content-Length: 1000`, 100 bytes, close;
/// - `/cut-chunked...`: a chunked body whose first chunk arrives, then close;
/// - anything else: 200 `ok`, keep-alive.
///
/// Records `(connection number, path)` for every request head.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(u64, String)>>>,
    task: JoinHandle<()>,
}

impl ScriptedUpstream {
    pub async fn start() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rec = seen.clone();
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((s, _)) = listener.accept().await {
                n += 1;
                tokio::spawn(scripted_connection(s, n, rec.clone()));
            }
        });
        ScriptedUpstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `(connection number, path)` per request head, in arrival order.
    pub fn seen(&self) -> Vec<(u64, String)> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|(_, p)| p == path).count()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scripted_connection(mut s: TcpStream, conn: u64, seen: Arc<Mutex<Vec<(u64, String)>>>) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let end = loop {
            if let Some(i) = find(&pending, b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        seen.lock().expect("lock").push((conn, path.clone()));
        if path.starts_with("/garbage") {
            let _ = s.write_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n").await;
            return;
        } else if path.starts_with("/reset") {
            let _ = s.set_zero_linger();
            return;
        } else if path.starts_with("/huge-header") {
            let mut resp = b"HTTP/1.1 200 OK\r\nx-huge: ".to_vec();
            resp.extend(std::iter::repeat_n(b'h', 1024 * 1024));
            resp.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\nok");
            if s.write_all(&resp).await.is_err() {
                return;
            }
            // Keep the connection: a request reusing it would be recorded here.
        } else if path.starts_with("/cut-length") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
            let _ = s.write_all(&[b'x'; 100]).await;
            return;
        } else if path.starts_with("/cut-chunked") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await;
            return;
        } else if s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}
