//! The admin API's JSON: the per-path table (`/api/paths`), the shadows' runtime state
//! (`/api/shadows`) and its changes, and the mismatch groups (`/api/mismatches`).
//! `/api/config` is the config's own serialization.

use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::{Value, json};

use crate::metrics::CompareResult;
use crate::proxy::snapshot::Snapshot;
use crate::shadow::control::Override;
use crate::shadow::mismatches::MismatchGroups;
use crate::shadow::policy::ShadowPolicy;
use crate::shadow::verdict::{self, pair::Pairing};
use crate::stats::{LegStats, PathEntry};

fn ms(seconds: f64) -> f64 {
    (seconds * 1e5).round() / 100.0
}

fn leg_json(leg: &LegStats) -> (Value, Option<[f64; 3]>) {
    let count = leg.count.load(Ordering::Relaxed);
    let errors = leg.errors.load(Ordering::Relaxed);
    let q = leg.latency.quantiles([0.5, 0.9, 0.99]);
    let v = json!({
        "count": count,
        "errors": errors,
        "error_rate": if count == 0 { 0.0 } else { errors as f64 / count as f64 },
        "p50_ms": q.map(|q| ms(q[0])),
        "p90_ms": q.map(|q| ms(q[1])),
        "p99_ms": q.map(|q| ms(q[2])),
    });
    (v, q)
}

fn ratio(a: Option<[f64; 3]>, b: Option<[f64; 3]>, i: usize) -> Option<f64> {
    match (a, b) {
        (Some(p), Some(s)) if p[i] > 0.0 => Some((s[i] / p[i] * 1000.0).round() / 1000.0),
        _ => None,
    }
}

fn rows_for(e: &PathEntry, out: &mut Vec<Value>) {
    let (primary, pq) = leg_json(&e.primary);
    let requests = e.primary.count.load(Ordering::Relaxed);
    let total = e.primary.latency.sum_seconds();
    let base = json!({
        "route": e.route,
        "path": e.template,
        "requests": requests,
        "rate_per_s": (e.rate.per_second() * 100.0).round() / 100.0,
        "total_primary_seconds": (total * 1000.0).round() / 1000.0,
        "primary": primary,
    });
    if e.shadows.is_empty() {
        let mut row = base;
        row["shadow"] = Value::Null;
        out.push(row);
        return;
    }
    for s in &e.shadows {
        let (shadow, sq) = leg_json(&s.leg);
        let results: serde_json::Map<String, Value> = CompareResult::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), json!(s.result_count(*r))))
            .collect();
        let compared: u64 = CompareResult::ALL.iter().map(|r| s.result_count(*r)).sum();
        let mismatches: u64 = CompareResult::ALL
            .iter()
            .filter(|r| r.is_mismatch())
            .map(|r| s.result_count(*r))
            .sum();
        let drops: serde_json::Map<String, Value> = s
            .drop_counts()
            .into_iter()
            .map(|(r, n)| (format!("{r:?}"), json!(n)))
            .collect();
        let mut row = base.clone();
        row["shadow"] = json!(s.shadow);
        row["shadow_leg"] = shadow;
        row["ratio_p50"] = json!(ratio(pq, sq, 0));
        row["ratio_p99"] = json!(ratio(pq, sq, 2));
        row["compared"] = json!(compared);
        row["mismatches"] = json!(mismatches);
        // Of the answers that could be compared: skipped ones and shadow errors do not
        // dilute it.
        let judged = s.result_count(CompareResult::Match) + mismatches;
        row["mismatch_rate"] = json!(if judged == 0 {
            0.0
        } else {
            mismatches as f64 / judged as f64
        });
        row["results"] = Value::Object(results);
        row["drops"] = Value::Object(drops);
        out.push(row);
    }
}

/// `/api/paths`: one row per (route, path template, shadow), by total primary time.
pub(super) fn paths(snap: &Snapshot) -> Value {
    let mut rows = Vec::new();
    for route in &snap.routes {
        for entry in route.paths.entries() {
            rows_for(&entry, &mut rows);
        }
    }
    rows.sort_by(|a, b| {
        let t = |v: &Value| v["total_primary_seconds"].as_f64().unwrap_or(0.0);
        t(b).total_cmp(&t(a))
    });
    json!({ "paths": rows })
}

