//! TLS metrics.
//! - `teeproxy_tls_certificate_expiry_seconds{scope,name,subject}`: the `notAfter` of every
//!   certificate teeproxy holds, as a Unix time (the Prometheus convention for a point in
//!   time, like blackbox_exporter's `probe_ssl_earliest_cert_expiry`; alert on
//!   `... - time() < 14 * 86400`). Scope `listener`: the certificates a TLS listener serves
//!   (`name` is the listener); scope `cluster`: a cluster's client certificate. The series
//!   of certificates no longer held are removed.
//! - `teeproxy_upstream_tls_errors_total{cluster,leg,reason}`: TLS failures to upstreams.
//! - TLS listeners: handshakes, handshake failures by reason, certificate reloads by result.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::Leg;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertificateLabels {
    /// `cluster` or `listener`.
    pub(crate) scope: &'static str,
    /// The cluster's or the listener's name.
    pub(crate) name: String,
    pub(crate) subject: String,
}

/// Why a TLS exchange with an upstream failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum TlsFailure {
    /// The upstream's certificate is not signed by a trusted CA.
    unknown_ca,
    /// The certificate is not valid for the name checked (`server_name` or the host).
    wrong_name,
    /// The certificate has expired or is not valid yet.
    expired,
    /// Another certificate problem (bad encoding, wrong usage, revoked, ...).
    bad_certificate,
    /// The upstream refused the handshake over our client certificate (missing, unknown CA,
    /// expired, ...).
    client_cert_refused,
    /// Any other TLS failure (no common version or suite, not TLS at all, ...).
    handshake,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TlsErrorLabels {
    pub(crate) cluster: String,
    pub(crate) leg: Leg,
    pub(crate) reason: TlsFailure,
}

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

/// The TLS families.
#[derive(Default)]
pub(crate) struct TlsFamilies {
    expiry: Family<CertificateLabels, Gauge>,
    /// The series set, per scope, so a reload removes those that went away.
    current: Mutex<HashSet<CertificateLabels>>,
    pub(crate) upstream_errors: Family<TlsErrorLabels, Counter>,
    pub(crate) handshake_failures: Family<HandshakeFailureLabels, Counter>,
    pub(crate) handshakes: Family<super::labels::ListenerLabels, Counter>,
    pub(crate) resumed: Family<super::labels::ListenerLabels, Counter>,
    pub(crate) reloads: Family<CertReloadLabels, Counter>,
}

impl TlsFamilies {
    /// Registers the families (under the registry's `teeproxy` prefix).
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "tls_certificate_expiry_seconds",
            "When a certificate teeproxy holds expires (notAfter, Unix time): scope listener for the certificates a TLS listener serves, cluster for a cluster's client certificate",
            self.expiry.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes completed, by listener",
            self.handshakes.clone(),
        );
        r.register(
            "tls_sessions_resumed",
            "TLS handshakes that resumed a session (a ticket or session id), by listener; also counted in teeproxy_tls_handshakes_total",
            self.resumed.clone(),
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
            "upstream_tls_errors",
            "TLS failures to upstreams by reason (unknown_ca, wrong_name, expired, bad_certificate, client_cert_refused, handshake); each is also counted in teeproxy_upstream_errors_total{kind=\"tls\"}",
            self.upstream_errors.clone(),
        );
    }

    /// The certificates of `scope` are now `certs` (name, subject, notAfter): their gauges
    /// are set, and those of certificates of `scope` not among them removed. With `only`,
    /// just the series of that name are replaced (one listener's, on its own reload). Two
    /// certificates with one subject under one name show the earlier `notAfter`.
    pub(crate) fn set_certificates(
        &self,
        scope: &'static str,
        only: Option<&str>,
        certs: &[(String, String, i64)],
    ) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut now: HashMap<CertificateLabels, i64> = HashMap::new();
        for (name, subject, not_after) in certs {
            let labels = CertificateLabels {
                scope,
                name: name.clone(),
                subject: subject.clone(),
            };
            now.entry(labels)
                .and_modify(|t| *t = (*t).min(*not_after))
                .or_insert(*not_after);
        }
        for (labels, not_after) in &now {
            self.expiry.get_or_create(labels).set(*not_after);
        }
        current.retain(|l| {
            let mine = l.scope == scope && only.is_none_or(|n| n == l.name);
            let keep = !mine || now.contains_key(l);
            if !keep {
                self.expiry.remove(l);
            }
            keep
        });
        current.extend(now.into_keys());
    }

    /// Creates a TLS listener's series up front, so every reason shows at 0.
    pub(crate) fn listener(&self, listener: &str) {
        let labels = super::labels::ListenerLabels {
            listener: listener.to_string(),
        };
        self.handshakes.get_or_create(&labels).get();
        self.resumed.get_or_create(&labels).get();
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

    /// A finished handshake; `resumed`: it resumed a session.
    pub(crate) fn handshake(&self, listener: &str, resumed: bool) {
        let labels = super::labels::ListenerLabels {
            listener: listener.to_string(),
        };
        self.handshakes.get_or_create(&labels).inc();
        if resumed {
            self.resumed.get_or_create(&labels).inc();
        }
    }

    pub(crate) fn reload(&self, listener: &str, ok: bool) {
        self.reloads
            .get_or_create(&CertReloadLabels {
                listener: listener.to_string(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::text::{Format, encode_as};

    fn expiry_lines(r: &Registry) -> Vec<String> {
        let mut lines: Vec<String> = encode_as(r, Format::Prometheus)
            .lines()
            .filter(|l| l.starts_with("teeproxy_tls_certificate_expiry_seconds{"))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn a_listener_reload_replaces_its_own_series_only() {
        let mut r = Registry::with_prefix("teeproxy");
        let t = TlsFamilies::default();
        t.register(&mut r);
        let cert = |name: &str, subject: &str, at: i64| (name.to_string(), subject.to_string(), at);
        t.set_certificates("cluster", None, &[cert("p", "CN=client", 100)]);
        t.set_certificates("listener", Some("a"), &[cert("a", "CN=old", 200)]);
        t.set_certificates("listener", Some("b"), &[cert("b", "CN=b", 300)]);
        // Listener a rotates; two certificates share a subject: the earlier shows.
        t.set_certificates(
            "listener",
            Some("a"),
            &[cert("a", "CN=new", 500), cert("a", "CN=new", 400)],
        );
        assert_eq!(
            expiry_lines(&r),
            [
                "teeproxy_tls_certificate_expiry_seconds{scope=\"cluster\",name=\"p\",subject=\"CN=client\"} 100",
                "teeproxy_tls_certificate_expiry_seconds{scope=\"listener\",name=\"a\",subject=\"CN=new\"} 400",
                "teeproxy_tls_certificate_expiry_seconds{scope=\"listener\",name=\"b\",subject=\"CN=b\"} 300",
            ]
        );
        // A config without the cluster's client certificate: only that series goes.
        t.set_certificates("cluster", None, &[]);
        assert_eq!(expiry_lines(&r).len(), 2);
        assert!(expiry_lines(&r).iter().all(|l| l.contains("listener")));
    }
}
