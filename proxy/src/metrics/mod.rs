//! Prometheus metrics. One `Registry` is built by the caller and passed in (no global
//! state); label sets are bounded (route and cluster names from the config, fixed kinds).
//! Per-route and per-cluster handles are cached when the config is loaded, so the request
//! path never builds label sets or takes the family lock.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

mod grpc;
mod health;
mod labels;
mod series;
mod text;
mod tls;

pub(crate) use grpc::GrpcStatusCounter;
pub(crate) use health::{EndpointGauge, HealthFamilies, HealthResult};
pub(crate) use labels::*;
use series::LazyCounter;
pub(crate) use series::latency_histogram;
pub(crate) use text::{Format, encode_as, exposition};
pub(crate) use tls::{HandshakeFailure, TlsErrorLabels, TlsFailure, TlsFamilies};

/// All metric families.
pub(crate) struct Metrics {
    path_latency: Family<PathLegLabels, Histogram, fn() -> Histogram>,
    path_responses: Family<PathLegStatusLabels, Counter>,
    path_failures: Family<PathLegLabels, Counter>,
    compare_results: Family<CompareLabels, Counter>,
    compare_skipped: Family<CompareSkipLabels, Counter>,
    shadow_offered: Family<RouteShadowLabels, Counter>,
    shadow_sent: Family<RouteShadowLabels, Counter>,
    shadow_dropped: Family<ShadowDropLabels, Counter>,
    shadow_outcomes: Family<ShadowOutcomeLabels, Counter>,
    shadow_responses: Family<ShadowStatusLabels, Counter>,
    shadow_latency: Family<ShadowPhaseLabels, Histogram, fn() -> Histogram>,
    shadow_queue_depth: Family<ShadowLabels, Gauge>,
    shadow_in_flight: Family<ShadowLabels, Gauge>,
    shadow_held_bytes: Family<ShadowLabels, Gauge>,
    requests: Family<RouteStatusLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    upstream_errors: Family<ClusterErrorLabels, Counter>,
    upstream_resent: Family<ClusterLabels, Counter>,
    upstream_requests: Family<ClusterLabels, Counter>,
    ejections: Family<ClusterLabels, Counter>,
    open_connections: Family<ListenerLabels, Gauge>,
    connections: Family<ListenerLabels, Counter>,
    connections_closed: Family<ListenerCloseLabels, Counter>,
    accept_errors: Family<ListenerLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    shadow_paused: Family<RouteShadowLabels, Gauge>,
    shadow_percent: Family<RouteShadowLabels, Gauge<f64, AtomicU64>>,
    shadow_control_changes: Family<ShadowControlLabels, Counter>,
    admin_denied: Family<AdminDenialLabels, Counter>,
    record_lines: Family<RouteShadowLabels, Counter>,
    record_dropped: Family<RecordDropLabels, Counter>,
    /// gRPC calls by leg and status code.
    grpc_status: grpc::GrpcStatusFamily,
    /// Tasks alive on the runtime, set when `/metrics` is read.
    pub(crate) runtime_tasks: Gauge,
    /// One counter per `RejectReason`, created up front so every reason shows at 0.
    rejected: [Counter; 6],
    /// WebSocket tunnels open.
    pub(crate) tunnels: Gauge,
    pub(crate) in_flight: Gauge,
    /// Endpoint health gauges and health-check counters.
    pub(crate) health: Arc<HealthFamilies>,
    /// TLS: listeners' handshakes, failures and certificate reloads, certificate expiry
    /// (listeners and clusters) and upstream TLS failures.
    pub(crate) tls: Arc<TlsFamilies>,
}

