//! F. Shadow faults the primary must not notice (F31), and mirroring fidelity (F32).

use std::time::{Duration, Instant};

use teeproxy_tests::process::{ProxyProcess, Signal, http_get};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;

const REQUESTS: usize = 20;

/// F31: one route per broken shadow (down, black-holed, slow, garbage, reset, closing
/// mid-body, 5xx, endless body), all served by one healthy primary. Every client request
/// gets the primary's answer without waiting on the shadow; each shadow's failures are
/// counted by outcome or drop reason, `offered = sent + dropped`; the dead shadow's
/// circuit opens; the black hole never has more copies in flight than its cap; once
/// they time out nothing stays queued or in flight; and SIGTERM with copies still
/// queued exits 0 within the drain deadlines.
#[tokio::test]
async fn f31_broken_shadows_change_nothing_for_the_primary() {
    let primary = FakeUpstream::builder().body("primary ok").start().await;
    let down = closed_port().await;
    let hole = FakeUpstream::builder().black_hole().start().await;
    let slow = FakeUpstream::builder()
        .delay(Duration::from_secs(3))
        .start()
        .await;
    let garbage = FakeUpstream::builder()
        .fault(Fault::Garbage(DEMO_GARBAGE))
        .start()
        .await;
    let reset = FakeUpstream::builder().fault(Fault::Reset).start().await;
    let cut = FakeUpstream::builder()
        .fault(Fault::CutLength)
        .start()
        .await;
    let failing = FakeUpstream::builder()
        .status(500)
        .body("boom")
        .start()
        .await;
    let endless = FakeUpstream::builder()
        .endless_body(64 * 1024 * 1024)
        .start()
        .await;
    let shadows: [(&str, String, &str); 8] = [
        ("down", format!("http://{down}"), ""),
        (
            "hole",
            hole.url(),
            "shadow_queue: 8, shadow_max_in_flight: 4",
        ),
        ("slow", slow.url(), ""),
        ("garbage", garbage.url(), ""),
        ("reset", reset.url(), ""),
        ("cut", cut.url(), ""),
        ("failing", failing.url(), ""),
        ("endless", endless.url(), ""),
    ];
    let mut clusters = cluster("primary", &primary.url(), "");
    let mut routes = String::from("routes:\n");
    for (name, url, extra) in &shadows {
        clusters.push_str(&cluster(&format!("{name}-shadow"), url, extra));
        routes.push_str(&format!(
            "  - name: {name}\n    match: {{ path_prefix: /{name}/ }}\n    primary: primary\n    shadows: [{{ cluster: {name}-shadow, timeout: 1s }}]\n"
        ));
    }
    routes.push_str("  - name: all\n    primary: primary\n");
    let config = yaml(&format!(
        "clusters:\n{clusters}{routes}drain_timeout: 2s\nshadow_drain: 500ms\n"
    ));
    let mut proxy = ProxyProcess::start(&config).await;

    let hole_in_flight = "teeproxy_shadow_in_flight{shadow=\"hole-shadow\"}";
    let mut max_in_flight = 0.0f64;
    let mut slowest = Duration::ZERO;
    for (name, _, _) in &shadows {
        for i in 0..REQUESTS {
            let t = Instant::now();
            let got = http_get(
                proxy.addr(),
                &format!("/{name}/{i}"),
                Duration::from_secs(5),
            )
            .await;
            slowest = slowest.max(t.elapsed());
            assert_eq!(got, Some((200, "primary ok".to_string())), "{name} {i}");
            max_in_flight = max_in_flight.max(proxy.metric(hole_in_flight).await);
        }
    }
    eprintln!("f31: slowest client request {slowest:?}");
    assert!(
        slowest < Duration::from_millis(900),
        "a client waited on a shadow: {slowest:?} (shadow timeout 1 s)"
    );
    assert_eq!(primary.count(), shadows.len() * REQUESTS);

    let shadow_name = |n: &str| format!("{n}-shadow");
    let settled = |m: &str, n: &str| {
        let c = ShadowCounts::from_metrics(m, n, &shadow_name(n));
        c.offered == REQUESTS as f64 && c.balanced()
    };
    let outcomes = |m: &str, n: &str, o: &str| outcome(m, n, &shadow_name(n), o);
    assert_eventually!(
        {
            let m = proxy.metrics().await;
            shadows.iter().all(|(n, _, _)| settled(&m, n))
                && outcomes(&m, "slow", "timeout") == REQUESTS as f64
                && outcomes(&m, "garbage", "protocol_error") == REQUESTS as f64
                && outcomes(&m, "reset", "protocol_error") == REQUESTS as f64
                && outcomes(&m, "cut", "body_error") == REQUESTS as f64
                && outcomes(&m, "failing", "ok") == REQUESTS as f64
                && outcomes(&m, "endless", "ok") == REQUESTS as f64
        },
        "every shadow failure counted:\n{}",
        proxy.metrics().await
    );
    // The black hole: what was sent timed out, the rest was dropped for pressure; the
    // in-flight gauge never passed the cap meanwhile.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let m = proxy.metrics().await;
        max_in_flight = max_in_flight.max(metric_value(&m, hole_in_flight));
        let c = ShadowCounts::from_metrics(&m, "hole", "hole-shadow");
        if outcomes(&m, "hole", "timeout") == c.sent
            && c.sent + dropped(&m, "hole", "hole-shadow", "queue_full") == REQUESTS as f64
        {
            break;
        }
        assert!(Instant::now() < deadline, "black hole:\n{}", brief(&m));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "f31: black hole: in-flight gauge at most {max_in_flight}, TCP connections open at once {}",
        hole.max_open()
    );
    assert!(
        max_in_flight > 0.0 && max_in_flight <= 4.0,
        "in flight above the cap: {max_in_flight}"
    );
    // One connection per copy sent, none beyond (connections of timed-out copies close
    // while the next ones open, so the number open at one instant may pass the cap
    // briefly; the number of copies in flight may not).
    let sent = ShadowCounts::from_metrics(&proxy.metrics().await, "hole", "hole-shadow").sent;
    assert_eq!(hole.accepted() as f64, sent);
    // Every copy has landed: nothing queued for the black hole, nothing in flight to any
    // shadow (the endless bodies were read up to the cap and let go).
    assert_eventually!(
        {
            let m = proxy.metrics().await;
            metric_value(&m, "teeproxy_shadow_queue_depth{shadow=\"hole-shadow\"}") == 0.0
                && shadows.iter().all(|(n, _, _)| {
                    metric_value(
                        &m,
                        &format!("teeproxy_shadow_in_flight{{shadow=\"{n}-shadow\"}}"),
                    ) == 0.0
                })
        },
        "queues and in-flight gauges back to zero:\n{}",
        brief(&proxy.metrics().await)
    );
    let m = proxy.metrics().await;
    // The dead shadow: refused a few times, then its circuit opened.
    let dead = ShadowCounts::from_metrics(&m, "down", "down-shadow");
    assert_eq!(outcomes(&m, "down", "connect_error"), dead.sent);
    assert!(dead.sent >= 5.0, "refused a few times first: {dead:?}");
    assert!(
        dropped(&m, "down", "down-shadow", "circuit_open") >= 1.0,
        "the circuit opened"
    );
    assert_eq!(
        dead.sent + dropped(&m, "down", "down-shadow", "circuit_open"),
        REQUESTS as f64
    );
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_shadow_responses_total{route=\"failing\",shadow=\"failing-shadow\",status_class=\"5xx\"}"
        ),
        REQUESTS as f64
    );
    assert_eq!(slow.count(), REQUESTS, "the slow shadow got every copy");
    assert_eq!(failing.count(), REQUESTS);
    for (name, _, _) in &shadows {
        assert_eq!(
            metric_value(
                &m,
                &format!("teeproxy_requests_total{{route=\"{name}\",status_class=\"2xx\"}}")
            ),
            REQUESTS as f64,
            "{name}: every client request answered 2xx"
        );
    }
    assert_serves_body(&mut proxy, "/after/f31", "primary ok").await;

    // Shutdown with copies queued for the black hole is not held up by them.
    for i in 0..12 {
        let got = http_get(
            proxy.addr(),
            &format!("/hole/late/{i}"),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(got.map(|g| g.0), Some(200));
    }
    let t = Instant::now();
    proxy.signal(Signal::Term);
    let status = proxy.wait_exit(Duration::from_secs(6)).await;
    let took = t.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit 0 after SIGTERM: {status:?}\n{}",
        proxy.stderr()
    );
    assert!(
        took < Duration::from_millis(2500 + 1500),
        "stopped within drain_timeout + shadow_drain (+ margin): {took:?}"
    );
}

