//! F31, memory: copies queued for a black-holed shadow hold what they need, not the
//! client connection's read buffers their headers were parsed from.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use teeproxy_tests::process::*;
use teeproxy_tests::*;

#[tokio::test]
async fn queued_copies_cost_about_their_own_size() {
    let primary = FakeUpstream::start().await;
    let hole = FakeUpstream::builder().black_hole().start().await;
    const COPIES: usize = 3000;
    let p = ProxyProcess::start(&shadow_yaml(
        &primary.url(),
        &hole.url(),
        &format!("shadow_queue: {COPIES}, shadow_max_in_flight: 1"),
        "timeout: 60s",
    ))
    .await;
    // Warm up allocator and pools, then measure.
    let client = h1_client();
    let pad = "p".repeat(400);
    let send_many = |from: usize, n: usize| {
        let client = client.clone();
        let url = p.url("");
        let pad = pad.clone();
        async move {
            for i in from..from + n {
                let req = Request::get(format!("{url}/q/{i}?page={i}"))
                    .header("x-pad", pad.as_str())
                    .header("user-agent", "teeproxy-memory-test")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                assert_eq!(send(&client, req).await.0.as_u16(), 200);
            }
        }
    };
    send_many(0, 200).await;
    let queued = |m: &str| metric_value(m, "teeproxy_shadow_queue_depth{shadow=\"candidate\"}");
    assert_eventually!(queued(&p.metrics().await) >= 198.0);
    let before = usage_or_skip!(p).rss_kib;

    let mut tasks = Vec::new();
    for t in 0..8 {
        tasks.push(tokio::spawn(send_many(1000 + t * 1000, (COPIES - 300) / 8)));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = p.metrics().await;
    let held = queued(&m);
    assert!(held >= (COPIES - 300) as f64, "queued {held}");
    assert_eq!(dropped(&m, "all", "candidate", "queue_full"), 0.0);
    let after = p.usage_now().rss_kib;
    let per_copy = (after.saturating_sub(before)) as f64 * 1024.0 / (held - 199.0);
    eprintln!(
        "RSS {before} -> {after} KiB for {} more queued copies: {per_copy:.0} bytes each",
        held - 199.0
    );
    // A copy is its head (about 0.7 KiB of headers here) plus bookkeeping; a read buffer
    // would be 8 KiB or more.
    assert!(per_copy < 4096.0, "{per_copy:.0} bytes per queued copy");
    let _ = Duration::ZERO;
}
