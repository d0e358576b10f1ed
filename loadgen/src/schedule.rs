//! Open-loop scheduling and latency recording. Request `i` of a run at `rate` per second is
//! due at `start + i / rate`, whether or not earlier requests have finished; its latency is
//! measured from that due time, so a stalled server is charged for the requests it made
//! wait (no coordinated omission).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// When request `i` is due in an open-loop run.
pub fn due(start: Instant, rate: f64, i: u64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}

/// Latencies in microseconds, 1 us to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records one latency: from `scheduled` (open loop) or the actual send (closed loop).
pub fn record(h: &mut Histogram<u64>, scheduled: Instant, done: Instant) {
    let us = done
        .saturating_duration_since(scheduled)
        .as_micros()
        .clamp(1, 60_000_000) as u64;
    h.record(us).expect("value within bounds");
}

/// A latency quantile of `h` (microseconds) in milliseconds; 0 when it is empty.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// `p50`, `p90`, `p99`, `p999` and `max` of `h`, in milliseconds.
pub fn latency_json(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50": quantile_ms(h, 0.5), "p90": quantile_ms(h, 0.9), "p99": quantile_ms(h, 0.99),
        "p999": quantile_ms(h, 0.999), "max": h.max() as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_evenly_spaced_from_the_start() {
        let start = Instant::now();
        assert_eq!(due(start, 100.0, 0), start);
        assert_eq!(due(start, 100.0, 1) - start, Duration::from_millis(10));
        assert_eq!(due(start, 100.0, 250) - start, Duration::from_millis(2500));
        assert_eq!(due(start, 0.5, 3) - start, Duration::from_secs(6));
    }

    #[test]
    fn latency_counts_from_the_due_time_not_the_late_send() {
        // A request due at t=0 that could only be sent at t=90 ms (the generator or the
        // server was stalled) and answered at t=100 ms took 100 ms, not 10 ms.
        let start = Instant::now();
        let sent_late = start + Duration::from_millis(90);
        let done = start + Duration::from_millis(100);
        let mut open = new_histogram();
        record(&mut open, due(start, 10.0, 0), done);
        let mut closed = new_histogram();
        record(&mut closed, sent_late, done);
        assert!(
            (open.value_at_quantile(0.5) as i64 - 100_000).abs() < 200,
            "{}",
            open.value_at_quantile(0.5)
        );
        assert!((closed.value_at_quantile(0.5) as i64 - 10_000).abs() < 20);
    }

    #[test]
    fn extremes_are_clamped_into_the_histogram() {
        let t = Instant::now();
        let mut h = new_histogram();
        record(&mut h, t, t);
        record(&mut h, t, t + Duration::from_secs(120));
        assert_eq!(h.len(), 2);
        assert!(h.max() >= 59_000_000);
    }
}
