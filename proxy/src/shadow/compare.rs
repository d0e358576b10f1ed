//! Comparing a shadow's response with the primary's: status, listed headers, and the body
//! (`exact` bytes or `json` values with ignored pointers). Mismatches go into a bounded
//! ring for the admin API. All of it runs in shadow tasks, never on the primary path.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::PoisonError;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::config::{CompareBody, CompareConfig};
use crate::metrics::{CompareResult, SkipReason};

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
    /// A JSON pointer, `status`, `header NAME` or `byte N`.
    pub(crate) at: String,
    pub(crate) primary: String,
    pub(crate) shadow: String,
}

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) result: CompareResult,
    pub(crate) skipped: Option<SkipReason>,
    pub(crate) diff: Vec<Difference>,
}

impl Verdict {
    pub(crate) fn of(result: CompareResult) -> Self {
        Verdict {
            result,
            skipped: None,
            diff: Vec::new(),
        }
    }
    pub(crate) fn skipped(reason: SkipReason) -> Self {
        Verdict {
            result: CompareResult::Skipped,
            skipped: Some(reason),
            diff: Vec::new(),
        }
    }
    fn mismatch(result: CompareResult, diff: Vec<Difference>) -> Self {
        Verdict {
            result,
            skipped: None,
            diff,
        }
    }
}

