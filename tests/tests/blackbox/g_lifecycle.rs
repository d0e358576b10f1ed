//! G. Lifecycle: case G35 (graceful shutdown under load). G34 (reload) is elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use teeproxy_tests::process::{ProxyProcess, Signal};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;

const SLOW: usize = 20;

/// How one request of the background load ended.
#[derive(Debug, PartialEq, Eq)]
enum LoadResult {
    /// A complete 200 with the primary's body.
    Ok,
    /// The connection could not be made, or closed before any byte of an answer: the
    /// request was never taken on.
    NotTaken,
    /// Anything else: an error status, a partial answer.
    Broken(String),
}

/// Sends fast requests back to back on keep-alive connections (reconnecting when the
/// proxy closes one) until `stop`; returns how each ended.
async fn load(addr: std::net::SocketAddr, worker: usize, stop: Arc<AtomicBool>) -> Vec<LoadResult> {
    let mut results = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => conn = Some(s),
                Err(_) => {
                    results.push(LoadResult::NotTaken);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        let s = conn.as_mut().expect("connected");
        if s.write_all(format!("GET /g35/fast/{worker}/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .is_err()
        {
            conn = None;
            results.push(LoadResult::NotTaken);
            continue;
        }
        let out = read_response(s, Duration::from_secs(5)).await;
        let result = match parse_responses(&out).first() {
            Some(r) if has_whole_response(&out) => {
                if r.status == 200 && r.body_text() == PRIMARY_BODY {
                    if r.header("connection") == Some("close") {
                        conn = None;
                    }
                    LoadResult::Ok
                } else {
                    LoadResult::Broken(String::from_utf8_lossy(&out).into_owned())
                }
            }
            _ => {
                conn = None;
                if out.is_empty() {
                    LoadResult::NotTaken
                } else {
                    LoadResult::Broken(String::from_utf8_lossy(&out).into_owned())
                }
            }
        };
        results.push(result);
    }
    results
}

/// G35: SIGTERM with 20 slow requests in flight (the primary takes 1 s) and background
/// load: readiness turns 503, new connections are refused, every in-flight request
/// completes with 200 and `Connection: close`, the load sees only complete answers or
/// requests never taken on, and the process exits 0 within the drain deadline.
#[tokio::test]
async fn g35_sigterm_under_load_drains_in_flight_requests_and_exits_0() {
    let primary = FakeUpstream::builder()
        .name("primary")
        .delay_on("/g35/slow", Duration::from_secs(1))
        .start()
        .await;
    let shadow = FakeUpstream::builder().name("candidate").start().await;
    let yaml = format!(
        "{}drain_timeout: 5s\nshadow_drain: 1s\n",
        shadow_yaml(&primary.url(), &shadow.url(), "", "")
    );
    let mut proxy = ProxyProcess::start(&yaml).await;
    let addr = proxy.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..2)
        .map(|w| tokio::spawn(load(addr, w, stop.clone())))
        .collect();
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /g35/slow/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        slow.push(tokio::spawn(async move {
            read_all(&mut s, Duration::from_secs(8)).await
        }));
    }
    let slow_seen = || {
        primary
            .received()
            .iter()
            .filter(|r| r.uri.path().starts_with("/g35/slow"))
            .count()
    };
    assert_eventually!(
        slow_seen() == SLOW,
        "every slow request reached the primary"
    );
    assert_eventually!(
        primary.count() > SLOW + 10,
        "the background load is flowing: {}",
        primary.count()
    );

    let signalled = Instant::now();
    proxy.signal(Signal::Term);
    // Not ready while draining (admin stays up until the end of the drain).
    assert_eventually!(
        matches!(
            proxy.admin_get("/ready", Duration::from_secs(1)).await,
            Some((503, _))
        ),
        "/ready turns 503"
    );
    assert_eventually!(
        TcpStream::connect(addr).await.is_err(),
        "new connections are refused"
    );

    for (i, task) in slow.into_iter().enumerate() {
        let ex = task.await.unwrap();
        assert!(ex.closed, "slow {i}: closed after its answer");
        let r = ex.responses();
        assert_eq!(r.len(), 1, "slow {i}: {}", ex.text());
        assert_eq!(r[0].status, 200, "slow {i}");
        assert!(r[0].complete, "slow {i}");
        assert_eq!(r[0].body_text(), PRIMARY_BODY, "slow {i}");
        assert_eq!(r[0].header("connection"), Some("close"), "slow {i}");
    }
    let status = proxy.wait_exit(Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(
        status.is_some_and(|s| s.success()),
        "exit 0: {status:?}\n{}",
        proxy.stderr()
    );
    assert!(
        took < Duration::from_secs(5),
        "exited within the 5 s drain deadline: {took:?}"
    );
    assert!(proxy.stderr().contains("\"drained\""), "{}", proxy.stderr());

    let mut ok = 0;
    for l in loads {
        for r in l.await.unwrap() {
            match r {
                LoadResult::Ok => ok += 1,
                LoadResult::NotTaken => {}
                LoadResult::Broken(text) => panic!("a load request broke: {text:?}"),
            }
        }
    }
    assert!(ok > 0);
    eprintln!("g35: {ok} load requests answered; exit {took:?} after SIGTERM");
    // The shadow got copies only of requests the primary received, each once.
    let primary_uris: Vec<String> = primary
        .received()
        .iter()
        .map(|r| r.uri.to_string())
        .collect();
    let mut shadow_uris: Vec<String> = shadow
        .received()
        .iter()
        .map(|r| r.uri.to_string())
        .collect();
    let n = shadow_uris.len();
    shadow_uris.sort();
    shadow_uris.dedup();
    assert_eq!(shadow_uris.len(), n, "no copy twice");
    assert!(shadow_uris.iter().all(|u| primary_uris.contains(u)));
}
