//! The proxy handler: validate, route, rewrite, forward to the primary, stream the answer
//! back. It never returns an error to hyper: every failure becomes a response in `error`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{Config, ForwardedMode, HostMode};
use crate::error::{ProxyBody, ProxyError};
use crate::headers::{self, Forwarded, RequestIds, X_REQUEST_ID};
use crate::idle::IdleTimeout;
use crate::metrics::{Metrics, NO_ROUTE, RouteMetrics};
use crate::response::ResponseTee;
use crate::route::Router;
use crate::route::{PrimaryBody, Route};
use crate::shadow::compare::MismatchRing;
use crate::shadow::{
    Mirror, MirrorPlan, PrimaryOutcome, ShadowCluster, TeeBody, build_shadow_clusters,
};
use crate::stats::PathEntry;
use crate::upstream::{EndpointState, UpstreamError, build_clusters, upstream_uri};
use crate::validate::{RequestLimits, check_request, request_host};

/// Everything the handler reads from the config, swapped whole.
pub struct Snapshot {
    pub router: Router,
    /// Every shadow cluster the routes use.
    pub shadow_clusters: Vec<Arc<ShadowCluster>>,
    limits: RequestLimits,
    body_timeout: Duration,
    forwarded: ForwardedMode,
    access_log: bool,
}

impl Snapshot {
    /// Builds the handler's view of `config`; path statistics of routes that did not
    /// change are carried over from `previous`.
    pub fn new(
        config: &Config,
        metrics: &Arc<Metrics>,
        mismatches: &Arc<MismatchRing>,
        previous: Option<&Snapshot>,
    ) -> Self {
        let clusters = build_clusters(config, metrics);
        let shadows = build_shadow_clusters(config, metrics);
        Snapshot {
            router: Router::new(
                config,
                &clusters,
                &shadows,
                metrics,
                mismatches,
                previous.map(|p| &p.router),
            ),
            shadow_clusters: shadows.into_values().collect(),
            limits: RequestLimits::from(&config.limits),
            body_timeout: config.limits.body_timeout.value.get(),
            forwarded: config.x_forwarded_for,
            access_log: config.access_log.enabled,
        }
    }
}

/// The shared handler state.
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    /// Metrics of requests refused before routing (or matching no route).
    no_route: RouteMetrics,
    ids: RequestIds,
    mismatches: Arc<MismatchRing>,
}

/// What the handler knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `http`, or `https` for TLS listeners.
    pub proto: &'static str,
    /// The connection's clock: a WebSocket tunnel holds the connection (and its slot)
    /// through it, stops at the idle limit, and stops when the connection's task ends.
    pub clock: Option<Arc<crate::server::clock::ConnClock>>,
    /// Idle limit for a tunnel (no byte either way).
    pub tunnel_idle: Duration,
}

