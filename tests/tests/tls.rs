//! TLS listeners end to end: HTTPS with HTTP/1.1 and HTTP/2 chosen by ALPN, SNI picking
//! the certificate, client certificates required (refused and counted without one, the
//! subject in the access log with one), a certificate rotated on disk served to new
//! connections while a request on an old one completes, a broken file keeping the running
//! certificate (counted), `X-Forwarded-Proto: https` on the primary and the shadow.
//! Certificates are made here with rcgen.

use std::path::Path;
use std::time::Duration;

use teeproxy_tests::process::ProxyProcess;
use teeproxy_tests::tls::{Issued, Sender, TestCa, client_config, connect, presented, temp_dir};
use teeproxy_tests::upstream::FakeUpstream;
use teeproxy_tests::{TestProxy, assert_eventually, metric_value, shadow_yaml, simple_yaml};

/// `yaml` (from the kit, listener `public` on port 0) with `tls` on its listener.
fn with_tls(yaml: &str, tls: &str) -> String {
    let plain = "address: \"127.0.0.1:0\" }";
    assert!(yaml.contains(plain), "{yaml}");
    yaml.replacen(
        plain,
        &format!("address: \"127.0.0.1:0\", tls: {tls} }}"),
        1,
    )
}

fn pair(cert: &Path, key: &Path) -> String {
    format!(
        "{{ cert: \"{}\", key: \"{}\" }}",
        cert.display(),
        key.display()
    )
}

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2", b"http/1.1"];

#[tokio::test]
async fn https_with_http1_and_http2_by_alpn_and_forwarded_proto_on_both_legs() {
    let dir = temp_dir("alpn");
    let ca = TestCa::new("test CA");
    let (cert, key) = ca.issue("proxy.test", &["proxy.test"]).write(&dir, "proxy");
    let primary = FakeUpstream::start().await;
    let shadow = FakeUpstream::start().await;
    let yaml = with_tls(
        &shadow_yaml(&primary.url(), &shadow.url(), "", ""),
        &pair(&cert, &key),
    );
    let proxy = TestProxy::start(&yaml).await;

    for (alpn, want) in [
        (H1, http::Version::HTTP_11),
        (H2, http::Version::HTTP_2),
        (&[][..], http::Version::HTTP_11),
    ] {
        let stream = connect(
            proxy.addr,
            "proxy.test",
            client_config(&[ca.der()], alpn, None),
        )
        .await
        .expect("handshake");
        let mut s = Sender::new(stream).await;
        let resp = s.get("proxy.test", "/hello").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), want, "ALPN {alpn:?}");
    }
    assert_eventually!(primary.count() == 3 && shadow.count() == 3);
    for leg in [primary.received(), shadow.received()] {
        for r in leg {
            assert_eq!(r.headers["x-forwarded-proto"], "https", "{:?}", r.headers);
        }
    }
    // A plain-HTTP request on the TLS port is not served.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    }
    assert_eventually!(
        proxy
            .metric(
                "teeproxy_tls_handshake_failures_total{listener=\"public\",reason=\"protocol\"}"
            )
            .await
            == 1.0
    );
    assert_eq!(
        proxy
            .metric("teeproxy_tls_handshakes_total{listener=\"public\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let dir = temp_dir("sni");
    let ca = TestCa::new("test CA");
    let a = ca.issue("a.test", &["a.test"]);
    let b = ca.issue("b.test", &["b.test", "other.test"]);
    let (ac, ak) = a.write(&dir, "a");
    let (bc, bk) = b.write(&dir, "b");
    let primary = FakeUpstream::start().await;
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\", server_names: [a.test] }}, {{ cert: \"{}\", key: \"{}\", server_names: [b.test] }}], default: b.test }}",
        ac.display(),
        ak.display(),
        bc.display(),
        bk.display()
    );
    let proxy = TestProxy::start(&with_tls(&simple_yaml(&[primary.url()], ""), &tls)).await;
    let config = client_config(&[ca.der()], H2, None);
    for (sni, want) in [("a.test", &a), ("b.test", &b), ("other.test", &b)] {
        let stream = connect(proxy.addr, sni, config.clone())
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(presented(&stream), want.der, "SNI {sni}");
        let resp = Sender::new(stream).await.get(sni, "/").await;
        assert_eq!(resp.status(), 200);
    }
    // Expiry gauges: one per certificate, by listener and subject.
    let m = proxy.metrics().await;
    for name in ["a.test", "b.test"] {
        let v = metric_value(
            &m,
            &format!(
                "teeproxy_tls_certificate_expiry_seconds{{scope=\"listener\",name=\"public\",subject=\"CN={name}\"}}"
            ),
        );
        assert!(v > 1.7e9, "{name}: {v}\n{m}");
    }
}

