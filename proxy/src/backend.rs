//! Phase 5: connect to the compute and log in as the client.
//!
//! Both legs must agree on every flag that changes the wire format after login, or the relay
//! would corrupt the stream; when the backend lacks one the client agreed to, the client gets a
//! clear ERR instead.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use doze_protocol::native_password::sign_with_hash1;
use doze_protocol::{
    AuthSwitchRequest, Capabilities, ErrPacket, Handshake, HandshakeResponse, Packet,
    ProtocolError, SslRequest,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::Credentials;
use crate::error::ProxyError;
use crate::handshake::NATIVE_PASSWORD;
use crate::proxy_protocol;
use crate::stream::{BackendStream, MAX_HANDSHAKE_PACKET, read_packet, write_payload};
use crate::tls::BackendTls;

/// Flags that change the wire format after login: both legs must carry the same value.
pub fn format_flags() -> Capabilities {
    Capabilities::PROTOCOL_41
        | Capabilities::DEPRECATE_EOF
        | Capabilities::SESSION_TRACK
        | Capabilities::MULTI_RESULTS
        | Capabilities::PS_MULTI_RESULTS
        | Capabilities::COMPRESS
        | Capabilities::MARIADB_CLIENT_PROGRESS
        | Capabilities::MARIADB_CLIENT_COM_MULTI
        | Capabilities::MARIADB_CLIENT_STMT_BULK_OPERATIONS
        | Capabilities::MARIADB_CLIENT_EXTENDED_METADATA
        | Capabilities::MARIADB_CLIENT_CACHE_METADATA
        | Capabilities::MARIADB_CLIENT_BULK_UNIT_RESULTS
}

/// Who the backend leg logs in as, and with what session settings.
pub struct Login<'a> {
    pub user: &'a str,
    pub database: Option<&'a str>,
    pub credentials: &'a Credentials,
    /// The client session's capabilities (client ∧ greeting).
    pub capabilities: Capabilities,
    pub collation: u8,
    pub max_packet: u32,
    pub attributes: Option<&'a [(String, String)]>,
    /// Sent as a PROXY v2 header first when set.
    pub proxy_header: Option<(SocketAddr, SocketAddr)>,
}

/// A logged-in backend connection.
pub struct Backend {
    pub stream: BackendStream,
    /// The payload of the backend's final OK, to forward to the client.
    pub ok_payload: bytes::Bytes,
    /// The scramble the backend expects COM_CHANGE_USER tokens to be signed with.
    pub scramble: Vec<u8>,
    /// The backend leg's capabilities.
    pub capabilities: Capabilities,
    /// MariaDB's id of the session (what `CONNECTION_ID()` returns, what KILL names).
    pub thread_id: u32,
    /// When the TCP connection was made: a pooled session's lifetime counts from here.
    pub connected_at: std::time::Instant,
    /// The compute it belongs to: its address and id (set by the connector).
    pub address: String,
    pub compute_id: String,
    /// Set when the session may go back to the pool once its client leaves.
    pub pool_key: Option<crate::pool::SessionKey>,
    /// The session thread whose event loop the socket is registered with (see
    /// [`crate::pool::home`]): where it logged in, or where the pool last moved it.
    pub home: u32,
}

