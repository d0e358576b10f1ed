//! TLS to upstreams, per cluster: the rustls client config built from `clusters.<name>.tls`
//! (the built-in roots or the cluster's CA, a client certificate for mTLS, or no
//! verification at all when asked), the connector that uses it with the name to send as
//! SNI and to check, and the classification of TLS failures for the error metrics.

use std::sync::Arc;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::config::ClusterTls;
use crate::metrics::TlsFailure;

/// The connector of every upstream client: plain TCP for `http://`, rustls for `https://`.
pub(crate) type Connector = HttpsConnector<HttpConnector>;

/// The protocols a TLS connection offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // `H2` and `Http1AndH2` are for clusters speaking HTTP/2.
pub(crate) enum Alpn {
    /// HTTP/1.1 only (no ALPN extension is sent: a server then speaks HTTP/1.1).
    Http1,
    /// `h2` only.
    H2,
    /// `h2` and `http/1.1`: the server decides.
    Http1AndH2,
}

/// A cluster's TLS client settings, built once per `Cluster` value (so per leg and per
/// config generation) and shared by its endpoints' connectors.
#[derive(Clone)]
pub(crate) struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    /// `tls.server_name`: the SNI and the name checked, whatever the endpoint.
    server_name: Option<ServerName<'static>>,
}

impl TlsClient {
    /// The client settings of a cluster; `cluster` names it in logs.
    pub(crate) fn new(cluster: &str, tls: Option<&ClusterTls>) -> Self {
        let server_name = tls
            .and_then(|t| t.server_name.clone())
            .and_then(|n| ServerName::try_from(n).ok());
        TlsClient {
            config: Arc::new(client_config(cluster, tls)),
            server_name,
        }
    }

    /// A connector for one endpoint offering `alpn`. SNI and the certificate check use
    /// `tls.server_name` when set, else `host` when given (an endpoint whose name was
    /// resolved to the address connected to), else the URI's host.
    pub(crate) fn connector(
        &self,
        http: HttpConnector,
        host: Option<&str>,
        alpn: Alpn,
    ) -> Connector {
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http();
        let name = self.server_name.clone().or_else(|| {
            host.and_then(|h| ServerName::try_from(h.trim_matches(['[', ']']).to_string()).ok())
        });
        let b = match name {
            Some(n) => b.with_server_name_resolver(FixedServerNameResolver::new(n)),
            None => b,
        };
        match alpn {
            Alpn::Http1 => b.enable_http1().wrap_connector(http),
            Alpn::H2 => b.enable_http2().wrap_connector(http),
            Alpn::Http1AndH2 => b.enable_all_versions().wrap_connector(http),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client config of a cluster (without ALPN: the connector adds it).
fn client_config(cluster: &str, tls: Option<&ClusterTls>) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let loaded = tls.map(|t| t.loaded.clone()).unwrap_or_default();
    let builder = if tls.is_some_and(|t| t.insecure_skip_verify) {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if loaded.roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            // Checked when the config was loaded.
            roots.add_parsable_certificates(loaded.roots.iter().cloned());
        }
        builder.with_root_certificates(roots)
    };
    match &loaded.client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = c.chain.clone();
            // The key was checked with this provider when the config was loaded.
            let no_client_auth = builder.clone();
            builder
                .with_client_auth_cert(chain, c.key())
                .unwrap_or_else(|e| {
                    tracing::error!(cluster, error = %e, "the client certificate cannot be used; connecting without one");
                    no_client_auth.with_no_client_auth()
                })
        }
    }
}

/// Why a TLS exchange failed, when `e` or one of its sources is a rustls error.
pub(crate) fn failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(classify(r));
        }
        // tokio-rustls reports a rustls error as an `io::Error` carrying it (and
        // hyper-rustls wraps that in another): an `io::Error`'s `source` skips what it
        // carries, so look inside.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn classify(e: &rustls::Error) -> TlsFailure {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                TlsFailure::unknown_ca
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::wrong_name
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsFailure::expired,
            _ => TlsFailure::bad_certificate,
        },
        rustls::Error::AlertReceived(
            A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::AccessDenied,
        ) => TlsFailure::client_cert_refused,
        _ => TlsFailure::handshake,
    }
}

/// `insecure_skip_verify: true`: any certificate is accepted (the handshake's signatures
/// are still checked, so the connection is encrypted to whoever holds the key).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
