//! TLS metrics: `teeproxy_tls_certificate_expiry_seconds{scope,name,subject}`, the
//! `notAfter` of every certificate teeproxy holds as a Unix time (scope `cluster`: a
//! cluster's client certificate; scope `listener`: a listener's certificates), and
//! `teeproxy_upstream_tls_errors_total{cluster,leg,reason}`, TLS failures to upstreams by
//! a fixed set of reasons. Certificates are set per (scope, name) whenever a config is
//! loaded: the series of certificates no longer configured are removed.

use std::collections::HashSet;
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

/// The TLS families.
#[derive(Default)]
pub(crate) struct TlsFamilies {
    expiry: Family<CertificateLabels, Gauge>,
    /// The series set, per scope, so a reload removes those that went away.
    current: Mutex<HashSet<CertificateLabels>>,
    pub(crate) upstream_errors: Family<TlsErrorLabels, Counter>,
}

impl TlsFamilies {
    /// Registers the families (under the registry's `teeproxy` prefix).
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "tls_certificate_expiry_seconds",
            "When a certificate teeproxy holds expires (notAfter, Unix time): scope cluster for a cluster's client certificate, listener for a listener's",
            self.expiry.clone(),
        );
        r.register(
            "upstream_tls_errors",
            "TLS failures to upstreams by reason (unknown_ca, wrong_name, expired, bad_certificate, client_cert_refused, handshake); each is also counted in teeproxy_upstream_errors_total{kind=\"tls\"}",
            self.upstream_errors.clone(),
        );
    }

    /// The certificates of `scope` are now `certs` (name, subject, notAfter): their
    /// gauges are set, and those of certificates of `scope` not among them removed.
    pub(crate) fn set_certificates(&self, scope: &'static str, certs: &[(String, String, i64)]) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let now: HashSet<CertificateLabels> = certs
            .iter()
            .map(|(name, subject, not_after)| {
                let labels = CertificateLabels {
                    scope,
                    name: name.clone(),
                    subject: subject.clone(),
                };
                self.expiry.get_or_create(&labels).set(*not_after);
                labels
            })
            .collect();
        current.retain(|l| {
            let keep = l.scope != scope || now.contains(l);
            if !keep {
                self.expiry.remove(l);
            }
            keep
        });
        current.extend(now);
    }
}
