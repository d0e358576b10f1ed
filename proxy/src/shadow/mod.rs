//! The shadow leg: per-route policies decide which requests are copied, the tee keeps the
//! body's chunks, the mirror offers finished jobs to each shadow cluster's bounded queue,
//! and a dispatcher per shadow cluster sends them with its own client. Nothing on the
//! primary path waits for any of it; every copy not sent is counted with its reason.

pub mod compare;
pub mod dispatch;
pub mod mirror;
pub mod sample;
pub mod tee;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, request::Parts};

use crate::config::{Config, SampleKey, ShadowConfig, ShadowHost};
use crate::metrics::{DropReason, Metrics, ShadowPolicyMetrics};
use crate::stats::PathEntry;
use crate::upstream::EndpointState;
use compare::{Comparator, MismatchRing};
pub use dispatch::ShadowCluster;
pub use mirror::{Captured, Mirror, MirrorPlan, PrimaryOutcome, ShadowJob};
pub use tee::TeeBody;

/// The Host a shadow request carries.
#[derive(Debug, Clone)]
pub enum HostRule {
    Keep,
    Rewrite,
    Literal(HeaderValue),
    /// Appended to the host name, before any port (`api.example:80` -> `api.example-shadow:80`).
    Suffix(String),
}

impl HostRule {
    fn from_config(h: &ShadowHost) -> Self {
        match h {
            ShadowHost::Word(w) if w == "keep" => HostRule::Keep,
            ShadowHost::Word(w) if w == "rewrite" => HostRule::Rewrite,
            ShadowHost::Word(w) => HostRule::Literal(HeaderValue::from_str(w).expect("validated")),
            ShadowHost::Suffix { suffix } => HostRule::Suffix(suffix.clone()),
        }
    }

    /// The Host for a request whose client asked for `host`, sent to `ep`.
    pub fn apply(&self, host: Option<&HeaderValue>, ep: &EndpointState) -> Option<HeaderValue> {
        match self {
            HostRule::Keep => host.cloned(),
            HostRule::Rewrite => HeaderValue::from_str(ep.endpoint.authority.as_str()).ok(),
            HostRule::Literal(v) => Some(v.clone()),
            HostRule::Suffix(suffix) => {
                let h = host?.to_str().ok()?;
                let name = crate::route::strip_port(h);
                let port = &h[name.len()..];
                HeaderValue::from_str(&format!("{name}{suffix}{port}")).ok()
            }
        }
    }
}

/// One shadow policy of one route.
pub struct ShadowPolicy {
    pub route: String,
    /// Position among the route's policies (and in each path entry's shadow stats).
    pub index: usize,
    pub compare: Comparator,
    pub mismatches: Arc<MismatchRing>,
    pub cluster: Arc<ShadowCluster>,
    threshold: u64,
    sample_key: Option<SampleKey>,
    /// `None`: any method.
    methods: Option<Vec<Method>>,
    pub max_body: u64,
    pub timeout: Duration,
    pub host: HostRule,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    /// `x-teeproxy-shadow: <cluster>` (or the configured name); `None` when disabled.
    tag: Option<(HeaderName, HeaderValue)>,
    pub metrics: ShadowPolicyMetrics,
}

