//! Black-box suite: a real `teeproxy` process (the built binary, see
//! `teeproxy_tests::process`) driven from outside over raw sockets on 127.0.0.1, with
//! in-process fake upstreams in every fault mode. One module per group of the
//! reliability catalogue (A framing, B headers and upgrades, C HTTP/2 abuse, D slow
//! clients, E client aborts and primary faults, F shadow faults, G lifecycle, reload and operation). Every case checks the status or the
//! connection's fate, what the primary and the shadow received (nothing, for refused or
//! aborted requests), and that the process still serves afterwards.
//!
//! The helpers here are shared by every module: `Rig` (a primary, a shadow and a proxy
//! process mirroring everything) and raw exchanges with a small HTTP/1.1 response
//! parser. Every fake upstream is the kit's `FakeUpstream`.

mod a_framing;
mod b_headers;
mod b_websocket;
mod c_http2;
mod d_slow;
mod d_slow_reader;
mod e_faults;
mod f_shadow;
mod f_shadow_memory;
mod g_lifecycle;
mod g_operate;
mod g_reload;

use std::net::SocketAddr;
use std::time::Duration;

pub use teeproxy_tests::h1::{
    Exchange, RawResponse, exchange, find, has_whole_response, parse_responses, read_all,
    read_head, read_response, read_until,
};
use teeproxy_tests::process::{ProxyProcess, http_get};
use teeproxy_tests::*;

/// What the rig's primary answers (`FakeUpstream`'s default body).
pub const PRIMARY_BODY: &str = "hello from upstream";

/// A primary, a shadow (`candidate`) and a proxy process whose one route `all` sends
/// everything to the primary and mirrors every method to the shadow.
pub struct Rig {
    pub primary: FakeUpstream,
    pub shadow: FakeUpstream,
    pub proxy: ProxyProcess,
    healthy: u32,
}

impl Rig {
    /// Default upstreams; `extra` is appended to the config (top-level keys).
    pub async fn start(extra: &str) -> Rig {
        Self::with(FakeUpstream::builder(), "methods: any", extra).await
    }

    /// A rig with this primary, these shadow options and extra top-level config.
    pub async fn with(primary: FakeUpstreamBuilder, shadow_opts: &str, extra: &str) -> Rig {
        let primary = primary.name("primary").start().await;
        let shadow = FakeUpstream::builder()
            .name("candidate")
            .body("from candidate")
            .start()
            .await;
        let yaml = format!(
            "{}{extra}",
            shadow_yaml(&primary.url(), &shadow.url(), "", shadow_opts)
        );
        let proxy = ProxyProcess::start(&yaml).await;
        Rig {
            primary,
            shadow,
            proxy,
            healthy: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    pub async fn metrics(&self) -> String {
        self.proxy.metrics().await
    }

    /// Waits until everything the proxy started has landed: no request in flight, and
    /// every copy sent to the shadow was recorded there and has its outcome. After this,
    /// "the shadow received nothing more" is a fact, not a race. (A primary request the
    /// proxy aborted may show up late, or never, as incomplete: the primary is checked
    /// through `teeproxy_upstream_requests_total` where that matters.)
    pub async fn settle(&self) {
        settle(&self.proxy, &self.primary, &self.shadow).await;
    }

    /// Sends `request` raw and asserts it is answered with one of `want` and the
    /// connection closed; then that neither upstream received anything. Returns what
    /// was read.
    pub async fn refused(&mut self, request: &[u8], want: &[u16]) -> Exchange {
        let (p, s) = (self.primary.count(), self.shadow.count());
        let forwarded = self.forwarded().await;
        let ex = exchange(self.addr(), request).await;
        assert!(
            want.contains(&ex.status()),
            "{:?} answered {:?}, want one of {want:?}",
            String::from_utf8_lossy(request),
            ex.text()
        );
        assert!(
            ex.closed,
            "{:?}: the connection is closed after the refusal",
            String::from_utf8_lossy(request)
        );
        self.settle().await;
        assert_eq!(
            (self.forwarded().await, self.primary.count()),
            (forwarded, p),
            "{:?} was forwarded to the primary",
            String::from_utf8_lossy(request)
        );
        assert_eq!(
            self.shadow.count(),
            s,
            "{:?} reached the shadow",
            String::from_utf8_lossy(request)
        );
        ex
    }

    /// Requests the proxy sent to the primary (`teeproxy_upstream_requests_total`).
    pub async fn forwarded(&self) -> f64 {
        self.proxy
            .metric("teeproxy_upstream_requests_total{cluster=\"primary\",leg=\"primary\"}")
            .await
    }

    /// The process runs, admin answers `/live`, and a normal request is served by the
    /// primary and mirrored to the shadow.
    pub async fn assert_healthy(&mut self) {
        self.healthy += 1;
        let path = format!("/healthy/{}", self.healthy);
        assert_serves(&mut self.proxy, &path).await;
        assert_eventually!(
            self.primary
                .received()
                .iter()
                .any(|r| r.uri == path.as_str()),
            "the primary got {path}"
        );
        assert_eventually!(
            self.shadow
                .received()
                .iter()
                .any(|r| r.uri == path.as_str()),
            "the shadow got {path}"
        );
    }
}

/// See `Rig::settle`: the barrier for a proxy in front of `primary` mirroring route
/// `all` to shadow `candidate` at `shadow`.
pub async fn settle(proxy: &ProxyProcess, primary: &FakeUpstream, shadow: &FakeUpstream) {
    let sent_to_primary = "teeproxy_upstream_requests_total{cluster=\"primary\",leg=\"primary\"}";
    assert_eventually!(
        {
            let m = proxy.metrics().await;
            let n = ShadowCounts::from_metrics(&m, "all", "candidate");
            let outcomes: f64 = [
                "ok",
                "connect_error",
                "tls_error",
                "protocol_error",
                "body_error",
                "timeout",
            ]
            .iter()
            .map(|o| outcome(&m, "all", "candidate", o))
            .sum();
            metric_value(&m, "teeproxy_requests_in_flight") == 0.0
                && primary.count() as f64 <= metric_value(&m, sent_to_primary)
                && n.balanced()
                && outcomes == n.sent
                && shadow.count() as f64 == n.sent
        },
        "the proxy, the primary ({} recorded) and the shadow ({} recorded) agree; metrics:\n{}",
        primary.count(),
        shadow.count(),
        brief(&proxy.metrics().await)
    );
}

/// The non-zero counters and gauges of a `/metrics` text (no histograms, comments).
pub fn brief(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && !l.contains("_seconds_")
                && !l.ends_with(" 0")
                && !l.ends_with(" 0.0")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The process is alive, `/live` answers, and `GET path` through the first listener is
/// answered 200 by a primary that answers `PRIMARY_BODY`.
pub async fn assert_serves(proxy: &mut ProxyProcess, path: &str) {
    proxy.assert_alive();
    assert!(proxy.live().await, "admin /live answers");
    let got = http_get(proxy.addr(), path, Duration::from_secs(5)).await;
    assert_eq!(
        got,
        Some((200, PRIMARY_BODY.to_string())),
        "a normal request is served"
    );
}

/// A configured cluster name and endpoint for `yaml` builders.
pub fn cluster(name: &str, url: &str, extra: &str) -> String {
    if extra.is_empty() {
        format!("  {name}: {{ endpoints: [\"{url}\"] }}\n")
    } else {
        format!("  {name}: {{ endpoints: [\"{url}\"], {extra} }}\n")
    }
}