impl Metrics {
    /// Registers every family under the `teeproxy` prefix.
    pub(crate) fn new(registry: &mut Registry) -> Arc<Self> {
        let rejected = Family::<RejectLabels, Counter>::default();
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_errors: Family::default(),
            upstream_resent: Family::default(),
            upstream_requests: Family::default(),
            ejections: Family::default(),
            open_connections: Family::default(),
            connections: Family::default(),
            connections_closed: Family::default(),
            accept_errors: Family::default(),
            config_reloads: Family::default(),
            shadow_paused: Family::default(),
            shadow_percent: Family::default(),
            shadow_control_changes: Family::default(),
            admin_denied: Family::default(),
            record_lines: Family::default(),
            record_dropped: Family::default(),
            runtime_tasks: Gauge::default(),
            rejected: RejectReason::ALL
                .map(|reason| rejected.get_or_create_owned(&RejectLabels { reason })),
            in_flight: Gauge::default(),
            tunnels: Gauge::default(),
            shadow_offered: Family::default(),
            shadow_sent: Family::default(),
            shadow_dropped: Family::default(),
            shadow_outcomes: Family::default(),
            shadow_responses: Family::default(),
            shadow_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            shadow_queue_depth: Family::default(),
            shadow_in_flight: Family::default(),
            shadow_held_bytes: Family::default(),
            path_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            path_responses: Family::default(),
            path_failures: Family::default(),
            compare_results: Family::default(),
            compare_skipped: Family::default(),
            health: Arc::default(),
            tls: Arc::default(),
            grpc_status: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("teeproxy");
        r.register(
            "build",
            "The version and commit teeproxy was built from (always 1)",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("TEEPROXY_COMMIT"),
            }),
        );
        r.register(
            "shadow_offered",
            "Requests a route's shadow policy looked at (offered = sent + dropped)",
            m.shadow_offered.clone(),
        );
        r.register("shadow_sent", "Shadow copies sent", m.shadow_sent.clone());
        r.register(
            "grpc_status",
            "gRPC calls per route, leg and cluster by the grpc-status answered (from the trailers, or the headers of a trailers-only answer; teeproxy's own answers to gRPC calls whose primary failed count on the primary leg)",
            m.grpc_status.clone(),
        );
        r.register(
            "path_latency_seconds",
            "Latency per route and path template for each leg (primary, shadow), from the moment the leg's request is sent to its response head; classic buckets 1 ms to 60 s, and native buckets (schema 5) in the protobuf exposition",
            m.path_latency.clone(),
        );
        r.register(
            "path_responses",
            "Responses per route, path template and leg, by status class (a class's series appears with its first response)",
            m.path_responses.clone(),
        );
        r.register(
            "path_failures",
            "Requests per route and path template that got no response from the primary (connect error, timeout, protocol error); the shadow leg's are compare_results{result=\"shadow_error\"}",
            m.path_failures.clone(),
        );
        r.register(
            "compare_results",
            "Shadow-versus-primary comparisons per route, path template and shadow (a result's series appears with its first comparison)",
            m.compare_results.clone(),
        );
        r.register(
            "compare_skipped",
            "Comparisons skipped per route and shadow, by reason (per path: compare_results{result=\"skipped\"})",
            m.compare_skipped.clone(),
        );
        r.register(
            "shadow_paused",
            "1 while a shadow policy is paused at runtime (admin API), else 0",
            m.shadow_paused.clone(),
        );
        r.register(
            "shadow_percent",
            "The share of a route's eligible requests a shadow policy copies now (the file's percent, or the runtime override)",
            m.shadow_percent.clone(),
        );
        r.register(
            "shadow_control_changes",
            "Runtime changes to shadow policies: pause, resume, percent, reset (through the admin API), file (dropped by a reload that changed the shadow)",
            m.shadow_control_changes.clone(),
        );
        r.register(
            "admin_denied",
            "Admin requests refused, by reason (missing_token, wrong_token, no_token_configured, token_unreadable, host_not_local)",
            m.admin_denied.clone(),
        );
        r.register(
            "record_lines",
            "Exchanges written to a shadow's record file",
            m.record_lines.clone(),
        );
        r.register(
            "record_dropped",
            "Record lines not written, by reason (record_full, write_error)",
            m.record_dropped.clone(),
        );
        r.register(
            "shadow_dropped",
            "Shadow copies not sent, by reason",
            m.shadow_dropped.clone(),
        );
        r.register(
            "shadow_outcomes",
            "How sent shadow copies ended (ok, connect_error, tls_error, protocol_error, body_error, timeout, aborted)",
            m.shadow_outcomes.clone(),
        );
        r.register(
            "shadow_responses",
            "Shadow responses by status class",
            m.shadow_responses.clone(),
        );
        r.register(
            "shadow_latency_seconds",
            "Shadow latency from sending, to the response head (phase=headers) and to the end of the body (phase=body)",
            m.shadow_latency.clone(),
        );
        r.register(
            "shadow_queue_depth",
            "Shadow copies waiting in a shadow cluster's queue",
            m.shadow_queue_depth.clone(),
        );
        r.register(
            "shadow_in_flight",
            "Shadow requests in flight per shadow cluster",
            m.shadow_in_flight.clone(),
        );
        r.register(
            "shadow_held_bytes",
            "Body bytes held by queued and in-flight shadow copies (bounded by shadow_max_bytes)",
            m.shadow_held_bytes.clone(),
        );
        r.register(
            "requests",
            "Requests answered, by route and status class",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head, by route",
            m.duration.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to a cluster",
            m.upstream_requests.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream failures by cluster and kind (connect, timeout, protocol, tls)",
            m.upstream_errors.clone(),
        );
        r.register(
            "upstream_resent",
            "Requests sent once more on a new connection: a pooled HTTP/1.1 connection the upstream had just closed, before a complete response head (safe requests without a body only)",
            m.upstream_resent.clone(),
        );
        m.tls.register(r);
        r.register(
            "upstream_ejections",
            "Endpoints set aside after refusing a connection",
            m.ejections.clone(),
        );
        r.register(
            "open_connections",
            "Client connections open, by listener",
            m.open_connections.clone(),
        );
        r.register(
            "connections",
            "Client connections accepted, by listener",
            m.connections.clone(),
        );
        r.register(
            "connections_closed",
            "Client connections teeproxy closed itself, by listener and reason (head_timeout, idle_timeout, write_timeout, premature_resets)",
            m.connections_closed.clone(),
        );
        r.register(
            "accept_errors",
            "Errors accepting connections (such as EMFILE), by listener; accepting backs off and retries",
            m.accept_errors.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads (SIGHUP), by result (ok, error); a failed reload keeps the running config",
            m.config_reloads.clone(),
        );
        r.register(
            "tunnels",
            "WebSocket tunnels open between a client and the primary",
            m.tunnels.clone(),
        );
        r.register(
            "runtime_tasks",
            "Tasks alive on the async runtime",
            m.runtime_tasks.clone(),
        );
        for result in ["ok", "error"] {
            m.config_reloads
                .get_or_create_owned(&ReloadLabels { result });
        }
        r.register(
            "rejected_requests",
            "Requests refused before forwarding, by reason",
            rejected,
        );
        m.health.register(r);
        r.register(
            "requests_in_flight",
            "Requests being handled",
            m.in_flight.clone(),
        );
        Arc::new(m)
    }

    /// Counts the gRPC statuses of `leg` on `route` answered by `cluster`.
    pub(crate) fn grpc_status(&self, route: &str, leg: Leg, cluster: &str) -> GrpcStatusCounter {
        GrpcStatusCounter::new(&self.grpc_status, route, leg, cluster)
    }

    pub(crate) fn route(&self, route: &str) -> RouteMetrics {
        let by_class = StatusClass::ALL.map(|status_class| {
            self.requests.get_or_create_owned(&RouteStatusLabels {
                route: route.to_string(),
                status_class,
            })
        });
        RouteMetrics {
            by_class,
            duration: self.duration.get_or_create_owned(&RouteLabels {
                route: route.to_string(),
            }),
        }
    }

    pub(crate) fn cluster(&self, cluster: &str, leg: Leg) -> ClusterMetrics {
        let label = ClusterLabels {
            cluster: cluster.to_string(),
            leg,
        };
        let err = |kind| {
            self.upstream_errors
                .get_or_create_owned(&ClusterErrorLabels {
                    cluster: cluster.to_string(),
                    leg,
                    kind,
                })
        };
        ClusterMetrics {
            requests: self.upstream_requests.get_or_create_owned(&label),
            resent: self.upstream_resent.get_or_create_owned(&label),
            ejections: self.ejections.get_or_create_owned(&label),
            connect_errors: err(UpstreamErrorKind::connect),
            timeout_errors: err(UpstreamErrorKind::timeout),
            protocol_errors: err(UpstreamErrorKind::protocol),
            tls_errors: err(UpstreamErrorKind::tls),
            tls: self.tls.clone(),
            cluster: cluster.to_string(),
            leg,
            health: self.health.clone(),
        }
    }

    pub(crate) fn listener(&self, listener: &str) -> ListenerMetrics {
        let label = ListenerLabels {
            listener: listener.to_string(),
        };
        ListenerMetrics {
            open: self.open_connections.get_or_create_owned(&label),
            accepted: self.connections.get_or_create_owned(&label),
            accept_errors: self.accept_errors.get_or_create_owned(&label),
            closed: CloseReason::ALL.map(|reason| {
                self.connections_closed
                    .get_or_create_owned(&ListenerCloseLabels {
                        listener: listener.to_string(),
                        reason,
                    })
            }),
        }
    }

    /// Counts a config reload by its result.
    pub(crate) fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// Handles for one (route, shadow cluster) policy's runtime control.
    pub(crate) fn shadow_control(&self, route: &str, shadow: &str) -> ShadowControlMetrics {
        let rs = RouteShadowLabels {
            route: route.to_string(),
            shadow: shadow.to_string(),
        };
        ShadowControlMetrics {
            paused: self.shadow_paused.get_or_create_owned(&rs),
            percent: self.shadow_percent.get_or_create_owned(&rs),
            changes: ControlChange::ALL.map(|change| {
                self.shadow_control_changes
                    .get_or_create_owned(&ShadowControlLabels {
                        route: route.to_string(),
                        shadow: shadow.to_string(),
                        change,
                    })
            }),
        }
    }

    /// Removes the state series of a policy the config no longer has (its change counts
    /// stay: counters are history).
    pub(crate) fn forget_shadow_control(&self, route: &str, shadow: &str) {
        let rs = RouteShadowLabels {
            route: route.to_string(),
            shadow: shadow.to_string(),
        };
        self.shadow_paused.remove(&rs);
        self.shadow_percent.remove(&rs);
    }

    /// Counts an admin request refused.
    pub(crate) fn admin_denied(&self, reason: AdminDenial) {
        self.admin_denied
            .get_or_create(&AdminDenialLabels { reason })
            .inc();
    }

    /// Cached handles for one (route, shadow cluster) policy.
    pub(crate) fn shadow_policy(&self, route: &str, shadow: &str) -> ShadowPolicyMetrics {
        let rs = RouteShadowLabels {
            route: route.to_string(),
            shadow: shadow.to_string(),
        };
        ShadowPolicyMetrics {
            grpc: self.grpc_status(route, Leg::shadow, shadow),
            offered: self.shadow_offered.get_or_create_owned(&rs),
            sent: self.shadow_sent.get_or_create_owned(&rs),
            dropped: DropReason::ALL.map(|reason| {
                self.shadow_dropped.get_or_create_owned(&ShadowDropLabels {
                    route: route.to_string(),
                    shadow: shadow.to_string(),
                    reason,
                })
            }),
            outcomes: ShadowOutcome::ALL.map(|outcome| {
                self.shadow_outcomes
                    .get_or_create_owned(&ShadowOutcomeLabels {
                        route: route.to_string(),
                        shadow: shadow.to_string(),
                        outcome,
                    })
            }),
            statuses: StatusClass::ALL.map(|status_class| {
                self.shadow_responses
                    .get_or_create_owned(&ShadowStatusLabels {
                        route: route.to_string(),
                        shadow: shadow.to_string(),
                        status_class,
                    })
            }),
            latency: [Phase::headers, Phase::body].map(|phase| {
                self.shadow_latency.get_or_create_owned(&ShadowPhaseLabels {
                    route: route.to_string(),
                    shadow: shadow.to_string(),
                    phase,
                })
            }),
        }
    }

    /// Handles for one shadow policy's record file.
    pub(crate) fn record(&self, route: &str, shadow: &str) -> RecordMetrics {
        let rs = RouteShadowLabels {
            route: route.to_string(),
            shadow: shadow.to_string(),
        };
        let dropped = |reason| {
            self.record_dropped.get_or_create_owned(&RecordDropLabels {
                route: route.to_string(),
                shadow: shadow.to_string(),
                reason,
            })
        };
        RecordMetrics {
            lines: self.record_lines.get_or_create_owned(&rs),
            full: dropped(RecordDropReason::record_full),
            write_error: dropped(RecordDropReason::write_error),
        }
    }

    /// Handles for one leg of one (route, path template): its latency histogram (to the
    /// response head), its status classes (each series created at its first response) and,
    /// on the primary leg, its failures.
    pub(crate) fn path_leg(&self, route: &str, path: &str, leg: Leg, cluster: &str) -> LegMetrics {
        let labels = PathLegLabels {
            route: route.to_string(),
            path: path.to_string(),
            leg,
            cluster: cluster.to_string(),
        };
        LegMetrics {
            latency: self.path_latency.get_or_create_owned(&labels),
            statuses: StatusClass::ALL.map(|status_class| {
                LazyCounter::new(
                    &self.path_responses,
                    PathLegStatusLabels {
                        route: route.to_string(),
                        path: path.to_string(),
                        leg,
                        cluster: cluster.to_string(),
                        status_class,
                    },
                )
            }),
            failures: (leg == Leg::primary)
                .then(|| self.path_failures.get_or_create_owned(&labels)),
        }
    }

    /// Comparison counters for one (route, path template, shadow): the results per path
    /// (each series created at its first comparison), the skip reasons per route.
    pub(crate) fn compare(&self, route: &str, path: &str, shadow: &str) -> CompareMetrics {
        CompareMetrics {
            results: CompareResult::ALL.map(|result| {
                LazyCounter::new(
                    &self.compare_results,
                    CompareLabels {
                        route: route.to_string(),
                        path: path.to_string(),
                        shadow: shadow.to_string(),
                        result,
                    },
                )
            }),
            skipped: SkipReason::ALL.map(|reason| {
                self.compare_skipped
                    .get_or_create_owned(&CompareSkipLabels {
                        route: route.to_string(),
                        shadow: shadow.to_string(),
                        reason,
                    })
            }),
        }
    }

    /// Cached gauges for one shadow cluster.
    pub(crate) fn shadow_cluster(&self, shadow: &str) -> ShadowClusterMetrics {
        let l = ShadowLabels {
            shadow: shadow.to_string(),
        };
        ShadowClusterMetrics {
            queue_depth: self.shadow_queue_depth.get_or_create_owned(&l),
            in_flight: self.shadow_in_flight.get_or_create_owned(&l),
            held_bytes: self.shadow_held_bytes.get_or_create_owned(&l),
        }
    }

    pub(crate) fn rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].inc();
    }
}

