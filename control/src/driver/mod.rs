//! Compute drivers: what runs a project's MariaDB. The wake service, the scheduler and the REST
//! layer only talk to [`ComputeDriver`], so a Kubernetes driver is a drop-in replacement for
//! [`local::LocalDriver`].

use std::future::Future;
use std::pin::Pin;

use crate::roles::RoleDef;

pub mod accounts;
pub mod freezer;
pub mod kubernetes;
pub mod local;
pub mod mariadb;
pub mod options;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What to start.
#[derive(Clone, Debug)]
pub struct ComputeSpec {
    pub project_id: String,
    pub compute_id: String,
    /// The compute's config as given at creation (`resources.memory`, `image`, `mariadb_options`...).
    pub config: serde_json::Value,
    /// When `Some`, the role changes to synchronise into the compute before the start counts
    /// as finished (the project's roles changed while it was not running).
    pub roles: Option<RoleSync>,
}

/// The project's complete role set plus the roles deleted since the compute last saw them.
/// Accounts doze never managed (created by clients themselves) are left alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleSync {
    pub upsert: Vec<RoleDef>,
    pub drop: Vec<String>,
}

/// A started (or adopted) compute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// `host:port` clients connect to.
    pub address: String,
    /// What the driver needs to find this very compute again after a restart of doze (a pid
    /// for the local driver, a pod's name and uid for Kubernetes). Opaque to everything else;
    /// stored with the compute and handed back to [`ComputeDriver::adopt`].
    pub handle: Option<String>,
}

/// A change to a running compute's accounts.
#[derive(Clone, Debug)]
pub enum RoleOp {
    Upsert(RoleDef),
    Drop(String),
    /// Drop the deleted roles, create or replace every current one.
    Sync(RoleSync),
}

/// Runs computes. Implementations must be idempotent: `stop` of a stopped compute and `adopt`
/// of a vanished one are not errors.
pub trait ComputeDriver: Send + Sync {
    /// Checks a compute's `config` (resources, server options, ...) when the compute is
    /// created, so that a bad one is refused then, with the reason, and not found at start.
    fn validate_config(&self, config: &serde_json::Value) -> Result<(), String>;

    /// Starts the project's compute (initialising its storage on the first start) and returns
    /// once it accepts connections. The error message carries the reason (server log tail).
    fn start<'a>(&'a self, spec: &'a ComputeSpec) -> BoxFuture<'a, anyhow::Result<Running>>;

    /// Stops the compute cleanly (committed data is durable afterwards); keeps its storage.
    fn stop<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Cheap liveness check of a compute this driver started or adopted.
    fn is_alive(&self, project_id: &str) -> bool;

    /// After a restart of doze: finds a compute still running from a previous run and takes it
    /// over when it answers (`Some`), or stops whatever is left of it (`None`).
    fn adopt<'a>(
        &'a self,
        project_id: &'a str,
        recorded: Option<Running>,
    ) -> BoxFuture<'a, anyhow::Result<Option<Running>>>;

    /// Client sessions the running compute serves, as the server itself counts them: sessions
    /// through doze and sessions connected to the compute directly alike (doze's own
    /// administrative connections excluded). The scheduler never suspends a compute that
    /// serves any.
    fn client_sessions<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<u64>>;

    /// Applies account changes to the running compute.
    fn apply_roles<'a>(
        &'a self,
        project_id: &'a str,
        ops: &'a [RoleOp],
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Stops the compute if needed and deletes its storage for good.
    fn destroy_storage<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;

    /// A compute was created: make what it needs before its first start (the Kubernetes
    /// driver's volume claim and credential), so that a wake only starts it. The local driver
    /// makes its storage at the first start.
    fn provision<'a>(&'a self, _spec: &'a ComputeSpec) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// A compute was deleted (and stopped): remove what belongs to it alone. The local
    /// driver keeps the project's data directory for the project's next compute; the
    /// Kubernetes driver deletes the compute's volume claim and Secret, which are the
    /// compute's objects.
    fn compute_deleted<'a>(&'a self, _project_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Signalled when the driver sees a compute vanish (a watch event), so the lifecycle looks
    /// for lost computes at once instead of at its next check. `None`: only the periodic check.
    fn lost_notices(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// The mechanism this driver freezes computes with (`cgroup2`, `cgroup1`, `signal`), or
    /// `None` when it cannot freeze: then idle computes are always stopped.
    fn freezer(&self) -> Option<&'static str> {
        None
    }

    /// Freezes a running compute: it keeps its memory and sockets but gets no CPU. Returns
    /// once it is frozen. `handle` is the one recorded with the compute.
    fn freeze<'a>(
        &'a self,
        project_id: &'a str,
        _handle: Option<&'a str>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            anyhow::bail!("this compute driver cannot freeze computes (project {project_id})")
        })
    }

    /// Thaws a frozen compute (nothing when it is not frozen). Must not block: it runs on the
    /// wake path, right before an address is handed out.
    fn thaw(&self, _project_id: &str, _handle: Option<&str>) -> anyhow::Result<()> {
        Ok(())
    }

    /// Memory a compute holds now, in bytes, when the driver can tell.
    fn memory_bytes(&self, _project_id: &str, _handle: Option<&str>) -> Option<u64> {
        None
    }

    /// Whether computes keep running when doze stops (pods outlive a rolling update of doze
    /// and are adopted by the next process); otherwise doze stops them cleanly on shutdown.
    fn computes_outlive_doze(&self) -> bool {
        false
    }
}
