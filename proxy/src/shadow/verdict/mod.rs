//! The verdict: per (route, path template, shadow), is the shadow slower, faster,
//! different or failing more than its control (the primary, or the baseline when the
//! shadow has one), on the same requests? Computed from the paired observations
//! (`stats::pairs`) since start and over the current window, with anytime-valid intervals
//! and tests (`stats`), so a verdict watched live, refreshed every few seconds for hours,
//! keeps its error rate. A flag needs both: significance (the interval or test at the
//! configured confidence) and size (the practical threshold), and at least `min_pairs`
//! observations.
//!
//! The error budget alpha (1 - confidence) is split: alpha / 2 for the since-start
//! sequence, and alpha / 2 over the windows, window k (the k-th since start or reset)
//! getting alpha / 2 / (k (k + 1)) (these sum to alpha / 2). Windows follow one another
//! and each only grows while it lasts, so each is a sequential test of its own, and the
//! chance that any of them ever raises a given flag by chance stays below alpha / 2. Per
//! field, the `different` test splits its share over the fields tracked.
//!
//! - `slower` / `faster`: the median over requests of ln(shadow time / control time) has a
//!   confidence sequence entirely above (below) 0, and its estimate is beyond
//!   ln(1 + `slower_by`) (below -ln(1 + `slower_by`)).
//! - `errors`: among requests where exactly one leg failed, the shadow is the one
//!   significantly more often (a sequential McNemar test), and the shadow's failure rate
//!   exceeds the control's by `errors_by`.
//! - `different`: without a baseline, the mismatch rate's confidence sequence lies above
//!   `different_by`. With a baseline, per field: the candidate differs from the primary
//!   where the baseline did not significantly more often than the reverse (McNemar per
//!   field, the confidence split over the fields), by at least `different_by`: a field the
//!   baseline differs in as often (a random id, a date) is noise, not a difference.

pub(crate) mod pair;
pub(crate) mod stats;

use std::time::Duration;

use serde::Serialize;

use crate::config::{Thresholds, VerdictConfig};
use crate::stats::ShadowPathStats;
use crate::stats::pairs::{FieldCounts, Kept, MAX_FIELDS, PairsView, Totals};
use pair::Pairing;

/// Points in a row's chart (over the window).
pub(crate) const CHART_POINTS: usize = 20;

/// Something a verdict calls out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Flag {
    Slower,
    Faster,
    Different,
    Errors,
}

impl Flag {
    /// `faster` is news, not a failure.
    pub(crate) fn fails(self) -> bool {
        self != Flag::Faster
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    Pass,
    Fail,
    NoData,
}

/// An estimate with its interval (`None`: that side is not bounded yet).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Est {
    pub(crate) estimate: f64,
    pub(crate) lo: Option<f64>,
    pub(crate) hi: Option<f64>,
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

impl Est {
    fn rounded(self) -> Self {
        Est {
            estimate: round(self.estimate),
            lo: self.lo.map(round),
            hi: self.hi.map(round),
        }
    }
    fn rate(k: u64, n: u64, alpha: f64) -> Self {
        let (lo, hi) = stats::bernoulli_cs(k, n, alpha);
        Est {
            estimate: if n == 0 { 0.0 } else { k as f64 / n as f64 },
            lo: Some(lo),
            hi: Some(hi),
        }
        .rounded()
    }
}

/// One quantile on both legs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QuantilePair {
    pub(crate) control_ms: f64,
    pub(crate) shadow_ms: f64,
    /// shadow / control, with the interval from both legs' intervals.
    pub(crate) ratio: Est,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    /// Requests where both legs got a response head.
    pub(crate) pairs: u64,
    /// The median over requests of shadow time / control time (the paired measure the
    /// `slower` and `faster` flags use).
    pub(crate) ratio: Option<Est>,
    pub(crate) p50: Option<QuantilePair>,
    pub(crate) p99: Option<QuantilePair>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Errors {
    pub(crate) control_rate: Est,
    pub(crate) shadow_rate: Est,
    /// Requests where only the shadow failed / only the control failed.
    pub(crate) only_shadow: u64,
    pub(crate) only_control: u64,
    /// The sequential McNemar test's e-value (significant at 1 / (1 - confidence)).
    pub(crate) e_value: f64,
}

/// One field's differences.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FieldRow {
    pub(crate) field: String,
    /// Share of compared requests where the shadow differed from the primary here.
    pub(crate) shadow_rate: f64,
    /// The same for the baseline: the noise (0 without a baseline).
    pub(crate) noise_rate: f64,
    pub(crate) only_shadow: u64,
    pub(crate) only_control: u64,
    pub(crate) flagged: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Mismatch {
    pub(crate) compared: u64,
    pub(crate) mismatches: u64,
    pub(crate) rate: Est,
    pub(crate) fields: Vec<FieldRow>,
}

/// The verdict over one span of observations.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Section {
    pub(crate) n: u64,
    /// Over how long, in seconds.
    pub(crate) seconds: f64,
    pub(crate) flags: Vec<Flag>,
    pub(crate) latency: Latency,
    pub(crate) errors: Errors,
    pub(crate) mismatch: Mismatch,
}

