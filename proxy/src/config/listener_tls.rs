//! A TLS listener's keys, checked and typed: one `cert`/`key` pair or a list of
//! `certificates` chosen by SNI with a `default`, `client_ca` and `client_auth`, the
//! handshake limit. The checks run with the conversion (`build`), so each error names its
//! key and place like the others. The files themselves are read by the runtime (and
//! `teeproxy check`).

use std::collections::HashSet;
use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::check::Invalid;
use super::file::{DefaultCertificate, ListenerTlsFile};
use super::{CertificatePaths, ClientAuth, ListenerTls};

/// Checks and converts `listeners[i].tls` (`key` names it in errors).
pub(super) fn listener_tls(f: &ListenerTlsFile, key: &str) -> Result<ListenerTls, Invalid> {
    let path = |s: &Spanned<String>, k: &str| -> Result<PathBuf, Invalid> {
        if s.value.trim().is_empty() {
            return Err(Invalid::at(Some(&s.referenced), k, "an empty path"));
        }
        Ok(PathBuf::from(&s.value))
    };
    let mut certificates = Vec::new();
    match (&f.cert, &f.key, &f.certificates) {
        (Some(c), Some(k), None) => certificates.push(CertificatePaths {
            cert: path(c, &format!("{key}.cert"))?,
            key: path(k, &format!("{key}.key"))?,
            server_names: Vec::new(),
            key_path: key.to_string(),
        }),
        (None, None, Some(list)) => {
            if list.value.is_empty() {
                return Err(Invalid::at(
                    Some(&list.referenced),
                    &format!("{key}.certificates"),
                    "at least one certificate is required",
                ));
            }
            let mut names = HashSet::new();
            for (i, c) in list.value.iter().enumerate() {
                let k = format!("{key}.certificates[{i}]");
                let mut server_names = Vec::new();
                for (j, n) in c.server_names.iter().enumerate() {
                    let name = n.value.trim().to_ascii_lowercase();
                    let bare = name.strip_prefix("*.").unwrap_or(&name);
                    if bare.is_empty()
                        || bare.contains('*')
                        || !bare
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
                    {
                        return Err(Invalid::at(
                            Some(&n.referenced),
                            &format!("{k}.server_names[{j}]"),
                            format!(
                                "{:?} is not a DNS name (`example.com` or `*.example.com`)",
                                n.value
                            ),
                        ));
                    }
                    if !names.insert(name.clone()) {
                        return Err(Invalid::at(
                            Some(&n.referenced),
                            &format!("{k}.server_names[{j}]"),
                            format!("{name:?} is served by an earlier certificate already"),
                        ));
                    }
                    server_names.push(name);
                }
                certificates.push(CertificatePaths {
                    cert: path(&c.cert, &format!("{k}.cert"))?,
                    key: path(&c.key, &format!("{k}.key"))?,
                    server_names,
                    key_path: k,
                });
            }
        }
        (_, _, Some(list)) => {
            return Err(Invalid::at(
                Some(&list.referenced),
                key,
                "either `cert` and `key`, or `certificates`, not both",
            ));
        }
        (Some(c), None, None) => {
            return Err(Invalid::at(
                Some(&c.referenced),
                &format!("{key}.key"),
                "`cert` needs its `key`",
            ));
        }
        (None, Some(k), None) => {
            return Err(Invalid::at(
                Some(&k.referenced),
                &format!("{key}.cert"),
                "`key` needs its `cert`",
            ));
        }
        (None, None, None) => {
            return Err(Invalid::at(
                None,
                key,
                "a TLS listener needs `cert` and `key`, or `certificates`",
            ));
        }
    }
    let default = match &f.default {
        None => 0,
        Some(d) => {
            let found = match &d.value {
                DefaultCertificate::Index(i) => (*i < certificates.len()).then_some(*i),
                DefaultCertificate::Name(n) => {
                    let n = n.to_ascii_lowercase();
                    certificates
                        .iter()
                        .position(|c| c.server_names.contains(&n))
                }
            };
            found.ok_or_else(|| {
                Invalid::at(
                    Some(&d.referenced),
                    &format!("{key}.default"),
                    format!(
                        "names no certificate: an index below {} or one of their server_names",
                        certificates.len()
                    ),
                )
            })?
        }
    };
    let client_ca = f
        .client_ca
        .as_ref()
        .map(|c| path(c, &format!("{key}.client_ca")))
        .transpose()?;
    if let (None, Some(a)) = (&client_ca, &f.client_auth) {
        return Err(Invalid::at(
            Some(&a.referenced),
            &format!("{key}.client_auth"),
            "needs `client_ca` (the CAs client certificates are checked against)",
        ));
    }
    let handshake_timeout = f.handshake_timeout.value.get();
    if handshake_timeout.is_zero() {
        return Err(Invalid::at(
            Some(&f.handshake_timeout.referenced),
            &format!("{key}.handshake_timeout"),
            "must be above zero",
        ));
    }
    Ok(ListenerTls {
        certificates,
        default,
        client_ca,
        client_auth: f
            .client_auth
            .as_ref()
            .map_or(ClientAuth::default(), |a| a.value),
        handshake_timeout,
    })
}
