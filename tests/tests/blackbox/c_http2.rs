//! C18-C20 (and HTTP/2 idle connections) against a real process, with raw frames.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use teeproxy_tests::h2::*;
use teeproxy_tests::process::*;
use teeproxy_tests::*;

/// C18: streams opened and cancelled at once, thousands of times: the connection is
/// closed early, few requests reach the primary, nothing is mirrored for them.
#[tokio::test]
async fn rapid_reset_closes_the_connection_and_mirrors_nothing_reset() {
    let primary = FakeUpstream::builder()
        .delay(Duration::from_millis(50))
        .start()
        .await;
    let shadow = FakeUpstream::start().await;
    let mut p = ProxyProcess::start(&shadow_yaml(&primary.url(), &shadow.url(), "", "")).await;
    let before = usage_or_skip!(p);
    let (cpu_before, rss_before) = (before.cpu_ticks, before.rss_kib);
    let mut s = connect(p.addr(), &[]).await;
    const STREAMS: u32 = 5000;
    let mut sent = 0;
    'flood: for batch in 0..STREAMS / 50 {
        let mut bytes = Vec::new();
        for i in 0..50 {
            let id = 2 * (batch * 50 + i) + 1;
            bytes.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                id,
                &request_block("/rr", &[]),
            ));
            bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        if s.write_all(&bytes).await.is_err() {
            break 'flood;
        }
        sent += 50;
    }
    let (frames, eof) = read_frames(&mut s, Duration::from_secs(10)).await;
    assert!(eof, "the connection stayed open after {sent} reset streams");
    // Bounded work: the flood costs the proxy little CPU (clock ticks are 10 ms) and no
    // lasting memory.
    let now = p.usage_now();
    let cpu = now.cpu_ticks - cpu_before;
    let rss = now.rss_kib;
    eprintln!("rapid reset: proxy CPU {cpu} ticks, RSS {rss_before} -> {rss} KiB");
    assert!(cpu < 300, "{cpu} ticks of CPU for {sent} reset streams");
    assert!(
        rss < rss_before + 16 * 1024,
        "RSS {rss_before} -> {rss} KiB"
    );
    let m = p.metrics().await;
    let guard = metric_value(&m, &closed_metric("premature_resets"));
    let calm = goaway_code(&frames) == Some(0xb);
    eprintln!(
        "rapid reset: {sent} streams sent, primary saw {}, premature-reset guard {guard}, GOAWAY {:?}",
        primary.count(),
        goaway_code(&frames)
    );
    assert!(
        guard == 1.0 || calm,
        "closed by neither guard: GOAWAY {:?}",
        goaway_code(&frames)
    );
    assert!(
        primary.count() < 1000,
        "{} of {sent} reset streams reached the primary",
        primary.count()
    );
    // Copies exist only for answered requests, never for the cancelled ones.
    let answered: Vec<_> = primary.received();
    assert_eventually!(
        metric_value(
            &p.metrics().await,
            "teeproxy_shadow_queue_depth{shadow=\"candidate\"}"
        ) == 0.0
    );
    assert!(
        shadow.count() <= answered.len(),
        "shadow {} > primary {}",
        shadow.count(),
        answered.len()
    );
    p.assert_alive();
    assert_eq!(
        http_get(p.addr(), "/after", Duration::from_secs(5))
            .await
            .map(|r| r.0),
        Some(200)
    );
}

