//! Comparing a shadow's response with the primary's: status, listed headers, and the body
//! (`exact` bytes, or `json` values with ignored pointers, other bodies byte for byte).
//! Bodies are compared with their `Content-Encoding` undone (`decode`), bounded by
//! `max_body`. What teeproxy itself changed on the shadow's request (`Edits`: its marker,
//! the Host, set and removed headers, the trace context) never counts as a difference,
//! also where an application echoes it in a JSON body. A verdict names every differing
//! field, canonically, for grouping and for learning noise. Pure: all of it runs in shadow
//! tasks, never on the primary path.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::decode::{self, Decoded};

mod grpc;
use crate::config::{CompareBody, CompareConfig};
use crate::http::grpc::{GRPC_MESSAGE, GRPC_STATUS};
use crate::http::tracecontext::{TRACEPARENT, TRACESTATE};
use crate::metrics::{CompareResult, SkipReason};
pub(crate) use grpc::GrpcStatus;

/// A body as the comparison sees it.
#[derive(Debug, Clone)]
pub(crate) enum BodySide {
    Complete(Bytes),
    /// A complete body still in the chunks it arrived in.
    Parts(Vec<Bytes>),
    /// Over `compare.max_body`.
    TooLarge,
    /// Broken off, or not finished in time.
    Incomplete,
}

impl BodySide {
    /// `Parts` joined into one `Complete`; other sides as they are.
    pub(crate) fn joined(&self) -> BodySide {
        match self {
            BodySide::Parts(parts) => {
                let mut all = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                for p in parts {
                    all.extend_from_slice(p);
                }
                BodySide::Complete(all.freeze())
            }
            other => other.clone(),
        }
    }
}

/// One difference, for people.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Difference {
    /// A JSON pointer (`/` for the whole document), `status`, `header NAME`, `byte N` (the
    /// first differing byte of a body compared as bytes) or `body` (a body that could not
    /// be decoded).
    pub(crate) at: String,
    pub(crate) primary: String,
    pub(crate) shadow: String,
}

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) result: CompareResult,
    pub(crate) skipped: Option<SkipReason>,
    /// Examples of the differences, at most `MAX_DIFFS`.
    pub(crate) diff: Vec<Difference>,
    /// Every differing field, sorted and distinct: `status`, `header NAME` (lowercase),
    /// JSON pointers (RFC 6901, with `*` for every array index: `/items/*/id`, so a list
    /// of changed items is one field; the examples in `diff` keep the indices), `body`
    /// (the body as a whole: not JSON, not decodable, or a different JSON document at
    /// its root). At most `MAX_FIELDS` (the first in sorting order), then `MORE_FIELDS`.
    /// A status mismatch names `status` alone (the rest is not compared).
    pub(crate) fields: Vec<String>,
}

impl Verdict {
    pub(crate) fn of(result: CompareResult) -> Self {
        Verdict {
            result,
            skipped: None,
            diff: Vec::new(),
            fields: Vec::new(),
        }
    }
    pub(crate) fn skipped(reason: SkipReason) -> Self {
        Verdict {
            result: CompareResult::Skipped,
            skipped: Some(reason),
            ..Verdict::of(CompareResult::Skipped)
        }
    }
}

/// Differences listed per mismatch at most.
const MAX_DIFFS: usize = 5;
/// Fields named per comparison at most (the first in sorting order); past it,
/// `MORE_FIELDS` ends the list.
pub(crate) const MAX_FIELDS: usize = 64;
/// The last field of a list that had more than `MAX_FIELDS`.
pub(crate) const MORE_FIELDS: &str = "…more";
/// Characters of a value shown in a difference.
const MAX_SHOWN: usize = 120;
/// What a field name has in place of an array index.
const ANY_INDEX: &str = "*";
/// The key teeproxy puts first in a copy's `tracestate`.
const TRACESTATE_KEY: &str = "teeproxy=";
/// Hex digits of a `traceparent`'s parent id.
const SPAN_ID_LEN: usize = 16;

/// The request headers teeproxy adds, sets, removes or rewrites on one policy's copies
/// (built by the policy, which makes those changes).
#[derive(Debug, Clone, Default)]
pub(crate) struct EditedHeaders {
    /// Every such header: a response header named after one is never a difference, nor
    /// is a JSON member (or listed header) named after one that echoes the request's.
    pub(crate) names: Vec<HeaderName>,
    /// Those whose shadow value stands in for a primary's (Host, `headers.set`, the trace
    /// context).
    pub(crate) replaced: Vec<HeaderName>,
}

/// What the primary's request carried for a header teeproxy edited on the copy.
#[derive(Debug, Clone, PartialEq)]
enum Original {
    /// This value, or (`None`) no such header: the Host, the copy's marker and index.
    Known(Option<String>),
    /// Not known where the copy is compared: what `headers.set` replaced (or nothing), a
    /// removed header, `Expect`, the `tracestate` the copy's extends.
    Unknown,
    /// The copy's `traceparent` with another parent id (this one, the copy's, replaced).
    Traceparent(String),
}

/// One header teeproxy edited on a copy, as each request carried it.
#[derive(Debug, Clone, PartialEq)]
struct EditedHeader {
    name: HeaderName,
    /// What the copy carried (its values joined); `None`: teeproxy removed it.
    shadow: Option<String>,
    primary: Original,
}

impl EditedHeader {
    /// Whether `v` is what the shadow's request carried for this header.
    fn shadow_echo(&self, v: &str) -> bool {
        self.shadow.as_deref() == Some(v)
    }

    /// Whether `v` may be what the primary's request carried for this header.
    fn primary_echo(&self, v: &str) -> bool {
        match &self.primary {
            Original::Known(p) => p.as_deref() == Some(v),
            Original::Unknown => true,
            Original::Traceparent(span) => self
                .shadow
                .as_deref()
                .is_some_and(|s| s == v || span_swapped(v, s, span)),
        }
    }

    /// Whether an object member named after this header, with these values, is an echo
    /// of the two requests' headers: the shadow's is what its request carried (or absent,
    /// when teeproxy removed the header), the primary's what its request may have carried
    /// (or absent).
    fn echoed(&self, p: Option<&Value>, s: Option<&Value>) -> bool {
        let shadow = match s {
            None => self.shadow.is_none(),
            Some(v) => v.as_str().is_some_and(|v| self.shadow_echo(v)),
        };
        let primary = match p {
            None => true,
            Some(v) => v.as_str().is_some_and(|v| self.primary_echo(v)),
        };
        shadow && primary && (p.is_some() || s.is_some())
    }
}

/// Which side of a comparison a value comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Primary,
    Shadow,
}

/// What teeproxy changed on one shadow request, with what the primary's request carried
/// instead where that is known: built per copy (`Comparator::edits`) in the shadow task.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Edits {
    /// (primary's, shadow's) values: a shadow string with the shadow's value where the
    /// primary's has the primary's is the same (a URL built from the Host).
    swaps: Vec<(String, String)>,
    /// The parent id of the copy's `traceparent`, in place of the primary's (unknown,
    /// another 16 hex digits).
    span: Option<String>,
    /// Every edited header, for echoes of them in JSON bodies.
    headers: Vec<EditedHeader>,
}

impl Edits {
    /// Whether the shadow's string `s` differs from the primary's `p` only by values
    /// teeproxy set on the shadow's request in place of the primary's: `s` with each
    /// such value replaced by the primary's is `p` (the copy's `traceparent` parent id
    /// by one other parent id). A value the primary's request did not carry (a
    /// `headers.set` header its client did not send) explains nothing.
    pub(crate) fn explain(&self, p: &str, s: &str) -> bool {
        if p == s {
            return false;
        }
        let mut t = std::borrow::Cow::Borrowed(s);
        let mut swapped = false;
        for (primary, shadow) in &self.swaps {
            if t.contains(shadow.as_str()) {
                t = std::borrow::Cow::Owned(t.replace(shadow.as_str(), primary));
                swapped = true;
            }
        }
        (swapped && t == p)
            || self
                .span
                .as_deref()
                .is_some_and(|sp| span_swapped(p, &t, sp))
    }

