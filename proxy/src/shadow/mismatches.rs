//! Mismatches grouped by signature for `/api/mismatches` and the dashboard: one group per
//! (route, path template, shadow, the sorted set of differing fields), with its count,
//! when it was first and last seen, the result and its most recent example (redacted
//! before it gets here). Bounded: past `cap` groups, the least recently seen one is
//! evicted to make room for a new signature, and evictions are counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use super::compare::Difference;

/// A mismatch as `/api/mismatches` shows it: the example of its group.
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

/// What makes two mismatches one group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Signature {
    route: String,
    path: String,
    shadow: String,
    fields: Vec<String>,
}

/// One group as `/api/mismatches` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MismatchGroup {
    pub(crate) route: String,
    /// The path template.
    pub(crate) path: String,
    pub(crate) shadow: String,
    /// The differing fields (the verdict's, sorted).
    pub(crate) fields: Vec<String>,
    /// The result of the most recent mismatch (`status_mismatch`, ...).
    pub(crate) result: &'static str,
    pub(crate) count: u64,
    /// Milliseconds since the Unix epoch.
    pub(crate) first_seen_ms: u64,
    pub(crate) last_seen_ms: u64,
    /// The most recent mismatch of the group.
    pub(crate) example: Mismatch,
}

/// `/api/mismatches`: the groups, most recently seen first.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Groups {
    pub(crate) groups: Vec<MismatchGroup>,
    /// Groups kept at most (`mismatch_ring`).
    pub(crate) cap: usize,
    /// Groups evicted, least recently seen first, to make room for new signatures.
    pub(crate) evicted: u64,
}

#[derive(Default)]
struct Inner {
    /// Each group with its place in `recency`.
    groups: HashMap<Arc<Signature>, (u64, MismatchGroup)>,
    /// Least recently seen first.
    recency: BTreeMap<u64, Arc<Signature>>,
    next: u64,
    evicted: u64,
}

/// The mismatch groups, bounded.
pub(crate) struct MismatchGroups {
    cap: usize,
    inner: Mutex<Inner>,
}

impl MismatchGroups {
    pub(crate) fn new(cap: usize) -> Self {
        MismatchGroups {
            cap,
            inner: Mutex::default(),
        }
    }

    /// Counts `m` in the group of its signature (`fields`: its verdict's), the group made
    /// when new (evicting the least recently seen one when `cap` groups are kept).
    pub(crate) fn record(&self, fields: Vec<String>, m: Mismatch) {
        if self.cap == 0 {
            return;
        }
        let key = Signature {
            route: m.route.clone(),
            path: m.path.clone(),
            shadow: m.shadow.clone(),
            fields,
        };
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *inner;
        let seq = inner.next;
        inner.next += 1;
        if let Some((at, g)) = inner.groups.get_mut(&key) {
            let key = inner.recency.remove(at).expect("every group has a place");
            inner.recency.insert(seq, key);
            *at = seq;
            g.count += 1;
            g.first_seen_ms = g.first_seen_ms.min(m.time_ms);
            g.last_seen_ms = g.last_seen_ms.max(m.time_ms);
            g.result = m.result;
            g.example = m;
            return;
        }
        if inner.groups.len() >= self.cap
            && let Some((_, oldest)) = inner.recency.pop_first()
        {
            inner.groups.remove(&oldest);
            inner.evicted += 1;
        }
        let key = Arc::new(key);
        let group = MismatchGroup {
            route: key.route.clone(),
            path: key.path.clone(),
            shadow: key.shadow.clone(),
            fields: key.fields.clone(),
            result: m.result,
            count: 1,
            first_seen_ms: m.time_ms,
            last_seen_ms: m.time_ms,
            example: m,
        };
        inner.recency.insert(seq, key.clone());
        inner.groups.insert(key, (seq, group));
    }

    /// The groups, most recently seen first.
    pub(crate) fn groups(&self) -> Groups {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Groups {
            groups: inner
                .recency
                .values()
                .rev()
                .filter_map(|k| inner.groups.get(k).map(|(_, g)| g.clone()))
                .collect(),
            cap: self.cap,
            evicted: inner.evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(time_ms: u64, path: &str, id: &str) -> Mismatch {
        Mismatch {
            time_ms,
            request_id: id.into(),
            route: "r".into(),
            method: "GET".into(),
            raw_path: path.into(),
            path: path.into(),
            shadow: "s".into(),
            primary_status: Some(200),
            shadow_status: Some(200),
            result: "body_mismatch",
            diff: vec![],
        }
    }

    fn fields(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_group_per_signature_with_count_times_and_the_latest_example() {
        let g = MismatchGroups::new(10);
        g.record(fields(&["/a"]), mismatch(100, "/x", "r1"));
        g.record(fields(&["/a", "/b"]), mismatch(110, "/x", "r2"));
        g.record(fields(&["/a"]), mismatch(120, "/x", "r3"));
        g.record(fields(&["/a"]), mismatch(130, "/y", "r4"));
        let got = g.groups();
        assert_eq!(got.evicted, 0);
        let shown: Vec<String> = got
            .groups
            .iter()
            .map(|g| {
                format!(
                    "{} {:?} count {} seen {}..{} latest {}",
                    g.path,
                    g.fields,
                    g.count,
                    g.first_seen_ms,
                    g.last_seen_ms,
                    g.example.request_id
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                r#"/y ["/a"] count 1 seen 130..130 latest r4"#,
                r#"/x ["/a"] count 2 seen 100..120 latest r3"#,
                r#"/x ["/a", "/b"] count 1 seen 110..110 latest r2"#,
            ],
            "most recently seen first"
        );
    }

    #[test]
    fn past_the_cap_the_least_recently_seen_group_goes_and_is_counted() {
        let g = MismatchGroups::new(3);
        for (i, f) in ["/a", "/b", "/c"].iter().enumerate() {
            g.record(fields(&[f]), mismatch(i as u64, "/p", f));
        }
        // `/a` seen again: `/b` is now the least recent.
        g.record(fields(&["/a"]), mismatch(10, "/p", "a2"));
        g.record(fields(&["/d"]), mismatch(11, "/p", "d"));
        let got = g.groups();
        let kept: Vec<&str> = got.groups.iter().map(|g| g.fields[0].as_str()).collect();
        assert_eq!(kept, ["/d", "/a", "/c"]);
        assert_eq!((got.evicted, got.cap), (1, 3));
        for i in 0..100 {
            g.record(fields(&[&format!("/n{i}")]), mismatch(20 + i, "/p", "n"));
        }
        let got = g.groups();
        assert_eq!(got.groups.len(), 3, "bounded");
        assert_eq!(got.evicted, 101);
        assert_eq!(got.groups[0].fields, ["/n99"]);
        let none = MismatchGroups::new(0);
        none.record(fields(&["/a"]), mismatch(1, "/p", "x"));
        assert!(none.groups().groups.is_empty());
    }
}
