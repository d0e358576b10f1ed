//! Tier-2 tests: the shadow leg's mechanisms and the handler, driven in memory. Requests
//! are built in memory and given to `Proxy::handle` (or written as bytes into
//! `App::serve_stream` over an in-memory duplex); upstreams are small in-process servers on
//! 127.0.0.1:0. Time is paused where a mechanism is about time (the circuit); elsewhere
//! waits are bounded. Each test names, in its comment, the mechanism it would catch broken.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use crate::app::App;
use crate::config::Config;
use crate::metrics::{DropReason, Metrics};
use crate::proxy::conn::ConnInfo;
use crate::proxy::snapshot::{Shared, Snapshot};
use crate::reload::Reload;
use crate::shadow::dispatch::Dispatcher;
use crate::shadow::pending::{Captured, Pending, Plan};
use crate::shadow::queue::{
    CANCELLED, CIRCUIT_FAILURES, CIRCUIT_OPEN_FOR, Circuit, PrimaryOutcome, ShadowJob,
};
use crate::stats::PathEntry;

// ---------------------------------------------------------------------------------------
// Kit
// ---------------------------------------------------------------------------------------

/// Polls `cond` every 5 ms for up to 5 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened within 5 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A value of `/metrics`: the sum of every sample whose line starts with `prefix`.
fn metric(registry: &Registry, prefix: &str) -> f64 {
    crate::metrics::encode(registry)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn dropped(registry: &Registry, reason: &str) -> f64 {
    metric(
        registry,
        &format!(
            "teeproxy_shadow_dropped_total{{route=\"all\",shadow=\"candidate\",reason=\"{reason}"
        ),
    )
}

/// An upstream answering every request with `status` and `body` (after `gate` is
/// notified, when there is one); counts requests and keeps the last request body.
struct Upstream {
    addr: SocketAddr,
    /// Requests answered.
    hits: Arc<AtomicUsize>,
    /// Requests received (before the gate).
    arrived: Arc<AtomicUsize>,
}

async fn upstream(status: u16, body: &'static str, gate: Option<Arc<Notify>>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (counted, seen) = (hits.clone(), arrived.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hits = counted.clone();
            let arrived = seen.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    let arrived = arrived.clone();
                    let gate = gate.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        arrived.fetch_add(1, Ordering::SeqCst);
                        if let Some(g) = gate {
                            g.notified().await;
                        }
                        hits.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        hits,
        arrived,
    }
}

