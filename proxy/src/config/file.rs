//! The config file as written: serde types with source places, and their defaults. `check`
//! holds what the types alone cannot say; `build` turns a checked file into the typed
//! runtime `Config`. Nothing outside `config` sees these types.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::units::{Dur, Pct, Size};
use super::{CompareBody, ForwardedMode, HostMode, Protocol, SampleKey};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    /// Where clients connect: one or more TCP listeners (HTTP/1.1 and HTTP/2 on each: h2c,
    /// or over TLS with `tls`).
    pub(super) listeners: Vec<ListenerFile>,
    /// The admin listener (metrics, health).
    #[serde(default)]
    pub(super) admin: AdminFile,
    /// Upstream clusters by name.
    pub(super) clusters: BTreeMap<String, ClusterFile>,
    /// Ordered routes: the first that matches serves the request.
    pub(super) routes: Vec<RouteFile>,
    /// LimitsFile on what clients may send.
    #[serde(default)]
    pub(super) limits: LimitsFile,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    #[serde(default = "default_drain_timeout")]
    pub(super) drain_timeout: Dur,
    /// After SIGTERM/SIGINT, how long `/ready` answers 503 while requests are still
    /// accepted and served (so a load balancer takes the instance out first), before the
    /// drain starts.
    #[serde(default = "default_drain_delay")]
    pub(super) drain_delay: Dur,
    /// One log line per request.
    #[serde(default)]
    pub(super) access_log: AccessLogFile,
    /// What to do with a client's `X-Forwarded-For`: `append` (default) or `replace`.
    #[serde(default)]
    pub(super) x_forwarded_for: ForwardedMode,
    /// After the primary drain, how long shadow queues get to empty before the rest is
    /// abandoned (counted `shutdown`).
    #[serde(default = "default_shadow_drain")]
    pub(super) shadow_drain: Dur,
    /// Header added to every shadow request, with the shadow cluster's name as value.
    /// An empty string adds nothing.
    #[serde(default = "default_shadow_header")]
    pub(super) shadow_header: Spanned<String>,
    /// Recent mismatches kept for `/api/mismatches` and the dashboard.
    #[serde(default = "default_mismatch_ring")]
    pub(super) mismatch_ring: Spanned<usize>,
    // Chaos and capacity: the amplified copy's index header, W3C trace context.
    /// Header carrying an amplified copy's index (1-based) when `amplify` > 1; "" for none.
    #[serde(default = "default_copy_header")]
    pub(super) copy_header: Spanned<String>,
    /// W3C trace context (`traceparent`/`tracestate`) handling.
    #[serde(default)]
    pub(super) trace_context: TraceContextFile,
}

/// W3C trace context: whether a request without `traceparent` gets one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TraceContextFile {
    #[serde(default)]
    pub(super) generate: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerFile {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    /// TLS termination: without it the listener speaks plain HTTP/1.1 and h2c.
    #[serde(default)]
    pub(super) tls: Option<ListenerTlsFile>,
}

/// A TLS listener: one certificate (`cert`, `key`) or several chosen by SNI
/// (`certificates`, `default`), optional client certificates, the handshake limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerTlsFile {
    #[serde(default)]
    pub(super) cert: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) key: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) certificates: Option<Spanned<Vec<CertificateFile>>>,
    /// The certificate for a client that sends no SNI or an unknown name: an index into
    /// `certificates` or one of its server names. Default: the first.
    #[serde(default)]
    pub(super) default: Option<Spanned<DefaultCertificate>>,
    /// PEM file of the CAs that client certificates must chain to.
    #[serde(default)]
    pub(super) client_ca: Option<Spanned<String>>,
    /// `required` (default when `client_ca` is set) or `optional`.
    #[serde(default)]
    pub(super) client_auth: Option<Spanned<super::ClientAuth>>,
    #[serde(default = "default_handshake_timeout")]
    pub(super) handshake_timeout: Spanned<Dur>,
}

fn default_handshake_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(10))
}

/// One certificate of a TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertificateFile {
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
    /// SNI names it serves (`example.com`, `*.example.com`); none: only as the default.
    #[serde(default)]
    pub(super) server_names: Vec<Spanned<String>>,
}

