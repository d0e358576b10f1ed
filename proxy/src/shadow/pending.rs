//! One request's rendezvous: where the two halves of a shadow job meet. The tee reports the
//! end of the body (from the primary client's connection task), the handler reports the
//! primary's outcome; whichever comes second builds the jobs and offers them to the shadow
//! queues with `try_send`. Neither side ever waits for the other.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use tokio::sync::watch;

use super::policy::{ShadowPolicy, primary_names_of};
use super::queue::{CANCELLED, PrimaryBodySink, PrimaryBodyWatch, PrimaryOutcome, ShadowJob};
use super::trace::Trace;
use super::verdict::pair::{PairSlot, Pairing};
use crate::http::headers;
use crate::metrics::DropReason;
use crate::stats::PathEntry;

/// How the client's body ended, as far as the shadows are concerned.
#[derive(Debug)]
pub(crate) enum Captured {
    /// Every chunk (clones of the forwarded `Bytes`), and the trailers if any.
    Complete {
        chunks: Vec<Bytes>,
        trailers: Option<HeaderMap>,
        len: u64,
        /// When the last of it went to the primary.
        ended: std::time::Instant,
    },
    /// Over every shadow's `max_body`; the clones were released.
    TooLarge,
    /// Ended in an error or abandoned: never mirrored.
    Incomplete,
}

/// The request as the shadows will see it, before per-shadow rewrites.
pub(crate) struct Plan {
    /// The policies that admitted the request, each with its number of copies.
    pub(crate) targets: Vec<(Arc<ShadowPolicy>, u8)>,
    pub(crate) method: Method,
    pub(crate) path_and_query: PathAndQuery,
    /// The primary's headers after hop-by-hop removal and `X-Forwarded-*`, without Host.
    pub(crate) headers: HeaderMap,
    /// The host the client asked for.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) request_id: HeaderValue,
    /// The request's path entry (statistics per path template).
    pub(crate) path: Arc<PathEntry>,
    /// Where the access log learns each copy's fate (only when the log is on).
    pub(crate) trace: Option<Arc<Trace>>,
    /// The primary's response headers the route's shadows read, all of them together
    /// (`None`: every header; see `policy::primary_names_of`), built with the route.
    pub(crate) route_primary_names: Option<Arc<[HeaderName]>>,
}

#[derive(Default)]
struct Halves {
    body: Option<Captured>,
    primary: Option<PrimaryOutcome>,
    /// Taken by whichever half comes second, which builds the jobs from it.
    plan: Option<Plan>,
}

/// Where the meeting's result goes: the plan's jobs (the plan waits in `Halves`).
enum Target {
    Plan,
    #[cfg(test)]
    Record(Arc<Mutex<Option<Captured>>>),
}

/// The meeting point of a request's body and its primary outcome.
pub(crate) struct Pending {
    max_body: u64,
    halves: Mutex<Halves>,
    target: Target,
    /// Filled by the primary's response tee when some target compares bodies.
    primary_body: Option<PrimaryBodySink>,
    /// The primary's response headers the targets read; `None`: all of them (a target
    /// records its exchanges).
    primary_names: Option<Arc<[HeaderName]>>,
}

impl Pending {
    pub(crate) fn new(plan: Plan) -> Self {
        let max_body = plan
            .targets
            .iter()
            .map(|(t, _)| t.max_body)
            .max()
            .unwrap_or(0);
        let compare_max = plan
            .targets
            .iter()
            .map(|(t, _)| t)
            .filter(|t| t.spec.compare.compares_body() || t.spec.recorder.is_some())
            .map(|t| t.spec.compare.max_body)
            .max();
        // One target: the names it reads. Several: the route's union, built once with the
        // route (a superset of what these targets read); if the route has none as one of
        // its policies records, the union of these targets (which may not include it).
        let primary_names = match plan.targets.as_slice() {
            [(t, _)] => primary_names_of(std::slice::from_ref(t)),
            many => plan.route_primary_names.clone().or_else(|| {
                primary_names_of(&many.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>())
            }),
        };
        Pending {
            max_body,
            halves: Mutex::new(Halves {
                plan: Some(plan),
                ..Halves::default()
            }),
            target: Target::Plan,
            primary_body: compare_max.map(|max| (watch::channel(None).0, max)),
            primary_names,
        }
    }

    /// What the copies keep of the primary's response headers: those their comparisons
    /// read (all of them when a target records), copied out of the connection's buffer.
    pub(crate) fn primary_headers(&self, headers: &HeaderMap) -> HeaderMap {
        match &self.primary_names {
            Some(names) => headers::detached_only(headers, names),
            None => headers::detached(headers),
        }
    }

    /// Where the primary's response body goes for comparison, and how much of it to keep;
    /// `None` when no target compares bodies.
    pub(crate) fn primary_body_sink(&self) -> Option<PrimaryBodySink> {
        self.primary_body.clone()
    }

    /// The largest body any target takes: the tee keeps chunks up to this.
    pub(crate) fn max_body(&self) -> u64 {
        self.max_body
    }

