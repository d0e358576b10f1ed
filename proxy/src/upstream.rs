//! Upstream clusters: one pooled client per cluster, round-robin over its endpoints, and
//! passive ejection of endpoints that refuse connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{ClusterConfig, Endpoint, HostMode};
use crate::metrics::{ClusterMetrics, UpstreamErrorKind};

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connect to {endpoint} failed: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("no response head from {endpoint} within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("upstream {endpoint} protocol error: {reason}")]
    Protocol { endpoint: String, reason: String },
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
    /// The kind as a word: `connect`, `timeout` or `protocol`.
    pub(crate) fn kind_str(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::ClientBody { .. } => "client_body",
        }
    }

    /// The kind counted against the upstream; `None` when the client's side failed.
    pub(crate) fn kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            UpstreamError::Connect { .. } => Some(UpstreamErrorKind::connect),
            UpstreamError::Timeout { .. } => Some(UpstreamErrorKind::timeout),
            UpstreamError::Protocol { .. } => Some(UpstreamErrorKind::protocol),
            UpstreamError::ClientBody { .. } => None,
        }
    }
}

type Connector = HttpsConnector<HttpConnector>;

/// One endpoint of a cluster and its ejection state.
pub(crate) struct EndpointState {
    pub(crate) endpoint: Endpoint,
    /// The endpoint as text (`http://10.0.0.1:8080`), for logs.
    pub(crate) label: String,
    /// Milliseconds since the cluster's epoch until which the endpoint is skipped.
    ejected_until_ms: AtomicU64,
}

impl EndpointState {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        EndpointState {
            label: endpoint.to_string(),
            endpoint,
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests(url: &str) -> Self {
        Self::new(crate::config::parse_endpoint(url).expect("valid test endpoint"))
    }
}

/// A cluster, ready to send requests with bodies of type `B`. Each `Cluster` value has its
/// own connection pool: the primary and shadow legs of one configured cluster never share
/// connections.
pub(crate) struct Cluster<B = Incoming> {
    pub(crate) name: String,
    endpoints: Vec<EndpointState>,
    next: AtomicUsize,
    client: Client<Connector, B>,
    timeout: Duration,
    pub(crate) host_mode: HostMode,
    ejection_time: Duration,
    epoch: Instant,
    metrics: ClusterMetrics,
}

fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

impl<B> Cluster<B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(name: &str, c: &ClusterConfig, metrics: ClusterMetrics) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(c.connect_timeout));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(c.idle_timeout)
            .pool_max_idle_per_host(c.max_idle_per_endpoint)
            .build(https);
        let endpoints = c
            .endpoints
            .iter()
            .cloned()
            .map(EndpointState::new)
            .collect();
        Cluster {
            name: name.to_string(),
            endpoints,
            next: AtomicUsize::new(0),
            client,
            timeout: c.timeout,
            host_mode: c.host,
            ejection_time: c.ejection_time,
            epoch: Instant::now(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts an error found in an answer after the exchange itself succeeded.
    pub(crate) fn count_error(&self, e: &UpstreamError) {
        if let Some(kind) = e.kind() {
            self.metrics.error(kind);
        }
    }

    pub(crate) fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The next endpoint round-robin, skipping ejected ones while any other is available.
    pub(crate) fn pick(&self) -> &EndpointState {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| e.ejected_until_ms.load(Ordering::Relaxed) <= now)
            .unwrap_or(&self.endpoints[start % n])
    }

    /// Sends a request to `ep` and waits for the response head, up to the cluster's
    /// timeout. With `body_sent`, the timeout starts once it fires (the request body has
    /// been sent): an upload that keeps flowing is not cut off by the response timeout
    /// (a stalled one is, by the body inactivity limit).
    pub(crate) async fn send(
        &self,
        ep: &EndpointState,
        req: Request<B>,
        body_sent: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.exchange(ep, req, self.timeout, body_sent).await
    }

    /// Sends a request to `ep` and waits for the response head, up to `timeout`.
    pub(crate) async fn send_within(
        &self,
        ep: &EndpointState,
        req: Request<B>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.exchange(ep, req, timeout, None).await
    }

    async fn exchange(
        &self,
        ep: &EndpointState,
        req: Request<B>,
        timeout: Duration,
        body_sent: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.metrics.requests.inc();
        let response = self.client.request(req);
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
            Ok(Err(e)) if e.is_connect() => {
                self.eject(ep);
                Err(UpstreamError::Connect {
                    endpoint: ep.label.clone(),
                    reason: error_chain(&e),
                })
            }
            Ok(Err(e)) if client_body_failed(&e) => Err(UpstreamError::ClientBody {
                endpoint: ep.label.clone(),
                reason: error_chain(&e),
                timed_out: has_source::<crate::idle::BodyTimeout>(&e),
            }),
            Ok(Err(e)) => Err(UpstreamError::Protocol {
                endpoint: ep.label.clone(),
                reason: error_chain(&e),
            }),
            Err(_) => Err(UpstreamError::Timeout {
                endpoint: ep.label.clone(),
                timeout,
            }),
        };
        if let Some(kind) = result.as_ref().err().and_then(UpstreamError::kind) {
            self.metrics.error(kind);
        }
        result
    }

    fn eject(&self, ep: &EndpointState) {
        if self.endpoints.len() > 1 {
            let until = self.now_ms()
                + u64::try_from(self.ejection_time.as_millis()).unwrap_or(u64::MAX / 2);
            ep.ejected_until_ms.store(until, Ordering::Relaxed);
            self.metrics.ejections.inc();
            tracing::warn!(cluster = %self.name, endpoint = %ep.label, for_ms = self.ejection_time.as_millis() as u64, "endpoint ejected after a connect failure");
        }
    }
}

/// The URI to send to `ep` for a request whose target is `uri` (origin-form).
pub(crate) fn upstream_uri(ep: &EndpointState, uri: &Uri) -> Uri {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme(ep.endpoint.scheme.clone())
        .authority(ep.endpoint.authority.clone())
        .path_and_query(pq)
        .build()
        .expect("scheme, authority and path were valid parts")
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
