//! The configuration, typed: addresses, durations, sizes, methods and header names are
//! parsed once, here. `file` holds the YAML as written (with source places), `build` checks
//! it and turns it into `Config` with errors that name the key and its file:line:column.
//! `Config` serializes (header values set for shadows redacted) for `/api/config` and
//! `teeproxy check --json`.

mod build;
mod check;
mod file;
mod listener_tls;
mod tls;
mod units;
pub mod x509;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize, Serializer};

/// A cluster's upstream TLS settings and the files they name, as loaded.
pub use tls::{ClientCert, ClusterTls, LoadedTls};
/// Durations and sizes as the config writes them (`250ms`, `64KiB`).
pub use units::{Dur, Size};

/// A config error: where (file, line, column), which key, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", check::place(file, *line, *column))]
    Parse {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{}: {key}: {message}", check::place(file, *line, *column))]
    Invalid {
        file: String,
        line: u64,
        column: u64,
        key: String,
        message: String,
    },
}

/// The whole configuration, checked and typed.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where clients connect (HTTP/1.1 and HTTP/2 on each: h2c, or over TLS with `tls`).
    pub listeners: Vec<ListenerConfig>,
    pub admin: AdminConfig,
    /// Upstream clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Ordered routes: the first that matches serves the request.
    pub routes: Vec<RouteConfig>,
    pub limits: Limits,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    #[serde(serialize_with = "units::duration")]
    pub drain_timeout: Duration,
    /// After SIGTERM/SIGINT, how long `/ready` is 503 while requests are still served.
    #[serde(serialize_with = "units::duration")]
    pub drain_delay: Duration,
    pub access_log: AccessLogConfig,
    pub x_forwarded_for: ForwardedMode,
    /// After the primary drain, how long shadow queues get to empty.
    #[serde(serialize_with = "units::duration")]
    pub shadow_drain: Duration,
    /// Header added to every shadow request (value: the shadow cluster's name); `None`: none.
    #[serde(serialize_with = "opt_header_name")]
    pub shadow_header: Option<HeaderName>,
    /// Recent mismatches kept for `/api/mismatches` and the dashboard.
    pub mismatch_ring: usize,
    // Chaos and capacity.
    /// Header with an amplified copy's index (1-based) when `amplify` > 1; `None`: none.
    #[serde(serialize_with = "opt_header_name")]
    pub copy_header: Option<HeaderName>,
    pub trace_context: TraceContextConfig,
}

/// W3C trace context handling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TraceContextConfig {
    /// A request without `traceparent` gets a new one (on the primary and the shadows).
    pub generate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// TLS termination; `None`: plain HTTP/1.1 and h2c.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// A TLS listener's files and settings (the files are read by the runtime, at start, on
/// SIGHUP and when they change; `teeproxy check` reads them too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerTls {
    /// At least one; `cert`/`key` written directly is the one entry.
    pub certificates: Vec<CertificatePaths>,
    /// Index into `certificates` served without SNI or for an unknown name.
    pub default: usize,
    /// CAs for client certificates; `None`: none asked for.
    pub client_ca: Option<std::path::PathBuf>,
    pub client_auth: ClientAuth,
    /// From the accepted TCP connection to the finished handshake.
    #[serde(serialize_with = "units::duration")]
    pub handshake_timeout: Duration,
}

/// One certificate chain and its key (PEM files), with the SNI names it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificatePaths {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub server_names: Vec<String>,
    /// The config key that names the pair (`listeners[0].tls.certificates[1]`), for errors.
    #[serde(skip)]
    pub key_path: String,
}

/// Whether a TLS listener with `client_ca` requires a client certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Handshakes without a valid client certificate fail.
    #[default]
    Required,
    /// A client may send none; one it sends must be valid.
    Optional,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// The bearer token's file: read when a protected endpoint is asked (so a rotated
    /// token applies at once). Without it, protected endpoints are open on a loopback
    /// address and refused (403) on any other.
    pub token_file: Option<std::path::PathBuf>,
    /// A listener serving only `/metrics`, `/live` and `/ready`.
    pub metrics_address: Option<SocketAddr>,
}

/// The HTTP version spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 (over TLS, ALPN offers `http/1.1` only).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP (`http://` endpoints only).
    H2c,
    /// HTTP/2 over TLS, ALPN `h2` (`https://` endpoints only).
    H2,
    /// Over TLS, ALPN decides (`h2`, then `http/1.1`); over plain TCP, HTTP/1.1.
    Auto,
}

