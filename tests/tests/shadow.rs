//! The tee end to end: what shadows receive, sampling, limits, pressure, faults, shutdown,
//! and the accounting invariant offered = sent + dropped.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use teeproxy_tests::*;

async fn pair() -> (FakeUpstream, FakeUpstream) {
    (
        FakeUpstream::builder()
            .name("primary")
            .body("from primary")
            .start()
            .await,
        FakeUpstream::builder()
            .name("candidate")
            .body("from candidate")
            .start()
            .await,
    )
}

/// The primary and candidate upstreams, and a proxy mirroring route `all` to the
/// candidate with the given shadow options.
async fn mirrored(shadow_opts: &str) -> (FakeUpstream, FakeUpstream, TestProxy) {
    let (p, c) = pair().await;
    let proxy = TestProxy::start(&shadow_yaml(&p.url(), &c.url(), "", shadow_opts)).await;
    (p, c, proxy)
}

async fn counts(proxy: &TestProxy) -> ShadowCounts {
    ShadowCounts::from_metrics(&proxy.metrics().await, "all", "candidate")
}

#[tokio::test]
async fn small_get_reaches_the_shadow_identically_with_shadow_headers() {
    let (p, c) = pair().await;
    let proxy = TestProxy::start(&shadow_yaml(
        &p.url(),
        &c.url(),
        "",
        "headers: { set: { x-env: shadow }, remove: [authorization, cookie] }",
    ))
    .await;
    let req = Request::get(proxy.url("/api/users/7?expand=orders&x=%20y"))
        .header("host", "app.example")
        .header("authorization", "Bearer secret")
        .header("cookie", "session=abc")
        .header("x-custom", "kept")
        .header("connection", "x-hop")
        .header("x-hop", "gone")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&h1_client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "from primary", "the client sees the primary only");
    let id = headers["x-request-id"].clone();

    assert_eventually!(c.count() == 1, "shadow got the copy");
    let (pr, sr) = (&p.received()[0], &c.received()[0]);
    assert_eq!(sr.method, pr.method);
    assert_eq!(sr.uri, "/api/users/7?expand=orders&x=%20y");
    assert_eq!(sr.uri, pr.uri);
    assert_eq!(sr.body, pr.body);
    assert_eq!(
        sr.headers["x-request-id"], id,
        "same request id on both legs"
    );
    assert_eq!(pr.headers["x-request-id"], id);
    assert_eq!(sr.headers["x-teeproxy-shadow"], "candidate");
    assert!(
        !pr.headers.contains_key("x-teeproxy-shadow"),
        "the primary is not tagged"
    );
    assert_eq!(sr.headers["x-env"], "shadow");
    assert!(
        !sr.headers.contains_key("authorization") && !sr.headers.contains_key("cookie"),
        "scrubbed on the shadow"
    );
    assert_eq!(
        pr.headers["authorization"], "Bearer secret",
        "the primary keeps credentials"
    );
    assert_eq!(sr.headers["x-custom"], "kept");
    assert!(!sr.headers.contains_key("x-hop") && !sr.headers.contains_key("connection"));
    assert_eq!(sr.headers["host"], "app.example", "Host kept by default");
    assert_eq!(sr.headers["x-forwarded-for"], pr.headers["x-forwarded-for"]);

    let n = counts(&proxy).await;
    assert_eq!((n.offered, n.sent, n.dropped), (1.0, 1.0, 0.0));
    assert_eventually!(outcome(&proxy.metrics().await, "all", "candidate", "ok") == 1.0);
    let m = proxy.metrics().await;
    for phase in ["headers", "body"] {
        let line = format!(
            "teeproxy_shadow_latency_seconds_count{{route=\"all\",shadow=\"candidate\",phase=\"{phase}\"}}"
        );
        assert_eq!(metric_value(&m, &line), 1.0, "{line}");
    }
}

