//! Primary forwarding end to end: streaming both ways, header rewriting, routing, errors,
//! passive ejection, HTTP/2 clients.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use teeproxy_tests::*;

#[tokio::test]
async fn get_is_forwarded_with_path_query_and_request_id() {
    let up = FakeUpstream::builder()
        .body("primary body")
        .header("x-from", "up")
        .start()
        .await;
    let proxy = TestProxy::start(&simple_yaml(&[up.url()], "")).await;

    let (status, headers, body) = get(&proxy.url("/api/items?color=red&size=2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "primary body");
    assert_eq!(headers["x-from"], "up");
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "generated id");

    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "GET");
    assert_eq!(
        got[0].uri, "/api/items?color=red&size=2",
        "origin-form to the upstream"
    );
    assert_eq!(got[0].version, Version::HTTP_11);
    assert_eq!(
        got[0].headers["x-request-id"],
        id.as_str(),
        "same id upstream and echoed"
    );
    assert_eq!(
        got[0].headers["host"],
        proxy.addr.to_string(),
        "client Host kept by default"
    );
    assert_eq!(got[0].headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got[0].headers["x-forwarded-proto"], "http");
    assert_eq!(got[0].headers["x-forwarded-host"], proxy.addr.to_string());
    assert!(!got[0].headers.contains_key("content-length"));

    let client_id = Request::get(proxy.url("/x"))
        .header("x-request-id", "client-chosen-7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, headers, _) = send(&h1_client(), client_id).await;
    assert_eq!(headers["x-request-id"], "client-chosen-7");
    assert_eq!(up.received()[1].headers["x-request-id"], "client-chosen-7");
}

#[tokio::test]
async fn chunked_upload_of_several_mib_streams_through_intact() {
    let up = FakeUpstream::start().await;
    let proxy = TestProxy::start(&simple_yaml(&[up.url()], "")).await;

    // 6 MiB in 96 chunks of 64 KiB, sent as a chunked body (no Content-Length).
    let chunk_size = 64 * 1024;
    let chunks: Vec<Bytes> = (0..96u8)
        .map(|i| Bytes::from(vec![i; chunk_size]))
        .collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let (mut tx, body) = Channel::<Bytes>::new(2);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send_data(c).await.is_err() {
                return;
            }
        }
    });
    let client: Client<_, Channel<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(proxy.url("/upload")).body(body).unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await.unwrap();

    let got = up.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].complete);
    assert_eq!(got[0].body.len(), expected.len());
    assert!(got[0].body == expected, "body bytes identical");
    assert_eq!(
        got[0].headers["transfer-encoding"], "chunked",
        "re-framed as chunked"
    );
}