    /// The tee's half: called once.
    pub(crate) fn body_done(&self, captured: Captured) {
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
    pub(crate) fn primary_done(&self, outcome: PrimaryOutcome) {
        self.meet(|h| h.primary = Some(outcome));
    }

    fn meet(&self, deposit: impl FnOnce(&mut Halves)) {
        let both = {
            let mut h = self.halves.lock().unwrap_or_else(PoisonError::into_inner);
            deposit(&mut h);
            match (h.body.is_some(), h.primary.is_some()) {
                (true, true) => h.body.take().zip(h.primary.take()).zip(h.plan.take()),
                _ => None,
            }
        };
        if let (Some(((body, primary), plan)), Target::Plan) = (both, &self.target) {
            let primary_body = self.primary_body.as_ref().map(|(tx, _)| tx.subscribe());
            offer(plan, body, primary, primary_body);
        }
    }
}

/// Builds the jobs of every target (one per copy) and offers them; counts every copy that
/// is not queued. Per copy, in this order: the circuit (`circuit_open`), the size
/// (`body_too_large`), a queue with no room now (`queue_full`, before the copy is built),
/// the rate cap (`rate_limited`: only copies that got this far take a token), the queue
/// and its byte budget (`queue_full`, `shutdown`). The access log shows what became of
/// copy 1. The last copy built takes the plan's headers; the others get clones.
fn offer(
    plan: Plan,
    body: Captured,
    mut primary: PrimaryOutcome,
    primary_body: Option<PrimaryBodyWatch>,
) {
    let (chunks, trailers, len) = match body {
        Captured::Complete {
            chunks,
            trailers,
            len,
            ended,
        } => {
            // The primary's time is counted from the whole request sent, like a copy's.
            primary.paired = primary
                .head_at
                .zip(primary.to_headers)
                .and_then(|(head, t)| {
                    let start = (head - t).max(ended);
                    head.checked_duration_since(start)
                });
            (chunks, trailers, len)
        }
        Captured::TooLarge => return drop_all(&plan, DropReason::body_too_large),
        Captured::Incomplete => return drop_all(&plan, DropReason::body_incomplete),
    };
    if primary.error == Some(CANCELLED) {
        // The client reset the stream or left before the answer: not a request the
        // service completed, and mirroring it would turn a reset flood into shadow load.
        return drop_all(&plan, DropReason::cancelled);
    }
    let decided = |i: usize, decision: Result<(), DropReason>| {
        if let Some(t) = &plan.trace {
            t.decided(i, decision);
        }
    };
    let slots = pair_slots(&plan);
    let mut headers = Some(plan.headers);
    let last = plan.targets.len().saturating_sub(1);
    for (i, (target, copies)) in plan.targets.iter().enumerate() {
        if target.queue.circuit_open() {
            target
                .spec
                .dropped_copies(DropReason::circuit_open, &plan.path, *copies);
            decided(i, Err(DropReason::circuit_open));
            continue;
        }
        if len > target.max_body {
            target
                .spec
                .dropped_copies(DropReason::body_too_large, &plan.path, *copies);
            decided(i, Err(DropReason::body_too_large));
            continue;
        }
        // The copies share the body (`Bytes` clones) and so its byte charge.
        let mut charge = None;
        for copy in 1..=*copies {
            let decision = if target.queue.is_full() {
                target.spec.dropped(DropReason::queue_full, &plan.path);
                Err(DropReason::queue_full)
            } else if target.rate_allows() {
                let base = if i == last && copy == *copies {
                    headers.take()
                } else {
                    headers.clone()
                };
                let job = ShadowJob {
                    spec: target.spec.clone(),
                    method: plan.method.clone(),
                    path_and_query: plan.path_and_query.clone(),
                    headers: target.shadow_headers(base.unwrap_or_default(), copy),
                    host: plan.host.clone(),
                    request_id: plan.request_id.clone(),
                    body: chunks.clone(),
                    trailers: trailers.clone(),
                    body_len: len,
                    primary: primary.clone(),
                    primary_body: primary_body.clone().filter(|_| copy == 1),
                    path: plan.path.clone(),
                    charge: None,
                    copy,
                    pair: (copy == 1)
                        .then(|| slot_of(&slots, target.spec.index))
                        .flatten(),
                };
                target.queue.offer(job, &mut charge)
            } else {
                target.spec.dropped(DropReason::rate_limited, &plan.path);
                Err(DropReason::rate_limited)
            };
            if copy == 1 {
                decided(i, decision);
            }
        }
    }
}

/// One slot per candidate whose baseline is also a target of this request:
/// (candidate index, baseline index, slot).
fn pair_slots(plan: &Plan) -> Vec<(usize, usize, Arc<PairSlot>)> {
    let mut slots = Vec::new();
    for (t, _) in &plan.targets {
        if let Pairing::Candidate { baseline } = t.spec.pairing
            && plan.targets.iter().any(|(b, _)| b.spec.index == baseline)
        {
            let c = t.spec.index;
            slots.push((c, baseline, PairSlot::new(plan.path.clone(), c)));
        }
    }
    slots
}

fn slot_of(slots: &[(usize, usize, Arc<PairSlot>)], index: usize) -> Option<Arc<PairSlot>> {
    slots
        .iter()
        .find(|(c, b, _)| *c == index || *b == index)
        .map(|(_, _, s)| s.clone())
}

fn drop_all(plan: &Plan, reason: DropReason) {
    for (i, (t, copies)) in plan.targets.iter().enumerate() {
        t.spec.dropped_copies(reason, &plan.path, *copies);
        if let Some(trace) = &plan.trace {
            trace.decided(i, Err(reason));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A mirror that records what the tee reports, for tee tests.
    pub(crate) fn recording_pending(max_body: u64) -> (Arc<Pending>, Arc<Mutex<Option<Captured>>>) {
        let slot = Arc::new(Mutex::new(None));
        let m = Pending {
            max_body,
            halves: Mutex::new(Halves::default()),
            target: Target::Record(slot.clone()),
            primary_body: None,
            primary_names: None,
        };
        (Arc::new(m), slot)
    }
}
