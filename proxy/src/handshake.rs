//! Phase 1: greet the client, upgrade to TLS when it asks, read its HandshakeResponse.
//!
//! The greeting goes out before the project is known, so it offers only what every MariaDB
//! 10.6+ backend supports (see [`ProxyConfig::greeting_capabilities`]).

use bytes::BytesMut;
use doze_protocol::{Capabilities, Handshake, HandshakeResponse, SslRequest, is_ssl_request};
use rand::Rng;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::stream::{ClientStream, MAX_HANDSHAKE_PACKET, PacketStream};

/// The plugin every doze greeting names: the only one a proxy holding SHA1(SHA1(pw)) can both
/// verify and re-sign for the backend.
pub const NATIVE_PASSWORD: &str = "mysql_native_password";

/// What the client said in the connection phase.
pub struct ClientHello {
    /// The client's socket, at the sequence id of our next packet to it.
    pub conn: PacketStream<ClientStream>,
    pub response: HandshakeResponse,
    /// The scramble the client signs with (ours).
    pub scramble: [u8; 20],
    /// Client capabilities ∧ greeting capabilities: what this session speaks.
    pub capabilities: Capabilities,
}

/// A handshake that failed, with the stream when an ERR can still be written to it.
pub struct Failed {
    pub conn: Option<PacketStream<ClientStream>>,
    pub error: ProxyError,
}

impl Failed {
    fn new(conn: Option<PacketStream<ClientStream>>, error: ProxyError) -> Self {
        Self { conn, error }
    }
}

/// Greets the client on `tcp` and reads its login request.
pub async fn client_handshake(
    tcp: TcpStream,
    connection_id: u32,
    cfg: &ProxyConfig,
) -> Result<ClientHello, Failed> {
    let greeting_caps = cfg.greeting_capabilities();
    let scramble = new_scramble();
    let greeting = greeting(cfg, connection_id, greeting_caps, &scramble);
    let mut plain = PacketStream::new(tcp);
    if let Err(e) = plain.write(&greeting).await {
        return Err(Failed::new(None, ProxyError::ClientIo(e)));
    }
    let first = tokio::time::timeout(cfg.first_packet_timeout, plain.read(MAX_HANDSHAKE_PACKET));
    let first = match first.await {
        Err(_) => return Err(Failed::new(None, ProxyError::FirstPacketTimeout)),
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            let (tcp, seq) = plain.into_parts();
            let conn = PacketStream::resume(ClientStream::Plain(tcp), seq);
            return Err(Failed::new(Some(conn), ProxyError::client_read(e)));
        }
    };
    let (conn, packet) = if is_ssl_request(&first.payload) {
        let (tcp, seq) = plain.into_parts();
        let Some(tls) = cfg.tls.clone() else {
            let err = ProxyError::ClientProtocol(doze_protocol::ProtocolError::Malformed(
                "SSLRequest, but this server does not offer TLS",
            ));
            let conn = PacketStream::resume(ClientStream::Plain(tcp), seq);
            return Err(Failed::new(Some(conn), err));
        };
        if let Err(e) = SslRequest::decode(&first.payload) {
            return Err(Failed::new(None, ProxyError::ClientProtocol(e)));
        }
        let tls_stream = TlsAcceptor::from(tls)
            .accept(tcp)
            .await
            .map_err(|e| Failed::new(None, ProxyError::Tls(e)))?;
        let mut conn = PacketStream::resume(ClientStream::Tls(Box::new(tls_stream)), seq);
        match conn.read(MAX_HANDSHAKE_PACKET).await {
            Ok(p) => (conn, p),
            Err(e) => return Err(Failed::new(Some(conn), ProxyError::client_read(e))),
        }
    } else {
        let (tcp, seq) = plain.into_parts();
        (PacketStream::resume(ClientStream::Plain(tcp), seq), first)
    };
    if cfg.require_tls && !conn.get_ref().is_tls() {
        return Err(Failed::new(Some(conn), ProxyError::TlsRequired));
    }
    let response = match HandshakeResponse::decode(&packet.payload) {
        Ok(r) => r,
        Err(e) => return Err(Failed::new(Some(conn), ProxyError::ClientProtocol(e))),
    };
    if !response.capabilities.contains(Capabilities::PROTOCOL_41) {
        return Err(Failed::new(Some(conn), ProxyError::ClientTooOld));
    }
    let capabilities = response.capabilities & greeting_caps;
    Ok(ClientHello {
        conn,
        response,
        scramble,
        capabilities,
    })
}

/// 20 random printable bytes from the thread's CSPRNG. Printable because some clients read
/// the second scramble part as a NUL-terminated string.
pub fn new_scramble() -> [u8; 20] {
    let mut rng = rand::rng();
    let mut scramble = [0u8; 20];
    for b in &mut scramble {
        *b = rng.random_range(33u8..127);
    }
    scramble
}

fn greeting(
    cfg: &ProxyConfig,
    connection_id: u32,
    caps: Capabilities,
    scramble: &[u8; 20],
) -> BytesMut {
    let handshake = Handshake {
        protocol_version: 10,
        server_version: cfg.server_version.clone(),
        connection_id,
        scramble: scramble.to_vec(),
        capabilities: caps,
        collation: 45,  // utf8mb4_general_ci, MariaDB 10.11's default
        status: 0x0002, // SERVER_STATUS_AUTOCOMMIT
        auth_plugin: Some(NATIVE_PASSWORD.to_owned()),
    };
    let mut out = BytesMut::with_capacity(128);
    handshake.encode(&mut out);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scramble_is_printable_and_random() {
        let a = new_scramble();
        let b = new_scramble();
        assert_ne!(a, b);
        assert!(a.iter().all(|&c| (33..127).contains(&c)));
    }

    #[test]
    fn greeting_decodes_with_our_capabilities() {
        let cfg = ProxyConfig::default();
        let scramble = new_scramble();
        let bytes = greeting(&cfg, 7, cfg.greeting_capabilities(), &scramble);
        let parsed = Handshake::decode(&bytes).unwrap();
        assert_eq!(parsed.connection_id, 7);
        assert_eq!(parsed.scramble, scramble.to_vec());
        assert_eq!(parsed.capabilities, cfg.greeting_capabilities());
        assert_eq!(parsed.auth_plugin.as_deref(), Some(NATIVE_PASSWORD));
    }
}
