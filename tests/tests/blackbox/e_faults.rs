//! E. Client aborts and primary faults: cases E26-E30.

use std::time::{Duration, Instant};

use teeproxy_tests::process::{ProxyProcess, http_get};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use super::*;

/// E26: a client that disconnects mid-body (by length, and chunked): the primary's
/// request is aborted (it never sees a complete body), the shadow receives nothing, the
/// copy is counted `body_incomplete`, and the abort is not the upstream's fault.
#[tokio::test]
async fn e26_client_gone_mid_body_aborts_upstream_and_mirrors_nothing() {
    let mut rig = Rig::start("").await;
    let cases: [(&str, &[u8]); 2] = [
        (
            "/e26/length",
            b"POST /e26/length HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n",
        ),
        (
            "/e26/chunked",
            b"POST /e26/chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n",
        ),
    ];
    for (i, (path, head)) in cases.into_iter().enumerate() {
        let mut s = TcpStream::connect(rig.addr()).await.unwrap();
        s.write_all(head).await.unwrap();
        s.write_all(&[b'x'; 5000]).await.unwrap();
        // The request is in the proxy and on its way to the primary.
        assert_eventually!(
            ShadowCounts::from_metrics(&rig.metrics().await, "all", "candidate").offered
                == (i + 1) as f64
        );
        drop(s);
        assert_eventually!(
            dropped(&rig.metrics().await, "all", "candidate", "body_incomplete") == (i + 1) as f64,
            "{path}"
        );
        rig.settle().await;
        let got: Vec<Received> = rig
            .primary
            .received()
            .into_iter()
            .filter(|r| r.uri == path)
            .collect();
        assert!(
            got.iter().all(|r| !r.complete && r.body.len() < 100_000),
            "{path}: the primary never saw a complete body"
        );
        assert_eq!(rig.shadow.count(), 0, "{path}: nothing mirrored");
    }
    let m = rig.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_upstream_errors_total{cluster=\"primary\",leg=\"primary\",kind=\"protocol\"}"
        ),
        0.0
    );
    rig.assert_healthy().await;
}

/// E27: a client that leaves while its request waits on the primary: the upstream call
/// is cancelled (the proxy closes its connection to the primary), the in-flight gauge
/// and open-connection gauges return to 0, the copy is dropped as `cancelled` and the
/// shadow receives nothing.
#[tokio::test]
async fn e27_client_gone_while_waiting_cancels_the_upstream_call() {
    let hole = FakeUpstream::builder().black_hole().start().await;
    let shadow = FakeUpstream::builder().name("candidate").start().await;
    let healthy = FakeUpstream::start().await;
    let yaml = format!(
        "{}routes:\n  - name: healthy\n    match: {{ path_prefix: /healthy }}\n    primary: healthy\n  - name: all\n    primary: primary\n    shadows: [{{ cluster: candidate }}]\n",
        yaml(&format!(
            "clusters:\n{}{}{}",
            cluster("primary", &hole.url(), "timeout: 60s"),
            cluster("candidate", &shadow.url(), ""),
            cluster("healthy", &healthy.url(), "")
        ))
    );
    let mut proxy = ProxyProcess::start(&yaml).await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET /e27/wait HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eventually!(hole.accepted() == 1 && hole.open() == 1);
    assert_eventually!(proxy.metric("teeproxy_requests_in_flight").await == 1.0);
    let open = "teeproxy_open_connections{listener=\"public\"}";
    assert_eq!(proxy.metric(open).await, 1.0);
    drop(s);
    assert_eventually!(hole.open() == 0, "the proxy closed its primary connection");
    assert_eventually!(proxy.metric("teeproxy_requests_in_flight").await == 0.0);
    assert_eventually!(proxy.metric(open).await == 0.0);
    let m = proxy.metrics().await;
    assert_eq!(dropped(&m, "all", "candidate", "cancelled"), 1.0, "{m}");
    assert!(ShadowCounts::from_metrics(&m, "all", "candidate").balanced());
    assert_eq!(shadow.count(), 0);
    assert_eq!(hole.accepted(), 1);
    assert_serves(&mut proxy, "/healthy/e27").await;
}