    /// The edited header a JSON member (or a listed header) named `key` names.
    fn named(&self, key: &str) -> Option<&EditedHeader> {
        self.headers.iter().find(|h| names_header(key, &h.name))
    }

    /// Whether an array element is a header listed as it came with one side's request,
    /// as a `[name, value]` pair or a `{"name": ..., "value": ...}` object (how some
    /// applications list the headers they received): one teeproxy edited, with the
    /// value that side's request carried.
    fn listed(&self, item: &Value, side: Side) -> bool {
        let (name, value) = match item {
            Value::Array(pair) if pair.len() == 2 => (pair[0].as_str(), pair[1].as_str()),
            Value::Object(m) => (
                ["name", "key"]
                    .iter()
                    .find_map(|k| m.get(*k).and_then(Value::as_str)),
                m.get("value").and_then(Value::as_str),
            ),
            _ => return false,
        };
        let (Some(name), Some(value)) = (name, value) else {
            return false;
        };
        self.named(name).is_some_and(|h| match side {
            Side::Primary => h.primary_echo(value),
            Side::Shadow => h.shadow_echo(value),
        })
    }
}

/// Whether `p` is `s` with each `span` (the copy's parent id) replaced by one other
/// parent id (16 lowercase hex digits).
fn span_swapped(p: &str, s: &str, span: &str) -> bool {
    let Some(at) = s.find(span) else {
        return false;
    };
    let Some(other) = p
        .strip_prefix(&s[..at])
        .and_then(|rest| rest.get(..SPAN_ID_LEN))
    else {
        return false;
    };
    other != span
        && other
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.replace(span, other) == p
}

/// Whether a response's field name (a header, or a JSON key) names header `name`: any
/// case, `_` for `-`, and CGI's `HTTP_` prefix (`HTTP_X_TEEPROXY_SHADOW`) allowed.
fn names_header(key: &str, name: &HeaderName) -> bool {
    let key = match key.get(..5) {
        Some(prefix) if prefix.eq_ignore_ascii_case("http_") && key.len() > 5 => &key[5..],
        _ => key,
    };
    let n = name.as_str().as_bytes();
    n.len() == key.len()
        && n.iter().zip(key.bytes()).all(|(a, b)| {
            let b = if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            };
            *a == b
        })
}

/// Whether a response's field name names one of `names` (see `names_header`).
fn names_edited(key: &str, names: &[HeaderName]) -> bool {
    names.iter().any(|n| names_header(key, n))
}

/// Differences and field names as a comparison finds them: every difference is looked
/// at, the first `MAX_DIFFS` kept as examples and the first `MAX_FIELDS` distinct field
/// names (in sorting order, so the same comparison names the same fields).
struct Found<'a> {
    edits: &'a Edits,
    diff: Vec<Difference>,
    fields: BTreeSet<String>,
    more: bool,
}

impl<'a> Found<'a> {
    fn new(edits: &'a Edits) -> Self {
        Found {
            edits,
            diff: Vec::new(),
            fields: BTreeSet::new(),
            more: false,
        }
    }

    /// One difference at `at`, named `field`; `values` (primary's, shadow's, as shown)
    /// are made only for a kept example.
    fn push(&mut self, at: &str, field: &str, values: impl FnOnce() -> (String, String)) {
        if !self.fields.contains(field) {
            if self.fields.len() < MAX_FIELDS {
                self.fields.insert(field.to_string());
            } else {
                self.more = true;
                if self.fields.last().is_some_and(|last| field < last.as_str()) {
                    self.fields.pop_last();
                    self.fields.insert(field.to_string());
                }
            }
        }
        if self.diff.len() < MAX_DIFFS {
            let (primary, shadow) = values();
            self.diff.push(Difference {
                at: at.to_string(),
                primary,
                shadow,
            });
        }
    }

    fn verdict(self, result: CompareResult) -> Verdict {
        let mut fields: Vec<String> = self.fields.into_iter().collect();
        if self.more {
            fields.push(MORE_FIELDS.to_string());
        }
        Verdict {
            result,
            skipped: None,
            diff: self.diff,
            fields,
        }
    }
}

/// A shadow's comparison settings, parsed.
#[derive(Debug, Clone)]
pub(crate) struct Comparator {
    status: bool,
    headers: Vec<HeaderName>,
    pub(crate) body: CompareBody,
    ignore: Vec<String>,
    /// JSON pointers whose values kept examples do not show.
    redact_pointers: Vec<String>,
    /// Header names (lowercase) whose values kept examples do not show.
    redact_headers: Vec<String>,
    pub(crate) max_body: usize,
    /// What the policy changes on its copies.
    edited: EditedHeaders,
    /// The primary's response headers a comparison reads: the listed ones, the coding
    /// (to decode the body) and gRPC's status and message.
    primary_names: Arc<[HeaderName]>,
}

/// The listed headers, `content-encoding`, `grpc-status` and `grpc-message`, once each.
fn primary_names(listed: &[HeaderName]) -> Arc<[HeaderName]> {
    names_once(
        listed
            .iter()
            .chain([&header::CONTENT_ENCODING, &GRPC_STATUS, &GRPC_MESSAGE]),
    )
}

/// `names` without repeats, in the order first seen.
pub(crate) fn names_once<'a>(names: impl IntoIterator<Item = &'a HeaderName>) -> Arc<[HeaderName]> {
    let mut once: Vec<HeaderName> = Vec::new();
    for name in names {
        if !once.contains(name) {
            once.push(name.clone());
        }
    }
    once.into()
}

/// What a kept example shows instead of a redacted value.
pub(crate) const REDACTED: &str = "[redacted]";

impl Comparator {
    pub(crate) fn new(c: &CompareConfig) -> Self {
        let (redact_pointers, redact_headers) =
            c.redact.iter().cloned().partition(|r| r.starts_with('/'));
        Comparator {
            status: c.status,
            headers: c.headers.clone(),
            body: c.body,
            ignore: c.ignore.clone(),
            redact_pointers,
            redact_headers: redact_headers
                .into_iter()
                .map(|h: String| h.to_ascii_lowercase())
                .collect(),
            max_body: c.max_body,
            edited: EditedHeaders::default(),
            primary_names: primary_names(&c.headers),
        }
    }

    /// The primary's response headers this comparison reads (see `primary_names`).
    pub(crate) fn primary_names(&self) -> &Arc<[HeaderName]> {
        &self.primary_names
    }

    /// The same, knowing what the policy changes on its copies' requests.
    pub(crate) fn with_edits(mut self, edited: EditedHeaders) -> Self {
        self.edited = edited;
        self
    }

    /// The headers of a shadow request (as sent) that `edits` reads: a small copy kept
    /// so the edits are worked out only when a comparison needs them.
    pub(crate) fn edited_part(&self, sent: &HeaderMap) -> HeaderMap {
        let mut part = HeaderMap::new();
        for name in self.edited.names.iter().chain([&HOST]) {
            for v in sent.get_all(name) {
                part.append(name.clone(), v.clone());
            }
        }
        part
    }

