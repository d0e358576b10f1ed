//! TLS listeners: a listener's rustls server config (ring provider, TLS 1.2 and 1.3 only,
//! the provider's AEAD suites, ALPN `h2` and `http/1.1`, certificates chosen by SNI,
//! optional client certificates), swapped whole when its files are re-read (SIGHUP, a file
//! change): new connections get the new certificates, open ones keep theirs. A file that
//! does not load keeps the running config (logged, counted). The handshake runs under its
//! own time limit and each failure is counted by reason.

mod certs;
mod resolve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::HandshakeKind;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ProducesTickets, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

pub use certs::{CertInfo, TlsError};

use crate::config::{ClientAuth, Config, ListenerTls};
use crate::metrics::{HandshakeFailure, TlsFamilies};
use resolve::SniResolver;

/// The crypto provider of every TLS config teeproxy builds (ring; never aws-lc-rs).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of one TLS listener, as `teeproxy check` reports them.
#[derive(Debug, Clone)]
pub struct ListenerCerts {
    pub listener: String,
    /// In config order, with the server names each serves.
    /// What each says (`None`: this reader could not read it; rustls serves it anyway).
    pub certificates: Vec<(Option<CertInfo>, Vec<String>)>,
    pub default: usize,
}

/// Reads every TLS listener's files as the proxy would at start (certificates, keys and
/// whether they match, client CAs); the first problem names the file and the config key.
pub fn inspect(config: &Config) -> Result<Vec<ListenerCerts>, TlsError> {
    let provider = provider();
    let mut out = Vec::new();
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            let built = build(
                tls,
                &provider,
                &format!("listeners[{}]", index(config, &l.name)),
            )?;
            out.push(ListenerCerts {
                listener: l.name.clone(),
                certificates: built
                    .infos
                    .into_iter()
                    .zip(tls.certificates.iter().map(|c| c.server_names.clone()))
                    .collect(),
                default: tls.default,
            });
        }
    }
    Ok(out)
}

fn index(config: &Config, name: &str) -> usize {
    config
        .listeners
        .iter()
        .position(|l| l.name == name)
        .unwrap_or(0)
}

struct Built {
    config: ServerConfig,
    /// The client-certificate verifier, on a listener with `client_ca`.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// What each certificate says, when this reader could read it.
    infos: Vec<Option<CertInfo>>,
}

/// What a TLS listener serves now: the server config and its client-certificate verifier
/// (to check a resumed session's certificate again).
struct Serving {
    config: Arc<ServerConfig>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// TLS 1.2 sessions a listener remembers for clients that resume by session id, the
/// oldest out first: a few hundred bytes each (plus the client's certificate chain with
/// `client_ca`), half the sessions of nginx's `ssl_session_cache shared:SSL:10m`; rustls's
/// default is 256. TLS 1.3 (and TLS 1.2 clients that take tickets) resume with stateless
/// tickets instead, which cost no memory and no lookup.
const SESSION_CACHE: usize = 20_000;

/// Reads a listener's files and builds its server config.
fn build(tls: &ListenerTls, provider: &Arc<CryptoProvider>, key: &str) -> Result<Built, TlsError> {
    let mut certs = Vec::new();
    let mut infos = Vec::new();
    for c in &tls.certificates {
        let loaded = certs::load_pair(c, provider)?;
        infos.push(loaded.info);
        certs.push((loaded.key, c.server_names.clone()));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Invalid {
            key: format!("{key}.tls"),
            file: String::new(),
            message: e.to_string(),
        })?;
    let mut client_verifier = None;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let ca_key = format!("{key}.tls.client_ca");
            let roots = certs::load_roots(path, &ca_key)?;
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if tls.client_auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| TlsError::Invalid {
                key: ca_key,
                file: path.display().to_string(),
                message: e.to_string(),
            })?;
            client_verifier = Some(verifier.clone());
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(certs, tls.default)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order of suites (ring's: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305,
    // ECDHE only), not the client's: every suite offered is strong either way, but TLS
    // audits (testssl.sh) flag a server without an order of its own.
    config.ignore_client_order = true;
    Ok(Built {
        config,
        verifier: client_verifier,
        infos,
    })
}

/// What a TLS connection tells the handler about its client.
#[derive(Debug, Clone, Default)]
pub(crate) struct Session {
    /// The verified client certificate's subject.
    pub(crate) client_subject: Option<Arc<str>>,
}

/// One TLS listener's running state.
pub(crate) struct TlsListener {
    name: String,
    /// `listeners[i]`, for errors.
    key: String,
    settings: ListenerTls,
    provider: Arc<CryptoProvider>,
    current: ArcSwapOption<Serving>,
    /// Both kept across reloads: a rotated certificate does not end resumable sessions
    /// (a resumed client certificate is verified again, see `accept`).
    sessions: Arc<dyn StoresServerSessions>,
    /// Stateless session tickets (ring's ticketer: ChaCha20-Poly1305, a new random key
    /// every 6 hours, tickets live 12 hours); `None` if no key could be made.
    tickets: Option<Arc<dyn ProducesTickets>>,
    metrics: Arc<TlsFamilies>,
}

impl TlsListener {
    /// Reads the listener's files; when they do not load (they were checked at start, so
    /// they changed since), the error is logged and counted and handshakes fail until a
    /// reload succeeds.
    pub(crate) fn new(
        name: &str,
        key: String,
        settings: &ListenerTls,
        metrics: Arc<TlsFamilies>,
    ) -> Arc<Self> {
        metrics.listener(name);
        let tickets = rustls::crypto::ring::Ticketer::new()
            .inspect_err(|e| {
                tracing::warn!(listener = name, error = %e, "no TLS session tickets: sessions resume by id only");
            })
            .ok();
        let l = Arc::new(TlsListener {
            name: name.to_string(),
            key,
            settings: settings.clone(),
            provider: provider(),
            current: ArcSwapOption::empty(),
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE),
            tickets,
            metrics,
        });
        l.reload();
        l
    }

