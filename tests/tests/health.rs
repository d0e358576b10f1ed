//! Endpoint health and discovery, end to end on real upstream sockets: active health checks
//! (an unhealthy primary endpoint gets no traffic, panic mode when none is healthy, a
//! shadow's circuit opening and closing with its health), the checker's lifetime across
//! reloads, and `resolve` with a resolver the test changes (and with the system's, on
//! `localhost`). The proxy runs in-process through `App`, so the test can count checker
//! tasks and swap the resolver's answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use prometheus_client::registry::Registry;
use teeproxy::config::Config;
use teeproxy::testing::{MapResolver, encode_metrics};
use teeproxy::{App, ConnInfo, Reload, Resolve};
use teeproxy_tests::*;

/// Fast checks: two failures make an endpoint unhealthy, two successes healthy again.
const HEALTH: &str =
    "health: { path: /healthz, interval: 50ms, timeout: 1s, healthy: 2, unhealthy: 2 }";

struct Proxy {
    app: App,
    registry: Registry,
}

impl Proxy {
    fn start(yaml: &str, resolver: Option<Arc<dyn Resolve>>) -> Proxy {
        let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}\n{yaml}"));
        let mut registry = Registry::default();
        let app = match resolver {
            Some(r) => App::build_with_resolver(config, &mut registry, r),
            None => App::build(config, &mut registry),
        };
        Proxy { app, registry }
    }

    /// GET `path`: the status and the answering upstream's name (`x-upstream`).
    async fn get(&self, path: &str) -> (StatusCode, String) {
        let req = Request::get(path)
            .header("host", "app.example")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let conn = ConnInfo::new(
            "10.0.0.1:5000".parse().expect("addr"),
            Duration::from_secs(60),
        );
        let resp =
            tokio::time::timeout(Duration::from_secs(10), self.app.proxy().handle(req, conn))
                .await
                .expect("an answer within 10 s");
        let status = resp.status();
        let name = resp
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let _ = resp.into_body().collect().await;
        (status, name)
    }

    fn metrics(&self) -> String {
        encode_metrics(&self.registry)
    }

    /// `teeproxy_upstream_endpoint_healthy` for one endpoint (`None` when absent).
    fn healthy(&self, cluster: &str, leg: &str, endpoint: &str) -> Option<f64> {
        let sample = format!(
            "teeproxy_upstream_endpoint_healthy{{cluster=\"{cluster}\",leg=\"{leg}\",endpoint=\"{endpoint}\"}}"
        );
        let text = self.metrics();
        text.lines()
            .any(|l| l.starts_with(&sample))
            .then(|| metric_value(&text, &sample))
    }

    fn checks(&self, cluster: &str, leg: &str, result: &str) -> f64 {
        metric_value(
            &self.metrics(),
            &format!(
                "teeproxy_upstream_health_checks_total{{cluster=\"{cluster}\",leg=\"{leg}\",result=\"{result}\"}}"
            ),
        )
    }
}

/// A proxy whose primary cluster is `a` and `b`, both health-checked, on one route.
fn checked_pair(a: &FakeUpstream, b: &FakeUpstream) -> Proxy {
    Proxy::start(
        &config(
            &format!(
                "  primary: {{ endpoints: [\"{}\", \"{}\"], {HEALTH} }}\n",
                a.url(),
                b.url()
            ),
            "  - { name: all, primary: primary }\n",
        ),
        None,
    )
}

fn config(clusters: &str, routes: &str) -> String {
    yaml(&format!(
        "access_log: {{ enabled: false }}\nshadow_drain: 100ms\nclusters:\n{clusters}routes:\n{routes}"
    ))
}

/// Health checks an upstream received.
fn checks_seen(u: &FakeUpstream) -> usize {
    u.count() - u.count_except("/healthz")
}

async fn named(name: &str) -> FakeUpstream {
    FakeUpstream::builder().name(name).start().await
}

#[tokio::test]
async fn an_unhealthy_primary_endpoint_gets_no_traffic_until_it_is_healthy_again() {
    let (a, b) = (named("a").await, named("b").await);
    let p = checked_pair(&a, &b);
    let ea = a.addr.to_string();
    assert_eventually!(checks_seen(&a) >= 1, "checks reach a");
    let check = a
        .received()
        .into_iter()
        .find(|r| r.uri.path() == "/healthz")
        .unwrap();
    assert_eq!(check.headers["user-agent"], "teeproxy-health");
    assert_eq!(
        check.headers["host"],
        ea.as_str(),
        "the endpoint's host:port"
    );
    assert_eq!(
        p.healthy("primary", "primary", &ea),
        Some(1.0),
        "starts healthy"
    );

    a.set_status_on("/healthz", 503);
    assert_eventually!(
        p.healthy("primary", "primary", &ea) == Some(0.0),
        "a marked unhealthy"
    );
    let before = a.count_except("/healthz");
    for _ in 0..20 {
        assert_eq!(p.get("/x").await, (StatusCode::OK, "b".to_string()));
    }
    assert_eq!(
        a.count_except("/healthz"),
        before,
        "no request for the unhealthy endpoint"
    );
    assert!(p.checks("primary", "primary", "status") >= 2.0);

    a.set_status_on("/healthz", 200);
    assert_eventually!(
        p.healthy("primary", "primary", &ea) == Some(1.0),
        "a healthy again"
    );
    let mut to_a = 0;
    for _ in 0..10 {
        if p.get("/x").await.1 == "a" {
            to_a += 1;
        }
    }
    assert_eq!(to_a, 5, "round-robin over both again");
    assert!(p.checks("primary", "primary", "ok") >= 2.0);
    // Checks of the primary leg only: no shadow uses the cluster.
    assert_eq!(p.checks("primary", "shadow", "ok"), 0.0);
}

