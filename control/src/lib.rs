//! doze's embedded control plane: the state store, the admin REST API, compute drivers, the
//! wake service and the auto-suspend scheduler.
//!
//! The proxy calls [`ControlPlane::lookup_role`], [`ControlPlane::wake`] and
//! [`ControlPlane::invalidate`] in process; the REST API ([`ControlPlane::admin_router`]) and the
//! scheduler go through the same code paths.

pub mod driver;
pub mod mariadb;
pub mod metrics;
pub mod roles;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

/// Session counts and activity per project (shared with the proxy).
pub use doze_gateway::activity;

/// What the proxy asks of the control plane: role lookups and wakes.
pub mod gateway {
    pub use doze_gateway::{ColdStart, LookupError, RoleLookup, WakeError, WakeInfo};
}

mod error;
mod ops;
mod rest;
mod scheduler;
mod time;
mod wake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Context;

use crate::activity::Activity;
use crate::driver::ComputeDriver;
use crate::driver::local::LocalDriver;
use crate::gateway::{LookupError, RoleLookup, WakeError, WakeInfo};
use crate::store::{ComputeState, Store};

pub use crate::error::ControlError;

/// Which compute driver runs the computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DriverKind {
    /// `mariadbd` processes on this machine.
    #[default]
    Local,
}

impl FromStr for DriverKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(DriverKind::Local),
            "kubernetes" | "k8s" => {
                anyhow::bail!("the kubernetes driver is not built yet; use --driver local")
            }
            other => anyhow::bail!("unknown driver '{other}'; the available driver is `local`"),
        }
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverKind::Local => f.write_str("local"),
        }
    }
}

/// Settings of the control plane (flags of the `doze` binary).
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// `sqlite://path` (file and parent directory created on first start) or `postgres://...`.
    pub db_dsn: String,
    /// Computes' storage: `<data_dir>/projects/<project_id>/...`.
    pub data_dir: PathBuf,
    pub driver: DriverKind,
    /// Suspend a compute after this long without sessions or traffic; a project's
    /// `config.idle_timeout` (seconds) overrides it. Zero means never.
    pub idle_timeout: Duration,
    /// How often the scheduler looks for idle computes.
    pub check_interval: Duration,
    /// Upper bound of one wake (including a compute start).
    pub wake_timeout: Duration,
    /// Bearer token required on every `/api` route when set.
    pub admin_token: Option<String>,
    /// `--max-allowed-packet` of every compute.
    pub max_allowed_packet: String,
    /// SIGTERM grace before SIGKILL when stopping a compute.
    pub stop_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            db_dsn: "sqlite://./doze-data/state.db".to_owned(),
            data_dir: PathBuf::from("./doze-data"),
            driver: DriverKind::Local,
            idle_timeout: Duration::from_secs(300),
            check_interval: Duration::from_secs(30),
            wake_timeout: Duration::from_secs(30),
            admin_token: None,
            max_allowed_packet: "64M".to_owned(),
            stop_timeout: Duration::from_secs(30),
        }
    }
}

/// Exact event counts of this control plane instance (independent of the metrics recorder).
#[derive(Debug, Default)]
pub struct Stats {
    /// Successful compute starts.
    pub compute_starts: AtomicU64,
    /// Calls of [`ControlPlane::wake`] (any outcome).
    pub wakes: AtomicU64,
    /// Wakes answered by a start (or warm check) another waiter performed.
    pub wakes_coalesced: AtomicU64,
    /// Computes suspended (any reason).
    pub suspends: AtomicU64,
    /// Compute starts that failed.
    pub start_failures: AtomicU64,
    /// Role lookups that went to the store (cache misses, after coalescing).
    pub role_loads: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// The control plane. Create with [`ControlPlane::start`].
pub struct ControlPlane {
    cfg: ControlConfig,
    store: Store,
    driver: Arc<dyn ComputeDriver>,
    activity: Arc<Activity>,
    stats: Stats,
    me: Weak<ControlPlane>,
    /// project id -> address of its running compute.
    wake_cache: moka::sync::Cache<String, WakeInfo>,
    /// (project key, user) -> lookup answer.
    role_cache: moka::future::Cache<(String, String), RoleLookup>,
    /// project id or name -> (id, name).
    key_cache: moka::future::Cache<String, (String, String)>,
    /// Bumped on every project or role change (see [`ControlPlane::lookup_role`]).
    cache_gen: AtomicU64,
    slots: Mutex<HashMap<String, Arc<wake::Slot>>>,
    gauges: Mutex<HashMap<ComputeState, i64>>,
    shutting_down: AtomicBool,
}

impl ControlPlane {
    /// Opens the store (running its migrations), builds the driver and reconciles computes left
    /// by a previous run: running ones that still answer are adopted, the rest marked suspended.
    pub async fn start(cfg: ControlConfig, activity: Arc<Activity>) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating the data dir {}", cfg.data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&cfg.data_dir)?;
        let store = Store::open(&cfg.db_dsn).await?;
        let driver: Arc<dyn ComputeDriver> = match cfg.driver {
            DriverKind::Local => Arc::new(LocalDriver::new(
                data_dir.clone(),
                cfg.max_allowed_packet.clone(),
                cfg.stop_timeout,
                // A start outlives a wake that gave up on it (the next wake finds it running),
                // so its own readiness bound is generous.
                cfg.wake_timeout.max(Duration::from_secs(30)),
            )),
        };
        let cfg = ControlConfig { data_dir, ..cfg };
        Self::start_with_driver(cfg, activity, store, driver).await
    }

