//! The verdict on simulated streams with fixed seeds and simulated time: A/A streams (the
//! same version on every leg, with jittery latency, failures now and then, and noisy
//! fields) stay quiet at every refresh over hours; A/B streams with known regressions are
//! caught within a few hundred requests, with exactly the right flags.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{Thresholds, VerdictConfig};
use crate::metrics::Metrics;
use crate::stats::pairs::{LegObs, Observation};
use crate::stats::{PathEntry, PathRegistry};

/// splitmix64: small, fixed-seed, good enough for simulations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn config() -> VerdictConfig {
    VerdictConfig {
        window: Duration::from_secs(300),
        min_pairs: 50,
        alpha: 0.01,
        thresholds: Thresholds {
            slower_by: 0.10,
            different_by: 0.01,
            errors_by: 0.01,
        },
        paths: Default::default(),
    }
}

/// How one version of a fake application behaves on one path.
#[derive(Clone, Copy)]
struct App {
    /// Median time to the response head, in ms.
    median_ms: f64,
    /// Spread of ln(time) per request (jitter).
    sigma: f64,
    /// Share of requests that fail (5xx or no answer).
    fails: f64,
    /// Share of answers with a changed `/price` (a real difference in the candidate).
    changes_price: f64,
}

const SAME: App = App {
    median_ms: 20.0,
    sigma: 0.35,
    fails: 0.002,
    changes_price: 0.0,
};

/// One leg of one request of an application: its time (with the request's own weight and
/// a rare stall) and whether it failed.
fn leg(rng: &mut Rng, app: App, weight: f64) -> LegObs {
    let failed = rng.chance(app.fails);
    let stall = if rng.chance(0.01) { 5.0 } else { 1.0 };
    let ms = app.median_ms * weight * stall * (app.sigma * rng.normal()).exp();
    LegObs {
        head: (!failed || rng.chance(0.5)).then(|| Duration::from_secs_f64(ms / 1e3)),
        failed,
    }
}

/// The fields a leg's answer differs from the primary's in. Every answer carries a random
/// id and a date (a new second now and then); the headers echoed back and the compressed,
/// HTML and binary bodies are equal once teeproxy's own changes are left out, so they add
/// nothing. A changed price is a real difference.
fn fields(rng: &mut Rng, app: App, failed: bool) -> (bool, Vec<String>) {
    if failed {
        return (false, Vec::new());
    }
    let mut f = vec!["/id".to_string()];
    if rng.chance(0.2) {
        f.push("/date".to_string());
    }
    if rng.chance(app.changes_price) {
        f.push("/price".to_string());
    }
    f.sort();
    (true, f)
}

/// One request: the primary, the baseline and the candidate (same request weight: the
/// same request is heavier or lighter on every leg).
fn request(rng: &mut Rng, primary: App, candidate: App) -> (Observation, Observation) {
    let weight = (0.5 * rng.normal()).exp();
    let p = leg(rng, primary, weight);
    let b = leg(rng, primary, weight);
    let c = leg(rng, candidate, weight);
    let (b_compared, b_fields) = fields(rng, primary, b.failed || p.failed);
    let (c_compared, c_fields) = fields(rng, candidate, c.failed || p.failed);
    let alone = Observation {
        control: p,
        shadow: c,
        compared: c_compared,
        mismatch: !c_fields.is_empty(),
        paired: false,
        shadow_fields: c_fields.clone(),
        control_fields: Vec::new(),
    };
    let paired = pair::joined(
        pair::Half {
            leg: c,
            compared: c_compared,
            fields: c_fields,
        },
        pair::Half {
            leg: b,
            compared: b_compared,
            fields: b_fields,
        },
    );
    (paired, alone)
}

fn registry(paths: &[&str]) -> PathRegistry {
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    let templates: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    PathRegistry::new(
        "r",
        &templates,
        10,
        "p",
        vec!["cand".into()],
        metrics,
        Duration::from_secs(300),
    )
}

fn verdict_at(entry: &PathEntry, pairing: Pairing, c: &VerdictConfig, now: Instant) -> Row {
    let stats = &entry.shadows[0];
    let view = stats.pairs.view_at(now);
    row_of(
        &Subject {
            route: "r",
            path: &entry.template,
            stats,
            pairing,
            baseline: None,
            critical: false,
            config: c,
        },
        &view,
    )
}

const WITH_BASELINE: Pairing = Pairing::Candidate { baseline: 1 };

