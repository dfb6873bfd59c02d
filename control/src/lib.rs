//! doze's embedded control plane: the state store, the admin REST API, compute drivers, the
//! wake service and the auto-suspend scheduler.
//!
//! [`ControlPlane`] is a thin front over two owners of one rule each: the [`catalog::Catalog`]
//! (projects, roles and the caches the data path reads) and the [`lifecycle::Lifecycle`] (the
//! driver, per-project locks, the address cache, state transitions, the scheduler). The proxy
//! calls [`ControlPlane::lookup_role`], [`ControlPlane::wake`] and [`ControlPlane::invalidate`] in
//! process; the REST API ([`rest::router`]) and the scheduler go through the same code paths.

pub mod driver;
pub mod metrics;
pub mod replicas;
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

pub mod catalog;
mod config;
mod error;
pub mod lifecycle;
mod ops;
pub mod rest;
mod scheduler;
mod stats;
pub mod tenancy;
mod time;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::activity::Activity;
use crate::catalog::Catalog;
use crate::driver::kubernetes::KubernetesDriver;
use crate::driver::local::LocalDriver;
use crate::driver::{ComputeDriver, RoleOp};
use crate::gateway::{LookupError, RoleLookup, WakeError, WakeInfo};
use crate::lifecycle::Lifecycle;
use crate::replicas::Replicas;
use crate::roles::RoleDef;
use crate::store::{Compute, ComputeEvent, Project, Role, Store};

/// Finding, initialising and starting `mariadbd` (the local driver's, shared with the test kit).
pub use crate::driver::mariadb;

pub use crate::config::{
    AdminTls, ControlConfig, DriverKind, FreezerChoice, FrozenPolicy, KubernetesConfig,
    SuspendMode, default_memory_budget,
};
pub use crate::error::ControlError;
pub use crate::stats::Stats;

/// The control plane: a thin front over the [`Catalog`] and the [`Lifecycle`]. Create with
/// [`ControlPlane::start`].
pub struct ControlPlane {
    cfg: ControlConfig,
    catalog: Arc<Catalog>,
    lifecycle: Arc<Lifecycle>,
    stats: Arc<Stats>,
    replicas: Arc<Replicas>,
    /// The heartbeat and the change listener, stopped at shutdown.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The proxy's bound address, as the binary reports it (`GET /api/v1/info`).
    proxy_address: std::sync::Mutex<Option<String>>,
    /// Set when doze has begun to drain: `/readyz` then answers 503.
    draining: std::sync::atomic::AtomicBool,
}

/// How often the proxy's usage counts are added to the store: a crash of doze loses at most
/// this much of them.
const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Adds the proxy's usage counts (sessions opened, bytes relayed) to the store every
/// [`USAGE_FLUSH_INTERVAL`], never per packet.
fn spawn_usage_flusher(store: Store, activity: Arc<Activity>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            flush_usage(&store, &activity).await;
        }
    })
}

/// Moves the counts gathered since the last flush into the store, under the current hour. A
/// failed write puts them back, to be retried with the next flush.
async fn flush_usage(store: &Store, activity: &Activity) {
    let counts: Vec<store::UsageCount> = activity
        .take_usage()
        .into_iter()
        .map(|(project_id, c, up, down)| store::UsageCount {
            project_id,
            connections: i64::try_from(c).unwrap_or(i64::MAX),
            bytes_in: i64::try_from(up).unwrap_or(i64::MAX),
            bytes_out: i64::try_from(down).unwrap_or(i64::MAX),
        })
        .collect();
    if counts.is_empty() {
        return;
    }
    let now = i64::try_from(activity::now_ms()).unwrap_or(i64::MAX);
    if let Err(e) = store.add_usage(usage::hour_of(now), &counts).await {
        tracing::warn!(error = %format!("{e:#}"), "cannot write usage counts; retrying with the next flush");
        for c in counts {
            activity.project(&c.project_id).give_back_usage(
                c.connections as u64,
                c.bytes_in as u64,
                c.bytes_out as u64,
            );
        }
    }
}

/// Another replica's change, applied to this replica's caches.
struct Invalidation {
    catalog: Arc<Catalog>,
    lifecycle: Arc<Lifecycle>,
}

