//! teeproxy: a shadow-traffic tee proxy. Every request is served by the primary cluster;
//! a copy goes, fire-and-forget, to shadow clusters.
//!
//! `run` takes a validated config, listeners the caller bound, a metrics registry and a
//! shutdown future; nothing here binds a port or reads the environment by itself.

pub mod admin;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod idle;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod report;
pub mod response;
pub mod route;
pub mod server;
pub mod shadow;
pub mod stats;
pub mod upstream;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::AdminState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::server::Server;
use crate::shadow::dispatch::Dispatchers;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({what}): {source}")]
pub struct BindError {
    pub what: String,
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The bound sockets `run` serves on.
pub struct Listeners {
    /// Proxy listeners, by name.
    pub proxy: Vec<(String, TcpListener)>,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds every address the config names.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let mut proxy = Vec::new();
        for (name, address) in config.listener_addrs() {
            let l = TcpListener::bind(address)
                .await
                .map_err(|source| BindError {
                    what: format!("listener {name}"),
                    address,
                    source,
                })?;
            proxy.push((name, l));
        }
        let address = config.admin_addr();
        let admin = TcpListener::bind(address)
            .await
            .map_err(|source| BindError {
                what: "admin".to_string(),
                address,
                source,
            })?;
        Ok(Listeners { proxy, admin })
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
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
/// up to the config's `drain_timeout` (HTTP/1 answers carry `Connection: close`, HTTP/2
/// connections get GOAWAY), closes what is left, gives the shadow queues `shadow_drain`,
/// and returns the final metrics text.
pub async fn run(
    config: Config,
    listeners: Listeners,
    mut registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> String {
    let metrics = Metrics::new(&mut registry);
    let proxy = Arc::new(Proxy::new(&config, metrics.clone()));
    let dispatchers = Dispatchers::start(&proxy.shadow_clusters());
    let server = Arc::new(Server::new(proxy.clone(), &config.limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_state = Arc::new(AdminState {
        registry,
        ready: AtomicBool::new(false),
        proxy: proxy.clone(),
        config: report::config(&config).to_string(),
    });
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        admin_state.clone(),
        admin_stop_rx,
    ));

    let mut loops = JoinSet::new();
    for (name, listener) in listeners.proxy {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listener = %name, %addr, "listening");
        }
        let lm = metrics.listener(&name);
        loops.spawn(server.clone().accept_loop(listener, lm, stop_rx.clone()));
    }
    admin_state.ready.store(true, Ordering::Relaxed);

    shutdown.await;
    let drain = config.drain_timeout.get();
    tracing::info!(
        drain_timeout_ms = drain.as_millis() as u64,
        "shutting down: no new connections, draining"
    );
    admin_state.ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut conns = Vec::new();
    while let Some(done) = loops.join_next().await {
        if let Ok(set) = done {
            conns.push(set);
        }
    }
    // Every connection saw the stop signal: HTTP/1 closes after the request in progress,
    // HTTP/2 sent GOAWAY. Wait for them up to the drain deadline, then close the rest.
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
    let shadow_drain = config.shadow_drain.get();
    tracing::info!(
        shadow_drain_ms = shadow_drain.as_millis() as u64,
        "draining shadow queues"
    );
    dispatchers.drain(shadow_drain).await;
    let _ = admin_stop_tx.send(true);
    let _ = admin.await;
    tracing::info!("stopped");
    metrics::encode(&admin_state.registry)
}

/// Completes once `rx` holds `true` (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
