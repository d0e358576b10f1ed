//! `loadgen drive`: sends HTTP load, open loop (a fixed rate, latency from each request's
//! due time) or closed loop (N connections as fast as they go), and reports throughput,
//! latency quantiles, statuses and errors by kind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::schedule::{due, latency_json, new_histogram, quantile_ms, record};

/// Open loop at a fixed rate, or closed loop, over a fixed number of connections.
///
/// Open loop works like wrk2: request `i` is due at `start + i / rate` and goes out on
/// connection `i mod connections` as soon as that connection is free; its latency counts
/// from the due time, so waiting for a busy connection is charged to the server.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Open { rate: f64, connections: usize },
    Closed { connections: usize },
}

/// What to send and how.
#[derive(Debug, Clone)]
pub struct DriveOptions {
    /// `http://host:port`.
    pub target: Uri,
    /// Paths with weights; chosen at random in proportion.
    pub paths: Vec<(String, u32)>,
    pub mode: Mode,
    pub duration: Duration,
    pub method: Method,
    pub body_size: usize,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// HTTP/2 prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    /// Per-request limit, to the end of the response body.
    pub timeout: Duration,
    /// A progress line per second on stderr.
    pub progress: bool,
}

/// One finished request.
struct Outcome {
    scheduled: Instant,
    done: Instant,
    result: Result<u16, &'static str>,
}

/// The run's figures.
#[derive(Debug)]
pub struct Report {
    pub sent: u64,
    pub completed: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<String, u64>,
    pub errors: BTreeMap<&'static str, u64>,
}

impl Report {
    /// Answers (any status) per second.
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latency, q)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "sent": self.sent,
            "completed": self.completed,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput_rps": (self.throughput() * 10.0).round() / 10.0,
            "latency_ms": latency_json(&self.latency),
            "statuses": self.statuses,
            "errors": self.errors,
        })
    }

    pub fn summary(&self) -> String {
        let errors: u64 = self.errors.values().sum();
        format!(
            "{} requests in {:.1}s: {:.0} req/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; statuses {:?}; errors {} {:?}",
            self.completed,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.latency.max() as f64 / 1000.0,
            self.statuses,
            errors,
            self.errors
        )
    }
}

type LoadClient = Client<HttpConnector, Full<Bytes>>;

fn client(http2: bool, connections: usize) -> LoadClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(connections.max(64))
        .http2_only(http2)
        .build(http)
}

/// The error kind of a failed exchange.
pub fn classify(e: &(dyn std::error::Error + 'static)) -> &'static str {
    if let Some(le) = e.downcast_ref::<hyper_util::client::legacy::Error>()
        && le.is_connect()
    {
        return "connect";
    }
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() {
                return "protocol";
            }
            if h.is_timeout() {
                return "timeout";
            }
            if h.is_incomplete_message() {
                return "closed";
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => "reset",
                std::io::ErrorKind::ConnectionRefused => "connect",
                std::io::ErrorKind::TimedOut => "timeout",
                _ => "io",
            };
        }
        cur = err.source();
    }
    "other"
}

async fn one(
    client: &LoadClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<u16, &'static str> {
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| classify(&e))?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.map_err(|_| "body")?;
        Ok(status)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err("timeout"))
}

struct Requests {
    opts: DriveOptions,
    body: Bytes,
    total_weight: u64,
    rng: u64,
}

impl Requests {
    fn new(opts: &DriveOptions) -> Self {
        Requests {
            body: Bytes::from(vec![b'x'; opts.body_size]),
            total_weight: opts
                .paths
                .iter()
                .map(|(_, w)| u64::from(*w))
                .sum::<u64>()
                .max(1),
            rng: 0x9e37_79b9_7f4a_7c15,
            opts: opts.clone(),
        }
    }

    fn next(&mut self) -> Request<Full<Bytes>> {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mut pick = self.rng % self.total_weight;
        let path = self
            .opts
            .paths
            .iter()
            .find(|(_, w)| {
                if pick < u64::from(*w) {
                    true
                } else {
                    pick -= u64::from(*w);
                    false
                }
            })
            .map_or("/", |(p, _)| p.as_str());
        let mut b = Request::builder()
            .method(self.opts.method.clone())
            .uri(format!(
                "{}{path}",
                self.opts.target.to_string().trim_end_matches('/')
            ));
        for (k, v) in &self.opts.headers {
            b = b.header(k, v);
        }
        b.body(Full::new(self.body.clone())).expect("valid request")
    }
}

/// Runs the load and returns the report.
pub async fn drive(opts: DriveOptions) -> Report {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let start = Instant::now();
    let end = start + opts.duration;
    let progress = opts.progress;
    let collector = tokio::spawn(async move {
        let mut latency = new_histogram();
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut completed = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0u64;
        loop {
            tokio::select! {
                o = rx.recv() => match o {
                    Some(o) => {
                        match o.result {
                            Ok(status) => {
                                completed += 1;
                                record(&mut latency, o.scheduled, o.done);
                                *statuses.entry(format!("{}xx", status / 100)).or_default() += 1;
                            }
                            Err(kind) => *errors.entry(kind).or_default() += 1,
                        }
                    }
                    None => break,
                },
                _ = tick.tick(), if progress => {
                    let p50 = if latency.is_empty() { 0.0 } else { latency.value_at_quantile(0.5) as f64 / 1000.0 };
                    eprintln!(
                        "t={:>3.0}s {:>8} req/s  p50 {:.2} ms  done {}  errors {}",
                        start.elapsed().as_secs_f64(), completed - last, p50, completed, errors.values().sum::<u64>()
                    );
                    last = completed;
                }
            }
        }
        (latency, statuses, errors, completed)
    });

    let (connections, rate) = match opts.mode {
        Mode::Open { rate, connections } => (connections.max(1), Some(rate)),
        Mode::Closed { connections } => (connections.max(1), None),
    };
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..connections {
        // One client per worker: one connection each for HTTP/1.1.
        let client = client(opts.http2, 1);
        let mut requests = Requests::new(&opts);
        requests.rng ^= (w as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
        let (tx, timeout) = (tx.clone(), opts.timeout);
        workers.spawn(async move {
            let mut n = 0u64;
            loop {
                let scheduled = match rate {
                    Some(rate) => {
                        let at = due(start, rate, n * connections as u64 + w as u64);
                        if at >= end {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None if Instant::now() >= end => break,
                    None => Instant::now(),
                };
                let result = one(&client, requests.next(), timeout).await;
                n += 1;
                let _ = tx.send(Outcome {
                    scheduled,
                    done: Instant::now(),
                    result,
                });
            }
            n
        });
    }
    let mut sent = 0u64;
    while let Some(n) = workers.join_next().await {
        sent += n.unwrap_or(0);
    }
    drop(tx);
    // The measurement window: requests still in flight at its end are waited for and
    // counted, but the time spent waiting for them (up to --timeout against a black
    // hole) would understate the throughput.
    let elapsed = start
        .elapsed()
        .min(opts.duration.max(Duration::from_millis(1)));
    let (latency, statuses, errors, completed) = collector.await.expect("collector");
    Report {
        sent,
        completed,
        elapsed,
        latency,
        statuses,
        errors,
    }
}
