//! One request's mirror: where the two halves of a shadow job meet. The tee reports the
//! end of the body (from the primary client's connection task), the handler reports the
//! primary's outcome; whichever comes second builds the jobs and offers them to the shadow
//! queues with `try_send`. Neither side ever waits for the other.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use tokio::sync::watch;

use super::ShadowPolicy;
use super::compare::BodySide;
use crate::metrics::DropReason;
use crate::stats::PathEntry;

/// How the client's body ended, as far as the mirror is concerned.
#[derive(Debug)]
pub enum Captured {
    /// Every chunk (clones of the forwarded `Bytes`), and the trailers if any.
    Complete {
        chunks: Vec<Bytes>,
        trailers: Option<HeaderMap>,
        len: u64,
    },
    /// Over every shadow's `max_body`; the clones were released.
    TooLarge,
    /// Ended in an error or abandoned: never mirrored.
    Incomplete,
}

/// The primary error kind of a request whose client left before the answer.
pub const CANCELLED: &str = "cancelled";

/// What the primary leg did, carried in each shadow job for comparison.
#[derive(Debug, Clone)]
pub struct PrimaryOutcome {
    pub status: Option<StatusCode>,
    /// From sending to the response head (or to the failure).
    pub elapsed: Duration,
    /// `connect`, `timeout`, `protocol`, or `cancelled` (the client left first).
    pub error: Option<&'static str>,
    /// The primary's response headers (empty when it failed).
    pub headers: HeaderMap,
}

/// Where the primary's response body arrives for comparisons: `None` until it is known.
pub type PrimaryBody = watch::Receiver<Option<Arc<BodySide>>>;

/// The request as the shadows will see it, before per-shadow rewrites.
pub struct MirrorPlan {
    pub targets: Vec<Arc<ShadowPolicy>>,
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// The primary's headers after hop-by-hop removal and `X-Forwarded-*`, without Host.
    pub headers: HeaderMap,
    /// The host the client asked for.
    pub host: Option<HeaderValue>,
    pub request_id: HeaderValue,
    /// The request's path entry (statistics per path template).
    pub path: Arc<PathEntry>,
}

#[derive(Default)]
struct Halves {
    body: Option<Captured>,
    primary: Option<PrimaryOutcome>,
}

// The small variant exists only in unit tests; boxing the plan would cost every mirrored
// request an allocation.
#[allow(clippy::large_enum_variant)]
enum Target {
    Plan(MirrorPlan),
    #[cfg(test)]
    Record(Arc<Mutex<Option<Captured>>>),
}

/// The meeting point of a request's body and its primary outcome.
pub struct Mirror {
    max_body: u64,
    halves: Mutex<Halves>,
    target: Target,
    /// Filled by the primary's response tee when some target compares bodies.
    primary_body: Option<(watch::Sender<Option<Arc<BodySide>>>, usize)>,
}

impl Mirror {
    pub fn new(plan: MirrorPlan) -> Self {
        let max_body = plan.targets.iter().map(|t| t.max_body).max().unwrap_or(0);
        let compare_max = plan
            .targets
            .iter()
            .filter(|t| t.compare.compares_body())
            .map(|t| t.compare.max_body)
            .max();
        Mirror {
            max_body,
            halves: Mutex::new(Halves::default()),
            target: Target::Plan(plan),
            primary_body: compare_max.map(|max| (watch::channel(None).0, max)),
        }
    }

    /// Where the primary's response body goes for comparison, and how much of it to keep;
    /// `None` when no target compares bodies.
    pub fn primary_body_sink(&self) -> Option<(watch::Sender<Option<Arc<BodySide>>>, usize)> {
        self.primary_body.clone()
    }

    /// The largest body any target takes: the tee keeps chunks up to this.
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    /// The tee's half: called once.
    pub fn body_done(&self, captured: Captured) {
        #[cfg(test)]
        if let Target::Record(slot) = &self.target {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            assert!(slot.is_none(), "body reported twice");
            *slot = Some(captured);
            return;
        }
        self.meet(|h| h.body = Some(captured));
    }

