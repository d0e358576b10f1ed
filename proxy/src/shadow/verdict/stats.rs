//! Anytime-valid statistics for the shadow verdict: intervals and tests that stay valid
//! however often the dashboard is looked at.
//!
//! The verdict is refreshed every few seconds for hours. A classical 95 % interval is
//! right 95 % of the time *at one pre-planned sample size*; checked after every request it
//! will, sooner or later, exclude the truth on most streams ("peeking"). Everything here is
//! instead a *confidence sequence*: with probability at least `1 - alpha`, the intervals
//! contain the truth at every sample size at once, so the verdict may be read (and acted
//! on) at any moment. This is the idea of Lindon et al., "Rapid Regression Detection in
//! Software Deployments through Sequential Testing" (KDD 2022), which Netflix uses for
//! canaries.
//!
//! **The construction** (Robbins 1970, "Statistical methods related to the law of the
//! iterated logarithm"; Howard, Ramdas, McAuliffe and Sekhon 2021, "Time-uniform,
//! nonparametric, nonasymptotic confidence sequences", Annals of Statistics). To test a
//! value `p` for the success probability of a stream of yes/no outcomes, bet against it:
//! average, over a prior on the alternative `theta`, the likelihood ratio of `theta` to
//! `p`. With a uniform prior and `k` successes in `n` trials this *mixture martingale* is
//!
//! ```text
//! M_n(p) = B(1 + k, 1 + n - k) / (p^k (1 - p)^(n - k))      (B = the beta function)
//! ```
//!
//! If `p` is the truth, `M_n(p)` is a nonnegative martingale starting at 1 (a fair bet),
//! and Ville's inequality says it ever reaches `1 / alpha` with probability at most
//! `alpha`: `P(sup_n M_n >= 1 / alpha) <= alpha`. So the set of `p` with
//! `M_n(p) < 1 / alpha` is a confidence sequence ([`bernoulli_cs`]), and a hypothesis is
//! rejected, once and for all, when its martingale reaches `1 / alpha` ([`discordant`]).
//!
//! **Quantiles without a model** ([`quantile_ranks`], [`quantile_interval`],
//! [`median_shift`]). Whether a sample falls below the true `q`-quantile is a yes/no outcome
//! with probability exactly `q` (continuous data), so the martingale above at `p = q`,
//! applied to the count `k` of samples below the quantile, tells which counts are still
//! plausible: an interval `[k_lo, k_hi]`. "At least `k_lo` samples are below the quantile"
//! means the `k_lo`-th smallest sample is below it, and so on: the interval for the
//! quantile is a pair of order statistics, valid for any distribution. For the median this
//! is a sequential sign test. Ties and discrete data keep the guarantee for the closed
//! interval: such data is a nondecreasing function of continuous data, which preserves
//! both the order statistics and the quantile.
//!
//! **Paired latency** ([`median_shift`]). teeproxy sends the same request to both legs, so
//! each request gives `d = ln(t_shadow / t_primary)`; noise common to both legs cancels.
//! The interval is for the median of `d`: `exp` of it is the typical ratio of the shadow's
//! time to the primary's on the same request.
//!
//! **Paired failures** ([`discordant`]): a one-sided sequential McNemar test on the pairs
//! where exactly one leg failed (or differed).
//!
//! **What the guarantee assumes.** The outcomes are independent draws, each with the
//! tested probability given the past; for the median's null (A/A) that only means each
//! pair's `d` is as likely positive as negative, whatever the load does over time. The
//! price of validity at every `n` is width: about `sqrt(ln n / n)` instead of
//! `sqrt(1 / n)`, some 5 standard errors each side at `n = 10^7`. The sign test uses
//! only the signs of `d`: robust to outliers, a little less powerful than a rank test on
//! symmetric noise. When `kth` is backed by a histogram, the bounds are bucket values,
//! so they hold to the bucket's resolution.
//!
//! Everything is pure computation: no allocation, no I/O; each call costs microseconds.

use std::f64::consts::LN_2;

/// `ln(2 pi) / 2`.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// From this argument up, `ln_gamma` uses Stirling's series (error below `3e-16`).
const STIRLING_MIN: f64 = 15.0;

/// Lanczos approximation, `g = 7`, nine terms (relative error of `Gamma` about `1e-15`).
const LANCZOS_G: f64 = 7.0;

/// The Lanczos coefficients for `g = 7`.
const LANCZOS: [f64; 9] = [
    0.999_999_999_999_809_9,
    676.520_368_121_885_1,
    -1_259.139_216_722_402_8,
    771.323_428_777_653_1,
    -176.615_029_162_140_6,
    12.507_343_278_686_905,
    -0.138_571_095_265_720_12,
    9.984_369_578_019_572e-6,
    1.505_632_735_149_311_6e-7,
];

/// Bisection stops when the bracket is this small relative to the bound.
const BISECTION_TOLERANCE: f64 = 1e-10;

/// The most continued-fraction steps `ln_beta_inc` takes; the hardest case, `a = b`,
/// needs about 900 at `a + b = 10^7` and 1900 at `10^8`.
const CONTINUED_FRACTION_STEPS: usize = 100_000;

/// Binet's remainder of Stirling's series: `ln Gamma(x) - ((x - 1/2) ln x - x + ln(2 pi) / 2)`,
/// for `x >= STIRLING_MIN`.
fn stirling_remainder(x: f64) -> f64 {
    let r = x.recip();
    let r2 = r * r;
    r * (1.0 / 12.0 - r2 * (1.0 / 360.0 - r2 * (1.0 / 1260.0 - r2 * (1.0 / 1680.0 - r2 / 1188.0))))
}

/// `ln Gamma(x)` for `x > 0` (NaN otherwise): Lanczos below 15, Stirling's series above;
/// relative error about `1e-15` (absolute near the zeros at 1 and 2).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    if x < 0.5 {
        // Gamma(x) = Gamma(x + 1) / x keeps Lanczos in its accurate range.
        return ln_gamma(x + 1.0) - x.ln();
    }
    if x >= STIRLING_MIN {
        return (x - 0.5) * x.ln() - x + HALF_LN_2PI + stirling_remainder(x);
    }
    let x = x - 1.0;
    let t = x + LANCZOS_G + 0.5;
    let sum = LANCZOS
        .iter()
        .enumerate()
        .skip(1)
        .fold(LANCZOS[0], |sum, (i, c)| sum + c / (x + i as f64));
    HALF_LN_2PI + (x + 0.5) * t.ln() - t + sum.ln()
}