/// A cluster's HTTP/2 connections (with `protocol` `h2c`, `h2`, or `auto` when ALPN picks
/// `h2`). The server's `SETTINGS_MAX_CONCURRENT_STREAMS` is honoured: requests past it wait
/// for a stream on the endpoint's one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Http2Config {
    /// A PING this often on every connection, busy or idle.
    #[serde(serialize_with = "units::duration")]
    pub keep_alive_interval: Duration,
    /// A connection whose PING is not answered within this is closed.
    #[serde(serialize_with = "units::duration")]
    pub keep_alive_timeout: Duration,
    /// The connection-level flow-control window.
    #[serde(serialize_with = "units::size")]
    pub initial_connection_window: u64,
    /// The per-stream flow-control window.
    #[serde(serialize_with = "units::size")]
    pub initial_stream_window: u64,
}

/// Which `Host` an upstream receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMode {
    /// The client's `Host` (or `:authority`), unchanged.
    #[default]
    Keep,
    /// The endpoint's authority (`10.0.0.1:8080`).
    Rewrite,
}

/// What happens to a client's `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedMode {
    /// Append the client's address to the `X-Forwarded-For` it sent.
    #[default]
    Append,
    /// Ignore what the client sent; `X-Forwarded-For` is the client's address alone.
    Replace,
}

/// One upstream cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    /// Load-balanced round-robin.
    pub endpoints: Vec<Endpoint>,
    /// TCP (and TLS) connect limit; failure -> 502.
    #[serde(serialize_with = "units::duration")]
    pub connect_timeout: Duration,
    /// From the request sent in full to the response head; past it -> 504.
    #[serde(serialize_with = "units::duration")]
    pub timeout: Duration,
    pub host: HostMode,
    /// Pooled idle connections are closed after this long.
    #[serde(serialize_with = "units::duration")]
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// An endpoint that refuses a connection is skipped for this long while others remain.
    #[serde(serialize_with = "units::duration")]
    pub ejection_time: Duration,
    /// As a shadow: copies waiting to be sent.
    pub shadow_queue: usize,
    /// As a shadow: requests in flight at once.
    pub shadow_max_in_flight: usize,
    /// As a shadow: body bytes held by queued and in-flight copies together.
    #[serde(serialize_with = "units::size")]
    pub shadow_max_bytes: u64,
    /// Active health checks; `None`: none (every endpoint counts as healthy).
    pub health: Option<HealthConfig>,
    /// Endpoint host names re-resolved this often, every address an endpoint; `None`:
    /// resolved by the connector on each new connection.
    #[serde(serialize_with = "opt_duration")]
    pub resolve: Option<Duration>,
    /// The HTTP version spoken to the endpoints.
    pub protocol: Protocol,
    /// HTTP/2 connection settings.
    pub http2: Http2Config,
    /// TLS to the `https://` endpoints; `None`: verified against the built-in roots,
    /// with the endpoint's host as the name, and no client certificate.
    pub tls: Option<ClusterTls>,
}

/// A cluster's active health checks: `GET path` to every endpoint each `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    #[serde(serialize_with = "display")]
    pub path: http::uri::PathAndQuery,
    #[serde(serialize_with = "units::duration")]
    pub interval: Duration,
    #[serde(serialize_with = "units::duration")]
    pub timeout: Duration,
    /// Successes in a row that make an unhealthy endpoint healthy again.
    pub healthy: u32,
    /// Failures in a row (non-2xx, timeout, connection error) that make it unhealthy.
    pub unhealthy: u32,
}

fn display<S: Serializer>(v: &impl fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn opt_duration<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => units::duration(d, s),
        None => s.serialize_none(),
    }
}

/// One route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match")]
    pub match_: MatchConfig,
    /// The cluster that serves the route.
    pub primary: String,
    /// Clusters that get a fire-and-forget copy of the route's requests.
    pub shadows: Vec<ShadowConfig>,
    /// Path templates (`/users/{id}`) tried before automatic normalisation.
    pub paths: Vec<String>,
    /// Distinct path templates tracked for the route; past it, paths are `{other}`.
    pub max_paths: usize,
    /// WebSocket upgrades relayed to the primary (never mirrored); false: answered 501.
    pub websocket: bool,
    /// A flag on any of the route's paths fails the whole verdict.
    pub critical: bool,
    pub verdict: VerdictConfig,
}

