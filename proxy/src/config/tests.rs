//! Config parsing and validation: valid and invalid YAML, inline.

use super::*;
use std::time::Duration;

const MINIMAL: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:8080" }]
clusters:
  primary: { endpoints: ["http://127.0.0.1:9000"] }
routes:
  - name: all
    primary: primary
"#;

fn err(yaml: &str) -> String {
    Config::from_yaml(yaml)
        .expect_err("config must be rejected")
        .to_string()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:9901");
    assert_eq!(c.limits.max_header_bytes, (64 * 1024));
    assert_eq!(c.limits.max_headers, 100);
    assert_eq!(c.limits.max_uri_bytes, (8 * 1024));
    assert_eq!(c.limits.request_head_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.body_timeout, Duration::from_secs(60));
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.clusters["primary"].shadow_max_bytes, (32 * 1024 * 1024));
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    let p = &c.clusters["primary"];
    assert_eq!(p.connect_timeout, Duration::from_secs(5));
    assert_eq!(p.timeout, Duration::from_secs(30));
    assert_eq!(p.host, HostMode::Keep);
    assert_eq!(c.routes[0].match_.path_prefix, "/");
    assert!(c.access_log.enabled);
    assert_eq!(c.x_forwarded_for, ForwardedMode::Append);
}

#[test]
fn full_config_parses() {
    let yaml = r#"
listeners: [{ name: public, address: "0.0.0.0:8080" }, { name: other, address: "[::1]:8081" }]
admin: { address: "127.0.0.1:9901" }
clusters:
  primary:   { endpoints: ["http://10.0.0.1:8080", "https://10.0.0.2:8443"], connect_timeout: 250ms, timeout: 30s, host: rewrite }
  candidate: { endpoints: ["http://10.0.1.1:8080"], timeout: 5s }
routes:
  - name: api
    match: { path_prefix: "/api/", host: "api.example.com", methods: [GET, POST] }
    primary: primary
limits: { max_header_bytes: 32KiB, max_headers: 50, max_uri_bytes: 4KiB, request_head_timeout: 3s }
drain_timeout: 5s
access_log: { enabled: false }
x_forwarded_for: replace
"#;
    let c = Config::from_yaml(yaml).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(
        c.clusters["primary"].connect_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(c.clusters["primary"].host, HostMode::Rewrite);
    assert_eq!(c.limits.max_header_bytes, 32 * 1024);
    assert_eq!(c.routes[0].match_.methods.as_ref().unwrap().len(), 2);
    assert!(!c.access_log.enabled);
    assert_eq!(c.x_forwarded_for, ForwardedMode::Replace);
}

#[test]
fn unknown_key_is_named_with_its_place() {
    let e = err(
        "listeners: [{ name: a, address: \"127.0.0.1:1\" }]\nclusters:\n  p: { endpoints: [\"http://a:1\"], timeuot: 5s }\nroutes: [{ name: r, primary: p }]\n",
    );
    assert!(e.starts_with("<config>:3:"), "{e}");
    assert!(e.contains("timeuot"), "{e}");
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = err("listeners: [\nclusters: {\n");
    assert!(e.starts_with("<config>:"), "{e}");
    let place: Vec<&str> = e.splitn(4, ':').collect();
    assert!(place[1].parse::<u64>().unwrap() >= 1, "{e}");
}

#[test]
fn bad_duration_and_size_are_refused() {
    let e = err(&MINIMAL.replace("endpoints:", "timeout: 5 days, endpoints:"));
    assert!(e.contains("invalid duration"), "{e}");
    let e = err(&format!("{MINIMAL}limits: {{ max_header_bytes: 64 XB }}\n"));
    assert!(e.contains("invalid size"), "{e}");
}

#[test]
fn compound_and_fractional_durations_parse_and_print_readably() {
    let c = Config::from_yaml(&format!(
        "{MINIMAL}drain_timeout: 1m30s\nshadow_drain: 1.5s\nlimits: {{ idle_timeout: 0.5m, body_timeout: 2s500ms }}\n"
    ))
    .unwrap();
    assert_eq!(c.drain_timeout, Duration::from_secs(90));
    assert_eq!(c.shadow_drain, Duration::from_millis(1500));
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(30));
    assert_eq!(c.limits.body_timeout, Duration::from_millis(2500));
    let json = c.to_json();
    assert_eq!(json["drain_timeout"], "1m30s");
    assert_eq!(json["shadow_drain"], "1.5s");
    assert_eq!(json["limits"]["body_timeout"], "2.5s");
    // Errors say what is wrong, with the value and its place (line 8, column 16).
    for (value, why) in [
        ("1m30", "30 has no unit"),
        ("30s1m", "from largest to smallest"),
        ("1.0005s", "finer than a millisecond"),
    ] {
        let e = err(&format!("{MINIMAL}drain_timeout: {value}\n"));
        assert!(
            e.contains(":8:16:") && e.contains(&format!("{value:?}")) && e.contains(why),
            "{value}: {e}"
        );
    }
}

