//! A shadow policy's rate cap (`max_rps`, `max_burst`): a token bucket held in one atomic,
//! the theoretical arrival time of the generic cell rate algorithm (GCRA), so taking a
//! token is a compare-and-swap: no task, no lock. It starts full (`max_burst` tokens) and
//! refills at `max_rps`; over any window of length `w` it lets through at most
//! `max_burst + max_rps * w` copies. Time is tokio's monotonic clock (paused in tests).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` held.
pub(crate) struct RateCap {
    epoch: Instant,
    /// Nanoseconds per token.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may be: `(burst - 1) * interval`.
    tolerance: u64,
    /// Theoretical arrival time of the next token, in nanoseconds since `epoch`.
    tat: AtomicU64,
}

impl RateCap {
    /// `rate` > 0 and `burst` >= 1 (the config check holds to both).
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        let interval = (1e9 / rate).round().max(1.0) as u64;
        RateCap {
            epoch: Instant::now(),
            interval,
            tolerance: ((burst.max(1.0) - 1.0) * interval as f64).round() as u64,
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token now, if there is one.
    pub(crate) fn take(&self) -> bool {
        self.take_at(self.epoch.elapsed().as_nanos() as u64)
    }

    /// Takes a token at `now` (nanoseconds since the bucket was made).
    pub(crate) fn take_at(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                start.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: u64 = 1_000_000;

    fn taken(cap: &RateCap, at: u64, tries: usize) -> usize {
        (0..tries).filter(|_| cap.take_at(at)).count()
    }

    #[test]
    fn starts_full_then_refills_at_the_rate() {
        let cap = RateCap::new(10.0, 10.0);
        assert_eq!(taken(&cap, 0, 100), 10, "a full bucket: the burst");
        assert_eq!(taken(&cap, 50 * MS, 100), 0, "half a token");
        assert_eq!(taken(&cap, 100 * MS, 100), 1);
        assert_eq!(taken(&cap, 1_100 * MS, 100), 10, "a second: 10 more");
        assert_eq!(
            taken(&cap, 60_000 * MS, 100),
            10,
            "never more than the burst"
        );
    }

    #[test]
    fn fractional_rates_and_bursts() {
        let cap = RateCap::new(2.5, 2.5);
        assert_eq!(taken(&cap, 0, 10), 2, "2.5 tokens: two whole ones");
        let cap = RateCap::new(0.5, 1.0);
        assert_eq!(taken(&cap, 0, 10), 1);
        assert_eq!(taken(&cap, 1_999 * MS, 10), 0);
        assert_eq!(taken(&cap, 2_000 * MS, 10), 1, "one every 2 s");
    }

    /// Under a steady overload of 1000 tries a second for 10 s, a cap of 50/s with a burst
    /// of 50 lets through exactly the burst plus 50 a second.
    #[test]
    fn steady_overload_gets_the_rate() {
        let cap = RateCap::new(50.0, 50.0);
        let through = (0..10_000u64).filter(|i| cap.take_at(i * MS)).count();
        assert_eq!(through, 50 + 500 - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let cap = RateCap::new(4.0, 1.0);
        assert!(cap.take());
        assert!(!cap.take());
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(cap.take());
        assert!(!cap.take());
    }

    #[test]
    fn concurrent_takers_never_exceed_the_burst() {
        let cap = std::sync::Arc::new(RateCap::new(1e-3, 1000.0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let cap = cap.clone();
                std::thread::spawn(move || taken(&cap, 0, 1000))
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1000);
    }
}