/// `ln B(a, b) = ln Gamma(a) + ln Gamma(b) - ln Gamma(a + b)` for `a, b > 0` (NaN
/// otherwise). Large arguments are combined before rounding (Stirling's series with
/// `ln_1p`) instead of cancelling three terms of size `1e8`: `ln B(5e6, 5e6)` is off by
/// `1e-9`, not `3e-8`, and `ln B(1, 1e7)` is exact to rounding, not off by `1e-8`.
pub(crate) fn ln_beta(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() || a <= 0.0 || b <= 0.0 {
        return f64::NAN;
    }
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    let s = a + b;
    if a >= STIRLING_MIN {
        HALF_LN_2PI - 0.5 * s.ln() - (a - 0.5) * (b / a).ln_1p() - (b - 0.5) * (a / b).ln_1p()
            + stirling_remainder(a)
            + stirling_remainder(b)
            - stirling_remainder(s)
    } else if b >= STIRLING_MIN {
        ln_gamma(a) - (b - 0.5) * (a / b).ln_1p() - a * s.ln() + a + stirling_remainder(b)
            - stirling_remainder(s)
    } else {
        ln_gamma(a) + ln_gamma(b) - ln_gamma(s)
    }
}

/// `count * ln(x)`, taken as 0 when `count` is 0 (so `x = 0` is allowed then).
fn count_ln(count: f64, x: f64) -> f64 {
    if count == 0.0 { 0.0 } else { count * x.ln() }
}

/// `ln M_n(p)`: the log of the beta-binomial mixture martingale (uniform prior) after `k`
/// successes in `n` trials, given `ln_b = ln B(1 + k, 1 + n - k)`.
fn ln_mixture(k: f64, n: f64, ln_b: f64, p: f64) -> f64 {
    let failures = n - k;
    let ln_failures = if failures == 0.0 {
        0.0
    } else {
        failures * (-p).ln_1p()
    };
    ln_b - count_ln(k, p) - ln_failures
}

/// The lower end of [`bernoulli_cs`]: the smallest `p` with `M_n(p) < e^threshold`, by
/// bisection between 0 (rejected) and `k / n` (where `M_n <= 1`); returns the rejected
/// side of the final bracket, so the interval is never too narrow.
fn bernoulli_lower(k: u64, n: u64, threshold: f64) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let (k, n) = (k as f64, n as f64);
    let ln_b = ln_beta(1.0 + k, 1.0 + n - k);
    let (mut rejected, mut accepted) = (0.0, k / n);
    while accepted - rejected > BISECTION_TOLERANCE * accepted {
        let mid = 0.5 * (rejected + accepted);
        if ln_mixture(k, n, ln_b, mid) >= threshold {
            rejected = mid;
        } else {
            accepted = mid;
        }
    }
    rejected
}

/// Anytime-valid confidence sequence for a Bernoulli mean (an error rate, a mismatch
/// rate) after `k` successes in `n` trials: `{p : M_n(p) < 1 / alpha}` with the
/// beta-binomial mixture martingale. Returns `(lower, upper)`; `(0, 1)` when `n == 0`.
/// `k <= n`, `0 < alpha < 1`.
pub(crate) fn bernoulli_cs(k: u64, n: u64, alpha: f64) -> (f64, f64) {
    debug_assert!(k <= n, "k = {k} successes in n = {n} trials");
    debug_assert!(alpha > 0.0 && alpha < 1.0, "alpha = {alpha}");
    if n == 0 {
        return (0.0, 1.0);
    }
    let k = k.min(n);
    let threshold = -alpha.ln();
    // M_n(p; k) = M_n(1 - p; n - k): the upper end is the mirror of a lower end.
    (
        bernoulli_lower(k, n, threshold),
        1.0 - bernoulli_lower(n - k, n, threshold),
    )
}

/// Distribution-free, anytime-valid interval for the `q`-quantile, as 0-based ranks into
/// the `n` sorted samples: `(lo, hi)` such that `[x_(lo), x_(hi)]` contains the true
/// quantile, with probability `1 - alpha` at every `n` at once. `None` on a side that
/// is still unbounded (too few samples). `0 < q < 1`, `0 < alpha < 1`.
///
/// The counts `k` of samples below the quantile that the mixture martingale (at `p = q`)
/// still accepts form an interval `[k_lo, k_hi]` (the martingale is convex in `k`): at
/// least `k_lo` samples lie below the quantile, so `x_(k_lo - 1)` does; at most `k_hi` do,
/// so `x_(k_hi)` does not.
pub(crate) fn quantile_ranks(n: usize, q: f64, alpha: f64) -> (Option<usize>, Option<usize>) {
    debug_assert!(q > 0.0 && q < 1.0, "q = {q}");
    debug_assert!(alpha > 0.0 && alpha < 1.0, "alpha = {alpha}");
    let threshold = -alpha.ln();
    let (ln_q, ln_not_q) = (q.ln(), (-q).ln_1p());
    let nf = n as f64;
    let ln_m = |k: usize| {
        let k = k as f64;
        ln_beta(1.0 + k, 1.0 + nf - k) - k * ln_q - (nf - k) * ln_not_q
    };
    // The minimum over k is at the binomial mode, ceil(q (n + 1) - 1); there M_n <= 1.
    let mut mode = ((q * (nf + 1.0) - 1.0).ceil().max(0.0) as usize).min(n);
    while mode > 0 && ln_m(mode - 1) < ln_m(mode) {
        mode -= 1;
    }
    while mode < n && ln_m(mode + 1) < ln_m(mode) {
        mode += 1;
    }
    if ln_m(mode) >= threshold {
        // Only for alpha >= 1: nothing is accepted, say nothing.
        return (None, None);
    }
    // ln_m decreases on [0, mode] and increases on [mode, n]: bisect each side.
    let k_lo = if ln_m(0) < threshold {
        0
    } else {
        let (mut rejected, mut accepted) = (0, mode);
        while accepted - rejected > 1 {
            let mid = rejected + (accepted - rejected) / 2;
            if ln_m(mid) >= threshold {
                rejected = mid;
            } else {
                accepted = mid;
            }
        }
        accepted
    };
    let k_hi = if ln_m(n) < threshold {
        n
    } else {
        let (mut accepted, mut rejected) = (mode, n);
        while rejected - accepted > 1 {
            let mid = accepted + (rejected - accepted) / 2;
            if ln_m(mid) >= threshold {
                rejected = mid;
            } else {
                accepted = mid;
            }
        }
        accepted
    };
    (k_lo.checked_sub(1), (k_hi < n).then_some(k_hi))
}