/// Differences listed per mismatch at most.
const MAX_DIFFS: usize = 5;
/// Characters of a value shown in a difference.
const MAX_SHOWN: usize = 120;

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
        }
    }

    /// Replaces the values of redacted fields in `diff` before it is kept: a difference
    /// at a redacted JSON pointer, under it, or above it (its value contains the field);
    /// at a redacted header; and byte snippets of bodies compared `exact` whenever any
    /// pointer is redacted (raw bytes cannot say where a field is).
    pub(crate) fn redact(&self, diff: &mut [Difference]) {
        for d in diff {
            let hidden = if let Some(name) = d.at.strip_prefix("header ") {
                self.redact_headers
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name))
            } else if d.at.starts_with("byte ") || d.at == "/" {
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

    /// Status and headers; `None` when they agree and the body decides.
    pub(crate) fn compare_head(
        &self,
        p: (StatusCode, &HeaderMap),
        s: (StatusCode, &HeaderMap),
    ) -> Option<Verdict> {
        if self.status && p.0 != s.0 {
            return Some(Verdict::mismatch(
                CompareResult::StatusMismatch,
                vec![Difference {
                    at: "status".into(),
                    primary: p.0.as_u16().to_string(),
                    shadow: s.0.as_u16().to_string(),
                }],
            ));
        }
        let diffs: Vec<Difference> = self
            .headers
            .iter()
            .filter_map(|name| {
                let (a, b) = (joined(p.1, name), joined(s.1, name));
                (a != b).then(|| Difference {
                    at: format!("header {name}"),
                    primary: a.unwrap_or_else(|| "(absent)".into()),
                    shadow: b.unwrap_or_else(|| "(absent)".into()),
                })
            })
            .take(MAX_DIFFS)
            .collect();
        if !diffs.is_empty() {
            return Some(Verdict::mismatch(CompareResult::HeaderMismatch, diffs));
        }
        if !self.compares_body() {
            return Some(Verdict::of(CompareResult::Match));
        }
        // Compressed bodies are not compared: equal content can differ in bytes (gzip
        // headers carry a time), and JSON cannot be read without decoding.
        let encoded = |h: &HeaderMap| {
            h.get_all(http::header::CONTENT_ENCODING)
                .iter()
                .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
        };
        (encoded(p.1) || encoded(s.1)).then(|| Verdict::skipped(SkipReason::encoded))
    }

    /// The bodies, once status and headers agreed.
    pub(crate) fn compare_body(&self, p: &BodySide, s: &BodySide) -> Verdict {
        let (p, s) = (p.joined(), s.joined());
        let (a, b) = match (&p, &s) {
            (BodySide::Incomplete, _) => return Verdict::skipped(SkipReason::primary_incomplete),
            (BodySide::TooLarge, _) | (_, BodySide::TooLarge) => {
                return Verdict::skipped(SkipReason::body_too_large);
            }
            (_, BodySide::Incomplete) => return Verdict::of(CompareResult::ShadowError),
            (BodySide::Complete(a), BodySide::Complete(b)) => (a, b),
            (BodySide::Parts(_), _) | (_, BodySide::Parts(_)) => unreachable!("joined above"),
        };
        match self.body {
            CompareBody::Off => Verdict::of(CompareResult::Match),
            CompareBody::Exact => match a
                .iter()
                .zip(b.iter())
                .position(|(x, y)| x != y)
                .or((a.len() != b.len()).then(|| a.len().min(b.len())))
            {
                None => Verdict::of(CompareResult::Match),
                Some(at) => Verdict::mismatch(
                    CompareResult::BodyMismatch,
                    vec![Difference {
                        at: format!("byte {at}"),
                        primary: snippet(a, at),
                        shadow: snippet(b, at),
                    }],
                ),
            },
            CompareBody::Json if a.is_empty() && b.is_empty() => Verdict::of(CompareResult::Match),
            CompareBody::Json => {
                // Only the primary decides whether the answer is JSON: a shadow that
                // answers something else where the primary answered JSON is different.
                let Ok(mut x) = serde_json::from_slice::<Value>(a) else {
                    return Verdict::skipped(SkipReason::not_json);
                };
                let Ok(mut y) = serde_json::from_slice::<Value>(b) else {
                    return Verdict::mismatch(
                        CompareResult::BodyMismatch,
                        vec![Difference {
                            at: "/".into(),
                            primary: show(Some(&x)),
                            shadow: format!("(not JSON) {}", snippet(b, 0)),
                        }],
                    );
                };
                for pointer in &self.ignore {
                    remove_pointer(&mut x, pointer);
                    remove_pointer(&mut y, pointer);
                }
                let mut diffs = Vec::new();
                json_diff(&x, &y, &mut String::new(), &mut diffs);
                if diffs.is_empty() {
                    Verdict::of(CompareResult::Match)
                } else {
                    Verdict::mismatch(CompareResult::BodyMismatch, diffs)
                }
            }
        }
    }
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

/// Collects up to `MAX_DIFFS` differing pointers (object key order is irrelevant,
/// arrays compare in order).
fn json_diff(a: &Value, b: &Value, at: &mut String, out: &mut Vec<Difference>) {
    if out.len() >= MAX_DIFFS {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x
                .keys()
                .chain(y.keys().filter(|k| !x.contains_key(*k)))
                .collect();
            keys.sort();
            for k in keys {
                let len = at.len();
                at.push('/');
                at.push_str(&escape_token(k));
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(s)) => json_diff(p, s, at, out),
                    (p, s) if out.len() < MAX_DIFFS => out.push(Difference {
                        at: at.clone(),
                        primary: show(p),
                        shadow: show(s),
                    }),
                    _ => {}
                }
                at.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                match (x.get(i), y.get(i)) {
                    (Some(p), Some(s)) => json_diff(p, s, at, out),
                    (p, s) if out.len() < MAX_DIFFS => out.push(Difference {
                        at: at.clone(),
                        primary: show(p),
                        shadow: show(s),
                    }),
                    _ => {}
                }
                at.truncate(len);
            }
        }
        // 1 and 1.0 are the same number.
        (Value::Number(p), Value::Number(s)) if p.as_f64() == s.as_f64() => {}
        (p, s) if p != s => out.push(Difference {
            at: if at.is_empty() {
                "/".to_string()
            } else {
                at.clone()
            },
            primary: show(Some(p)),
            shadow: show(Some(s)),
        }),
        _ => {}
    }
}

