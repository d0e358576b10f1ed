//! Upstreams that misbehave on purpose, for benchmarks and tests: they read each request
//! head, count it, then fail in one way.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How a faulty upstream fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Accept, read, never answer.
    Blackhole,
    /// Read the request, then reset the connection (RST).
    Reset,
    /// Answer with bytes that are not HTTP, then close.
    Garbage,
    /// Announce a 1000-byte body, send 100 bytes, close.
    CloseMidBody,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "blackhole" => Ok(Fault::Blackhole),
            "reset" => Ok(Fault::Reset),
            "garbage" => Ok(Fault::Garbage),
            "close-mid-body" => Ok(Fault::CloseMidBody),
            other => Err(format!(
                "unknown fault {other:?}: blackhole, reset, garbage or close-mid-body"
            )),
        }
    }
}

/// Serves `fault` on every connection until `stop` turns true; counts request heads read.
pub async fn serve_faulty(
    listener: TcpListener,
    fault: Fault,
    received: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
) {
    super::serve_each(listener, stop, move |stream| {
        handle(stream, fault, received.clone())
    })
    .await;
}

/// Reads until the end of a request head; false when the peer closed first.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    return true;
                }
                if seen.len() > 1 << 20 {
                    return false;
                }
            }
        }
    }
}

async fn handle(mut s: TcpStream, fault: Fault, received: Arc<AtomicU64>) {
    if fault == Fault::Blackhole {
        // Count each head; never answer; keep draining so the peer is never blocked.
        let mut buf = [0u8; 16 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    let heads = tail.windows(4).filter(|w| *w == b"\r\n\r\n").count() as u64;
                    received.fetch_add(heads, Ordering::Relaxed);
                    let keep = tail.len().min(3);
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    if !read_head(&mut s).await {
        return;
    }
    received.fetch_add(1, Ordering::Relaxed);
    match fault {
        Fault::Blackhole => {}
        Fault::Reset => {
            let _ = s.set_zero_linger();
        }
        Fault::Garbage => {
            let _ = s.write_all(b"\x16\x03\x01 garbage, not HTTP\r\n\r\n").await;
        }
        Fault::CloseMidBody => {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
                .await;
            let _ = s.write_all(&[b'x'; 100]).await;
            let _ = s.flush().await;
        }
    }
}

/// Binds 127.0.0.1:0 and serves `fault` until the returned sender says stop.
pub async fn spawn_faulty(
    fault: Fault,
) -> std::io::Result<(SocketAddr, Arc<AtomicU64>, watch::Sender<bool>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve_faulty(listener, fault, received.clone(), rx));
    Ok((addr, received, tx))
}
