//! Paired observations of one (route, path template, shadow): for each compared request,
//! the control leg (the primary, or the baseline when the shadow has one) and the shadow
//! leg side by side: time to the response head (each leg timed from having sent the whole
//! request), failure, the comparison's result and its differing fields. Kept three ways,
//! all bounded: totals since start (or the last reset) and totals of the current window
//! (windows of `window` one after another, each a fresh sequential test: see
//! `shadow::verdict`), both in fixed-size histograms and counters, and the most recent
//! observations (at most `RING`) for the charts. Recorded by shadow tasks only, never on
//! the primary path; the verdict reads them.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Observations kept for the sliding window at most.
pub(crate) const RING: usize = 2048;
/// Distinct field names tracked per path and shadow; further ones count as `OTHER_FIELD`.
pub(crate) const MAX_FIELDS: usize = 31;
/// The name the fields past `MAX_FIELDS` share.
pub(crate) const OTHER_FIELD: &str = "(other fields)";

/// Since-start histogram of d = ln(shadow / control): bins this wide on [-D_MAX, D_MAX],
/// plus one below and one above.
pub(crate) const D_WIDTH: f64 = 0.005;
pub(crate) const D_MAX: f64 = 3.0;
const D_BINS: usize = (2.0 * D_MAX / D_WIDTH) as usize + 2;
/// Since-start latency histograms: buckets growing 2 % from 10 us, plus one below and one
/// above 100 s.
const L_MIN_US: f64 = 10.0;
const L_RATIO: f64 = 1.02;
const L_BINS: usize = 816;

/// One leg of one request, as the pairs see it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct LegObs {
    /// Time to the response head; `None` when no head came.
    pub(crate) head: Option<Duration>,
    /// No response, or a 5xx (or a gRPC error status), or a body that broke off.
    pub(crate) failed: bool,
}

/// What one compared request leaves in the pairs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observation {
    pub(crate) control: LegObs,
    pub(crate) shadow: LegObs,
    /// The comparison gave a result (match or mismatch), not a skip.
    pub(crate) compared: bool,
    /// The shadow differed from the primary (beyond what the baseline also differed in).
    pub(crate) mismatch: bool,
    /// Compared with a baseline: a difference counts as a mismatch only in a field where
    /// the baseline has never differed (the per-field verdict weighs noisy fields).
    pub(crate) paired: bool,
    /// Fields in which the shadow's answer differed from the primary's.
    pub(crate) shadow_fields: Vec<String>,
    /// Fields in which the control's answer differed from the primary's (the baseline's:
    /// always empty without one).
    pub(crate) control_fields: Vec<String>,
}

/// One observation as the window keeps it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kept {
    /// Milliseconds since the pairs' epoch.
    pub(crate) at_ms: u64,
    /// Microseconds to the head; `u32::MAX`: none.
    pub(crate) control_us: u32,
    pub(crate) shadow_us: u32,
    flags: u8,
}

const F_COMPARED: u8 = 4;
const F_MISMATCH: u8 = 8;

impl Kept {
    pub(crate) fn compared(&self) -> bool {
        self.flags & F_COMPARED != 0
    }
    pub(crate) fn mismatch(&self) -> bool {
        self.flags & F_MISMATCH != 0
    }
    /// Both legs' times, in seconds, when both got a head.
    pub(crate) fn times(&self) -> Option<(f64, f64)> {
        (self.control_us != u32::MAX && self.shadow_us != u32::MAX)
            .then(|| (secs(self.control_us), secs(self.shadow_us)))
    }
}

fn secs(us: u32) -> f64 {
    f64::from(us.max(1)) / 1e6
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros())
        .unwrap_or(u32::MAX - 1)
        .min(u32::MAX - 1)
}

/// Per field since start: requests where only the shadow differed there, only the
/// control, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FieldCounts {
    pub(crate) only_shadow: u64,
    pub(crate) only_control: u64,
    pub(crate) both: u64,
}

/// Totals since start or the last reset.
#[derive(Debug, Clone)]
pub(crate) struct Totals {
    pub(crate) since: Instant,
    pub(crate) observations: u64,
    pub(crate) control_failed: u64,
    pub(crate) shadow_failed: u64,
    /// Requests where only the shadow failed / only the control failed.
    pub(crate) only_shadow_failed: u64,
    pub(crate) only_control_failed: u64,
    pub(crate) compared: u64,
    pub(crate) mismatches: u64,
    /// Histogram of ln(shadow / control) over requests where both legs got a head.
    d: Vec<u64>,
    pub(crate) latency_pairs: u64,
    control: Vec<u64>,
    shadow: Vec<u64>,
    /// Indexed like the field names.
    pub(crate) fields: Vec<FieldCounts>,
}

