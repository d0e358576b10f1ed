//! `loadgen slowloris`: holds many connections open while sending almost nothing, to
//! check that a server closes them at its request-head time limit.
//!
//! Each of `connections` slots connects, then either trickles an endless HTTP/1.1 request
//! head one byte per `interval` (`trickle`), or sends nothing at all (`silent`); `mixed`
//! alternates the two over the slots. When the server closes the connection (end of
//! stream, reset, or a failed write) the slot counts it, with the connection's lifetime,
//! and connects again at once, so the pressure stays. Every slot stops at `duration`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What each connection sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// An endless request head, one byte per interval.
    Trickle,
    /// Nothing: connect and wait.
    Silent,
    /// Even slots trickle, odd slots stay silent.
    Mixed,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub target: SocketAddr,
    pub connections: usize,
    pub interval: Duration,
    pub duration: Duration,
    /// Slot `i` makes its first connection at `i * ramp / connections`.
    pub ramp: Duration,
    pub mode: Mode,
}

/// What one slot saw.
#[derive(Default, Debug)]
struct SlotStats {
    opened: u64,
    connect_errors: u64,
    closed_by_server: u64,
    resets: u64,
    answered: u64,
    open_at_end: u64,
    bytes_sent: u64,
    lifetimes_ms: Vec<u64>,
}

#[derive(Debug)]
pub struct Report {
    pub connections: usize,
    pub mode: Mode,
    pub elapsed: Duration,
    /// Connections established.
    pub opened: u64,
    pub connect_errors: u64,
    /// Connections the server ended (end of stream or reset, seen by a read or a write).
    pub closed_by_server: u64,
    /// Of those, ended by a reset (or a failed write) rather than a clean end of stream.
    pub resets: u64,
    /// Of those, connections on which the server sent something before closing (an
    /// error response such as 408).
    pub answered: u64,
    /// Connections still open when `duration` ended (closed by this client).
    pub open_at_end: u64,
    pub bytes_sent: u64,
    /// Lifetimes of the server-closed connections, from connect to close, sorted.
    pub lifetimes_ms: Vec<u64>,
}

impl Report {
    fn lifetime(&self, q: f64) -> Option<u64> {
        if self.lifetimes_ms.is_empty() {
            return None;
        }
        let i = ((self.lifetimes_ms.len() - 1) as f64 * q).round() as usize;
        Some(self.lifetimes_ms[i])
    }

    pub fn to_json(&self) -> Value {
        json!({
            "connections": self.connections,
            "mode": format!("{:?}", self.mode).to_lowercase(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "opened": self.opened,
            "connect_errors": self.connect_errors,
            "closed_by_server": self.closed_by_server,
            "resets": self.resets,
            "answered": self.answered,
            "open_at_end": self.open_at_end,
            "bytes_sent": self.bytes_sent,
            "lifetime_ms": {
                "min": self.lifetime(0.0),
                "p50": self.lifetime(0.5),
                "p99": self.lifetime(0.99),
                "max": self.lifetime(1.0),
            },
        })
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "slowloris ({:?}, {} connections, {:.1}s): {} opened, {} closed by the server ({} by reset, {} after an answer), {} still open at the end, {} connect errors, {} bytes sent",
            self.mode,
            self.connections,
            self.elapsed.as_secs_f64(),
            self.opened,
            self.closed_by_server,
            self.resets,
            self.answered,
            self.open_at_end,
            self.connect_errors,
            self.bytes_sent
        );
        if let (Some(min), Some(p50), Some(max)) =
            (self.lifetime(0.0), self.lifetime(0.5), self.lifetime(1.0))
        {
            let _ = write!(
                s,
                "; lifetime of closed connections min {min} ms, p50 {p50} ms, max {max} ms"
            );
        }
        s
    }
}

/// The byte a trickling connection sends at position `i`: a request line and Host, then
/// header fields without end (`X-a: b` over and over), so the head never completes.
fn head_byte(i: u64) -> u8 {
    const START: &[u8] = b"GET /slowloris HTTP/1.1\r\nHost: slowloris\r\n";
    const FILL: &[u8] = b"X-a: b\r\n";
    match usize::try_from(i) {
        Ok(i) if i < START.len() => START[i],
        _ => FILL[((i - START.len() as u64) % FILL.len() as u64) as usize],
    }
}