    /// As [`ControlPlane::start`] with a given store and driver (another driver, or tests).
    pub async fn start_with_driver(
        cfg: ControlConfig,
        activity: Arc<Activity>,
        store: Store,
        driver: Arc<dyn ComputeDriver>,
    ) -> anyhow::Result<Arc<Self>> {
        metrics::describe();
        let plane = Arc::new_cyclic(|me| ControlPlane {
            cfg,
            store,
            driver,
            activity,
            stats: Stats::default(),
            me: me.clone(),
            wake_cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            role_cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            key_cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            cache_gen: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
            gauges: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
        });
        plane.reconcile().await?;
        Ok(plane)
    }

    /// The project and the stored hash of `user`; `project_key` is a project id or name.
    /// Served from a cache that every project or role change clears. Concurrent misses for
    /// the same key share one store lookup, so a pool of 500 clients reconnecting at once
    /// costs one query, not 500 queued behind each other.
    pub async fn lookup_role(
        &self,
        project_key: &str,
        user: &str,
    ) -> Result<RoleLookup, LookupError> {
        let key = (project_key.to_owned(), user.to_owned());
        let generation = self.cache_gen.load(Ordering::SeqCst);
        let answer = self
            .role_cache
            .try_get_with(key.clone(), self.load_role(project_key, user))
            .await
            .map_err(|e| (*e).clone())?;
        // A change that landed during the load must not leave a stale entry behind.
        if self.cache_gen.load(Ordering::SeqCst) != generation {
            self.role_cache.invalidate(&key).await;
        }
        Ok(answer)
    }

    async fn load_role(&self, project_key: &str, user: &str) -> Result<RoleLookup, LookupError> {
        Stats::bump(&self.stats.role_loads);
        let unavailable = |e: anyhow::Error| LookupError::Unavailable(format!("{e:#}"));
        let project = self
            .store
            .project_by_key(project_key)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| LookupError::UnknownProject(project_key.to_owned()))?;
        let role = self
            .store
            .role(&project.id, user)
            .await
            .map_err(unavailable)?;
        Ok(RoleLookup {
            project_id: project.id,
            project_name: project.name,
            stored_hash: role.and_then(|r| roles::parse_stored_hash(&r.stored_hash)),
        })
    }

    /// The address of the project's running compute, starting it if needed. Concurrent wakes
    /// of one project share one start. Bounded by `wake_timeout`.
    pub async fn wake(&self, project_key: &str) -> Result<WakeInfo, WakeError> {
        self.wake_inner(project_key).await
    }

    /// Forgets the cached address of a project (the proxy could not connect to it).
    pub fn invalidate(&self, project_id: &str) {
        self.wake_cache.invalidate(project_id);
    }

    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// `/api/v1/...` (bearer token when configured), `/healthz` and `/metrics`.
    pub fn admin_router(
        self: &Arc<Self>,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> axum::Router {
        rest::router(Arc::clone(self), metrics)
    }

    /// Suspends idle computes every `check_interval` until [`ControlPlane::shutdown`].
    pub fn spawn_scheduler(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        scheduler::spawn(Arc::clone(self))
    }

    /// Stops every running compute cleanly and marks it suspended with reason "shutdown".
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown_inner().await;
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The state store (for the binary's CLI and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    fn arc(&self) -> Result<Arc<Self>, WakeError> {
        self.me
            .upgrade()
            .ok_or_else(|| WakeError::Internal("the control plane is shutting down".into()))
    }

    /// Clears every cached lookup after a project or role change.
    fn roles_changed(&self) {
        self.cache_gen.fetch_add(1, Ordering::SeqCst);
        self.role_cache.invalidate_all();
        self.key_cache.invalidate_all();
    }
}

/// Refuses an admin API address reachable from other machines when no token protects it.
pub fn validate_admin_bind(addr: &SocketAddr, token: Option<&str>) -> anyhow::Result<()> {
    let has_token = token.is_some_and(|t| !t.is_empty());
    if addr.ip().is_loopback() || has_token {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve the admin API on {addr} without a token: anyone who can reach it could \
         read and change every project; pass --admin-token (or set DOZE_ADMIN_TOKEN), or bind it \
         to 127.0.0.1"
    )
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Refuses admin tokens that are easy to guess or to get wrong: shorter than
/// [`MIN_ADMIN_TOKEN_LEN`], or containing whitespace or control characters.
pub fn validate_admin_token(token: &str) -> anyhow::Result<()> {
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("the admin token must not contain spaces or control characters");
    }
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        anyhow::bail!(
            "the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters long (got {}); \
             generate one with e.g. `openssl rand -hex 32`",
            token.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_need_length_and_no_spaces() {
        assert!(validate_admin_token(" ").is_err());
        assert!(validate_admin_token("").is_err());
        assert!(validate_admin_token("short").is_err());
        assert!(validate_admin_token("sixteen chars ok").is_err());
        assert!(validate_admin_token("0123456789abcdef").is_ok());
    }

    #[test]
    fn admin_bind_rules() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let v6lo: SocketAddr = "[::1]:8080".parse().expect("addr");
        assert!(validate_admin_bind(&lo, None).is_ok());
        assert!(validate_admin_bind(&v6lo, None).is_ok());
        let err = validate_admin_bind(&any, None).expect_err("must refuse");
        assert!(err.to_string().contains("--admin-token"));
        assert!(err.to_string().contains("DOZE_ADMIN_TOKEN"));
        assert!(validate_admin_bind(&any, Some("")).is_err());
        assert!(validate_admin_bind(&any, Some("s3cret")).is_ok());
    }

    #[test]
    fn driver_kind_parses() {
        assert_eq!(
            "local".parse::<DriverKind>().expect("local"),
            DriverKind::Local
        );
        let err = "kubernetes".parse::<DriverKind>().expect_err("k8s");
        assert!(err.to_string().contains("not built yet"));
        assert!("nope".parse::<DriverKind>().is_err());
    }
}