#[tokio::test]
async fn post_bodies_reach_the_shadow_byte_for_byte() {
    let (p, c, proxy) = mirrored("methods: any").await;

    // 512 KiB with Content-Length.
    let body: Bytes = (0..512 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let req = Request::post(proxy.url("/upload?kind=cl"))
        .body(Full::new(body.clone()))
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.0, StatusCode::OK);
    assert_eventually!(c.count() == 1);
    let s = &c.received()[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.uri, "/upload?kind=cl");
    assert!(s.body == body, "identical bytes");
    assert!(s.complete);

    // A chunked upload of 1 MiB in 16 chunks.
    let (mut tx, chunked) = Channel::<Bytes>::new(2);
    let parts: Vec<Bytes> = (0..16u8).map(|i| Bytes::from(vec![i; 64 * 1024])).collect();
    let expected: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
    tokio::spawn(async move {
        for part in parts {
            tx.send_data(part).await.unwrap();
        }
    });
    let client: Client<_, Channel<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(
            Request::put(proxy.url("/upload?kind=chunked"))
                .body(chunked)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await;
    assert_eventually!(c.count() == 2);
    let s = &c.received()[1];
    assert_eq!(s.method, "PUT");
    assert!(s.body == expected);
    assert!(p.received()[1].body == expected);
    let n = counts(&proxy).await;
    assert!(n.balanced() && n.sent == 2.0, "{n:?}");
}

#[tokio::test]
async fn host_modes_on_the_shadow() {
    for (mode, want) in [
        ("host: rewrite", None),
        (
            "host: shadow.internal.example",
            Some("shadow.internal.example"),
        ),
        (
            "host: { suffix: \"-shadow\" }",
            Some("app.example-shadow:8443"),
        ),
    ] {
        let (p, c) = pair().await;
        let proxy = TestProxy::start(&shadow_yaml(&p.url(), &c.url(), "", mode)).await;
        let req = Request::get(proxy.url("/h"))
            .header("host", "app.example:8443")
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&h1_client(), req).await;
        assert_eventually!(c.count() == 1, "{mode}");
        let want = want
            .map(str::to_string)
            .unwrap_or_else(|| c.addr.to_string());
        assert_eq!(c.received()[0].headers["host"], want.as_str(), "{mode}");
        assert_eq!(
            p.received()[0].headers["host"],
            "app.example:8443",
            "the primary keeps the client's Host"
        );
    }
}

#[tokio::test]
async fn several_shadows_each_get_their_copy() {
    let (p, c) = pair().await;
    let d = FakeUpstream::builder().name("canary").start().await;
    let proxy = TestProxy::start(&yaml(&format!(
        "clusters:\n  primary: {{ endpoints: [\"{}\"] }}\n  candidate: {{ endpoints: [\"{}\"] }}\n  canary: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: all\n    primary: primary\n    shadows: [{{ cluster: candidate }}, {{ cluster: canary, percent: 0 }}]\n",
        p.url(),
        c.url(),
        d.url()
    )))
    .await;
    for i in 0..20 {
        assert_eq!(get(&proxy.url(&format!("/m/{i}"))).await.0, StatusCode::OK);
    }
    assert_eventually!(c.count() == 20);
    let m = proxy.metrics().await;
    assert_eq!(d.count(), 0, "percent 0 sends nothing");
    assert_eq!(dropped(&m, "all", "canary", "sampled_out"), 20.0);
    assert!(ShadowCounts::from_metrics(&m, "all", "canary").balanced());
}

#[tokio::test]
async fn fifty_percent_is_about_half_and_sample_key_is_consistent() {
    let (p, c, proxy) = mirrored("percent: 50").await;
    let client = h1_client();
    for i in 0..2000 {
        let req = Request::get(proxy.url(&format!("/s/{i}")))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&client, req).await.0, StatusCode::OK);
    }
    assert_eq!(p.count(), 2000);
    assert_eventually!(counts(&proxy).await.balanced());
    let n = counts(&proxy).await;
    assert!(
        (800.0..=1200.0).contains(&n.sent),
        "50 % of 2000 within 40-60 %: {n:?}"
    );
    assert_eventually!(c.count() as f64 == n.sent);

    // Keyed: every request of one user is in, or every one is out.
    let (p, c) = pair().await;
    let proxy = TestProxy::start(&shadow_yaml(
        &p.url(),
        &c.url(),
        "",
        "percent: 50, sample_key: { header: x-user-id }",
    ))
    .await;
    let mut decided_in = 0;
    for user in 0..40 {
        let before = counts(&proxy).await.sent;
        for _ in 0..5 {
            let req = Request::get(proxy.url("/k"))
                .header("x-user-id", format!("user-{user}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&client, req).await;
        }
        let sent = counts(&proxy).await.sent - before;
        assert!(
            sent == 0.0 || sent == 5.0,
            "user-{user}: {sent} of 5 mirrored"
        );
        decided_in += usize::from(sent == 5.0);
    }
    assert!(
        (8..=32).contains(&decided_in),
        "about half the users are in: {decided_in}/40"
    );
}

#[tokio::test]
async fn percent_zero_and_hundred_are_exact() {
    for (percent, want) in [(0, 0.0), (100, 300.0)] {
        let (p, c) = pair().await;
        let proxy = TestProxy::start(&shadow_yaml(
            &p.url(),
            &c.url(),
            "",
            &format!("percent: {percent}"),
        ))
        .await;
        let client = h1_client();
        for i in 0..300 {
            let req = Request::get(proxy.url(&format!("/p/{i}")))
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&client, req).await;
        }
        assert_eventually!(counts(&proxy).await.balanced());
        assert_eq!(counts(&proxy).await.sent, want, "percent {percent}");
        assert_eventually!(c.count() as f64 == want);
    }
}

