//! The configuration: YAML parsed once with unknown keys refused, typed, then validated.
//! `Config::from_yaml` is pure; `Config::load` reads a file and names it in every error.

mod units;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

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
    #[error("{}: {message}", place(file, *line, *column))]
    Parse {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{}: {key}: {message}", place(file, *line, *column))]
    Invalid {
        file: String,
        line: u64,
        column: u64,
        key: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect: one or more plain TCP listeners (HTTP/1.1 and h2c on each).
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener (metrics, health).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Upstream clusters by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Ordered routes: the first that matches serves the request.
    pub routes: Vec<RouteConfig>,
    /// Limits on what clients may send.
    #[serde(default)]
    pub limits: Limits,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Dur,
    /// One log line per request.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// What to do with a client's `X-Forwarded-For`: `append` (default) or `replace`.
    #[serde(default)]
    pub x_forwarded_for: ForwardedMode,
    /// After the primary drain, how long shadow queues get to empty before the rest is
    /// abandoned (counted `shutdown`).
    #[serde(default = "default_shadow_drain")]
    pub shadow_drain: Dur,
    /// Header added to every shadow request, with the shadow cluster's name as value.
    /// An empty string adds nothing.
    #[serde(default = "default_shadow_header")]
    pub shadow_header: Spanned<String>,
    /// Recent mismatches kept for `/api/mismatches` and the dashboard.
    #[serde(default = "default_mismatch_ring")]
    pub mismatch_ring: Spanned<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: Spanned<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: unspanned("127.0.0.1:9901".to_string()),
        }
    }
}

/// Which `Host` an upstream receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMode {
    /// The client's `Host` (or `:authority`), unchanged.
    #[default]
    Keep,
    /// The endpoint's authority (`10.0.0.1:8080`).
    Rewrite,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedMode {
    /// Append the client's address to the `X-Forwarded-For` it sent.
    #[default]
    Append,
    /// Ignore what the client sent; `X-Forwarded-For` is the client's address alone.
    Replace,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `http://host:port` or `https://host:port` URLs, load-balanced round-robin.
    pub endpoints: Vec<Spanned<String>>,
    /// TCP (and TLS) connect limit; failure -> 502.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Spanned<Dur>,
    /// Time from sending the request to the response head; past it -> 504.
    #[serde(default = "default_timeout")]
    pub timeout: Spanned<Dur>,
    /// `keep` the client's Host (default) or `rewrite` it to the endpoint's authority.
    #[serde(default)]
    pub host: HostMode,
    /// Pooled idle connections are closed after this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Spanned<Dur>,
    /// Idle connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// An endpoint that refuses a connection is skipped for this long while others remain.
    #[serde(default = "default_ejection_time")]
    pub ejection_time: Spanned<Dur>,
    /// As a shadow: jobs waiting to be sent; when full, new copies are dropped `queue_full`.
    #[serde(default = "default_shadow_queue")]
    pub shadow_queue: Spanned<usize>,
    /// As a shadow: requests in flight at once.
    #[serde(default = "default_shadow_in_flight")]
    pub shadow_max_in_flight: Spanned<usize>,
    /// As a shadow: body bytes held by queued and in-flight copies together; a copy that
    /// would pass it is dropped `queue_full`.
    #[serde(default = "default_shadow_max_bytes")]
    pub shadow_max_bytes: Spanned<Size>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Spanned<String>,
    #[serde(default, rename = "match")]
    pub match_: MatchConfig,
    /// The cluster that serves the route.
    pub primary: Spanned<String>,
    /// Clusters that get a fire-and-forget copy of the route's requests.
    #[serde(default)]
    pub shadows: Vec<ShadowConfig>,
    /// Path templates (`/users/{id}`) tried before automatic normalisation.
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    /// Distinct path templates tracked for the route; past it, paths are `{other}`.
    #[serde(default = "default_max_paths")]
    pub max_paths: Spanned<usize>,
    /// WebSocket upgrades: relayed to the primary (never mirrored) when true; answered
    /// 501 when false.
    #[serde(default = "yes")]
    pub websocket: bool,
}

