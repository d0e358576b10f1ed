//! The one place a `Config` becomes runtime state: the route table, each route's primary
//! cluster, shadow policies, path statistics and metrics, and each shadow cluster's queue
//! with its dispatcher (returned, for the caller to start). Handlers read a snapshot whole;
//! reload swaps in a new one. An old snapshot's shadow queues close when the last request
//! holding it is done, and their dispatchers then finish what was queued and end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use super::body::PrimaryBody;
use crate::config::{Config, ForwardedMode, RouteConfig};
use crate::http::checks::RequestLimits;
use crate::metrics::{GrpcStatusCounter, Leg, Metrics, RouteMetrics};
use crate::route::RouteTable;
use crate::shadow::capture::Recorder;
use crate::shadow::compare::Comparator;
use crate::shadow::control::Controls;
use crate::shadow::dispatch::{Dispatcher, shadow_cluster};
use crate::shadow::mismatches::MismatchGroups;
use crate::shadow::policy::{ShadowPolicy, primary_names_of};
use crate::shadow::record::CopySpec;
use crate::shadow::verdict::pair::Pairing;
use crate::stats::PathRegistry;
use crate::upstream::{Cluster, Resolve, SystemResolver};

/// What every snapshot shares with the ones before it (settings a reload cannot change
/// are taken from the first config).
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) mismatches: Arc<MismatchGroups>,
    /// How long a retired config's shadow queues get to empty once nothing uses them.
    pub(crate) shadow_drain: Duration,
    /// Runtime pauses and percent overrides, kept across reloads.
    pub(crate) controls: Arc<Controls>,
    /// Resolves endpoint names for clusters with `resolve`.
    pub(crate) resolver: Arc<dyn Resolve>,
}

impl Shared {
    pub(crate) fn new(metrics: Arc<Metrics>, first: &Config) -> Self {
        Shared {
            metrics,
            mismatches: Arc::new(MismatchGroups::new(first.mismatch_ring)),
            shadow_drain: first.shadow_drain,
            controls: Arc::default(),
            resolver: Arc::new(SystemResolver),
        }
    }

    /// The same, resolving endpoint names with `resolver`.
    pub(crate) fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = resolver;
        self
    }
}

/// A route, ready to serve.
pub(crate) struct RouteState {
    pub(crate) name: String,
    pub(crate) primary: Arc<Cluster<PrimaryBody>>,
    /// Shadow policies, in config order.
    pub(crate) shadows: Vec<Arc<ShadowPolicy>>,
    /// The primary's response headers the shadows' copies read, all policies together
    /// (`None`: all of them, as one records its exchanges).
    pub(crate) shadow_primary_names: Option<Arc<[HeaderName]>>,
    /// Path templates and their statistics (kept across a reload that leaves the route's
    /// name, templates, primary and shadows as they were).
    pub(crate) paths: Arc<PathRegistry>,
    paths_key: String,
    pub(crate) metrics: RouteMetrics,
    /// The primary's answers to gRPC calls, by status.
    pub(crate) grpc: GrpcStatusCounter,
    /// WebSocket upgrades are relayed (else refused with 501).
    pub(crate) websocket: bool,
}

/// Everything the handler reads from one config.
pub(crate) struct Snapshot {
    pub(crate) config: Arc<Config>,
    table: RouteTable,
    pub(crate) routes: Vec<RouteState>,
    pub(crate) limits: RequestLimits,
    pub(crate) body_timeout: Duration,
    pub(crate) forwarded: ForwardedMode,
    pub(crate) access_log: bool,
}