#[tokio::test]
async fn methods_outside_the_list_are_not_mirrored() {
    let (p, c, proxy) = mirrored("").await;
    let client = h1_client();
    for method in ["POST", "PUT", "DELETE", "PATCH", "GET", "HEAD", "OPTIONS"] {
        let req = Request::builder()
            .method(method)
            .uri(proxy.url("/m"))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        assert_eq!(send(&client, req).await.0, StatusCode::OK, "{method}");
    }
    assert_eventually!(c.count() == 3, "GET, HEAD and OPTIONS by default");
    let methods: Vec<String> = c.received().iter().map(|r| r.method.to_string()).collect();
    assert!(
        methods
            .iter()
            .all(|m| ["GET", "HEAD", "OPTIONS"].contains(&m.as_str())),
        "{methods:?}"
    );
    let m = proxy.metrics().await;
    assert_eq!(dropped(&m, "all", "candidate", "method_filtered"), 4.0);
    assert_eq!(p.count(), 7);
}

#[tokio::test]
async fn a_body_over_max_body_reaches_the_primary_whole_and_the_shadow_not_at_all() {
    let (p, c) = pair().await;
    let proxy = TestProxy::start(&shadow_yaml(
        &p.url(),
        &c.url(),
        "",
        "methods: any, max_body: 64KiB",
    ))
    .await;
    // Declared length over the limit: decided up front.
    let big = Bytes::from(vec![b'a'; 100 * 1024]);
    let req = Request::post(proxy.url("/big"))
        .body(Full::new(big.clone()))
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.0, StatusCode::OK);
    // Chunked, discovered while streaming.
    let (mut tx, body) = Channel::<Bytes>::new(2);
    tokio::spawn(async move {
        for _ in 0..10 {
            tx.send_data(Bytes::from(vec![b'b'; 16 * 1024]))
                .await
                .unwrap();
        }
    });
    let client: Client<_, Channel<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(Request::post(proxy.url("/big-chunked")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // A small one still goes through.
    let req = Request::post(proxy.url("/small"))
        .body(Full::new(Bytes::from_static(b"small")))
        .unwrap();
    send(&h1_client(), req).await;

    assert_eventually!(c.count() == 1);
    assert_eq!(c.received()[0].uri, "/small");
    assert_eq!(p.received()[0].body, big, "primary got all of it");
    assert_eq!(p.received()[1].body.len(), 160 * 1024);
    let m = proxy.metrics().await;
    assert_eq!(dropped(&m, "all", "candidate", "body_too_large"), 2.0);
    assert!(ShadowCounts::from_metrics(&m, "all", "candidate").balanced());
}

#[tokio::test]
async fn refused_requests_are_never_offered() {
    let (p, c, proxy) = mirrored("").await;
    raw(proxy.addr, b"GET / HTTP/1.1\r\n\r\n").await;
    raw(
        proxy.addr,
        format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(9000)).as_bytes(),
    )
    .await;
    let n = counts(&proxy).await;
    assert_eq!((n.offered, n.sent, n.dropped), (0.0, 0.0, 0.0));
    assert_eq!(c.count() + p.count(), 0);
}

