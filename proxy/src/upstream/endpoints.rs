//! A cluster's endpoints: each with its own pooled client, its passive-ejection deadline
//! and its health. The set is swapped whole when names resolve to other addresses; a member
//! that leaves is drained: no new request picks it, requests holding it finish, and when the
//! last one is done its client, with its idle connections, is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;

use super::pool::{H1Pool, Transport};
use super::tls::{Alpn, Connector, TlsClient};
use crate::config::{ClusterConfig, Endpoint, Http2Config, Protocol};
use crate::metrics::EndpointGauge;

/// One endpoint: as configured (`endpoint`: its scheme and its name, which `Host` and TLS
/// use) and, under `resolve`, the address it was resolved to.
pub(crate) struct EndpointState {
    pub(crate) endpoint: Endpoint,
    /// The address connected to, when the cluster resolves names itself.
    pub(crate) addr: Option<SocketAddr>,
    /// For logs: `http://10.0.0.1:8080` (the resolved address under `resolve`).
    pub(crate) label: Arc<str>,
    /// The authority of the URIs sent (the resolved address under `resolve`).
    pub(crate) target: http::uri::Authority,
    /// Milliseconds since the cluster's epoch until which the endpoint is skipped.
    pub(super) ejected_until_ms: AtomicU64,
    healthy: AtomicBool,
    /// Health-check successes and failures in a row (the checker alone writes them).
    successes: AtomicU32,
    failures: AtomicU32,
    gauge: Option<EndpointGauge>,
}

