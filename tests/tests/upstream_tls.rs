//! Upstream TLS per cluster, end to end: HTTPS upstreams in this process (tokio-rustls
//! serving hyper HTTP/1.1) with certificates the tests make with rcgen: a private CA, a
//! server certificate for `upstream.test`, client certificates. The proxy verifies the
//! upstream against the cluster's `ca` and `server_name`, refuses a wrong CA or name (502,
//! counted by reason), presents a client certificate to an upstream that requires one,
//! and uses rotated files after a reload. Shadows have TLS of their own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use teeproxy::config::Config;
use teeproxy_tests::tls::{CLIENT_NOT_AFTER, Issued, TestCa, temp_dir};
use teeproxy_tests::*;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// What an HTTPS upstream saw: each request's path and the client certificate's subject
/// (and, apart, each request's HTTP version).
#[derive(Default)]
struct Seen(
    Mutex<Vec<(String, Option<String>)>>,
    Mutex<Vec<http::Version>>,
);

impl Seen {
    fn all(&self) -> Vec<(String, Option<String>)> {
        self.0.lock().unwrap().clone()
    }
    fn versions(&self) -> Vec<http::Version> {
        self.1.lock().unwrap().clone()
    }
}

/// An HTTPS upstream on 127.0.0.1:0 with a certificate for `upstream.test`; with
/// `client_ca`, it requires a client certificate signed by it.
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start(server: &Issued, client_ca: Option<&TestCa>, body: &'static str) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der()).expect("client CA root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("server chain");
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("server key");
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        // HTTP/2 when the client offers it by ALPN (`protocol: h2` or `auto`), else 1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let record = record.clone();
                conns.spawn(async move {
                    // A refused handshake (no or an unknown client certificate) ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let subject = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| teeproxy::config::x509::describe(c))
                        .map(|i| i.subject);
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        record
                            .0
                            .lock()
                            .unwrap()
                            .push((req.uri().path().to_string(), subject.clone()));
                        record.1.lock().unwrap().push(req.version());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        TlsUpstream { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

fn tls_errors(reason: &str) -> String {
    format!(
        "teeproxy_upstream_tls_errors_total{{cluster=\"primary\",leg=\"primary\",reason=\"{reason}\"}}"
    )
}

const TLS_KIND: &str =
    "teeproxy_upstream_errors_total{cluster=\"primary\",leg=\"primary\",kind=\"tls\"}";

#[tokio::test]
async fn a_private_ca_and_server_name_reach_the_https_upstream_over_http1_and_http2() {
    let d = temp_dir("up-private-ca");
    let ca = TestCa::new("Test CA");
    let up = TlsUpstream::start(
        &ca.issue("upstream.test", &["upstream.test"]),
        None,
        "hello over tls",
    )
    .await;
    let ca_file = write(&d, "ca.pem", &ca.pem());
    let proxy = TestProxy::start(&simple_yaml(
        &[up.url()],
        &format!("tls: {{ ca: \"{ca_file}\", server_name: upstream.test }}"),
    ))
    .await;
    let (status, _, body) = get(&proxy.url("/over/tls")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello over tls");
    assert_eq!(up.seen.all(), [("/over/tls".to_string(), None)]);
    assert_eq!(proxy.metric(TLS_KIND).await, 0.0);
    // HTTP/2 by ALPN with `protocol: h2` or `auto`, HTTP/1.1 with `http1`.
    for (protocol, want) in [
        ("h2", http::Version::HTTP_2),
        ("auto", http::Version::HTTP_2),
        ("http1", http::Version::HTTP_11),
    ] {
        let proxy = TestProxy::start(&simple_yaml(
            &[up.url()],
            &format!(
                "protocol: {protocol}, tls: {{ ca: \"{ca_file}\", server_name: upstream.test }}"
            ),
        ))
        .await;
        let (status, _, body) = get(&proxy.url(&format!("/{protocol}"))).await;
        assert_eq!(status, StatusCode::OK, "{protocol}");
        assert_eq!(body, "hello over tls", "{protocol}");
        assert_eq!(
            up.seen.versions().last(),
            Some(&want),
            "protocol {protocol}: the upstream saw {want:?}"
        );
        assert_eq!(proxy.metric(TLS_KIND).await, 0.0);
    }
    assert_eq!(
        up.seen.versions().len(),
        4,
        "one request, then one per protocol"
    );
}

#[tokio::test]
async fn a_wrong_ca_or_a_wrong_name_is_refused_with_502_and_counted() {
    let d = temp_dir("up-refused");
    let ca = TestCa::new("Test CA");
    let other = TestCa::new("Other CA");
    let up = TlsUpstream::start(
        &ca.issue("upstream.test", &["upstream.test"]),
        None,
        "hello",
    )
    .await;
    let ca_file = write(&d, "ca.pem", &ca.pem());
    let other_file = write(&d, "other.pem", &other.pem());
    let cases = [
        (
            format!("tls: {{ ca: \"{other_file}\", server_name: upstream.test }}"),
            "unknown_ca",
        ),
        (
            format!("tls: {{ ca: \"{ca_file}\", server_name: other.test }}"),
            "wrong_name",
        ),
        // Without `server_name`, the endpoint's host (127.0.0.1) is checked.
        (format!("tls: {{ ca: \"{ca_file}\" }}"), "wrong_name"),
        // The built-in roots do not know a private CA.
        (
            "tls: { server_name: upstream.test }".to_string(),
            "unknown_ca",
        ),
    ];
    for (tls, reason) in cases {
        let proxy = TestProxy::start(&simple_yaml(&[up.url()], &tls)).await;
        let (status, _, body) = get(&proxy.url("/refused")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{tls}");
        assert_eq!(body, "upstream TLS error\n", "{tls}");
        assert_eq!(proxy.metric(&tls_errors(reason)).await, 1.0, "{tls}");
        assert_eq!(proxy.metric(TLS_KIND).await, 1.0, "{tls}");
        assert_eq!(
            proxy
                .metric("teeproxy_upstream_errors_total{cluster=\"primary\",leg=\"primary\",kind=\"connect\"}")
                .await,
            0.0,
            "{tls}"
        );
    }
    assert!(
        up.seen.all().is_empty(),
        "no request got through: {:?}",
        up.seen.all()
    );
    // Verification off: the same upstream is reached whatever its certificate.
    let proxy = TestProxy::start(&simple_yaml(
        &[up.url()],
        "tls: { insecure_skip_verify: true }",
    ))
    .await;
    let (status, _, _) = get(&proxy.url("/insecure")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn mtls_an_upstream_requiring_a_client_certificate() {
    let d = temp_dir("up-mtls");
    let ca = TestCa::new("Test CA");
    let clients = TestCa::new("Client CA");
    let up = TlsUpstream::start(
        &ca.issue("upstream.test", &["upstream.test"]),
        Some(&clients),
        "hello client",
    )
    .await;
    let ca_file = write(&d, "ca.pem", &ca.pem());
    // Without a client certificate: refused, 502, counted.
    let proxy = TestProxy::start(&simple_yaml(
        &[up.url()],
        &format!("tls: {{ ca: \"{ca_file}\", server_name: upstream.test }}"),
    ))
    .await;
    let (status, _, _) = get(&proxy.url("/anonymous")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(proxy.metric(&tls_errors("client_cert_refused")).await, 1.0);
    assert_eq!(proxy.metric(TLS_KIND).await, 1.0);
    // With one: served, and the upstream saw who called.
    let client = clients.issue_client("teeproxy-client");
    let (cert, key) = (client.cert_pem, client.key_pem);
    let cert_file = write(&d, "client.pem", &cert);
    let key_file = write(&d, "client-key.pem", &key);
    let proxy = TestProxy::start(&simple_yaml(
        &[up.url()],
        &format!("tls: {{ ca: \"{ca_file}\", server_name: upstream.test, cert: \"{cert_file}\", key: \"{key_file}\" }}"),
    ))
    .await;
    let (status, _, body) = get(&proxy.url("/known")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello client");
    assert_eq!(
        up.seen.all(),
        [("/known".to_string(), Some("CN=teeproxy-client".to_string()))]
    );
    assert_eq!(
        proxy
            .metric("teeproxy_tls_certificate_expiry_seconds{scope=\"cluster\",name=\"primary\",subject=\"CN=teeproxy-client\"}")
            .await,
        CLIENT_NOT_AFTER as f64
    );
}

#[tokio::test]
async fn a_rotated_ca_and_client_certificate_are_used_after_a_reload() {
    let d = temp_dir("up-rotate");
    let old_ca = TestCa::new("Old CA");
    let new_ca = TestCa::new("New CA");
    let clients = TestCa::new("Client CA");
    let up = TlsUpstream::start(
        &new_ca.issue("upstream.test", &["upstream.test"]),
        Some(&clients),
        "rotated",
    )
    .await;
    let ca_file = write(&d, "ca.pem", &old_ca.pem());
    let client = clients.issue_client("client-2026");
    let (cert, key) = (client.cert_pem, client.key_pem);
    let cert_file = write(&d, "client.pem", &cert);
    let key_file = write(&d, "client-key.pem", &key);
    let yaml = simple_yaml(
        &[up.url()],
        &format!(
            "tls: {{ ca: \"{ca_file}\", server_name: upstream.test, cert: \"{cert_file}\", key: \"{key_file}\" }}"
        ),
    );
    let proxy = TestProxy::start(&yaml).await;
    let (status, _, _) = get(&proxy.url("/before")).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "the upstream's CA is not trusted yet"
    );
    assert_eq!(proxy.metric(&tls_errors("unknown_ca")).await, 1.0);
    // The files change on disk; the same config is reloaded.
    write(&d, "ca.pem", &new_ca.pem());
    let client = clients.issue_client("client-2027");
    let (cert, key) = (client.cert_pem, client.key_pem);
    write(&d, "client.pem", &cert);
    write(&d, "client-key.pem", &key);
    proxy.reload(&yaml).await;
    let (status, _, body) = get(&proxy.url("/after")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "rotated");
    assert_eq!(
        up.seen.all(),
        [("/after".to_string(), Some("CN=client-2027".to_string()))]
    );
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_tls_certificate_expiry_seconds{scope=\"cluster\",name=\"primary\",subject=\"CN=client-2027\"}"
        ),
        CLIENT_NOT_AFTER as f64
    );
    assert!(
        !m.contains("CN=client-2026"),
        "the old certificate's gauge is gone: {m}"
    );
}

#[tokio::test]
async fn a_tls_shadow_gets_its_copy_and_a_bad_ca_shadow_only_counts() {
    let d = temp_dir("up-shadow");
    let ca = TestCa::new("Shadow CA");
    let other = TestCa::new("Other CA");
    let primary = FakeUpstream::start().await;
    let shadow = TlsUpstream::start(
        &ca.issue("shadow.test", &["shadow.test"]),
        None,
        "from shadow",
    )
    .await;
    let ca_file = write(&d, "ca.pem", &ca.pem());
    let other_file = write(&d, "other.pem", &other.pem());
    let yaml = yaml(&format!(
        "clusters:\n  primary: {{ endpoints: [\"{}\"] }}\n  candidate: {{ endpoints: [\"{}\"], tls: {{ ca: \"{ca_file}\", server_name: shadow.test }} }}\n  untrusted: {{ endpoints: [\"{}\"], tls: {{ ca: \"{other_file}\", server_name: shadow.test }} }}\nroutes:\n  - name: all\n    primary: primary\n    shadows: [{{ cluster: candidate }}, {{ cluster: untrusted }}]\n",
        primary.url(),
        shadow.url(),
        shadow.url(),
    ));
    let proxy = TestProxy::start(&yaml).await;
    for i in 0..3 {
        let (status, _, body) = get(&proxy.url(&format!("/copy/{i}"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hello from upstream", "the primary is unaffected");
    }
    assert_eq!(primary.count(), 3);
    assert_eventually!(
        shadow.seen.all().len() == 3,
        "the TLS shadow got every copy"
    );
    let mut paths: Vec<String> = shadow.seen.all().into_iter().map(|(p, _)| p).collect();
    paths.sort();
    assert_eq!(paths, ["/copy/0", "/copy/1", "/copy/2"]);
    assert_eventually!(
        {
            let m = proxy.metrics().await;
            outcome(&m, "all", "untrusted", "tls_error") == 3.0
                && outcome(&m, "all", "candidate", "ok") == 3.0
        },
        "the candidate's answers and the untrusted shadow's failures are counted"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_upstream_tls_errors_total{cluster=\"untrusted\",leg=\"shadow\",reason=\"unknown_ca\"}"
        ),
        3.0
    );
    for s in ["candidate", "untrusted"] {
        assert!(
            ShadowCounts::from_metrics(&m, "all", s).balanced(),
            "{s}: {m}"
        );
    }
    assert_eq!(
        metric_value(
            &m,
            "teeproxy_upstream_errors_total{cluster=\"primary\",leg=\"primary\",kind=\"tls\"}"
        ),
        0.0
    );
}

/// Loads `tls` for a cluster at `endpoint`; the error text when it fails.
fn load_error(endpoint: &str, tls: &str) -> String {
    let yaml = simple_yaml(&[endpoint.to_string()], &format!("tls: {{ {tls} }}"));
    match Config::from_yaml(&yaml) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tls_files_that_are_missing_unreadable_or_mismatched_fail_the_load_naming_file_and_key() {
    let d = temp_dir("up-config");
    let ca = TestCa::new("Test CA");
    let client = ca.issue_client("client");
    let (cert, key) = (client.cert_pem, client.key_pem);
    let other_key = ca.issue_client("other").key_pem;
    let ca_file = write(&d, "ca.pem", &ca.pem());
    let cert_file = write(&d, "client.pem", &cert);
    let key_file = write(&d, "client-key.pem", &key);
    let other_key_file = write(&d, "other-key.pem", &other_key);
    let garbage = write(&d, "garbage.pem", "not a certificate\n");
    let missing = d.join("missing.pem").display().to_string();
    let https = "https://127.0.0.1:1";
    let ok = format!("ca: \"{ca_file}\", cert: \"{cert_file}\", key: \"{key_file}\"");
    assert_eq!(load_error(https, &ok), "", "a good set loads");
    let cases = [
        (
            format!("ca: \"{missing}\""),
            "clusters.primary.tls.ca",
            missing.as_str(),
        ),
        (
            format!("ca: \"{garbage}\""),
            "clusters.primary.tls.ca",
            garbage.as_str(),
        ),
        (
            format!("cert: \"{missing}\", key: \"{key_file}\""),
            "clusters.primary.tls.cert",
            missing.as_str(),
        ),
        (
            format!("cert: \"{cert_file}\", key: \"{missing}\""),
            "clusters.primary.tls.key",
            missing.as_str(),
        ),
        (
            format!("cert: \"{cert_file}\", key: \"{other_key_file}\""),
            "clusters.primary.tls.key",
            "does not match",
        ),
        (
            format!("cert: \"{cert_file}\""),
            "clusters.primary.tls.key",
            "needs its private key",
        ),
        (
            format!("key: \"{key_file}\""),
            "clusters.primary.tls.cert",
            "needs its certificate",
        ),
        (
            "server_name: \"not a name\"".to_string(),
            "clusters.primary.tls.server_name",
            "neither",
        ),
        (
            format!("ca: \"{ca_file}\", insecure_skip_verify: true"),
            "clusters.primary.tls.ca",
            "insecure_skip_verify",
        ),
    ];
    for (tls, key, says) in cases {
        let e = load_error(https, &tls);
        assert!(e.contains(key) && e.contains(says), "{tls}: {e}");
    }
    // `tls` on a cluster with only http:// endpoints.
    let e = load_error("http://127.0.0.1:1", "server_name: upstream.test");
    assert!(
        e.contains("clusters.primary.tls:") && e.contains("https://"),
        "{e}"
    );
}
