//! D23: a client that stops reading its response: buffering stays bounded and the
//! connection is closed at `limits.write_timeout`, its gauges back to zero. The memory
//! bound is checked where /proc is readable; the rest everywhere.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use teeproxy_tests::process::*;
use teeproxy_tests::*;

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_bounded_buffering() {
    let primary = FakeUpstream::builder()
        .body(vec![b'x'; 64 << 20])
        .start()
        .await;
    let mut p = ProxyProcess::start(&format!(
        "{}limits: {{ write_timeout: 1s }}\n",
        simple_yaml(&[primary.url()], "")
    ))
    .await;
    let rss_before = p.usage().map(|u| u.rss_kib);
    if rss_before.is_none() {
        eprintln!(
            "SKIPPED the memory bound of d23: /proc/{} unreadable",
            p.pid()
        );
    }
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    assert_eventually!(primary.count() == 4);
    let mut peak = 0;
    let closed = &closed_metric("write_timeout");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.metric(closed).await < 4.0 {
        if rss_before.is_some() {
            peak = peak.max(p.usage_now().rss_kib);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all four closed in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Four 64 MiB responses: the proxy holds a small window of each, not the bodies.
    if let Some(rss_before) = rss_before {
        assert!(
            peak < rss_before + 48 * 1024,
            "RSS peaked at {peak} KiB (from {rss_before})"
        );
    }
    for mut s in stalled {
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got += n,
                Err(_) => panic!("a stalled connection stayed open"),
            }
        }
        assert!(got < 64 << 20, "a stalled client got the whole body");
    }
    assert_eventually!(p.metric("teeproxy_requests_in_flight").await == 0.0);
    assert_eventually!(
        p.metric("teeproxy_open_connections{listener=\"public\"}")
            .await
            == 0.0
    );
    p.assert_alive();
    assert_eq!(
        http_get(p.addr(), "/after", Duration::from_secs(10))
            .await
            .map(|r| r.0),
        Some(200)
    );
}
