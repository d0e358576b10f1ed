//! Per-connection timekeeping: the request-head deadline, idle keep-alive, and the
//! premature-reset guard, watched by one timer per connection.
//!
//! The HTTP/1 framing tracker marks when a head starts and completes; the service marks
//! when a request starts and when its response is finished (or abandoned); response
//! bodies mark whether they wait for the client. A watchdog sleeps until the earliest
//! deadline those marks allow. Anything that starts while it sleeps (a head, an idle
//! spell, a stall) cannot expire before its own limit from now, so the watchdog never
//! sleeps past the shortest limit: every deadline is met without waking it per request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Streams a client must have opened on one connection before the reset ratio counts.
pub(crate) const PREMATURE_RESET_MIN_STREAMS: u64 = 100;

/// Why the watchdog ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request head (or the connection's first bytes) took longer than the head limit.
    Head,
    /// Response data waited for the client longer than the write limit (an HTTP/2
    /// client that grants no window, for example).
    Stalled,
    /// No request in progress for the idle limit.
    Idle,
    /// More than half of at least `PREMATURE_RESET_MIN_STREAMS` requests were abandoned
    /// by the client before their answer (rapid reset).
    Resets,
}

/// Shared between a connection's IO, its service and its watchdog.
#[derive(Debug)]
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
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
    pub(crate) write_timed_out: AtomicBool,
    /// Response bodies waiting for the connection to take their next frame (not waiting
    /// on the upstream): a client that reads nothing leaves them there.
    waiting_on_client: AtomicUsize,
    /// Milliseconds since `start` when a response body was last polled.
    body_progress: AtomicU64,
}