/// One HTTP/1.1 exchange on a fresh connection: the status line's code and the text.
async fn http1(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

/// Accepts connections and never answers (a black-holed shadow).
async fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

fn yaml(primary: SocketAddr, candidate: SocketAddr, cluster: &str, shadow: &str) -> String {
    format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
         admin: {{ address: \"127.0.0.1:0\" }}\n\
         access_log: {{ enabled: false }}\n\
         clusters:\n  primary: {{ endpoints: [\"http://{primary}\"] }}\n  candidate: {{ endpoints: [\"http://{candidate}\"]{cluster} }}\n\
         routes:\n  - name: all\n    primary: primary\n    shadows: [{{ cluster: candidate{shadow} }}]\n"
    )
}

fn app(yaml: &str) -> (App, Registry) {
    let mut registry = Registry::default();
    let app = App::build(Config::from_yaml(yaml).unwrap(), &mut registry);
    (app, registry)
}

fn conn() -> ConnInfo {
    ConnInfo::new("10.0.0.1:5000".parse().unwrap(), Duration::from_secs(60))
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "app.example")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A snapshot built from YAML whose dispatchers are not started: the test holds the
/// receiving ends of the shadow queues.
fn snapshot(cluster: &str, shadow: &str) -> (Snapshot, Vec<Dispatcher>, Registry) {
    let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut registry = Registry::default();
    let config = Arc::new(Config::from_yaml(&yaml(a, a, cluster, shadow)).unwrap());
    let shared = Shared::new(Metrics::new(&mut registry), &config);
    let (snap, dispatchers) = Snapshot::build(config, &shared, None);
    (snap, dispatchers, registry)
}

/// One request's rendezvous, targeting the route's only shadow.
fn pending(snap: &Snapshot) -> (Arc<Pending>, Arc<PathEntry>) {
    pending_copies(snap, 1)
}

/// One request's rendezvous, with `copies` copies for the route's only shadow.
fn pending_copies(snap: &Snapshot, copies: u8) -> (Arc<Pending>, Arc<PathEntry>) {
    let route = &snap.routes[0];
    let path = route.paths.entry("/x");
    let p = Pending::new(Plan {
        targets: route.shadows.iter().map(|p| (p.clone(), copies)).collect(),
        method: http::Method::POST,
        path_and_query: http::uri::PathAndQuery::from_static("/x?q=1"),
        headers: HeaderMap::new(),
        host: None,
        request_id: http::HeaderValue::from_static("id-1"),
        path: path.clone(),
        trace: None,
        route_primary_names: route.shadow_primary_names.clone(),
    });
    (Arc::new(p), path)
}

fn answered(status: u16) -> PrimaryOutcome {
    PrimaryOutcome {
        status: Some(StatusCode::from_u16(status).unwrap()),
        error: None,
        headers: HeaderMap::new(),
        to_headers: None,
        head_at: None,
        paired: None,
        trailers: None,
    }
}

fn complete(chunks: &[&'static str]) -> Captured {
    let chunks: Vec<Bytes> = chunks
        .iter()
        .map(|c| Bytes::from_static(c.as_bytes()))
        .collect();
    let len = chunks.iter().map(|c| c.len() as u64).sum();
    Captured::Complete {
        chunks,
        trailers: None,
        len,
        ended: std::time::Instant::now(),
    }
}

// ---------------------------------------------------------------------------------------
// The rendezvous of the body and the primary's answer
// ---------------------------------------------------------------------------------------

/// Catches: a copy offered before both halves are in (either order), or offered twice.
#[tokio::test]
async fn a_copy_is_offered_once_when_both_the_body_and_the_primary_answer_are_in() {
    for body_first in [true, false] {
        let (snap, dispatchers, registry) = snapshot("", ", methods: any");
        let mut rx = dispatchers.into_iter().next().unwrap().into_receiver();
        let (p, _) = pending(&snap);
        if body_first {
            p.body_done(complete(&["ab", "cd"]));
        } else {
            p.primary_done(answered(201));
        }
        assert!(rx.try_recv().is_err(), "one half alone offers nothing");
        if body_first {
            p.primary_done(answered(201));
        } else {
            p.body_done(complete(&["ab", "cd"]));
        }
        let job: ShadowJob = rx.try_recv().expect("offered once both are in");
        assert_eq!(job.body, ["ab", "cd"]);
        assert_eq!(job.body_len, 4);
        assert_eq!(job.primary.status, Some(StatusCode::CREATED));
        assert_eq!(job.path_and_query.as_str(), "/x?q=1");
        assert!(rx.try_recv().is_err(), "offered exactly once");
        assert_eq!(dropped(&registry, ""), 0.0);
    }
}

/// Catches: a truncated, oversized or cancelled request copied instead of dropped with
/// its reason.
#[tokio::test]
async fn an_incomplete_oversized_or_cancelled_request_is_dropped_with_its_reason() {
    let cases = [
        (Captured::Incomplete, answered(200), "body_incomplete"),
        (Captured::TooLarge, answered(200), "body_too_large"),
        (
            complete(&["x"]),
            PrimaryOutcome {
                status: None,
                error: Some(CANCELLED),
                headers: HeaderMap::new(),
                to_headers: None,
                head_at: None,
                paired: None,
                trailers: None,
            },
            "cancelled",
        ),
    ];
    for (body, primary, reason) in cases {
        let (snap, dispatchers, registry) = snapshot("", ", methods: any");
        let mut rx = dispatchers.into_iter().next().unwrap().into_receiver();
        let (p, path) = pending(&snap);
        p.primary_done(primary);
        p.body_done(body);
        assert!(rx.try_recv().is_err(), "{reason}: nothing queued");
        assert_eq!(dropped(&registry, reason), 1.0, "{reason}");
        let per_path: u64 = path.shadows[0]
            .drop_counts()
            .into_iter()
            .filter(|(r, _)| format!("{r:?}") == reason)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(per_path, 1, "{reason} counted for the path too");
    }
}

// ---------------------------------------------------------------------------------------
// The queue: byte budget
// ---------------------------------------------------------------------------------------

/// Catches: the byte budget not enforced, or not given back when a copy is done.
#[tokio::test]
async fn the_byte_budget_drops_copies_past_it_and_frees_what_a_finished_copy_held() {
    let (snap, dispatchers, registry) =
        snapshot(", shadow_max_bytes: 100B", ", methods: any, max_body: 100B");
    let mut rx = dispatchers.into_iter().next().unwrap().into_receiver();
    let queue = snap.routes[0].shadows[0].queue.clone();
    let sixty = "012345678901234567890123456789012345678901234567890123456789";
    let offer = || {
        let (p, _) = pending(&snap);
        p.primary_done(answered(200));
        p.body_done(complete(&[sixty]));
    };
    offer();
    assert_eq!(queue.held_bytes(), 60);
    offer();
    assert_eq!(dropped(&registry, "queue_full"), 1.0, "60 + 60 > 100");
    assert_eq!(queue.held_bytes(), 60, "the refused copy holds nothing");
    let first = rx.try_recv().expect("the first copy was queued");
    assert!(rx.try_recv().is_err());
    drop(first);
    assert_eq!(
        queue.held_bytes(),
        0,
        "a finished copy gives its bytes back"
    );
    offer();
    assert!(rx.try_recv().is_ok(), "room again");
    assert_eq!(
        metric(
            &registry,
            "teeproxy_shadow_held_bytes{shadow=\"candidate\"}"
        ),
        0.0,
        "the gauge follows"
    );
}

/// Catches: amplified copies charged once each (a 60-byte body at amplify 3 would need
/// 180 bytes of budget though it is held once), or the shared charge given back before
/// the last copy is done; copies that miss their index or their own job.
#[tokio::test]
async fn amplified_copies_share_one_byte_charge_until_the_last_is_done() {
    let (snap, dispatchers, registry) = snapshot(
        ", shadow_max_bytes: 100B",
        ", methods: any, max_body: 100B, amplify: 3, amplify_writes: true",
    );
    let mut rx = dispatchers.into_iter().next().unwrap().into_receiver();
    let queue = snap.routes[0].shadows[0].queue.clone();
    let sixty = "012345678901234567890123456789012345678901234567890123456789";
    let (p, _) = pending_copies(&snap, 3);
    p.primary_done(answered(200));
    p.body_done(complete(&[sixty]));
    let copies: Vec<ShadowJob> = (0..3).map(|_| rx.try_recv().expect("queued")).collect();
    assert!(rx.try_recv().is_err());
    assert_eq!(queue.held_bytes(), 60, "one body, one charge");
    let indexes: Vec<u8> = copies.iter().map(|j| j.copy).collect();
    assert_eq!(indexes, [1, 2, 3]);
    for (j, i) in copies.iter().zip(1..) {
        assert_eq!(j.headers["x-teeproxy-copy"], i.to_string());
        assert_eq!(j.body_len, 60);
        assert!(j.primary_body.is_none(), "no body comparison configured");
    }
    let mut copies = copies.into_iter();
    drop(copies.next());
    drop(copies.next());
    assert_eq!(queue.held_bytes(), 60, "still held by the third copy");
    drop(copies);
    assert_eq!(queue.held_bytes(), 0);
    assert_eq!(
        metric(
            &registry,
            "teeproxy_shadow_offered_total{route=\"all\",shadow=\"candidate\"}"
        ),
        0.0,
        "offered is counted at admission, which this test skips"
    );
}

/// Catches: a full queue waiting (or growing) instead of dropping `queue_full`.
#[tokio::test]
async fn a_full_queue_drops_at_once() {
    let (snap, dispatchers, registry) = snapshot(", shadow_queue: 2", ", methods: any");
    let mut rx = dispatchers.into_iter().next().unwrap().into_receiver();
    for _ in 0..5 {
        let (p, _) = pending(&snap);
        p.primary_done(answered(200));
        p.body_done(complete(&[]));
    }
    assert_eq!(dropped(&registry, "queue_full"), 3.0);
    assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
    assert_eq!(
        metric(
            &registry,
            "teeproxy_shadow_queue_depth{shadow=\"candidate\"}"
        ),
        2.0
    );
}

/// Catches: a copy planned (its headers copied, its body kept) for a queue that is
/// already full or a circuit already open when the request arrives, or a refusal there
/// that is not counted (`offered = sent + dropped`).
#[tokio::test]
async fn a_full_queue_or_an_open_circuit_refuses_the_copy_when_the_request_arrives() {
    let (snap, dispatchers, registry) = snapshot(", shadow_queue: 1", ", methods: any");
    let mut rx = dispatchers.into_iter().next().unwrap().into_receiver();
    let policy = &snap.routes[0].shadows[0];
    let path = snap.routes[0].paths.entry("/x");
    let parts = Request::post("/x").body(()).unwrap().into_parts().0;
    assert_eq!(policy.admit(&parts, true, Some(1), &path), Ok(1));
    let (p, _) = pending(&snap);
    p.primary_done(answered(200));
    p.body_done(complete(&["x"]));
    assert_eq!(
        policy.admit(&parts, true, Some(1), &path),
        Err(DropReason::queue_full),
        "the queue's one place is taken"
    );
    assert_eq!(dropped(&registry, "queue_full"), 1.0);
    assert!(rx.try_recv().is_ok());
    assert_eq!(
        policy.admit(&parts, true, Some(1), &path),
        Ok(1),
        "room again"
    );
    for _ in 0..CIRCUIT_FAILURES {
        policy.queue.circuit().connect_failed();
    }
    assert_eq!(
        policy.admit(&parts, true, Some(1), &path),
        Err(DropReason::circuit_open)
    );
    assert_eq!(dropped(&registry, "circuit_open"), 1.0);
    let offered = metric(
        &registry,
        "teeproxy_shadow_offered_total{route=\"all\",shadow=\"candidate\"}",
    );
    // Four admissions and the one copy offered through the rendezvous (which counts
    // nothing as offered: admission does).
    assert_eq!(offered, 4.0);
}

// ---------------------------------------------------------------------------------------
// The circuit
// ---------------------------------------------------------------------------------------

/// Catches: the circuit opening early or never, copies spent on an open circuit, or a
/// circuit that never closes by itself.
#[tokio::test(start_paused = true)]
async fn the_circuit_opens_after_refused_connections_drops_copies_and_closes_by_itself() {
    let (snap, dispatchers, registry) = snapshot("", ", methods: any");
    let mut rx = dispatchers.into_iter().next().unwrap().into_receiver();
    let circuit: &Circuit = snap.routes[0].shadows[0].queue.circuit();
    for _ in 1..CIRCUIT_FAILURES {
        circuit.connect_failed();
    }
    assert!(!circuit.is_open(), "one failure short");
    circuit.connected();
    for _ in 1..CIRCUIT_FAILURES {
        circuit.connect_failed();
    }
    assert!(!circuit.is_open(), "a connection resets the count");
    circuit.connect_failed();
    assert!(circuit.is_open());
    let (p, _) = pending(&snap);
    p.primary_done(answered(200));
    p.body_done(complete(&["x"]));
    assert!(rx.try_recv().is_err(), "no work while open");
    assert_eq!(dropped(&registry, "circuit_open"), 1.0);
    tokio::time::advance(CIRCUIT_OPEN_FOR - Duration::from_millis(10)).await;
    assert!(circuit.is_open());
    tokio::time::advance(Duration::from_millis(20)).await;
    assert!(!circuit.is_open(), "closes by itself");
    let (p, _) = pending(&snap);
    p.primary_done(answered(200));
    p.body_done(complete(&["x"]));
    assert!(rx.try_recv().is_ok(), "a probe goes through");
}

// ---------------------------------------------------------------------------------------
// The handler, with dispatchers running
// ---------------------------------------------------------------------------------------

/// Catches: the drain not stopping the queues, queued copies neither sent nor counted
/// (`offered = sent + dropped` broken), or a dispatcher that outlives the drain.
#[tokio::test]
async fn the_shadow_drain_sends_until_its_deadline_and_counts_the_rest_shutdown() {
    let primary = upstream(200, "{}", None).await;
    let hole = black_hole().await;
    let (app, registry) = app(&yaml(
        primary.addr,
        hole,
        ", shadow_max_in_flight: 1, shadow_queue: 10",
        ", timeout: 30s",
    ));
    for _ in 0..5 {
        let resp = app.proxy().handle(get("/a"), conn()).await;
        assert_eq!(resp.status(), StatusCode::OK, "the primary never waits");
    }
    // One copy in flight, one taken off the queue waiting for the in-flight slot, three
    // queued.
    eventually("one copy in flight, three queued", || {
        let a = app.activity("all", "candidate");
        a.sent == 1 && a.queue_depth == 3
    })
    .await;
    assert_eq!(app.shadow_dispatchers(), 1);
    tokio::time::timeout(
        Duration::from_secs(5),
        app.drain_shadows(Duration::from_millis(200)),
    )
    .await
    .expect("the drain ends by its deadline");
    let a = app.activity("all", "candidate");
    assert_eq!(a.offered, 5);
    assert_eq!(a.sent, 1);
    assert_eq!(dropped(&registry, "shutdown"), 4.0);
    assert_eq!(a.offered, a.sent + a.dropped);
    assert_eq!((a.queue_depth, a.shadow_in_flight, a.held_bytes), (0, 0, 0));
    assert_eq!(
        metric(
            &registry,
            "teeproxy_shadow_outcomes_total{route=\"all\",shadow=\"candidate\",outcome=\"aborted\"}"
        ),
        1.0,
        "the copy in flight at the deadline"
    );
    assert_eq!(app.shadow_dispatchers(), 0);
}

/// Catches: an old config's queue kept open after its last request (a queued job or the
/// reload holding its sender), its dispatcher never ending, or copies of requests still
/// running on the old config lost.
#[tokio::test]
async fn a_reload_retires_the_old_queue_once_its_last_request_is_done() {
    let gate = Arc::new(Notify::new());
    let primary = upstream(200, "{}", Some(gate.clone())).await;
    let shadow = upstream(200, "{}", None).await;
    let old_yaml = yaml(primary.addr, shadow.addr, "", "");
    let (app, registry) = app(&old_yaml);
    let app = Arc::new(app);
    assert_eq!(app.shadow_dispatchers(), 1);
    // A request on the old config, held at the primary.
    let held = tokio::spawn({
        let app = app.clone();
        async move { app.proxy().handle(get("/old"), conn()).await.status() }
    });
    eventually("the request reached the handler", || {
        app.activity("all", "candidate").offered == 1
    })
    .await;
    let new_yaml = old_yaml.replace("routes:", "mismatch_ring: 5\nroutes:");
    app.reload(Reload::Apply(Box::new(
        Config::from_yaml(&new_yaml).unwrap(),
    )));
    assert_eq!(
        app.shadow_dispatchers(),
        2,
        "the old queue stays open while a request holds its snapshot"
    );
    assert_eq!(
        metric(&registry, "teeproxy_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    // A request on the new config is served and copied too.
    gate.notify_one();
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    let fresh = tokio::spawn({
        let app = app.clone();
        async move { app.proxy().handle(get("/new"), conn()).await.status() }
    });
    eventually("the new request is at the primary", || {
        app.activity("all", "candidate").offered == 2
    })
    .await;
    gate.notify_one();
    assert_eq!(fresh.await.unwrap(), StatusCode::OK);
    eventually("the old dispatcher ended by itself", || {
        app.shadow_dispatchers() == 1
    })
    .await;
    eventually("both copies reached the shadow", || {
        shadow.hits.load(Ordering::SeqCst) == 2
    })
    .await;
    let a = app.activity("all", "candidate");
    assert_eq!((a.offered, a.sent, a.dropped), (2, 2, 0));
}

/// Catches: a retired config's queue sending what it still holds without a deadline (a
/// black-holed shadow would keep the old dispatcher for queue x timeout), or its leftovers
/// not counted.
#[tokio::test]
async fn a_retired_queue_gets_the_shadow_drain_then_counts_the_rest_shutdown() {
    let primary = upstream(200, "{}", None).await;
    let hole = black_hole().await;
    let yaml = yaml(
        primary.addr,
        hole,
        ", shadow_max_in_flight: 1, shadow_queue: 10",
        ", timeout: 30s",
    )
    .replace("routes:", "shadow_drain: 200ms\nroutes:");
    let (app, registry) = app(&yaml);
    for _ in 0..3 {
        assert_eq!(
            app.proxy().handle(get("/a"), conn()).await.status(),
            StatusCode::OK
        );
    }
    eventually(
        "one copy in flight, one waiting for a slot, one queued",
        || {
            let a = app.activity("all", "candidate");
            a.sent == 1 && a.queue_depth == 1
        },
    )
    .await;
    app.reload(Reload::Apply(Box::new(Config::from_yaml(&yaml).unwrap())));
    // No request holds the old snapshot: its queue is closed now.
    eventually(
        "the retired dispatcher ended within the shadow drain",
        || app.shadow_dispatchers() == 1,
    )
    .await;
    let a = app.activity("all", "candidate");
    assert_eq!((a.offered, a.sent), (3, 1));
    assert_eq!(dropped(&registry, "shutdown"), 2.0);
    assert_eq!(a.offered, a.sent + a.dropped);
    assert_eq!(
        metric(
            &registry,
            "teeproxy_shadow_outcomes_total{route=\"all\",shadow=\"candidate\",outcome=\"aborted\"}"
        ),
        1.0
    );
    assert_eq!((a.queue_depth, a.shadow_in_flight, a.held_bytes), (0, 0, 0));
}

/// Catches: reloads ignored once shutdown starts (a SIGHUP during the drain must still be
/// applied or counted until the connections are drained).
#[tokio::test]
async fn a_reload_during_the_drain_is_still_applied() {
    let gate = Arc::new(Notify::new());
    let primary = upstream(200, "{}", Some(gate.clone())).await;
    let shadow = upstream(200, "{}", None).await;
    let config = Config::from_yaml(&yaml(primary.addr, shadow.addr, "", "")).unwrap();
    let listeners = crate::app::Listeners::bind(&config).await.unwrap();
    let (proxy_addr, admin) = (listeners.proxy_addrs()[0], listeners.admin_addr().unwrap());
    let mut registry = Registry::default();
    let app = App::build(config, &mut registry);
    let (reload_tx, reloads) = mpsc::channel(4);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(app.serve(
        listeners,
        registry,
        async move {
            let _ = stop_rx.await;
        },
        reloads,
    ));
    let held = tokio::spawn(http1(proxy_addr, "/slow"));
    let arrived = primary.arrived.clone();
    eventually("the request is at the primary", || {
        arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    stop_tx.send(()).unwrap();
    let mut ready = 200;
    for _ in 0..500 {
        ready = http1(admin, "/ready").await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 503, "draining");
    reload_tx
        .send(Reload::Failed("broken file".into()))
        .await
        .unwrap();
    let counted = "teeproxy_config_reloads_total{result=\"error\"} 1";
    // The reload is taken while the request still holds the drain open.
    for _ in 0..500 {
        if http1(admin, "/metrics").await.1.contains(counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.notify_one();
    assert_eq!(held.await.unwrap().0, 200, "the in-flight request finished");
    let last = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("stopped in time")
        .unwrap();
    assert!(last.contains(counted), "{last}");
}

/// Catches: answers compared wrongly or not recorded (mismatch ring, per-path results).
#[tokio::test]
async fn a_different_shadow_answer_is_recorded_as_a_mismatch_with_its_difference() {
    let primary = upstream(200, r#"{"a":1,"b":[1,2]}"#, None).await;
    let shadow = upstream(200, r#"{"b":[1,2],"a":2}"#, None).await;
    let (app, registry) = app(&yaml(
        primary.addr,
        shadow.addr,
        "",
        ", compare: { body: json }",
    ));
    let resp = app.proxy().handle(get("/users/42"), conn()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &body[..],
        br#"{"a":1,"b":[1,2]}"#,
        "the client gets the primary's"
    );
    let compared = "teeproxy_compare_results_total{route=\"all\",path=\"/users/{id}\",shadow=\"candidate\",result=\"body_mismatch\"}";
    eventually("the comparison is recorded", || {
        metric(&registry, compared) == 1.0
    })
    .await;
    let groups = app.mismatches();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].count, groups[0].fields.as_slice()),
        (1, &["/a".to_string()][..])
    );
    let m = &groups[0].example;
    assert_eq!(
        (m.raw_path.as_str(), m.path.as_str()),
        ("/users/42", "/users/{id}")
    );
    assert_eq!(m.result, "body_mismatch");
    assert_eq!(m.diff[0].at, "/a");
}

/// Catches: the connection layer (detection, HTTP/1 framing, the handler's answer, the
/// request id) broken for a stream that is not a socket.
#[tokio::test]
async fn serve_stream_answers_http1_bytes_over_an_in_memory_stream() {
    let primary = upstream(200, "hello", None).await;
    let shadow = upstream(200, "hello", None).await;
    let (app, _registry) = app(&yaml(primary.addr, shadow.addr, "", ""));
    let app = Arc::new(app);
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn({
        let app = app.clone();
        async move {
            app.serve_stream(server, "10.0.0.2:4000".parse().unwrap())
                .await
        }
    });
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
        .await
        .expect("answered and closed in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-request-id: "),
        "{text}"
    );
    assert!(text.ends_with("hello"), "{text}");
    serving.await.unwrap();
    eventually("the copy reached the shadow", || {
        shadow.hits.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(primary.hits.load(Ordering::SeqCst), 1);
}
