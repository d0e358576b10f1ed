//! G34: SIGHUP reloads the config file. A broken config (syntax error, unknown key, bad
//! URL) keeps the running one, logged and counted, with no failed request; a valid change
//! applies to new requests while in-flight ones finish on the old config.

use std::time::Duration;

use teeproxy_tests::process::*;
use teeproxy_tests::*;

#[tokio::test]
async fn reload_applies_valid_configs_and_keeps_serving_through_broken_ones() {
    let a = FakeUpstream::builder()
        .name("a")
        .delay_on("/slow", Duration::from_millis(1500))
        .start()
        .await;
    let b = FakeUpstream::builder().name("b").start().await;
    let mut p = ProxyProcess::start(&simple_yaml(&[a.url()], "")).await;
    let path = p.dir().join("config.yaml");
    let original = std::fs::read_to_string(&path).unwrap();
    assert!(original.contains(&a.url()));

    // A request in flight on the old config.
    let addr = p.addr();
    let slow = tokio::spawn(async move { http_get(addr, "/slow", Duration::from_secs(10)).await });
    assert_eventually!(p.metric("teeproxy_requests_in_flight").await == 1.0);

    std::fs::write(&path, original.replace(&a.url(), &b.url())).unwrap();
    p.signal(Signal::Hup);
    assert_eventually!(
        p.metric("teeproxy_config_reloads_total{result=\"ok\"}")
            .await
            == 1.0
    );
    let (status, _) = http_get(p.addr(), "/new", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        b.received().iter().any(|r| r.uri.path() == "/new"),
        "new requests go to b"
    );
    let (status, _) = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(
        status, 200,
        "the in-flight request finished on the old config"
    );
    assert!(a.received().iter().any(|r| r.uri.path() == "/slow"));
    assert!(!a.received().iter().any(|r| r.uri.path() == "/new"));

    let good = std::fs::read_to_string(&path).unwrap();
    let broken = [
        ("syntax error", good.replace("routes:", "routes: [")),
        (
            "unknown key",
            good.replace("routes:", "rooutes: []\nroutes:"),
        ),
        ("bad URL", good.replace(&b.url(), "ftp://127.0.0.1:1")),
    ];
    for (i, (what, text)) in broken.iter().enumerate() {
        std::fs::write(&path, text).unwrap();
        p.signal(Signal::Hup);
        let want = (i + 1) as f64;
        assert_eventually!(
            p.metric("teeproxy_config_reloads_total{result=\"error\"}")
                .await
                == want,
            "{what} counted"
        );
        // Zero failed requests: the running config keeps serving, from b.
        let before = b.count();
        for n in 0..20 {
            let r = http_get(p.addr(), &format!("/after-{i}-{n}"), Duration::from_secs(5)).await;
            assert_eq!(r.map(|r| r.0), Some(200), "{what}: request {n}");
        }
        assert_eq!(b.count(), before + 20, "{what}: still served by b");
    }
    assert_eq!(
        p.metric("teeproxy_config_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );
    let log = p.stderr();
    assert_eq!(
        log.matches("config reload failed").count(),
        3,
        "each failure is logged with its reason:\n{log}"
    );
    assert!(log.contains("rooutes"), "the unknown key is named:\n{log}");
    p.assert_alive();
}