/// A mismatch as `/api/mismatches` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Mismatch {
    /// Milliseconds since the Unix epoch.
    pub(crate) time_ms: u64,
    pub(crate) request_id: String,
    pub(crate) route: String,
    pub(crate) method: String,
    /// The path as the client sent it (`path` in the JSON, as the API has always had it).
    #[serde(rename = "path")]
    pub(crate) raw_path: String,
    /// Its path template (`template` in the JSON).
    #[serde(rename = "template")]
    pub(crate) path: String,
    pub(crate) shadow: String,
    pub(crate) primary_status: Option<u16>,
    pub(crate) shadow_status: Option<u16>,
    pub(crate) result: &'static str,
    pub(crate) diff: Vec<Difference>,
}

/// The most recent mismatches, bounded.
pub(crate) struct MismatchRing {
    cap: usize,
    items: Mutex<VecDeque<Mismatch>>,
}

impl MismatchRing {
    pub(crate) fn new(cap: usize) -> Self {
        MismatchRing {
            cap,
            items: Mutex::new(VecDeque::with_capacity(cap.min(1024))),
        }
    }

    pub(crate) fn push(&self, m: Mismatch) {
        if self.cap == 0 {
            return;
        }
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        if items.len() == self.cap {
            items.pop_front();
        }
        items.push_back(m);
    }

