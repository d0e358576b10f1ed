//! `loadgen slowloris` against a listener that closes every connection 300 ms after
//! accepting it: the closes are counted with their lifetimes, slots reconnect, the
//! trickled bytes arrive, and the run stops by itself at `--duration`.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[test]
fn counts_server_closes_and_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    {
        let (accepted, received) = (accepted.clone(), received.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                accepted.fetch_add(1, Ordering::Relaxed);
                let received = received.clone();
                std::thread::spawn(move || {
                    let close_at = Instant::now() + Duration::from_millis(300);
                    let mut buf = [0u8; 256];
                    while let Some(left) = close_at.checked_duration_since(Instant::now()) {
                        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                            break;
                        }
                        match stream.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                received.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(_) => {}
                        }
                    }
                });
            }
        });
    }

    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["slowloris", "--target", &addr.to_string()])
        .args([
            "--connections",
            "4",
            "--interval",
            "20ms",
            "--duration",
            "1500ms",
        ])
        .args(["--ramp", "0ms", "--mode", "mixed", "--json"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(
        took < Duration::from_secs(5),
        "it stops by itself: {took:?}"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let closed = r["closed_by_server"].as_u64().unwrap();
    let opened = r["opened"].as_u64().unwrap();
    // Each of the 4 slots lives about 300 ms per connection for 1.5 s.
    assert!(closed >= 8, "{r}");
    assert_eq!(opened, closed + r["open_at_end"].as_u64().unwrap(), "{r}");
    // The listener thread may still be accepting the last connection.
    let wait = Instant::now() + Duration::from_secs(2);
    while accepted.load(Ordering::Relaxed) < opened && Instant::now() < wait {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(opened, accepted.load(Ordering::Relaxed), "{r}");
    assert_eq!(r["connect_errors"], 0, "{r}");
    let min = r["lifetime_ms"]["min"].as_u64().unwrap();
    let max = r["lifetime_ms"]["max"].as_u64().unwrap();
    assert!(
        min >= 250 && max < 1000,
        "closed at the server's 300 ms: {r}"
    );
    // The trickling half sent bytes (one per 20 ms), and the server saw them.
    let sent = r["bytes_sent"].as_u64().unwrap();
    assert!(sent >= 20, "{r}");
    let got = received.load(Ordering::Relaxed);
    assert!(got > 0 && got <= sent, "server got {got} of {sent}: {r}");
}
