//! From YAML text to the typed `Config`: parse (unknown keys refused, strict booleans),
//! check every value with its place, then convert. Conversions that can still fail report
//! the key and its place like the checks do; nothing here panics on input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::{Location, Spanned};

use super::units::Size;

use super::check::{Invalid, first_line, parse_addr};
use super::file::{
    ClusterFile, ClusterTlsFile, ConfigFile, HealthFile, Http2File, LimitsFile, RouteFile,
    ShadowFile, ShadowHostFile, ShadowMethodsFile,
};
use super::tls::{self, ClusterTls, LoadedTls};
use super::{
    AccessLogConfig, AdminConfig, ClusterConfig, CompareConfig, Config, ConfigError, HeaderOps,
    HealthConfig, Http2Config, Limits, ListenerConfig, MatchConfig, Protocol, RecordConfig,
    RouteConfig, ShadowConfig, ShadowHost, Thresholds, TraceContextConfig, VerdictConfig,
    parse_endpoint,
};

/// Parses, checks and converts `text`; errors name `file`. Relative TLS file paths are
/// read from `base` (the config file's folder), else from the working directory.
pub(super) fn from_yaml(
    text: &str,
    file: &str,
    base: Option<&Path>,
) -> Result<Config, ConfigError> {
    let options = serde_saphyr::options! { strict_booleans: true };
    let parsed: ConfigFile = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        ConfigError::Parse {
            file: file.to_string(),
            line: loc.line(),
            column: loc.column(),
            message: first_line(&e.to_string()),
        }
    })?;
    parsed.validate().map_err(|v| v.into_error(file))?;
    let mut tls = BTreeMap::new();
    for (name, c) in &parsed.clusters {
        if let Some(t) = &c.tls {
            let loaded = cluster_tls(t, &format!("clusters.{name}.tls"), base)
                .map_err(|v| v.into_error(file))?;
            tls.insert(name.clone(), loaded);
        }
    }
    let mut config = Config::try_from(parsed).map_err(|v| v.into_error(file))?;
    for (name, t) in tls {
        if let Some(c) = config.clusters.get_mut(&name) {
            c.tls = Some(t);
        }
    }
    Ok(config)
}

/// Reads a cluster's TLS files (relative paths from `base`), naming the key of a file
/// that is missing, unreadable or not what it should be.
fn cluster_tls(
    t: &Spanned<ClusterTlsFile>,
    key: &str,
    base: Option<&Path>,
) -> Result<ClusterTls, Invalid> {
    let tv = &t.value;
    let path = |p: &Option<Spanned<String>>| {
        p.as_ref().map(|p| {
            let path = PathBuf::from(&p.value);
            match base {
                Some(b) if path.is_relative() => b.join(path),
                _ => path,
            }
        })
    };
    let at = |p: &Option<Spanned<String>>| p.as_ref().map(|p| p.referenced);
    let (ca, cert, keyfile) = (path(&tv.ca), path(&tv.cert), path(&tv.key));
    let mut loaded = LoadedTls::default();
    if let Some(ca) = &ca {
        loaded.roots = tls::load_ca(ca)
            .map_err(|m| Invalid::at(at(&tv.ca).as_ref(), &format!("{key}.ca"), m))?;
    }
    if let (Some(c), Some(k)) = (&cert, &keyfile) {
        loaded.client = Some(tls::load_client(c, k).map_err(|e| match e {
            tls::PairError::Cert(m) => {
                Invalid::at(at(&tv.cert).as_ref(), &format!("{key}.cert"), m)
            }
            tls::PairError::Key(m) => Invalid::at(at(&tv.key).as_ref(), &format!("{key}.key"), m),
        })?);
    }
    Ok(ClusterTls {
        ca,
        server_name: tv.server_name.as_ref().map(|n| n.value.clone()),
        cert,
        key: keyfile,
        insecure_skip_verify: tv.insecure_skip_verify,
        loaded: Arc::new(loaded),
    })
}

impl TryFrom<ConfigFile> for Config {
    type Error = Invalid;