/// C18, the slower shape: streams that reach the primary and are then cancelled, round
/// after round. teeproxy's own guard closes the connection once most of at least 100
/// requests were abandoned; the copies of the abandoned requests are dropped `cancelled`.
#[tokio::test]
async fn streams_abandoned_after_forwarding_trip_the_premature_reset_guard() {
    let primary = FakeUpstream::builder()
        .delay(Duration::from_secs(5))
        .start()
        .await;
    let shadow = FakeUpstream::start().await;
    let mut p = ProxyProcess::start(&shadow_yaml(&primary.url(), &shadow.url(), "", "")).await;
    let mut s = connect(p.addr(), &[]).await;
    let mut next_id = 1u32;
    let mut closed_after = None;
    for round in 0..6 {
        let ids: Vec<u32> = (0..50).map(|i| next_id + 2 * i).collect();
        next_id += 100;
        let mut heads = Vec::new();
        for id in &ids {
            heads.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                *id,
                &request_block("/slow", &[]),
            ));
        }
        if s.write_all(&heads).await.is_err() {
            closed_after = Some(round);
            break;
        }
        let want = 50 * (round + 1);
        assert_eventually!(
            primary.count() >= want || !p.alive(),
            "round {round}: {} forwarded",
            primary.count()
        );
        let mut resets = Vec::new();
        for id in &ids {
            resets.extend(frame(RST_STREAM, 0, *id, &CANCEL.to_be_bytes()));
        }
        if s.write_all(&resets).await.is_err() {
            closed_after = Some(round);
            break;
        }
        let mut guard = 0.0;
        for _ in 0..50 {
            guard = p.metric(&closed_metric("premature_resets")).await;
            if guard >= 1.0 || round == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if guard >= 1.0 {
            closed_after = Some(round);
            break;
        }
    }
    assert!(
        closed_after.is_some(),
        "the guard never closed the connection"
    );
    assert_eq!(p.metric(&closed_metric("premature_resets")).await, 1.0);
    let (_, eof) = read_frames(&mut s, Duration::from_secs(5)).await;
    assert!(eof, "the connection is closed");
    assert!(primary.count() <= 150, "{} forwarded", primary.count());
    assert_eventually!(p.metric("teeproxy_requests_in_flight").await == 0.0);
    assert_eq!(shadow.count(), 0, "abandoned requests were mirrored");
    assert!(
        p.metric(
            "teeproxy_shadow_dropped_total{route=\"all\",shadow=\"candidate\",reason=\"cancelled\"}"
        )
        .await
            >= 100.0
    );
    p.assert_alive();
}

/// C18: a header block that never ends (CONTINUATION after CONTINUATION): the connection
/// is closed long before the flood is sent, memory stays flat, the primary sees nothing.
#[tokio::test]
async fn continuation_flood_is_cut_off() {
    let primary = FakeUpstream::start().await;
    let mut p = ProxyProcess::start(&simple_yaml(&[primary.url()], "")).await;
    let rss_before = usage_or_skip!(p).rss_kib;
    let mut s = connect(p.addr(), &[]).await;
    s.write_all(&frame(HEADERS, END_STREAM, 1, &request_block("/cf", &[])))
        .await
        .unwrap();
    let value = vec![b'v'; 1000];
    let mut block = Vec::new();
    for i in 0..15 {
        literal(&mut block, &format!("x-flood-{i}"), &value);
    }
    let cont = frame(CONTINUATION, 0, 1, &block);
    let total = 20 << 20;
    let mut written = 0usize;
    while written < total {
        match tokio::time::timeout(Duration::from_secs(5), s.write_all(&cont)).await {
            Ok(Ok(())) => written += cont.len(),
            Ok(Err(_)) => break,
            Err(_) => break, // the proxy stopped reading
        }
    }
    assert!(
        written < total,
        "the proxy took all {written} bytes of the flood"
    );
    let (frames, _) = read_frames(&mut s, Duration::from_secs(5)).await;
    let _ = frames;
    assert_eq!(primary.count(), 0);
    let rss_after = p.usage_now().rss_kib;
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    p.assert_alive();
    assert_eq!(
        http_get(p.addr(), "/after", Duration::from_secs(5))
            .await
            .map(|r| r.0),
        Some(200)
    );
}

/// C19: malformed requests are stream (or connection) errors and never reach an
/// upstream; a body shorter than its content-length aborts the upstream request and is
/// not mirrored.
#[tokio::test]
async fn malformed_http2_requests_never_reach_an_upstream() {
    let primary = FakeUpstream::start().await;
    let shadow = FakeUpstream::start().await;
    let mut p = ProxyProcess::start(&shadow_yaml(&primary.url(), &shadow.url(), "", "")).await;
    type Extra<'a> = Vec<(&'a str, &'a [u8])>;
    let cases: [(&str, Extra); 4] = [
        ("uppercase name", vec![("X-Upper", b"1")]),
        (
            "connection-specific header",
            vec![("connection", b"keep-alive")],
        ),
        ("CRLF in a value", vec![("x-bad", b"a\r\nb")]),
        ("transfer-encoding", vec![("transfer-encoding", b"chunked")]),
    ];
    for (what, extra) in cases {
        let mut s = connect(p.addr(), &[]).await;
        s.write_all(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &request_block("/bad", &extra),
        ))
        .await
        .unwrap();
        let (frames, _) = read_frames(&mut s, Duration::from_millis(1500)).await;
        let refused = frames.iter().any(|f| f.kind == RST_STREAM && f.stream == 1)
            || frames.iter().any(|f| f.kind == GOAWAY)
            || frames
                .iter()
                .any(|f| f.kind == HEADERS && f.stream == 1 && f.payload.first() == Some(&0x8c)); // :status 400
        assert!(refused, "{what}: not refused: {frames:?}");
    }
    assert_eq!(
        primary.count(),
        0,
        "a malformed request reached the primary"
    );

    // content-length 10, 5 bytes of DATA, end of stream.
    let mut s = connect(p.addr(), &[]).await;
    let mut block = request_block("/short", &[("content-length", b"10")]);
    block[0] = 0x83; // :method POST
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &block))
        .await
        .unwrap();
    s.write_all(&frame(DATA, END_STREAM, 1, b"12345"))
        .await
        .unwrap();
    let (frames, _) = read_frames(&mut s, Duration::from_millis(1500)).await;
    assert!(
        frames
            .iter()
            .any(|f| (f.kind == RST_STREAM && f.stream == 1) || f.kind == GOAWAY),
        "short body not refused: {frames:?}"
    );
    assert!(
        primary.received().iter().all(|r| !r.complete),
        "the primary saw a complete request: {:?}",
        primary.received()
    );
    assert_eq!(shadow.count(), 0, "a short body was mirrored");
    p.assert_alive();
}

