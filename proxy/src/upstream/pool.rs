//! The HTTP/1.1 client of one endpoint (clusters with `protocol: http1`, the default):
//! hyper's connection-level client with a small pool of its own. It does what the legacy
//! pooled client did for these clusters without its per-request costs (a pool key hashed
//! with SipHash on checkout and return, a checkout future, a boxed response future): a
//! connection is taken from a `Vec` under a lock held for a few instructions, and goes back
//! as soon as the response head is in (it is taken again only once hyper says it is ready,
//! that is once that response's body has been read).
//!
//! Like the legacy client it sends the origin-form target with a `Host` taken from the URI
//! when the request has none, retries once on a new connection a request that a pooled
//! connection closed before sending any of it, keeps at most `max_idle` connections, and
//! closes connections idle longer than `idle_timeout` (checked at checkout and by a sweep
//! every `idle_timeout`, a task that ends with the pool).
//!
//! Unlike it, it also sends once more a request written into a pooled connection that the
//! upstream had just closed (the keep-alive race: an upstream closes a connection idle past
//! its own keep-alive timeout, 2 s for gunicorn, 5 s for Node.js, as the pool takes it
//! again). hyper reports a clean close as an incomplete message, a reset as an I/O error,
//! in either case before a complete response head. Only a safe request (`GET`, `HEAD`,
//! `OPTIONS`, `TRACE`) without a body is sent again; only from a connection whose previous
//! response head came at least `RESEND_AFTER` before (its head is kept for that, so a
//! connection in steady use costs nothing); and only when the close came within
//! `RESEND_WITHIN` of the send (an upstream that took the request and died working on it
//! fails later, and is not sent it again). It is counted in
//! `teeproxy_upstream_resent_total`.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use prometheus_client::metrics::counter::Counter;
use tower_service::Service;

use super::tls::Connector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A pooled connection idle at least this long may be closing as it is taken: a safe
/// request without a body sent on it keeps its head, to be sent once more if so.
pub(crate) const RESEND_AFTER: Duration = Duration::from_secs(1);

/// The keep-alive race fails at once: a close later than this after the send is an
/// upstream that may have worked on the request, and it is not sent again.
pub(crate) const RESEND_WITHIN: Duration = Duration::from_millis(100);

/// A request body of which the pool can make an empty one, to send a bodiless request once
/// more.
pub(crate) trait EmptyBody {
    fn empty() -> Self;
}

impl EmptyBody for http_body_util::Empty<bytes::Bytes> {
    fn empty() -> Self {
        http_body_util::Empty::new()
    }
}

/// An endpoint's client for requests: this pool for HTTP/1.1, hyper-util's pooled client
/// where HTTP/2 may be spoken (`h2c`, `h2`, `auto`).
pub(crate) enum Transport<B> {
    Http1(Arc<H1Pool<B>>),
    Pooled(Box<Client<Connector, B>>),
}

impl<B> Transport<B>
where
    B: http_body::Body + EmptyBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) async fn request(&self, req: Request<B>) -> Result<Response<Incoming>, ClientError> {
        match self {
            // Boxed, as the pooled client boxes its own: the exchange's states (a request,
            // a retry, a connect) would otherwise make the futures around it larger, and
            // each task start and end moves them whole (measured: the shadow leg's
            // instructions went up by half without the box).
            Transport::Http1(pool) => Box::pin(pool.request(req)).await,
            Transport::Pooled(client) => client.request(req).await.map_err(ClientError::Pooled),
        }
    }
}

/// Why a request failed, in the words of the client that sent it.
#[derive(Debug)]
pub(crate) enum ClientError {
    /// No connection: the connect, or the TLS handshake, failed (`source` says how).
    Connect(BoxError),
    /// The exchange on an established connection failed.
    Send(hyper::Error),
    /// hyper-util's pooled client failed.
    Pooled(hyper_util::client::legacy::Error),
}

