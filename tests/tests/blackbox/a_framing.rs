//! A. Framing and smuggling (HTTP/1), cases A1-A8.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;

/// A1: `Content-Length` with `Transfer-Encoding`, in either order, alone or pipelined
/// behind a good request: 400 and close; only the good request is forwarded.
#[tokio::test]
async fn a1_content_length_with_transfer_encoding_is_400_and_closed() {
    let mut rig = Rig::start("").await;
    rig.refused(
        b"POST /a1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        &[400],
    )
    .await;
    rig.refused(
        b"POST /a1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        &[400],
    )
    .await;

    // Pipelined behind a good request: the good one is served and mirrored, the
    // smuggling attempt is refused and goes nowhere.
    let ex = exchange(
        rig.addr(),
        b"POST /a1/ok HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST /a1/bad HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /a1/after HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = ex.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400], "{}", ex.text());
    assert!(ex.closed, "closed after the 400");
    rig.settle().await;
    let uris = |u: &FakeUpstream| -> Vec<String> {
        u.received().iter().map(|r| r.uri.to_string()).collect()
    };
    assert_eq!(uris(&rig.primary), ["/a1/ok"]);
    assert_eq!(rig.primary.received()[0].body, "abc");
    assert_eq!(uris(&rig.shadow), ["/a1/ok"]);
    assert_eq!(rig.shadow.received()[0].body, "abc");
    rig.assert_healthy().await;
}

/// A2: differing duplicate lengths, a list of differing lengths, a sign, a negative
/// value, an overflowing value: 400, nothing forwarded.
#[tokio::test]
async fn a2_invalid_content_length_is_400() {
    let mut rig = Rig::start("").await;
    let cases: [&[u8]; 6] = [
        b"POST /a2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /a2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 3\r\n\r\nabc",
        b"POST /a2 HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab",
        b"POST /a2 HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST /a2 HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /a2 HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
    ];
    for case in cases {
        rig.refused(case, &[400]).await;
    }
    rig.assert_healthy().await;
}

/// A3: `Transfer-Encoding` repeated, with an unknown coding, with `chunked` not last,
/// with a control character, or on HTTP/1.0: 400, nothing forwarded.
#[tokio::test]
async fn a3_invalid_transfer_encoding_is_400() {
    let mut rig = Rig::start("").await;
    let cases: [&[u8]; 7] = [
        b"POST /a3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        b"POST /a3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
        b"POST /a3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST /a3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /a3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",
        b"POST /a3 HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for case in cases {
        rig.refused(case, &[400]).await;
    }
    rig.assert_healthy().await;
}

/// A4: obs-fold continuation lines, invalid header-name characters, NUL or a bare CR in
/// a value: 400, nothing forwarded.
#[tokio::test]
async fn a4_malformed_header_lines_are_400() {
    let mut rig = Rig::start("").await;
    let cases: [&[u8]; 6] = [
        b"GET /a4 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
        b"GET /a4 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tfolded\r\n\r\n",
        b"GET /a4 HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n",
        b"GET /a4 HTTP/1.1\r\nHost: a\r\nBad(Name): 1\r\n\r\n",
        b"GET /a4 HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
        b"GET /a4 HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
    ];
    for case in cases {
        rig.refused(case, &[400]).await;
    }
    rig.assert_healthy().await;
}

/// A5: bad chunk framing (size overflow, `0x` prefix, missing CRLF after the data, a
/// size that is not hex) after the head was forwarded: the client gets 400 (no response
/// had started) and a close, the primary's request is aborted (it never sees a complete
/// body) and nothing is mirrored (`body_incomplete`).
#[tokio::test]
async fn a5_bad_chunk_framing_aborts_the_upstream_request_and_is_not_mirrored() {
    let mut rig = Rig::start("").await;
    let cases: [(&str, &[u8]); 4] = [
        ("/a5/overflow", b"ffffffffffffffffff1\r\nabc\r\n0\r\n\r\n"),
        ("/a5/0x", b"0x3\r\nabc\r\n0\r\n\r\n"),
        ("/a5/crlf", b"3\r\nabcXY3\r\ndef\r\n0\r\n\r\n"),
        ("/a5/nothex", b"3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n"),
    ];
    for (i, (path, body)) in cases.iter().enumerate() {
        let mut req =
            format!("POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
                .into_bytes();
        req.extend_from_slice(body);
        let ex = exchange(rig.addr(), &req).await;
        assert_eq!(ex.status(), 400, "{path}: {}", ex.text());
        assert!(ex.closed, "{path}: closed");
        rig.settle().await;
        assert!(
            rig.primary
                .received()
                .iter()
                .filter(|r| r.uri == *path)
                .all(|r| !r.complete),
            "{path}: the primary never got a complete body"
        );
        assert!(
            rig.shadow.received().iter().all(|r| r.uri != *path),
            "{path} was mirrored"
        );
        let m = rig.metrics().await;
        let offered = ShadowCounts::from_metrics(&m, "all", "candidate").offered;
        let incomplete = dropped(&m, "all", "candidate", "body_incomplete");
        // Each case that reached the handler was offered and dropped as incomplete.
        assert_eq!(offered, incomplete, "{path}: {m}");
        assert!(incomplete <= (i + 1) as f64);
    }
    rig.assert_healthy().await;
}

/// A6: request trailers reach both legs as trailers (or not at all), never as headers,
/// even when they name framing or routing fields.
#[tokio::test]
async fn a6_trailers_are_never_merged_into_headers() {
    let mut rig = Rig::start("").await;
    let ex = exchange(
        rig.addr(),
        b"POST /a6 HTTP/1.1\r\nHost: app.example\r\nTrailer: x-checksum\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7\r\npayload\r\n0\r\nX-Checksum: c0ffee\r\nHost: evil.example\r\nContent-Length: 99\r\n\r\n",
    )
    .await;
    assert_eq!(ex.status(), 200, "{}", ex.text());
    rig.settle().await;
    for (leg, got) in [
        ("primary", &rig.primary.received()[0]),
        ("shadow", &rig.shadow.received()[0]),
    ] {
        assert_eq!(got.uri, "/a6", "{leg}");
        assert_eq!(got.body, "payload", "{leg}");
        assert!(got.complete, "{leg}");
        assert_eq!(got.headers["host"], "app.example", "{leg}");
        assert!(
            !got.headers.contains_key("x-checksum"),
            "{leg}: a trailer became a header"
        );
        assert_ne!(
            got.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"99"[..]),
            "{leg}: a trailer became the length"
        );
        if let Some(t) = &got.trailers {
            assert_eq!(t["x-checksum"], "c0ffee", "{leg}");
        }
    }
    rig.assert_healthy().await;
}

/// A7: pipelined requests (length, chunked, length + close in one write) are answered
/// in order, each forwarded and mirrored exactly once.
#[tokio::test]
async fn a7_pipelined_requests_are_answered_in_order_and_mirrored_once_each() {
    let mut rig = Rig::with(FakeUpstream::builder().echo(), "methods: any", "").await;
    let ex = exchange(
        rig.addr(),
        b"POST /a7/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nonePOST /a7/2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\nPOST /a7/3 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthree",
    )
    .await;
    assert!(ex.closed);
    let bodies: Vec<(u16, String)> = ex
        .responses()
        .iter()
        .map(|r| (r.status, r.body_text()))
        .collect();
    assert_eq!(
        bodies,
        [
            (200, "one".to_string()),
            (200, "two".to_string()),
            (200, "three".to_string())
        ],
        "{}",
        ex.text()
    );
    rig.settle().await;
    let primary: Vec<String> = rig
        .primary
        .received()
        .iter()
        .map(|r| r.uri.to_string())
        .collect();
    assert_eq!(primary, ["/a7/1", "/a7/2", "/a7/3"]);
    let mut shadow: Vec<(String, String)> = rig
        .shadow
        .received()
        .iter()
        .map(|r| {
            (
                r.uri.to_string(),
                String::from_utf8_lossy(&r.body).into_owned(),
            )
        })
        .collect();
    shadow.sort();
    assert_eq!(
        shadow,
        [
            ("/a7/1".to_string(), "one".to_string()),
            ("/a7/2".to_string(), "two".to_string()),
            ("/a7/3".to_string(), "three".to_string())
        ]
    );
    // The echoing primary answers without the rig's usual body: check liveness by hand.
    rig.proxy.assert_alive();
    assert!(rig.proxy.live().await);
    let ok = exchange(
        rig.addr(),
        b"POST /a7/after HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    assert_eq!(ok.responses()[0].body_text(), "ok");
}

/// A8: an HTTP/0.9 request line, `HTTP/2.0` in an HTTP/1 request line, bad method
/// tokens, a request line with extra parts: 400 or 505, nothing forwarded.
#[tokio::test]
async fn a8_bad_request_lines_are_400_or_505() {
    let mut rig = Rig::start("").await;
    let cases: [&[u8]; 6] = [
        b"GET /a8\r\n\r\n",
        b"GET /a8 HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET /a8 HTTP/1.1 extra\r\nHost: a\r\n\r\n",
        b"G@T /a8 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET\x01 /a8 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a8 HTTP/9.9\r\nHost: a\r\n\r\n",
    ];
    for case in cases {
        rig.refused(case, &[400, 505]).await;
    }
    // And a partial write of a bad line followed by silence is not left hanging either.
    let mut s = TcpStream::connect(rig.addr()).await.unwrap();
    s.write_all(b"G@T / HTTP/1.1\r\n").await.unwrap();
    let ex = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(ex.closed, "closed");
    assert!(
        ex.bytes.is_empty() || [400, 505].contains(&ex.status()),
        "{}",
        ex.text()
    );
    rig.assert_healthy().await;
}
