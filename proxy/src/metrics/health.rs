//! Endpoint health metrics: `teeproxy_upstream_endpoint_healthy{cluster,leg,endpoint}` and
//! `teeproxy_upstream_health_checks_total{cluster,leg,result}`. An endpoint's gauge exists
//! while some cluster (of any config generation) has that endpoint, and is removed when
//! the last one lets it go (an address DNS no longer returns, a reload without it), so the
//! label set stays bounded by the config and the DNS answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::Leg;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    pub(crate) cluster: String,
    pub(crate) leg: Leg,
    /// `host:port` as connected to (the resolved address under `resolve`).
    pub(crate) endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HealthCheckLabels {
    pub(crate) cluster: String,
    pub(crate) leg: Leg,
    pub(crate) result: HealthResult,
}

/// How one health check ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum HealthResult {
    /// A 2xx answer.
    ok,
    /// Any other status.
    status,
    /// No answer within the check's timeout.
    timeout,
    /// Connection refused, reset, TLS or protocol error.
    error,
}

impl HealthResult {
    pub(crate) const ALL: [HealthResult; 4] = [
        HealthResult::ok,
        HealthResult::status,
        HealthResult::timeout,
        HealthResult::error,
    ];
}

/// The health families, shared by every cluster of every config generation.
#[derive(Default)]
pub(crate) struct HealthFamilies {
    healthy: Family<EndpointLabels, Gauge>,
    checks: Family<HealthCheckLabels, Counter>,
    /// Holders of each endpoint gauge.
    holders: Mutex<HashMap<EndpointLabels, usize>>,
    /// Clusters' checker tasks alive (not exported; tests read it).
    pub(crate) tasks: Gauge,
}

impl HealthFamilies {
    pub(crate) fn register(self: &Arc<Self>, r: &mut Registry) {
        r.register(
            "upstream_endpoint_healthy",
            "1 while an endpoint is healthy (always, without active health checks), 0 while its health checks fail",
            self.healthy.clone(),
        );
        r.register(
            "upstream_health_checks",
            "Active health checks by cluster, leg and result (ok, status, timeout, error)",
            self.checks.clone(),
        );
    }

    /// The gauge of one endpoint, held until the returned handle drops.
    pub(crate) fn endpoint(
        self: &Arc<Self>,
        cluster: &str,
        leg: Leg,
        endpoint: String,
    ) -> EndpointGauge {
        let labels = EndpointLabels {
            cluster: cluster.to_string(),
            leg,
            endpoint,
        };
        *self
            .holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(labels.clone())
            .or_default() += 1;
        EndpointGauge {
            gauge: self.healthy.get_or_create_owned(&labels),
            labels,
            families: self.clone(),
        }
    }

    /// The check counters of one cluster's leg, indexed like `HealthResult::ALL`.
    pub(crate) fn checks(&self, cluster: &str, leg: Leg) -> [Counter; 4] {
        HealthResult::ALL.map(|result| {
            self.checks.get_or_create_owned(&HealthCheckLabels {
                cluster: cluster.to_string(),
                leg,
                result,
            })
        })
    }
}

/// One endpoint's health gauge; the sample goes away when its last holder drops.
pub(crate) struct EndpointGauge {
    gauge: Gauge,
    labels: EndpointLabels,
    families: Arc<HealthFamilies>,
}

impl EndpointGauge {
    pub(crate) fn set(&self, healthy: bool) {
        self.gauge.set(i64::from(healthy));
    }
}

impl Drop for EndpointGauge {
    fn drop(&mut self) {
        let mut holders = self
            .families
            .holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = holders.get_mut(&self.labels) {
            *n -= 1;
            if *n == 0 {
                holders.remove(&self.labels);
                self.families.healthy.remove(&self.labels);
            }
        }
    }
}