/// `default:` as an index or a server name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum DefaultCertificate {
    Index(usize),
    Name(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    #[serde(default = "default_admin_address")]
    pub(super) address: Spanned<String>,
    /// A file holding the bearer token that mutating and content-showing endpoints need.
    #[serde(default)]
    pub(super) token_file: Option<Spanned<String>>,
    /// A second listener that serves only `/metrics`, `/live` and `/ready`.
    #[serde(default)]
    pub(super) metrics_address: Option<Spanned<String>>,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            address: default_admin_address(),
            token_file: None,
            metrics_address: None,
        }
    }
}

fn default_admin_address() -> Spanned<String> {
    unspanned("127.0.0.1:9901".to_string())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFile {
    /// `http://host:port` or `https://host:port` URLs, load-balanced round-robin.
    pub(super) endpoints: Vec<Spanned<String>>,
    /// TCP (and TLS) connect limit; failure -> 502.
    #[serde(default = "default_connect_timeout")]
    pub(super) connect_timeout: Spanned<Dur>,
    /// From the end of the request body (sent in full) to the response head; past it -> 504.
    #[serde(default = "default_timeout")]
    pub(super) timeout: Spanned<Dur>,
    /// `keep` the client's Host (default) or `rewrite` it to the endpoint's authority.
    #[serde(default)]
    pub(super) host: HostMode,
    /// Pooled idle connections are closed after this long.
    #[serde(default = "default_idle_timeout")]
    pub(super) idle_timeout: Spanned<Dur>,
    /// Idle connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub(super) max_idle_per_endpoint: usize,
    /// An endpoint that refuses a connection is skipped for this long while others remain.
    #[serde(default = "default_ejection_time")]
    pub(super) ejection_time: Spanned<Dur>,
    /// As a shadow: jobs waiting to be sent; when full, new copies are dropped `queue_full`.
    #[serde(default = "default_shadow_queue")]
    pub(super) shadow_queue: Spanned<usize>,
    /// As a shadow: requests in flight at once.
    #[serde(default = "default_shadow_in_flight")]
    pub(super) shadow_max_in_flight: Spanned<usize>,
    /// As a shadow: body bytes held by queued and in-flight copies together; a copy that
    /// would pass it is dropped `queue_full`.
    #[serde(default = "default_shadow_max_bytes")]
    pub(super) shadow_max_bytes: Spanned<Size>,
    // Endpoint health and discovery.
    /// Active health checks of every endpoint; absent: none.
    #[serde(default)]
    pub(super) health: Option<Spanned<HealthFile>>,
    /// Endpoint host names resolved this often (every address is an endpoint); absent:
    /// resolved by the connector on each new connection.
    #[serde(default)]
    pub(super) resolve: Option<Spanned<Dur>>,
    /// `http1` (default), `h2c` (HTTP/2 prior knowledge, `http://`), `h2` (ALPN over
    /// TLS, `https://`) or `auto` (ALPN over TLS, HTTP/1.1 over TCP).
    #[serde(default)]
    pub(super) protocol: Option<Spanned<Protocol>>,
    /// HTTP/2 connection settings.
    #[serde(default)]
    pub(super) http2: Http2File,
    /// TLS to the `https://` endpoints: a private CA, a server name, a client certificate.
    #[serde(default)]
    pub(super) tls: Option<Spanned<ClusterTlsFile>>,
}

/// A cluster's upstream TLS; every key optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterTlsFile {
    /// PEM file of the CA certificates trusted instead of the built-in roots.
    #[serde(default)]
    pub(super) ca: Option<Spanned<String>>,
    /// The name sent as SNI and checked in the certificate; default: the endpoint's host.
    #[serde(default)]
    pub(super) server_name: Option<Spanned<String>>,
    /// PEM client certificate (chain) for upstreams that require one (mTLS).
    #[serde(default)]
    pub(super) cert: Option<Spanned<String>>,
    /// PEM private key of `cert`.
    #[serde(default)]
    pub(super) key: Option<Spanned<String>>,
    /// Skip verifying the upstream's certificate (logged as a warning).
    #[serde(default)]
    pub(super) insecure_skip_verify: bool,
}

