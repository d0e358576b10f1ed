//! Typed config values: durations (`250ms`, `1.5s`, `1m30s`) and byte sizes (`64KiB`, `1MiB`).
//! Nothing downstream of the config sees a string that should have been parsed.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written with units `ms`, `s`, `m`, `h` (`250ms`, `1.5s`, `1m30s`, `1h`).
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

/// The duration units, largest first, with their length in milliseconds.
const DUR_UNITS: [(&str, u128); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses `250ms`, `5s`, `1m`, `1h`, compound forms with the units from largest to
/// smallest, each at most once (`1m30s`, `1h30m`, `2s500ms`), and decimal fractions
/// (`1.5s`, `0.25h`, `1m0.5s`). The resolution is one millisecond: a value with a finer
/// part (`1.0005s`) is refused rather than rounded.
impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = |why: &str| {
            format!(
                "invalid duration {s:?}: {why} (expected a number with a unit: ms, s, m or h, \
                 like 250ms, 1.5s, 1m30s or 1h)"
            )
        };
        let text = s.trim();
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        let mut rest = text;
        let mut total: u128 = 0;
        // Index in DUR_UNITS of the last unit used: the next must be smaller.
        let mut last: Option<usize> = None;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let number = &rest[..digits];
            if number.is_empty() {
                return Err(err(&format!("a number is missing before {rest:?}")));
            }
            let (int, frac) = number.split_once('.').unwrap_or((number, ""));
            if int.is_empty() && frac.is_empty() || frac.contains('.') {
                return Err(err(&format!("{number:?} is not a number")));
            }
            if frac.len() > 9 {
                return Err(err("more than 9 decimals"));
            }
            rest = rest[digits..].trim_start();
            let unit_len = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            if unit.is_empty() {
                return Err(err(&format!("{number} has no unit")));
            }
            let Some(index) = DUR_UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(err(&format!("unknown unit {unit:?}")));
            };
            if last.is_some_and(|l| index <= l) {
                return Err(err(&format!(
                    "{unit:?} comes after a unit at least as small: write units from largest to smallest, each once"
                )));
            }
            last = Some(index);
            let ms_per_unit = DUR_UNITS[index].1;
            let int: u128 = if int.is_empty() {
                0
            } else {
                int.parse().map_err(|_| err("the number is too large"))?
            };
            let scale = 10u128.pow(frac.len() as u32);
            let frac_units: u128 = if frac.is_empty() {
                0
            } else {
                frac.parse().map_err(|_| err("bad decimals"))?
            };
            let frac_ms = frac_units * ms_per_unit;
            if !frac_ms.is_multiple_of(scale) {
                return Err(err("finer than a millisecond"));
            }
            total = int
                .checked_mul(ms_per_unit)
                .and_then(|t| t.checked_add(frac_ms / scale))
                .and_then(|t| t.checked_add(total))
                .ok_or_else(|| err("the number is too large"))?;
            rest = rest[unit_len..].trim_start();
        }
        let ms = u64::try_from(total).map_err(|_| err("the number is too large"))?;
        Ok(Dur(Duration::from_millis(ms)))
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

/// A readable form, largest units first: `0s`, `250ms`, `1.5s`, `1m30s`, `1h`,
/// `1h0m0.25s`; it parses back to the same value.
impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms < 1000 {
            return write!(f, "{ms}ms");
        }
        let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 || h > 0 && (s > 0 || milli > 0) {
            write!(f, "{m}m")?;
        }
        if milli > 0 {
            let frac = format!("{milli:03}");
            write!(f, "{s}.{}s", frac.trim_end_matches('0'))?;
        } else if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
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

/// A share written as a percentage: `10%` or a plain number of percent (`10`, `0.5`).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub(super) struct Pct(pub(super) f64);

impl FromStr for Pct {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let n = t.strip_suffix('%').unwrap_or(t).trim();
        // Digits with an optional decimal part, as the schema says (no `1e1`, no `.5`).
        let (int, frac) = n.split_once('.').unwrap_or((n, "0"));
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        (digits(int) && digits(frac))
            .then(|| n.parse::<f64>().ok())
            .flatten()
            .filter(|v| v.is_finite())
            .map(Pct)
            .ok_or_else(|| {
                format!("invalid percentage {s:?} (expected a number of percent, like 10% or 0.5%)")
            })
    }
}

