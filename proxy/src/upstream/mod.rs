//! Upstream clusters: round-robin over endpoints, each with its own pooled client; passive
//! ejection of endpoints that refuse connections; and, when configured, active health
//! checks and periodic re-resolution of endpoint names (`discovery`), one task per cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;

use crate::config::{ClusterConfig, HostMode};
use crate::metrics::{ClusterMetrics, TlsFailure, UpstreamErrorKind};

mod discovery;
mod endpoints;
mod pool;
pub(crate) mod resolve;
pub(crate) mod tls;

use endpoints::{ClientSettings, EndpointSet};
pub(crate) use endpoints::{EndpointState, Member};
pub(crate) use pool::{EmptyBody, head_of};
pub use resolve::{Lookup, Resolve, SystemResolver};

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connect to {endpoint} failed: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("no response head from {endpoint} within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("upstream {endpoint} protocol error: {reason}")]
    Protocol { endpoint: String, reason: String },
    /// The TLS handshake failed: the upstream's certificate was refused (`failure`
    /// says why), or the upstream refused ours.
    #[error("TLS with {endpoint} failed ({failure:?}): {reason}")]
    Tls {
        endpoint: String,
        failure: TlsFailure,
        reason: String,
    },
    /// The client's request body broke off while it was being forwarded: the client's
    /// fault, not the upstream's.
    #[error("the client's request body failed while sent to {endpoint}: {reason}")]
    ClientBody {
        endpoint: String,
        reason: String,
        timed_out: bool,
    },
}

impl UpstreamError {
    /// The kind as a word: `connect`, `timeout`, `protocol`, `tls` or `client_body`.
    pub(crate) fn kind_str(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::ClientBody { .. } => "client_body",
        }
    }

    /// The kind counted against the upstream; `None` when the client's side failed.
    pub(crate) fn kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            UpstreamError::Connect { .. } => Some(UpstreamErrorKind::connect),
            UpstreamError::Timeout { .. } => Some(UpstreamErrorKind::timeout),
            UpstreamError::Protocol { .. } => Some(UpstreamErrorKind::protocol),
            UpstreamError::Tls { .. } => Some(UpstreamErrorKind::tls),
            UpstreamError::ClientBody { .. } => None,
        }
    }
}

/// A cluster, ready to send requests with bodies of type `B`. Each `Cluster` value has its
/// own endpoints, each with its own connection pool: the primary and shadow legs of one
/// configured cluster never share connections.
pub(crate) struct Cluster<B = Incoming> {
    pub(crate) name: String,
    set: Arc<EndpointSet<B>>,
    timeout: Duration,
    pub(crate) host_mode: HostMode,
    ejection_time: Duration,
    metrics: ClusterMetrics,
    /// Health checks and re-resolution, when configured; ends with the cluster.
    _discovery: Option<discovery::Handle>,
}