    /// Converts a checked file (call `validate` first: the checks give the precise message).
    fn try_from(f: ConfigFile) -> Result<Config, Invalid> {
        let mut listeners = Vec::new();
        for (i, l) in f.listeners.iter().enumerate() {
            listeners.push(ListenerConfig {
                name: l.name.value.clone(),
                address: addr(&l.address, &format!("listeners[{i}].address"))?,
                tls: l
                    .tls
                    .as_ref()
                    .map(|t| super::listener_tls::listener_tls(t, &format!("listeners[{i}].tls")))
                    .transpose()?,
            });
        }
        let admin = AdminConfig {
            address: addr(&f.admin.address, "admin.address")?,
            token_file: f
                .admin
                .token_file
                .as_ref()
                .map(|p| std::path::PathBuf::from(&p.value)),
            metrics_address: f
                .admin
                .metrics_address
                .as_ref()
                .map(|a| addr(a, "admin.metrics_address"))
                .transpose()?,
        };
        let mut clusters = BTreeMap::new();
        for (name, c) in &f.clusters {
            let mut endpoints = Vec::new();
            for (i, e) in c.endpoints.iter().enumerate() {
                endpoints.push(parse_endpoint(&e.value).map_err(|m| {
                    Invalid::at(
                        Some(&e.referenced),
                        &format!("clusters.{name}.endpoints[{i}]"),
                        m,
                    )
                })?);
            }
            clusters.insert(
                name.clone(),
                ClusterConfig {
                    endpoints,
                    connect_timeout: c.connect_timeout.value.get(),
                    timeout: c.timeout.value.get(),
                    host: c.host,
                    idle_timeout: c.idle_timeout.value.get(),
                    max_idle_per_endpoint: c.max_idle_per_endpoint,
                    ejection_time: c.ejection_time.value.get(),
                    shadow_queue: c.shadow_queue.value,
                    shadow_max_in_flight: c.shadow_max_in_flight.value,
                    shadow_max_bytes: c.shadow_max_bytes.value.bytes(),
                    health: c
                        .health
                        .as_ref()
                        .map(|h| health(h, &format!("clusters.{name}.health")))
                        .transpose()?,
                    resolve: c.resolve.as_ref().map(|d| d.value.get()),
                    protocol: protocol(c, &format!("clusters.{name}.protocol"))?,
                    http2: http2(&c.http2, &format!("clusters.{name}.http2"))?,
                    // Read by `from_yaml` (it knows where relative paths start).
                    tls: None,
                },
            );
        }
        let mut routes = Vec::new();
        for (i, r) in f.routes.iter().enumerate() {
            routes.push(route(r, &format!("routes[{i}]"))?);
        }
        // A route for one client certificate needs a listener that asks for them.
        let verifies = listeners
            .iter()
            .any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca.is_some()));
        if let Some((i, s)) = f.routes.iter().enumerate().find_map(|(i, r)| {
            r.match_
                .client_subject
                .as_ref()
                .filter(|_| !verifies)
                .map(|s| (i, s))
        }) {
            return Err(Invalid::at(
                Some(&s.referenced),
                &format!("routes[{i}].match.client_subject"),
                "no listener verifies client certificates (`tls.client_ca`), so it would never match",
            ));
        }
        let shadow_header = (!f.shadow_header.value.is_empty())
            .then(|| header_name(&f.shadow_header, "shadow_header"))
            .transpose()?;
        Ok(Config {
            listeners,
            admin,
            clusters,
            routes,
            limits: limits(&f.limits),
            drain_timeout: f.drain_timeout.get(),
            drain_delay: f.drain_delay.get(),
            access_log: AccessLogConfig {
                enabled: f.access_log.enabled,
            },
            x_forwarded_for: f.x_forwarded_for,
            shadow_drain: f.shadow_drain.get(),
            shadow_header,
            mismatch_ring: f.mismatch_ring.value,
            copy_header: (!f.copy_header.value.is_empty())
                .then(|| header_name(&f.copy_header, "copy_header"))
                .transpose()?,
            trace_context: TraceContextConfig {
                generate: f.trace_context.generate,
            },
        })
    }
}

fn health(h: &Spanned<HealthFile>, key: &str) -> Result<HealthConfig, Invalid> {
    let path =
        h.value.path.parse().map_err(|_| {
            Invalid::at(Some(&h.referenced), &format!("{key}.path"), "invalid path")
        })?;
    Ok(HealthConfig {
        path,
        interval: h.value.interval.get(),
        timeout: h.value.timeout.get(),
        healthy: h.value.healthy,
        unhealthy: h.value.unhealthy,
    })
}

/// The cluster's protocol, checked against its endpoints' schemes: `h2c` needs `http://`
/// endpoints, `h2` needs `https://` ones.
fn protocol(c: &ClusterFile, key: &str) -> Result<Protocol, Invalid> {
    let Some(p) = &c.protocol else {
        return Ok(Protocol::default());
    };
    let need = match p.value {
        Protocol::H2c => Some((
            "http",
            "h2c is HTTP/2 over plain TCP: endpoints must be http://",
        )),
        Protocol::H2 => Some((
            "https",
            "h2 is HTTP/2 over TLS (ALPN): endpoints must be https://; use h2c for plain TCP",
        )),
        Protocol::Http1 | Protocol::Auto => None,
    };
    if let Some((scheme, why)) = need
        && let Some(e) = c
            .endpoints
            .iter()
            .find(|e| !e.value.starts_with(&format!("{scheme}://")))
    {
        return Err(Invalid::at(
            Some(&p.referenced),
            key,
            format!("{why} (not {:?})", e.value),
        ));
    }
    Ok(p.value)
}

