//! Client-facing listeners: accept loop, protocol detection under the head time limit,
//! HTTP/1.1 and h2c on the same port, per-connection time limits (head, idle, write),
//! the rapid-reset guard, graceful drain. On a TLS listener the handshake runs first, in
//! the connection's task (under the connection cap, with its own time limit), and the
//! decrypted stream is served the same way.

pub(crate) mod clock;
pub(crate) mod guard;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Limits;
use crate::metrics::{CloseReason, GaugeGuard, ListenerMetrics};
use crate::proxy::Proxy;
use crate::proxy::conn::ConnInfo;
use crate::shutdown::stopped;
use crate::tls::{Session, TlsListener};
use clock::{ClockLimits, ConnClock, Expiry, Tracked};
use guard::{GuardedIo, H1Tracker};

/// Response bytes buffered per HTTP/2 stream beyond what the client's window allows.
pub(crate) const H2_SEND_BUFFER: usize = 128 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connection settings shared by every listener.
pub(crate) struct Server {
    proxy: Arc<Proxy>,
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    head_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    max_head: usize,
    max_headers: usize,
    max_connections: usize,
}

impl Server {
    /// `listeners` is how many listeners share the process's file descriptors.
    pub(crate) fn new(proxy: Arc<Proxy>, limits: &Limits, listeners: usize) -> Self {
        let max_head = limits.max_header_bytes;
        let max_headers = limits.max_headers;
        let head_timeout = limits.request_head_timeout;
        // Head and idle time limits are kept by the connection's clock (hyper's own head
        // timer also runs through keep-alive idle time, so it is turned off).
        let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        h1.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_head.max(8192))
            .max_headers(max_headers)
            .keep_alive(true);
        let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        h2.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(50))
            .max_local_error_reset_streams(Some(256))
            // Response data buffered per stream for a client that grants no window.
            .max_send_buf_size(H2_SEND_BUFFER)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Server {
            proxy,
            h1,
            h2,
            head_timeout,
            idle_timeout: limits.idle_timeout,
            write_timeout: limits.write_timeout,
            max_head,
            max_headers,
            max_connections: connection_cap(limits, listeners, open_files_limit()),
        }
    }

    /// Accepts connections until `shutdown` turns true; returns the connection tasks,
    /// which were told to drain by the same signal.
    pub(crate) async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Arc<TlsListener>>,
        metrics: ListenerMetrics,
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
                _ = stopped(&mut shutdown) => break,
                s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            };
            let accepted = tokio::select! {
                _ = stopped(&mut shutdown) => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    let _ = stream.set_nodelay(true);
                    metrics.accepted.inc();
                    let open = GaugeGuard::new(&metrics.open);
                    let server = self.clone();
                    let m = metrics.clone();
                    let stop = shutdown.clone();
                    let tls = tls.clone();
                    conns.spawn(async move {
                        let _open = open;
                        let _slot = slot;
                        match tls {
                            None => server.serve_stream(stream, peer, &m, stop, None).await,
                            Some(tls) => {
                                if let Some((stream, session)) = tls.accept(stream, peer).await {
                                    server
                                        .serve_stream(stream, peer, &m, stop, Some(session))
                                        .await;
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: log, wait, retry; never spin, never exit.
                    metrics.accept_errors.inc();
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        _ = stopped(&mut shutdown) => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        conns
    }

    /// Serves one client connection (any byte stream) until it ends, a time limit ends
    /// it, or `stop` turns true (then: HTTP/1 finishes the request in progress and
    /// closes, HTTP/2 sends GOAWAY and finishes its streams).
    pub(crate) async fn serve_stream<S>(
        &self,
        mut stream: S,
        peer: SocketAddr,
        metrics: &ListenerMetrics,
        mut stop: watch::Receiver<bool>,
        tls: Option<Session>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let clock = ConnClock::new();
        let deadline = clock.started() + self.head_timeout;
        let (is_h2, prefix) = match tokio::time::timeout_at(deadline, detect(&mut stream)).await {
            Ok(Ok(Some(found))) => found,
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => {
                metrics.closed(CloseReason::head_timeout);
                tracing::debug!(%peer, "closing a connection that sent no request in time");
                return;
            }
        };
        let tracker = if is_h2 {
            clock.head_done();
            None
        } else {
            Some(H1Tracker::new(self.max_head, self.max_headers).with_clock(clock.clone()))
        };
        let io = TokioIo::new(GuardedIo::new(
            stream,
            prefix,
            tracker,
            self.write_timeout,
            Some(clock.clone()),
        ));
        let proxy = self.proxy.clone();
        let mut info = ConnInfo::new(peer, self.idle_timeout);
        if let Some(session) = tls {
            info = info.with_tls(session.client_subject);
        }
        let tunnels = info.tunnels.clone();
        let svc_clock = clock.clone();
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            let mut guard = svc_clock.request();
            let info = info.clone();
            async move {
                let resp = proxy.handle(req, info).await;
                guard.answered();
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, guard)))
            }
        });
        let builder = if is_h2 { &self.h2 } else { &self.h1 };
        let limits = ClockLimits {
            head: self.head_timeout,
            idle: self.idle_timeout,
            write: self.write_timeout,
        };
        // Boxed so it can be dropped before waiting for tunnels: an upgrade the connection
        // never completed then fails at once instead of holding the slot.
        let mut conn = Box::pin(builder.serve_connection_with_upgrades(io, svc));
        let mut draining = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if clock.write_timed_out.load(Ordering::Relaxed) {
                        metrics.closed(CloseReason::write_timeout);
                        tracing::debug!(%peer, "closed a connection whose client stopped reading");
                    } else if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                why = clock.expired(limits, !draining) => match why {
                    Expiry::Head => {
                        metrics.closed(CloseReason::head_timeout);
                        tracing::debug!(%peer, "closing a connection whose request head did not arrive in time");
                        break;
                    }
                    Expiry::Stalled => {
                        metrics.closed(CloseReason::write_timeout);
                        tracing::debug!(%peer, "closing a connection whose client took no response data in time");
                        break;
                    }
                    Expiry::Resets => {
                        metrics.closed(CloseReason::premature_resets);
                        tracing::warn!(%peer, "closing a connection that abandoned most of its requests (rapid reset)");
                        break;
                    }
                    Expiry::Idle => {
                        metrics.closed(CloseReason::idle_timeout);
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    }
                },
                _ = stopped(&mut stop), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
        drop(conn);
        // An upgraded connection lives on as a tunnel: it keeps its slot until it ends
        // (at the latest at the drain deadline, when this task and its tunnels are stopped).
        tunnels.finished().await;
    }
}

