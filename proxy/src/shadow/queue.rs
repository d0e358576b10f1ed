//! The sending side of a shadow cluster's queue: what a queued copy is, the byte budget,
//! the circuit, and `offer`, which never waits. A full queue or budget drops the copy
//! (`queue_full`), a closed queue drops it (`shutdown`), an open circuit drops it
//! (`circuit_open`). The receiving side is the dispatcher's; the queue closes when the last
//! `ShadowQueue` (held by the routes of a snapshot and by requests still in progress) drops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::compare::BodySide;
use super::record::CopySpec;
use crate::metrics::{DropReason, ShadowClusterMetrics};
use crate::stats::PathEntry;

/// The primary error kind of a request whose client left before the answer.
pub(crate) const CANCELLED: &str = "cancelled";

/// What the primary leg did, carried in each shadow job for comparison.
#[derive(Debug, Clone)]
pub(crate) struct PrimaryOutcome {
    pub(crate) status: Option<StatusCode>,
    /// `connect`, `timeout`, `protocol`, or `cancelled` (the client left first).
    pub(crate) error: Option<&'static str>,
    /// The primary's response headers (empty when it failed).
    pub(crate) headers: HeaderMap,
    /// From sending to the primary to its response head.
    pub(crate) to_headers: Option<Duration>,
    /// When the response head came.
    pub(crate) head_at: Option<std::time::Instant>,
    /// From the whole request sent to the response head (set when the job is built).
    pub(crate) paired: Option<Duration>,
    /// For a gRPC call: the primary's trailers once its body ended (empty when it had
    /// none); the sender is dropped when the body broke off.
    pub(crate) trailers: Option<PrimaryTrailers>,
}

/// Where a gRPC primary's trailers arrive: `None` until its body ended.
pub(crate) type PrimaryTrailers = watch::Receiver<Option<Arc<HeaderMap>>>;

impl PrimaryOutcome {
    /// No response, or a server error: a failure for the paired error counts.
    pub(crate) fn failed(&self) -> bool {
        self.error.is_some() || self.status.is_none_or(|s| s.is_server_error())
    }
}

/// Where the primary's response body arrives for comparisons: `None` until it is known.
pub(crate) type PrimaryBodyWatch = watch::Receiver<Option<Arc<BodySide>>>;

/// Where the primary's response tee sends the body, and how much of it to keep.
pub(crate) type PrimaryBodySink = (watch::Sender<Option<Arc<BodySide>>>, usize);

/// A complete shadow request waiting for its shadow cluster.
pub(crate) struct ShadowJob {
    pub(crate) spec: Arc<CopySpec>,
    pub(crate) method: Method,
    pub(crate) path_and_query: PathAndQuery,
    /// Headers after the shadow's rewrites (Host is set at send time, per endpoint).
    pub(crate) headers: HeaderMap,
    /// The host the client asked for.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) request_id: HeaderValue,
    pub(crate) body: Vec<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) body_len: u64,
    pub(crate) primary: PrimaryOutcome,
    /// The primary's response body, when this shadow compares bodies.
    pub(crate) primary_body: Option<PrimaryBodyWatch>,
    pub(crate) path: Arc<PathEntry>,
    /// The body bytes this job holds against its cluster's budget (set when it is queued,
    /// given back when the last copy of the request holding it is done or dropped: the
    /// copies of an amplified request share one body, so they share one charge).
    pub(crate) charge: Option<Arc<ByteCharge>>,
    /// Which copy of an amplified request this is (1-based); only copy 1 is compared.
    pub(crate) copy: u8,
    /// Where a candidate's and its baseline's copies of this request meet.
    pub(crate) pair: Option<Arc<super::verdict::pair::PairSlot>>,
}

