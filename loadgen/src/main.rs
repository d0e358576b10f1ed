//! `loadgen`: tools for benchmarks and demos. For now the fake upstream (the demo
//! application from the teeproxy library); the load driver comes with the benchmark.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use teeproxy::config::Dur;
use teeproxy::demo::{DemoUpstream, UpstreamStats, serve_upstream};

#[derive(Parser, Debug)]
#[command(name = "loadgen", about = "Load tools for teeproxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the demo application as a fake upstream.
    Upstream {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Name sent back in `x-upstream`.
        #[arg(long, default_value = "upstream")]
        name: String,
        /// Delay before every answer (e.g. 0ms, 5ms, 200ms).
        #[arg(long, default_value = "0ms")]
        latency: Dur,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream {
            listen,
            name,
            latency,
        } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            eprintln!(
                "loadgen upstream {name:?} on http://{}, latency {latency}",
                listener.local_addr()?
            );
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stats = Arc::new(UpstreamStats::default());
            let server = tokio::spawn(serve_upstream(
                listener,
                DemoUpstream {
                    name,
                    latency: latency.get(),
                    flawed: false,
                },
                stats.clone(),
                stop_rx,
            ));
            tokio::signal::ctrl_c().await?;
            let _ = stop_tx.send(true);
            let _ = server.await;
            eprintln!(
                "served {} requests",
                stats.requests.load(std::sync::atomic::Ordering::Relaxed)
            );
            Ok(())
        }
    }
}