/// A cluster's HTTP/2 connection settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Http2File {
    #[serde(default = "default_h2_keep_alive_interval")]
    pub(super) keep_alive_interval: Spanned<Dur>,
    #[serde(default = "default_h2_keep_alive_timeout")]
    pub(super) keep_alive_timeout: Spanned<Dur>,
    #[serde(default = "default_h2_connection_window")]
    pub(super) initial_connection_window: Spanned<Size>,
    #[serde(default = "default_h2_stream_window")]
    pub(super) initial_stream_window: Spanned<Size>,
}

impl Default for Http2File {
    fn default() -> Self {
        Http2File {
            keep_alive_interval: default_h2_keep_alive_interval(),
            keep_alive_timeout: default_h2_keep_alive_timeout(),
            initial_connection_window: default_h2_connection_window(),
            initial_stream_window: default_h2_stream_window(),
        }
    }
}

fn default_h2_keep_alive_interval() -> Spanned<Dur> {
    unspanned(Dur::secs(30))
}
fn default_h2_keep_alive_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(10))
}
fn default_h2_connection_window() -> Spanned<Size> {
    unspanned(Size::mib(4))
}
fn default_h2_stream_window() -> Spanned<Size> {
    unspanned(Size::mib(1))
}

/// A cluster's active health checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthFile {
    #[serde(default = "default_health_path")]
    pub(super) path: String,
    #[serde(default = "default_health_interval")]
    pub(super) interval: Dur,
    #[serde(default = "default_health_timeout")]
    pub(super) timeout: Dur,
    /// Successes in a row that make an unhealthy endpoint healthy again.
    #[serde(default = "default_health_healthy")]
    pub(super) healthy: u32,
    /// Failures in a row that make an endpoint unhealthy.
    #[serde(default = "default_health_unhealthy")]
    pub(super) unhealthy: u32,
}

pub(super) fn default_health_path() -> String {
    "/healthz".to_string()
}
pub(super) fn default_health_interval() -> Dur {
    Dur::secs(5)
}
pub(super) fn default_health_timeout() -> Dur {
    Dur::secs(1)
}
pub(super) fn default_health_healthy() -> u32 {
    2
}
pub(super) fn default_health_unhealthy() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    pub(super) name: Spanned<String>,
    #[serde(default, rename = "match")]
    pub(super) match_: MatchFile,
    /// The cluster that serves the route.
    pub(super) primary: Spanned<String>,
    /// Clusters that get a fire-and-forget copy of the route's requests.
    #[serde(default)]
    pub(super) shadows: Vec<ShadowFile>,
    /// Path templates (`/users/{id}`) tried before automatic normalisation.
    #[serde(default)]
    pub(super) paths: Vec<Spanned<String>>,
    /// Distinct path templates tracked for the route; past it, paths are `{other}`.
    #[serde(default = "default_max_paths")]
    pub(super) max_paths: Spanned<usize>,
    /// WebSocket upgrades: relayed to the primary (never mirrored) when true; answered
    /// 501 when false.
    #[serde(default = "yes")]
    pub(super) websocket: bool,
    /// A flag on any of this route's paths fails the whole verdict (`/api/verdict`).
    #[serde(default)]
    pub(super) critical: bool,
    /// When a path is called slower, different or failing.
    #[serde(default)]
    pub(super) verdict: VerdictFile,
}

/// How the route's verdicts are decided.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerdictFile {
    /// The sliding window verdicts are computed over (besides since start).
    #[serde(default = "default_verdict_window")]
    pub(super) window: Spanned<Dur>,
    /// Paired observations a path needs before any flag.
    #[serde(default = "default_min_pairs")]
    pub(super) min_pairs: Spanned<u64>,
    /// Confidence of every interval and test (anytime-valid), in percent.
    #[serde(default = "default_confidence")]
    pub(super) confidence: Spanned<Pct>,
    /// The typical shadow/primary time ratio must be above 1 + this (`slower`) or below
    /// 1 / (1 + this) (`faster`).
    #[serde(default = "default_slower_by")]
    pub(super) slower_by: Spanned<Pct>,
    /// The shadow's mismatch rate (above the noise a baseline shows) must exceed this.
    #[serde(default = "default_different_by")]
    pub(super) different_by: Spanned<Pct>,
    /// The shadow's failure rate must exceed the primary's (or the baseline's) by this.
    #[serde(default = "default_errors_by")]
    pub(super) errors_by: Spanned<Pct>,
    /// Thresholds for some path templates, overriding the route's.
    #[serde(default)]
    pub(super) paths: BTreeMap<String, PathThresholdsFile>,
}

