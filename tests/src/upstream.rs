//! The fake upstream every suite uses: one type, `FakeUpstream`, built with
//! `FakeUpstream::builder()`. By default it is a real HTTP/1.1 and h2c server (hyper) that
//! records every request and answers as the builder says (status, body, headers, delays
//! and statuses by path, echo). One builder call turns it into a misbehaving upstream on
//! raw sockets instead:
//! - `black_hole()`: accepts, reads everything, never answers;
//! - `never_read()`: accepts and never reads (the sender's window fills up);
//! - `endless_body(limit)`: answers 200 with a chunked body that does not end;
//! - `count_bytes()`: reads bodies of any size, counting their bytes only;
//! - `fault_on(prefix, fault)` / `fault(fault)`: fails requests by path (garbage, reset,
//!   huge header, cut bodies), answers the others `200 ok`;
//! - `upgrade_echo()`: answers an upgrade with 101, then echoes bytes upper-cased.
//!
//! Whatever the mode, it counts connections (`accepted`, `open`, `max_open`) and requests
//! (`count`), and stops serving (its connections closed) when dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::h1::find;

/// One request as a fake upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// False when the body ended in an error (the sender aborted).
    pub complete: bool,
}

/// One request as a `count_bytes()` upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub path: String,
    /// Body bytes received (framing excluded).
    pub bytes: u64,
    /// The body ended as its framing said.
    pub complete: bool,
}

/// How a `fault_on` upstream fails a request (after reading its head). Every fault but
/// `HugeHeader` closes the connection after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// These bytes (not HTTP), then close.
    Garbage(&'static [u8]),
    /// A reset (RST) instead of an answer.
    Reset,
    /// A response head with a 1 MiB header (`200`, `content-length: 2`, `ok`); the
    /// connection is kept open, so a client that reused it would be seen.
    HugeHeader,
    /// `Content-Length: 1000`, 100 bytes, close.
    CutLength,
    /// A chunked body whose first chunk (`first`) arrives, then close.
    CutChunked,
}

/// Garbage that starts like a TLS record, for `Fault::Garbage`.
pub const NOT_HTTP: &[u8] = b"\x16\x03\x01 this is not HTTP\r\n\r\n";
/// The garbage `teeproxy::demo::faults` answers with (the suites that used that demo
/// upstream as a fake still send exactly these bytes).
pub const DEMO_GARBAGE: &[u8] = b"\x16\x03\x01 garbage, not HTTP\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// hyper: records and answers as the builder says.
    Http,
    BlackHole,
    NeverRead,
    /// Chunked 200 body bounded by this many bytes.
    EndlessBody(usize),
    CountBytes,
    /// Raw HTTP/1.1: the faults by path, `200 ok` otherwise.
    Faults,
    UpgradeEcho,
}

#[derive(Clone)]
struct Behaviour {
    mode: Mode,
    /// Extra delay for paths starting with a prefix.
    delay_on: Vec<(String, Duration)>,
    /// Another status for paths starting with a prefix.
    status_on: Vec<(String, StatusCode)>,
    /// Faults for paths starting with a prefix (the first match applies).
    faults: Vec<(String, Fault)>,
    /// Stream the request body straight back as the response body.
    echo: bool,
    status: StatusCode,
    delay: Duration,
    body: Bytes,
    headers: Vec<(String, String)>,
    /// Sent back in `x-upstream` (none when `None`).
    name: Option<String>,
    /// hyper's HTTP/1.1 server alone, without timer (no h2c detection).
    http1_only: bool,
}

/// What a fake upstream saw, whatever its mode.
#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    counted: Mutex<Vec<Counted>>,
    /// `(connection number, path)` per request head.
    seen: Mutex<Vec<(u64, String)>>,
    last_head: Mutex<String>,
    /// Requests recorded by the raw modes (`Http` counts `received`).
    count: AtomicUsize,
    in_progress: AtomicUsize,
    received_bytes: AtomicU64,
    accepted: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    /// Statuses by path prefix set while running (`set_status_on`), before the builder's.
    status_now: Mutex<Vec<(String, StatusCode)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds a fake upstream.
pub struct FakeUpstreamBuilder {
    b: Behaviour,
}