/// File descriptors kept back from client connections: listeners, the admin endpoint,
/// idle pooled upstream connections, logs.
const FD_RESERVE: u64 = 256;

/// Below this many client connections in all (the lowered caps of every listener added
/// up), lowering the default cap *matters* and is logged as a warning. That is an
/// open-files soft limit under about 8448 (`2 * 4096 + FD_RESERVE`) with one listener, such
/// as the common 1024: a busy service reaches such a cap and then stops accepting. Above
/// it, the lowered cap is only somewhat under the 10000 default (with `ulimit -n 20000`,
/// 9872), a difference nobody tunes for, so it is logged at debug: a warning on every
/// start that calls for no action teaches operators to ignore warnings.
const CAP_FLOOR: u64 = 4096;

/// What the connection cap came to, and what to tell the operator.
#[derive(Debug, PartialEq, Eq)]
enum CapNotice {
    /// The configured (or default) cap fits the open-files limit.
    Fits,
    /// The default cap was lowered to fit; whether that `matters`: see `CAP_FLOOR`.
    Lowered { matters: bool },
    /// An explicit cap above what the open-files limit allows: kept (accept errors back
    /// off), always a warning since the config asked for more than can be served.
    AboveLimit { fit: usize },
}

/// The per-listener connection cap. Each client connection may hold an upstream
/// connection too, so the default cap is brought down to what the open-files limit
/// allows (with a warning when that matters, see `CAP_FLOOR`); a cap the config sets
/// explicitly is kept (with a warning if it is above that), and accept errors then back
/// off.
pub(crate) fn connection_cap(limits: &Limits, listeners: usize, open_files: Option<u64>) -> usize {
    let (cap, notice) = plan_cap(limits, listeners, open_files);
    let soft = open_files.unwrap_or(0);
    match notice {
        CapNotice::Fits => {}
        CapNotice::AboveLimit { fit } => tracing::warn!(
            max_connections = cap,
            open_files_limit = soft,
            fits = fit,
            "limits.max_connections is above what the open-files limit allows; accepting will back off on EMFILE (raise `ulimit -n`)"
        ),
        CapNotice::Lowered { matters: true } => tracing::warn!(
            max_connections = cap,
            open_files_limit = soft,
            "the default connection cap was lowered to fit the open-files limit (raise `ulimit -n` or set limits.max_connections)"
        ),
        CapNotice::Lowered { matters: false } => tracing::debug!(
            max_connections = cap,
            open_files_limit = soft,
            "the default connection cap was lowered a little to fit the open-files limit"
        ),
    }
    cap
}

