//! Paired measurements and response comparison end to end: `/api/paths` agrees with what
//! the fake upstreams did, each comparison mode counts and lists mismatches, and the
//! comparison never delays the client.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use teeproxy_tests::*;

fn compare_yaml(primary: &str, shadow: &str, compare: &str, extra: &str) -> String {
    format!(
        "{}{extra}",
        shadow_yaml(
            primary,
            shadow,
            "",
            &format!("methods: any, compare: {{ {compare} }}")
        )
    )
}

async fn get_ok(proxy: &TestProxy, path: &str) -> (http::HeaderMap, Bytes) {
    let (status, headers, body) = get(&proxy.url(path)).await;
    assert_eq!(status, StatusCode::OK, "{path}");
    (headers, body)
}

fn compared(m: &str, path: &str, result: &str) -> f64 {
    metric_value(
        m,
        &format!(
            "teeproxy_compare_results_total{{route=\"all\",path=\"{path}\",shadow=\"candidate\",result=\"{result}\"}}"
        ),
    )
}

#[tokio::test]
async fn api_paths_pairs_latency_per_path_and_finds_the_slow_one() {
    // Both legs take 10 ms everywhere; the shadow takes 50 ms more on /slow.
    let base = Duration::from_millis(10);
    let p = FakeUpstream::builder().body("{}").delay(base).start().await;
    let c = FakeUpstream::builder()
        .body("{}")
        .delay(base)
        .delay_on("/slow", Duration::from_millis(50))
        .start()
        .await;
    let proxy = TestProxy::start(&shadow_yaml(&p.url(), &c.url(), "", "")).await;
    for i in 0..30 {
        get_ok(&proxy, "/slow").await;
        get_ok(&proxy, &format!("/fast/{i}")).await;
    }
    assert_eventually!(c.count() == 60);
    assert_eventually!(
        {
            let v = admin_json(&proxy, "/api/paths").await;
            v["paths"]
                .as_array()
                .is_some_and(|rows| rows.iter().all(|r| r["shadow_leg"]["count"] == 30))
        },
        "both shadow legs measured"
    );
    let v = admin_json(&proxy, "/api/paths").await;
    let slow = path_row(&v, "/slow", "candidate");
    let fast = path_row(&v, "/fast/{id}", "candidate");
    assert_eq!(slow["requests"], 30);
    assert_eq!(fast["requests"], 30, "thirty distinct ids, one template");
    let (rs, rf) = (
        slow["ratio_p50"].as_f64().unwrap(),
        fast["ratio_p50"].as_f64().unwrap(),
    );
    assert!(rs > 3.0, "the shadow is 50 ms slower on /slow: ratio {rs}");
    assert!(
        (0.7..1.4).contains(&rf),
        "about the same elsewhere: ratio {rf}"
    );
    assert!(slow["shadow_leg"]["p50_ms"].as_f64().unwrap() >= 55.0);
    assert!(slow["primary"]["p50_ms"].as_f64().unwrap() < 40.0);
    assert_eq!(slow["mismatches"], 0);
    assert_eq!(slow["results"]["match"], 30);
    assert_eq!(slow["primary"]["error_rate"], 0.0);
    assert!(slow["total_primary_seconds"].as_f64().unwrap() > 0.0);
    let totals: Vec<f64> = v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total_primary_seconds"].as_f64().unwrap())
        .collect();
    assert!(
        totals.windows(2).all(|w| w[0] >= w[1]),
        "sorted by total time: {totals:?}"
    );

    // The same pairing in Prometheus (time to the response head), labelled by template,
    // never by raw path.
    let m = proxy.metrics().await;
    for leg in [
        "leg=\"primary\",cluster=\"primary\"",
        "leg=\"shadow\",cluster=\"candidate\"",
    ] {
        let line = format!(
            "teeproxy_path_latency_seconds_count{{route=\"all\",path=\"/fast/{{id}}\",{leg}}}"
        );
        assert_eq!(metric_value(&m, &line), 30.0, "{line}");
    }
    assert!(
        !m.contains("path=\"/fast/7\""),
        "raw paths are never labels"
    );
    assert_eq!(compared(&m, "/slow", "match"), 30.0);
}