/// A listener whose accept queue is full: connects to it hang (the SYN is dropped).
async fn full_backlog() -> (
    std::net::SocketAddr,
    tokio::net::TcpListener,
    Vec<TcpStream>,
) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => return (addr, listener, fillers),
        }
    }
    panic!("the backlog of {addr} never filled");
}

/// E28: a primary that refuses -> 502 at once; one that cannot be reached (full accept
/// queue) -> 502 at the connect timeout; one that accepts and never answers, or answers
/// too late -> 504 at the response timeout, and the next request to the black hole the
/// same way. A failed primary's copy still goes to the shadow (once); the process keeps
/// serving.
#[tokio::test]
async fn e28_refused_unreachable_and_slow_primaries_are_502_and_504_in_time() {
    let refused = closed_port().await;
    let (unreachable, _l, _fillers) = full_backlog().await;
    let hole = FakeUpstream::builder().black_hole().start().await;
    let slow = FakeUpstream::builder()
        .delay(Duration::from_secs(5))
        .start()
        .await;
    let shadow = FakeUpstream::builder().name("candidate").start().await;
    let healthy = FakeUpstream::start().await;
    // The response timeout is longer than the connect timeout: with the two equal, an
    // unreachable primary could be either (both run from the start of a bodiless GET).
    let cl = |n: &str, a: String| cluster(n, &a, "connect_timeout: 300ms, timeout: 600ms");
    let mut routes = String::from("routes:\n");
    for name in ["refused", "unreachable", "hole", "slow"] {
        routes.push_str(&format!(
            "  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    primary: {name}\n    shadows: [{{ cluster: candidate }}]\n"
        ));
    }
    routes.push_str("  - name: all\n    primary: healthy\n");
    let yaml = yaml(&format!(
        "clusters:\n{}{}{}{}{}{}{routes}",
        cl("refused", format!("http://{refused}")),
        cl("unreachable", format!("http://{unreachable}")),
        cl("hole", hole.url()),
        cl("slow", slow.url()),
        cluster("candidate", &shadow.url(), ""),
        cluster("healthy", &healthy.url(), ""),
    ));
    let mut proxy = ProxyProcess::start(&yaml).await;
    for (name, want, body, min_ms, max_ms) in [
        ("refused", 502, Some("upstream connect error\n"), 0, 1000),
        ("unreachable", 502, None, 250, 2000),
        ("hole", 504, None, 550, 2000),
        ("slow", 504, Some("upstream timed out\n"), 550, 2000),
    ] {
        let t = Instant::now();
        let got = http_get(
            proxy.addr(),
            &format!("/{name}/e28"),
            Duration::from_secs(5),
        )
        .await;
        let took = t.elapsed();
        assert_eq!(got.as_ref().map(|g| g.0), Some(want), "{name}");
        if let Some(body) = body {
            assert_eq!(got.map(|g| g.1).as_deref(), Some(body), "{name}");
        }
        assert!(
            took >= Duration::from_millis(min_ms) && took < Duration::from_millis(max_ms),
            "{name}: answered after {took:?}"
        );
    }
    let again = http_get(proxy.addr(), "/hole/e28/again", Duration::from_secs(5)).await;
    assert_eq!(
        again.map(|g| g.0),
        Some(504),
        "the next one fails the same way"
    );
    assert_eq!(hole.count(), 2);
    assert_eq!(slow.count(), 1);
    // Each failed primary's request was still mirrored, once.
    assert_eventually!(shadow.count() == 5);
    let mut mirrored: Vec<String> = shadow
        .received()
        .iter()
        .map(|r| r.uri.to_string())
        .collect();
    mirrored.sort();
    assert_eq!(
        mirrored,
        [
            "/hole/e28",
            "/hole/e28/again",
            "/refused/e28",
            "/slow/e28",
            "/unreachable/e28"
        ]
    );
    let m = proxy.metrics().await;
    for (cluster, kind, n) in [
        ("refused", "connect", 1.0),
        ("unreachable", "connect", 1.0),
        ("hole", "timeout", 2.0),
        ("slow", "timeout", 1.0),
    ] {
        assert_eq!(
            metric_value(
                &m,
                &format!(
                    "teeproxy_upstream_errors_total{{cluster=\"{cluster}\",leg=\"primary\",kind=\"{kind}\"}}"
                )
            ),
            n,
            "{cluster}: {kind}"
        );
        assert_eq!(
            metric_value(
                &m,
                &format!("teeproxy_requests_total{{route=\"{cluster}\",status_class=\"5xx\"}}")
            ),
            n,
            "{cluster}: one 5xx per request"
        );
    }
    assert_serves(&mut proxy, "/e28/healthy").await;
}

