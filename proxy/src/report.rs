//! The admin API's JSON: the per-path table (`/api/paths`), recent mismatches
//! (`/api/mismatches`) and the active config with secrets redacted (`/api/config`).

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::config::{CompareBody, Config, SampleKey, ShadowHost, ShadowMethods};
use crate::metrics::CompareResult;
use crate::proxy::Proxy;
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
pub fn paths(proxy: &Proxy) -> Value {
    let snap = proxy.snapshot();
    let mut rows = Vec::new();
    for route in snap.router.routes() {
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

/// `/api/mismatches`: newest first.
pub fn mismatches(proxy: &Proxy) -> Value {
    json!({ "mismatches": proxy.mismatches().recent() })
}

/// `/api/config`: the active config; values of shadow `headers.set` are redacted (they
/// often carry tokens), removed headers are listed by name only.
pub fn config(c: &Config) -> Value {
    let clusters: serde_json::Map<String, Value> = c
        .clusters
        .iter()
        .map(|(name, cl)| {
            (
                name.clone(),
                json!({
                    "endpoints": cl.endpoints.iter().map(|e| e.value.clone()).collect::<Vec<_>>(),
                    "connect_timeout": cl.connect_timeout.value.to_string(),
                    "timeout": cl.timeout.value.to_string(),
                    "host": format!("{:?}", cl.host).to_lowercase(),
                    "idle_timeout": cl.idle_timeout.value.to_string(),
                    "max_idle_per_endpoint": cl.max_idle_per_endpoint,
                    "ejection_time": cl.ejection_time.value.to_string(),
                    "shadow_queue": cl.shadow_queue.value,
                    "shadow_max_in_flight": cl.shadow_max_in_flight.value,
                    "shadow_max_bytes": cl.shadow_max_bytes.value.to_string(),
                }),
            )
        })
        .collect();
    let routes: Vec<Value> = c
        .routes
        .iter()
        .map(|r| {
            let shadows: Vec<Value> = r
                .shadows
                .iter()
                .map(|s| {
                    json!({
                        "cluster": s.cluster.value,
                        "percent": s.percent.value,
                        "sample_key": s.sample_key.as_ref().map(|k| match k {
                            SampleKey::Header(h) => json!({ "header": h }),
                            SampleKey::Cookie(c) => json!({ "cookie": c }),
                        }),
                        "methods": match &s.methods {
                            ShadowMethods::Keyword(k) => json!(k),
                            ShadowMethods::List(l) => json!(l),
                        },
                        "max_body": s.max_body.value.to_string(),
                        "timeout": s.timeout.value.to_string(),
                        "host": match &s.host {
                            ShadowHost::Word(w) => json!(w),
                            ShadowHost::Suffix { suffix } => json!({ "suffix": suffix }),
                        },
                        "headers": {
                            "set": s.headers.set.keys().map(|k| (k.clone(), json!("<redacted>"))).collect::<serde_json::Map<_, _>>(),
                            "remove": s.headers.remove,
                        },
                        "compare": {
                            "status": s.compare.status,
                            "headers": s.compare.headers,
                            "body": match s.compare.body { CompareBody::Off => "off", CompareBody::Exact => "exact", CompareBody::Json => "json" },
                            "ignore": s.compare.ignore,
                            "max_body": s.compare.max_body.value.to_string(),
                        },
                    })
                })
                .collect();
            json!({
                "name": r.name.value,
                "match": {
                    "path_prefix": r.match_.path_prefix.value,
                    "host": r.match_.host.as_ref().map(|h| h.value.clone()),
                    "methods": r.match_.methods.as_ref().map(|ms| ms.iter().map(|m| m.value.clone()).collect::<Vec<_>>()),
                },
                "primary": r.primary.value,
                "paths": r.paths.iter().map(|p| p.value.clone()).collect::<Vec<_>>(),
                "max_paths": r.max_paths.value,
                "shadows": shadows,
            })
        })
        .collect();
    let l = &c.limits;
    json!({
        "listeners": c.listeners.iter().map(|l| json!({ "name": l.name.value, "address": l.address.value })).collect::<Vec<_>>(),
        "admin": { "address": c.admin.address.value },
        "clusters": clusters,
        "routes": routes,
        "limits": {
            "max_header_bytes": l.max_header_bytes.value.to_string(),
            "max_headers": l.max_headers.value,
            "max_uri_bytes": l.max_uri_bytes.value.to_string(),
            "request_head_timeout": l.request_head_timeout.value.to_string(),
            "max_concurrent_streams": l.max_concurrent_streams.value,
            "body_timeout": l.body_timeout.value.to_string(),
            "max_connections": l.max_connections.value,
            "idle_timeout": l.idle_timeout.value.to_string(),
            "write_timeout": l.write_timeout.value.to_string(),
        },
        "drain_timeout": c.drain_timeout.to_string(),
        "shadow_drain": c.shadow_drain.to_string(),
        "shadow_header": c.shadow_header.value,
        "mismatch_ring": c.mismatch_ring.value,
        "access_log": { "enabled": c.access_log.enabled },
        "x_forwarded_for": format!("{:?}", c.x_forwarded_for).to_lowercase(),
    })
}
