//! `config/teeproxy.schema.json`: every shipped config passes it under a real JSON Schema
//! validator (`check-jsonschema`), and it cannot drift from the binary: every key that
//! `teeproxy check --json` prints is described in it, with the same default.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;

use common::{check_json_text, tool, write_self_signed, write_temp, yaml_files};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema_path() -> PathBuf {
    root().join("config/teeproxy.schema.json")
}

fn schema() -> Value {
    let text = std::fs::read_to_string(schema_path()).expect("read the schema");
    serde_json::from_str(&text).expect("the schema is JSON")
}

/// `check-jsonschema` from `$TEEPROXY_VENV/bin` or PATH; `None` (the caller skips) when
/// neither has it, unless `CI` is set.
fn check_jsonschema() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("TEEPROXY_VENV")
        .map(|venv| PathBuf::from(venv).join("bin/check-jsonschema"))
        .into_iter()
        .chain([PathBuf::from("check-jsonschema")])
        .collect();
    tool(
        "check-jsonschema",
        &candidates,
        "pip install check-jsonschema, or set TEEPROXY_VENV",
    )
}

fn validate(tool: &Path, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(tool)
        .arg("--schemafile")
        .arg(schema_path())
        .args(files)
        .stdin(Stdio::null())
        .output()
        .expect("run check-jsonschema");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_shipped_config_passes_the_schema() {
    let Some(tool) = check_jsonschema() else {
        return;
    };
    let meta = Command::new(&tool)
        .arg("--check-metaschema")
        .arg(schema_path())
        .stdin(Stdio::null())
        .output()
        .expect("run check-jsonschema");
    assert!(
        meta.status.success(),
        "the schema is not valid JSON Schema: {}",
        String::from_utf8_lossy(&meta.stdout)
    );
    let mut files = Vec::new();
    yaml_files(&root().join("config"), &mut files);
    assert!(
        files.len() >= 4,
        "config/tee.yaml and the examples: {files:?}"
    );
    // The config the Kubernetes manifests ship.
    files.push(root().join("deploy/kubernetes/tee.yaml"));
    let (ok, text) = validate(&tool, &files);
    assert!(ok, "{text}");
    // The validator does reject what the binary rejects.
    let bad = [
        (
            "unknown-key.yaml",
            "routes: [{ name: r, primary: a, bogus: 1 }]",
            "bogus",
        ),
        ("duration.yaml", "drain_timeout: 30s1m", "drain_timeout"),
        ("duration-unit.yaml", "drain_timeout: 30", "drain_timeout"),
        (
            "size.yaml",
            "limits: { max_uri_bytes: 4Kb }",
            "max_uri_bytes",
        ),
        ("enum.yaml", "x_forwarded_for: prepend", "x_forwarded_for"),
    ];
    for (name, extra, key) in bad {
        let mut yaml = "listeners: [{ name: a, address: \"127.0.0.1:1\" }]\nclusters: { a: { endpoints: [\"http://127.0.0.1:2\"] } }\n".to_string();
        if !extra.starts_with("routes") {
            yaml.push_str("routes: [{ name: r, primary: a }]\n");
        }
        yaml.push_str(extra);
        yaml.push('\n');
        let path = write_temp(name, &yaml);
        let (ok, text) = validate(&tool, &[path]);
        assert!(
            !ok && text.contains(key),
            "{name} should fail on {key}: {text}"
        );
    }
}

/// Follows `#/$defs/...` references.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/$defs/").expect("local $defs reference");
            resolve(root, &root["$defs"][name])
        }
        None => node,
    }
}

/// The schema nodes a value at `key` of `node` may match: its property, or its
/// `additionalProperties` schema (maps), looking into `oneOf`/`anyOf` alternatives.
fn child<'a>(root: &'a Value, node: &'a Value, key: &str) -> Vec<&'a Value> {
    let node = resolve(root, node);
    let mut out = Vec::new();
    if let Some(p) = node.get("properties").and_then(|p| p.get(key)) {
        out.push(p);
    } else if let Some(a) = node.get("additionalProperties").filter(|a| a.is_object()) {
        out.push(a);
    }
    for alt in ["oneOf", "anyOf"] {
        for branch in node
            .get(alt)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.extend(child(root, branch, key));
        }
    }
    out
}

/// The schemas of the items of an array schema (through `oneOf`/`anyOf`).
fn items<'a>(root: &'a Value, node: &'a Value) -> Vec<&'a Value> {
    let node = resolve(root, node);
    let mut out: Vec<&Value> = node.get("items").into_iter().collect();
    for alt in ["oneOf", "anyOf"] {
        for branch in node
            .get(alt)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.extend(items(root, branch));
        }
    }
    out
}

/// The keys the defaults config writes (their values are not defaults).
const WRITTEN: [&str; 1] = ["$.routes[0].shadows"];

/// Walks `value` (as `check --json` prints it) against the schema: every object key must
/// be described; with `defaults` (a config that leaves the key out, unless `WRITTEN`),
/// every described default must equal the value the binary used.
fn walk(
    root: &Value,
    node: &Value,
    value: &Value,
    at: &str,
    defaults: bool,
    problems: &mut Vec<String>,
) {
    let default = node.get("default").or(resolve(root, node).get("default"));
    if defaults
        && !WRITTEN.contains(&at)
        && let Some(want) = default
    {
        let same = match (want.as_f64(), value.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => want == value,
        };
        if !same {
            problems.push(format!(
                "{at}: the schema's default is {want}, the binary's {value}"
            ));
        }
    }
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let path = format!("{at}.{key}");
                let nodes = child(root, node, key);
                if nodes.is_empty() {
                    problems.push(format!("{path}: not in the schema"));
                }
                // A key the schema knows in several alternatives: walk the first that
                // knows it (they describe the same key).
                if let Some(n) = nodes.first() {
                    walk(root, n, v, &path, defaults, problems);
                }
            }
        }
        Value::Array(list) => {
            let nodes = items(root, node);
            for (i, v) in list.iter().enumerate() {
                if let Some(n) = nodes.first() {
                    walk(root, n, v, &format!("{at}[{i}]"), defaults, problems);
                }
            }
        }
        _ => {}
    }
}

