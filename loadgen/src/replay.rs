//! `loadgen replay`: sends the requests of a teeproxy record file (`record:` of a shadow
//! policy, one JSON object a line) again, open loop: at a fixed rate, or at the recorded
//! inter-arrival times scaled by a speed. Each request is the recorded method, path and
//! query, headers (hop-by-hop and framing headers dropped, Host set to the target) and
//! body. With `compare`, each answer is compared with the recorded primary answer (status,
//! and the body when it was recorded whole: as JSON values when both sides are JSON, else
//! as bytes; recorded `[redacted]` values match anything).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::drive::classify;
use crate::schedule::{latency_json, new_histogram, quantile_ms, record};

/// What teeproxy writes for a redacted value; matches anything when comparing.
pub const REDACTED: &str = "[redacted]";

/// Differences printed in full.
const EXAMPLES: usize = 5;

/// Headers never replayed: hop-by-hop, framing (recomputed) and Host (the target's).
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "content-length",
    "host",
    "expect",
];

/// One recorded exchange, as far as a replay needs it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When it was recorded (milliseconds since the Unix epoch).
    pub time_ms: u64,
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// The primary's status (`None` when the primary failed).
    pub primary_status: Option<u16>,
    /// The primary's body, when it was recorded whole.
    pub primary_body: Option<Bytes>,
}

/// Reads a record file's text; errors name the line.
pub fn parse(text: &str) -> anyhow::Result<Vec<Recorded>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l).with_context(|| format!("line {}", i + 1)))
        .collect()
}

fn parse_line(line: &str) -> anyhow::Result<Recorded> {
    let v: Value = serde_json::from_str(line)?;
    let b64 = |v: &Value| -> anyhow::Result<Option<Bytes>> {
        match v.as_str() {
            Some(s) => Ok(Some(Bytes::from(BASE64.decode(s).context("base64 body")?))),
            None => Ok(None),
        }
    };
    let mut headers = Vec::new();
    for pair in v["request"]["headers"].as_array().into_iter().flatten() {
        let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str()) else {
            bail!("request.headers: expected [name, value] pairs");
        };
        let name = HeaderName::from_bytes(name.as_bytes()).context("header name")?;
        if DROPPED.contains(&name.as_str()) {
            continue;
        }
        headers.push((name, HeaderValue::from_str(value).context("header value")?));
    }
    let primary = &v["primary"];
    Ok(Recorded {
        time_ms: v["time_ms"].as_u64().context("time_ms")?,
        method: Method::from_bytes(v["method"].as_str().context("method")?.as_bytes())?,
        uri: v["uri"].as_str().context("uri")?.to_string(),
        headers,
        body: b64(&v["request"]["body"])?.unwrap_or_default(),
        primary_status: primary["status"]
            .as_u64()
            .filter(|_| primary["error"].is_null())
            .map(|s| s as u16),
        primary_body: if primary["truncated"].as_bool() == Some(true) {
            None
        } else {
            b64(&primary["body"])?
        },
    })
}

/// When the recorded requests go out.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// A fixed rate, requests per second.
    Rate(f64),
    /// The recorded inter-arrival times divided by this (2.0: twice as fast).
    Speed(f64),
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// `http://host:port`.
    pub target: Uri,
    pub pace: Pace,
    /// Requests in flight at once (and pooled connections).
    pub connections: usize,
    /// Stop sending after this long (`None`: the whole file once).
    pub duration: Option<Duration>,
    /// Compare each answer with the recorded primary answer.
    pub compare: bool,
    pub timeout: Duration,
}

/// A replay's figures.
#[derive(Debug)]
pub struct ReplayReport {
    pub sent: u64,
    pub completed: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<String, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    /// Answers compared with a recorded primary answer.
    pub compared: u64,
    /// Of those, how many differ.
    pub differences: u64,
    /// The first few differences, described.
    pub examples: Vec<String>,
}

