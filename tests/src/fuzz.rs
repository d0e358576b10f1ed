//! Fuzz harnesses shared by `proxy/fuzz` targets and the corpus replay tests.
//!
//! Each function takes arbitrary bytes and panics when an invariant breaks; anything else
//! (an error, a refusal, a 4xx) is an acceptable answer to arbitrary input.
//!
//! - [`head_sanitiser`]: the HTTP/1 framing tracker, request validation and header
//!   rewriting, without any I/O.
//! - [`config_parser`]: YAML to a validated config, and everything built from a valid one.
//! - [`whole_proxy`]: raw client bytes through the whole proxy (protocol detection, the
//!   tracker, hyper, validation, routing, the tee) over an in-memory stream, with
//!   recording upstreams on loopback as the primary and the shadow.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use prometheus_client::registry::Registry;
use teeproxy::App;
use teeproxy::config::{Config, ForwardedMode};
use teeproxy::testing::{
    Activity, ConnClock, Forwarded, H1Tracker, RequestIds, RequestLimits, check_request,
    request_host,
};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf,
};
use tokio::runtime::Runtime;

// ---------------------------------------------------------------------------------------
// Head sanitiser
// ---------------------------------------------------------------------------------------

/// The request-head sanitiser and the header handling around it.
///
/// Invariants:
/// 1. `H1Tracker::feed` gives the same bytes and the same `refused` count however the
///    input is cut into pieces (whole, byte by byte, fixed sizes, input-derived cuts,
///    empty pieces in between, with and without a connection clock): its decision about
///    a byte never depends on bytes that have not arrived yet.
/// 2. It changes nothing but the final line feed of a refused head, into NUL; it refuses
///    at most once per connection (then it stops tracking), and a refused head has both a
///    `Content-Length` and a `Transfer-Encoding` line before the changed byte.
/// 3. The input read loosely as one request head (request line, `name: value` lines):
///    `check_request` either refuses with a 4xx, or the request obeys what it promises
///    (no CONNECT, header count, one Host on HTTP/1.1, at most one Host on HTTP/1.0,
///    `Transfer-Encoding` absent or a single `chunked`, HTTP/2 Host equal to :authority).
/// 4. `rewrite_request` (both `X-Forwarded-For` modes) and `rewrite_response` remove every
///    hop-by-hop header and every header the `Connection` values name (except the
///    protected ones), keep every other header with its values in order, set exactly one
///    `X-Forwarded-For` / `-Proto` and the right `-Host`, and leave at most one `Cookie`.
/// 5. `RequestIds::ensure` leaves exactly one sane `X-Request-Id`, the client's own when it
///    sent exactly one sane value.
pub fn head_sanitiser(data: &[u8]) {
    tracker_chunking(data, 64 * 1024, 100);
    tracker_chunking(data, 1024, 4);
    if let Some(req) = loose_request(data) {
        request_checks(&req);
        header_rewrites(&req);
        request_ids(req.headers());
    }
}

/// Feeds `data` through a tracker in `cuts`-sized pieces (cycled), with an empty piece
/// after each one when `empties`.
fn feed_in_pieces(
    data: &[u8],
    max_head: usize,
    max_headers: usize,
    cuts: &[usize],
    empties: bool,
    clock: bool,
) -> (Vec<u8>, u64) {
    let mut t = H1Tracker::new(max_head, max_headers);
    if clock {
        t = t.with_clock(ConnClock::new());
    }
    let mut out = data.to_vec();
    let mut rest: &mut [u8] = &mut out;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts[i % cuts.len()].clamp(1, rest.len());
        i += 1;
        let (piece, tail) = rest.split_at_mut(n);
        t.feed(piece);
        if empties {
            t.feed(&mut []);
        }
        rest = tail;
    }
    (out, t.refused)
}

