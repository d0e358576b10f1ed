//! What the handler knows about the client connection a request came on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::tunnel::Tunnels;

/// The client connection of a request.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `http`, or `https` for TLS listeners.
    pub proto: &'static str,
    /// The connection's WebSocket tunnels. They run as long as a clone of this handle is
    /// kept (the connection's task keeps one and awaits `Tunnels::finished` before letting
    /// its slot go); dropping every clone stops them.
    pub tunnels: Tunnels,
    /// Idle limit for a tunnel (no byte either way).
    pub tunnel_idle: Duration,
    /// On a TLS listener with client certificates: the verified client's subject.
    pub client_subject: Option<Arc<str>>,
}

impl ConnInfo {
    /// A plain-HTTP connection from `peer`.
    pub fn new(peer: SocketAddr, tunnel_idle: Duration) -> Self {
        ConnInfo {
            peer,
            proto: "http",
            tunnels: Tunnels::default(),
            tunnel_idle,
            client_subject: None,
        }
    }

    /// The same, over TLS (`X-Forwarded-Proto: https`), with the client certificate's
    /// subject when one was verified.
    pub fn with_tls(mut self, client_subject: Option<Arc<str>>) -> Self {
        self.proto = "https";
        self.client_subject = client_subject;
        self
    }
}
