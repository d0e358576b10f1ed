//! Route matching: ordered routes, first match wins (path prefix, optional exact host,
//! optional methods).

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::config::Config;
use crate::metrics::{Metrics, RouteMetrics};
use crate::shadow::compare::MismatchRing;
use crate::shadow::{ShadowCluster, ShadowPolicy, route_policies};
use crate::stats::PathRegistry;
use crate::upstream::Cluster;

/// The body type primary clusters send: the client's body, teed for the shadows.
/// The body sent to the primary: the client's, teed; or nothing, for a request without
/// a body resent to another endpoint after a refused connection.
pub type PrimaryBody = http_body_util::Either<
    crate::shadow::TeeBody<crate::idle::IdleTimeout<hyper::body::Incoming>>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// A route, ready to serve.
pub struct Route {
    pub name: String,
    path_prefix: String,
    /// Lower-case host without port.
    host: Option<String>,
    methods: Option<Vec<Method>>,
    pub primary: Arc<Cluster<PrimaryBody>>,
    /// Shadow policies, in config order.
    pub shadows: Vec<Arc<ShadowPolicy>>,
    /// Path templates and their statistics (kept across a reload that leaves the route's
    /// name, templates, primary and shadows as they were).
    pub paths: Arc<PathRegistry>,
    paths_key: String,
    pub metrics: RouteMetrics,
    /// WebSocket upgrades are relayed (else refused with 501).
    pub websocket: bool,
}

/// The ordered route table.
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Builds the table; `clusters` must hold every cluster the config names (validated).
    pub fn new(
        config: &Config,
        clusters: &HashMap<String, Arc<Cluster<PrimaryBody>>>,
        shadows: &HashMap<String, Arc<ShadowCluster>>,
        metrics: &Arc<Metrics>,
        mismatches: &Arc<MismatchRing>,
        previous: Option<&Router>,
    ) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|r| (r, paths_key(r)))
            .map(|(r, key)| Route {
                name: r.name.value.clone(),
                path_prefix: r.match_.path_prefix.value.clone(),
                host: r
                    .match_
                    .host
                    .as_ref()
                    .map(|h| strip_port(&h.value).to_ascii_lowercase()),
                methods: r.match_.methods.as_ref().map(|ms| {
                    ms.iter()
                        .map(|m| Method::from_bytes(m.value.as_bytes()).expect("validated"))
                        .collect()
                }),
                primary: clusters[&r.primary.value].clone(),
                shadows: route_policies(config, r, shadows, metrics, mismatches),
                paths: previous
                    .and_then(|p| {
                        p.routes
                            .iter()
                            .find(|old| old.name == r.name.value && old.paths_key == key)
                    })
                    .map(|old| old.paths.clone())
                    .unwrap_or_else(|| {
                        Arc::new(PathRegistry::new(
                            &r.name.value,
                            &r.paths.iter().map(|p| p.value.clone()).collect::<Vec<_>>(),
                            r.max_paths.value,
                            &r.primary.value,
                            r.shadows.iter().map(|s| s.cluster.value.clone()).collect(),
                            metrics.clone(),
                        ))
                    }),
                paths_key: key,
                metrics: metrics.route(&r.name.value),
                websocket: r.websocket,
            })
            .collect();
        Router { routes }
    }

    /// The first route matching the request, if any. `host` is the host the client asked
    /// for (port allowed).
    pub fn route(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(strip_port);
        self.routes.iter().find(|r| {
            path.starts_with(r.path_prefix.as_str())
                && r.host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
                && r.methods.as_ref().is_none_or(|ms| ms.contains(method))
        })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// What a route's path statistics depend on.
fn paths_key(r: &crate::config::RouteConfig) -> String {
    let templates: Vec<&str> = r.paths.iter().map(|p| p.value.as_str()).collect();
    let shadows: Vec<&str> = r.shadows.iter().map(|s| s.cluster.value.as_str()).collect();
    format!(
        "{templates:?} {} {} {shadows:?}",
        r.max_paths.value, r.primary.value
    )
}

/// `host:port` -> `host`; `[::1]:80` -> `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn router(yaml_routes: &str) -> Router {
        let yaml = format!(
            "listeners: [{{ name: l, address: \"127.0.0.1:1\" }}]\nclusters:\n  a: {{ endpoints: [\"http://127.0.0.1:2\"] }}\n  b: {{ endpoints: [\"http://127.0.0.1:3\"] }}\nroutes:\n{yaml_routes}"
        );
        let config = Config::from_yaml(&yaml).unwrap();
        let metrics = Metrics::new(&mut Registry::default());
        let clusters = crate::upstream::build_clusters(&config, &metrics);
        let shadows = crate::shadow::build_shadow_clusters(&config, &metrics);
        Router::new(
            &config,
            &clusters,
            &shadows,
            &metrics,
            &Arc::new(MismatchRing::new(10)),
            None,
        )
    }

    #[test]
    fn first_match_wins() {
        let r = router(
            "  - { name: api-host, match: { path_prefix: /api/, host: api.example.com }, primary: a }\n  - { name: api-post, match: { path_prefix: /api/, methods: [POST, PUT] }, primary: b }\n  - { name: api, match: { path_prefix: /api/ }, primary: a }\n  - { name: rest, primary: b }\n",
        );
        let table = [
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
        for (m, host, path, want) in table {
            assert_eq!(
                r.route(&m, host, path).map(|r| r.name.as_str()),
                want,
                "{m} {host:?} {path}"
            );
        }
        assert_eq!(r.routes()[3].primary.name, "b");
    }

    #[test]
    fn no_match() {
        let r = router(
            "  - { name: only, match: { path_prefix: /only, host: h.example, methods: [GET] }, primary: a }\n",
        );
        assert!(
            r.route(&Method::GET, Some("other.example"), "/only")
                .is_none()
        );
        assert!(r.route(&Method::POST, Some("h.example"), "/only").is_none());
        assert!(r.route(&Method::GET, Some("h.example"), "/else").is_none());
        assert!(r.route(&Method::GET, None, "/only").is_none());
        assert!(
            r.route(&Method::GET, Some("h.example"), "/only/x")
                .is_some()
        );
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