#[tokio::test]
async fn json_mismatches_are_counted_and_listed_with_their_pointers() {
    let p = FakeUpstream::builder()
        .header("content-type", "application/json")
        .body(r#"{"id":7,"plan":"pro","served_at":1,"tags":["a","b"]}"#)
        .start()
        .await;
    let c = FakeUpstream::builder()
        .header("content-type", "application/json")
        .body(r#"{"tags":["a","b"],"served_at":2,"plan":"free","id":7}"#)
        .start()
        .await;
    let proxy = TestProxy::start(&compare_yaml(
        &p.url(),
        &c.url(),
        "body: json, ignore: [\"/served_at\"]",
        "",
    ))
    .await;
    let (headers, body) = get_ok(&proxy, "/api/users/7").await;
    assert_eq!(
        body, r#"{"id":7,"plan":"pro","served_at":1,"tags":["a","b"]}"#,
        "the client sees the primary"
    );
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eventually!(compared(&proxy.metrics().await, "/api/users/{id}", "body_mismatch") == 1.0);
    let v = admin_json(&proxy, "/api/mismatches").await;
    let g = &v["groups"][0];
    assert_eq!(
        (g["path"].as_str(), g["count"].as_u64()),
        (Some("/api/users/{id}"), Some(1))
    );
    assert_eq!(g["fields"], serde_json::json!(["/plan"]), "{g}");
    let m = &g["example"];
    assert_eq!(m["request_id"], id.as_str());
    assert_eq!(m["result"], "body_mismatch");
    assert_eq!(
        (
            m["method"].as_str(),
            m["path"].as_str(),
            m["template"].as_str()
        ),
        (Some("GET"), Some("/api/users/7"), Some("/api/users/{id}"))
    );
    assert_eq!(
        (m["primary_status"].as_u64(), m["shadow_status"].as_u64()),
        (Some(200), Some(200))
    );
    assert_eq!(
        m["diff"].as_array().unwrap().len(),
        1,
        "served_at ignored, key order irrelevant: {m}"
    );
    assert_eq!(m["diff"][0]["at"], "/plan");
    assert_eq!(m["diff"][0]["primary"], "\"pro\"");
    assert_eq!(m["diff"][0]["shadow"], "\"free\"");
    let row = path_row(
        &admin_json(&proxy, "/api/paths").await,
        "/api/users/{id}",
        "candidate",
    )
    .clone();
    assert_eq!(row["mismatch_rate"], 1.0);
}

#[tokio::test]
async fn reordered_keys_and_ignored_fields_match() {
    let p = FakeUpstream::builder()
        .header("content-type", "application/json")
        .body(r#"{"a":1,"b":{"x":[1,2]},"ts":1}"#)
        .start()
        .await;
    let c = FakeUpstream::builder()
        .header("content-type", "application/json")
        .body(r#"{"ts":99,"b":{"x":[1,2]},"a":1}"#)
        .start()
        .await;
    let proxy = TestProxy::start(&compare_yaml(
        &p.url(),
        &c.url(),
        "body: json, ignore: [\"/ts\"]",
        "",
    ))
    .await;
    for _ in 0..5 {
        get_ok(&proxy, "/same").await;
    }
    assert_eventually!(compared(&proxy.metrics().await, "/same", "match") == 5.0);
    assert!(
        admin_json(&proxy, "/api/mismatches").await["groups"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn status_header_and_exact_body_mismatches() {
    let p = FakeUpstream::builder()
        .header("content-type", "application/json")
        .body("same body")
        .start()
        .await;
    for (shadow, compare, result, at) in [
        (
            FakeUpstream::builder()
                .status(503)
                .header("content-type", "application/json")
                .body("same body"),
            "",
            "status_mismatch",
            "status",
        ),
        (
            FakeUpstream::builder()
                .header("content-type", "text/html")
                .body("same body"),
            "",
            "header_mismatch",
            "header content-type",
        ),
        (
            FakeUpstream::builder()
                .header("content-type", "application/json")
                .body("same Body"),
            "body: exact",
            "body_mismatch",
            "byte 5",
        ),
        (
            FakeUpstream::builder()
                .header("content-type", "application/json")
                .body("same body"),
            "body: exact",
            "match",
            "",
        ),
    ] {
        let c = shadow.start().await;
        let proxy = TestProxy::start(&compare_yaml(&p.url(), &c.url(), compare, "")).await;
        get_ok(&proxy, "/x").await;
        assert_eventually!(
            compared(&proxy.metrics().await, "/x", result) == 1.0,
            "{result}"
        );
        let listed = admin_json(&proxy, "/api/mismatches").await;
        if at.is_empty() {
            assert!(listed["groups"].as_array().unwrap().is_empty());
        } else {
            assert_eq!(
                listed["groups"][0]["example"]["diff"][0]["at"], at,
                "{listed}"
            );
        }
    }
}

#[tokio::test]
async fn a_failing_shadow_is_a_shadow_error_not_a_mismatch() {
    let p = FakeUpstream::start().await;
    let dead = closed_port().await;
    let proxy = TestProxy::start(&compare_yaml(&p.url(), &format!("http://{dead}"), "", "")).await;
    get_ok(&proxy, "/e").await;
    assert_eventually!(compared(&proxy.metrics().await, "/e", "shadow_error") == 1.0);
    let row = path_row(&admin_json(&proxy, "/api/paths").await, "/e", "candidate").clone();
    assert_eq!(row["shadow_leg"]["error_rate"], 1.0);
    assert_eq!(row["mismatches"], 0);
}

#[tokio::test]
async fn comparison_never_delays_the_client_and_skips_large_bodies() {
    let big = Bytes::from(vec![b'x'; 600 * 1024]);
    let p = FakeUpstream::builder().body(big.clone()).start().await;
    let c = FakeUpstream::builder()
        .body(big.clone())
        .delay(Duration::from_millis(1500))
        .start()
        .await;
    let proxy = TestProxy::start(&compare_yaml(
        &p.url(),
        &c.url(),
        "body: exact, max_body: 256KiB",
        "",
    ))
    .await;
    let started = Instant::now();
    let (_, body) = get_ok(&proxy, "/big").await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "the client did not wait for the shadow: {:?}",
        started.elapsed()
    );
    assert!(body == big, "the whole primary body streamed through");
    assert_eventually!(compared(&proxy.metrics().await, "/big", "skipped") == 1.0);
    let m = proxy.metrics().await;
    // Skip reasons are per route and shadow (per path, the `skipped` result above).
    let skipped = "teeproxy_compare_skipped_total{route=\"all\",shadow=\"candidate\",reason=\"body_too_large\"}";
    assert_eq!(metric_value(&m, skipped), 1.0);
}

#[tokio::test]
async fn mismatches_are_grouped_by_signature_and_the_groups_stay_bounded() {
    let p = FakeUpstream::builder().status(200).start().await;
    let c = FakeUpstream::builder().status(500).start().await;
    let proxy = TestProxy::start(&compare_yaml(&p.url(), &c.url(), "", "mismatch_ring: 5\n")).await;
    // Twenty requests, one template, one signature: one group.
    for i in 0..20 {
        get_ok(&proxy, &format!("/r/{i}")).await;
    }
    assert_eventually!(compared(&proxy.metrics().await, "/r/{id}", "status_mismatch") == 20.0);
    let v = admin_json(&proxy, "/api/mismatches").await;
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{v}");
    let g = &groups[0];
    assert_eq!(
        (
            g["path"].as_str(),
            g["count"].as_u64(),
            g["result"].as_str()
        ),
        (Some("/r/{id}"), Some(20), Some("status_mismatch"))
    );
    assert_eq!(g["fields"], serde_json::json!(["status"]));
    assert!(g["first_seen_ms"].as_u64().unwrap() <= g["last_seen_ms"].as_u64().unwrap());
    assert_eq!(g["example"]["diff"][0]["at"], "status");
    // Seven more templates: five groups kept, the least recently seen evicted.
    for path in ["/a", "/b", "/c", "/d", "/e", "/f", "/g"] {
        get_ok(&proxy, path).await;
        assert_eventually!(compared(&proxy.metrics().await, path, "status_mismatch") == 1.0);
    }
    let v = admin_json(&proxy, "/api/mismatches").await;
    let paths: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/g", "/f", "/e", "/d", "/c"],
        "most recent first: {v}"
    );
    assert_eq!(
        (v["evicted"].as_u64(), v["cap"].as_u64()),
        (Some(3), Some(5))
    );
}

#[tokio::test]
async fn api_config_redacts_shadow_header_values() {
    let p = FakeUpstream::start().await;
    let c = FakeUpstream::start().await;
    let proxy = TestProxy::start(&shadow_yaml(
        &p.url(),
        &c.url(),
        "",
        "headers: { set: { authorization: \"Bearer s3cret\" }, remove: [cookie] }",
    ))
    .await;
    let (status, _, body) = get(&format!("http://{}/api/config", proxy.admin)).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shadow = &v["routes"][0]["shadows"][0];
    assert_eq!(shadow["headers"]["set"]["authorization"], "<redacted>");
    assert_eq!(shadow["headers"]["remove"][0], "cookie");
    assert_eq!(v["clusters"]["candidate"]["endpoints"][0], c.url().as_str());
    assert_eq!(shadow["compare"]["body"], "off");
    assert_eq!(
        v["routes"][0]["websocket"], true,
        "the whole config, not a copy of it"
    );
}

#[tokio::test]
async fn configured_templates_and_the_cap_hold_end_to_end() {
    let p = FakeUpstream::start().await;
    let c = FakeUpstream::start().await;
    let yaml = shadow_yaml(&p.url(), &c.url(), "", "").replace(
        "    primary: primary\n",
        "    primary: primary\n    paths: [\"/users/{name}/profile\"]\n    max_paths: 3\n",
    );
    let proxy = TestProxy::start(&yaml).await;
    for path in [
        "/users/alice/profile",
        "/users/bob/profile",
        "/a",
        "/b",
        "/c",
        "/d",
        "/e/1",
    ] {
        let req = Request::get(proxy.url(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&h1_client(), req).await.0, StatusCode::OK);
    }
    let v = admin_json(&proxy, "/api/paths").await;
    let mut names: Vec<String> = v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["/a", "/b", "/c", "/users/{name}/profile", "{other}"]
    );
    assert_eq!(path_row(&v, "{other}", "candidate")["requests"], 2);
    assert_eq!(
        path_row(&v, "/users/{name}/profile", "candidate")["requests"],
        2
    );
}

/// A small web application for A/A and A/B runs, served on 127.0.0.1 with hyper:
/// - `/echo/...`: the request's method, path, URL and headers as JSON, gzip-coded;
/// - `/page`: HTML with a link to its own Host, br-coded;
/// - `/logo.png`: binary bytes;
/// - `/users/{id}`: a JSON user; version `b` answers another `plan`.
struct App {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    async fn start(version: &'static str) -> App {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let svc = hyper::service::service_fn(move |req| async move {
                    Ok::<_, std::convert::Infallible>(App::answer(version, &req))
                });
                conns.spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn answer<B>(version: &str, req: &Request<B>) -> http::Response<Full<Bytes>> {
        use std::io::Write;
        let path = req.uri().path();
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let ok = |ctype: &str, coding: Option<&str>, body: Vec<u8>| {
            let mut r = http::Response::builder().header("content-type", ctype);
            if let Some(c) = coding {
                r = r.header("content-encoding", c);
            }
            r.body(Full::new(Bytes::from(body))).unwrap()
        };
        if path.starts_with("/echo") {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            let doc = serde_json::json!({
                "method": req.method().as_str(),
                "path": path,
                "url": format!("http://{host}{path}"),
                "headers": headers,
            });
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(doc.to_string().as_bytes()).unwrap();
            ok("application/json", Some("gzip"), gz.finish().unwrap())
        } else if path == "/page" {
            let html = format!(
                "<!doctype html><html><body><h1>Orders</h1><a href=\"http://{host}/page?n=2\">next</a></body></html>"
            );
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(html.as_bytes()).unwrap();
            }
            ok("text/html", Some("br"), out)
        } else if path == "/logo.png" {
            let png: Vec<u8> = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]
                .into_iter()
                .chain((0..=255u8).cycle().take(3000))
                .collect();
            ok("image/png", None, png)
        } else if let Some(id) = path.strip_prefix("/users/") {
            let plan = if version == "b" { "free" } else { "pro" };
            let doc =
                serde_json::json!({"id": id, "name": "ada", "plan": plan, "tags": ["a", "b"]});
            ok("application/json", None, doc.to_string().into_bytes())
        } else {
            http::Response::builder()
                .status(404)
                .body(Full::new(Bytes::from_static(b"not found")))
                .unwrap()
        }
    }
}

/// The mirror of the runs below: JSON bodies compared, the Host given a suffix, a header
/// set and one removed (and the shadow marker and trace context, as always).
fn app_yaml(primary: &App, candidate: &App) -> String {
    shadow_yaml(
        &primary.url(),
        &candidate.url(),
        "",
        "compare: { body: json }, host: { suffix: \"-shadow\" }, \
         headers: { set: { x-env: shadow }, remove: [cookie] }",
    )
}

/// A request as a browser would send it, with a cookie and a trace context.
async fn browse(proxy: &TestProxy, path: &str) -> (http::HeaderMap, Bytes) {
    let req = Request::get(proxy.url(path))
        .header("cookie", "session=abc")
        .header("x-env", "prod")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&h1_client(), req).await;
    assert_eq!(status, StatusCode::OK, "{path}");
    (headers, body)
}