#[test]
fn every_validation_error_names_its_key() {
    let table: Vec<(String, &str, &str)> = vec![
        (MINIMAL.replace("primary: primary", "primary: nope"), "routes[0].primary", "unknown cluster \"nope\""),
        (MINIMAL.replace("http://127.0.0.1:9000", "ftp://127.0.0.1:9000"), "clusters.primary.endpoints[0]", "scheme"),
        (MINIMAL.replace("http://127.0.0.1:9000", "127.0.0.1:9000"), "clusters.primary.endpoints[0]", "http"),
        (MINIMAL.replace("http://127.0.0.1:9000", "http://127.0.0.1:9000/base"), "clusters.primary.endpoints[0]", "no path"),
        (MINIMAL.replace("[\"http://127.0.0.1:9000\"]", "[]"), "clusters.primary.endpoints", "at least one"),
        (MINIMAL.replace("127.0.0.1:8080", "localhost"), "listeners[0].address", "invalid address"),
        (format!("{MINIMAL}  - name: all\n    primary: primary\n"), "routes[1].name", "duplicate route name"),
        (format!("{MINIMAL}  - name: \"bad name\"\n    primary: primary\n"), "routes[1].name", "invalid name"),
        (format!("{MINIMAL}  - name: x\n    match: {{ path_prefix: api }}\n    primary: primary\n"), "routes[1].match.path_prefix", "must start with '/'"),
        (format!("{MINIMAL}  - name: x\n    match: {{ methods: [\"G T\"] }}\n    primary: primary\n"), "routes[1].match.methods[0]", "invalid method"),
        (format!("{MINIMAL}limits: {{ max_header_bytes: 1KiB }}\n"), "limits.max_header_bytes", "between"),
        (format!("{MINIMAL}limits: {{ max_headers: 0 }}\n"), "limits.max_headers", "between"),
        (format!("{MINIMAL}limits: {{ max_uri_bytes: 1MiB }}\n"), "limits.max_uri_bytes", "between"),
        (format!("{MINIMAL}limits: {{ request_head_timeout: 0s }}\n"), "limits.request_head_timeout", "greater than 0"),
        (MINIMAL.replace("endpoints:", "timeout: 0s, endpoints:"), "clusters.primary.timeout", "greater than 0"),
        ("listeners: []\nclusters: { p: { endpoints: [\"http://a:1\"] } }\nroutes: [{ name: r, primary: p }]\n".to_string(), "listeners", "at least one"),
        ("listeners: [{ name: a, address: \"127.0.0.1:1\" }]\nclusters: { p: { endpoints: [\"http://a:1\"] } }\nroutes: []\n".to_string(), "routes", "at least one"),
    ];
    for (yaml, key, msg) in table {
        let e = err(&yaml);
        assert!(e.contains(&format!(": {key}: ")), "want key {key} in {e}");
        assert!(e.contains(msg), "want {msg:?} in {e}");
    }
}

#[test]
fn validation_error_points_at_the_line() {
    let e = err(&MINIMAL.replace("primary: primary", "primary: nope"));
    // `primary: nope` is on line 7 of MINIMAL (which starts with a newline).
    assert!(e.starts_with("<config>:7:"), "{e}");
}

#[test]
fn strict_booleans_refuse_yes() {
    let e = err(&format!("{MINIMAL}access_log: {{ enabled: yes }}\n"));
    assert!(e.contains("<config>:"), "{e}");
}

#[test]
fn endpoints_parse() {
    let e = parse_endpoint("https://example.com:8443").unwrap();
    assert_eq!(e.to_string(), "https://example.com:8443");
    assert!(parse_endpoint("http://user@h:1").is_err());
    assert!(parse_endpoint("http://h:1?x=1").is_err());
}

fn with_shadow(shadow: &str) -> String {
    format!(
        "listeners: [{{ name: l, address: \"127.0.0.1:1\" }}]\nclusters:\n  p: {{ endpoints: [\"http://127.0.0.1:2\"] }}\n  c: {{ endpoints: [\"http://127.0.0.1:3\"], shadow_queue: 8, shadow_max_in_flight: 2 }}\nroutes:\n  - name: r\n    primary: p\n    shadows:\n      - {shadow}\n"
    )
}