/// A primary that misbehaves by path: `/garbage`, `/reset`, `/huge-header`, `/cut-length`,
/// `/cut-chunked`; anything else is answered `200 ok`.
async fn scripted() -> FakeUpstream {
    FakeUpstream::builder()
        .fault_on("/garbage", Fault::Garbage(NOT_HTTP))
        .fault_on("/reset", Fault::Reset)
        .fault_on("/huge-header", Fault::HugeHeader)
        .fault_on("/cut-length", Fault::CutLength)
        .fault_on("/cut-chunked", Fault::CutChunked)
        .start()
        .await
}

/// E29: a primary that answers garbage, resets, or sends a 1 MiB header -> 502, each
/// sent once, and a second garbage or reset answer the same way; the pool is not
/// poisoned: the good requests around them are answered correctly and the broken
/// connections are never reused.
#[tokio::test]
async fn e29_broken_primary_answers_are_502_and_the_pool_stays_clean() {
    let primary = scripted().await;
    let shadow = FakeUpstream::builder().name("candidate").start().await;
    let yaml = shadow_yaml(&primary.url(), &shadow.url(), "", "");
    let mut proxy = ProxyProcess::start(&yaml).await;
    let mut sent = Vec::new();
    // Keep-alive client connection, so the proxy's pooled upstream connections matter.
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    for path in [
        "/ok/1",
        "/garbage",
        "/ok/2",
        "/reset",
        "/ok/3",
        "/huge-header",
        "/ok/4",
        "/ok/5",
        "/garbage/again",
        "/reset/again",
        "/ok/6",
    ] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let want = if path.starts_with("/ok") { 200 } else { 502 };
        let text = read_response(&mut s, Duration::from_secs(5)).await;
        let r = parse_responses(&text);
        assert_eq!(r.len(), 1, "{path}: {}", String::from_utf8_lossy(&text));
        assert_eq!(r[0].status, want, "{path}");
        if want == 200 {
            assert_eq!(r[0].body_text(), "ok", "{path}");
        }
        sent.push(path);
    }
    for path in &sent {
        assert_eq!(
            primary.count_path(path),
            1,
            "{path} sent to the primary once"
        );
    }
    // A connection that carried a broken answer never carries another request.
    let seen = primary.seen();
    for (i, (conn, path)) in seen.iter().enumerate() {
        if !path.starts_with("/ok") {
            assert!(
                seen[i + 1..].iter().all(|(c, _)| c != conn),
                "connection {conn} reused after {path}: {seen:?}"
            );
        }
    }
    // Twenty more in a row are all fine.
    for i in 0..20 {
        let got = http_get(
            proxy.addr(),
            &format!("/ok/more/{i}"),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(got, Some((200, "ok".to_string())));
    }
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_upstream_errors_total{cluster=\"primary\",leg=\"primary\",kind=\"protocol\"}"
        ),
        5.0,
        "{m}"
    );
    // Every request was complete, so every one was mirrored exactly once.
    assert_eventually!(shadow.count() == sent.len() + 20);
    let mut uris: Vec<String> = shadow
        .received()
        .iter()
        .map(|r| r.uri.to_string())
        .collect();
    uris.sort();
    uris.dedup();
    assert_eq!(uris.len(), sent.len() + 20, "no copy twice");
    proxy.assert_alive();
    assert!(proxy.live().await);
}

