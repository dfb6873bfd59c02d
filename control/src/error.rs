//! The error of control plane operations, mapped to HTTP statuses by the REST layer.

use crate::gateway::WakeError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// An unknown project, compute or role.
    #[error("{0}")]
    NotFound(String),
    /// A duplicate name, a second compute, ...
    #[error("{0}")]
    Conflict(String),
    /// Well-formed input with invalid values.
    #[error("{0}")]
    Invalid(String),
    /// Client sessions are open; a suspend never cuts an open session.
    #[error(
        "{sessions} client session(s) are open on project '{project}'; a suspend never cuts an open session: close them and retry"
    )]
    SessionsOpen { project: String, sessions: u64 },
    /// A tenant's quota refuses the change; the message names the quota and the use.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Only the operator's token may do this.
    #[error("{0}")]
    OperatorOnly(String),
    #[error(transparent)]
    Wake(#[from] WakeError),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ControlError {
    fn from(e: sqlx::Error) -> Self {
        ControlError::Internal(e.into())
    }
}
