//! Admin endpoints and metrics, graceful shutdown at the drain deadline and for HTTP/2.
//! (Gauges after a client leaves: black-box E27; a slow request finishing during the
//! drain: G35; the connection cap: D24.)

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use teeproxy_tests::*;

#[tokio::test]
async fn admin_serves_live_ready_and_metrics() {
    let up = FakeUpstream::start().await;
    let proxy = TestProxy::start(&simple_yaml(&[up.url()], "")).await;
    let admin = |p: &str| format!("http://{}{p}", proxy.admin);
    assert_eq!(get(&admin("/live")).await.0, StatusCode::OK);
    assert_eq!(get(&admin("/ready")).await.0, StatusCode::OK);
    assert_eq!(get(&admin("/nope")).await.0, StatusCode::NOT_FOUND);

    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/x")).await.0, StatusCode::OK);
    }
    let (status, headers, body) = get(&admin("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    // The Prometheus text format 0.0.4 unless the scraper asks for OpenMetrics (the
    // conversion and the negotiation are tested in proxy/tests/cli.rs and metrics/text.rs).
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let m = String::from_utf8(body.to_vec()).unwrap();
    assert!(!m.contains("# EOF"));
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_requests_total{route=\"all\",status_class=\"2xx\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_value(&m, "teeproxy_request_duration_seconds_count{route=\"all\"}"),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_upstream_requests_total{cluster=\"primary\",leg=\"primary\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_value(&m, "teeproxy_connections_total{listener=\"public\"}"),
        3.0
    );
    for family in [
        "teeproxy_requests_in_flight gauge",
        "teeproxy_open_connections gauge",
        "teeproxy_upstream_errors_total counter",
        "teeproxy_upstream_ejections_total counter",
        "teeproxy_rejected_requests_total counter",
        "teeproxy_request_duration_seconds histogram",
    ] {
        assert!(
            m.contains(&format!("# TYPE {family}\n")),
            "{family} missing from\n{m}"
        );
    }
    assert_eq!(metric_value(&m, "teeproxy_requests_in_flight"), 0.0);
}

/// An upstream answering `body` after `delay_ms`, behind a proxy with a 10 s drain.
async fn slow_upstream_behind_proxy(
    delay_ms: u64,
    body: &'static str,
) -> (FakeUpstream, TestProxy) {
    let up = FakeUpstream::builder()
        .delay(Duration::from_millis(delay_ms))
        .body(body)
        .start()
        .await;
    let proxy = TestProxy::start(&format!(
        "{}drain_timeout: 10s\n",
        simple_yaml(&[up.url()], "")
    ))
    .await;
    (up, proxy)
}

#[tokio::test]
async fn graceful_shutdown_gives_up_at_the_drain_deadline() {
    let up = FakeUpstream::builder()
        .delay(Duration::from_secs(30))
        .start()
        .await;
    let mut proxy = TestProxy::start(&format!(
        "{}drain_timeout: 300ms\n",
        simple_yaml(&[up.url()], "")
    ))
    .await;
    let url = proxy.url("/forever");
    let client_call = tokio::spawn(async move {
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        h1_client().request(req).await.map(|r| r.status())
    });
    assert_eventually!(up.count() == 1);
    let started = std::time::Instant::now();
    proxy.begin_shutdown();
    proxy.stopped().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopped at the deadline, not after the upstream"
    );
    assert!(
        client_call.await.unwrap().is_err(),
        "the unfinished request's connection is closed"
    );
}

#[tokio::test]
async fn h2_connections_get_goaway_and_finish_their_stream() {
    let (up, mut proxy) = slow_upstream_behind_proxy(500, "h2 done").await;
    let client = h2_client();
    let url = proxy.url("/h2slow");
    let c = client.clone();
    let call = tokio::spawn(async move {
        send(&c, Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
    });
    assert_eventually!(up.count() == 1);
    proxy.begin_shutdown();
    let (status, _, body) = call.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "h2 done");
    proxy.stopped().await;
}