    /// The files to watch.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .settings
            .certificates
            .iter()
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
            .collect();
        files.extend(self.settings.client_ca.clone());
        files
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Re-reads the certificates, keys and client CAs; on success new connections use
    /// them; on failure the running ones stay (logged, counted). Returns whether it loaded.
    pub(crate) fn reload(&self) -> bool {
        match build(&self.settings, &self.provider, &self.key) {
            Ok(built) => {
                let expiry: Vec<(String, String, i64)> = built
                    .infos
                    .iter()
                    .flatten()
                    .map(|i| (self.name.clone(), i.subject.clone(), i.not_after))
                    .collect();
                self.metrics
                    .set_certificates("listener", Some(&self.name), &expiry);
                let mut config = built.config;
                config.session_storage = self.sessions.clone();
                if let Some(tickets) = &self.tickets {
                    config.ticketer = tickets.clone();
                }
                self.current.store(Some(Arc::new(Serving {
                    config: Arc::new(config),
                    verifier: built.verifier,
                })));
                self.metrics.reload(&self.name, true);
                for (info, paths) in built.infos.iter().zip(&self.settings.certificates) {
                    match info {
                        Some(info) => tracing::info!(
                            listener = %self.name,
                            subject = %info.subject,
                            sans = %info.sans.join(","),
                            not_after = info.not_after,
                            "TLS certificate loaded"
                        ),
                        None => tracing::warn!(
                            listener = %self.name,
                            cert = %paths.cert.display(),
                            "TLS certificate loaded; its subject, names and expiry could not be read (no expiry gauge)"
                        ),
                    }
                }
                true
            }
            Err(e) => {
                self.metrics.reload(&self.name, false);
                let running = self.current.load().is_some();
                tracing::error!(
                    listener = %self.name,
                    error = %e,
                    "TLS certificates not loaded; {}",
                    if running { "the running ones stay" } else { "handshakes fail until they load" }
                );
                false
            }
        }
    }

    /// Runs the handshake within the listener's time limit; a failure is counted by reason
    /// and logged at debug.
    pub(crate) async fn accept<S>(
        &self,
        stream: S,
        peer: SocketAddr,
    ) -> Option<(TlsStream<S>, Session)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(serving) = self.current.load_full() else {
            self.fail(
                HandshakeFailure::no_certificate,
                peer,
                "no certificate loaded",
            );
            return None;
        };
        let accept = TlsAcceptor::from(serving.config.clone()).accept(stream);
        let stream = match tokio::time::timeout(self.settings.handshake_timeout, accept).await {
            Err(_) => {
                self.fail(HandshakeFailure::timeout, peer, "handshake timed out");
                return None;
            }
            Ok(Err(e)) => {
                self.fail(reason(&e), peer, &e.to_string());
                return None;
            }
            Ok(Ok(s)) => s,
        };
        let connection = stream.get_ref().1;
        let resumed = connection.handshake_kind() == Some(HandshakeKind::Resumed);
        // A resumed session carries the client certificate verified when it began: check
        // it again against today's client CAs and clock, so that a CA taken out of
        // `client_ca` or an expired certificate ends there and then.
        if resumed && let Some(verifier) = &serving.verifier {
            let refused = match connection.peer_certificates() {
                Some([leaf, intermediates @ ..]) => verifier
                    .verify_client_cert(leaf, intermediates, UnixTime::now())
                    .err()
                    .map(|e| (HandshakeFailure::client_cert_invalid, e.to_string())),
                _ if verifier.client_auth_mandatory() => Some((
                    HandshakeFailure::client_cert_missing,
                    "resumed without a client certificate".to_string(),
                )),
                _ => None,
            };
            if let Some((reason, error)) = refused {
                self.fail(reason, peer, &format!("resumed session refused: {error}"));
                return None;
            }
        }
        self.metrics.handshake(&self.name, resumed);
        let client_subject = connection
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(certs::subject)
            .map(Arc::from);
        Some((stream, Session { client_subject }))
    }

    fn fail(&self, reason: HandshakeFailure, peer: SocketAddr, error: &str) {
        self.metrics.failure(&self.name, reason, 1);
        tracing::debug!(listener = %self.name, %peer, ?reason, error, "TLS handshake failed");
    }
}

/// The reason a handshake error is counted under.
fn reason(e: &std::io::Error) -> HandshakeFailure {
    use rustls::Error as E;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return HandshakeFailure::io;
    };
    match tls {
        E::NoCertificatesPresented => HandshakeFailure::client_cert_missing,
        E::InvalidCertificate(_) => HandshakeFailure::client_cert_invalid,
        E::PeerIncompatible(_) => HandshakeFailure::no_common_parameters,
        E::AlertReceived(_) => HandshakeFailure::client_alert,
        _ => HandshakeFailure::protocol,
    }
}