impl ClientError {
    pub(crate) fn is_connect(&self) -> bool {
        match self {
            ClientError::Connect(_) => true,
            ClientError::Send(_) => false,
            ClientError::Pooled(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(_) => f.write_str("client error (Connect)"),
            ClientError::Send(_) => f.write_str("client error (SendRequest)"),
            ClientError::Pooled(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect(e) => Some(&**e),
            ClientError::Send(e) => Some(e),
            ClientError::Pooled(e) => e.source(),
        }
    }
}

struct Idle<B> {
    tx: http1::SendRequest<B>,
    since: Instant,
}

/// One endpoint's HTTP/1.1 connections.
pub(crate) struct H1Pool<B> {
    connector: Connector,
    idle: Mutex<Vec<Idle<B>>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether the sweep task runs (started with the first connection).
    sweeping: std::sync::atomic::AtomicBool,
    /// `RESEND_AFTER` (shorter in tests).
    resend_after: Duration,
    resent: Counter,
}

impl<B> H1Pool<B> {
    pub(crate) fn new(
        connector: Connector,
        max_idle: usize,
        idle_timeout: Duration,
        resent: Counter,
    ) -> Self {
        H1Pool {
            connector,
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            sweeping: std::sync::atomic::AtomicBool::new(false),
            resend_after: RESEND_AFTER,
            resent,
        }
    }
}

/// A safe method (RFC 9110, 9.2.1): it asks for no change, so it can be sent twice. (`PUT`
/// and `DELETE` are idempotent but not safe: a second one may answer otherwise than the
/// first, a 404 after a delete, so they are not.)
fn safe(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether `e` is the connection closing under the request before a complete response
/// head: a clean close (an incomplete message) or a reset or broken pipe on its socket.
fn closed_under(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// The head of `req` (a request without a body), kept to send it once more, here or to
/// another endpoint.
pub(crate) fn head_of<B>(req: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head
}

impl<B> H1Pool<B>
where
    B: http_body::Body + EmptyBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Sends `req` (its URI absolute: the scheme and authority pick the connection) and
    /// returns the response head.
    pub(crate) async fn request(
        self: &Arc<Self>,
        mut req: Request<B>,
    ) -> Result<Response<Incoming>, ClientError> {
        let uri = std::mem::take(req.uri_mut());
        if !req.headers().contains_key(header::HOST)
            && let Some(a) = uri.authority()
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            req.headers_mut().insert(header::HOST, v);
        }
        *req.uri_mut() = origin_form(&uri);
        if let Some((mut tx, idle_for)) = self.checkout() {
            let head =
                (idle_for >= self.resend_after && safe(req.method()) && req.body().is_end_stream())
                    .then(|| head_of(&req));
            let sent = Instant::now();
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.put(tx);
                    return Ok(resp);
                }
                Err(mut e) => match (e.take_message(), head) {
                    // Closed before any of the request was written: once more, on a new
                    // connection.
                    (Some(again), _) => req = again,
                    // Written into a connection the upstream had just closed: once more, on
                    // a new connection, when it can be.
                    (None, Some(head))
                        if sent.elapsed() < RESEND_WITHIN && closed_under(e.error()) =>
                    {
                        tracing::debug!(uri = %head.uri(), "pooled connection closed under the request; sending it once more");
                        self.resent.inc();
                        req = head.map(|()| B::empty());
                    }
                    (None, _) => return Err(ClientError::Send(e.into_error())),
                },
            }
        }
        // Boxed: the connect's states would make every request's future larger.
        let mut tx = Box::pin(self.connect(uri)).await?;
        let resp = tx.send_request(req).await.map_err(ClientError::Send)?;
        self.put(tx);
        Ok(resp)
    }

    /// The most recently used connection that is ready, and how long it was idle; closed
    /// and expired ones are dropped on the way, busy ones (a response body still being
    /// read) stay.
    fn checkout(&self) -> Option<(http1::SendRequest<B>, Duration)> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            let idle_for = c.since.elapsed();
            if c.tx.is_closed() || idle_for > self.idle_timeout {
                idle.swap_remove(i);
            } else if c.tx.is_ready() {
                return Some((idle.swap_remove(i).tx, idle_for));
            }
        }
        None
    }

    /// Back to the pool, unless it is full (then the connection closes once its response
    /// body is read).
    fn put(self: &Arc<Self>, tx: http1::SendRequest<B>) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
        if !self
            .sweeping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
    }

    async fn connect(&self, uri: Uri) -> Result<http1::SendRequest<B>, ClientError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(ClientError::Connect)?;
        let io = connector.call(uri).await.map_err(ClientError::Connect)?;
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ClientError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }
}

/// Drops connections idle longer than `every`, every `every`, until the pool is gone.
async fn sweep<B>(pool: Weak<H1Pool<B>>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|c| !c.tx.is_closed() && c.since.elapsed() <= every);
    }
}