impl ConnClock {
    /// A clock for a connection accepted now; the wait for its first head starts now.
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
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
            waiting_on_client: AtomicUsize::new(0),
            body_progress: AtomicU64::new(0),
        })
    }

    pub(crate) fn started(&self) -> Instant {
        self.start
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The first byte of a request head arrived.
    pub(crate) fn head_started(&self) {
        self.head_since.store(self.now_ms() + 1, Relaxed);
    }

    /// The request head is complete (or, for HTTP/2, the preface was read).
    pub(crate) fn head_done(&self) {
        self.head_since.store(0, Relaxed);
    }

    /// The tracker no longer follows the stream.
    pub(crate) fn untracked(&self) {
        self.untracked.store(true, Relaxed);
        self.head_done();
    }

    /// A request reached the service; the guard ends it.
    pub(crate) fn request(self: &Arc<Self>) -> ActiveGuard {
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

    /// Completes when the connection should end: a head over `limits.head`, no request
    /// for `limits.idle` (only when `watch_idle`), response data not taken for
    /// `limits.write`, or a rapid-reset pattern.
    pub(crate) async fn expired(&self, limits: ClockLimits, watch_idle: bool) -> Expiry {
        let head_ms = limits.head.as_millis() as u64;
        let idle_ms = limits.idle.as_millis() as u64;
        let write_ms = limits.write.as_millis() as u64;
        loop {
            if self.resets_abusive() {
                return Expiry::Resets;
            }
            let now = self.now_ms();
            // Whatever starts while the watchdog sleeps (a head, an idle spell, a stall)
            // is due no earlier than its own limit from now.
            let mut next = now + head_ms.min(idle_ms).min(write_ms).max(1);
            if self.waiting_on_client.load(Relaxed) > 0 {
                let due = self.body_progress.load(Relaxed) + write_ms;
                if now >= due {
                    return Expiry::Stalled;
                }
                next = next.min(due);
            }
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

/// The connection's time limits, as the watchdog applies them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClockLimits {
    pub(crate) head: Duration,
    pub(crate) idle: Duration,
    pub(crate) write: Duration,
}

/// One request's hold on the connection: dropped when its response is finished, or when
/// the client abandoned it first.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    clock: Arc<ConnClock>,
    answered: bool,
}

impl ActiveGuard {
    /// The handler produced the response head.
    pub(crate) fn answered(&mut self) {
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
    /// A response body that holds its request's `ActiveGuard` until it is dropped, and
    /// tells the clock whether it waits for the client (its last frame was taken, or it
    /// was never polled) or for the upstream (its last poll was pending).
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        guard: ActiveGuard,
        waiting_on_client: bool,
    }

    impl<B> PinnedDrop for Tracked<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.waiting_on_client {
                this.guard.clock.waiting_on_client.fetch_sub(1, Relaxed);
            }
        }
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, guard: ActiveGuard) -> Self {
        let c = &guard.clock;
        c.body_progress.store(c.now_ms(), Relaxed);
        c.waiting_on_client.fetch_add(1, Relaxed);
        Tracked {
            inner,
            guard,
            waiting_on_client: true,
        }
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let clock = &this.guard.clock;
        clock.body_progress.store(clock.now_ms(), Relaxed);
        let r = this.inner.poll_frame(cx);
        let waits = matches!(r, std::task::Poll::Ready(Some(Ok(_))));
        if waits != *this.waiting_on_client {
            *this.waiting_on_client = waits;
            if waits {
                clock.waiting_on_client.fetch_add(1, Relaxed);
            } else {
                clock.waiting_on_client.fetch_sub(1, Relaxed);
            }
        }
        r
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

    fn limits(head: u64, idle: u64) -> ClockLimits {
        ClockLimits {
            head: Duration::from_secs(head),
            idle: Duration::from_secs(idle),
            write: Duration::from_secs(3600),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_head_is_due_from_the_connection_start() {
        let c = ConnClock::new();
        let t = Instant::now();
        let why = c.expired(limits(10, 60), true).await;
        assert_eq!(why, Expiry::Head);
        assert_eq!(t.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_runs_from_the_last_answer_and_a_late_head_keeps_its_own_deadline() {
        let c = ConnClock::new();
        c.head_done();
        let mut g = c.request();
        g.answered();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(g);
        let t = Instant::now();
        assert_eq!(c.expired(limits(10, 30), true).await, Expiry::Idle);
        assert_eq!(t.elapsed(), Duration::from_secs(30));

        // A head starting while the watchdog sleeps is still cut at its own deadline.
        let c2 = c.clone();
        let watch = tokio::spawn(async move { c2.expired(limits(10, 300), true).await });
        tokio::time::advance(Duration::from_secs(7)).await;
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
        let expired =
            tokio::time::timeout(Duration::from_secs(600), c.expired(limits(10, 60), true)).await;
        assert!(expired.is_err(), "a request in progress is not idle");
        drop(busy);
        for i in 0..PREMATURE_RESET_MIN_STREAMS {
            let mut g = c.request();
            if i % 3 == 0 {
                g.answered();
            }
        }
        assert_eq!(c.expired(limits(10, 60), false).await, Expiry::Resets);
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;
    use http_body::Body as _;

    /// A body that gives one frame, then waits for ever (an upstream with nothing to say).
    struct OneThenPending(bool);

    impl http_body::Body for OneThenPending {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            if self.0 {
                return std::task::Poll::Pending;
            }
            self.0 = true;
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"x",
            )))))
        }
    }

    fn limits() -> ClockLimits {
        ClockLimits {
            head: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            write: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_the_client_does_not_take_stalls_one_waiting_on_the_upstream_does_not() {
        let c = ConnClock::new();
        c.head_done();
        let mut g = c.request();
        g.answered();
        let mut body = Box::pin(Tracked::new(OneThenPending(false), g));
        // Never polled: the client has not taken even the first frame.
        let t = Instant::now();
        assert_eq!(c.expired(limits(), true).await, Expiry::Stalled);
        assert_eq!(t.elapsed(), Duration::from_secs(5));

        // Polled: the frame is taken, then the body waits on its upstream: no stall.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(body.as_mut().poll_frame(&mut cx).is_ready());
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
        let waited = tokio::time::timeout(Duration::from_secs(60), c.expired(limits(), true)).await;
        assert!(
            waited.is_err(),
            "waiting on the upstream is not a stall: {waited:?}"
        );
        drop(body);
        assert_eq!(c.waiting_on_client.load(Relaxed), 0);
    }
}