/// C20: many streams whose client grants no window: each stream buffers a bounded amount,
/// RSS stays far below what the responses add up to, and closing the connection frees
/// everything.
#[tokio::test]
async fn many_streams_with_a_reader_that_grants_no_window_stay_bounded() {
    let body = vec![b'x'; 4 << 20];
    let primary = FakeUpstream::builder().body(body).start().await;
    let mut p = ProxyProcess::start(&simple_yaml(&[primary.url()], "")).await;
    let rss_before = usage_or_skip!(p).rss_kib;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no response DATA may be sent.
    let mut s = connect(p.addr(), &[(0x4, 0)]).await;
    let mut bytes = Vec::new();
    for i in 0..100u32 {
        bytes.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &request_block("/big", &[]),
        ));
    }
    s.write_all(&bytes).await.unwrap();
    // Every stream gets its response head; then nothing moves.
    let mut heads = 0;
    let mut frames_seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while heads < 100 && tokio::time::Instant::now() < deadline {
        let (frames, eof) = read_frames(&mut s, Duration::from_millis(300)).await;
        heads += frames.iter().filter(|f| f.kind == HEADERS).count();
        frames_seen.extend(frames.into_iter().map(|f| (f.kind, f.stream)));
        assert!(!eof, "the proxy closed the connection");
    }
    assert_eq!(heads, 100, "response heads: {heads}");
    assert_eventually!(primary.count() == 100);
    let rss = p.usage_now().rss_kib;
    // 100 responses of 4 MiB are 400 MiB; per-stream buffering keeps the proxy small.
    assert!(
        rss < rss_before + 64 * 1024,
        "RSS {rss} KiB (from {rss_before}) with 100 stalled streams"
    );
    drop(s);
    assert_eventually!(p.metric("teeproxy_requests_in_flight").await == 0.0);
    assert_eventually!(
        p.metric("teeproxy_open_connections{listener=\"public\"}")
            .await
            == 0.0
    );
    p.assert_alive();
}

