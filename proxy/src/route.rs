//! Route matching, and nothing else: ordered rules (path prefix, optional exact host,
//! optional methods, gRPC only, a client certificate's subject), first match wins, answered with the route's position. What a route
//! does (its primary, shadows, statistics) is built beside the table in `proxy::snapshot`.

use http::Method;

use crate::config::RouteConfig;
use crate::http::host::strip_port;

/// One route's match rule.
#[derive(Debug, Clone)]
struct Rule {
    path_prefix: String,
    /// Lower-case host without port.
    host: Option<String>,
    methods: Option<Vec<Method>>,
    /// gRPC calls only.
    grpc: bool,
    /// The verified client certificate's subject, exact.
    client_subject: Option<String>,
}

/// The ordered route table.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    rules: Vec<Rule>,
}

impl RouteTable {
    pub(crate) fn new(routes: &[RouteConfig]) -> Self {
        let rules = routes
            .iter()
            .map(|r| Rule {
                path_prefix: r.match_.path_prefix.clone(),
                host: r
                    .match_
                    .host
                    .as_deref()
                    .map(|h| strip_port(h).to_ascii_lowercase()),
                methods: r.match_.methods.clone(),
                grpc: r.match_.grpc,
                client_subject: r.match_.client_subject.clone(),
            })
            .collect();
        RouteTable { rules }
    }

    /// The position of the first route matching the request, if any. `host` is the host
    /// the client asked for (port allowed); `grpc`: the request is a gRPC call;
    /// `client_subject`: the connection's verified client certificate's subject.
    pub(crate) fn find(
        &self,
        method: &Method,
        host: Option<&str>,
        raw_path: &str,
        grpc: bool,
        client_subject: Option<&str>,
    ) -> Option<usize> {
        let host = host.map(strip_port);
        self.rules.iter().position(|r| {
            raw_path.starts_with(r.path_prefix.as_str())
                && r.host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
                && r.methods.as_ref().is_none_or(|ms| ms.contains(method))
                && (grpc || !r.grpc)
                && r.client_subject
                    .as_deref()
                    .is_none_or(|want| client_subject == Some(want))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(yaml_routes: &str) -> (RouteTable, Vec<String>) {
        let yaml = format!(
            "listeners: [{{ name: l, address: \"127.0.0.1:1\" }}]\nclusters:\n  a: {{ endpoints: [\"http://127.0.0.1:2\"] }}\n  b: {{ endpoints: [\"http://127.0.0.1:3\"] }}\nroutes:\n{yaml_routes}"
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let names = config.routes.iter().map(|r| r.name.clone()).collect();
        (RouteTable::new(&config.routes), names)
    }

    #[test]
    fn first_match_wins() {
        let (t, names) = table(
            "  - { name: api-host, match: { path_prefix: /api/, host: api.example.com }, primary: a }\n  - { name: api-post, match: { path_prefix: /api/, methods: [POST, PUT] }, primary: b }\n  - { name: api, match: { path_prefix: /api/ }, primary: a }\n  - { name: rest, primary: b }\n",
        );
        let cases = [
            (
                Method::GET,
                Some("api.example.com"),
                "/api/x",
                Some("api-host"),
            ),
            (
                Method::GET,
                Some("API.Example.com:8080"),
                "/api/x",
                Some("api-host"),
            ),
            (Method::POST, Some("other"), "/api/x", Some("api-post")),
            (Method::GET, Some("other"), "/api/x", Some("api")),
            (Method::GET, None, "/api/x", Some("api")),
            (Method::GET, Some("api.example.com"), "/apix", Some("rest")),
            (Method::DELETE, Some("x"), "/", Some("rest")),
        ];
        for (m, host, path, want) in cases {
            assert_eq!(
                t.find(&m, host, path, false, None)
                    .map(|i| names[i].as_str()),
                want,
                "{m} {host:?} {path}"
            );
        }
    }

    #[test]
    fn no_match() {
        let (t, _) = table(
            "  - { name: only, match: { path_prefix: /only, host: h.example, methods: [GET] }, primary: a }\n",
        );
        assert!(
            t.find(&Method::GET, Some("other.example"), "/only", false, None)
                .is_none()
        );
        assert!(
            t.find(&Method::POST, Some("h.example"), "/only", false, None)
                .is_none()
        );
        assert!(
            t.find(&Method::GET, Some("h.example"), "/else", false, None)
                .is_none()
        );
        assert!(t.find(&Method::GET, None, "/only", false, None).is_none());
        assert!(
            t.find(&Method::GET, Some("h.example"), "/only/x", false, None)
                .is_some()
        );
    }

    #[test]
    fn grpc_routes_take_only_grpc_calls() {
        let (t, names) = table(
            "  - { name: grpc, match: { path_prefix: /, grpc: true }, primary: a }\n  - { name: rest, primary: b }\n",
        );
        let name = |grpc| {
            t.find(&Method::POST, None, "/pkg.Svc/Call", grpc, None)
                .map(|i| names[i].as_str())
        };
        assert_eq!(name(true), Some("grpc"));
        assert_eq!(name(false), Some("rest"));
    }

    #[test]
    fn client_subject_routes_take_only_that_verified_client() {
        let yaml = "listeners: [{ name: l, address: \"127.0.0.1:1\", tls: { cert: a.crt, key: a.key, client_ca: ca.crt, client_auth: optional } }]\nclusters:\n  a: { endpoints: [\"http://127.0.0.1:2\"] }\nroutes:\n  - { name: alice, match: { client_subject: \"CN=alice, O=Example\" }, primary: a }\n  - { name: rest, primary: a }\n";
        let config = Config::from_yaml(yaml).unwrap();
        let t = RouteTable::new(&config.routes);
        let name = |subject| {
            t.find(&Method::GET, None, "/", false, subject)
                .map(|i| config.routes[i].name.as_str())
        };
        assert_eq!(name(Some("CN=alice, O=Example")), Some("alice"));
        assert_eq!(name(Some("CN=alice")), Some("rest"), "exact, not a prefix");
        assert_eq!(name(None), Some("rest"), "no certificate");
    }
}