/// A point estimate with its anytime-valid bounds; `None` is an unbounded side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Interval {
    /// Lower bound, if there are enough samples for one.
    pub(crate) lo: Option<f64>,
    /// The plain sample estimate.
    pub(crate) estimate: f64,
    /// Upper bound, if there are enough samples for one.
    pub(crate) hi: Option<f64>,
}

/// The 0-based nearest-rank index of the `q`-quantile of `n >= 1` sorted samples:
/// `ceil(q n) - 1`, kept in `0..n`.
#[cfg(test)]
fn nearest_rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n) - 1
}

/// The `q`-quantile of ascending `sorted` samples (nearest rank) with its anytime-valid,
/// distribution-free interval ([`quantile_ranks`]); `None` when there are no samples.
#[cfg(test)]
pub(crate) fn quantile_interval(sorted: &[f64], q: f64, alpha: f64) -> Option<Interval> {
    debug_assert!(sorted.is_sorted(), "quantile_interval needs sorted samples");
    if sorted.is_empty() {
        return None;
    }
    let (lo, hi) = quantile_ranks(sorted.len(), q, alpha);
    Some(Interval {
        lo: lo.map(|i| sorted[i]),
        estimate: sorted[nearest_rank(sorted.len(), q)],
        hi: hi.map(|i| sorted[i]),
    })
}

/// The paired latency comparison: the median of the per-request log-ratios
/// `d = ln(t_shadow / t_primary)` with its anytime-valid sign-test interval
/// ([`quantile_ranks`] at `q = 1/2`). `kth(i)` is the `i`-th smallest of the `n` values
/// (0-based), so a sorted slice or a fine histogram can back it; it is called at most four
/// times. The estimate is the sample median (the mean of the two middle values when `n` is
/// even). A lower bound above 0 says the shadow is slower on the typical request;
/// `exp` of the bounds is the ratio. `None` when `n == 0`.
pub(crate) fn median_shift(n: usize, kth: impl Fn(usize) -> f64, alpha: f64) -> Option<Interval> {
    if n == 0 {
        return None;
    }
    let estimate = if n % 2 == 1 {
        kth(n / 2)
    } else {
        0.5 * (kth(n / 2 - 1) + kth(n / 2))
    };
    let (lo, hi) = quantile_ranks(n, 0.5, alpha);
    Some(Interval {
        lo: lo.map(&kth),
        estimate,
        hi: hi.map(&kth),
    })
}

/// The outcome of the sequential McNemar test ([`discordant`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Discordant {
    /// The evidence that the candidate fails more often: the mixture martingale's value
    /// (saturates at `f64::MAX`, beyond `2^1023`; 1 means no evidence either way).
    pub(crate) e_value: f64,
    /// `e_value >= 1 / alpha`: with probability at most `alpha` this ever happens under
    /// the null, however often it is checked.
    pub(crate) significant: bool,
}

/// One-sided sequential McNemar test on the discordant pairs: `b` pairs where only the
/// candidate failed (or differed), `c` where only the control did. Under the null each
/// discordant pair is a `b` with probability `1/2` or less. The e-value is the mixture
/// martingale with a uniform prior on `p` in `[1/2, 1]`:
/// `E = 2 * integral_{1/2}^{1} p^b (1 - p)^c dp / (1/2)^(b + c)`
/// `= 2^(b + c + 1) B(b + 1, c + 1) I_{1/2}(c + 1, b + 1)`, in log space (fine for
/// `b + c` in the tens of millions). For `c = 0` it is `(2^(b + 1) - 1) / (b + 1)`: nine
/// candidate-only failures and no control-only one reach `1 / 0.01`.
pub(crate) fn discordant(b: u64, c: u64, alpha: f64) -> Discordant {
    debug_assert!(alpha > 0.0 && alpha < 1.0, "alpha = {alpha}");
    let ln_e_value = discordant_ln_e_value(b, c);
    Discordant {
        e_value: ln_e_value.exp().min(f64::MAX),
        significant: ln_e_value >= -alpha.ln(),
    }
}

/// `ln E` of [`discordant`], finite where `E` itself would overflow.
fn discordant_ln_e_value(b: u64, c: u64) -> f64 {
    let (b, c) = (b as f64, c as f64);
    (b + c + 1.0) * LN_2 + ln_beta(b + 1.0, c + 1.0) + ln_beta_inc(0.5, c + 1.0, b + 1.0)
}

/// `ln I_x(a, b)`, the log of the regularized incomplete beta function, for `0 < x < 1`
/// and `a, b > 0`: the continued fraction on whichever side converges fast, and
/// `ln(1 - I_{1-x}(b, a))` on the other.
fn ln_beta_inc(x: f64, a: f64, b: f64) -> f64 {
    let ln_front = a * x.ln() + b * (-x).ln_1p() - ln_beta(a, b);
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front + (beta_continued_fraction(x, a, b) / a).ln()
    } else {
        let complement = (ln_front + (beta_continued_fraction(1.0 - x, b, a) / b).ln()).exp();
        (-complement.min(1.0)).ln_1p()
    }
}