#[test]
fn shadow_config_parses_with_defaults_and_every_form() {
    let c = Config::from_yaml(&with_shadow("{ cluster: c }")).unwrap();
    let s = &c.routes[0].shadows[0];
    assert_eq!(s.percent, 100.0);
    assert_eq!(s.max_body, (1024 * 1024));
    assert_eq!(s.timeout, Duration::from_secs(5));
    let methods: Vec<String> = s
        .methods
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert_eq!(methods, ["GET", "HEAD", "OPTIONS"]);
    assert_eq!(s.host, ShadowHost::Keep);
    assert_eq!(c.clusters["c"].shadow_queue, 8);
    assert_eq!(c.shadow_drain, Duration::from_secs(5));
    assert_eq!(
        c.shadow_header.as_ref().map(|h| h.as_str()),
        Some("x-teeproxy-shadow")
    );

    let c = Config::from_yaml(&with_shadow(
        "{ cluster: c, percent: 0.5, methods: any, sample_key: { cookie: session }, host: { suffix: \"-shadow\" }, headers: { set: { x-env: shadow }, remove: [cookie] }, max_body: 64KiB, timeout: 250ms }",
    ))
    .unwrap();
    let s = &c.routes[0].shadows[0];
    assert_eq!(s.percent, 0.5);
    assert!(s.methods.is_none(), "any");
    assert!(matches!(&s.sample_key, Some(SampleKey::Cookie(n)) if n == "session"));
    assert!(matches!(&s.host, ShadowHost::Suffix(suffix) if suffix == "-shadow"));
    assert_eq!(
        s.headers.set,
        [(
            http::HeaderName::from_static("x-env"),
            http::HeaderValue::from_static("shadow")
        )]
    );
    assert_eq!(s.headers.remove, [http::header::COOKIE]);
    let c = Config::from_yaml(&with_shadow(
        "{ cluster: c, host: shadow.example, sample_key: { header: x-user } }",
    ))
    .unwrap();
    assert_eq!(
        c.routes[0].shadows[0].host,
        ShadowHost::Literal(http::HeaderValue::from_static("shadow.example"))
    );
}

#[test]
fn shadow_validation_errors_name_their_key() {
    let table = [
        (
            "{ cluster: nope }",
            "routes[0].shadows[0].cluster",
            "unknown cluster",
        ),
        (
            "{ cluster: c, percent: 150 }",
            "routes[0].shadows[0].percent",
            "between 0 and 100",
        ),
        (
            "{ cluster: c, percent: -1 }",
            "routes[0].shadows[0].percent",
            "between 0 and 100",
        ),
        (
            "{ cluster: c, methods: all }",
            "routes[0].shadows[0].methods",
            "`any`",
        ),
        (
            "{ cluster: c, methods: [] }",
            "routes[0].shadows[0].methods",
            "empty list",
        ),
        (
            "{ cluster: c, methods: [CONNECT] }",
            "routes[0].shadows[0].methods",
            "never mirrored",
        ),
        (
            "{ cluster: c, max_body: 1GiB }",
            "routes[0].shadows[0].max_body",
            "64MiB",
        ),
        (
            "{ cluster: c, timeout: 0s }",
            "routes[0].shadows[0].timeout",
            "greater than 0",
        ),
        (
            "{ cluster: c, host: \"a b\" }",
            "routes[0].shadows[0].host",
            "invalid host",
        ),
        (
            "{ cluster: c, headers: { set: { \"bad name\": x } } }",
            "routes[0].shadows[0].headers.set.bad name",
            "invalid",
        ),
        (
            "{ cluster: c, headers: { remove: [\"bad name\"] } }",
            "routes[0].shadows[0].headers.remove",
            "invalid header name",
        ),
        (
            "{ cluster: c, sample_key: { header: \"\" } }",
            "routes[0].shadows[0].sample_key",
            "invalid name",
        ),
    ];
    for (shadow, key, msg) in table {
        let e = err(&with_shadow(shadow));
        assert!(e.contains(&format!(": {key}: ")), "want key {key} in {e}");
        assert!(e.contains(msg), "want {msg:?} in {e}");
    }
    let twice = with_shadow("{ cluster: c }").replace(
        "      - { cluster: c }\n",
        "      - { cluster: c }\n      - { cluster: c }\n",
    );
    assert!(err(&twice).contains("already a shadow of this route"));
    let e = err(&with_shadow("{ cluster: c, percnt: 5 }"));
    assert!(e.contains("percnt"), "{e}");
    let e = err(&with_shadow("{ cluster: c }").replace("shadow_queue: 8", "shadow_queue: 0"));
    assert!(e.contains("clusters.c.shadow_queue"), "{e}");
    let e = err(&format!(
        "{}shadow_header: \"bad header\"\n",
        with_shadow("{ cluster: c }")
    ));
    assert!(e.contains(": shadow_header: "), "{e}");
}

