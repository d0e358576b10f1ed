//! One copy's exchange with its shadow: the request rebuilt from the captured chunks, sent
//! with the shadow cluster's own client under the policy's timeout, the answer read (up to
//! a cap), compared with the primary's (waiting, off the primary path, for the primary's
//! body if needed), and everything recorded.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::OwnedSemaphorePermit;

use super::capture::line as capture;
use super::compare::{BodySide, Comparator, Edits, GrpcStatus, Verdict};
use super::queue::{Circuit, ShadowJob};
use super::queue::{PrimaryBodyWatch, PrimaryOutcome};
use super::record::{self, Answer, CopySpec, Subject, Unrecorded};
use super::verdict::pair::{Half, PairSlot, Pairing};
use crate::config::ShadowHost;
use crate::http::grpc;
use crate::http::host::strip_port;
use crate::metrics::{CompareResult, GaugeGuard, ShadowOutcome, SkipReason};
use crate::stats::PathEntry;
use crate::stats::pairs::{LegObs, Observation};
use crate::upstream::{Cluster, EmptyBody, EndpointState, UpstreamError, upstream_uri};

/// Shadow response bodies are read up to this much (so the connection can be reused);
/// a longer body is abandoned and its connection closed.
pub(crate) const RESPONSE_READ_CAP: usize = 64 * 1024;

/// What every exchange of one shadow cluster shares.
pub(crate) struct Exchanger {
    pub(crate) name: String,
    pub(crate) upstream: Cluster<ShadowBody>,
    pub(crate) circuit: Arc<Circuit>,
    pub(crate) in_flight: Gauge,
}

/// The body of a shadow request: the captured chunks, then the trailers.
pub(crate) struct ShadowBody {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    remaining: u64,
    /// Set when the last frame is handed to the connection (the whole request is sent).
    ended: Option<Arc<OnceLock<Instant>>>,
}

impl ShadowBody {
    pub(crate) fn new(chunks: Vec<Bytes>, trailers: Option<HeaderMap>, len: u64) -> Self {
        ShadowBody {
            chunks: chunks.into(),
            trailers,
            remaining: len,
            ended: None,
        }
    }

    /// The same, telling `ended` when its last frame went.
    fn with_end(mut self, ended: Arc<OnceLock<Instant>>) -> Self {
        self.ended = Some(ended);
        self
    }

    fn mark_end(&self) {
        if self.is_end_stream()
            && let Some(e) = &self.ended
        {
            let _ = e.set(Instant::now());
        }
    }
}

