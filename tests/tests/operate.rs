//! Operating a running proxy through its admin: pausing, resuming and re-percenting a
//! shadow at runtime (and what a reload does to that), the bearer token that guards
//! changes and contents, the `/metrics`-only listener, and redaction of kept mismatches.

use http::StatusCode;
use teeproxy_tests::*;

/// Sends `n` GETs to distinct paths; every one must be served by the primary.
async fn send_n(proxy: &TestProxy, tag: &str, n: usize) {
    for i in 0..n {
        let (status, _, _) = get(&proxy.url(&format!("/{tag}/{i}"))).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_paused_resumed_and_repercented_at_runtime_until_the_file_changes_it() {
    let p = FakeUpstream::builder().name("primary").start().await;
    let c = FakeUpstream::builder().name("candidate").start().await;
    let yaml = shadow_yaml(&p.url(), &c.url(), "", "percent: 100");
    let proxy = TestProxy::start(&yaml).await;
    let shadows = admin_json(&proxy, "/api/shadows").await;
    let row = shadow_row(&shadows, "all", "candidate");
    assert_eq!(row["state"], "active");
    assert_eq!(row["percent"], 100.0);
    assert!(row["runtime"].is_null(), "{row}");

    send_n(&proxy, "before", 10).await;
    assert_eventually!(c.count() == 10);

    // Pause: the primary still serves everything, the shadow gets nothing, each copy is
    // dropped `paused`.
    let (status, body) = admin_post(
        proxy.admin,
        "/api/shadows/all/candidate",
        r#"{"paused": true}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let row: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(row["state"], "paused");
    send_n(&proxy, "paused", 20).await;
    assert_eq!(p.count(), 30);
    let m = proxy.metrics().await;
    assert_eq!(dropped(&m, "all", "candidate", "paused"), 20.0);
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_shadow_paused{route=\"all\",shadow=\"candidate\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_shadow_control_changes_total{route=\"all\",shadow=\"candidate\",change=\"pause\"}"
        ),
        1.0
    );
    assert_eventually!(
        ShadowCounts::from_metrics(&proxy.metrics().await, "all", "candidate").balanced()
    );
    assert_eq!(c.count(), 10, "a paused shadow receives nothing");

    // A reload with the same file keeps the pause.
    proxy.reload(&yaml).await;
    send_n(&proxy, "still-paused", 5).await;
    assert_eq!(
        dropped(&proxy.metrics().await, "all", "candidate", "paused"),
        25.0
    );
    assert_eq!(c.count(), 10);

    // Resume, then 0 %: everything sampled out; then back to the file's 100 %.
    let (status, _) = admin_post(
        proxy.admin,
        "/api/shadows/all/candidate",
        r#"{"paused": false}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    send_n(&proxy, "resumed", 10).await;
    assert_eventually!(c.count() == 20);
    let (status, body) = admin_post(
        proxy.admin,
        "/api/shadows/all/candidate",
        r#"{"percent": 0}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = dropped(&proxy.metrics().await, "all", "candidate", "sampled_out");
    send_n(&proxy, "zero", 10).await;
    assert_eq!(
        dropped(&proxy.metrics().await, "all", "candidate", "sampled_out"),
        before + 10.0
    );
    assert_eq!(c.count(), 20);
    let shadows = admin_json(&proxy, "/api/shadows").await;
    let row = shadow_row(&shadows, "all", "candidate");
    assert_eq!(
        (row["percent"].as_f64(), row["file_percent"].as_f64()),
        (Some(0.0), Some(100.0))
    );
    assert_eq!(row["runtime"]["percent"], 0.0);

    // A reload that changes this shadow in the file wins: the override is gone.
    let changed = shadow_yaml(&p.url(), &c.url(), "", "percent: 100, timeout: 7s");
    proxy.reload(&changed).await;
    let shadows = admin_json(&proxy, "/api/shadows").await;
    let row = shadow_row(&shadows, "all", "candidate");
    assert_eq!(row["percent"], 100.0);
    assert!(row["runtime"].is_null(), "{row}");
    assert_eq!(
        proxy
            .metric("teeproxy_shadow_control_changes_total{route=\"all\",shadow=\"candidate\",change=\"file\"}")
            .await,
        1.0
    );
    send_n(&proxy, "file", 10).await;
    assert_eventually!(c.count() == 30);
    let m = proxy.metrics().await;
    let counts = ShadowCounts::from_metrics(&m, "all", "candidate");
    assert!(counts.balanced(), "{counts:?}");
    assert_eq!(counts.offered, 65.0);
    assert_eq!(counts.sent, 30.0);
}

#[tokio::test]
async fn runtime_changes_are_checked() {
    let p = FakeUpstream::builder().start().await;
    let c = FakeUpstream::builder().start().await;
    let proxy = TestProxy::start(&shadow_yaml(&p.url(), &c.url(), "", "")).await;
    for (path, body, want) in [
        (
            "/api/shadows/all/nope",
            r#"{"paused": true}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/shadows/none/candidate",
            r#"{"paused": true}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/shadows/all/candidate",
            r#"{"percent": 101}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/shadows/all/candidate",
            r#"{"percent": -1}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/shadows/all/candidate",
            r#"{"pause": true}"#,
            StatusCode::BAD_REQUEST,
        ),
        ("/api/shadows/all/candidate", "{}", StatusCode::BAD_REQUEST),
        (
            "/api/shadows/all/candidate",
            "paused",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, text) = admin_post(proxy.admin, path, body, None).await;
        assert_eq!(status, want, "{path} {body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON error");
        assert!(v["error"].is_string(), "{text}");
    }
    let shadows = admin_json(&proxy, "/api/shadows").await;
    assert!(shadow_row(&shadows, "all", "candidate")["runtime"].is_null());
    // Reads stay reads.
    let (status, _) = admin_post(proxy.admin, "/api/paths", "{}", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = get(&format!("http://{}/api/shadows/all/candidate", proxy.admin)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn with_a_token_file_changes_and_contents_need_the_token_and_health_stays_open() {
    let p = FakeUpstream::builder().start().await;
    let c = FakeUpstream::builder().start().await;
    let dir = std::env::temp_dir().join(format!("teeproxy-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let yaml = shadow_yaml(&p.url(), &c.url(), "", "").replace(
        "admin: { address: \"127.0.0.1:0\" }",
        &format!(
            "admin: {{ address: \"127.0.0.1:0\", token_file: \"{}\" }}",
            token_file.display()
        ),
    );
    assert!(yaml.contains("token_file"), "{yaml}");
    let proxy = TestProxy::start(&yaml).await;
    let admin = |path: &str| format!("http://{}{path}", proxy.admin);

    for path in ["/api/mismatches", "/api/config"] {
        let (status, headers, _) = get_with_token(&admin(path), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let (status, _, _) = get_with_token(&admin(path), Some("guess")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _, body) = get_with_token(&admin(path), Some("s3cret")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
    }
    let pause = r#"{"paused": true}"#;
    let (status, _) = admin_post(proxy.admin, "/api/shadows/all/candidate", pause, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let shadows = admin_json(&proxy, "/api/shadows").await;
    assert_eq!(shadow_row(&shadows, "all", "candidate")["state"], "active");
    let (status, _) = admin_post(
        proxy.admin,
        "/api/shadows/all/candidate",
        pause,
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let shadows = admin_json(&proxy, "/api/shadows").await;
    assert_eq!(shadow_row(&shadows, "all", "candidate")["state"], "paused");

    // Open without a token: what Prometheus and probes need, and the page itself.
    for path in [
        "/metrics",
        "/live",
        "/ready",
        "/api/paths",
        "/api/shadows",
        "/",
    ] {
        let (status, _, _) = get(&admin(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // A rotated token applies at once.
    std::fs::write(&token_file, "rotated").unwrap();
    let (status, _, _) = get_with_token(&admin("/api/config"), Some("s3cret")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get_with_token(&admin("/api/config"), Some("rotated")).await;
    assert_eq!(status, StatusCode::OK);
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(&m, "teeproxy_admin_denied_total{reason=\"missing_token\"}"),
        3.0
    );
    assert_eq!(
        metric_value(&m, "teeproxy_admin_denied_total{reason=\"wrong_token\"}"),
        3.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_a_token_an_admin_beyond_loopback_refuses_changes_and_contents() {
    let p = FakeUpstream::builder().start().await;
    let c = FakeUpstream::builder().start().await;
    // Bound to every address (reached here through 127.0.0.1), with a metrics-only
    // listener beside it.
    let yaml = shadow_yaml(&p.url(), &c.url(), "", "").replace(
        "admin: { address: \"127.0.0.1:0\" }",
        "admin: { address: \"0.0.0.0:0\", metrics_address: \"127.0.0.1:0\" }",
    );
    let proxy = TestProxy::start(&yaml).await;
    let port = proxy.admin.port();
    let admin = |path: &str| format!("http://127.0.0.1:{port}{path}");
    for path in ["/api/mismatches", "/api/config"] {
        let (status, _, body) = get(&admin(path)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(String::from_utf8_lossy(&body).contains("admin.token_file"));
    }
    let loopback = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, _) = admin_post(
        loopback,
        "/api/shadows/all/candidate",
        r#"{"paused": true}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = get(&admin("/metrics")).await;
    assert_eq!(status, StatusCode::OK);

    let only = proxy.metrics_only.expect("the metrics listener");
    for (path, want) in [
        ("/metrics", StatusCode::OK),
        ("/live", StatusCode::OK),
        ("/ready", StatusCode::OK),
        ("/api/config", StatusCode::NOT_FOUND),
        ("/api/shadows", StatusCode::NOT_FOUND),
        ("/", StatusCode::NOT_FOUND),
    ] {
        let (status, _, _) = get(&format!("http://{only}{path}")).await;
        assert_eq!(status, want, "{path}");
    }
    let (_, _, body) = get(&format!("http://{only}/metrics")).await;
    assert!(
        String::from_utf8_lossy(&body)
            .contains("teeproxy_admin_denied_total{reason=\"no_token_configured\"} 3"),
        "refusals counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_mismatches_show_redacted_fields_as_redacted() {
    let json = "application/json";
    let primary_body = r#"{"user":{"email":"alice@example.com","plan":"free"},"n":1}"#;
    let p = FakeUpstream::builder()
        .header("content-type", json)
        .header("x-session", "primary-session")
        .body(primary_body)
        .start()
        .await;
    // One shadow differs in a header only, the other in the body only.
    let by_header = FakeUpstream::builder()
        .header("content-type", json)
        .header("x-session", "shadow-session")
        .body(primary_body)
        .start()
        .await;
    let by_body = FakeUpstream::builder()
        .header("content-type", json)
        .header("x-session", "primary-session")
        .body(r#"{"user":{"email":"alice@example.org","plan":"pro"},"n":1}"#)
        .start()
        .await;
    let compare = "compare: { body: json, headers: [x-session], redact: [/user/email, X-Session] }";
    let proxy = TestProxy::start(&yaml(&format!(
        "clusters:\n  primary: {{ endpoints: [\"{}\"] }}\n  by_header: {{ endpoints: [\"{}\"] }}\n  by_body: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: all\n    primary: primary\n    shadows: [{{ cluster: by_header, {compare} }}, {{ cluster: by_body, {compare} }}]\n",
        p.url(),
        by_header.url(),
        by_body.url()
    )))
    .await;
    let (status, _, body) = get(&proxy.url("/profile")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        primary_body.as_bytes(),
        "the client gets the primary's answer"
    );
    assert_eventually!(
        admin_json(&proxy, "/api/mismatches").await["groups"]
            .as_array()
            .is_some_and(|g| g.len() == 2)
    );
    let v = admin_json(&proxy, "/api/mismatches").await;
    let text = v.to_string();
    assert!(!text.contains("alice@"), "no email in {text}");
    assert!(
        !text.contains("primary-session") && !text.contains("shadow-session"),
        "no session in {text}"
    );
    let diff = |shadow: &str| -> Vec<(String, String)> {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["shadow"] == shadow)
            .unwrap_or_else(|| panic!("no mismatch of {shadow} in {v}"))["example"]["diff"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["at"].as_str().unwrap().to_string(),
                    d["shadow"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        diff("by_header"),
        [("header x-session".to_string(), "[redacted]".to_string())]
    );
    // What is not redacted still shows, so the mismatch stays useful.
    assert_eq!(
        diff("by_body"),
        [
            ("/user/email".to_string(), "[redacted]".to_string()),
            ("/user/plan".to_string(), "\"pro\"".to_string())
        ]
    );
}

#[tokio::test]
async fn a_reload_that_removes_a_shadow_drops_its_runtime_change() {
    let p = FakeUpstream::builder().start().await;
    let c = FakeUpstream::builder().start().await;
    let with = shadow_yaml(&p.url(), &c.url(), "", "");
    let proxy = TestProxy::start(&with).await;
    let (status, _) = admin_post(
        proxy.admin,
        "/api/shadows/all/candidate",
        r#"{"paused": true}"#,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let paused = "teeproxy_shadow_paused{route=\"all\",shadow=\"candidate\"}";
    assert_eq!(proxy.metric(paused).await, 1.0);
    // The same file without the shadow.
    let without = with.replace("    shadows: [{ cluster: candidate }]\n", "");
    assert_ne!(with, without);
    proxy.reload(&without).await;
    let m = proxy.metrics().await;
    assert!(!m.contains(paused), "the state series is gone: {m}");
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_shadow_control_changes_total{route=\"all\",shadow=\"candidate\",change=\"file\"}"
        ),
        1.0
    );
    assert!(
        admin_json(&proxy, "/api/shadows").await["shadows"]
            .as_array()
            .is_some_and(|s| s.is_empty())
    );
    // Back in the file: active, as the file says.
    proxy.reload(&with).await;
    let shadows = admin_json(&proxy, "/api/shadows").await;
    assert_eq!(shadow_row(&shadows, "all", "candidate")["state"], "active");
    assert_eq!(proxy.metric(paused).await, 0.0);
}

#[tokio::test]
async fn the_admin_refuses_cross_site_posts_and_rebound_host_names() {
    let p = FakeUpstream::builder().start().await;
    let c = FakeUpstream::builder().start().await;
    let proxy = TestProxy::start(&shadow_yaml(&p.url(), &c.url(), "", "")).await;
    let url = format!("http://{}/api/shadows/all/candidate", proxy.admin);
    // A form post (what a page can send cross-site without a preflight).
    let req = http::Request::post(&url)
        .header("content-type", "text/plain")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"paused": true}"#,
        )))
        .unwrap();
    let (status, _, _) = send(&h1_client(), req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A page whose host name resolves to 127.0.0.1.
    for path in ["/api/config", "/api/mismatches"] {
        let req = http::Request::get(format!("http://{}{path}", proxy.admin))
            .header("host", format!("rebound.example:{}", proxy.admin.port()))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let (status, _, _) = send(&h1_client(), req).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let shadows = admin_json(&proxy, "/api/shadows").await;
    assert_eq!(shadow_row(&shadows, "all", "candidate")["state"], "active");
    assert_eq!(
        proxy
            .metric("teeproxy_admin_denied_total{reason=\"host_not_local\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn an_unreadable_token_file_closes_the_protected_endpoints_and_head_is_guarded_too() {
    let p = FakeUpstream::builder().start().await;
    let c = FakeUpstream::builder().start().await;
    let missing = std::env::temp_dir().join(format!("teeproxy-no-token-{}", std::process::id()));
    let yaml = shadow_yaml(&p.url(), &c.url(), "", "").replace(
        "admin: { address: \"127.0.0.1:0\" }",
        &format!(
            "admin: {{ address: \"127.0.0.1:0\", token_file: \"{}\" }}",
            missing.display()
        ),
    );
    let proxy = TestProxy::start(&yaml).await;
    let url = format!("http://{}/api/config", proxy.admin);
    let (status, _, _) = get_with_token(&url, Some("anything")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    std::fs::write(&missing, "t0ken").unwrap();
    let head = |token: Option<&str>| {
        let mut req = http::Request::head(&url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let (status, _, _) = send(&h1_client(), head(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send(&h1_client(), head(Some("t0ken"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        proxy
            .metric("teeproxy_admin_denied_total{reason=\"token_unreadable\"}")
            .await,
        1.0
    );
    let _ = std::fs::remove_file(&missing);
}