#[test]
fn case_framing_headers_and_budgets_are_checked_with_a_place() {
    let e = err(&MINIMAL.replace(
        "    primary: primary\n",
        "    match: { methods: [get] }\n    primary: primary\n",
    ));
    assert!(
        e.contains("routes[0].match.methods[0]") && e.contains("case-sensitive"),
        "{e}"
    );
    for (shadow, key, msg) in [
        (
            "{ cluster: c, methods: [post] }",
            "routes[0].shadows[0].methods",
            "case-sensitive",
        ),
        (
            "{ cluster: c, headers: { set: { content-length: \"5\" } } }",
            "routes[0].shadows[0].headers.set.content-length",
            "cannot be set",
        ),
        (
            "{ cluster: c, headers: { set: { Host: x } } }",
            "routes[0].shadows[0].headers.set.Host",
            "use `host:`",
        ),
        (
            "{ cluster: c, max_body: 64MiB }",
            "routes[0].shadows[0].max_body",
            "shadow_max_bytes",
        ),
        (
            "{ cluster: c, methods: all }",
            "routes[0].shadows[0].methods",
            "`any`",
        ),
    ] {
        let e = err(&with_shadow(shadow));
        assert!(
            e.contains(&format!(": {key}: ")) && e.contains(msg),
            "want {key} / {msg:?} in {e}"
        );
        let line = e.split(':').nth(1).and_then(|l| l.parse::<u64>().ok());
        assert!(
            line.is_some_and(|l| l > 0),
            "shadow errors name a line: {e}"
        );
    }
}

#[test]
fn operating_keys_parse_and_are_checked() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.drain_delay, Duration::ZERO);
    assert_eq!(c.admin.token_file, None);
    assert_eq!(c.admin.metrics_address, None);
    let yaml = format!(
        "{MINIMAL}admin: {{ address: \"0.0.0.0:9901\", token_file: /run/token, metrics_address: \"0.0.0.0:9902\" }}\ndrain_delay: 90s\n"
    );
    let c = Config::from_yaml(&yaml).unwrap();
    assert_eq!(c.drain_delay, Duration::from_secs(90));
    assert_eq!(
        c.admin.token_file.as_deref(),
        Some(std::path::Path::new("/run/token"))
    );
    assert_eq!(
        c.admin.metrics_address.map(|a| a.port()),
        Some(9902),
        "{:?}",
        c.admin
    );
    let s = Config::from_yaml(&with_shadow(
        "{ cluster: c, compare: { redact: [/user/email, Set-Cookie] } }",
    ))
    .unwrap();
    assert_eq!(
        s.routes[0].shadows[0].compare.redact,
        ["/user/email", "Set-Cookie"]
    );
    for (yaml, key, msg) in [
        (
            format!("{MINIMAL}admin: {{ token_file: \" \" }}\n"),
            "admin.token_file",
            "empty path",
        ),
        (
            format!("{MINIMAL}admin: {{ metrics_address: nowhere }}\n"),
            "admin.metrics_address",
            "invalid address",
        ),
        (
            with_shadow("{ cluster: c, compare: { redact: [\"user email\"] } }"),
            "routes[0].shadows[0].compare.redact",
            "neither a JSON pointer",
        ),
    ] {
        let e = err(&yaml);
        assert!(e.contains(&format!(": {key}: ")), "want key {key} in {e}");
        assert!(e.contains(msg), "want {msg:?} in {e}");
    }
}

// Chaos and capacity: amplify, amplify_writes, max_rps, max_burst, copy_header,
// trace_context.
#[test]
fn capacity_keys_parse_with_defaults() {
    let c = Config::from_yaml(&with_shadow("{ cluster: c }")).unwrap();
    let s = &c.routes[0].shadows[0];
    assert_eq!((s.amplify, s.amplify_writes), (1.0, false));
    assert_eq!((s.max_rps, s.max_burst), (None, None));
    assert_eq!(
        c.copy_header.as_ref().map(|h| h.as_str()),
        Some("x-teeproxy-copy")
    );
    assert!(!c.trace_context.generate);

    let c = Config::from_yaml(&format!(
        "{}copy_header: \"\"\ntrace_context: {{ generate: true }}\n",
        with_shadow("{ cluster: c, amplify: 2.5, max_rps: 0.5 }")
    ))
    .unwrap();
    let s = &c.routes[0].shadows[0];
    assert_eq!(s.amplify, 2.5);
    assert_eq!(
        (s.max_rps, s.max_burst),
        (Some(0.5), Some(1.0)),
        "burst >= 1"
    );
    assert!(c.copy_header.is_none());
    assert!(c.trace_context.generate);
    let c = Config::from_yaml(&with_shadow("{ cluster: c, max_rps: 200 }")).unwrap();
    assert_eq!(
        c.routes[0].shadows[0].max_burst,
        Some(200.0),
        "a second's worth"
    );
    let c = Config::from_yaml(&with_shadow(
        "{ cluster: c, methods: any, amplify: 3, amplify_writes: true, max_rps: 10, max_burst: 2 }",
    ))
    .unwrap();
    assert_eq!(c.routes[0].shadows[0].max_burst, Some(2.0));
}