#[tokio::test]
async fn client_certificates_required_refuse_a_client_without_one_and_log_the_subject() {
    let dir = temp_dir("mtls");
    let ca = TestCa::new("server CA");
    let clients = TestCa::new("client CA");
    let (cert, key) = ca.issue("proxy.test", &["proxy.test"]).write(&dir, "proxy");
    let client_ca = clients.write(&dir, "clients.crt");
    let alice = clients.issue("alice", &["alice.clients.test"]);
    let stranger = TestCa::new("other CA").issue("mallory", &["mallory.test"]);
    let primary = FakeUpstream::start().await;
    let tls = format!(
        "{{ cert: \"{}\", key: \"{}\", client_ca: \"{}\", client_auth: required }}",
        cert.display(),
        key.display(),
        client_ca.display()
    );
    let proxy = ProxyProcess::start(&with_tls(&simple_yaml(&[primary.url()], ""), &tls)).await;
    let failures = |reason: &str| {
        format!("teeproxy_tls_handshake_failures_total{{listener=\"public\",reason=\"{reason}\"}}")
    };

    // Without a certificate: refused.
    refused(proxy.addr(), client_config(&[ca.der()], H1, None)).await;
    assert_eventually!(proxy.metric(&failures("client_cert_missing")).await == 1.0);
    refused(
        proxy.addr(),
        client_config(&[ca.der()], H1, Some(&stranger)),
    )
    .await;
    assert_eventually!(proxy.metric(&failures("client_cert_invalid")).await == 1.0);
    assert_eq!(primary.count(), 0);

    // With one: served, and the access log names the subject.
    let stream = connect(
        proxy.addr(),
        "proxy.test",
        client_config(&[ca.der()], H2, Some(&alice)),
    )
    .await
    .expect("handshake with a client certificate");
    let resp = Sender::new(stream).await.get("proxy.test", "/who").await;
    assert_eq!(resp.status(), 200);
    assert_eventually!(
        proxy
            .stderr()
            .lines()
            .any(|l| l.contains("\"path\":\"/who\"")
                && l.contains("\"client_subject\":\"CN=alice\"")
                && l.contains("\"scheme\":\"https\"")),
        "access log: {}",
        proxy.stderr()
    );
}