fn check_json(yaml: &str, name: &str) -> Value {
    serde_json::from_str(&check_json_text(yaml, name)).expect("JSON")
}

#[test]
fn the_schema_knows_every_key_the_binary_knows_with_its_default() {
    let schema = schema();
    // Every optional part present, so `check --json` prints every key there is.
    let everything = check_json(
        "listeners: [{ name: a, address: \"127.0.0.1:1\" }]\nclusters:\n  p: { endpoints: [\"http://127.0.0.1:2\"] }\n  s: { endpoints: [\"http://127.0.0.1:3\"] }\n  t: { endpoints: [\"http://127.0.0.1:4\"] }\nroutes:\n  - name: r\n    match: { path_prefix: /api, host: example.com, methods: [GET] }\n    primary: p\n    paths: [\"/api/{id}\"]\n    shadows:\n      - cluster: s\n        sample_key: { header: x-user }\n        host: { suffix: \"-shadow\" }\n        headers: { set: { x-env: shadow }, remove: [cookie] }\n        compare: { body: json, ignore: [\"/ts\"] }\n      - cluster: t\n        sample_key: { cookie: session }\n        methods: any\n",
        "everything.yaml",
    );
    let mut problems = Vec::new();
    walk(&schema, &schema, &everything, "$", false, &mut problems);
    // Defaults: a config that leaves every optional key out.
    let defaults = check_json(
        "listeners: [{ name: a, address: \"127.0.0.1:1\" }]\nclusters:\n  p: { endpoints: [\"http://127.0.0.1:2\"] }\nroutes:\n  - { name: r, primary: p, shadows: [{ cluster: p }] }\n",
        "defaults.yaml",
    );
    walk(&schema, &schema, &defaults, "$", true, &mut problems);
    // Endpoint health and discovery: the defaults inside `health: {}`.
    let health = check_json(
        "listeners: [{ name: a, address: \"127.0.0.1:1\" }]\nclusters:\n  p: { endpoints: [\"http://127.0.0.1:2\"], health: {}, resolve: 10s }\nroutes:\n  - { name: r, primary: p }\n",
        "health.yaml",
    );
    walk(&schema, &schema, &health, "$", true, &mut problems);
    // Upstream TLS: the defaults inside `tls: {}`, then every key written.
    let tls_defaults = check_json(
        "listeners: [{ name: a, address: \"127.0.0.1:1\" }]\nclusters:\n  p: { endpoints: [\"https://127.0.0.1:2\"], tls: {} }\nroutes:\n  - { name: r, primary: p }\n",
        "tls-defaults.yaml",
    );
    walk(&schema, &schema, &tls_defaults, "$", true, &mut problems);
    let tls = check_json(
        "listeners: [{ name: a, address: \"127.0.0.1:1\" }]\nclusters:\n  p: { endpoints: [\"https://127.0.0.1:2\"], tls: { server_name: p.test, insecure_skip_verify: true } }\nroutes:\n  - { name: r, primary: p }\n",
        "tls.yaml",
    );
    walk(&schema, &schema, &tls, "$", false, &mut problems);
    // TLS listeners: every key, then the defaults of a one-pair listener.
    let dir = std::env::temp_dir().join(format!("teeproxy-schema-{}", std::process::id()));
    let (cert, key) = write_self_signed(&dir, "a", &["a.test"]);
    let (ca, _) = write_self_signed(&dir, "clients-ca", &["clients"]);
    let (c, k, ca) = (cert.display(), key.display(), ca.display());
    let tls = check_json(
        &format!(
            "listeners: [{{ name: a, address: \"127.0.0.1:1\", tls: {{ certificates: [{{ cert: \"{c}\", key: \"{k}\", server_names: [a.test] }}], default: a.test, client_ca: \"{ca}\", client_auth: optional, handshake_timeout: 3s }} }}]\nclusters:\n  p: {{ endpoints: [\"http://127.0.0.1:2\"] }}\nroutes:\n  - {{ name: r, primary: p }}\n"
        ),
        "tls.yaml",
    );
    walk(&schema, &schema, &tls, "$", false, &mut problems);
    let tls_defaults = check_json(
        &format!(
            "listeners: [{{ name: a, address: \"127.0.0.1:1\", tls: {{ cert: \"{c}\", key: \"{k}\" }} }}]\nclusters:\n  p: {{ endpoints: [\"http://127.0.0.1:2\"] }}\nroutes:\n  - {{ name: r, primary: p }}\n"
        ),
        "tls-defaults.yaml",
    );
    assert_eq!(
        tls_defaults["listeners"][0]["tls"]["certificates"][0]["cert"],
        c.to_string()
    );
    walk(&schema, &schema, &tls_defaults, "$", true, &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The walk itself notices a key the schema lacks.
    let mut problems = Vec::new();
    let mut extra = defaults.clone();
    extra["limits"]["new_limit"] = Value::from(1);
    walk(&schema, &schema, &extra, "$", false, &mut problems);
    assert_eq!(problems, ["$.limits.new_limit: not in the schema"]);
}
