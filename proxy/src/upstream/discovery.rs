//! A cluster's checker: one task per `Cluster` value (so per leg and per config generation)
//! that re-resolves endpoint names every `resolve` and health-checks every endpoint every
//! `health.interval`. The cluster owns the task through `Handle`: dropping the cluster (a
//! reload replaced it and the last request using it is done) aborts it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use prometheus_client::metrics::counter::Counter;
use tokio::task::JoinSet;
use tokio::time::{Interval, MissedTickBehavior};

use super::endpoints::{ClientSettings, EndpointSet, EndpointState, Member};
use super::resolve::Resolve;
use crate::config::{ClusterConfig, Endpoint, HealthConfig};
use crate::metrics::{ClusterMetrics, GaugeGuard, HealthResult};

/// A health check's answer is read up to this much (so its connection can be reused).
const PROBE_READ_CAP: usize = 64 * 1024;
/// The longest a resolution may take (at most the `resolve` period).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's hold on its checker: dropping it stops the task.
pub(crate) struct Handle(tokio::task::AbortHandle);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Everything the checker needs.
pub(super) struct Discovery<B> {
    pub(super) set: Arc<EndpointSet<B>>,
    pub(super) settings: ClientSettings,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) health: Option<HealthConfig>,
    pub(super) resolve: Option<Duration>,
    pub(super) resolver: Arc<dyn Resolve>,
    pub(super) metrics: ClusterMetrics,
}

