//! The admin listener: the dashboard (`/`), `/api/paths`, `/api/shadows` (and `POST
//! /api/shadows/{route}/{cluster}` to pause, resume or re-percent a shadow at runtime),
//! `/api/mismatches`, `/api/config`, `/metrics` (Prometheus text, or OpenMetrics or protobuf when asked), `/live`, `/ready`;
//! and, when `admin.metrics_address` is set, a second listener with only `/metrics`,
//! `/live` and `/ready`. HTTP/1.1 only, meant for loopback or a private network. Changes
//! and what shows request or response contents (`/api/mismatches`, `/api/config`) need the
//! bearer token of `admin.token_file`; without one they are open on a loopback address and
//! refused on any other. It reads the current snapshot, the registry and the mismatch
//! groups; it holds nothing of the handler.

mod api;
mod auth;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::{self, Metrics};
use crate::proxy::Snapshots;
use crate::shadow::mismatches::MismatchGroups;
use crate::shutdown::stopped;

/// What the admin endpoints read.
pub(crate) struct AdminState {
    pub(crate) registry: Registry,
    /// True while the listeners accept traffic; false before start and while draining.
    pub(crate) ready: AtomicBool,
    snapshots: Snapshots,
    mismatches: Arc<MismatchGroups>,
    metrics: Arc<Metrics>,
    /// The last `/api/verdict` answer: (when, its query, the JSON).
    verdict: std::sync::Mutex<Option<(std::time::Instant, Option<String>, String)>>,
}