/// One chart point: a slice of the window.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    /// Seconds before now at the slice's end.
    pub(crate) ago_s: f64,
    pub(crate) n: u64,
    pub(crate) control_p50_ms: Option<f64>,
    pub(crate) shadow_p50_ms: Option<f64>,
    pub(crate) control_p99_ms: Option<f64>,
    pub(crate) shadow_p99_ms: Option<f64>,
    pub(crate) mismatch_rate: Option<f64>,
}

/// The verdict of one (route, path template, shadow).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) route: String,
    pub(crate) path: String,
    pub(crate) shadow: String,
    /// `shadow` (compared with the primary), `candidate` (with its baseline) or
    /// `baseline` (its own row against the primary: the noise; never fails the verdict).
    pub(crate) role: &'static str,
    /// What the shadow is compared with: `primary` or the baseline's cluster.
    pub(crate) control: String,
    pub(crate) critical: bool,
    pub(crate) state: State,
    pub(crate) flags: Vec<Flag>,
    pub(crate) thresholds: ThresholdsOut,
    pub(crate) confidence: f64,
    pub(crate) min_pairs: u64,
    /// The current window's number since start or reset (1, 2, ...): window k is tested
    /// with 1/(k(k+1)) of the windows' half of the error budget.
    pub(crate) window_index: u64,
    /// Candidate copies whose baseline copy never came (not in the figures).
    pub(crate) unpaired: u64,
    pub(crate) window: Section,
    pub(crate) since_start: Section,
    /// Fields the baseline differs from the primary in, with their rates since start.
    pub(crate) noise: Vec<FieldRow>,
    pub(crate) chart: Vec<Point>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ThresholdsOut {
    pub(crate) slower_by: f64,
    pub(crate) different_by: f64,
    pub(crate) errors_by: f64,
}

/// Where a row comes from.
pub(crate) struct Subject<'a> {
    pub(crate) route: &'a str,
    pub(crate) path: &'a str,
    pub(crate) stats: &'a ShadowPathStats,
    pub(crate) pairing: Pairing,
    /// The baseline's cluster, for a candidate.
    pub(crate) baseline: Option<&'a str>,
    pub(crate) critical: bool,
    pub(crate) config: &'a VerdictConfig,
}

impl Row {
    /// Whether this row counts for the overall state.
    pub(crate) fn counts(&self) -> bool {
        self.role != "baseline"
    }
}

/// The verdict of one subject now.
pub(crate) fn row(s: &Subject<'_>) -> Row {
    row_of(s, &s.stats.pairs.view())
}

/// The error budget of the since-start sequence and of window `k` (1-based).
fn alphas(alpha: f64, k: u64) -> (f64, f64) {
    let k = k.max(1) as f64;
    (alpha / 2.0, alpha / 2.0 / (k * (k + 1.0)))
}

/// The verdict of one subject from a view of its pairs.
pub(crate) fn row_of(s: &Subject<'_>, view: &PairsView) -> Row {
    let c = s.config;
    let th = c.thresholds_for(s.path);
    let with_baseline = matches!(s.pairing, Pairing::Candidate { .. });
    let (alpha_since, alpha_window) = alphas(c.alpha, view.block_index);
    let window = totals_section(&view.block, &view.names, c, alpha_window, th, with_baseline);
    let since = totals_section(&view.totals, &view.names, c, alpha_since, th, with_baseline);
    let mut flags: Vec<Flag> = window.flags.iter().chain(&since.flags).copied().collect();
    flags.sort();
    flags.dedup();
    let has_data = window.n >= c.min_pairs || since.n >= c.min_pairs;
    let state = if flags.iter().any(|f| f.fails()) {
        State::Fail
    } else if has_data {
        State::Pass
    } else {
        State::NoData
    };
    let noise = if matches!(s.pairing, Pairing::Candidate { .. }) {
        since
            .mismatch
            .fields
            .iter()
            .filter(|f| f.noise_rate > 0.0)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    Row {
        route: s.route.to_string(),
        path: s.path.to_string(),
        shadow: s.stats.shadow.clone(),
        role: match s.pairing {
            Pairing::Alone => "shadow",
            Pairing::Candidate { .. } => "candidate",
            Pairing::Baseline { .. } => "baseline",
        },
        control: s.baseline.unwrap_or("primary").to_string(),
        critical: s.critical,
        state,
        flags,
        thresholds: ThresholdsOut {
            slower_by: th.slower_by,
            different_by: th.different_by,
            errors_by: th.errors_by,
        },
        confidence: round(1.0 - c.alpha),
        min_pairs: c.min_pairs,
        window_index: view.block_index,
        unpaired: view.unpaired,
        chart: chart(&view.recent, view.now_ms, c.window),
        window,
        since_start: since,
        noise,
    }
}

/// Inputs of one section, whatever it is computed from.
struct Counts<'a> {
    n: u64,
    seconds: f64,
    control_failed: u64,
    shadow_failed: u64,
    only_shadow_failed: u64,
    only_control_failed: u64,
    compared: u64,
    mismatches: u64,
    names: &'a [String],
    fields: Vec<FieldCounts>,
}

