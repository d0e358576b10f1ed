//! Sampling decisions: random per request, or consistent per key (a header or cookie
//! value), in millionths so that `percent: 0.5` works.

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

/// The draw for a request in `[0, SCALE)`: from the key when there is one (salted per
/// shadow, so two shadows pick independent sets), else random.
pub(crate) fn draw(salt: &[u8], key: Option<&[u8]>) -> u64 {
    match key {
        Some(k) => fnv1a(&[salt, k]) % SCALE,
        None => random_u64() % SCALE,
    }
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
    fn keyed_draws_are_stable_and_salted() {
        let a = draw(b"candidate", Some(b"user-1"));
        assert_eq!(a, draw(b"candidate", Some(b"user-1")));
        assert_ne!(a, draw(b"other", Some(b"user-1")));
        assert_eq!(fnv1a(&[b"a", b"b"]), fnv1a(&[b"a", b"b"]));
        assert_ne!(fnv1a(&[b"ab", b""]), fnv1a(&[b"a", b"b"]));
    }

    #[test]
    fn random_draws_spread() {
        let n = 100_000;
        let below_half = (0..n).filter(|_| draw(b"s", None) < SCALE / 2).count();
        assert!((45_000..55_000).contains(&below_half), "{below_half}");
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
