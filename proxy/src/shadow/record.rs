//! What a copy leaves behind: counters per policy and per path, the shadow leg's latency
//! and status for its path template, the comparison's verdict, the mismatch groups and the
//! debug log line. `CopySpec` is the slim description a queued copy carries: everything
//! needed to send and record it, and nothing that holds its queue's sender (so an old
//! config's queue closes once its last snapshot is gone).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::compare::{BodySide, Comparator, Verdict};
use super::mismatches::{Mismatch, MismatchGroups};
use crate::config::ShadowHost;
use crate::metrics::{DropReason, ShadowOutcome, ShadowPolicyMetrics};
use crate::stats::PathEntry;

/// One shadow policy of one route, as its copies need it.
pub(crate) struct CopySpec {
    pub(crate) route: String,
    /// The shadow cluster's name.
    pub(crate) shadow: String,
    /// Position among the route's policies (and in each path entry's shadow stats).
    pub(crate) index: usize,
    pub(crate) compare: Comparator,
    pub(crate) mismatches: Arc<MismatchGroups>,
    pub(crate) timeout: Duration,
    pub(crate) host: ShadowHost,
    pub(crate) metrics: ShadowPolicyMetrics,
    /// The record file's writer, when the policy records exchanges.
    pub(crate) recorder: Option<Arc<super::capture::Recorder>>,
    /// Compared with the primary, or paired with a baseline (or a candidate's baseline).
    pub(crate) pairing: super::verdict::pair::Pairing,
}

impl CopySpec {
    /// Counts a copy not sent, for the policy and for the path.
    pub(crate) fn dropped(&self, reason: DropReason, path: &PathEntry) {
        self.metrics.dropped(reason);
        if let Some(s) = path.shadows.get(self.index) {
            s.dropped(reason);
        }
    }

    /// Counts `copies` copies (of one amplified request) not sent.
    pub(crate) fn dropped_copies(&self, reason: DropReason, path: &PathEntry, copies: u8) {
        for _ in 0..copies {
            self.dropped(reason, path);
        }
    }
}

/// What came back from a shadow.
pub(crate) struct Answer {
    pub(crate) outcome: ShadowOutcome,
    pub(crate) status: Option<StatusCode>,
    pub(crate) headers: HeaderMap,
    /// The body, when the comparison wants it.
    pub(crate) body: Option<BodySide>,
    /// The trailers, when the body was read to its end and had them.
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) to_headers: Option<Duration>,
    pub(crate) to_end: Option<Duration>,
}

impl Answer {
    pub(crate) fn failed(outcome: ShadowOutcome) -> Self {
        Answer {
            outcome,
            status: None,
            headers: HeaderMap::new(),
            body: None,
            trailers: None,
            to_headers: None,
            to_end: None,
        }
    }
}

/// Records a copy's answer for its policy and its path template.
pub(crate) fn answer(spec: &CopySpec, path: &PathEntry, answer: &Answer) {
    let ok_status = answer
        .status
        .filter(|_| answer.outcome == ShadowOutcome::ok);
    spec.metrics
        .outcome(answer.outcome, ok_status, answer.to_headers, answer.to_end);
    let Some(stats) = path.shadows.get(spec.index) else {
        return;
    };
    match (answer.status, answer.to_headers) {
        (Some(status), Some(t)) => stats.head(status, t),
        _ => stats.leg.failed(),
    }
    // A head that came but whose body then failed is one error, however the head was
    // counted.
    if answer.outcome != ShadowOutcome::ok && answer.status.is_some_and(|s| !s.is_server_error()) {
        stats.leg.errors.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(t) = answer.to_end {
        stats.end(t);
    }
}

/// The request a verdict is about, for the mismatch groups and the log.
pub(crate) struct Subject<'a> {
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) method: &'a Method,
    pub(crate) raw_path: &'a str,
    pub(crate) primary_status: Option<StatusCode>,
}

/// Records a comparison's verdict for the path, and a mismatch in its group.
pub(crate) fn verdict(
    spec: &CopySpec,
    path: &PathEntry,
    subject: &Subject<'_>,
    answer: &Answer,
    verdict: Verdict,
) {
    if let Some(stats) = path.shadows.get(spec.index) {
        stats.compared(verdict.result, verdict.skipped);
    }
    if verdict.result.is_mismatch() {
        let mut diff = verdict.diff;
        spec.compare.redact(&mut diff);
        let fields = verdict.fields;
        spec.mismatches.record(
            fields,
            Mismatch {
                time_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                request_id: subject.request_id.to_str().unwrap_or("-").to_string(),
                route: spec.route.clone(),
                method: subject.method.to_string(),
                raw_path: subject.raw_path.to_string(),
                path: path.template.clone(),
                shadow: spec.shadow.clone(),
                primary_status: subject.primary_status.map(|s| s.as_u16()),
                shadow_status: answer.status.map(|s| s.as_u16()),
                result: verdict.result.as_str(),
                diff,
            },
        );
    }
    tracing::debug!(
        shadow = %spec.shadow,
        route = %spec.route,
        request_id = ?subject.request_id,
        outcome = ?answer.outcome,
        status = answer.status.map(|s| s.as_u16()),
        primary_status = subject.primary_status.map(|s| s.as_u16()),
        result = verdict.result.as_str(),
        "shadow exchange done"
    );
}

/// Records `aborted` for a copy whose exchange was dropped before its outcome (shutdown
/// abandoned it mid-way); `done` disarms it.
pub(crate) struct Unrecorded(Option<Arc<CopySpec>>);

impl Unrecorded {
    pub(crate) fn new(spec: &Arc<CopySpec>) -> Self {
        Unrecorded(Some(spec.clone()))
    }

    pub(crate) fn done(&mut self) {
        self.0 = None;
    }
}

impl Drop for Unrecorded {
    fn drop(&mut self) {
        if let Some(spec) = self.0.take() {
            spec.metrics
                .outcome(ShadowOutcome::aborted, None, None, None);
        }
    }
}
