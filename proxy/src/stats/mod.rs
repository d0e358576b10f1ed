//! Per-path statistics: for every (route, path template) the primary leg and each shadow
//! leg side by side (latency quantiles, errors, statuses, comparison results, drops), kept
//! in atomics so recording never locks. Path templates are bounded per route: past
//! `max_paths` every new path is `{other}`.

pub(crate) mod histogram;
pub(crate) mod pairs;
pub(crate) mod template;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::StatusCode;

use crate::metrics::{
    CompareMetrics, CompareResult, DropReason, Leg, LegMetrics, Metrics, SkipReason,
};
use histogram::AtomicHistogram;
use template::{Template, normalise};

/// The template for paths past the cap.
pub(crate) const OTHER: &str = "{other}";

/// One leg's figures for one path.
///
/// The latency kept here (for quantiles and shadow/primary ratios) is the time from
/// sending the leg to its response head: measured the same way on both legs. The time to
/// the end of the body is in the Prometheus histograms; for the primary it includes the
/// client's reading speed, which would bias a comparison.
#[derive(Default)]
pub(crate) struct LegStats {
    /// From sending to the response head, exchanges that got one.
    pub(crate) latency: AtomicHistogram,
    /// Exchanges attempted.
    pub(crate) count: AtomicU64,
    /// Failures (no response) and 5xx answers.
    pub(crate) errors: AtomicU64,
}

impl LegStats {
    /// An exchange that got a response head `elapsed` after it was sent.
    pub(crate) fn head(&self, status: StatusCode, elapsed: Duration) {
        self.latency.record(elapsed);
        self.count.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// An exchange that failed before any response.
    pub(crate) fn failed(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Requests per second over the last few seconds.
pub(crate) struct RateWindow {
    epoch: Instant,
    /// Per slot: the second it counts (high 32 bits) and its count (low 32 bits), updated
    /// together so a new second's first tick cannot wipe a concurrent one.
    slots: [AtomicU64; 10],
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            epoch: Instant::now(),
            slots: Default::default(),
        }
    }
}

impl RateWindow {
    pub(crate) fn tick(&self) {
        let sec = self.epoch.elapsed().as_secs() & 0xffff_ffff;
        let slot = &self.slots[(sec % 10) as usize];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(if v >> 32 == sec {
                v.saturating_add(1)
            } else {
                (sec << 32) | 1
            })
        });
    }

    /// Mean over the last complete seconds (up to 9, or fewer when the path is younger).
    pub(crate) fn per_second(&self) -> f64 {
        let now = self.epoch.elapsed().as_secs() & 0xffff_ffff;
        let span = now.min(9);
        if span == 0 {
            return 0.0;
        }
        let total: u64 = (1..=span)
            .map(|back| now - back)
            .map(|sec| {
                let v = self.slots[(sec % 10) as usize].load(Ordering::Relaxed);
                if v >> 32 == sec { v & 0xffff_ffff } else { 0 }
            })
            .sum();
        total as f64 / span as f64
    }
}

/// One shadow's figures for one path.
pub(crate) struct ShadowPathStats {
    pub(crate) shadow: String,
    pub(crate) leg: LegStats,
    results: [AtomicU64; 6],
    drops: [AtomicU64; DropReason::ALL.len()],
    /// Paired observations for the verdict.
    pub(crate) pairs: pairs::Pairs,
    leg_metrics: LegMetrics,
    compare_metrics: CompareMetrics,
}

