//! D. Slow and greedy clients: cases D21, D22, D24, D25 (D23, the slow reader, is
//! elsewhere).

use std::time::{Duration, Instant};

use teeproxy_tests::process::{ProxyProcess, http_get};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;

const HEAD_TIMEOUTS: &str =
    "teeproxy_connections_closed_total{listener=\"public\",reason=\"head_timeout\"}";

/// Waits for the proxy to close `s`; returns how long that took from `since`.
async fn closed_after(s: &mut TcpStream, since: Instant, what: &str) -> Duration {
    let ex = read_all(s, Duration::from_secs(6)).await;
    assert!(ex.closed, "{what}: not closed within 6 s");
    since.elapsed()
}

/// D21: with `request_head_timeout: 1s`, a silent connection, a slowloris head (one byte
/// every 200 ms) and a head that stops half-way are all closed at about 1 s, counted as
/// `head_timeout`; nothing is forwarded.
#[tokio::test]
async fn d21_slow_and_silent_heads_are_closed_at_the_head_timeout() {
    let mut rig = Rig::start("limits: { request_head_timeout: 1s }\n").await;
    let addr = rig.addr();
    let silent = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        let ex = read_all(&mut s, Duration::from_secs(6)).await;
        assert!(ex.closed, "silent: not closed within 6 s");
        assert!(ex.bytes.is_empty(), "silent: answered {:?}", ex.text());
        t.elapsed()
    };
    let half = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        s.write_all(b"GET /d21/half HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        closed_after(&mut s, t, "half a head").await
    };
    let slowloris = async {
        let s = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        let (mut rd, mut wr) = s.into_split();
        let trickle = async move {
            for b in b"GET /d21/slowloris HTTP/1.1\r\nHost: a\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            wr
        };
        let wait_close = async {
            let mut buf = [0u8; 1024];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
            loop {
                match tokio::time::timeout_at(
                    deadline,
                    tokio::io::AsyncReadExt::read(&mut rd, &mut buf),
                )
                .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break Some(t.elapsed()),
                    Ok(Ok(_)) => {}
                    Err(_) => break None,
                }
            }
        };
        let (took, _wr) = tokio::join!(wait_close, trickle);
        took.expect("slowloris: not closed within 6 s")
    };
    let (silent, half, slowloris) = tokio::join!(silent, half, slowloris);
    for (what, took) in [("silent", silent), ("half", half), ("slowloris", slowloris)] {
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "{what} closed after {took:?}, want about 1 s"
        );
    }
    assert_eventually!(rig.proxy.metric(HEAD_TIMEOUTS).await == 3.0);
    rig.settle().await;
    assert_eq!((rig.primary.count(), rig.shadow.count()), (0, 0));
    rig.assert_healthy().await;
}

/// D22: an upload that stalls longer than `body_timeout` gets 408 and a close; the
/// primary's request is aborted, nothing is mirrored. An upload that trickles with
/// gaps shorter than the limit is not cut off.
#[tokio::test]
async fn d22_stalled_upload_is_408_aborted_and_not_mirrored() {
    let mut rig = Rig::start("limits: { body_timeout: 500ms }\n").await;
    let mut s = TcpStream::connect(rig.addr()).await.unwrap();
    s.write_all(b"POST /d22/stall HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let t = Instant::now();
    let ex = read_all(&mut s, Duration::from_secs(5)).await;
    let took = t.elapsed();
    assert_eq!(ex.status(), 408, "{}", ex.text());
    assert!(ex.closed, "closed after the 408");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let r = &ex.responses()[0];
    assert_eq!(r.header("connection"), Some("close"), "{}", ex.text());
    assert_eventually!(dropped(&rig.metrics().await, "all", "candidate", "body_incomplete") == 1.0);
    rig.settle().await;
    assert!(
        rig.primary.received().iter().all(|r| !r.complete),
        "the primary never saw a complete body"
    );
    assert_eq!(rig.shadow.count(), 0, "nothing mirrored");

    // Chunks every 150 ms for 1.5 s: never 500 ms without a byte, so it completes.
    let mut s = TcpStream::connect(rig.addr()).await.unwrap();
    s.write_all(b"POST /d22/trickle HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"2\r\nab\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let ex = read_all(&mut s, Duration::from_secs(5)).await;
    assert_eq!(ex.status(), 200, "{}", ex.text());
    rig.settle().await;
    let body = |u: &FakeUpstream| {
        u.received()
            .into_iter()
            .find(|r| r.uri == "/d22/trickle")
            .map(|r| r.body)
    };
    assert_eq!(body(&rig.primary).as_deref(), Some(&b"ab".repeat(10)[..]));
    assert_eq!(body(&rig.shadow).as_deref(), Some(&b"ab".repeat(10)[..]));
    rig.assert_healthy().await;
}

/// Opens up to `n` connections that each send half a request head. A connect that
/// does not complete within a second means the listen backlog is full (the proxy binds
/// with the standard backlog of 128; what it has not accepted waits there, and the
/// kernel drops further SYNs): then, if `exhausted()` says the proxy cannot accept any
/// more, stop; otherwise it was only slow, so keep going (up to 30 s in all).
async fn hold_half_heads(
    addr: std::net::SocketAddr,
    n: usize,
    exhausted: impl Fn() -> bool,
) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(30);
    while held.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} connections in 30 s",
            held.len()
        );
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(s) => {
                let mut s = s.expect("connect");
                let _ = s.write_all(b"GET /d24/held HTTP/1.1\r\nHost: a\r\n").await;
                held.push(s);
            }
            Err(_) if exhausted() => break,
            Err(_) => {}
        }
    }
    held
}

