//! Picking a listener's certificate by SNI: an exact name, then a `*.` wildcard one label
//! up, then the default (also for clients that send no SNI).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug)]
pub(crate) struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
    /// Lower-case names (`example.com`, `*.example.com`) to indexes into `certs`.
    names: HashMap<String, usize>,
    default: usize,
}

impl SniResolver {
    /// `certs` with their server names; `default` indexes `certs`.
    pub(crate) fn new(certs: Vec<(Arc<CertifiedKey>, Vec<String>)>, default: usize) -> Self {
        let mut names = HashMap::new();
        let mut keys = Vec::new();
        for (i, (key, server_names)) in certs.into_iter().enumerate() {
            for n in server_names {
                names.entry(n.to_ascii_lowercase()).or_insert(i);
            }
            keys.push(key);
        }
        let default = default.min(keys.len().saturating_sub(1));
        SniResolver {
            certs: keys,
            names,
            default,
        }
    }

    /// The index of the certificate for `sni`.
    pub(crate) fn pick(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni else {
            return self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(i) = self.names.get(&name) {
            return *i;
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(i) = self.names.get(&format!("*.{parent}"))
        {
            return *i;
        }
        self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.get(self.pick(hello.server_name())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_then_wildcards_then_the_default() {
        let provider = rustls::crypto::ring::default_provider();
        let key = |name: &str| {
            let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            let der =
                rustls_pki_types::PrivateKeyDer::try_from(c.signing_key.serialize_der()).unwrap();
            Arc::new(CertifiedKey::new(
                vec![c.cert.der().clone()],
                provider.key_provider.load_private_key(der).unwrap(),
            ))
        };
        let r = SniResolver::new(
            vec![
                (key("a.test"), vec!["a.test".into()]),
                (key("b.test"), vec!["b.test".into(), "*.b.test".into()]),
            ],
            1,
        );
        let table = [
            (None, 1),
            (Some("a.test"), 0),
            (Some("A.Test."), 0),
            (Some("b.test"), 1),
            (Some("x.b.test"), 1),
            (Some("x.y.b.test"), 1),
            (Some("x.a.test"), 1),
            (Some("other"), 1),
        ];
        for (sni, want) in table {
            assert_eq!(r.pick(sni), want, "{sni:?}");
        }
    }
}