const APP_PATHS: [(&str, &str); 4] = [
    ("/echo/1", "/echo/{id}"),
    ("/page", "/page"),
    ("/logo.png", "/logo.png"),
    ("/users/7", "/users/{id}"),
];

#[tokio::test]
async fn the_same_app_on_both_legs_never_differs_whatever_its_bodies() {
    let (p, c) = (App::start("a").await, App::start("a").await);
    let proxy = TestProxy::start(&app_yaml(&p, &c)).await;
    for _ in 0..5 {
        for (path, _) in APP_PATHS {
            browse(&proxy, path).await;
        }
    }
    // The client gets the primary's bytes untouched: still gzip-coded.
    let (headers, body) = browse(&proxy, "/echo/1").await;
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(&body[..2], b"\x1f\x8b");
    assert_eventually!(
        {
            let m = proxy.metrics().await;
            APP_PATHS
                .iter()
                .map(|(_, t)| compared(&m, t, "match"))
                .sum::<f64>()
                == 21.0
        },
        "every answer compared and equal: {}",
        proxy.metrics().await
    );
    let m = proxy.metrics().await;
    for (_, template) in APP_PATHS {
        for result in [
            "status_mismatch",
            "header_mismatch",
            "body_mismatch",
            "skipped",
        ] {
            assert_eq!(compared(&m, template, result), 0.0, "{template} {result}");
        }
    }
    let v = admin_json(&proxy, "/api/mismatches").await;
    assert_eq!(v["groups"], serde_json::json!([]), "{v}");
}

