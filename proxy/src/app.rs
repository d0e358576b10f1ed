//! The one place that wires teeproxy together: `App::build` turns a config into the first
//! snapshot (starting its shadow dispatchers), the handler, the listener settings and the
//! admin state; `App::serve` runs the listeners, the admin endpoint and config reloads
//! until shutdown, then drains. `main`, the tests and the fuzz harness all go through here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::admin::{self, AdminState, Scope};
use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::proxy::Proxy;
use crate::proxy::snapshot::{Shared, Snapshot};
use crate::reload::{Reload, Reloader};
use crate::server::Server;
use crate::shadow::dispatch::Dispatchers;
use crate::shutdown::Stop;
use crate::tls::TlsListener;
use crate::upstream::{Resolve, SystemResolver};
use crate::watch::watch_files;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({what}): {source}")]
pub struct BindError {
    pub what: String,
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The bound sockets `App::serve` serves on.
pub struct Listeners {
    /// Proxy listeners, by name.
    pub proxy: Vec<(String, TcpListener)>,
    pub admin: TcpListener,
    /// `admin.metrics_address`: `/metrics`, `/live` and `/ready` only.
    pub metrics: Option<TcpListener>,
}

/// Connections the kernel may hold for a listener before they are accepted (it caps this
/// at `net.core.somaxconn`): room for bursts, and for the time accepting pauses.
pub const LISTEN_BACKLOG: u32 = 4096;

impl Listeners {
    /// Binds every address the config names.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let mut proxy = Vec::new();
        for (name, address) in config.listener_addrs() {
            let l = listen(address).map_err(|source| BindError {
                what: format!("listener {name}"),
                address,
                source,
            })?;
            proxy.push((name, l));
        }
        let address = config.admin.address;
        let admin = TcpListener::bind(address)
            .await
            .map_err(|source| BindError {
                what: "admin".to_string(),
                address,
                source,
            })?;
        let metrics = match config.admin.metrics_address {
            Some(address) => {
                Some(
                    TcpListener::bind(address)
                        .await
                        .map_err(|source| BindError {
                            what: "metrics".to_string(),
                            address,
                            source,
                        })?,
                )
            }
            None => None,
        };
        Ok(Listeners {
            proxy,
            admin,
            metrics,
        })
    }

    /// Addresses actually bound (useful with port 0).
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.proxy
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The address of the `/metrics`-only listener, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Binds a proxy listener with `LISTEN_BACKLOG` (and address reuse, for quick restarts).
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// teeproxy, built from a config and ready to serve.
pub struct App {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    proxy: Arc<Proxy>,
    server: Arc<Server>,
    reloader: Arc<Reloader>,
    dispatchers: Arc<Dispatchers>,
    /// TLS listeners' certificates, by listener name.
    tls: Vec<Arc<TlsListener>>,
    /// Tells connections served by `serve_stream` to drain.
    stop: Stop,
}

impl App {
    /// Registers the metrics in `registry` and builds the first snapshot, starting its
    /// shadow dispatchers (so: call it inside a Tokio runtime).
    pub fn build(config: Config, registry: &mut Registry) -> App {
        Self::build_with_resolver(config, registry, Arc::new(SystemResolver))
    }