/// E30: a primary that closes mid-body (a short `Content-Length` body, a chunked body
/// without its last chunk): the client gets the head and part of the body, then a
/// close: never a message it could take for complete. The request was complete, so it
/// was mirrored once.
#[tokio::test]
async fn e30_primary_closing_mid_body_aborts_the_clients_message() {
    let primary = scripted().await;
    let shadow = FakeUpstream::builder().name("candidate").start().await;
    let yaml = shadow_yaml(&primary.url(), &shadow.url(), "", "");
    let mut proxy = ProxyProcess::start(&yaml).await;
    for path in ["/cut-length", "/cut-chunked"] {
        let ex = exchange(
            proxy.addr(),
            format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(ex.closed, "{path}: closed, not left hanging");
        let r = ex.responses();
        // The head and what arrived of the body, or (when the abort overtakes the
        // writes) nothing at all: never a complete message.
        assert!(r.len() <= 1, "{path}: {}", ex.text());
        if let Some(r) = r.first() {
            assert_eq!(r.status, 200, "{path}");
            assert!(
                !r.complete,
                "{path}: the client could take the message for complete: {}",
                ex.text()
            );
            if path == "/cut-chunked" {
                assert!(b"first".starts_with(&r.body), "{path}: {}", ex.text());
            } else {
                assert!(r.body.len() < 1000);
            }
        } else {
            eprintln!("e30 {path}: closed before any byte of the answer");
        }
        assert_eq!(primary.count_path(path), 1);
    }
    assert_eventually!(shadow.count() == 2);
    let got = http_get(proxy.addr(), "/ok/after", Duration::from_secs(5)).await;
    assert_eq!(got, Some((200, "ok".to_string())));
    proxy.assert_alive();
    assert!(proxy.live().await);
}

/// A primary whose body never ends: the proxy streams it with bounded memory; when the
/// client stops reading, the write limit closes the connection, the upstream connection is
/// dropped, and the gauges return to zero.
#[tokio::test]
async fn primary_endless_body_streams_bounded_and_ends_with_the_client() {
    use tokio::io::AsyncReadExt;
    let endless = FakeUpstream::builder().endless_body(2 << 30).start().await;
    let mut p = ProxyProcess::start(&format!(
        "{}limits: {{ write_timeout: 1s }}\n",
        teeproxy_tests::simple_yaml(&[endless.url()], "")
    ))
    .await;
    let rss_before = teeproxy_tests::usage_or_skip!(p).rss_kib;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Read 64 MiB of it, then stop reading.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while got < 64 << 20 {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the body keeps coming")
            .unwrap();
        assert!(n > 0, "closed after {got} bytes");
        got += n;
    }
    let rss = p.usage_now().rss_kib;
    assert!(
        rss < rss_before + 32 * 1024,
        "RSS {rss} KiB after 64 MiB streamed (from {rss_before})"
    );
    teeproxy_tests::assert_eventually!(
        p.metric(&teeproxy_tests::closed_metric("write_timeout"))
            .await
            == 1.0
    );
    teeproxy_tests::assert_eventually!(p.metric("teeproxy_requests_in_flight").await == 0.0);
    teeproxy_tests::assert_eventually!(
        p.metric("teeproxy_open_connections{listener=\"public\"}")
            .await
            == 0.0
    );
    p.assert_alive();
}

/// A client that leaves while its response is streaming: the proxy drops the upstream
/// response at once (not at a time limit) and its gauges return to zero.
#[tokio::test]
async fn client_gone_mid_response_releases_the_upstream_at_once() {
    use tokio::io::AsyncReadExt;
    let endless = FakeUpstream::builder().endless_body(1 << 30).start().await;
    let p = ProxyProcess::start(&teeproxy_tests::simple_yaml(&[endless.url()], "")).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    while got < 1 << 20 {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the body keeps coming")
            .unwrap();
        assert!(n > 0, "closed after {got} bytes");
        got += n;
    }
    assert_eq!(
        p.metric("teeproxy_open_connections{listener=\"public\"}")
            .await,
        1.0
    );
    drop(s);
    let left = Instant::now();
    teeproxy_tests::assert_eventually!(
        p.metric("teeproxy_open_connections{listener=\"public\"}")
            .await
            == 0.0
    );
    assert!(
        left.elapsed() < Duration::from_secs(5),
        "released after {:?} (write_timeout is 60 s)",
        left.elapsed()
    );
    assert_eq!(
        p.metric(&teeproxy_tests::closed_metric("write_timeout"))
            .await,
        0.0
    );
}