/// Decrements the in-flight gauge when the request ends, however it ends.
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
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let mismatches = Arc::new(MismatchRing::new(config.mismatch_ring.value));
        Proxy {
            snapshot: ArcSwap::from_pointee(Snapshot::new(config, &metrics, &mismatches, None)),
            no_route: metrics.route(NO_ROUTE),
            metrics,
            ids: RequestIds::default(),
            mismatches,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves `config` from the next request on; requests already in progress finish on
    /// the config they started with. Returns the config it replaced (its shadow
    /// clusters' dispatchers can retire once nothing holds it any more).
    pub fn reload(&self, config: &Config) -> Arc<Snapshot> {
        let current = self.snapshot.load_full();
        let next = Snapshot::new(config, &self.metrics, &self.mismatches, Some(&current));
        self.snapshot.swap(Arc::new(next))
    }

    /// The current config's routes and clusters.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The most recent mismatches between shadows and the primary.
    pub fn mismatches(&self) -> &MismatchRing {
        &self.mismatches
    }

    /// The shadow clusters of the current config (their dispatchers run beside the proxy).
    pub fn shadow_clusters(&self) -> Vec<Arc<ShadowCluster>> {
        self.snapshot.load().shadow_clusters.clone()
    }

    /// Handles one request. Never fails: errors are answered by `ProxyError::to_response`.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        let _in_flight = InFlight::new(&self.metrics.in_flight);
        let snap = self.snapshot.load_full();
        // Limits are checked on what the client sent, before the request id is added.
        let checked = check_request(&req, &snap.limits);
        let request_id = self.ids.ensure(req.headers_mut());
        let log = snap
            .access_log
            .then(|| (req.method().clone(), req.uri().path().to_string()));

        let websocket = websocket_upgrade(&req);
        // Any other upgrade request that is not taken up ends its connection after the
        // answer (the bytes after its head are the client's own protocol, not HTTP/1).
        let other_upgrade = websocket.is_none()
            && req.version() == Version::HTTP_11
            && req
                .headers()
                .get_all(header::UPGRADE)
                .iter()
                .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"h2c"));
        let routed = checked.and_then(|()| {
            snap.router
                .route(req.method(), request_host(&req), req.uri().path())
                .ok_or(ProxyError::NoRoute)
        });
        let routed = match (routed, &websocket) {
            (Ok(route), Some(_)) if !route.websocket => Err(ProxyError::UpgradeRefused),
            (r, _) => r,
        };
        let mut tunnel = None;
        let (route, mut endpoint, result) = match routed {
            Err(e) => (None, None, Err(e)),
            Ok(route) => {
                let cluster = &route.primary;
                let mut ep = cluster.pick();
                let path = route.paths.entry(req.uri().path());
                let client_upgrade = websocket.as_ref().map(|_| hyper::upgrade::on(&mut req));
                let (mut upstream_req, mirror, body_sent) =
                    prepare(req, route, ep, &conn, &snap, &request_id, &path);
                if let Some(protocol) = &websocket {
                    let h = upstream_req.headers_mut();
                    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    h.insert(header::UPGRADE, protocol.clone());
                }
                let sink = mirror.as_ref().and_then(|m| m.primary_body_sink());
                let mut report = PrimaryReport(mirror);
                // A refused connection means nothing was sent: a request without a body
                // may go to the next endpoint (the refusing one was just ejected).
                let attempts = cluster.endpoint_count().min(MAX_CONNECT_ATTEMPTS);
                let resend = (attempts > 1 && upstream_req.body().is_end_stream())
                    .then(|| head_of(&upstream_req));
                let sent = Instant::now();
                let mut result = cluster.send(ep, upstream_req, body_sent).await;
                if let Some(head) = resend {
                    let mut tried = 1;
                    while tried < attempts && matches!(result, Err(UpstreamError::Connect { .. })) {
                        ep = cluster.pick();
                        tracing::debug!(request_id = ?request_id, endpoint = %ep.label, "connection refused; resending to the next endpoint");
                        let req = resend_to(&head, ep, cluster.host_mode);
                        result = cluster.send(ep, req, None).await;
                        tried += 1;
                    }
                }
                // 101 only answers an upgrade the client asked for; anything else from
                // the primary is a protocol error.
                if websocket.is_none()
                    && result
                        .as_ref()
                        .is_ok_and(|r| r.status() == http::StatusCode::SWITCHING_PROTOCOLS)
                {
                    let e = UpstreamError::Protocol {
                        endpoint: ep.label.clone(),
                        reason: "101 Switching Protocols to a request that asked for no upgrade"
                            .to_string(),
                    };
                    cluster.count_error(&e);
                    result = Err(e);
                }
                if let (Some(on_client), Ok(resp)) = (client_upgrade, result.as_mut())
                    && resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                {
                    tunnel = resp.headers().get(header::UPGRADE).cloned();
                    let on_primary = hyper::upgrade::on(&mut *resp);
                    let gauge = self.metrics.tunnels.clone();
                    let hold = conn.clock.as_ref().map(|c| c.tunnel());
                    tokio::spawn(splice(
                        on_client,
                        on_primary,
                        gauge,
                        request_id.clone(),
                        hold,
                        conn.tunnel_idle,
                    ));
                }
                let elapsed = sent.elapsed();
                match &result {
                    Ok(r) => path.primary_head(r.status(), elapsed),
                    Err(_) => path.primary_failed(),
                }
                if report.0.is_some() {
                    report.done(PrimaryOutcome {
                        status: result.as_ref().ok().map(|r| r.status()),
                        elapsed,
                        error: result.as_ref().err().map(UpstreamError::kind_str),
                        headers: result
                            .as_ref()
                            .map(|r| headers::detached(r.headers()))
                            .unwrap_or_default(),
                    });
                }
                let result = result.map(|resp| resp.map(|b| ResponseTee::new(b, sent, path, sink)));
                (
                    Some(route),
                    Some(ep.label.as_str()),
                    result.map_err(ProxyError::from),
                )
            }
        };
        let route_name = route.map_or(NO_ROUTE, |r| r.name.as_str());

        let mut resp = match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::rewrite_response(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
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
                if !matches!(e, ProxyError::Upstream(_)) {
                    endpoint = None;
                }
                e.to_response()
            }
        };
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        match tunnel {
            Some(protocol) => {
                let h = resp.headers_mut();
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, protocol);
            }
            None if websocket.is_some() || other_upgrade => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            None => {}
        }

        let elapsed = start.elapsed();
        route
            .map_or(&self.no_route, |r| &r.metrics)
            .record(resp.status(), elapsed);
        if let Some((method, path)) = log {
            tracing::info!(
                target: "teeproxy::access",
                request_id = request_id.to_str().unwrap_or("-"),
                route = route_name,
                method = %method,
                path = %path,
                status = resp.status().as_u16(),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                endpoint = endpoint.unwrap_or("-"),
                client = %conn.peer.ip(),
            );
        }
        resp
    }
}

