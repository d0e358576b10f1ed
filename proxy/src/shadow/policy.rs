//! One shadow policy of one route: which requests are copied (method, sample, declared
//! size), how the copy's headers differ from the primary's, and the sending side of the
//! shadow cluster's queue. Every request a policy looks at counts as `offered`; every one
//! it refuses counts as dropped with its reason.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, request::Parts};

use super::compare::{EditedHeaders, names_once};
use super::control::ShadowControl;
use super::queue::ShadowQueue;
use super::rate::RateCap;
use super::record::CopySpec;
use super::sample;
use crate::config::{SampleKey, ShadowConfig};
use crate::http::headers::X_REQUEST_ID;
use crate::http::tracecontext::{self, TRACEPARENT, TRACESTATE, TraceParent};
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
    // Chaos and capacity.
    /// Copies per sampled request (1 to 10).
    amplify: f64,
    /// `x-teeproxy-copy` (or the configured name) when `amplify` > 1.
    copy_tag: Option<HeaderName>,
    /// `max_rps`: each copy takes a token.
    rate: Option<RateCap>,
    /// `shadow-<cluster>`, this shadow's `tracestate` value.
    trace_value: String,
}

/// The primary's response headers that copies for `policies` read: the union of their
/// comparisons' names; `None` (all of them) when one of them records its exchanges.
pub(crate) fn primary_names_of(policies: &[Arc<ShadowPolicy>]) -> Option<Arc<[HeaderName]>> {
    if policies.iter().any(|p| p.spec.recorder.is_some()) {
        return None;
    }
    match policies {
        [only] => Some(only.spec.compare.primary_names().clone()),
        many => Some(names_once(
            many.iter()
                .flat_map(|p| p.spec.compare.primary_names().iter()),
        )),
    }
}