impl replicas::Invalidate for Invalidation {
    fn changed(&self, kind: &str, project_id: &str) {
        match kind {
            "compute" => self.lifecycle.invalidate(project_id),
            "token" => self.catalog.tenancy().tokens_changed(),
            _ => {
                self.catalog.changed();
                self.lifecycle.invalidate(project_id);
            }
        }
    }

    fn flush(&self) {
        self.catalog.changed();
        self.catalog.tenancy().tokens_changed();
        self.lifecycle.invalidate_all();
    }
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
            DriverKind::Local => {
                let freezer = driver::freezer::Freezer::choose(cfg.frozen.freezer)?;
                match &freezer {
                    Some(f) => tracing::info!(freezer = f.name(), "idle computes can be frozen"),
                    None => tracing::info!("freezing is off: idle computes are stopped"),
                }
                Arc::new(
                    LocalDriver::new(
                        data_dir.clone(),
                        cfg.max_allowed_packet.clone(),
                        cfg.stop_timeout,
                        // A start outlives a wake that gave up on it (the next wake finds it
                        // running), so its own readiness bound is generous.
                        cfg.wake_timeout.max(Duration::from_secs(30)),
                    )
                    .with_freezer(freezer),
                )
            }
            DriverKind::Kubernetes => Arc::new(Self::kubernetes_driver(&cfg).await?),
        };
        let cfg = ControlConfig { data_dir, ..cfg };
        Self::start_with_driver(cfg, activity, store, driver).await
    }

    async fn kubernetes_driver(cfg: &ControlConfig) -> anyhow::Result<KubernetesDriver> {
        let k = &cfg.kubernetes;
        let client_cfg = driver::kubernetes::client_config(k.kubeconfig.as_deref()).await?;
        let server = client_cfg.cluster_url.to_string();
        let client = kube::Client::try_from(client_cfg)
            .with_context(|| format!("building a Kubernetes client for {server}"))?;
        let driver = KubernetesDriver::connect(
            client,
            k,
            cfg.max_allowed_packet.clone(),
            cfg.stop_timeout,
            cfg.wake_timeout.max(Duration::from_secs(30)),
            cfg.admin_tls.clone(),
        )
        .await
        .with_context(|| format!("connecting to the Kubernetes API at {server}"))?;
        tracing::info!(%server, namespace = %k.namespace, image = %k.image, "kubernetes driver ready");
        Ok(driver)
    }

    /// As [`ControlPlane::start`] with a given store and driver (another driver, or tests).
    pub async fn start_with_driver(
        cfg: ControlConfig,
        activity: Arc<Activity>,
        store: Store,
        driver: Arc<dyn ComputeDriver>,
    ) -> anyhow::Result<Arc<Self>> {
        metrics::describe();
        let stats = Arc::new(Stats::default());
        let catalog = Arc::new(Catalog::new(store.clone(), Arc::clone(&stats)));
        let replicas = Replicas::new(cfg.replica_id.clone(), store.clone(), Arc::clone(&activity));
        let lifecycle = Lifecycle::new(
            cfg.clone(),
            store.clone(),
            Arc::clone(&catalog),
            driver,
            activity,
            Arc::clone(&stats),
            Arc::clone(&replicas),
        );
        let mut tasks = Vec::new();
        if store.is_shared() {
            // Listen before reconciling, so that nothing another replica changes meanwhile is
            // missed.
            let target = Arc::new(Invalidation {
                catalog: Arc::clone(&catalog),
                lifecycle: Arc::clone(&lifecycle),
            });
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            tasks.push(replicas::spawn_listener(
                cfg.db_dsn.clone(),
                target,
                Arc::clone(&replicas),
                ready_tx,
            ));
            // Listening (and its first flush done) before anything is cached.
            if tokio::time::timeout(Duration::from_secs(10), ready)
                .await
                .is_err()
            {
                tracing::warn!("the change listener is not up yet; caches are flushed when it is");
            }
        }
        replicas.beat().await?;
        tasks.push(replicas.spawn_heartbeat());
        tasks.push(spawn_usage_flusher(
            store.clone(),
            Arc::clone(lifecycle.activity()),
        ));
        tracing::info!(replica = %replicas.id, leader = replicas.is_leader(), "replica registered");
        lifecycle.reconcile().await?;
        Ok(Arc::new(ControlPlane {
            cfg,
            catalog,
            lifecycle,
            stats,
            replicas,
            tasks: std::sync::Mutex::new(tasks),
            proxy_address: std::sync::Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The live replicas of this doze (one on SQLite), oldest first, with the scheduler's
    /// leader marked.
    pub async fn replicas(&self) -> Result<serde_json::Value, ControlError> {
        let live = self
            .store()
            .live_replicas(replicas::REPLICA_TTL.as_millis() as i64)
            .await?;
        let leader = self.store().lease_holder("scheduler").await?;
        let list: Vec<serde_json::Value> = live
            .into_iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "started_at": time::rfc3339(r.started_at),
                    "heartbeat_at": time::rfc3339(r.heartbeat_at),
                    "sessions": r.sessions,
                    "leader": if self.store().is_shared() { leader.as_deref() == Some(r.id.as_str()) } else { true },
                    "self": r.id == self.replicas.id,
                })
            })
            .collect();
        Ok(serde_json::json!({ "replicas": list }))
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// This replica (its id, heartbeat and leader lease).
    pub fn replica(&self) -> &Arc<Replicas> {
        &self.replicas
    }

    // ---- what the proxy asks ----

    /// The project and the stored hash of `user` (see [`Catalog::lookup_role`]).
    pub async fn lookup_role(
        &self,
        project_key: &str,
        user: &str,
    ) -> Result<RoleLookup, LookupError> {
        self.catalog.lookup_role(project_key, user).await
    }

    /// The address of the project's running compute, starting it if needed (see
    /// [`Lifecycle::wake`]).
    pub async fn wake(&self, project_key: &str) -> Result<WakeInfo, WakeError> {
        self.lifecycle.wake(project_key).await
    }

    /// Forgets the cached address of a project (the proxy could not connect to it).
    pub fn invalidate(&self, project_id: &str) {
        self.lifecycle.invalidate(project_id);
    }

    pub fn activity(&self) -> &Arc<Activity> {
        self.lifecycle.activity()
    }

    // ---- running ----

    /// Checks liveness and suspends idle computes every `check_interval` until
    /// [`ControlPlane::shutdown`].
    pub fn spawn_scheduler(&self) -> tokio::task::JoinHandle<()> {
        scheduler::spawn(Arc::clone(&self.lifecycle))
    }

    /// One idle pass of the scheduler; returns how many computes it suspended.
    pub async fn suspend_idle(&self) -> anyhow::Result<usize> {
        self.lifecycle.suspend_idle().await
    }

    /// One liveness pass of the scheduler; returns how many dead computes it found.
    pub async fn find_lost(&self) -> anyhow::Result<usize> {
        self.lifecycle.find_lost().await
    }

    /// Stops every running compute cleanly and marks it suspended with reason "shutdown"
    /// (unless computes outlive doze, or other replicas serve them), then leaves the replica
    /// set.
    pub async fn shutdown(&self) {
        flush_usage(self.store(), self.lifecycle.activity()).await;
        self.lifecycle.shutdown().await;
        self.replicas.leave().await;
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The state store (for the binary's CLI and tests).
    pub fn store(&self) -> &Store {
        self.catalog.store()
    }

    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    // ---- projects ----

    /// Creates a project in the default tenant.
    pub async fn create_project(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<Project, ControlError> {
        self.catalog
            .create_project(name, config, store::DEFAULT_TENANT_ID)
            .await
    }

    /// Creates a project in `tenant_id`, within its project quota.
    pub async fn create_project_in(
        &self,
        name: &str,
        config: serde_json::Value,
        tenant_id: &str,
    ) -> Result<Project, ControlError> {
        self.catalog.create_project(name, config, tenant_id).await
    }

    /// Tenants, tokens, quotas and the audit log.
    pub fn tenancy(&self) -> &tenancy::Tenancy {
        self.catalog.tenancy()
    }

    pub async fn list_projects(&self) -> Result<Vec<Project>, ControlError> {
        self.catalog.list_projects().await
    }

    /// A project by id or name.
    pub async fn project(&self, key: &str) -> Result<Project, ControlError> {
        self.catalog.project(key).await
    }

    /// Stops and removes the project's compute, deletes its storage, roles and the project.
    /// Refused (409) while client sessions are open.
    pub async fn delete_project(&self, key: &str) -> Result<Project, ControlError> {
        let project = self.catalog.project(key).await?;
        let deleted = self.lifecycle.delete_project(&project).await;
        self.catalog.changed();
        deleted.map(|()| project)
    }

    // ---- computes ----

    /// Creates the project's compute (one per project), suspended.
    pub async fn create_compute(
        &self,
        project_key: &str,
        config: serde_json::Value,
    ) -> Result<Compute, ControlError> {
        let project = self.catalog.project(project_key).await?;
        self.tenancy()
            .check_compute_memory(&project, &config)
            .await?;
        self.lifecycle.create_compute(&project, config).await
    }

    pub async fn compute(&self, id: &str) -> Result<Compute, ControlError> {
        self.lifecycle.compute(id).await
    }

    /// The compute of a project (by id or name), as it is: never woken by this lookup.
    pub async fn project_compute(&self, project_key: &str) -> Result<Compute, ControlError> {
        let project = self.catalog.project(project_key).await?;
        self.store()
            .compute_for_project(&project.id)
            .await?
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "project '{}' has no compute; create one with POST /api/v1/projects/{}/compute",
                    project.name, project.name
                ))
            })
    }

    /// Every compute, or the one of `project` (by id or name), oldest project first.
    pub async fn list_computes(&self, project: Option<&str>) -> Result<Vec<Compute>, ControlError> {
        match project {
            Some(key) => Ok(vec![self.project_compute(key).await?]),
            None => Ok(self.store().list_computes().await?),
        }
    }

    // ---- what the binary tells the admin API ----

    /// Records the proxy's bound address (with port 0 resolved), for `GET /api/v1/info` and
    /// the connection strings the CLI prints.
    pub fn set_proxy_address(&self, address: String) {
        *self.proxy_address.lock().unwrap_or_else(|p| p.into_inner()) = Some(address);
    }

    pub fn proxy_address(&self) -> Option<String> {
        self.proxy_address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// doze has begun to drain: new clients are refused, so load balancers should stop
    /// sending them (`/readyz` answers 503 from now on).
    pub fn set_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Usage over `[from, to)` of the project `key` (id or name), or of every project (of
    /// `tenant` when given), with
    /// each row's project name; `to` is cut at now (nothing is metered ahead).
    pub async fn usage(
        &self,
        key: Option<&str>,
        tenant: Option<&str>,
        from: i64,
        to: i64,
        granularity: usage::Granularity,
    ) -> Result<Vec<(usage::Usage, String)>, ControlError> {
        let now = i64::try_from(activity::now_ms()).unwrap_or(i64::MAX);
        let projects = match (key, tenant) {
            (Some(key), _) => vec![self.project(key).await?],
            (None, Some(tenant)) => self.store().tenant_projects(tenant).await?,
            (None, None) => self.list_projects().await?,
        };
        // One project's rows, or every project's: the store filters only in the first case.
        let only = key.and(projects.first().map(|p| p.id.as_str()));
        let events = self.store().events_before(only, to.min(now)).await?;
        let ids: Vec<String> = projects.iter().map(|p| p.id.clone()).collect();
        flush_usage(self.store(), self.lifecycle.activity()).await;
        let counts = self
            .store()
            .usage_counts(only, usage::hour_of(from), to)
            .await?;
        let rows = usage::meter(&events, &counts, &ids, from, to, now, granularity)
            .map_err(ControlError::Invalid)?;
        let names: std::collections::HashMap<&str, &str> = projects
            .iter()
            .map(|p| (p.id.as_str(), p.name.as_str()))
            .collect();
        Ok(rows
            .into_iter()
            .map(|r| {
                let name = names
                    .get(r.project_id.as_str())
                    .copied()
                    .unwrap_or("")
                    .to_owned();
                (r, name)
            })
            .collect())
    }

    pub async fn compute_events(&self, id: &str) -> Result<Vec<ComputeEvent>, ControlError> {
        self.lifecycle.compute_events(id).await
    }

    pub async fn delete_compute(&self, id: &str) -> Result<Compute, ControlError> {
        self.lifecycle.delete_compute(id).await
    }

    /// Stops a compute now (a frozen one is thawed, then stopped).
    pub async fn suspend_compute(&self, id: &str) -> Result<Compute, ControlError> {
        self.lifecycle.suspend_compute(id, SuspendMode::Stop).await
    }

    /// Freezes a running compute now (422 where this doze cannot freeze).
    pub async fn freeze_compute(&self, id: &str) -> Result<Compute, ControlError> {
        self.lifecycle
            .suspend_compute(id, SuspendMode::Freeze)
            .await
    }

    /// Suspends a compute now, by stopping or by freezing it.
    pub async fn suspend_compute_with(
        &self,
        id: &str,
        mode: SuspendMode,
    ) -> Result<Compute, ControlError> {
        self.lifecycle.suspend_compute(id, mode).await
    }

    /// Memory a running or frozen compute holds now, when its driver can tell (the local
    /// driver: the compute cgroup's charge, else the server's private resident memory).
    pub fn compute_memory(&self, c: &Compute) -> Option<u64> {
        matches!(
            c.state,
            crate::store::ComputeState::Running | crate::store::ComputeState::Frozen
        )
        .then(|| {
            self.lifecycle
                .driver
                .memory_bytes(&c.project_id, c.handle.as_deref())
        })
        .flatten()
    }

    /// Changes the frozen memory budget while serving (`None`: no budget); the scheduler's
    /// next pass applies it.
    pub fn set_frozen_memory_budget(&self, bytes: Option<u64>) {
        self.lifecycle.frozen_budget.store(
            bytes.unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The freezing mechanism of this doze's driver (`cgroup2`, `cgroup1`, `signal`), `None`
    /// when idle computes are only stopped.
    pub fn freezer(&self) -> Option<&'static str> {
        self.lifecycle.driver.freezer()
    }

    pub async fn resume_compute(&self, id: &str) -> Result<(Compute, WakeInfo), ControlError> {
        self.lifecycle.resume_compute(id).await
    }

    // ---- roles: the record in the catalog, the account through the lifecycle ----

    pub async fn create_role(
        &self,
        project_key: &str,
        name: &str,
        password: &str,
    ) -> Result<Role, ControlError> {
        let project = self.catalog.project(project_key).await?;
        let role = self.catalog.insert_role(&project, name, password).await?;
        let def = RoleDef {
            name: role.name.clone(),
            stored_hash: role.stored_hash.clone(),
        };
        self.role_changed(&project, RoleOp::Upsert(def)).await?;
        tracing::info!(project_id = %project.id, role = %name, "role created");
        Ok(role)
    }

    /// Changes a role's password.
    pub async fn set_role_password(
        &self,
        project_key: &str,
        name: &str,
        password: &str,
    ) -> Result<Role, ControlError> {
        let project = self.catalog.project(project_key).await?;
        let hash = self
            .catalog
            .update_role_password(&project, name, password)
            .await?;
        let def = RoleDef {
            name: name.to_owned(),
            stored_hash: hash,
        };
        self.role_changed(&project, RoleOp::Upsert(def)).await?;
        tracing::info!(project_id = %project.id, role = %name, "role password changed");
        self.catalog.role(&project, name).await
    }

    /// After a role's record changed: its account follows in the compute (now, or at the next
    /// start), and the lookup caches forget the old answer whatever the push did.
    async fn role_changed(&self, project: &Project, op: RoleOp) -> Result<(), ControlError> {
        let pushed = self.lifecycle.push_role_change(&project.id, op).await;
        self.catalog.changed();
        // Sessions parked under the old password (or a deleted role) are not handed out again.
        if let Some(a) = self.lifecycle.activity().get(&project.id) {
            a.drain_pool();
        }
        pushed
    }

    pub async fn list_roles(
        &self,
        project_key: &str,
    ) -> Result<(Project, Vec<Role>), ControlError> {
        self.catalog.list_roles(project_key).await
    }

    pub async fn delete_role(&self, project_key: &str, name: &str) -> Result<(), ControlError> {
        let project = self.catalog.project(project_key).await?;
        self.catalog.remove_role(&project, name).await?;
        self.role_changed(&project, RoleOp::Drop(name.to_owned()))
            .await?;
        tracing::info!(project_id = %project.id, role = %name, "role deleted");
        Ok(())
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
        assert_eq!(
            "kubernetes".parse::<DriverKind>().expect("k8s"),
            DriverKind::Kubernetes
        );
        assert!("nope".parse::<DriverKind>().is_err());
    }
}
