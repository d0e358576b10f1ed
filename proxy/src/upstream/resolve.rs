//! Name resolution for clusters with `resolve`: a small trait, the system resolver
//! (`getaddrinfo` through `tokio::net::lookup_host`), and, for tests, an in-memory map that
//! a test changes while the proxy runs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

/// A resolution in progress.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Resolves a host name to every address it has (all A and AAAA records).
pub trait Resolve: Send + Sync + 'static {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a>;
}

/// The system resolver (`getaddrinfo`, on Tokio's blocking pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Names resolved from a map a test changes at will; an unknown name is an error.
#[cfg(feature = "testing")]
#[derive(Debug, Default)]
pub struct MapResolver {
    map: std::sync::Mutex<std::collections::HashMap<String, Vec<std::net::IpAddr>>>,
}

#[cfg(feature = "testing")]
impl MapResolver {
    /// From now on `host` resolves to `addrs` (an empty list: an error, as NXDOMAIN).
    pub fn set(&self, host: &str, addrs: &[std::net::IpAddr]) {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(host.to_string(), addrs.to_vec());
    }
}

#[cfg(feature = "testing")]
impl Resolve for MapResolver {
    fn lookup<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a> {
        let found = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(host)
            .filter(|a| !a.is_empty())
            .map(|a| a.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        Box::pin(async move {
            found.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name"))
        })
    }
}
