//! gRPC and HTTP/2 to upstreams end to end, with a real gRPC client and server (tonic):
//! unary, client-streaming and server-streaming calls through an h2c listener to h2c
//! upstreams with a shadow (trailers intact, the shadow receives the call), a shadow with
//! another `grpc-status` reported as a status mismatch, a slow or failing shadow leaving
//! the primary call alone, `grpc-timeout` honoured, plain HTTP/2 (h2c) upstreams for
//! non-gRPC requests and `auto` speaking HTTP/1.1 over plain TCP.

use std::time::{Duration, Instant};

use http::{StatusCode, Version};
use teeproxy_tests::grpc::{COUNT, GrpcBehaviour, GrpcClient, GrpcServer, JOIN, SAY};
use teeproxy_tests::*;
use tonic::Code;

/// A gRPC route (`match: { grpc: true }`) to `primary`, mirrored to `candidate`, both h2c;
/// `shadow_extra` is added to the shadow's options.
fn grpc_yaml(primary: &str, candidate: &str, shadow_extra: &str) -> String {
    yaml(&format!(
        "clusters:\n  primary: {{ endpoints: [\"{primary}\"], protocol: h2c }}\n  candidate: {{ endpoints: [\"{candidate}\"], protocol: h2c }}\nroutes:\n  - name: grpc\n    match: {{ grpc: true }}\n    primary: primary\n    shadows: [{{ cluster: candidate, methods: any, compare: {{ body: exact }}{shadow_extra} }}]\n"
    ))
}

/// The sum of `teeproxy_compare_results_total` over the route's paths for `result`.
fn compare_total(m: &str, result: &str) -> f64 {
    let want = format!("shadow=\"candidate\",result=\"{result}\"}}");
    m.lines()
        .filter(|l| {
            l.starts_with("teeproxy_compare_results_total{route=\"grpc\"") && l.contains(&want)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn grpc_status(m: &str, leg: &str, cluster: &str, code: &str) -> f64 {
    metric_value(
        m,
        &format!(
            "teeproxy_grpc_status_total{{route=\"grpc\",leg=\"{leg}\",cluster=\"{cluster}\",code=\"{code}\"}}"
        ),
    )
}

#[tokio::test]
async fn grpc_unary_and_streaming_calls_keep_their_trailers_and_reach_the_shadow() {
    let p = GrpcServer::start("primary", GrpcBehaviour::default()).await;
    let c = GrpcServer::start("candidate", GrpcBehaviour::default()).await;
    let proxy = TestProxy::start(&grpc_yaml(&p.url(), &c.url(), "")).await;
    let mut client = GrpcClient::connect(&proxy.url("")).await;

    // Unary: the answer and the primary's trailers (grpc-status 0, a custom one).
    let r = client.say("hello", None).await.expect("unary call");
    assert_eq!(r.get_ref().text, "hello");
    assert_eq!(r.metadata().get("x-served-by").unwrap(), "primary");

    // Client streaming: every message reaches the primary, in order.
    let r = client
        .join(&["a", "b", "c"])
        .await
        .expect("client streaming");
    assert_eq!(r.get_ref().text, "abc");
    assert_eq!(r.metadata().get("x-served-by").unwrap(), "primary");

    // Server streaming: every message, then the trailers.
    let (texts, trailers) = client.count("n", 3).await.expect("server streaming");
    assert_eq!(texts, ["n0", "n1", "n2"]);
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers.get("x-served-by").unwrap(), "primary");

    // The primary was spoken to over HTTP/2.
    let calls = p.calls();
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|c| c.version == Version::HTTP_2),
        "{calls:?}"
    );

    // The shadow got the same three calls, bodies complete.
    assert_eventually!(c.calls().len() == 3);
    let mut got: Vec<_> = c
        .calls()
        .into_iter()
        .map(|c| (c.path, c.texts, c.version))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (COUNT.to_string(), vec!["n".to_string()], Version::HTTP_2),
            (
                JOIN.to_string(),
                vec!["a".into(), "b".into(), "c".into()],
                Version::HTTP_2
            ),
            (SAY.to_string(), vec!["hello".to_string()], Version::HTTP_2),
        ]
    );

    // Same statuses and bytes on both legs: three matches, each leg's OKs counted.
    assert_eventually!(compare_total(&proxy.metrics().await, "match") == 3.0);
    let m = proxy.metrics().await;
    assert_eq!(compare_total(&m, "status_mismatch"), 0.0);
    assert_eq!(grpc_status(&m, "primary", "primary", "OK"), 3.0);
    assert_eq!(grpc_status(&m, "shadow", "candidate", "OK"), 3.0);
}

#[tokio::test]
async fn a_shadow_answering_another_grpc_status_is_a_status_mismatch() {
    let p = GrpcServer::start("primary", GrpcBehaviour::default()).await;
    let c = GrpcServer::start(
        "candidate",
        GrpcBehaviour {
            fail: Some(Code::NotFound),
            ..Default::default()
        },
    )
    .await;
    let proxy = TestProxy::start(&grpc_yaml(&p.url(), &c.url(), "")).await;
    let mut client = GrpcClient::connect(&proxy.url("")).await;
    let r = client.say("x", None).await.expect("the primary answers");
    assert_eq!(r.get_ref().text, "x");

    assert_eventually!(compare_total(&proxy.metrics().await, "status_mismatch") == 1.0);
    let m = proxy.metrics().await;
    assert_eq!(grpc_status(&m, "primary", "primary", "OK"), 1.0);
    assert_eq!(grpc_status(&m, "shadow", "candidate", "NOT_FOUND"), 1.0);
    let v = admin_json(&proxy, "/api/mismatches").await;
    let ex = &v["groups"][0]["example"];
    assert_eq!(ex["result"], "status_mismatch", "{v}");
    assert_eq!(ex["diff"][0]["at"], "grpc-status", "{ex}");
    assert_eq!(
        (
            ex["diff"][0]["primary"].as_str(),
            ex["diff"][0]["shadow"].as_str()
        ),
        (Some("0"), Some("5")),
        "{ex}"
    );
}