    /// Whether the answers are the same as they came (status, listed headers and body
    /// bytes): a match, without working out what teeproxy changed on the copy.
    pub(crate) fn identical(
        &self,
        p: (StatusCode, &HeaderMap, &BodySide),
        s: (StatusCode, &HeaderMap, &BodySide),
    ) -> bool {
        let bodies = match (p.2, s.2) {
            (BodySide::Complete(a), BodySide::Complete(b)) => a == b,
            (BodySide::Parts(a), BodySide::Complete(b))
            | (BodySide::Complete(b), BodySide::Parts(a)) => {
                a.iter().map(Bytes::len).sum::<usize>() == b.len()
                    && a.iter()
                        .scan(0, |at, part| {
                            let same = b.get(*at..*at + part.len()) == Some(&part[..]);
                            *at += part.len();
                            Some(same)
                        })
                        .all(|same| same)
            }
            _ => false,
        };
        (!self.status || p.0 == s.0)
            && self
                .headers
                .iter()
                .all(|n| p.1.get_all(n).iter().eq(s.1.get_all(n).iter()))
            && (!self.compares_body() || bodies)
    }

    /// What teeproxy changed on a shadow request: `sent`, its headers as sent (Host
    /// included), and `primary_host`, the Host the primary's request carried (`None`:
    /// none). The primary's other values are not known here: a `headers.set` value
    /// stands for none that a string could be explained by, the copy's `traceparent` for
    /// the same with another parent id, its `tracestate` for the same without
    /// teeproxy's entry.
    pub(crate) fn edits(&self, sent: &HeaderMap, primary_host: Option<&HeaderValue>) -> Edits {
        let mut edits = Edits::default();
        if self.edited.names.is_empty() {
            return edits;
        }
        let replaced = |n: &HeaderName| self.edited.replaced.contains(n);
        let text = |v: Option<&HeaderValue>| {
            v.and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let trace = (TRACEPARENT.clone(), TRACESTATE.clone());
        let primary_host = text(primary_host);
        if replaced(&HOST)
            && let (Some(p), Some(s)) = (&primary_host, text(sent.get(HOST)))
            && *p != s
        {
            edits.swaps.push((p.clone(), s));
        }
        if replaced(&trace.0) {
            // `00-<trace id>-<parent id>-<flags>`, one header.
            let mut all = sent.get_all(&trace.0).iter();
            edits.span = match (all.next().and_then(|v| v.to_str().ok()), all.next()) {
                (Some(v), None) => v
                    .split('-')
                    .nth(2)
                    .filter(|id| id.len() == SPAN_ID_LEN)
                    .map(str::to_string),
                _ => None,
            };
        }
        if replaced(&trace.1)
            && let Some(state) = joined(sent, &trace.1)
            && state.starts_with(TRACESTATE_KEY)
        {
            // Teeproxy's entry, first, and the comma after it.
            let entry = state.find(',').map_or(&state[..], |i| &state[..=i]);
            edits.swaps.push((String::new(), entry.to_string()));
        }
        for name in &self.edited.names {
            if edits.headers.iter().any(|h| h.name == *name) {
                continue;
            }
            let shadow = joined(sent, name);
            let primary = if *name == HOST {
                Original::Known(primary_host.clone())
            } else if *name == trace.0 {
                edits
                    .span
                    .clone()
                    .map_or(Original::Unknown, Original::Traceparent)
            } else if replaced(name) || shadow.is_none() {
                // Set (over what the client sent, or nothing), removed, or `Expect`.
                Original::Unknown
            } else {
                // Teeproxy's own: the marker, the copy index.
                Original::Known(None)
            };
            edits.headers.push(EditedHeader {
                name: name.clone(),
                shadow,
                primary,
            });
        }
        edits
    }

    /// Replaces the values of redacted fields in `diff` before it is kept: a difference
    /// at a redacted JSON pointer, under it, or above it (its value contains the field);
    /// at a redacted header; and snippets of bodies compared as bytes whenever any
    /// pointer is redacted (raw bytes cannot say where a field is).
    pub(crate) fn redact(&self, diff: &mut [Difference]) {
        for d in diff {
            let hidden = if let Some(name) = d.at.strip_prefix("header ") {
                self.redact_headers
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name))
            } else if d.at.starts_with("byte ") || d.at == "/" || d.at == "body" {
                // Raw bytes, or the whole document (`/` is how a root difference is shown).
                !self.redact_pointers.is_empty()
            } else if d.at == "status" {
                false
            } else {
                self.redact_pointers
                    .iter()
                    .any(|p| pointer_overlaps(&d.at, p))
            };
            if hidden {
                d.primary = REDACTED.to_string();
                d.shadow = REDACTED.to_string();
            }
        }
    }

    pub(crate) fn compares_body(&self) -> bool {
        self.body != CompareBody::Off
    }

    /// Status, and headers when bodies are not compared; `None` when the body decides
    /// (then `compare_body` compares the headers too).
    pub(crate) fn compare_head(
        &self,
        p: (StatusCode, &HeaderMap),
        s: (StatusCode, &HeaderMap),
        edits: &Edits,
    ) -> Option<Verdict> {
        if self.status && p.0 != s.0 {
            let mut found = Found::new(edits);
            found.push("status", "status", || {
                (p.0.as_u16().to_string(), s.0.as_u16().to_string())
            });
            return Some(found.verdict(CompareResult::StatusMismatch));
        }
        if self.compares_body() {
            return None;
        }
        let mut found = Found::new(edits);
        self.header_diff(p.1, s.1, &mut found);
        Some(if found.fields.is_empty() {
            Verdict::of(CompareResult::Match)
        } else {
            found.verdict(CompareResult::HeaderMismatch)
        })
    }

    /// The listed headers, leaving out those teeproxy changes on the request (an
    /// application may echo them) and values that differ only by what it set.
    fn header_diff(&self, p: &HeaderMap, s: &HeaderMap, found: &mut Found<'_>) {
        for name in &self.headers {
            if names_edited(name.as_str(), &self.edited.names) {
                continue;
            }
            let (a, b) = (joined(p, name), joined(s, name));
            if a == b {
                continue;
            }
            if let (Some(a), Some(b)) = (&a, &b)
                && found.edits.explain(a, b)
            {
                continue;
            }
            let at = format!("header {name}");
            found.push(&at, &at, || {
                (
                    a.unwrap_or_else(|| "(absent)".into()),
                    b.unwrap_or_else(|| "(absent)".into()),
                )
            });
        }
    }

    /// Headers and bodies, once the statuses agreed: a header difference is a
    /// `header_mismatch` (with the body's differing fields too, when it could be
    /// compared), else a body difference a `body_mismatch`. Bodies are compared decoded.
    pub(crate) fn compare_body(
        &self,
        p: (&HeaderMap, &BodySide),
        s: (&HeaderMap, &BodySide),
        edits: &Edits,
    ) -> Verdict {
        let mut found = Found::new(edits);
        self.header_diff(p.0, s.0, &mut found);
        let headers_differ = !found.fields.is_empty();
        let body = self.body_diff(p, s, &mut found);
        match body {
            Ok(()) if headers_differ => found.verdict(CompareResult::HeaderMismatch),
            Ok(()) if found.fields.is_empty() => Verdict::of(CompareResult::Match),
            Ok(()) => found.verdict(CompareResult::BodyMismatch),
            // A shadow whose body broke off failed, whatever its headers said.
            Err(Err(())) => Verdict::of(CompareResult::ShadowError),
            // A body that cannot be compared hides no header difference.
            Err(Ok(_)) if headers_differ => found.verdict(CompareResult::HeaderMismatch),
            Err(Ok(reason)) => Verdict::skipped(reason),
        }
    }

    /// The bodies' differences into `found`; `Err(Ok(reason))` when they cannot be
    /// compared, `Err(Err(()))` when the shadow's broke off.
    fn body_diff(
        &self,
        p: (&HeaderMap, &BodySide),
        s: (&HeaderMap, &BodySide),
        found: &mut Found<'_>,
    ) -> Result<(), Result<SkipReason, ()>> {
        let (pb, sb) = (p.1.joined(), s.1.joined());
        let (a, b) = match (pb, sb) {
            (BodySide::Incomplete, _) => return Err(Ok(SkipReason::primary_incomplete)),
            (BodySide::TooLarge, _) | (_, BodySide::TooLarge) => {
                return Err(Ok(SkipReason::body_too_large));
            }
            (_, BodySide::Incomplete) => return Err(Err(())),
            (BodySide::Complete(a), BodySide::Complete(b)) => (a, b),
            (BodySide::Parts(_), _) | (_, BodySide::Parts(_)) => unreachable!("joined above"),
        };
        if self.body == CompareBody::Off {
            return Ok(());
        }
        let (a, b) = match (
            decode::decode(p.0, a.clone(), self.max_body),
            decode::decode(s.0, b.clone(), self.max_body),
        ) {
            (Decoded::TooLarge, _) | (_, Decoded::TooLarge) => {
                return Err(Ok(SkipReason::body_too_large));
            }
            (Decoded::Error(_), _) => return Err(Ok(SkipReason::decode_error)),
            (Decoded::Unknown(_), _) | (_, Decoded::Unknown(_)) => {
                // Undecodable alike: the same coded bytes are the same body.
                if decode::codings(p.0) == decode::codings(s.0) && a == b {
                    return Ok(());
                }
                return Err(Ok(SkipReason::unknown_encoding));
            }
            (Decoded::Body(x), Decoded::Error(e)) => {
                found.push("body", "body", || {
                    (
                        format!("({} bytes)", x.len()),
                        format!("(cannot be decoded: {e})"),
                    )
                });
                return Ok(());
            }
            (Decoded::Body(x), Decoded::Body(y)) => (x, y),
        };
        if a == b {
            // The same bytes are the same in every mode (and cost no parsing).
            return Ok(());
        }
        match self.body {
            CompareBody::Off => {}
            CompareBody::Exact => bytes_diff(&a, &b, found),
            CompareBody::Json if a.is_empty() && b.is_empty() => {}
            CompareBody::Json => match serde_json::from_slice::<Value>(&a) {
                // Only the primary decides whether the answer is JSON: a shadow that
                // answers something else where the primary answered JSON is different.
                Ok(mut x) => match serde_json::from_slice::<Value>(&b) {
                    Ok(mut y) => {
                        for pointer in &self.ignore {
                            remove_pointer(&mut x, pointer);
                            remove_pointer(&mut y, pointer);
                        }
                        json_diff(&x, &y, &mut Path::default(), found);
                    }
                    Err(_) => found.push("/", "body", || {
                        (show(Some(&x)), format!("(not JSON) {}", snippet(&b, 0)))
                    }),
                },
                Err(_) => bytes_diff(&a, &b, found),
            },
        }
        Ok(())
    }
}

