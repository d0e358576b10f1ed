//! Test support: fake upstreams that record exactly what they received, a proxy spawner
//! on `127.0.0.1:0`, HTTP/1, HTTP/2 and raw-socket clients, and `assert_eventually!`.

pub mod fuzz;
pub mod process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use teeproxy::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Polls a condition until it holds or 5 s pass (then panics with the message).
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr) => {
        $crate::assert_eventually!($cond, "")
    };
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!("condition never held within 5 s: {} {}", stringify!($cond), format!($($msg)+));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}

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

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// Prefixes a config body (clusters, routes, ...) with listeners and admin on port 0.
pub fn yaml(body: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\n{body}"
    )
}

/// A config with one cluster `primary` at `endpoints` and one catch-all route `all`.
pub fn simple_yaml(endpoints: &[String], cluster_extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    yaml(&format!(
        "clusters:\n  primary: {{ endpoints: [{}]{} }}\nroutes:\n  - name: all\n    primary: primary\n",
        eps.join(", "),
        if cluster_extra.is_empty() {
            String::new()
        } else {
            format!(", {cluster_extra}")
        }
    ))
}

/// A proxy running in this process on 127.0.0.1:0.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<String>>,
}

impl TestProxy {
    pub async fn start(yaml: &str) -> TestProxy {
        let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
        let listeners = teeproxy::Listeners::bind(&config).await.expect("bind");
        let addr = listeners.proxy_addrs()[0];
        let admin = listeners.admin_addr().expect("admin addr");
        let (tx, rx) = oneshot::channel::<()>();
        let mut registry = Registry::default();
        let app = teeproxy::App::build(config, &mut registry);
        let (_keep, reloads) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(app.serve(
            listeners,
            registry,
            async move {
                let _ = rx.await;
                drop(_keep);
            },
            reloads,
        ));
        TestProxy {
            addr,
            admin,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the graceful shutdown; `stopped` waits for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (up to 10 s) for `run` to return; returns the final metrics text.
    pub async fn stopped(&mut self) -> String {
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("proxy stops within 10 s")
            .expect("proxy task did not panic")
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(&format!("http://{}/metrics", self.admin)).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(body.to_vec()).expect("utf-8 metrics")
    }

    /// The value of one sample line (`name{labels}`) in `/metrics`, or 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }
}

/// The value of the sample whose name and labels start with `sample` (labels in any
/// order are not supported: write them as the proxy prints them).
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client (no pooling between tests).
pub fn h1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request with a client and collects the response.
pub async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("response within 10 s")
        .expect("request succeeded");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// GET over HTTP/1.1.
pub async fn get(url: &str) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(&h1_client(), req).await
}

/// Writes raw bytes and reads until the server closes (or 5 s pass). Returns what was read.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_until_close(&mut s, Duration::from_secs(5)).await.0
}

/// Reads until EOF or `limit`; returns the text and whether EOF was seen.
pub async fn read_until_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The sample name of `teeproxy_connections_closed_total` for the `public` listener and
/// `reason` (`head_timeout`, `idle_timeout`, `write_timeout`, `premature_resets`).
pub fn closed_metric(reason: &str) -> String {
    format!("teeproxy_connections_closed_total{{listener=\"public\",reason=\"{reason}\"}}")
}

/// The status code of the first response in raw HTTP/1 text (0 when none).
pub fn raw_status(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
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

/// Shadow accounting for one (route, shadow) pair, read from `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowCounts {
    pub offered: f64,
    pub sent: f64,
    pub dropped: f64,
}

impl ShadowCounts {
    pub fn from_metrics(m: &str, route: &str, shadow: &str) -> ShadowCounts {
        let labels = format!("route=\"{route}\",shadow=\"{shadow}\"");
        let dropped = m
            .lines()
            .filter(|l| l.starts_with("teeproxy_shadow_dropped_total{") && l.contains(&labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        ShadowCounts {
            offered: metric_value(m, &format!("teeproxy_shadow_offered_total{{{labels}}}")),
            sent: metric_value(m, &format!("teeproxy_shadow_sent_total{{{labels}}}")),
            dropped,
        }
    }

    /// The accounting invariant: every offered copy is sent or dropped, exactly once.
    pub fn balanced(&self) -> bool {
        self.offered == self.sent + self.dropped
    }
}

/// The value of `teeproxy_shadow_dropped_total` for one reason.
pub fn dropped(m: &str, route: &str, shadow: &str, reason: &str) -> f64 {
    metric_value(
        m,
        &format!(
            "teeproxy_shadow_dropped_total{{route=\"{route}\",shadow=\"{shadow}\",reason=\"{reason}\"}}"
        ),
    )
}

/// The value of `teeproxy_shadow_outcomes_total` for one outcome.
pub fn outcome(m: &str, route: &str, shadow: &str, outcome: &str) -> f64 {
    metric_value(
        m,
        &format!(
            "teeproxy_shadow_outcomes_total{{route=\"{route}\",shadow=\"{shadow}\",outcome=\"{outcome}\"}}"
        ),
    )
}

/// A config with a `primary` cluster, a `candidate` shadow cluster and one route `all`
/// that mirrors to it with the given shadow options (YAML flow-map entries).
pub fn shadow_yaml(
    primary: &str,
    candidate: &str,
    candidate_extra: &str,
    shadow_opts: &str,
) -> String {
    let extra = if candidate_extra.is_empty() {
        String::new()
    } else {
        format!(", {candidate_extra}")
    };
    let opts = if shadow_opts.is_empty() {
        String::new()
    } else {
        format!(", {shadow_opts}")
    };
    yaml(&format!(
        "clusters:\n  primary: {{ endpoints: [\"{primary}\"] }}\n  candidate: {{ endpoints: [\"{candidate}\"]{extra} }}\nroutes:\n  - name: all\n    primary: primary\n    shadows: [{{ cluster: candidate{opts} }}]\n"
    ))
}

/// GETs an admin JSON endpoint (`/api/paths`, ...) and parses it.
pub async fn admin_json(proxy: &TestProxy, path: &str) -> serde_json::Value {
    let (status, headers, body) = get(&format!("http://{}{path}", proxy.admin)).await;
    assert_eq!(status, StatusCode::OK, "{path}");
    assert_eq!(headers["content-type"], "application/json");
    serde_json::from_slice(&body).expect("valid JSON")
}

/// The `/api/paths` row for (path template, shadow).
pub fn path_row<'a>(
    paths: &'a serde_json::Value,
    path: &str,
    shadow: &str,
) -> &'a serde_json::Value {
    paths["paths"]
        .as_array()
        .expect("paths array")
        .iter()
        .find(|r| r["path"] == path && r["shadow"] == shadow)
        .unwrap_or_else(|| panic!("no row for {path} / {shadow} in {paths}"))
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