/// Cached handles for one route.
#[derive(Clone)]
pub(crate) struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    pub(crate) fn record(&self, status: http::StatusCode, elapsed: std::time::Duration) {
        self.by_class[StatusClass::of(status) as usize].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// Handles for one policy's runtime control.
#[derive(Clone)]
pub(crate) struct ShadowControlMetrics {
    paused: Gauge,
    percent: Gauge<f64, AtomicU64>,
    changes: [Counter; 5],
}

impl ShadowControlMetrics {
    pub(crate) fn show(&self, paused: bool, percent: f64) {
        self.paused.set(i64::from(paused));
        self.percent.set(percent);
    }

    pub(crate) fn changed(&self, change: ControlChange) {
        self.changes[change as usize].inc();
    }
}

/// One record file's counters.
#[derive(Clone)]
pub(crate) struct RecordMetrics {
    pub(crate) lines: Counter,
    pub(crate) full: Counter,
    pub(crate) write_error: Counter,
}

/// Cached handles for one (route, shadow) policy.
#[derive(Clone)]
pub(crate) struct ShadowPolicyMetrics {
    /// The shadow's answers to gRPC calls, by status.
    pub(crate) grpc: GrpcStatusCounter,
    pub(crate) offered: Counter,
    pub(crate) sent: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    outcomes: [Counter; 7],
    statuses: [Counter; 5],
    latency: [Histogram; 2],
}

impl ShadowPolicyMetrics {
    pub(crate) fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    /// Counts a finished shadow exchange.
    pub(crate) fn outcome(
        &self,
        outcome: ShadowOutcome,
        status: Option<http::StatusCode>,
        headers: Option<std::time::Duration>,
        body: Option<std::time::Duration>,
    ) {
        self.outcomes[outcome as usize].inc();
        if let Some(s) = status {
            self.statuses[StatusClass::of(s) as usize].inc();
        }
        if let Some(d) = headers {
            self.latency[Phase::headers as usize].observe(d.as_secs_f64());
        }
        if let Some(d) = body {
            self.latency[Phase::body as usize].observe(d.as_secs_f64());
        }
    }
    /// Total drops over every reason.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Counter::get).sum()
    }
}

