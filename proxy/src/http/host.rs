//! Host names as clients write them.

use http::{Request, header};

/// The host the client asked for: the authority of an absolute-form or HTTP/2 request,
/// else the `Host` header.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// `host:port` -> `host`; `[::1]:80` -> `[::1]`.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn the_authority_wins_over_the_host_header() {
        let req = Request::get("http://a.example:81/x")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), Some("a.example:81"));
        let req = Request::get("/x")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), Some("b.example"));
        assert_eq!(request_host(&Request::get("/x").body(()).unwrap()), None);
    }
}