/// D24: under `ulimit -n 256` with `max_connections: 1000`, 400 clients exhaust the
/// descriptors: accept fails with EMFILE, is logged and counted, backs off (no spinning),
/// the process survives, and once the clients leave it serves again (admin included).
#[tokio::test]
async fn d24_fd_exhaustion_backs_off_survives_and_recovers() {
    let up = FakeUpstream::start().await;
    let yaml = format!(
        "{}limits: {{ max_connections: 1000, request_head_timeout: 60s }}\n",
        simple_yaml(&[up.url()], "")
    );
    let mut proxy = ProxyProcess::builder(&yaml).nofile(256).start().await;
    let idle = usage_or_skip!(proxy);
    assert_eq!(proxy.fd_limit(), Some(256), "runs under ulimit -n 256");
    let (fds_idle, cpu_before) = (idle.open_fds, idle.cpu_ticks);

    let held = hold_half_heads(proxy.addr(), 400, || proxy.stderr().contains("os error 24")).await;
    assert!(
        held.len() > 300,
        "{} connections: more than the 256 descriptors",
        held.len()
    );
    assert_eventually!(
        proxy.stderr().contains("accept failed") && proxy.stderr().contains("os error 24"),
        "EMFILE is logged; stderr:\n{}",
        proxy.stderr()
    );
    let exhausted_fds = proxy.usage_now().open_fds;
    assert!(exhausted_fds >= 240, "descriptors in use: {exhausted_fds}");

    // A second of exhaustion: alive, retrying with a back-off, not spinning.
    let window = Instant::now();
    let ticks_at = proxy.usage_now().cpu_ticks;
    let admin_during = proxy.admin_get("/live", Duration::from_secs(1)).await;
    while window.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.assert_alive();
    let cpu_during = proxy.usage_now().cpu_ticks - ticks_at;
    let accept_failures = proxy.stderr().matches("accept failed").count();
    eprintln!(
        "d24: {} client connections; fds idle {fds_idle}, exhausted {exhausted_fds}; cpu ticks in the 1 s of \
         exhaustion {cpu_during} (startup to then: {}); accept-failed log lines {accept_failures}; \
         admin /live while exhausted: {admin_during:?}",
        held.len(),
        ticks_at - cpu_before
    );
    assert!(
        cpu_during < 50,
        "the accept loop must back off, not spin: {cpu_during} ticks in 1 s"
    );
    assert!(
        accept_failures < 60,
        "accept retried with a back-off: {accept_failures} failures logged"
    );
    assert_eq!(up.count(), 0, "no half head was forwarded");

    // The clients leave: admin and the listener recover.
    drop(held);
    let t = Instant::now();
    assert_eventually!(proxy.live().await, "admin answers again");
    assert_eventually!(
        http_get(proxy.addr(), "/d24/after", Duration::from_secs(2)).await
            == Some((200, PRIMARY_BODY.to_string())),
        "a normal request is served again"
    );
    eprintln!("d24: recovered {:?} after the clients left", t.elapsed());
    let m = proxy.metrics().await;
    assert!(
        metric_value(&m, "teeproxy_accept_errors_total{listener=\"public\"}") > 0.0,
        "accept errors counted:\n{m}"
    );
    assert_eventually!(
        proxy
            .metric("teeproxy_open_connections{listener=\"public\"}")
            .await
            == 0.0
    );
    assert_eventually!(proxy.usage_now().open_fds <= fds_idle + 4);
    assert_eq!(up.received().len(), 1);
    assert_eq!(up.received()[0].uri, "/d24/after");
    assert_serves(&mut proxy, "/d24/last").await;
}

