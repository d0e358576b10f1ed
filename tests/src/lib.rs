//! The test kit every suite shares:
//! - `upstream`: `FakeUpstream`, the one fake upstream (recording HTTP server by default,
//!   black hole, never-reading, endless body, byte-counting, faults by path, upgrade echo);
//! - `h1`: raw HTTP/1.1 on a socket (exact bytes out, a response parser in);
//! - `h2`: raw HTTP/2 frames (encoder, parser, HPACK literals, a frame reader);
//! - `grpc`: a real gRPC server and client (tonic, messages derived with prost);
//! - `process`: a real `teeproxy` process for black-box tests, and its /proc usage;
//! - here: an in-process proxy (`TestProxy`), config builders, hyper clients, metric
//!   readers and `assert_eventually!`.
//!
//! The most used names are re-exported at the root (`use teeproxy_tests::*`).

pub mod fuzz;
pub mod grpc;
pub mod h1;
pub mod h2;
pub mod process;
pub mod tls;
pub mod upstream;

pub use h1::{raw, read_until_close, status as raw_status};
pub use upstream::*;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;
use teeproxy::config::Config;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Polls a condition until it holds or 5 s pass (then panics with the message).
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr) => {
        $crate::assert_eventually!($cond, "")
    };
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!("condition never held within 5 s: {} {}", stringify!($cond), format!($($msg)+));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// Prefixes a config body (clusters, routes, ...) with listeners and admin on port 0.
pub fn yaml(body: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\n{body}"
    )
}

/// A config with one cluster `primary` at `endpoints` and one catch-all route `all`.
pub fn simple_yaml(endpoints: &[String], cluster_extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    yaml(&format!(
        "clusters:\n  primary: {{ endpoints: [{}]{} }}\nroutes:\n  - name: all\n    primary: primary\n",
        eps.join(", "),
        if cluster_extra.is_empty() {
            String::new()
        } else {
            format!(", {cluster_extra}")
        }
    ))
}

/// A proxy running in this process on 127.0.0.1:0.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The `/metrics`-only listener (`admin.metrics_address`), when configured.
    pub metrics_only: Option<SocketAddr>,
    reloads: tokio::sync::mpsc::Sender<teeproxy::Reload>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<String>>,
}