impl EndpointState {
    fn with_addr(
        endpoint: Endpoint,
        addr: Option<SocketAddr>,
        gauge: Option<EndpointGauge>,
    ) -> Self {
        let label = match addr {
            Some(a) => format!("{}://{a}", endpoint.scheme),
            None => endpoint.to_string(),
        };
        if let Some(g) = &gauge {
            g.set(true);
        }
        let target = addr
            .and_then(|a| a.to_string().parse().ok())
            .unwrap_or_else(|| endpoint.authority.clone());
        EndpointState {
            label: label.into(),
            target,
            endpoint,
            addr,
            ejected_until_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            gauge,
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests(url: &str) -> Self {
        let endpoint = crate::config::parse_endpoint(url).expect("valid test endpoint");
        Self::with_addr(endpoint, None, None)
    }

    /// The `endpoint` label of the metrics: `host:port` as connected to.
    pub(crate) fn metric_name(endpoint: &Endpoint, addr: Option<SocketAddr>) -> String {
        addr.map_or_else(|| endpoint.authority.to_string(), |a| a.to_string())
    }

    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records one health-check result; returns the new state when it changed.
    pub(super) fn checked(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let (mine, other) = if ok {
            (&self.successes, &self.failures)
        } else {
            (&self.failures, &self.successes)
        };
        other.store(0, Ordering::Relaxed);
        let n = mine.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let was = self.healthy();
        let now = if ok {
            was || n >= rise
        } else {
            was && n < fall
        };
        if now == was {
            return None;
        }
        self.healthy.store(now, Ordering::Relaxed);
        Some(now)
    }

    /// Shows the health in the endpoint's gauge (after everything that depends on it is
    /// updated, so a reader of the gauge never sees a state the proxy does not act on).
    pub(super) fn show(&self) {
        if let Some(g) = &self.gauge {
            g.set(self.healthy());
        }
    }
}

/// An endpoint with the clients that talk to it: `client` for requests (bodies of type
/// `B`), `probe` for health checks (their own connections).
pub(crate) struct Member<B> {
    pub(crate) state: EndpointState,
    pub(super) client: Transport<B>,
    pub(super) probe: Client<Connector, Empty<Bytes>>,
    /// Which configured endpoint this member comes from.
    pub(super) origin: usize,
}

impl<B> std::ops::Deref for Member<B> {
    type Target = EndpointState;
    fn deref(&self) -> &EndpointState {
        &self.state
    }
}

/// What building a member's clients needs.
#[derive(Clone)]
pub(super) struct ClientSettings {
    pub(super) connect_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max_idle: usize,
    /// The cluster's TLS client (its CA, client certificate, server name).
    pub(super) tls: TlsClient,
    pub(super) protocol: Protocol,
    pub(super) http2: Http2Config,
    /// Counts the HTTP/1.1 pool's resends.
    pub(super) resent: Counter,
}

impl ClientSettings {
    pub(super) fn of(cluster: &str, c: &ClusterConfig, resent: Counter) -> Self {
        ClientSettings {
            connect_timeout: c.connect_timeout,
            idle_timeout: c.idle_timeout,
            max_idle: c.max_idle_per_endpoint,
            tls: TlsClient::new(cluster, c.tls.as_ref()),
            protocol: c.protocol,
            http2: c.http2,
            resent,
        }
    }

    /// A connector for `endpoint`; with `addr`, the URI names that address and TLS checks
    /// the endpoint's host name (unless the cluster's `tls.server_name` says another). The
    /// one place ALPN is chosen: `http1` offers none (HTTP/1.1), `h2` offers `h2`, `auto`
    /// offers both (the server picks); `h2c` is plain TCP (no TLS; validated in the config).
    fn connector(&self, endpoint: &Endpoint, addr: Option<SocketAddr>) -> Connector {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.enforce_http(false);
        let host = addr.map(|_| endpoint.authority.host());
        let alpn = match self.protocol {
            Protocol::Http1 | Protocol::H2c => Alpn::Http1,
            Protocol::H2 => Alpn::H2,
            Protocol::Auto => Alpn::Http1AndH2,
        };
        self.tls.connector(http, host, alpn)
    }

    /// A client builder for this cluster's protocol: HTTP/2 only for `h2c` and `h2`
    /// (prior knowledge), else HTTP/1.1 unless ALPN chose `h2`; HTTP/2 connections with
    /// the cluster's keep-alive pings and flow-control windows.
    fn builder(&self) -> hyper_util::client::legacy::Builder {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .http2_only(matches!(self.protocol, Protocol::H2c | Protocol::H2))
            .http2_initial_connection_window_size(window(self.http2.initial_connection_window))
            .http2_initial_stream_window_size(window(self.http2.initial_stream_window))
            .http2_keep_alive_timeout(self.http2.keep_alive_timeout)
            .http2_keep_alive_while_idle(true);
        if !self.http2.keep_alive_interval.is_zero() {
            b.http2_keep_alive_interval(self.http2.keep_alive_interval);
        }
        b
    }

    pub(super) fn member<B>(
        &self,
        endpoint: Endpoint,
        addr: Option<SocketAddr>,
        origin: usize,
        gauge: Option<EndpointGauge>,
    ) -> Member<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        let connector = self.connector(&endpoint, addr);
        let client = match self.protocol {
            Protocol::Http1 => Transport::Http1(Arc::new(H1Pool::new(
                connector.clone(),
                self.max_idle,
                self.idle_timeout,
                self.resent.clone(),
            ))),
            Protocol::H2c | Protocol::H2 | Protocol::Auto => Transport::Pooled(Box::new(
                self.builder()
                    .pool_max_idle_per_host(self.max_idle)
                    .build(connector.clone()),
            )),
        };
        let probe = self.builder().pool_max_idle_per_host(1).build(connector);
        Member {
            state: EndpointState::with_addr(endpoint, addr, gauge),
            client,
            probe,
            origin,
        }
    }
}

/// The members of a cluster as the handler and the cluster's checker share them.
pub(crate) struct EndpointSet<B> {
    pub(super) members: ArcSwap<Vec<Arc<Member<B>>>>,
    next: AtomicUsize,
    epoch: Instant,
    /// False once health checks find no healthy endpoint (a shadow's circuit opens).
    pub(super) any_healthy: Arc<AtomicBool>,
}

impl<B> EndpointSet<B> {
    pub(super) fn new(members: Vec<Arc<Member<B>>>) -> Self {
        EndpointSet {
            members: ArcSwap::from_pointee(members),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            any_healthy: Arc::new(AtomicBool::new(true)),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn len(&self) -> usize {
        self.members.load().len()
    }

    /// The next endpoint round-robin that is healthy and not ejected; when none is, the
    /// next one not ejected whatever its health (panic mode: health checks that fail
    /// everywhere are more likely wrong than every endpoint down), else the next one.
    pub(super) fn pick(&self) -> Arc<Member<B>> {
        let list = self.members.load();
        let n = list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let at = |i: usize| &list[(start + i) % n];
        let free = |m: &Member<B>| m.ejected_until_ms.load(Ordering::Relaxed) <= now;
        (0..n)
            .map(at)
            .find(|m| m.healthy() && free(m))
            .or_else(|| (0..n).map(at).find(|m| free(m)))
            .unwrap_or_else(|| at(0))
            .clone()
    }
}

/// A flow-control window for hyper (validated to fit in the config).
fn window(bytes: u64) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX >> 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_changes_after_failures_and_successes_in_a_row() {
        let ep = EndpointState::for_tests("http://10.0.0.1:8080");
        assert!(ep.healthy(), "starts healthy");
        // unhealthy: 3 failures in a row; a success in between starts the count again.
        assert_eq!(ep.checked(false, 2, 3), None);
        assert_eq!(ep.checked(false, 2, 3), None);
        assert_eq!(ep.checked(true, 2, 3), None);
        assert_eq!(ep.checked(false, 2, 3), None);
        assert_eq!(ep.checked(false, 2, 3), None);
        assert_eq!(ep.checked(false, 2, 3), Some(false));
        assert_eq!(ep.checked(false, 2, 3), None, "stays unhealthy");
        // healthy: 2 successes in a row.
        assert_eq!(ep.checked(true, 2, 3), None);
        assert_eq!(ep.checked(false, 2, 3), None);
        assert_eq!(ep.checked(true, 2, 3), None);
        assert_eq!(ep.checked(true, 2, 3), Some(true));
        assert!(ep.healthy());
    }
}