    /// Newest first.
    pub(crate) fn recent(&self) -> Vec<Mismatch> {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(body: CompareBody, ignore: &[&str]) -> Comparator {
        Comparator::new(&CompareConfig {
            body,
            ignore: ignore.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
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

    #[test]
    fn status_and_headers() {
        let c = cmp(CompareBody::Off, &[]);
        let json = headers(&[("content-type", "application/json")]);
        let text = headers(&[("content-type", "text/plain")]);
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        assert_eq!(
            c.compare_head((ok, &json), (ok, &json)).unwrap().result,
            CompareResult::Match
        );
        let v = c
            .compare_head((ok, &json), (StatusCode::INTERNAL_SERVER_ERROR, &json))
            .unwrap();
        assert_eq!(v.result, CompareResult::StatusMismatch);
        assert_eq!(
            v.diff[0],
            Difference {
                at: "status".into(),
                primary: "200".into(),
                shadow: "500".into()
            }
        );
        let v = c.compare_head((ok, &json), (ok, &text)).unwrap();
        assert_eq!(v.result, CompareResult::HeaderMismatch);
        assert_eq!(v.diff[0].at, "header content-type");
        assert_eq!(
            c.compare_head((ok, &json), (ok, &none)).unwrap().diff[0].shadow,
            "(absent)"
        );
        assert_eq!(
            c.compare_head((ok, &none), (ok, &none)).unwrap().result,
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
            c.compare_head((ok, &json), (StatusCode::NOT_FOUND, &text))
                .unwrap()
                .result,
            CompareResult::Match
        );
        let body_mode = cmp(CompareBody::Json, &[]);
        assert!(
            body_mode.compare_head((ok, &json), (ok, &json)).is_none(),
            "the body decides"
        );
        let gz = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        let v = body_mode.compare_head((ok, &gz), (ok, &gz)).unwrap();
        assert_eq!(
            v.skipped,
            Some(SkipReason::encoded),
            "compressed bodies are not compared"
        );
    }

    #[test]
    fn exact_bodies() {
        let c = cmp(CompareBody::Exact, &[]);
        assert_eq!(
            c.compare_body(&body("hello"), &body("hello")).result,
            CompareResult::Match
        );
        let v = c.compare_body(&body("hello world"), &body("hello World"));
        assert_eq!(v.result, CompareResult::BodyMismatch);
        assert_eq!(v.diff[0].at, "byte 6");
        let v = c.compare_body(&body("abc"), &body("abcd"));
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
        assert_eq!(
            c.compare_body(&body(a), &body(b)).result,
            CompareResult::Match
        );

        let c = cmp(CompareBody::Json, &[]);
        let v = c.compare_body(
            &body(r#"{"a":[1,2],"b":{"c":"x"}}"#),
            &body(r#"{"a":[2,1],"b":{"c":"y"},"d":true}"#),
        );
        assert_eq!(v.result, CompareResult::BodyMismatch);
        let at: Vec<&str> = v.diff.iter().map(|d| d.at.as_str()).collect();
        assert_eq!(at, ["/a/0", "/a/1", "/b/c", "/d"]);
        assert_eq!(
            v.diff[2],
            Difference {
                at: "/b/c".into(),
                primary: "\"x\"".into(),
                shadow: "\"y\"".into()
            }
        );
        assert_eq!(v.diff[3].primary, "(absent)");

        let v = c.compare_body(&body("not json"), &body("{}"));
        assert_eq!(
            (v.result, v.skipped),
            (CompareResult::Skipped, Some(SkipReason::not_json)),
            "the primary is not JSON"
        );
        let v = c.compare_body(&body("{\"a\":1}"), &body("<html>oops</html>"));
        assert_eq!(
            v.result,
            CompareResult::BodyMismatch,
            "JSON expected, something else came"
        );
        assert!(v.diff[0].shadow.starts_with("(not JSON)"));
        assert_eq!(
            c.compare_body(&body(""), &body("")).result,
            CompareResult::Match,
            "HEAD, 204, 304"
        );
        assert_eq!(
            c.compare_body(&body("{\"n\":1}"), &body("{\"n\":1.0}"))
                .result,
            CompareResult::Match,
            "1 == 1.0"
        );
        let v = c.compare_body(&body("1"), &body("2"));
        assert_eq!(v.diff[0].at, "/");
        let many_a = (0..20)
            .map(|i| format!("\"k{i:02}\":{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let many_b = (0..20)
            .map(|i| format!("\"k{i:02}\":{}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let v = c.compare_body(
            &body(&format!("{{{many_a}}}")),
            &body(&format!("{{{many_b}}}")),
        );
        assert_eq!(v.diff.len(), MAX_DIFFS, "diffs are short");
    }

    #[test]
    fn bodies_that_cannot_be_compared_are_skipped_with_a_reason() {
        let c = cmp(CompareBody::Exact, &[]);
        let v = c.compare_body(&BodySide::TooLarge, &body("x"));
        assert_eq!(v.skipped, Some(SkipReason::body_too_large));
        let v = c.compare_body(&body("x"), &BodySide::TooLarge);
        assert_eq!(v.skipped, Some(SkipReason::body_too_large));
        let v = c.compare_body(&BodySide::Incomplete, &body("x"));
        assert_eq!(v.skipped, Some(SkipReason::primary_incomplete));
        assert_eq!(
            c.compare_body(&body("x"), &BodySide::Incomplete).result,
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
        let v = c.compare_body(
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
        let v = c.compare_body(&body(r#"{"user":1}"#), &body(r#"{"user":{"email":"b@x"}}"#));
        let mut diff = v.diff;
        c.redact(&mut diff);
        assert_eq!(diff[0].at, "/user");
        assert_eq!(diff[0].shadow, REDACTED);
        // Headers by name, any case; other headers stay readable.
        let h = c
            .compare_head(
                (
                    StatusCode::OK,
                    &headers(&[("set-cookie", "s=1"), ("etag", "a")]),
                ),
                (
                    StatusCode::OK,
                    &headers(&[("set-cookie", "s=2"), ("etag", "b")]),
                ),
            )
            .unwrap();
        let mut diff = h.diff;
        c.redact(&mut diff);
        let shown: Vec<(&str, &str)> = diff
            .iter()
            .map(|d| (d.at.as_str(), d.shadow.as_str()))
            .collect();
        assert_eq!(
            shown,
            [("header set-cookie", REDACTED), ("header etag", "b")]
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_and_stays_bounded() {
        let ring = MismatchRing::new(3);
        for i in 0..10 {
            ring.push(Mismatch {
                time_ms: i,
                request_id: format!("r{i}"),
                route: "r".into(),
                method: "GET".into(),
                raw_path: "/".into(),
                path: "/".into(),
                shadow: "s".into(),
                primary_status: Some(200),
                shadow_status: Some(500),
                result: "status_mismatch",
                diff: vec![],
            });
        }
        let ids: Vec<String> = ring.recent().into_iter().map(|m| m.request_id).collect();
        assert_eq!(ids, ["r9", "r8", "r7"]);
        assert!(MismatchRing::new(0).recent().is_empty());
    }
}