#[tokio::test]
async fn with_no_healthy_primary_endpoint_traffic_goes_to_all_of_them() {
    let (a, b) = (named("a").await, named("b").await);
    let p = checked_pair(&a, &b);
    a.set_status_on("/healthz", 500);
    b.set_status_on("/healthz", 500);
    for e in [&a, &b] {
        let ep = e.addr.to_string();
        assert_eventually!(
            p.healthy("primary", "primary", &ep) == Some(0.0),
            "{ep} unhealthy"
        );
    }
    // Panic mode: failing checks everywhere are more likely wrong than every endpoint down.
    let mut names = Vec::new();
    for _ in 0..4 {
        let (status, name) = p.get("/x").await;
        assert_eq!(status, StatusCode::OK);
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);
}

#[tokio::test]
async fn a_shadow_with_no_healthy_endpoint_opens_its_circuit_until_one_recovers() {
    let primary = named("primary").await;
    let candidate = named("candidate").await;
    let p = Proxy::start(
        &config(
            &format!(
                "  primary: {{ endpoints: [\"{}\"] }}\n  candidate: {{ endpoints: [\"{}\"], {HEALTH} }}\n",
                primary.url(),
                candidate.url()
            ),
            "  - { name: all, primary: primary, shadows: [{ cluster: candidate }] }\n",
        ),
        None,
    );
    let ec = candidate.addr.to_string();
    candidate.set_status_on("/healthz", 503);
    assert_eventually!(
        p.healthy("candidate", "shadow", &ec) == Some(0.0),
        "candidate unhealthy"
    );
    let copies = candidate.count_except("/healthz");
    for _ in 0..10 {
        assert_eq!(
            p.get("/x").await.0,
            StatusCode::OK,
            "the primary is unaffected"
        );
    }
    let m = p.metrics();
    assert_eq!(dropped(&m, "all", "candidate", "circuit_open"), 10.0, "{m}");
    assert!(ShadowCounts::from_metrics(&m, "all", "candidate").balanced());
    assert_eq!(candidate.count_except("/healthz"), copies, "no copy sent");
    // The primary-only cluster has no shadow leg and the shadow-only one no primary leg.
    assert_eq!(p.healthy("candidate", "primary", &ec), None);

    candidate.set_status_on("/healthz", 200);
    assert_eventually!(
        p.healthy("candidate", "shadow", &ec) == Some(1.0),
        "candidate healthy"
    );
    for _ in 0..5 {
        p.get("/x").await;
    }
    assert_eventually!(
        candidate.count_except("/healthz") == copies + 5,
        "copies flow again"
    );
    assert_eq!(
        dropped(&p.metrics(), "all", "candidate", "circuit_open"),
        10.0
    );
}

#[tokio::test]
async fn a_reload_ends_the_checkers_of_the_clusters_it_replaces() {
    let primary = named("primary").await;
    let candidate = named("candidate").await;
    let with_health = |health: &str| {
        config(
            &format!(
                "  primary: {{ endpoints: [\"{}\"]{health} }}\n  candidate: {{ endpoints: [\"{}\"]{health} }}\n",
                primary.url(),
                candidate.url()
            ),
            "  - { name: all, primary: primary, shadows: [{ cluster: candidate }] }\n",
        )
    };
    let checked = with_health(&format!(", {HEALTH}"));
    let p = Proxy::start(&checked, None);
    // One checker per Cluster value: the primary leg of `primary`, the shadow leg of
    // `candidate`.
    assert_eq!(p.app.discovery_tasks(), 2);
    for _ in 0..5 {
        p.get("/x").await;
        p.app.reload(Reload::Apply(Box::new(
            Config::from_yaml(&checked).unwrap(),
        )));
    }
    assert_eventually!(
        p.app.discovery_tasks() == 2,
        "the replaced clusters' checkers ended: {} alive",
        p.app.discovery_tasks()
    );
    // Without health checks (and without resolve) no checker runs at all.
    p.app.reload(Reload::Apply(Box::new(
        Config::from_yaml(&with_health("")).unwrap(),
    )));
    assert_eventually!(
        p.app.discovery_tasks() == 0,
        "{} alive",
        p.app.discovery_tasks()
    );
    let seen = checks_seen(&primary);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        checks_seen(&primary),
        seen,
        "no check after the last checker ended"
    );
}

