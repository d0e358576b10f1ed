//! The checks of a config file that its types alone cannot make: ranges, names, references
//! between clusters and routes, header names and values. Each failure names the key and its
//! file:line:column.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde_saphyr::{Location, Spanned};

use super::file::{
    ClusterFile, ConfigFile, LimitsFile, MatchFile, RecordFile, ShadowFile, ShadowHostFile,
    ShadowMethodsFile, VerdictFile,
};
use super::units::Pct;
use super::{ConfigError, SampleKey, parse_endpoint};

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
        if let Some(a) = &self.admin.metrics_address {
            check_addr(a, "admin.metrics_address")?;
        }
        if let Some(t) = &self.admin.token_file
            && t.value.trim().is_empty()
        {
            return Err(Invalid::at(
                Some(&t.referenced),
                "admin.token_file",
                "an empty path: leave the key out, or name the token's file",
            ));
        }
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
            let mut baselines = HashSet::new();
            r.verdict.validate(&format!("{key}.verdict"))?;
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
                if let Some(b) = &sh.compare.baseline {
                    let bkey = format!("{skey}.compare.baseline");
                    let why = if !self.clusters.contains_key(&b.value) {
                        Some(format!("unknown cluster {:?}", b.value))
                    } else if b.value == sh.cluster.value {
                        Some("the baseline must be another cluster than the shadow".into())
                    } else if b.value == r.primary.value {
                        Some("the baseline must be another cluster than the primary (it runs the primary's version apart from production)".into())
                    } else if r.shadows.iter().any(|o| o.cluster.value == b.value)
                        || !baselines.insert(b.value.as_str())
                    {
                        Some(format!(
                            "cluster {:?} is already a shadow or a baseline of this route",
                            b.value
                        ))
                    } else if sh.max_body.value > self.clusters[&b.value].shadow_max_bytes.value {
                        Some(format!(
                            "the shadow's max_body ({}) is more than the baseline cluster's shadow_max_bytes",
                            sh.max_body.value
                        ))
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        return Err(Invalid::at(Some(&b.referenced), &bkey, why));
                    }
                }
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
        let ch = &self.copy_header;
        if !ch.value.is_empty() && http::HeaderName::from_bytes(ch.value.as_bytes()).is_err() {
            return Err(Invalid::at(
                Some(&ch.referenced),
                "copy_header",
                format!("invalid header name {:?}", ch.value),
            ));
        }
        self.validate_records()?;
        self.limits.validate()
    }

    /// Record files: each written by one shadow policy only.
    fn validate_records(&self) -> Result<(), Invalid> {
        let mut paths = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            for (j, sh) in r.shadows.iter().enumerate() {
                let Some(rec) = &sh.record else { continue };
                let key = format!("routes[{i}].shadows[{j}].record");
                rec.validate(&key)?;
                if !paths.insert(rec.path.value.as_str()) {
                    return Err(Invalid::at(
                        Some(&rec.path.referenced),
                        &format!("{key}.path"),
                        format!("{:?} is already recorded by another shadow", rec.path.value),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RecordFile {
    fn validate(&self, key: &str) -> Result<(), Invalid> {
        if self.path.value.is_empty() || self.path.value.ends_with('/') {
            return Err(Invalid::at(
                Some(&self.path.referenced),
                &format!("{key}.path"),
                "must name a file",
            ));
        }
        if !(0.0..=100.0).contains(&self.sample.value) {
            return Err(Invalid::at(
                Some(&self.sample.referenced),
                &format!("{key}.sample"),
                "must be between 0 and 100",
            ));
        }
        if self.max_bytes.value.bytes() < 1024 {
            return Err(Invalid::at(
                Some(&self.max_bytes.referenced),
                &format!("{key}.max_bytes"),
                "at least 1KiB",
            ));
        }
        if self.rotate.value > 1000 {
            return Err(Invalid::at(
                Some(&self.rotate.referenced),
                &format!("{key}.rotate"),
                "at most 1000",
            ));
        }
        if !(1..=1_000_000).contains(&self.queue.value) {
            return Err(Invalid::at(
                Some(&self.queue.referenced),
                &format!("{key}.queue"),
                "must be between 1 and 1000000",
            ));
        }
        for item in &self.redact {
            if !item.starts_with('/') && http::HeaderName::from_bytes(item.as_bytes()).is_err() {
                return Err(Invalid::at(
                    Some(&self.path.referenced),
                    &format!("{key}.redact"),
                    format!(
                        "{item:?} is neither a JSON pointer (like /user/email) nor a header name"
                    ),
                ));
            }
        }
        Ok(())
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
        self.validate_discovery(key)
    }

    /// `health` and `resolve`.
    fn validate_discovery(&self, key: &str) -> Result<(), Invalid> {
        if let Some(r) = &self.resolve
            && r.value.get() < std::time::Duration::from_millis(10)
        {
            let k = format!("{key}.resolve");
            return Err(Invalid::at(Some(&r.referenced), &k, "at least 10ms"));
        }
        let Some(h) = &self.health else {
            return Ok(());
        };
        let at = Some(&h.referenced);
        let hv = &h.value;
        if !hv.path.starts_with('/') || hv.path.parse::<http::uri::PathAndQuery>().is_err() {
            let k = format!("{key}.health.path");
            return Err(Invalid::at(at, &k, "a path starting with '/'"));
        }
        for (field, d) in [("interval", hv.interval), ("timeout", hv.timeout)] {
            if d.get() < std::time::Duration::from_millis(10) {
                let k = format!("{key}.health.{field}");
                return Err(Invalid::at(at, &k, "at least 10ms"));
            }
        }
        for (field, n) in [("healthy", hv.healthy), ("unhealthy", hv.unhealthy)] {
            if !(1..=100).contains(&n) {
                let k = format!("{key}.health.{field}");
                return Err(Invalid::at(at, &k, "must be between 1 and 100"));
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
        for item in &self.compare.redact {
            let pointer = item.starts_with('/');
            if !pointer && http::HeaderName::from_bytes(item.as_bytes()).is_err() {
                return Err(Invalid::at(
                    Some(&self.cluster.referenced),
                    &format!("{key}.compare.redact"),
                    format!(
                        "{item:?} is neither a JSON pointer (like /user/email) nor a header name"
                    ),
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
        self.validate_capacity(key)
    }

    /// Chaos and capacity keys: `amplify` (1 to 10; writes only with `amplify_writes`),
    /// `max_rps` and `max_burst`.
    fn validate_capacity(&self, key: &str) -> Result<(), Invalid> {
        let amp = &self.amplify;
        if !(1.0..=10.0).contains(&amp.value) {
            return Err(Invalid::at(
                Some(&amp.referenced),
                &format!("{key}.amplify"),
                "must be between 1 and 10",
            ));
        }
        let writes = match &self.methods {
            ShadowMethodsFile::Keyword(_) => Some("any".to_string()),
            ShadowMethodsFile::List(l) => l
                .iter()
                .find(|m| !SAFE_METHODS.contains(&m.as_str()))
                .cloned(),
        };
        if let Some(m) = writes.filter(|_| amp.value > 1.0 && !self.amplify_writes) {
            return Err(Invalid::at(
                Some(&amp.referenced),
                &format!("{key}.amplify"),
                format!(
                    "amplify > 1 repeats writes (methods include {m}): set `amplify_writes: true` on this shadow if the candidate may receive them several times"
                ),
            ));
        }
        if let Some(r) = &self.max_rps
            && !(MIN_RATE..=MAX_RATE).contains(&r.value)
        {
            return Err(Invalid::at(
                Some(&r.referenced),
                &format!("{key}.max_rps"),
                format!("must be between {MIN_RATE} and {MAX_RATE}"),
            ));
        }
        if let Some(b) = &self.max_burst {
            if self.max_rps.is_none() {
                return Err(Invalid::at(
                    Some(&b.referenced),
                    &format!("{key}.max_burst"),
                    "only with max_rps",
                ));
            }
            if !(1.0..=MAX_RATE).contains(&b.value) {
                return Err(Invalid::at(
                    Some(&b.referenced),
                    &format!("{key}.max_burst"),
                    format!("must be between 1 and {MAX_RATE}"),
                ));
            }
        }
        Ok(())
    }
}

/// Methods `amplify` may repeat without `amplify_writes`.
const SAFE_METHODS: [&str; 4] = ["GET", "HEAD", "OPTIONS", "TRACE"];
/// The largest `max_rps` and `max_burst`.
const MAX_RATE: f64 = 1_000_000.0;
/// The smallest `max_rps` (one copy in about 17 minutes): the bucket's times stay far
/// inside 64 bits of nanoseconds even with the largest burst.
const MIN_RATE: f64 = 0.001;

impl VerdictFile {
    fn validate(&self, key: &str) -> Result<(), Invalid> {
        let w = &self.window;
        if w.value.get() < std::time::Duration::from_secs(10)
            || w.value.get() > std::time::Duration::from_secs(24 * 3600)
        {
            return Err(Invalid::at(
                Some(&w.referenced),
                &format!("{key}.window"),
                "must be between 10s and 24h",
            ));
        }
        let m = &self.min_pairs;
        if !(10..=100_000).contains(&m.value) {
            return Err(Invalid::at(
                Some(&m.referenced),
                &format!("{key}.min_pairs"),
                "must be between 10 and 100000",
            ));
        }
        let c = &self.confidence;
        if !(c.value.0 >= 80.0 && c.value.0 < 100.0) {
            return Err(Invalid::at(
                Some(&c.referenced),
                &format!("{key}.confidence"),
                "must be at least 80% and below 100%",
            ));
        }
        let share = |p: &Spanned<Pct>, k: &str| {
            if p.value.0 > 0.0 && p.value.0 <= 100.0 {
                Ok(())
            } else {
                Err(Invalid::at(
                    Some(&p.referenced),
                    k,
                    "must be above 0% and at most 100%",
                ))
            }
        };
        share(&self.slower_by, &format!("{key}.slower_by"))?;
        share(&self.different_by, &format!("{key}.different_by"))?;
        share(&self.errors_by, &format!("{key}.errors_by"))?;
        for (t, p) in &self.paths {
            let pkey = format!("{key}.paths.{t}");
            if !t.starts_with('/') {
                return Err(Invalid::at(None, &pkey, "path templates start with '/'"));
            }
            for (v, k) in [
                (&p.slower_by, "slower_by"),
                (&p.different_by, "different_by"),
                (&p.errors_by, "errors_by"),
            ] {
                if let Some(v) = v {
                    share(v, &format!("{pkey}.{k}"))?;
                }
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