#[tokio::test]
async fn a_slow_or_failing_grpc_shadow_leaves_the_primary_call_alone() {
    let p = GrpcServer::start("primary", GrpcBehaviour::default()).await;
    let slow = GrpcServer::start(
        "candidate",
        GrpcBehaviour {
            delay: Duration::from_secs(3),
            fail: Some(Code::Internal),
        },
    )
    .await;
    let proxy = TestProxy::start(&grpc_yaml(&p.url(), &slow.url(), ", timeout: 5s")).await;
    let mut client = GrpcClient::connect(&proxy.url("")).await;
    let started = Instant::now();
    for i in 0..5 {
        let r = client
            .say(&format!("m{i}"), None)
            .await
            .expect("primary ok");
        assert_eq!(r.metadata().get("x-served-by").unwrap(), "primary");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "five calls took {took:?} with a 3 s shadow"
    );
    assert_eventually!(slow.calls().len() == 5, "the shadow got the calls");

    // A shadow that is not there at all.
    let dead = closed_port().await;
    let proxy = TestProxy::start(&grpc_yaml(&p.url(), &format!("http://{dead}"), "")).await;
    let mut client = GrpcClient::connect(&proxy.url("")).await;
    let (texts, trailers) = client.count("d", 2).await.expect("primary ok");
    assert_eq!(texts, ["d0", "d1"]);
    assert_eq!(trailers.unwrap().get("x-served-by").unwrap(), "primary");
    let r = client.join(&["x", "y"]).await.expect("primary ok");
    assert_eq!(r.get_ref().text, "xy");
}

#[tokio::test]
async fn grpc_timeout_bounds_the_wait_for_a_slow_primary() {
    let p = GrpcServer::start(
        "primary",
        GrpcBehaviour {
            delay: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await;
    let c = GrpcServer::start("candidate", GrpcBehaviour::default()).await;
    let proxy = TestProxy::start(&grpc_yaml(&p.url(), &c.url(), "")).await;
    let mut client = GrpcClient::connect(&proxy.url("")).await;
    let started = Instant::now();
    let e = client
        .say("late", Some(Duration::from_millis(200)))
        .await
        .expect_err("past its deadline");
    let took = started.elapsed();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        e.message().contains("teeproxy"),
        "teeproxy's deadline: {e:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "ended at its deadline, not the primary's 3 s: {took:?}"
    );
    // The primary saw the deadline too, and the proxy counted the status.
    assert_eq!(p.calls()[0].grpc_timeout.as_deref(), Some("200m"));
    let m = proxy.metrics().await;
    assert_eq!(
        grpc_status(&m, "primary", "primary", "DEADLINE_EXCEEDED"),
        1.0
    );
    // The shadow leg sends the same deadline.
    assert_eventually!(c.calls().len() == 1);
    assert_eq!(c.calls()[0].grpc_timeout.as_deref(), Some("200m"));
}

#[tokio::test]
async fn h2c_upstreams_take_plain_http2_requests_and_auto_speaks_http1_over_tcp() {
    let up = FakeUpstream::builder().body("fine").start().await;
    for (protocol, version) in [
        ("h2c", Version::HTTP_2),
        ("auto", Version::HTTP_11),
        ("http1", Version::HTTP_11),
    ] {
        let proxy =
            TestProxy::start(&simple_yaml(&[up.url()], &format!("protocol: {protocol}"))).await;
        let before = up.count();
        // From an HTTP/1.1 client and from an HTTP/2 client.
        for client in [h1_client(), h2_client()] {
            let req = http::Request::post(proxy.url("/plain?x=1"))
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"body",
                )))
                .unwrap();
            let (status, _, body) = send(&client, req).await;
            assert_eq!(
                (status, body.as_ref()),
                (StatusCode::OK, &b"fine"[..]),
                "{protocol}"
            );
        }
        let got = up.received();
        assert_eq!(got.len(), before + 2);
        for r in &got[before..] {
            assert_eq!(r.version, version, "{protocol}");
            assert_eq!(r.uri.path_and_query().unwrap().as_str(), "/plain?x=1");
            assert_eq!(r.body.as_ref(), b"body");
        }
    }
}

#[tokio::test]
async fn grpc_routes_take_only_grpc_calls() {
    let p = GrpcServer::start("primary", GrpcBehaviour::default()).await;
    let web = FakeUpstream::builder().body("web").start().await;
    let config = yaml(&format!(
        "clusters:\n  grpc: {{ endpoints: [\"{}\"], protocol: h2c }}\n  web: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: grpc\n    match: {{ grpc: true }}\n    primary: grpc\n  - name: web\n    primary: web\n",
        p.url(),
        web.url()
    ));
    let proxy = TestProxy::start(&config).await;
    let mut client = GrpcClient::connect(&proxy.url("")).await;
    assert_eq!(client.say("g", None).await.unwrap().get_ref().text, "g");
    let (status, _, body) = get(&proxy.url(SAY)).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"web"[..]));
    assert_eq!(p.calls().len(), 1);
    assert_eq!(web.count(), 1);
}
