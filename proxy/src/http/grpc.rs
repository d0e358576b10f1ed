//! gRPC over HTTP/2, as far as a proxy needs it (pure): telling a gRPC call by its
//! `content-type`, reading `grpc-timeout`, reading `grpc-status` from trailers (or the
//! headers of a trailers-only answer), naming the 17 status codes, and the trailers-only
//! answer teeproxy gives a gRPC client when the upstream fails.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC status `DEADLINE_EXCEEDED`.
pub(crate) const DEADLINE_EXCEEDED: u8 = 4;
/// gRPC status `UNAVAILABLE`.
pub(crate) const UNAVAILABLE: u8 = 14;
/// gRPC status `INTERNAL`.
pub(crate) const INTERNAL: u8 = 13;

/// The 17 gRPC status codes by number (the `code` label of `teeproxy_grpc_status_total`).
pub(crate) const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Whether a request or response is gRPC: `content-type: application/grpc` or
/// `application/grpc+proto`, `application/grpc;...` (case-insensitive).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim().as_bytes();
            let prefix = b"application/grpc";
            ct.len() >= prefix.len()
                && ct[..prefix.len()].eq_ignore_ascii_case(prefix)
                && matches!(ct.get(prefix.len()), None | Some(b'+' | b';'))
        })
}

/// The request's `grpc-timeout` (`1-8 digits` then `H M S m u n`); `None` when absent or
/// malformed (a malformed one is ignored, as gRPC servers do).
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` of an answer: from its trailers, else from its headers (a
/// trailers-only answer); `None` when neither has a valid one.
pub(crate) fn status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<u8> {
    trailers
        .and_then(|t| t.get(&GRPC_STATUS))
        .or_else(|| headers.get(&GRPC_STATUS))
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u8>().ok())
}

/// The `grpc-message` beside the status (percent-encoded as sent), if any.
pub(crate) fn message<'a>(
    headers: &'a HeaderMap,
    trailers: Option<&'a HeaderMap>,
) -> Option<&'a str> {
    let in_trailers = trailers.is_some_and(|t| t.contains_key(&GRPC_STATUS));
    let map = if in_trailers { trailers? } else { headers };
    map.get(&GRPC_MESSAGE).and_then(|v| v.to_str().ok())
}

/// The name of a status code (`OK`, `NOT_FOUND`, ...); `OTHER` past the 17.
pub(crate) fn code_name(code: u8) -> &'static str {
    CODE_NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("OTHER")
}

/// A trailers-only gRPC answer: HTTP 200, `content-type: application/grpc`, the status
/// and message in the headers.
pub(crate) fn trailers_only<B>(code: u8, message: &str, body: B) -> Response<B> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(&GRPC_STATUS, HeaderValue::from(u16::from(code)));
    if let Ok(m) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert(&GRPC_MESSAGE, m);
    }
    resp
}

/// `grpc-message` encoding: printable ASCII but `%` as is, everything else `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn grpc_content_types() {
        for (ct, yes) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC; charset=x", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            assert_eq!(is_grpc(&headers(&[("content-type", ct)])), yes, "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("123456789S"), None, "more than 8 digits");
        assert_eq!(t("10x"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn status_from_trailers_or_headers() {
        let trailers = headers(&[("grpc-status", "5"), ("grpc-message", "gone")]);
        let head = headers(&[("grpc-status", "2")]);
        assert_eq!(status(&HeaderMap::new(), Some(&trailers)), Some(5));
        assert_eq!(message(&HeaderMap::new(), Some(&trailers)), Some("gone"));
        assert_eq!(status(&head, None), Some(2), "trailers-only");
        assert_eq!(status(&HeaderMap::new(), None), None);
        assert_eq!(code_name(4), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(17), "OTHER");
        let r = trailers_only(DEADLINE_EXCEEDED, "deadline 5ms: upstream slower", ());
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(
            r.headers()["grpc-message"],
            "deadline 5ms%3A upstream slower".replace("%3A", ":")
        );
    }
}