impl Default for VerdictFile {
    fn default() -> Self {
        VerdictFile {
            window: default_verdict_window(),
            min_pairs: default_min_pairs(),
            confidence: default_confidence(),
            slower_by: default_slower_by(),
            different_by: default_different_by(),
            errors_by: default_errors_by(),
            paths: BTreeMap::new(),
        }
    }
}

/// Thresholds for one path template; absent keys take the route's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PathThresholdsFile {
    #[serde(default)]
    pub(super) slower_by: Option<Spanned<Pct>>,
    #[serde(default)]
    pub(super) different_by: Option<Spanned<Pct>>,
    #[serde(default)]
    pub(super) errors_by: Option<Spanned<Pct>>,
}

fn default_verdict_window() -> Spanned<Dur> {
    unspanned(Dur::secs(300))
}
fn default_min_pairs() -> Spanned<u64> {
    unspanned(50)
}
fn default_confidence() -> Spanned<Pct> {
    unspanned(Pct(99.0))
}
fn default_slower_by() -> Spanned<Pct> {
    unspanned(Pct(10.0))
}
fn default_different_by() -> Spanned<Pct> {
    unspanned(Pct(1.0))
}
fn default_errors_by() -> Spanned<Pct> {
    unspanned(Pct(1.0))
}

/// One shadow policy of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShadowFile {
    pub(super) cluster: Spanned<String>,
    /// Share of the route's (eligible) requests copied, 0 to 100, decimals allowed.
    #[serde(default = "default_percent")]
    pub(super) percent: Spanned<f64>,
    /// Decide per key (a header or cookie value) instead of per request: the same key is
    /// always in or always out. Requests without the key are decided by their request id.
    #[serde(default)]
    pub(super) sample_key: Option<SampleKey>,
    /// Methods copied: a list, or `any`. Default: GET, HEAD, OPTIONS.
    #[serde(default)]
    pub(super) methods: ShadowMethodsFile,
    /// Larger bodies: the primary is served in full, the copy dropped `body_too_large`.
    #[serde(default = "default_shadow_max_body")]
    pub(super) max_body: Spanned<Size>,
    /// The shadow request's own limit, to the end of its response.
    #[serde(default = "default_shadow_timeout")]
    pub(super) timeout: Spanned<Dur>,
    /// `keep` (default), `rewrite` (the endpoint's host:port), a literal host, or
    /// `{ suffix: "-shadow" }` (appended to the client's host name).
    #[serde(default)]
    pub(super) host: ShadowHostFile,
    /// Header changes for the shadow only.
    #[serde(default)]
    pub(super) headers: HeaderOpsFile,
    /// How the shadow's response is compared with the primary's.
    #[serde(default)]
    pub(super) compare: CompareFile,
    // Chaos and capacity: amplification and the rate cap.
    /// Copies per sampled request, 1 to 10 (2.5: two, and a third half the time).
    #[serde(default = "default_amplify")]
    pub(super) amplify: Spanned<f64>,
    /// Allows `amplify` > 1 on a shadow whose `methods` let writes through.
    #[serde(default)]
    pub(super) amplify_writes: bool,
    /// Copies per second at most (a token bucket); absent: no cap.
    #[serde(default)]
    pub(super) max_rps: Option<Spanned<f64>>,
    /// The bucket's size in copies; default max(1, max_rps).
    #[serde(default)]
    pub(super) max_burst: Option<Spanned<f64>>,
    /// Exchanges written to a JSON-lines file (for `loadgen replay`).
    #[serde(default)]
    pub(super) record: Option<RecordFile>,
}