fn plan_cap(limits: &Limits, listeners: usize, open_files: Option<u64>) -> (usize, CapNotice) {
    let configured = limits.max_connections;
    let Some(soft) = open_files else {
        return (configured, CapNotice::Fits);
    };
    let listeners = listeners.max(1) as u64;
    let fit = (soft.saturating_sub(FD_RESERVE) / 2 / listeners).max(16);
    let matters = fit.saturating_mul(listeners) < CAP_FLOOR;
    let fit = usize::try_from(fit).unwrap_or(usize::MAX);
    if configured <= fit {
        (configured, CapNotice::Fits)
    } else if limits.max_connections_set {
        (configured, CapNotice::AboveLimit { fit })
    } else {
        (fit, CapNotice::Lowered { matters })
    }
}

/// The soft limit on open files, from /proc/self/limits (`None` where unavailable or
/// unlimited).
pub(crate) fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads until the bytes tell HTTP/2 prior knowledge (the full preface) from HTTP/1 (any
/// mismatch). Returns what was read, to be replayed, or `None` on a silent close.
async fn detect<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<(bool, Bytes)>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits(yaml_limits: &str) -> Limits {
        let yaml = format!(
            "listeners: [{{ name: l, address: \"127.0.0.1:1\" }}]\nclusters:\n  a: {{ endpoints: [\"http://127.0.0.1:2\"] }}\nroutes: [{{ name: r, primary: a }}]\n{yaml_limits}"
        );
        Config::from_yaml(&yaml).unwrap().limits
    }

    #[test]
    fn the_default_cap_fits_the_open_files_limit_and_an_explicit_one_is_kept() {
        let default = limits("");
        assert_eq!(connection_cap(&default, 1, None), 10_000);
        assert_eq!(connection_cap(&default, 1, Some(1_000_000)), 10_000);
        // 1024 files: (1024 - 256) / 2 = 384 per listener, 192 each for two.
        assert_eq!(connection_cap(&default, 1, Some(1024)), 384);
        assert_eq!(connection_cap(&default, 2, Some(1024)), 192);
        assert_eq!(connection_cap(&default, 1, Some(100)), 16);
        let explicit = limits("limits: { max_connections: 5000 }");
        assert_eq!(connection_cap(&explicit, 1, Some(1024)), 5000);
        assert_eq!(connection_cap(&explicit, 1, Some(1_000_000)), 5000);
    }

    #[test]
    fn lowering_the_default_cap_is_a_warning_only_when_it_matters() {
        let default = limits("");
        let explicit = limits("limits: { max_connections: 5000 }");
        let table = [
            (&default, 1, None, 10_000, CapNotice::Fits),
            (&default, 1, Some(1_000_000), 10_000, CapNotice::Fits),
            // (20000 - 256) / 2 = 9872: a little under the default.
            (
                &default,
                1,
                Some(20_000),
                9_872,
                CapNotice::Lowered { matters: false },
            ),
            (
                &default,
                2,
                Some(20_000),
                4_936,
                CapNotice::Lowered { matters: false },
            ),
            // 2 * 4096 + 256 files hold 4096 connections: the floor itself is fine.
            (
                &default,
                1,
                Some(8_448),
                4_096,
                CapNotice::Lowered { matters: false },
            ),
            (
                &default,
                1,
                Some(8_447),
                4_095,
                CapNotice::Lowered { matters: true },
            ),
            (
                &default,
                1,
                Some(1024),
                384,
                CapNotice::Lowered { matters: true },
            ),
            (
                &default,
                2,
                Some(1024),
                192,
                CapNotice::Lowered { matters: true },
            ),
            (
                &explicit,
                1,
                Some(1024),
                5_000,
                CapNotice::AboveLimit { fit: 384 },
            ),
            (&explicit, 1, Some(20_000), 5_000, CapNotice::Fits),
        ];
        for (limits, listeners, soft, cap, notice) in table {
            assert_eq!(
                plan_cap(limits, listeners, soft),
                (cap, notice),
                "{listeners} listeners, ulimit -n {soft:?}"
            );
        }
    }

    #[test]
    fn the_open_files_limit_is_read() {
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(open_files_limit().is_some_and(|n| n > 0));
        }
    }
}