/// Runs `paths` (each with its candidate app) for `seconds` of simulated time at `rps`
/// requests per second per path, refreshing the verdict every `refresh`; calls `look`
/// with each path's rows (with a baseline, and without) and the requests so far.
fn simulate(
    seed: u64,
    paths: &[(&str, App)],
    seconds: u64,
    rps: u64,
    refresh: u64,
    look: impl FnMut(usize, u64, &Row, &Row),
) {
    simulate_with(seed, SAME, paths, seconds, rps, refresh, look)
}

/// The same with `primary` as the version on the primary and the baseline.
fn simulate_with(
    seed: u64,
    primary: App,
    paths: &[(&str, App)],
    seconds: u64,
    rps: u64,
    refresh: u64,
    mut look: impl FnMut(usize, u64, &Row, &Row),
) {
    let mut rng = Rng(seed);
    let names: Vec<&str> = paths.iter().map(|(p, _)| *p).collect();
    let paired = registry(&names);
    let alone = registry(&names);
    let c = config();
    let entries: Vec<(Arc<PathEntry>, Arc<PathEntry>)> = names
        .iter()
        .map(|p| (paired.entry(p), alone.entry(p)))
        .collect();
    let t0 = entries[0].0.shadows[0].pairs.epoch;
    let mut requests = 0;
    for tick in 1..=seconds * rps {
        let at = t0 + Duration::from_micros(tick * 1_000_000 / rps);
        for (i, (_, app)) in paths.iter().enumerate() {
            let (p, a) = request(&mut rng, primary, *app);
            entries[i].0.shadows[0].pairs.record_at(&p, at);
            entries[i].1.shadows[0].pairs.record_at(&a, at);
        }
        requests += 1;
        if tick % (refresh * rps) == 0 {
            for (i, (p, a)) in entries.iter().enumerate() {
                let with = verdict_at(p, WITH_BASELINE, &c, at);
                let without = verdict_at(a, Pairing::Alone, &c, at);
                look(i, requests, &with, &without);
            }
        }
    }
}

#[test]
fn an_a_a_stream_watched_for_thousands_of_refreshes_raises_no_flag() {
    let paths = [("/a", SAME), ("/b", SAME), ("/c", SAME)];
    let mut refreshes = 0;
    let mut with_data = 0;
    // One simulated hour at 5 requests per second per path, looked at every 2 s.
    simulate(7, &paths, 3600, 5, 2, |i, n, with, without| {
        refreshes += 1;
        assert!(
            with.flags.is_empty(),
            "A/A with a baseline flagged {:?} on path {i} after {n} requests: {:#?}",
            with.flags,
            with.window
        );
        // Without a baseline the random id differs on every answer: `different` is
        // right there (once there are enough pairs), and nothing else may be flagged.
        assert!(
            without.flags.iter().all(|f| *f == Flag::Different),
            "path {i} flagged {:?} after {n} requests without a baseline",
            without.flags
        );
        if n >= 100 {
            assert_eq!(without.flags, [Flag::Different], "path {i} after {n}");
        }
        if with.state == State::Pass {
            with_data += 1;
        }
    });
    assert_eq!(refreshes, 3 * 1800, "thousands of refreshes");
    assert!(with_data > 5000, "the verdicts had data: {with_data}");
}

#[test]
fn the_noise_a_baseline_shows_is_learned_per_field() {
    let mut last = None;
    simulate(11, &[("/a", SAME)], 120, 10, 120, |_, _, with, _| {
        last = Some(with.clone());
    });
    let row = last.unwrap();
    let id = row.noise.iter().find(|f| f.field == "/id").unwrap();
    assert_eq!(
        id.noise_rate, id.shadow_rate,
        "both always differ in the id"
    );
    assert!(id.noise_rate > 0.95 && !id.flagged);
    let date = row.noise.iter().find(|f| f.field == "/date").unwrap();
    assert!(
        (0.1..0.3).contains(&date.noise_rate) && !date.flagged,
        "{date:?}"
    );
    assert_eq!(row.state, State::Pass);
    let m = &row.since_start.mismatch;
    assert!(
        m.mismatches <= 3 && m.compared > 1000,
        "noise is no mismatch once it is seen: {} of {}",
        m.mismatches,
        m.compared
    );
}

