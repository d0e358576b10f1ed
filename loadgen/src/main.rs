//! `loadgen`: `drive` sends load and reports; `upstream` serves the demo application, or
//! one of its fault modes, as a fake upstream; `slowloris` holds connections open while
//! sending (almost) nothing; `replay` sends a teeproxy record file's requests again.

mod slowloris;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use http::{HeaderName, HeaderValue, Method, Uri};
use teeproxy::config::Dur;
use teeproxy::demo::faults::{Fault, serve_faulty};
use teeproxy::demo::{DemoUpstream, UpstreamStats, serve_upstream};
use teeproxy_loadgen::drive::{DriveOptions, Mode, drive};
use teeproxy_loadgen::replay::{Pace, ReplayOptions, replay};

#[derive(Parser, Debug)]
#[command(name = "loadgen", about = "Load tools for teeproxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send load to a URL and report throughput, latency and errors.
    Drive {
        /// Target, `http://host:port`.
        #[arg(long)]
        url: Uri,
        /// Open loop: requests per second over all connections (latency counted from each
        /// request's due time). Without it: closed loop, back to back.
        #[arg(long)]
        rate: Option<f64>,
        /// Connections (HTTP/1.1) or concurrent streams (h2c).
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value = "10s")]
        duration: Dur,
        #[arg(long, default_value = "GET")]
        method: Method,
        /// Request body bytes.
        #[arg(long, default_value_t = 0)]
        body_size: usize,
        /// `Name: value`, repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// `PATH[:WEIGHT]`, repeatable (default `/`).
        #[arg(long = "path")]
        paths: Vec<String>,
        /// HTTP/2 prior knowledge (h2c).
        #[arg(long)]
        http2: bool,
        #[arg(long, default_value = "10s")]
        timeout: Dur,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
    },
    /// Send the requests of a teeproxy record file again, open loop; with --compare, exit
    /// status 1 when an answer differs from the recorded primary answer.
    Replay {
        /// The record file (JSON lines, as `record:` writes them).
        file: std::path::PathBuf,
        /// Target, `http://host:port`.
        #[arg(long)]
        url: Uri,
        /// A fixed rate, requests per second (instead of the recorded pace).
        #[arg(long, conflicts_with = "speed")]
        rate: Option<f64>,
        /// The recorded inter-arrival times scaled: `2x` is twice as fast (default `1x`).
        #[arg(long)]
        speed: Option<String>,
        /// Compare each answer (status, body) with the recorded primary answer.
        #[arg(long)]
        compare: bool,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Stop sending after this long (default: the whole file once).
        #[arg(long)]
        duration: Option<Dur>,
        #[arg(long, default_value = "10s")]
        timeout: Dur,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Serve the demo application (or a fault) as a fake upstream.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Name sent back in `x-upstream`.
        #[arg(long, default_value = "upstream")]
        name: String,
        /// Delay before every answer.
        #[arg(long, default_value = "0ms")]
        latency: Dur,
        /// A random extra delay, uniform between 0 and this.
        #[arg(long, default_value = "0ms")]
        jitter: Dur,
        /// Answer every request with this status.
        #[arg(long)]
        status: Option<u16>,
        /// Answer every request with a body of this many bytes.
        #[arg(long)]
        body_size: Option<usize>,
        /// Fail instead: blackhole, reset, garbage, close-mid-body.
        #[arg(long)]
        fault: Option<Fault>,
    },
    /// Hold connections open sending an endless request head one byte at a time (or
    /// nothing), reconnecting whenever the server closes one; stops at --duration.
    Slowloris {
        /// Server address, `host:port`.
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Time between two bytes of a trickling connection.
        #[arg(long, default_value = "200ms")]
        interval: Dur,
        #[arg(long, default_value = "60s")]
        duration: Dur,
        /// First connections spread over this long.
        #[arg(long, default_value = "1s")]
        ramp: Dur,
        #[arg(long, value_enum, default_value_t = slowloris::Mode::Mixed)]
        mode: slowloris::Mode,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

fn parse_paths(paths: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    if paths.is_empty() {
        return Ok(vec![("/".to_string(), 1)]);
    }
    paths
        .iter()
        .map(|p| match p.rsplit_once(':') {
            Some((path, w)) if w.bytes().all(|b| b.is_ascii_digit()) && !w.is_empty() => {
                Ok((path.to_string(), w.parse().context("weight")?))
            }
            _ => Ok((p.clone(), 1)),
        })
        .collect()
}

fn parse_headers(headers: &[String]) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
    headers
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("header {h:?}: expected `Name: value`"))?;
            Ok((
                HeaderName::from_bytes(k.trim().as_bytes())?,
                HeaderValue::from_str(v.trim())?,
            ))
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Drive {
            url,
            rate,
            connections,
            duration,
            method,
            body_size,
            headers,
            paths,
            http2,
            timeout,
            json,
            quiet,
        } => {
            if url.scheme_str() != Some("http") || url.authority().is_none() {
                bail!("--url must be http://host:port");
            }
            let connections = connections.max(1);
            let mode = match rate {
                Some(r) if r > 0.0 => Mode::Open {
                    rate: r,
                    connections,
                },
                Some(_) => bail!("--rate must be positive"),
                None => Mode::Closed { connections },
            };
            let report = drive(DriveOptions {
                target: url,
                paths: parse_paths(&paths)?,
                mode,
                duration: duration.get(),
                method,
                body_size,
                headers: parse_headers(&headers)?,
                http2,
                timeout: timeout.get(),
                progress: !quiet,
            })
            .await;
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.summary());
            }
            Ok(())
        }
        Command::Replay {
            file,
            url,
            rate,
            speed,
            compare,
            connections,
            duration,
            timeout,
            json,
        } => {
            if url.scheme_str() != Some("http") || url.authority().is_none() {
                bail!("--url must be http://host:port");
            }
            let pace = match (rate, speed) {
                (Some(r), _) if r > 0.0 => Pace::Rate(r),
                (Some(_), _) => bail!("--rate must be positive"),
                (None, Some(s)) => {
                    let x: f64 = s
                        .trim_end_matches(['x', 'X'])
                        .parse()
                        .with_context(|| format!("--speed {s:?}: expected a factor like 2x"))?;
                    if x <= 0.0 || !x.is_finite() {
                        bail!("--speed must be positive");
                    }
                    Pace::Speed(x)
                }
                (None, None) => Pace::Speed(1.0),
            };
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let records = teeproxy_loadgen::replay::parse(&text)
                .with_context(|| format!("{}", file.display()))?;
            let report = replay(
                records,
                ReplayOptions {
                    target: url,
                    pace,
                    connections: connections.max(1),
                    duration: duration.map(|d| d.get()),
                    compare,
                    timeout: timeout.get(),
                },
            )
            .await;
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.summary());
            }
            if compare && report.differences > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Upstream {
            listen,
            name,
            latency,
            jitter,
            status,
            body_size,
            fault,
        } => {
            let status = status
                .map(http::StatusCode::from_u16)
                .transpose()
                .context("--status")?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let served = Arc::new(AtomicU64::new(0));
            eprintln!(
                "loadgen upstream {name:?} on http://{} ({})",
                listener.local_addr()?,
                fault.map_or_else(|| format!("latency {latency}"), |f| format!("fault {f:?}"))
            );
            let server = match fault {
                Some(f) => tokio::spawn(serve_faulty(listener, f, served.clone(), stop_rx)),
                None => {
                    let stats = Arc::new(UpstreamStats::default());
                    let s = stats.clone();
                    let served = served.clone();
                    tokio::spawn(async move {
                        serve_upstream(
                            listener,
                            DemoUpstream {
                                name,
                                latency: latency.get(),
                                jitter: jitter.get(),
                                status,
                                body: body_size.map(|n| bytes::Bytes::from(vec![b'x'; n])),
                                flawed: false,
                            },
                            s,
                            stop_rx,
                        )
                        .await;
                        served.store(stats.requests.load(Ordering::Relaxed), Ordering::Relaxed);
                    })
                }
            };
            shutdown().await;
            let _ = stop_tx.send(true);
            let _ = server.await;
            eprintln!("served {}", served.load(Ordering::Relaxed));
            Ok(())
        }
        Command::Slowloris {
            target,
            connections,
            interval,
            duration,
            ramp,
            mode,
            json,
        } => {
            let report = slowloris::run(slowloris::Options {
                target,
                connections,
                interval: interval.get(),
                duration: duration.get(),
                ramp: ramp.get(),
                mode,
            })
            .await;
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.summary());
            }
            Ok(())
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
