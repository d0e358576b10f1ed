//! Connection time limits kept by the connection's clock: idle keep-alive separate from
//! the request-head limit, a head trickled on a kept-alive connection; and requests
//! without a body moving on from an endpoint that refuses connections. (A client that
//! stops reading its response: black-box D23, `d_slow_reader`.)

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use teeproxy_tests::h1::expect_response;
use teeproxy_tests::*;

#[tokio::test]
async fn keep_alive_idle_time_is_not_cut_by_the_head_limit() {
    let up = FakeUpstream::start().await;
    let proxy = TestProxy::start(&format!(
        "{}limits: {{ request_head_timeout: 200ms, idle_timeout: 1500ms }}\n",
        simple_yaml(&[up.url()], "")
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(expect_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();

    // Three head limits later the idle connection is still open and still serves.
    let mut byte = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(600), s.read(&mut byte)).await;
    assert!(
        quiet.is_err(),
        "closed while idle under idle_timeout: {quiet:?}"
    );
    s.write_all(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(expect_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let idle_from = idle_from.max(Instant::now());

    // Then, idle for idle_timeout, it is closed and counted.
    let (rest, eof) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        eof && rest.is_empty(),
        "expected a plain close, got {rest:?}"
    );
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(1400), "closed after {idle:?}");
    assert_eq!(proxy.metric(&closed_metric("idle_timeout")).await, 1.0);
    assert_eq!(proxy.metric(&closed_metric("head_timeout")).await, 0.0);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_head_trickled_on_a_kept_alive_connection_is_cut_at_the_head_limit() {
    let up = FakeUpstream::start().await;
    let proxy = TestProxy::start(&format!(
        "{}limits: {{ request_head_timeout: 500ms, idle_timeout: 30s }}\n",
        simple_yaml(&[up.url()], "")
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(expect_response(&mut s).await.starts_with("HTTP/1.1 200"));

    let started = Instant::now();
    let head =
        b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut cut = false;
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut byte)).await {
            assert!(
                matches!(r, Ok(0) | Err(_)),
                "answered a partial head: {r:?}"
            );
            cut = true;
            break;
        }
    }
    assert!(cut, "the trickled head was never cut off");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "cut after {took:?}"
    );
    assert_eq!(proxy.metric(&closed_metric("head_timeout")).await, 1.0);
    assert_eq!(up.count(), 1, "nothing of the partial head went upstream");
}

#[tokio::test]
async fn requests_without_a_body_move_on_from_a_refusing_endpoint() {
    let up = FakeUpstream::builder().echo().start().await;
    let dead = closed_port().await;
    let proxy = TestProxy::start(&simple_yaml(
        &[format!("http://{dead}"), up.url()],
        "ejection_time: 30s",
    ))
    .await;
    // Round-robin starts at either endpoint: every request gets 200 either way.
    for i in 0..4 {
        let (status, _, _) = get(&proxy.url(&format!("/get/{i}"))).await;
        assert_eq!(status.as_u16(), 200, "request {i}");
    }
    assert_eq!(up.count(), 4);
    let refused = proxy
        .metric(
            "teeproxy_upstream_errors_total{cluster=\"primary\",leg=\"primary\",kind=\"connect\"}",
        )
        .await;
    assert!(
        refused <= 1.0,
        "the dead endpoint is ejected after one refusal"
    );

    // A request with a body is not resent (its body is already gone): with the dead
    // endpoint back in rotation it is answered 502, never sent twice.
    let proxy2 = TestProxy::start(&simple_yaml(
        &[format!("http://{dead}"), format!("http://{dead}")],
        "",
    ))
    .await;
    let req = http::Request::post(proxy2.url("/post"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.0.as_u16(), 502);
    let (status, _, _) = get(&proxy2.url("/get")).await;
    assert_eq!(
        status.as_u16(),
        502,
        "every endpoint refuses: 502 after trying them"
    );
    assert_eq!(
        proxy2
            .metric("teeproxy_upstream_errors_total{cluster=\"primary\",leg=\"primary\",kind=\"connect\"}")
            .await,
        3.0,
        "the POST tried once, the GET both endpoints"
    );
}

/// Half an HTTP/2 preface and then silence is closed at the head limit too. (The other
/// request-validation cases live in the black-box suite, `a_framing` and `b_headers`.)
#[tokio::test]
async fn slow_partial_h2_preface_is_closed_too() {
    let up = FakeUpstream::start().await;
    let proxy = TestProxy::start(&format!(
        "{}limits: {{ request_head_timeout: 300ms }}\n",
        simple_yaml(&[up.url()], "")
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(3));
}