    /// The handler's half: called once.
    pub fn primary_done(&self, outcome: PrimaryOutcome) {
        self.meet(|h| h.primary = Some(outcome));
    }

    fn meet(&self, deposit: impl FnOnce(&mut Halves)) {
        let both = {
            let mut h = self.halves.lock().unwrap_or_else(PoisonError::into_inner);
            deposit(&mut h);
            match (h.body.is_some(), h.primary.is_some()) {
                (true, true) => h.body.take().zip(h.primary.take()),
                _ => None,
            }
        };
        if let (Some((body, primary)), Target::Plan(plan)) = (both, &self.target) {
            let primary_body = self.primary_body.as_ref().map(|(tx, _)| tx.subscribe());
            offer(plan, body, primary, primary_body);
        }
    }
}

/// Builds one job per target and offers it; counts every copy that is not queued.
fn offer(
    plan: &MirrorPlan,
    body: Captured,
    primary: PrimaryOutcome,
    primary_body: Option<PrimaryBody>,
) {
    let (chunks, trailers, len) = match body {
        Captured::Complete {
            chunks,
            trailers,
            len,
        } => (chunks, trailers, len),
        Captured::TooLarge => return drop_all(plan, DropReason::body_too_large),
        Captured::Incomplete => return drop_all(plan, DropReason::body_incomplete),
    };
    if primary.error == Some(CANCELLED) {
        // The client reset the stream or left before the answer: not a request the
        // service completed, and mirroring it would turn a reset flood into shadow load.
        return drop_all(plan, DropReason::cancelled);
    }
    for target in &plan.targets {
        if target.cluster.circuit_open() {
            target.dropped(DropReason::circuit_open, &plan.path);
            continue;
        }
        if len > target.max_body {
            target.dropped(DropReason::body_too_large, &plan.path);
            continue;
        }
        let job = ShadowJob {
            policy: target.clone(),
            method: plan.method.clone(),
            path_and_query: plan.path_and_query.clone(),
            headers: target.shadow_headers(&plan.headers),
            host: plan.host.clone(),
            request_id: plan.request_id.clone(),
            body: chunks.clone(),
            trailers: trailers.clone(),
            body_len: len,
            primary: primary.clone(),
            primary_body: primary_body.clone(),
            path: plan.path.clone(),
            offered_at: Instant::now(),
            charge: None,
        };
        target.cluster.offer(job);
    }
}

fn drop_all(plan: &MirrorPlan, reason: DropReason) {
    for t in &plan.targets {
        t.dropped(reason, &plan.path);
    }
}

/// A complete shadow request waiting for its shadow cluster.
pub struct ShadowJob {
    pub policy: Arc<ShadowPolicy>,
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// Headers after the shadow's rewrites (Host is set at send time, per endpoint).
    pub headers: HeaderMap,
    pub host: Option<HeaderValue>,
    pub request_id: HeaderValue,
    pub body: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
    pub body_len: u64,
    pub primary: PrimaryOutcome,
    /// The primary's response body, when this shadow compares bodies.
    pub primary_body: Option<PrimaryBody>,
    pub path: Arc<PathEntry>,
    pub offered_at: Instant,
    /// The body bytes this job holds against its shadow cluster's budget (set when it
    /// is queued; released when dropped).
    pub charge: Option<super::dispatch::ByteCharge>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A mirror that records what the tee reports, for tee tests.
    pub(crate) fn recording_mirror(max_body: u64) -> (Arc<Mirror>, Arc<Mutex<Option<Captured>>>) {
        let slot = Arc::new(Mutex::new(None));
        let m = Mirror {
            max_body,
            halves: Mutex::new(Halves::default()),
            target: Target::Record(slot.clone()),
            primary_body: None,
        };
        (Arc::new(m), slot)
    }
}