impl Totals {
    fn new(since: Instant) -> Self {
        Totals {
            since,
            observations: 0,
            control_failed: 0,
            shadow_failed: 0,
            only_shadow_failed: 0,
            only_control_failed: 0,
            compared: 0,
            mismatches: 0,
            d: Vec::new(),
            latency_pairs: 0,
            control: Vec::new(),
            shadow: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// The `k`-th smallest (0-based) ln(shadow / control) since start, to within half a
    /// bin (`D_WIDTH / 2`); values beyond +-`D_MAX` read as +-`D_MAX`.
    pub(crate) fn kth_log_ratio(&self, k: usize) -> f64 {
        self.kth_log_ratio_at(k, 0.5)
    }

    /// The same, read at `edge` of its bin (0: the lower edge, 1: the upper): a lower
    /// bound read at lower edges and an upper bound at upper edges stay bounds.
    pub(crate) fn kth_log_ratio_at(&self, k: usize, edge: f64) -> f64 {
        kth(&self.d, k, |i| match i {
            0 => -D_MAX,
            i if i == D_BINS - 1 => D_MAX,
            i => -D_MAX + (i as f64 - 1.0 + edge) * D_WIDTH,
        })
    }

    /// The legs' `q`-quantile since start, in seconds (2 % resolution).
    #[cfg(test)]
    pub(crate) fn quantiles(&self, q: f64) -> Option<(f64, f64)> {
        let n = self.latency_pairs as usize;
        if n == 0 {
            return None;
        }
        let k = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        Some((
            kth(&self.control, k, latency_value),
            kth(&self.shadow, k, latency_value),
        ))
    }

    /// The sorted since-start latencies of both legs as seen through `kth`-style access
    /// (for quantile intervals).
    pub(crate) fn kth_latency(&self, shadow: bool, k: usize) -> f64 {
        kth(
            if shadow { &self.shadow } else { &self.control },
            k,
            latency_value,
        )
    }
}

fn kth(counts: &[u64], k: usize, value: impl Fn(usize) -> f64) -> f64 {
    let mut seen = 0u64;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen > k as u64 {
            return value(i);
        }
    }
    value(counts.len().saturating_sub(1))
}

fn d_bin(d: f64) -> usize {
    if d < -D_MAX {
        0
    } else if d >= D_MAX {
        D_BINS - 1
    } else {
        (((d + D_MAX) / D_WIDTH).floor() as usize + 1).min(D_BINS - 2)
    }
}

fn latency_bin(s: f64) -> usize {
    let us = s * 1e6;
    if us < L_MIN_US {
        return 0;
    }
    (((us / L_MIN_US).ln() / L_RATIO.ln()).floor() as usize + 1).min(L_BINS - 1)
}

fn latency_value(i: usize) -> f64 {
    match i {
        0 => L_MIN_US / 2.0 / 1e6,
        i => L_MIN_US * L_RATIO.powf(i as f64 - 1.0) * L_RATIO.sqrt() / 1e6,
    }
}

fn bump(v: &mut Vec<u64>, len: usize, i: usize) {
    if v.is_empty() {
        v.resize(len, 0);
    }
    v[i] += 1;
}

struct Inner {
    ring: std::collections::VecDeque<Kept>,
    totals: Totals,
    /// The current window's totals, and its number (1 for the first since start or reset).
    block: Totals,
    block_index: u64,
    /// Field names, indexed by bit (the last one, `OTHER_FIELD`, once full).
    names: Vec<String>,
    /// Candidate copies whose baseline copy never came (dropped or not sent).
    unpaired: u64,
}

/// The pairs of one (route, path template, shadow).
pub(crate) struct Pairs {
    pub(crate) epoch: Instant,
    /// The length of one window.
    window: Duration,
    inner: Mutex<Inner>,
}

impl Default for Pairs {
    fn default() -> Self {
        Pairs::new(Duration::from_secs(300))
    }
}

impl Inner {
    /// Starts a new window once the current one is `window` old.
    fn rotate(&mut self, window: Duration, now: Instant) {
        if now.saturating_duration_since(self.block.since) >= window {
            self.block = Totals::new(now);
            self.block_index += 1;
        }
    }

