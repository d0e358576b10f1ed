//! Label sets and label values: route and cluster names from the config, and fixed kinds
//! (status classes, drop reasons, outcomes, close reasons). One label name per meaning:
//! `leg` (primary, shadow) everywhere.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// The route label for requests that matched no route (route names cannot contain `(`).
pub(crate) const NO_ROUTE: &str = "(none)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteStatusLabels {
    pub(crate) route: String,
    pub(crate) status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClusterErrorLabels {
    pub(crate) cluster: String,
    pub(crate) leg: Leg,
    pub(crate) kind: UpstreamErrorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClusterLabels {
    pub(crate) cluster: String,
    /// `primary` or `shadow`: one cluster can serve both legs, with separate pools.
    pub(crate) leg: Leg,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub(crate) listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerCloseLabels {
    pub(crate) listener: String,
    pub(crate) reason: CloseReason,
}

/// Why teeproxy closed a client connection itself.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum CloseReason {
    /// No complete request head within `request_head_timeout`.
    head_timeout,
    /// No request for `idle_timeout`.
    idle_timeout,
    /// The client did not read its response for `write_timeout`.
    write_timeout,
    /// Most of the client's requests were abandoned right after being opened (rapid reset).
    premature_resets,
}

impl CloseReason {
    pub(crate) const ALL: [CloseReason; 4] = [
        CloseReason::head_timeout,
        CloseReason::idle_timeout,
        CloseReason::write_timeout,
        CloseReason::premature_resets,
    ];
}

/// `teeproxy_build_info`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildLabels {
    pub(crate) version: &'static str,
    pub(crate) commit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReloadLabels {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectLabels {
    pub(crate) reason: RejectReason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum StatusClass {
    C1xx,
    C2xx,
    C3xx,
    C4xx,
    C5xx,
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(["1xx", "2xx", "3xx", "4xx", "5xx"][*self as usize])
    }
}

impl StatusClass {
    pub(crate) const ALL: [StatusClass; 5] =
        [Self::C1xx, Self::C2xx, Self::C3xx, Self::C4xx, Self::C5xx];

    pub(crate) fn of(status: http::StatusCode) -> Self {
        match status.as_u16() {
            0..=199 => Self::C1xx,
            200..=299 => Self::C2xx,
            300..=399 => Self::C3xx,
            400..=499 => Self::C4xx,
            _ => Self::C5xx,
        }
    }
}

/// Why an upstream call failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum UpstreamErrorKind {
    connect,
    timeout,
    protocol,
    /// A TLS failure (certificate not trusted, wrong name, expired, client certificate
    /// refused, ...): the reason is in `teeproxy_upstream_tls_errors_total`.
    tls,
}

/// Why a request was refused before it was forwarded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum RejectReason {
    no_route,
    method_not_allowed,
    bad_request,
    uri_too_long,
    headers_too_large,
    upgrade_refused,
}