#[tokio::test]
async fn post_with_content_length_arrives_complete() {
    let up = FakeUpstream::start().await;
    let proxy = TestProxy::start(&simple_yaml(&[up.url()], "")).await;
    let body = Bytes::from(vec![b'x'; 300_000]);
    let req = Request::post(proxy.url("/p"))
        .body(Full::new(body.clone()))
        .unwrap();
    let (status, _, _) = send(&h1_client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let got = &up.received()[0];
    assert_eq!(got.body, body);
    assert_eq!(
        got.headers["content-length"], "300000",
        "re-framed from the body's known size"
    );
}

#[tokio::test]
async fn host_rewrite_uses_the_endpoint_authority() {
    let up = FakeUpstream::start().await;
    let proxy = TestProxy::start(&simple_yaml(&[up.url()], "host: rewrite")).await;
    let req = Request::get(proxy.url("/"))
        .header("host", "public.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, _) = send(&h1_client(), req).await;
    assert_eq!(status, StatusCode::OK);
    let h = &up.received()[0].headers;
    assert_eq!(h["host"], up.addr.to_string());
    assert_eq!(h["x-forwarded-host"], "public.example");
}

#[tokio::test]
async fn routes_pick_clusters_by_prefix_host_and_method_and_404_otherwise() {
    let api = FakeUpstream::builder().name("api").start().await;
    let admin = FakeUpstream::builder().name("admin").start().await;
    let writes = FakeUpstream::builder().name("writes").start().await;
    let proxy = TestProxy::start(&yaml(&format!(
        "clusters:\n  api: {{ endpoints: [\"{}\"] }}\n  admin: {{ endpoints: [\"{}\"] }}\n  writes: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: admin, match: {{ path_prefix: /api/, host: admin.example }}, primary: admin }}\n  - {{ name: writes, match: {{ path_prefix: /api/, methods: [POST, DELETE] }}, primary: writes }}\n  - {{ name: api, match: {{ path_prefix: /api/ }}, primary: api }}\n",
        api.url(),
        admin.url(),
        writes.url()
    )))
    .await;
    let client = h1_client();
    let call = |method: &str, host: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(proxy.url(path))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (_, h, _) = send(&client, call("GET", "admin.example:8080", "/api/x")).await;
    assert_eq!(h["x-upstream"], "admin");
    let (_, h, _) = send(&client, call("POST", "other.example", "/api/x")).await;
    assert_eq!(h["x-upstream"], "writes");
    let (_, h, _) = send(&client, call("GET", "other.example", "/api/x")).await;
    assert_eq!(h["x-upstream"], "api");
    let (status, h, body) = send(&client, call("GET", "other.example", "/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert!(h.contains_key("x-request-id"));
    assert_eq!(body, "no route matches this request\n");
    assert_eq!(
        api.count() + admin.count() + writes.count(),
        3,
        "the 404 reached no upstream"
    );
    assert_eq!(
        proxy
            .metric("teeproxy_rejected_requests_total{reason=\"no_route\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("teeproxy_requests_total{route=\"(none)\",status_class=\"4xx\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn https_endpoint_that_is_not_tls_fails_closed_with_502() {
    let plain = FakeUpstream::start().await;
    let proxy = TestProxy::start(&simple_yaml(&[format!("https://{}", plain.addr)], "")).await;
    let (status, _, _) = get(&proxy.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn an_endpoint_that_refuses_is_ejected_while_others_serve() {
    let up = FakeUpstream::start().await;
    let dead = closed_port().await;
    let proxy = TestProxy::start(&simple_yaml(
        &[format!("http://{dead}"), up.url()],
        "ejection_time: 30s",
    ))
    .await;
    let client = h1_client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let req = Request::get(proxy.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        statuses.push(send(&client, req).await.0.as_u16());
    }
    // A call that meets the dead endpoint is resent to the live one (no body).
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.count(), 10);
    let ejections = proxy
        .metric("teeproxy_upstream_ejections_total{cluster=\"primary\",leg=\"primary\"}")
        .await;
    assert!(ejections <= 1.0, "ejected once for 30 s, got {ejections}");
}

#[tokio::test]
async fn round_robin_spreads_over_endpoints() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    let proxy = TestProxy::start(&simple_yaml(&[a.url(), b.url()], "")).await;
    let client = h1_client();
    for _ in 0..10 {
        let req = Request::get(proxy.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&client, req).await.0, StatusCode::OK);
    }
    assert_eq!((a.count(), b.count()), (5, 5));
}

#[tokio::test]
async fn h2c_client_works_against_an_http1_upstream() {
    let up = FakeUpstream::builder().body("over h2").start().await;
    let proxy = TestProxy::start(&simple_yaml(&[up.url()], "")).await;
    let client = h2_client();
    let req = Request::post(proxy.url("/h2?q=1"))
        .body(Full::new(Bytes::from_static(b"h2 body")))
        .unwrap();
    let (status, headers, body) = send(&client, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "over h2");
    assert!(headers.contains_key("x-request-id"));
    let got = &up.received()[0];
    assert_eq!(got.version, Version::HTTP_11);
    assert_eq!(got.uri, "/h2?q=1");
    assert_eq!(
        got.headers["host"],
        proxy.addr.to_string(),
        ":authority becomes Host"
    );
    assert_eq!(got.body, "h2 body");
    // Several concurrent streams on one connection.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let client = client.clone();
        let url = proxy.url(&format!("/s/{i}"));
        set.spawn(async move {
            send(
                &client,
                Request::get(url).body(Full::new(Bytes::new())).unwrap(),
            )
            .await
            .0
        });
    }
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), StatusCode::OK);
    }
    assert_eq!(up.count(), 21);
}

#[tokio::test]
async fn response_body_streams_back() {
    let big = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    let up = FakeUpstream::builder().body(big.clone()).start().await;
    let proxy = TestProxy::start(&simple_yaml(&[up.url()], "")).await;
    let (status, headers, body) = get(&proxy.url("/big")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], big.len().to_string());
    assert!(body == big);
}

#[tokio::test]
async fn bodies_stream_both_ways_without_waiting_for_the_end() {
    let up = FakeUpstream::builder().echo().start().await;
    let proxy = TestProxy::start(&simple_yaml(&[up.url()], "")).await;
    let (mut tx, body) = Channel::<Bytes>::new(1);
    let client: Client<_, Channel<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(proxy.url("/echo")).body(body).unwrap();
    let call = tokio::spawn(async move { client.request(req).await });
    tx.send_data(Bytes::from_static(b"first chunk"))
        .await
        .unwrap();
    // The response head and the first chunk come back while the request body is still open.
    let resp = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("head before the body ended")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut resp_body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(5), resp_body.frame())
        .await
        .expect("first chunk echoed")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "first chunk");
    tx.send_data(Bytes::from_static(b"second")).await.unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), resp_body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "second");
    drop(tx);
    assert!(resp_body.collect().await.unwrap().to_bytes().is_empty());
}

