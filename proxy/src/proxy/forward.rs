//! Forwarding one routed request to its primary: the request rewritten for the chosen
//! endpoint, its shadow copies planned and its body teed, sent (a request without a body
//! moves on to the next endpoint when a connection is refused), the primary's outcome
//! handed to the shadows' rendezvous, a WebSocket tunnel started when both sides switched
//! protocols, and the answer's body wrapped for timing and comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;

use super::body::{ClientBody, GrpcEnd, PrimaryBody, ResponseTee};
use super::conn::ConnInfo;
use super::error::ProxyError;
use super::snapshot::{RouteState, Snapshot};
use super::tunnel;
use crate::config::HostMode;
use crate::http::headers::{self, Forwarded};
use crate::http::host::request_host;
use crate::http::tracecontext::{TRACEPARENT, TraceParent};
use crate::http::upgrade::Upgrade;
use crate::idle::IdleTimeout;
use crate::metrics::DropReason;
use crate::shadow::pending::{Pending, Plan};
use crate::shadow::queue::{CANCELLED, PrimaryOutcome};
use crate::shadow::sample::random_u64;
use crate::shadow::tee::TeeBody;
use crate::shadow::trace::Trace;
use crate::shadow::verdict::pair::Pairing;
use crate::stats::PathEntry;
use crate::upstream::{EmptyBody, EndpointState, UpstreamError, head_of, upstream_uri};

/// Endpoints tried at most for a request without a body whose connections are refused.
pub(crate) const MAX_CONNECT_ATTEMPTS: usize = 3;

/// What forwarding produced.
pub(crate) struct PrimaryAnswer {
    pub(crate) result: Result<Response<ResponseTee<Incoming>>, ProxyError>,
    /// The endpoint that answered (or failed).
    pub(crate) endpoint: Arc<str>,
    /// The protocol of a tunnel that started.
    pub(crate) tunnel: Option<HeaderValue>,
    /// From sending the request to the primary's response head (when one came).
    pub(crate) upstream: Option<Duration>,
}

/// The request's side of a forward: the request, its id, and what it asks to upgrade to.
pub(crate) struct Outgoing<'a> {
    pub(crate) req: Request<ClientBody>,
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) upgrade: &'a Upgrade,
    /// For the access log (only when it is on): body bytes and shadow decisions.
    pub(crate) trace: Option<Arc<Trace>>,
}