impl ShadowPolicy {
    pub(crate) fn new(
        c: &ShadowConfig,
        spec: Arc<CopySpec>,
        queue: Arc<ShadowQueue>,
        control: Arc<ShadowControl>,
        tag_name: Option<&HeaderName>,
        copy_name: Option<&HeaderName>,
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
            amplify: c.amplify,
            copy_tag: copy_name.filter(|_| c.amplify > 1.0).cloned(),
            rate: c
                .max_rps
                .map(|r| RateCap::new(r, c.max_burst.unwrap_or(r.max(1.0)))),
            trace_value: format!("shadow-{}", spec.shadow),
            spec,
            queue,
            control,
        }
    }

    /// Whether this request is copied to this shadow: `Ok(copies)`, or why not. Counts
    /// every copy `offered` (`amplify` drawn first: 2.5 is 2 or 3) and every refused copy
    /// dropped with the reason. `body_len` is the body's exact size when the client
    /// declared it; `mirrorable` is false for upgrade requests.
    pub(crate) fn admit(
        &self,
        parts: &Parts,
        mirrorable: bool,
        body_len: Option<u64>,
        path: &PathEntry,
    ) -> Result<u8, DropReason> {
        let copies = self.copies();
        self.spec.metrics.offered.inc_by(u64::from(copies));
        let refused = if self.control.paused() {
            Some(DropReason::paused)
        } else {
            self.refusal(parts, mirrorable, body_len, true)
                .or_else(|| self.no_room())
        };
        match refused {
            Some(reason) => {
                self.spec.dropped_copies(reason, path, copies);
                Err(reason)
            }
            None => Ok(copies),
        }
    }

    /// Why this request is not copied, in the order the reasons are counted: an upgrade,
    /// the method, the sample (when `sample`), the declared size.
    fn refusal(
        &self,
        parts: &Parts,
        mirrorable: bool,
        body_len: Option<u64>,
        sample: bool,
    ) -> Option<DropReason> {
        if !mirrorable {
            Some(DropReason::upgrade)
        } else if self
            .methods
            .as_ref()
            .is_some_and(|ms| !ms.contains(&parts.method))
        {
            Some(DropReason::method_filtered)
        } else if sample && !self.sampled_in(&parts.headers) {
            Some(DropReason::sampled_out)
        } else if body_len.is_some_and(|n| n > self.max_body) {
            Some(DropReason::body_too_large)
        } else {
            None
        }
    }

    /// A baseline's admission of a request its candidate took: one copy, counted
    /// `offered`; the candidate's sampling and pause decided, so only what the request
    /// itself rules out (an upgrade, a method, a declared size) refuses it.
    pub(crate) fn admit_following(
        &self,
        parts: &Parts,
        mirrorable: bool,
        body_len: Option<u64>,
        path: &PathEntry,
    ) -> Result<u8, DropReason> {
        self.spec.metrics.offered.inc();
        match self
            .refusal(parts, mirrorable, body_len, false)
            .or_else(|| self.no_room())
        {
            Some(reason) => {
                self.spec.dropped(reason, path);
                Err(reason)
            }
            None => Ok(1),
        }
    }

    /// A copy the shadow cannot take now: its circuit is open, or its queue is full. Found
    /// when the request arrives, before its headers are copied and its body is kept
    /// (checked again when the copy is offered).
    fn no_room(&self) -> Option<DropReason> {
        if self.queue.circuit_open() {
            Some(DropReason::circuit_open)
        } else if self.queue.is_full() {
            Some(DropReason::queue_full)
        } else {
            None
        }
    }

    /// This request's number of copies: `amplify`'s whole part, plus one with the
    /// probability of its fraction.
    fn copies(&self) -> u8 {
        let whole = self.amplify.trunc();
        let fraction = self.amplify - whole;
        let extra = fraction > 0.0
            && (sample::random_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64) < fraction;
        whole as u8 + u8::from(extra)
    }

    /// Takes a rate-cap token for one copy (always true without `max_rps`).
    pub(crate) fn rate_allows(&self) -> bool {
        self.rate.as_ref().is_none_or(RateCap::take)
    }

    fn sampled_in(&self, headers: &HeaderMap) -> bool {
        match self.control.threshold().unwrap_or(self.threshold) {
            0 => false,
            t if t >= sample::SCALE => true,
            t => {
                // The configured key, else the request id (which teeproxy always sets:
                // the client's when it sent a sane one).
                let key = self
                    .sample_key
                    .as_ref()
                    .and_then(|k| sample::key_value(k, headers))
                    .or_else(|| headers.get(&X_REQUEST_ID).map(|v| v.as_bytes()));
                sample::draw(key) < t
            }
        }
    }

    /// The headers `shadow_headers` changes (for the comparison, which leaves them out).
    pub(crate) fn edited_headers(
        c: &ShadowConfig,
        tag_name: Option<&HeaderName>,
        copy_name: Option<&HeaderName>,
    ) -> EditedHeaders {
        let mut replaced = vec![header::HOST, TRACEPARENT.clone(), TRACESTATE.clone()];
        replaced.extend(c.headers.set.iter().map(|(n, _)| n.clone()));
        let mut names = replaced.clone();
        names.push(header::EXPECT);
        names.extend(c.headers.remove.iter().cloned());
        names.extend(tag_name.cloned());
        names.extend(copy_name.cloned());
        names.dedup();
        EditedHeaders { names, replaced }
    }

    /// The headers of copy `copy` (1-based) from the primary's (already without hop-by-hop
    /// headers): `Expect` and Host removed, configured removals and settings, the shadow
    /// tag, the copy index when amplified, and the trace context of a child span: the same
    /// trace id and flags with a new parent id, `teeproxy=shadow-<cluster>` first in
    /// `tracestate`. A malformed `traceparent` (and its `tracestate`) is not passed on.
    pub(crate) fn shadow_headers(&self, base: HeaderMap, copy: u8) -> HeaderMap {
        let mut h = base;
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
        if let Some(name) = &self.copy_tag {
            h.insert(name.clone(), HeaderValue::from(u16::from(copy)));
        }
        if h.contains_key(&TRACEPARENT) {
            match TraceParent::from_headers(&h) {
                Some(tp) => {
                    let state = tracecontext::tracestate_with(&h, "teeproxy", &self.trace_value);
                    h.insert(&TRACEPARENT, tp.child(sample::random_u64()).to_header());
                    h.insert(&TRACESTATE, state);
                }
                None => {
                    h.remove(&TRACEPARENT);
                    h.remove(&TRACESTATE);
                }
            }
        }
        h
    }
}