impl TestProxy {
    pub async fn start(yaml: &str) -> TestProxy {
        let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
        let listeners = teeproxy::Listeners::bind(&config).await.expect("bind");
        let addr = listeners.proxy_addrs()[0];
        let admin = listeners.admin_addr().expect("admin addr");
        let metrics_only = listeners.metrics_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let mut registry = Registry::default();
        let app = teeproxy::App::build(config, &mut registry);
        let (reloads_tx, reloads) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(app.serve(
            listeners,
            registry,
            async move {
                let _ = rx.await;
            },
            reloads,
        ));
        TestProxy {
            addr,
            admin,
            metrics_only,
            reloads: reloads_tx,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Reloads with `yaml` (as a SIGHUP with that file would); returns once it is applied.
    pub async fn reload(&self, yaml: &str) {
        let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
        let before = self
            .metric("teeproxy_config_reloads_total{result=\"ok\"}")
            .await;
        self.reloads
            .send(teeproxy::Reload::Apply(Box::new(config)))
            .await
            .expect("the proxy takes reloads");
        assert_eventually!(
            self.metric("teeproxy_config_reloads_total{result=\"ok\"}")
                .await
                == before + 1.0,
            "reload applied"
        );
    }

    /// Starts the graceful shutdown; `stopped` waits for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (up to 10 s) for `run` to return; returns the final metrics text.
    pub async fn stopped(&mut self) -> String {
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("proxy stops within 10 s")
            .expect("proxy task did not panic")
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(&format!("http://{}/metrics", self.admin)).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(body.to_vec()).expect("utf-8 metrics")
    }

    /// The value of one sample line (`name{labels}`) in `/metrics`, or 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }
}

/// The value of the sample whose name and labels start with `sample` (labels in any
/// order are not supported: write them as the proxy prints them).
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client (no pooling between tests).
pub fn h1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request with a client and collects the response.
pub async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("response within 10 s")
        .expect("request succeeded");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// GET over HTTP/1.1.
pub async fn get(url: &str) -> (StatusCode, HeaderMap, Bytes) {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(&h1_client(), req).await
}

/// The sample name of `teeproxy_connections_closed_total` for the `public` listener and
/// `reason` (`head_timeout`, `idle_timeout`, `write_timeout`, `premature_resets`).
pub fn closed_metric(reason: &str) -> String {
    format!("teeproxy_connections_closed_total{{listener=\"public\",reason=\"{reason}\"}}")
}

/// Shadow accounting for one (route, shadow) pair, read from `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowCounts {
    pub offered: f64,
    pub sent: f64,
    pub dropped: f64,
}

impl ShadowCounts {
    pub fn from_metrics(m: &str, route: &str, shadow: &str) -> ShadowCounts {
        let labels = format!("route=\"{route}\",shadow=\"{shadow}\"");
        let dropped = m
            .lines()
            .filter(|l| l.starts_with("teeproxy_shadow_dropped_total{") && l.contains(&labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        ShadowCounts {
            offered: metric_value(m, &format!("teeproxy_shadow_offered_total{{{labels}}}")),
            sent: metric_value(m, &format!("teeproxy_shadow_sent_total{{{labels}}}")),
            dropped,
        }
    }

    /// The accounting invariant: every offered copy is sent or dropped, exactly once.
    pub fn balanced(&self) -> bool {
        self.offered == self.sent + self.dropped
    }
}

/// The value of `teeproxy_shadow_dropped_total` for one reason.
pub fn dropped(m: &str, route: &str, shadow: &str, reason: &str) -> f64 {
    metric_value(
        m,
        &format!(
            "teeproxy_shadow_dropped_total{{route=\"{route}\",shadow=\"{shadow}\",reason=\"{reason}\"}}"
        ),
    )
}

/// The value of `teeproxy_shadow_outcomes_total` for one outcome.
pub fn outcome(m: &str, route: &str, shadow: &str, outcome: &str) -> f64 {
    metric_value(
        m,
        &format!(
            "teeproxy_shadow_outcomes_total{{route=\"{route}\",shadow=\"{shadow}\",outcome=\"{outcome}\"}}"
        ),
    )
}

/// A config with a `primary` cluster, a `candidate` shadow cluster and one route `all`
/// that mirrors to it with the given shadow options (YAML flow-map entries).
pub fn shadow_yaml(
    primary: &str,
    candidate: &str,
    candidate_extra: &str,
    shadow_opts: &str,
) -> String {
    let extra = if candidate_extra.is_empty() {
        String::new()
    } else {
        format!(", {candidate_extra}")
    };
    let opts = if shadow_opts.is_empty() {
        String::new()
    } else {
        format!(", {shadow_opts}")
    };
    yaml(&format!(
        "clusters:\n  primary: {{ endpoints: [\"{primary}\"] }}\n  candidate: {{ endpoints: [\"{candidate}\"]{extra} }}\nroutes:\n  - name: all\n    primary: primary\n    shadows: [{{ cluster: candidate{opts} }}]\n"
    ))
}

/// A program for a test that needs a real third-party tool: the path in the environment
/// variable `env` if set, else the first of `paths` that exists, else `name` found on
/// PATH; `None` when there is none.
pub fn find_program(name: &str, env: &str, paths: &[&str]) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(p.into());
    }
    if let Some(p) = paths.iter().find(|p| std::path::Path::new(p).exists()) {
        return Some(p.into());
    }
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    found
        .status
        .success()
        .then(|| String::from_utf8_lossy(&found.stdout).trim().into())
}

/// The `/api/shadows` row for (route, shadow).
pub fn shadow_row<'a>(
    v: &'a serde_json::Value,
    route: &str,
    shadow: &str,
) -> &'a serde_json::Value {
    v["shadows"]
        .as_array()
        .expect("shadows array")
        .iter()
        .find(|r| r["route"] == route && r["shadow"] == shadow)
        .unwrap_or_else(|| panic!("no {route}/{shadow} in {v}"))
}

/// POSTs `body` (JSON) to an admin endpoint, with `Authorization: Bearer <token>` when a
/// token is given; returns the status and the body.
pub async fn admin_post(
    admin: SocketAddr,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut req =
        Request::post(format!("http://{admin}{path}")).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let (status, _, body) = send(&h1_client(), req).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// GETs a URL with `Authorization: Bearer <token>` when a token is given.
pub async fn get_with_token(url: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(
        &h1_client(),
        req.body(Full::new(Bytes::new())).expect("request"),
    )
    .await
}

/// GETs an admin JSON endpoint (`/api/paths`, ...) and parses it.
pub async fn admin_json(proxy: &TestProxy, path: &str) -> serde_json::Value {
    let (status, headers, body) = get(&format!("http://{}{path}", proxy.admin)).await;
    assert_eq!(status, StatusCode::OK, "{path}");
    assert_eq!(headers["content-type"], "application/json");
    serde_json::from_slice(&body).expect("valid JSON")
}

/// The `/api/paths` row for (path template, shadow).
pub fn path_row<'a>(
    paths: &'a serde_json::Value,
    path: &str,
    shadow: &str,
) -> &'a serde_json::Value {
    paths["paths"]
        .as_array()
        .expect("paths array")
        .iter()
        .find(|r| r["path"] == path && r["shadow"] == shadow)
        .unwrap_or_else(|| panic!("no row for {path} / {shadow} in {paths}"))
}
