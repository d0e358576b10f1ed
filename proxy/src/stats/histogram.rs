//! A lock-free latency histogram for quantiles: log-spaced buckets (4 % wide) from 100 us
//! to 30 s, atomic counters, so the request path records with one `fetch_add` and the
//! admin API reads p50/p90/p99 within a few percent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MIN_US: f64 = 100.0;
const MAX_US: f64 = 30_000_000.0;
const RATIO: f64 = 1.04;
/// Buckets between MIN and MAX, plus one below and one above.
const BUCKETS: usize = 322;

pub(crate) struct AtomicHistogram {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

fn bucket_of(us: f64) -> usize {
    if us < MIN_US {
        return 0;
    }
    if us >= MAX_US {
        return BUCKETS - 1;
    }
    let i = ((us / MIN_US).ln() / RATIO.ln()).floor() as usize + 1;
    i.min(BUCKETS - 2)
}

/// A representative value (geometric middle) of bucket `i`, in microseconds.
fn value_of(i: usize) -> f64 {
    match i {
        0 => MIN_US / 2.0,
        i if i == BUCKETS - 1 => MAX_US,
        i => MIN_US * RATIO.powf(i as f64 - 1.0) * RATIO.sqrt(),
    }
}

impl AtomicHistogram {
    pub(crate) fn record(&self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        self.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us as u64, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Sum of all recorded values, in seconds.
    pub(crate) fn sum_seconds(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Quantiles (each in 0..=1) in seconds; `None` when empty.
    pub(crate) fn quantiles<const N: usize>(&self, qs: [f64; N]) -> Option<[f64; N]> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        Some(qs.map(|q| {
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            let mut at = BUCKETS - 1;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    at = i;
                    break;
                }
            }
            value_of(at) / 1e6
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let h = AtomicHistogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let [p50, p90, p99] = h.quantiles([0.5, 0.9, 0.99]).unwrap();
        for (got, want) in [(p50, 0.5), (p90, 0.9), (p99, 0.99)] {
            assert!((got / want - 1.0).abs() < 0.03, "{got} vs {want}");
        }
        assert_eq!(h.count(), 1000);
        assert!((h.sum_seconds() - 500.5).abs() < 0.01);
    }

    #[test]
    fn extremes_and_empty() {
        let h = AtomicHistogram::default();
        assert!(h.quantiles([0.5]).is_none());
        h.record(Duration::from_micros(10));
        h.record(Duration::from_secs(100));
        let [lo, hi] = h.quantiles([0.0, 1.0]).unwrap();
        assert!(lo < 0.0001);
        assert_eq!(hi, 30.0);
        assert_eq!(bucket_of(MIN_US), 1);
        assert_eq!(bucket_of(MAX_US * 0.999), BUCKETS - 2);
    }

    #[test]
    fn a_25_percent_slowdown_is_visible() {
        let a = AtomicHistogram::default();
        let b = AtomicHistogram::default();
        for i in 0..200u64 {
            a.record(Duration::from_micros(4000 + i));
            b.record(Duration::from_micros(5000 + i));
        }
        let ratio = b.quantiles([0.5]).unwrap()[0] / a.quantiles([0.5]).unwrap()[0];
        assert!((1.18..1.32).contains(&ratio), "{ratio}");
    }
}