impl EmptyBody for ShadowBody {
    fn empty() -> Self {
        ShadowBody::new(Vec::new(), None, 0)
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
            self.mark_end();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let trailers = self.trailers.take();
        self.mark_end();
        Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
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

/// The Host a shadow request carries, for a client that asked for `host`, sent to `ep`.
pub(crate) fn shadow_host(
    rule: &ShadowHost,
    host: Option<&HeaderValue>,
    ep: &EndpointState,
) -> Option<HeaderValue> {
    match rule {
        ShadowHost::Keep => host.cloned(),
        ShadowHost::Rewrite => HeaderValue::from_str(ep.endpoint.authority.as_str()).ok(),
        ShadowHost::Literal(v) => Some(v.clone()),
        ShadowHost::Suffix(suffix) => {
            let h = host?.to_str().ok()?;
            let name = strip_port(h);
            let port = &h[name.len()..];
            HeaderValue::from_str(&format!("{name}{suffix}{port}")).ok()
        }
    }
}

/// Sends one copy, reads the answer, compares it with the primary's and records it all.
/// The in-flight slot and the byte budget are held until the comparison is done, so the
/// number of tasks holding response bodies stays bounded.
pub(crate) async fn send(ex: Arc<Exchanger>, job: ShadowJob, permit: OwnedSemaphorePermit) {
    let gauge = GaugeGuard::new(&ex.in_flight);
    // Every sent copy gets one outcome, also when shutdown abandons it mid-way.
    let mut unrecorded = Unrecorded::new(&job.spec);
    let ep = ex.upstream.pick();
    let taken = capture::take(&job);
    let ShadowJob {
        spec,
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
        copy,
        pair,
    } = job;
    if let Some(h) = shadow_host(&spec.host, host.as_ref(), &ep) {
        headers.insert(header::HOST, h);
    }
    let ended = Arc::new(OnceLock::new());
    let mut req = Request::new(ShadowBody::new(body, trailers, body_len).with_end(ended.clone()));
    *req.method_mut() = method.clone();
    *req.uri_mut() = upstream_uri(&ep, &http::Uri::from(path_and_query.clone()));
    *req.headers_mut() = headers;
    // What teeproxy changed on this copy, which the comparison leaves out (worked out
    // only when the answers are not the same bytes).
    let sent = spec.compare.edited_part(req.headers());
    // Bodies are read only when they are compared or this copy is recorded.
    let keep = (spec.compare.compares_body() || taken.is_some()).then_some(spec.compare.max_body);
    let grpc = grpc::is_grpc(req.headers());
    // A gRPC call's own deadline, when shorter, bounds the shadow's wait too.
    let timeout = grpc
        .then(|| grpc::timeout(req.headers()))
        .flatten()
        .map_or(spec.timeout, |t| t.min(spec.timeout));
    let started = Instant::now();
    let mut paired_head = None;
    let deadline = tokio::time::Instant::now() + timeout;
    let answer = match ex.upstream.send_within(&ep, req, timeout).await {
        Err(e) => {
            tracing::debug!(shadow = %ex.name, request_id = ?request_id, error = %e, "shadow request failed");
            Answer::failed(match e {
                UpstreamError::Connect { .. } => ShadowOutcome::connect_error,
                UpstreamError::Tls { .. } => ShadowOutcome::tls_error,
                UpstreamError::Timeout { .. } => ShadowOutcome::timeout,
                // A shadow body is complete bytes in memory: it cannot fail like a client's.
                UpstreamError::Protocol { .. } | UpstreamError::ClientBody { .. } => {
                    ShadowOutcome::protocol_error
                }
            })
        }
        Ok(resp) => {
            let head_at = Instant::now();
            let to_headers = head_at - started;
            // Timed from the whole request sent, like the primary's paired time.
            paired_head =
                head_at.checked_duration_since(ended.get().map_or(started, |e| started.max(*e)));
            let (parts, body) = resp.into_parts();
            let (outcome, (body, trailers), to_end) =
                match tokio::time::timeout_at(deadline, read_body(body, keep)).await {
                    Ok(Ok(kept)) => (ShadowOutcome::ok, kept, Some(started.elapsed())),
                    Ok(Err(())) => (ShadowOutcome::body_error, (None, None), None),
                    Err(_) => (ShadowOutcome::timeout, (None, None), None),
                };
            if grpc
                && outcome == ShadowOutcome::ok
                && let Some(code) = grpc::status(&parts.headers, trailers.as_ref())
            {
                spec.metrics.grpc.count(code);
            }
            Answer {
                outcome,
                status: Some(parts.status),
                headers: parts.headers,
                body,
                trailers,
                to_headers: Some(to_headers),
                to_end,
            }
        }
    };
    // A shadow that cannot connect, or whose TLS fails every time, opens its circuit.
    if matches!(
        answer.outcome,
        ShadowOutcome::connect_error | ShadowOutcome::tls_error
    ) {
        ex.circuit.connect_failed();
    } else {
        ex.circuit.connected();
    }
    record::answer(&spec, &path, &answer);
    unrecorded.done();
    if copy > 1 {
        // An amplified request's extra copies are load: counted, never compared.
        return;
    }

    let verdict = judge(
        &spec.compare,
        &primary,
        primary_body,
        &answer,
        || spec.compare.edits(&sent, host.as_ref()),
        spec.timeout,
    )
    .await;
    let subject = Subject {
        request_id: &request_id,
        method: &method,
        raw_path: path_and_query.path(),
        primary_status: primary.status,
    };
    let judged = (verdict.result, verdict.skipped);
    observe(&spec, &path, &primary, &answer, paired_head, &verdict, pair);
    record::verdict(&spec, &path, &subject, &answer, verdict);
    if let Some(t) = taken {
        t.finish(&answer, judged.0, judged.1).await;
    }
    // Held until here: a copy's bodies (the comparison's and the recording's) count
    // against the in-flight cap and the byte budget for as long as they are held.
    drop(permit);
    drop(gauge);
    drop(charge);
}

/// Leaves the copy's paired observation: against the primary (a shadow alone, or a
/// baseline's own row), and in the pair slot of a candidate and its baseline.
fn observe(
    spec: &CopySpec,
    path: &PathEntry,
    primary: &PrimaryOutcome,
    answer: &Answer,
    paired_head: Option<Duration>,
    verdict: &Verdict,
    pair: Option<Arc<PairSlot>>,
) {
    // Failed as the primary leg can fail: no response head, or a server error. (A body
    // that breaks off after the head is not counted on either leg: the primary's cannot
    // be, as its client may be what broke it.)
    let failed = answer.status.is_none_or(|s| s.is_server_error());
    // A failure is the `errors` flag's business, never also a difference: only answers
    // where neither leg failed are compared for the verdict.
    let compared = !failed
        && !primary.failed()
        && (matches!(verdict.result, CompareResult::Match) || verdict.result.is_mismatch());
    let half = Half {
        // A failed answer's time is no evidence about speed (a fast 503, a slow 504).
        leg: LegObs {
            head: paired_head.filter(|_| !failed),
            failed,
        },
        compared,
        fields: if compared {
            verdict.fields.clone()
        } else {
            Vec::new()
        },
    };
    match (spec.pairing, pair) {
        (Pairing::Alone, _) => {}
        (pairing, Some(slot)) => {
            slot.deposit(matches!(pairing, Pairing::Candidate { .. }), half.clone())
        }
        // A candidate's copy whose baseline was not a target of the request.
        (Pairing::Candidate { .. }, None) => {
            if let Some(stats) = path.shadows.get(spec.index) {
                stats.pairs.unpaired();
            }
        }
        (Pairing::Baseline { .. }, None) => {}
    }
    if matches!(spec.pairing, Pairing::Candidate { .. }) {
        return;
    }
    if let Some(stats) = path.shadows.get(spec.index) {
        stats.pairs.record(&Observation {
            control: LegObs {
                head: primary.paired.filter(|_| !primary.failed()),
                failed: primary.failed(),
            },
            shadow: half.leg,
            compared: half.compared,
            mismatch: half.compared && verdict.result.is_mismatch(),
            paired: false,
            shadow_fields: half.fields,
            control_fields: Vec::new(),
        });
    }
}

/// Compares a shadow's answer with the primary's (`edits`: what teeproxy changed on the
/// shadow's request, worked out only when the answers are not the same as they came).
pub(crate) async fn judge(
    cmp: &Comparator,
    primary: &PrimaryOutcome,
    mut primary_body: Option<PrimaryBodyWatch>,
    answer: &Answer,
    edits: impl FnOnce() -> Edits,
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
    // A gRPC call's status is in its trailers: compared first (the HTTP parts of two
    // answers can be the same bytes while their grpc-status differs).
    let mut edits = Some(edits);
    let mut worked_out = None;
    if primary.trailers.is_some() {
        let e = edits.take().map_or_else(Edits::default, |f| f());
        if let Some(v) = judge_grpc(cmp, primary, answer, &e, wait).await {
            return v;
        }
        worked_out = Some(e);
    }
    let s_body = answer.body.as_ref().unwrap_or(&BodySide::Incomplete);
    // The common case first: the same status, listed headers and body bytes.
    let mut p_body = None;
    if p_status == s_status {
        let body = primary_side(cmp, primary_body.take(), wait).await;
        if cmp.identical(
            (p_status, &primary.headers, &body),
            (s_status, &answer.headers, s_body),
        ) {
            return Verdict::of(CompareResult::Match);
        }
        p_body = Some(body);
    }
    let edits = worked_out.unwrap_or_else(|| edits.take().map_or_else(Edits::default, |f| f()));
    if let Some(v) = cmp.compare_head(
        (p_status, &primary.headers),
        (s_status, &answer.headers),
        &edits,
    ) {
        return v;
    }
    let p_body = match p_body {
        Some(b) => b,
        None => primary_side(cmp, primary_body, wait).await,
    };
    cmp.compare_body(
        (&primary.headers, &p_body),
        (&answer.headers, s_body),
        &edits,
    )
}

/// The primary's body as the comparison sees it. It may still be streaming to its
/// client: waited for, off the primary path, for up to the shadow's timeout (only when
/// bodies are compared).
async fn primary_side(
    cmp: &Comparator,
    primary_body: Option<PrimaryBodyWatch>,
    wait: Duration,
) -> BodySide {
    match primary_body.filter(|_| cmp.compares_body()) {
        Some(mut rx) => match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v
                .as_ref()
                .map_or(BodySide::Incomplete, |b| BodySide::clone(b)),
            _ => BodySide::Incomplete,
        },
        None => BodySide::Incomplete,
    }
}

/// For a gRPC call (the primary's trailers are awaited): the legs' `grpc-status` and
/// `grpc-message` compared as the status, waiting off the primary path for the primary's
/// trailers up to `wait`. `None`: not a gRPC call, or the statuses agree (or are unknown).
async fn judge_grpc(
    cmp: &Comparator,
    primary: &PrimaryOutcome,
    answer: &Answer,
    edits: &Edits,
    wait: Duration,
) -> Option<Verdict> {
    let mut rx = primary.trailers.clone()?;
    let p_trailers = match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
        Ok(Ok(t)) => t.as_ref().cloned(),
        // The primary's body broke off or did not end in time: its status is unknown.
        _ => None,
    };
    let p_trailers = p_trailers.as_deref();
    let p = GrpcStatus {
        code: p_trailers.and_then(|t| grpc::status(&primary.headers, Some(t))),
        message: grpc::message(&primary.headers, p_trailers),
    };
    let s = GrpcStatus {
        code: grpc::status(&answer.headers, answer.trailers.as_ref()),
        message: grpc::message(&answer.headers, answer.trailers.as_ref()),
    };
    cmp.compare_grpc(p, s, edits)
}