/// One shadow policy of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    pub cluster: Spanned<String>,
    /// Share of the route's (eligible) requests copied, 0 to 100, decimals allowed.
    #[serde(default = "default_percent")]
    pub percent: Spanned<f64>,
    /// Decide per key (a header or cookie value) instead of per request: the same key is
    /// always in or always out. Requests without the key are sampled at random.
    #[serde(default)]
    pub sample_key: Option<SampleKey>,
    /// Methods copied: a list, or `any`. Default: GET, HEAD, OPTIONS.
    #[serde(default)]
    pub methods: ShadowMethods,
    /// Larger bodies: the primary is served in full, the copy dropped `body_too_large`.
    #[serde(default = "default_shadow_max_body")]
    pub max_body: Spanned<Size>,
    /// The shadow request's own limit, to the end of its response.
    #[serde(default = "default_shadow_timeout")]
    pub timeout: Spanned<Dur>,
    /// `keep` (default), `rewrite` (the endpoint's host:port), a literal host, or
    /// `{ suffix: "-shadow" }` (appended to the client's host name).
    #[serde(default)]
    pub host: ShadowHost,
    /// Header changes for the shadow only.
    #[serde(default)]
    pub headers: HeaderOps,
    /// How the shadow's response is compared with the primary's.
    #[serde(default)]
    pub compare: CompareConfig,
}

/// Response comparison for one shadow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    /// Statuses must be equal.
    #[serde(default = "yes")]
    pub status: bool,
    /// These headers must be equal (absent on both sides counts as equal).
    #[serde(default = "default_compare_headers")]
    pub headers: Vec<String>,
    /// `off`, `exact` (bytes) or `json` (parsed values, key order ignored).
    #[serde(default)]
    pub body: CompareBody,
    /// JSON pointers left out of `json` comparisons.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Bodies larger than this are not compared (counted `skipped`, `body_too_large`).
    #[serde(default = "default_compare_max_body")]
    pub max_body: Spanned<Size>,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            status: true,
            headers: default_compare_headers(),
            body: CompareBody::Off,
            ignore: Vec::new(),
            max_body: default_compare_max_body(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareBody {
    #[default]
    Off,
    Exact,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SampleKey {
    Header(String),
    Cookie(String),
}

/// `any`, or a list of methods.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ShadowMethods {
    Keyword(String),
    List(Vec<String>),
}

impl Default for ShadowMethods {
    fn default() -> Self {
        ShadowMethods::List(vec!["GET".into(), "HEAD".into(), "OPTIONS".into()])
    }
}

impl ShadowMethods {
    /// `None` for any method, else the list.
    pub fn methods(&self) -> Option<Vec<http::Method>> {
        match self {
            ShadowMethods::Keyword(_) => None,
            ShadowMethods::List(l) => Some(
                l.iter()
                    .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
            ),
        }
    }
}

/// The shadow's Host: `keep`, `rewrite`, a literal, or `{ suffix: ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ShadowHost {
    Word(String),
    Suffix { suffix: String },
}

impl Default for ShadowHost {
    fn default() -> Self {
        ShadowHost::Word("keep".into())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers set (replacing any the client sent).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default = "default_prefix")]
    pub path_prefix: Spanned<String>,
    /// Exact host (port ignored, case-insensitive); absent: any host.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// Methods; absent: any method.
    #[serde(default)]
    pub methods: Option<Vec<Spanned<String>>>,
}

