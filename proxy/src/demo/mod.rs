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

pub mod faults;

/// How a demo upstream behaves.
#[derive(Debug, Clone, Default)]
pub struct DemoUpstream {
    /// Sent back in `x-upstream` and in JSON bodies.
    pub name: String,
    /// Added before every answer.
    pub latency: Duration,
    /// The demo candidate's flaws: `/api/search` about 25 % slower, one `/api/users/{id}`
    /// answer in 100 with a different `plan`, one `/api/orders` answer in 200 a 500.
    pub flawed: bool,
    /// A random extra delay, uniform between zero and this, before every answer.
    pub jitter: Duration,
    /// Answer every request with this status.
    pub status: Option<StatusCode>,
    /// Answer every request with this body (instead of the demo application's JSON).
    pub body: Option<Bytes>,
}

/// Counts what a demo upstream served.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub requests: AtomicU64,
    users: AtomicU64,
    orders: AtomicU64,
}

/// Serves the demo application until `stop` turns true: `GET /api/users/{id}`,
/// `GET /api/orders`, `GET /api/search?q=`, `GET /api/products/{id}` (each with a small
/// latency of its own and a `served_at` timestamp), `POST /api/echo` (answers with the
/// body length), `GET /healthz`, `GET /__stats` (requests served so far), and a JSON
/// description of any other request.
pub async fn serve_upstream(
    listener: TcpListener,
    behaviour: DemoUpstream,
    stats: Arc<UpstreamStats>,
    stop: watch::Receiver<bool>,
) {
    let behaviour = Arc::new(behaviour);
    serve_each(listener, stop, move |stream| {
        let _ = stream.set_nodelay(true);
        let behaviour = behaviour.clone();
        let stats = stats.clone();
        async move {
            let svc = service_fn(move |req| {
                let behaviour = behaviour.clone();
                let stats = stats.clone();
                async move {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(answer(&behaviour, &stats, req).await)
                }
            });
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1().timer(TokioTimer::new());
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
        }
    })
    .await;
}

/// Accepts connections until `stop` turns true and runs `conn` for each, as owned tasks
/// that are ended when it returns.
pub async fn serve_each<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, mut conn: F)
where
    F: FnMut(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        conns.spawn(conn(stream));
    }
    conns.shutdown().await;
}

