//! The proxy's settings, resolved once at start and copied into each connection's context so the
//! data path never consults a global.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use doze_protocol::Capabilities;

/// Settings of the data path.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// TLS for clients; `None` means SSL is not advertised.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Refuse clients that do not upgrade to TLS.
    pub require_tls: bool,
    /// Route by SNI `<project>.<suffix>` when set.
    pub sni_suffix: Option<String>,
    /// Version string in the greeting. MariaDB 10.x clients strip the `5.5.5-` prefix.
    pub server_version: String,
    /// The whole connection phase (greeting to authenticated) must finish within this.
    pub handshake_timeout: Duration,
    /// The client's first packet (its login request or SSLRequest) must arrive within this:
    /// a silent socket is closed long before the whole handshake timeout.
    pub first_packet_timeout: Duration,
    /// Connections still in the connection phase, all clients together. They are counted apart
    /// from sessions, so silent sockets can never take an authenticated client's slot.
    pub max_pending_logins: usize,
    /// Connections still in the connection phase from one client address, enforced once half
    /// of `max_pending_logins` is taken.
    pub max_pending_logins_per_ip: usize,
    /// Delays of answers to logins after failed passwords (per role and per client address).
    pub auth_backoff: crate::throttle::Backoff,
    pub connect_timeout: Duration,
    /// The compute must answer doze's login within this once connected; then the address is
    /// dropped, the compute's liveness checked and the client told, instead of a hang.
    pub backend_login_timeout: Duration,
    pub wake_timeout: Duration,
    /// Authenticated sessions open at once, all projects together.
    pub max_connections: usize,
    /// Connections open at once for one project (0 = no limit).
    pub max_connections_per_project: u64,
    pub drain_timeout: Duration,
    /// Send a PROXY protocol v2 header to the backend so MariaDB sees the client's address
    /// (the backend must list doze in `proxy_protocol_networks`).
    pub backend_proxy_protocol: bool,
    /// TLS to computes (`--backend-tls require`); `None`: plain TCP.
    pub backend_tls: Option<crate::tls::BackendTls>,
    /// Accept up to this many connections queued in the kernel.
    pub backlog: u32,
    /// Bind with SO_REUSEPORT so several doze processes can share the port.
    pub reuse_port: bool,
    /// Threads that carry sessions, each with its own event loop and listening socket (see
    /// [`crate::accept::serve_on_threads`]); 0 runs them on the caller's runtime.
    pub threads: usize,
    /// Reuse of logged-in backend sessions.
    pub pool: crate::pool::PoolConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6033)),
            tls: None,
            require_tls: false,
            sni_suffix: None,
            server_version: DEFAULT_SERVER_VERSION.to_owned(),
            handshake_timeout: Duration::from_secs(10),
            first_packet_timeout: Duration::from_secs(3),
            max_pending_logins: 4096,
            max_pending_logins_per_ip: 64,
            auth_backoff: crate::throttle::Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            backend_login_timeout: Duration::from_secs(5),
            wake_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_project: 0,
            drain_timeout: Duration::from_secs(30),
            backend_proxy_protocol: false,
            backend_tls: None,
            backlog: 4096,
            reuse_port: false,
            threads: 0,
            pool: crate::pool::PoolConfig::default(),
        }
    }
}

/// What doze announces by default: a MariaDB 10.11 server, prefixed as MariaDB 10.x does so
/// that old MySQL clients parse a 5.5-compatible version.
pub const DEFAULT_SERVER_VERSION: &str = "5.5.5-10.11.0-MariaDB-doze";

impl ProxyConfig {
    /// Capabilities in the greeting: what every MariaDB 10.6+ backend supports (MariaDB's own
    /// greeting, 0x81FFF7FE low word and extended 0x1D), minus CLIENT_COMPRESS (compressed
    /// framing would hide packet boundaries from the relay), never MySQL-8-only bits such as
    /// QUERY_ATTRIBUTES (they change the COM_QUERY layout), and SSL only when TLS is set up.
    pub fn greeting_capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::from_parts(0x81FF_F7FE, 0x1D);
        caps.remove(Capabilities::COMPRESS);
        caps.remove(Capabilities::SSL);
        if self.tls.is_some() {
            caps.insert(Capabilities::SSL);
        }
        caps
    }
}

/// Parses durations such as `250ms`, `30s`, `5m`, `1h`, `1h 30m`, `500us` (humantime), or a
/// bare number of seconds (`2`, `0.5`): what every duration flag of `doze` and of
/// `doze-loadtest` takes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{text}' is not a valid number of seconds"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration ({e}); use e.g. 250ms, 30s, 5m, 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_never_offers_compress_or_mysql_only_bits() {
        let caps = ProxyConfig::default().greeting_capabilities();
        assert!(!caps.contains(Capabilities::COMPRESS));
        assert!(!caps.contains(Capabilities::SSL));
        assert!(!caps.contains(Capabilities::CLIENT_MYSQL));
        for bit in [
            Capabilities::QUERY_ATTRIBUTES,
            Capabilities::ZSTD_COMPRESSION,
            Capabilities::OPTIONAL_RESULTSET_METADATA,
            Capabilities::MULTI_FACTOR_AUTH,
        ] {
            assert!(!caps.contains(bit), "{bit:?} offered");
        }
        assert!(caps.contains(Capabilities::PROTOCOL_41 | Capabilities::DEPRECATE_EOF));
        assert!(caps.contains(Capabilities::MARIADB_CLIENT_CACHE_METADATA));
    }
}
