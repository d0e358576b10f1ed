//! How the series that cost the most are made: latency histograms (classic buckets with
//! readable bounds, plus native buckets for scrapers that take them) and counters whose
//! series is created at their first event (per-path label values most paths never use).

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, NativeHistogramConfig};

/// The classic bucket bounds of every latency histogram, in seconds: 1, 1.5, 2, 3, 4, 5
/// and 7.5 in each decade from 1 ms to 7.5 s, then 10, 15, 20, 30, 40 and 60 s (and
/// `+Inf`). Neighbours are at most 1.5x apart (the 20 buckets before were 1.94x), and each
/// bound reads as a round number of milliseconds or seconds.
pub(crate) const LATENCY_BUCKETS: [f64; 34] = [
    0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, //
    0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, //
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, //
    1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, //
    10.0, 15.0, 20.0, 30.0, 40.0, 60.0,
];

/// The native-histogram schema of latency histograms: 2^(2^-5), buckets about 2.2 %
/// wide, so a median is placed within about 1 % and a 10 % shift between two legs is
/// plain (schema 3, Prometheus' usual default, is 9 % wide).
pub(crate) const LATENCY_SCHEMA: i8 = 5;

/// At most this many native buckets per histogram: past it the schema is lowered (every
/// two buckets merged into one) for that histogram, so a path whose latencies spread over
/// 1 ms to 1 s still has 4.4 % buckets (schema 4) and memory stays bounded (a few KiB).
pub(crate) const LATENCY_MAX_NATIVE_BUCKETS: usize = 160;

/// A latency histogram: the classic `LATENCY_BUCKETS` for text scrapers, and native
/// buckets (schema `LATENCY_SCHEMA`) that only the protobuf exposition carries.
pub(crate) fn latency_histogram() -> Histogram {
    Histogram::new_classic_and_native(
        LATENCY_BUCKETS,
        NativeHistogramConfig::with_schema(LATENCY_SCHEMA).max_buckets(LATENCY_MAX_NATIVE_BUCKETS),
    )
}

/// A counter whose series appears in its family at its first increment. For per-path
/// label values that most paths never see (a status class a path never answers, a
/// comparison result or skip reason it never has), so they cost no series until they
/// happen. The first increment takes the family's lock once; later ones are a plain
/// atomic add. (Prometheus' `increase()` does not count an event that creates a series.)
pub(crate) struct LazyCounter<L: EncodeLabelSet + Clone + Eq + std::hash::Hash> {
    family: Family<L, Counter>,
    labels: L,
    counter: OnceLock<Counter>,
}

impl<L> LazyCounter<L>
where
    L: EncodeLabelSet + Clone + Eq + std::hash::Hash,
{
    pub(crate) fn new(family: &Family<L, Counter>, labels: L) -> Self {
        LazyCounter {
            family: family.clone(),
            labels,
            counter: OnceLock::new(),
        }
    }

    pub(crate) fn inc(&self) {
        self.counter
            .get_or_init(|| self.family.get_or_create_owned(&self.labels))
            .inc();
    }

    /// The count so far (0 before the first increment).
    #[cfg(test)]
    pub(crate) fn get(&self) -> u64 {
        self.counter.get().map_or(0, Counter::get)
    }
}

impl<L> Clone for LazyCounter<L>
where
    L: EncodeLabelSet + Clone + Eq + std::hash::Hash,
{
    /// A clone shares the series (once created) through the family.
    fn clone(&self) -> Self {
        LazyCounter {
            family: self.family.clone(),
            labels: self.labels.clone(),
            counter: self.counter.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn latency_buckets_rise_by_at_most_one_and_a_half() {
        assert_eq!(LATENCY_BUCKETS[0], 0.001);
        assert_eq!(LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1], 60.0);
        for w in LATENCY_BUCKETS.windows(2) {
            let r = w[1] / w[0];
            assert!(r > 1.0 && r <= 1.5 + 1e-9, "{} -> {}: {r}", w[0], w[1]);
        }
    }

    #[test]
    fn a_lazy_counter_has_no_series_until_its_first_event() {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct L {
            k: String,
        }
        let mut registry = Registry::default();
        let family = Family::<L, Counter>::default();
        registry.register("x", "X", family.clone());
        let a = LazyCounter::new(&family, L { k: "a".into() });
        let b = LazyCounter::new(&family, L { k: "b".into() });
        let text = crate::metrics::encode(&registry);
        assert!(!text.contains("x_total{"), "{text}");
        a.inc();
        a.clone().inc();
        let text = crate::metrics::encode(&registry);
        assert!(text.contains("x_total{k=\"a\"} 2"), "{text}");
        assert!(!text.contains("k=\"b\""), "{text}");
        assert_eq!((a.get(), b.get()), (2, 0));
    }
}
