//! Phase 3: check the client's password in the proxy, before anything is woken.
//!
//! The control plane holds only SHA1(SHA1(password)). A mysql_native_password token proves the
//! password and, XORed back, yields SHA1(password) — which is what the backend leg needs to sign
//! the backend's own scramble. Clients that start with another plugin (MySQL 8 connectors start
//! with caching_sha2_password) are switched to mysql_native_password first.

use bytes::BytesMut;
use doze_protocol::AuthSwitchRequest;
use doze_protocol::native_password::verify_and_recover;

use crate::error::ProxyError;
use crate::handshake::NATIVE_PASSWORD;
use crate::stream::{MAX_HANDSHAKE_PACKET, PacketStream};

/// Proof of the password, enough to log in to the backend as the client.
#[derive(Clone)]
pub struct Credentials {
    /// SHA1(password), recovered from the client's token.
    pub hash1: [u8; 20],
    /// SHA1(SHA1(password)), as stored.
    pub stored: [u8; 20],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// The client's first answer: which plugin it used and its auth data.
pub struct Attempt<'a> {
    pub plugin: Option<&'a str>,
    pub token: &'a [u8],
}

/// Checks the password, switching the client to mysql_native_password when it answered with
/// another plugin. Unknown roles go through the same exchange and get the same "Access
/// denied", so probing reveals nothing.
pub async fn authenticate<S>(
    conn: &mut PacketStream<S>,
    scramble: &[u8; 20],
    attempt: Attempt<'_>,
    stored: Option<[u8; 20]>,
    user_for_errors: &str,
) -> Result<Credentials, ProxyError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let switched;
    let token = if needs_switch(attempt.plugin, attempt.token) {
        switched = switch_to_native(conn, scramble).await?;
        switched.as_slice()
    } else {
        attempt.token
    };
    let denied = || ProxyError::AccessDenied {
        user: user_for_errors.to_owned(),
    };
    let stored = stored.ok_or_else(denied)?;
    let hash1 = verify_and_recover(token, scramble, &stored).ok_or_else(denied)?;
    Ok(Credentials { hash1, stored })
}

/// A client needs the switch when it named another plugin, or named none and did not send a
/// 20-byte native token.
fn needs_switch(plugin: Option<&str>, token: &[u8]) -> bool {
    match plugin {
        Some(p) => p != NATIVE_PASSWORD,
        None => token.len() != 20,
    }
}

/// Sends AuthSwitchRequest(mysql_native_password, our scramble) and returns the client's reply.
async fn switch_to_native<S>(
    conn: &mut PacketStream<S>,
    scramble: &[u8; 20],
) -> Result<Vec<u8>, ProxyError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = AuthSwitchRequest {
        plugin: NATIVE_PASSWORD.to_owned(),
        data: scramble.to_vec(),
    };
    let mut body = BytesMut::new();
    request.encode(&mut body);
    conn.write(&body).await.map_err(ProxyError::ClientIo)?;
    let reply = conn
        .read(MAX_HANDSHAKE_PACKET)
        .await
        .map_err(ProxyError::client_read)?;
    Ok(reply.payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_decision() {
        assert!(!needs_switch(Some(NATIVE_PASSWORD), &[0; 20]));
        assert!(needs_switch(Some("caching_sha2_password"), &[0; 32]));
        assert!(needs_switch(Some("client_ed25519"), &[0; 64]));
        assert!(!needs_switch(None, &[0; 20]));
        assert!(needs_switch(None, &[]));
    }

    #[tokio::test]
    async fn native_token_verifies_and_recovers_sha1() {
        use doze_protocol::native_password::{scramble_response, stored_hash};
        let scramble = *b"abcdefghijklmnopqrst";
        let stored = stored_hash(b"s3cret");
        let token = scramble_response(b"s3cret", &scramble);
        let (a, _b) = tokio::io::duplex(64);
        let mut a = PacketStream::resume(a, 2);
        let creds = authenticate(
            &mut a,
            &scramble,
            Attempt {
                plugin: Some(NATIVE_PASSWORD),
                token: &token,
            },
            Some(stored),
            "app",
        )
        .await
        .expect("valid token");
        assert_eq!(a.into_parts().1, 2, "no switch, no packets");
        let (a, _b) = tokio::io::duplex(64);
        let mut a = PacketStream::resume(a, 2);
        assert_eq!(creds.stored, stored);
        let wrong = scramble_response(b"nope", &scramble);
        let err = authenticate(
            &mut a,
            &scramble,
            Attempt {
                plugin: Some(NATIVE_PASSWORD),
                token: &wrong,
            },
            Some(stored),
            "app",
        )
        .await;
        assert!(matches!(err, Err(ProxyError::AccessDenied { .. })));
    }
}