async fn assert_serves_body(proxy: &mut ProxyProcess, path: &str, body: &str) {
    proxy.assert_alive();
    assert!(proxy.live().await);
    assert_eq!(
        http_get(proxy.addr(), path, Duration::from_secs(5)).await,
        Some((200, body.to_string()))
    );
}

/// F32: every complete request is mirrored exactly once with the same method, path,
/// query and body, hop-by-hop headers, `Expect` and `Upgrade: h2c` removed, Host per the
/// policy (`suffix`), tagged `x-teeproxy-shadow`, with the primary's request id; CONNECT,
/// a WebSocket upgrade, an aborted body and a refused request are never mirrored.
#[tokio::test]
async fn f32_copies_are_faithful_and_only_for_complete_requests() {
    let mut rig = Rig::with(
        FakeUpstream::builder(),
        "methods: any, host: { suffix: \"-shadow\" }",
        "",
    )
    .await;
    let addr = rig.addr();
    let requests: [&[u8]; 6] = [
        b"GET /f32/get?x=1&y=%20z HTTP/1.1\r\nHost: app.example\r\nConnection: x-hop, keep-alive\r\nX-Hop: gone\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Custom: kept\r\n\r\n",
        b"POST /f32/post?a=b HTTP/1.1\r\nHost: app.example\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world",
        b"POST /f32/chunked HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n",
        b"PUT /f32/put HTTP/1.1\r\nHost: app.example:8080\r\nContent-Length: 3\r\n\r\nput",
        b"DELETE /f32/delete HTTP/1.1\r\nHost: app.example\r\n\r\n",
        b"GET /f32/h2c HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ];
    for req in requests {
        // Each on its own connection, told to close after it (a last `Connection`
        // header decides).
        let mut req = req.to_vec();
        let at = find(&req, b"\r\n\r\n").unwrap();
        req.splice(at..at, b"\r\nConnection: close".iter().copied());
        let ex = exchange(addr, &req).await;
        assert_eq!(ex.status(), 200, "{}", ex.text());
        assert!(ex.closed);
    }
    // The Expect variant: 100 first, then the body.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /f32/expect HTTP/1.1\r\nHost: app.example\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let interim = read_until(&mut s, b"\r\n\r\n").await;
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{interim:?}");
    s.write_all(b"body").await.unwrap();
    let ex = read_all(&mut s, Duration::from_secs(5)).await;
    assert_eq!(ex.status(), 200);

    // Never mirrored: CONNECT, a WebSocket upgrade, an aborted body, a refused request.
    let ex = exchange(
        addr,
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
    )
    .await;
    assert_eq!(ex.status(), 405);
    let ex = exchange(
        addr,
        b"GET /f32/ws HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(
        ex.status(),
        200,
        "relayed to the primary as a plain request: {}",
        ex.text()
    );
    let offered = ShadowCounts::from_metrics(&rig.metrics().await, "all", "candidate").offered;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /f32/aborted HTTP/1.1\r\nHost: app.example\r\nContent-Length: 1000\r\n\r\npartial",
    )
    .await
    .unwrap();
    assert_eventually!(
        ShadowCounts::from_metrics(&rig.metrics().await, "all", "candidate").offered
            == offered + 1.0
    );
    drop(s);
    let ex = exchange(addr, b"GET /f32/refused HTTP/1.1\r\n\r\n").await;
    assert_eq!(ex.status(), 400);
    rig.settle().await;

    let primary = rig.primary.received();
    let shadow = rig.shadow.received();
    assert!(
        primary.iter().all(|r| r.method.as_str() != "CONNECT"),
        "CONNECT reached nobody"
    );
    assert!(
        primary.iter().any(|r| r.uri == "/f32/ws"),
        "the upgrade request reached the primary"
    );
    let mirrored = [
        "/f32/get?x=1&y=%20z",
        "/f32/post?a=b",
        "/f32/chunked",
        "/f32/put",
        "/f32/delete",
        "/f32/h2c",
        "/f32/expect",
    ];
    let mut shadow_uris: Vec<String> = shadow.iter().map(|r| r.uri.to_string()).collect();
    shadow_uris.sort();
    let mut want: Vec<String> = mirrored.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(shadow_uris, want, "exactly one copy per complete request");
    for uri in mirrored {
        let p = primary
            .iter()
            .find(|r| r.uri == uri)
            .expect("primary got it");
        let c = shadow.iter().find(|r| r.uri == uri).expect("shadow got it");
        assert_eq!(c.method, p.method, "{uri}");
        assert_eq!(c.body, p.body, "{uri}");
        assert!(c.complete, "{uri}");
        assert_eq!(
            c.headers["x-request-id"], p.headers["x-request-id"],
            "{uri}"
        );
        assert_eq!(c.headers["x-teeproxy-shadow"], "candidate", "{uri}");
        assert!(!p.headers.contains_key("x-teeproxy-shadow"), "{uri}");
        for h in [
            "connection",
            "x-hop",
            "keep-alive",
            "te",
            "proxy-connection",
            "expect",
            "upgrade",
            "http2-settings",
        ] {
            assert!(!c.headers.contains_key(h), "{uri}: the copy has {h}");
        }
        let want_host = if uri == "/f32/put" {
            "app.example-shadow:8080"
        } else {
            "app.example-shadow"
        };
        assert_eq!(c.headers["host"], want_host, "{uri}");
    }
    let get = shadow.iter().find(|r| r.uri.path() == "/f32/get").unwrap();
    assert_eq!(get.headers["x-custom"], "kept");
    let by_uri = |u: &str| shadow.iter().find(|r| r.uri == u).unwrap().body.clone();
    assert_eq!(by_uri("/f32/post?a=b"), "hello world");
    assert_eq!(by_uri("/f32/chunked"), "abcdefgh");
    assert_eq!(by_uri("/f32/put"), "put");
    assert_eq!(by_uri("/f32/expect"), "body");

    let m = rig.metrics().await;
    assert_eq!(dropped(&m, "all", "candidate", "upgrade"), 1.0, "{m}");
    assert_eq!(
        dropped(&m, "all", "candidate", "body_incomplete"),
        1.0,
        "{m}"
    );
    assert!(ShadowCounts::from_metrics(&m, "all", "candidate").balanced());
    rig.assert_healthy().await;
}
