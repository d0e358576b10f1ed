//! The formats `/metrics` serves, and which one a scraper gets: two text formats, and
//! the Prometheus protobuf exposition, the only one that carries native histograms.
//!
//! prometheus-client writes OpenMetrics 1.0 (`application/openmetrics-text`): a counter
//! family is named without its `_total` suffix in `# HELP`/`# TYPE`, info metrics have
//! type `info`, and the text ends with `# EOF`. The classic Prometheus text format 0.0.4
//! (`text/plain; version=0.0.4`), which `promtool check metrics`, older scrapers and
//! humans with curl read, names a family exactly as its samples are named. So 0.0.4 is
//! built from the OpenMetrics text, family by family: a counter's `# HELP`/`# TYPE` name
//! `x_total` and its `_created` samples are left out; an info family `x` becomes the gauge
//! `x_info`; `# UNIT` and `# EOF` are left out; gauges, histograms and summaries are the
//! same in both. Exemplars (not used by teeproxy) are cut from sample lines.
//!
//! The format is negotiated on `Accept`: protobuf when the scraper names
//! `application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;
//! encoding=delimited` at least as high as either text format (Prometheus does with
//! `--enable-feature=native-histograms`); else OpenMetrics when it names
//! `application/openmetrics-text` at least as high as `text/plain` (Prometheus does
//! without that feature); 0.0.4 otherwise (no `Accept`, `*/*`, `text/plain`).
//!
//! The protobuf exposition is length-delimited `io.prometheus.client.MetricFamily`
//! messages, written by prometheus-client (generated with a pure-Rust protobuf compiler,
//! so building needs no `protoc`). A latency histogram carries both its classic buckets
//! and its native ones there; the text formats carry the classic buckets only.

use std::fmt::Write as _;

use prometheus_client::registry::Registry;

/// A text format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// The classic Prometheus text format, version 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

/// What `/metrics` answers a scraper with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exposition {
    Text(Format),
    /// Length-delimited `io.prometheus.client.MetricFamily` protobuf messages.
    Protobuf,
}

/// The media type of the protobuf exposition (and its `Content-Type`).
const PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The highest `q` an `Accept` header gives to each exposition: (protobuf, OpenMetrics,
/// text/plain). Protobuf counts only with `proto=io.prometheus.client.MetricFamily` and
/// `encoding=delimited` (the other encodings are not served).
fn accepted(accept: &str) -> (f32, f32, f32) {
    let (mut protobuf, mut openmetrics, mut plain) = (0.0f32, 0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let (mut q, mut proto, mut delimited) = (1.0f32, false, false);
        for (k, v) in params.filter_map(|p| p.split_once('=')) {
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            if k.eq_ignore_ascii_case("q") {
                q = v.parse::<f32>().unwrap_or(0.0);
            } else if k.eq_ignore_ascii_case("proto") {
                proto = v == "io.prometheus.client.MetricFamily";
            } else if k.eq_ignore_ascii_case("encoding") {
                delimited = v.eq_ignore_ascii_case("delimited");
            }
        }
        match media.as_str() {
            "application/vnd.google.protobuf" if proto && delimited => protobuf = protobuf.max(q),
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" => plain = plain.max(q),
            _ => {}
        }
    }
    (protobuf, openmetrics, plain)
}

impl Exposition {
    /// The exposition for a request's `Accept` header.
    pub(crate) fn negotiate(accept: Option<&str>) -> Exposition {
        let (protobuf, openmetrics, plain) = accept.map_or((0.0, 0.0, 0.0), accepted);
        if protobuf > 0.0 && protobuf >= openmetrics && protobuf >= plain {
            Exposition::Protobuf
        } else {
            Exposition::Text(Format::negotiate(accept))
        }
    }

    /// The `Content-Type` of a response in this exposition.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Exposition::Text(f) => f.content_type(),
            Exposition::Protobuf => PROTOBUF,
        }
    }
}

/// The `/metrics` answer for an `Accept` header: its `Content-Type` and body.
pub(crate) fn exposition(registry: &Registry, accept: Option<&str>) -> (&'static str, Vec<u8>) {
    let chosen = Exposition::negotiate(accept);
    match chosen {
        Exposition::Protobuf => {
            match prometheus_client::encoding::prometheus_protobuf::encode_to_vec(registry) {
                Ok(body) => (chosen.content_type(), body),
                Err(e) => {
                    // Not expected (labels are plain strings); the scraper still gets data.
                    tracing::warn!(error = %e, "metrics: protobuf encoding failed, serving text");
                    let f = Format::Prometheus;
                    (f.content_type(), encode_as(registry, f).into_bytes())
                }
            }
        }
        Exposition::Text(f) => (f.content_type(), encode_as(registry, f).into_bytes()),
    }
}

