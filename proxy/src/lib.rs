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
use tokio::sync::{mpsc, watch};
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
            let l = listen(address).map_err(|source| BindError {
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

/// A config reload, as the caller read it (for example on SIGHUP).
pub enum Reload {
    /// A valid config: served from the next request on.
    Apply(Box<Config>),
    /// The config could not be read or is invalid: the running one stays. The reason is
    /// logged and counted.
    Failed(String),
}

/// Connections the kernel may hold for a listener before they are accepted (it caps this
/// at `net.core.somaxconn`): room for bursts, and for the time accepting pauses.
pub const LISTEN_BACKLOG: u32 = 4096;

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

/// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
/// up to the config's `drain_timeout` (HTTP/1 answers carry `Connection: close`, HTTP/2
/// connections get GOAWAY), closes what is left, gives the shadow queues `shadow_drain`,
/// and returns the final metrics text.
pub async fn run(
    config: Config,
    listeners: Listeners,
    registry: Registry,
    shutdown: impl Future<Output = ()>,
) -> String {
    let (_keep, reloads) = mpsc::channel(1);
    run_with_reloads(config, listeners, registry, shutdown, reloads).await
}

/// `run`, also applying the configs that arrive on `reloads`: routes, clusters, shadows,
/// request limits and logging switch for new requests (in-flight ones finish on the old
/// config); listener addresses and connection-level limits keep their first values until
/// a restart (a reload that changes them says so in the log).
pub async fn run_with_reloads(
    config: Config,
    listeners: Listeners,
    mut registry: Registry,
    shutdown: impl Future<Output = ()>,
    reloads: mpsc::Receiver<Reload>,
) -> String {
    let metrics = Metrics::new(&mut registry);
    let proxy = Arc::new(Proxy::new(&config, metrics.clone()));
    let dispatchers = Dispatchers::start(&proxy.shadow_clusters());
    let server = Arc::new(Server::new(
        proxy.clone(),
        &config.limits,
        listeners.proxy.len(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_state = Arc::new(AdminState {
        registry,
        ready: AtomicBool::new(false),
        proxy: proxy.clone(),
        config: arc_swap::ArcSwap::from_pointee(report::config(&config).to_string()),
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

    let (reloader_stop, reloader_stop_rx) = watch::channel(false);
    let reloader = tokio::spawn(reload_loop(
        reloads,
        config.clone(),
        dispatchers,
        admin_state.clone(),
        reloader_stop_rx,
    ));

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
    let shadow_drain = config.shadow_drain.get();
    tracing::info!(
        shadow_drain_ms = shadow_drain.as_millis() as u64,
        "draining shadow queues"
    );
    let _ = reloader_stop.send(true);
    if let Ok(generations) = reloader.await {
        let drains: Vec<_> = generations
            .into_iter()
            .map(|d| d.drain(shadow_drain))
            .collect();
        futures_join_all(drains).await;
    }
    let _ = admin_stop_tx.send(true);
    let _ = admin.await;
    tracing::info!("stopped");
    metrics::encode(&admin_state.registry)
}

/// Applies reloads until `stop`; returns every dispatcher generation still running
/// (the current one, and older ones whose config is still in use), to be drained.
async fn reload_loop(
    mut reloads: mpsc::Receiver<Reload>,
    mut running: Config,
    mut current: Dispatchers,
    admin: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Dispatchers> {
    let proxy = admin.proxy.clone();
    let shadow_drain = running.shadow_drain.get();
    // Older generations retire once no request holds their config any more.
    let mut retiring: JoinSet<Option<Dispatchers>> = JoinSet::new();
    let (retire_now, retire_rx) = watch::channel(false);
    loop {
        let reload = tokio::select! {
            _ = stopped(&mut stop) => break,
            r = reloads.recv() => match r {
                Some(r) => r,
                None => {
                    stopped(&mut stop).await;
                    break;
                }
            },
        };
        match reload {
            Reload::Failed(reason) => {
                proxy.metrics().config_reload(false);
                tracing::error!(%reason, "config reload failed; the running config stays");
            }
            Reload::Apply(config) => {
                for note in restart_only_changes(&running, &config) {
                    tracing::warn!("config reload: {note} takes effect only after a restart");
                }
                let old = proxy.reload(&config);
                let previous =
                    std::mem::replace(&mut current, Dispatchers::start(&proxy.shadow_clusters()));
                let held = Arc::downgrade(&old);
                drop(old);
                let mut now = retire_rx.clone();
                retiring.spawn(async move {
                    // Requests in progress on the old config may still offer copies to
                    // its shadow queues; those drain once the last of them is done.
                    while held.strong_count() > 0 && !*now.borrow() {
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                            _ = stopped(&mut now) => {}
                        }
                    }
                    if *now.borrow() {
                        return Some(previous);
                    }
                    previous.drain(shadow_drain).await;
                    None
                });
                admin
                    .config
                    .store(Arc::new(report::config(&config).to_string()));
                proxy.metrics().config_reload(true);
                tracing::info!(
                    routes = config.routes.len(),
                    clusters = config.clusters.len(),
                    "config reloaded"
                );
                running = *config;
            }
        }
        while retiring.try_join_next().is_some() {}
    }
    let _ = retire_now.send(true);
    let mut generations = vec![current];
    while let Some(done) = retiring.join_next().await {
        if let Ok(Some(d)) = done {
            generations.push(d);
        }
    }
    generations
}

/// What a reload cannot change on a running process.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listener_addrs() != new.listener_addrs() {
        out.push("a listener change");
    }
    if old.admin_addr() != new.admin_addr() {
        out.push("an admin address change");
    }
    let (a, b) = (&old.limits, &new.limits);
    if a.request_head_timeout.value != b.request_head_timeout.value
        || a.idle_timeout.value != b.idle_timeout.value
        || a.write_timeout.value != b.write_timeout.value
        || a.max_connections.value != b.max_connections.value
        || a.max_concurrent_streams.value != b.max_concurrent_streams.value
        || a.max_header_bytes.value != b.max_header_bytes.value
    {
        out.push("a change to connection limits (head, idle and write timeouts, max_connections, max_concurrent_streams, max_header_bytes)");
    }
    if old.drain_timeout != new.drain_timeout || old.shadow_drain != new.shadow_drain {
        out.push("a drain_timeout or shadow_drain change");
    }
    out
}

/// Runs futures side by side and waits for all of them.
async fn futures_join_all<F: Future<Output = ()> + Send + 'static>(futs: Vec<F>) {
    let mut set = JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

/// Completes once `rx` holds `true` (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