/// The protocol a WebSocket upgrade asks for: HTTP/1.1 `GET` with `Connection: upgrade`
/// and `Upgrade: websocket`.
fn websocket_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || req.method() != http::Method::GET {
        return None;
    }
    let h = req.headers();
    let connection_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = h.get(header::UPGRADE)?;
    (connection_upgrade && upgrade.as_bytes().eq_ignore_ascii_case(b"websocket"))
        .then(|| upgrade.clone())
}

/// Relays bytes both ways between an upgraded client connection and the primary's,
/// until either side closes, nothing moves for `idle`, or the client connection's task
/// ends (`hold`'s clock closes: drain deadline).
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    primary: hyper::upgrade::OnUpgrade,
    open: Gauge,
    request_id: HeaderValue,
    hold: Option<crate::server::clock::TunnelGuard>,
    idle: Duration,
) {
    let (client, primary) = match tokio::join!(client, primary) {
        (Ok(c), Ok(p)) => (c, p),
        (c, p) => {
            tracing::debug!(request_id = ?request_id, client_ok = c.is_ok(), primary_ok = p.is_ok(), "upgrade did not complete");
            return;
        }
    };
    let _open = InFlight::new(&open);
    let activity = Arc::new(crate::idle::Activity::new());
    let mut client =
        crate::idle::Active::new(hyper_util::rt::TokioIo::new(client), activity.clone());
    let mut primary = hyper_util::rt::TokioIo::new(primary);
    let closed = async {
        match hold.as_ref() {
            Some(h) => h.clock().closed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut primary) => match r {
            Ok((up, down)) => {
                tracing::debug!(request_id = ?request_id, bytes_up = up, bytes_down = down, "tunnel closed")
            }
            Err(e) => tracing::debug!(request_id = ?request_id, error = %e, "tunnel broke off"),
        },
        _ = activity.idle_for(idle) => {
            tracing::debug!(request_id = ?request_id, idle_ms = idle.as_millis() as u64, "tunnel closed at the idle limit")
        }
        _ = closed => tracing::debug!(request_id = ?request_id, "tunnel closed with its connection"),
    }
    drop(hold);
}

/// Endpoints tried at most for a request without a body whose connections are refused.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// The head of a request without a body, kept to resend it elsewhere.
fn head_of(req: &Request<PrimaryBody>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head
}

/// `head` addressed to endpoint `ep` instead, with an empty body.
fn resend_to(head: &Request<()>, ep: &EndpointState, host_mode: HostMode) -> Request<PrimaryBody> {
    let mut req = Request::new(Either::Right(http_body_util::Empty::new()));
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

/// Hands the primary's outcome to the mirror once; if the handler is dropped first (the
/// client left), the outcome is `cancelled`.
struct PrimaryReport(Option<Arc<Mirror>>);

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
            elapsed: Duration::ZERO,
            error: Some(crate::shadow::mirror::CANCELLED),
            headers: http::HeaderMap::new(),
        });
    }
}

/// Rewrites a client request into the request for endpoint `ep` of the route's primary,
/// and plans its shadow copies.
fn prepare(
    req: Request<Incoming>,
    route: &Route,
    ep: &EndpointState,
    conn: &ConnInfo,
    snap: &Snapshot,
    request_id: &HeaderValue,
    path: &Arc<PathEntry>,
) -> (
    Request<PrimaryBody>,
    Option<Arc<Mirror>>,
    Option<tokio::sync::oneshot::Receiver<()>>,
) {
    let host = request_host(&req).and_then(|h| HeaderValue::from_str(h).ok());
    // `Upgrade: h2c` is stripped and served as a plain request, so it is mirrored too;
    // any other protocol (WebSocket) is never copied.
    let upgrade = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .any(|p| !p.trim().eq_ignore_ascii_case("h2c"));
    let (mut parts, body) = req.into_parts();
    let fwd = Forwarded {
        client_ip: conn.peer.ip(),
        proto: conn.proto,
        host: host.as_ref().and_then(|h| h.to_str().ok()),
    };
    headers::rewrite_request(&mut parts.headers, &fwd, snap.forwarded);

    let declared_len = body.size_hint().exact();
    let targets: Vec<_> = route
        .shadows
        .iter()
        .filter(|p| p.admit(&parts, upgrade, declared_len, path))
        .cloned()
        .collect();
    let mirror = (!targets.is_empty()).then(|| {
        Arc::new(Mirror::new(MirrorPlan {
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
        }))
    });
    let (body, body_sent) = IdleTimeout::with_end_signal(body, snap.body_timeout);
    let body = TeeBody::new(body, mirror.clone());

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
        mirror,
        body_sent,
    )
}
