//! gRPC calls compared: the legs' `grpc-status` and `grpc-message` (from the trailers, or
//! the headers of a trailers-only answer) are the call's status. The body (protobuf,
//! without a schema) is compared as bytes by the ordinary body comparison.

use super::{Comparator, Edits, Found, Verdict};
use crate::metrics::CompareResult;

/// One leg's gRPC status as the comparison sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GrpcStatus<'a> {
    /// `None`: not known (the answer was not read to its trailers).
    pub(crate) code: Option<u8>,
    pub(crate) message: Option<&'a str>,
}

impl Comparator {
    /// A `status_mismatch` at `grpc-status` (or `grpc-message`, when the codes agree)
    /// when the legs' gRPC statuses differ; `None` when they agree, when a side's status
    /// is unknown, or when statuses are not compared.
    pub(crate) fn compare_grpc(
        &self,
        p: GrpcStatus<'_>,
        s: GrpcStatus<'_>,
        edits: &Edits,
    ) -> Option<Verdict> {
        if !self.status {
            return None;
        }
        let (Some(pc), Some(sc)) = (p.code, s.code) else {
            return None;
        };
        let mut found = Found::new(edits);
        if pc != sc {
            found.push("grpc-status", "status", || (pc.to_string(), sc.to_string()));
        } else if p.message != s.message {
            let show = |m: Option<&str>| m.unwrap_or("").to_string();
            found.push("grpc-message", "status", || {
                (show(p.message), show(s.message))
            });
        } else {
            return None;
        }
        Some(found.verdict(CompareResult::StatusMismatch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CompareConfig;

    fn st(code: Option<u8>, message: Option<&str>) -> GrpcStatus<'_> {
        GrpcStatus { code, message }
    }

    #[test]
    fn grpc_status_and_message_are_the_status() {
        let c = Comparator::new(&CompareConfig::default());
        let e = Edits::default();
        assert_eq!(
            c.compare_grpc(st(Some(0), None), st(Some(0), None), &e),
            None
        );
        let v = c
            .compare_grpc(st(Some(0), None), st(Some(5), Some("nope")), &e)
            .expect("a mismatch");
        assert_eq!(v.result, CompareResult::StatusMismatch);
        assert_eq!(v.diff[0].at, "grpc-status");
        assert_eq!(
            (v.diff[0].primary.as_str(), v.diff[0].shadow.as_str()),
            ("0", "5")
        );
        assert_eq!(v.fields, ["status"]);
        let v = c
            .compare_grpc(st(Some(3), Some("a")), st(Some(3), Some("b")), &e)
            .expect("a message mismatch");
        assert_eq!(v.diff[0].at, "grpc-message");
        assert_eq!(
            c.compare_grpc(st(Some(0), None), st(None, None), &e),
            None,
            "unknown"
        );
        let off = Comparator::new(&CompareConfig {
            status: false,
            ..Default::default()
        });
        assert_eq!(
            off.compare_grpc(st(Some(0), None), st(Some(5), None), &e),
            None
        );
    }
}
