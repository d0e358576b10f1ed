//! Request validation before anything is forwarded (framing, Host, size limits, methods).
//! hyper enforces the HTTP/1 head size and header count itself (431) and the HTTP/1
//! `Content-Length` + `Transfer-Encoding` case is caught by `server::guard`; the checks
//! here hold for both HTTP/1 and HTTP/2.

use http::{HeaderMap, Method, Request, Version, header};

use crate::config::Limits;

/// Why a request is refused before anything is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub enum Reject {
    #[error("method {0} is not allowed")]
    MethodNotAllowed(&'static str),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request URI too long")]
    UriTooLong,
    #[error("request header fields too large")]
    HeadersTooLarge,
}

impl Reject {
    /// The status a refused request is answered with.
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub fn status(&self) -> http::StatusCode {
        match self {
            Reject::MethodNotAllowed(_) => http::StatusCode::METHOD_NOT_ALLOWED,
            Reject::BadRequest(_) => http::StatusCode::BAD_REQUEST,
            Reject::UriTooLong => http::StatusCode::URI_TOO_LONG,
            Reject::HeadersTooLarge => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }
}

/// The limits the handler enforces, taken from the config.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub struct RequestLimits {
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub max_header_bytes: usize,
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub max_headers: usize,
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub max_uri_bytes: usize,
}

impl From<&Limits> for RequestLimits {
    fn from(l: &Limits) -> Self {
        RequestLimits {
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            max_uri_bytes: l.max_uri_bytes,
        }
    }
}

/// Rejects requests that must not be forwarded.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub fn check_request<B>(req: &Request<B>, limits: &RequestLimits) -> Result<(), Reject> {
    if req.method() == Method::CONNECT {
        return Err(Reject::MethodNotAllowed("CONNECT"));
    }
    let uri = req.uri();
    let uri_len = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 3)
        + uri.scheme_str().map_or(0, str::len);
    if uri_len > limits.max_uri_bytes {
        return Err(Reject::UriTooLong);
    }
    check_header_size(req.headers(), limits)?;
    let headers = req.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => {
            if let (Some(host), Some(authority)) = (headers.get(header::HOST), uri.authority())
                && host.as_bytes() != authority.as_str().as_bytes()
            {
                return Err(Reject::BadRequest("host header differs from :authority"));
            }
        }
        version => {
            if hosts > 1 {
                return Err(Reject::BadRequest("more than one Host header"));
            }
            if hosts == 0 && version == Version::HTTP_11 {
                return Err(Reject::BadRequest("missing Host header"));
            }
            check_transfer_encoding(headers)?;
        }
    }
    Ok(())
}

fn check_header_size(headers: &HeaderMap, limits: &RequestLimits) -> Result<(), Reject> {
    if headers.len() > limits.max_headers {
        return Err(Reject::HeadersTooLarge);
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    Ok(())
}

/// HTTP/1: `Transfer-Encoding` is a single `chunked`, or absent. hyper accepts a repeated
/// header and other codings before `chunked`; a proxy that re-frames should not.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Reject> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(Reject::BadRequest("duplicate Transfer-Encoding header")),
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(()),
        (Some(_), None) => Err(Reject::BadRequest("unsupported Transfer-Encoding")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::host::request_host;

    const LIMITS: RequestLimits = RequestLimits {
        max_header_bytes: 1024,
        max_headers: 10,
        max_uri_bytes: 64,
    };

    fn req(version: Version, method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn validation_table() {
        const HTTP_10: Version = Version::HTTP_10;
        const HTTP_11: Version = Version::HTTP_11;
        const HTTP_2: Version = Version::HTTP_2;
        let long = format!("/{}", "a".repeat(64));
        let big = "v".repeat(1024);
        let many: Vec<(&str, &str)> = (0..11).map(|_| ("x-a", "1")).collect();
        let table: Vec<(Request<()>, Option<u16>)> = vec![
            (req(HTTP_11, "GET", "/", &[("host", "a")]), None),
            (req(HTTP_10, "GET", "/", &[]), None),
            (req(HTTP_11, "GET", "/", &[]), Some(400)),
            (
                req(HTTP_11, "GET", "/", &[("host", "a"), ("host", "b")]),
                Some(400),
            ),
            (
                req(HTTP_10, "GET", "/", &[("host", "a"), ("host", "a")]),
                Some(400),
            ),
            (
                req(HTTP_11, "CONNECT", "a.example:443", &[("host", "a")]),
                Some(405),
            ),
            (req(HTTP_11, "GET", &long, &[("host", "a")]), Some(414)),
            (
                req(HTTP_11, "GET", "/", &[("host", "a"), ("x-big", &big)]),
                Some(431),
            ),
            (
                req(HTTP_11, "GET", "/", &[&[("host", "a")][..], &many].concat()),
                Some(431),
            ),
            (
                req(
                    HTTP_11,
                    "POST",
                    "/",
                    &[("host", "a"), ("transfer-encoding", "chunked")],
                ),
                None,
            ),
            (
                req(
                    HTTP_11,
                    "POST",
                    "/",
                    &[
                        ("host", "a"),
                        ("transfer-encoding", "chunked"),
                        ("transfer-encoding", "chunked"),
                    ],
                ),
                Some(400),
            ),
            (
                req(
                    HTTP_11,
                    "POST",
                    "/",
                    &[("host", "a"), ("transfer-encoding", "gzip, chunked")],
                ),
                Some(400),
            ),
            (req(HTTP_2, "GET", "http://a.example/", &[]), None),
            (
                req(HTTP_2, "GET", "http://a.example/", &[("host", "a.example")]),
                None,
            ),
            (
                req(HTTP_2, "GET", "http://a.example/", &[("host", "b.example")]),
                Some(400),
            ),
        ];
        for (r, want) in table {
            let got = check_request(&r, &LIMITS)
                .err()
                .map(|e| crate::proxy::error::ProxyError::from(e).status().as_u16());
            assert_eq!(
                got,
                want,
                "{} {} {:?} {:?}",
                r.method(),
                r.uri(),
                r.version(),
                r.headers()
            );
        }
    }

    #[test]
    fn host_comes_from_the_authority_first() {
        assert_eq!(
            request_host(&req(
                Version::HTTP_11,
                "GET",
                "http://abs.example/p",
                &[("host", "h")]
            )),
            Some("abs.example")
        );
        assert_eq!(
            request_host(&req(Version::HTTP_11, "GET", "/p", &[("host", "h:1")])),
            Some("h:1")
        );
        assert_eq!(request_host(&req(Version::HTTP_10, "GET", "/p", &[])), None);
    }
}