impl FakeUpstreamBuilder {
    pub fn status(mut self, s: u16) -> Self {
        self.b.status = StatusCode::from_u16(s).expect("valid status");
        self
    }
    /// Wait this long (after reading the request body) before answering.
    pub fn delay(mut self, d: Duration) -> Self {
        self.b.delay = d;
        self
    }
    /// Wait `d` more on paths starting with `prefix`.
    pub fn delay_on(mut self, prefix: &str, d: Duration) -> Self {
        self.b.delay_on.push((prefix.to_string(), d));
        self
    }
    /// Answer `status` on paths starting with `prefix`.
    pub fn status_on(mut self, prefix: &str, status: u16) -> Self {
        self.b.status_on.push((
            prefix.to_string(),
            StatusCode::from_u16(status).expect("valid status"),
        ));
        self
    }
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.b.body = body.into();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.b.headers.push((k.to_string(), v.to_string()));
        self
    }
    /// Answer at once with the request body streamed back (the recorded body is empty).
    pub fn echo(mut self) -> Self {
        self.b.echo = true;
        self
    }
    /// The `x-upstream` value (default `upstream`).
    pub fn name(mut self, n: &str) -> Self {
        self.b.name = Some(n.to_string());
        self
    }
    /// No `x-upstream` header.
    pub fn anonymous(mut self) -> Self {
        self.b.name = None;
        self
    }
    /// Serve with hyper's HTTP/1.1 server alone (no h2c, no header-read timer).
    pub fn http1_only(mut self) -> Self {
        self.b.http1_only = true;
        self
    }

    /// Accept, read everything, never answer; `count` is the request heads seen.
    pub fn black_hole(self) -> Self {
        self.mode(Mode::BlackHole)
    }
    /// Accept and never read (connections held open until dropped).
    pub fn never_read(self) -> Self {
        self.mode(Mode::NeverRead)
    }
    /// Read a request (one read), answer 200 with a chunked body of 4 KiB `e` chunks
    /// that never ends (bounded by `limit` bytes so a broken test cannot run away).
    pub fn endless_body(self, limit: usize) -> Self {
        self.mode(Mode::EndlessBody(limit))
    }
    /// Raw HTTP/1.1 that reads request bodies (by `Content-Length` or chunked) and only
    /// counts their bytes (`counted`, `received_bytes`), for bodies too large to keep.
    /// Answers 200 `counted`, keeps connections alive.
    pub fn count_bytes(self) -> Self {
        self.mode(Mode::CountBytes)
    }
    /// Answer a (WebSocket) upgrade with 101, then send back every byte received
    /// upper-cased. `count` is the upgrades seen, `last_head` the last request head.
    pub fn upgrade_echo(self) -> Self {
        self.mode(Mode::UpgradeEcho)
    }
    /// Fail requests whose path starts with `prefix` with `fault` (the first matching
    /// prefix applies). The upstream is then raw HTTP/1.1 (request bodies are not
    /// expected): every other request is answered `200`, `content-length: 2`, `ok`,
    /// keep-alive, whatever the status, body or headers set here.
    pub fn fault_on(mut self, prefix: &str, fault: Fault) -> Self {
        self.b.faults.push((prefix.to_string(), fault));
        self.mode(Mode::Faults)
    }
    /// Fail every request with `fault`.
    pub fn fault(self, fault: Fault) -> Self {
        self.fault_on("", fault)
    }

    fn mode(mut self, m: Mode) -> Self {
        assert!(
            self.b.mode == Mode::Http || self.b.mode == m,
            "one mode per fake upstream: {:?} and {m:?}",
            self.b.mode
        );
        self.b.mode = m;
        self
    }

    pub async fn start(self) -> FakeUpstream {
        self.start_on("127.0.0.1:0".parse().expect("address")).await
    }

    /// Starts on `addr` (another loopback address, such as `127.0.0.2:0`, or the port
    /// of another upstream on another address).
    pub async fn start_on(self, addr: SocketAddr) -> FakeUpstream {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let behaviour = Arc::new(self.b);
        let (st, b) = (state.clone(), behaviour.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            let mut n = 0u64;
            loop {
                while conns.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                n += 1;
                st.accepted.fetch_add(1, Ordering::SeqCst);
                let now = st.open.fetch_add(1, Ordering::SeqCst) + 1;
                st.max_open.fetch_max(now, Ordering::SeqCst);
                let open = Open(st.clone());
                conns.spawn(serve(stream, n, b.clone(), open));
            }
        });
        FakeUpstream {
            addr,
            mode: behaviour.mode,
            state,
            task,
        }
    }
}

/// Counts a connection open until dropped (its task ended or was aborted).
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request as being read until dropped (recorded, or abandoned by hyper).
struct InProgress(Arc<State>);

