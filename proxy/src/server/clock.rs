//! Per-connection timekeeping: the request-head deadline, idle keep-alive, and the
//! premature-reset guard, watched by one timer per connection.
//!
//! The HTTP/1 framing tracker marks when a head starts and completes; the service marks
//! when a request starts and when its response is finished (or abandoned). A watchdog
//! sleeps until the earliest deadline those marks allow. A head that starts while the
//! watchdog sleeps cannot expire before `now + head_timeout`, so the watchdog never
//! sleeps past that: every deadline is met without waking it on each request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Streams a client must have opened on one connection before the reset ratio counts.
pub const PREMATURE_RESET_MIN_STREAMS: u64 = 100;

/// Why the watchdog ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head (or the connection's first bytes) took longer than the head limit.
    Head,
    /// No request in progress for the idle limit.
    Idle,
    /// More than half of at least `PREMATURE_RESET_MIN_STREAMS` requests were abandoned
    /// by the client before their answer (rapid reset).
    Resets,
}

/// Shared between a connection's IO, its service and its watchdog.
#[derive(Debug)]
pub struct ConnClock {
    start: Instant,
    /// Requests in the handler or with a response body still being sent.
    active: AtomicUsize,
    /// Milliseconds since `start` when `active` last fell to zero.
    idle_since: AtomicU64,
    /// Milliseconds since `start`, plus one, when the current head began; 0: no head.
    head_since: AtomicU64,
    /// The HTTP/1 tracker stopped following the stream: time idle waits as head waits.
    untracked: AtomicBool,
    requests: AtomicU64,
    abandoned: AtomicU64,
    resets: Notify,
    /// Set by the IO when a response write timed out.
    pub write_timed_out: AtomicBool,
}

impl ConnClock {
    /// A clock for a connection accepted now; the wait for its first head starts now.
    pub fn new() -> Arc<Self> {
        Arc::new(ConnClock {
            start: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(1),
            untracked: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            resets: Notify::new(),
            write_timed_out: AtomicBool::new(false),
        })
    }

    pub fn started(&self) -> Instant {
        self.start
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The first byte of a request head arrived.
    pub fn head_started(&self) {
        self.head_since.store(self.now_ms() + 1, Relaxed);
    }

    /// The request head is complete (or, for HTTP/2, the preface was read).
    pub fn head_done(&self) {
        self.head_since.store(0, Relaxed);
    }

    /// The tracker no longer follows the stream.
    pub fn untracked(&self) {
        self.untracked.store(true, Relaxed);
        self.head_done();
    }

    /// A request reached the service; the guard ends it.
    pub fn request(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        ActiveGuard {
            clock: self.clone(),
            answered: false,
        }
    }

    fn resets_abusive(&self) -> bool {
        let requests = self.requests.load(Relaxed);
        requests >= PREMATURE_RESET_MIN_STREAMS && self.abandoned.load(Relaxed) * 2 > requests
    }

    /// Completes when the connection should end: a head over `head`, no request for
    /// `idle` (only when `watch_idle`), or a rapid-reset pattern.
    pub async fn expired(&self, head: Duration, idle: Duration, watch_idle: bool) -> Expiry {
        let head_ms = head.as_millis() as u64;
        let idle_ms = idle.as_millis() as u64;
        loop {
            if self.resets_abusive() {
                return Expiry::Resets;
            }
            let now = self.now_ms();
            let mut next = now + head_ms.max(1);
            let head_since = self.head_since.load(Relaxed);
            if head_since != 0 {
                let due = head_since - 1 + head_ms;
                if now >= due {
                    return Expiry::Head;
                }
                next = next.min(due);
            } else if self.active.load(Relaxed) == 0 {
                let untracked = self.untracked.load(Relaxed);
                let (limit, why) = if untracked {
                    (head_ms, Expiry::Head)
                } else {
                    (idle_ms, Expiry::Idle)
                };
                if untracked || watch_idle {
                    let due = self.idle_since.load(Relaxed) + limit;
                    if now >= due {
                        return why;
                    }
                    next = next.min(due);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(self.start + Duration::from_millis(next)) => {}
                _ = self.resets.notified() => {}
            }
        }
    }
}

/// One request's hold on the connection: dropped when its response is finished, or when
/// the client abandoned it first.
#[derive(Debug)]
pub struct ActiveGuard {
    clock: Arc<ConnClock>,
    answered: bool,
}

impl ActiveGuard {
    /// The handler produced the response head.
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let c = &self.clock;
        if !self.answered {
            c.abandoned.fetch_add(1, Relaxed);
            if c.resets_abusive() {
                c.resets.notify_one();
            }
        }
        c.idle_since.store(c.now_ms(), Relaxed);
        c.active.fetch_sub(1, Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's `ActiveGuard` until it is dropped.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        guard: ActiveGuard,
    }
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: ActiveGuard) -> Self {
        Tracked { inner, guard }
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn first_head_is_due_from_the_connection_start() {
        let c = ConnClock::new();
        let t = Instant::now();
        let why = c
            .expired(Duration::from_secs(10), Duration::from_secs(60), true)
            .await;
        assert_eq!(why, Expiry::Head);
        assert_eq!(t.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_runs_from_the_last_answer_and_a_late_head_keeps_its_own_deadline() {
        let c = ConnClock::new();
        c.head_done();
        let mut g = c.request();
        g.answered();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(g);
        let t = Instant::now();
        assert_eq!(
            c.expired(Duration::from_secs(10), Duration::from_secs(30), true)
                .await,
            Expiry::Idle
        );
        assert_eq!(t.elapsed(), Duration::from_secs(30));

        // A head starting while the watchdog sleeps is still cut at its own deadline.
        let c2 = c.clone();
        let watch = tokio::spawn(async move {
            c2.expired(Duration::from_secs(10), Duration::from_secs(300), true)
                .await
        });
        tokio::time::sleep(Duration::from_secs(7)).await;
        let started = Instant::now();
        c.head_started();
        assert_eq!(watch.await.unwrap(), Expiry::Head);
        let late = started.elapsed();
        assert!(
            late >= Duration::from_secs(10) && late <= Duration::from_millis(10_002),
            "{late:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_are_not_idle_and_abandoned_requests_add_up() {
        let c = ConnClock::new();
        c.head_done();
        let busy = c.request();
        let expired = tokio::time::timeout(
            Duration::from_secs(600),
            c.expired(Duration::from_secs(10), Duration::from_secs(60), true),
        )
        .await;
        assert!(expired.is_err(), "a request in progress is not idle");
        drop(busy);
        for i in 0..PREMATURE_RESET_MIN_STREAMS {
            let mut g = c.request();
            if i % 3 == 0 {
                g.answered();
            }
        }
        assert_eq!(
            c.expired(Duration::from_secs(10), Duration::from_secs(60), false)
                .await,
            Expiry::Resets
        );
    }
}
