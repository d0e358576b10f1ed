//! The verdict end to end, on real sockets: an application of our own (echoing request
//! headers, random ids, dates, gzip, HTML and binary bodies, jittery latency) serves the
//! primary, a baseline and a candidate. The same version everywhere (A/A) raises no flag
//! at any refresh; a candidate 15 % slower on one path, changing one JSON field in 5 % of
//! another's answers and failing 2 % of a third is flagged on exactly those paths, with
//! the right flags, within a few hundred requests each.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use teeproxy_tests::*;
use tokio::net::TcpListener;

/// How one version of the application behaves.
#[derive(Clone, Copy, Default)]
struct Version {
    /// `/slow` takes this much longer (0.15: 15 %).
    slower: f64,
    /// One `/price` answer in this many has another price (0: never).
    price_every: u64,
    /// One `/fail` answer in this many is a 500 (0: never).
    fail_every: u64,
}

struct App {
    version: Version,
    served: AtomicU64,
    prices: AtomicU64,
    fails: AtomicU64,
    seed: AtomicU64,
}

impl App {
    fn random(&self) -> u64 {
        // splitmix64 over a shared counter: different on every call and every leg.
        let mut z = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn answer(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    app.served.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    // Jitter: 0 to 4 ms on every answer, drawn per leg.
    let jitter = Duration::from_micros(app.random() % 4000);
    let base = if path == "/slow" {
        Duration::from_millis(20).mul_f64(1.0 + app.version.slower)
    } else {
        Duration::from_millis(3)
    };
    tokio::time::sleep(base + jitter).await;
    let id = app.random();
    let date = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let json = |v: Value| {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .unwrap()
    };
    let resp = match path.as_str() {
        "/echo" => {
            let headers: serde_json::Map<String, Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(v.to_str().unwrap_or(""))))
                .collect();
            json(serde_json::json!({ "id": id, "date": date, "headers": headers }))
        }
        "/gz" => Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from(gzip(
                serde_json::json!({ "id": id, "items": [1, 2, 3] })
                    .to_string()
                    .as_bytes(),
            ))))
            .unwrap(),
        "/page" => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(format!(
                "<!doctype html><html><body><h1>Hello</h1><script nonce=\"{id:x}\"></script></body></html>"
            ))))
            .unwrap(),
        "/bin" => Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from((0u8..=255).collect::<Vec<u8>>())))
            .unwrap(),
        "/price" => {
            let n = app.prices.fetch_add(1, Ordering::Relaxed) + 1;
            let every = app.version.price_every;
            let price = if every > 0 && n.is_multiple_of(every) { 11 } else { 10 };
            json(serde_json::json!({ "id": id, "price": price }))
        }
        "/fail" => {
            let n = app.fails.fetch_add(1, Ordering::Relaxed) + 1;
            let every = app.version.fail_every;
            if every > 0 && n.is_multiple_of(every) {
                Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from("{\"error\":\"internal\"}")))
                    .unwrap()
            } else {
                json(serde_json::json!({ "ok": true }))
            }
        }
        _ => json(serde_json::json!({ "ok": true })),
    };
    Ok(resp)
}

/// Serves one version on 127.0.0.1:0 until the test ends.
async fn start(version: Version, seed: u64) -> SocketAddr {
    start_counted(version, seed).await.0
}

/// The same, with the application (to count what it served).
async fn start_counted(version: Version, seed: u64) -> (SocketAddr, Arc<App>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Arc::new(App {
        version,
        served: AtomicU64::new(0),
        prices: AtomicU64::new(0),
        fails: AtomicU64::new(0),
        seed: AtomicU64::new(seed),
    });
    let served = app.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(app.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, served)
}