impl ReplayReport {
    fn ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latency, q)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "sent": self.sent,
            "completed": self.completed,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "latency_ms": latency_json(&self.latency),
            "statuses": self.statuses,
            "errors": self.errors,
            "compared": self.compared,
            "differences": self.differences,
            "examples": self.examples,
        })
    }

    pub fn summary(&self) -> String {
        let errors: u64 = self.errors.values().sum();
        let mut s = format!(
            "{} requests replayed in {:.1}s ({} answered); latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; statuses {:?}; errors {} {:?}",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.completed,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.latency.max() as f64 / 1000.0,
            self.statuses,
            errors,
            self.errors
        );
        if self.compared > 0 || self.differences > 0 {
            s.push_str(&format!(
                "\ncompared {} answers with the recorded primary: {} differences",
                self.compared, self.differences
            ));
            for e in &self.examples {
                s.push_str(&format!("\n  {e}"));
            }
        }
        s
    }
}

/// One answer as the replay saw it.
struct Outcome {
    due: Instant,
    done: Instant,
    result: Result<u16, &'static str>,
    difference: Option<String>,
    compared: bool,
}

/// Replays `records` (in file order) against `opts.target`.
pub async fn replay(records: Vec<Recorded>, opts: ReplayOptions) -> ReplayReport {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(opts.connections.max(1))
        .build(http);
    let authority = opts
        .target
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let slots = Arc::new(Semaphore::new(opts.connections.max(1)));
    let first_ms = records.first().map_or(0, |r| r.time_ms);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    for (i, rec) in records.into_iter().enumerate() {
        let offset = match opts.pace {
            Pace::Rate(rate) => Duration::from_secs_f64(i as f64 / rate),
            Pace::Speed(speed) => Duration::from_secs_f64(
                rec.time_ms.saturating_sub(first_ms) as f64 / 1000.0 / speed,
            ),
        };
        if opts.duration.is_some_and(|d| offset >= d) {
            break;
        }
        let due = start + offset;
        tokio::time::sleep_until(due.into()).await;
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        sent += 1;
        let client = client.clone();
        let url = format!("http://{authority}{}", rec.uri);
        let (compare, timeout) = (opts.compare, opts.timeout);
        let authority = authority.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let mut req = Request::new(Full::new(rec.body.clone()));
            *req.method_mut() = rec.method.clone();
            match url.parse::<Uri>() {
                Ok(u) => *req.uri_mut() = u,
                Err(_) => {
                    return Outcome {
                        due,
                        done: Instant::now(),
                        result: Err("bad_uri"),
                        difference: None,
                        compared: false,
                    };
                }
            }
            for (k, v) in &rec.headers {
                req.headers_mut().append(k.clone(), v.clone());
            }
            if let Ok(h) = HeaderValue::from_str(&authority) {
                req.headers_mut().insert(http::header::HOST, h);
            }
            let exchange = async {
                let resp = client.request(req).await.map_err(|e| classify(&e))?;
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.map_err(|_| "body")?;
                Ok((status, body.to_bytes()))
            };
            let answer = tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or(Err("timeout"));
            let done = Instant::now();
            let (difference, compared) = match (&answer, compare) {
                (Ok((status, body)), true) => match rec.primary_status {
                    Some(_) => (differs(&rec, *status, body), true),
                    None => (None, false),
                },
                _ => (None, false),
            };
            Outcome {
                due,
                done,
                result: answer.map(|(s, _)| s),
                difference,
                compared,
            }
        });
    }
    let mut report = ReplayReport {
        sent,
        completed: 0,
        elapsed: Duration::ZERO,
        latency: new_histogram(),
        statuses: BTreeMap::new(),
        errors: BTreeMap::new(),
        compared: 0,
        differences: 0,
        examples: Vec::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        let Ok(o) = joined else { continue };
        match o.result {
            Ok(status) => {
                report.completed += 1;
                record(&mut report.latency, o.due, o.done);
                *report.statuses.entry(status.to_string()).or_default() += 1;
            }
            Err(kind) => *report.errors.entry(kind).or_default() += 1,
        }
        report.compared += u64::from(o.compared);
        if let Some(d) = o.difference {
            report.differences += 1;
            if report.examples.len() < EXAMPLES {
                report.examples.push(d);
            }
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// How an answer differs from the recorded primary answer, if it does.
fn differs(rec: &Recorded, status: u16, body: &Bytes) -> Option<String> {
    let what = format!("{} {}", rec.method, rec.uri);
    if rec.primary_status != Some(status) {
        return Some(format!(
            "{what}: status {} -> {status}",
            rec.primary_status.unwrap_or(0)
        ));
    }
    let recorded = rec.primary_body.as_ref()?;
    if recorded == body {
        return None;
    }
    match (
        serde_json::from_slice::<Value>(recorded),
        serde_json::from_slice::<Value>(body),
    ) {
        (Ok(a), Ok(b)) => {
            first_difference(&a, &b, "").map(|(at, x, y)| format!("{what}: body {at}: {x} -> {y}"))
        }
        _ => {
            let at = recorded
                .iter()
                .zip(body.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(recorded.len().min(body.len()));
            Some(format!(
                "{what}: body differs at byte {at} ({} -> {} bytes)",
                recorded.len(),
                body.len()
            ))
        }
    }
}

/// The first JSON pointer where `a` (recorded) and `b` differ; a recorded `[redacted]`
/// matches anything, numbers compare by value.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<(String, String, String)> {
    let here = || {
        let at = if at.is_empty() { "/" } else { at };
        Some((at.to_string(), a.to_string(), b.to_string()))
    };
    match (a, b) {
        (Value::String(s), _) if s == REDACTED => None,
        (Value::Number(x), Value::Number(y)) => (x.as_f64() != y.as_f64()).then(here).flatten(),
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let path = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, &path),
                    (p, q) => Some((
                        path,
                        p.map_or("(absent)".into(), Value::to_string),
                        q.map_or("(absent)".into(), Value::to_string),
                    )),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}/{i}"))),
        _ => (a != b).then(here).flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(status: u16, body: &str) -> String {
        json!({
            "time_ms": 1000, "method": "POST", "uri": "/a?b=1",
            "request": { "headers": [["content-type", "application/json"], ["connection", "x"], ["host", "h"]],
                         "body": BASE64.encode("{}"), "body_len": 2, "truncated": false },
            "primary": { "status": status, "error": null, "body": BASE64.encode(body), "truncated": false },
        })
        .to_string()
    }

    #[test]
    fn lines_parse_and_hop_by_hop_headers_are_dropped() {
        let recs = parse(&format!("{}\n\n{}\n", line(200, "ok"), line(201, "x"))).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].method, Method::POST);
        assert_eq!(recs[0].uri, "/a?b=1");
        assert_eq!(recs[0].headers.len(), 1, "{:?}", recs[0].headers);
        assert_eq!(recs[0].body, "{}");
        assert_eq!(recs[1].primary_status, Some(201));
        assert!(
            parse("{not json")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
    }

    #[test]
    fn json_differences_name_the_pointer_and_redacted_values_match_anything() {
        let rec = parse(&line(200, r#"{"a":1,"b":{"c":"x","secret":"[redacted]"}}"#)).unwrap();
        let rec = &rec[0];
        assert_eq!(
            differs(
                rec,
                200,
                &Bytes::from(r#"{"b":{"secret":"s","c":"x"},"a":1.0}"#)
            ),
            None
        );
        let d = differs(
            rec,
            200,
            &Bytes::from(r#"{"a":1,"b":{"c":"y","secret":"s"}}"#),
        )
        .unwrap();
        assert!(d.contains("/b/c") && d.contains("\"x\" -> \"y\""), "{d}");
        let d = differs(rec, 500, &Bytes::new()).unwrap();
        assert!(d.contains("status 200 -> 500"), "{d}");
        let rec = &parse(&line(200, "abc")).unwrap()[0];
        assert!(
            differs(rec, 200, &Bytes::from("abd"))
                .unwrap()
                .contains("byte 2")
        );
    }
}
