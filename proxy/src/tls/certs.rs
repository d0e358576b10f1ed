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

pub use crate::config::x509::CertInfo;

/// A loaded pair: what rustls serves, and what it says.
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    /// `None`: this reader could not read it (served all the same).
    pub(crate) info: Option<CertInfo>,
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
    // What it says is for reports: rustls checks the certificate itself (with the key).
    let info = describe(&chain[0]);
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
pub(crate) fn describe(der: &CertificateDer<'_>) -> Option<CertInfo> {
    crate::config::x509::describe(der.as_ref())
}

/// The subject of a client's certificate, for the access log and routes (`None` when the
/// subject is empty or unreadable).
pub(crate) fn subject(der: &CertificateDer<'_>) -> Option<String> {
    describe(der).map(|i| i.subject).filter(|s| !s.is_empty())
}