/// Cut sizes derived from the input itself (so the fuzzer steers them too).
fn derived_cuts(data: &[u8]) -> Vec<usize> {
    let mut h = fnv(data);
    (0..16)
        .map(|_| {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1 + (h >> 58) as usize
        })
        .collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn tracker_chunking(data: &[u8], max_head: usize, max_headers: usize) {
    let (whole, refused) = feed_in_pieces(data, max_head, max_headers, &[usize::MAX], false, false);
    let derived = derived_cuts(data);
    let ways: [(&[usize], bool, bool); 7] = [
        (&[1], false, false),
        (&[2], true, false),
        (&[3, 1, 7], false, true),
        (&[13], false, false),
        (&[64, 5], true, true),
        (&[1000], false, false),
        (&derived, true, false),
    ];
    for (cuts, empties, clock) in ways {
        let (out, r) = feed_in_pieces(data, max_head, max_headers, cuts, empties, clock);
        assert_eq!(
            r, refused,
            "refusals depend on how the input is cut ({cuts:?})"
        );
        assert!(
            out == whole,
            "the tracker's output depends on how the input is cut ({cuts:?}): first difference at {:?}",
            out.iter().zip(&whole).position(|(a, b)| a != b)
        );
    }
    assert!(
        refused <= 1,
        "the tracker refused {refused} heads on one connection"
    );
    let changed: Vec<usize> = (0..data.len()).filter(|&i| whole[i] != data[i]).collect();
    assert_eq!(
        changed.len() as u64,
        refused,
        "bytes changed other than the refused head's last one: {changed:?}"
    );
    if let Some(&p) = changed.first() {
        assert_eq!(data[p], b'\n', "only a head's final line feed is changed");
        assert_eq!(whole[p], 0, "the refused head's line feed becomes NUL");
        let lines: Vec<Vec<u8>> = data[..p]
            .split(|&b| b == b'\n')
            .map(|l| l.to_ascii_lowercase())
            .collect();
        let has = |name: &[u8]| lines.iter().any(|l| l.starts_with(name));
        assert!(
            has(b"content-length:") && has(b"transfer-encoding:"),
            "a refused head must carry both Content-Length and Transfer-Encoding"
        );
    }
}

/// Reads the input as one request head, loosely: a request line, then `name: value` lines
/// up to an empty line; lines that do not make a valid header are skipped.
fn loose_request(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut first = lines.next()?.split(|&b| b == b' ');
    let method = Method::from_bytes(first.next()?).ok()?;
    let uri = Uri::try_from(first.next()?).ok()?;
    let version = match first.next() {
        Some(b"HTTP/1.0") => Version::HTTP_10,
        Some(b"HTTP/2") | Some(b"HTTP/2.0") => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
        .ok()?;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        req.headers_mut().append(name, value);
    }
    Some(req)
}

const LIMITS: RequestLimits = RequestLimits {
    max_header_bytes: 512,
    max_headers: 8,
    max_uri_bytes: 128,
};

fn request_checks(req: &Request<()>) {
    let h = req.headers();
    match check_request(req, &LIMITS) {
        Ok(()) => {
            assert_ne!(req.method(), Method::CONNECT, "CONNECT accepted");
            assert!(h.len() <= LIMITS.max_headers, "too many headers accepted");
            let hosts = h.get_all(header::HOST).iter().count();
            match req.version() {
                Version::HTTP_2 => {
                    if let (Some(host), Some(a)) = (h.get(header::HOST), req.uri().authority()) {
                        assert_eq!(host.as_bytes(), a.as_str().as_bytes(), "Host != :authority");
                    }
                }
                v => {
                    assert!(hosts <= 1, "{hosts} Host headers accepted");
                    if v == Version::HTTP_11 {
                        assert_eq!(hosts, 1, "HTTP/1.1 without Host accepted");
                    }
                    let te: Vec<&HeaderValue> =
                        h.get_all(header::TRANSFER_ENCODING).iter().collect();
                    assert!(te.len() <= 1, "repeated Transfer-Encoding accepted");
                    if let Some(v) = te.first() {
                        assert!(
                            v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
                            "Transfer-Encoding {v:?} accepted"
                        );
                    }
                }
            }
        }
        Err(e) => {
            assert!(
                e.status().is_client_error(),
                "refusal with status {}",
                e.status()
            );
            let _ = teeproxy::testing::reject_response(e);
        }
    }
    let _ = request_host(req);
}

/// Hop-by-hop headers the proxy always removes. Written out here on purpose rather than
/// taken from `teeproxy::headers`: the oracle must not share a mistake with the code.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Headers a `Connection` option can never remove.
const PROTECTED: [&str; 6] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "content-type",
];

/// The header names listed in `Connection` values (valid names only).
fn connection_options(h: &HeaderMap) -> HashSet<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !PROTECTED.contains(&n.as_str()))
        .collect()
}

fn values<'a>(h: &'a HeaderMap, name: &HeaderName) -> Vec<&'a HeaderValue> {
    h.get_all(name).iter().collect()
}