    /// `build`, with `resolver` resolving the endpoint names of clusters with `resolve`.
    pub fn build_with_resolver(
        config: Config,
        registry: &mut Registry,
        resolver: Arc<dyn Resolve>,
    ) -> App {
        let config = Arc::new(config);
        let metrics = Metrics::new(registry);
        let shared = Shared::new(metrics.clone(), &config).with_resolver(resolver);
        let (first, dispatchers) = Snapshot::build(config.clone(), &shared, None);
        let running = Arc::new(Dispatchers::default());
        running.start(dispatchers);
        let snapshots = Arc::new(ArcSwap::from_pointee(first));
        let proxy = Arc::new(Proxy::new(snapshots.clone(), metrics.clone()));
        let server = Arc::new(Server::new(
            proxy.clone(),
            &config.limits,
            config.listeners.len(),
        ));
        let tls: Vec<Arc<TlsListener>> = config
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                l.tls.as_ref().map(|t| {
                    TlsListener::new(&l.name, format!("listeners[{i}]"), t, metrics.tls.clone())
                })
            })
            .collect();
        let reloader = Arc::new(Reloader::new(
            shared,
            snapshots,
            running.clone(),
            config.clone(),
            tls.clone(),
        ));
        App {
            config,
            metrics,
            proxy,
            server,
            reloader,
            dispatchers: running,
            tls,
            stop: Stop::new(),
        }
    }

    /// The handler, to drive with requests built in memory.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Serves one client connection (any byte stream) as a listener of this config would:
    /// protocol detection, time limits, HTTP/1.1 or HTTP/2, the handler.
    pub async fn serve_stream<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let name = self
            .config
            .listeners
            .first()
            .map_or("memory", |l| l.name.as_str());
        let lm = self.metrics.listener(name);
        self.server
            .serve_stream(stream, peer, &lm, self.stop.subscribe(), None)
            .await;
    }

    /// Applies a reload now (as a SIGHUP would).
    pub fn reload(&self, reload: Reload) {
        self.reloader.apply(reload);
    }

    /// Shadow dispatchers still running, of every config generation still in use.
    pub fn shadow_dispatchers(&self) -> usize {
        self.dispatchers.running()
    }

    /// Tells connections from `serve_stream` to drain, and gives the shadow queues `within`
    /// to empty; returns when every dispatcher has ended.
    pub async fn drain_shadows(&self, within: std::time::Duration) {
        self.stop.stop();
        self.dispatchers.drain(within).await;
    }

    /// Serves until `shutdown` completes, applying the configs that arrive on `reloads`;
    /// then stops accepting, lets in-flight requests finish up to `drain_timeout` (HTTP/1
    /// answers carry `Connection: close`, HTTP/2 connections get GOAWAY), closes what is
    /// left, gives the shadow queues `shadow_drain`, and returns the final metrics text.
    /// `registry` is the one `build` registered the metrics in (served on `/metrics`).
    pub async fn serve(
        self,
        listeners: Listeners,
        registry: Registry,
        shutdown: impl Future<Output = ()>,
        reloads: mpsc::Receiver<Reload>,
    ) -> String {
        let stop = Stop::new();
        let admin_stop = Stop::new();
        let admin_state = Arc::new(AdminState::new(
            registry,
            self.reloader.snapshots.clone(),
            self.reloader.shared.mismatches.clone(),
            self.metrics.clone(),
        ));
        let mut admin = JoinSet::new();
        admin.spawn(admin::serve(
            listeners.admin,
            admin_state.clone(),
            Scope::Admin,
            admin_stop.subscribe(),
        ));
        if let Some(l) = listeners.metrics {
            admin.spawn(admin::serve(
                l,
                admin_state.clone(),
                Scope::Metrics,
                admin_stop.subscribe(),
            ));
        }
        let mut loops = JoinSet::new();
        for (name, listener) in listeners.proxy {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(listener = %name, %addr, "listening");
            }
            let lm = self.metrics.listener(&name);
            let tls = self.tls.iter().find(|t| t.name() == name).cloned();
            loops.spawn(
                self.server
                    .clone()
                    .accept_loop(listener, tls, lm, stop.subscribe()),
            );
        }
        // Certificates and keys are re-read when their files change (and on SIGHUP, with
        // the config); the watches end when this returns.
        let _cert_watches: Vec<_> = self
            .tls
            .iter()
            .filter_map(|t| {
                let files = t.files();
                let on_change = {
                    let t = t.clone();
                    move || {
                        tracing::info!(listener = %t.name(), "TLS files changed: reloading them");
                        t.reload();
                    }
                };
                match watch_files(&files, on_change) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(listener = %t.name(), error = %e, "cannot watch the TLS files: reload them with SIGHUP");
                        None
                    }
                }
            })
            .collect();
        admin_state.ready.store(true, Ordering::Relaxed);
        // Reloads apply until the connections are drained (a SIGHUP during the drain still
        // counts).
        let reload_stop = Stop::new();
        let reloads = tokio::spawn(self.reloader.clone().run(reloads, reload_stop.subscribe()));

        shutdown.await;
        admin_state.ready.store(false, Ordering::Relaxed);
        let delay = self.config.drain_delay;
        if !delay.is_zero() {
            // Load balancers see `/ready` fail and stop sending new connections; until then,
            // everything is accepted and served as before.
            tracing::info!(
                drain_delay_ms = delay.as_millis() as u64,
                "shutting down: /ready answers 503; still serving for drain_delay"
            );
            tokio::time::sleep(delay).await;
        }
        let drain = self.config.drain_timeout;
        tracing::info!(
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: no new connections, draining"
        );
        stop.stop();
        self.stop.stop();
        let mut conns = Vec::new();
        while let Some(done) = loops.join_next().await {
            if let Ok(set) = done {
                conns.push(set);
            }
        }
        // Every connection saw the stop signal: HTTP/1 closes after the request in
        // progress, HTTP/2 sent GOAWAY. Wait for them up to the drain deadline, then close
        // the rest.
        for set in &mut conns {
            while set.try_join_next().is_some() {}
        }
        let open: usize = conns.iter().map(JoinSet::len).sum();
        let drained = tokio::time::timeout(drain, async {
            for set in &mut conns {
                while set.join_next().await.is_some() {}
            }
        })
        .await;
        match drained {
            Ok(()) => tracing::info!(connections = open, "drained"),
            Err(_) => tracing::warn!("drain deadline passed; closing the connections left"),
        }
        for mut set in conns {
            set.shutdown().await;
        }
        reload_stop.stop();
        let _ = reloads.await;
        let shadow_drain = self.config.shadow_drain;
        tracing::info!(
            shadow_drain_ms = shadow_drain.as_millis() as u64,
            "draining shadow queues"
        );
        self.dispatchers.drain(shadow_drain).await;
        admin_stop.stop();
        while admin.join_next().await.is_some() {}
        tracing::info!("stopped");
        metrics::encode(&admin_state.registry)
    }
}