impl Default for MatchConfig {
    fn default() -> Self {
        MatchConfig {
            path_prefix: default_prefix(),
            host: None,
            methods: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// All request header lines together; over -> 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Spanned<Size>,
    /// Number of request headers; over -> 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: Spanned<usize>,
    /// Request target length; over -> 414.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: Spanned<Size>,
    /// Time for a new connection's first request head (and each later HTTP/1 head,
    /// keep-alive idle time included) to arrive; past it the connection is closed.
    #[serde(default = "default_head_timeout")]
    pub request_head_timeout: Spanned<Dur>,
    /// HTTP/2 streams open at once per connection.
    #[serde(default = "default_h2_streams")]
    pub max_concurrent_streams: Spanned<u32>,
    /// Longest wait for the next piece of a request body; past it the upstream request
    /// is aborted, nothing is mirrored, and the client gets 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Spanned<Dur>,
    /// Client connections open at once per listener; at the cap, accepting pauses.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<usize>,
    /// A connection with no request in progress is closed after this long (HTTP/1:
    /// closed; HTTP/2: GOAWAY).
    #[serde(default = "default_client_idle_timeout")]
    pub idle_timeout: Spanned<Dur>,
    /// Longest a response write may wait on a client that does not read; past it the
    /// connection is closed.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: Spanned<Dur>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
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
pub struct AccessLogConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig { enabled: true }
    }
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}
fn yes() -> bool {
    true
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

/// Name used in errors when the YAML did not come from a file.
const INLINE: &str = "<config>";

impl Config {
    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_named(text, INLINE)
    }

    /// Reads, parses and validates a file; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_yaml_named(&text, &file)
    }

    fn from_yaml_named(text: &str, file: &str) -> Result<Config, ConfigError> {
        let options = serde_saphyr::options! { strict_booleans: true };
        let config: Config = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let loc = e.location().unwrap_or(Location::UNKNOWN);
            ConfigError::Parse {
                file: file.to_string(),
                line: loc.line(),
                column: loc.column(),
                message: first_line(&e.to_string()),
            }
        })?;
        config.validate().map_err(|v| v.into_error(file))?;
        Ok(config)
    }

    /// The listener addresses, parsed (validated already).
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| {
                (
                    l.name.value.clone(),
                    parse_addr(&l.address.value).expect("validated"),
                )
            })
            .collect()
    }

    /// The admin address, parsed (validated already).
    pub fn admin_addr(&self) -> SocketAddr {
        parse_addr(&self.admin.address.value).expect("validated")
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.listeners.is_empty() {
            return Err(Invalid::at(
                None,
                "listeners",
                "at least one listener is required",
            ));
        }
        let mut names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            check_name(&l.name, &format!("{key}.name"))?;
            if !names.insert(l.name.value.as_str()) {
                return Err(Invalid::at(
                    Some(&l.name.referenced),
                    &format!("{key}.name"),
                    format!("duplicate listener name {:?}", l.name.value),
                ));
            }
            check_addr(&l.address, &format!("{key}.address"))?;
        }
        check_addr(&self.admin.address, "admin.address")?;
        if self.clusters.is_empty() {
            return Err(Invalid::at(
                None,
                "clusters",
                "at least one cluster is required",
            ));
        }
        for (name, c) in &self.clusters {
            let key = format!("clusters.{name}");
            if !is_label_safe(name) {
                return Err(Invalid::at(
                    None,
                    &key,
                    "cluster names use letters, digits, '-', '_' and '.' only",
                ));
            }
            c.validate(&key)?;
        }
        if self.routes.is_empty() {
            return Err(Invalid::at(
                None,
                "routes",
                "at least one route is required",
            ));
        }
        let mut names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            check_name(&r.name, &format!("{key}.name"))?;
            if !names.insert(r.name.value.as_str()) {
                return Err(Invalid::at(
                    Some(&r.name.referenced),
                    &format!("{key}.name"),
                    format!("duplicate route name {:?}", r.name.value),
                ));
            }
            if !self.clusters.contains_key(&r.primary.value) {
                let known: Vec<&str> = self.clusters.keys().map(String::as_str).collect();
                return Err(Invalid::at(
                    Some(&r.primary.referenced),
                    &format!("{key}.primary"),
                    format!(
                        "unknown cluster {:?} (clusters: {})",
                        r.primary.value,
                        known.join(", ")
                    ),
                ));
            }
            r.match_.validate(&format!("{key}.match"))?;
            for (j, p) in r.paths.iter().enumerate() {
                if !p.value.starts_with('/') {
                    return Err(Invalid::at(
                        Some(&p.referenced),
                        &format!("{key}.paths[{j}]"),
                        "path templates start with '/'",
                    ));
                }
            }
            if !(1..=10_000).contains(&r.max_paths.value) {
                return Err(Invalid::at(
                    Some(&r.max_paths.referenced),
                    &format!("{key}.max_paths"),
                    "must be between 1 and 10000",
                ));
            }
            let mut seen = HashSet::new();
            for (j, sh) in r.shadows.iter().enumerate() {
                let skey = format!("{key}.shadows[{j}]");
                if !self.clusters.contains_key(&sh.cluster.value) {
                    return Err(Invalid::at(
                        Some(&sh.cluster.referenced),
                        &format!("{skey}.cluster"),
                        format!("unknown cluster {:?}", sh.cluster.value),
                    ));
                }
                if !seen.insert(sh.cluster.value.as_str()) {
                    return Err(Invalid::at(
                        Some(&sh.cluster.referenced),
                        &format!("{skey}.cluster"),
                        format!(
                            "cluster {:?} is already a shadow of this route",
                            sh.cluster.value
                        ),
                    ));
                }
                sh.validate(&skey)?;
                let budget = &self.clusters[&sh.cluster.value].shadow_max_bytes;
                if sh.max_body.value > budget.value {
                    return Err(Invalid::at(
                        Some(&sh.max_body.referenced),
                        &format!("{skey}.max_body"),
                        format!(
                            "{} is more than the cluster's shadow_max_bytes ({}): no copy that large could ever be held",
                            sh.max_body.value, budget.value
                        ),
                    ));
                }
            }
        }
        let ring = &self.mismatch_ring;
        if ring.value > 100_000 {
            return Err(Invalid::at(
                Some(&ring.referenced),
                "mismatch_ring",
                "at most 100000",
            ));
        }
        let sh = &self.shadow_header;
        if !sh.value.is_empty() && http::HeaderName::from_bytes(sh.value.as_bytes()).is_err() {
            return Err(Invalid::at(
                Some(&sh.referenced),
                "shadow_header",
                format!("invalid header name {:?}", sh.value),
            ));
        }
        self.limits.validate()
    }
}

