//! Client-facing listeners: accept loop, protocol detection under the head time limit,
//! HTTP/1.1 and h2c on the same port, graceful drain. TLS will slot in at `serve_conn`
//! (accept the handshake under the same time limit, then hand the stream on).

pub mod guard;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Limits;
use crate::metrics::ListenerMetrics;
use crate::proxy::{ConnInfo, Proxy};
use guard::{GuardedIo, H1Tracker};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connection settings shared by every listener.
pub struct Server {
    proxy: Arc<Proxy>,
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    head_timeout: Duration,
    max_head: usize,
    max_headers: usize,
    max_connections: usize,
}

impl Server {
    pub fn new(proxy: Arc<Proxy>, limits: &Limits) -> Self {
        let max_head = limits.max_header_bytes.value.as_usize();
        let max_headers = limits.max_headers.value;
        let head_timeout = limits.request_head_timeout.value.get();
        let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        h1.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(head_timeout)
            .max_buf_size(max_head.max(8192))
            .max_headers(max_headers)
            .keep_alive(true);
        let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        h2.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams.value)
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(50))
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Server {
            proxy,
            h1,
            h2,
            head_timeout,
            max_head,
            max_headers,
            max_connections: limits.max_connections.value,
        }
    }

    /// Accepts connections until `shutdown` turns true; returns the connection tasks,
    /// which the graceful-shutdown watcher drains.
    pub async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        metrics: ListenerMetrics,
        graceful: Arc<GracefulShutdown>,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinSet<()> {
        let mut conns = JoinSet::new();
        let mut backoff = Duration::from_millis(10);
        // At the connection cap accepting pauses (new connections wait in the kernel's
        // backlog) until one closes.
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        loop {
            while conns.try_join_next().is_some() {}
            let slot = tokio::select! {
                _ = crate::stopped(&mut shutdown) => break,
                s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            };
            let accepted = tokio::select! {
                _ = crate::stopped(&mut shutdown) => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    let _ = stream.set_nodelay(true);
                    metrics.accepted.inc();
                    let open = OpenConn::new(&metrics);
                    let server = self.clone();
                    let watcher = graceful.watcher();
                    conns.spawn(async move {
                        let _open = open;
                        let _slot = slot;
                        server.serve_conn(stream, peer, watcher).await;
                    });
                }
                Err(e) => {
                    // EMFILE and friends: log, wait, retry; never spin, never exit.
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        _ = crate::stopped(&mut shutdown) => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        conns
    }

    async fn serve_conn(&self, mut stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        let (is_h2, prefix) =
            match tokio::time::timeout(self.head_timeout, detect(&mut stream)).await {
                Ok(Ok(Some(found))) => found,
                Ok(Ok(None)) | Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(%peer, "closing a connection that sent no request in time");
                    return;
                }
            };
        let tracker = (!is_h2).then(|| H1Tracker::new(self.max_head, self.max_headers));
        let io = TokioIo::new(GuardedIo::new(stream, prefix, tracker));
        let proxy = self.proxy.clone();
        let info = ConnInfo {
            peer,
            proto: "http",
        };
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, info).await) }
        });
        let builder = if is_h2 { &self.h2 } else { &self.h1 };
        let conn = builder.serve_connection(io, svc).into_owned();
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Reads until the bytes tell HTTP/2 prior knowledge (the full preface) from HTTP/1 (any
/// mismatch). Returns what was read, to be replayed, or `None` on a silent close.
async fn detect(stream: &mut TcpStream) -> std::io::Result<Option<(bool, Bytes)>> {
    let mut buf = [0u8; 24];
    let mut n = 0;
    while n < H2_PREFACE.len() {
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            return Ok(None);
        }
        n += read;
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some((false, Bytes::copy_from_slice(&buf[..n]))));
        }
    }
    Ok(Some((true, Bytes::copy_from_slice(&buf[..n]))))
}

/// Keeps the open-connections gauge right, however the connection task ends.
struct OpenConn(prometheus_client::metrics::gauge::Gauge);

impl OpenConn {
    fn new(m: &ListenerMetrics) -> Self {
        m.open.inc();
        OpenConn(m.open.clone())
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.dec();
    }
}