/// Each demo path's own service time.
fn path_latency(path: &str) -> Duration {
    let ms = match path.split('/').nth(2) {
        Some("users") => 2,
        Some("orders") => 4,
        Some("search") => 24,
        Some("products") => 1,
        _ => 0,
    };
    Duration::from_millis(ms)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

async fn answer(
    b: &DemoUpstream,
    stats: &UpstreamStats,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let mut wait = b.latency + path_latency(path);
    if !b.jitter.is_zero() {
        let r = crate::shadow::sample::random_u64() % 1_000_000;
        wait += b.jitter.mul_f64(r as f64 / 1_000_000.0);
    }
    if b.flawed && path.starts_with("/api/search") {
        wait = wait * 5 / 4;
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
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
    // Always a 200 with the count, whatever `status` says: the benchmark reads it.
    if parts.method == Method::GET && path == "/__stats" {
        let fixed = DemoUpstream {
            status: None,
            ..b.clone()
        };
        return json(
            &fixed,
            StatusCode::OK,
            format!(
                "{{\"requests\":{}}}",
                stats.requests.load(Ordering::Relaxed)
            ),
        );
    }
    if let Some(fixed) = &b.body {
        return Response::builder()
            .status(b.status.unwrap_or(StatusCode::OK))
            .header("x-upstream", b.name.as_str())
            .body(Full::new(fixed.clone()))
            .expect("static parts are valid");
    }
    let at = now_ms();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => json(b, StatusCode::OK, "{\"ok\":true}".to_string()),
        (&Method::GET, ["api", "users", id]) => match id.parse::<u64>() {
            Ok(id) => {
                let n = stats.users.fetch_add(1, Ordering::Relaxed);
                let plan = if b.flawed && n % 100 == 5 {
                    "free"
                } else {
                    "pro"
                };
                json(
                    b,
                    StatusCode::OK,
                    format!(
                        "{{\"id\":{id},\"name\":\"user-{id}\",\"plan\":\"{plan}\",\"served_at\":{at}}}"
                    ),
                )
            }
            Err(_) => json(
                b,
                StatusCode::NOT_FOUND,
                "{\"error\":\"no such user\"}".to_string(),
            ),
        },
        (&Method::GET, ["api", "orders"]) => {
            let n = stats.orders.fetch_add(1, Ordering::Relaxed);
            if b.flawed && n % 200 == 20 {
                return json(
                    b,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "{\"error\":\"internal\"}".to_string(),
                );
            }
            json(
                b,
                StatusCode::OK,
                format!(
                    "{{\"orders\":[{{\"id\":1,\"total\":12.5,\"items\":2}},{{\"id\":2,\"total\":99.0,\"items\":7}}],\"served_at\":{at}}}"
                ),
            )
        }
        (&Method::GET, ["api", "search"]) => {
            let q = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("q="))
                .unwrap_or("");
            json(
                b,
                StatusCode::OK,
                format!("{{\"query\":{q:?},\"hits\":[\"{q}-1\",\"{q}-2\"],\"served_at\":{at}}}"),
            )
        }
        (&Method::GET, ["api", "products", id]) => json(
            b,
            StatusCode::OK,
            format!("{{\"id\":{id:?},\"price\":9.99,\"served_at\":{at}}}"),
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

/// The demo's gentle traffic: about `rate` requests per second over the demo paths until
/// `stop` turns true. Paths: users 30 %, orders 40 %, search 20 %, products 10 %.
pub async fn generate_traffic(target: SocketAddr, rate: u32, mut stop: watch::Receiver<bool>) {
    if rate == 0 {
        return;
    }
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight = JoinSet::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => break,
            _ = tick.tick() => {}
        }
        while inflight.try_join_next().is_some() {}
        if inflight.len() >= 64 {
            continue;
        }
        n += 1;
        let r = crate::shadow::sample::random_u64();
        let path = match r % 10 {
            0..=2 => format!("/api/users/{}", 1 + r / 10 % 500),
            3..=6 => "/api/orders".to_string(),
            7 | 8 => format!(
                "/api/search?q={}",
                ["shoes", "hats", "socks", "coats"][(r / 10 % 4) as usize]
            ),
            _ => format!("/api/products/{}", 1 + r / 10 % 50),
        };
        let uri = format!("http://{target}{path}");
        let req = Request::get(uri)
            .header("x-demo-request", n.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("valid request");
        let client = client.clone();
        inflight.spawn(async move {
            if let Ok(resp) = client.request(req).await {
                let _ = resp.into_body().collect().await;
            }
        });
    }
    inflight.shutdown().await;
}

/// The demo's story: every 20 s, the verdict as it forms, in plain words: the flagged
/// paths with their evidence, and the noise the baseline taught.
pub async fn tell_story(admin: SocketAddr, mut stop: watch::Receiver<bool>) {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_secs(20));
    tick.tick().await;
    let started = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => break,
            _ = tick.tick() => {}
        }
        let Ok(uri) = format!("http://{admin}/api/verdict").parse::<http::Uri>() else {
            return;
        };
        let Ok(resp) = client.get(uri).await else {
            continue;
        };
        let Ok(body) = resp.into_body().collect().await else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
            continue;
        };
        println!("{}", story(&v, started.elapsed()));
    }
}