/// How a route's verdicts are decided (see `shadow::verdict`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerdictConfig {
    /// The sliding window (verdicts are also computed since start).
    #[serde(serialize_with = "units::duration")]
    pub window: Duration,
    /// Paired observations needed before any flag.
    pub min_pairs: u64,
    /// One minus the confidence of every interval and test.
    #[serde(rename = "confidence", serialize_with = "confidence")]
    pub alpha: f64,
    #[serde(flatten)]
    pub thresholds: Thresholds,
    /// Per path template, overriding `thresholds`.
    pub paths: BTreeMap<String, Thresholds>,
}

impl VerdictConfig {
    /// The thresholds of one path template.
    pub fn thresholds_for(&self, template: &str) -> &Thresholds {
        self.paths.get(template).unwrap_or(&self.thresholds)
    }
}

fn confidence<S: Serializer>(alpha: &f64, s: S) -> Result<S::Ok, S::Error> {
    units::pct(&(1.0 - alpha), s)
}

/// How large a shift must be to be flagged (fractions: 0.1 is 10 %).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    #[serde(serialize_with = "units::pct")]
    pub slower_by: f64,
    #[serde(serialize_with = "units::pct")]
    pub different_by: f64,
    #[serde(serialize_with = "units::pct")]
    pub errors_by: f64,
}

/// What a route matches.
#[derive(Debug, Clone, Serialize)]
pub struct MatchConfig {
    pub path_prefix: String,
    /// Exact host as written (port ignored, case-insensitive when matching); `None`: any.
    pub host: Option<String>,
    /// `None`: any method.
    #[serde(serialize_with = "opt_method_list")]
    pub methods: Option<Vec<Method>>,
    /// Only gRPC calls (`content-type: application/grpc*`) when true.
    pub grpc: bool,
    /// Only requests whose connection presented a verified client certificate with this
    /// subject (exact, as the access log writes it); `None`: any client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_subject: Option<String>,
}

/// One shadow policy of a route.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowConfig {
    pub cluster: String,
    /// Share of the route's eligible requests copied, 0 to 100.
    pub percent: f64,
    /// Decide per key instead of per request.
    pub sample_key: Option<SampleKey>,
    /// Methods copied; `None`: any.
    #[serde(serialize_with = "opt_methods")]
    pub methods: Option<Vec<Method>>,
    /// Larger bodies: the copy is dropped `body_too_large`.
    #[serde(serialize_with = "units::size")]
    pub max_body: u64,
    /// The shadow request's own limit, to the end of its response.
    #[serde(serialize_with = "units::duration")]
    pub timeout: Duration,
    pub host: ShadowHost,
    pub headers: HeaderOps,
    pub compare: CompareConfig,
    // Chaos and capacity.
    /// Copies per sampled request, 1 to 10 (the fraction drawn per request).
    pub amplify: f64,
    /// `amplify` > 1 allowed with write methods.
    pub amplify_writes: bool,
    /// Copies per second at most; `None`: no cap.
    pub max_rps: Option<f64>,
    /// The rate cap's bucket size in copies (`None` without `max_rps`).
    pub max_burst: Option<f64>,
    /// Exchanges recorded to a JSON-lines file; `None`: not recorded.
    pub record: Option<RecordConfig>,
    /// Set on the policy added for a shadow's `compare.baseline`: the candidate's cluster.
    /// It is sent exactly the candidate's requests (same sampling and limits).
    pub baseline_of: Option<String>,
}

/// Recording a shadow's exchanges (see `shadow::capture`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordConfig {
    pub path: std::path::PathBuf,
    /// Percent of the exchanged copies recorded.
    pub sample: f64,
    /// A file's size before it is rotated.
    #[serde(serialize_with = "units::size")]
    pub max_bytes: u64,
    /// Rotated files kept.
    pub rotate: usize,
    /// Header names and JSON pointers written as `[redacted]`.
    pub redact: Vec<String>,
    /// Lines waiting for the writer.
    pub queue: usize,
}

/// Which Host a shadow request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowHost {
    /// The client's.
    Keep,
    /// The shadow endpoint's `host:port`.
    Rewrite,
    /// This host.
    Literal(HeaderValue),
    /// The client's host name with this appended, before any port.
    Suffix(String),
}

impl Serialize for ShadowHost {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            ShadowHost::Keep => s.serialize_str("keep"),
            ShadowHost::Rewrite => s.serialize_str("rewrite"),
            ShadowHost::Literal(v) => s.serialize_str(v.to_str().unwrap_or("")),
            ShadowHost::Suffix(suffix) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("suffix", suffix)?;
                m.end()
            }
        }
    }
}

