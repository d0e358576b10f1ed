//! One shadow policy of one route: which requests are copied (method, sample, declared
//! size), how the copy's headers differ from the primary's, and the sending side of the
//! shadow cluster's queue. Every request a policy looks at counts as `offered`; every one
//! it refuses counts as dropped with its reason.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, request::Parts};

use super::control::ShadowControl;
use super::queue::ShadowQueue;
use super::record::CopySpec;
use super::sample;
use crate::config::{SampleKey, ShadowConfig};
use crate::metrics::DropReason;
use crate::stats::PathEntry;

/// One shadow policy of one route.
pub(crate) struct ShadowPolicy {
    /// What each copy carries to its dispatcher.
    pub(crate) spec: Arc<CopySpec>,
    /// The shadow cluster's queue (shared by every route copying to it).
    pub(crate) queue: Arc<ShadowQueue>,
    /// Runtime pause and percent override (shared with the policy's other generations).
    pub(crate) control: Arc<ShadowControl>,
    threshold: u64,
    sample_key: Option<SampleKey>,
    /// `None`: any method.
    methods: Option<Vec<Method>>,
    pub(crate) max_body: u64,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    /// `x-teeproxy-shadow: <cluster>` (or the configured name); `None` when disabled.
    tag: Option<(HeaderName, HeaderValue)>,
}

impl ShadowPolicy {
    pub(crate) fn new(
        c: &ShadowConfig,
        spec: Arc<CopySpec>,
        queue: Arc<ShadowQueue>,
        control: Arc<ShadowControl>,
        tag_name: Option<&HeaderName>,
    ) -> Self {
        let tag = tag_name
            .and_then(|name| Some((name.clone(), HeaderValue::from_str(&spec.shadow).ok()?)));
        ShadowPolicy {
            threshold: sample::threshold(c.percent),
            sample_key: c.sample_key.clone(),
            methods: c.methods.clone(),
            max_body: c.max_body,
            set: c.headers.set.clone(),
            remove: c.headers.remove.clone(),
            tag,
            spec,
            queue,
            control,
        }
    }

    /// Whether this request is copied to this shadow (`Err`: why not); counts `offered`
    /// and every refusal. `body_len` is the body's exact size when the client declared
    /// it; `mirrorable` is false for upgrade requests.
    pub(crate) fn admit(
        &self,
        parts: &Parts,
        mirrorable: bool,
        body_len: Option<u64>,
        path: &PathEntry,
    ) -> Result<(), DropReason> {
        self.spec.metrics.offered.inc();
        let refused = if self.control.paused() {
            Some(DropReason::paused)
        } else if !mirrorable {
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
        match refused {
            Some(reason) => {
                self.spec.dropped(reason, path);
                Err(reason)
            }
            None => Ok(()),
        }
    }

    fn sampled_in(&self, headers: &HeaderMap) -> bool {
        match self.control.threshold().unwrap_or(self.threshold) {
            0 => false,
            t if t >= sample::SCALE => true,
            t => {
                let key = self
                    .sample_key
                    .as_ref()
                    .and_then(|k| sample::key_value(k, headers));
                sample::draw(self.spec.shadow.as_bytes(), key) < t
            }
        }
    }

    /// The shadow's headers from the primary's (already without hop-by-hop headers):
    /// `Expect` and Host removed, configured removals and settings, the shadow tag.
    pub(crate) fn shadow_headers(&self, base: &HeaderMap) -> HeaderMap {
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