/// `/api/verdict`: per (route, path template, shadow) the verdict, and the overall state.
/// Query: `tolerate=N` failing rows of non-critical routes still pass (default 0);
/// `route=NAME` only that route's rows.
pub(super) fn verdict(snap: &Snapshot, query: Option<&str>) -> Value {
    let param = |name: &str| {
        query?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let tolerate = param("tolerate")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let only = param("route");
    let mut rows = Vec::new();
    for route in &snap.routes {
        if only.as_deref().is_some_and(|r| r != route.name) {
            continue;
        }
        let Some(rc) = snap.config.routes.iter().find(|r| r.name == route.name) else {
            continue;
        };
        for entry in route.paths.entries() {
            for (i, stats) in entry.shadows.iter().enumerate() {
                let Some(policy) = route.shadows.get(i) else {
                    continue;
                };
                let pairing = policy.spec.pairing;
                let baseline = match pairing {
                    Pairing::Candidate { baseline } => {
                        route.shadows.get(baseline).map(|b| b.spec.shadow.as_str())
                    }
                    _ => None,
                };
                rows.push(verdict::row(&verdict::Subject {
                    route: &route.name,
                    path: &entry.template,
                    stats,
                    pairing,
                    baseline,
                    critical: rc.critical,
                    config: &rc.verdict,
                }));
            }
        }
    }
    rows.sort_by(|a, b| {
        (a.route.as_str(), a.path.as_str(), a.shadow.as_str()).cmp(&(
            b.route.as_str(),
            b.path.as_str(),
            b.shadow.as_str(),
        ))
    });
    let state = verdict::overall(&rows, tolerate);
    json!({
        "state": state,
        "tolerate": tolerate,
        "failing": rows.iter().filter(|r| r.counts() && r.state == verdict::State::Fail).count(),
        "rows": rows,
    })
}

/// `POST /api/reset`: every path's verdict starts afresh (the counters of `/api/paths`
/// and `/metrics` are left as they are).
pub(super) fn reset(snap: &Snapshot) -> Value {
    let mut n = 0;
    for route in &snap.routes {
        for entry in route.paths.entries() {
            for s in &entry.shadows {
                s.pairs.reset();
                n += 1;
            }
        }
    }
    tracing::info!(rows = n, "verdicts reset");
    json!({ "reset": n })
}

/// `/api/mismatches`: the mismatch groups, most recently seen first, with the cap and
/// the number evicted.
pub(super) fn mismatches(groups: &MismatchGroups) -> Value {
    json!(groups.groups())
}

/// `/api/shadows`: each route's shadows with their state (`active` or `paused`), the
/// percent that applies now, the file's percent, and the runtime change in force.
pub(super) fn shadows(snap: &Snapshot) -> Value {
    let mut rows = Vec::new();
    for route in &snap.routes {
        for policy in &route.shadows {
            rows.push(shadow_row(&route.name, policy));
        }
    }
    json!({ "shadows": rows })
}

fn shadow_row(route: &str, policy: &ShadowPolicy) -> Value {
    let (current, percent, file_percent) = policy.control.view();
    json!({
        "route": route,
        "shadow": policy.spec.shadow,
        "state": if current.paused { "paused" } else { "active" },
        "percent": percent,
        "file_percent": file_percent,
        "runtime": (current != Override::default()).then_some(current),
    })
}

/// What `POST /api/shadows/{route}/{cluster}` may carry.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    paused: Option<bool>,
    percent: Option<f64>,
    /// Back to the file's settings (applied before `paused` and `percent`).
    #[serde(default)]
    reset: bool,
}

/// Applies a runtime change to one shadow policy; returns the status and the policy's new
/// row (or an error object).
pub(super) fn change_shadow(
    snap: &Snapshot,
    route: &str,
    shadow: &str,
    body: &[u8],
    peer: std::net::SocketAddr,
) -> (StatusCode, Value) {
    let error = |status: StatusCode, msg: String| (status, json!({ "error": msg }));
    let Some(policy) = snap
        .routes
        .iter()
        .find(|r| r.name == route)
        .and_then(|r| r.shadows.iter().find(|p| p.spec.shadow == shadow))
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("route {route:?} has no shadow {shadow:?} (GET /api/shadows lists them)"),
        );
    };
    if let Pairing::Baseline { candidate } = policy.spec.pairing {
        let of = snap
            .routes
            .iter()
            .find(|r| r.name == route)
            .and_then(|r| r.shadows.get(candidate))
            .map_or("its candidate", |c| c.spec.shadow.as_str());
        return error(
            StatusCode::CONFLICT,
            format!(
                "{shadow:?} is the baseline of {of:?} and follows its decisions: pause or change {of:?} instead"
            ),
        );
    }
    let change: Change = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected a JSON object with paused (true or false), percent (0 to 100) or reset (true): {e}"
                ),
            );
        }
    };
    if change.paused.is_none() && change.percent.is_none() && !change.reset {
        return error(
            StatusCode::BAD_REQUEST,
            "nothing to change: give paused, percent or reset".to_string(),
        );
    }
    if let Some(p) = change.percent
        && !(0.0..=100.0).contains(&p)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("percent must be between 0 and 100, not {p}"),
        );
    }
    policy
        .control
        .change(change.reset, change.paused, change.percent);
    tracing::warn!(
        route,
        shadow,
        %peer,
        reset = change.reset,
        paused = ?change.paused,
        percent = ?change.percent,
        "shadow changed at runtime (admin API); it holds until the config file changes this shadow"
    );
    (StatusCode::OK, shadow_row(route, policy))
}