/// Bodies byte for byte: as text when both are UTF-8 (and then equal but for values
/// teeproxy set on the shadow's request), with a snippet around the first difference;
/// else in hex.
fn bytes_diff(a: &[u8], b: &[u8], found: &mut Found<'_>) {
    let Some(at) = a
        .iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
    else {
        return;
    };
    let (primary, shadow) = match (std::str::from_utf8(a), std::str::from_utf8(b)) {
        (Ok(x), Ok(y)) => {
            if found.edits.explain(x, y) {
                return;
            }
            (snippet(a, at), snippet(b, at))
        }
        _ => (hex_snippet(a, at), hex_snippet(b, at)),
    };
    found.push(&format!("byte {at}"), "body", || (primary, shadow));
}

/// Whether one JSON pointer is the other, or lies under it.
fn pointer_overlaps(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| {
        y.is_empty() || x == y || (x.starts_with(y) && x.as_bytes().get(y.len()) == Some(&b'/'))
    };
    under(a, b) || under(b, a)
}

fn joined(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let vals: Vec<&str> = h
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!vals.is_empty()).then(|| vals.join(", "))
}

fn shorten(s: String) -> String {
    if s.chars().count() <= MAX_SHOWN {
        s
    } else {
        let mut t: String = s.chars().take(MAX_SHOWN).collect();
        t.push('…');
        t
    }
}

fn snippet(b: &[u8], at: usize) -> String {
    let start = at.saturating_sub(16);
    let end = (at + 48).min(b.len());
    if start >= end {
        return "(end)".into();
    }
    shorten(String::from_utf8_lossy(&b[start..end]).into_owned())
}

/// Bytes around `at` in hex, `(end)` past the end.
fn hex_snippet(b: &[u8], at: usize) -> String {
    let start = at.saturating_sub(8);
    let end = (at + 24).min(b.len());
    if start >= end {
        return "(end)".into();
    }
    let hex: Vec<String> = b[start..end].iter().map(|x| format!("{x:02x}")).collect();
    format!("(binary, from byte {start}) {}", hex.join(" "))
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "(absent)".into(), |v| shorten(v.to_string()))
}

fn escape_token(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// Removes what `pointer` names: an object member is removed, an array element becomes
/// `null` (so later indices keep their meaning).
fn remove_pointer(v: &mut Value, pointer: &str) {
    if pointer.is_empty() {
        *v = Value::Null;
        return;
    }
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&last);
        }
        Some(Value::Array(items)) => {
            if let Some(item) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *item = Value::Null;
            }
        }
        _ => {}
    }
}

/// Where `json_diff` is: the pointer (shown in examples) and the field name (the same
/// with `*` for array indices).
#[derive(Default)]
struct Path {
    at: String,
    field: String,
}

/// Collects the differing pointers (object key order is irrelevant, arrays compare in
/// order). What does not count: strings that differ only by values teeproxy set on the
/// shadow's request (`Edits::explain`), and echoes of the headers teeproxy edited, each
/// as its side's request carried it: object members named after one
/// (`{"host": ...}`, see `EditedHeader::echoed`), and listed headers (`Edits::listed`).
fn json_diff(a: &Value, b: &Value, path: &mut Path, found: &mut Found<'_>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x
                .keys()
                .chain(y.keys().filter(|k| !x.contains_key(*k)))
                .collect();
            keys.sort();
            for k in keys {
                let (p, s) = (x.get(k), y.get(k));
                if found.edits.named(k).is_some_and(|h| h.echoed(p, s)) {
                    continue;
                }
                member(path, &escape_token(k), false, (p, s), found);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            let edits = found.edits;
            let kept = |items: &'_ [Value], side| -> Vec<usize> {
                (0..items.len())
                    .filter(|i| edits.headers.is_empty() || !edits.listed(&items[*i], side))
                    .collect()
            };
            let (xi, yi) = (kept(x, Side::Primary), kept(y, Side::Shadow));
            for i in 0..xi.len().max(yi.len()) {
                let v = (xi.get(i).map(|&j| &x[j]), yi.get(i).map(|&j| &y[j]));
                member(path, &i.to_string(), true, v, found);
            }
        }
        // 1 and 1.0 are the same number.
        (Value::Number(p), Value::Number(s)) if p.as_f64() == s.as_f64() => {}
        (Value::String(p), Value::String(s)) if found.edits.explain(p, s) => {}
        (p, s) if p != s => {
            let (shown, field) = if path.at.is_empty() {
                ("/", "body")
            } else {
                (path.at.as_str(), path.field.as_str())
            };
            found.push(shown, field, || (show(Some(p)), show(Some(s))));
        }
        _ => {}
    }
}