impl ShadowPolicy {
    pub fn new(
        route: &str,
        index: usize,
        c: &ShadowConfig,
        cluster: Arc<ShadowCluster>,
        tag_name: &str,
        metrics: &Metrics,
        mismatches: Arc<MismatchRing>,
    ) -> Self {
        let tag = (!tag_name.is_empty()).then(|| {
            (
                HeaderName::from_bytes(tag_name.as_bytes()).expect("validated"),
                HeaderValue::from_str(&cluster.name).expect("cluster names are header-safe"),
            )
        });
        ShadowPolicy {
            route: route.to_string(),
            index,
            compare: Comparator::new(&c.compare),
            mismatches,
            threshold: sample::threshold(c.percent.value),
            sample_key: c.sample_key.clone(),
            methods: c.methods.methods(),
            max_body: c.max_body.value.bytes(),
            timeout: c.timeout.value.get(),
            host: HostRule::from_config(&c.host),
            set: c
                .headers
                .set
                .iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).expect("validated"),
                        HeaderValue::from_str(v).expect("validated"),
                    )
                })
                .collect(),
            remove: c
                .headers
                .remove
                .iter()
                .map(|k| HeaderName::from_bytes(k.as_bytes()).expect("validated"))
                .collect(),
            tag,
            metrics: metrics.shadow_policy(route, &cluster.name),
            cluster,
        }
    }

    /// Whether this request is copied to this shadow; counts `offered` and every refusal.
    /// `body_len` is the body's exact size when the client declared it.
    pub fn admit(
        &self,
        parts: &Parts,
        upgrade: bool,
        body_len: Option<u64>,
        path: &PathEntry,
    ) -> bool {
        self.metrics.offered.inc();
        let refused = if upgrade {
            Some(DropReason::upgrade)
        } else if self
            .methods
            .as_ref()
            .is_some_and(|ms| !ms.contains(&parts.method))
        {
            Some(DropReason::method_filtered)
        } else if !self.sampled_in(&parts.headers) {
            Some(DropReason::sampled_out)
        } else if body_len.is_some_and(|n| n > self.max_body) {
            Some(DropReason::body_too_large)
        } else {
            None
        };
        if let Some(reason) = refused {
            self.dropped(reason, path);
        }
        refused.is_none()
    }

    /// Counts a copy not sent, for the policy and for the path.
    pub fn dropped(&self, reason: DropReason, path: &PathEntry) {
        self.metrics.dropped(reason);
        if let Some(s) = path.shadows.get(self.index) {
            s.dropped(reason);
        }
    }

    fn sampled_in(&self, headers: &HeaderMap) -> bool {
        match self.threshold {
            0 => false,
            t if t >= sample::SCALE => true,
            t => {
                let key = self
                    .sample_key
                    .as_ref()
                    .and_then(|k| sample::key_value(k, headers));
                sample::draw(self.cluster.name.as_bytes(), key) < t
            }
        }
    }

    /// The shadow's headers from the primary's (already without hop-by-hop headers):
    /// `Expect` removed, configured removals and settings, the shadow tag.
    pub fn shadow_headers(&self, base: &HeaderMap) -> HeaderMap {
        let mut h = base.clone();
        h.remove(header::EXPECT);
        h.remove(header::HOST);
        for name in &self.remove {
            h.remove(name);
        }
        for (name, value) in &self.set {
            h.insert(name.clone(), value.clone());
        }
        if let Some((name, value)) = &self.tag {
            h.insert(name.clone(), value.clone());
        }
        h
    }
}

/// Every shadow cluster the config uses, each with its own client and queue.
pub fn build_shadow_clusters(
    config: &Config,
    metrics: &Metrics,
) -> HashMap<String, Arc<ShadowCluster>> {
    let mut out = HashMap::new();
    for route in &config.routes {
        for sh in &route.shadows {
            let name = &sh.cluster.value;
            if !out.contains_key(name) {
                let c = &config.clusters[name];
                out.insert(name.clone(), Arc::new(ShadowCluster::new(name, c, metrics)));
            }
        }
    }
    out
}

/// The policies of one route.
pub fn route_policies(
    config: &Config,
    route: &crate::config::RouteConfig,
    clusters: &HashMap<String, Arc<ShadowCluster>>,
    metrics: &Metrics,
    mismatches: &Arc<MismatchRing>,
) -> Vec<Arc<ShadowPolicy>> {
    route
        .shadows
        .iter()
        .enumerate()
        .map(|(index, sh)| {
            Arc::new(ShadowPolicy::new(
                &route.name.value,
                index,
                sh,
                clusters[&sh.cluster.value].clone(),
                &config.shadow_header.value,
                metrics,
                mismatches.clone(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rules() {
        let ep = EndpointState::for_tests("http://10.0.0.1:8080");
        let host = HeaderValue::from_static("api.example.com:8443");
        let apply = |r: HostRule| {
            r.apply(Some(&host), &ep)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            apply(HostRule::Keep).as_deref(),
            Some("api.example.com:8443")
        );
        assert_eq!(apply(HostRule::Rewrite).as_deref(), Some("10.0.0.1:8080"));
        assert_eq!(
            apply(HostRule::Literal(HeaderValue::from_static(
                "shadow.example"
            )))
            .as_deref(),
            Some("shadow.example")
        );
        assert_eq!(
            apply(HostRule::Suffix("-shadow".into())).as_deref(),
            Some("api.example.com-shadow:8443")
        );
        assert_eq!(HostRule::Suffix("-s".into()).apply(None, &ep), None);
    }
}