fn totals_section(
    t: &Totals,
    names: &[String],
    c: &VerdictConfig,
    alpha: f64,
    th: &Thresholds,
    with_baseline: bool,
) -> Section {
    let n = t.latency_pairs as usize;
    // Each bound is read at the conservative edge of its histogram bin.
    let ratio = stats::median_shift(n, |k| t.kth_log_ratio(k), alpha).map(|mid| {
        let lo = stats::median_shift(n, |k| t.kth_log_ratio_at(k, 0.0), alpha);
        let hi = stats::median_shift(n, |k| t.kth_log_ratio_at(k, 1.0), alpha);
        stats::Interval {
            lo: lo.and_then(|i| i.lo),
            estimate: mid.estimate,
            hi: hi.and_then(|i| i.hi),
        }
    });
    let quantile = |q: f64| {
        let leg = |shadow: bool| {
            let (lo, hi) = stats::quantile_ranks(n, q, alpha / 2.0);
            let est = ((q * n as f64).ceil() as usize).clamp(1, n.max(1)) - 1;
            (n > 0).then(|| stats::Interval {
                lo: lo.map(|k| t.kth_latency(shadow, k)),
                estimate: t.kth_latency(shadow, est),
                hi: hi.map(|k| t.kth_latency(shadow, k)),
            })
        };
        Some(quantile_pair(leg(false)?, leg(true)?))
    };
    let latency = Latency {
        pairs: t.latency_pairs,
        ratio: ratio.map(exp_est),
        p50: quantile(0.5),
        p99: quantile(0.99),
    };
    let counts = Counts {
        n: t.observations,
        seconds: t.since.elapsed().as_secs_f64(),
        control_failed: t.control_failed,
        shadow_failed: t.shadow_failed,
        only_shadow_failed: t.only_shadow_failed,
        only_control_failed: t.only_control_failed,
        compared: t.compared,
        mismatches: t.mismatches,
        names,
        fields: {
            let mut f = t.fields.clone();
            f.resize(names.len(), FieldCounts::default());
            f
        },
    };
    section(counts, latency, c, alpha, th, with_baseline)
}

fn exp_est(i: stats::Interval) -> Est {
    Est {
        estimate: i.estimate.exp(),
        lo: i.lo.map(f64::exp),
        hi: i.hi.map(f64::exp),
    }
    .rounded()
}

fn quantile_pair(c: stats::Interval, s: stats::Interval) -> QuantilePair {
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    QuantilePair {
        control_ms: round(c.estimate * 1e3),
        shadow_ms: round(s.estimate * 1e3),
        ratio: Est {
            estimate: if c.estimate > 0.0 {
                s.estimate / c.estimate
            } else {
                1.0
            },
            lo: div(s.lo, c.hi),
            hi: div(s.hi, c.lo),
        }
        .rounded(),
    }
}