#[test]
fn capacity_keys_refused_name_their_key() {
    for (shadow, key, msg) in [
        (
            "{ cluster: c, amplify: 0.5 }",
            "amplify",
            "between 1 and 10",
        ),
        ("{ cluster: c, amplify: 11 }", "amplify", "between 1 and 10"),
        (
            "{ cluster: c, amplify: 2, methods: any }",
            "amplify",
            "amplify_writes: true",
        ),
        (
            "{ cluster: c, amplify: 1.5, methods: [GET, POST] }",
            "amplify",
            "methods include POST",
        ),
        ("{ cluster: c, max_rps: 0 }", "max_rps", "between 0.001 and"),
        (
            "{ cluster: c, max_rps: 0.0001 }",
            "max_rps",
            "between 0.001 and",
        ),
        (
            "{ cluster: c, max_burst: 5 }",
            "max_burst",
            "only with max_rps",
        ),
        (
            "{ cluster: c, max_rps: 5, max_burst: 0.5 }",
            "max_burst",
            "between 1 and",
        ),
    ] {
        let e = err(&with_shadow(shadow));
        let key = format!("routes[0].shadows[0].{key}");
        assert!(e.contains(&format!(": {key}: ")), "want key {key} in {e}");
        assert!(e.contains(msg), "want {msg:?} in {e}");
    }
    // Writes amplified on purpose, and reads amplified without the flag, are fine.
    for ok in [
        "{ cluster: c, amplify: 2, methods: [PUT], amplify_writes: true }",
        "{ cluster: c, amplify: 10 }",
        "{ cluster: c, methods: any }",
    ] {
        Config::from_yaml(&with_shadow(ok)).unwrap();
    }
    let e = err(&format!(
        "{}copy_header: \"a b\"\n",
        with_shadow("{ cluster: c }")
    ));
    assert!(e.contains(": copy_header: "), "{e}");
    let e = err(&format!(
        "{}trace_context: {{ generate: maybe }}\n",
        with_shadow("{ cluster: c }")
    ));
    assert!(e.contains("boolean"), "{e}");
}

// --- record: (record and replay) ---

#[test]
fn record_parses_with_defaults_and_is_checked() {
    let c = Config::from_yaml(&with_shadow("{ cluster: c }")).unwrap();
    assert_eq!(c.routes[0].shadows[0].record, None);
    let c = Config::from_yaml(&with_shadow(
        "{ cluster: c, record: { path: /tmp/r.jsonl } }",
    ))
    .unwrap();
    let r = c.routes[0].shadows[0].record.clone().unwrap();
    assert_eq!(r.path, std::path::Path::new("/tmp/r.jsonl"));
    assert_eq!(
        (r.sample, r.max_bytes, r.rotate, r.queue),
        (100.0, 64 << 20, 3, 1024)
    );
    assert!(r.redact.is_empty());
    let c = Config::from_yaml(&with_shadow(
        "{ cluster: c, record: { path: r.jsonl, sample: 0.5, max_bytes: 1MiB, rotate: 0, redact: [authorization, /user/email], queue: 8 } }",
    ))
    .unwrap();
    let r = c.routes[0].shadows[0].record.clone().unwrap();
    assert_eq!(
        (r.sample, r.max_bytes, r.rotate, r.queue),
        (0.5, 1 << 20, 0, 8)
    );
    assert_eq!(r.redact, ["authorization", "/user/email"]);
    for (shadow, key, msg) in [
        (
            "{ cluster: c, record: { sample: 1 } }",
            "line 9",
            "missing field `path`",
        ),
        (
            "{ cluster: c, record: { path: r, sample: 101 } }",
            "routes[0].shadows[0].record.sample",
            "between 0 and 100",
        ),
        (
            "{ cluster: c, record: { path: r, max_bytes: 10 } }",
            "routes[0].shadows[0].record.max_bytes",
            "at least 1KiB",
        ),
        (
            "{ cluster: c, record: { path: r, queue: 0 } }",
            "routes[0].shadows[0].record.queue",
            "between 1",
        ),
        (
            "{ cluster: c, record: { path: r, redact: [\"a b\"] } }",
            "routes[0].shadows[0].record.redact",
            "neither a JSON pointer",
        ),
        (
            "{ cluster: c, record: { path: \"\" } }",
            "routes[0].shadows[0].record.path",
            "must name a file",
        ),
    ] {
        let e = err(&with_shadow(shadow));
        assert!(e.contains(key), "want key {key} in {e}");
        assert!(e.contains(msg), "want {msg:?} in {e}");
    }
}

// Endpoint health and discovery.