/// Two upstreams on the same port of two loopback addresses, so that one name with that
/// port can resolve to either.
async fn pair() -> (FakeUpstream, FakeUpstream) {
    let a = FakeUpstream::builder()
        .name("a")
        .start_on("127.0.0.2:0".parse().unwrap())
        .await;
    let b_addr = SocketAddr::new("127.0.0.3".parse().unwrap(), a.addr.port());
    let b = FakeUpstream::builder().name("b").start_on(b_addr).await;
    (a, b)
}

#[tokio::test]
async fn a_resolved_name_follows_its_addresses_without_a_reload() {
    let (a, b) = pair().await;
    let port = a.addr.port();
    let resolver = Arc::new(MapResolver::default());
    resolver.set("backend.test", &[a.addr.ip()]);
    let p = Proxy::start(
        &config(
            &format!(
                "  primary: {{ endpoints: [\"http://backend.test:{port}\"], resolve: 100ms, host: rewrite }}\n"
            ),
            "  - { name: all, primary: primary }\n",
        ),
        Some(resolver.clone()),
    );
    assert_eventually!(p.get("/x").await.1 == "a", "traffic goes to a");
    assert_eq!(
        a.received().last().unwrap().headers["host"],
        format!("backend.test:{port}").as_str(),
        "Host is the name's, not the address's"
    );
    assert_eq!(
        p.healthy("primary", "primary", &a.addr.to_string()),
        Some(1.0)
    );
    assert_eq!(p.app.discovery_tasks(), 1);

    resolver.set("backend.test", &[b.addr.ip()]);
    assert_eventually!(p.get("/x").await.1 == "b", "traffic moves to b");
    let at_a = a.count();
    for _ in 0..20 {
        assert_eq!(p.get("/x").await, (StatusCode::OK, "b".to_string()));
    }
    assert_eq!(a.count(), at_a, "a gets nothing new");
    // Drained: its pooled idle connections are closed and its gauge is gone.
    assert_eventually!(
        a.open() == 0,
        "a's idle connections closed: {} open",
        a.open()
    );
    assert_eq!(p.healthy("primary", "primary", &a.addr.to_string()), None);
    assert_eq!(
        p.healthy("primary", "primary", &b.addr.to_string()),
        Some(1.0)
    );

    // Both addresses: round-robin over them.
    resolver.set("backend.test", &[a.addr.ip(), b.addr.ip()]);
    assert_eventually!(p.get("/x").await.1 == "a", "a is back");
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(p.get("/x").await.1);
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);

    // A failed resolution keeps the addresses there were.
    resolver.set("backend.test", &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.get("/x").await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_system_resolver_turns_localhost_into_its_addresses() {
    let up = named("local").await;
    let port = up.addr.port();
    let p = Proxy::start(
        &config(
            &format!("  primary: {{ endpoints: [\"http://localhost:{port}\"], resolve: 100ms }}\n"),
            "  - { name: all, primary: primary }\n",
        ),
        None,
    );
    let resolved = format!("127.0.0.1:{port}");
    assert_eventually!(
        p.healthy("primary", "primary", &resolved) == Some(1.0),
        "localhost resolved to {resolved}: {}",
        p.metrics()
    );
    assert_eq!(
        p.healthy("primary", "primary", &format!("localhost:{port}")),
        None,
        "the name's own endpoint gave way to its addresses"
    );
    for _ in 0..5 {
        assert_eq!(p.get("/x").await, (StatusCode::OK, "local".to_string()));
    }
}

#[tokio::test]
async fn a_drained_address_finishes_the_requests_it_already_has() {
    let a = FakeUpstream::builder()
        .name("a")
        .delay_on("/slow", Duration::from_secs(2))
        .start_on("127.0.0.2:0".parse().unwrap())
        .await;
    let b_addr = SocketAddr::new("127.0.0.3".parse().unwrap(), a.addr.port());
    let b = FakeUpstream::builder().name("b").start_on(b_addr).await;
    let port = a.addr.port();
    let resolver = Arc::new(MapResolver::default());
    resolver.set("backend.test", &[a.addr.ip()]);
    let p = Arc::new(Proxy::start(
        &config(
            &format!(
                "  primary: {{ endpoints: [\"http://backend.test:{port}\"], resolve: 50ms }}\n"
            ),
            "  - { name: all, primary: primary }\n",
        ),
        Some(resolver.clone()),
    ));
    assert_eventually!(p.get("/x").await.1 == "a", "traffic goes to a");
    let slow = tokio::spawn({
        let p = p.clone();
        async move { p.get("/slow").await }
    });
    assert_eventually!(
        a.received().iter().any(|r| r.uri.path() == "/slow"),
        "the slow request reached a"
    );
    resolver.set("backend.test", &[b.addr.ip()]);
    assert_eventually!(p.get("/x").await.1 == "b", "new requests go to b");
    assert!(!slow.is_finished(), "still in flight when a was drained");
    assert_eq!(
        slow.await.unwrap(),
        (StatusCode::OK, "a".to_string()),
        "the request in flight finished on a"
    );
    assert_eventually!(
        a.open() == 0,
        "then a's connections closed: {} open",
        a.open()
    );
}
