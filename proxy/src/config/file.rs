//! The config file as written: serde types with source places and defaults, and the checks
//! that name a key and its file:line:column. `build` turns a checked file into the typed
//! runtime `Config`; nothing outside `config` sees these types.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::units::{Dur, Size};
use super::{CompareBody, ConfigError, ForwardedMode, HostMode, SampleKey, parse_endpoint};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    /// Where clients connect: one or more plain TCP listeners (HTTP/1.1 and h2c on each).
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerFile {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    pub(super) address: Spanned<String>,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            address: unspanned("127.0.0.1:9901".to_string()),
        }
    }
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
    /// always in or always out. Requests without the key are sampled at random.
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
    /// Bodies larger than this are not compared (counted `skipped`, `body_too_large`).
    #[serde(default = "default_compare_max_body")]
    pub(super) max_body: Spanned<Size>,
}

impl Default for CompareFile {
    fn default() -> Self {
        CompareFile {
            status: true,
            headers: default_compare_headers(),
            body: CompareBody::Off,
            ignore: Vec::new(),
            max_body: default_compare_max_body(),
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
}

impl Default for MatchFile {
    fn default() -> Self {
        MatchFile {
            path_prefix: default_prefix(),
            host: None,
            methods: None,
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

impl ConfigFile {
    /// Checks everything the types alone cannot, naming the key and its place.
    pub(super) fn validate(&self) -> Result<(), Invalid> {
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

impl ClusterFile {
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

impl ShadowFile {
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
            ShadowMethodsFile::Keyword(k) if k != "any" => {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.methods"),
                    format!("expected a list of methods or `any`, not {k:?}"),
                ));
            }
            ShadowMethodsFile::List(l) if l.is_empty() => {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.methods"),
                    "an empty list copies nothing; use percent: 0 to pause a shadow",
                ));
            }
            ShadowMethodsFile::List(l) => {
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
            ShadowMethodsFile::Keyword(_) => {}
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
            ShadowHostFile::Word(w) if w == "keep" || w == "rewrite" => {}
            ShadowHostFile::Word(w) | ShadowHostFile::Suffix { suffix: w } => {
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

impl MatchFile {
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

impl LimitsFile {
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

pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
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
pub(super) fn place(file: &str, line: u64, column: u64) -> String {
    if line == 0 {
        file.to_string()
    } else {
        format!("{file}:{line}:{column}")
    }
}

pub(super) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// A validation failure before the file name is known.
pub(super) struct Invalid {
    line: u64,
    column: u64,
    key: String,
    message: String,
}

impl Invalid {
    pub(super) fn at(loc: Option<&Location>, key: &str, message: impl Into<String>) -> Self {
        let loc = loc.copied().unwrap_or(Location::UNKNOWN);
        Invalid {
            line: loc.line(),
            column: loc.column(),
            key: key.to_string(),
            message: message.into(),
        }
    }
    pub(super) fn into_error(self, file: &str) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_string(),
            line: self.line,
            column: self.column,
            key: self.key,
            message: self.message,
        }
    }
}