/// Header changes for a shadow only.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    /// Set (replacing what the client sent). Values are redacted when serialized.
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl Serialize for HeaderOps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let set: BTreeMap<&str, &str> = self
            .set
            .iter()
            .map(|(k, _)| (k.as_str(), "<redacted>"))
            .collect();
        let remove: Vec<&str> = self.remove.iter().map(HeaderName::as_str).collect();
        let mut st = s.serialize_struct("HeaderOps", 2)?;
        st.serialize_field("set", &set)?;
        st.serialize_field("remove", &remove)?;
        st.end()
    }
}

/// How a shadow's answer is compared with the primary's.
#[derive(Debug, Clone, Serialize)]
pub struct CompareConfig {
    /// Statuses must be equal.
    pub status: bool,
    /// These headers must be equal (absent on both sides counts as equal).
    #[serde(serialize_with = "header_names")]
    pub headers: Vec<HeaderName>,
    pub body: CompareBody,
    /// JSON pointers left out of `json` comparisons.
    pub ignore: Vec<String>,
    /// JSON pointers (starting with `/`) and header names whose values kept mismatch
    /// examples show as `[redacted]`.
    pub redact: Vec<String>,
    /// Bodies larger than this are not compared.
    #[serde(serialize_with = "units::size_usize")]
    pub max_body: usize,
    /// The cluster running the primary's version whose differences are noise.
    pub baseline: Option<String>,
}

impl Default for CompareConfig {
    /// The defaults a file gets when it leaves `compare:` out.
    fn default() -> Self {
        build::default_compare()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareBody {
    #[default]
    Off,
    Exact,
    Json,
}

/// Where a sampling key is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SampleKey {
    Header(String),
    Cookie(String),
}

/// Limits on what clients may send and how long they may take.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    #[serde(serialize_with = "units::size_usize")]
    pub max_header_bytes: usize,
    pub max_headers: usize,
    #[serde(serialize_with = "units::size_usize")]
    pub max_uri_bytes: usize,
    #[serde(serialize_with = "units::duration")]
    pub request_head_timeout: Duration,
    pub max_concurrent_streams: u32,
    #[serde(serialize_with = "units::duration")]
    pub body_timeout: Duration,
    pub max_connections: usize,
    /// Whether `max_connections` was written in the file (a default cap may be lowered
    /// to fit the open-files limit; an explicit one is kept).
    #[serde(skip)]
    pub max_connections_set: bool,
    #[serde(serialize_with = "units::duration")]
    pub idle_timeout: Duration,
    #[serde(serialize_with = "units::duration")]
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessLogConfig {
    pub enabled: bool,
}

/// A parsed endpoint: scheme (http/https) and authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `http://host:port` or `https://host:port` (no path, query or user info).
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{s:?}: endpoints are http:// or https:// URLs"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("{s:?}: scheme must be http or https"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{s:?}: missing host"))?;
    if authority.host().is_empty() {
        return Err(format!("{s:?}: missing host"));
    }
    if authority.as_str().contains('@') {
        return Err(format!("{s:?}: user info is not allowed in endpoints"));
    }
    if uri.path() != "/" || uri.query().is_some() {
        return Err(format!("{s:?}: endpoints have no path or query"));
    }
    Ok(Endpoint { scheme, authority })
}

/// Name used in errors when the YAML did not come from a file.
const INLINE: &str = "<config>";

impl Config {
    /// Parses, checks and types YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        build::from_yaml(text, INLINE, None)
    }

    /// Reads, parses, checks and types a file; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        // Relative TLS file paths start in the config file's folder.
        build::from_yaml(&text, &file, path.parent())
    }

    /// The listener addresses, by name.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.name.clone(), l.address))
            .collect()
    }

    /// The config as `/api/config` shows it (header values set for shadows redacted).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn opt_header_name<S: Serializer>(v: &Option<HeaderName>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_ref().map_or("", HeaderName::as_str))
}

fn header_names<S: Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(HeaderName::as_str))
}

fn opt_methods<S: Serializer>(v: &Option<Vec<Method>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_str("any"),
        Some(ms) => s.collect_seq(ms.iter().map(Method::as_str)),
    }
}

fn opt_method_list<S: Serializer>(v: &Option<Vec<Method>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(ms) => s.collect_seq(ms.iter().map(Method::as_str)),
    }
}

#[cfg(test)]
mod tests;