impl Format {
    /// The text format for a request's `Accept` header.
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        let (_, openmetrics, plain) = accept.map_or((0.0, 0.0, 0.0), accepted);
        if openmetrics > 0.0 && openmetrics >= plain {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of a response in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Renders the registry in `format`.
pub(crate) fn encode_as(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    match format {
        Format::OpenMetrics => out,
        Format::Prometheus => to_prometheus(&out),
    }
}

/// The family being converted: its OpenMetrics name and type.
struct Family<'a> {
    name: &'a str,
    kind: &'a str,
}

/// Converts prometheus-client's OpenMetrics text to the Prometheus text format 0.0.4.
/// prometheus-client writes `# HELP` then `# TYPE` (then `# UNIT`) for every family, so
/// the `# HELP` line is held until the `# TYPE` line says how to name the family.
fn to_prometheus(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    let mut family: Option<Family<'_>> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind_out) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" | "histogram" | "summary" => ("", kind),
                _ => ("", "untyped"),
            };
            if let Some((help_name, text)) = help.take()
                && help_name == name
            {
                let _ = writeln!(out, "# HELP {name}{suffix} {text}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind_out}");
            family = Some(Family { name, kind });
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: not part of 0.0.4.
        } else if !line.is_empty() {
            let sample = without_exemplar(line);
            let created = family.as_ref().is_some_and(|f| {
                f.kind == "counter"
                    && sample
                        .strip_prefix(f.name)
                        .is_some_and(|s| s.starts_with("_created"))
            });
            if !created {
                out.push_str(sample);
                out.push('\n');
            }
        }
    }
    out
}

/// A sample line without its exemplar (` # {...} value`), which 0.0.4 does not have.
/// Label values may contain `#` (escaped quotes are skipped), so the exemplar is looked
/// for only after the label set's closing brace.
fn without_exemplar(line: &str) -> &str {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut labels_end = None;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => {
                labels_end = Some(i);
                break;
            }
            ' ' if !in_quotes && labels_end.is_none() && !line[..i].contains('{') => {
                labels_end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let from = labels_end.unwrap_or(0);
    match line[from..].find(" # ") {
        Some(at) => &line[..from + at],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let table = [
            (None, Format::Prometheus),
            (Some(""), Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain"), Format::Prometheus),
            (Some("text/plain;version=0.0.4"), Format::Prometheus),
            (Some(prometheus), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; version=1.0.0"),
                Format::OpenMetrics,
            ),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Format::Prometheus,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Prometheus),
            (Some("application/json"), Format::Prometheus),
        ];
        for (accept, want) in table {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn protobuf_when_the_scraper_prefers_it() {
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let classic = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let text = |f| Exposition::Text(f);
        let table = [
            (None, text(Format::Prometheus)),
            (Some("*/*"), text(Format::Prometheus)),
            (Some(native), Exposition::Protobuf),
            (Some(classic), text(Format::OpenMetrics)),
            (
                Some(
                    "application/vnd.google.protobuf; proto=\"io.prometheus.client.MetricFamily\"; encoding=delimited",
                ),
                Exposition::Protobuf,
            ),
            (
                Some(
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
                ),
                text(Format::Prometheus),
            ),
            (
                Some("application/vnd.google.protobuf"),
                text(Format::Prometheus),
            ),
            (
                Some(
                    "text/plain, application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5",
                ),
                text(Format::Prometheus),
            ),
        ];
        for (accept, want) in table {
            assert_eq!(Exposition::negotiate(accept), want, "{accept:?}");
        }
        assert_eq!(
            Exposition::Protobuf.content_type(),
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
        );
    }

    #[test]
    fn counters_info_and_eof_are_converted() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"1\"} 3\nx_requests_created{a=\"1\"} 1.7e9\n\
# HELP x_build Build.\n# TYPE x_build info\nx_build_info{version=\"1\"} 1\n\
# HELP x_open Open.\n# TYPE x_open gauge\nx_open 2\n\
# HELP x_lat_seconds Latency.\n# TYPE x_lat_seconds histogram\n# UNIT x_lat_seconds seconds\nx_lat_seconds_sum 1.5\nx_lat_seconds_count 2\nx_lat_seconds_bucket{le=\"+Inf\"} 2 # {trace=\"a\"} 0.5\n\
# HELP x_odd Odd.\n# TYPE x_odd stateset\nx_odd{s=\"a # {b}\"} 1\n# EOF\n";
        let want = "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"1\"} 3\n\
# HELP x_build_info Build.\n# TYPE x_build_info gauge\nx_build_info{version=\"1\"} 1\n\
# HELP x_open Open.\n# TYPE x_open gauge\nx_open 2\n\
# HELP x_lat_seconds Latency.\n# TYPE x_lat_seconds histogram\nx_lat_seconds_sum 1.5\nx_lat_seconds_count 2\nx_lat_seconds_bucket{le=\"+Inf\"} 2\n\
# HELP x_odd Odd.\n# TYPE x_odd untyped\nx_odd{s=\"a # {b}\"} 1\n";
        assert_eq!(to_prometheus(om), want);
    }

    #[test]
    fn exemplars_are_cut_only_outside_label_values() {
        let table = [
            ("a 1", "a 1"),
            ("a 1 # {t=\"x\"} 2", "a 1"),
            ("a{l=\"v # w\"} 1", "a{l=\"v # w\"} 1"),
            ("a{l=\"q\\\"}\"} 1 # {t=\"x\"} 2", "a{l=\"q\\\"}\"} 1"),
        ];
        for (line, want) in table {
            assert_eq!(without_exemplar(line), want, "{line}");
        }
    }
}
