//! The admin listener: the dashboard (`/`), `/api/paths`, `/api/mismatches`,
//! `/api/config`, `/metrics` (Prometheus text), `/live`, `/ready`. HTTP/1.1 only, meant
//! for loopback or a private network. It reads the current snapshot, the registry and the
//! mismatch ring; it holds nothing of the handler.

mod api;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use prometheus_client::metrics::gauge::Gauge;

use crate::metrics;
use crate::proxy::Snapshots;
use crate::shadow::compare::MismatchRing;
use crate::shutdown::stopped;

/// What the admin endpoints read.
pub(crate) struct AdminState {
    pub(crate) registry: Registry,
    /// True while the listeners accept traffic; false before start and while draining.
    pub(crate) ready: AtomicBool,
    snapshots: Snapshots,
    mismatches: Arc<MismatchRing>,
    runtime_tasks: Gauge,
}

impl AdminState {
    pub(crate) fn new(
        registry: Registry,
        snapshots: Snapshots,
        mismatches: Arc<MismatchRing>,
        runtime_tasks: Gauge,
    ) -> Self {
        AdminState {
            registry,
            ready: AtomicBool::new(false),
            snapshots,
            mismatches,
            runtime_tasks,
        }
    }
}

/// The live dashboard: one self-contained page, assets inline, no network beyond the
/// admin API it polls.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves admin requests until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening");
    }
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, _) = tokio::select! {
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
                async move { Ok::<_, Infallible>(respond(&state, &req)) }
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

fn respond(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("static parts are valid")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let json = |body: String| {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("static parts are valid")
    };
    match req.uri().path() {
        "/" => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from_static(DASHBOARD.as_bytes())))
            .expect("static parts are valid"),
        "/api/paths" => json(api::paths(&state.snapshots.load()).to_string()),
        "/api/mismatches" => json(api::mismatches(&state.mismatches).to_string()),
        "/api/config" => json(state.snapshots.load().config.to_json().to_string()),
        "/metrics" => {
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            state.runtime_tasks.set(tasks as i64);
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = metrics::Format::negotiate(accept);
            Response::builder()
                .header(header::CONTENT_TYPE, format.content_type())
                .header(header::VARY, "accept")
                .body(Full::new(Bytes::from(metrics::encode_as(
                    &state.registry,
                    format,
                ))))
                .expect("static parts are valid")
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /metrics, /live, /ready, /api/paths, /api/mismatches or /api/config\n",
        ),
    }
}
