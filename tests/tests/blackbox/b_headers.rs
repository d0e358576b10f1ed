//! B. Headers, Host, methods: cases B9-B15 and B17 (B16, WebSocket, is elsewhere).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;

/// B9: over-long URI -> 414, oversized head -> 431, too many headers -> 431; nothing
/// forwarded. Also with configured (lower) limits.
#[tokio::test]
async fn b9_oversized_uri_head_and_header_count_are_refused() {
    let mut rig = Rig::start("").await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(9 * 1024));
    let big_header = format!(
        "GET /b9 HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70 * 1024)
    );
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /b9 HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    for (req, want) in [(long_uri, 414), (big_header, 431), (many_headers, 431)] {
        let (p, s) = (rig.primary.count(), rig.shadow.count());
        let ex = exchange(rig.addr(), req.as_bytes()).await;
        assert_eq!(ex.status(), want, "{}", ex.text());
        rig.settle().await;
        assert_eq!((rig.primary.count(), rig.shadow.count()), (p, s));
    }
    rig.assert_healthy().await;

    let mut low =
        Rig::start("limits: { max_uri_bytes: 100, max_headers: 5, max_header_bytes: 8KiB }\n")
            .await;
    for (req, want) in [
        (
            format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(120)),
            414,
        ),
        (
            "GET /b9 HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1\r\n\r\n"
                .to_string(),
            431,
        ),
        (
            format!(
                "GET /b9 HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
                "v".repeat(9000)
            ),
            431,
        ),
    ] {
        let ex = exchange(low.addr(), req.as_bytes()).await;
        assert_eq!(ex.status(), want, "{}", ex.text());
    }
    low.settle().await;
    assert_eq!((low.primary.count(), low.shadow.count()), (0, 0));
    // Under the configured limits a request is served; each refusal is counted by reason.
    let ex = exchange(
        low.addr(),
        format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "u".repeat(50)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(ex.status(), 200, "{}", ex.text());
    low.settle().await;
    assert_eq!((low.primary.count(), low.shadow.count()), (1, 1));
    assert_eq!(
        low.proxy
            .metric("teeproxy_rejected_requests_total{reason=\"uri_too_long\"}")
            .await,
        1.0
    );
    low.assert_healthy().await;
}

