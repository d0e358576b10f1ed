//! A shadow cluster: its bounded queue, its in-flight cap, its own pooled client, and the
//! dispatcher task that drains the queue. Offering never waits: a full queue drops the
//! copy (`queue_full`). At shutdown the queue gets `shadow_drain` to empty; what is left is
//! counted `shutdown`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::compare::{BodySide, Comparator, Mismatch, Verdict};
use super::mirror::{PrimaryBody, PrimaryOutcome, ShadowJob};
use crate::config::ClusterConfig;
use crate::metrics::{
    CompareResult, DropReason, Metrics, ShadowClusterMetrics, ShadowOutcome, SkipReason,
};
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

/// Body bytes held against a shadow cluster's `shadow_max_bytes`, given back on drop.
pub struct ByteCharge {
    held: Arc<AtomicU64>,
    gauge: Gauge,
    bytes: u64,
}

impl Drop for ByteCharge {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
        self.gauge.dec_by(self.bytes as i64);
    }
}

/// Connect failures in a row that open a shadow cluster's circuit.
pub const CIRCUIT_FAILURES: u32 = 5;
/// How long an open circuit drops copies before one is tried again.
pub const CIRCUIT_OPEN_FOR: Duration = Duration::from_secs(1);

/// One shadow cluster.
pub struct ShadowCluster {
    pub name: String,
    /// Connect failures in a row (reset by any exchange that connects).
    connect_failures: AtomicU32,
    /// Milliseconds since `epoch` until which copies are dropped `circuit_open`.
    open_until_ms: AtomicU64,
    epoch: Instant,
    held: Arc<AtomicU64>,
    max_bytes: u64,
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
            held: Arc::new(AtomicU64::new(0)),
            connect_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            max_bytes: c.shadow_max_bytes.value.bytes(),
            tx,
            rx: Mutex::new(Some(rx)),
            upstream: Cluster::new(name, c, metrics.cluster(name, crate::metrics::Leg::shadow)),
            in_flight: Arc::new(Semaphore::new(c.shadow_max_in_flight.value)),
            metrics: metrics.shadow_cluster(name),
        }
    }

    /// True while the shadow refused too many connections in a row: copies are dropped
    /// (`circuit_open`) before any work is spent on them; one goes through each
    /// `CIRCUIT_OPEN_FOR` to probe.
    pub fn circuit_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) > self.epoch.elapsed().as_millis() as u64
    }

    fn note_outcome(&self, outcome: ShadowOutcome) {
        if outcome == ShadowOutcome::connect_error {
            if self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1 >= CIRCUIT_FAILURES {
                let until = (self.epoch.elapsed() + CIRCUIT_OPEN_FOR).as_millis() as u64;
                if self.open_until_ms.swap(until, Ordering::Relaxed)
                    <= self.epoch.elapsed().as_millis() as u64
                {
                    tracing::warn!(shadow = %self.name, open_for_ms = CIRCUIT_OPEN_FOR.as_millis() as u64, "shadow refuses connections: circuit open");
                }
            }
        } else {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Queues a job without waiting; a full queue, a full byte budget or a closed queue
    /// drops it with its reason.
    pub fn offer(&self, mut job: ShadowJob) {
        let bytes = job.body_len;
        if bytes > 0 {
            if self.held.fetch_add(bytes, Ordering::Relaxed) + bytes > self.max_bytes {
                self.held.fetch_sub(bytes, Ordering::Relaxed);
                job.policy.dropped(DropReason::queue_full, &job.path);
                return;
            }
            self.metrics.held_bytes.inc_by(bytes as i64);
            job.charge = Some(ByteCharge {
                held: self.held.clone(),
                gauge: self.metrics.held_bytes.clone(),
                bytes,
            });
        }
        // Counted before the send so the dispatcher's decrement can never come first.
        self.metrics.queue_depth.inc();
        let refused = match self.tx.try_send(job) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(job)) => (job, DropReason::queue_full),
            Err(mpsc::error::TrySendError::Closed(job)) => (job, DropReason::shutdown),
        };
        self.metrics.queue_depth.dec();
        refused.0.policy.dropped(refused.1, &refused.0.path);
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
                job.policy.dropped(DropReason::shutdown, &job.path);
                break;
            };
            job.policy.metrics.sent.inc();
            let me = self.clone();
            tasks.spawn(async move { me.send(job, permit).await });
        }
        // Drain deadline reached or queue closed and empty: count what is left, then give
        // in-flight requests the rest of the time.
        rx.close();
        while let Ok(job) = rx.try_recv() {
            self.metrics.queue_depth.dec();
            job.policy.dropped(DropReason::shutdown, &job.path);
        }
        let until = deadline.unwrap_or_else(tokio::time::Instant::now);
        let _ =
            tokio::time::timeout_at(until, async { while tasks.join_next().await.is_some() {} })
                .await;
        tasks.shutdown().await;
    }

    /// Sends one copy, reads the answer, releases the in-flight permit, then compares the
    /// answer with the primary's (waiting, if needed, for the primary's body) and records
    /// everything for the path.
    async fn send(&self, job: ShadowJob, permit: OwnedSemaphorePermit) {
        let gauge = GaugeGuard::new(&self.metrics.in_flight);
        // Every sent copy gets one outcome, also when shutdown abandons it mid-way.
        let mut unrecorded = Unrecorded(Some(job.policy.clone()));
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
            primary_body,
            path,
            charge,
            ..
        } = job;
        if let Some(h) = policy.host.apply(host.as_ref(), ep) {
            headers.insert(header::HOST, h);
        }
        let mut req = Request::new(ShadowBody::new(body, trailers, body_len));
        *req.method_mut() = method.clone();
        *req.uri_mut() = upstream_uri(ep, &http::Uri::from(path_and_query.clone()));
        *req.headers_mut() = headers;
        let keep = policy
            .compare
            .compares_body()
            .then_some(policy.compare.max_body);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + policy.timeout;
        let answer = match self.upstream.send_within(ep, req, policy.timeout).await {
            Err(e) => {
                tracing::debug!(shadow = %self.name, request_id = ?request_id, error = %e, "shadow request failed");
                Answer::failed(match e {
                    UpstreamError::Connect { .. } => ShadowOutcome::connect_error,
                    UpstreamError::Timeout { .. } => ShadowOutcome::timeout,
                    // A shadow body is complete bytes in memory: it cannot fail like a client's.
                    UpstreamError::Protocol { .. } | UpstreamError::ClientBody { .. } => {
                        ShadowOutcome::protocol_error
                    }
                })
            }
            Ok(resp) => {
                let to_headers = started.elapsed();
                let (parts, body) = resp.into_parts();
                let (outcome, body, to_end) =
                    match tokio::time::timeout_at(deadline, read_body(body, keep)).await {
                        Ok(Ok(kept)) => (ShadowOutcome::ok, kept, Some(started.elapsed())),
                        Ok(Err(())) => (ShadowOutcome::body_error, None, None),
                        Err(_) => (ShadowOutcome::timeout, None, None),
                    };
                Answer {
                    outcome,
                    status: Some(parts.status),
                    headers: parts.headers,
                    body,
                    to_headers: Some(to_headers),
                    to_end,
                }
            }
        };
        self.note_outcome(answer.outcome);

        let ok_status = answer
            .status
            .filter(|_| answer.outcome == ShadowOutcome::ok);
        policy
            .metrics
            .outcome(answer.outcome, ok_status, answer.to_headers, answer.to_end);
        unrecorded.0 = None;
        let stats = path.shadows.get(policy.index);
        if let Some(stats) = stats {
            match (answer.status, answer.to_headers) {
                (Some(status), Some(t)) => stats.head(status, t),
                _ => stats.leg.failed(),
            }
            // A head that came but whose body then failed is one error, however the head
            // was counted.
            if answer.outcome != ShadowOutcome::ok
                && answer.status.is_some_and(|s| !s.is_server_error())
            {
                stats
                    .leg
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(t) = answer.to_end {
                stats.end(t);
            }
        }

        // The in-flight slot and the byte budget are held until the comparison is done:
        // the number of tasks holding response bodies stays bounded.
        let verdict = judge(
            &policy.compare,
            &primary,
            primary_body,
            &answer,
            policy.timeout,
        )
        .await;
        drop(permit);
        drop(gauge);
        drop(charge);
        if let Some(stats) = stats {
            stats.compared(verdict.result, verdict.skipped);
        }
        if verdict.result.is_mismatch() {
            policy.mismatches.push(Mismatch {
                time_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                request_id: request_id.to_str().unwrap_or("-").to_string(),
                route: policy.route.clone(),
                method: method.to_string(),
                path: path_and_query.path().to_string(),
                template: path.template.clone(),
                shadow: self.name.clone(),
                primary_status: primary.status.map(|s| s.as_u16()),
                shadow_status: answer.status.map(|s| s.as_u16()),
                result: verdict.result.as_str(),
                diff: verdict.diff,
            });
        }
        tracing::debug!(
            shadow = %self.name,
            route = %policy.route,
            request_id = ?request_id,
            outcome = ?answer.outcome,
            status = answer.status.map(|s| s.as_u16()),
            primary_status = primary.status.map(|s| s.as_u16()),
            result = verdict.result.as_str(),
            "shadow exchange done"
        );
    }
}

