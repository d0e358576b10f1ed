//! The embedded demo: in-process upstreams on loopback (a primary and a slightly slower
//! candidate) and the config that puts the proxy in front of them. The upstream is also
//! what `loadgen upstream` and the tests reuse.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, ConfigError};

/// How a demo upstream behaves.
#[derive(Debug, Clone)]
pub struct DemoUpstream {
    /// Sent back in `x-upstream` and in JSON bodies.
    pub name: String,
    /// Added before every answer.
    pub latency: Duration,
}

/// Counts what a demo upstream served.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub requests: AtomicU64,
}

/// Serves the demo application until `stop` turns true:
/// `GET /api/users/{id}`, `GET /api/orders`, `POST /api/echo` (answers with the body
/// length), `GET /healthz`, and a JSON description of any other request.
pub async fn serve_upstream(
    listener: TcpListener,
    behaviour: DemoUpstream,
    stats: Arc<UpstreamStats>,
    mut stop: watch::Receiver<bool>,
) {
    let behaviour = Arc::new(behaviour);
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = tokio::select! {
            _ = crate::stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let behaviour = behaviour.clone();
        let stats = stats.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let behaviour = behaviour.clone();
                let stats = stats.clone();
                async move {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(answer(&behaviour, req).await)
                }
            });
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1().timer(TokioTimer::new());
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
    conns.shutdown().await;
}

async fn answer(b: &DemoUpstream, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    let (parts, body) = req.into_parts();
    let body_len = match body.collect().await {
        Ok(c) => c.to_bytes().len(),
        Err(_) => {
            return json(
                b,
                StatusCode::BAD_REQUEST,
                "{\"error\":\"incomplete body\"}".to_string(),
            );
        }
    };
    let path = parts.uri.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => json(b, StatusCode::OK, "{\"ok\":true}".to_string()),
        (&Method::GET, ["api", "users", id]) => match id.parse::<u64>() {
            Ok(id) => json(
                b,
                StatusCode::OK,
                format!("{{\"id\":{id},\"name\":\"user-{id}\",\"plan\":\"pro\"}}"),
            ),
            Err(_) => json(
                b,
                StatusCode::NOT_FOUND,
                "{\"error\":\"no such user\"}".to_string(),
            ),
        },
        (&Method::GET, ["api", "orders"]) => json(
            b,
            StatusCode::OK,
            "[{\"id\":1,\"total\":12.5,\"items\":2},{\"id\":2,\"total\":99.0,\"items\":7}]"
                .to_string(),
        ),
        (&Method::POST, ["api", "echo"]) => json(
            b,
            StatusCode::OK,
            format!("{{\"received_bytes\":{body_len}}}"),
        ),
        _ => json(
            b,
            StatusCode::OK,
            format!(
                "{{\"method\":\"{}\",\"path\":{:?},\"received_bytes\":{body_len},\"upstream\":{:?}}}",
                parts.method, path, b.name
            ),
        ),
    }
}

fn json(b: &DemoUpstream, status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-upstream", b.name.as_str())
        .body(Full::new(Bytes::from(body)))
        .expect("static parts are valid")
}

/// The demo's config: the proxy on `listen`, admin on `admin`; `/api/` is served by the
/// primary and mirrored to the candidate.
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    primary: SocketAddr,
    candidate: SocketAddr,
) -> Result<Config, ConfigError> {
    Config::from_yaml(&format!(
        r#"
listeners: [{{ name: public, address: "{listen}" }}]
admin: {{ address: "{admin}" }}
clusters:
  primary: {{ endpoints: ["http://{primary}"], connect_timeout: 1s, timeout: 5s }}
  candidate: {{ endpoints: ["http://{candidate}"], timeout: 5s }}
routes:
  - name: api
    match: {{ path_prefix: "/api/" }}
    primary: primary
    shadows:
      - cluster: candidate
        methods: [GET, HEAD, OPTIONS, POST]
        headers: {{ set: {{ x-env: shadow }} }}
  - name: default
    primary: primary
drain_timeout: 5s
shadow_drain: 2s
"#
    ))
}