/// `uri` as HTTP/1.1 sends it to an origin: the path and query only.
fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(pq)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::connect::HttpConnector;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::tls::{Alpn, TlsClient};

    /// A raw HTTP/1.1 upstream on 127.0.0.1:0 that answers every request with its request
    /// line and Host; with `one_per_connection`, it closes each connection after one answer
    /// (without saying so). Counts connections accepted and connections closed by the peer.
    struct Upstream {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed_by_peer: Arc<AtomicUsize>,
    }

    async fn upstream(one_per_connection: bool) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed_by_peer.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let line = head.lines().next().unwrap_or("").to_string();
                        let host = head
                            .lines()
                            .find_map(|l| l.strip_prefix("host: "))
                            .unwrap_or("-");
                        let body = format!("{line} | {host}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() || one_per_connection {
                            return;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            accepted,
            closed_by_peer,
        }
    }

    fn pool(max_idle: usize, idle_timeout: Duration) -> Arc<H1Pool<Empty<Bytes>>> {
        Arc::new(bare_pool(max_idle, idle_timeout))
    }

    fn bare_pool(max_idle: usize, idle_timeout: Duration) -> H1Pool<Empty<Bytes>> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = TlsClient::new("t", None).connector(http, None, Alpn::Http1);
        H1Pool::new(connector, max_idle, idle_timeout, Counter::default())
    }

    async fn get(p: &Arc<H1Pool<Empty<Bytes>>>, uri: &str, host: Option<&str>) -> String {
        let mut req = Request::get(uri);
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        let resp = p.request(req.body(Empty::new()).unwrap()).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Up to 5 s, every 10 ms.
    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not within 5 s: {what}");
    }

    #[tokio::test]
    async fn sends_origin_form_with_the_host_of_the_uri_and_reuses_the_connection() {
        let up = upstream(false).await;
        let p = pool(8, Duration::from_secs(90));
        let base = format!("http://{}", up.addr);
        assert_eq!(
            get(&p, &format!("{base}/a?x=1"), None).await,
            format!("GET /a?x=1 HTTP/1.1 | {}", up.addr)
        );
        assert_eq!(
            get(&p, &format!("{base}/b"), Some("kept.test")).await,
            "GET /b HTTP/1.1 | kept.test",
            "a Host the request has is kept"
        );
        for _ in 0..5 {
            get(&p, &format!("{base}/c"), None).await;
        }
        assert_eq!(
            up.accepted.load(Ordering::SeqCst),
            1,
            "one connection, reused"
        );
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_replaced_without_an_error() {
        let up = upstream(true).await;
        let p = pool(8, Duration::from_secs(90));
        let uri = format!("http://{}/x", up.addr);
        for i in 1..=3 {
            assert_eq!(
                get(&p, &uri, Some("h")).await,
                "GET /x HTTP/1.1 | h",
                "request {i}"
            );
        }
        assert_eq!(
            up.accepted.load(Ordering::SeqCst),
            3,
            "a new connection each time"
        );
    }

    /// How the keep-alive race's upstream ends its first connection when told to.
    #[derive(Clone, Copy)]
    enum Close {
        /// At once, cleanly (FIN).
        Clean,
        /// At once, with a reset (RST: `SO_LINGER` 0).
        Reset,
        /// Not yet: it takes the next request, works on it 200 ms, and closes cleanly
        /// without an answer.
        Late,
    }

    /// An HTTP/1.1 upstream on a plain thread for the keep-alive race: it answers one
    /// request per connection with the connection's number, and keeps the first
    /// connection open until told to end it (`how`), then says it has. Two connections at
    /// most.
    fn closing_upstream(
        how: Close,
    ) -> (
        std::net::SocketAddr,
        std::sync::mpsc::Sender<()>,
        std::sync::mpsc::Receiver<()>,
    ) {
        use std::io::{Read, Write};
        fn read_head(s: &mut std::net::TcpStream) {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (close, closing) = std::sync::mpsc::channel::<()>();
        let (closed, gone) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate().take(2) {
                let Ok(mut s) = s else { return };
                read_head(&mut s);
                let body = format!("connection {}", n + 1);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes());
                if n > 0 {
                    continue;
                }
                let _ = closing.recv();
                match how {
                    Close::Clean => drop(s),
                    Close::Reset => {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_io()
                            .build()
                            .unwrap();
                        let _in = rt.enter();
                        s.set_nonblocking(true).unwrap();
                        let s = tokio::net::TcpStream::from_std(s).unwrap();
                        s.set_zero_linger().unwrap();
                        drop(s);
                    }
                    Close::Late => {
                        let _ = closed.send(());
                        read_head(&mut s);
                        std::thread::sleep(Duration::from_millis(200));
                        return;
                    }
                }
                let _ = closed.send(());
            }
        });
        (addr, close, gone)
    }

    /// The keep-alive race, made certain: the upstream ends the pooled connection while
    /// the runtime's only thread waits (blocking) for it, so the pool's connection task
    /// cannot see the close before the next request takes that connection. hyper writes
    /// the request into it and then finds it closed, before any answer.
    async fn race(
        p: &Arc<H1Pool<Empty<Bytes>>>,
        how: Close,
        method: Method,
    ) -> Result<String, ClientError> {
        let (addr, close, gone) = closing_upstream(how);
        let uri = format!("http://{addr}/x");
        assert_eq!(get(p, &uri, None).await, "connection 1");
        let ready = || {
            let idle = p.idle.lock().unwrap();
            idle.iter()
                .filter(|c| !c.tx.is_closed() && c.tx.is_ready())
                .count()
        };
        eventually("the first connection ready in the pool", || ready() == 1).await;
        close.send(()).unwrap();
        // Blocking, on the runtime's only thread: no task runs until the close is done.
        gone.recv().unwrap();
        assert_eq!(ready(), 1, "the pool has not seen the close yet");
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .body(Empty::new())
            .unwrap();
        let resp = p.request(req).await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    /// A pool that keeps the head of every safe request without a body.
    fn resending_pool() -> Arc<H1Pool<Empty<Bytes>>> {
        let mut p = bare_pool(8, Duration::from_secs(90));
        p.resend_after = Duration::ZERO;
        Arc::new(p)
    }

    fn closed_unanswered(e: &ClientError) -> bool {
        matches!(e, ClientError::Send(h) if closed_under(h))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_get_written_into_a_connection_the_upstream_just_closed_goes_once_more() {
        for how in [Close::Clean, Close::Reset] {
            let p = resending_pool();
            assert_eq!(
                race(&p, how, Method::GET).await.unwrap(),
                "connection 2",
                "sent again on a new connection, without an error"
            );
            assert_eq!(p.resent.get(), 1);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_post_a_late_close_or_a_recently_used_connection_is_not_sent_again() {
        // A POST may have been acted on: never sent twice.
        let p = resending_pool();
        let e = race(&p, Close::Clean, Method::POST).await.unwrap_err();
        assert!(closed_unanswered(&e), "{e:?}");
        assert_eq!(p.resent.get(), 0);
        // An upstream that took the GET and closed 200 ms later may have worked on it.
        let p = resending_pool();
        let e = race(&p, Close::Late, Method::GET).await.unwrap_err();
        assert!(closed_unanswered(&e), "{e:?}");
        assert_eq!(p.resent.get(), 0);
        // A GET on a connection used less than `RESEND_AFTER` ago: its head was not kept.
        let p = pool(8, Duration::from_secs(90));
        let e = race(&p, Close::Clean, Method::GET).await.unwrap_err();
        assert!(closed_unanswered(&e), "{e:?}");
        assert_eq!(p.resent.get(), 0);
    }

    #[tokio::test]
    async fn idle_connections_close_after_idle_timeout_and_past_max_idle() {
        let up = upstream(false).await;
        let p = pool(1, Duration::from_millis(200));
        let uri = format!("http://{}/x", up.addr);
        // Two at once: two connections; one is kept (max_idle 1), the other closes.
        let (a, b) = tokio::join!(get(&p, &uri, None), get(&p, &uri, None));
        assert!(!a.is_empty() && !b.is_empty());
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        eventually("the connection past max_idle closed", || {
            up.closed_by_peer.load(Ordering::SeqCst) >= 1
        })
        .await;
        assert_eq!(p.idle.lock().unwrap().len(), 1);
        // Idle past idle_timeout: the sweep closes the other.
        eventually("the idle connection closed by the sweep", || {
            up.closed_by_peer.load(Ordering::SeqCst) == 2
        })
        .await;
        assert!(p.idle.lock().unwrap().is_empty());
        // And the next request connects again.
        get(&p, &uri, None).await;
        assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let p = pool(8, Duration::from_secs(90));
        let req = Request::get(format!("http://{addr}/"))
            .body(Empty::new())
            .unwrap();
        let e = p.request(req).await.unwrap_err();
        assert!(e.is_connect(), "{e:?}");
        assert!(
            crate::upstream::error_chain(&e).starts_with("client error (Connect): "),
            "{}",
            crate::upstream::error_chain(&e)
        );
    }
}
