//! One exchange's record line: taken when the copy is sampled in (reference-counted clones
//! of the request), finished once the exchange is judged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Value, json};

use super::Recorder;
use crate::metrics::{CompareResult, SkipReason};
use crate::shadow::compare::BodySide;
use crate::shadow::queue::{PrimaryBodyWatch, PrimaryOutcome, ShadowJob};
use crate::shadow::record::Answer;
use crate::shadow::sample;

/// A copy sampled in for recording: what the line needs from the request, kept (as
/// reference-counted clones) until the exchange is done.
pub(crate) struct Taken {
    recorder: Arc<Recorder>,
    /// When the copy was taken off its queue (milliseconds since the Unix epoch).
    time_ms: u64,
    route: String,
    shadow: String,
    limit: usize,
    wait: Duration,
    template: String,
    method: Method,
    path_and_query: PathAndQuery,
    host: Option<HeaderValue>,
    request_id: HeaderValue,
    headers: HeaderMap,
    body: Vec<Bytes>,
    body_len: u64,
    primary: PrimaryOutcome,
    primary_body: Option<PrimaryBodyWatch>,
}

/// Decides whether `job` is recorded; if so, keeps what its line needs. Only a request's
/// first copy is (the others of an amplified request are load, never compared).
pub(crate) fn take(job: &ShadowJob) -> Option<Taken> {
    let recorder = job.spec.recorder.as_ref().filter(|_| job.copy == 1)?;
    match recorder.threshold {
        0 => return None,
        t if t >= sample::SCALE => {}
        t if sample::random_u64() % sample::SCALE >= t => return None,
        _ => {}
    }
    Some(Taken {
        recorder: recorder.clone(),
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        route: job.spec.route.clone(),
        shadow: job.spec.shadow.clone(),
        limit: job.spec.compare.max_body,
        wait: job.spec.timeout,
        template: job.path.template.clone(),
        method: job.method.clone(),
        path_and_query: job.path_and_query.clone(),
        host: job.host.clone(),
        request_id: job.request_id.clone(),
        headers: job.headers.clone(),
        body: job.body.clone(),
        body_len: job.body_len,
        primary: job.primary.clone(),
        primary_body: job.primary_body.clone(),
    })
}

impl Taken {
    /// Builds the line once the exchange is judged (waiting, off the primary path and
    /// after the copy's in-flight slot is released, for the primary's body) and hands it
    /// to the writer.
    pub(crate) async fn finish(
        self,
        answer: &Answer,
        result: CompareResult,
        skipped: Option<SkipReason>,
    ) {
        let p_body = match self.primary_body {
            Some(mut rx) => {
                match tokio::time::timeout(self.wait, rx.wait_for(Option::is_some)).await {
                    Ok(Ok(v)) => v.as_ref().map(|b| BodySide::clone(b)),
                    _ => None,
                }
            }
            None => None,
        };
        let rec = &self.recorder;
        let mut request_body = Vec::with_capacity(self.body_len as usize);
        for c in &self.body {
            request_body.extend_from_slice(c);
        }
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let mut primary = json!({
            "status": self.primary.status.map(|s| s.as_u16()),
            "error": self.primary.error,
            "headers": rec.headers_json(&self.primary.headers),
            "latency_ms": { "headers": ms(self.primary.to_headers) },
        });
        merge(&mut primary, rec.answer_body(p_body.as_ref(), self.limit));
        let mut shadow = json!({
            "outcome": format!("{:?}", answer.outcome),
            "status": answer.status.map(|s| s.as_u16()),
            "headers": rec.headers_json(&answer.headers),
            "latency_ms": { "headers": ms(answer.to_headers), "body": ms(answer.to_end) },
        });
        merge(
            &mut shadow,
            rec.answer_body(answer.body.as_ref(), self.limit),
        );
        let line = json!({
            "time_ms": self.time_ms,
            "request_id": String::from_utf8_lossy(self.request_id.as_bytes()),
            "route": self.route,
            "shadow": self.shadow,
            "template": self.template,
            "method": self.method.as_str(),
            "uri": self.path_and_query.as_str(),
            "host": self.host.as_ref().map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
            "request": {
                "headers": rec.headers_json(&self.headers),
                "body": rec.body_b64(&request_body),
                "body_len": self.body_len,
                "truncated": false,
            },
            "primary": primary,
            "shadow_answer": shadow,
            "result": result.as_str(),
            "skipped": skipped.map(|s| format!("{s:?}")),
        });
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        rec.send(bytes);
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}