/// D24, the cap: with `max_connections: 20` (under `ulimit -n 256`), connections beyond
/// the cap wait unanswered in the backlog without an accept error; admin keeps
/// answering; closing one lets the next in.
#[tokio::test]
async fn d24_connection_cap_pauses_accepting_without_errors() {
    let up = FakeUpstream::start().await;
    let yaml = format!(
        "{}limits: {{ max_connections: 20, request_head_timeout: 60s }}\n",
        simple_yaml(&[up.url()], "")
    );
    let mut proxy = ProxyProcess::builder(&yaml).nofile(256).start().await;
    let open = "teeproxy_open_connections{listener=\"public\"}";
    let mut held = hold_half_heads(proxy.addr(), 20, || false).await;
    assert_eq!(held.len(), 20);
    assert_eventually!(proxy.metric(open).await == 20.0);
    let mut extra = TcpStream::connect(proxy.addr()).await.unwrap();
    extra
        .write_all(b"GET /d24/extra HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = read_all(&mut extra, Duration::from_millis(500)).await;
    assert!(
        early.bytes.is_empty() && !early.closed,
        "served past the cap: {}",
        early.text()
    );
    assert!(proxy.live().await, "admin answers at the cap");
    let m = proxy.metrics().await;
    assert_eq!(metric_value(&m, open), 20.0);
    assert_eq!(
        metric_value(&m, "teeproxy_connections_total{listener=\"public\"}"),
        20.0
    );
    assert_eq!(
        metric_value(&m, "teeproxy_accept_errors_total{listener=\"public\"}"),
        0.0
    );
    assert_eq!(up.count(), 0);

    held.pop();
    let ex = read_all(&mut extra, Duration::from_secs(5)).await;
    assert_eq!(ex.status(), 200, "served once a slot freed: {}", ex.text());
    assert!(ex.closed, "closed after the answer (Connection: close)");
    assert_eq!(up.count(), 1);
    drop(held);
    assert_eventually!(proxy.metric(open).await == 0.0);
    assert_serves(&mut proxy, "/d24/cap/after").await;
}

const BODY_SIZE: u64 = 200 * 1024 * 1024;

/// Sends a `BODY_SIZE` upload (by length or chunked, in 1 MiB pieces from one buffer)
/// while sampling the proxy's RSS; returns (status text, peak RSS KiB during the
/// transfer).
async fn upload_200mb(proxy: &ProxyProcess, path: &str, chunked: bool) -> (String, u64) {
    let piece = vec![b'z'; 1024 * 1024];
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let head = if chunked {
        format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
    } else {
        format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY_SIZE}\r\nConnection: close\r\n\r\n"
        )
    };
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let send = async move {
        for _ in 0..BODY_SIZE / piece.len() as u64 {
            if chunked {
                wr.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await
                    .unwrap();
            }
            wr.write_all(&piece).await.unwrap();
            if chunked {
                wr.write_all(b"\r\n").await.unwrap();
            }
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await.unwrap();
        }
        wr
    };
    let mut peak = 0u64;
    let sample = async {
        loop {
            peak = peak.max(proxy.usage_now().rss_kib);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let read = async {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut out),
        )
        .await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let transfer = async { tokio::join!(send, read).1 };
    let text = tokio::select! {
        t = transfer => t,
        _ = sample => unreachable!("sampling never ends"),
    };
    (text, peak)
}

/// D25: a 200 MB body, by length and chunked, with a shadow configured: the primary gets
/// all of it, the shadow nothing (`body_too_large`), and the proxy's RSS stays far below
/// the body size.
#[tokio::test]
async fn d25_a_200_mb_body_streams_to_the_primary_in_bounded_memory() {
    let primary = FakeUpstream::builder().count_bytes().start().await;
    let shadow = FakeUpstream::builder().name("candidate").start().await;
    let yaml = shadow_yaml(&primary.url(), &shadow.url(), "", "methods: any");
    let mut proxy = ProxyProcess::start(&yaml).await;
    let rss_idle = usage_or_skip!(proxy).rss_kib;
    for (i, (path, chunked)) in [("/d25/length", false), ("/d25/chunked", true)]
        .into_iter()
        .enumerate()
    {
        let t = Instant::now();
        let (text, sampled_kib) = upload_200mb(&proxy, path, chunked).await;
        let took = t.elapsed();
        // The kernel's high-water mark covers what sampling may miss.
        let peak_kib = proxy.usage_now().peak_rss_kib.max(sampled_kib);
        eprintln!(
            "d25 {path}: {} MiB in {took:?}; proxy RSS idle {} MiB, highest sampled during the \
             transfer {} MiB, process peak (VmHWM) {} MiB",
            BODY_SIZE >> 20,
            rss_idle >> 10,
            sampled_kib >> 10,
            peak_kib >> 10
        );
        assert_eq!(raw_status(&text), 200, "{path}: {text}");
        assert!(text.ends_with("counted"), "{path}: {text}");
        let got = primary.counted();
        assert_eq!(
            got.get(i),
            Some(&Counted {
                path: path.to_string(),
                bytes: BODY_SIZE,
                complete: true
            }),
            "{path}: the primary got all of it"
        );
        assert!(
            peak_kib < 100 * 1024,
            "{path}: RSS peaked at {} MiB for a {} MiB body",
            peak_kib >> 10,
            BODY_SIZE >> 20
        );
    }
    assert_eq!(primary.received_bytes(), 2 * BODY_SIZE);
    let m = proxy.metrics().await;
    assert_eq!(
        dropped(&m, "all", "candidate", "body_too_large"),
        2.0,
        "{m}"
    );
    assert!(ShadowCounts::from_metrics(&m, "all", "candidate").balanced());
    assert_eq!(shadow.count(), 0, "the shadow received nothing");
    proxy.assert_alive();
    assert!(proxy.live().await);
    let after = http_get(proxy.addr(), "/d25/after", Duration::from_secs(5)).await;
    assert_eq!(after, Some((200, "counted".to_string())));
    assert_eventually!(shadow.count() == 1, "a small request is still mirrored");
}
