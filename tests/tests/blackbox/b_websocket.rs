//! B16: WebSocket upgrades are relayed to the primary only (101 passed through, bytes
//! spliced both ways) and never mirrored; a route with `websocket: false` refuses them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use teeproxy_tests::h1::read_head;
use teeproxy_tests::process::*;
use teeproxy_tests::*;

const UPGRADE: &str = "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn websocket_upgrades_are_relayed_to_the_primary_and_never_mirrored() {
    let primary = FakeUpstream::builder().upgrade_echo().start().await;
    let shadow = FakeUpstream::start().await;
    let mut p = ProxyProcess::start(&shadow_yaml(
        &primary.url(),
        &shadow.url(),
        "",
        "methods: any",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(UPGRADE.as_bytes()).await.unwrap();
    let resp = read_head(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{resp}");
    assert!(lower.contains("connection: upgrade"), "{resp}");
    assert!(lower.contains("sec-websocket-accept:"), "{resp}");
    // The primary saw the upgrade headers and the key.
    let h = primary.last_head().to_ascii_lowercase();
    assert!(
        h.contains("upgrade: websocket") && h.contains("sec-websocket-key:"),
        "{h}"
    );

    // Bytes flow both ways through the tunnel.
    for msg in [&b"hello"[..], b"second message", &[0u8, 1, 2, 255]] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(got, msg.to_ascii_uppercase());
    }
    assert_eq!(p.metric("teeproxy_tunnels").await, 1.0);
    drop(s);
    assert_eventually!(p.metric("teeproxy_tunnels").await == 0.0);
    assert_eq!(primary.count(), 1);
    assert_eq!(shadow.count(), 0, "an upgrade was mirrored");
    assert_eq!(
        p.metric(
            "teeproxy_shadow_dropped_total{route=\"all\",shadow=\"candidate\",reason=\"upgrade\"}"
        )
        .await,
        1.0
    );
    p.assert_alive();
}

#[tokio::test]
async fn a_route_without_websocket_refuses_upgrades_with_501() {
    let primary = FakeUpstream::builder().upgrade_echo().start().await;
    let yaml = simple_yaml(&[primary.url()], "").replace(
        "primary: primary\n",
        "primary: primary\n    websocket: false\n",
    );
    let mut p = ProxyProcess::start(&yaml).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(UPGRADE.as_bytes()).await.unwrap();
    let (text, eof) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&text), 501, "{text}");
    assert!(eof, "the connection is closed after the refusal");
    assert_eq!(primary.count(), 0);
    assert_eq!(
        p.metric("teeproxy_rejected_requests_total{reason=\"upgrade_refused\"}")
            .await,
        1.0
    );
    p.assert_alive();
}

/// A tunnel is still a client connection: it holds its slot under `max_connections`,
/// ends after `idle_timeout` without a byte either way, and does not hold up shutdown past
/// the drain deadline.
#[tokio::test]
async fn tunnels_hold_their_slot_end_when_idle_and_at_the_drain_deadline() {
    let primary = FakeUpstream::builder().upgrade_echo().start().await;
    let yaml = format!(
        "{}limits: {{ max_connections: 1, idle_timeout: 1500ms }}\ndrain_timeout: 1s\n",
        simple_yaml(&[primary.url()], "")
    );
    let mut p = ProxyProcess::start(&yaml).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(UPGRADE.as_bytes()).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"PING");

    // The one slot is the tunnel's: another connection is not served meanwhile.
    let waiting = http_get(p.addr(), "/other", Duration::from_millis(500)).await;
    assert_eq!(
        waiting, None,
        "served beside a tunnel holding the only slot"
    );

    // Idle for the limit: the tunnel is closed, the slot freed.
    let started = std::time::Instant::now();
    let (rest, eof) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(eof && rest.is_empty(), "tunnel not closed: {rest:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eventually!(p.metric("teeproxy_tunnels").await == 0.0);
    // Served now (this primary answers everything with 101: to a plain request, that is
    // a protocol error, 502).
    assert_eq!(
        http_get(p.addr(), "/other", Duration::from_secs(5))
            .await
            .map(|r| r.0),
        Some(502)
    );
    assert_eq!(
        p.metric(
            "teeproxy_upstream_errors_total{cluster=\"primary\",leg=\"primary\",kind=\"protocol\"}"
        )
        .await,
        1.0
    );

    // A busy tunnel at SIGTERM is cut at the drain deadline; the process exits 0.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(UPGRADE.as_bytes()).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
    let keep_busy = tokio::spawn(async move {
        let mut b = [0u8; 4];
        for _ in 0..100 {
            if s.write_all(b"busy").await.is_err() || s.read_exact(&mut b).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    assert_eventually!(p.metric("teeproxy_tunnels").await == 1.0);
    let stop = std::time::Instant::now();
    p.signal(Signal::Term);
    let status = p.wait_exit(Duration::from_secs(5)).await.expect("exited");
    assert!(status.success(), "{status}");
    assert!(
        stop.elapsed() < Duration::from_secs(4),
        "{:?}",
        stop.elapsed()
    );
    assert!(keep_busy.await.unwrap(), "the tunnel was cut");
}