/// Runs every slot until `duration` and adds up what they saw.
pub async fn run(opts: Options) -> Report {
    let start = Instant::now();
    let deadline = start + opts.duration;
    let n = opts.connections.max(1);
    let slots: Vec<_> = (0..n)
        .map(|i| {
            let trickle = match opts.mode {
                Mode::Trickle => true,
                Mode::Silent => false,
                Mode::Mixed => i % 2 == 0,
            };
            let first = start + opts.ramp.mul_f64(i as f64 / n as f64);
            tokio::spawn(slot(
                opts.target,
                trickle,
                opts.interval,
                first.min(deadline),
                deadline,
            ))
        })
        .collect();
    let mut report = Report {
        connections: n,
        mode: opts.mode,
        elapsed: Duration::ZERO,
        opened: 0,
        connect_errors: 0,
        closed_by_server: 0,
        resets: 0,
        answered: 0,
        open_at_end: 0,
        bytes_sent: 0,
        lifetimes_ms: Vec::new(),
    };
    for s in slots {
        let Ok(s) = s.await else { continue };
        report.opened += s.opened;
        report.connect_errors += s.connect_errors;
        report.closed_by_server += s.closed_by_server;
        report.resets += s.resets;
        report.answered += s.answered;
        report.open_at_end += s.open_at_end;
        report.bytes_sent += s.bytes_sent;
        report.lifetimes_ms.extend(s.lifetimes_ms);
    }
    report.lifetimes_ms.sort_unstable();
    report.elapsed = start.elapsed();
    report
}

/// How one connection ended.
enum End {
    /// The server closed it cleanly (`answered`: after sending something).
    Closed { answered: bool },
    /// Reset, or a write failed.
    Reset { answered: bool },
    /// The run's deadline came first.
    Deadline,
}

async fn slot(
    target: SocketAddr,
    trickle: bool,
    interval: Duration,
    first: Instant,
    deadline: Instant,
) -> SlotStats {
    let mut stats = SlotStats::default();
    tokio::time::sleep_until(first).await;
    while Instant::now() < deadline {
        let stream = tokio::select! {
            r = TcpStream::connect(target) => r,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(_) => {
                stats.connect_errors += 1;
                // Do not spin on a refused port.
                tokio::select! {
                    _ = tokio::time::sleep(interval.max(Duration::from_millis(10))) => continue,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        stats.opened += 1;
        let opened = Instant::now();
        let end = hold(
            &mut stream,
            trickle,
            interval,
            deadline,
            &mut stats.bytes_sent,
        )
        .await;
        let (answered, reset) = match end {
            End::Deadline => {
                stats.open_at_end += 1;
                break;
            }
            End::Closed { answered } => (answered, false),
            End::Reset { answered } => (answered, true),
        };
        stats.closed_by_server += 1;
        stats.resets += u64::from(reset);
        stats.answered += u64::from(answered);
        stats.lifetimes_ms.push(opened.elapsed().as_millis() as u64);
    }
    stats
}

/// Keeps one connection open, trickling or silent, until the server ends it or the
/// deadline comes.
async fn hold(
    stream: &mut TcpStream,
    trickle: bool,
    interval: Duration,
    deadline: Instant,
    bytes_sent: &mut u64,
) -> End {
    let (mut rd, mut wr) = stream.split();
    let mut buf = [0u8; 4096];
    let mut answered = false;
    let mut pos: u64 = 0;
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => return End::Closed { answered },
                Ok(_) => answered = true,
                Err(_) => return End::Reset { answered },
            },
            _ = tick.tick(), if trickle => {
                if wr.write_all(&[head_byte(pos)]).await.is_err() {
                    return End::Reset { answered };
                }
                pos += 1;
                *bytes_sent += 1;
            }
            _ = tokio::time::sleep_until(deadline) => return End::Deadline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::head_byte;

    #[test]
    fn the_head_never_ends() {
        let head: Vec<u8> = (0..200).map(head_byte).collect();
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("GET /slowloris HTTP/1.1\r\nHost: slowloris\r\nX-a: b\r\n"));
        assert!(!text.contains("\r\n\r\n"));
    }
}
