//! The access log: one line per request under the target `teeproxy::access`, with the
//! fields an nginx or Envoy user looks for. The line is written when the response is over:
//! at once for an answer teeproxy made itself (an error, a refusal), at the end of the
//! primary's response body otherwise (`ResponseTee`), so `bytes_sent` and `duration_ms`
//! cover the whole response. A body that broke off, or a client that left before its end,
//! still gets its line, with `complete: false` and the bytes sent until then.
//!
//! `bytes_received` counts the request body bytes passed to the primary by the time the
//! line is written: normally the whole body; less when the primary answered (and its
//! answer ended) before reading all of it, and 0 for requests refused before forwarding.
//! `shadow` says, per shadow policy of the route, what became of the copy as far as it was
//! decided when the line is written: `queued`, a drop reason (`sampled_out`,
//! `method_filtered`, `queue_full`, ...), or `undecided` (its body or primary answer was
//! still missing; the metrics count the outcome later). Whether a queued copy got its
//! answer is in the metrics and the comparison records, not here: the line does not wait
//! for the shadow. `scheme` is `https` on TLS listeners, and `client_subject` the verified
//! client certificate's subject (`-` without one).
//!
//! Nothing here exists when the access log is off: the handler builds no `AccessLine` and
//! no `Trace`, and the body wrappers only test an empty `Option`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Version};

use super::conn::ConnInfo;
use crate::http::host::request_host;
use crate::shadow::trace::Trace;

/// One request's access-log line, filled in as the request goes.
pub(crate) struct AccessLine {
    request_id: HeaderValue,
    method: Method,
    /// The path as sent (no query).
    path: String,
    protocol: Version,
    host: Option<String>,
    user_agent: Option<HeaderValue>,
    client: IpAddr,
    start: Instant,
    route: String,
    status: u16,
    endpoint: Option<String>,
    /// From sending to the primary to its response head.
    upstream: Option<Duration>,
    /// The body count and the shadow decisions (routed requests only).
    pub(crate) trace: Option<Arc<Trace>>,
    /// Response body bytes sent to the client.
    pub(crate) bytes_sent: u64,
    /// `https` or `http`, and the verified client certificate's subject (TLS listeners
    /// with `client_ca`).
    scheme: &'static str,
    client_subject: Option<Arc<str>>,
}

impl AccessLine {
    /// The request's side, taken when it arrives.
    pub(crate) fn new<B>(
        req: &Request<B>,
        request_id: &HeaderValue,
        client: IpAddr,
        start: Instant,
    ) -> Box<Self> {
        Box::new(AccessLine {
            request_id: request_id.clone(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            protocol: req.version(),
            host: request_host(req).map(str::to_string),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            client,
            start,
            route: String::new(),
            status: 0,
            endpoint: None,
            upstream: None,
            trace: None,
            bytes_sent: 0,
            scheme: "http",
            client_subject: None,
        })
    }

    /// Takes the connection's scheme and client certificate subject.
    pub(crate) fn client_cert(mut self: Box<Self>, conn: &ConnInfo) -> Box<Self> {
        self.scheme = conn.proto;
        self.client_subject = conn.client_subject.clone();
        self
    }

    /// The answer's side, known when the response head is ready.
    pub(crate) fn answered(
        &mut self,
        route: &str,
        status: u16,
        endpoint: Option<&str>,
        upstream: Option<Duration>,
    ) {
        self.route = route.to_string();
        self.status = status;
        self.endpoint = endpoint.map(str::to_string);
        self.upstream = upstream;
    }

    /// Writes the line; `complete` is false when the response body broke off or the
    /// client left before its end.
    pub(crate) fn write(&self, complete: bool) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            target: "teeproxy::access",
            request_id = self.request_id.to_str().unwrap_or("-"),
            route = %self.route,
            method = %self.method,
            path = %self.path,
            protocol = ?self.protocol,
            host = self.host.as_deref().unwrap_or("-"),
            user_agent = self.user_agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            status = self.status,
            bytes_received = self.trace.as_ref().map_or(0, |t| t.received()),
            bytes_sent = self.bytes_sent,
            upstream_ms = self.upstream.map(ms),
            duration_ms = ms(self.start.elapsed()),
            endpoint = self.endpoint.as_deref().unwrap_or("-"),
            client = %self.client,
            scheme = self.scheme,
            client_subject = self.client_subject.as_deref().unwrap_or("-"),
            shadow = %self.trace.as_deref().map_or_else(|| "-".to_string(), Trace::to_string),
            complete,
        );
    }
}
