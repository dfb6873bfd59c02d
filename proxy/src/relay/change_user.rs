//! COM_CHANGE_USER in a relayed session. The client signs it with the last scramble it saw —
//! the proxy's — so the proxy checks it, keeps it within the session's project, and re-signs it
//! for the backend's scramble (answering the backend's auth switch itself if one comes).
//!
//! A refused change ends the session after its ERR: the backend session is left as it was, and
//! a client that believes its state was reset must not go on using it.

use std::future::Future;

use bytes::BytesMut;
use doze_protocol::{ChangeUser, ErrPacket};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::{self, Attempt, Credentials};
use crate::backend;
use crate::error::ProxyError;
use crate::handshake::NATIVE_PASSWORD;
use crate::relay::{Pipe, take_packet};
use crate::route::strip_db_prefix;
use crate::stream::{MAX_HANDSHAKE_PACKET, PacketStream, send_err, write_payload};

/// The session state a change of user reads and updates.
pub struct AuthState {
    pub proxy_scramble: [u8; 20],
    pub client_caps: doze_protocol::Capabilities,
    pub backend_caps: doze_protocol::Capabilities,
    pub backend_scramble: Vec<u8>,
    pub user: String,
    pub credentials: Credentials,
    /// A COM_CHANGE_USER was handled: the backend session's user and state are no longer
    /// the ones it was logged in with, so it is never pooled.
    pub changed_user: bool,
    /// A COM_SET_OPTION passed: the session's multi-statements flag may differ from the one
    /// its key says, and a reset keeps it, so it is never pooled.
    pub set_option: bool,
}

/// What the relay needs from the connection to handle a change of user.
pub trait SessionAuth: Send {
    /// Whether `key` names this session's project (by name or id).
    fn is_own_project(&self, key: &str) -> bool;
    /// The stored hash of `user` in this session's project.
    fn lookup(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Option<[u8; 20]>, ProxyError>> + Send;
    fn state(&mut self) -> &mut AuthState;
    /// A change of user succeeded: `state()` holds the new user and credentials.
    fn user_changed(&mut self) {}
    /// Carries out a KILL this session's client sent, within its project and user; the ERR
    /// is for the client (1094 for an id it may not name).
    fn kill(
        &self,
        request: crate::relay::kill::KillRequest,
    ) -> impl Future<Output = Result<(), ErrPacket>> + Send;
}

/// The four halves of a relayed session.
pub struct Legs<'a, CR, CW, BR, BW> {
    pub client_r: &'a mut CR,
    pub client_w: &'a mut CW,
    pub backend_r: &'a mut BR,
    pub backend_w: &'a mut BW,
}

/// Handles the COM_CHANGE_USER held at the front of `up`.
pub async fn handle<CR, CW, BR, BW, A>(
    up: &mut Pipe,
    io: &mut Legs<'_, CR, CW, BR, BW>,
    auth: &mut A,
) -> Result<(), ProxyError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
    A: SessionAuth,
{
    let packet = take_packet(up, io.client_r, MAX_HANDSHAKE_PACKET)
        .await
        .map_err(ProxyError::ClientIo)?;
    auth.state().changed_user = true;
    let mut seq = packet.seq.wrapping_add(1);
    let request = match ChangeUser::decode(&packet.payload, auth.state().client_caps) {
        Ok(r) => r,
        Err(e) => return refuse(io.client_w, seq, ProxyError::ClientProtocol(e)).await,
    };
    let (user, database) = match target(&request, auth) {
        Ok(t) => t,
        Err(e) => return refuse(io.client_w, seq, e).await,
    };
    let stored = auth.lookup(&user).await?;
    let scramble = auth.state().proxy_scramble;
    let attempt = Attempt {
        plugin: request.auth_plugin.as_deref(),
        token: &request.auth_response,
    };
    let checked = {
        let client = tokio::io::join(&mut *io.client_r, &mut *io.client_w);
        let mut conn = PacketStream::resume(client, seq);
        let checked = auth::authenticate(&mut conn, &scramble, attempt, stored, &user).await;
        seq = conn.into_parts().1;
        checked
    };
    let credentials = match checked {
        Ok(c) => c,
        Err(e) => return refuse(io.client_w, seq, e).await,
    };
    let ok = match change_backend_user(io, auth.state(), &request, &user, &database, &credentials)
        .await
    {
        Ok(ok) => ok,
        Err(e) => return refuse(io.client_w, seq, e).await,
    };
    write_payload(io.client_w, seq, &ok)
        .await
        .map_err(ProxyError::ClientIo)?;
    let state = auth.state();
    state.user = user;
    state.credentials = credentials;
    auth.user_changed();
    Ok(())
}

/// The bare user and database the change names, refusing a move to another project.
fn target<A: SessionAuth>(request: &ChangeUser, auth: &A) -> Result<(String, String), ProxyError> {
    let user = match request.username.split_once('.') {
        Some((project, bare)) if auth.is_own_project(project) => bare.to_owned(),
        Some((project, _)) => {
            return Err(ProxyError::ChangeUserRefused(format!(
                "a session cannot move to another project ('{}'); open a new connection",
                crate::names::for_message(project)
            )));
        }
        None => request.username.clone(),
    };
    let database = match request.database.split_once('/') {
        Some((project, _)) if auth.is_own_project(project) => {
            strip_db_prefix(&request.database, project).to_owned()
        }
        Some((project, _)) => {
            return Err(ProxyError::ChangeUserRefused(format!(
                "a session cannot move to another project's database ('{}'); open a new connection",
                crate::names::for_message(project)
            )));
        }
        None => request.database.clone(),
    };
    Ok((user, database))
}

/// Sends the re-signed COM_CHANGE_USER to the backend and returns its OK payload.
async fn change_backend_user<CR, CW, BR, BW>(
    io: &mut Legs<'_, CR, CW, BR, BW>,
    state: &mut AuthState,
    request: &ChangeUser,
    user: &str,
    database: &str,
    credentials: &Credentials,
) -> Result<bytes::Bytes, ProxyError>
where
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let rewritten = ChangeUser {
        username: user.to_owned(),
        auth_response: backend::sign(credentials, &state.backend_scramble).to_vec(),
        database: database.to_owned(),
        collation: request.collation,
        auth_plugin: Some(NATIVE_PASSWORD.to_owned()),
        attributes: request.attributes.clone(),
    };
    let mut body = BytesMut::with_capacity(128);
    rewritten.encode(&mut body, state.backend_caps);
    write_payload(io.backend_w, 0, &body)
        .await
        .map_err(ProxyError::BackendIo)?;
    let mut backend = tokio::io::join(&mut *io.backend_r, &mut *io.backend_w);
    let done = backend::finish_auth(&mut backend, credentials).await?;
    if let Some(scramble) = done.new_scramble {
        state.backend_scramble = scramble;
    }
    Ok(done.ok_payload)
}

/// Sends the client the ERR for `error` and ends the session with it.
async fn refuse<W: AsyncWrite + Unpin>(
    client_w: &mut W,
    seq: u8,
    error: ProxyError,
) -> Result<(), ProxyError> {
    let packet = error
        .to_err_packet()
        .unwrap_or_else(|| ErrPacket::new(1105, "HY000", "doze: COM_CHANGE_USER failed"));
    send_err(client_w, seq, &packet).await;
    Err(error)
}