impl InProgress {
    fn new(st: &Arc<State>) -> Self {
        st.in_progress.fetch_add(1, Ordering::SeqCst);
        InProgress(st.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(s: TcpStream, conn: u64, b: Arc<Behaviour>, open: Open) {
    let st = open.0.clone();
    match b.mode {
        Mode::Http => serve_http(s, b, st).await,
        Mode::BlackHole => black_hole(s, &st).await,
        Mode::NeverRead => {
            let _held = s;
            std::future::pending::<()>().await;
        }
        Mode::EndlessBody(limit) => endless_body(s, limit, &st).await,
        Mode::CountBytes => count_connection(s, &st).await,
        Mode::Faults => fault_connection(s, conn, &b.faults, &st).await,
        Mode::UpgradeEcho => upgrade_echo(s, &st).await,
    }
    drop(open);
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            mode: Mode::Http,
            delay_on: Vec::new(),
            status_on: Vec::new(),
            faults: Vec::new(),
            echo: false,
            status: StatusCode::OK,
            delay: Duration::ZERO,
            body: Bytes::from_static(b"hello from upstream"),
            headers: Vec::new(),
            name: Some("upstream".to_string()),
            http1_only: false,
        }
    }
}

async fn serve_http(stream: TcpStream, b: Arc<Behaviour>, st: Arc<State>) {
    let http1_only = b.http1_only;
    let svc = service_fn(move |req: Request<Incoming>| {
        let b = b.clone();
        let st = st.clone();
        let reading = InProgress::new(&st);
        async move {
            let resp = if b.echo {
                drop(reading);
                echo(&st, req).map(Either::Left)
            } else {
                answer(&b, &st, req, reading).await.map(Either::Right)
            };
            Ok::<_, Infallible>(resp)
        }
    });
    if http1_only {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    } else {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
    }
}

fn echo(st: &State, req: Request<Incoming>) -> Response<Incoming> {
    let (parts, body) = req.into_parts();
    lock(&st.received).push(Received {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: Bytes::new(),
        trailers: None,
        complete: true,
    });
    Response::new(body)
}

async fn answer(
    b: &Behaviour,
    st: &State,
    req: Request<Incoming>,
    reading: InProgress,
) -> Response<Full<Bytes>> {
    let (parts, mut body) = req.into_parts();
    let parts_path = parts.uri.path().to_string();
    let mut buf = BytesMut::new();
    let mut complete = true;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(data) => {
                    st.received_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    buf.extend_from_slice(&data);
                }
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    lock(&st.received).push(Received {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: buf.freeze(),
        trailers,
        complete,
    });
    drop(reading);
    let extra: Duration = b
        .delay_on
        .iter()
        .filter(|(p, _)| parts_path.starts_with(p.as_str()))
        .map(|(_, d)| *d)
        .sum();
    if !(b.delay + extra).is_zero() {
        tokio::time::sleep(b.delay + extra).await;
    }
    let set_now = lock(&st.status_now)
        .iter()
        .find(|(p, _)| parts_path.starts_with(p.as_str()))
        .map(|(_, s)| *s);
    let status = set_now.unwrap_or_else(|| {
        b.status_on
            .iter()
            .find(|(p, _)| parts_path.starts_with(p.as_str()))
            .map_or(b.status, |(_, s)| *s)
    });
    let mut resp = Response::builder().status(status);
    if let Some(name) = &b.name {
        resp = resp.header("x-upstream", name.as_str());
    }
    for (k, v) in &b.headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    resp.body(Full::new(b.body.clone()))
        .expect("valid response")
}

/// A fake upstream on 127.0.0.1 (see the module documentation). Dropping it stops it.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    mode: Mode,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    pub fn builder() -> FakeUpstreamBuilder {
        FakeUpstreamBuilder {
            b: Behaviour::default(),
        }
    }

    /// An upstream answering 200 with a fixed body.
    pub async fn start() -> FakeUpstream {
        Self::builder().start().await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request recorded so far (HTTP mode: after its body was read).
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// Takes the recorded requests out (HTTP mode), so `count` starts again from 0.
    pub fn take_received(&self) -> Vec<Received> {
        std::mem::take(&mut *lock(&self.state.received))
    }

    /// Requests seen: recorded ones (HTTP mode), request heads (black hole, faults),
    /// bodies counted (`count_bytes`), upgrades (`upgrade_echo`), connections answered
    /// (`endless_body`).
    pub fn count(&self) -> usize {
        match self.mode {
            Mode::Http => lock(&self.state.received).len(),
            _ => self.state.count.load(Ordering::SeqCst),
        }
    }

    /// `(connection number, path)` per request head as it arrived (faults mode),
    /// connections numbered from 1 in accept order.
    pub fn seen(&self) -> Vec<(u64, String)> {
        lock(&self.state.seen).clone()
    }

    /// Request heads seen for exactly this path (faults mode).
    pub fn count_path(&self, path: &str) -> usize {
        lock(&self.state.seen)
            .iter()
            .filter(|(_, p)| p == path)
            .count()
    }

    /// The last request head seen (`upgrade_echo`: with whatever followed it in the same
    /// reads).
    pub fn last_head(&self) -> String {
        lock(&self.state.last_head).clone()
    }

    /// Requests whose head arrived and whose body is still being read (HTTP mode).
    pub fn in_progress(&self) -> usize {
        self.state.in_progress.load(Ordering::SeqCst)
    }

    /// What `count_bytes` counted, per request.
    pub fn counted(&self) -> Vec<Counted> {
        lock(&self.state.counted).clone()
    }

    /// Request body bytes received so far (HTTP and `count_bytes` modes); grows while a
    /// body streams in.
    pub fn received_bytes(&self) -> u64 {
        self.state.received_bytes.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// The most connections open at once so far.
    pub fn max_open(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }

    /// From now on, paths starting with `prefix` are answered `status` (HTTP mode; the
    /// latest call for a prefix wins over earlier ones and over the builder's).
    pub fn set_status_on(&self, prefix: &str, status: u16) {
        let status = StatusCode::from_u16(status).expect("valid status");
        let mut now = lock(&self.state.status_now);
        now.retain(|(p, _)| p != prefix);
        now.push((prefix.to_string(), status));
    }

    /// Requests recorded whose path is not `path` (HTTP mode): traffic without the
    /// health checks, say.
    pub fn count_except(&self, path: &str) -> usize {
        lock(&self.state.received)
            .iter()
            .filter(|r| r.uri.path() != path)
            .count()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads everything, never answers; counts request heads (`\r\n\r\n`) in the stream.
async fn black_hole(mut s: TcpStream, st: &State) {
    let mut buf = [0u8; 16 * 1024];
    let mut tail: Vec<u8> = Vec::new();
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                let heads = tail.windows(4).filter(|w| *w == b"\r\n\r\n").count();
                st.count.fetch_add(heads, Ordering::SeqCst);
                let keep = tail.len().min(3);
                tail.drain(..tail.len() - keep);
            }
        }
    }
}