#[test]
fn health_and_resolve_parse_with_defaults_and_are_checked() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(
        c.clusters["primary"].health, None,
        "absent: no active checks"
    );
    assert_eq!(c.clusters["primary"].resolve, None);
    let with = |extra: &str| MINIMAL.replace("9000\"] }", &format!("9000\"], {extra} }}"));
    let c = Config::from_yaml(&with("health: {}, resolve: 10s")).unwrap();
    let p = &c.clusters["primary"];
    let h = p.health.as_ref().unwrap();
    assert_eq!(h.path, "/healthz");
    assert_eq!(
        (h.interval, h.timeout, h.healthy, h.unhealthy),
        (Duration::from_secs(5), Duration::from_secs(1), 2, 3)
    );
    assert_eq!(p.resolve, Some(Duration::from_secs(10)));
    let json = c.to_json();
    assert_eq!(json["clusters"]["primary"]["health"]["interval"], "5s");
    assert_eq!(json["clusters"]["primary"]["resolve"], "10s");
    let c = Config::from_yaml(&with(
        "health: { path: /ready?deep=1, interval: 250ms, timeout: 100ms, healthy: 1, unhealthy: 5 }",
    ))
    .unwrap();
    let h = c.clusters["primary"].health.clone().unwrap();
    assert_eq!((h.path.as_str(), h.unhealthy), ("/ready?deep=1", 5));
    for (bad, key) in [
        ("health: { path: healthz }", "clusters.primary.health.path"),
        (
            "health: { interval: 0s }",
            "clusters.primary.health.interval",
        ),
        (
            "health: { timeout: 1ms }",
            "clusters.primary.health.timeout",
        ),
        ("health: { healthy: 0 }", "clusters.primary.health.healthy"),
        (
            "health: { unhealthy: 101 }",
            "clusters.primary.health.unhealthy",
        ),
        ("health: { bogus: 1 }", "bogus"),
        ("resolve: 0s", "clusters.primary.resolve"),
    ] {
        let e = err(&with(bad));
        assert!(e.contains(key), "{bad}: {e}");
    }
}

const WITH_SHADOWS: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:8080" }]
clusters:
  primary: { endpoints: ["http://127.0.0.1:9000"] }
  candidate: { endpoints: ["http://127.0.0.1:9001"] }
  baseline: { endpoints: ["http://127.0.0.1:9002"] }
routes:
  - name: all
    primary: primary
"#;

#[test]
fn a_baseline_is_a_policy_of_its_own_that_copies_its_candidates_decisions() {
    let c = Config::from_yaml(&format!(
        "{WITH_SHADOWS}    critical: true\n    verdict: {{ window: 2m, slower_by: 20%, paths: {{ \"/a\": {{ errors_by: 0.5% }} }} }}\n    shadows:\n      - {{ cluster: candidate, percent: 25, amplify: 2, compare: {{ body: json, baseline: baseline }} }}\n"
    ))
    .unwrap();
    let r = &c.routes[0];
    assert!(r.critical);
    assert_eq!(r.shadows.len(), 2, "the baseline is added");
    let (cand, base) = (&r.shadows[0], &r.shadows[1]);
    assert_eq!(cand.compare.baseline.as_deref(), Some("baseline"));
    assert_eq!(base.cluster, "baseline");
    assert_eq!(base.baseline_of.as_deref(), Some("candidate"));
    assert_eq!(base.percent, 25.0, "the same sampling");
    assert_eq!(base.amplify, 1.0, "one copy to compare, not load");
    assert_eq!(base.compare.baseline, None);
    let v = &r.verdict;
    assert_eq!(v.window, std::time::Duration::from_secs(120));
    assert!((v.alpha - 0.01).abs() < 1e-12, "99 % by default");
    assert_eq!(v.thresholds_for("/b").slower_by, 0.2);
    assert_eq!(v.thresholds_for("/a").errors_by, 0.005);
    assert_eq!(
        v.thresholds_for("/a").slower_by,
        0.2,
        "the route's where unset"
    );
    let json = c.to_json();
    assert_eq!(json["routes"][0]["verdict"]["confidence"], "99%");
    assert_eq!(json["routes"][0]["verdict"]["slower_by"], "20%");
}

#[test]
fn verdict_and_baseline_errors_name_their_key() {
    let shadow = |compare: &str| {
        format!(
            "{WITH_SHADOWS}    shadows:\n      - {{ cluster: candidate, compare: {{ {compare} }} }}\n"
        )
    };
    let table: Vec<(String, &str, &str)> = vec![
        (
            shadow("baseline: nope"),
            "routes[0].shadows[0].compare.baseline",
            "unknown cluster",
        ),
        (
            shadow("baseline: candidate"),
            "routes[0].shadows[0].compare.baseline",
            "another cluster than the shadow",
        ),
        (
            shadow("baseline: primary"),
            "routes[0].shadows[0].compare.baseline",
            "another cluster than the primary",
        ),
        (
            format!(
                "{WITH_SHADOWS}    shadows:\n      - {{ cluster: candidate, compare: {{ baseline: baseline }} }}\n      - {{ cluster: baseline }}\n"
            ),
            "routes[0].shadows[0].compare.baseline",
            "already a shadow or a baseline",
        ),
        (
            format!("{MINIMAL}    verdict: {{ window: 1s }}\n"),
            "routes[0].verdict.window",
            "between 10s and 24h",
        ),
        (
            format!("{MINIMAL}    verdict: {{ min_pairs: 1 }}\n"),
            "routes[0].verdict.min_pairs",
            "between 10 and 100000",
        ),
        (
            format!("{MINIMAL}    verdict: {{ confidence: 100% }}\n"),
            "routes[0].verdict.confidence",
            "below 100%",
        ),
        (
            format!("{MINIMAL}    verdict: {{ slower_by: 0% }}\n"),
            "routes[0].verdict.slower_by",
            "above 0%",
        ),
        (
            format!("{MINIMAL}    verdict: {{ paths: {{ \"/a\": {{ different_by: 200% }} }} }}\n"),
            "routes[0].verdict.paths./a.different_by",
            "at most 100%",
        ),
        (
            format!("{MINIMAL}    verdict: {{ paths: {{ a: {{}} }} }}\n"),
            "routes[0].verdict.paths.a",
            "start with '/'",
        ),
    ];
    for (yaml, key, msg) in table {
        let e = err(&yaml);
        assert!(e.contains(&format!(": {key}: ")), "want key {key} in {e}");
        assert!(e.contains(msg), "want {msg:?} in {e}");
    }
    let e = err(&format!("{MINIMAL}    verdict: {{ slower_by: lots }}\n"));
    assert!(e.contains("percentage"), "{e}");
}

