//! A shadow cluster: its bounded queue, its in-flight cap, its own pooled client, and the
//! dispatcher task that drains the queue. Offering never waits: a full queue drops the
//! copy (`queue_full`). At shutdown the queue gets `shadow_drain` to empty; what is left is
//! counted `shutdown`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::mirror::ShadowJob;
use crate::config::ClusterConfig;
use crate::metrics::{DropReason, Metrics, ShadowClusterMetrics, ShadowOutcome};
use crate::upstream::{Cluster, UpstreamError, upstream_uri};

/// Shadow response bodies are read up to this much (so the connection can be reused);
/// a longer body is abandoned and its connection closed.
pub const RESPONSE_READ_CAP: usize = 64 * 1024;

/// The body of a shadow request: the captured chunks, then the trailers.
pub struct ShadowBody {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    remaining: u64,
}

impl ShadowBody {
    pub fn new(chunks: Vec<Bytes>, trailers: Option<HeaderMap>, len: u64) -> Self {
        ShadowBody {
            chunks: chunks.into(),
            trailers,
            remaining: len,
        }
    }
}

impl Body for ShadowBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            self.remaining -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.trailers.is_some() {
            // Trailers need a chunked body.
            let mut h = SizeHint::new();
            h.set_lower(self.remaining);
            h
        } else {
            SizeHint::with_exact(self.remaining)
        }
    }
}

/// Shutdown progress, sent to every dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop taking new copies; send what is queued until the deadline.
    Draining(tokio::time::Instant),
}

/// One shadow cluster.
pub struct ShadowCluster {
    pub name: String,
    tx: mpsc::Sender<ShadowJob>,
    rx: Mutex<Option<mpsc::Receiver<ShadowJob>>>,
    upstream: Cluster<ShadowBody>,
    in_flight: Arc<Semaphore>,
    metrics: ShadowClusterMetrics,
}