fn config(primary: SocketAddr, candidate: SocketAddr, baseline: SocketAddr) -> String {
    yaml(&format!(
        r#"
clusters:
  primary: {{ endpoints: ["http://{primary}"] }}
  candidate: {{ endpoints: ["http://{candidate}"], shadow_queue: 4096 }}
  baseline: {{ endpoints: ["http://{baseline}"], shadow_queue: 4096 }}
routes:
  - name: app
    primary: primary
    critical: true
    shadows:
      - cluster: candidate
        compare: {{ body: json, baseline: baseline }}
"#
    ))
}

/// The candidate rows of the verdict by path.
fn candidate_rows(v: &Value) -> Vec<(String, Vec<String>, String)> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["role"] == "candidate")
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Sends `rounds` requests to each of `paths`, 8 at a time; after every `look_every`
/// rounds waits until the copies are in and calls `look` with the verdict.
async fn drive(
    proxy: &TestProxy,
    paths: &[&str],
    rounds: usize,
    look_every: usize,
    mut look: impl FnMut(usize, &Value),
) {
    let client = h1_client();
    for round in 1..=rounds {
        let mut set = tokio::task::JoinSet::new();
        for p in paths {
            let req = Request::get(proxy.url(p))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let client = client.clone();
            set.spawn(async move { client.request(req).await.map(|r| r.status()) });
        }
        while let Some(r) = set.join_next().await {
            let status = r.unwrap().expect("the primary answers");
            assert!(status.is_success(), "{status}");
        }
        if round % look_every == 0 {
            look(round, &admin_json(proxy, "/api/verdict").await);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_version_on_every_leg_raises_no_flag_at_any_refresh() {
    let same = Version::default();
    let (p, c, b) = tokio::join!(start(same, 1), start(same, 2), start(same, 3));
    let proxy = TestProxy::start(&config(p, c, b)).await;
    let paths = ["/echo", "/gz", "/page", "/bin", "/slow", "/price", "/fail"];
    let mut looks = 0;
    drive(&proxy, &paths, 150, 5, |round, v| {
        looks += 1;
        for (path, flags, _) in candidate_rows(v) {
            assert!(
                flags.is_empty(),
                "A/A: {path} flagged {flags:?} after {round} rounds: {v:#}"
            );
        }
    })
    .await;
    assert_eq!(looks, 30);
    // Every path has a verdict with data, and the noise was learned: the random ids, the
    // dates and the HTML page's nonce differ on the baseline as on the candidate.
    assert_eventually!({
        let v = admin_json(&proxy, "/api/verdict").await;
        let rows = candidate_rows(&v);
        rows.len() == paths.len() && rows.iter().all(|(_, f, s)| f.is_empty() && s == "pass")
    });
    let v = admin_json(&proxy, "/api/verdict").await;
    assert_eq!(v["state"], "pass", "{v:#}");
    let noise = |path: &str| -> Vec<String> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["role"] == "candidate" && r["path"] == path)
            .unwrap()["noise"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        noise("/echo").contains(&"/id".to_string()),
        "{:?}",
        noise("/echo")
    );
    assert!(
        noise("/gz").contains(&"/id".to_string()),
        "{:?}",
        noise("/gz")
    );
    assert_eq!(noise("/page"), ["body"]);
    assert!(noise("/bin").is_empty());
    assert!(
        !noise("/echo").iter().any(|f| f.contains("teeproxy")),
        "the shadow marker echoed back is never a difference: {:?}",
        noise("/echo")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regressed_candidate_is_flagged_on_exactly_the_regressed_paths() {
    let old = Version::default();
    let new = Version {
        slower: 0.15,
        price_every: 20,
        fail_every: 50,
    };
    let (p, c, b) = tokio::join!(start(old, 1), start(new, 2), start(old, 3));
    let proxy = TestProxy::start(&config(p, c, b)).await;
    let paths = ["/slow", "/price", "/fail", "/echo"];
    let expected = |path: &str| match path {
        "/slow" => vec!["slower".to_string()],
        "/price" => vec!["different".to_string()],
        "/fail" => vec!["errors".to_string()],
        _ => vec![],
    };
    let mut caught: std::collections::BTreeMap<String, usize> = Default::default();
    drive(&proxy, &paths, 800, 10, |round, v| {
        for (path, flags, _) in candidate_rows(v) {
            let want = expected(&path);
            assert!(
                flags.iter().all(|f| want.contains(f)),
                "{path} flagged {flags:?} after {round} requests: {v:#}"
            );
            if !want.is_empty() && flags == want {
                caught.entry(path).or_insert(round);
            }
        }
    })
    .await;
    eprintln!("caught after: {caught:?} requests");
    for path in ["/slow", "/price", "/fail"] {
        assert!(
            caught.contains_key(path),
            "{path} never flagged: {caught:?}"
        );
    }
    let v = admin_json(&proxy, "/api/verdict").await;
    assert_eq!(
        v["state"], "fail",
        "a critical route with flags fails the verdict"
    );
    // The flagged path shows its evidence: the ratio with an interval around 1.15.
    let slow = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "candidate" && r["path"] == "/slow")
        .unwrap();
    let ratio = &slow["since_start"]["latency"]["ratio"];
    let (lo, hi) = (ratio["lo"].as_f64().unwrap(), ratio["hi"].as_f64().unwrap());
    assert!(lo > 1.0 && lo < 1.15 + 0.05 && hi > 1.1, "{ratio}");
    // A reset starts comparing afresh.
    let (status, _, _) = send(
        &h1_client(),
        Request::post(format!("http://{}/api/reset", proxy.admin))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from("{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v = admin_json(&proxy, "/api/verdict").await;
    assert_eq!(v["state"], "no_data", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_follows_its_candidate_and_cannot_be_changed_alone() {
    let same = Version::default();
    let (p, _) = start_counted(same, 1).await;
    let (c, cand) = start_counted(same, 2).await;
    let (b, base) = start_counted(same, 3).await;
    let proxy = TestProxy::start(&config(p, c, b)).await;
    for i in 0..20 {
        assert_eq!(
            get(&proxy.url(&format!("/bin?{i}"))).await.0,
            StatusCode::OK
        );
    }
    assert_eventually!(
        cand.served.load(Ordering::Relaxed) == 20 && base.served.load(Ordering::Relaxed) == 20,
        "candidate {}, baseline {}: {}",
        cand.served.load(Ordering::Relaxed),
        base.served.load(Ordering::Relaxed),
        proxy
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("teeproxy_shadow_") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The baseline cannot be paused or re-percented on its own...
    let (status, body) = admin_post(
        proxy.admin,
        "/api/shadows/app/baseline",
        r#"{"paused": true}"#,
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    // ...and follows its candidate's pause: no copy goes to either.
    let (status, _) = admin_post(
        proxy.admin,
        "/api/shadows/app/candidate",
        r#"{"paused": true}"#,
        None,
    )
    .await;
    assert_eq!(status, 200);
    for i in 0..20 {
        assert_eq!(
            get(&proxy.url(&format!("/bin?p{i}"))).await.0,
            StatusCode::OK
        );
    }
    let m = proxy.metrics().await;
    let offered = |shadow: &str| {
        metric_value(
            &m,
            &format!("teeproxy_shadow_offered_total{{route=\"app\",shadow=\"{shadow}\"}}"),
        )
    };
    assert_eq!(
        offered("candidate"),
        40.0,
        "the candidate looked at every request"
    );
    assert_eq!(
        offered("baseline"),
        20.0,
        "the baseline only at those its candidate took"
    );
    assert_eq!(cand.served.load(Ordering::Relaxed), 20);
    assert_eq!(base.served.load(Ordering::Relaxed), 20);
    // Every paired observation made it: nothing unpaired.
    let v = admin_json(&proxy, "/api/verdict").await;
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "candidate")
        .unwrap();
    assert_eq!(row["unpaired"], 0, "{row}");
    assert_eq!(row["since_start"]["n"], 20, "{row}");
}