/// One member (object key or array index) of `json_diff`.
fn member(
    path: &mut Path,
    token: &str,
    index: bool,
    v: (Option<&Value>, Option<&Value>),
    found: &mut Found<'_>,
) {
    let len = (path.at.len(), path.field.len());
    path.at.push('/');
    path.at.push_str(token);
    path.field.push('/');
    path.field.push_str(if index { ANY_INDEX } else { token });
    match v {
        (Some(p), Some(s)) => json_diff(p, s, path, found),
        (p, s) => found.push(&path.at, &path.field, || (show(p), show(s))),
    }
    path.at.truncate(len.0);
    path.field.truncate(len.1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::decode::tests::{br, gzip, raw_deflate, zlib};

    fn cmp(body: CompareBody, ignore: &[&str]) -> Comparator {
        Comparator::new(&CompareConfig {
            body,
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn the_primary_headers_kept_are_the_listed_the_coding_and_grpc_once_each() {
        let names = |c: &Comparator| -> Vec<String> {
            c.primary_names().iter().map(|n| n.to_string()).collect()
        };
        let default = Comparator::new(&CompareConfig::default());
        assert_eq!(
            names(&default),
            [
                "content-type",
                "content-encoding",
                "grpc-status",
                "grpc-message"
            ]
        );
        let listed = Comparator::new(&CompareConfig {
            headers: vec![HeaderName::from_static("x-a"), header::CONTENT_ENCODING],
            ..Default::default()
        });
        assert_eq!(
            names(&listed),
            ["x-a", "content-encoding", "grpc-status", "grpc-message"]
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn body(s: &str) -> BodySide {
        BodySide::Complete(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn raw(b: Vec<u8>) -> BodySide {
        BodySide::Complete(Bytes::from(b))
    }

    /// Two bodies without headers.
    fn bodies(c: &Comparator, a: &BodySide, b: &BodySide) -> Verdict {
        let none = HeaderMap::new();
        c.compare_body((&none, a), (&none, b), &Edits::default())
    }

    fn head(c: &Comparator, p: (StatusCode, &HeaderMap), s: (StatusCode, &HeaderMap)) -> Verdict {
        c.compare_head(p, s, &Edits::default()).unwrap()
    }

    #[test]
    fn status_and_headers() {
        let c = cmp(CompareBody::Off, &[]);
        let json = headers(&[("content-type", "application/json")]);
        let text = headers(&[("content-type", "text/plain")]);
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        assert_eq!(
            head(&c, (ok, &json), (ok, &json)).result,
            CompareResult::Match
        );
        let v = head(&c, (ok, &json), (StatusCode::INTERNAL_SERVER_ERROR, &json));
        assert_eq!(v.result, CompareResult::StatusMismatch);
        assert_eq!(
            v.diff[0],
            Difference {
                at: "status".into(),
                primary: "200".into(),
                shadow: "500".into()
            }
        );
        assert_eq!(v.fields, ["status"]);
        let v = head(&c, (ok, &json), (ok, &text));
        assert_eq!(v.result, CompareResult::HeaderMismatch);
        assert_eq!(v.diff[0].at, "header content-type");
        assert_eq!(v.fields, ["header content-type"]);
        assert_eq!(
            head(&c, (ok, &json), (ok, &none)).diff[0].shadow,
            "(absent)"
        );
        assert_eq!(
            head(&c, (ok, &none), (ok, &none)).result,
            CompareResult::Match,
            "absent on both sides"
        );
        let no_status = CompareConfig {
            status: false,
            headers: vec![],
            ..Default::default()
        };
        let c = Comparator::new(&no_status);
        assert_eq!(
            head(&c, (ok, &json), (StatusCode::NOT_FOUND, &text)).result,
            CompareResult::Match
        );
        let body_mode = cmp(CompareBody::Json, &[]);
        let gz = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        assert!(
            body_mode
                .compare_head((ok, &gz), (ok, &text), &Edits::default())
                .is_none(),
            "the body decides, headers compared with it"
        );
    }

    #[test]
    fn a_header_difference_names_the_body_fields_too() {
        let c = Comparator::new(&CompareConfig {
            body: CompareBody::Json,
            headers: vec![
                HeaderName::from_static("content-type"),
                HeaderName::from_static("etag"),
            ],
            ..Default::default()
        });
        let p = headers(&[("content-type", "application/json"), ("etag", "a")]);
        let s = headers(&[("content-type", "application/json"), ("etag", "b")]);
        let v = c.compare_body(
            (&p, &body(r#"{"a":1,"b":2}"#)),
            (&s, &body(r#"{"a":1,"b":3}"#)),
            &Edits::default(),
        );
        assert_eq!(v.result, CompareResult::HeaderMismatch);
        assert_eq!(v.fields, ["/b", "header etag"]);
        let v = c.compare_body(
            (&p, &BodySide::TooLarge),
            (&s, &body("{}")),
            &Edits::default(),
        );
        assert_eq!(
            (v.result, v.fields),
            (
                CompareResult::HeaderMismatch,
                vec!["header etag".to_string()]
            ),
            "a body too large to compare hides no header difference"
        );
    }

    #[test]
    fn exact_bodies() {
        let c = cmp(CompareBody::Exact, &[]);
        assert_eq!(
            bodies(&c, &body("hello"), &body("hello")).result,
            CompareResult::Match
        );
        let v = bodies(&c, &body("hello world"), &body("hello World"));
        assert_eq!(v.result, CompareResult::BodyMismatch);
        assert_eq!(v.diff[0].at, "byte 6");
        assert_eq!(v.fields, ["body"]);
        let v = bodies(&c, &body("abc"), &body("abcd"));
        assert_eq!(
            v.diff[0].at, "byte 3",
            "a longer body differs where the shorter ends"
        );
    }

    #[test]
    fn json_ignores_key_order_and_ignored_pointers_but_not_array_order() {
        let c = cmp(
            CompareBody::Json,
            &["/timestamp", "/meta/request_id", "/items/1"],
        );
        let a =
            r#"{"id":1,"name":"a","timestamp":5,"meta":{"request_id":"x","v":2},"items":[1,2,3]}"#;
        let b =
            r#"{"meta":{"v":2,"request_id":"y"},"items":[1,9,3],"name":"a","id":1,"timestamp":6}"#;
        assert_eq!(bodies(&c, &body(a), &body(b)).result, CompareResult::Match);

        let c = cmp(CompareBody::Json, &[]);
        let v = bodies(
            &c,
            &body(r#"{"a":[1,2],"b":{"c":"x"}}"#),
            &body(r#"{"a":[2,1],"b":{"c":"y"},"d":true}"#),
        );
        assert_eq!(v.result, CompareResult::BodyMismatch);
        let at: Vec<&str> = v.diff.iter().map(|d| d.at.as_str()).collect();
        assert_eq!(at, ["/a/0", "/a/1", "/b/c", "/d"], "examples keep indices");
        assert_eq!(v.fields, ["/a/*", "/b/c", "/d"], "fields do not");
        assert_eq!(
            v.diff[2],
            Difference {
                at: "/b/c".into(),
                primary: "\"x\"".into(),
                shadow: "\"y\"".into()
            }
        );
        assert_eq!(v.diff[3].primary, "(absent)");

        let v = bodies(&c, &body("{\"a\":1}"), &body("<html>oops</html>"));
        assert_eq!(
            v.result,
            CompareResult::BodyMismatch,
            "JSON expected, something else came"
        );
        assert!(v.diff[0].shadow.starts_with("(not JSON)"));
        assert_eq!(v.fields, ["body"]);
        assert_eq!(
            bodies(&c, &body(""), &body("")).result,
            CompareResult::Match,
            "HEAD, 204, 304"
        );
        assert_eq!(
            bodies(&c, &body("{\"n\":1}"), &body("{\"n\":1.0}")).result,
            CompareResult::Match,
            "1 == 1.0"
        );
        let v = bodies(&c, &body("1"), &body("2"));
        assert_eq!(
            (v.diff[0].at.as_str(), v.fields),
            ("/", vec!["body".to_string()])
        );
        let key = bodies(&c, &body(r#"{"a/b~":1}"#), &body(r#"{"a/b~":2}"#));
        assert_eq!(key.fields, ["/a~1b~0"], "RFC 6901 escapes");
    }

    #[test]
    fn field_sets_are_sorted_complete_and_bounded() {
        let c = cmp(CompareBody::Json, &[]);
        let doc = |n: usize, plus: usize| {
            let members: Vec<String> = (0..n)
                .map(|i| format!("\"k{i:03}\":{}", i + plus))
                .collect();
            format!("{{\"list\":[1,2,3],{}}}", members.join(","))
        };
        // Twenty differences: every one named, five shown.
        let v = bodies(&c, &body(&doc(20, 0)), &body(&doc(20, 1)));
        assert_eq!(v.diff.len(), MAX_DIFFS, "examples are short");
        let want: Vec<String> = (0..20).map(|i| format!("/k{i:03}")).collect();
        assert_eq!(v.fields, want, "complete and sorted");
        // The same bodies, the same fields, every time.
        assert_eq!(
            bodies(&c, &body(&doc(20, 0)), &body(&doc(20, 1))).fields,
            want
        );
        // An array's elements are one field (`*`), also the extra ones of a longer array.
        let v = bodies(
            &c,
            &body(r#"{"list":[1,2,3]}"#),
            &body(r#"{"list":[1,5,3,4,5]}"#),
        );
        assert_eq!(v.fields, ["/list/*"]);
        let at: Vec<&str> = v.diff.iter().map(|d| d.at.as_str()).collect();
        assert_eq!(at, ["/list/1", "/list/3", "/list/4"]);
        // Past the bound: 64 fields, then the marker.
        let v = bodies(&c, &body(&doc(200, 0)), &body(&doc(200, 1)));
        assert_eq!(v.fields.len(), MAX_FIELDS + 1);
        assert_eq!(v.fields.last().map(String::as_str), Some(MORE_FIELDS));
        let named = &v.fields[..MAX_FIELDS];
        assert!(named.windows(2).all(|w| w[0] < w[1]), "sorted: {named:?}");
        assert_eq!(named[0], "/k000");
        assert_eq!(named[MAX_FIELDS - 1], "/k063", "the first in sorting order");
        // Exactly the bound is not more.
        let v = bodies(&c, &body(&doc(MAX_FIELDS, 0)), &body(&doc(MAX_FIELDS, 1)));
        assert_eq!(v.fields.len(), MAX_FIELDS);
        assert!(!v.fields.contains(&MORE_FIELDS.to_string()));
    }

    #[test]
    fn noisy_array_items_are_one_field_and_hide_nothing_after_them() {
        let c = cmp(CompareBody::Json, &[]);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut doc = |total: u32| {
            let items: Vec<Value> = (0..100)
                .map(|i| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    serde_json::json!({"id": format!("{seed:016x}"), "n": i})
                })
                .collect();
            serde_json::json!({"items": items, "total": total}).to_string()
        };
        let (p, s) = (doc(100), doc(101));
        let v = bodies(&c, &body(&p), &body(&s));
        assert_eq!(v.result, CompareResult::BodyMismatch);
        assert_eq!(v.fields, ["/items/*/id", "/total"], "{v:?}");
        assert_eq!(v.diff.len(), MAX_DIFFS);
        assert_eq!(v.diff[0].at, "/items/0/id", "examples keep the index");
        assert_eq!(
            bodies(&c, &body(&p), &body(&s)).fields,
            v.fields,
            "the same"
        );

        // More distinct fields than the bound: all are still compared (the last item's
        // field, found after 150 others, sorts first), the first in sorting order kept.
        let wide = |plus: u32| {
            let mut first = serde_json::Map::new();
            for i in 0..150 {
                first.insert(format!("z{i:03}"), (i + plus).into());
            }
            serde_json::json!({"list": [first, {"a": plus}]}).to_string()
        };
        let v = bodies(&c, &body(&wide(0)), &body(&wide(1)));
        assert_eq!(v.fields[..2], ["/list/*/a", "/list/*/z000"]);
        assert_eq!(v.fields.len(), MAX_FIELDS + 1);
        assert_eq!(v.fields[MAX_FIELDS], MORE_FIELDS);
    }

    #[test]
    fn coded_bodies_are_compared_decoded() {
        let c = cmp(CompareBody::Json, &[]);
        let doc = br#"{"user":{"id":7,"plan":"pro"},"items":[1,2,3]}"#;
        let other = br#"{"user":{"id":7,"plan":"free"},"items":[1,2,3]}"#;
        let coded = |c: &str| headers(&[("content-encoding", c)]);
        let plain = HeaderMap::new();
        let e = Edits::default();
        for (coding, encode) in [
            ("gzip", gzip as fn(&[u8]) -> Vec<u8>),
            ("deflate", zlib),
            ("deflate", raw_deflate),
            ("br", br),
        ] {
            // Each leg may code differently, or not at all.
            let v = c.compare_body(
                (&coded(coding), &raw(encode(doc))),
                (&plain, &raw(doc.to_vec())),
                &e,
            );
            assert_eq!(v.result, CompareResult::Match, "{coding}");
            let v = c.compare_body(
                (&coded(coding), &raw(encode(doc))),
                (&coded("gzip"), &raw(gzip(other))),
                &e,
            );
            assert_eq!(v.result, CompareResult::BodyMismatch, "{coding}");
            assert_eq!(v.fields, ["/user/plan"], "{coding}");
        }
        let v = c.compare_body(
            (&coded("gzip, br"), &raw(br(&gzip(doc)))),
            (&coded("br"), &raw(br(doc))),
            &e,
        );
        assert_eq!(v.result, CompareResult::Match, "stacked codings");
        // Exact mode compares the decoded bytes too (gzip headers carry a time).
        let exact = cmp(CompareBody::Exact, &[]);
        let v = exact.compare_body(
            (&coded("gzip"), &raw(gzip(doc))),
            (&coded("br"), &raw(br(doc))),
            &e,
        );
        assert_eq!(v.result, CompareResult::Match);
    }

    #[test]
    fn bombs_and_undecodable_bodies() {
        let c = Comparator::new(&CompareConfig {
            body: CompareBody::Json,
            max_body: 256 << 10,
            ..Default::default()
        });
        let gz = headers(&[("content-encoding", "gzip")]);
        let e = Edits::default();
        let bomb = raw(gzip(&vec![b' '; 64 << 20]));
        let fine = raw(gzip(b"{}"));
        for (p, s) in [(&bomb, &fine), (&fine, &bomb)] {
            let v = c.compare_body((&gz, p), (&gz, s), &e);
            assert_eq!(v.skipped, Some(SkipReason::body_too_large));
        }
        let garbage = body("this is not gzip");
        let v = c.compare_body((&gz, &garbage), (&gz, &fine), &e);
        assert_eq!(v.skipped, Some(SkipReason::decode_error), "the primary's");
        let v = c.compare_body((&gz, &fine), (&gz, &garbage), &e);
        assert_eq!(
            (v.result, v.fields.clone()),
            (CompareResult::BodyMismatch, vec!["body".to_string()]),
            "only the shadow's fails: a difference"
        );
        assert!(
            v.diff[0].shadow.starts_with("(cannot be decoded: gzip"),
            "{v:?}"
        );
        let zstd = headers(&[("content-encoding", "zstd")]);
        let v = c.compare_body(
            (&zstd, &body("\x28\u{b5}abc")),
            (&zstd, &body("\x28\u{b5}abd")),
            &e,
        );
        assert_eq!(v.skipped, Some(SkipReason::unknown_encoding));
        let v = c.compare_body(
            (&zstd, &body("\x28\u{b5}abc")),
            (&zstd, &body("\x28\u{b5}abc")),
            &e,
        );
        assert_eq!(v.result, CompareResult::Match, "the same coded bytes");
    }

    #[test]
    fn bodies_that_are_not_json_are_compared_as_text_or_bytes() {
        let c = cmp(CompareBody::Json, &[]);
        let page = "<html><body><h1>Orders</h1><p>3 open</p></body></html>";
        assert_eq!(
            bodies(&c, &body(page), &body(page)).result,
            CompareResult::Match
        );
        let v = bodies(&c, &body(page), &body(&page.replace("3 open", "4 open")));
        assert_eq!(v.result, CompareResult::BodyMismatch);
        assert_eq!(v.fields, ["body"]);
        let at = page.find("3 open").unwrap();
        assert_eq!(v.diff[0].at, format!("byte {at}"));
        assert!(v.diff[0].primary.contains("<p>3 open"), "{:?}", v.diff[0]);
        assert!(v.diff[0].shadow.contains("<p>4 open"), "{:?}", v.diff[0]);

        let png = |last: u8| {
            raw(vec![
                0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0xff, last,
            ])
        };
        assert_eq!(bodies(&c, &png(1), &png(1)).result, CompareResult::Match);
        let v = bodies(&c, &png(1), &png(2));
        assert_eq!(
            (v.result, v.fields.clone()),
            (CompareResult::BodyMismatch, vec!["body".to_string()])
        );
        assert_eq!(v.diff[0].at, "byte 10");
        assert!(v.diff[0].primary.ends_with("00 ff 01"), "{:?}", v.diff[0]);
        assert!(v.diff[0].shadow.ends_with("00 ff 02"), "{:?}", v.diff[0]);
        let v = bodies(&c, &body("not json"), &body("{}"));
        assert_eq!(v.fields, ["body"], "the primary decides it is not JSON");
    }

    /// A comparator for copies marked `x-teeproxy-shadow`, with the Host rewritten (the
    /// primary's `api`), a header set and one removed, and the trace context changed.
    fn edited() -> (Comparator, Edits) {
        let names = [
            "host",
            "expect",
            "x-teeproxy-shadow",
            "x-env",
            "cookie",
            "traceparent",
            "tracestate",
        ];
        let c = Comparator::new(&CompareConfig {
            body: CompareBody::Json,
            headers: vec![
                HeaderName::from_static("content-type"),
                HeaderName::from_static("x-echo-host"),
                HeaderName::from_static("x-teeproxy-shadow"),
            ],
            ..Default::default()
        })
        .with_edits(EditedHeaders {
            names: names.iter().map(|n| HeaderName::from_static(n)).collect(),
            replaced: ["host", "x-env", "traceparent", "tracestate"]
                .iter()
                .map(|n| HeaderName::from_static(n))
                .collect(),
        });
        let sent = headers(&[
            ("host", "shadow-host:9000"),
            ("x-teeproxy-shadow", "c"),
            ("x-env", "shadow"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01",
            ),
            ("tracestate", "teeproxy=shadow-c,vendor=1"),
            ("accept", "*/*"),
        ]);
        let edits = c.edits(&sent, Some(&HeaderValue::from_static("api")));
        (c, edits)
    }

    #[test]
    fn what_teeproxy_changed_on_the_request_is_never_a_difference() {
        let (c, e) = edited();
        let json = headers(&[("content-type", "application/json")]);
        let p = r#"{"headers":{"host":"api","accept":"*/*","cookie":"s=1","x-env":"prod",
            "traceparent":"00-0af7651916cd43dd8448eb211c80319c-2222222222222222-01"},
            "url":"http://api/orders?next=http://api/orders/2","n":1,
            "span":"2222222222222222","state":"vendor=1",
            "pairs":[["Accept","*/*"],["Host","api"],["X-Env","prod"]],
            "har":[{"name":"Accept","value":"*/*"},{"name":"Cookie","value":"s=1"}],
            "cgi":{"HTTP_HOST":"api"}}"#;
        let s = r#"{"headers":{"host":"shadow-host:9000","accept":"*/*","x-teeproxy-shadow":"c",
            "x-env":"shadow","tracestate":"teeproxy=shadow-c,vendor=1",
            "traceparent":"00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01"},
            "url":"http://shadow-host:9000/orders?next=http://shadow-host:9000/orders/2","n":2,
            "span":"1111111111111111","state":"teeproxy=shadow-c,vendor=1",
            "pairs":[["Accept","*/*"],["X-Teeproxy-Shadow","c"],["Host","shadow-host:9000"],
                ["X-Env","shadow"]],
            "har":[{"name":"X-Teeproxy-Shadow","value":"c"},{"name":"Accept","value":"*/*"}],
            "cgi":{"HTTP_HOST":"shadow-host:9000","HTTP_X_TEEPROXY_SHADOW":"c"}}"#;
        let v = c.compare_body((&json, &body(p)), (&json, &body(s)), &e);
        assert_eq!(v.result, CompareResult::BodyMismatch);
        assert_eq!(v.fields, ["/n"], "only the real difference: {v:?}");

        // Members named after an edited header that do not echo the requests' values
        // are the application's own, compared like any other.
        let v = c.compare_body(
            (
                &json,
                &body(r#"{"db":{"host":"db1","cookie":"a","expect":"x"}}"#),
            ),
            (
                &json,
                &body(r#"{"db":{"host":"db2","cookie":"b","expect":"x"}}"#),
            ),
            &e,
        );
        assert_eq!(v.fields, ["/db/cookie", "/db/host"], "{v:?}");
        // An echo the shadow's application left out is a difference.
        let v = c.compare_body(
            (&json, &body(r#"{"headers":{"host":"api"}}"#)),
            (&json, &body(r#"{"headers":{}}"#)),
            &e,
        );
        assert_eq!(v.fields, ["/headers/host"]);
        // A listed header with another value than the request carried stays.
        let v = c.compare_body(
            (&json, &body(r#"{"pairs":[["Host","api"]]}"#)),
            (&json, &body(r#"{"pairs":[["Host","db2"]]}"#)),
            &e,
        );
        assert_eq!(v.fields, ["/pairs/*"], "{v:?}");

        // Without edits, all of it would count.
        let plain = c.compare_body((&json, &body(p)), (&json, &body(s)), &Edits::default());
        assert!(plain.fields.contains(&"/url".to_string()), "{plain:?}");

        // The same value elsewhere is a difference when the primary's is not an original
        // value in its place.
        let v = c.compare_body(
            (
                &json,
                &body(r#"{"url":"http://api/x","note":"two words","env":"prod"}"#),
            ),
            (
                &json,
                &body(r#"{"url":"http://shadow-host:9000/y","note":"shadow","env":"shadow"}"#),
            ),
            &e,
        );
        assert_eq!(
            v.fields,
            ["/env", "/note", "/url"],
            "a value set in place of an unknown one explains nothing"
        );

        // Listed headers: one teeproxy set is not compared, an echoed value matches.
        let p_head = headers(&[("content-type", "application/json"), ("x-echo-host", "api")]);
        let s_head = headers(&[
            ("content-type", "application/json"),
            ("x-echo-host", "shadow-host:9000"),
            ("x-teeproxy-shadow", "c"),
        ]);
        let v = c.compare_body((&p_head, &body("{}")), (&s_head, &body("{}")), &e);
        assert_eq!(v.result, CompareResult::Match, "{v:?}");
        let s_head = headers(&[
            ("content-type", "text/html"),
            ("x-echo-host", "shadow-host:9000"),
        ]);
        let v = c.compare_body((&p_head, &body("{}")), (&s_head, &body("{}")), &e);
        assert_eq!(v.fields, ["header content-type"]);

        // Text bodies that echo the Host.
        let v = c.compare_body(
            (&json, &body("<a href=\"http://api/next\">next</a>")),
            (
                &json,
                &body("<a href=\"http://shadow-host:9000/next\">next</a>"),
            ),
            &e,
        );
        assert_eq!(v.result, CompareResult::Match);
    }

    #[test]
    fn edits_explain_only_values_teeproxy_set_in_place_of_the_primarys() {
        let (_, e) = edited();
        assert!(e.explain("api", "shadow-host:9000"));
        assert!(e.explain("http://api/a", "http://shadow-host:9000/a"));
        assert!(e.explain("a=api;b=api", "a=shadow-host:9000;b=shadow-host:9000"));
        assert!(
            !e.explain("http://api/a", "http://shadow-host:9000/b"),
            "the rest differs"
        );
        assert!(
            !e.explain("http://api:80/a", "http://shadow-host:9000/a"),
            "not the primary's Host"
        );
        assert!(!e.explain("", "shadow-host:9000"), "no original value");
        assert!(!e.explain("other", "shadow-host:9000"), "another string");
        assert!(
            !e.explain("prod", "shadow"),
            "x-env's primary value is unknown"
        );
        assert!(!e.explain("false", "shadow"));
        assert!(!e.explain("prod", "c"), "the marker replaces nothing");
        assert!(!e.explain("same", "same"));
        assert!(!Edits::default().explain("api", "shadow-host:9000"));
        // The trace context: another parent id (16 lowercase hex digits, the same one
        // everywhere), and the tracestate without teeproxy's entry.
        let tp = |id: &str| format!("00-0af7651916cd43dd8448eb211c80319c-{id}-01");
        assert!(e.explain(&tp("2222222222222222"), &tp("1111111111111111")));
        assert!(e.explain("2222222222222222", "1111111111111111"));
        assert!(e.explain(
            "a=2222222222222222 b=2222222222222222",
            "a=1111111111111111 b=1111111111111111"
        ));
        assert!(!e.explain(
            "a=2222222222222222 b=3333333333333333",
            "a=1111111111111111 b=1111111111111111"
        ));
        assert!(
            !e.explain("zzzzzzzzzzzzzzzz", "1111111111111111"),
            "not hex"
        );
        assert!(
            !e.explain("222222222222222", "1111111111111111"),
            "too short"
        );
        assert!(
            !e.explain(
                "00-1af7651916cd43dd8448eb211c80319c-2222222222222222-01",
                &tp("1111111111111111")
            ),
            "another trace"
        );
        assert!(e.explain("vendor=1", "teeproxy=shadow-c,vendor=1"));
        assert!(!e.explain("vendor=2", "teeproxy=shadow-c,vendor=1"));
        // Host and parent id in one string.
        assert!(e.explain(
            "http://api/t/2222222222222222",
            "http://shadow-host:9000/t/1111111111111111"
        ));
    }

    #[test]
    fn a_value_set_on_copies_explains_nothing_the_primary_did_not_carry() {
        // `headers.set: {x-flag: "true", x-version: "2"}`, the client sent neither, and
        // the Host is kept.
        let c = Comparator::new(&CompareConfig {
            body: CompareBody::Json,
            ..Default::default()
        })
        .with_edits(EditedHeaders {
            names: ["host", "x-flag", "x-version"]
                .iter()
                .map(|n| HeaderName::from_static(n))
                .collect(),
            replaced: ["host", "x-flag", "x-version"]
                .iter()
                .map(|n| HeaderName::from_static(n))
                .collect(),
        });
        let sent = headers(&[("host", "api"), ("x-flag", "true"), ("x-version", "2")]);
        let e = c.edits(&sent, Some(&HeaderValue::from_static("api")));
        let json = headers(&[("content-type", "application/json")]);
        let v = c.compare_body(
            (
                &json,
                &body(r#"{"enabled":"false","v":"1","host":"db1","echo":{"x-flag":"false"}}"#),
            ),
            (
                &json,
                &body(r#"{"enabled":"true","v":"2","host":"api","echo":{"x-flag":"true"}}"#),
            ),
            &e,
        );
        assert_eq!(v.fields, ["/enabled", "/host", "/v"], "{v:?}");
        assert!(!e.explain("false", "true"));
        assert!(!e.explain("1", "2"));
        assert!(!e.explain("db1", "api"), "the Host is the same on both");
        // No primary Host known: the shadow's explains nothing either.
        let e = c.edits(&sent, None);
        assert!(!e.explain("api", "other"));
    }

    #[test]
    fn bodies_that_cannot_be_compared_are_skipped_with_a_reason() {
        let c = cmp(CompareBody::Exact, &[]);
        let v = bodies(&c, &BodySide::TooLarge, &body("x"));
        assert_eq!(v.skipped, Some(SkipReason::body_too_large));
        let v = bodies(&c, &body("x"), &BodySide::TooLarge);
        assert_eq!(v.skipped, Some(SkipReason::body_too_large));
        let v = bodies(&c, &BodySide::Incomplete, &body("x"));
        assert_eq!(v.skipped, Some(SkipReason::primary_incomplete));
        assert_eq!(
            bodies(&c, &body("x"), &BodySide::Incomplete).result,
            CompareResult::ShadowError
        );
    }

    #[test]
    fn redaction_hides_the_fields_it_names_and_whatever_contains_them() {
        let c = Comparator::new(&CompareConfig {
            body: CompareBody::Json,
            redact: vec!["/user/email".into(), "Set-Cookie".into()],
            headers: vec![
                HeaderName::from_static("set-cookie"),
                HeaderName::from_static("etag"),
            ],
            ..Default::default()
        });
        let v = bodies(
            &c,
            &body(r#"{"user":{"email":"a@x","name":"a"},"n":1,"users":2}"#),
            &body(r#"{"user":{"email":"b@x","name":"b"},"n":2,"users":3}"#),
        );
        let mut diff = v.diff;
        c.redact(&mut diff);
        let shown: Vec<(&str, &str)> = diff
            .iter()
            .map(|d| (d.at.as_str(), d.primary.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("/n", "1"),
                ("/user/email", REDACTED),
                ("/user/name", "\"a\""),
                ("/users", "2")
            ]
        );
        // A difference above the field (its value holds it) is hidden too.
        let v = bodies(
            &c,
            &body(r#"{"user":1}"#),
            &body(r#"{"user":{"email":"b@x"}}"#),
        );
        let mut diff = v.diff;
        c.redact(&mut diff);
        assert_eq!(diff[0].at, "/user");
        assert_eq!(diff[0].shadow, REDACTED);
        // Headers by name, any case; other headers stay readable.
        let v = c.compare_body(
            (
                &headers(&[("set-cookie", "s=1"), ("etag", "a")]),
                &body("{}"),
            ),
            (
                &headers(&[("set-cookie", "s=2"), ("etag", "b")]),
                &body("{}"),
            ),
            &Edits::default(),
        );
        let mut diff = v.diff;
        c.redact(&mut diff);
        let shown: Vec<(&str, &str)> = diff
            .iter()
            .map(|d| (d.at.as_str(), d.shadow.as_str()))
            .collect();
        assert_eq!(
            shown,
            [("header set-cookie", REDACTED), ("header etag", "b")]
        );
        // Text bodies: snippets hidden once any pointer is redacted.
        let mut diff = bodies(&c, &body("a@x"), &body("b@x")).diff;
        c.redact(&mut diff);
        assert_eq!(diff[0].primary, REDACTED);
    }
}
