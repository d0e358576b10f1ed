//! Request validation and limits from outside, on raw sockets: every refused request gets
//! its status and reaches no upstream.

use std::time::{Duration, Instant};

use teeproxy_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn setup(extra: &str) -> (FakeUpstream, TestProxy) {
    let up = FakeUpstream::start().await;
    let proxy = TestProxy::start(&format!("{}{extra}", simple_yaml(&[up.url()], ""))).await;
    (up, proxy)
}

/// Sends `request` raw; asserts the status and that the upstream received nothing.
async fn refused(request: &[u8], want: u16) {
    let (up, proxy) = setup("").await;
    let text = raw(proxy.addr, request).await;
    assert_eq!(
        raw_status(&text),
        want,
        "request {:?} answered {text:?}",
        String::from_utf8_lossy(request)
    );
    assert_eq!(
        up.count(),
        0,
        "nothing reaches the upstream for {:?}",
        String::from_utf8_lossy(request)
    );
    // The proxy is still serving.
    assert_eq!(get(&proxy.url("/after")).await.0, 200);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() {
    refused(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400).await;
    refused(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400).await;
}

#[tokio::test]
async fn smuggling_after_a_good_pipelined_request_is_400_and_only_the_good_one_is_forwarded() {
    let (up, proxy) = setup("").await;
    let text = raw(
        proxy.addr,
        b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 400"), "{text}");
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/ok");
    assert_eq!(got[0].body, "abc");
}

#[tokio::test]
async fn bad_framing_is_400() {
    let cases: [&[u8]; 7] = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for case in cases {
        refused(case, 400).await;
    }
}

#[tokio::test]
async fn transfer_encoding_with_another_coding_first_is_400() {
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn host_rules_are_enforced() {
    refused(b"GET / HTTP/1.1\r\n\r\n", 400).await;
    refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400).await;
}

#[tokio::test]
async fn obs_fold_and_bad_header_bytes_are_400() {
    refused(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
        400,
    )
    .await;
    refused(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n", 400).await;
    refused(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400).await;
}

#[tokio::test]
async fn connect_is_405() {
    refused(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        405,
    )
    .await;
}

#[tokio::test]
async fn limits_answer_414_and_431() {
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9 * 1024));
    refused(long_uri.as_bytes(), 414).await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70 * 1024)
    );
    refused(big_header.as_bytes(), 431).await;
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    refused(many_headers.as_bytes(), 431).await;
}

#[tokio::test]
async fn configured_limits_apply() {
    let (up, proxy) =
        setup("limits: { max_uri_bytes: 100, max_headers: 5, max_header_bytes: 8KiB }\n").await;
    let t = raw(
        proxy.addr,
        format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(120)).as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&t), 414);
    let t = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&t), 431);
    let t = raw(
        proxy.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "v".repeat(9000)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&t), 431);
    let t = raw(
        proxy.addr,
        format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "u".repeat(50)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&t), 200);
    assert_eq!(up.count(), 1);
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_rejected_requests_total{reason=\"uri_too_long\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn absolute_form_is_routed_by_our_config_and_forwarded_in_origin_form() {
    let (up, proxy) = setup("").await;
    let t = raw(proxy.addr, b"GET http://other.example/p?q=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(raw_status(&t), 200, "{t}");
    let got = &up.received()[0];
    assert_eq!(got.uri, "/p?q=1", "origin-form upstream");
    assert_eq!(got.headers["host"], "other.example");
}

#[tokio::test]
async fn upgrade_h2c_is_stripped_and_never_answered_with_101() {
    let (up, proxy) = setup("").await;
    let t = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&t), 200, "{t}");
    let h = &up.received()[0].headers;
    assert!(
        !h.contains_key("upgrade")
            && !h.contains_key("http2-settings")
            && !h.contains_key("connection")
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (up, proxy) = setup("").await;
    let t = raw(
        proxy.addr,
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(t.matches("HTTP/1.1 200").count(), 3, "{t}");
    let uris: Vec<String> = up.received().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(uris, ["/1", "/2", "/3"]);
    assert_eq!(up.received()[1].body, "hi");
}

#[tokio::test]
async fn silent_connection_is_closed_at_the_head_timeout() {
    let (_up, proxy) = setup("limits: { request_head_timeout: 300ms }\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let (text, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "closed by the proxy");
    assert!(text.is_empty());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn slowloris_head_is_closed_at_the_head_timeout() {
    let (up, proxy) = setup("limits: { request_head_timeout: 400ms }\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // Keep trickling header bytes: the head never completes.
    let trickle = async {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(format!("X-{i}: v\r\n").as_bytes())
                .await
                .is_err()
            {
                return Instant::now();
            }
        }
        Instant::now()
    };
    let writes_failed_at = trickle.await - started;
    assert!(
        writes_failed_at < Duration::from_millis(2500),
        "closed near the 400 ms limit, not after {writes_failed_at:?}"
    );
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(2)).await;
    assert!(closed);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn slow_partial_h2_preface_is_closed_too() {
    let (_up, proxy) = setup("limits: { request_head_timeout: 300ms }\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(3));
}
