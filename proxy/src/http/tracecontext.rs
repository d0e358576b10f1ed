//! W3C Trace Context (`traceparent`, `tracestate`), pure: parsing a `traceparent`, the
//! header of a child span (same trace id and flags, a new parent id), a new one, and a
//! `tracestate` with one entry put first. Random ids come from the caller.

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// List members a `tracestate` may hold.
const MAX_TRACESTATE_ENTRIES: usize = 32;

/// A valid `traceparent`: its trace id and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: u128,
    pub(crate) parent_id: u64,
    pub(crate) flags: u8,
}

impl TraceParent {
    /// Parses the request's `traceparent`; `None` when it is absent, repeated or malformed.
    /// A version above `00` is read as `00` (its first four fields), as the spec asks.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<TraceParent> {
        let mut all = headers.get_all(&TRACEPARENT).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => TraceParent::parse(v.as_bytes()),
            _ => None,
        }
    }

    pub(crate) fn parse(v: &[u8]) -> Option<TraceParent> {
        let s = std::str::from_utf8(v).ok()?;
        if s.len() < 55 || !s.is_ascii() || s.as_bytes()[2] != b'-' || s.as_bytes()[35] != b'-' {
            return None;
        }
        if s.as_bytes()[52] != b'-' {
            return None;
        }
        let version = lower_hex(&s[0..2])? as u8;
        match version {
            0xff => return None,
            0 if s.len() != 55 => return None,
            // A later version may add fields after a dash.
            _ if s.len() > 55 && s.as_bytes()[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = lower_hex(&s[3..35])?;
        let parent_id = lower_hex(&s[36..52])? as u64;
        let flags = lower_hex(&s[53..55])? as u8;
        (trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A child in the same trace: same trace id and flags, `span_id` as its parent id
    /// (zero is not an id: it becomes one).
    pub(crate) fn child(&self, span_id: u64) -> TraceParent {
        TraceParent {
            parent_id: span_id.max(1),
            ..*self
        }
    }

    /// A new trace (sampled flag off: teeproxy records nothing itself).
    pub(crate) fn new_root(trace_id: u128, span_id: u64) -> TraceParent {
        TraceParent {
            trace_id: trace_id.max(1),
            parent_id: span_id.max(1),
            flags: 0,
        }
    }

    pub(crate) fn to_header(self) -> HeaderValue {
        let s = format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        );
        HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// Lowercase hex only (the spec refuses uppercase).
fn lower_hex(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// `tracestate` with `key=value` first: an existing `key` entry removed, the list cut to 32
/// entries (the last ones go). Several `tracestate` headers are one list, in order.
pub(crate) fn tracestate_with(headers: &HeaderMap, key: &str, value: &str) -> HeaderValue {
    let mut out = format!("{key}={value}");
    let mut n = 1;
    let members = headers
        .get_all(&TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty());
    for m in members {
        if n == MAX_TRACESTATE_ENTRIES {
            break;
        }
        if m.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            continue;
        }
        out.push(',');
        out.push_str(m);
        n += 1;
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid_and_refuses_malformed() {
        let tp = TraceParent::parse(VALID.as_bytes()).unwrap();
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_header(), VALID);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
        // A later version with more fields is read as 00.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert_eq!(TraceParent::parse(later.as_bytes()).unwrap().flags, 1);
        let mut h = HeaderMap::new();
        h.append(&TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(TraceParent::from_headers(&h).is_some());
        h.append(&TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(TraceParent::from_headers(&h), None, "repeated");
    }

    #[test]
    fn child_keeps_trace_and_flags() {
        let tp = TraceParent::parse(VALID.as_bytes()).unwrap();
        let c = tp.child(0xabc);
        assert_eq!(
            c.to_header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
        assert_eq!(TraceParent::new_root(0, 0).trace_id, 1);
    }

    #[test]
    fn tracestate_puts_ours_first_replaces_and_caps() {
        let mut h = HeaderMap::new();
        assert_eq!(
            tracestate_with(&h, "teeproxy", "shadow-c"),
            "teeproxy=shadow-c"
        );
        h.append(&TRACESTATE, HeaderValue::from_static("a=1, teeproxy=old"));
        h.append(&TRACESTATE, HeaderValue::from_static("b=2"));
        assert_eq!(
            tracestate_with(&h, "teeproxy", "shadow-c"),
            "teeproxy=shadow-c,a=1,b=2"
        );
        let long: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        let mut h = HeaderMap::new();
        h.insert(&TRACESTATE, HeaderValue::from_str(&long.join(",")).unwrap());
        let v = tracestate_with(&h, "teeproxy", "x");
        let members: Vec<&str> = v.to_str().unwrap().split(',').collect();
        assert_eq!(members.len(), 32);
        assert_eq!(members[0], "teeproxy=x");
        assert_eq!(members[31], "k30=v");
    }
}