/// Checks `after` against `before` for a hop-by-hop strip that also removed `extra` and
/// may have set `set` itself.
fn check_stripped(before: &HeaderMap, after: &HeaderMap, extra: &[&str], set: &[&str]) {
    let named = connection_options(before);
    for n in HOP_BY_HOP.iter().chain(extra) {
        assert!(!after.contains_key(*n), "{n} left in {after:?}");
    }
    for n in &named {
        assert!(
            !after.contains_key(n),
            "{n} (named by Connection) left in {after:?}"
        );
    }
    for name in before.keys() {
        let s = name.as_str();
        if HOP_BY_HOP.contains(&s) || extra.contains(&s) || set.contains(&s) || named.contains(name)
        {
            continue;
        }
        assert_eq!(
            values(before, name),
            values(after, name),
            "{name} changed by the rewrite"
        );
    }
}

fn header_rewrites(req: &Request<()>) {
    let before = req.headers();
    let host = request_host(req);
    let fwd = Forwarded {
        client_ip: http::HeaderValue::from_static("10.1.2.3"),
        proto: "http",
        host,
    };
    let cookies_named = connection_options(before).contains(&header::COOKIE);
    for mode in [ForwardedMode::Append, ForwardedMode::Replace] {
        let mut after = before.clone();
        teeproxy::testing::rewrite_request(&mut after, &fwd, mode);
        check_stripped(
            before,
            &after,
            &["content-length", "expect"],
            &[
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "cookie",
            ],
        );
        let xff = values(&after, &HeaderName::from_static("x-forwarded-for"));
        assert_eq!(xff.len(), 1, "X-Forwarded-For lines: {xff:?}");
        let xff = xff[0].to_str().expect("X-Forwarded-For is text");
        match mode {
            ForwardedMode::Replace => assert_eq!(xff, "10.1.2.3"),
            ForwardedMode::Append => assert!(xff.ends_with("10.1.2.3"), "{xff}"),
        }
        assert_eq!(
            values(&after, &HeaderName::from_static("x-forwarded-proto")),
            [&HeaderValue::from_static("http")]
        );
        let xfh = values(&after, &HeaderName::from_static("x-forwarded-host"));
        match host.and_then(|h| HeaderValue::from_str(h).ok()) {
            Some(h) => assert_eq!(xfh, [&h], "X-Forwarded-Host"),
            None => assert!(xfh.is_empty(), "X-Forwarded-Host without a host: {xfh:?}"),
        }
        if !cookies_named {
            let sent = values(before, &header::COOKIE);
            let got = values(&after, &header::COOKIE);
            assert!(got.len() <= 1, "{} Cookie lines forwarded", got.len());
            if sent.len() == 1 {
                assert_eq!(got, sent, "a single Cookie is forwarded as it is");
            } else if let Ok(texts) = sent
                .iter()
                .map(|v| v.to_str())
                .collect::<Result<Vec<_>, _>>()
                && !texts.is_empty()
            {
                assert_eq!(got, [&HeaderValue::from_str(&texts.join("; ")).unwrap()]);
            }
        }
    }
    let mut after = before.clone();
    teeproxy::testing::rewrite_response(&mut after);
    check_stripped(before, &after, &[], &[]);
}

fn request_ids(before: &HeaderMap) {
    let ids = RequestIds::default();
    let mut h = before.clone();
    let id = ids.ensure(&mut h);
    assert_eq!(values(&h, &teeproxy::testing::X_REQUEST_ID), [&id]);
    let b = id.as_bytes();
    assert!(
        !b.is_empty() && b.len() <= 200 && b.iter().all(u8::is_ascii_graphic),
        "insane request id {id:?}"
    );
    let sent = values(before, &teeproxy::testing::X_REQUEST_ID);
    if let [one] = sent[..]
        && !one.is_empty()
        && one.len() <= 200
        && one.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        assert_eq!(&id, one, "the client's sane request id is kept");
    }
}

// ---------------------------------------------------------------------------------------
// Config parser
// ---------------------------------------------------------------------------------------

/// The config parser. The input is read as UTF-8 (invalid sequences replaced).
///
/// Invariants:
/// 1. `Config::from_yaml` never panics: malformed YAML is an error.
/// 2. It is deterministic: the same text gives the same outcome and the same message.
/// 3. Whatever it accepts can be used: the listener and admin addresses parse, the
///    config summary renders, and the proxy (routes, clusters, shadow policies, metrics)
///    and the server build from it without panicking (they `expect` what validation
///    promised).
pub fn config_parser(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let first = Config::from_yaml(&text);
    let second = Config::from_yaml(&text);
    let config = match (first, second) {
        (Ok(c), Ok(_)) => c,
        (Err(a), Err(b)) => {
            assert_eq!(
                a.to_string(),
                b.to_string(),
                "the same text gave two errors"
            );
            return;
        }
        (a, b) => panic!("the same text parsed differently: {a:?} / {b:?}"),
    };
    let _ = config.listener_addrs();
    let _ = config.to_json().to_string();
    let _ = RequestLimits::from(&config.limits);
    // Building starts the shadow dispatchers: it needs a runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let app = App::build(config, &mut Registry::default());
        let _ = app.shadow_dispatchers();
    });
}