impl<B> Cluster<B>
where
    B: http_body::Body + EmptyBody + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(
        name: &str,
        c: &ClusterConfig,
        metrics: ClusterMetrics,
        resolver: &Arc<dyn Resolve>,
    ) -> Self {
        if c.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            tracing::warn!(cluster = name, leg = ?metrics.leg, "tls.insecure_skip_verify: the upstream's certificate is not verified");
        }
        let settings = ClientSettings::of(name, c, metrics.resent.clone());
        let members = c
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let label = EndpointState::metric_name(e, None);
                let gauge = metrics.health.endpoint(name, metrics.leg, label);
                Arc::new(settings.member(e.clone(), None, i, Some(gauge)))
            })
            .collect();
        let set = Arc::new(EndpointSet::new(members));
        let discovery =
            discovery::Discovery::new(c, settings, set.clone(), resolver.clone(), metrics.clone())
                .start();
        Cluster {
            name: name.to_string(),
            set,
            timeout: c.timeout,
            host_mode: c.host,
            ejection_time: c.ejection_time,
            metrics,
            _discovery: discovery,
        }
    }

    /// False while health checks find no healthy endpoint (always true without them).
    pub(crate) fn availability(&self) -> Arc<AtomicBool> {
        self.set.any_healthy.clone()
    }

    /// Counts an error found in an answer after the exchange itself succeeded.
    pub(crate) fn count_error(&self, e: &UpstreamError) {
        if let Some(kind) = e.kind() {
            self.metrics.error(kind);
        }
    }

    pub(crate) fn endpoint_count(&self) -> usize {
        self.set.len()
    }

    /// The next endpoint round-robin that is healthy and not ejected (see
    /// `EndpointSet::pick` for when none is).
    pub(crate) fn pick(&self) -> Arc<Member<B>> {
        self.set.pick()
    }

    /// Sends a request to `ep` and waits for the response head, up to the cluster's
    /// timeout. With `body_sent`, the timeout starts once it fires (the request body has
    /// been sent): an upload that keeps flowing is not cut off by the response timeout
    /// (a stalled one is, by the body inactivity limit).
    pub(crate) async fn send(
        &self,
        ep: &Member<B>,
        req: Request<B>,
        body_sent: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.exchange(ep, req, self.timeout, body_sent).await
    }

    /// `send`, and with `deadline` (a gRPC call's `grpc-timeout`), the whole wait from now
    /// to the response head is bounded by it too.
    pub(crate) async fn send_by(
        &self,
        ep: &Member<B>,
        req: Request<B>,
        body_sent: Option<tokio::sync::oneshot::Receiver<()>>,
        deadline: Option<Duration>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let Some(limit) = deadline else {
            return self.send(ep, req, body_sent).await;
        };
        match tokio::time::timeout(limit, self.send(ep, req, body_sent)).await {
            Ok(r) => r,
            Err(_) => {
                self.metrics.error(UpstreamErrorKind::timeout);
                Err(UpstreamError::Timeout {
                    endpoint: ep.label.to_string(),
                    timeout: limit,
                })
            }
        }
    }

    /// Sends a request to `ep` and waits for the response head, up to `timeout`.
    pub(crate) async fn send_within(
        &self,
        ep: &Member<B>,
        req: Request<B>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.exchange(ep, req, timeout, None).await
    }

    async fn exchange(
        &self,
        ep: &Member<B>,
        req: Request<B>,
        timeout: Duration,
        body_sent: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.metrics.requests.inc();
        let response = ep.client.request(req);
        let timed = async {
            let Some(sent) = body_sent else {
                return tokio::time::timeout(timeout, response).await;
            };
            tokio::pin!(response);
            tokio::select! {
                r = &mut response => Ok(r),
                // Sent (or dropped unsent): from here on the response timeout runs.
                _ = sent => tokio::time::timeout(timeout, response).await,
            }
        };
        let result = match timed.await {
            Ok(Ok(resp)) => Ok(resp),
            // Before `is_connect`: a refused certificate fails the connection, and a
            // client certificate refused under TLS 1.3 fails the first request on it.
            Ok(Err(e)) if tls::failure(&e).is_some() => {
                let failure = tls::failure(&e).unwrap_or(TlsFailure::handshake);
                if e.is_connect() {
                    self.eject(ep);
                }
                self.metrics.tls_error(failure);
                Err(UpstreamError::Tls {
                    endpoint: ep.label.to_string(),
                    failure,
                    reason: error_chain(&e),
                })
            }
            Ok(Err(e)) if e.is_connect() => {
                self.eject(ep);
                Err(UpstreamError::Connect {
                    endpoint: ep.label.to_string(),
                    reason: error_chain(&e),
                })
            }
            Ok(Err(e)) if client_body_failed(&e) => Err(UpstreamError::ClientBody {
                endpoint: ep.label.to_string(),
                reason: error_chain(&e),
                timed_out: has_source::<crate::idle::BodyTimeout>(&e),
            }),
            Ok(Err(e)) => Err(UpstreamError::Protocol {
                endpoint: ep.label.to_string(),
                reason: error_chain(&e),
            }),
            Err(_) => Err(UpstreamError::Timeout {
                endpoint: ep.label.to_string(),
                timeout,
            }),
        };
        if let Some(kind) = result.as_ref().err().and_then(UpstreamError::kind) {
            self.metrics.error(kind);
        }
        result
    }

    fn eject(&self, ep: &EndpointState) {
        if self.set.len() > 1 {
            let until = self.set.now_ms()
                + u64::try_from(self.ejection_time.as_millis()).unwrap_or(u64::MAX / 2);
            ep.ejected_until_ms.store(until, Ordering::Relaxed);
            self.metrics.ejections.inc();
            tracing::warn!(cluster = %self.name, endpoint = %ep.label, for_ms = self.ejection_time.as_millis() as u64, "endpoint ejected after a connect failure");
        }
    }
}

/// The URI to send to `ep` for a request whose target is `uri` (origin-form).
pub(crate) fn upstream_uri(ep: &EndpointState, uri: &Uri) -> Uri {
    // From parts already parsed (clones of shared bytes), not from text parsed again.
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(ep.endpoint.scheme.clone());
    parts.authority = Some(ep.target.clone());
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).expect("scheme, authority and path were valid parts")
}

/// Whether a client error came from the request body we were forwarding.
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_user() || h.is_body_write_aborted())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether an error or one of its sources is an `E`.
fn has_source<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}