/// Records `aborted` for a copy whose exchange was dropped before its outcome.
struct Unrecorded(Option<Arc<super::ShadowPolicy>>);

impl Drop for Unrecorded {
    fn drop(&mut self) {
        if let Some(policy) = self.0.take() {
            policy
                .metrics
                .outcome(ShadowOutcome::aborted, None, None, None);
        }
    }
}

/// What came back from a shadow.
struct Answer {
    outcome: ShadowOutcome,
    status: Option<StatusCode>,
    headers: HeaderMap,
    /// The body, when the comparison wants it.
    body: Option<BodySide>,
    to_headers: Option<Duration>,
    to_end: Option<Duration>,
}

impl Answer {
    fn failed(outcome: ShadowOutcome) -> Self {
        Answer {
            outcome,
            status: None,
            headers: HeaderMap::new(),
            body: None,
            to_headers: None,
            to_end: None,
        }
    }
}

/// Compares a shadow's answer with the primary's.
async fn judge(
    cmp: &Comparator,
    primary: &PrimaryOutcome,
    primary_body: Option<PrimaryBody>,
    answer: &Answer,
    wait: Duration,
) -> Verdict {
    let Some(p_status) = primary.status.filter(|_| primary.error.is_none()) else {
        return Verdict::skipped(SkipReason::primary_error);
    };
    let Some(s_status) = answer
        .status
        .filter(|_| answer.outcome == ShadowOutcome::ok)
    else {
        return Verdict::of(CompareResult::ShadowError);
    };
    if let Some(v) = cmp.compare_head((p_status, &primary.headers), (s_status, &answer.headers)) {
        return v;
    }
    // The primary's body may still be streaming to its client: wait for it, off the
    // primary path, for up to the shadow's timeout.
    let p_body = match primary_body {
        Some(mut rx) => match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v
                .as_ref()
                .map_or(BodySide::Incomplete, |b| BodySide::clone(b)),
            _ => BodySide::Incomplete,
        },
        None => BodySide::Incomplete,
    };
    cmp.compare_body(
        &p_body,
        answer.body.as_ref().unwrap_or(&BodySide::Incomplete),
    )
}

/// Reads a shadow response body. With `keep`, returns it when it is at most `keep` bytes
/// (else `TooLarge`, and reading stops); without, reads up to `RESPONSE_READ_CAP` so the
/// connection can be reused. `Err` when the body fails.
async fn read_body(
    mut body: hyper::body::Incoming,
    keep: Option<usize>,
) -> Result<Option<BodySide>, ()> {
    let mut kept = BytesMut::new();
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Some(d) = frame.data_ref() {
            read += d.len();
            match keep {
                Some(max) if read > max => return Ok(Some(BodySide::TooLarge)),
                Some(_) => kept.extend_from_slice(d),
                None if read > RESPONSE_READ_CAP => return Ok(None),
                None => {}
            }
        }
    }
    Ok(keep.map(|_| BodySide::Complete(kept.freeze())))
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
