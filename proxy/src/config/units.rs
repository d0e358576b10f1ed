//! Typed config values: durations (`250ms`, `5s`, `1m`) and byte sizes (`64KiB`, `1MiB`).
//! Nothing downstream of the config sees a string that should have been parsed.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written with a unit: `ms`, `s`, `m` or `h` (`250ms`, `5s`, `1m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// A size in bytes, written as a plain number or with a unit: `B`, `KiB`, `MiB`, `GiB`
/// (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    #[cfg(test)]
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl Size {
    pub const fn kib(n: u64) -> Self {
        Size(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        Size(n * 1024 * 1024)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// The size as `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let n = s[..end].parse::<u64>().ok()?;
    Some((n, s[end..].trim_start()))
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid duration {s:?}: expected a number with a unit, like 250ms, 5s, 1m or 1h"
            )
        };
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        Ok(Dur(d))
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid size {s:?}: expected bytes, or a number with a unit, like 512, 64KiB or 1MiB"
            )
        };
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let mult: u64 = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(Size).ok_or_else(bad)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

struct UnitVisitor<T>(std::marker::PhantomData<T>, &'static str);

impl<T: FromStr<Err = String>> Visitor<'_> for UnitVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor(
            std::marker::PhantomData,
            "a duration like 250ms or 5s",
        ))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor(
            std::marker::PhantomData,
            "a size like 64KiB or 1MiB",
        ))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Serializes a duration as the config writes it (`5s`, `250ms`).
pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Dur(*d))
}

/// Serializes a byte count as the config writes it (`64KiB`).
pub(super) fn size<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Size(*n))
}

pub(super) fn size_usize<S: Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Size(*n as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            ("250ms", Some(Duration::from_millis(250))),
            ("5s", Some(Duration::from_secs(5))),
            ("1m", Some(Duration::from_secs(60))),
            ("2h", Some(Duration::from_secs(7200))),
            ("0s", Some(Duration::ZERO)),
            ("5", None),
            ("s", None),
            ("1.5s", None),
            ("-1s", None),
            ("5 days", None),
            ("", None),
        ];
        for (input, want) in table {
            assert_eq!(input.parse::<Dur>().ok().map(Dur::get), want, "{input}");
        }
    }

    #[test]
    fn sizes() {
        let table = [
            ("512", Some(512)),
            ("64KiB", Some(65536)),
            ("1MiB", Some(1 << 20)),
            ("1GiB", Some(1 << 30)),
            ("2KB", Some(2000)),
            ("10B", Some(10)),
            ("1 MiB", Some(1 << 20)),
            ("1Mb", None),
            ("KiB", None),
            ("-1", None),
            ("99999999999999999999GiB", None),
        ];
        for (input, want) in table {
            assert_eq!(input.parse::<Size>().ok().map(Size::bytes), want, "{input}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["250ms", "5s", "64KiB", "1MiB", "100B"] {
            let shown = if s.ends_with("ms") || s.ends_with('s') && !s.ends_with("iB") {
                s.parse::<Dur>().unwrap().to_string()
            } else {
                s.parse::<Size>().unwrap().to_string()
            };
            assert_eq!(shown, s);
        }
    }
}
