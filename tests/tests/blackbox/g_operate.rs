//! G. Operating the process: the config file watch with a Kubernetes ConfigMap's layout
//! (a `..data` symlink swapped atomically), and a rolling update's SIGTERM with
//! `drain_delay` (`/ready` fails first while requests are still served, so a load
//! balancer can take the instance out before anything is refused).

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use teeproxy_tests::process::{ProxyProcess, Signal};

use super::*;

/// Publishes `text` as the kubelet does for a ConfigMap volume: a new timestamped
/// directory, a `..data_tmp` symlink to it renamed over `..data` (one atomic step), and
/// `config.yaml` a symlink to `..data/config.yaml`.
fn publish(dir: &Path, version: &str, text: &str) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("config.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let file = dir.join("config.yaml");
    if !std::fs::symlink_metadata(&file)
        .unwrap()
        .file_type()
        .is_symlink()
    {
        let link = dir.join("config.yaml.tmp");
        symlink("..data/config.yaml", &link).unwrap();
        std::fs::rename(&link, &file).unwrap();
    }
}

#[tokio::test]
async fn a_configmap_swap_reloads_and_a_broken_one_keeps_the_running_config() {
    let a = FakeUpstream::builder().name("a").start().await;
    let b = FakeUpstream::builder().name("b").start().await;
    let c = FakeUpstream::builder().name("c").start().await;
    let mut p = ProxyProcess::builder(&teeproxy_tests::simple_yaml(&[a.url()], ""))
        .watch_config()
        .start()
        .await;
    let dir = p.dir().to_path_buf();
    let original = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
    let ok = |p: &ProxyProcess| {
        let admin = p.admin();
        async move {
            let text = match http_get(admin, "/metrics", Duration::from_secs(5)).await {
                Some((200, body)) if body.contains("# TYPE teeproxy_config_reloads_total") => body,
                other => panic!("no metrics from the admin: {other:?}"),
            };
            (
                teeproxy_tests::metric_value(&text, "teeproxy_config_reloads_total{result=\"ok\"}"),
                teeproxy_tests::metric_value(
                    &text,
                    "teeproxy_config_reloads_total{result=\"error\"}",
                ),
            )
        }
    };
    assert_eq!(ok(&p).await, (0.0, 0.0));

    // First publication: the file becomes a symlink into ..data (same contents as the
    // running config: read, compared, and not reloaded).
    publish(&dir, "2026_11_27_v1", &original);
    // Then a real change, swapped in at once.
    publish(&dir, "2026_11_27_v2", &original.replace(&a.url(), &b.url()));
    assert_eventually!(ok(&p).await == (1.0, 0.0), "the swap reloaded once");
    let (status, _) = http_get(p.addr(), "/after-swap", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let served =
        |u: &FakeUpstream, path: &str| u.received().iter().filter(|r| r.uri.path() == path).count();
    assert_eq!(served(&b, "/after-swap"), 1, "served by the new config");

    // A broken swap: counted as a failed reload, the running config keeps serving.
    publish(&dir, "2026_11_27_v3", "routes: [\n");
    assert_eventually!(ok(&p).await == (1.0, 1.0), "the broken swap is counted");
    for i in 0..10 {
        let r = http_get(p.addr(), &format!("/broken-{i}"), Duration::from_secs(5)).await;
        assert_eq!(r.map(|r| r.0), Some(200));
    }
    assert_eq!(b.count(), 11, "still b");
    assert!(
        p.stderr().contains("config reload failed"),
        "logged: {}",
        p.stderr()
    );

    // And a good one after it applies.
    publish(&dir, "2026_11_27_v4", &original.replace(&a.url(), &c.url()));
    assert_eventually!(ok(&p).await == (2.0, 1.0));
    let (status, _) = http_get(p.addr(), "/fixed", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(served(&c, "/fixed"), 1);
    p.assert_alive();
}

#[tokio::test]
async fn a_rolling_update_sigterm_with_drain_delay_fails_no_request() {
    let up = FakeUpstream::builder().name("primary").start().await;
    let yaml = format!(
        "{}drain_delay: 6s\ndrain_timeout: 5s\n",
        teeproxy_tests::simple_yaml(&[up.url()], "")
    );
    let mut p = ProxyProcess::start(&yaml).await;
    let addr = p.addr();
    assert_eq!(
        p.admin_get("/ready", Duration::from_secs(2))
            .await
            .map(|r| r.0),
        Some(200)
    );

    // Clients keep sending, each request on a new connection (as a load balancer that
    // still lists the instance would), until the balancer has seen `/ready` fail.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for worker in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                let r =
                    http_get(addr, &format!("/roll/{worker}/{i}"), Duration::from_secs(5)).await;
                results.push(r.map(|r| r.0));
            }
            results
        }));
    }
    assert_eventually!(up.count() >= 20, "load is flowing");
    let sent_sigterm = Instant::now();
    p.signal(Signal::Term);
    // The balancer's probe: /ready turns 503 while the process still serves.
    assert_eventually!(
        p.admin_get("/ready", Duration::from_secs(2))
            .await
            .map(|r| r.0)
            == Some(503),
        "/ready fails first"
    );
    let at_503 = up.count();
    // Requests sent after /ready failed are still served (the balancer has not caught
    // up yet); then the balancer stops sending.
    assert_eventually!(
        up.count() >= at_503 + 10,
        "still serving during drain_delay"
    );
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let results = c.await.unwrap();
        total += results.len();
        let failed: Vec<_> = results.iter().filter(|r| **r != Some(200)).collect();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
    }
    // At least 20 before SIGTERM and 10 after /ready failed reached the upstream.
    assert!(total >= 30, "{total} requests");
    let status = p
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(
        sent_sigterm.elapsed() >= Duration::from_secs(6),
        "the process stayed up for drain_delay"
    );
    assert!(p.stderr().contains("still serving for drain_delay"));
}
