//! WebSocket tunnels: once the client and the primary both switched protocols, bytes are
//! relayed both ways until either side closes or nothing moves for the idle limit. Tunnels
//! belong to their client connection's task (`Tunnels`): the connection keeps its slot until
//! its tunnels end, and they end with it when its task is stopped (drain deadline).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use pin_project_lite::pin_project;
use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinSet;

use crate::metrics::GaugeGuard;
use tokio::time::Instant;

/// The tunnels of one client connection, owned by its task.
#[derive(Clone, Default, Debug)]
pub struct Tunnels(Arc<Mutex<JoinSet<()>>>);

impl Tunnels {
    fn spawn(&self, tunnel: impl Future<Output = ()> + Send + 'static) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spawn(tunnel);
    }

    /// Completes when every tunnel started on the connection has ended.
    pub async fn finished(&self) {
        let mut set = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        while set.join_next().await.is_some() {}
    }
}

/// Starts relaying between an upgraded client connection and the primary's.
pub(crate) fn start(
    tunnels: &Tunnels,
    client: hyper::upgrade::OnUpgrade,
    primary: hyper::upgrade::OnUpgrade,
    open: Gauge,
    request_id: HeaderValue,
    idle: Duration,
) {
    tunnels.spawn(splice(client, primary, open, request_id, idle));
}

/// Relays bytes both ways until either side closes or nothing moves for `idle`.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    primary: hyper::upgrade::OnUpgrade,
    open: Gauge,
    request_id: HeaderValue,
    idle: Duration,
) {
    let (client, primary) = match tokio::join!(client, primary) {
        (Ok(c), Ok(p)) => (c, p),
        (c, p) => {
            tracing::debug!(request_id = ?request_id, client_ok = c.is_ok(), primary_ok = p.is_ok(), "upgrade did not complete");
            return;
        }
    };
    let _open = GaugeGuard::new(&open);
    let activity = Arc::new(Activity::new());
    let mut client = Active::new(hyper_util::rt::TokioIo::new(client), activity.clone());
    let mut primary = hyper_util::rt::TokioIo::new(primary);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut primary) => match r {
            Ok((up, down)) => {
                tracing::debug!(request_id = ?request_id, bytes_up = up, bytes_down = down, "tunnel closed")
            }
            Err(e) => tracing::debug!(request_id = ?request_id, error = %e, "tunnel broke off"),
        },
        _ = activity.idle_for(idle) => {
            tracing::debug!(request_id = ?request_id, idle_ms = idle.as_millis() as u64, "tunnel closed at the idle limit")
        }
    }
}

/// When bytes last moved on a stream, for an idle limit.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Completes once nothing moved for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
            let due = self.start + Duration::from_millis(last) + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

pin_project! {
    /// A stream that notes in `activity` every time bytes move either way.
    pub(crate) struct Active<S> {
        #[pin]
        inner: S,
        activity: std::sync::Arc<Activity>,
    }
}

impl<S> Active<S> {
    pub(crate) fn new(inner: S, activity: std::sync::Arc<Activity>) -> Self {
        Active { inner, activity }
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for Active<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Active<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod activity_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_last_byte() {
        let a = std::sync::Arc::new(Activity::new());
        let (mut near, far) = tokio::io::duplex(64);
        let mut far = Active::new(far, a.clone());
        tokio::time::advance(Duration::from_secs(3)).await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        near.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        far.read_exact(&mut b).await.unwrap();
        let t = Instant::now();
        a.idle_for(Duration::from_secs(10)).await;
        assert_eq!(t.elapsed(), Duration::from_secs(10));
    }
}