/// Asserts that `config` is not served: TLS 1.3 lets the client finish its handshake
/// first, so the refusal shows at the latest when a request is sent.
async fn refused(addr: std::net::SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) {
    if let Ok(stream) = connect(addr, "proxy.test", config).await {
        let io = hyper_util::rt::TokioIo::new(stream);
        if let Ok((mut tx, conn)) = hyper::client::conn::http1::handshake(io).await {
            tokio::spawn(conn);
            let req = http::Request::get("/")
                .header("host", "proxy.test")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            assert!(
                tx.send_request(req).await.is_err(),
                "served without a client certificate"
            );
        }
    }
}
/// Waits until a new connection is presented `want`.
async fn serves(addr: std::net::SocketAddr, ca: &TestCa, want: &Issued) -> bool {
    match connect(addr, "proxy.test", client_config(&[ca.der()], H1, None)).await {
        Ok(s) => presented(&s) == want.der,
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_while_an_old_one_finishes() {
    let dir = temp_dir("rotate");
    let ca = TestCa::new("test CA");
    let old = ca.issue("old", &["proxy.test"]);
    let new = ca.issue("new", &["proxy.test"]);
    let (cert, key) = old.write(&dir, "proxy");
    let primary = FakeUpstream::builder()
        .delay_on("/slow", Duration::from_millis(800))
        .start()
        .await;
    let proxy = TestProxy::start(&with_tls(
        &simple_yaml(&[primary.url()], ""),
        &pair(&cert, &key),
    ))
    .await;
    let stream = connect(
        proxy.addr,
        "proxy.test",
        client_config(&[ca.der()], H2, None),
    )
    .await
    .expect("handshake");
    assert_eq!(presented(&stream), old.der);
    let mut old_conn = Sender::new(stream).await;
    let in_flight = tokio::spawn(async move { old_conn.get("proxy.test", "/slow").await });
    assert_eventually!(primary.count() == 1, "the slow request reached the primary");

    // Rotate on disk: the watch re-reads the pair; no SIGHUP, no restart.
    new.write(&dir, "proxy");
    assert_eventually!(
        serves(proxy.addr, &ca, &new).await,
        "the new certificate is served"
    );
    let resp = in_flight.await.expect("the old connection's request");
    assert_eq!(
        resp.status(),
        200,
        "the request on the old connection completed"
    );
}

#[tokio::test]
async fn a_broken_certificate_file_keeps_the_running_one_and_is_counted() {
    let dir = temp_dir("broken");
    let ca = TestCa::new("test CA");
    let good = ca.issue("good", &["proxy.test"]);
    let (cert, key) = good.write(&dir, "proxy");
    let primary = FakeUpstream::start().await;
    let yaml = with_tls(&simple_yaml(&[primary.url()], ""), &pair(&cert, &key));
    let proxy = TestProxy::start(&yaml).await;
    let errors = "teeproxy_tls_certificate_reloads_total{listener=\"public\",result=\"error\"}";
    assert_eq!(proxy.metric(errors).await, 0.0);

    // A half-written certificate (the file watch sees it).
    teeproxy_tests::tls::replace(&cert, b"-----BEGIN CERTIFICATE-----\nMIIB\n");
    assert_eventually!(proxy.metric(errors).await >= 1.0);
    assert!(
        serves(proxy.addr, &ca, &good).await,
        "still the running certificate"
    );
    // A key that belongs to another certificate, read on a reload (as on SIGHUP).
    std::fs::write(&cert, &good.cert_pem).unwrap();
    let stray = ca.issue("stray", &["proxy.test"]);
    teeproxy_tests::tls::replace(&key, stray.key_pem.as_bytes());
    let before = proxy.metric(errors).await;
    proxy.reload(&yaml).await;
    assert!(
        proxy.metric(errors).await > before,
        "a mismatched pair is an error"
    );
    assert!(
        serves(proxy.addr, &ca, &good).await,
        "still the running certificate"
    );
    let resp = Sender::new(
        connect(
            proxy.addr,
            "proxy.test",
            client_config(&[ca.der()], H1, None),
        )
        .await
        .unwrap(),
    )
    .await
    .get("proxy.test", "/")
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_closed_at_the_timeout_and_counted() {
    use tokio::io::AsyncReadExt;
    let dir = temp_dir("timeout");
    let ca = TestCa::new("test CA");
    let (cert, key) = ca.issue("proxy.test", &["proxy.test"]).write(&dir, "proxy");
    let primary = FakeUpstream::start().await;
    let tls = format!(
        "{{ cert: \"{}\", key: \"{}\", handshake_timeout: 200ms }}",
        cert.display(),
        key.display()
    );
    let proxy = TestProxy::start(&with_tls(&simple_yaml(&[primary.url()], ""), &tls)).await;
    let mut silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eventually!(
        proxy
            .metric("teeproxy_tls_handshake_failures_total{listener=\"public\",reason=\"timeout\"}")
            .await
            == 1.0
    );
    assert_eventually!(
        proxy
            .metric("teeproxy_open_connections{listener=\"public\"}")
            .await
            == 0.0
    );
}

#[tokio::test]
async fn a_returning_client_resumes_its_session_also_after_a_certificate_rotation() {
    let dir = temp_dir("resume");
    let ca = TestCa::new("test CA");
    let old = ca.issue("old", &["proxy.test"]);
    let new = ca.issue("new", &["proxy.test"]);
    let (cert, key) = old.write(&dir, "proxy");
    let primary = FakeUpstream::start().await;
    let proxy = TestProxy::start(&with_tls(
        &simple_yaml(&[primary.url()], ""),
        &pair(&cert, &key),
    ))
    .await;
    // One client config: rustls keeps the tickets it was given for the next connection.
    let client = client_config(&[ca.der()], H1, None);
    let visit = |client| async move {
        let stream = connect(proxy.addr, "proxy.test", client)
            .await
            .expect("handshake");
        let kind = stream.get_ref().1.handshake_kind();
        // A request and its answer: TLS 1.3 tickets arrive after the handshake.
        let resp = Sender::new(stream).await.get("proxy.test", "/").await;
        assert_eq!(resp.status(), 200);
        kind
    };
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(visit(client.clone()).await, Some(Full));
    assert_eq!(visit(client.clone()).await, Some(Resumed));
    let resumed = "teeproxy_tls_sessions_resumed_total{listener=\"public\"}";
    assert_eq!(proxy.metric(resumed).await, 1.0);
    assert_eq!(
        proxy
            .metric("teeproxy_tls_handshakes_total{listener=\"public\"}")
            .await,
        2.0
    );

    new.write(&dir, "proxy");
    assert_eventually!(
        serves(proxy.addr, &ca, &new).await,
        "the new certificate is served"
    );
    assert_eq!(
        visit(client.clone()).await,
        Some(Resumed),
        "the session cache outlives the rotation"
    );
    assert_eq!(proxy.metric(resumed).await, 2.0);
}

#[tokio::test]
async fn a_route_for_one_client_certificate_subject_takes_only_that_client() {
    let dir = temp_dir("subject-route");
    let ca = TestCa::new("server CA");
    let clients = TestCa::new("client CA");
    let (cert, key) = ca.issue("proxy.test", &["proxy.test"]).write(&dir, "proxy");
    let client_ca = clients.write(&dir, "clients.crt");
    let alice = clients.issue("alice", &["alice.clients.test"]);
    let bob = clients.issue("bob", &["bob.clients.test"]);
    let partners = FakeUpstream::start().await;
    let public = FakeUpstream::start().await;
    let yaml = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:0\", tls: {{ cert: \"{}\", key: \"{}\", client_ca: \"{}\", client_auth: optional }} }}]\nadmin: {{ address: \"127.0.0.1:0\" }}\nclusters:\n  partners: {{ endpoints: [\"{}\"] }}\n  public: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: alice, match: {{ client_subject: \"CN=alice\" }}, primary: partners }}\n  - {{ name: rest, primary: public }}\n",
        cert.display(),
        key.display(),
        client_ca.display(),
        partners.url(),
        public.url()
    );
    let proxy = TestProxy::start(&yaml).await;
    for (client, path) in [
        (Some(&alice), "/alice"),
        (Some(&bob), "/bob"),
        (None, "/anonymous"),
    ] {
        let stream = connect(
            proxy.addr,
            "proxy.test",
            client_config(&[ca.der()], H2, client),
        )
        .await
        .expect("handshake");
        let resp = Sender::new(stream).await.get("proxy.test", path).await;
        assert_eq!(resp.status(), 200, "{path}");
    }
    let paths = |u: &FakeUpstream| -> Vec<String> {
        u.received()
            .iter()
            .map(|r| r.uri.path().to_string())
            .collect()
    };
    assert_eq!(paths(&partners), ["/alice"]);
    assert_eq!(paths(&public), ["/bob", "/anonymous"]);
}

#[tokio::test]
async fn a_resumed_session_is_refused_once_its_client_ca_is_taken_out() {
    let dir = temp_dir("resume-mtls");
    let ca = TestCa::new("server CA");
    let old_clients = TestCa::new("old client CA");
    let new_clients = TestCa::new("new client CA");
    let (cert, key) = ca.issue("proxy.test", &["proxy.test"]).write(&dir, "proxy");
    let client_ca = old_clients.write(&dir, "clients.crt");
    let alice = old_clients.issue("alice", &["alice.clients.test"]);
    let primary = FakeUpstream::start().await;
    let tls = format!(
        "{{ cert: \"{}\", key: \"{}\", client_ca: \"{}\" }}",
        cert.display(),
        key.display(),
        client_ca.display()
    );
    let proxy = TestProxy::start(&with_tls(&simple_yaml(&[primary.url()], ""), &tls)).await;
    let client = client_config(&[ca.der()], H1, Some(&alice));
    use rustls::HandshakeKind::{Full, Resumed};
    for want in [Full, Resumed] {
        let stream = connect(proxy.addr, "proxy.test", client.clone())
            .await
            .expect("handshake");
        assert_eq!(stream.get_ref().1.handshake_kind(), Some(want));
        let resp = Sender::new(stream).await.get("proxy.test", "/").await;
        assert_eq!(resp.status(), 200, "{want:?}");
    }
    let reloads = "teeproxy_tls_certificate_reloads_total{listener=\"public\",result=\"ok\"}";
    assert_eq!(proxy.metric(reloads).await, 1.0);

    // Alice's CA leaves `client_ca`: her session may still resume at the TLS layer, but
    // her certificate is checked again and the connection is not served.
    teeproxy_tests::tls::replace(&client_ca, new_clients.pem().as_bytes());
    assert_eventually!(
        proxy.metric(reloads).await == 2.0,
        "the client CA is re-read"
    );
    refused(proxy.addr, client.clone()).await;
    assert_eventually!(
        proxy
            .metric("teeproxy_tls_handshake_failures_total{listener=\"public\",reason=\"client_cert_invalid\"}")
            .await
            == 1.0
    );
    assert_eq!(primary.count(), 2, "nothing served after the CA left");
}
