//! TLS listener metrics: handshake failures by reason, certificate reloads by result, and
//! each served certificate's expiry (`teeproxy_tls_certificate_expiry_seconds`: the
//! `notAfter` time as Unix seconds, the Prometheus convention for a point in time, like
//! `probe_ssl_earliest_cert_expiry`; alert on `... - time() < 14 * 86400`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeFailureLabels {
    pub(crate) listener: String,
    pub(crate) reason: HandshakeFailure,
}

/// Why a TLS handshake failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum HandshakeFailure {
    /// Not finished within `handshake_timeout`.
    timeout,
    /// Not TLS, or a malformed or unexpected message.
    protocol,
    /// No protocol version, cipher suite or group in common (SSLv3, TLS 1.0/1.1, weak suites).
    no_common_parameters,
    /// Client certificate required but none sent.
    client_cert_missing,
    /// Client certificate sent but not valid (unknown CA, expired, bad signature...).
    client_cert_invalid,
    /// The client refused the proxy's certificate (an alert from the client).
    client_alert,
    /// No certificate could be loaded for the listener.
    no_certificate,
    /// The connection closed or failed during the handshake.
    io,
}

impl HandshakeFailure {
    pub(crate) const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::timeout,
        HandshakeFailure::protocol,
        HandshakeFailure::no_common_parameters,
        HandshakeFailure::client_cert_missing,
        HandshakeFailure::client_cert_invalid,
        HandshakeFailure::client_alert,
        HandshakeFailure::no_certificate,
        HandshakeFailure::io,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertReloadLabels {
    pub(crate) listener: String,
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertExpiryLabels {
    pub(crate) listener: String,
    /// The certificate's first server name (or SAN), else its subject.
    pub(crate) certificate: String,
}

/// The TLS families, shared by every TLS listener.
#[derive(Default)]
pub(crate) struct TlsFamilies {
    pub(crate) handshake_failures: Family<HandshakeFailureLabels, Counter>,
    pub(crate) handshakes: Family<super::labels::ListenerLabels, Counter>,
    pub(crate) reloads: Family<CertReloadLabels, Counter>,
    pub(crate) expiry: Family<CertExpiryLabels, Gauge>,
}

impl TlsFamilies {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "tls_handshakes",
            "TLS handshakes completed, by listener",
            self.handshakes.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by listener and reason (timeout, protocol, no_common_parameters, client_cert_missing, client_cert_invalid, client_alert, no_certificate, io)",
            self.handshake_failures.clone(),
        );
        r.register(
            "tls_certificate_reloads",
            "Re-reads of a TLS listener's certificates and keys (SIGHUP, file change), by result; on error the running certificates stay",
            self.reloads.clone(),
        );
        r.register(
            "tls_certificate_expiry_seconds",
            "When a served certificate expires (notAfter), as Unix time in seconds",
            self.expiry.clone(),
        );
    }

    /// Creates a listener's series up front, so every reason shows at 0.
    pub(crate) fn listener(&self, listener: &str) {
        self.handshakes
            .get_or_create(&super::labels::ListenerLabels {
                listener: listener.to_string(),
            })
            .get();
        for reason in HandshakeFailure::ALL {
            self.failure(listener, reason, 0);
        }
        for result in ["ok", "error"] {
            self.reloads
                .get_or_create(&CertReloadLabels {
                    listener: listener.to_string(),
                    result,
                })
                .inc_by(0);
        }
    }

    pub(crate) fn failure(&self, listener: &str, reason: HandshakeFailure, n: u64) {
        self.handshake_failures
            .get_or_create(&HandshakeFailureLabels {
                listener: listener.to_string(),
                reason,
            })
            .inc_by(n);
    }

    pub(crate) fn handshake(&self, listener: &str) {
        self.handshakes
            .get_or_create(&super::labels::ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
    }

    pub(crate) fn reload(&self, listener: &str, ok: bool) {
        self.reloads
            .get_or_create(&CertReloadLabels {
                listener: listener.to_string(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Sets a listener's expiry gauges to `certs` (name, notAfter), removing the ones of
    /// certificates no longer served.
    pub(crate) fn expiry(&self, listener: &str, old: &[String], certs: &[(String, i64)]) {
        for name in old {
            if !certs.iter().any(|(n, _)| n == name) {
                self.expiry.remove(&CertExpiryLabels {
                    listener: listener.to_string(),
                    certificate: name.clone(),
                });
            }
        }
        for (name, not_after) in certs {
            self.expiry
                .get_or_create(&CertExpiryLabels {
                    listener: listener.to_string(),
                    certificate: name.clone(),
                })
                .set(*not_after);
        }
    }
}