#[tokio::test]
async fn a_changed_field_is_one_group_naming_that_field() {
    let (p, c) = (App::start("a").await, App::start("b").await);
    let proxy = TestProxy::start(&app_yaml(&p, &c)).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (headers, _) = browse(&proxy, &format!("/users/{i}")).await;
        ids.push(headers["x-request-id"].to_str().unwrap().to_string());
        for (path, _) in &APP_PATHS[..3] {
            browse(&proxy, path).await;
        }
    }
    assert_eventually!(compared(&proxy.metrics().await, "/users/{id}", "body_mismatch") == 6.0);
    assert_eventually!(
        {
            let m = proxy.metrics().await;
            APP_PATHS[..3]
                .iter()
                .map(|(_, t)| compared(&m, t, "match"))
                .sum::<f64>()
                == 18.0
        },
        "the other paths match"
    );
    let v = admin_json(&proxy, "/api/mismatches").await;
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{v}");
    let g = &groups[0];
    assert_eq!(
        (
            g["route"].as_str(),
            g["path"].as_str(),
            g["shadow"].as_str(),
            g["result"].as_str(),
            g["count"].as_u64()
        ),
        (
            Some("all"),
            Some("/users/{id}"),
            Some("candidate"),
            Some("body_mismatch"),
            Some(6)
        )
    );
    assert_eq!(g["fields"], serde_json::json!(["/plan"]));
    let (first, last) = (
        g["first_seen_ms"].as_u64().unwrap(),
        g["last_seen_ms"].as_u64().unwrap(),
    );
    assert!(first > 0 && first <= last, "{g}");
    let e = &g["example"];
    assert!(ids.iter().any(|id| e["request_id"] == id.as_str()), "{e}");
    assert_eq!(e["diff"][0]["at"], "/plan");
    assert_eq!(
        (
            e["diff"][0]["primary"].as_str(),
            e["diff"][0]["shadow"].as_str()
        ),
        (Some("\"pro\""), Some("\"free\""))
    );
}