/// Opens a TCP connection to `address` within `timeout`.
pub async fn connect(address: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Logs in on a connected `stream`, over TLS first when `tls` is set (the compute must offer
/// it: a compute that does not is refused, never used in the clear).
pub async fn login(
    mut stream: TcpStream,
    login: &Login<'_>,
    tls: Option<&BackendTls>,
) -> Result<Backend, ProxyError> {
    let connected_at = std::time::Instant::now();
    if let Some((client, local)) = login.proxy_header {
        let header = proxy_protocol::v2_header(client, local);
        stream
            .write_all(&header)
            .await
            .map_err(ProxyError::BackendIo)?;
    }
    let greeting = read_backend(&mut stream).await?;
    if greeting.payload.first() == Some(&0xff) {
        return Err(backend_err(&greeting.payload));
    }
    let handshake = Handshake::decode(&greeting.payload).map_err(ProxyError::BackendProtocol)?;
    let capabilities = backend_capabilities(login, handshake.capabilities)?;
    let mut seq = greeting.seq.wrapping_add(1);
    let (mut stream, sent_caps) = match tls {
        None => (BackendStream::Plain(stream), capabilities),
        Some(tls) => {
            if !handshake.capabilities.contains(Capabilities::SSL) {
                return Err(ProxyError::BackendIncompatible(
                    "it does not offer TLS, and doze requires TLS to computes (--backend-tls require)"
                        .to_owned(),
                ));
            }
            let caps = capabilities | Capabilities::SSL;
            let mut request = BytesMut::with_capacity(32);
            SslRequest {
                capabilities: caps,
                max_packet: login.max_packet,
                collation: login.collation,
            }
            .encode(&mut request);
            write_payload(&mut stream, seq, &request)
                .await
                .map_err(ProxyError::BackendIo)?;
            seq = seq.wrapping_add(1);
            let secured = tls
                .connector
                .connect(tls.server_name.clone(), stream)
                .await
                .map_err(|e| {
                    ProxyError::BackendIncompatible(format!("its TLS handshake failed: {e}"))
                })?;
            (BackendStream::Tls(Box::new(secured)), caps)
        }
    };
    let scramble = handshake.scramble.clone();
    let response = HandshakeResponse {
        capabilities: sent_caps,
        max_packet: login.max_packet,
        collation: login.collation,
        username: login.user.to_owned(),
        auth_response: sign(login.credentials, &scramble).to_vec(),
        database: login.database.map(str::to_owned),
        auth_plugin: Some(NATIVE_PASSWORD.to_owned()),
        attributes: capabilities
            .contains(Capabilities::CONNECT_ATTRS)
            .then(|| login.attributes.map(<[_]>::to_vec).unwrap_or_default()),
    };
    let mut body = BytesMut::with_capacity(256);
    response.encode(&mut body);
    write_payload(&mut stream, seq, &body)
        .await
        .map_err(ProxyError::BackendIo)?;
    let done = finish_auth(&mut stream, login.credentials).await?;
    Ok(Backend {
        stream,
        ok_payload: done.ok_payload,
        scramble: done.new_scramble.unwrap_or(scramble),
        capabilities,
        thread_id: handshake.connection_id,
        connected_at,
        address: String::new(),
        compute_id: String::new(),
        pool_key: None,
        home: crate::pool::home(),
    })
}

/// The end of a backend authentication.
pub struct AuthDone {
    /// The payload of the backend's OK.
    pub ok_payload: bytes::Bytes,
    /// The scramble of an auth switch, which later COM_CHANGE_USER tokens must use.
    pub new_scramble: Option<Vec<u8>>,
}

/// Reads the backend's answers until OK, answering mysql_native_password switches (at most
/// two, as a bound against a misbehaving server).
pub async fn finish_auth<S>(
    stream: &mut S,
    credentials: &Credentials,
) -> Result<AuthDone, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut new_scramble = None;
    for _ in 0..3 {
        let reply = read_backend(stream).await?;
        match reply.payload.first() {
            Some(0x00) => {
                return Ok(AuthDone {
                    ok_payload: reply.payload,
                    new_scramble,
                });
            }
            Some(0xff) => return Err(backend_err(&reply.payload)),
            Some(0xfe) => {
                let switch = AuthSwitchRequest::decode(&reply.payload)
                    .map_err(ProxyError::BackendProtocol)?;
                if switch.plugin != NATIVE_PASSWORD {
                    return Err(ProxyError::BackendIncompatible(format!(
                        "the compute asks for the '{}' authentication plugin; doze roles use mysql_native_password",
                        switch.plugin
                    )));
                }
                let token = sign(credentials, &switch.data);
                write_payload(stream, reply.seq.wrapping_add(1), &token)
                    .await
                    .map_err(ProxyError::BackendIo)?;
                new_scramble = Some(switch.data);
            }
            _ => {
                return Err(ProxyError::BackendProtocol(ProtocolError::Malformed(
                    "unexpected packet during backend authentication",
                )));
            }
        }
    }
    Err(ProxyError::BackendProtocol(ProtocolError::Malformed(
        "backend kept switching authentication",
    )))
}

/// The backend leg's flags: the client session's, plus what only this leg needs, minus what
/// only the client leg has (TLS), checked against what the backend offers.
fn backend_capabilities(
    login: &Login<'_>,
    offered: Capabilities,
) -> Result<Capabilities, ProxyError> {
    let wanted = login.capabilities & format_flags();
    let missing = wanted - offered;
    if !missing.is_empty() {
        return Err(ProxyError::BackendIncompatible(format!(
            "it does not support {missing:?}, which the client agreed to"
        )));
    }
    let mut caps = login.capabilities & offered;
    caps.remove(Capabilities::SSL | Capabilities::COMPRESS | Capabilities::CLIENT_MYSQL);
    caps.remove(Capabilities::CONNECT_WITH_DB);
    caps |= (Capabilities::PROTOCOL_41
        | Capabilities::SECURE_CONNECTION
        | Capabilities::PLUGIN_AUTH
        | Capabilities::PLUGIN_AUTH_LENENC_CLIENT_DATA)
        & offered;
    if login.database.is_some() {
        caps |= Capabilities::CONNECT_WITH_DB;
    }
    if offered.contains(Capabilities::CONNECT_ATTRS) && login.attributes.is_some() {
        caps |= Capabilities::CONNECT_ATTRS;
    } else {
        caps.remove(Capabilities::CONNECT_ATTRS);
    }
    Ok(caps)
}

/// SHA1(pw) XOR SHA1(scramble || SHA1(SHA1(pw))) for the backend's scramble.
pub fn sign(credentials: &Credentials, scramble: &[u8]) -> [u8; 20] {
    sign_with_hash1(&credentials.hash1, scramble, &credentials.stored)
}

async fn read_backend<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Packet, ProxyError> {
    read_packet(stream, MAX_HANDSHAKE_PACKET)
        .await
        .map_err(ProxyError::backend_read)
}

fn backend_err(payload: &[u8]) -> ProxyError {
    match ErrPacket::decode(payload) {
        Ok(err) => ProxyError::BackendErr(err),
        Err(e) => ProxyError::BackendProtocol(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            hash1: [1; 20],
            stored: [2; 20],
        }
    }

    #[test]
    fn missing_format_flag_is_refused() {
        let c = creds();
        let l = Login {
            user: "u",
            database: None,
            credentials: &c,
            capabilities: Capabilities::PROTOCOL_41 | Capabilities::DEPRECATE_EOF,
            collation: 45,
            max_packet: 1 << 24,
            attributes: None,
            proxy_header: None,
        };
        let offered = Capabilities::PROTOCOL_41 | Capabilities::SECURE_CONNECTION;
        assert!(matches!(
            backend_capabilities(&l, offered),
            Err(ProxyError::BackendIncompatible(_))
        ));
        let ok =
            backend_capabilities(&l, offered | Capabilities::DEPRECATE_EOF).expect("compatible");
        assert!(ok.contains(Capabilities::SECURE_CONNECTION));
        assert!(!ok.contains(Capabilities::CONNECT_WITH_DB));
    }

    #[test]
    fn database_sets_connect_with_db_and_tls_is_dropped() {
        let c = creds();
        let l = Login {
            user: "u",
            database: Some("shop"),
            credentials: &c,
            capabilities: Capabilities::PROTOCOL_41 | Capabilities::SSL,
            collation: 45,
            max_packet: 1 << 24,
            attributes: None,
            proxy_header: None,
        };
        let offered = Capabilities::from_parts(0x81FF_F7FE, 0x1D);
        let caps = backend_capabilities(&l, offered).expect("compatible");
        assert!(caps.contains(Capabilities::CONNECT_WITH_DB));
        assert!(!caps.contains(Capabilities::SSL));
        assert!(!caps.contains(Capabilities::CLIENT_MYSQL));
    }
}
