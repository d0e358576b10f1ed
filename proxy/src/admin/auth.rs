//! Who may use the protected admin endpoints: with `admin.token_file`, a caller that sends
//! `Authorization: Bearer <token>` with the file's token (re-read on each protected
//! request, so a rotated token applies at once); without it, callers of an admin bound to
//! loopback, and nobody on any other address. Every refusal is counted by reason.

use http::{HeaderValue, Request, Response, StatusCode, header};

use super::{AdminState, Answer, Caller, text};
use crate::metrics::AdminDenial;

/// `None` when `req` may use a protected endpoint; else the refusal to send.
pub(super) fn refusal<B>(state: &AdminState, from: Caller, req: &Request<B>) -> Option<Answer> {
    let token_file = state.snapshots.load().config.admin.token_file.clone();
    let Some(path) = token_file else {
        if from.loopback && local_host(req) {
            return None;
        }
        if from.loopback {
            // Reached on loopback under another name: a page whose host name was made to
            // resolve to 127.0.0.1 (DNS rebinding) is not this host's operator.
            return Some(deny(
                state,
                from,
                AdminDenial::host_not_local,
                StatusCode::FORBIDDEN,
                "forbidden: without admin.token_file, ask for this endpoint as localhost or by IP address\n",
            ));
        }
        return Some(deny(
            state,
            from,
            AdminDenial::no_token_configured,
            StatusCode::FORBIDDEN,
            "forbidden: this endpoint needs admin.token_file when the admin listens beyond loopback\n",
        ));
    };
    // A few bytes from a local file (a mounted secret): read in place.
    let expected = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        Ok(_) | Err(_) => {
            tracing::error!(path = %path.display(), "admin.token_file cannot be read or is empty: protected admin endpoints refuse every caller");
            return Some(deny(
                state,
                from,
                AdminDenial::token_unreadable,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable: the admin token file cannot be read\n",
            ));
        }
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match given {
        None => Some(deny(
            state,
            from,
            AdminDenial::missing_token,
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: Bearer <token>\n",
        )),
        Some(t) if same(t.as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some(deny(
            state,
            from,
            AdminDenial::wrong_token,
            StatusCode::UNAUTHORIZED,
            "unauthorized: wrong token\n",
        )),
    }
}

/// Whether the request names this host as `localhost` or an IP address (or names none).
fn local_host<B>(req: &Request<B>) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("-"))
        .or_else(|| req.uri().host())
    else {
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn deny(
    state: &AdminState,
    from: Caller,
    reason: AdminDenial,
    status: StatusCode,
    body: &'static str,
) -> Answer {
    state.metrics.admin_denied(reason);
    if reason == AdminDenial::missing_token {
        // The dashboard asks without a token until one is entered: not worth a warning.
        tracing::debug!(peer = %from.peer, ?reason, "admin request refused");
    } else {
        tracing::warn!(peer = %from.peer, ?reason, "admin request refused");
    }
    let mut r: Response<_> = text(status, body);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"teeproxy admin\""),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_and_compared_whole() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn only_localhost_and_addresses_are_local_host_names() {
        let host = |h: &str| {
            let r = Request::get("/api/config")
                .header(header::HOST, h)
                .body(())
                .unwrap();
            local_host(&r)
        };
        for ok in [
            "localhost",
            "LOCALHOST:9901",
            "127.0.0.1:9901",
            "10.0.0.1",
            "[::1]:9901",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example:9901",
            "localhost.evil.example",
            "[evil]:1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(
            local_host(&Request::get("/").body(()).unwrap()),
            "no Host at all"
        );
    }
}