/// Prometheus handles for one leg of one path.
#[derive(Clone)]
pub(crate) struct LegMetrics {
    /// From sending the leg's request to its response head.
    latency: Histogram,
    statuses: [LazyCounter<PathLegStatusLabels>; StatusClass::ALL.len()],
    /// Requests with no response; the primary leg only.
    failures: Option<Counter>,
}

impl LegMetrics {
    pub(crate) fn head(&self, status: http::StatusCode, elapsed: std::time::Duration) {
        self.statuses[StatusClass::of(status) as usize].inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// The end of the response body. Not exported per path (per path only the time to
    /// the head is kept, the figure both legs are compared on); the time to the end is in
    /// the per-route histograms.
    pub(crate) fn end(&self, _elapsed: std::time::Duration) {}

    /// A request that got no response (counted on the primary leg).
    pub(crate) fn failed(&self) {
        if let Some(c) = &self.failures {
            c.inc();
        }
    }
}

/// Prometheus handles for one (route, path, shadow) comparison.
#[derive(Clone)]
pub(crate) struct CompareMetrics {
    results: [LazyCounter<CompareLabels>; CompareResult::ALL.len()],
    /// Per (route, shadow): every path of the route shares these.
    skipped: [Counter; SkipReason::ALL.len()],
}

impl CompareMetrics {
    pub(crate) fn result(&self, r: CompareResult, skipped: Option<SkipReason>) {
        self.results[r as usize].inc();
        if let Some(reason) = skipped {
            self.skipped[reason as usize].inc();
        }
    }
}

/// Cached gauges for one shadow cluster.
#[derive(Clone)]
pub(crate) struct ShadowClusterMetrics {
    pub(crate) queue_depth: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) held_bytes: Gauge,
}

