//! Applying a new config to a running process: a new snapshot is built and swapped in for
//! the next request (requests in progress finish on theirs), its shadow dispatchers start,
//! and the old snapshot's queues close by themselves once nothing holds them. What only a
//! restart can change (listeners, connection-level limits, drain times) is logged. TLS
//! listeners re-read their certificates, keys and client CAs on every reload.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::proxy::Snapshots;
use crate::proxy::snapshot::{Shared, Snapshot};
use crate::shadow::dispatch::Dispatchers;
use crate::shutdown::stopped;
use crate::tls::TlsListener;

/// A config reload, as the caller read it (for example on SIGHUP).
pub enum Reload {
    /// A valid config: served from the next request on.
    Apply(Box<Config>),
    /// The config could not be read or is invalid: the running one stays. The reason is
    /// logged and counted.
    Failed(String),
}

impl Reload {
    /// Reads, checks and types the config file (as SIGHUP and the file watch do).
    pub fn load(path: &std::path::Path) -> Reload {
        match Config::load(path) {
            Ok(c) => Reload::Apply(Box::new(c)),
            Err(e) => Reload::Failed(e.to_string()),
        }
    }
}

/// Everything a reload changes.
pub(crate) struct Reloader {
    pub(crate) shared: Shared,
    pub(crate) snapshots: Snapshots,
    pub(crate) dispatchers: Arc<Dispatchers>,
    running: Mutex<Arc<Config>>,
    /// TLS listeners: their files are re-read on every reload (SIGHUP), whatever the config
    /// file holds.
    tls: Vec<Arc<TlsListener>>,
}

impl Reloader {
    pub(crate) fn new(
        shared: Shared,
        snapshots: Snapshots,
        dispatchers: Arc<Dispatchers>,
        running: Arc<Config>,
        tls: Vec<Arc<TlsListener>>,
    ) -> Self {
        Reloader {
            shared,
            snapshots,
            dispatchers,
            running: Mutex::new(running),
            tls,
        }
    }

    /// Applies one reload.
    pub(crate) fn apply(&self, reload: Reload) {
        for t in &self.tls {
            t.reload();
        }
        match reload {
            Reload::Failed(reason) => {
                self.shared.metrics.config_reload(false);
                tracing::error!(%reason, "config reload failed; the running config stays");
            }
            Reload::Apply(config) => {
                let config = Arc::new(*config);
                let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
                for note in restart_only_changes(&running, &config) {
                    tracing::warn!("config reload: {note} takes effect only after a restart");
                }
                let current = self.snapshots.load_full();
                let (next, dispatchers) =
                    Snapshot::build(config.clone(), &self.shared, Some(&current));
                self.dispatchers.start(dispatchers);
                self.snapshots.store(Arc::new(next));
                self.shared.metrics.config_reload(true);
                tracing::info!(
                    routes = config.routes.len(),
                    clusters = config.clusters.len(),
                    "config reloaded"
                );
                *running = config;
            }
        }
    }

    /// Applies reloads as they arrive, until `stop`.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut reloads: mpsc::Receiver<Reload>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                r = reloads.recv() => match r {
                    Some(r) => self.apply(r),
                    None => return stopped(&mut stop).await,
                },
            }
        }
    }
}

/// What a reload cannot change on a running process.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listeners != new.listeners {
        out.push("a listener change");
    }
    if old.admin.address != new.admin.address
        || old.admin.metrics_address != new.admin.metrics_address
    {
        out.push("an admin address change");
    }
    if old.drain_delay != new.drain_delay {
        out.push("a drain_delay change");
    }
    let (a, b) = (&old.limits, &new.limits);
    if a.request_head_timeout != b.request_head_timeout
        || a.idle_timeout != b.idle_timeout
        || a.write_timeout != b.write_timeout
        || a.max_connections != b.max_connections
        || a.max_concurrent_streams != b.max_concurrent_streams
        || a.max_header_bytes != b.max_header_bytes
    {
        out.push("a change to connection limits (head, idle and write timeouts, max_connections, max_concurrent_streams, max_header_bytes)");
    }
    if old.drain_timeout != new.drain_timeout || old.shadow_drain != new.shadow_drain {
        out.push("a drain_timeout or shadow_drain change");
    }
    out
}
