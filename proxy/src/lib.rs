//! teeproxy: a shadow-traffic tee proxy. Every request is served by the primary cluster;
//! a copy goes, fire-and-forget, to shadow clusters.
//!
//! `App::build` takes a checked config and a metrics registry; `App::serve` takes listeners
//! the caller bound and a shutdown future. Nothing here binds a port or reads the
//! environment by itself.

#![warn(unreachable_pub)]

mod admin;
mod app;
pub mod config;
pub mod demo;
mod http;
mod idle;
pub mod logging;
#[cfg(test)]
mod memory_tests;
mod metrics;
mod proxy;
mod reload;
mod route;
mod server;
mod shadow;
mod shutdown;
mod stats;
pub mod tls;
mod upstream;
mod watch;

pub use app::{App, BindError, LISTEN_BACKLOG, Listeners};
pub use proxy::Proxy;
pub use proxy::body::{ClientBody, RequestBody};
pub use proxy::conn::ConnInfo;
pub use proxy::error::ProxyBody;
pub use reload::Reload;
pub use upstream::{Lookup, Resolve, SystemResolver};
pub use watch::{ConfigWatch, watch_config};

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from (12 hex digits), or `unknown`; see `build.rs`.
pub const COMMIT: &str = env!("TEEPROXY_COMMIT");

/// Internals the fuzz harness and the in-memory tests reach into; not a stable API.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::app::Activity;
    pub use crate::http::checks::{Reject, RequestLimits, check_request};
    pub use crate::http::headers::{
        Forwarded, RequestIds, X_REQUEST_ID, rewrite_request, rewrite_response,
    };
    pub use crate::http::host::request_host;
    pub use crate::server::clock::ConnClock;
    pub use crate::server::guard::H1Tracker;
    pub use crate::upstream::resolve::MapResolver;

    /// The response a refused request gets.
    pub fn reject_response(r: Reject) -> http::Response<crate::ProxyBody> {
        crate::proxy::error::ProxyError::from(r).to_response()
    }

    /// Renders a registry as `/metrics` does.
    pub fn encode_metrics(registry: &prometheus_client::registry::Registry) -> String {
        crate::metrics::encode(registry)
    }
}
