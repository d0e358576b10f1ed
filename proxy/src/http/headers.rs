//! Header rewriting for both directions: hop-by-hop removal (RFC 9110 7.6.1), framing
//! headers, `X-Forwarded-*`, and the request id.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::ForwardedMode;

#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers removed in both directions, besides those named in `Connection`
/// (names made once: a `&str` key is parsed into a name at every lookup).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Headers a `Connection` option can never remove: losing them would change who the
/// request is for or where it came from (`Connection: close, Host` keeps `Host`).
const PROTECTED: [&str; 6] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "content-type",
];

/// Removes hop-by-hop headers: the fixed list and every header named in `Connection`
/// (except the protected ones).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (standard names compare as
    // numbers) instead of a hashed lookup per hop-by-hop name. `Connection` is one of
    // them, so a message without any names no others either.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(&header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            if token.is_empty() {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                && !PROTECTED.contains(&name.as_str())
            {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// Prepares a client request's headers for an upstream: hop-by-hop and framing headers
/// removed (the client side re-frames from the body), `Expect` removed (the proxy answers
/// `100 Continue` itself), `X-Forwarded-*` set.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub fn rewrite_request(headers: &mut HeaderMap, fwd: &Forwarded<'_>, mode: ForwardedMode) {
    strip_hop_by_hop(headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    join_cookies(headers);

    let ip = &fwd.client_ip;
    let xff = match mode {
        ForwardedMode::Append => {
            let prior: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            if prior.is_empty() {
                Some(ip.clone())
            } else {
                let ip = ip.to_str().unwrap_or_default();
                HeaderValue::from_str(&format!("{}, {ip}", prior.join(", "))).ok()
            }
        }
        ForwardedMode::Replace => Some(ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(fwd.proto),
    );
    match fwd.host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// HTTP/2 clients may split `cookie` into several fields; HTTP/1.1 upstreams expect one
/// (RFC 9113 8.2.3): join them with "; ".
fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    if let (Some(_), Some(_)) = (all.next(), all.next()) {
        // Bytes, not text: a cookie with non-ASCII bytes is passed on like the others.
        let joined: Vec<&[u8]> = headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// Prepares an upstream response's headers for the client.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub fn rewrite_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// What the proxy knows about the client side of a request.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub struct Forwarded<'a> {
    /// The client's address as text (`ConnInfo::peer_ip`).
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub client_ip: HeaderValue,
    /// `http`, or `https` on TLS listeners.
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub proto: &'static str,
    /// The host the client asked for.
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub host: Option<&'a str>,
}

/// Makes request ids: 32 hex digits, a random per-process prefix and a counter.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write_u32(std::process::id());
        RequestIds {
            prefix: h.finish(),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub fn next(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        for (i, v) in [self.prefix, n].into_iter().enumerate() {
            for (j, b) in v.to_be_bytes().into_iter().enumerate() {
                id[i * 16 + j * 2] = HEX[usize::from(b >> 4)];
                id[i * 16 + j * 2 + 1] = HEX[usize::from(b & 0xf)];
            }
        }
        HeaderValue::from_bytes(&id).expect("hex is a valid header value")
    }

    /// The request id to use: the client's if it is sane (1-200 visible ASCII characters),
    /// else a new one. The chosen id is written into `headers`.
    #[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
    pub fn ensure(&self, headers: &mut HeaderMap) -> HeaderValue {
        let mut all = headers.get_all(&X_REQUEST_ID).iter();
        let existing = match (all.next(), all.next()) {
            (Some(v), None) if is_sane_id(v) => Some(v.clone()),
            _ => None,
        };
        let id = existing.unwrap_or_else(|| self.next());
        headers.insert(X_REQUEST_ID.clone(), id.clone());
        id
    }
}

/// A copy of `v` in its own allocation. Values parsed by hyper are slices of the
/// connection's read buffer: one kept beyond the request (a queued shadow copy) would keep
/// that whole buffer alive.
pub(crate) fn detached_value(v: &HeaderValue) -> HeaderValue {
    let mut d = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
    d.set_sensitive(v.is_sensitive());
    d
}

/// `headers` with its values copied out of whatever buffer they were parsed from (see
/// `detached_value`), all into one allocation of their own: the map's structure is cloned
/// (no rehashing) and each value becomes a slice of that one copy.
pub(crate) fn detached(headers: &HeaderMap) -> HeaderMap {
    let mut all = BytesMut::with_capacity(headers.values().map(HeaderValue::len).sum());
    for v in headers.values() {
        all.extend_from_slice(v.as_bytes());
    }
    let all = all.freeze();
    let mut out = headers.clone();
    let mut at = 0;
    // `values` and `values_mut` walk the entries in the same order.
    for v in out.values_mut() {
        let end = at + v.len();
        let mut d = HeaderValue::from_maybe_shared(all.slice(at..end))
            .unwrap_or_else(|_| detached_value(v));
        d.set_sensitive(v.is_sensitive());
        *v = d;
        at = end;
    }
    out
}

/// The values of `names` only, each copied out of the buffer it was parsed from (see
/// `detached_value`), in their order within each name.
pub(crate) fn detached_only(headers: &HeaderMap, names: &[HeaderName]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in names {
        for v in headers.get_all(name) {
            out.append(name.clone(), detached_value(v));
        }
    }
    out
}

fn is_sane_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn detached_copies_every_value_out_of_the_parsed_buffer() {
        let buf = bytes::Bytes::from_static(b"text/plainabcsecret");
        let mut h = HeaderMap::new();
        h.append(
            header::CONTENT_TYPE,
            HeaderValue::from_maybe_shared(buf.slice(0..10)).unwrap(),
        );
        h.append(
            "x-a",
            HeaderValue::from_maybe_shared(buf.slice(10..13)).unwrap(),
        );
        h.append("x-a", HeaderValue::from_static("second"));
        let mut secret = HeaderValue::from_maybe_shared(buf.slice(13..19)).unwrap();
        secret.set_sensitive(true);
        h.append(header::AUTHORIZATION, secret);
        let d = detached(&h);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert_eq!(d.len(), 4);
        for ((n1, v1), (n2, v2)) in h.iter().zip(d.iter()) {
            assert_eq!((n1, v1.as_bytes()), (n2, v2.as_bytes()));
            assert_eq!(v1.is_sensitive(), v2.is_sensitive(), "{n1}");
            assert!(
                !range.contains(&(v2.as_bytes().as_ptr() as usize)),
                "{n1} still points into the parsed buffer"
            );
        }
        assert!(d[header::AUTHORIZATION].is_sensitive());
        let a: Vec<_> = d
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(a, ["abc", "second"]);
        assert!(detached(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn detached_only_keeps_the_named_values_in_order_copied_out() {
        let buf = bytes::Bytes::from_static(b"text/htmlonetwo");
        let mut h = HeaderMap::new();
        h.append(
            header::CONTENT_TYPE,
            HeaderValue::from_maybe_shared(buf.slice(0..9)).unwrap(),
        );
        h.append(
            "x-a",
            HeaderValue::from_maybe_shared(buf.slice(9..12)).unwrap(),
        );
        h.append(
            "x-a",
            HeaderValue::from_maybe_shared(buf.slice(12..15)).unwrap(),
        );
        h.append("x-other", HeaderValue::from_static("dropped"));
        let names = [
            HeaderName::from_static("x-a"),
            header::CONTENT_TYPE,
            header::ETAG,
        ];
        let d = detached_only(&h, &names);
        assert_eq!(d.len(), 3);
        assert_eq!(d[header::CONTENT_TYPE], "text/html");
        let a: Vec<_> = d.get_all("x-a").iter().collect();
        assert_eq!(a, ["one", "two"]);
        assert!(!d.contains_key("x-other") && !d.contains_key(header::ETAG));
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        for v in d.values() {
            assert!(!range.contains(&(v.as_bytes().as_ptr() as usize)));
        }
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_table() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let table: [Case; 6] = [
            (
                &[("connection", "close"), ("host", "a"), ("x-a", "1")],
                &["host", "x-a"],
            ),
            (
                &[
                    ("connection", "close, Host, x-forwarded-for"),
                    ("host", "a"),
                    ("x-forwarded-for", "1.1.1.1"),
                ],
                &["host", "x-forwarded-for"],
            ),
            (
                &[
                    ("connection", "x-secret , X-Other"),
                    ("x-secret", "s"),
                    ("x-other", "o"),
                    ("x-keep", "k"),
                ],
                &["x-keep"],
            ),
            (
                &[
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("te", "trailers"),
                    ("upgrade", "h2c"),
                    ("http2-settings", "AAA"),
                    ("accept", "*/*"),
                ],
                &["accept"],
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("content-type", "text/plain"),
                ],
                &["content-type"],
            ),
            (
                &[
                    ("connection", "x-a"),
                    ("connection", "x-b"),
                    ("x-a", "1"),
                    ("x-b", "2"),
                    ("x-c", "3"),
                ],
                &["x-c"],
            ),
        ];
        for (input, want) in table {
            let mut h = map(input);
            strip_hop_by_hop(&mut h);
            assert_eq!(
                names(&h),
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{input:?}"
            );
        }
    }

    #[test]
    fn request_rewrite_sets_forwarded_and_drops_framing() {
        let fwd = Forwarded {
            client_ip: HeaderValue::from_static("10.1.2.3"),
            proto: "http",
            host: Some("api.example.com"),
        };
        let mut h = map(&[
            ("content-length", "5"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        rewrite_request(&mut h, &fwd, ForwardedMode::Append);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert!(!h.contains_key("content-length"));
        assert!(!h.contains_key("expect"));

        let mut h = map(&[("x-forwarded-for", "1.1.1.1")]);
        rewrite_request(&mut h, &fwd, ForwardedMode::Replace);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");

        let mut h = HeaderMap::new();
        rewrite_request(&mut h, &fwd, ForwardedMode::Append);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");

        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        rewrite_request(&mut h, &fwd, ForwardedMode::Append);
        assert_eq!(
            h.get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2"],
            "one cookie line for HTTP/1.1"
        );

        // A cookie with non-ASCII bytes is joined like the rest, not dropped.
        let mut h = map(&[("cookie", "a=1")]);
        h.append("cookie", HeaderValue::from_bytes(b"n=caf\xc3\xa9").unwrap());
        rewrite_request(&mut h, &fwd, ForwardedMode::Append);
        assert_eq!(
            h.get_all("cookie")
                .iter()
                .map(|v| v.as_bytes())
                .collect::<Vec<_>>(),
            [&b"a=1; n=caf\xc3\xa9"[..]]
        );
    }

    #[test]
    fn request_ids() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        // The per-process prefix, then the counter, as 16 lower-case hex digits each.
        let want = |n: u64| format!("{:016x}{:016x}", ids.prefix, n);
        assert_eq!(a.to_str().unwrap(), want(1));
        assert_eq!(b.to_str().unwrap(), want(2));

        let mut h = map(&[("x-request-id", "abc-123")]);
        assert_eq!(ids.ensure(&mut h), "abc-123");
        let mut h = map(&[("x-request-id", "has space")]);
        assert_ne!(ids.ensure(&mut h), "has space");
        let mut h = map(&[("x-request-id", "a"), ("x-request-id", "b")]);
        let id = ids.ensure(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        let mut h = HeaderMap::new();
        let id = ids.ensure(&mut h);
        assert_eq!(h["x-request-id"], id);
    }
}