    fn bit(&mut self, name: &str) -> u32 {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return 1 << i;
        }
        if self.names.len() < MAX_FIELDS {
            self.names.push(name.to_string());
            return 1 << (self.names.len() - 1);
        }
        if self.names.len() == MAX_FIELDS {
            self.names.push(OTHER_FIELD.to_string());
        }
        1 << MAX_FIELDS
    }

    fn mask(&mut self, fields: &[String]) -> u32 {
        fields.iter().fold(0, |m, f| m | self.bit(f))
    }
}

/// What the verdict reads: a consistent copy taken under the lock.
pub(crate) struct PairsView {
    /// The recent observations within the window's length (for the charts).
    pub(crate) recent: Vec<Kept>,
    pub(crate) totals: Totals,
    /// The current window and its number (1, 2, ... since start or reset).
    pub(crate) block: Totals,
    pub(crate) block_index: u64,
    pub(crate) names: Vec<String>,
    pub(crate) unpaired: u64,
    /// Milliseconds since the epoch now (for the window's start and chart buckets).
    pub(crate) now_ms: u64,
}

impl Pairs {
    pub(crate) fn new(window: Duration) -> Self {
        let now = Instant::now();
        Pairs {
            epoch: now,
            window,
            inner: Mutex::new(Inner {
                ring: std::collections::VecDeque::new(),
                totals: Totals::new(now),
                block: Totals::new(now),
                block_index: 1,
                names: Vec::new(),
                unpaired: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, o: &Observation) {
        self.record_at(o, Instant::now());
    }

    pub(crate) fn record_at(&self, o: &Observation, now: Instant) {
        let mut g = self.lock();
        let at_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        g.rotate(self.window, now);
        let shadow_fields = g.mask(&o.shadow_fields);
        let control_fields = g.mask(&o.control_fields);
        let mismatch = if o.paired {
            let noisy = g
                .totals
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.only_control + f.both > 0)
                .fold(control_fields, |m, (i, _)| m | 1 << i);
            o.compared && shadow_fields & !noisy != 0
        } else {
            o.mismatch
        };
        let mut flags = 0;
        if o.compared {
            flags |= F_COMPARED;
        }
        if mismatch {
            flags |= F_MISMATCH;
        }
        let kept = Kept {
            at_ms,
            control_us: o.control.head.map_or(u32::MAX, micros),
            shadow_us: o.shadow.head.map_or(u32::MAX, micros),
            flags,
        };
        if g.ring.len() == RING {
            g.ring.pop_front();
        }
        g.ring.push_back(kept);
        let fields_len = g.names.len();
        let add = |t: &mut Totals| {
            t.observations += 1;
            t.control_failed += u64::from(o.control.failed);
            t.shadow_failed += u64::from(o.shadow.failed);
            t.only_shadow_failed += u64::from(o.shadow.failed && !o.control.failed);
            t.only_control_failed += u64::from(o.control.failed && !o.shadow.failed);
            t.compared += u64::from(o.compared);
            t.mismatches += u64::from(mismatch);
            if let Some((c, s)) = kept.times() {
                t.latency_pairs += 1;
                bump(&mut t.d, D_BINS, d_bin((s / c).ln()));
                bump(&mut t.control, L_BINS, latency_bin(c));
                bump(&mut t.shadow, L_BINS, latency_bin(s));
            }
            if o.compared {
                t.fields.resize(fields_len, FieldCounts::default());
                for (i, f) in t.fields.iter_mut().enumerate() {
                    match (shadow_fields >> i & 1 == 1, control_fields >> i & 1 == 1) {
                        (true, true) => f.both += 1,
                        (true, false) => f.only_shadow += 1,
                        (false, true) => f.only_control += 1,
                        (false, false) => {}
                    }
                }
            }
        };
        add(&mut g.totals);
        add(&mut g.block);
    }

    /// A candidate copy whose baseline copy never came.
    pub(crate) fn unpaired(&self) {
        self.lock().unpaired += 1;
    }

    /// Starts comparing afresh: the window and the totals are emptied.
    pub(crate) fn reset(&self) {
        let mut g = self.lock();
        let now = Instant::now();
        g.ring.clear();
        g.totals = Totals::new(now);
        g.block = Totals::new(now);
        g.block_index = 1;
        g.names.clear();
        g.unpaired = 0;
    }

    /// The totals (since start, the current window) and the recent observations.
    pub(crate) fn view(&self) -> PairsView {
        self.view_at(Instant::now())
    }

    pub(crate) fn view_at(&self, now: Instant) -> PairsView {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let from = now_ms.saturating_sub(self.window.as_millis() as u64);
        let mut g = self.lock();
        g.rotate(self.window, now);
        let start = g.ring.partition_point(|k| k.at_ms < from);
        PairsView {
            recent: g.ring.range(start..).copied().collect(),
            totals: g.totals.clone(),
            block: g.block.clone(),
            block_index: g.block_index,
            names: g.names.clone(),
            unpaired: g.unpaired,
            now_ms,
        }
    }

    /// Whether anything was recorded since start or the last reset.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().totals.observations == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(c_ms: u64, s_ms: u64) -> Observation {
        Observation {
            control: LegObs {
                head: Some(Duration::from_millis(c_ms)),
                failed: false,
            },
            shadow: LegObs {
                head: Some(Duration::from_millis(s_ms)),
                failed: false,
            },
            compared: true,
            ..Observation::default()
        }
    }

    #[test]
    fn windows_follow_one_another_and_the_totals_keep_all() {
        let p = Pairs::new(Duration::from_secs(300));
        let t0 = p.epoch;
        for i in 0..10u64 {
            p.record_at(&obs(10, 12), t0 + Duration::from_secs(i * 60));
        }
        let v = p.view_at(t0 + Duration::from_secs(9 * 60));
        assert_eq!(v.recent.len(), 6, "the charts: minutes 4 to 9");
        assert_eq!(
            (v.block_index, v.block.observations),
            (2, 5),
            "the second window: minutes 5 to 9"
        );
        assert_eq!(v.totals.observations, 10);
        assert_eq!(v.totals.latency_pairs, 10);
        let d = v.totals.kth_log_ratio(4);
        assert!((d - 1.2f64.ln()).abs() <= D_WIDTH, "{d}");
        assert!(v.totals.kth_log_ratio_at(4, 0.0) <= 1.2f64.ln());
        assert!(v.totals.kth_log_ratio_at(4, 1.0) >= 1.2f64.ln());
        let (c, s) = v.totals.quantiles(0.5).unwrap();
        assert!((c - 0.010).abs() / 0.010 < 0.02 && (s - 0.012).abs() / 0.012 < 0.02);
        // A view after a quiet window starts the next one.
        let v = p.view_at(t0 + Duration::from_secs(15 * 60));
        assert_eq!((v.block_index, v.block.observations), (3, 0));
        for _ in 0..RING + 5 {
            p.record_at(&obs(1, 1), t0 + Duration::from_secs(960));
        }
        let v = p.view_at(t0 + Duration::from_secs(960));
        assert_eq!(v.recent.len(), RING, "bounded");
        assert_eq!(v.block.observations, RING as u64 + 5, "counted, not kept");
        p.reset();
        let v = p.view();
        assert!(v.recent.is_empty() && v.totals.observations == 0 && p.is_empty());
        assert_eq!((v.block_index, v.block.observations), (1, 0));
    }

    #[test]
    fn failures_and_fields_are_counted_per_request() {
        let p = Pairs::default();
        let mut o = obs(5, 5);
        o.shadow.failed = true;
        o.shadow.head = None;
        o.mismatch = true;
        o.shadow_fields = vec!["/id".into(), "/name".into()];
        o.control_fields = vec!["/id".into()];
        p.record(&o);
        let mut o = obs(5, 5);
        o.control.failed = true;
        o.control_fields = vec!["/id".into()];
        p.record(&o);
        let v = p.view();
        let t = &v.totals;
        assert_eq!((t.only_shadow_failed, t.only_control_failed), (1, 1));
        assert_eq!(t.latency_pairs, 1, "a leg without a head has no time");
        assert_eq!(v.names, ["/id", "/name"]);
        assert_eq!(
            t.fields[0],
            FieldCounts {
                only_shadow: 0,
                only_control: 1,
                both: 1
            }
        );
        assert_eq!(t.fields[1].only_shadow, 1);
        assert!(v.recent[0].mismatch() && v.recent[0].times().is_none());
        assert_eq!(v.block.fields, t.fields, "the window counts the same");
    }

    #[test]
    fn field_names_are_bounded() {
        let p = Pairs::default();
        let mut o = obs(1, 1);
        o.shadow_fields = (0..100).map(|i| format!("/f{i}")).collect();
        p.record(&o);
        let v = p.view();
        assert_eq!(v.names.len(), MAX_FIELDS + 1);
        assert_eq!(v.names[MAX_FIELDS], OTHER_FIELD);
        assert_eq!(v.totals.fields.len(), MAX_FIELDS + 1);
    }
}