// ---------------------------------------------------------------------------------------
// Whole proxy
// ---------------------------------------------------------------------------------------

/// One request as a recording upstream saw it.
#[derive(Debug, Clone)]
struct Rec {
    method: Method,
    /// The request target as received (origin-form path and query).
    target: String,
    headers: HeaderMap,
    body: Bytes,
    trailers: Vec<(String, Vec<u8>)>,
    /// The body arrived whole (it did not end in an error).
    complete: bool,
}

impl Rec {
    /// The request's tag: its `X-Forwarded-For` (the proxy replaces it with the peer
    /// address, and every run uses its own peer address).
    fn tag(&self) -> Option<&[u8]> {
        let mut all = self.headers.get_all("x-forwarded-for").iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.as_bytes()),
            _ => None,
        }
    }
    /// What a shadow copy must share with its primary request.
    fn shadow_key(&self) -> (String, String, Bytes) {
        (
            self.method.to_string(),
            self.target.clone(),
            self.body.clone(),
        )
    }
    /// What identifies a complete primary request across runs.
    fn full_key(&self) -> (String, String, Bytes, Vec<(String, Vec<u8>)>) {
        let (m, t, b) = self.shadow_key();
        (m, t, b, self.trailers.clone())
    }
}

impl From<Received> for Rec {
    fn from(r: Received) -> Rec {
        let mut trailers: Vec<(String, Vec<u8>)> = r
            .trailers
            .iter()
            .flat_map(|t| t.iter())
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        trailers.sort();
        Rec {
            method: r.method,
            target: r
                .uri
                .path_and_query()
                .map_or_else(|| r.uri.to_string(), |p| p.to_string()),
            headers: r.headers,
            body: r.body,
            trailers,
            complete: r.complete,
        }
    }
}

/// An HTTP/1.1 upstream on loopback that records every request (after reading its body)
/// and answers 200 with its name as the body.
async fn recording_upstream(name: &'static str) -> FakeUpstream {
    FakeUpstream::builder()
        .http1_only()
        .anonymous()
        .body(name)
        .start()
        .await
}

/// The proxy, its upstreams and the runtime they live on, built once per process.
struct Harness {
    rt: Runtime,
    app: Arc<App>,
    registry: Registry,
    primary: FakeUpstream,
    shadow: FakeUpstream,
    /// Runs so far: each gets its own peer address.
    runs: u64,
}

/// Panics anywhere in the process (spawned tasks included, which the runtime would
/// otherwise swallow).
static PANICS: AtomicUsize = AtomicUsize::new(0);

static HARNESS: LazyLock<Mutex<Harness>> = LazyLock::new(|| {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let harness = rt.block_on(async {
        let primary = recording_upstream("primary").await;
        let candidate = recording_upstream("candidate").await;
        let yaml = format!(
            "{}x_forwarded_for: replace\naccess_log: {{ enabled: false }}\n\
             limits: {{ request_head_timeout: 10s, body_timeout: 10s, idle_timeout: 10s, write_timeout: 10s }}\n",
            crate::shadow_yaml(
                &primary.url(),
                &candidate.url(),
                "shadow_queue: 100000, shadow_max_in_flight: 64",
                "methods: any, timeout: 20s",
            )
        );
        let config = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("fuzz config: {e}\n{yaml}"));
        let mut registry = Registry::default();
        let app = Arc::new(App::build(config, &mut registry));
        (app, registry, primary, candidate)
    });
    let (app, registry, primary, shadow) = harness;
    Mutex::new(Harness {
        rt,
        app,
        registry,
        primary,
        shadow,
        runs: 0,
    })
});

/// `TEEPROXY_FUZZ_DEBUG=1` prints what the upstreams received in each run.
static DEBUG: LazyLock<bool> = LazyLock::new(|| std::env::var_os("TEEPROXY_FUZZ_DEBUG").is_some());

