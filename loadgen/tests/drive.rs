//! `drive` against the fake upstreams: counts agree with what the upstream served, and
//! every fault mode is classified as its own error kind.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Method;
use teeproxy::demo::faults::{Fault, spawn_faulty};
use teeproxy::demo::{DemoUpstream, UpstreamStats, serve_upstream};
use teeproxy_loadgen::drive::{DriveOptions, Mode, drive};

fn options(target: std::net::SocketAddr, mode: Mode, duration: Duration) -> DriveOptions {
    DriveOptions {
        target: format!("http://{target}").parse().unwrap(),
        paths: vec![("/a".into(), 3), ("/b".into(), 1)],
        mode,
        duration,
        method: Method::GET,
        body_size: 0,
        headers: vec![],
        http2: false,
        timeout: Duration::from_millis(500),
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_agree_with_the_upstream_in_both_loops() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(UpstreamStats::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve_upstream(
        listener,
        DemoUpstream {
            name: "u".into(),
            ..Default::default()
        },
        stats.clone(),
        rx,
    ));

    let open = drive(options(
        addr,
        Mode::Open {
            rate: 200.0,
            connections: 8,
        },
        Duration::from_secs(1),
    ))
    .await;
    assert_eq!(open.sent, 200, "an open loop sends exactly rate x duration");
    assert_eq!(open.completed, 200);
    assert!(open.errors.is_empty(), "{:?}", open.errors);
    assert_eq!(open.statuses["2xx"], 200);
    assert_eq!(stats.requests.load(Ordering::Relaxed), 200);

    let closed = drive(options(
        addr,
        Mode::Closed { connections: 4 },
        Duration::from_millis(500),
    ))
    .await;
    assert!(closed.completed > 50, "{}", closed.summary());
    assert_eq!(closed.completed, closed.sent);
    assert_eq!(
        stats.requests.load(Ordering::Relaxed),
        200 + closed.completed
    );
    let json = closed.to_json();
    assert_eq!(json["completed"], closed.completed);
    assert!(
        json["latency_ms"]["p99"].as_f64().unwrap() >= json["latency_ms"]["p50"].as_f64().unwrap()
    );
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_is_its_own_error_kind() {
    for (fault, kind) in [
        (Fault::Blackhole, "timeout"),
        (Fault::Reset, "reset"),
        (Fault::Garbage, "protocol"),
        (Fault::CloseMidBody, "body"),
    ] {
        let (addr, received, stop) = spawn_faulty(fault).await.unwrap();
        let r = drive(options(
            addr,
            Mode::Open {
                rate: 20.0,
                connections: 20,
            },
            Duration::from_millis(500),
        ))
        .await;
        assert_eq!(r.sent, 10, "{fault:?}");
        assert_eq!(r.completed, 0, "{fault:?}");
        assert_eq!(r.errors.get(kind), Some(&10), "{fault:?}: {:?}", r.errors);
        assert_eq!(
            received.load(Ordering::Relaxed),
            10,
            "{fault:?}: the upstream counted every request"
        );
        let _ = stop.send(true);
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = drive(options(
        closed,
        Mode::Open {
            rate: 20.0,
            connections: 20,
        },
        Duration::from_millis(250),
    ))
    .await;
    assert_eq!(r.errors.get("connect"), Some(&5), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_body_size_and_h2c_drive() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let behaviour = DemoUpstream {
        name: "u".into(),
        status: Some(http::StatusCode::SERVICE_UNAVAILABLE),
        body: Some(bytes::Bytes::from(vec![b'z'; 1500])),
        jitter: Duration::from_millis(2),
        ..Default::default()
    };
    tokio::spawn(serve_upstream(
        listener,
        behaviour,
        Arc::new(UpstreamStats::default()),
        rx,
    ));

    let r = drive(options(
        addr,
        Mode::Open {
            rate: 50.0,
            connections: 5,
        },
        Duration::from_millis(400),
    ))
    .await;
    assert_eq!(r.statuses.get("5xx"), Some(&20), "{:?}", r.statuses);

    // The body size, seen by a plain client.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client
        .get(format!("http://{addr}/any").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    use http_body_util::BodyExt;
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes().len(),
        1500
    );

    // h2c: the demo upstream speaks both.
    let mut h2 = options(
        addr,
        Mode::Closed { connections: 2 },
        Duration::from_millis(300),
    );
    h2.http2 = true;
    let r = drive(h2).await;
    assert!(r.completed > 0 && r.errors.is_empty(), "{}", r.summary());
    let _ = stop.send(true);
}