#[test]
fn cluster_protocols_and_http2_settings() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    let p = &c.clusters["primary"];
    assert_eq!(p.protocol, Protocol::Http1, "HTTP/1.1 unless asked");
    assert_eq!(p.http2.keep_alive_interval, Duration::from_secs(30));
    assert_eq!(p.http2.keep_alive_timeout, Duration::from_secs(10));
    assert_eq!(p.http2.initial_connection_window, 4 * 1024 * 1024);
    assert_eq!(p.http2.initial_stream_window, 1024 * 1024);
    assert!(!c.routes[0].match_.grpc);

    let with =
        |cluster: &str| MINIMAL.replace(r#"{ endpoints: ["http://127.0.0.1:9000"] }"#, cluster);
    let c = Config::from_yaml(&with(
        r#"{ endpoints: ["http://127.0.0.1:9000"], protocol: h2c, http2: { keep_alive_interval: 0s, initial_stream_window: 64KiB } }"#,
    ))
    .unwrap();
    let p = &c.clusters["primary"];
    assert_eq!(p.protocol, Protocol::H2c);
    assert_eq!(p.http2.keep_alive_interval, Duration::ZERO, "0s: no pings");
    assert_eq!(p.http2.initial_stream_window, 64 * 1024);
    for (protocol, url) in [
        ("h2", "https://a.example"),
        ("auto", "https://a.example"),
        ("auto", "http://a"),
    ] {
        let c = Config::from_yaml(&with(&format!(
            r#"{{ endpoints: ["{url}"], protocol: {protocol} }}"#
        )));
        assert!(c.is_ok(), "{protocol} {url}: {c:?}");
    }

    let e = err(&with(
        r#"{ endpoints: ["https://a.example"], protocol: h2c }"#,
    ));
    assert!(
        e.contains("clusters.primary.protocol") && e.contains("http://"),
        "{e}"
    );
    let e = err(&with(
        r#"{ endpoints: ["http://a.example"], protocol: h2 }"#,
    ));
    assert!(
        e.contains("clusters.primary.protocol") && e.contains("use h2c"),
        "{e}"
    );
    let e = err(&with(r#"{ endpoints: ["http://a"], protocol: h3 }"#));
    assert!(e.contains("h3"), "{e}");
    let e = err(&with(
        r#"{ endpoints: ["http://a"], http2: { initial_connection_window: 1KiB } }"#,
    ));
    assert!(
        e.contains("clusters.primary.http2.initial_connection_window"),
        "{e}"
    );
    let e = err(&with(
        r#"{ endpoints: ["http://a"], http2: { keep_alive_timeout: 0s } }"#,
    ));
    assert!(
        e.contains("clusters.primary.http2.keep_alive_timeout"),
        "{e}"
    );
    let e = err(&with(r#"{ endpoints: ["http://a"], http2: { pings: 1 } }"#));
    assert!(e.contains("pings"), "{e}");

    let c = Config::from_yaml(&MINIMAL.replace(
        "    primary: primary",
        "    match: { grpc: true }\n    primary: primary",
    ))
    .unwrap();
    assert!(c.routes[0].match_.grpc);
}

fn with_listener_tls(tls: &str) -> String {
    MINIMAL.replace(
        "address: \"127.0.0.1:8080\" }",
        &format!("address: \"127.0.0.1:8080\", tls: {tls} }}"),
    )
}

#[test]
fn tls_listeners_parse_in_both_forms_with_defaults() {
    let c = Config::from_yaml(&with_listener_tls("{ cert: a.crt, key: a.key }")).unwrap();
    let t = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(t.certificates.len(), 1);
    assert_eq!(t.certificates[0].cert, std::path::PathBuf::from("a.crt"));
    assert_eq!(t.certificates[0].key_path, "listeners[0].tls");
    assert_eq!((t.default, t.client_ca.is_none()), (0, true));
    assert_eq!(t.handshake_timeout, Duration::from_secs(10));
    let c = Config::from_yaml(&with_listener_tls(
        "{ certificates: [{ cert: a.crt, key: a.key, server_names: [A.test] }, { cert: b.crt, key: b.key, server_names: [\"*.b.test\", b.test] }], default: b.test, client_ca: ca.crt, client_auth: optional, handshake_timeout: 3s }",
    ))
    .unwrap();
    let t = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(t.certificates[0].server_names, ["a.test"]);
    assert_eq!(
        t.certificates[1].key_path,
        "listeners[0].tls.certificates[1]"
    );
    assert_eq!(t.default, 1);
    assert_eq!(t.client_auth, ClientAuth::Optional);
    assert_eq!(t.handshake_timeout, Duration::from_secs(3));
    let c = Config::from_yaml(&with_listener_tls(
        "{ certificates: [{ cert: a.crt, key: a.key }, { cert: b.crt, key: b.key }], default: 1 }",
    ))
    .unwrap();
    assert_eq!(c.listeners[0].tls.as_ref().unwrap().default, 1);
    assert!(
        Config::from_yaml(MINIMAL).unwrap().listeners[0]
            .tls
            .is_none()
    );
}

#[test]
fn tls_listener_errors_name_their_key() {
    let two = "certificates: [{ cert: a.crt, key: a.key, server_names: [a.test] }, { cert: b.crt, key: b.key, server_names: [b.test] }]";
    let table = [
        ("{ cert: a.crt }", "listeners[0].tls.key", "needs its `key`"),
        (
            "{ key: a.key }",
            "listeners[0].tls.cert",
            "needs its `cert`",
        ),
        ("{ }", "listeners[0].tls", "needs `cert` and `key`"),
        (
            "{ cert: a.crt, key: a.key, certificates: [{ cert: b.crt, key: b.key }] }",
            "listeners[0].tls",
            "not both",
        ),
        (
            "{ certificates: [] }",
            "listeners[0].tls.certificates",
            "at least one",
        ),
        (
            &format!("{{ {two}, default: c.test }}"),
            "listeners[0].tls.default",
            "names no certificate",
        ),
        (
            &format!("{{ {two}, default: 2 }}"),
            "listeners[0].tls.default",
            "names no certificate",
        ),
        (
            "{ certificates: [{ cert: a.crt, key: a.key, server_names: [\"a b\"] }] }",
            "listeners[0].tls.certificates[0].server_names[0]",
            "not a DNS name",
        ),
        (
            "{ certificates: [{ cert: a.crt, key: a.key, server_names: [\"a.*.test\"] }] }",
            "listeners[0].tls.certificates[0].server_names[0]",
            "not a DNS name",
        ),
        (
            "{ certificates: [{ cert: a.crt, key: a.key, server_names: [a.test] }, { cert: b.crt, key: b.key, server_names: [A.test] }] }",
            "listeners[0].tls.certificates[1].server_names[0]",
            "earlier certificate",
        ),
        (
            "{ cert: a.crt, key: a.key, client_auth: optional }",
            "listeners[0].tls.client_auth",
            "needs `client_ca`",
        ),
        (
            "{ cert: \" \", key: a.key }",
            "listeners[0].tls.cert",
            "empty path",
        ),
        (
            "{ cert: a.crt, key: a.key, handshake_timeout: 0s }",
            "listeners[0].tls.handshake_timeout",
            "above zero",
        ),
    ];
    for (tls, key, msg) in table {
        let e = err(&with_listener_tls(tls));
        assert!(e.contains(&format!(": {key}: ")), "want key {key} in {e}");
        assert!(e.contains(msg), "want {msg:?} in {e}");
    }
    let e = err(&with_listener_tls(
        "{ cert: a.crt, key: a.key, client_auth: sometimes }",
    ));
    assert!(e.contains("sometimes") || e.contains("client_auth"), "{e}");
}

#[test]
fn a_client_subject_route_needs_a_listener_that_verifies_client_certificates() {
    let route = "    match: { client_subject: \"CN=alice\" }\n";
    let e = err(&format!("{MINIMAL}{route}"));
    assert!(
        e.contains("routes[0].match.client_subject") && e.contains("client_ca"),
        "{e}"
    );
    let e = err(&format!(
        "{}    match: {{ client_subject: \" \" }}\n",
        with_listener_tls("{ cert: a.crt, key: a.key, client_ca: ca.crt }")
    ));
    assert!(
        e.contains("routes[0].match.client_subject") && e.contains("empty"),
        "{e}"
    );
    let c = Config::from_yaml(&format!(
        "{}{route}",
        with_listener_tls("{ cert: a.crt, key: a.key, client_ca: ca.crt }")
    ))
    .unwrap();
    assert_eq!(
        c.routes[0].match_.client_subject.as_deref(),
        Some("CN=alice")
    );
}
