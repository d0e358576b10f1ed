//! The one reading of `Upgrade` and `Connection` on a request: what the client asks to
//! switch to, if anything.

use http::header::{self, HeaderValue};
use http::{Method, Request, Version};

/// What a request asks for with `Upgrade`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// No upgrade, or only `h2c` (stripped and served as a plain request).
    None,
    /// An HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket`: relayed to
    /// the primary when the route allows it. Holds the client's `Upgrade` value.
    WebSocket(HeaderValue),
    /// Any other protocol: never mirrored; on HTTP/1.1 its connection closes after the
    /// answer (the bytes after its head are the client's own protocol, not HTTP/1).
    Other,
}

impl Upgrade {
    pub(crate) fn of<B>(req: &Request<B>) -> Upgrade {
        let h = req.headers();
        let mut protocols = h
            .get_all(header::UPGRADE)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(str::trim);
        if !protocols.any(|p| !p.eq_ignore_ascii_case("h2c")) {
            return Upgrade::None;
        }
        let connection_upgrade = h
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        match h.get(header::UPGRADE) {
            Some(u)
                if req.version() == Version::HTTP_11
                    && req.method() == Method::GET
                    && connection_upgrade
                    && u.as_bytes().eq_ignore_ascii_case(b"websocket") =>
            {
                Upgrade::WebSocket(u.clone())
            }
            _ => Upgrade::Other,
        }
    }

    /// Whether copies of this request may go to shadows (only plain requests are copied).
    pub(crate) fn mirrorable(&self) -> bool {
        matches!(self, Upgrade::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).method(method).uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn upgrades_are_read_one_way() {
        let ws = HeaderValue::from_static("websocket");
        let table = [
            (Version::HTTP_11, "GET", vec![], Upgrade::None),
            (
                Version::HTTP_11,
                "GET",
                vec![("upgrade", "h2c"), ("connection", "upgrade")],
                Upgrade::None,
            ),
            (
                Version::HTTP_11,
                "GET",
                vec![("upgrade", "websocket"), ("connection", "Upgrade")],
                Upgrade::WebSocket(ws.clone()),
            ),
            (
                Version::HTTP_11,
                "GET",
                vec![
                    ("upgrade", "websocket"),
                    ("connection", "keep-alive, upgrade"),
                ],
                Upgrade::WebSocket(ws.clone()),
            ),
            (
                Version::HTTP_11,
                "GET",
                vec![("upgrade", "websocket")],
                Upgrade::Other,
            ),
            (
                Version::HTTP_11,
                "POST",
                vec![("upgrade", "websocket"), ("connection", "upgrade")],
                Upgrade::Other,
            ),
            (
                Version::HTTP_10,
                "GET",
                vec![("upgrade", "websocket"), ("connection", "upgrade")],
                Upgrade::Other,
            ),
            (
                Version::HTTP_11,
                "GET",
                vec![("upgrade", "foo/1"), ("connection", "upgrade")],
                Upgrade::Other,
            ),
            (
                Version::HTTP_11,
                "GET",
                vec![("upgrade", "h2c, foo")],
                Upgrade::Other,
            ),
            (
                Version::HTTP_11,
                "GET",
                vec![("upgrade", "")],
                Upgrade::Other,
            ),
        ];
        for (version, method, headers, want) in table {
            assert_eq!(
                Upgrade::of(&req(version, method, &headers)),
                want,
                "{method} {headers:?}"
            );
        }
        assert!(Upgrade::None.mirrorable());
        assert!(!Upgrade::Other.mirrorable());
        assert!(!Upgrade::WebSocket(ws).mirrorable());
    }
}
