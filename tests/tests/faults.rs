//! A primary closing mid-body, seen from the client, with a stricter claim than the
//! black-box E30 makes: the status 200 and `content-length: 1000` always reach the client
//! before the close (E30 also accepts a close before any byte of the answer, because the
//! abort can overtake the writes; asserting the head there would flake). Refused,
//! black-holed, garbage and reset primaries are E28 and E29.

use std::time::Duration;

use teeproxy_tests::*;

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