#[tokio::test]
async fn back_pressure_holds_when_the_upstream_does_not_read() {
    use tokio::io::AsyncWriteExt;
    let sink = FakeUpstream::builder().never_read().start().await;
    let proxy = TestProxy::start(&simple_yaml(&[sink.url()], "timeout: 60s")).await;
    let total: u64 = 256 * 1024 * 1024;
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let w = written.clone();
    let addr = proxy.addr;
    let writer = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let chunk = vec![b'z'; 64 * 1024];
        while w.load(std::sync::atomic::Ordering::Relaxed) < total {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
            w.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Wait until the writer stalls: no progress across 300 ms.
    let mut last = u64::MAX;
    assert_eventually!(
        {
            let now = written.load(std::sync::atomic::Ordering::Relaxed);
            let stalled = now == last;
            last = now;
            tokio::time::sleep(Duration::from_millis(300)).await;
            stalled
        },
        "the client's upload stalls"
    );
    let sent = written.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 64 * 1024 * 1024,
        "the proxy buffered {sent} bytes for an upstream that reads nothing"
    );
    writer.abort();
}

#[tokio::test]
async fn a_steady_upload_longer_than_the_response_timeout_is_not_cut_off() {
    // The response timeout (300 ms) starts once the body is sent; the upload itself takes
    // about a second, with pauses well under the body inactivity limit.
    let up = FakeUpstream::start().await;
    let proxy = TestProxy::start(&simple_yaml(&[up.url()], "timeout: 300ms")).await;
    let (mut tx, body) = Channel::<Bytes>::new(1);
    tokio::spawn(async move {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(120)).await;
            if tx.send_data(Bytes::from(vec![b'u'; 1024])).await.is_err() {
                return;
            }
        }
    });
    let client: Client<_, Channel<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .request(Request::post(proxy.url("/upload")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(up.received()[0].body.len(), 8 * 1024);
    // The timeout still applies once the body is in: a slow answer is 504.
    let slow = FakeUpstream::builder()
        .delay(Duration::from_secs(3))
        .start()
        .await;
    let proxy = TestProxy::start(&simple_yaml(&[slow.url()], "timeout: 300ms")).await;
    let req = Request::post(proxy.url("/p"))
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.0, StatusCode::GATEWAY_TIMEOUT);
}