#[test]
fn an_a_b_stream_flags_exactly_the_regressed_paths_within_a_few_hundred_requests() {
    let slower = App {
        median_ms: 23.0,
        ..SAME
    };
    let different = App {
        changes_price: 0.05,
        ..SAME
    };
    let failing = App {
        fails: SAME.fails + 0.02,
        ..SAME
    };
    let paths = [
        ("/slow", slower),
        ("/price", different),
        ("/fail", failing),
        ("/same", SAME),
    ];
    let expected = [
        vec![Flag::Slower],
        vec![Flag::Different],
        vec![Flag::Errors],
        vec![],
    ];
    let mut caught_at: [Option<u64>; 4] = [None; 4];
    // Twenty simulated minutes at 2 requests per second per path, looked at every 2 s.
    simulate(3, &paths, 1200, 2, 2, |i, n, with, _| {
        for f in &with.flags {
            assert!(
                expected[i].contains(f),
                "path {} flagged {f:?} after {n} requests",
                paths[i].0
            );
        }
        if with.flags == expected[i] && caught_at[i].is_none() && !expected[i].is_empty() {
            caught_at[i] = Some(n);
        }
    });
    for (i, at) in caught_at.iter().enumerate().take(3) {
        let n = at.unwrap_or_else(|| panic!("{} never flagged", paths[i].0));
        assert!(n <= 800, "{} flagged only after {n} requests", paths[i].0);
    }
    eprintln!("caught after {caught_at:?} requests");
}

#[test]
fn a_slower_path_without_a_baseline_is_flagged_slower_and_its_interval_covers_the_truth() {
    let mut last = None;
    let slower = App {
        median_ms: 23.0,
        ..SAME
    };
    simulate(5, &[("/slow", slower)], 300, 4, 300, |_, _, _, without| {
        last = Some(without.clone());
    });
    let row = last.unwrap();
    assert!(row.flags.contains(&Flag::Slower), "{:?}", row.flags);
    let r = row.window.latency.ratio.unwrap();
    assert!(
        r.lo.unwrap() < 1.15 && 1.15 < r.hi.unwrap(),
        "the interval {r:?} covers the true ratio 1.15"
    );
}

#[test]
fn the_overall_state_fails_on_a_critical_route_and_tolerates_others_when_asked() {
    let row = |critical: bool, state: State, role: &'static str| {
        let mut r = verdict_at(
            &registry(&["/x"]).entry("/x"),
            Pairing::Alone,
            &config(),
            Instant::now(),
        );
        r.critical = critical;
        r.state = state;
        r.role = role;
        r
    };
    assert_eq!(
        overall(&[row(false, State::NoData, "shadow")], 0),
        State::NoData
    );
    assert_eq!(
        overall(&[row(false, State::Pass, "shadow")], 0),
        State::Pass
    );
    assert_eq!(
        overall(
            &[
                row(false, State::Pass, "shadow"),
                row(false, State::Fail, "shadow")
            ],
            0
        ),
        State::Fail
    );
    assert_eq!(
        overall(
            &[
                row(false, State::Pass, "shadow"),
                row(false, State::Fail, "shadow")
            ],
            1
        ),
        State::Pass,
        "one failing non-critical row tolerated"
    );
    assert_eq!(
        overall(&[row(true, State::Fail, "shadow")], 5),
        State::Fail,
        "a critical route is never tolerated"
    );
    assert_eq!(
        overall(
            &[
                row(false, State::Pass, "shadow"),
                row(true, State::Fail, "baseline")
            ],
            0
        ),
        State::Pass,
        "a baseline's own row shows noise and never fails the verdict"
    );
}

#[test]
fn a_busy_a_a_stream_with_failures_on_both_legs_stays_quiet_for_hours() {
    // 50 requests per second for two simulated hours, 1.5 % failures on every leg,
    // looked at every 5 s: each window is a fresh test, and the windows together keep
    // the error budget (a sliding window re-tested at every look would not).
    let flaky = App {
        fails: 0.015,
        ..SAME
    };
    let mut refreshes = 0;
    let mut windows = 0;
    simulate_with(
        13,
        flaky,
        &[("/busy", flaky)],
        7200,
        50,
        5,
        |_, n, with, without| {
            refreshes += 1;
            windows = windows.max(with.window_index);
            assert!(
                with.flags.is_empty(),
                "with a baseline after {n}: {:#?}",
                with.window
            );
            assert!(
                without.flags.iter().all(|f| *f == Flag::Different),
                "without a baseline after {n}: {:?} {:#?}",
                without.flags,
                without.window.errors
            );
        },
    );
    assert_eq!(refreshes, 1440);
    assert!(windows >= 24, "two hours of 5 min windows: {windows}");
}
