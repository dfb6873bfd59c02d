//! The vocabulary between doze's data path and a control plane, as plain types: the answer to
//! "who is this role" ([`RoleLookup`]), to "where is the project's compute" ([`WakeInfo`]), why
//! either failed, and per-project session [`activity`].
//!
//! A crate of its own so that the proxy does not depend on the control plane (a proxy-only
//! `doze` links neither the state store nor the admin API) and the control plane does not
//! depend on the proxy: both speak this.

/// The git commit this doze was built from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("DOZE_GIT_COMMIT");

/// `<version> (<commit>)`: what `doze --version` and the admin API report.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("DOZE_GIT_COMMIT"),
    ")"
);

use std::fmt;

pub mod activity;

/// Bucket boundaries (seconds) of every `*_seconds` histogram doze exports, proxy and control
/// plane alike: 0.5 ms to 30 s, dense where resume latency lives (the product's headline).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// A project and, when it exists, the stored hash of the role a client named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleLookup {
    pub project_id: String,
    pub project_name: String,
    /// SHA1(SHA1(password)) of the role; `None` when the project has no such role (the proxy
    /// then still runs the password exchange and answers "Access denied", revealing nothing).
    pub stored_hash: Option<[u8; 20]>,
    /// The project's own limit of open sessions (its `config.max_connections`), `None` when
    /// only the proxy-wide `--max-connections-per-project` applies.
    pub max_connections: Option<u64>,
    /// Whether the proxy may reuse backend sessions of this project (its `config.pool.mode`:
    /// `"session"`, the default, or `"off"`).
    pub pooling: bool,
}

/// Why a project or role could not be resolved.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LookupError {
    #[error("unknown project '{0}'")]
    UnknownProject(String),
    #[error("the control plane could not be reached: {0}")]
    Unavailable(String),
}

/// How a wake was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColdStart {
    /// The compute was already running (address from cache or state).
    Warm,
    /// The compute was started (or its start was joined) for this request.
    Resumed,
    /// The compute was frozen and thawed for this request (or its thaw was joined).
    Thawed,
}

impl ColdStart {
    pub fn as_str(self) -> &'static str {
        match self {
            ColdStart::Warm => "warm",
            ColdStart::Resumed => "resumed",
            ColdStart::Thawed => "thawed",
        }
    }
}

impl fmt::Display for ColdStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A running compute's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeInfo {
    /// `host:port` of the compute's MariaDB.
    pub address: String,
    pub compute_id: String,
    pub cold_start: ColdStart,
}

/// Why a wake failed. The messages are shown to database clients: they say what happened and
/// what to do, and never contain secrets.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WakeError {
    #[error("project '{0}' has no compute; create one with `doze compute create {0}`")]
    NoCompute(String),
    #[error("the compute of project '{project}' failed to start: {reason}")]
    StartFailed { project: String, reason: String },
    #[error(
        "the compute of project '{project}' is restarting too often; next attempt allowed in {retry_in_secs}s"
    )]
    RateLimited { project: String, retry_in_secs: u64 },
    #[error("the compute of project '{project}' did not become ready within {timeout_secs}s")]
    Timeout { project: String, timeout_secs: u64 },
    #[error("unknown project '{0}'")]
    UnknownProject(String),
    /// The project's tenant is at a quota (running computes or memory); names the quota.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("doze is shutting down")]
    ShuttingDown,
    /// The state store failed (the cause, for logs; clients are told to retry).
    #[error("the state store failed: {0}")]
    Store(String),
    /// A bug or a panic in the wake's own task.
    #[error("the control plane failed: {0}")]
    Internal(String),
}
