//! Sampling decisions, in millionths so that `percent: 0.5` works. A request's draw comes
//! from its key (the `sample_key` header or cookie, else its `x-request-id`) through one
//! hash that is the same for every shadow, build and machine, so the decision is
//! `draw(key) < threshold`: a key in at p % is in for every shadow at p % or more (nested
//! sets), on every replica. Only a request without any key draws at random.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use http::HeaderMap;

use crate::config::SampleKey;

/// The sampling scale: a request is in when its draw is below the threshold.
pub(crate) const SCALE: u64 = 1_000_000;

/// `percent` (0..=100) as a threshold on `SCALE`.
pub(crate) fn threshold(percent: f64) -> u64 {
    ((percent / 100.0) * SCALE as f64)
        .round()
        .clamp(0.0, SCALE as f64) as u64
}

/// A stable 64-bit FNV-1a hash (the same on every build and machine).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        h.finish() | 1
    });
}

/// A fast per-thread pseudo-random number (xorshift64*), enough for sampling.
pub(crate) fn random_u64() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// The value of the sampling key in a request, if present.
pub(crate) fn key_value<'a>(key: &SampleKey, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    match key {
        SampleKey::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes()),
        SampleKey::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_bytes()),
    }
}

/// The draw for a request in `[0, SCALE)`: from the key when there is one (unsalted: the
/// same for every shadow, so the sets of keys in are nested by percent), else random.
pub(crate) fn draw(key: Option<&[u8]>) -> u64 {
    let h = match key {
        Some(k) => mix(fnv1a(&[k])),
        None => random_u64(),
    };
    // Multiply-shift: the high bits of a 64-bit product, uniform on `[0, SCALE)`.
    ((u128::from(h) * u128::from(SCALE)) >> 64) as u64
}

/// The splitmix64 finalizer: every input bit moves every output bit (FNV-1a alone leaves
/// keys that differ in their last byte close together).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(100.0), SCALE);
        assert_eq!(threshold(50.0), SCALE / 2);
        assert_eq!(threshold(0.5), 5_000);
    }

    #[test]
    fn keyed_draws_are_stable_and_unsalted() {
        let a = draw(Some(b"user-1"));
        assert_eq!(a, draw(Some(b"user-1")));
        assert_ne!(a, draw(Some(b"user-2")));
        // Pinned: the same on every build and machine (replicas agree).
        assert_eq!(draw(Some(b"user-1")), PINNED_USER_1);
        assert_eq!(fnv1a(&[b"a", b"b"]), fnv1a(&[b"a", b"b"]));
        assert_ne!(fnv1a(&[b"ab", b""]), fnv1a(&[b"a", b"b"]));
    }

    /// `draw(Some(b"user-1"))`, fixed forever: changing the hash reshuffles every
    /// deployment's sampled set.
    const PINNED_USER_1: u64 = 538_699;

    #[test]
    fn keyed_sets_are_nested_by_percent() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("req-{i}")).collect();
        let set = |percent: f64| -> Vec<&String> {
            let t = threshold(percent);
            keys.iter()
                .filter(|k| draw(Some(k.as_bytes())) < t)
                .collect()
        };
        let (s10, s30, s60) = (set(10.0), set(30.0), set(60.0));
        assert!(s10.iter().all(|k| s30.contains(k)), "10 % within 30 %");
        assert!(s30.iter().all(|k| s60.contains(k)), "30 % within 60 %");
    }

    /// Keys that differ little (counters, sequential ids) still spread uniformly: in each
    /// tenth of the scale, 100 000 keys put Binomial(100 000, 0.1) draws: mean 10 000,
    /// sd 94.9; the band is +-6 sd (a false failure about once in 10^9 runs, and the keys
    /// are fixed, so the outcome is too).
    #[test]
    fn keyed_draws_are_uniform() {
        let mut bins = [0u32; 10];
        for i in 0..100_000u32 {
            let d = draw(Some(format!("{i}").as_bytes()));
            bins[(d * 10 / SCALE) as usize] += 1;
        }
        for (i, n) in bins.iter().enumerate() {
            assert!((9_431..=10_569).contains(n), "bin {i}: {n} ({bins:?})");
        }
    }

    #[test]
    fn cookie_and_header_keys() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "u7".parse().unwrap());
        h.append(http::header::COOKIE, "a=1; session=abc".parse().unwrap());
        h.append(http::header::COOKIE, "other=2".parse().unwrap());
        assert_eq!(
            key_value(&SampleKey::Header("x-user-id".into()), &h),
            Some(&b"u7"[..])
        );
        assert_eq!(
            key_value(&SampleKey::Cookie("session".into()), &h),
            Some(&b"abc"[..])
        );
        assert_eq!(
            key_value(&SampleKey::Cookie("other".into()), &h),
            Some(&b"2"[..])
        );
        assert_eq!(key_value(&SampleKey::Cookie("missing".into()), &h), None);
        assert_eq!(key_value(&SampleKey::Header("x-missing".into()), &h), None);
    }
}