/// One chapter of the story from a `/api/verdict` answer.
pub fn story(v: &serde_json::Value, after: Duration) -> String {
    use std::fmt::Write;
    let pct = |x: &serde_json::Value| {
        x.as_f64()
            .map_or_else(|| "?".to_string(), |x| format!("{:.1} %", x * 100.0))
    };
    let num = |x: &serde_json::Value| {
        x.as_f64()
            .map_or_else(|| "?".to_string(), |x| format!("{x:.2}"))
    };
    let mut out = format!(
        "verdict after {} s: {}",
        after.as_secs(),
        v["state"].as_str().unwrap_or("?")
    );
    let rows = v["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
    for r in rows.iter().filter(|r| r["role"] != "baseline") {
        let flags: Vec<&str> = r["flags"]
            .as_array()
            .map(|f| f.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if flags.is_empty() {
            continue;
        }
        // The section that raised the flags (the window, else since start).
        let s = if r["window"]["flags"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            &r["window"]
        } else {
            &r["since_start"]
        };
        let _ = write!(
            out,
            "\n  {} {} ({} vs {}): {}",
            r["route"].as_str().unwrap_or("?"),
            r["path"].as_str().unwrap_or("?"),
            r["shadow"].as_str().unwrap_or("?"),
            r["control"].as_str().unwrap_or("?"),
            flags.join(", ")
        );
        for f in &flags {
            let _ = match *f {
                "slower" | "faster" => {
                    let ratio = &s["latency"]["ratio"];
                    write!(
                        out,
                        "\n    typical time ratio x{} [{}, {}] over {} requests",
                        num(&ratio["estimate"]),
                        num(&ratio["lo"]),
                        num(&ratio["hi"]),
                        s["latency"]["pairs"]
                    )
                }
                "errors" => write!(
                    out,
                    "\n    fails {} [{}, {}] of requests, the control {} ({} failed on the shadow alone)",
                    pct(&s["errors"]["shadow_rate"]["estimate"]),
                    pct(&s["errors"]["shadow_rate"]["lo"]),
                    pct(&s["errors"]["shadow_rate"]["hi"]),
                    pct(&s["errors"]["control_rate"]["estimate"]),
                    s["errors"]["only_shadow"]
                ),
                "different" => {
                    let fields = s["mismatch"]["fields"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let named: Vec<String> = fields
                        .iter()
                        .filter(|f| f["flagged"] == true)
                        .map(|f| {
                            format!(
                                "{} ({} of answers)",
                                f["field"].as_str().unwrap_or("?"),
                                pct(&f["shadow_rate"])
                            )
                        })
                        .collect();
                    write!(
                        out,
                        "\n    differs in {} [{}, {}] of answers{}",
                        pct(&s["mismatch"]["rate"]["estimate"]),
                        pct(&s["mismatch"]["rate"]["lo"]),
                        pct(&s["mismatch"]["rate"]["hi"]),
                        if named.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", named.join(", "))
                        }
                    )
                }
                _ => Ok(()),
            };
        }
    }
    let mut noise: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| r["role"] == "candidate") {
        for f in r["noise"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let name = f["field"].as_str().unwrap_or("?");
            if f["flagged"] != true && !noise.iter().any(|n| n.starts_with(name)) {
                noise.push(format!(
                    "{name} (the baseline differs from the primary there on {} of answers)",
                    pct(&f["noise_rate"])
                ));
            }
        }
    }
    if !noise.is_empty() {
        let _ = write!(
            out,
            "\n  noise learned and not counted: {}",
            noise.join("; ")
        );
    }
    out
}

fn json(b: &DemoUpstream, status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(b.status.unwrap_or(status))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-upstream", b.name.as_str())
        .body(Full::new(Bytes::from(body)))
        .expect("static parts are valid")
}

/// The demo's config: the proxy on `listen`, admin on `admin`; `/api/` is served by the
/// primary and mirrored to the candidate, with the baseline (the primary's version) as
/// its control: the `served_at` timestamps differ on every leg, and the baseline shows
/// that this is noise, so no `ignore` list is needed.
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    primary: SocketAddr,
    candidate: SocketAddr,
    baseline: SocketAddr,
) -> Result<Config, ConfigError> {
    Config::from_yaml(&format!(
        r#"
listeners: [{{ name: public, address: "{listen}" }}]
admin: {{ address: "{admin}" }}
clusters:
  primary: {{ endpoints: ["http://{primary}"], connect_timeout: 1s, timeout: 5s }}
  candidate: {{ endpoints: ["http://{candidate}"], timeout: 5s }}
  baseline: {{ endpoints: ["http://{baseline}"], timeout: 5s }}
routes:
  - name: api
    match: {{ path_prefix: "/api/" }}
    primary: primary
    critical: true
    verdict: {{ window: 5m, different_by: 0.5%, errors_by: 0.25% }}
    shadows:
      - cluster: candidate
        methods: [GET, HEAD, OPTIONS, POST]
        headers: {{ set: {{ x-env: shadow }} }}
        compare: {{ body: json, baseline: baseline }}
  - name: default
    primary: primary
drain_timeout: 5s
shadow_drain: 2s
"#
    ))
}