/// Recording a shadow's exchanges to a JSON-lines file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordFile {
    /// The file; rotated to `<path>.1`, `<path>.2`, ...
    pub(super) path: Spanned<String>,
    /// Percent of the exchanged copies recorded, 0 to 100, decimals allowed.
    #[serde(default = "default_percent")]
    pub(super) sample: Spanned<f64>,
    /// Size of one file before it is rotated.
    #[serde(default = "default_record_max_bytes")]
    pub(super) max_bytes: Spanned<Size>,
    /// Rotated files kept.
    #[serde(default = "default_record_rotate")]
    pub(super) rotate: Spanned<usize>,
    /// Header names and JSON pointers whose values are written as `[redacted]`.
    #[serde(default)]
    pub(super) redact: Vec<String>,
    /// Lines waiting for the writer; past it lines are dropped (`record_full`).
    #[serde(default = "default_record_queue")]
    pub(super) queue: Spanned<usize>,
}

fn default_record_max_bytes() -> Spanned<Size> {
    unspanned(Size::mib(64))
}
fn default_record_rotate() -> Spanned<usize> {
    unspanned(3)
}
fn default_record_queue() -> Spanned<usize> {
    unspanned(1024)
}

/// Response comparison for one shadow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CompareFile {
    /// Statuses must be equal.
    #[serde(default = "yes")]
    pub(super) status: bool,
    /// These headers must be equal (absent on both sides counts as equal).
    #[serde(default = "default_compare_headers")]
    pub(super) headers: Vec<String>,
    /// `off`, `exact` (bytes) or `json` (parsed values, key order ignored).
    #[serde(default)]
    pub(super) body: CompareBody,
    /// JSON pointers left out of `json` comparisons.
    #[serde(default)]
    pub(super) ignore: Vec<String>,
    /// JSON pointers and header names whose values kept mismatch examples show as
    /// `[redacted]`.
    #[serde(default)]
    pub(super) redact: Vec<String>,
    /// Bodies larger than this are not compared (counted `skipped`, `body_too_large`).
    #[serde(default = "default_compare_max_body")]
    pub(super) max_body: Spanned<Size>,
    /// A cluster running the primary's version: it gets the same requests as this shadow,
    /// and its differences from the primary are learned as noise.
    #[serde(default)]
    pub(super) baseline: Option<Spanned<String>>,
}

impl Default for CompareFile {
    fn default() -> Self {
        CompareFile {
            status: true,
            headers: default_compare_headers(),
            body: CompareBody::Off,
            ignore: Vec::new(),
            redact: Vec::new(),
            max_body: default_compare_max_body(),
            baseline: None,
        }
    }
}

/// `any`, or a list of methods.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum ShadowMethodsFile {
    Keyword(String),
    List(Vec<String>),
}

impl Default for ShadowMethodsFile {
    fn default() -> Self {
        ShadowMethodsFile::List(vec!["GET".into(), "HEAD".into(), "OPTIONS".into()])
    }
}

/// The shadow's Host: `keep`, `rewrite`, a literal, or `{ suffix: ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum ShadowHostFile {
    Word(String),
    Suffix { suffix: String },
}