async fn endless_body(mut s: TcpStream, limit: usize, st: &State) {
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf).await;
    st.count.fetch_add(1, Ordering::SeqCst);
    if s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let chunk = format!("{:x}\r\n{}\r\n", 4096, "e".repeat(4096));
    let mut sent = 0;
    while sent < limit && s.write_all(chunk.as_bytes()).await.is_ok() {
        sent += 4096;
    }
}

/// Buffered reads for the raw modes.
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

async fn count_connection(s: TcpStream, st: &State) {
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
            st.received_bytes.fetch_add(n, Ordering::Relaxed);
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
        lock(&st.counted).push(Counted {
            path,
            bytes: counted,
            complete,
        });
        st.count.fetch_add(1, Ordering::SeqCst);
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

/// Request heads one after another; each is failed by the first fault whose prefix its
/// path starts with, or answered `200 ok`.
async fn fault_connection(mut s: TcpStream, conn: u64, faults: &[(String, Fault)], st: &State) {
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
        lock(&st.seen).push((conn, path.clone()));
        *lock(&st.last_head) = head;
        st.count.fetch_add(1, Ordering::SeqCst);
        let fault = faults
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, f)| *f);
        match fault {
            Some(Fault::Garbage(bytes)) => {
                let _ = s.write_all(bytes).await;
                return;
            }
            Some(Fault::Reset) => {
                let _ = s.set_zero_linger();
                return;
            }
            Some(Fault::HugeHeader) => {
                let mut resp = b"HTTP/1.1 200 OK\r\nx-huge: ".to_vec();
                resp.extend(std::iter::repeat_n(b'h', 1024 * 1024));
                resp.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\nok");
                if s.write_all(&resp).await.is_err() {
                    return;
                }
                // Keep the connection: a request reusing it would be recorded here.
            }
            Some(Fault::CutLength) => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                    .await;
                let _ = s.write_all(&[b'x'; 100]).await;
                return;
            }
            Some(Fault::CutChunked) => {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                    )
                    .await;
                return;
            }
            None => {
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

async fn upgrade_echo(mut c: TcpStream, st: &State) {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while find(&buf, b"\r\n\r\n").is_none() {
        match c.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    st.count.fetch_add(1, Ordering::SeqCst);
    *lock(&st.last_head) = String::from_utf8_lossy(&buf).into_owned();
    let _ = c
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        .await;
    loop {
        match c.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let up = b[..n].to_ascii_uppercase();
                if c.write_all(&up).await.is_err() {
                    return;
                }
            }
        }
    }
}
