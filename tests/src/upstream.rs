//! Fake upstreams, one module for every suite. `FakeUpstream` is a real HTTP/1.1 and h2c
//! server (hyper) that records every request and answers as its builder says (status,
//! body, headers, delays and statuses by path, echo). The others misbehave below HTTP,
//! on raw sockets:
//! - `BlackHole`: accepts, reads everything, never answers (counts connections);
//! - `NeverReads`: accepts and never reads (the sender's window fills up);
//! - `endless_body_server`: answers 200 with a chunked body that does not end;
//! - `CountingUpstream`: reads bodies of any size, counting their bytes only;
//! - `ScriptedUpstream`: misbehaves by path (garbage, reset, huge header, cut bodies);
//! - `UpgradeEcho`: answers an upgrade with 101, then echoes bytes upper-cased.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

#[derive(Clone)]
struct Behaviour {
    /// Extra delay for paths starting with a prefix.
    delay_on: Vec<(String, Duration)>,
    /// Another status for paths starting with a prefix.
    status_on: Vec<(String, StatusCode)>,
    /// Stream the request body straight back as the response body.
    echo: bool,
    status: StatusCode,
    delay: Duration,
    body: Bytes,
    headers: Vec<(String, String)>,
    name: String,
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
    pub fn name(mut self, n: &str) -> Self {
        self.b.name = n.to_string();
        self
    }

    pub async fn start(self) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let behaviour = Arc::new(self.b);
        let rec = received.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let stream = tokio::select! {
                    _ = stop_rx.wait_for(|s| *s) => break,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let behaviour = behaviour.clone();
                let rec = rec.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let behaviour = behaviour.clone();
                        let rec = rec.clone();
                        async move {
                            let resp = if behaviour.echo {
                                echo(&rec, req).map(Either::Left)
                            } else {
                                answer(&behaviour, &rec, req).await.map(Either::Right)
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let mut b = auto::Builder::new(TokioExecutor::new());
                    b.http1().timer(TokioTimer::new());
                    let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            conns.shutdown().await;
        });
        FakeUpstream {
            addr,
            received,
            stop: stop_tx,
            task,
        }
    }
}

fn echo(rec: &Mutex<Vec<Received>>, req: Request<Incoming>) -> Response<Incoming> {
    let (parts, body) = req.into_parts();
    rec.lock().expect("lock").push(Received {
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
    rec: &Mutex<Vec<Received>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, mut body) = req.into_parts();
    let parts_path = parts.uri.path().to_string();
    let mut buf = BytesMut::new();
    let mut complete = true;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    rec.lock().expect("lock").push(Received {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: buf.freeze(),
        trailers,
        complete,
    });
    let extra: Duration = b
        .delay_on
        .iter()
        .filter(|(p, _)| parts_path.starts_with(p.as_str()))
        .map(|(_, d)| *d)
        .sum();
    if !(b.delay + extra).is_zero() {
        tokio::time::sleep(b.delay + extra).await;
    }
    let status = b
        .status_on
        .iter()
        .find(|(p, _)| parts_path.starts_with(p.as_str()))
        .map_or(b.status, |(_, s)| *s);
    let mut resp = Response::builder()
        .status(status)
        .header("x-upstream", b.name.as_str());
    for (k, v) in &b.headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    resp.body(Full::new(b.body.clone()))
        .expect("valid response")
}

/// An in-process HTTP/1.1 upstream that records every request.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    pub fn builder() -> FakeUpstreamBuilder {
        FakeUpstreamBuilder {
            b: Behaviour {
                delay_on: Vec::new(),
                status_on: Vec::new(),
                echo: false,
                status: StatusCode::OK,
                delay: Duration::ZERO,
                body: Bytes::from_static(b"hello from upstream"),
                headers: Vec::new(),
                name: "upstream".to_string(),
            },
        }
    }

    /// An upstream answering 200 with a fixed body.
    pub async fn start() -> FakeUpstream {
        Self::builder().start().await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A shadow that accepts connections, reads what it is sent and never answers. Counts
/// the connections open at once.
pub struct BlackHole {
    pub addr: SocketAddr,
    open: Arc<std::sync::atomic::AtomicUsize>,
    max_open: Arc<std::sync::atomic::AtomicUsize>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (o, m, a) = (open.clone(), max_open.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                conns.spawn(async move {
                    let mut buf = [0u8; 16 * 1024];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        BlackHole {
            addr,
            open,
            max_open,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn max_open(&self) -> usize {
        self.max_open.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that answers every request with a 200 and a chunked body that never ends
/// (bounded by `limit` bytes so a broken test cannot run away).
pub async fn endless_body_server(limit: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
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
            });
        }
    });
    (addr, task)
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

/// An upstream that accepts connections and never reads from them (holding them open),
/// so whatever is sent to it backs up.
pub struct NeverReads {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl NeverReads {
    pub async fn start() -> NeverReads {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                conns.push(s);
            }
        });
        NeverReads { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for NeverReads {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A primary that answers a WebSocket upgrade with 101, then sends back every byte it
/// receives upper-cased. Counts the upgrade requests it saw and keeps the last head.
pub struct UpgradeEcho {
    pub addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    head: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl UpgradeEcho {
    pub async fn start() -> UpgradeEcho {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let head = Arc::new(Mutex::new(String::new()));
        let (s2, h2) = (seen.clone(), head.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (seen, head) = (s2.clone(), h2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    while find(&buf, b"\r\n\r\n").is_none() {
                        match c.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    *head.lock().expect("lock") = String::from_utf8_lossy(&buf).into_owned();
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
                });
            }
        });
        UpgradeEcho {
            addr,
            seen,
            head,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Upgrade requests seen.
    pub fn upgrades(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// The last request head seen.
    pub fn last_head(&self) -> String {
        self.head.lock().expect("lock").clone()
    }
}

impl Drop for UpgradeEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}
