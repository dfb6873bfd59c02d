//! Errors of a client connection, each knowing what the client is told, which MySQL error code
//! and SQLSTATE it gets, and which fixed `reason` label it is counted under.
//!
//! Messages sent to clients are written for a person to act on and never carry internal
//! details such as backend addresses or stored hashes.

use doze_gateway::{LookupError, WakeError};
use doze_protocol::{ErrPacket, ProtocolError};

use crate::limits::Refused;
use crate::names;
use crate::stream::ReadError;

/// Everything that can end a client connection before or during the relay.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("client I/O: {0}")]
    ClientIo(#[source] std::io::Error),
    #[error("client sent a malformed packet: {0}")]
    ClientProtocol(#[source] ProtocolError),
    #[error("client did not complete the handshake in time")]
    HandshakeTimeout,
    #[error("client sent nothing within the first-packet timeout")]
    FirstPacketTimeout,
    #[error("too many connections logging in ({})", match .0 {
        Refused::Overall => "all clients",
        Refused::ThisAddress => "from this address",
    })]
    LoginBudget(Refused),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("TLS is required")]
    TlsRequired,
    #[error("client uses the pre-4.1 protocol")]
    ClientTooOld,
    #[error("no project named in the connection")]
    NoProject,
    #[error("unknown project {}", names::for_log(.0))]
    UnknownProject(String),
    #[error("control plane unavailable: {0}")]
    ControlUnavailable(String),
    #[error("access denied for user {}", names::for_log(user))]
    AccessDenied { user: String },
    #[error("too many connections{0}")]
    TooManyConnections(&'static str),
    #[error("wake failed: {0}")]
    Wake(#[source] WakeError),
    #[error("wake did not finish within {0}s")]
    WakeTimeout(u64),
    #[error("backend connect failed: {0}")]
    BackendConnect(#[source] std::io::Error),
    #[error("backend I/O: {0}")]
    BackendIo(#[source] std::io::Error),
    #[error("the compute did not answer the login within {0:?}")]
    BackendLoginTimeout(std::time::Duration),
    #[error("backend sent a malformed packet: {0}")]
    BackendProtocol(#[source] ProtocolError),
    /// The backend answered the login with an ERR (unknown database, too many connections...):
    /// the client gets that very ERR.
    #[error("backend refused the login: {}", names::for_log(&.0.message))]
    BackendErr(ErrPacket),
    /// A user or database name longer than any the compute could hold, or with control
    /// characters: refused before it costs a lookup or a cache entry.
    #[error("{0}")]
    BadName(&'static str),
    #[error("backend lacks capabilities the client agreed to: {0}")]
    BackendIncompatible(String),
    #[error("COM_CHANGE_USER refused: {0}")]
    ChangeUserRefused(String),
    #[error("doze is shutting down")]
    ShuttingDown,
}

/// Whose fault a failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blame {
    Client,
    Doze,
}

impl ProxyError {
    /// A failed read from the client.
    pub fn client_read(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => ProxyError::ClientIo(e),
            ReadError::Protocol(e) => ProxyError::ClientProtocol(e),
        }
    }

    /// A failed read from the compute.
    pub fn backend_read(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => ProxyError::BackendIo(e),
            ReadError::Protocol(e) => ProxyError::BackendProtocol(e),
        }
    }

    /// The classification of a failure, in one table: its fixed label for metrics
    /// (`doze_proxy_connections_closed_total{reason}`) and whether it is the client's fault
    /// (bad input: logged at info) or doze's or the compute's (logged as a warning). The ERR
    /// each one sends is [`ProxyError::to_err_packet`].
    fn class(&self) -> (&'static str, Blame) {
        use Blame::{Client, Doze};
        match self {
            ProxyError::ClientIo(_) => ("client_io", Client),
            ProxyError::ClientProtocol(_) => ("client_protocol", Client),
            ProxyError::HandshakeTimeout => ("handshake_timeout", Client),
            ProxyError::FirstPacketTimeout => ("first_packet_timeout", Client),
            ProxyError::LoginBudget(_) => ("too_many_logins", Client),
            ProxyError::Tls(_) => ("tls", Client),
            ProxyError::TlsRequired => ("tls_required", Client),
            ProxyError::ClientTooOld => ("client_too_old", Client),
            ProxyError::NoProject => ("no_project", Client),
            ProxyError::BadName(_) => ("bad_name", Client),
            ProxyError::UnknownProject(_) => ("unknown_project", Client),
            ProxyError::AccessDenied { .. } => ("access_denied", Client),
            ProxyError::ChangeUserRefused(_) => ("change_user_refused", Client),
            ProxyError::ControlUnavailable(_) => ("control_unavailable", Doze),
            ProxyError::TooManyConnections(_) => ("too_many_connections", Doze),
            ProxyError::Wake(WakeError::QuotaExceeded(_)) => ("quota_exceeded", Client),
            ProxyError::Wake(_) => ("wake_failed", Doze),
            ProxyError::WakeTimeout(_) => ("wake_timeout", Doze),
            ProxyError::BackendConnect(_) => ("backend_connect", Doze),
            ProxyError::BackendIo(_) => ("backend_io", Doze),
            ProxyError::BackendLoginTimeout(_) => ("backend_login_timeout", Doze),
            ProxyError::BackendProtocol(_) => ("backend_protocol", Doze),
            ProxyError::BackendErr(_) => ("backend_rejected", Doze),
            ProxyError::BackendIncompatible(_) => ("backend_incompatible", Doze),
            ProxyError::ShuttingDown => ("shutting_down", Doze),
        }
    }

    /// A fixed label for metrics (`doze_proxy_connections_closed_total{reason}`).
    pub fn reason(&self) -> &'static str {
        self.class().0
    }

    /// Whether the failure is the client's (bad input) rather than ours or the backend's; used
    /// for the log level.
    pub fn is_client_fault(&self) -> bool {
        matches!(self.class().1, Blame::Client)
    }

    /// The ERR packet the client gets, or `None` when the client cannot be written to (its
    /// socket failed, or it never spoke the protocol far enough to read an error).
    pub fn to_err_packet(&self) -> Option<ErrPacket> {
        let (code, state, message): (u16, &str, String) = match self {
            ProxyError::ClientIo(_)
            | ProxyError::Tls(_)
            | ProxyError::HandshakeTimeout
            | ProxyError::FirstPacketTimeout => {
                return None;
            }
            ProxyError::LoginBudget(Refused::ThisAddress) => (
                1040,
                "08004",
                "doze: too many connections from your address are still logging in; finish or \
                 close them, then try again"
                    .to_owned(),
            ),
            ProxyError::LoginBudget(Refused::Overall) => (
                1040,
                "08004",
                "doze: too many connections are logging in right now; try again shortly".to_owned(),
            ),
            ProxyError::ClientProtocol(e) => (
                1043,
                "08S01",
                format!("doze: bad handshake: {e}"),
            ),
            ProxyError::TlsRequired => (
                3159,
                "HY000",
                "doze: connections must use TLS; enable SSL in your client (e.g. --ssl, sslMode=REQUIRED)"
                    .to_owned(),
            ),
            ProxyError::ClientTooOld => (
                1251,
                "08004",
                "doze: client does not support protocol 4.1; upgrade your MySQL/MariaDB client".to_owned(),
            ),
            ProxyError::NoProject => (
                1045,
                "28000",
                NO_PROJECT_MESSAGE.to_owned(),
            ),
            ProxyError::UnknownProject(p) => (
                1049,
                "42000",
                format!(
                    "doze: unknown project '{}'; check the project name or id (doze project list)",
                    names::for_message(p)
                ),
            ),
            ProxyError::ControlUnavailable(_) => (
                1105,
                "HY000",
                "doze: the control plane is unavailable; try again shortly".to_owned(),
            ),
            ProxyError::AccessDenied { user } => (
                1045,
                "28000",
                format!(
                    "Access denied for user '{}' (using password: YES)",
                    names::for_message(user)
                ),
            ),
            ProxyError::TooManyConnections(scope) => (
                1040,
                "08004",
                format!("doze: too many connections{scope}"),
            ),
            ProxyError::Wake(WakeError::ShuttingDown) => {
                (1053, "08S01", "doze: server shutdown in progress".to_owned())
            }
            // The cause is for doze's log, not for the client.
            ProxyError::Wake(WakeError::Store(_) | WakeError::Internal(_)) => (
                1105,
                "HY000",
                "doze: the control plane could not wake the compute; try again shortly".to_owned(),
            ),
            // ER_USER_LIMIT_REACHED: a resource limit, which drivers do not retry blindly.
            ProxyError::Wake(e @ WakeError::QuotaExceeded(_)) => {
                (1226, "42000", format!("doze: {e}"))
            }
            ProxyError::Wake(e) => (1105, "HY000", format!("doze: {e}")),
            ProxyError::WakeTimeout(secs) => (
                1105,
                "HY000",
                format!("doze: the compute did not become ready within {secs}s; try again"),
            ),
            ProxyError::BackendConnect(_) | ProxyError::BackendIo(_) => (
                2013,
                "HY000",
                "doze: lost connection to the project's compute; try again".to_owned(),
            ),
            ProxyError::BackendLoginTimeout(timeout) => (
                1105,
                "HY000",
                format!(
                    "doze: the project's compute did not answer the login within {}s; it may be \
                     overloaded or stuck. Try again; if it persists, suspend and resume the compute",
                    timeout.as_secs_f64()
                ),
            ),
            ProxyError::BackendProtocol(_) => (
                1105,
                "HY000",
                "doze: the project's compute sent an unexpected reply".to_owned(),
            ),
            ProxyError::BackendErr(err) => return Some(err.clone()),
            ProxyError::BadName(what) => (1045, "28000", format!("doze: {what}")),
            ProxyError::BackendIncompatible(m) => (
                1105,
                "HY000",
                format!("doze: the project's compute cannot serve this client: {m}"),
            ),
            ProxyError::ChangeUserRefused(m) => (1045, "28000", format!("doze: COM_CHANGE_USER refused: {m}")),
            ProxyError::ShuttingDown => (1053, "08S01", "doze: server shutdown in progress".to_owned()),
        };
        Some(ErrPacket::new(code, state, message))
    }
}

/// Told to a client that named no project: the three ways to name one.
pub const NO_PROJECT_MESSAGE: &str = "doze: no project in the connection. Name one as the user \
     '<project>.<user>', as the database '<project>/<database>', or through TLS SNI \
     '<project>.<sni suffix>' when the server has --sni-suffix set";

impl From<LookupError> for ProxyError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::UnknownProject(p) => ProxyError::UnknownProject(p),
            LookupError::Unavailable(m) => ProxyError::ControlUnavailable(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_matches_mysql_wording() {
        let err = ProxyError::AccessDenied { user: "app".into() }
            .to_err_packet()
            .expect("denied has a packet");
        assert_eq!(err.code, 1045);
        assert_eq!(err.sql_state, Some(*b"28000"));
        assert!(err.message.starts_with("Access denied for user 'app'"));
    }

    #[test]
    fn no_project_lists_three_forms() {
        let err = ProxyError::NoProject.to_err_packet().expect("has packet");
        for form in ["<project>.<user>", "<project>/<database>", "SNI"] {
            assert!(
                err.message.contains(form),
                "{form} missing: {}",
                err.message
            );
        }
    }

    #[test]
    fn client_names_are_escaped_and_cut_in_messages_and_logs() {
        let user = format!("a\nb{}", "x".repeat(60_000));
        let e = ProxyError::AccessDenied { user };
        let packet = e.to_err_packet().expect("packet");
        assert!(packet.message.len() < 200, "{}", packet.message.len());
        assert!(!packet.message.contains('\n'));
        let logged = e.to_string();
        assert!(logged.len() < 200 && !logged.contains('\n'), "{logged}");
        let unknown = ProxyError::UnknownProject("p\r\n".into());
        assert!(!unknown.to_string().contains('\n'));
        let m = unknown.to_err_packet().expect("packet").message;
        assert!(m.contains("p\\r\\n"), "{m}");
    }

    #[test]
    fn a_quota_is_a_resource_limit_error() {
        let e = ProxyError::Wake(WakeError::QuotaExceeded(
            "tenant 'acme' has reached its quota max_running_computes = 1 (1 running)".into(),
        ));
        let err = e.to_err_packet().expect("packet");
        assert_eq!(err.code, 1226);
        assert_eq!(err.sql_state, Some(*b"42000"));
        assert!(
            err.message.contains("max_running_computes"),
            "{}",
            err.message
        );
    }

    #[test]
    fn io_failures_send_nothing() {
        let io = std::io::Error::other("x");
        assert!(ProxyError::ClientIo(io).to_err_packet().is_none());
        assert!(ProxyError::HandshakeTimeout.to_err_packet().is_none());
    }
}