/// Cached handles for one cluster.
#[derive(Clone)]
pub(crate) struct ClusterMetrics {
    pub(crate) requests: Counter,
    /// Requests sent again after a pooled connection closed under them (see `pool`).
    pub(crate) resent: Counter,
    pub(crate) ejections: Counter,
    connect_errors: Counter,
    timeout_errors: Counter,
    protocol_errors: Counter,
    tls_errors: Counter,
    tls: Arc<TlsFamilies>,
    pub(crate) cluster: String,
    pub(crate) leg: Leg,
    pub(crate) health: Arc<HealthFamilies>,
}

impl ClusterMetrics {
    pub(crate) fn error(&self, kind: UpstreamErrorKind) {
        match kind {
            UpstreamErrorKind::connect => self.connect_errors.inc(),
            UpstreamErrorKind::timeout => self.timeout_errors.inc(),
            UpstreamErrorKind::protocol => self.protocol_errors.inc(),
            UpstreamErrorKind::tls => self.tls_errors.inc(),
        };
    }

    /// Counts a TLS failure (besides its `kind="tls"` count): the reason's series is
    /// created at its first failure.
    pub(crate) fn tls_error(&self, reason: TlsFailure) {
        self.tls
            .upstream_errors
            .get_or_create(&TlsErrorLabels {
                cluster: self.cluster.clone(),
                leg: self.leg,
                reason,
            })
            .inc();
    }
}

