//! Reading a listener's PEM files: a certificate chain and its private key (checked to
//! belong together), a client CA bundle, and what a certificate says about itself
//! (subject, SANs, validity) for `teeproxy check`, the expiry gauge and the access log.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::CertificatePaths;

/// A TLS file that cannot be used; the message names the config key and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: {file}: cannot read: {source}")]
    Read {
        key: String,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {file}: {message}")]
    Invalid {
        key: String,
        file: String,
        message: String,
    },
}

impl TlsError {
    fn invalid(key: &str, file: &Path, message: impl Into<String>) -> Self {
        TlsError::Invalid {
            key: key.to_string(),
            file: file.display().to_string(),
            message: message.into(),
        }
    }
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's distinguished name (`CN=example.com, O=...`).
    pub subject: String,
    /// DNS names and IP addresses (`DNS:example.com`, `IP:127.0.0.1`).
    pub sans: Vec<String>,
    /// notBefore and notAfter, as Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// The name the certificate is known by in metrics: its first SAN, else its subject.
    pub fn label(&self) -> String {
        self.sans
            .first()
            .map(|s| s.split_once(':').map_or(s.as_str(), |(_, n)| n).to_string())
            .unwrap_or_else(|| self.subject.clone())
    }
}

/// A loaded pair: what rustls serves, and what it says.
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) info: CertInfo,
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key.to_string(),
        file: path.display().to_string(),
        source,
    })
}

/// Reads the PEM certificates of `path` (at least one).
pub(crate) fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::invalid(key, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::invalid(
            key,
            path,
            "no `BEGIN CERTIFICATE` block in the file",
        ));
    }
    Ok(certs)
}

/// Reads and checks one certificate/key pair of a listener.
pub(crate) fn load_pair(
    p: &CertificatePaths,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let cert_key = format!("{}.cert", p.key_path);
    let key_key = format!("{}.key", p.key_path);
    let chain = read_certs(&p.cert, &cert_key)?;
    let info = describe(&chain[0]).map_err(|m| TlsError::invalid(&cert_key, &p.cert, m))?;
    let key_bytes = read(&p.key, &key_key)?;
    let der = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| TlsError::invalid(&key_key, &p.key, format!("no PEM private key: {e}")))?;
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::invalid(&key_key, &p.key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::invalid(
                &key_key,
                &p.key,
                format!(
                    "does not match the certificate of {} ({})",
                    p.cert.display(),
                    cert_key
                ),
            ));
        }
    }
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

/// Reads a client CA bundle into a root store.
pub(crate) fn load_roots(path: &Path, key: &str) -> Result<rustls::RootCertStore, TlsError> {
    let certs = read_certs(path, key)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| {
            TlsError::invalid(key, path, format!("not a usable CA certificate: {e}"))
        })?;
    }
    Ok(roots)
}

/// Subject, SANs and validity of a DER certificate.
pub(crate) fn describe(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::IPAddress(ip) => {
                    let addr = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(a) = addr {
                        sans.push(format!("IP:{a}"));
                    }
                }
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// The subject of a client's certificate, for the access log.
pub(crate) fn subject(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.subject().to_string())
}
