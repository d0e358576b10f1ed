//! Runtime control of shadow policies (the admin API's `POST /api/shadows/{route}/{cluster}`):
//! pause a shadow, resume it, or override its percent, at once for new requests. A
//! control outlives reloads: it is kept for as long as the route still has that shadow and
//! the file leaves that shadow's settings as they were; when the file changes the shadow
//! (or removes it), the file wins and the runtime change is dropped (logged and counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use super::sample;
use crate::config::{Config, ShadowConfig};
use crate::metrics::{ControlChange, Metrics, ShadowControlMetrics};

/// A runtime change to one shadow policy, as the admin API shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Override {
    pub(crate) paused: bool,
    /// Replaces the file's `percent` while set.
    pub(crate) percent: Option<f64>,
}

impl Override {
    fn is_none(&self) -> bool {
        *self == Override::default()
    }
}

/// The runtime state of one (route, shadow cluster) policy, shared by every snapshot that
/// has that policy.
pub(crate) struct ShadowControl {
    paused: AtomicBool,
    /// The overriding sampling threshold plus one; 0: none (the file's percent applies).
    threshold: AtomicU64,
    state: Mutex<State>,
    metrics: ShadowControlMetrics,
}

struct State {
    current: Override,
    /// The file's percent for this shadow.
    file_percent: f64,
    /// The file's settings for this shadow, as last applied: a reload that changes them
    /// drops the runtime change.
    fingerprint: String,
}

impl ShadowControl {
    fn new(config: &ShadowConfig, metrics: ShadowControlMetrics) -> Self {
        let c = ShadowControl {
            paused: AtomicBool::new(false),
            threshold: AtomicU64::new(0),
            state: Mutex::new(State {
                current: Override::default(),
                file_percent: config.percent,
                fingerprint: fingerprint(config),
            }),
            metrics,
        };
        c.metrics.show(false, config.percent);
        c
    }

    /// Paused at runtime: every copy is dropped `paused`.
    pub(crate) fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// The sampling threshold that replaces the file's, if any.
    pub(crate) fn threshold(&self) -> Option<u64> {
        match self.threshold.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t - 1),
        }
    }

    /// The runtime change in force, and the percent that applies (override or file).
    pub(crate) fn view(&self) -> (Override, f64, f64) {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (
            s.current,
            s.current.percent.unwrap_or(s.file_percent),
            s.file_percent,
        )
    }

    /// Applies a change from the admin API: `paused` and `percent` as given (`None`
    /// leaves each as it is); `reset` first returns to the file's settings.
    pub(crate) fn change(&self, reset: bool, paused: Option<bool>, percent: Option<f64>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if reset && !s.current.is_none() {
            s.current = Override::default();
            self.metrics.changed(ControlChange::reset);
        }
        if let Some(p) = paused
            && p != s.current.paused
        {
            s.current.paused = p;
            self.metrics.changed(if p {
                ControlChange::pause
            } else {
                ControlChange::resume
            });
        }
        if let Some(p) = percent {
            s.current.percent = Some(p);
            self.metrics.changed(ControlChange::percent);
        }
        self.publish(&s);
    }

    fn publish(&self, s: &State) {
        self.paused.store(s.current.paused, Ordering::Relaxed);
        let t = s.current.percent.map_or(0, |p| sample::threshold(p) + 1);
        self.threshold.store(t, Ordering::Relaxed);
        self.metrics.show(
            s.current.paused,
            s.current.percent.unwrap_or(s.file_percent),
        );
    }
}

/// A stable description of a shadow's settings as the file gives them.
fn fingerprint(c: &ShadowConfig) -> String {
    format!("{c:?}")
}

/// Every policy's control, by (route, shadow cluster).
#[derive(Default)]
pub(crate) struct Controls {
    map: Mutex<HashMap<(String, String), Arc<ShadowControl>>>,
}

impl Controls {
    /// The control of `route`'s policy for `config.cluster`: the one it had, unless the
    /// file changed that shadow's settings (then its runtime change is dropped).
    pub(crate) fn get(
        &self,
        route: &str,
        config: &ShadowConfig,
        metrics: impl FnOnce() -> ShadowControlMetrics,
    ) -> Arc<ShadowControl> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (route.to_string(), config.cluster.clone());
        if let Some(c) = map.get(&key) {
            let mut s = c.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = fingerprint(config);
            if s.fingerprint != now {
                if !s.current.is_none() {
                    tracing::warn!(
                        route,
                        shadow = %config.cluster,
                        "the config file changed this shadow: its runtime change (pause or percent) is dropped"
                    );
                    c.metrics.changed(ControlChange::file);
                }
                s.current = Override::default();
                s.fingerprint = now;
                s.file_percent = config.percent;
                c.publish(&s);
            }
            drop(s);
            return c.clone();
        }
        let c = Arc::new(ShadowControl::new(config, metrics()));
        map.insert(key, c.clone());
        c
    }

    /// Forgets the controls of policies `config` no longer has (a runtime change to one
    /// is dropped, logged and counted `file`), and their state series.
    pub(crate) fn retain(&self, config: &Config, metrics: &Metrics) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|(route, cluster), c| {
            let kept = config
                .routes
                .iter()
                .any(|r| &r.name == route && r.shadows.iter().any(|s| &s.cluster == cluster));
            if !kept {
                let s = c.state.lock().unwrap_or_else(PoisonError::into_inner);
                if !s.current.is_none() {
                    tracing::warn!(
                        route = %route,
                        shadow = %cluster,
                        "the config file removed this shadow: its runtime change (pause or percent) is dropped"
                    );
                    c.metrics.changed(ControlChange::file);
                }
                metrics.forget_shadow_control(route, cluster);
            }
            kept
        });
    }
}