/// The continued fraction of `I_x(a, b)` (modified Lentz; Numerical Recipes' `betacf`):
/// `I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) * cf`.
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = guard(1.0 - (a + b) * x / (a + 1.0)).recip();
    let mut h = d;
    for m in 1..=CONTINUED_FRACTION_STEPS {
        let m = m as f64;
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = guard(1.0 + even * d).recip();
        c = guard(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = guard(1.0 + odd * d).recip();
        c = guard(1.0 + odd / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHA: f64 = 0.05;

    /// SplitMix64 (Steele, Lea and Flood 2014): a small, fast, deterministic generator.
    struct SplitMix(u64);

    impl SplitMix {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in the open interval (0, 1).
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn bernoulli(&mut self, p: f64) -> bool {
            self.uniform() < p
        }

        /// Standard normal (Box-Muller, one of the pair).
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }

        /// Standard Laplace (median 0, scale 1).
        fn laplace(&mut self) -> f64 {
            let u = self.uniform() - 0.5;
            -u.signum() * (1.0 - 2.0 * u.abs()).ln()
        }
    }

    /// The allowed number of streams (out of `streams`) whose interval ever misses: the
    /// smallest `x` with `P(Binomial(streams, alpha) > x) <= 1e-3`, computed exactly. A
    /// method whose miss rate is at most `alpha` passes with probability >= 99.9 %; the
    /// seeds are fixed, so the tests are deterministic.
    fn allowed_misses(streams: u64, alpha: f64) -> u64 {
        let s = streams as f64;
        let mut cdf = 0.0;
        for x in 0..=streams {
            let xf = x as f64;
            let ln_choose = -(s + 1.0).ln() - ln_beta(xf + 1.0, s - xf + 1.0);
            cdf += (ln_choose + xf * alpha.ln() + (s - xf) * (-alpha).ln_1p()).exp();
            if 1.0 - cdf <= 1e-3 {
                return x;
            }
        }
        streams
    }

    fn assert_close(got: f64, want: f64, rel: f64, what: &str) {
        let err = (got - want).abs() / want.abs().max(1.0);
        assert!(err <= rel, "{what}: got {got}, want {want} (error {err:e})");
    }

    #[test]
    fn ln_gamma_matches_reference_values() {
        // 40-digit references (mpmath).
        let reference = [
            (1e-300, 690.775_527_898_213_7),
            (1e-8, 18.420_680_738_180_21),
            (0.1, 2.252_712_651_734_206),
            (0.5, 0.572_364_942_924_700_1),
            (0.9999, 5.772_979_156_120_022e-5),
            (1.5, -0.120_782_237_635_245_22),
            (2.5, 0.284_682_870_472_919_2),
            (3.7, 1.428_072_326_665_388),
            (9.99, 12.779_315_214_350_193),
            (14.999, 25.188_546_870_546_926),
            (15.0, 25.191_221_182_738_68),
            (15.001, 25.193_895_563_868_664),
            (100.0, 359.134_205_369_575_4),
            (1e5, 1_051_287.708_973_656_9),
            (1e10, 220_258_509_288.810_6),
            (1e15, 33_538_776_394_910_670.0),
        ];
        for (x, want) in reference {
            let got = ln_gamma(x);
            // Relative accuracy, absolute below 1 (near the zeros at 1 and 2).
            assert_close(got, want, 1e-14, &format!("ln_gamma({x})"));
        }
        // Factorials, exactly representable up to 22!, then products to 170!.
        let mut ln_factorial = 0.0;
        for n in 1..=170u32 {
            assert_close(ln_gamma(f64::from(n)), ln_factorial, 1e-13, &format!("{n}"));
            ln_factorial += f64::from(n).ln();
        }
        assert_eq!(ln_gamma(1.0), 0.0);
        assert!(ln_gamma(2.0).abs() < 1e-15);
        assert!(ln_gamma(0.0).is_nan() && ln_gamma(-1.0).is_nan() && ln_gamma(f64::NAN).is_nan());
    }

    #[test]
    fn ln_beta_matches_reference_values_and_is_continuous() {
        let reference = [
            (0.5, 0.5, 1.144_729_885_849_400_2),
            (3.2, 7.1, -5.829_338_479_598_677),
            (1.0, 1e7, -16.118_095_650_958_32),
            (9.5, 14.9, -16.259_425_081_560_39),
            (5e6, 5e6, -6_931_478.252_561_54),
            (1.0, 16.0, -2.772_588_722_239_781),
            (14.0, 20.0, -23.162_418_977_258_6),
            (3.0, 1e7 + 1.0, -47.661_140_372_314_05),
            (2.5, 123.4, -11.769_007_927_836_7),
        ];
        for (a, b, want) in reference {
            assert_close(ln_beta(a, b), want, 1e-13, &format!("ln_beta({a}, {b})"));
            assert_eq!(ln_beta(a, b), ln_beta(b, a), "symmetric");
        }
        // B(1, n) = 1/n and B(k + 1, n - k + 1) = 1 / ((n + 1) C(n, k)), across the
        // switch between the three formulas.
        for n in 1..60u32 {
            let nf = f64::from(n);
            assert_close(ln_beta(1.0, nf), -nf.ln(), 1e-14, "B(1, n)");
            let mut ln_choose = 0.0;
            for k in 0..=n {
                let kf = f64::from(k);
                let got = ln_beta(kf + 1.0, nf - kf + 1.0);
                assert_close(got, -(nf + 1.0).ln() - ln_choose, 1e-13, "B(k+1, n-k+1)");
                ln_choose += ((nf - kf) / (kf + 1.0)).ln();
            }
        }
        assert!(ln_beta(0.0, 1.0).is_nan() && ln_beta(1.0, f64::NAN).is_nan());
    }

    #[test]
    fn bernoulli_cs_edge_cases() {
        assert_eq!(bernoulli_cs(0, 0, 0.05), (0.0, 1.0));
        // n = 1: M_1(p) = 1 / (2 p) after one success, so p > 1/40 at alpha = 0.05.
        let (lo, hi) = bernoulli_cs(1, 1, 0.05);
        assert_close(lo, 1.0 / 40.0, 1e-9, "one success");
        assert_eq!(hi, 1.0);
        let (lo, hi) = bernoulli_cs(0, 1, 0.05);
        assert_eq!(lo, 0.0);
        assert_close(hi, 1.0 - 1.0 / 40.0, 1e-9, "one failure");
        // k = 0 of n: M_n(p) = 1 / ((n + 1) (1 - p)^n) < 20: hi = 1 - (20 (n + 1))^(-1/n).
        let (lo, hi) = bernoulli_cs(0, 1000, 0.05);
        assert_eq!(lo, 0.0);
        assert_close(
            hi,
            1.0 - (20.0f64 * 1001.0).powf(-1.0 / 1000.0),
            1e-9,
            "k = 0",
        );
        let (lo, hi) = bernoulli_cs(1000, 1000, 0.05);
        assert_close(lo, (20.0f64 * 1001.0).powf(-1.0 / 1000.0), 1e-9, "k = n");
        assert_eq!(hi, 1.0);
        // Huge n: no NaN, contains the estimate, width about sqrt(ln n / n).
        for (k, n) in [
            (0, 10_000_000),
            (1, 10_000_000),
            (200_000, 10_000_000),
            (10_000_000, 10_000_000),
        ] {
            let (lo, hi) = bernoulli_cs(k, n, 0.05);
            let p = k as f64 / n as f64;
            assert!(lo.is_finite() && hi.is_finite(), "{k}/{n}: ({lo}, {hi})");
            assert!(
                lo <= p && p <= hi && 0.0 <= lo && hi <= 1.0,
                "{k}/{n}: ({lo}, {hi})"
            );
        }
        let (lo, hi) = bernoulli_cs(200_000, 10_000_000, 0.05);
        // About 5 standard errors each side: a uniform prior spreads its bet over all
        // sample sizes, and pays ln n for it.
        assert!(0.0197 < lo && hi < 0.0203, "2 % of 10^7: ({lo}, {hi})");
        // The ends are where the martingale crosses 1 / alpha.
        let (k, n) = (37.0, 400.0);
        let ln_b = ln_beta(1.0 + k, 1.0 + n - k);
        let (lo, hi) = bernoulli_cs(37, 400, 0.05);
        for end in [lo, hi] {
            assert_close(ln_mixture(k, n, ln_b, end), 20f64.ln(), 1e-6, "boundary");
        }
        // Smaller alpha, wider interval.
        let (lo99, hi99) = bernoulli_cs(37, 400, 0.01);
        assert!(lo99 < lo && hi < hi99);
    }

    /// How many of `streams` Bernoulli(`p`) streams see `bernoulli_cs` exclude `p` at some
    /// look, checked after every one of `looks` trials.
    fn bernoulli_misses(streams: u64, looks: u64, p: f64, seed: u64) -> u64 {
        let mut rng = SplitMix(seed);
        let mut misses = 0;
        for _ in 0..streams {
            let mut k = 0;
            for n in 1..=looks {
                k += u64::from(rng.bernoulli(p));
                let (lo, hi) = bernoulli_cs(k, n, ALPHA);
                if p < lo || hi < p {
                    misses += 1;
                    break;
                }
            }
        }
        misses
    }

    /// The same for the textbook fixed-sample 95 % interval `p +- 1.96 sqrt(p (1 - p) / n)`
    /// (Wald), looked at from 30 trials on.
    fn wald_misses(streams: u64, looks: u64, p: f64, seed: u64) -> u64 {
        let mut rng = SplitMix(seed);
        let mut misses = 0;
        for _ in 0..streams {
            let mut k = 0;
            for n in 1..=looks {
                k += u64::from(rng.bernoulli(p));
                let estimate = k as f64 / n as f64;
                let half = 1.96 * (estimate * (1.0 - estimate) / n as f64).sqrt();
                if n >= 30 && (p < estimate - half || estimate + half < p) {
                    misses += 1;
                    break;
                }
            }
        }
        misses
    }

    #[test]
    fn bernoulli_cs_covers_under_continuous_looking() {
        // Every stream is checked after every trial; a miss is a stream whose interval
        // ever excluded the truth. Error-rate-like and balanced rates.
        const STREAMS: u64 = 200;
        let allowed = allowed_misses(STREAMS, ALPHA);
        for (p, seed) in [(0.02, 1), (0.1, 2), (0.5, 3)] {
            let misses = bernoulli_misses(STREAMS, 1000, p, seed);
            assert!(
                misses <= allowed,
                "p = {p}: {misses} of {STREAMS} streams missed (allowed {allowed})"
            );
        }
    }

    #[test]
    fn a_fixed_sample_interval_fails_the_same_check() {
        // The check has teeth: the textbook interval, valid at one planned n, misses on
        // far more than 5 % of the streams when looked at after every trial.
        const STREAMS: u64 = 200;
        let misses = wald_misses(STREAMS, 1000, 0.5, 3);
        let allowed = allowed_misses(STREAMS, ALPHA);
        assert!(
            misses > 3 * allowed,
            "{misses} of {STREAMS} (allowed {allowed})"
        );
    }

    #[test]
    fn quantile_ranks_edge_cases() {
        assert_eq!(quantile_ranks(0, 0.5, 0.05), (None, None));
        assert_eq!(quantile_ranks(1, 0.5, 0.05), (None, None));
        // M_n(1/2) with all n samples on one side is 2^n / (n + 1): >= 20 from n = 8.
        assert_eq!(quantile_ranks(7, 0.5, 0.05), (None, None));
        assert_eq!(quantile_ranks(8, 0.5, 0.05), (Some(0), Some(7)));
        for n in 8..2000 {
            let (lo, hi) = quantile_ranks(n, 0.5, 0.05);
            let (lo, hi) = (lo.unwrap(), hi.unwrap());
            assert_eq!(lo + hi, n - 1, "the median's ranks are symmetric");
            assert!(lo <= (n - 1) / 2 && n / 2 <= hi, "n = {n}: ({lo}, {hi})");
        }
        // A high quantile needs more samples for its upper side than its lower.
        let (lo, hi) = quantile_ranks(100, 0.99, 0.05);
        assert!(lo.is_some() && hi.is_none());
        let (lo, hi) = quantile_ranks(2000, 0.99, 0.05);
        let (lo, hi) = (lo.unwrap(), hi.unwrap());
        assert!(lo < 1979 && 1979 < hi && hi < 2000, "({lo}, {hi})");
        // Huge n: the interval narrows like sqrt(ln n / n).
        let n = 10_000_000;
        let (lo, hi) = quantile_ranks(n, 0.5, 0.05);
        let (lo, hi) = (lo.unwrap(), hi.unwrap());
        assert!(n / 2 - lo < 15_000 && hi - n / 2 < 15_000, "({lo}, {hi})");
    }

    #[test]
    fn quantile_interval_and_median_shift_edge_cases() {
        assert_eq!(quantile_interval(&[], 0.5, 0.05), None);
        assert_eq!(median_shift(0, |_| unreachable!(), 0.05), None);
        let one = Interval {
            lo: None,
            estimate: 3.0,
            hi: None,
        };
        assert_eq!(quantile_interval(&[3.0], 0.5, 0.05), Some(one));
        assert_eq!(median_shift(1, |_| 3.0, 0.05), Some(one));
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        let median = median_shift(sorted.len(), |i| sorted[i], 0.05).unwrap();
        assert_eq!(median.estimate, 5.5, "the mean of the two middle values");
        assert_eq!(quantile_interval(&sorted, 0.5, 0.05).unwrap().estimate, 5.0);
        assert_eq!(quantile_interval(&sorted, 0.9, 0.05).unwrap().estimate, 9.0);
        // All equal: the interval collapses onto the value.
        let equal = vec![0.25; 500];
        let median = median_shift(equal.len(), |i| equal[i], 0.05).unwrap();
        let collapsed = Interval {
            lo: Some(0.25),
            estimate: 0.25,
            hi: Some(0.25),
        };
        assert_eq!(median, collapsed);
        assert_eq!(quantile_interval(&equal, 0.9, 0.05), Some(collapsed));
        // Backed by a histogram: 10^7 values in 1 % log-ratio buckets, kth from the
        // cumulative counts.
        let counts: Vec<u64> = (0..200u32)
            .map(|b| 100_000 - u64::from(b.abs_diff(100)) * 900)
            .collect();
        let n: u64 = counts.iter().sum();
        let kth = |i: usize| {
            let mut seen = 0;
            for (bucket, count) in counts.iter().enumerate() {
                seen += count;
                if i < seen as usize {
                    return (bucket as f64 - 100.0) * 0.01;
                }
            }
            unreachable!()
        };
        let median = median_shift(n as usize, kth, 0.05).unwrap();
        assert!(median.lo == Some(0.0) && median.estimate == 0.0 && median.hi == Some(0.0));
    }

    /// Feeds `looks` values from `draw` into each of `streams` streams, keeps each sorted,
    /// computes `interval` after every value, and returns on how many streams it ever
    /// excluded `truth`.
    fn sorted_stream_misses(
        (streams, looks, seed): (u64, usize, u64),
        draw: impl Fn(&mut SplitMix) -> f64,
        truth: f64,
        interval: impl Fn(&[f64]) -> Interval,
    ) -> u64 {
        let mut rng = SplitMix(seed);
        let mut sorted = Vec::with_capacity(looks);
        let mut misses = 0;
        for _ in 0..streams {
            sorted.clear();
            for _ in 0..looks {
                let x = draw(&mut rng);
                sorted.insert(sorted.partition_point(|&y| y < x), x);
                if !contains(interval(&sorted), truth) {
                    misses += 1;
                    break;
                }
            }
        }
        misses
    }

    /// Whether `interval` (closed, unbounded where `None`) contains `x`.
    fn contains(interval: Interval, x: f64) -> bool {
        interval.lo.is_none_or(|lo| lo <= x) && interval.hi.is_none_or(|hi| x <= hi)
    }

    /// A generator of one sample.
    type Draw = fn(&mut SplitMix) -> f64;

    /// `median_shift` over a sorted slice.
    fn median_of(sorted: &[f64]) -> Interval {
        median_shift(sorted.len(), |i| sorted[i], ALPHA).unwrap()
    }

    /// A/A log-ratio: both legs lognormal with sigma 0.3, so `d` is normal with sd 0.42.
    fn lognormal_legs(r: &mut SplitMix) -> f64 {
        0.3 * (r.normal() - r.normal())
    }

    /// A/A log-ratio with a coarse clock (1 ms ticks on ~5 ms requests): many ties, and
    /// mass exactly on the median `d = 0`.
    fn ticked_legs(r: &mut SplitMix) -> f64 {
        let mut leg = || (5.0 * (0.3 * r.normal()).exp()).round().max(1.0);
        (leg() / leg()).ln()
    }

    /// Standard exponential; its 0.9-quantile is `ln 10`.
    fn exponential(r: &mut SplitMix) -> f64 {
        -r.uniform().ln()
    }

    #[test]
    fn median_shift_covers_under_continuous_looking() {
        // A/A: the median of d is 0; the interval must (almost) never exclude it.
        const STREAMS: u64 = 200;
        let allowed = allowed_misses(STREAMS, ALPHA);
        let cases: [(&str, Draw, u64); 3] = [
            ("lognormal legs", lognormal_legs, 11),
            ("Laplace", SplitMix::laplace, 12),
            ("ties", ticked_legs, 13),
        ];
        for (name, draw, seed) in cases {
            let misses = sorted_stream_misses((STREAMS, 1000, seed), draw, 0.0, median_of);
            assert!(
                misses <= allowed,
                "{name}: {misses} of {STREAMS} (allowed {allowed})"
            );
        }
    }

    #[test]
    fn quantile_interval_covers_under_continuous_looking() {
        const STREAMS: u64 = 200;
        let allowed = allowed_misses(STREAMS, ALPHA);
        let p90 = |sorted: &[f64]| quantile_interval(sorted, 0.9, ALPHA).unwrap();
        let misses = sorted_stream_misses((STREAMS, 1000, 14), exponential, 10f64.ln(), p90);
        assert!(
            misses <= allowed,
            "{misses} of {STREAMS} (allowed {allowed})"
        );
    }

    /// For each of `streams` A/B streams (the shadow `ratio` times slower, each leg
    /// lognormal with sigma 0.3), the number of pairs until the median's lower bound is
    /// above 0, sorted (`usize::MAX`: not within `max_pairs`).
    fn median_detection(streams: usize, max_pairs: usize, ratio: f64, seed: u64) -> Vec<usize> {
        let shift = ratio.ln();
        let mut rng = SplitMix(seed);
        let mut detected_at = Vec::with_capacity(streams);
        let mut sorted = Vec::with_capacity(max_pairs);
        for _ in 0..streams {
            sorted.clear();
            let mut at = usize::MAX;
            for n in 1..=max_pairs {
                let d = shift + lognormal_legs(&mut rng);
                sorted.insert(sorted.partition_point(|&x| x < d), d);
                if median_of(&sorted).lo.is_some_and(|lo| lo > 0.0) {
                    at = n;
                    break;
                }
            }
            detected_at.push(at);
        }
        detected_at.sort_unstable();
        detected_at
    }

    #[test]
    fn median_shift_detects_a_15_percent_regression_within_hundreds_of_pairs() {
        const STREAMS: usize = 100;
        let detected_at = median_detection(STREAMS, 2000, 1.15, 15);
        let median = detected_at[STREAMS / 2];
        let p90 = detected_at[STREAMS * 9 / 10];
        assert!(median <= 400, "median detection after {median} pairs");
        assert!(p90 <= 1000, "90 % detected after {p90} pairs");
    }

    #[test]
    fn discordant_exact_values() {
        // c = 0: E = 2 * 2^b * (1 - 2^-(b + 1)) / (b + 1) = (2^(b + 1) - 1) / (b + 1).
        for b in 0..40u64 {
            let want = ((2f64).powi(b as i32 + 1) - 1.0) / (b as f64 + 1.0);
            assert_close(
                discordant(b, 0, 0.01).e_value,
                want,
                1e-12,
                &format!("b = {b}"),
            );
        }
        assert_eq!(discordant(0, 0, 0.01).e_value, 1.0);
        // 255/8 = 31.9 and 511/9 = 56.8 fall short of 100; 1023/10 = 102.3 does not.
        assert!(!discordant(7, 0, 0.01).significant);
        assert!(!discordant(8, 0, 0.01).significant);
        assert!(discordant(9, 0, 0.01).significant);
        // At alpha = 0.05 (threshold 20): 127/7 = 18.1 falls short, 255/8 = 31.9 not.
        assert!(!discordant(6, 0, 0.05).significant && discordant(7, 0, 0.05).significant);
        // Against the integral by Simpson's rule.
        for (b, c) in [(3u64, 1u64), (10, 4), (25, 30), (60, 20), (0, 5)] {
            let steps = 20_000;
            let h = 0.5 / steps as f64;
            let f = |p: f64| {
                (b as f64 * p.ln() + c as f64 * (1.0 - p).ln() + (b + c) as f64 * LN_2).exp()
            };
            let mut integral = f(0.5) + f(1.0 - 1e-300);
            for i in 1..steps {
                integral += f(0.5 + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            let want = 2.0 * integral * h / 3.0;
            assert_close(
                discordant(b, c, 0.01).e_value,
                want,
                1e-8,
                &format!("({b}, {c})"),
            );
        }
    }

    #[test]
    fn discordant_large_counts() {
        // Balanced: no evidence, however large the counts.
        for n in [1_000u64, 100_000, 10_000_000] {
            let d = discordant(n / 2, n / 2, 0.05);
            assert!(d.e_value < 1.0 && !d.significant, "{n}: {d:?}");
        }
        // 10^7 pairs, 0.05 % more b than c: about 1.6 standard deviations, not enough.
        let d = discordant(5_002_500, 4_997_500, 0.05);
        assert!(d.e_value > 0.0 && !d.significant, "{d:?}");
        // 0.5 % more: 16 standard deviations.
        let d = discordant(5_025_000, 4_975_000, 0.05);
        assert!(d.e_value > 1e40 && d.significant, "{d:?}");
        // Far beyond f64: ln E stays finite, E saturates.
        let d = discordant(10_000_000, 0, 0.05);
        assert!(d.significant && d.e_value == f64::MAX, "{d:?}");
        // ln((2^(n + 1) - 1) / (n + 1)).
        assert_close(
            discordant_ln_e_value(10_000_000, 0),
            (1e7 + 1.0) * LN_2 - (1e7 + 1.0f64).ln(),
            1e-12,
            "ln E",
        );
        // c alone: E = 1 / (c + 1), never below that.
        let d = discordant(0, 10_000_000, 0.05);
        assert!(!d.significant, "{d:?}");
        assert_close(d.e_value, 1.0 / (1e7 + 1.0), 1e-12, "b = 0");
        // ln E against 30-digit references (mpmath, exact binomial tail sums).
        let reference = [
            (500, 500, -3.228_835_787_221_091),
            (530, 470, -0.765_760_934_598_083_5),
            (60, 20, 9.041_135_241_303_057),
            (3, 40, -3.641_412_965_659_306_7),
            (50_000, 50_000, -5.530_678_879_790_387),
            (50_400, 49_600, -1.643_251_946_228_901_5),
            (5_000_000, 5_000_000, -7.833_256_547_861_742),
            (5_002_500, 4_997_500, -5.948_716_950_761_71),
            (5_025_000, 4_975_000, 117.860_398_971_111_83),
        ];
        for (b, c, want) in reference {
            let got = discordant_ln_e_value(b, c);
            assert!(
                (got - want).abs() < 1e-6,
                "ln E({b}, {c}) = {got}, want {want}"
            );
        }
    }

    /// How many of `streams` null streams (each discordant pair the candidate's with
    /// probability `p <= 1/2`) the test ever rejects, checked after every pair.
    fn discordant_rejections(streams: u64, looks: u64, p: f64, seed: u64) -> u64 {
        let mut rng = SplitMix(seed);
        let mut rejected = 0;
        for _ in 0..streams {
            let mut b = 0;
            for n in 1..=looks {
                b += u64::from(rng.bernoulli(p));
                if discordant(b, n - b, ALPHA).significant {
                    rejected += 1;
                    break;
                }
            }
        }
        rejected
    }

    /// For each of `streams` streams of requests where the candidate fails with
    /// probability `candidate` and the control, independently, with `control`: the
    /// number of requests until the test is significant at alpha = 0.01, sorted.
    fn discordant_detection(streams: usize, candidate: f64, control: f64, seed: u64) -> Vec<u64> {
        let mut rng = SplitMix(seed);
        let mut detected_at: Vec<u64> = (0..streams)
            .map(|_| {
                let (mut b, mut c, mut requests) = (0, 0, 0);
                while !discordant(b, c, 0.01).significant {
                    requests += 1;
                    match (rng.bernoulli(candidate), rng.bernoulli(control)) {
                        (true, false) => b += 1,
                        (false, true) => c += 1,
                        _ => {}
                    }
                }
                requests
            })
            .collect();
        detected_at.sort_unstable();
        detected_at
    }

    #[test]
    fn discordant_rejects_few_null_streams_under_continuous_looking() {
        const STREAMS: u64 = 300;
        let allowed = allowed_misses(STREAMS, ALPHA);
        for (p, seed) in [(0.5, 21), (0.4, 22)] {
            let rejected = discordant_rejections(STREAMS, 1000, p, seed);
            assert!(
                rejected <= allowed,
                "p = {p}: {rejected} of {STREAMS} (allowed {allowed})"
            );
        }
    }

    #[test]
    fn a_fixed_sample_mcnemar_test_fails_the_same_check() {
        // The textbook one-sided McNemar test (z = (b - c) / sqrt(b + c) > 1.645),
        // looked at after every pair from 30 on, rejects far more than 5 % of null streams.
        const STREAMS: u64 = 300;
        let mut rng = SplitMix(21);
        let rejected = (0..STREAMS)
            .filter(|_| {
                let mut b = 0i32;
                (1..=1000).any(|n| {
                    b += i32::from(rng.bernoulli(0.5));
                    n >= 30 && f64::from(2 * b - n) / f64::from(n).sqrt() > 1.645
                })
            })
            .count() as u64;
        assert!(
            rejected > 3 * allowed_misses(STREAMS, ALPHA),
            "{rejected} of {STREAMS}"
        );
    }

    #[test]
    fn discordant_detects_a_candidate_that_fails_alone() {
        // The candidate fails 2 % of requests, the control never: every discordant pair
        // is the candidate's, and the ninth makes it significant at alpha = 0.01, after
        // about 9 / 0.02 = 450 requests.
        let mut rng = SplitMix(23);
        let mut b = 0;
        let mut requests = 0;
        while !discordant(b, 0, 0.01).significant {
            requests += 1;
            b += u64::from(rng.bernoulli(0.02));
        }
        assert_eq!(b, 9);
        assert!(requests < 2000, "{requests} requests");
        let detected_at = discordant_detection(100, 0.02, 0.0, 24);
        let median = detected_at[50];
        assert!((300..=600).contains(&median), "median {median} requests");
    }

    /// The simulations at full size, with their figures (about a minute in release):
    /// `cargo test --release -- --ignored --nocapture figures_at_scale`.
    #[test]
    #[ignore = "large simulation; run in release"]
    fn figures_at_scale() {
        const STREAMS: u64 = 2000;
        const LOOKS: u64 = 2000;
        let allowed = allowed_misses(STREAMS, ALPHA);
        println!("{STREAMS} streams x {LOOKS} looks, alpha = {ALPHA}, allowed misses {allowed}");
        for (p, seed) in [(0.02, 1), (0.1, 2), (0.5, 3)] {
            let misses = bernoulli_misses(STREAMS, LOOKS, p, seed);
            println!("bernoulli_cs p = {p}: {misses} ever missed");
            assert!(misses <= allowed);
        }
        let wald = wald_misses(STREAMS, LOOKS, 0.5, 3);
        println!("fixed-sample Wald interval, p = 0.5: {wald} ever missed");
        let cases: [(&str, Draw, u64); 3] = [
            ("lognormal legs", lognormal_legs, 11),
            ("Laplace", SplitMix::laplace, 12),
            ("ties", ticked_legs, 13),
        ];
        let size = (STREAMS, LOOKS as usize, 0);
        for (name, draw, seed) in cases {
            let misses = sorted_stream_misses((size.0, size.1, seed), draw, 0.0, median_of);
            println!("median_shift, {name}: {misses} ever missed");
            assert!(misses <= allowed);
        }
        let p90 = |sorted: &[f64]| quantile_interval(sorted, 0.9, ALPHA).unwrap();
        let misses = sorted_stream_misses((size.0, size.1, 14), exponential, 10f64.ln(), p90);
        println!("quantile_interval q = 0.9, exponential: {misses} ever missed");
        assert!(misses <= allowed);
        for (p, seed) in [(0.5, 21), (0.4, 22)] {
            let rejected = discordant_rejections(STREAMS, LOOKS, p, seed);
            println!("discordant, null p = {p}: {rejected} ever rejected");
            assert!(rejected <= allowed);
        }
        let quartiles = |v: &[usize]| {
            let at = |f: f64| v[((v.len() - 1) as f64 * f) as usize];
            format!(
                "p10 {} p25 {} median {} p75 {} p90 {}",
                at(0.1),
                at(0.25),
                at(0.5),
                at(0.75),
                at(0.9)
            )
        };
        for ratio in [1.05, 1.10, 1.15, 1.30] {
            let detected_at = median_detection(1000, 20_000, ratio, 15);
            println!(
                "median_shift detects x{ratio} after pairs: {}",
                quartiles(&detected_at)
            );
        }
        for (candidate, control) in [(0.02, 0.0), (0.03, 0.01), (0.02, 0.01)] {
            let detected_at: Vec<usize> = discordant_detection(1000, candidate, control, 24)
                .into_iter()
                .map(|r| r as usize)
                .collect();
            println!(
                "discordant, candidate fails {candidate}, control {control}: requests {}",
                quartiles(&detected_at)
            );
        }
    }
}