impl ClusterConfig {
    fn validate(&self, key: &str) -> Result<(), Invalid> {
        if self.endpoints.is_empty() {
            return Err(Invalid::at(
                None,
                &format!("{key}.endpoints"),
                "at least one endpoint is required",
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            parse_endpoint(&e.value).map_err(|m| {
                Invalid::at(Some(&e.referenced), &format!("{key}.endpoints[{i}]"), m)
            })?;
        }
        if self.shadow_queue.value == 0 || self.shadow_queue.value > 1_000_000 {
            return Err(Invalid::at(
                Some(&self.shadow_queue.referenced),
                &format!("{key}.shadow_queue"),
                "must be between 1 and 1000000",
            ));
        }
        if self.shadow_max_in_flight.value == 0 || self.shadow_max_in_flight.value > 100_000 {
            return Err(Invalid::at(
                Some(&self.shadow_max_in_flight.referenced),
                &format!("{key}.shadow_max_in_flight"),
                "must be between 1 and 100000",
            ));
        }
        for (field, d) in [
            ("connect_timeout", &self.connect_timeout),
            ("timeout", &self.timeout),
            ("idle_timeout", &self.idle_timeout),
        ] {
            if d.value.get().is_zero() {
                return Err(Invalid::at(
                    Some(&d.referenced),
                    &format!("{key}.{field}"),
                    "must be greater than 0",
                ));
            }
        }
        Ok(())
    }
}

/// Headers a shadow's `headers.set` may not touch: they frame the message or belong to
/// one connection (the copy is re-framed from its captured body).
const UNSETTABLE: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "trailer",
    "expect",
    "host",
];

impl ShadowConfig {
    fn validate(&self, key: &str) -> Result<(), Invalid> {
        let p = &self.percent;
        if !(0.0..=100.0).contains(&p.value) {
            return Err(Invalid::at(
                Some(&p.referenced),
                &format!("{key}.percent"),
                "must be between 0 and 100",
            ));
        }
        if let Some(SampleKey::Header(n) | SampleKey::Cookie(n)) = &self.sample_key
            && (n.is_empty() || http::HeaderName::from_bytes(n.as_bytes()).is_err())
        {
            return Err(Invalid::at(
                Some(&self.cluster.referenced),
                &format!("{key}.sample_key"),
                format!("invalid name {n:?}"),
            ));
        }
        match &self.methods {
            ShadowMethods::Keyword(k) if k != "any" => {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.methods"),
                    format!("expected a list of methods or `any`, not {k:?}"),
                ));
            }
            ShadowMethods::List(l) if l.is_empty() => {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.methods"),
                    "an empty list copies nothing; use percent: 0 to pause a shadow",
                ));
            }
            ShadowMethods::List(l) => {
                for m in l {
                    if *m != m.to_ascii_uppercase() {
                        return Err(Invalid::at(
                            Some(&self.cluster.referenced),
                            &format!("{key}.methods"),
                            format!(
                                "methods are case-sensitive: {:?}, not {m:?}",
                                m.to_ascii_uppercase()
                            ),
                        ));
                    }
                    if m.is_empty() || http::Method::from_bytes(m.as_bytes()).is_err() {
                        return Err(Invalid::at(
                            Some(&self.cluster.referenced),
                            &format!("{key}.methods"),
                            format!("invalid method {m:?}"),
                        ));
                    }
                    if m.eq_ignore_ascii_case("CONNECT") {
                        return Err(Invalid::at(
                            Some(&self.cluster.referenced),
                            &format!("{key}.methods"),
                            "CONNECT is never mirrored",
                        ));
                    }
                }
            }
            ShadowMethods::Keyword(_) => {}
        }
        let mb = &self.max_body;
        if mb.value.bytes() > 64 * 1024 * 1024 {
            return Err(Invalid::at(
                Some(&mb.referenced),
                &format!("{key}.max_body"),
                "at most 64MiB (copies are held in memory)",
            ));
        }
        if self.timeout.value.get().is_zero() {
            return Err(Invalid::at(
                Some(&self.timeout.referenced),
                &format!("{key}.timeout"),
                "must be greater than 0",
            ));
        }
        match &self.host {
            ShadowHost::Word(w) if w == "keep" || w == "rewrite" => {}
            ShadowHost::Word(w) | ShadowHost::Suffix { suffix: w } => {
                if w.is_empty()
                    || http::HeaderValue::from_str(w).is_err()
                    || w.contains(['/', ' ', '@'])
                {
                    return Err(Invalid::at(
                        Some(&self.cluster.referenced),
                        &format!("{key}.host"),
                        format!(
                            "invalid host {w:?}: keep, rewrite, a host name, or {{ suffix: ... }}"
                        ),
                    ));
                }
            }
        }
        for (name, value) in &self.headers.set {
            if UNSETTABLE.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.headers.set.{name}"),
                    "framing, hop-by-hop and Host headers cannot be set (use `host:` for Host)",
                ));
            }
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.headers.set.{name}"),
                    "invalid header name or value",
                ));
            }
        }
        for name in &self.compare.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.compare.headers"),
                    format!("invalid header name {name:?}"),
                ));
            }
        }
        for pointer in &self.compare.ignore {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.compare.ignore"),
                    format!("{pointer:?} is not a JSON pointer (like /meta/request_id)"),
                ));
            }
        }
        if self.compare.max_body.value.bytes() > 16 * 1024 * 1024 {
            return Err(Invalid::at(
                Some(&self.compare.max_body.referenced),
                &format!("{key}.compare.max_body"),
                "at most 16MiB",
            ));
        }
        for name in &self.headers.remove {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.headers.remove"),
                    format!("invalid header name {name:?}"),
                ));
            }
        }
        Ok(())
    }
}