/// Forwards a routed request to the route's primary.
pub(crate) async fn forward(
    out: Outgoing<'_>,
    route: &RouteState,
    snap: &Snapshot,
    conn: &ConnInfo,
    tunnels_open: &Gauge,
) -> PrimaryAnswer {
    let Outgoing {
        mut req,
        request_id,
        upgrade,
        trace,
    } = out;
    let cluster = &route.primary;
    let grpc = crate::http::grpc::is_grpc(req.headers());
    // A gRPC call's deadline bounds the wait for the primary when it is the shorter.
    let deadline = grpc
        .then(|| crate::http::grpc::timeout(req.headers()))
        .flatten();
    let mut ep = cluster.pick();
    let path = route.paths.entry(req.uri().path());
    let client_upgrade =
        matches!(upgrade, Upgrade::WebSocket(_)).then(|| hyper::upgrade::on(&mut req));
    let (mut upstream_req, pending, body_sent) = prepare(
        req, route, &ep, conn, snap, request_id, upgrade, &path, trace,
    );
    if let Upgrade::WebSocket(protocol) = upgrade {
        let h = upstream_req.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, protocol.clone());
    }
    let sink = pending.as_ref().and_then(|m| m.primary_body_sink());
    let mut report = PrimaryReport(pending);
    // A refused connection means nothing was sent on it: a request without a body may go
    // to the next endpoint (the refusing one was just ejected). (A safe request the pool
    // already sent once more after the keep-alive race, whose new connection was then
    // refused, may so reach the upstream a third time: it asks for no change.)
    let attempts = cluster.endpoint_count().min(MAX_CONNECT_ATTEMPTS);
    let resend =
        (attempts > 1 && upstream_req.body().is_end_stream()).then(|| head_of(&upstream_req));
    let sent = Instant::now();
    let mut result = cluster
        .send_by(&ep, upstream_req, body_sent, deadline)
        .await;
    if let Some(head) = resend {
        let mut tried = 1;
        while tried < attempts && matches!(result, Err(UpstreamError::Connect { .. })) {
            ep = cluster.pick();
            tracing::debug!(request_id = ?request_id, endpoint = %ep.label, "connection refused; resending to the next endpoint");
            let req = resend_to(&head, &ep, cluster.host_mode);
            result = cluster
                .send_by(
                    &ep,
                    req,
                    None,
                    deadline.map(|d| d.saturating_sub(sent.elapsed())),
                )
                .await;
            tried += 1;
        }
    }
    // 101 only answers an upgrade the client asked for; anything else from the primary is
    // a protocol error.
    if !matches!(upgrade, Upgrade::WebSocket(_))
        && result
            .as_ref()
            .is_ok_and(|r| r.status() == StatusCode::SWITCHING_PROTOCOLS)
    {
        let e = UpstreamError::Protocol {
            endpoint: ep.label.to_string(),
            reason: "101 Switching Protocols to a request that asked for no upgrade".to_string(),
        };
        cluster.count_error(&e);
        result = Err(e);
    }
    let mut tunnel = None;
    if let (Some(on_client), Ok(resp)) = (client_upgrade, result.as_mut())
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        tunnel = resp.headers().get(header::UPGRADE).cloned();
        let on_primary = hyper::upgrade::on(&mut *resp);
        tunnel::start(
            &conn.tunnels,
            on_client,
            on_primary,
            tunnels_open.clone(),
            request_id.clone(),
            conn.tunnel_idle,
        );
    }
    let elapsed = sent.elapsed();
    match &result {
        Ok(r) => path.primary_head(r.status(), elapsed),
        Err(_) => path.primary_failed(),
    }
    let (trailers_tx, trailers_rx) = match (grpc && report.0.is_some(), &result) {
        (true, Ok(_)) => {
            let (tx, rx) = tokio::sync::watch::channel(None);
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    if let Some(pending) = &report.0 {
        let headers = result
            .as_ref()
            .map(|r| pending.primary_headers(r.headers()))
            .unwrap_or_default();
        report.done(PrimaryOutcome {
            status: result.as_ref().ok().map(|r| r.status()),
            error: result.as_ref().err().map(UpstreamError::kind_str),
            headers,
            to_headers: result.is_ok().then_some(elapsed),
            head_at: result.is_ok().then(|| sent + elapsed),
            paired: None,
            trailers: trailers_rx,
        });
    }
    PrimaryAnswer {
        upstream: result.is_ok().then_some(elapsed),
        result: result
            .map(|resp| {
                let head_status = grpc
                    .then(|| crate::http::grpc::status(resp.headers(), None))
                    .flatten();
                let mut resp = resp.map(|b| ResponseTee::new(b, sent, path, sink));
                if grpc {
                    resp.body_mut().grpc_at_end(GrpcEnd {
                        counter: route.grpc.clone(),
                        head_status,
                        trailers: trailers_tx,
                    });
                }
                resp
            })
            .map_err(ProxyError::from),
        endpoint: ep.label.clone(),
        tunnel,
    }
}

/// `head` addressed to endpoint `ep` instead, with an empty body.
fn resend_to(head: &Request<()>, ep: &EndpointState, host_mode: HostMode) -> Request<PrimaryBody> {
    let mut req = Request::new(PrimaryBody::empty());
    *req.method_mut() = head.method().clone();
    *req.uri_mut() = upstream_uri(ep, head.uri());
    *req.version_mut() = head.version();
    *req.headers_mut() = head.headers().clone();
    if host_mode == HostMode::Rewrite
        && let Ok(h) = HeaderValue::from_str(ep.endpoint.authority.as_str())
    {
        req.headers_mut().insert(header::HOST, h);
    }
    req
}

/// Hands the primary's outcome to the rendezvous once; if the handler is dropped first
/// (the client left), the outcome is `cancelled`.
struct PrimaryReport(Option<Arc<Pending>>);

impl PrimaryReport {
    fn done(&mut self, outcome: PrimaryOutcome) {
        if let Some(m) = self.0.take() {
            m.primary_done(outcome);
        }
    }
}

impl Drop for PrimaryReport {
    fn drop(&mut self) {
        self.done(PrimaryOutcome {
            status: None,
            error: Some(CANCELLED),
            headers: http::HeaderMap::new(),
            to_headers: None,
            head_at: None,
            paired: None,
            trailers: None,
        });
    }
}

/// Rewrites a client request into the request for endpoint `ep` of the route's primary,
/// and plans its shadow copies.
#[allow(clippy::too_many_arguments)]
fn prepare(
    req: Request<ClientBody>,
    route: &RouteState,
    ep: &EndpointState,
    conn: &ConnInfo,
    snap: &Snapshot,
    request_id: &HeaderValue,
    upgrade: &Upgrade,
    path: &Arc<PathEntry>,
    trace: Option<Arc<Trace>>,
) -> (
    Request<PrimaryBody>,
    Option<Arc<Pending>>,
    Option<tokio::sync::oneshot::Receiver<()>>,
) {
    let host = request_host(&req).and_then(|h| HeaderValue::from_str(h).ok());
    let (mut parts, body) = req.into_parts();
    let fwd = Forwarded {
        client_ip: conn.peer_ip.clone(),
        proto: conn.proto,
        host: host.as_ref().and_then(|h| h.to_str().ok()),
    };
    headers::rewrite_request(&mut parts.headers, &fwd, snap.forwarded);
    if snap.config.trace_context.generate && !parts.headers.contains_key(&TRACEPARENT) {
        // A new trace, on the primary (and so, as its child, on every shadow).
        let trace_id = (u128::from(random_u64()) << 64) | u128::from(random_u64());
        let tp = TraceParent::new_root(trace_id, random_u64());
        parts.headers.insert(&TRACEPARENT, tp.to_header());
    }

    let declared_len = body.size_hint().exact();
    let mut decided: Vec<Result<u8, DropReason>> = Vec::new();
    let targets: Vec<_> = route
        .shadows
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            // A baseline follows its candidate (listed before it): it takes exactly the
            // requests the candidate took (its sampling, pause and percent), one copy
            // each; a request the candidate refused is not offered to it at all.
            let admitted = match p.spec.pairing {
                Pairing::Baseline { candidate } => match decided.get(candidate) {
                    Some(Ok(_)) => {
                        p.admit_following(&parts, upgrade.mirrorable(), declared_len, path)
                    }
                    Some(Err(reason)) => Err(*reason),
                    None => Err(DropReason::sampled_out),
                },
                _ => p.admit(&parts, upgrade.mirrorable(), declared_len, path),
            };
            decided.push(admitted);
            if let Some(t) = &trace {
                t.admission(i, admitted.map(|_| ()));
            }
            admitted.ok().map(|copies| (p.clone(), copies))
        })
        .collect();
    let pending = (!targets.is_empty()).then(|| {
        Arc::new(Pending::new(Plan {
            targets,
            method: parts.method.clone(),
            // Copies, not slices of the client connection's read buffer: a queued copy
            // must not keep that buffer alive.
            path_and_query: parts
                .uri
                .path_and_query()
                .and_then(|pq| {
                    PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(pq.as_str().as_bytes()))
                        .ok()
                })
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            headers: headers::detached(&parts.headers),
            host: host.as_ref().map(headers::detached_value),
            request_id: headers::detached_value(request_id),
            path: path.clone(),
            trace: trace.clone(),
            route_primary_names: route.shadow_primary_names.clone(),
        }))
    });
    let (body, body_sent) = IdleTimeout::with_end_signal(body, snap.body_timeout);
    let body = TeeBody::new(body, pending.clone()).with_trace(trace);

    let upstream_host = match route.primary.host_mode {
        HostMode::Keep => host,
        HostMode::Rewrite => HeaderValue::from_str(ep.endpoint.authority.as_str()).ok(),
    };
    match upstream_host {
        Some(h) => parts.headers.insert(header::HOST, h),
        None => parts.headers.remove(header::HOST),
    };
    parts.uri = upstream_uri(ep, &parts.uri);
    parts.version = Version::HTTP_11;
    (
        Request::from_parts(parts, Either::Left(body)),
        pending,
        body_sent,
    )
}