/// Cached handles for one listener.
#[derive(Clone)]
pub(crate) struct ListenerMetrics {
    pub(crate) open: Gauge,
    pub(crate) accepted: Counter,
    pub(crate) accept_errors: Counter,
    /// Indexed like `CloseReason::ALL`.
    pub(crate) closed: [Counter; 4],
}

impl ListenerMetrics {
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].inc();
    }
}

/// Raises a gauge now and lowers it when dropped, however the work it counts ends (a task
/// aborted included): open connections, copies in flight, open tunnels.
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub(crate) fn new(g: &Gauge) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Renders the registry as OpenMetrics text.
pub(crate) fn encode(registry: &Registry) -> String {
    encode_as(registry, Format::OpenMetrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::prometheus_protobuf::{
        encode as encode_protobuf, prometheus_data_model as pb,
    };
    use std::time::Duration;

    /// One path template with one shadow, after one mirrored, matched 200 on both legs
    /// and one primary failure: the series it costs in the text exposition.
    #[test]
    fn one_path_template_costs_78_series_with_one_shadow() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let primary = m.path_leg("api", "/api/search", Leg::primary, "primary");
        let shadow = m.path_leg("api", "/api/search", Leg::shadow, "candidate");
        let compare = m.compare("api", "/api/search", "candidate");
        let before = encode_as(&registry, Format::Prometheus);
        let per_path = |text: &str| {
            text.lines()
                .filter(|l| !l.starts_with('#') && l.contains("path=\"/api/search\""))
                .count()
        };
        // Before any traffic: the two histograms and the primary's failure counter.
        let histogram = LATENCY_BUCKETS_LEN + 1 + 2; // buckets, +Inf, _sum, _count
        assert_eq!(per_path(&before), 2 * histogram + 1, "{before}");
        for leg in [&primary, &shadow] {
            leg.head(http::StatusCode::OK, Duration::from_millis(25));
            leg.end(Duration::from_millis(26));
        }
        primary.failed();
        shadow.failed(); // not a series: the shadow's failures are compare results
        compare.result(CompareResult::Match, None);
        let after = encode_as(&registry, Format::Prometheus);
        // + a 2xx per leg + the match result.
        assert_eq!(per_path(&after), 2 * histogram + 1 + 2 + 1, "{after}");
        assert!(after.contains("teeproxy_path_failures_total{route=\"api\",path=\"/api/search\",leg=\"primary\",cluster=\"primary\"} 1"), "{after}");
        assert!(after.contains("teeproxy_path_latency_seconds_bucket{le=\"0.03\",route=\"api\",path=\"/api/search\",leg=\"shadow\",cluster=\"candidate\"} 1"), "{after}");
        assert!(after.contains("teeproxy_path_responses_total{route=\"api\",path=\"/api/search\",leg=\"shadow\",cluster=\"candidate\",status_class=\"2xx\"} 1"), "{after}");
        assert!(
            !after.contains("status_class=\"5xx\""),
            "a class no response had has no series"
        );
    }

    #[test]
    fn latency_histograms_carry_native_buckets_in_protobuf_only() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let leg = m.path_leg("api", "/p", Leg::primary, "primary");
        for ms in [24.0, 24.5, 25.0, 30.0] {
            leg.head(http::StatusCode::OK, Duration::from_secs_f64(ms / 1000.0));
        }
        let families = encode_protobuf(&registry).expect("protobuf");
        let family = families
            .iter()
            .find(|f| f.name == "teeproxy_path_latency_seconds")
            .expect("the per-path latency family");
        assert_eq!(family.r#type, pb::MetricType::Histogram as i32);
        let h = family.metric[0].histogram.as_ref().expect("a histogram");
        assert_eq!(h.sample_count, 4);
        assert_eq!(h.schema, i32::from(series::LATENCY_SCHEMA));
        let native: i64 = h
            .positive_delta
            .iter()
            .scan(0, |c, d| {
                *c += d;
                Some(*c)
            })
            .sum();
        assert_eq!(native, 4, "every observation in a native bucket");
        assert_eq!(
            h.bucket.len(),
            LATENCY_BUCKETS_LEN + 1,
            "and the classic buckets"
        );
        // The text formats: classic buckets only.
        let text = encode_as(&registry, Format::Prometheus);
        assert!(
            text.contains(
                "{le=\"0.02\",route=\"api\",path=\"/p\",leg=\"primary\",cluster=\"primary\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "{le=\"0.04\",route=\"api\",path=\"/p\",leg=\"primary\",cluster=\"primary\"} 4"
            ),
            "{text}"
        );
        let build = families.iter().find(|f| f.name == "teeproxy_build_info");
        assert!(build.is_some_and(|f| f.r#type == pb::MetricType::Gauge as i32));
        assert!(
            families
                .iter()
                .any(|f| f.name == "teeproxy_requests_in_flight")
        );
    }

    const LATENCY_BUCKETS_LEN: usize = series::LATENCY_BUCKETS.len();
}
