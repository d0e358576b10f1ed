//! What the handler knows about the client connection a request came on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::tunnel::Tunnels;

/// The client connection of a request.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as `X-Forwarded-For` carries it, written once per connection.
    pub peer_ip: HeaderValue,
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
            peer_ip: ip_value(peer),
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

/// An address's text as a header value (always valid: digits, dots, hex and colons).
fn ip_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::try_from(peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_address_is_written_once_as_x_forwarded_for_carries_it() {
        let v4 = ConnInfo::new("10.0.0.7:5000".parse().unwrap(), Duration::from_secs(1));
        assert_eq!(v4.peer_ip, "10.0.0.7");
        let v6 = ConnInfo::new("[2001:db8::1]:443".parse().unwrap(), Duration::from_secs(1));
        assert_eq!(v6.peer_ip, "2001:db8::1");
        assert_eq!(v6.clone().peer_ip, "2001:db8::1");
    }
}