/// Body bytes held against a shadow cluster's `shadow_max_bytes`, given back on drop.
pub(crate) struct ByteCharge {
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
pub(crate) const CIRCUIT_FAILURES: u32 = 5;
/// How long an open circuit drops copies before one is tried again.
pub(crate) const CIRCUIT_OPEN_FOR: Duration = Duration::from_secs(1);

/// A shadow cluster that refuses connections gets no work for a while: after
/// `CIRCUIT_FAILURES` refused connections in a row, copies are dropped `circuit_open` for
/// `CIRCUIT_OPEN_FOR`; then one goes through to probe.
#[derive(Debug)]
pub(crate) struct Circuit {
    name: String,
    /// Connect failures in a row (reset by any exchange that connects).
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which copies are dropped.
    open_until_ms: AtomicU64,
    epoch: Instant,
    /// False while the cluster's health checks find no healthy endpoint: open until one is.
    available: Arc<AtomicBool>,
}

impl Circuit {
    pub(crate) fn new(name: &str, available: Arc<AtomicBool>) -> Self {
        Circuit {
            name: name.to_string(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            available,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn is_open(&self) -> bool {
        !self.available.load(Ordering::Relaxed)
            || self.open_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// An exchange could not connect.
    pub(crate) fn connect_failed(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= CIRCUIT_FAILURES {
            let until = self.now_ms() + CIRCUIT_OPEN_FOR.as_millis() as u64;
            if self.open_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms() {
                tracing::warn!(shadow = %self.name, open_for_ms = CIRCUIT_OPEN_FOR.as_millis() as u64, "shadow refuses connections: circuit open");
            }
        }
    }

    /// An exchange connected (whatever its answer).
    pub(crate) fn connected(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}

/// The sending side of one shadow cluster's queue.
pub(crate) struct ShadowQueue {
    tx: mpsc::Sender<ShadowJob>,
    /// Never sent: dropped with the queue, it tells the dispatcher its queue is retired.
    _retiring: oneshot::Sender<()>,
    held: Arc<AtomicU64>,
    max_bytes: u64,
    circuit: Arc<Circuit>,
    metrics: ShadowClusterMetrics,
}

impl ShadowQueue {
    pub(crate) fn new(
        tx: mpsc::Sender<ShadowJob>,
        retiring: oneshot::Sender<()>,
        max_bytes: u64,
        circuit: Arc<Circuit>,
        metrics: ShadowClusterMetrics,
    ) -> Self {
        ShadowQueue {
            tx,
            _retiring: retiring,
            held: Arc::new(AtomicU64::new(0)),
            max_bytes,
            circuit,
            metrics,
        }
    }

    /// True while the cluster's circuit is open: copies are dropped before any work.
    pub(crate) fn circuit_open(&self) -> bool {
        self.circuit.is_open()
    }

    /// True when the queue has no room now: a copy would be dropped `queue_full`, so it
    /// is dropped before it is built (a black-holed shadow at `amplify: 10` would
    /// otherwise cost ten header maps per request for nothing).
    pub(crate) fn is_full(&self) -> bool {
        self.tx.capacity() == 0 && !self.tx.is_closed()
    }

    #[cfg(test)]
    pub(crate) fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    /// Body bytes held by queued and in-flight copies.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Queues a job without waiting; a full queue, a full byte budget or a closed queue
    /// drops it with its reason. `shared` is the body's charge for the copies of one
    /// request: the first copy that gets one sets it, later copies share it.
    pub(crate) fn offer(
        &self,
        mut job: ShadowJob,
        shared: &mut Option<Arc<ByteCharge>>,
    ) -> Result<(), DropReason> {
        let bytes = job.body_len;
        if bytes > 0 && shared.is_none() {
            if self.held.fetch_add(bytes, Ordering::Relaxed) + bytes > self.max_bytes {
                self.held.fetch_sub(bytes, Ordering::Relaxed);
                job.spec.dropped(DropReason::queue_full, &job.path);
                return Err(DropReason::queue_full);
            }
            self.metrics.held_bytes.inc_by(bytes as i64);
            *shared = Some(Arc::new(ByteCharge {
                held: self.held.clone(),
                gauge: self.metrics.held_bytes.clone(),
                bytes,
            }));
        }
        job.charge = shared.clone();
        // Counted before the send so the dispatcher's decrement can never come first.
        self.metrics.queue_depth.inc();
        let (job, reason) = match self.tx.try_send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => (job, DropReason::queue_full),
            Err(mpsc::error::TrySendError::Closed(job)) => (job, DropReason::shutdown),
        };
        self.metrics.queue_depth.dec();
        job.spec.dropped(reason, &job.path);
        Err(reason)
    }
}