/// B10: HTTP/1.1 without `Host`, or with two: 400 and close, nothing forwarded.
#[tokio::test]
async fn b10_missing_or_doubled_host_is_400() {
    let mut rig = Rig::start("").await;
    rig.refused(b"GET /b10 HTTP/1.1\r\n\r\n", &[400]).await;
    rig.refused(b"GET /b10 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &[400])
        .await;
    rig.refused(b"GET /b10 HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", &[400])
        .await;
    rig.assert_healthy().await;
}

/// B11: an absolute-form request naming another server is routed by the config only:
/// the configured primary gets it in origin-form, the named server gets nothing.
#[tokio::test]
async fn b11_absolute_form_is_never_an_open_proxy() {
    let mut rig = Rig::start("").await;
    let decoy = FakeUpstream::start().await;
    let req = format!(
        "GET http://{0}/b11/p?q=1 HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        decoy.addr
    );
    let ex = exchange(rig.addr(), req.as_bytes()).await;
    assert_eq!(ex.status(), 200, "{}", ex.text());
    assert_eq!(ex.responses()[0].body_text(), PRIMARY_BODY);
    rig.settle().await;
    for (leg, up) in [("primary", &rig.primary), ("shadow", &rig.shadow)] {
        let got = up.received();
        assert_eq!(got.len(), 1, "{leg}");
        assert_eq!(got[0].uri, "/b11/p?q=1", "{leg}: origin-form");
    }
    assert_eq!(
        rig.primary.received()[0].headers["host"],
        decoy.addr.to_string(),
        "the client's Host is forwarded as sent"
    );
    assert_eq!(decoy.count(), 0, "the named server was never contacted");
    rig.assert_healthy().await;
}

/// B12: hop-by-hop headers (`Connection` and what it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Upgrade: h2c`, `HTTP2-Settings`) reach neither leg;
/// `Connection: close, Host, X-Forwarded-For` keeps `Host` and `X-Forwarded-For`; the
/// primary's hop-by-hop response headers do not reach the client; no 101 for the h2c
/// offer.
#[tokio::test]
async fn b12_hop_by_hop_headers_are_removed_both_ways() {
    let mut rig = Rig::with(
        FakeUpstream::builder()
            .header("keep-alive", "timeout=99")
            .header("proxy-connection", "keep-alive")
            .header("x-resp-hop", "secret")
            .header("connection", "x-resp-hop")
            .header("x-resp-kept", "yes"),
        "methods: any",
        "",
    )
    .await;
    let ex = exchange(
        rig.addr(),
        b"GET /b12 HTTP/1.1\r\nHost: app.example\r\nConnection: close, x-hop, Host, X-Forwarded-For, Keep-Alive, TE\r\nX-Hop: gone\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers, deflate\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Forwarded-For: 203.0.113.9\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = ex.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200], "no 101: {}", ex.text());
    let resp = &ex.responses()[0];
    for h in ["x-resp-hop", "keep-alive", "proxy-connection"] {
        assert!(resp.header(h).is_none(), "response kept {h}: {}", ex.text());
    }
    assert_eq!(resp.header("x-resp-kept"), Some("yes"));
    assert!(
        resp.header("connection")
            .is_none_or(|v| !v.to_ascii_lowercase().contains("x-resp-hop")),
        "{}",
        ex.text()
    );
    rig.settle().await;
    for (leg, got) in [
        ("primary", &rig.primary.received()[0]),
        ("shadow", &rig.shadow.received()[0]),
    ] {
        for h in [
            "connection",
            "x-hop",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
            "http2-settings",
            "transfer-encoding",
        ] {
            assert!(
                !got.headers.contains_key(h),
                "{leg} got {h}: {:?}",
                got.headers
            );
        }
        assert_eq!(got.headers["host"], "app.example", "{leg}");
        assert_eq!(
            got.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1",
            "{leg}"
        );
        assert_eq!(got.headers["x-kept"], "yes", "{leg}");
        assert_eq!(got.headers["x-forwarded-host"], "app.example", "{leg}");
    }
    rig.assert_healthy().await;
}

/// B13: client-sent `X-Forwarded-For` is appended to (default) or replaced (config);
/// `X-Forwarded-Proto` and `-Host` are set by the proxy, never taken from the client.
#[tokio::test]
async fn b13_forwarded_headers_are_appended_or_replaced_never_trusted() {
    let req = b"GET /b13 HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n";
    for (extra, want_xff) in [
        ("", "198.51.100.1, 203.0.113.9, 127.0.0.1"),
        ("x_forwarded_for: replace\n", "127.0.0.1"),
    ] {
        let mut rig = Rig::start(extra).await;
        let ex = exchange(rig.addr(), req).await;
        assert_eq!(ex.status(), 200, "{}", ex.text());
        rig.settle().await;
        for (leg, got) in [
            ("primary", &rig.primary.received()[0]),
            ("shadow", &rig.shadow.received()[0]),
        ] {
            let xff: Vec<&str> = got
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(xff, [want_xff], "{leg} ({extra:?})");
            assert_eq!(got.headers["x-forwarded-proto"], "http", "{leg}");
            assert_eq!(got.headers["x-forwarded-host"], "app.example", "{leg}");
        }
        rig.assert_healthy().await;
    }
}

/// B14: `Upgrade: h2c` with `HTTP2-Settings` is served as a plain request (no 101), the
/// upgrade headers stripped on both legs.
#[tokio::test]
async fn b14_h2c_upgrade_offer_is_stripped_and_never_101() {
    let mut rig = Rig::start("").await;
    let ex = exchange(
        rig.addr(),
        b"GET /b14 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = ex.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200], "{}", ex.text());
    assert!(ex.closed);
    rig.settle().await;
    for (leg, up) in [("primary", &rig.primary), ("shadow", &rig.shadow)] {
        let got = up.received();
        assert_eq!(got.len(), 1, "{leg}");
        for h in ["upgrade", "http2-settings", "connection"] {
            assert!(!got[0].headers.contains_key(h), "{leg} got {h}");
        }
    }
    rig.assert_healthy().await;
}

/// B15: CONNECT is answered 405 and the connection closed: never tunnelled (bytes sent
/// after it are not served), never forwarded or mirrored.
#[tokio::test]
async fn b15_connect_is_405_never_tunnelled_or_mirrored() {
    let mut rig = Rig::start("").await;
    let ex = rig
        .refused(
            b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\nGET /b15/tunnelled HTTP/1.1\r\nHost: a\r\n\r\n",
            &[405],
        )
        .await;
    assert_eq!(ex.responses().len(), 1, "{}", ex.text());
    let m = rig.metrics().await;
    assert_eq!(
        ShadowCounts::from_metrics(&m, "all", "candidate").offered,
        0.0,
        "CONNECT is never offered to the shadow"
    );
    rig.assert_healthy().await;
}

/// B17: `Expect: 100-continue` gets `100 Continue` before the body is sent, then the
/// final answer; neither leg sees `Expect`, and the shadow copy is sent only once the
/// whole body is in.
#[tokio::test]
async fn b17_expect_100_continue() {
    let mut rig = Rig::start("").await;
    let mut s = TcpStream::connect(rig.addr()).await.unwrap();
    s.write_all(
        b"POST /b17 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 11\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let interim = read_until(&mut s, b"\r\n\r\n").await;
    let interim = String::from_utf8_lossy(&interim).into_owned();
    assert_eq!(
        interim, "HTTP/1.1 100 Continue\r\n\r\n",
        "100 Continue before the body"
    );
    // Nothing has been mirrored while the body is outstanding.
    assert_eq!(rig.shadow.count(), 0);
    s.write_all(b"hello world").await.unwrap();
    let rest = read_all(&mut s, Duration::from_secs(5)).await;
    let responses = parse_responses(&rest.bytes);
    assert_eq!(responses[0].status, 200, "{}", rest.text());
    assert_eq!(responses[0].body_text(), PRIMARY_BODY);
    rig.settle().await;
    for (leg, up) in [("primary", &rig.primary), ("shadow", &rig.shadow)] {
        let got = up.received();
        assert_eq!(got.len(), 1, "{leg}");
        assert_eq!(got[0].body, "hello world", "{leg}");
        assert!(got[0].complete, "{leg}");
        assert!(!got[0].headers.contains_key("expect"), "{leg} got Expect");
    }
    rig.assert_healthy().await;
}