/// Keeps a gauge right however a task ends.
struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: &Gauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ShadowCluster {
    pub fn new(name: &str, c: &ClusterConfig, metrics: &Metrics) -> Self {
        let (tx, rx) = mpsc::channel(c.shadow_queue.value);
        ShadowCluster {
            name: name.to_string(),
            tx,
            rx: Mutex::new(Some(rx)),
            upstream: Cluster::new(name, c, metrics.cluster(name)),
            in_flight: Arc::new(Semaphore::new(c.shadow_max_in_flight.value)),
            metrics: metrics.shadow_cluster(name),
        }
    }

    /// Queues a job without waiting; a full or closed queue drops it with its reason.
    pub fn offer(&self, job: ShadowJob) {
        // Counted before the send so the dispatcher's decrement can never come first.
        self.metrics.queue_depth.inc();
        let refused = match self.tx.try_send(job) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(job)) => (job, DropReason::queue_full),
            Err(mpsc::error::TrySendError::Closed(job)) => (job, DropReason::shutdown),
        };
        self.metrics.queue_depth.dec();
        refused.0.policy.metrics.dropped(refused.1);
    }

    /// Runs the dispatcher until the drain deadline passes or the queue is empty after
    /// draining started. Call once.
    pub async fn dispatch(self: Arc<Self>, mut phase: watch::Receiver<Phase>) {
        let Some(mut rx) = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let mut tasks = JoinSet::new();
        let mut deadline = None;
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(shadow = %self.name, "shadow task panicked; the primary is unaffected");
                }
            }
            let next = tokio::select! {
                changed = phase.changed(), if deadline.is_none() => {
                    deadline = draining_deadline(changed, &phase);
                    if deadline.is_some() {
                        rx.close();
                    }
                    continue;
                }
                _ = sleep_until(deadline) => break,
                job = rx.recv() => job,
            };
            let Some(job) = next else { break };
            self.metrics.queue_depth.dec();
            let permit = loop {
                tokio::select! {
                    p = self.in_flight.clone().acquire_owned() => break Some(p.expect("the semaphore is never closed")),
                    changed = phase.changed(), if deadline.is_none() => {
                        deadline = draining_deadline(changed, &phase);
                        if deadline.is_some() {
                            rx.close();
                        }
                    }
                    _ = sleep_until(deadline) => break None,
                }
            };
            let Some(permit) = permit else {
                job.policy.metrics.dropped(DropReason::shutdown);
                break;
            };
            job.policy.metrics.sent.inc();
            let me = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let _gauge = GaugeGuard::new(&me.metrics.in_flight);
                me.send(job).await;
            });
        }
        // Drain deadline reached or queue closed and empty: count what is left, then give
        // in-flight requests the rest of the time.
        rx.close();
        while let Ok(job) = rx.try_recv() {
            self.metrics.queue_depth.dec();
            job.policy.metrics.dropped(DropReason::shutdown);
        }
        let until = deadline.unwrap_or_else(tokio::time::Instant::now);
        let _ =
            tokio::time::timeout_at(until, async { while tasks.join_next().await.is_some() {} })
                .await;
        tasks.shutdown().await;
    }

    async fn send(&self, job: ShadowJob) {
        let ep = self.upstream.pick();
        let ShadowJob {
            policy,
            method,
            path_and_query,
            mut headers,
            host,
            request_id,
            body,
            trailers,
            body_len,
            primary,
            ..
        } = job;
        if let Some(h) = policy.host.apply(host.as_ref(), ep) {
            headers.insert(header::HOST, h);
        }
        let mut req = Request::new(ShadowBody::new(body, trailers, body_len));
        *req.method_mut() = method;
        *req.uri_mut() = upstream_uri(ep, &http::Uri::from(path_and_query));
        *req.headers_mut() = headers;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + policy.timeout;
        let (outcome, status, to_headers, to_end) = match self
            .upstream
            .send_within(ep, req, policy.timeout)
            .await
        {
            Err(e) => {
                let outcome = match e {
                    UpstreamError::Connect { .. } => ShadowOutcome::connect_error,
                    UpstreamError::Timeout { .. } => ShadowOutcome::timeout,
                    UpstreamError::Protocol { .. } => ShadowOutcome::protocol_error,
                };
                tracing::debug!(shadow = %self.name, request_id = ?request_id, error = %e, "shadow request failed");
                (outcome, None, None, None)
            }
            Ok(resp) => {
                let to_headers = started.elapsed();
                let status = resp.status();
                let read = tokio::time::timeout_at(deadline, read_capped(resp.into_body())).await;
                match read {
                    Ok(Ok(())) => (
                        ShadowOutcome::ok,
                        Some(status),
                        Some(to_headers),
                        Some(started.elapsed()),
                    ),
                    Ok(Err(())) => (
                        ShadowOutcome::body_error,
                        Some(status),
                        Some(to_headers),
                        None,
                    ),
                    Err(_) => (ShadowOutcome::timeout, Some(status), Some(to_headers), None),
                }
            }
        };
        tracing::debug!(
            shadow = %self.name,
            route = %policy.route,
            request_id = ?request_id,
            outcome = ?outcome,
            status = status.map(|s| s.as_u16()),
            primary_status = primary.status.map(|s| s.as_u16()),
            "shadow exchange done"
        );
        policy.metrics.outcome(
            outcome,
            status.filter(|_| outcome == ShadowOutcome::ok),
            to_headers,
            to_end,
        );
    }
}

/// Reads a response body up to `RESPONSE_READ_CAP` bytes; past the cap it stops (the
/// connection is then not reused). `Err` when the body fails.
async fn read_capped(mut body: hyper::body::Incoming) -> Result<(), ()> {
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Some(d) = frame.data_ref() {
            read += d.len();
            if read > RESPONSE_READ_CAP {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The drain deadline once the phase says draining (now, if the sender is gone).
fn draining_deadline(
    changed: Result<(), watch::error::RecvError>,
    phase: &watch::Receiver<Phase>,
) -> Option<tokio::time::Instant> {
    match (changed, *phase.borrow()) {
        (Ok(()), Phase::Draining(at)) => Some(at),
        (Ok(()), Phase::Running) => None,
        (Err(_), _) => Some(tokio::time::Instant::now()),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts a dispatcher per shadow cluster; `drain` stops them.
pub struct Dispatchers {
    phase: watch::Sender<Phase>,
    tasks: JoinSet<()>,
}

impl Dispatchers {
    pub fn start(clusters: &[Arc<ShadowCluster>]) -> Self {
        let (phase, rx) = watch::channel(Phase::Running);
        let mut tasks = JoinSet::new();
        for c in clusters {
            tasks.spawn(c.clone().dispatch(rx.clone()));
        }
        Dispatchers { phase, tasks }
    }

    /// Stops taking copies, sends what is queued for up to `within`, abandons the rest
    /// (counted `shutdown`).
    pub async fn drain(mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let _ = self.phase.send(Phase::Draining(deadline));
        // Each dispatcher returns by the deadline; the margin covers task teardown.
        let _ = tokio::time::timeout_at(deadline + Duration::from_secs(1), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.shutdown().await;
    }
}
