//! The one place where failures become responses: every error the handler can meet maps
//! to a status and a short plain-text body here.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::http::checks::Reject;
use crate::metrics::RejectReason;
use crate::upstream::UpstreamError;

use super::body::ResponseTee;

/// The body of every response the proxy sends: the upstream's, streamed, or its own.
pub type ProxyBody = Either<ResponseTee<Incoming>, Full<Bytes>>;

/// Why a request was not served by an upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no route matches this request")]
    NoRoute,
    #[error(transparent)]
    Rejected(#[from] Reject),
    #[error("WebSocket upgrades are not enabled on this route")]
    UpgradeRefused,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Rejected(r) => r.status(),
            ProxyError::UpgradeRefused => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(UpstreamError::ClientBody {
                timed_out: true, ..
            }) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Upstream(UpstreamError::ClientBody { .. }) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The reason counted for requests refused before forwarding.
    pub(crate) fn reject_reason(&self) -> Option<RejectReason> {
        Some(match self {
            ProxyError::NoRoute => RejectReason::no_route,
            ProxyError::Rejected(Reject::MethodNotAllowed(_)) => RejectReason::method_not_allowed,
            ProxyError::Rejected(Reject::BadRequest(_)) => RejectReason::bad_request,
            ProxyError::Rejected(Reject::UriTooLong) => RejectReason::uri_too_long,
            ProxyError::Rejected(Reject::HeadersTooLarge) => RejectReason::headers_too_large,
            ProxyError::UpgradeRefused => RejectReason::upgrade_refused,
            ProxyError::Upstream(_) => return None,
        })
    }

    /// The client-facing response. Upstream details stay in the logs; the client learns
    /// only the class of failure. Malformed requests close the connection.
    /// The answer to a gRPC call whose upstream failed: trailers-only, HTTP 200, with the
    /// gRPC status the failure means (`DEADLINE_EXCEEDED` for a timeout, `UNAVAILABLE`
    /// for a connect, TLS or protocol error, `INTERNAL` for a broken request body), so a gRPC
    /// client sees a status, not an HTTP error; `None` for other errors.
    pub(crate) fn to_grpc_response(&self) -> Option<(u8, Response<ProxyBody>)> {
        use crate::http::grpc;
        let ProxyError::Upstream(e) = self else {
            return None;
        };
        let code = match e {
            UpstreamError::Timeout { .. } => grpc::DEADLINE_EXCEEDED,
            UpstreamError::Connect { .. }
            | UpstreamError::Tls { .. }
            | UpstreamError::Protocol { .. } => grpc::UNAVAILABLE,
            UpstreamError::ClientBody { .. } => grpc::INTERNAL,
        };
        let message = format!("teeproxy: {}", self.to_response_text());
        Some((
            code,
            grpc::trailers_only(
                code,
                message.trim_end(),
                Either::Right(Full::new(Bytes::new())),
            ),
        ))
    }

    fn to_response_text(&self) -> String {
        match self {
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => "upstream timed out".into(),
            ProxyError::Upstream(UpstreamError::Connect { .. }) => "upstream connect error".into(),
            ProxyError::Upstream(UpstreamError::Protocol { .. }) => {
                "upstream protocol error".into()
            }
            other => other.to_string(),
        }
    }

    pub(crate) fn to_response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let text = match self {
            ProxyError::Upstream(UpstreamError::Connect { .. }) => {
                "upstream connect error\n".to_string()
            }
            ProxyError::Upstream(UpstreamError::Timeout { .. }) => {
                "upstream timed out\n".to_string()
            }
            ProxyError::Upstream(UpstreamError::Protocol { .. }) => {
                "upstream protocol error\n".to_string()
            }
            ProxyError::Upstream(UpstreamError::Tls { .. }) => "upstream TLS error\n".to_string(),
            ProxyError::Upstream(UpstreamError::ClientBody {
                timed_out: true, ..
            }) => "request body timed out\n".to_string(),
            ProxyError::Upstream(UpstreamError::ClientBody { .. }) => {
                "request body incomplete\n".to_string()
            }
            other => format!("{other}\n"),
        };
        let mut resp = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Either::Right(Full::new(Bytes::from(text))))
            .expect("static parts are valid");
        if matches!(
            self,
            ProxyError::Rejected(_)
                | ProxyError::UpgradeRefused
                | ProxyError::Upstream(UpstreamError::ClientBody { .. })
        ) {
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if matches!(self, ProxyError::Rejected(Reject::MethodNotAllowed(_))) {
            resp.headers_mut().insert(
                header::ALLOW,
                header::HeaderValue::from_static(
                    "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE",
                ),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn statuses() {
        let up = |e| ProxyError::Upstream(e);
        let table = [
            (ProxyError::NoRoute, 404),
            (Reject::MethodNotAllowed("CONNECT").into(), 405),
            (Reject::BadRequest("x").into(), 400),
            (Reject::UriTooLong.into(), 414),
            (Reject::HeadersTooLarge.into(), 431),
            (
                up(UpstreamError::Connect {
                    endpoint: "e".into(),
                    reason: "r".into(),
                }),
                502,
            ),
            (
                up(UpstreamError::Protocol {
                    endpoint: "e".into(),
                    reason: "r".into(),
                }),
                502,
            ),
            (
                up(UpstreamError::Tls {
                    endpoint: "e".into(),
                    failure: crate::metrics::TlsFailure::unknown_ca,
                    reason: "r".into(),
                }),
                502,
            ),
            (
                up(UpstreamError::Timeout {
                    endpoint: "e".into(),
                    timeout: Duration::from_secs(1),
                }),
                504,
            ),
            (
                up(UpstreamError::ClientBody {
                    endpoint: "e".into(),
                    reason: "r".into(),
                    timed_out: false,
                }),
                400,
            ),
            (
                up(UpstreamError::ClientBody {
                    endpoint: "e".into(),
                    reason: "r".into(),
                    timed_out: true,
                }),
                408,
            ),
        ];
        for (e, want) in table {
            let r = e.to_response();
            assert_eq!(r.status().as_u16(), want, "{e}");
            assert_eq!(
                r.headers()[header::CONTENT_TYPE],
                "text/plain; charset=utf-8"
            );
        }
    }
}