#[tokio::test]
async fn shutdown_abandons_queued_copies_at_the_shadow_drain_and_counts_them() {
    let p = FakeUpstream::start().await;
    let hole = FakeUpstream::builder().black_hole().start().await;
    let mut proxy = TestProxy::start(&format!(
        "{}shadow_drain: 300ms\ndrain_timeout: 1s\n",
        shadow_yaml(
            &p.url(),
            &hole.url(),
            "shadow_queue: 100, shadow_max_in_flight: 2",
            "timeout: 60s"
        )
    ))
    .await;
    let client = h1_client();
    for i in 0..30 {
        let req = Request::get(proxy.url(&format!("/q/{i}")))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&client, req).await.0, StatusCode::OK);
    }
    // Two in flight (never answered), the rest waiting: one held by the dispatcher for a
    // permit, 27 in the queue.
    assert_eventually!(
        metric_value(
            &proxy.metrics().await,
            "teeproxy_shadow_queue_depth{shadow=\"candidate\"}"
        ) == 27.0
    );
    let before = counts(&proxy).await;
    assert_eq!(
        (before.offered, before.sent, before.dropped),
        (30.0, 2.0, 0.0)
    );
    let started = Instant::now();
    proxy.begin_shutdown();
    let m = proxy.stopped().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stopped within the drains: {:?}",
        started.elapsed()
    );
    assert_eq!(
        dropped(&m, "all", "candidate", "shutdown"),
        28.0,
        "the queued copies were abandoned and counted"
    );
    let n = ShadowCounts::from_metrics(&m, "all", "candidate");
    assert!(n.balanced(), "{n:?}");
    assert_eq!(
        hole.accepted(),
        2,
        "only the two in flight ever reached the shadow"
    );
    // The two in flight were cut at the deadline: each sent copy has its one outcome.
    assert_eq!(outcome(&m, "all", "candidate", "aborted"), 2.0);
    let outcomes: f64 = [
        "ok",
        "connect_error",
        "tls_error",
        "protocol_error",
        "body_error",
        "timeout",
        "aborted",
    ]
    .iter()
    .map(|o| outcome(&m, "all", "candidate", o))
    .sum();
    assert_eq!(outcomes, n.sent);
}

#[tokio::test]
async fn trailers_are_carried_to_both_legs() {
    let (p, c, proxy) = mirrored("methods: any").await;
    let (mut tx, body) = Channel::<Bytes>::new(2);
    tokio::spawn(async move {
        tx.send_data(Bytes::from_static(b"payload")).await.unwrap();
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", "c0ffee".parse().unwrap());
        tx.send_trailers(t).await.unwrap();
    });
    let client: Client<_, Channel<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(proxy.url("/t"))
        .header("trailer", "x-checksum")
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eventually!(c.count() == 1);
    for (leg, got) in [("primary", &p.received()[0]), ("shadow", &c.received()[0])] {
        assert_eq!(got.body, "payload", "{leg}");
        let t = got
            .trailers
            .as_ref()
            .unwrap_or_else(|| panic!("{leg} got no trailers"));
        assert_eq!(t["x-checksum"], "c0ffee", "{leg}");
    }
}

#[tokio::test]
async fn h2c_requests_are_mirrored_as_http1_with_their_bodies() {
    let (_p, c, proxy) = mirrored("methods: any").await;
    let client = h2_client();
    let body = Bytes::from(vec![b'h'; 200_000]);
    let req = Request::post(proxy.url("/h2/post?x=1"))
        .body(Full::new(body.clone()))
        .unwrap();
    assert_eq!(send(&client, req).await.0, StatusCode::OK);
    let req = Request::get(proxy.url("/h2/get"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, req).await.0, StatusCode::OK);
    assert_eventually!(c.count() == 2);
    let mut got = c.received();
    got.sort_by_key(|r| r.uri.to_string());
    assert_eq!(got[0].uri, "/h2/get");
    assert_eq!(got[1].uri, "/h2/post?x=1");
    assert!(got[1].body == body);
    assert_eq!(
        got[1].headers["host"],
        proxy.addr.to_string(),
        ":authority becomes the shadow's Host"
    );
    assert!(counts(&proxy).await.balanced());
}

#[tokio::test]
async fn the_byte_budget_bounds_what_a_black_holed_shadow_holds() {
    let p = FakeUpstream::start().await;
    let hole = FakeUpstream::builder().black_hole().start().await;
    let proxy = TestProxy::start(&shadow_yaml(
        &p.url(),
        &hole.url(),
        "shadow_queue: 1000, shadow_max_in_flight: 1000, shadow_max_bytes: 100KiB",
        "methods: any, timeout: 60s, max_body: 64KiB",
    ))
    .await;
    let body = Bytes::from(vec![b'b'; 30 * 1024]);
    for i in 0..10 {
        let req = Request::post(proxy.url(&format!("/b/{i}")))
            .body(Full::new(body.clone()))
            .unwrap();
        assert_eq!(send(&h1_client(), req).await.0, StatusCode::OK);
    }
    assert_eventually!(counts(&proxy).await.balanced());
    let m = proxy.metrics().await;
    assert_eq!(
        counts(&proxy).await.sent,
        3.0,
        "three 30 KiB copies fit in 100 KiB"
    );
    assert_eq!(dropped(&m, "all", "candidate", "queue_full"), 7.0);
    let held = metric_value(&m, "teeproxy_shadow_held_bytes{shadow=\"candidate\"}");
    assert_eq!(held, 3.0 * 30.0 * 1024.0);
    assert_eq!(p.count(), 10, "the primary served every one");
}