impl Snapshot {
    /// Builds the runtime state of `config`; path statistics of routes that did not change
    /// are carried over from `previous`. Returns the shadow clusters' dispatchers, which
    /// the caller starts.
    pub(crate) fn build(
        config: Arc<Config>,
        shared: &Shared,
        previous: Option<&Snapshot>,
    ) -> (Snapshot, Vec<Dispatcher>) {
        let metrics = &shared.metrics;
        // The clusters' client certificates, as this config loaded them.
        let certificates: Vec<(String, String, i64)> = config
            .clusters
            .iter()
            .filter_map(|(name, c)| {
                let info = c.tls.as_ref()?.loaded.client.as_ref()?.info.clone()?;
                Some((name.clone(), info.subject, info.not_after))
            })
            .collect();
        metrics.tls.set_certificates("cluster", None, &certificates);
        // Only clusters some route serves from get a primary leg (and its checker).
        let primaries: HashMap<&str, Arc<Cluster<PrimaryBody>>> = config
            .clusters
            .iter()
            .filter(|(name, _)| config.routes.iter().any(|r| &r.primary == *name))
            .map(|(name, c)| {
                let m = metrics.cluster(name, Leg::primary);
                let cluster = Cluster::new(name, c, m, &shared.resolver);
                (name.as_str(), Arc::new(cluster))
            })
            .collect();
        let mut queues = HashMap::new();
        let mut dispatchers = Vec::new();
        for sh in config.routes.iter().flat_map(|r| &r.shadows) {
            let name = sh.cluster.as_str();
            if !queues.contains_key(name)
                && let Some(c) = config.clusters.get(name)
            {
                let (queue, dispatcher) =
                    shadow_cluster(name, c, metrics, shared.shadow_drain, &shared.resolver);
                queues.insert(name, queue);
                dispatchers.push(dispatcher);
            }
        }
        let (kept, routes): (Vec<RouteConfig>, Vec<RouteState>) = config
            .routes
            .iter()
            .filter_map(|r| {
                let key = paths_key(r);
                let paths = previous
                    .and_then(|p| {
                        p.routes
                            .iter()
                            .find(|old| old.name == r.name && old.paths_key == key)
                    })
                    .map(|old| old.paths.clone())
                    .unwrap_or_else(|| {
                        Arc::new(PathRegistry::new(
                            &r.name,
                            &r.paths,
                            r.max_paths,
                            &r.primary,
                            r.shadows.iter().map(|s| s.cluster.clone()).collect(),
                            metrics.clone(),
                            r.verdict.window,
                        ))
                    });
                let shadows: Vec<_> = r
                    .shadows
                    .iter()
                    .enumerate()
                    .filter_map(|(index, sh)| {
                        let spec = Arc::new(CopySpec {
                            route: r.name.clone(),
                            shadow: sh.cluster.clone(),
                            index,
                            compare: Comparator::new(&sh.compare).with_edits(
                                ShadowPolicy::edited_headers(
                                    sh,
                                    config.shadow_header.as_ref(),
                                    config.copy_header.as_ref(),
                                ),
                            ),
                            mismatches: shared.mismatches.clone(),
                            timeout: sh.timeout,
                            host: sh.host.clone(),
                            metrics: metrics.shadow_policy(&r.name, &sh.cluster),
                            recorder: sh.record.as_ref().and_then(|c| {
                                Recorder::start(c, metrics.record(&r.name, &sh.cluster))
                            }),
                            pairing: pairing(r, index),
                        });
                        let queue = queues.get(sh.cluster.as_str())?.clone();
                        let control = shared.controls.get(&r.name, sh, || {
                            metrics.shadow_control(&r.name, &sh.cluster)
                        });
                        Some(Arc::new(ShadowPolicy::new(
                            sh,
                            spec,
                            queue,
                            control,
                            config.shadow_header.as_ref(),
                            config.copy_header.as_ref(),
                        )))
                    })
                    .collect();
                let Some(primary) = primaries.get(r.primary.as_str()) else {
                    // A checked config cannot get here; the table below holds only the
                    // routes built, so nothing is served by a neighbour by mistake.
                    tracing::error!(route = %r.name, primary = %r.primary, "route left out: unknown primary cluster");
                    return None;
                };
                let state = RouteState {
                    name: r.name.clone(),
                    primary: primary.clone(),
                    shadow_primary_names: primary_names_of(&shadows),
                    shadows,
                    paths,
                    paths_key: key,
                    metrics: metrics.route(&r.name),
                    grpc: metrics.grpc_status(&r.name, Leg::primary, &r.primary),
                    websocket: r.websocket,
                };
                Some((r.clone(), state))
            })
            .unzip();
        shared.controls.retain(&config, metrics);
        let snapshot = Snapshot {
            table: RouteTable::new(&kept),
            routes,
            limits: RequestLimits::from(&config.limits),
            body_timeout: config.limits.body_timeout,
            forwarded: config.x_forwarded_for,
            access_log: config.access_log.enabled,
            config,
        };
        (snapshot, dispatchers)
    }

    /// The route serving a request, if any.
    pub(crate) fn route(
        &self,
        method: &Method,
        host: Option<&str>,
        raw_path: &str,
        grpc: bool,
        client_subject: Option<&str>,
    ) -> Option<&RouteState> {
        self.table
            .find(method, host, raw_path, grpc, client_subject)
            .and_then(|i| self.routes.get(i))
    }
}

/// How the route's shadow at `index` is paired: a candidate with its baseline's index, a
/// baseline with its candidate's, or alone.
fn pairing(r: &RouteConfig, index: usize) -> Pairing {
    let sh = &r.shadows[index];
    let find = |cluster: &str| r.shadows.iter().position(|s| s.cluster == cluster);
    if let Some(c) = sh.baseline_of.as_deref().and_then(find) {
        return Pairing::Baseline { candidate: c };
    }
    match sh.compare.baseline.as_deref().and_then(|b| {
        r.shadows
            .iter()
            .position(|s| s.cluster == b && s.baseline_of.as_deref() == Some(&sh.cluster))
    }) {
        Some(baseline) => Pairing::Candidate { baseline },
        None => Pairing::Alone,
    }
}

