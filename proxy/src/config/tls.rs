//! A cluster's upstream TLS (`clusters.<name>.tls`): what the file says (paths, a server
//! name, a flag) and what loading the files found (CA certificates; a client certificate
//! chain with its key, checked to match). The files are read when the config is loaded
//! (start, `teeproxy check`, every reload), so a rotated CA or client certificate is used
//! from the next reload on; a file that is missing, unreadable or not PEM, or a key that
//! does not belong to its certificate, fails the load naming the file and the key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;

use super::x509::{self, CertInfo};

/// Upstream TLS of one cluster, for its `https://` endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterTls {
    /// PEM CA certificates that replace the built-in (Mozilla) roots; `None`: those roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and checked in the upstream's certificate; `None`: the
    /// endpoint's host.
    pub server_name: Option<String>,
    /// The client certificate (PEM chain) presented to upstreams that ask for one.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// The upstream's certificate is not verified at all (logged as a warning at load).
    pub insecure_skip_verify: bool,
    /// What the files held when the config was loaded.
    #[serde(skip)]
    pub loaded: Arc<LoadedTls>,
}

/// The contents of a cluster's TLS files.
#[derive(Default)]
pub struct LoadedTls {
    /// The CA certificates of `ca` (empty: the built-in roots).
    pub roots: Vec<CertificateDer<'static>>,
    pub client: Option<ClientCert>,
}

/// A client certificate with its key (checked to match), and what it says.
pub struct ClientCert {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The leaf's subject and `notAfter` (`None` when they could not be read).
    pub info: Option<CertInfo>,
}

impl ClientCert {
    /// The private key (a copy: rustls takes it by value).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedTls")
            .field("roots", &self.roots.len())
            .field("client", &self.client.as_ref().map(|c| &c.info))
            .finish()
    }
}

/// What a TLS file problem says: the message, for the key the caller names.
pub(super) type FileError = String;

/// Checks a server name as rustls will use it (a DNS name or an IP address).
pub(super) fn check_server_name(name: &str) -> Result<(), String> {
    ServerName::try_from(name.to_string())
        .map(|_| ())
        .map_err(|_| format!("{name:?} is neither a DNS name nor an IP address"))
}

/// Reads the CA certificates of a `ca` file.
pub(super) fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store.add(c.clone()).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// Which of the pair failed to load.
pub(super) enum PairError {
    Cert(FileError),
    Key(FileError),
}

/// Reads a client certificate chain and its key, and checks that they belong together.
pub(super) fn load_client(cert: &Path, key: &Path) -> Result<ClientCert, PairError> {
    let pem = read(cert).map_err(PairError::Cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PairError::Cert(format!("{}: not PEM: {e}", cert.display())))?;
    let Some(leaf) = chain.first() else {
        return Err(PairError::Cert(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            cert.display()
        )));
    };
    let info = x509::describe(leaf);
    let key_pem = read(key).map_err(PairError::Key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        PairError::Key(format!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}",
            key.display()
        ))
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| PairError::Key(format!("{}: unsupported private key: {e}", key.display())))?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(PairError::Key(format!(
                "{}: the key does not match the certificate in {}",
                key.display(),
                cert.display()
            )));
        }
    }
    Ok(ClientCert {
        chain,
        key: private,
        info,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}