impl RejectReason {
    pub(crate) const ALL: [RejectReason; 6] = [
        Self::no_route,
        Self::method_not_allowed,
        Self::bad_request,
        Self::uri_too_long,
        Self::headers_too_large,
        Self::upgrade_refused,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteShadowLabels {
    pub(crate) route: String,
    pub(crate) shadow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShadowDropLabels {
    pub(crate) route: String,
    pub(crate) shadow: String,
    pub(crate) reason: DropReason,
}

/// A runtime change to a shadow policy.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum ControlChange {
    pause,
    resume,
    percent,
    /// Back to the file's settings, asked through the admin API.
    reset,
    /// Dropped because a reload changed the shadow in the file.
    file,
}

impl ControlChange {
    pub(crate) const ALL: [ControlChange; 5] = [
        Self::pause,
        Self::resume,
        Self::percent,
        Self::reset,
        Self::file,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShadowControlLabels {
    pub(crate) route: String,
    pub(crate) shadow: String,
    pub(crate) change: ControlChange,
}

/// Why the admin refused a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum AdminDenial {
    /// No `Authorization: Bearer` header.
    missing_token,
    /// A token that is not the one in `admin.token_file`.
    wrong_token,
    /// No `admin.token_file` and the admin is not on loopback.
    no_token_configured,
    /// `admin.token_file` could not be read.
    token_unreadable,
    /// No `admin.token_file`, and the request names the host by a name other than
    /// `localhost` (a DNS-rebinding page).
    host_not_local,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AdminDenialLabels {
    pub(crate) reason: AdminDenial,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShadowOutcomeLabels {
    pub(crate) route: String,
    pub(crate) shadow: String,
    pub(crate) outcome: ShadowOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShadowStatusLabels {
    pub(crate) route: String,
    pub(crate) shadow: String,
    pub(crate) status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShadowPhaseLabels {
    pub(crate) route: String,
    pub(crate) shadow: String,
    pub(crate) phase: Phase,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ShadowLabels {
    pub(crate) shadow: String,
}

/// Why a shadow copy was not sent.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum DropReason {
    /// Not selected by `percent` / `sample_key`.
    sampled_out,
    /// The method is not in the shadow's `methods`.
    method_filtered,
    /// An upgrade (WebSocket) request: never mirrored.
    upgrade,
    /// The body is over the shadow's `max_body`.
    body_too_large,
    /// The client's body ended in an error or was abandoned.
    body_incomplete,
    /// The client reset the stream or left before the primary answered.
    cancelled,
    /// The shadow's queue was full.
    queue_full,
    /// The shadow refused connections repeatedly; copies are not tried for a while.
    circuit_open,
    /// Still queued (or offered) when the shadow drain ended.
    shutdown,
    /// The shadow was paused at runtime (admin API).
    paused,
    /// Over the shadow's `max_rps` (each amplified copy takes a token).
    rate_limited,
}

impl DropReason {
    pub(crate) const ALL: [DropReason; 11] = [
        Self::sampled_out,
        Self::method_filtered,
        Self::upgrade,
        Self::body_too_large,
        Self::body_incomplete,
        Self::cancelled,
        Self::queue_full,
        Self::circuit_open,
        Self::shutdown,
        Self::paused,
        Self::rate_limited,
    ];
}

/// How a sent shadow request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum ShadowOutcome {
    /// A response came back (any status).
    ok,
    connect_error,
    /// The TLS handshake with the shadow failed (certificate or client certificate).
    tls_error,
    protocol_error,
    /// The response body failed mid-way.
    body_error,
    /// No complete answer within the shadow's `timeout`.
    timeout,
    /// Still in flight when the shadow drain deadline passed at shutdown.
    aborted,
}

impl ShadowOutcome {
    pub(crate) const ALL: [ShadowOutcome; 7] = [
        Self::ok,
        Self::connect_error,
        Self::tls_error,
        Self::protocol_error,
        Self::body_error,
        Self::timeout,
        Self::aborted,
    ];
}

/// Which part of an exchange a latency covers.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Phase {
    /// From sending to the response head.
    headers,
    /// From sending to the end of the response body.
    body,
}

/// One leg of one (route, path template): the per-path latency histogram and failure
/// counter. No `phase`: per path only the time to the response head is kept (the time to
/// the end of the body is per route, in `teeproxy_shadow_latency_seconds`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PathLegLabels {
    pub(crate) route: String,
    pub(crate) path: String,
    pub(crate) leg: Leg,
    pub(crate) cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PathLegStatusLabels {
    pub(crate) route: String,
    pub(crate) path: String,
    pub(crate) leg: Leg,
    pub(crate) cluster: String,
    pub(crate) status_class: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CompareLabels {
    pub(crate) route: String,
    pub(crate) path: String,
    pub(crate) shadow: String,
    pub(crate) result: CompareResult,
}

/// Skipped comparisons by reason: per (route, shadow), not per path (per path, the count
/// of skips is `compare_results{result="skipped"}`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CompareSkipLabels {
    pub(crate) route: String,
    pub(crate) shadow: String,
    pub(crate) reason: SkipReason,
}

/// Which leg of a request a sample is about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Leg {
    primary,
    shadow,
}

/// The result of comparing a shadow's response with the primary's.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum CompareResult {
    Match,
    StatusMismatch,
    HeaderMismatch,
    BodyMismatch,
    ShadowError,
    Skipped,
}

impl CompareResult {
    pub(crate) const ALL: [CompareResult; 6] = [
        Self::Match,
        Self::StatusMismatch,
        Self::HeaderMismatch,
        Self::BodyMismatch,
        Self::ShadowError,
        Self::Skipped,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        [
            "match",
            "status_mismatch",
            "header_mismatch",
            "body_mismatch",
            "shadow_error",
            "skipped",
        ][self as usize]
    }

    pub(crate) fn is_mismatch(self) -> bool {
        matches!(
            self,
            Self::StatusMismatch | Self::HeaderMismatch | Self::BodyMismatch
        )
    }
}

impl EncodeLabelValue for CompareResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// Why a comparison was skipped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum SkipReason {
    /// The primary failed (no response to compare with).
    primary_error,
    /// The primary's body did not complete (client left, upstream broke off, or too slow).
    primary_incomplete,
    /// A body is over `compare.max_body`.
    body_too_large,
    /// The primary's body is not what its `Content-Encoding` says (gzip, deflate, br).
    decode_error,
    /// A body has a `Content-Encoding` this build does not decode (`zstd`, ...), and the
    /// two bodies are not the same bytes.
    unknown_encoding,
}

impl SkipReason {
    pub(crate) const ALL: [SkipReason; 5] = [
        Self::primary_error,
        Self::primary_incomplete,
        Self::body_too_large,
        Self::decode_error,
        Self::unknown_encoding,
    ];
}

/// Why a record line was not written.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum RecordDropReason {
    /// The writer's queue was full.
    record_full,
    /// The file could not be opened, written or rotated.
    write_error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RecordDropLabels {
    pub(crate) route: String,
    pub(crate) shadow: String,
    pub(crate) reason: RecordDropReason,
}