/// What a route's path statistics depend on.
fn paths_key(r: &RouteConfig) -> String {
    // Which shadow is whose baseline decides what each row's pairs compare.
    let shadows: Vec<(&str, Option<&str>, Option<&str>)> = r
        .shadows
        .iter()
        .map(|s| {
            (
                s.cluster.as_str(),
                s.compare.baseline.as_deref(),
                s.baseline_of.as_deref(),
            )
        })
        .collect();
    format!(
        "{:?} {} {} {shadows:?} {:?}",
        r.paths, r.max_paths, r.primary, r.verdict.window
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn snapshot(yaml_routes: &str) -> (Snapshot, Vec<Dispatcher>) {
        let yaml = format!(
            "listeners: [{{ name: l, address: \"127.0.0.1:1\" }}]\nclusters:\n  a: {{ endpoints: [\"http://127.0.0.1:2\"] }}\n  b: {{ endpoints: [\"http://127.0.0.1:3\"] }}\nroutes:\n{yaml_routes}"
        );
        let config = Arc::new(Config::from_yaml(&yaml).unwrap());
        let shared = Shared::new(Metrics::new(&mut Registry::default()), &config);
        Snapshot::build(config, &shared, None)
    }

    #[test]
    fn each_route_gets_its_primary_and_each_shadow_cluster_one_dispatcher() {
        let (s, dispatchers) = snapshot(
            "  - { name: one, match: { path_prefix: /one }, primary: a, shadows: [{ cluster: b }] }\n  - { name: two, primary: b, shadows: [{ cluster: b }, { cluster: a }] }\n",
        );
        assert_eq!(dispatchers.len(), 2, "b and a, once each");
        let one = s.route(&Method::GET, None, "/one/x", false, None).unwrap();
        assert_eq!((one.name.as_str(), one.primary.name.as_str()), ("one", "a"));
        assert_eq!(one.shadows.len(), 1);
        let two = s.route(&Method::GET, None, "/two", false, None).unwrap();
        assert_eq!(two.primary.name, "b");
        let names: Vec<&str> = two.shadows.iter().map(|p| p.spec.shadow.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(two.shadows[1].spec.index, 1);
        // Routes copying to the same cluster share its queue.
        assert!(Arc::ptr_eq(&one.shadows[0].queue, &two.shadows[0].queue));
    }

    #[test]
    fn a_route_knows_the_primary_headers_its_shadows_read_once_each_or_all_when_one_records() {
        let names = |s: &Snapshot| -> Option<Vec<String>> {
            let n = s.routes[0].shadow_primary_names.as_deref()?;
            Some(n.iter().map(|n| n.to_string()).collect())
        };
        let (one, _) = snapshot(
            "  - { name: one, primary: a, shadows: [{ cluster: b, compare: { headers: [etag] } }] }\n",
        );
        assert_eq!(
            names(&one).unwrap(),
            ["etag", "content-encoding", "grpc-status", "grpc-message"]
        );
        let (two, _) = snapshot(
            "  - { name: one, primary: a, shadows: [{ cluster: b, compare: { headers: [etag, content-type] } }, { cluster: a, compare: { headers: [content-type, x-version] } }] }\n",
        );
        assert_eq!(
            names(&two).unwrap(),
            [
                "etag",
                "content-type",
                "content-encoding",
                "grpc-status",
                "grpc-message",
                "x-version"
            ]
        );
        let file = std::env::temp_dir().join(format!(
            "teeproxy-snapshot-names-{}.jsonl",
            std::process::id()
        ));
        let (recording, _) = snapshot(&format!(
            "  - {{ name: one, primary: a, shadows: [{{ cluster: b }}, {{ cluster: a, record: {{ path: \"{}\" }} }}] }}\n",
            file.display()
        ));
        assert_eq!(names(&recording), None, "a recording shadow keeps them all");
        drop(recording);
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn unchanged_routes_keep_their_path_statistics_across_a_rebuild() {
        let yaml = "  - { name: one, primary: a, shadows: [{ cluster: b }] }\n";
        let (first, _) = snapshot(yaml);
        let shared = Shared::new(Metrics::new(&mut Registry::default()), &first.config);
        let (same, _) = Snapshot::build(first.config.clone(), &shared, Some(&first));
        assert!(Arc::ptr_eq(&first.routes[0].paths, &same.routes[0].paths));
        let mut changed = (*first.config).clone();
        changed.routes[0].max_paths = 5;
        let (other, _) = Snapshot::build(Arc::new(changed), &shared, Some(&first));
        assert!(!Arc::ptr_eq(&first.routes[0].paths, &other.routes[0].paths));
    }
}