/// A shadow's response body as read: the body kept (see `read_body`) and the trailers.
type ReadBody = (Option<BodySide>, Option<HeaderMap>);

/// Reads a shadow response body and its trailers. With `keep`, returns it when it is at
/// most `keep` bytes (else `TooLarge`, and reading stops); without, reads up to
/// `RESPONSE_READ_CAP` so the connection can be reused (a longer answer, such as a long
/// gRPC server stream, is abandoned there, its trailers unknown). `Err` when the body
/// fails.
async fn read_body(mut body: hyper::body::Incoming, keep: Option<usize>) -> Result<ReadBody, ()> {
    let mut kept = BytesMut::new();
    let mut read = 0usize;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Some(d) = frame.data_ref() {
            read += d.len();
            match keep {
                Some(max) if read > max => return Ok((Some(BodySide::TooLarge), None)),
                Some(_) => kept.extend_from_slice(d),
                None if read > RESPONSE_READ_CAP => return Ok((None, None)),
                None => {}
            }
        }
        if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    Ok((keep.map(|_| BodySide::Complete(kept.freeze())), trailers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rules() {
        let ep = EndpointState::for_tests("http://10.0.0.1:8080");
        let host = HeaderValue::from_static("api.example.com:8443");
        let apply = |r: ShadowHost| {
            shadow_host(&r, Some(&host), &ep).map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            apply(ShadowHost::Keep).as_deref(),
            Some("api.example.com:8443")
        );
        assert_eq!(apply(ShadowHost::Rewrite).as_deref(), Some("10.0.0.1:8080"));
        assert_eq!(
            apply(ShadowHost::Literal(HeaderValue::from_static(
                "shadow.example"
            )))
            .as_deref(),
            Some("shadow.example")
        );
        assert_eq!(
            apply(ShadowHost::Suffix("-shadow".into())).as_deref(),
            Some("api.example.com-shadow:8443")
        );
        assert_eq!(
            shadow_host(&ShadowHost::Suffix("-s".into()), None, &ep),
            None
        );
    }
}
