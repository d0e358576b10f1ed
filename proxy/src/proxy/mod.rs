//! The proxy handler: check, route, forward, respond. It never returns an error to hyper:
//! every failure becomes a response in `error`.

pub(crate) mod access;
pub(crate) mod body;
pub(crate) mod conn;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod snapshot;
pub(crate) mod tunnel;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::Either;
use prometheus_client::metrics::gauge::Gauge;

use crate::http::checks::check_request;
use crate::http::headers::{self, RequestIds, X_REQUEST_ID};
use crate::http::host::request_host;
use crate::http::upgrade::Upgrade;
use crate::metrics::{Metrics, NO_ROUTE, RouteMetrics};
use crate::shadow::trace::Trace;
use crate::upstream::UpstreamError;
use access::AccessLine;
use body::RequestBody;
use conn::ConnInfo;
use error::{ProxyBody, ProxyError};
use forward::{Outgoing, PrimaryAnswer};
use snapshot::{RouteState, Snapshot};

/// The current snapshot, shared by the handler (reads), reload (the only writer) and the
/// admin API (reads).
pub(crate) type Snapshots = Arc<ArcSwap<Snapshot>>;

/// The shared handler state.
pub struct Proxy {
    snapshot: Snapshots,
    metrics: Arc<Metrics>,
    /// Metrics of requests refused before routing (or matching no route).
    no_route: RouteMetrics,
    ids: RequestIds,
}

/// Decrements a gauge when dropped, however the request ends.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn new(g: &'a Gauge) -> Self {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Proxy {
    pub(crate) fn new(snapshot: Snapshots, metrics: Arc<Metrics>) -> Self {
        Proxy {
            snapshot,
            no_route: metrics.route(NO_ROUTE),
            metrics,
            ids: RequestIds::default(),
        }
    }

    /// Handles one request. Never fails: errors are answered by `ProxyError::to_response`.
    pub async fn handle<B: RequestBody>(
        &self,
        req: Request<B>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let _in_flight = InFlight::new(&self.metrics.in_flight);
        let snap = self.snapshot.load_full();
        let mut req = req.map(RequestBody::into_client_body);

        // Check: limits hold on what the client sent, before the request id is added.
        let checked = check_request(&req, &snap.limits).map_err(ProxyError::from);
        let request_id = self.ids.ensure(req.headers_mut());
        let mut log = snap
            .access_log
            .then(|| AccessLine::new(&req, &request_id, conn.peer.ip(), start).client_cert(&conn));
        let upgrade = Upgrade::of(&req);
        let version = req.version();
        let grpc = crate::http::grpc::is_grpc(req.headers());

        // Route.
        let routed = checked.and_then(|()| route(&snap, &req, &upgrade, &conn));

        // Forward.
        let (route, answer) = match routed {
            Err(e) => (None, Err(e)),
            Ok(route) => {
                let trace = log.as_mut().map(|line| {
                    let trace = Trace::new(&route.shadows);
                    line.trace = Some(trace.clone());
                    trace
                });
                let out = Outgoing {
                    req,
                    request_id: &request_id,
                    upgrade: &upgrade,
                    trace,
                };
                let answer =
                    forward::forward(out, route, &snap, &conn, &self.metrics.tunnels).await;
                (Some(route), Ok(answer))
            }
        };

        // Respond.
        let route_name = route.map_or(NO_ROUTE, |r| r.name.as_str());
        let upstream = answer.as_ref().ok().and_then(|a| a.upstream);
        let (mut resp, endpoint, tunnel) = self.respond(
            answer,
            route_name,
            &request_id,
            grpc.then_some(route).flatten(),
        );
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        match tunnel {
            Some(protocol) => {
                let h = resp.headers_mut();
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, protocol);
            }
            // An upgrade not taken up ends its HTTP/1.1 connection after the answer (the
            // bytes after its head are the client's own protocol, not HTTP/1).
            None if matches!(upgrade, Upgrade::WebSocket(_))
                || (upgrade == Upgrade::Other && version == Version::HTTP_11) =>
            {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            None => {}
        }

        let elapsed = start.elapsed();
        route
            .map_or(&self.no_route, |r| &r.metrics)
            .record(resp.status(), elapsed);
        if let Some(mut line) = log {
            line.answered(
                route_name,
                resp.status().as_u16(),
                endpoint.as_deref(),
                upstream,
            );
            match resp.body_mut() {
                Either::Left(tee) => tee.log_at_end(line),
                Either::Right(full) => {
                    line.bytes_sent = http_body::Body::size_hint(&*full).exact().unwrap_or(0);
                    line.write(true);
                }
            }
        }
        resp
    }

    /// The client's response from what forwarding produced (or why it never happened),
    /// with the endpoint to log and the protocol of a tunnel that started.
    fn respond(
        &self,
        answer: Result<PrimaryAnswer, ProxyError>,
        route_name: &str,
        request_id: &HeaderValue,
        grpc_route: Option<&RouteState>,
    ) -> (Response<ProxyBody>, Option<Arc<str>>, Option<HeaderValue>) {
        let (result, endpoint, tunnel) = match answer {
            Ok(a) => (a.result, Some(a.endpoint), a.tunnel),
            Err(e) => (Err(e), None, None),
        };
        match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::rewrite_response(&mut parts.headers);
                (
                    Response::from_parts(parts, Either::Left(body)),
                    endpoint,
                    tunnel,
                )
            }
            Err(e) => {
                match e.reject_reason() {
                    Some(reason) => self.metrics.rejected(reason),
                    None if matches!(e, ProxyError::Upstream(UpstreamError::ClientBody { .. })) => {
                        tracing::debug!(request_id = ?request_id, route = route_name, error = %e, "client body broke off")
                    }
                    None => {
                        tracing::warn!(request_id = ?request_id, route = route_name, error = %e, "upstream failure")
                    }
                }
                let endpoint = endpoint.filter(|_| matches!(e, ProxyError::Upstream(_)));
                // A gRPC call gets a gRPC status (counted on the primary leg).
                if let Some(route) = grpc_route
                    && let Some((code, resp)) = e.to_grpc_response()
                {
                    route.grpc.count(code);
                    return (resp, endpoint, None);
                }
                (e.to_response(), endpoint, None)
            }
        }
    }
}

/// The route serving a checked request: none -> 404; a WebSocket upgrade on a route that
/// does not relay them -> 501.
fn route<'s, B>(
    snap: &'s Snapshot,
    req: &Request<B>,
    upgrade: &Upgrade,
    conn: &ConnInfo,
) -> Result<&'s RouteState, ProxyError> {
    let route = snap
        .route(
            req.method(),
            request_host(req),
            req.uri().path(),
            crate::http::grpc::is_grpc(req.headers()),
            conn.client_subject.as_deref(),
        )
        .ok_or(ProxyError::NoRoute)?;
    if matches!(upgrade, Upgrade::WebSocket(_)) && !route.websocket {
        return Err(ProxyError::UpgradeRefused);
    }
    Ok(route)
}