impl MatchConfig {
    fn validate(&self, key: &str) -> Result<(), Invalid> {
        if !self.path_prefix.value.starts_with('/') {
            return Err(Invalid::at(
                Some(&self.path_prefix.referenced),
                &format!("{key}.path_prefix"),
                "must start with '/'",
            ));
        }
        if let Some(h) = &self.host
            && (h.value.is_empty() || http::uri::Authority::try_from(h.value.as_str()).is_err())
        {
            return Err(Invalid::at(
                Some(&h.referenced),
                &format!("{key}.host"),
                format!("invalid host {:?}", h.value),
            ));
        }
        if let Some(methods) = &self.methods {
            if methods.is_empty() {
                return Err(Invalid::at(
                    None,
                    &format!("{key}.methods"),
                    "leave methods out to match any method; an empty list matches nothing",
                ));
            }
            for (i, m) in methods.iter().enumerate() {
                if m.value != m.value.to_ascii_uppercase() {
                    return Err(Invalid::at(
                        Some(&m.referenced),
                        &format!("{key}.methods[{i}]"),
                        format!(
                            "methods are case-sensitive: {:?}, not {:?}",
                            m.value.to_ascii_uppercase(),
                            m.value
                        ),
                    ));
                }
                if http::Method::from_bytes(m.value.as_bytes()).is_err() || m.value.is_empty() {
                    return Err(Invalid::at(
                        Some(&m.referenced),
                        &format!("{key}.methods[{i}]"),
                        format!("invalid method {:?}", m.value),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Limits {
    fn validate(&self) -> Result<(), Invalid> {
        let hb = &self.max_header_bytes;
        if !(8 * 1024..=1024 * 1024).contains(&hb.value.bytes()) {
            return Err(Invalid::at(
                Some(&hb.referenced),
                "limits.max_header_bytes",
                "must be between 8KiB and 1MiB",
            ));
        }
        let mh = &self.max_headers;
        if !(1..=1000).contains(&mh.value) {
            return Err(Invalid::at(
                Some(&mh.referenced),
                "limits.max_headers",
                "must be between 1 and 1000",
            ));
        }
        let mu = &self.max_uri_bytes;
        if !(64..=64 * 1024).contains(&mu.value.bytes()) {
            return Err(Invalid::at(
                Some(&mu.referenced),
                "limits.max_uri_bytes",
                "must be between 64B and 64KiB",
            ));
        }
        let ht = &self.request_head_timeout;
        if ht.value.get().is_zero() {
            return Err(Invalid::at(
                Some(&ht.referenced),
                "limits.request_head_timeout",
                "must be greater than 0",
            ));
        }
        let st = &self.max_concurrent_streams;
        if st.value == 0 {
            return Err(Invalid::at(
                Some(&st.referenced),
                "limits.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("limits.body_timeout", &self.body_timeout),
            ("limits.idle_timeout", &self.idle_timeout),
            ("limits.write_timeout", &self.write_timeout),
        ] {
            if d.value.get().is_zero() {
                return Err(Invalid::at(
                    Some(&d.referenced),
                    key,
                    "must be greater than 0",
                ));
            }
        }
        let mc = &self.max_connections;
        if !(1..=1_000_000).contains(&mc.value) {
            return Err(Invalid::at(
                Some(&mc.referenced),
                "limits.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        Ok(())
    }
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

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("invalid address {s:?}: expected ip:port, like 0.0.0.0:8080 or [::1]:8080")
    })
}

fn check_addr(a: &Spanned<String>, key: &str) -> Result<(), Invalid> {
    parse_addr(&a.value)
        .map(|_| ())
        .map_err(|m| Invalid::at(Some(&a.referenced), key, m))
}

fn is_label_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn check_name(n: &Spanned<String>, key: &str) -> Result<(), Invalid> {
    if is_label_safe(&n.value) {
        Ok(())
    } else {
        Err(Invalid::at(
            Some(&n.referenced),
            key,
            format!(
                "invalid name {:?}: 1-64 letters, digits, '-', '_' or '.'",
                n.value
            ),
        ))
    }
}

/// `file:line:column`, or just `file` when the place is unknown (line 0).
fn place(file: &str, line: u64, column: u64) -> String {
    if line == 0 {
        file.to_string()
    } else {
        format!("{file}:{line}:{column}")
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// A validation failure before the file name is known.
struct Invalid {
    line: u64,
    column: u64,
    key: String,
    message: String,
}

impl Invalid {
    fn at(loc: Option<&Location>, key: &str, message: impl Into<String>) -> Self {
        let loc = loc.copied().unwrap_or(Location::UNKNOWN);
        Invalid {
            line: loc.line(),
            column: loc.column(),
            key: key.to_string(),
            message: message.into(),
        }
    }
    fn into_error(self, file: &str) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_string(),
            line: self.line,
            column: self.column,
            key: self.key,
            message: self.message,
        }
    }
}

#[cfg(test)]
mod tests;