impl Default for ShadowHostFile {
    fn default() -> Self {
        ShadowHostFile::Word("keep".into())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderOpsFile {
    /// Headers set (replacing any the client sent).
    #[serde(default)]
    pub(super) set: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub(super) remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MatchFile {
    #[serde(default = "default_prefix")]
    pub(super) path_prefix: Spanned<String>,
    /// Exact host (port ignored, case-insensitive); absent: any host.
    #[serde(default)]
    pub(super) host: Option<Spanned<String>>,
    /// Methods; absent: any method.
    #[serde(default)]
    pub(super) methods: Option<Vec<Spanned<String>>>,
    /// Only gRPC calls (`content-type: application/grpc*`) when true.
    #[serde(default)]
    pub(super) grpc: bool,
    /// Only requests on a TLS connection whose verified client certificate has this
    /// subject (as the access log writes it: `CN=alice, O=Example`).
    #[serde(default)]
    pub(super) client_subject: Option<Spanned<String>>,
}

impl Default for MatchFile {
    fn default() -> Self {
        MatchFile {
            path_prefix: default_prefix(),
            host: None,
            methods: None,
            grpc: false,
            client_subject: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsFile {
    /// All request header lines together; over -> 431.
    #[serde(default = "default_max_header_bytes")]
    pub(super) max_header_bytes: Spanned<Size>,
    /// Number of request headers; over -> 431.
    #[serde(default = "default_max_headers")]
    pub(super) max_headers: Spanned<usize>,
    /// Request target length; over -> 414.
    #[serde(default = "default_max_uri_bytes")]
    pub(super) max_uri_bytes: Spanned<Size>,
    /// From accept, the first request head (or the HTTP/2 preface) must be complete
    /// within this; each later HTTP/1 head, from its first byte (keep-alive idle time is
    /// `idle_timeout`'s). Past it the connection is closed.
    #[serde(default = "default_head_timeout")]
    pub(super) request_head_timeout: Spanned<Dur>,
    /// HTTP/2 streams open at once per connection.
    #[serde(default = "default_h2_streams")]
    pub(super) max_concurrent_streams: Spanned<u32>,
    /// Longest wait for the next piece of a request body; past it the upstream request
    /// is aborted, nothing is mirrored, and the client gets 408.
    #[serde(default = "default_body_timeout")]
    pub(super) body_timeout: Spanned<Dur>,
    /// Client connections open at once per listener; at the cap, accepting pauses.
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: Spanned<usize>,
    /// A connection with no request in progress is closed after this long (HTTP/1:
    /// closed; HTTP/2: GOAWAY).
    #[serde(default = "default_client_idle_timeout")]
    pub(super) idle_timeout: Spanned<Dur>,
    /// Longest a response write may wait on a client that does not read; past it the
    /// connection is closed.
    #[serde(default = "default_write_timeout")]
    pub(super) write_timeout: Spanned<Dur>,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_uri_bytes: default_max_uri_bytes(),
            request_head_timeout: default_head_timeout(),
            max_concurrent_streams: default_h2_streams(),
            body_timeout: default_body_timeout(),
            max_connections: default_max_connections(),
            idle_timeout: default_client_idle_timeout(),
            write_timeout: default_write_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AccessLogFile {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
}

impl Default for AccessLogFile {
    fn default() -> Self {
        AccessLogFile { enabled: true }
    }
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}
fn yes() -> bool {
    true
}
fn default_drain_delay() -> Dur {
    Dur::secs(0)
}
fn default_drain_timeout() -> Dur {
    Dur::secs(30)
}
fn default_connect_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(5))
}
fn default_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(30))
}
fn default_idle_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(90))
}
fn default_max_idle() -> usize {
    256
}
fn default_ejection_time() -> Spanned<Dur> {
    unspanned(Dur::secs(5))
}
fn default_max_paths() -> Spanned<usize> {
    unspanned(200)
}
fn default_compare_headers() -> Vec<String> {
    vec!["content-type".to_string()]
}
fn default_compare_max_body() -> Spanned<Size> {
    unspanned(Size::kib(256))
}
fn default_mismatch_ring() -> Spanned<usize> {
    unspanned(100)
}
fn default_copy_header() -> Spanned<String> {
    unspanned("x-teeproxy-copy".to_string())
}
fn default_amplify() -> Spanned<f64> {
    unspanned(1.0)
}
fn default_shadow_drain() -> Dur {
    Dur::secs(5)
}
fn default_shadow_header() -> Spanned<String> {
    unspanned("x-teeproxy-shadow".to_string())
}
fn default_shadow_queue() -> Spanned<usize> {
    unspanned(1024)
}
fn default_shadow_in_flight() -> Spanned<usize> {
    unspanned(256)
}
fn default_shadow_max_bytes() -> Spanned<Size> {
    unspanned(Size::mib(32))
}
fn default_percent() -> Spanned<f64> {
    unspanned(100.0)
}
fn default_shadow_max_body() -> Spanned<Size> {
    unspanned(Size::mib(1))
}
fn default_shadow_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(5))
}
fn default_prefix() -> Spanned<String> {
    unspanned("/".to_string())
}
fn default_max_header_bytes() -> Spanned<Size> {
    unspanned(Size::kib(64))
}
fn default_max_headers() -> Spanned<usize> {
    unspanned(100)
}
fn default_max_uri_bytes() -> Spanned<Size> {
    unspanned(Size::kib(8))
}
fn default_head_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(10))
}
fn default_body_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(60))
}
fn default_max_connections() -> Spanned<usize> {
    unspanned(10_000)
}
fn default_client_idle_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(60))
}
fn default_write_timeout() -> Spanned<Dur> {
    unspanned(Dur::secs(60))
}
fn default_h2_streams() -> Spanned<u32> {
    unspanned(100)
}