/// HTTP/2 settings; windows between 64 KiB - 1 and 2 GiB - 1 (what HTTP/2 allows).
fn http2(h: &Http2File, key: &str) -> Result<Http2Config, Invalid> {
    let window = |s: &Spanned<Size>, name: &str| {
        let n = s.value.bytes();
        if (65_535..=0x7fff_ffff).contains(&n) {
            Ok(n)
        } else {
            Err(Invalid::at(
                Some(&s.referenced),
                &format!("{key}.{name}"),
                "must be between 65535 bytes and 2GiB - 1",
            ))
        }
    };
    if h.keep_alive_timeout.value.get().is_zero() {
        return Err(Invalid::at(
            Some(&h.keep_alive_timeout.referenced),
            &format!("{key}.keep_alive_timeout"),
            "must be more than zero",
        ));
    }
    Ok(Http2Config {
        keep_alive_interval: h.keep_alive_interval.value.get(),
        keep_alive_timeout: h.keep_alive_timeout.value.get(),
        initial_connection_window: window(
            &h.initial_connection_window,
            "initial_connection_window",
        )?,
        initial_stream_window: window(&h.initial_stream_window, "initial_stream_window")?,
    })
}

fn route(r: &RouteFile, key: &str) -> Result<RouteConfig, Invalid> {
    let methods = match &r.match_.methods {
        None => None,
        Some(ms) => Some(
            ms.iter()
                .enumerate()
                .map(|(i, m)| {
                    method(
                        &m.value,
                        &m.referenced,
                        &format!("{key}.match.methods[{i}]"),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let mut shadows = Vec::new();
    for (j, s) in r.shadows.iter().enumerate() {
        shadows.push(shadow(s, &format!("{key}.shadows[{j}]"))?);
    }
    // Each baseline is a policy of its own, copying its candidate's decisions.
    let baselines: Vec<ShadowConfig> = shadows
        .iter()
        .filter_map(|c| {
            let b = c.compare.baseline.clone()?;
            let mut base = c.clone();
            base.cluster = b;
            base.compare.baseline = None;
            base.baseline_of = Some(c.cluster.clone());
            // Copies to compare, not load: one per request, and no recording.
            base.amplify = 1.0;
            base.record = None;
            Some(base)
        })
        .collect();
    shadows.extend(baselines);
    let v = &r.verdict;
    let thresholds = Thresholds {
        slower_by: v.slower_by.value.0 / 100.0,
        different_by: v.different_by.value.0 / 100.0,
        errors_by: v.errors_by.value.0 / 100.0,
    };
    let verdict = VerdictConfig {
        window: v.window.value.get(),
        min_pairs: v.min_pairs.value,
        alpha: 1.0 - v.confidence.value.0 / 100.0,
        thresholds,
        paths: v
            .paths
            .iter()
            .map(|(t, p)| {
                let pick = |o: &Option<Spanned<super::units::Pct>>, d: f64| {
                    o.as_ref().map_or(d, |x| x.value.0 / 100.0)
                };
                (
                    t.clone(),
                    Thresholds {
                        slower_by: pick(&p.slower_by, thresholds.slower_by),
                        different_by: pick(&p.different_by, thresholds.different_by),
                        errors_by: pick(&p.errors_by, thresholds.errors_by),
                    },
                )
            })
            .collect(),
    };
    Ok(RouteConfig {
        name: r.name.value.clone(),
        match_: MatchConfig {
            path_prefix: r.match_.path_prefix.value.clone(),
            host: r.match_.host.as_ref().map(|h| h.value.clone()),
            methods,
            grpc: r.match_.grpc,
            client_subject: match &r.match_.client_subject {
                None => None,
                Some(s) if s.value.trim().is_empty() => {
                    return Err(Invalid::at(
                        Some(&s.referenced),
                        &format!("{key}.match.client_subject"),
                        "an empty subject (write it as the access log does: `CN=alice, O=Example`)",
                    ));
                }
                Some(s) => Some(s.value.clone()),
            },
        },
        primary: r.primary.value.clone(),
        shadows,
        paths: r.paths.iter().map(|p| p.value.clone()).collect(),
        max_paths: r.max_paths.value,
        websocket: r.websocket,
        critical: r.critical,
        verdict,
    })
}

fn shadow(s: &ShadowFile, key: &str) -> Result<ShadowConfig, Invalid> {
    let at = Some(&s.cluster.referenced);
    let methods = match &s.methods {
        ShadowMethodsFile::Keyword(_) => None,
        ShadowMethodsFile::List(l) => Some(
            l.iter()
                .map(|m| method(m, &s.cluster.referenced, &format!("{key}.methods")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let host = match &s.host {
        ShadowHostFile::Word(w) if w == "keep" => ShadowHost::Keep,
        ShadowHostFile::Word(w) if w == "rewrite" => ShadowHost::Rewrite,
        ShadowHostFile::Word(w) => ShadowHost::Literal(
            http::HeaderValue::from_str(w)
                .map_err(|_| Invalid::at(at, &format!("{key}.host"), "invalid host"))?,
        ),
        ShadowHostFile::Suffix { suffix } => ShadowHost::Suffix(suffix.clone()),
    };
    let mut set = Vec::new();
    for (name, value) in &s.headers.set {
        let bad = || {
            Invalid::at(
                at,
                &format!("{key}.headers.set.{name}"),
                "invalid header name or value",
            )
        };
        set.push((
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?,
            http::HeaderValue::from_str(value).map_err(|_| bad())?,
        ));
    }
    let names = |list: &[String], field: &str| {
        list.iter()
            .map(|n| {
                http::HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                    Invalid::at(
                        at,
                        &format!("{key}.{field}"),
                        format!("invalid header name {n:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(ShadowConfig {
        cluster: s.cluster.value.clone(),
        percent: s.percent.value,
        sample_key: s.sample_key.clone(),
        methods,
        max_body: s.max_body.value.bytes(),
        timeout: s.timeout.value.get(),
        host,
        headers: HeaderOps {
            set,
            remove: names(&s.headers.remove, "headers.remove")?,
        },
        compare: CompareConfig {
            status: s.compare.status,
            headers: names(&s.compare.headers, "compare.headers")?,
            body: s.compare.body,
            ignore: s.compare.ignore.clone(),
            redact: s.compare.redact.clone(),
            max_body: s.compare.max_body.value.as_usize(),
            baseline: s.compare.baseline.as_ref().map(|b| b.value.clone()),
        },
        amplify: s.amplify.value,
        amplify_writes: s.amplify_writes,
        max_rps: s.max_rps.as_ref().map(|r| r.value),
        max_burst: s.max_rps.as_ref().map(|r| {
            s.max_burst
                .as_ref()
                .map_or_else(|| r.value.max(1.0), |b| b.value)
        }),
        record: s.record.as_ref().map(|r| RecordConfig {
            path: r.path.value.clone().into(),
            sample: r.sample.value,
            max_bytes: r.max_bytes.value.bytes(),
            rotate: r.rotate.value,
            redact: r.redact.clone(),
            queue: r.queue.value,
        }),
        baseline_of: None,
    })
}

/// The comparison a shadow gets when its file leaves `compare:` out.
pub(super) fn default_compare() -> CompareConfig {
    let c = super::file::CompareFile::default();
    CompareConfig {
        status: c.status,
        headers: c
            .headers
            .iter()
            .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
            .collect(),
        body: c.body,
        ignore: c.ignore,
        redact: c.redact,
        max_body: c.max_body.value.as_usize(),
        baseline: None,
    }
}

fn limits(l: &LimitsFile) -> Limits {
    Limits {
        max_header_bytes: l.max_header_bytes.value.as_usize(),
        max_headers: l.max_headers.value,
        max_uri_bytes: l.max_uri_bytes.value.as_usize(),
        request_head_timeout: l.request_head_timeout.value.get(),
        max_concurrent_streams: l.max_concurrent_streams.value,
        body_timeout: l.body_timeout.value.get(),
        max_connections: l.max_connections.value,
        max_connections_set: l.max_connections.referenced != Location::UNKNOWN,
        idle_timeout: l.idle_timeout.value.get(),
        write_timeout: l.write_timeout.value.get(),
    }
}

fn addr(a: &Spanned<String>, key: &str) -> Result<std::net::SocketAddr, Invalid> {
    parse_addr(&a.value).map_err(|m| Invalid::at(Some(&a.referenced), key, m))
}

fn method(m: &str, at: &Location, key: &str) -> Result<http::Method, Invalid> {
    http::Method::from_bytes(m.as_bytes())
        .map_err(|_| Invalid::at(Some(at), key, format!("invalid method {m:?}")))
}

fn header_name(n: &Spanned<String>, key: &str) -> Result<http::HeaderName, Invalid> {
    http::HeaderName::from_bytes(n.value.as_bytes()).map_err(|_| {
        Invalid::at(
            Some(&n.referenced),
            key,
            format!("invalid header name {:?}", n.value),
        )
    })
}
