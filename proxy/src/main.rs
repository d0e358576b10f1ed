//! `teeproxy`: parses the command line, sets up logging, loads the config (exit 64 when it
//! is invalid) and hands over to the library.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use teeproxy::config::Config;
use teeproxy::demo::{DemoUpstream, UpstreamStats, demo_config, generate_traffic, serve_upstream};
use teeproxy::logging::{self, LogFormat};
use teeproxy::{App, Listeners, Reload};

/// Exit status for a configuration error (EX_CONFIG would be 78; 64 is EX_USAGE, which
/// the project uses for every bad-input case).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "teeproxy",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TEEPROXY_COMMIT"), ")"),
    about = "Shadow-traffic tee proxy: the primary serves, shadows get a copy"
)]
struct Cli {
    /// The YAML config to serve with.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Do not watch the config file (SIGHUP still reloads it).
    #[arg(long)]
    no_watch: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config and print a summary; exit 0 when valid, 64 when not.
    Check {
        /// Print the checked config as JSON (as `/api/config` shows it) instead.
        #[arg(long)]
        json: bool,
    },
    /// Run a self-contained demo: in-process upstreams on loopback and the proxy in front.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin endpoint (and the dashboard) listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Requests per second of built-in traffic (0: none).
        #[arg(long, default_value_t = 50)]
        rate: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { json }) => check(cli.config, json),
        Some(Command::Demo {
            listen,
            admin,
            rate,
        }) => {
            logging::init(cli.log_format);
            report(runtime().and_then(|rt| rt.block_on(demo(listen, admin, rate))))
        }
        None => {
            let config = match load_config(
                cli.config.as_deref(),
                "teeproxy: --config FILE is required (or try `teeproxy demo`)",
            ) {
                Ok(c) => c,
                Err(code) => return code,
            };
            logging::init(cli.log_format);
            let path = cli.config.expect("loaded from a path");
            let watch = !cli.no_watch;
            report(runtime().and_then(|rt| rt.block_on(serve(config, path, watch))))
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("teeproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime: one worker per core, or `TEEPROXY_WORKERS`; with one worker, a
/// current-thread runtime (no work-stealing machinery on the request path).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let workers: Option<usize> = std::env::var("TEEPROXY_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut b = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build().context("starting the runtime")
}

/// Loads and validates the config; on any problem prints it and returns exit status 64.
fn load_config(path: Option<&std::path::Path>, missing: &str) -> Result<Config, ExitCode> {
    let Some(path) = path else {
        eprintln!("{missing}");
        return Err(ExitCode::from(EXIT_CONFIG));
    };
    let config = Config::load(path).map_err(|e| {
        eprintln!("teeproxy: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    // TLS listeners' certificates and keys must load (and match) before anything starts.
    teeproxy::tls::inspect(&config).map_err(|e| {
        eprintln!("teeproxy: {}: {e}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })?;
    Ok(config)
}

fn check(path: Option<PathBuf>, json: bool) -> ExitCode {
    let config = match load_config(path.as_deref(), "teeproxy check: --config FILE is required") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = path.expect("loaded from a path");
    for (name, c) in &config.clusters {
        if c.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            eprintln!(
                "teeproxy check: warning: clusters.{name}.tls.insecure_skip_verify is true: the upstream's certificate is not verified"
            );
        }
    }
    // Written at once, and a closed stdout (`| head`) is not an error.
    let out = if json {
        format!("{:#}\n", config.to_json())
    } else {
        summary(&path, &config)
    };
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    ExitCode::SUCCESS
}

/// A human summary of a checked config, read from the typed config itself.
fn summary(path: &std::path::Path, config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", path.display());
    let _ = writeln!(out, "listeners:");
    let certs = teeproxy::tls::inspect(config).unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for l in &config.listeners {
        let Some(tls) = &l.tls else {
            let _ = writeln!(out, "  {:<12} {}", l.name, l.address);
            continue;
        };
        let client = match &tls.client_ca {
            None => String::new(),
            Some(ca) => format!(
                ", client certificates {} (CA {})",
                if tls.client_auth == teeproxy::config::ClientAuth::Required {
                    "required"
                } else {
                    "optional"
                },
                ca.display()
            ),
        };
        let _ = writeln!(
            out,
            "  {:<12} {} TLS 1.2/1.3, ALPN h2 http/1.1, handshake timeout {}ms{}",
            l.name,
            l.address,
            tls.handshake_timeout.as_millis(),
            client
        );
        let Some(found) = certs.iter().find(|c| c.listener == l.name) else {
            continue;
        };
        for (i, ((info, names), paths)) in
            found.certificates.iter().zip(&tls.certificates).enumerate()
        {
            let _ = writeln!(
                out,
                "  {:<12}   certificate {}{} {}",
                "",
                paths.cert.display(),
                if i == found.default { " (default)" } else { "" },
                if names.is_empty() {
                    String::new()
                } else {
                    format!("for {}", names.join(","))
                },
            );
            let Some(info) = info else {
                let _ = writeln!(
                    out,
                    "  {:<12}     subject, SANs and expiry not readable here (rustls serves it)",
                    ""
                );
                continue;
            };
            let days = (info.not_after - now) as f64 / 86_400.0;
            let _ = writeln!(out, "  {:<12}     subject {}", "", info.subject);
            let _ = writeln!(out, "  {:<12}     SANs {}", "", info.sans.join(", "));
            let _ = writeln!(
                out,
                "  {:<12}     expires {} (unix {}, {})",
                "",
                teeproxy::config::x509::format_time(info.not_after),
                info.not_after,
                if days < 0.0 {
                    format!("EXPIRED {:.0} days ago", -days)
                } else {
                    format!("in {days:.0} days")
                }
            );
        }
    }
    let a = &config.admin;
    let _ = writeln!(
        out,
        "admin:        {}{}{}",
        a.address,
        a.token_file
            .as_ref()
            .map_or(String::new(), |t| format!(" (token file {})", t.display())),
        a.metrics_address
            .map_or(String::new(), |m| format!(", metrics only on {m}")),
    );
    let _ = writeln!(out, "clusters:");
    let json = config.to_json();
    for (name, c) in &config.clusters {
        let eps: Vec<String> = c.endpoints.iter().map(ToString::to_string).collect();
        let j = &json["clusters"][name];
        let _ = writeln!(
            out,
            "  {:<12} {} (connect {}, timeout {}, host {})",
            name,
            eps.join(", "),
            j["connect_timeout"].as_str().unwrap_or("?"),
            j["timeout"].as_str().unwrap_or("?"),
            j["host"].as_str().unwrap_or("?"),
        );
        if let Some(t) = &c.tls {
            let _ = writeln!(out, "  {:<12}   {}", "", tls_summary(t));
        }
    }
    let _ = writeln!(out, "routes (first match wins):");
    for (i, r) in config.routes.iter().enumerate() {
        let m = &r.match_;
        let methods = m.methods.as_ref().map_or("any".to_string(), |ms| {
            ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
        });
        let _ = writeln!(
            out,
            "  {:<12} prefix {} host {} methods {} -> {}",
            r.name,
            m.path_prefix,
            m.host.as_deref().unwrap_or("*"),
            methods,
            r.primary
        );
        for (j, sh) in r.shadows.iter().enumerate() {
            let s = &json["routes"][i]["shadows"][j];
            let methods = match &s["methods"] {
                serde_json::Value::Array(l) => l
                    .iter()
                    .filter_map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.as_str().unwrap_or("any").to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<12}   shadow {} {}% methods {} max_body {} timeout {}",
                "",
                sh.cluster,
                sh.percent,
                methods,
                s["max_body"].as_str().unwrap_or("?"),
                s["timeout"].as_str().unwrap_or("?"),
            );
        }
    }
    let l = &json["limits"];
    let _ = writeln!(
        out,
        "limits:       headers {} / {} fields, uri {}, head timeout {}; drain {} after a delay of {}",
        l["max_header_bytes"].as_str().unwrap_or("?"),
        config.limits.max_headers,
        l["max_uri_bytes"].as_str().unwrap_or("?"),
        l["request_head_timeout"].as_str().unwrap_or("?"),
        json["drain_timeout"].as_str().unwrap_or("?"),
        json["drain_delay"].as_str().unwrap_or("?"),
    );
    out
}

/// A cluster's upstream TLS on one line: trust, name, client certificate.
fn tls_summary(t: &teeproxy::config::ClusterTls) -> String {
    let trust = if t.insecure_skip_verify {
        "tls NOT VERIFIED (insecure_skip_verify: true)".to_string()
    } else {
        match &t.ca {
            Some(ca) => format!(
                "tls verified against ca {} ({} CA certificate{})",
                ca.display(),
                t.loaded.roots.len(),
                if t.loaded.roots.len() == 1 { "" } else { "s" }
            ),
            None => "tls verified against the built-in roots".to_string(),
        }
    };
    let name = t
        .server_name
        .as_ref()
        .map_or(String::new(), |n| format!(", server_name {n}"));
    let client = match (&t.cert, &t.loaded.client) {
        (Some(path), Some(c)) => match &c.info {
            Some(i) => format!(
                ", client certificate {} (subject {}, expires {}{})",
                path.display(),
                i.subject,
                teeproxy::config::x509::format_time(i.not_after),
                if i.sans.is_empty() {
                    String::new()
                } else {
                    format!(", SANs {}", i.sans.join(", "))
                }
            ),
            None => format!(", client certificate {}", path.display()),
        },
        _ => String::new(),
    };
    format!("{trust}{name}{client}")
}

async fn serve(config: Config, path: PathBuf, watch: bool) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // Changes to the file reload it as SIGHUP does (the watch ends when dropped).
    let _watch = if watch {
        match teeproxy::watch_config(&path, tx.clone()) {
            Ok(w) => {
                tracing::info!(path = %path.display(), "watching the config file");
                Some(w)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch the config file: reload it with SIGHUP");
                None
            }
        }
    } else {
        None
    };
    let hangups = tokio::spawn(reload_on_hangup(path, tx));
    let mut registry = Registry::default();
    let app = App::build(config, &mut registry);
    app.serve(listeners, registry, shutdown_signal(), rx).await;
    hangups.abort();
    Ok(())
}

/// On each SIGHUP, reads and validates the config file again and hands the result over:
/// a config that does not load is reported, and the running one stays. The handler is
/// installed when this is called (a SIGHUP during start-up reloads, never terminates).
fn reload_on_hangup(
    path: PathBuf,
    tx: tokio::sync::mpsc::Sender<Reload>,
) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let Ok(mut hangup) = hangup else {
                tracing::warn!("cannot listen for SIGHUP: config reload is off");
                return;
            };
            while hangup.recv().await.is_some() {
                tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
                if tx.send(Reload::load(&path)).await.is_err() {
                    return;
                }
            }
        }
        #[cfg(not(unix))]
        drop((path, tx));
    }
}

async fn demo(listen: SocketAddr, admin: SocketAddr, rate: u32) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let primary_l = tokio::net::TcpListener::bind(loopback(0)).await?;
    let candidate_l = tokio::net::TcpListener::bind(loopback(0)).await?;
    let baseline_l = tokio::net::TcpListener::bind(loopback(0)).await?;
    let primary = primary_l.local_addr()?;
    let candidate = candidate_l.local_addr()?;
    let baseline = baseline_l.local_addr()?;
    let config = demo_config(listen, admin, primary, candidate, baseline).context("demo config")?;
    let listeners = Listeners::bind(&config).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let upstream = |name: &str, flawed| DemoUpstream {
        name: name.into(),
        flawed,
        ..Default::default()
    };
    tasks.spawn(serve_upstream(
        primary_l,
        upstream("primary", false),
        Arc::new(UpstreamStats::default()),
        stop_rx.clone(),
    ));
    tasks.spawn(serve_upstream(
        candidate_l,
        upstream("candidate", true),
        Arc::new(UpstreamStats::default()),
        stop_rx.clone(),
    ));
    tasks.spawn(serve_upstream(
        baseline_l,
        upstream("baseline", false),
        Arc::new(UpstreamStats::default()),
        stop_rx.clone(),
    ));
    let proxy = listeners.proxy_addrs()[0];
    let admin = listeners.admin_addr().unwrap_or(admin);
    if rate > 0 {
        tasks.spawn(teeproxy::demo::tell_story(admin, stop_rx.clone()));
    }
    tasks.spawn(generate_traffic(proxy, rate, stop_rx));
    println!("teeproxy demo: proxy on http://{proxy}, admin on http://{admin}");
    println!("  dashboard: http://{admin}/  (primary vs shadow per path, live)");
    println!("  primary upstream   http://{primary}");
    println!("  candidate upstream http://{candidate} (the shadow: a new version with flaws)");
    println!(
        "  baseline upstream  http://{baseline} (the primary's version: what differs there is noise)"
    );
    if rate > 0 {
        println!(
            "  built-in traffic: about {rate} requests/s over /api/users, /api/orders, /api/search, /api/products"
        );
    }
    println!(
        "The candidate is about 25 % slower on /api/search, answers a different `plan` on 1 % of"
    );
    println!(
        "/api/users/{{id}} and fails 0.5 % of /api/orders. Every answer's `served_at` differs on every"
    );
    println!(
        "leg: the baseline shows it is noise. The verdict is printed below every 20 s as it forms."
    );
    println!("try:");
    println!("  curl -i http://{proxy}/api/users/42");
    println!("  curl -s http://{admin}/api/verdict");
    println!("  curl -s http://{admin}/api/paths");
    println!("  curl -s http://{admin}/api/mismatches");
    println!("  curl -s http://{admin}/metrics | grep shadow");
    println!("Ctrl-C stops it.");
    let mut registry = Registry::default();
    let app = App::build(config, &mut registry);
    let (_keep, reloads) = tokio::sync::mpsc::channel(1);
    app.serve(listeners, registry, shutdown_signal(), reloads)
        .await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future
/// is first polled: a signal that arrives while the listeners start is a graceful
/// shutdown, never the default action's abrupt exit.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let one = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = one(term) => {}
                _ = one(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