/// An HTTP/2 connection with no stream open is closed at the idle limit with GOAWAY.
#[tokio::test]
async fn an_idle_http2_connection_gets_goaway() {
    let primary = FakeUpstream::start().await;
    let p = ProxyProcess::start(&format!(
        "{}limits: {{ idle_timeout: 700ms }}\n",
        simple_yaml(&[primary.url()], "")
    ))
    .await;
    let mut s = connect(p.addr(), &[]).await;
    let started = std::time::Instant::now();
    // Answer PINGs like a real client: the graceful close waits for the PING ACK that
    // confirms the GOAWAY was seen.
    let mut frames = Vec::new();
    let mut eof = false;
    while !eof && started.elapsed() < Duration::from_secs(5) {
        let (got, closed) = read_frames(&mut s, Duration::from_millis(100)).await;
        for f in &got {
            if f.kind == PING && f.flags & 0x1 == 0 {
                let _ = s.write_all(&frame(PING, 0x1, 0, &f.payload)).await;
            }
        }
        frames.extend(got);
        eof = closed;
    }
    assert!(eof, "still open after 5 s: {frames:?}");
    assert_eq!(
        goaway_code(&frames),
        Some(0),
        "GOAWAY NO_ERROR expected: {frames:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(p.metric(&closed_metric("idle_timeout")).await, 1.0);
}

/// B10 over HTTP/2: a `host` header that differs from `:authority` is refused with 400,
/// one that agrees is served.
#[tokio::test]
async fn http2_host_differing_from_authority_is_refused() {
    let primary = FakeUpstream::start().await;
    let mut p = ProxyProcess::start(&simple_yaml(&[primary.url()], "")).await;
    let mut s = connect(p.addr(), &[]).await;
    s.write_all(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block("/differs", &[("host", b"b")]),
    ))
    .await
    .unwrap();
    s.write_all(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &request_block("/agrees", &[("host", b"a")]),
    ))
    .await
    .unwrap();
    let mut statuses = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while statuses.len() < 2 && std::time::Instant::now() < deadline {
        let (frames, eof) = read_frames(&mut s, Duration::from_millis(200)).await;
        for f in frames.iter().filter(|f| f.kind == HEADERS) {
            // :status 200 and 400 are static-table entries 8 and 12.
            statuses.insert(f.stream, f.payload.first().copied());
        }
        assert!(!eof, "the connection was closed");
    }
    assert_eq!(statuses.get(&1), Some(&Some(0x8c)), "stream 1 answered 400");
    assert_eq!(statuses.get(&3), Some(&Some(0x88)), "stream 3 answered 200");
    let paths: Vec<String> = primary
        .received()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert_eq!(paths, ["/agrees"]);
    p.assert_alive();
}

/// C20 with a write limit: a client that grants no window anywhere is closed once its
/// responses have waited `write_timeout`, and the upstream requests are released.
#[tokio::test]
async fn a_client_that_grants_no_window_is_closed_at_the_write_limit() {
    let primary = FakeUpstream::builder()
        .body(vec![b'x'; 1 << 20])
        .start()
        .await;
    let mut p = ProxyProcess::start(&format!(
        "{}limits: {{ write_timeout: 1s }}\n",
        simple_yaml(&[primary.url()], "")
    ))
    .await;
    let mut s = connect(p.addr(), &[(0x4, 0)]).await;
    let mut bytes = Vec::new();
    for i in 0..20u32 {
        bytes.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &request_block("/big", &[]),
        ));
    }
    s.write_all(&bytes).await.unwrap();
    let started = std::time::Instant::now();
    let (frames, eof) = read_frames(&mut s, Duration::from_secs(10)).await;
    assert!(eof, "still open after 10 s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "closed after {took:?}"
    );
    assert_eq!(
        frames.iter().filter(|f| f.kind == HEADERS).count(),
        20,
        "every stream got its head first"
    );
    assert_eq!(p.metric(&closed_metric("write_timeout")).await, 1.0);
    assert_eventually!(p.metric("teeproxy_requests_in_flight").await == 0.0);
    p.assert_alive();
}

/// E30 over HTTP/2: a primary that closes mid-body gives the client a reset stream, never
/// an ended one (no END_STREAM on the cut response).
#[tokio::test]
async fn a_primary_closing_mid_body_resets_the_http2_stream() {
    let cut = FakeUpstream::builder()
        .fault(Fault::CutLength)
        .start()
        .await;
    let mut p = ProxyProcess::start(&simple_yaml(&[cut.url()], "")).await;
    let mut s = connect(p.addr(), &[]).await;
    s.write_all(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block("/cut", &[]),
    ))
    .await
    .unwrap();
    let mut frames = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !frames
        .iter()
        .any(|f: &Frame| f.stream == 1 && (f.kind == RST_STREAM || f.flags & END_STREAM != 0))
        && std::time::Instant::now() < deadline
    {
        let (got, eof) = read_frames(&mut s, Duration::from_millis(200)).await;
        frames.extend(got);
        if eof {
            break;
        }
    }
    // The head may or may not get out first (a reset can overtake the queued HEADERS);
    // either way the stream ends in a reset, never in END_STREAM.
    let on_stream: Vec<_> = frames.iter().filter(|f| f.stream == 1).collect();
    assert!(
        on_stream.iter().any(|f| f.kind == RST_STREAM),
        "the stream was reset: {on_stream:?}"
    );
    assert!(
        !on_stream.iter().any(|f| f.flags & END_STREAM != 0),
        "the cut response was presented as complete"
    );
    let data: usize = on_stream
        .iter()
        .filter(|f| f.kind == DATA)
        .map(|f| f.payload.len())
        .sum();
    assert!(
        data < 1000,
        "{data} body bytes of a 1000-byte body cut at 100"
    );
    p.assert_alive();
}
