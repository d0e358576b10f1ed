//! Primary faults, seen from the client: refused, black-holed, garbage, reset, closing
//! mid-body. The client gets 502/504, or an aborted message it cannot take for complete,
//! and the proxy keeps serving.

use std::time::Duration;

use teeproxy_tests::*;

#[tokio::test]
async fn broken_primaries_map_to_502_and_504() {
    for (fault, upstream, status) in [
        (
            "Garbage",
            FakeUpstream::builder().fault(Fault::Garbage(DEMO_GARBAGE)),
            502,
        ),
        ("Reset", FakeUpstream::builder().fault(Fault::Reset), 502),
        ("Blackhole", FakeUpstream::builder().black_hole(), 504),
    ] {
        let upstream = upstream.start().await;
        let proxy = TestProxy::start(&simple_yaml(&[upstream.url()], "timeout: 300ms")).await;
        let (got, _, _) = get(&proxy.url("/f")).await;
        assert_eq!(got.as_u16(), status, "{fault}");
        assert_eventually!(upstream.count() >= 1, "{fault} saw the request");
        // The proxy is still up and answers the next one the same way.
        assert_eq!(
            get(&proxy.url("/again")).await.0.as_u16(),
            status,
            "{fault}"
        );
    }
}

#[tokio::test]
async fn a_primary_that_closes_mid_body_aborts_the_clients_message() {
    let cut = FakeUpstream::builder()
        .fault(Fault::CutLength)
        .start()
        .await;
    let proxy = TestProxy::start(&simple_yaml(&[cut.url()], "")).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the connection is closed, not left hanging");
    assert_eq!(raw_status(&text), 200, "{text}");
    assert!(text.contains("content-length: 1000"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert!(
        body.len() < 1000,
        "the client got {} of 1000 bytes and a close: it cannot take it as complete",
        body.len()
    );
    assert_eq!(
        raw_status(
            &raw(
                proxy.addr,
                b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            .await
        ),
        200
    );
}