/// How long a computed `/api/verdict` answer is served again: dashboards and release
/// tools polling at once share one computation.
const VERDICT_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl AdminState {
    pub(crate) fn new(
        registry: Registry,
        snapshots: Snapshots,
        mismatches: Arc<MismatchGroups>,
        metrics: Arc<Metrics>,
    ) -> Self {
        AdminState {
            registry,
            ready: AtomicBool::new(false),
            snapshots,
            mismatches,
            metrics,
            verdict: std::sync::Mutex::new(None),
        }
    }

    /// `/api/verdict`: computed off the runtime's workers (it sorts and tests every
    /// path's observations), and served again for `VERDICT_FRESH` to the same query.
    async fn verdict(&self, query: Option<&str>) -> Option<String> {
        let lock = || {
            self.verdict
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((at, q, body)) = lock().as_ref()
            && at.elapsed() < VERDICT_FRESH
            && q.as_deref() == query
        {
            return Some(body.clone());
        }
        let snap = self.snapshots.load_full();
        let q = query.map(str::to_string);
        let body =
            tokio::task::spawn_blocking(move || api::verdict(&snap, q.as_deref()).to_string())
                .await
                .ok()?;
        *lock() = Some((
            std::time::Instant::now(),
            query.map(str::to_string),
            body.clone(),
        ));
        Some(body)
    }

    fn forget_verdict(&self) {
        *self
            .verdict
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Everything.
    Admin,
    /// `/metrics`, `/live` and `/ready` only (`admin.metrics_address`).
    Metrics,
}

/// The live dashboard: one self-contained page, assets inline, no network beyond the
/// admin API it polls.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves admin requests until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    scope: Scope,
    mut stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    if let Some(addr) = local {
        match scope {
            Scope::Admin => tracing::info!(%addr, "admin listening"),
            Scope::Metrics => tracing::info!(%addr, "metrics listening"),
        }
    }
    // Bound to loopback: only this host can connect, so protected endpoints are open
    // when no token is configured.
    let loopback = local.is_some_and(|a| a.ip().is_loopback());
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                let from = Caller { peer, loopback };
                async move { Ok::<_, Infallible>(respond(&state, scope, from, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    conns.shutdown().await;
}

/// Who is asking, and on which kind of address.
#[derive(Debug, Clone, Copy)]
struct Caller {
    peer: SocketAddr,
    /// The admin listener is bound to a loopback address.
    loopback: bool,
}

type Answer = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static parts are valid")
}

fn json_with(status: StatusCode, body: String) -> Answer {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static parts are valid")
}

fn json(body: String) -> Answer {
    json_with(StatusCode::OK, body)
}

fn not_allowed(allow: &'static str) -> Answer {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

/// Whether a request declares a JSON body. A browser sends a cross-site JSON POST only
/// after a preflight this listener never answers: a page cannot change anything behind
/// the operator's back.
fn is_json(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
}

fn unsupported_media() -> Answer {
    text(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported media type: send content-type: application/json\n",
    )
}

/// Largest body a `POST` may carry.
const MAX_POST: usize = 16 * 1024;

async fn respond(state: &AdminState, scope: Scope, from: Caller, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    let path = req.uri().path().to_string();
    match (scope, path.as_str()) {
        (_, "/metrics") if read => {
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            state.metrics.runtime_tasks.set(tasks as i64);
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (content_type, body) = metrics::exposition(&state.registry, accept);
            Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .header(header::VARY, "accept")
                .body(Full::new(Bytes::from(body)))
                .expect("static parts are valid")
        }
        (_, "/live") if read => text(StatusCode::OK, "live\n"),
        (_, "/ready") if read && state.ready.load(Ordering::Relaxed) => {
            text(StatusCode::OK, "ready\n")
        }
        (_, "/ready") if read => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        (_, "/metrics" | "/live" | "/ready") => not_allowed("GET, HEAD"),
        (Scope::Metrics, _) => text(
            StatusCode::NOT_FOUND,
            "not found: this listener serves /metrics, /live and /ready\n",
        ),
        (Scope::Admin, "/") if read => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from_static(DASHBOARD.as_bytes())))
            .expect("static parts are valid"),
        (Scope::Admin, "/api/paths") if read => {
            json(api::paths(&state.snapshots.load()).to_string())
        }
        (Scope::Admin, "/api/shadows") if read => {
            json(api::shadows(&state.snapshots.load()).to_string())
        }
        (Scope::Admin, "/api/verdict") if read => match state.verdict(req.uri().query()).await {
            Some(body) => json(body),
            None => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the verdict could not be computed\n",
            ),
        },
        (Scope::Admin, "/api/reset") if method == Method::POST => {
            if let Some(denied) = auth::refusal(state, from, &req) {
                return denied;
            }
            if !is_json(&req) {
                return unsupported_media();
            }
            let answer = api::reset(&state.snapshots.load()).to_string();
            state.forget_verdict();
            json(answer)
        }
        (Scope::Admin, "/api/mismatches" | "/api/config") if read => {
            if let Some(denied) = auth::refusal(state, from, &req) {
                return denied;
            }
            if path == "/api/mismatches" {
                json(api::mismatches(&state.mismatches).to_string())
            } else {
                json(state.snapshots.load().config.to_json().to_string())
            }
        }
        (Scope::Admin, p) if p.starts_with("/api/shadows/") && method == Method::POST => {
            if let Some(denied) = auth::refusal(state, from, &req) {
                return denied;
            }
            // Cluster names have no `/`; route names may.
            let Some((route, shadow)) = p["/api/shadows/".len()..].rsplit_once('/') else {
                return text(
                    StatusCode::NOT_FOUND,
                    "not found: POST /api/shadows/{route}/{cluster}\n",
                );
            };
            if !is_json(&req) {
                return unsupported_media();
            }
            let (route, shadow) = (route.to_string(), shadow.to_string());
            let body = match Limited::new(req.into_body(), MAX_POST).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is over {MAX_POST} bytes or was cut\n"),
                    );
                }
            };
            let snap = state.snapshots.load();
            let (status, v) = api::change_shadow(&snap, &route, &shadow, &body, from.peer);
            json_with(status, v.to_string())
        }
        (
            Scope::Admin,
            "/" | "/api/paths" | "/api/shadows" | "/api/mismatches" | "/api/config"
            | "/api/verdict",
        ) => not_allowed("GET, HEAD"),
        (Scope::Admin, "/api/reset") => not_allowed("POST"),
        (Scope::Admin, p) if p.starts_with("/api/shadows/") => not_allowed("POST"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /metrics, /live, /ready, /api/paths, /api/verdict, /api/shadows, /api/mismatches or /api/config\n",
        ),
    }
}