/// How long the proxy may take to close a connection after the client's end of input,
/// and to settle (every request and shadow copy finished) afterwards. Generous: the point
/// is to catch hangs, not slowness on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// How long the proxy may do nothing before a lingering client sends its EOF even though
/// the proxy has not read all the input. Only coverage depends on this and `IDLE_TURNS`
/// (a slow proxy gets the EOF earlier), not any verdict.
const QUIET: Duration = Duration::from_millis(2);

use crate::h2::PREFACE as H2_PREFACE;
use crate::upstream::{FakeUpstream, Received};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// HTTP/1 (the input differs from the HTTP/2 preface within its first 24 bytes).
    H1,
    /// HTTP/2 prior knowledge (the input starts with the whole preface).
    H2,
    /// A proper prefix of the preface: nothing is served.
    Undecided,
}

fn proto_of(input: &[u8]) -> Proto {
    if input.starts_with(H2_PREFACE) {
        Proto::H2
    } else if H2_PREFACE.starts_with(input) {
        Proto::Undecided
    } else {
        Proto::H1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Write the input, read until the proxy has been silent for `QUIET`, then shut the
    /// write side down (EOF) and read the answer to its end.
    Linger,
    /// Write the input, shut the write side down (EOF) at once, read the answer to its
    /// end. hyper takes an EOF right after a complete request for a client that left,
    /// and cancels that request.
    Shutdown,
    /// Write the input and drop the connection at once, reading nothing.
    Abort,
}

/// The proxy's side of the in-memory connection, counting the bytes the proxy has read.
struct Watched<S> {
    inner: S,
    consumed: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            self.consumed.fetch_add(n, Ordering::SeqCst);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Everything that moves while the proxy works on a connection.
/// The shadow policy's and queue's counters.
fn shadow(h: &Harness) -> Activity {
    h.app.activity("all", "candidate")
}

fn activity(h: &Harness, consumed: usize) -> [u64; 10] {
    let a = shadow(h);
    [
        consumed as u64,
        a.requests_in_flight as u64,
        h.primary.in_progress() as u64,
        h.shadow.in_progress() as u64,
        h.primary.count() as u64,
        h.shadow.count() as u64,
        a.offered,
        a.sent,
        a.dropped,
        a.shadow_in_flight as u64,
    ]
}

/// Scheduler turns (each polls the I/O driver) with nothing moving, after the proxy has
/// read the whole input, that count as the proxy being idle.
const IDLE_TURNS: u32 = 16;

/// Reads the proxy's answer until the proxy closes the connection, has read all the input
/// and then does nothing for `IDLE_TURNS` turns, or does nothing for `QUIET`.
async fn linger(h: &Harness, rd: &mut ReadHalf<DuplexStream>, consumed: &AtomicUsize, len: usize) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut last = None;
    let mut same = 0;
    let mut since = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout(Duration::ZERO, rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {
                same = 0;
                since = tokio::time::Instant::now();
                continue;
            }
            Err(_) => {}
        }
        let read = consumed.load(Ordering::SeqCst);
        let now = activity(h, read);
        if last == Some(now) {
            same += 1;
        } else {
            same = 0;
            since = tokio::time::Instant::now();
            last = Some(now);
        }
        if (same >= IDLE_TURNS && read >= len) || since.elapsed() >= QUIET {
            return;
        }
        if same < IDLE_TURNS {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What one run left at the upstreams, for this run's tag only.
struct RunResult {
    proto: Proto,
    primary: Vec<Rec>,
}

/// Raw client bytes through the whole proxy.
///
/// Setup (once per process): a recording primary and a recording shadow on loopback, a
/// proxy whose single route mirrors every method to the shadow, `X-Forwarded-For:
/// replace`, on a current-thread runtime. Each input is served three times, serialised,
/// each run as one connection over `tokio::io::duplex` with its own peer address (so its
/// own `X-Forwarded-For`: the tag that attributes upstream requests to the run):
///
/// - A: the input; once the proxy is idle (see [`linger`]), EOF; the answer is read to
///   its end (lingering lets the last complete request be served: hyper cancels a
///   request followed at once by the client's EOF);
/// - B: the same with the input's last byte dropped;
/// - C: the input, then at once either EOF (the answer read to its end) or the connection
///   dropped without reading anything, chosen by a hash of the input.
///
/// After each run the harness waits until the proxy has settled (see [`settle`]): the
/// connection task has ended, the upstreams are reading nothing, no request is in flight,
/// and every shadow copy offered was dropped or sent and answered. Not closing the
/// connection or not settling within `DEADLINE` is a failure (a hang, or a gauge that
/// never returns to zero), and so is a panic anywhere, spawned tasks included.
///
/// Invariants, per run:
/// 1. No upstream request (primary or shadow, of any run) carries both `Content-Length`
///    and `Transfer-Encoding`, a repeated `Content-Length`, a `Transfer-Encoding` other
///    than one `chunked`, `Keep-Alive`, `Proxy-Connection`, `TE`, `HTTP2-Settings`,
///    `Expect`, or `Connection` / `Upgrade` (except exactly `Connection: upgrade` and
///    `Upgrade: websocket` on a GET to the primary: a relayed WebSocket handshake); each
///    carries exactly one `X-Forwarded-For`.
/// 2. The shadow only gets complete requests: every shadow request of the run arrived
///    whole, and the run's shadow requests, as (method, path and query, body), are a
///    sub-multiset of the primary's complete requests of the same run. No shadow request
///    of an earlier run arrives late, and the shadow received exactly as many requests
///    as the proxy counted sent.
/// 3. HTTP/2 input: the body of every complete primary request is the DATA of a stream
///    that the client ended (END_STREAM) in the bytes it sent (see [`h2_ended_bodies`]).
///
/// And across runs, for HTTP/1 input:
/// 4. The primary never gets a request the client did not complete: the complete primary
///    requests of B, as (method, path and query, body, trailers), are a sub-multiset of
///    those of A. Why this is sound: a request complete within B's bytes is complete, and
///    identical, within A's bytes; in A at least one more byte follows it, so hyper (which
///    serves HTTP/1 requests one after the other and looks for the client's EOF only when
///    nothing is buffered) never cancels it, and the primary records it before answering,
///    that is before A's connection ends. A request that is not complete in B (it needed
///    the dropped byte, or the proxy completed it at EOF) either is absent from B, or was
///    forwarded as complete although its last byte never came: B then holds a request A
///    does not have in that form (with the byte, or with more of the body), unless the
///    dropped byte was framing that adds nothing to the body, which the fuzzer's other
///    inputs cover. Requests recorded late (a request cancelled by the client's EOF may
///    reach the primary after its run was checked) are left out of every run's sets,
///    which can only hide a failure, never invent one.
pub fn whole_proxy(data: &[u8]) {
    let mut h = HARNESS.lock().unwrap_or_else(PoisonError::into_inner);
    let panics = PANICS.load(Ordering::SeqCst);
    let a = run(&mut h, data, Close::Linger);
    if let Some((_, short)) = data.split_last() {
        let b = run(&mut h, short, Close::Linger);
        if a.proto == Proto::H1 && b.proto == Proto::H1 {
            let whole = multiset(a.primary.iter().filter(|r| r.complete).map(Rec::full_key));
            let cut = multiset(b.primary.iter().filter(|r| r.complete).map(Rec::full_key));
            for (key, n) in &cut {
                assert!(
                    whole.get(key).copied().unwrap_or(0) >= *n,
                    "the primary got a complete request only when the client's last byte was missing \
                     (the client never completed it): {key:?}\nwhole input: {:?}\ncut input: {:?}",
                    complete_summary(&a.primary),
                    complete_summary(&b.primary),
                );
            }
        }
    }
    let last = if fnv(data) & 1 == 0 {
        Close::Shutdown
    } else {
        Close::Abort
    };
    run(&mut h, data, last);
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics,
        "a task panicked while serving this input"
    );
}

fn complete_summary(recs: &[Rec]) -> Vec<String> {
    recs.iter()
        .map(|r| {
            format!(
                "{} {} {:?} complete={}",
                r.method,
                r.target,
                String::from_utf8_lossy(&r.body),
                r.complete
            )
        })
        .collect()
}

fn multiset<K: std::hash::Hash + Eq>(keys: impl Iterator<Item = K>) -> HashMap<K, usize> {
    let mut m = HashMap::new();
    for k in keys {
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

fn run(h: &mut Harness, input: &[u8], close: Close) -> RunResult {
    h.runs += 1;
    let ip = Ipv6Addr::from((0xfd00_u128 << 112) | u128::from(h.runs));
    let tag = ip.to_string();
    let peer = SocketAddr::new(IpAddr::V6(ip), 40000);
    let sent_before = shadow(h).sent;
    let app = h.app.clone();
    let mut timing = [Duration::ZERO; 3];
    h.rt.block_on(async {
        let t0 = tokio::time::Instant::now();
        let (client, server_io) = tokio::io::duplex(input.len().max(64 * 1024));
        let consumed = Arc::new(AtomicUsize::new(0));
        let server_io = Watched {
            inner: server_io,
            consumed: consumed.clone(),
        };
        let serve = tokio::spawn(async move {
            app.serve_stream(server_io, peer).await;
        });
        match close {
            Close::Shutdown | Close::Linger => {
                let (mut rd, mut wr) = tokio::io::split(client);
                let talk = async {
                    // The duplex buffer holds the whole input: this write never waits.
                    let _ = wr.write_all(input).await;
                    if close == Close::Linger {
                        linger(h, &mut rd, &consumed, input.len()).await;
                    }
                    let _ = wr.shutdown().await;
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(1..) = rd.read(&mut buf).await {}
                };
                assert!(
                    tokio::time::timeout(DEADLINE, talk).await.is_ok(),
                    "the proxy did not close the connection within {DEADLINE:?} of the client's EOF"
                );
            }
            Close::Abort => {
                let mut client = client;
                let _ = client.write_all(input).await;
                drop(client);
            }
        }
        timing[0] = t0.elapsed();
        match tokio::time::timeout(DEADLINE, serve).await {
            Err(_) => panic!("the connection task did not end within {DEADLINE:?}"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
        }
        timing[1] = t0.elapsed();
        settle(h).await;
        timing[2] = t0.elapsed();
    });
    let primary_all: Vec<Rec> = h
        .primary
        .take_received()
        .into_iter()
        .map(Rec::from)
        .collect();
    let shadow_all: Vec<Rec> = h
        .shadow
        .take_received()
        .into_iter()
        .map(Rec::from)
        .collect();
    for r in &primary_all {
        check_upstream_request(r, false);
    }
    for r in &shadow_all {
        check_upstream_request(r, true);
    }
    let (primary, late): (Vec<Rec>, Vec<Rec>) = primary_all
        .into_iter()
        .partition(|r| r.tag() == Some(tag.as_bytes()));
    for r in &shadow_all {
        assert_eq!(
            r.tag(),
            Some(tag.as_bytes()),
            "a shadow request arrived after its run had settled: {r:?}"
        );
        assert!(r.complete, "the shadow got an incomplete body: {r:?}");
    }
    let sent = shadow(h).sent - sent_before;
    assert_eq!(
        shadow_all.len() as u64,
        sent,
        "the proxy counted {sent} shadow copies sent, the shadow received {}",
        shadow_all.len()
    );
    let mut complete = multiset(primary.iter().filter(|r| r.complete).map(Rec::shadow_key));
    for s in &shadow_all {
        let key = s.shadow_key();
        match complete.get_mut(&key) {
            Some(n) if *n > 0 => *n -= 1,
            _ => panic!(
                "the shadow got a request the primary did not get complete: {key:?}\nprimary: {:?}",
                complete_summary(&primary)
            ),
        }
    }
    let proto = proto_of(input);
    if *DEBUG {
        for r in &late {
            eprintln!(
                "late primary request (an earlier run's): {:?}",
                complete_summary(std::slice::from_ref(r))
            );
        }
        eprintln!(
            "run {} ({proto:?}, {close:?}, {} bytes, {timing:?}): primary {:?}, shadow {:?}",
            h.runs,
            input.len(),
            complete_summary(&primary),
            complete_summary(&shadow_all)
        );
        for line in teeproxy::testing::encode_metrics(&h.registry).lines() {
            if line.starts_with("teeproxy_shadow_dropped_total{") && !line.ends_with(" 0") {
                eprintln!("  {line}");
            }
        }
    }
    if proto == Proto::H2 {
        let ended = h2_ended_bodies(input);
        for r in primary.iter().filter(|r| r.complete) {
            assert!(
                ended.iter().any(|b| b[..] == r.body[..]),
                "the primary got a complete HTTP/2 request whose body no ended stream carries: {} {} {:?}",
                r.method,
                r.target,
                r.body
            );
        }
    }
    RunResult { proto, primary }
}

/// Waits until nothing is in flight and every shadow copy is accounted for and answered:
/// the upstreams are reading no request, no client request is in the handler, every copy
/// offered was sent or dropped, and the shadow queue, in-flight and held-bytes gauges are
/// at zero, twice in a row with a scheduler turn between. A copy counted sent but whose
/// task has not started yet shows in no gauge; the turn runs that task (spawned before
/// the turn, so it is polled first), whose in-flight gauge then spoils the second look.
/// The gauge drops only after the exchange's outcome, so by then the shadow has recorded
/// the request if it ever got it.
async fn settle(h: &Harness) {
    let start = tokio::time::Instant::now();
    let mut turns = 0u32;
    let mut quiet_before = false;
    loop {
        turns += 1;
        let sent = shadow(h).sent;
        let reading = h.primary.in_progress() + h.shadow.in_progress();
        let a = shadow(h);
        let quiet = reading == 0
            && a.requests_in_flight == 0
            && a.offered == sent + a.dropped
            && a.queue_depth == 0
            && a.shadow_in_flight == 0
            && a.held_bytes == 0;
        if quiet && quiet_before {
            return;
        }
        quiet_before = quiet;
        assert!(
            start.elapsed() < DEADLINE,
            "the proxy did not settle within {DEADLINE:?}: upstreams reading {reading}, in flight {}, \
             offered {}, sent {sent}, dropped {}, queued {}, shadow in flight {}, held bytes {}",
            a.requests_in_flight,
            a.offered,
            a.dropped,
            a.queue_depth,
            a.shadow_in_flight,
            a.held_bytes,
        );
        if quiet || turns < 256 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Invariant 1 of [`whole_proxy`], for one request an upstream received.
fn check_upstream_request(r: &Rec, shadow: bool) {
    let h = &r.headers;
    let cl = h.get_all(header::CONTENT_LENGTH).iter().count();
    let te: Vec<&HeaderValue> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    assert!(
        cl == 0 || te.is_empty(),
        "an upstream got both Content-Length and Transfer-Encoding: {r:?}"
    );
    assert!(
        cl <= 1,
        "an upstream got {cl} Content-Length headers: {r:?}"
    );
    assert!(
        te.is_empty() || (te.len() == 1 && te[0] == "chunked"),
        "an upstream got Transfer-Encoding {te:?}: {r:?}"
    );
    for name in [
        "keep-alive",
        "proxy-connection",
        "te",
        "http2-settings",
        "expect",
    ] {
        assert!(!h.contains_key(name), "an upstream got {name}: {r:?}");
    }
    // The one exception: a WebSocket handshake relayed to the primary, which the proxy
    // sends with exactly `Connection: upgrade` and `Upgrade: websocket`.
    let websocket = !shadow
        && r.method == Method::GET
        && values(h, &header::CONNECTION) == [&HeaderValue::from_static("upgrade")]
        && values(h, &header::UPGRADE)
            .iter()
            .map(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
            .eq([true]);
    if !websocket {
        for name in [header::CONNECTION, header::UPGRADE] {
            assert!(
                !h.contains_key(&name),
                "the {} got {name}: {r:?}",
                if shadow { "shadow" } else { "primary" }
            );
        }
    }
    assert!(
        r.tag().is_some(),
        "an upstream request without one X-Forwarded-For: {r:?}"
    );
}

/// The bodies of the HTTP/2 streams the client ended (END_STREAM on HEADERS or DATA) in
/// `input` (which starts with the preface), each the stream's DATA payloads, padding
/// removed, up to its END_STREAM.
///
/// An over-approximation of what a server can complete, which is what makes invariant 3
/// sound: frames are read exactly as RFC 9113 defines them (24-bit length, type, flags,
/// 31-bit stream id; DATA padding), a frame cut off by the end of input is not read (no
/// server can act on it), and invalid frames a server would refuse, ending the connection
/// before any later frame counts, are read anyway: they can only add streams or bodies
/// the server never completes. A stream's body stops at its END_STREAM, whatever follows.
pub fn h2_ended_bodies(input: &[u8]) -> Vec<Vec<u8>> {
    use crate::h2::{DATA, END_STREAM, HEADERS, PADDED, parse_frames};
    // Stream id -> (body so far, ended).
    let mut streams: BTreeMap<u32, (Vec<u8>, bool)> = BTreeMap::new();
    let (frames, _) = parse_frames(input.get(H2_PREFACE.len()..).unwrap_or_default());
    for f in frames {
        if f.kind != DATA && f.kind != HEADERS {
            continue;
        }
        let (body, ended) = streams.entry(f.stream).or_default();
        if *ended {
            continue;
        }
        if f.kind == DATA {
            let data = if f.has(PADDED) {
                match f.payload.split_first() {
                    Some((&pad, rest)) if usize::from(pad) <= rest.len() => {
                        &rest[..rest.len() - usize::from(pad)]
                    }
                    // Padding longer than the frame: a connection error, nothing counts.
                    _ => continue,
                }
            } else {
                &f.payload[..]
            };
            body.extend_from_slice(data);
        }
        if f.has(END_STREAM) {
            *ended = true;
        }
    }
    streams
        .into_values()
        .filter(|(_, ended)| *ended)
        .map(|(body, _)| body)
        .collect()
}