impl ShadowPathStats {
    pub(crate) fn dropped(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn compared(&self, r: CompareResult, skipped: Option<SkipReason>) {
        self.results[r as usize].fetch_add(1, Ordering::Relaxed);
        self.compare_metrics.result(r, skipped);
    }

    pub(crate) fn head(&self, status: StatusCode, elapsed: Duration) {
        self.leg.head(status, elapsed);
        self.leg_metrics.head(status, elapsed);
    }

    pub(crate) fn end(&self, elapsed: Duration) {
        self.leg_metrics.end(elapsed);
    }

    pub(crate) fn result_count(&self, r: CompareResult) -> u64 {
        self.results[r as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn drop_counts(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// Everything known about one (route, path template).
pub(crate) struct PathEntry {
    pub(crate) route: String,
    pub(crate) template: String,
    pub(crate) primary: LegStats,
    primary_metrics: LegMetrics,
    /// In the order of the route's shadow policies.
    pub(crate) shadows: Vec<ShadowPathStats>,
    pub(crate) rate: RateWindow,
}

impl PathEntry {
    /// The primary's response head arrived `elapsed` after the request was sent.
    pub(crate) fn primary_head(&self, status: StatusCode, elapsed: Duration) {
        self.rate.tick();
        self.primary.head(status, elapsed);
        self.primary_metrics.head(status, elapsed);
    }

    pub(crate) fn primary_failed(&self) {
        self.rate.tick();
        self.primary.failed();
        self.primary_metrics.failed();
    }

    pub(crate) fn primary_end(&self, elapsed: Duration) {
        self.primary_metrics.end(elapsed);
    }
}

/// Builds path entries for one route.
struct PathFactory {
    route: String,
    /// The verdict's window (each shadow's pairs rotate windows of this length).
    window: Duration,
    primary_cluster: String,
    shadow_clusters: Vec<String>,
    metrics: Arc<Metrics>,
}

impl PathFactory {
    fn make(&self, template: &str) -> Arc<PathEntry> {
        let m = &self.metrics;
        Arc::new(PathEntry {
            route: self.route.clone(),
            template: template.to_string(),
            primary: LegStats::default(),
            primary_metrics: m.path_leg(&self.route, template, Leg::primary, &self.primary_cluster),
            shadows: self
                .shadow_clusters
                .iter()
                .map(|s| ShadowPathStats {
                    shadow: s.clone(),
                    leg: LegStats::default(),
                    results: Default::default(),
                    drops: Default::default(),
                    pairs: pairs::Pairs::new(self.window),
                    leg_metrics: m.path_leg(&self.route, template, Leg::shadow, s),
                    compare_metrics: m.compare(&self.route, template, s),
                })
                .collect(),
            rate: RateWindow::default(),
        })
    }
}

/// The path templates of one route and their entries.
pub(crate) struct PathRegistry {
    factory: PathFactory,
    explicit: Vec<(Template, Arc<PathEntry>)>,
    seen: ArcSwap<HashMap<Box<str>, Arc<PathEntry>>>,
    other: Arc<PathEntry>,
    max_paths: usize,
    insert: Mutex<()>,
}

impl PathRegistry {
    pub(crate) fn new(
        route: &str,
        templates: &[String],
        max_paths: usize,
        primary_cluster: &str,
        shadow_clusters: Vec<String>,
        metrics: Arc<Metrics>,
        window: Duration,
    ) -> Self {
        let factory = PathFactory {
            route: route.to_string(),
            window,
            primary_cluster: primary_cluster.to_string(),
            shadow_clusters,
            metrics,
        };
        PathRegistry {
            other: factory.make(OTHER),
            explicit: templates
                .iter()
                .map(|t| (Template::parse(t), factory.make(t)))
                .collect(),
            factory,
            seen: ArcSwap::from_pointee(HashMap::new()),
            max_paths,
            insert: Mutex::new(()),
        }
    }

    /// The entry for a request path: a configured template, else the normalised path,
    /// else `{other}` once the route has `max_paths` of them.
    pub(crate) fn entry(&self, raw_path: &str) -> Arc<PathEntry> {
        if let Some((_, e)) = self.explicit.iter().find(|(t, _)| t.matches(raw_path)) {
            return e.clone();
        }
        let name = normalise(raw_path);
        {
            let seen = self.seen.load();
            if let Some(e) = seen.get(name.as_ref()) {
                return e.clone();
            }
            // Past the cap no lock is taken: a flood of new paths stays lock-free.
            if seen.len() >= self.max_paths {
                return self.other.clone();
            }
        }
        let _guard = self.insert.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.seen.load_full();
        if let Some(e) = current.get(name.as_ref()) {
            return e.clone();
        }
        if current.len() >= self.max_paths {
            return self.other.clone();
        }
        let entry = self.factory.make(&name);
        let mut next = HashMap::clone(&current);
        next.insert(name.into_owned().into_boxed_str(), entry.clone());
        self.seen.store(Arc::new(next));
        entry
    }

    /// Every entry with traffic, `{other}` included.
    pub(crate) fn entries(&self) -> Vec<Arc<PathEntry>> {
        let mut all: Vec<Arc<PathEntry>> = self.explicit.iter().map(|(_, e)| e.clone()).collect();
        all.extend(self.seen.load().values().cloned());
        all.push(self.other.clone());
        all.retain(|e| e.primary.count.load(Ordering::Relaxed) > 0);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max: usize) -> PathRegistry {
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        PathRegistry::new(
            "r",
            &["/users/{id}".to_string()],
            max,
            "p",
            vec!["c".into()],
            metrics,
            Duration::from_secs(300),
        )
    }

    #[test]
    fn configured_templates_first_then_normalised_then_other_past_the_cap() {
        let reg = registry(3);
        assert_eq!(reg.entry("/users/alice").template, "/users/{id}");
        assert_eq!(reg.entry("/orders/17").template, "/orders/{id}");
        assert_eq!(reg.entry("/orders/18").template, "/orders/{id}");
        assert!(Arc::ptr_eq(
            &reg.entry("/orders/1"),
            &reg.entry("/orders/2")
        ));
        assert_eq!(reg.entry("/a").template, "/a");
        assert_eq!(reg.entry("/b").template, "/b");
        // Three distinct templates seen: the cap is reached.
        assert_eq!(reg.entry("/c").template, OTHER);
        assert_eq!(reg.entry("/d/9").template, OTHER);
        assert_eq!(reg.entry("/a").template, "/a", "known templates stay");
        assert_eq!(
            reg.entry("/users/bob").template,
            "/users/{id}",
            "configured templates are outside the cap"
        );
        for i in 0..10_000 {
            reg.entry(&format!("/unique/path-{i}x"));
        }
        assert_eq!(reg.seen.load().len(), 3, "bounded whatever the traffic");
    }

    #[test]
    fn entries_list_paths_with_traffic() {
        let reg = registry(10);
        let e = reg.entry("/x/1");
        e.primary_head(StatusCode::OK, Duration::from_millis(1));
        e.primary_end(Duration::from_millis(2));
        reg.entry("/never/used");
        let names: Vec<String> = reg.entries().iter().map(|e| e.template.clone()).collect();
        assert_eq!(names, ["/x/{id}"]);
        assert_eq!(e.primary.latency.count(), 1);
        assert_eq!(e.shadows.len(), 1);
    }

    #[test]
    fn rate_window_averages_complete_seconds_and_ticks_the_current_one() {
        let w = RateWindow {
            epoch: Instant::now() - Duration::from_millis(3500),
            slots: Default::default(),
        };
        w.slots[2].store((2 << 32) | 10, Ordering::Relaxed);
        w.slots[1].store((1 << 32) | 4, Ordering::Relaxed);
        w.slots[9].store((9 << 32) | 99, Ordering::Relaxed); // a stale second: ignored
        assert!(
            (w.per_second() - 14.0 / 3.0).abs() < 1e-9,
            "{}",
            w.per_second()
        );
        w.tick();
        w.tick();
        assert_eq!(
            w.slots[3].load(Ordering::Relaxed),
            (3 << 32) | 2,
            "the current second counts ticks"
        );
    }

    #[test]
    fn rate_window_counts_recent_seconds() {
        let w = RateWindow::default();
        w.tick();
        assert_eq!(w.per_second(), 0.0, "no complete second yet");
    }
}