impl<'de> Deserialize<'de> for Pct {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Pct;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage like 10% or 0.5%")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Pct, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Pct, E> {
                Ok(Pct(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Pct, E> {
                Ok(Pct(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Pct, E> {
                Ok(Pct(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

/// Serializes a share (a fraction) as the config writes it (`10%`).
pub(super) fn pct<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{}%", (v * 1e6).round() / 1e4))
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
    fn percentages() {
        assert_eq!("10%".parse::<Pct>(), Ok(Pct(10.0)));
        assert_eq!(" 0.5 % ".parse::<Pct>(), Ok(Pct(0.5)));
        assert_eq!("7".parse::<Pct>(), Ok(Pct(7.0)));
        assert!("ten%".parse::<Pct>().is_err());
        assert!("inf%".parse::<Pct>().is_err());
        assert!("1e1%".parse::<Pct>().is_err() && ".5%".parse::<Pct>().is_err());
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let table = [
            ("250ms", Some(ms(250))),
            ("5s", Some(Duration::from_secs(5))),
            ("1m", Some(Duration::from_secs(60))),
            ("2h", Some(Duration::from_secs(7200))),
            ("0s", Some(Duration::ZERO)),
            (" 5 s ", Some(Duration::from_secs(5))),
            // Compound, largest unit first.
            ("1m30s", Some(ms(90_000))),
            ("1h30m", Some(ms(5_400_000))),
            ("1h2m3s4ms", Some(ms(3_723_004))),
            ("2s500ms", Some(ms(2_500))),
            // Fractions.
            ("1.5s", Some(ms(1_500))),
            ("0.25h", Some(ms(900_000))),
            ("1.5m", Some(ms(90_000))),
            ("1m0.5s", Some(ms(60_500))),
            (".5s", Some(ms(500))),
            ("2.s", Some(ms(2_000))),
            ("0.001s", Some(ms(1))),
            ("5", None),
            ("s", None),
            ("-1s", None),
            ("5 days", None),
            ("", None),
            ("1.0005s", None),
            ("0.5ms", None),
            ("30s1m", None),
            ("1s1s", None),
            ("1.2.3s", None),
            (".s", None),
            ("1m30", None),
            ("1d", None),
            ("99999999999999999999999999999999999999999h", None),
            ("9999999999999999999h", None),
        ];
        for (input, want) in table {
            assert_eq!(input.parse::<Dur>().ok().map(Dur::get), want, "{input}");
        }
    }

    #[test]
    fn duration_errors_say_what_is_wrong() {
        let table = [
            ("1.0005s", "finer than a millisecond"),
            ("30s1m", "from largest to smallest"),
            ("1m30", "30 has no unit"),
            ("5 days", "unknown unit \"days\""),
            ("", "it is empty"),
            ("-1s", "a number is missing"),
            ("1.2.3s", "is not a number"),
        ];
        for (input, want) in table {
            let e = input.parse::<Dur>().unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
            assert!(e.contains("like 250ms, 1.5s, 1m30s or 1h"), "{input}: {e}");
        }
    }

    #[test]
    fn durations_serialize_readably_and_parse_back() {
        let table = [
            (0, "0s"),
            (250, "250ms"),
            (1_000, "1s"),
            (1_500, "1.5s"),
            (1_250, "1.25s"),
            (5_000, "5s"),
            (60_000, "1m"),
            (90_000, "1m30s"),
            (90_500, "1m30.5s"),
            (3_600_000, "1h"),
            (5_400_000, "1h30m"),
            (3_600_250, "1h0m0.25s"),
            (3_605_000, "1h0m5s"),
        ];
        for (millis, want) in table {
            let d = Dur(Duration::from_millis(millis));
            assert_eq!(d.to_string(), want);
            assert_eq!(want.parse::<Dur>(), Ok(d), "{want} parses back");
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
        for s in ["250ms", "5s", "1m30s", "1.5s", "64KiB", "1MiB", "100B"] {
            let shown = if s.ends_with("ms") || s.ends_with('s') && !s.ends_with("iB") {
                s.parse::<Dur>().unwrap().to_string()
            } else {
                s.parse::<Size>().unwrap().to_string()
            };
            assert_eq!(shown, s);
        }
    }
}