/// A shadow policy's counters and its cluster's gauges, read together (tests and the fuzz
/// harness check `offered = sent + dropped` and that everything settles to zero).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Requests in the handler (all routes).
    pub requests_in_flight: i64,
    pub offered: u64,
    pub sent: u64,
    /// Over every drop reason.
    pub dropped: u64,
    pub queue_depth: i64,
    pub shadow_in_flight: i64,
    pub held_bytes: i64,
}

#[cfg(any(test, feature = "testing"))]
impl App {
    /// The counters of `route`'s policy for `shadow`, and `shadow`'s queue gauges.
    pub fn activity(&self, route: &str, shadow: &str) -> Activity {
        let policy = self.metrics.shadow_policy(route, shadow);
        let cluster = self.metrics.shadow_cluster(shadow);
        Activity {
            requests_in_flight: self.metrics.in_flight.get(),
            offered: policy.offered.get(),
            sent: policy.sent.get(),
            dropped: policy.dropped_total(),
            queue_depth: cluster.queue_depth.get(),
            shadow_in_flight: cluster.in_flight.get(),
            held_bytes: cluster.held_bytes.get(),
        }
    }

    /// Clusters' checker tasks (health checks, re-resolution) alive, of every config
    /// generation.
    pub fn discovery_tasks(&self) -> i64 {
        self.metrics.health.tasks.get()
    }
}

#[cfg(test)]
impl App {
    /// The mismatch groups, most recently seen first.
    pub(crate) fn mismatches(&self) -> Vec<crate::shadow::mismatches::MismatchGroup> {
        self.reloader.shared.mismatches.groups().groups
    }
}