fn section(
    k: Counts<'_>,
    latency: Latency,
    c: &VerdictConfig,
    alpha: f64,
    th: &Thresholds,
    with_baseline: bool,
) -> Section {
    let mut flags = Vec::new();
    let threshold = (1.0 + th.slower_by).ln();
    if latency.pairs >= c.min_pairs
        && let Some(r) = &latency.ratio
    {
        let est = r.estimate.ln();
        if r.lo.is_some_and(|lo| lo > 1.0) && est >= threshold {
            flags.push(Flag::Slower);
        }
        if r.hi.is_some_and(|hi| hi < 1.0) && est <= -threshold {
            flags.push(Flag::Faster);
        }
    }
    let test = stats::discordant(k.only_shadow_failed, k.only_control_failed, alpha);
    let excess = if k.n == 0 {
        0.0
    } else {
        (k.only_shadow_failed as f64 - k.only_control_failed as f64) / k.n as f64
    };
    if k.n >= c.min_pairs && test.significant && excess >= th.errors_by {
        flags.push(Flag::Errors);
    }
    let errors = Errors {
        control_rate: Est::rate(k.control_failed, k.n, alpha),
        shadow_rate: Est::rate(k.shadow_failed, k.n, alpha),
        only_shadow: k.only_shadow_failed,
        only_control: k.only_control_failed,
        e_value: round(test.e_value.min(1e12)),
    };
    let rate = Est::rate(k.mismatches, k.compared, alpha);
    // A fixed split over every field that can be tracked (not over those seen so far,
    // which grow).
    let per_field_alpha = alpha / (MAX_FIELDS + 1) as f64;
    let enough = k.compared >= c.min_pairs;
    let mut fields: Vec<FieldRow> = k
        .names
        .iter()
        .zip(&k.fields)
        .filter(|(_, f)| f.only_shadow + f.only_control + f.both > 0)
        .map(|(name, f)| {
            let n = k.compared.max(1) as f64;
            let flagged = with_baseline
                && enough
                && stats::discordant(f.only_shadow, f.only_control, per_field_alpha).significant
                && (f.only_shadow as f64 - f.only_control as f64) / n >= th.different_by;
            FieldRow {
                field: name.clone(),
                shadow_rate: round((f.only_shadow + f.both) as f64 / n),
                noise_rate: round((f.only_control + f.both) as f64 / n),
                only_shadow: f.only_shadow,
                only_control: f.only_control,
                flagged,
            }
        })
        .collect();
    fields.sort_by(|a, b| {
        b.shadow_rate
            .total_cmp(&a.shadow_rate)
            .then(a.field.cmp(&b.field))
    });
    let different = if with_baseline {
        fields.iter().any(|f| f.flagged)
    } else {
        enough && rate.lo.is_some_and(|lo| lo > th.different_by)
    };
    if different {
        flags.push(Flag::Different);
    }
    flags.sort();
    Section {
        n: k.n,
        seconds: round(k.seconds),
        flags,
        latency,
        errors,
        mismatch: Mismatch {
            compared: k.compared,
            mismatches: k.mismatches,
            rate,
            fields,
        },
    }
}

/// The window cut into `CHART_POINTS` slices, oldest first.
fn chart(w: &[Kept], now_ms: u64, window: Duration) -> Vec<Point> {
    let span = (window.as_millis() as u64).max(CHART_POINTS as u64);
    let slice = span / CHART_POINTS as u64;
    let mut slices: Vec<Vec<&Kept>> = vec![Vec::new(); CHART_POINTS];
    for k in w {
        // Its place from the window's start (now - span), also while the pairs are younger
        // than the window.
        let i = ((k.at_ms + span).saturating_sub(now_ms) / slice) as usize;
        slices[i.min(CHART_POINTS - 1)].push(k);
    }
    let q = |v: &mut Vec<f64>, q: f64| {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Some(round(v[i] * 1e3))
    };
    slices
        .iter()
        .enumerate()
        .map(|(i, ks)| {
            let (mut c, mut s): (Vec<f64>, Vec<f64>) = ks.iter().filter_map(|k| k.times()).unzip();
            let compared = ks.iter().filter(|k| k.compared()).count();
            let mismatched = ks.iter().filter(|k| k.mismatch()).count();
            Point {
                ago_s: round(((CHART_POINTS - 1 - i) as u64 * slice) as f64 / 1e3),
                n: ks.len() as u64,
                control_p50_ms: q(&mut c, 0.5),
                shadow_p50_ms: q(&mut s, 0.5),
                control_p99_ms: q(&mut c, 0.99),
                shadow_p99_ms: q(&mut s, 0.99),
                mismatch_rate: (compared > 0).then(|| round(mismatched as f64 / compared as f64)),
            }
        })
        .collect()
}

/// The overall state of a set of rows: `fail` when a counted row of a critical route
/// fails, or when more than `tolerate` counted rows of other routes fail; `no_data` when
/// no counted row has data yet; else `pass`.
pub(crate) fn overall(rows: &[Row], tolerate: usize) -> State {
    let counted: Vec<&Row> = rows.iter().filter(|r| r.counts()).collect();
    let failing = |critical: bool| {
        counted
            .iter()
            .filter(|r| r.critical == critical && r.state == State::Fail)
            .count()
    };
    if failing(true) > 0 || failing(false) > tolerate {
        State::Fail
    } else if counted.iter().all(|r| r.state == State::NoData) {
        State::NoData
    } else {
        State::Pass
    }
}

#[cfg(test)]
mod tests;