impl<B> Discovery<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    pub(super) fn new(
        c: &ClusterConfig,
        settings: ClientSettings,
        set: Arc<EndpointSet<B>>,
        resolver: Arc<dyn Resolve>,
        metrics: ClusterMetrics,
    ) -> Self {
        Discovery {
            set,
            settings,
            endpoints: c.endpoints.clone(),
            health: c.health.clone(),
            resolve: c.resolve,
            resolver,
            metrics,
        }
    }

    /// Starts the checker when there is something to do and a runtime to do it on.
    pub(super) fn start(self) -> Option<Handle> {
        if self.health.is_none() && self.resolve.is_none() {
            return None;
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        // Counted from now until the task's future is dropped (ended or aborted).
        let alive = GaugeGuard::new(&self.metrics.health.tasks);
        let task = rt.spawn(async move {
            let _alive = alive;
            self.run().await;
        });
        Some(Handle(task.abort_handle()))
    }

    async fn run(self) {
        let every = |period: Duration| {
            let mut i = tokio::time::interval(period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        };
        let mut resolve = self.resolve.map(every);
        let mut health = self.health.as_ref().map(|h| every(h.interval));
        let checks = self
            .metrics
            .health
            .checks(&self.metrics.cluster, self.metrics.leg);
        loop {
            tokio::select! {
                biased;
                () = tick(&mut resolve) => self.refresh().await,
                () = tick(&mut health) => self.check_all(&checks).await,
            }
        }
    }

    /// Resolves every endpoint named by a host name; a name's members become its
    /// addresses. A failed or empty answer keeps what there was.
    async fn refresh(&self) {
        let current = self.set.members.load_full();
        let mut next = Vec::with_capacity(current.len());
        let mut changed = false;
        let within = self.resolve.unwrap_or(LOOKUP_TIMEOUT).min(LOOKUP_TIMEOUT);
        for (i, ep) in self.endpoints.iter().enumerate() {
            let had: Vec<&Arc<Member<B>>> = current.iter().filter(|m| m.origin == i).collect();
            let host = ep.authority.host().trim_matches(['[', ']']);
            if host.parse::<IpAddr>().is_ok() {
                next.extend(had.into_iter().cloned());
                continue;
            }
            let port =
                ep.authority
                    .port_u16()
                    .unwrap_or(if ep.scheme == http::uri::Scheme::HTTPS {
                        443
                    } else {
                        80
                    });
            let mut addrs = match tokio::time::timeout(within, self.resolver.lookup(host, port))
                .await
            {
                Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
                answer => {
                    let error = match answer {
                        Ok(Err(e)) => e.to_string(),
                        Ok(Ok(_)) => "no address".to_string(),
                        Err(_) => "timed out".to_string(),
                    };
                    tracing::warn!(cluster = %self.metrics.cluster, endpoint = %ep, %error, "resolution failed; the endpoint's addresses stay as they were");
                    next.extend(had.into_iter().cloned());
                    continue;
                }
            };
            addrs.sort();
            addrs.dedup();
            for a in &addrs {
                match had.iter().find(|m| m.addr == Some(*a)) {
                    Some(m) => next.push((*m).clone()),
                    None => {
                        tracing::info!(cluster = %self.metrics.cluster, leg = ?self.metrics.leg, endpoint = %ep, address = %a, "endpoint address added");
                        let gauge = self.metrics.health.endpoint(
                            &self.metrics.cluster,
                            self.metrics.leg,
                            EndpointState::metric_name(ep, Some(*a)),
                        );
                        let member = self.settings.member(ep.clone(), Some(*a), i, Some(gauge));
                        next.push(Arc::new(member));
                        changed = true;
                    }
                }
            }
            for gone in had
                .iter()
                .filter(|m| m.addr.is_none_or(|a| !addrs.contains(&a)))
            {
                tracing::info!(cluster = %self.metrics.cluster, leg = ?self.metrics.leg, endpoint = %gone.label, "endpoint drained: no longer resolved");
                changed = true;
            }
        }
        if changed {
            self.set.members.store(Arc::new(next));
            self.update_any_healthy();
        }
    }

    /// Checks every endpoint at once, each within the check's timeout.
    async fn check_all(&self, counters: &[Counter; 4]) {
        let Some(h) = &self.health else { return };
        let mut probes = JoinSet::new();
        for m in self.set.members.load().iter() {
            let (m, h) = (m.clone(), h.clone());
            probes.spawn(async move {
                let result = probe(&m, &h).await;
                (m, result)
            });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((m, result)) = done else { continue };
            counters[result as usize].inc();
            if let Some(now) = m.checked(result == HealthResult::ok, h.healthy, h.unhealthy) {
                // The cluster's state first (a shadow's circuit), then the gauge.
                self.update_any_healthy();
                m.show();
                if now {
                    tracing::info!(cluster = %self.metrics.cluster, leg = ?self.metrics.leg, endpoint = %m.label, "endpoint healthy again");
                } else {
                    tracing::warn!(cluster = %self.metrics.cluster, leg = ?self.metrics.leg, endpoint = %m.label, last = ?result, "endpoint unhealthy: no new requests while a healthy one remains");
                }
            }
        }
        self.update_any_healthy();
    }

    fn update_any_healthy(&self) {
        let any = self.set.members.load().iter().any(|m| m.healthy());
        if self.set.any_healthy.swap(any, Ordering::Relaxed) != any {
            if any {
                tracing::info!(cluster = %self.metrics.cluster, leg = ?self.metrics.leg, "a healthy endpoint again");
            } else {
                tracing::warn!(cluster = %self.metrics.cluster, leg = ?self.metrics.leg, "no healthy endpoint: a primary sends to all of them (panic mode), a shadow's circuit opens");
            }
        }
    }
}

async fn tick(i: &mut Option<Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One health check: `GET path` with the endpoint's `host:port` as Host.
async fn probe<B>(m: &Member<B>, h: &HealthConfig) -> HealthResult {
    let uri = Uri::builder()
        .scheme(m.endpoint.scheme.clone())
        .authority(m.target.clone())
        .path_and_query(h.path.clone())
        .build();
    let Ok(uri) = uri else {
        return HealthResult::error;
    };
    let req = Request::get(uri)
        .header(header::HOST, m.endpoint.authority.as_str())
        .header(header::USER_AGENT, "teeproxy-health")
        .body(Empty::<Bytes>::new());
    let Ok(req) = req else {
        return HealthResult::error;
    };
    let exchange = async {
        let resp = m.probe.request(req).await?;
        let ok = resp.status().is_success();
        // Read (a bounded part of) the answer so the connection can serve the next check.
        let _ = Limited::new(resp.into_body(), PROBE_READ_CAP)
            .collect()
            .await;
        Ok::<bool, hyper_util::client::legacy::Error>(ok)
    };
    match tokio::time::timeout(h.timeout, exchange).await {
        Ok(Ok(true)) => HealthResult::ok,
        Ok(Ok(false)) => HealthResult::status,
        Ok(Err(_)) => HealthResult::error,
        Err(_) => HealthResult::timeout,
    }
}
