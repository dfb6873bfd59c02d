//! The lifecycle: everything that runs, stops and watches computes. The one wake path (proxy
//! connections, `GET /wake_compute`, `POST /resume`) and the one suspend path (scheduler,
//! `POST /suspend`, shutdown, deletes); state transitions and their gauges; role changes pushed
//! to running computes. The only owner of the driver, the per-project locks and the address
//! cache (the one place an address is forgotten).
//!
//! Per project: an address cache entry, an async lock serialising every state change, and a
//! start back-off. A wake first checks the cache; on a miss it takes the project lock, checks
//! the cache again (another waiter may have started the compute meanwhile: coalesced), then
//! reads the state and starts the compute through the driver. A suspend takes the same lock,
//! so a wake arriving during a suspend waits for it and then starts the compute again.
//!
//! The slow path runs in its own task so that a caller giving up (wake timeout, client gone)
//! never cancels a start half-way: the start finishes and records its outcome.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::activity::Activity;
use crate::catalog::Catalog;
use crate::config::ControlConfig;
use crate::driver::ComputeDriver;
use crate::driver::{ComputeSpec, RoleOp, RoleSync, Running};
use crate::error::ControlError;
use crate::gateway::{ColdStart, WakeError, WakeInfo};
use crate::metrics as m;
use crate::replicas::Replicas;
use crate::roles::RoleDef;
use crate::stats::Stats;
use crate::store::{Compute, ComputeState, Store, Transition};
use crate::tenancy::QuotaRefusal;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Per-project coordination.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) lock: tokio::sync::Mutex<()>,
    backoff: std::sync::Mutex<Backoff>,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Slot {
    /// Seconds until the next start is allowed, when starts are being held back.
    fn held_back(&self) -> Option<u64> {
        let b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let until = b.until?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(left.as_secs_f64().ceil().max(1.0) as u64)
    }

    fn failed(&self) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        b.failures = b.failures.saturating_add(1);
        let delay = BACKOFF_MIN
            .saturating_mul(1u32 << (b.failures - 1).min(6))
            .min(BACKOFF_MAX);
        b.until = Some(Instant::now() + delay);
    }

    fn succeeded(&self) {
        *self.backoff.lock().unwrap_or_else(|p| p.into_inner()) = Backoff::default();
    }
}

/// How long a start's lease lasts without renewal: a replica that dies mid-start holds its
/// compute for at most this long before another replica takes the start over.
pub const START_LEASE: Duration = Duration::from_secs(6);

/// A lease renewed in the background; `lost` fires when it could not be kept.
struct LeaseKeeper {
    task: tokio::task::JoinHandle<()>,
    lost: tokio::sync::oneshot::Receiver<()>,
}

/// Computes per state as this replica sees them, and their integral over time: the compute
/// seconds counters (`doze_compute_seconds_total`), accrued at every change and every scrape.
#[derive(Default)]
pub(crate) struct Gauges {
    counts: std::collections::HashMap<ComputeState, i64>,
    /// When the counts were last accrued into the counters.
    since: Option<Instant>,
    /// Fractions of a second not yet added to the (whole-second) counters.
    carry_running: f64,
    carry_frozen: f64,
}

impl Gauges {
    /// Adds the time since the last accrual, times the computes in each state, to the
    /// counters: `running` for a process that exists unfrozen (starting, running,
    /// suspending), as usage meters it; `frozen` for frozen ones.
    fn accrue(&mut self) {
        let now = Instant::now();
        let dt = self
            .since
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        self.since = Some(now);
        let count = |st: ComputeState| self.counts.get(&st).copied().unwrap_or(0).max(0) as f64;
        let running = count(ComputeState::Starting)
            + count(ComputeState::Running)
            + count(ComputeState::Suspending);
        self.carry_running += running * dt;
        self.carry_frozen += count(ComputeState::Frozen) * dt;
        for (state, carry) in [
            ("running", &mut self.carry_running),
            ("frozen", &mut self.carry_frozen),
        ] {
            // Whole seconds (the counter is an integer); also registers it at 0 on the first
            // accrual, so that a scrape shows it from the start.
            let whole = carry.floor();
            metrics::counter!(m::COMPUTE_SECONDS, "state" => state).increment(whole as u64);
            *carry -= whole;
        }
    }
}

/// What a check of a compute recorded as running found.
pub(crate) enum Liveness {
    Alive(WakeInfo),
    Gone,
    /// The driver could not tell; the reason.
    Unknown(String),
}

/// With several replicas: how long a suspend waits, once it has announced itself, for
/// connections the other replicas had already handed the address to (the invalidation's
/// p99 is under 30 ms here).
const SUSPEND_SETTLE: Duration = Duration::from_millis(150);

/// Whether a store error is a refused compare-and-set (another replica changed the compute).
pub(crate) fn is_fenced(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::store::Fenced>().is_some()
}

/// A state store failure on the wake path, with its whole cause chain.
fn store_failed(e: anyhow::Error) -> WakeError {
    WakeError::Store(format!("{e:#}"))
}

/// Runs, stops and watches computes.
pub struct Lifecycle {
    pub(crate) cfg: ControlConfig,
    pub(crate) store: Store,
    catalog: Arc<Catalog>,
    pub(crate) driver: Arc<dyn ComputeDriver>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) stats: Arc<Stats>,
    /// This replica and what it knows of the others.
    pub(crate) replicas: Arc<Replicas>,
    me: std::sync::Weak<Lifecycle>,
    /// project id -> address of its running compute.
    wake_cache: moka::sync::Cache<String, WakeInfo>,
    slots: std::sync::Mutex<std::collections::HashMap<String, Arc<Slot>>>,
    gauges: std::sync::Mutex<Gauges>,
    pub(crate) shutting_down: std::sync::atomic::AtomicBool,
    /// `--frozen-memory-budget` in bytes (`u64::MAX`: none); changeable while serving.
    pub(crate) frozen_budget: std::sync::atomic::AtomicU64,
}

impl Lifecycle {
    pub(crate) fn new(
        cfg: ControlConfig,
        store: Store,
        catalog: Arc<Catalog>,
        driver: Arc<dyn ComputeDriver>,
        activity: Arc<Activity>,
        stats: Arc<Stats>,
        replicas: Arc<Replicas>,
    ) -> Arc<Self> {
        let budget = cfg.frozen.memory_budget.unwrap_or(u64::MAX);
        Arc::new_cyclic(|me| Lifecycle {
            frozen_budget: std::sync::atomic::AtomicU64::new(budget),
            cfg,
            store,
            catalog,
            driver,
            activity,
            stats,
            replicas,
            me: me.clone(),
            wake_cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            slots: Default::default(),
            gauges: Default::default(),
            shutting_down: Default::default(),
        })
    }

    /// The address of the project's running compute, starting it if needed. Concurrent wakes
    /// of one project share one start. Bounded by `wake_timeout`.
    pub async fn wake(&self, project_key: &str) -> Result<WakeInfo, WakeError> {
        self.wake_inner(project_key).await
    }

    /// Forgets the cached address of a project: the one place an address is dropped.
    /// Also drains the project's pool of parked backend sessions: whatever made the address
    /// doubtful (a suspend, freeze, stop, lost compute, failed connect) makes them doubtful.
    pub fn invalidate(&self, project_id: &str) {
        self.wake_cache.invalidate(project_id);
        if let Some(a) = self.activity.get(project_id) {
            a.drain_pool();
        }
    }

    /// Connections to `project_id`'s compute that proxies (this replica's and, from their
    /// heartbeats, the others') hold parked in their pools: they are not sessions, and never
    /// keep a compute awake. For the scheduler's first look only.
    pub(crate) fn parked_sessions(&self, project_id: &str) -> u64 {
        self.local_parked(project_id) + self.replicas.remote_parked(project_id)
    }

    /// This replica's parked connections to `project_id`'s compute: what the last check before
    /// a suspend or freeze subtracts. The other replicas' counts come from heartbeats that may
    /// be seconds old (a client may have taken a parked session since); their pools drain when
    /// they hear the suspend, and a session still open then refuses the suspend, the safe way.
    pub(crate) fn local_parked(&self, project_id: &str) -> u64 {
        self.activity.get(project_id).map_or(0, |a| a.parked())
    }

    /// Forgets every cached address (another replica's notifications may have been lost).
    pub fn invalidate_all(&self) {
        self.wake_cache.invalidate_all();
        self.activity.drain_all();
    }

    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Stops every running compute cleanly and marks it suspended with reason "shutdown".
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown_inner().await;
    }

    fn arc(&self) -> Result<Arc<Self>, WakeError> {
        self.me.upgrade().ok_or(WakeError::ShuttingDown)
    }

    fn forget_slot_inner(&self, project_id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project_id);
    }

    /// Drops a deleted project's lock and back-off.
    pub(crate) fn forget_slot(&self, project_id: &str) {
        self.forget_slot_inner(project_id);
    }

    pub(crate) fn slot(&self, project_id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(slots.entry(project_id.to_owned()).or_default())
    }

    pub(crate) async fn wake_inner(&self, key: &str) -> Result<WakeInfo, WakeError> {
        let t0 = Instant::now();
        Stats::bump(&self.stats.wakes);
        let result = self.wake_measured(key).await;
        let (outcome, from) = match &result {
            Ok(info) => (
                info.cold_start.as_str(),
                match info.cold_start {
                    ColdStart::Warm => "running",
                    ColdStart::Thawed => "frozen",
                    ColdStart::Resumed => "stopped",
                },
            ),
            Err(_) => ("failed", "unknown"),
        };
        metrics::histogram!(m::WAKE_DURATION, "outcome" => outcome, "from" => from)
            .record(t0.elapsed().as_secs_f64());
        result
    }

    async fn wake_measured(&self, key: &str) -> Result<WakeInfo, WakeError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(WakeError::ShuttingDown);
        }
        // The proxy wakes by project id, which it resolved once at login: a warm wake is one
        // cache lookup, with no second resolution of the key.
        if let Some(info) = self.wake_cache.get(key) {
            return Ok(WakeInfo {
                cold_start: ColdStart::Warm,
                ..info
            });
        }
        let (project_id, name) = self
            .catalog
            .resolve(key)
            .await
            .map_err(store_failed)?
            .ok_or_else(|| WakeError::UnknownProject(key.to_owned()))?;
        if let Some(info) = self.wake_cache.get(&project_id) {
            return Ok(WakeInfo {
                cold_start: ColdStart::Warm,
                ..info
            });
        }
        let this = self.arc()?;
        let span = tracing::info_span!("wake", project_id = %project_id, project = %name);
        let task =
            tokio::spawn(async move { this.wake_slow(project_id, name).await }.instrument(span));
        let timeout = self.cfg.wake_timeout;
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(WakeError::Internal(format!("the wake task failed: {join}"))),
            Err(_) => Err(WakeError::Timeout {
                project: key.to_owned(),
                timeout_secs: timeout.as_secs().max(1),
            }),
        }
    }

    async fn wake_slow(
        self: Arc<Self>,
        project_id: String,
        name: String,
    ) -> Result<WakeInfo, WakeError> {
        let slot = self.slot(&project_id);
        let _guard = slot.lock.lock().await;
        if let Some(info) = self.wake_cache.get(&project_id) {
            self.stats.record_coalesced();
            return Ok(info);
        }
        // Another replica's changes wake this loop (a start it finished, a suspend); a slow
        // poll covers a lost notification.
        let mut changes = self.replicas.compute_changes.subscribe();
        let mut waited_for_other = false;
        // The caller stops waiting after the wake timeout; so does this task (it holds the
        // project's lock), however long another replica's start or suspend takes.
        let deadline = Instant::now() + self.cfg.wake_timeout;
        loop {
            let compute = self
                .store
                .compute_for_project(&project_id)
                .await
                .map_err(store_failed)?
                .ok_or_else(|| WakeError::NoCompute(name.clone()))?;
            if Instant::now() >= deadline {
                return Err(WakeError::Timeout {
                    project: name,
                    timeout_secs: self.cfg.wake_timeout.as_secs().max(1),
                });
            }
            match compute.state {
                ComputeState::Running => match self.running_info(&compute).await {
                    Liveness::Alive(info) => {
                        // With several replicas, hand out the address only if nobody began to
                        // suspend it while this replica was checking (an adoption may take
                        // a while).
                        if self.store.is_shared() {
                            let now = self
                                .store
                                .compute_for_project(&project_id)
                                .await
                                .map_err(store_failed)?;
                            if now.as_ref().map(|c| c.epoch) != Some(compute.epoch) {
                                continue;
                            }
                        }
                        if waited_for_other {
                            self.stats.record_coalesced();
                        }
                        self.wake_cache.insert(project_id, info.clone());
                        return Ok(info);
                    }
                    Liveness::Unknown(why) => {
                        return Err(WakeError::Internal(format!(
                            "the compute of project '{name}' does not answer: {why}"
                        )));
                    }
                    Liveness::Gone => {
                        // Recorded as up but not alive: it crashed (or was never adopted).
                        tracing::warn!(compute_id = %compute.id, "compute is gone; restarting it");
                        self.record_lost(&compute, "the compute's server was gone at a wake")
                            .await
                            .map_err(store_failed)?;
                        continue;
                    }
                },
                ComputeState::Frozen => match self.thaw_locked(&compute, &name).await? {
                    Some(info) => {
                        if waited_for_other {
                            self.stats.record_coalesced();
                        }
                        return Ok(info);
                    }
                    None => continue,
                },
                ComputeState::Failed if waited_for_other => {
                    // The start this wake waited for (another replica's) failed: its reason,
                    // not a second start.
                    return Err(WakeError::StartFailed {
                        project: name,
                        reason: compute
                            .last_error
                            .unwrap_or_else(|| "the compute failed to start".to_owned()),
                    });
                }
                ComputeState::Suspended | ComputeState::Failed => {
                    if let Some(retry_in_secs) = slot.held_back() {
                        metrics::counter!(m::WAKES_REFUSED, "reason" => "backoff").increment(1);
                        return Err(WakeError::RateLimited {
                            project: name,
                            retry_in_secs,
                        });
                    }
                    // The tenant's quotas, checked and held until the start is claimed, so that
                    // two wakes of one tenant (in this process or on two replicas) cannot both
                    // take its last slot.
                    let gate = match self.catalog.tenancy().check_wake(&compute).await {
                        Ok(gate) => gate,
                        Err(QuotaRefusal::Exceeded(why)) => {
                            metrics::counter!(m::WAKES_REFUSED, "reason" => "quota").increment(1);
                            tracing::warn!(compute_id = %compute.id, project = %name, reason = %why, "wake refused by a tenant quota");
                            return Err(WakeError::QuotaExceeded(why));
                        }
                        Err(QuotaRefusal::Store(e)) => return Err(WakeError::Store(e)),
                    };
                    let claimed = self.claim_start(&compute, "won").await;
                    if let Some(gate) = gate {
                        gate.release().await;
                    }
                    let Some(starting) = claimed? else {
                        waited_for_other = true;
                        continue;
                    };
                    let result = self.start_locked(&starting, &name).await;
                    match &result {
                        Ok(_) => slot.succeeded(),
                        Err(WakeError::StartFailed { .. }) => slot.failed(),
                        Err(_) => {}
                    }
                    return result;
                }
                ComputeState::Starting
                    if !self.store.is_shared()
                        || self
                            .store
                            .start_lease_expired(&compute.id)
                            .await
                            .map_err(store_failed)? =>
                {
                    // The replica that started it died (or hung) mid-start: take it over.
                    // The driver adopts or stops whatever that start left behind.
                    tracing::warn!(compute_id = %compute.id, "a start's lease ran out; taking the start over");
                    let Some(starting) = self.claim_start(&compute, "takeover").await? else {
                        continue;
                    };
                    return self.start_locked(&starting, &name).await;
                }
                ComputeState::Suspending
                    if !self.store.is_shared()
                        || self
                            .store
                            .start_lease_expired(&compute.id)
                            .await
                            .map_err(store_failed)? =>
                {
                    // A suspend that died half-way (this process holds the project's lock, so
                    // on SQLite nobody else is suspending it; with replicas, its lease ran
                    // out): finish it, then start.
                    tracing::warn!(compute_id = %compute.id, "finishing a suspend that was left half-way");
                    self.record_lost(&compute, "a suspend was left half-way")
                        .await
                        .map_err(store_failed)?;
                }
                ComputeState::Starting | ComputeState::Suspending => {
                    // Another replica is starting or suspending it: wait for the outcome.
                    waited_for_other = true;
                    let _ =
                        tokio::time::timeout(Duration::from_millis(250), changes.changed()).await;
                }
            }
        }
    }

    /// A project's name for log lines (from the catalog's cache); empty when unknown.
    async fn project_name(&self, project_id: &str) -> String {
        match self.catalog.resolve(project_id).await {
            Ok(Some((_, name))) => name,
            _ => String::new(),
        }
    }

    /// Thaws a frozen compute and records it running: the one place a compute is thawed for
    /// clients, always before its address is handed out, so no client ever connects to a
    /// frozen server. The caller holds the project lock, so a herd thaws it once.
    /// `Ok(None)`: the compute changed meanwhile (another replica, or its server was gone and
    /// is now recorded suspended): look again.
    async fn thaw_locked(
        &self,
        frozen: &Compute,
        name: &str,
    ) -> Result<Option<WakeInfo>, WakeError> {
        let t0 = Instant::now();
        let thaw = || {
            self.driver
                .thaw(&frozen.project_id, frozen.handle.as_deref())
                .map_err(|e| {
                    WakeError::Internal(format!(
                        "thawing the compute of project '{name}' failed: {e:#}"
                    ))
                })
        };
        thaw()?;
        let info = match self.running_info(frozen).await {
            Liveness::Alive(info) => info,
            Liveness::Gone => {
                tracing::warn!(compute_id = %frozen.id, "a frozen compute is gone; restarting it");
                self.record_lost(frozen, "the compute's server was gone at a thaw")
                    .await
                    .map_err(store_failed)?;
                return Ok(None);
            }
            Liveness::Unknown(why) => {
                return Err(WakeError::Internal(format!(
                    "the compute of project '{name}' does not answer after a thaw: {why}"
                )));
            }
        };
        let running = match self
            .transition(
                frozen,
                ComputeState::Running,
                Some(&info.address),
                frozen.handle.as_deref(),
                "thaw",
            )
            .await
        {
            Ok(c) => c,
            Err(e) if is_fenced(&e) => return Ok(None),
            Err(e) => return Err(store_failed(e)),
        };
        if self.store.is_shared() {
            // A replica re-freezing this compute (after adopting it) checks the state after
            // its freeze; this second thaw, after the state says running, closes the window
            // between that check and this replica's state change.
            thaw()?;
        }
        // The roles changed while it was frozen (read again now: another replica may have
        // marked them since this wake read the compute): a thaw is not a start, so they are
        // applied now, before any client logs in. If that fails the compute is stopped, and
        // the start that follows synchronises them or fails: never an outdated account.
        let dirty = running.roles_dirty
            || self
                .store
                .compute_for_project(&frozen.project_id)
                .await
                .map_err(store_failed)?
                .is_some_and(|c| c.roles_dirty);
        if dirty && let Err(e) = self.sync_roles(&frozen.project_id).await {
            tracing::warn!(error = %format!("{e:#}"), "synchronising roles into a thawed compute failed; restarting it");
            self.suspend_locked(&frozen.project_id, "roles", false)
                .await
                .map_err(|e| WakeError::Internal(e.to_string()))?;
            return Ok(None);
        }
        let took = t0.elapsed();
        self.stats.record_thaw(took);
        tracing::info!(address = %info.address, ?took, "compute thawed");
        let info = WakeInfo {
            cold_start: ColdStart::Thawed,
            ..info
        };
        self.wake_cache
            .insert(frozen.project_id.clone(), info.clone());
        Ok(Some(info))
    }

    /// Freezes a compute recorded as frozen again after it was thawed for an adoption or a
    /// check, unless a wake thawed it meanwhile: the state is read after the freeze, and a
    /// compute no longer recorded frozen at that epoch is thawed again (see
    /// [`Lifecycle::thaw_locked`]).
    pub(crate) async fn refreeze(&self, frozen: &Compute) -> anyhow::Result<()> {
        self.driver
            .freeze(&frozen.project_id, frozen.handle.as_deref())
            .await?;
        let now = self.store.compute_for_project(&frozen.project_id).await?;
        if now.as_ref().map(|c| (c.state, c.epoch)) != Some((ComputeState::Frozen, frozen.epoch)) {
            self.driver
                .thaw(&frozen.project_id, frozen.handle.as_deref())?;
        }
        Ok(())
    }

    /// After an adoption (which thaws): freezes a compute recorded frozen again; when that
    /// fails it is recorded running, so the state never claims a freeze that is not there.
    async fn refreeze_adopted(&self, c: &Compute) {
        match self.refreeze(c).await {
            Ok(()) => self.stats.record_freeze("adopted"),
            Err(e) => {
                tracing::warn!(project_id = %c.project_id, error = %format!("{e:#}"),
                    "freezing an adopted compute again failed; it is recorded running");
                let _ = self.driver.thaw(&c.project_id, c.handle.as_deref());
                let _ = self
                    .transition(
                        c,
                        ComputeState::Running,
                        c.address.as_deref(),
                        c.handle.as_deref(),
                        "adopted",
                    )
                    .await;
            }
        }
    }

    /// Whether a compute recorded as running answers: alive in this replica's driver, or
    /// started by another replica (or a previous run) and adopted now. `Unknown` when the
    /// driver cannot tell (a server that does not answer in time, an API error): never a
    /// reason to stop it.
    pub(crate) async fn running_info(&self, compute: &Compute) -> Liveness {
        let Some(address) = compute.address.clone() else {
            return Liveness::Gone;
        };
        if self.driver.is_alive(&compute.project_id) {
            return Liveness::Alive(WakeInfo {
                address,
                compute_id: compute.id.clone(),
                cold_start: ColdStart::Warm,
            });
        }
        let recorded = Running {
            address,
            handle: compute.handle.clone(),
        };
        match self.driver.adopt(&compute.project_id, Some(recorded)).await {
            Ok(Some(run)) => Liveness::Alive(WakeInfo {
                address: run.address,
                compute_id: compute.id.clone(),
                cold_start: ColdStart::Warm,
            }),
            Ok(None) => Liveness::Gone,
            Err(e) => Liveness::Unknown(format!("{e:#}")),
        }
    }

    /// Whether a compute recorded as running is certainly gone (see
    /// [`Lifecycle::running_info`]); `false` when alive or unknown.
    /// The last time `compute` was known alive: its last state change, or a later liveness
    /// check that found it answering. A store error gives the last state change.
    pub(crate) async fn last_sign_of_life(&self, compute: &Compute) -> i64 {
        let seen = self.store.alive_at(&compute.id).await.ok().flatten();
        seen.map_or(compute.updated_at, |s| s.max(compute.updated_at))
    }

    pub(crate) async fn is_gone(&self, compute: &Compute) -> bool {
        matches!(self.running_info(compute).await, Liveness::Gone)
    }

    /// Records a compute recorded as running, but gone, as suspended: first the
    /// compare-and-set to `suspending` (so a replica that started it again meanwhile is never
    /// stopped), then the stop of whatever is left, then `suspended`. `Ok(false)` when another
    /// replica changed the compute first.
    pub(crate) async fn record_lost(&self, compute: &Compute, why: &str) -> anyhow::Result<bool> {
        // Usage is metered from these events: the compute stopped counting at its last sign of
        // life, not when it was found dead (maybe after doze itself was down for hours).
        let died = self.last_sign_of_life(compute).await;
        let suspending = match self
            .apply_transition_at(compute, &self.suspending_lease("lost"), Some(died))
            .await
        {
            Ok(c) => c,
            Err(e) if is_fenced(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        self.invalidate(&compute.project_id);
        let _ = self.driver.stop(&compute.project_id).await;
        let t = Transition {
            to: ComputeState::Suspended,
            address: None,
            handle: None,
            last_error: Some(Some(why)),
            reason: "lost",
            lease: None,
        };
        match self.apply_transition_at(&suspending, &t, Some(died)).await {
            Ok(_) => Ok(true),
            Err(e) if is_fenced(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The transition to `suspending` under this replica's lease, so that a replica that dies
    /// mid-suspend leaves a state the others can recover.
    fn suspending_lease<'a>(&'a self, reason: &'a str) -> Transition<'a> {
        Transition {
            to: ComputeState::Suspending,
            address: None,
            handle: None,
            last_error: None,
            reason,
            lease: Some((&self.replicas.id, START_LEASE.as_millis() as i64)),
        }
    }

    /// Moves a stopped compute to `starting` under this replica's lease, unless another
    /// replica changed it first (then `None`: wait for that replica's outcome).
    async fn claim_start(
        &self,
        compute: &Compute,
        outcome: &'static str,
    ) -> Result<Option<Compute>, WakeError> {
        let t = Transition {
            to: ComputeState::Starting,
            address: None,
            handle: None,
            last_error: None,
            reason: "wake",
            lease: Some((&self.replicas.id, START_LEASE.as_millis() as i64)),
        };
        match self.apply_transition(compute, &t).await {
            Ok(starting) => {
                metrics::counter!(m::START_LEASES, "outcome" => outcome).increment(1);
                Ok(Some(starting))
            }
            Err(e) if is_fenced(&e) => {
                metrics::counter!(m::START_LEASES, "outcome" => "lost").increment(1);
                tracing::debug!(compute_id = %compute.id, "another replica is starting this compute; waiting for it");
                Ok(None)
            }
            Err(e) => Err(store_failed(e)),
        }
    }

    /// Starts a compute this replica claimed (state `starting`, its lease). The caller holds
    /// the project lock. The lease is renewed while the driver works.
    async fn start_locked(&self, starting: &Compute, name: &str) -> Result<WakeInfo, WakeError> {
        let compute = starting;
        let span = tracing::info_span!("start", project_id = %compute.project_id, project = %name, compute_id = %compute.id);
        async {
            let roles = if compute.roles_dirty {
                match self.role_sync(&compute.project_id).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        let _ = self
                            .transition_with_error(starting, ComputeState::Failed, &format!("{e:#}"), "start failed")
                            .await;
                        return Err(store_failed(e));
                    }
                }
            } else {
                None
            };
            let spec = ComputeSpec {
                project_id: compute.project_id.clone(),
                compute_id: compute.id.clone(),
                config: compute.config.clone(),
                roles,
            };
            let t0 = Instant::now();
            tracing::info!("starting compute");
            let mut renew = self.keep_lease(starting);
            // A start that lost its lease (another replica takes the compute over) stops at
            // once: never two starts on one compute's storage.
            let started = tokio::select! {
                started = self.driver.start(&spec) => started,
                _ = &mut renew.lost => {
                    tracing::warn!("lost the start's lease; abandoning this start");
                    let _ = self.driver.stop(&compute.project_id).await;
                    return Err(WakeError::Internal(
                        "the compute's start lost its lease to another doze replica; retry".to_owned(),
                    ));
                }
            };
            renew.task.abort();
            match started {
                Ok(Running { address, handle }) => {
                    let took = t0.elapsed();
                    match self
                        .transition(
                            starting,
                            ComputeState::Running,
                            Some(&address),
                            handle.as_deref(),
                            "wake",
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_fenced(&e) => {
                            // Another replica took the start over (it adopts or stops what this
                            // start made), or the compute was suspended or deleted meanwhile:
                            // then this start's server belongs to nobody and is stopped.
                            let now = self
                                .store
                                .compute_for_project(&compute.project_id)
                                .await
                                .ok()
                                .flatten();
                            if !matches!(
                                now.map(|c| c.state),
                                Some(ComputeState::Starting | ComputeState::Running)
                            ) {
                                let _ = self.driver.stop(&compute.project_id).await;
                            }
                            tracing::warn!("this start was overtaken by another replica's change");
                            return Err(WakeError::Internal(
                                "the compute's start was taken over by another doze replica; retry".to_owned(),
                            ));
                        }
                        Err(e) => return Err(store_failed(e)),
                    }
                    self.stats.record_start(took);
                    tracing::info!(%address, ?took, "compute running");
                    if let Some(sync) = &spec.roles {
                        self.store
                            .set_roles_dirty(&compute.project_id, false)
                            .await
                            .map_err(store_failed)?;
                        self.store
                            .clear_role_tombstones(&compute.project_id, &sync.drop)
                            .await
                            .map_err(store_failed)?;
                    }
                    let info = WakeInfo {
                        address,
                        compute_id: compute.id.clone(),
                        cold_start: ColdStart::Resumed,
                    };
                    self.wake_cache
                        .insert(compute.project_id.clone(), info.clone());
                    Ok(info)
                }
                Err(e) => {
                    let reason = format!("{e:#}");
                    self.stats.record_start_failure();
                    tracing::error!(%reason, "compute failed to start");
                    match self
                        .transition_with_error(starting, ComputeState::Failed, &reason, "start failed")
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_fenced(&e) => {}
                        Err(e) => return Err(store_failed(e)),
                    }
                    Err(WakeError::StartFailed {
                        project: name.to_owned(),
                        reason,
                    })
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Renews this replica's lease on a starting or suspending compute every third of its
    /// length until aborted.
    fn keep_lease(&self, starting: &Compute) -> LeaseKeeper {
        let store = self.store.clone();
        let (id, epoch, owner) = (
            starting.id.clone(),
            starting.epoch,
            self.replicas.id.clone(),
        );
        let (lost_tx, lost) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let ttl = START_LEASE.as_millis() as i64;
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(START_LEASE / 3).await;
                match store.renew_start_lease(&id, epoch, &owner, ttl).await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "renewing the lease failed");
                        // Not renewed for nearly a whole lease: another replica may take the
                        // compute over any moment now.
                        if renewed.elapsed() >= START_LEASE - START_LEASE / 4 {
                            break;
                        }
                    }
                }
            }
            let _ = lost_tx.send(());
        });
        LeaseKeeper { task, lost }
    }

    /// Stops the project's compute if it runs. With `respect_sessions`, refuses while the proxy
    /// has sessions open on the project. Returns the compute as it is afterwards.
    pub(crate) async fn suspend_project(
        &self,
        project_id: &str,
        reason: &str,
        respect_sessions: bool,
    ) -> Result<Option<Compute>, ControlError> {
        let slot = self.slot(project_id);
        let _guard = slot.lock.lock().await;
        self.suspend_locked(project_id, reason, respect_sessions)
            .await
    }

    /// As [`Lifecycle::suspend_project`], for a caller already holding the project lock.
    pub(crate) async fn suspend_locked(
        &self,
        project_id: &str,
        reason: &str,
        respect_sessions: bool,
    ) -> Result<Option<Compute>, ControlError> {
        // After this, no new wake can be handed the address without taking the lock we hold.
        self.invalidate(project_id);
        if respect_sessions {
            // This replica's sessions, and the other replicas' as their heartbeats report them.
            let sessions = self
                .activity
                .get(project_id)
                .map(|a| a.sessions())
                .unwrap_or(0)
                + self.replicas.remote_activity(project_id).0;
            if sessions > 0 {
                return Err(ControlError::SessionsOpen {
                    project: project_id.to_owned(),
                    sessions,
                });
            }
        }
        let Some(compute) = self.store.compute_for_project(project_id).await? else {
            return Ok(None);
        };
        if !matches!(
            compute.state,
            ComputeState::Running
                | ComputeState::Starting
                | ComputeState::Suspending
                | ComputeState::Frozen
        ) {
            return Ok(Some(compute));
        }
        if compute.state == ComputeState::Frozen {
            // A frozen server handles neither SIGTERM nor doze's session count: thawed first,
            // then stopped like a running one.
            self.driver
                .thaw(&compute.project_id, compute.handle.as_deref())?;
        }
        if self.store.is_shared()
            && matches!(
                compute.state,
                ComputeState::Starting | ComputeState::Suspending
            )
            && !self.store.start_lease_expired(&compute.id).await?
        {
            // Another replica is starting or suspending it right now: never take a start
            // from under it (its server would run unrecorded).
            return Err(ControlError::Conflict(format!(
                "the compute of project {project_id} is being {} by another doze replica; retry in a moment",
                if compute.state == ComputeState::Starting {
                    "started"
                } else {
                    "suspended"
                }
            )));
        }
        let name = self.project_name(project_id).await;
        let span = tracing::info_span!("suspend", project_id = %project_id, project = %name, compute_id = %compute.id, reason);
        async {
            let suspending = self
                .apply_transition(&compute, &self.suspending_lease(reason))
                .await?;
            if respect_sessions && self.store.is_shared() {
                self.recheck_sessions(&compute, &suspending, reason).await?;
            }
            let renew = self.keep_lease(&suspending);
            let stopped = self.driver.stop(project_id).await;
            renew.task.abort();
            let done = match &stopped {
                Ok(()) => {
                    self.transition(&suspending, ComputeState::Suspended, None, None, reason)
                        .await?
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(error = %msg, "compute did not stop cleanly");
                    self.transition_with_error(&suspending, ComputeState::Suspended, &msg, reason)
                        .await?
                }
            };
            self.stats.record_suspend(reason);
            tracing::info!("compute suspended");
            Ok(Some(done))
        }
        .instrument(span)
        .await
    }

    /// Freezes the project's compute if it runs and nothing uses it: no session through any
    /// replica and none connected to the compute directly (a latch held by a frozen session
    /// is what InnoDB's semaphore watchdog would trip on). Returns the compute as it is
    /// afterwards.
    ///
    /// Runs in a task of its own, like a start: a caller that goes away (an HTTP client that
    /// disconnects) never leaves a compute frozen whose state still says running.
    pub(crate) async fn freeze_project(
        &self,
        project_id: &str,
        reason: &str,
    ) -> Result<Option<Compute>, ControlError> {
        let this = self.arc()?;
        let (project_id, reason) = (project_id.to_owned(), reason.to_owned());
        tokio::spawn(async move {
            let slot = this.slot(&project_id);
            let _guard = slot.lock.lock().await;
            this.freeze_locked(&project_id, &reason).await
        })
        .await
        .map_err(|e| ControlError::Internal(anyhow::anyhow!("the freeze task failed: {e}")))?
    }

    /// Thaws after a freeze that is being undone; a failure is logged (the caller reports its
    /// own error).
    fn thaw_back(&self, project_id: &str, handle: Option<&str>) {
        if let Err(e) = self.driver.thaw(project_id, handle) {
            tracing::error!(project_id, error = %format!("{e:#}"), "thawing a compute whose freeze is undone failed");
        }
    }

    async fn freeze_locked(
        &self,
        project_id: &str,
        reason: &str,
    ) -> Result<Option<Compute>, ControlError> {
        if self.driver.freezer().is_none() {
            return Err(ControlError::Invalid(
                "this doze cannot freeze computes (the Kubernetes driver, or --freezer off); suspend with mode=stop"
                    .to_owned(),
            ));
        }
        self.invalidate(project_id);
        let proxied = self
            .activity
            .get(project_id)
            .map(|a| a.sessions())
            .unwrap_or(0)
            + self.replicas.remote_activity(project_id).0;
        if proxied > 0 {
            return Err(ControlError::SessionsOpen {
                project: project_id.to_owned(),
                sessions: proxied,
            });
        }
        let Some(compute) = self.store.compute_for_project(project_id).await? else {
            return Ok(None);
        };
        if compute.state != ComputeState::Running {
            return Ok(Some(compute));
        }
        match self.running_info(&compute).await {
            Liveness::Alive(_) => {}
            Liveness::Gone => {
                self.record_lost(&compute, "the compute's server was gone at a freeze")
                    .await?;
                return self
                    .store
                    .compute_for_project(project_id)
                    .await
                    .map_err(Into::into);
            }
            Liveness::Unknown(why) => {
                return Err(ControlError::Conflict(format!(
                    "the compute of project {project_id} does not answer ({why}); not freezing it"
                )));
            }
        }
        let name = self.project_name(project_id).await;
        let span = tracing::info_span!("freeze", project_id = %project_id, project = %name, compute_id = %compute.id, reason);
        async {
            let shared = self.store.is_shared();
            // With several replicas the state is announced first, so the others drop the
            // address and send their new clients through a thaw.
            let announced = if shared {
                let frozen = self
                    .transition(
                        &compute,
                        ComputeState::Frozen,
                        compute.address.as_deref(),
                        compute.handle.as_deref(),
                        reason,
                    )
                    .await?;
                tokio::time::sleep(SUSPEND_SETTLE).await;
                Some(frozen)
            } else {
                None
            };
            let back_to_running = |err: ControlError| async {
                if let Some(frozen) = &announced {
                    let _ = self
                        .transition(
                            frozen,
                            ComputeState::Running,
                            compute.address.as_deref(),
                            compute.handle.as_deref(),
                            reason,
                        )
                        .await;
                }
                Err(err)
            };
            let direct = match self.driver.client_sessions(project_id).await {
                Ok(n) => n.saturating_sub(self.local_parked(project_id)),
                Err(e) => {
                    return back_to_running(ControlError::Conflict(format!(
                        "cannot count the sessions of project {project_id}'s compute before freezing it ({e:#}); it keeps running"
                    )))
                    .await;
                }
            };
            if direct > 0 {
                self.activity.project(project_id).touch();
                return back_to_running(ControlError::SessionsOpen {
                    project: project_id.to_owned(),
                    sessions: direct,
                })
                .await;
            }
            if let Err(e) = self
                .driver
                .freeze(project_id, compute.handle.as_deref())
                .await
            {
                self.thaw_back(project_id, compute.handle.as_deref());
                return back_to_running(ControlError::Internal(e.context("freezing the compute")))
                    .await;
            }
            let frozen = match announced {
                Some(frozen) => {
                    // A wake on another replica may have thawed it between the announcement
                    // and the freeze: then it runs, and stays thawed.
                    let now = self.store.compute_for_project(project_id).await?;
                    if now.as_ref().map(|c| (c.state, c.epoch))
                        != Some((ComputeState::Frozen, frozen.epoch))
                    {
                        self.thaw_back(project_id, compute.handle.as_deref());
                        return Ok(now);
                    }
                    frozen
                }
                None => match self
                    .transition(
                        &compute,
                        ComputeState::Frozen,
                        compute.address.as_deref(),
                        compute.handle.as_deref(),
                        reason,
                    )
                    .await
                {
                    Ok(frozen) => frozen,
                    Err(e) => {
                        self.thaw_back(project_id, compute.handle.as_deref());
                        return Err(e.into());
                    }
                },
            };
            self.stats.record_freeze(reason);
            tracing::info!(freezer = self.driver.freezer().unwrap_or("none"), "compute frozen");
            Ok(Some(frozen))
        }
        .instrument(span)
        .await
    }

    /// With several replicas, the last word on sessions before a suspend stops the server.
    /// The `suspending` state is announced (the other replicas drop the address and hold
    /// their new clients), then, after a moment for connections those replicas had already
    /// handed the address to, the server's own session count decides: a session through any
    /// replica puts the compute back to running and refuses the suspend.
    async fn recheck_sessions(
        &self,
        running: &Compute,
        suspending: &Compute,
        reason: &str,
    ) -> Result<(), ControlError> {
        tokio::time::sleep(SUSPEND_SETTLE).await;
        let (sessions, why) = match self.running_info(running).await {
            // Gone already: nobody to cut.
            Liveness::Gone => (0, None),
            Liveness::Unknown(why) => (1, Some(why)),
            // Adopted if another replica started it, so its process list can be read here.
            Liveness::Alive(_) => match self.driver.client_sessions(&running.project_id).await {
                Ok(n) => (
                    n.saturating_sub(self.local_parked(&running.project_id)),
                    None,
                ),
                // Not knowing is not "none": the suspend is refused, not risked.
                Err(e) => (1, Some(format!("{e:#}"))),
            },
        };
        if sessions == 0 {
            return Ok(());
        }
        self.transition(
            suspending,
            ComputeState::Running,
            running.address.as_deref(),
            running.handle.as_deref(),
            reason,
        )
        .await?;
        if let Some(why) = why {
            return Err(ControlError::Conflict(format!(
                "cannot count the sessions of project {}'s compute before suspending it ({why}); it keeps running",
                running.project_id
            )));
        }
        Err(ControlError::SessionsOpen {
            project: running.project_id.clone(),
            sessions,
        })
    }

    pub(crate) async fn shutdown_inner(&self) {
        if self.driver.computes_outlive_doze() {
            tracing::info!("leaving computes running: the next doze adopts them");
            return;
        }
        if self.store.is_shared() {
            // Others that beat within two heartbeats (a replica killed a while ago does not
            // count); not knowing means assuming they are there.
            let recent =
                (crate::replicas::HEARTBEAT_EVERY * 2 + Duration::from_secs(1)).as_millis() as i64;
            let others = self
                .store
                .live_replicas(recent)
                .await
                .map(|live| live.iter().filter(|r| r.id != self.replicas.id).count())
                .unwrap_or(1);
            if others > 0 {
                tracing::info!(
                    others,
                    "leaving computes running: other replicas serve them"
                );
                return;
            }
        }
        let computes = match self.store.list_computes().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "shutdown: cannot list computes");
                return;
            }
        };
        for c in computes {
            if matches!(
                c.state,
                ComputeState::Running
                    | ComputeState::Starting
                    | ComputeState::Suspending
                    | ComputeState::Frozen
            ) && let Err(e) = self.suspend_project(&c.project_id, "shutdown", false).await
            {
                tracing::error!(project_id = %c.project_id, compute_id = %c.id, error = %e, "shutdown: stopping compute failed");
            }
        }
    }

    /// Makes the store match reality after a restart: adopt what still runs, mark the rest
    /// suspended.
    pub(crate) async fn reconcile(&self) -> anyhow::Result<()> {
        // Names for the log lines: operators know their projects by name, not by UUID.
        let names: std::collections::HashMap<String, String> = self
            .store
            .list_projects()
            .await?
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect();
        for c in self.store.list_computes().await? {
            let project = names.get(&c.project_id).map_or("?", String::as_str);
            let shared = self.store.is_shared();
            if shared
                && matches!(c.state, ComputeState::Starting | ComputeState::Suspending)
                && !self.store.start_lease_expired(&c.id).await?
            {
                // Another replica is starting or suspending it right now.
                continue;
            }
            if shared && matches!(c.state, ComputeState::Running | ComputeState::Frozen) {
                // Other replicas may be serving it: adopt it into this replica's driver, and
                // write nothing (the leader's liveness check records it if it is gone).
                let recorded = c.address.clone().map(|address| Running {
                    address,
                    handle: c.handle.clone(),
                });
                match self.driver.adopt(&c.project_id, recorded).await {
                    Ok(Some(_)) if c.state == ComputeState::Frozen => {
                        // Adoption thawed it to check it: frozen again, unless a wake on
                        // another replica thawed it meanwhile.
                        self.refreeze_adopted(&c).await;
                    }
                    Ok(Some(_)) => {}
                    // Certainly gone: recorded as lost, fenced (a replica that started it
                    // again meanwhile wins).
                    Ok(None) => {
                        self.record_lost(
                            &c,
                            "the compute's server was gone when this replica started",
                        )
                        .await?;
                    }
                    Err(e) => {
                        tracing::warn!(project_id = %c.project_id, project, error = %format!("{e:#}"), "cannot adopt a running compute now; leaving it to the scheduler");
                    }
                }
                continue;
            }
            let recorded = c.address.clone().map(|address| Running {
                address,
                handle: c.handle.clone(),
            });
            // One compute that cannot be adopted must not keep doze from starting: it is
            // recorded as suspended with the reason, and the next connection starts it.
            let found = match self.driver.adopt(&c.project_id, recorded).await {
                Ok(found) => found,
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(project_id = %c.project_id, project, compute_id = %c.id, error = %msg, "adopting a compute failed; marking it suspended");
                    if matches!(
                        c.state,
                        ComputeState::Running
                            | ComputeState::Starting
                            | ComputeState::Suspending
                            | ComputeState::Frozen
                    ) && let Err(e) = self
                        .transition_with_error(&c, ComputeState::Suspended, &msg, "reconcile")
                        .await
                        && !is_fenced(&e)
                    {
                        return Err(e);
                    }
                    continue;
                }
            };
            let span = tracing::info_span!("reconcile", project_id = %c.project_id, project, compute_id = %c.id);
            let _e = span.enter();
            match found {
                Some(run)
                    if c.state == ComputeState::Running
                        && c.address.as_deref() == Some(run.address.as_str()) =>
                {
                    // Already recorded as it is (another replica runs it, or nothing moved).
                    tracing::info!(address = %run.address, "adopted a running compute");
                    drop(_e);
                    if c.roles_dirty {
                        self.sync_adopted_roles(&c.project_id).await;
                    }
                }
                Some(run)
                    if c.state == ComputeState::Frozen
                        && c.address.as_deref() == Some(run.address.as_str()) =>
                {
                    tracing::info!(address = %run.address, "adopted a frozen compute");
                    drop(_e);
                    self.refreeze_adopted(&c).await;
                }
                Some(run) => {
                    tracing::info!(address = %run.address, "adopted a compute still running from a previous run");
                    drop(_e);
                    match self
                        .transition(
                            &c,
                            ComputeState::Running,
                            Some(&run.address),
                            run.handle.as_deref(),
                            "adopted",
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_fenced(&e) => continue,
                        Err(e) => return Err(e),
                    }
                    if c.roles_dirty {
                        self.sync_adopted_roles(&c.project_id).await;
                    }
                }
                None if matches!(
                    c.state,
                    ComputeState::Running
                        | ComputeState::Starting
                        | ComputeState::Suspending
                        | ComputeState::Frozen
                ) =>
                {
                    tracing::info!("compute from a previous run is gone; marking it suspended");
                    drop(_e);
                    let t = Transition {
                        to: ComputeState::Suspended,
                        address: None,
                        handle: None,
                        last_error: None,
                        reason: "reconcile",
                        lease: None,
                    };
                    // Metered up to its last sign of life, not to this start of doze.
                    let died = self.last_sign_of_life(&c).await;
                    match self.apply_transition_at(&c, &t, Some(died)).await {
                        Ok(_) => {}
                        Err(e) if is_fenced(&e) => continue,
                        Err(e) => return Err(e),
                    }
                }
                None => {}
            }
        }
        let computes = self.store.list_computes().await?;
        let mut gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        gauges.accrue();
        gauges.counts.clear();
        for c in computes {
            *gauges.counts.entry(c.state).or_default() += 1;
        }
        for st in ComputeState::ALL {
            let v = gauges.counts.get(&st).copied().unwrap_or(0);
            metrics::gauge!(m::COMPUTES, "state" => st.as_str()).set(v as f64);
        }
        Ok(())
    }

    pub(crate) async fn transition(
        &self,
        c: &Compute,
        to: ComputeState,
        address: Option<&str>,
        handle: Option<&str>,
        reason: &str,
    ) -> anyhow::Result<Compute> {
        let clear = if to == ComputeState::Running {
            Some(None)
        } else {
            None
        };
        let t = Transition {
            to,
            address,
            handle,
            last_error: clear,
            reason,
            lease: None,
        };
        self.apply_transition(c, &t).await
    }

    pub(crate) async fn transition_with_error(
        &self,
        c: &Compute,
        to: ComputeState,
        error: &str,
        reason: &str,
    ) -> anyhow::Result<Compute> {
        let t = Transition {
            to,
            address: None,
            handle: None,
            last_error: Some(Some(error)),
            reason,
            lease: None,
        };
        self.apply_transition(c, &t).await
    }

    pub(crate) async fn apply_transition(
        &self,
        c: &Compute,
        t: &Transition<'_>,
    ) -> anyhow::Result<Compute> {
        self.apply_transition_at(c, t, None).await
    }

    /// As [`Lifecycle::apply_transition`], with the event dated `at` (see
    /// [`Store::transition_at`]).
    pub(crate) async fn apply_transition_at(
        &self,
        c: &Compute,
        t: &Transition<'_>,
        at: Option<i64>,
    ) -> anyhow::Result<Compute> {
        let next = self.store.transition_at(c, t, at).await?;
        tracing::debug!(compute_id = %c.id, project_id = %c.project_id, from = c.state.as_str(), to = t.to.as_str(), reason = t.reason, "compute state change");
        self.gauge_move(Some(c.state), Some(t.to));
        Ok(next)
    }

    /// Brings `doze_compute_seconds_total` up to now (before a scrape).
    pub fn accrue_compute_seconds(&self) {
        self.gauges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accrue();
    }

    /// Moves one compute between the `doze_computes` gauge's states.
    pub(crate) fn gauge_move(&self, from: Option<ComputeState>, to: Option<ComputeState>) {
        let mut gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        gauges.accrue();
        for (state, delta) in [(from, -1i64), (to, 1)] {
            if let Some(state) = state {
                let v = gauges.counts.entry(state).or_default();
                *v += delta;
                metrics::gauge!(m::COMPUTES, "state" => state.as_str()).set(*v as f64);
            }
        }
    }

    /// Brings an adopted compute's accounts up to date (roles changed while doze was down, or
    /// a doze upgrade changed what a role is granted). A failure leaves them marked for the
    /// next start.
    async fn sync_adopted_roles(&self, project_id: &str) {
        if let Err(e) = self.sync_roles(project_id).await {
            tracing::warn!(project_id, error = %format!("{e:#}"),
                "synchronising the roles of an adopted compute failed; retried at its next start");
        }
    }

    /// Applies the project's whole role set to its running compute and clears the marks.
    async fn sync_roles(&self, project_id: &str) -> anyhow::Result<()> {
        let sync = self.role_sync(project_id).await?;
        self.driver
            .apply_roles(project_id, &[RoleOp::Sync(sync.clone())])
            .await?;
        self.store.set_roles_dirty(project_id, false).await?;
        self.store
            .clear_role_tombstones(project_id, &sync.drop)
            .await
    }

    /// Every current role and every deleted one not yet dropped from the compute.
    async fn role_sync(&self, project_id: &str) -> anyhow::Result<RoleSync> {
        let upsert = self
            .store
            .list_roles(project_id)
            .await?
            .into_iter()
            .map(|r| RoleDef {
                name: r.name,
                stored_hash: r.stored_hash,
            })
            .collect();
        let drop = self.store.role_tombstones(project_id).await?;
        Ok(RoleSync { upsert, drop })
    }

    /// Applies a role change to the project's compute now when it runs, or marks the roles
    /// for synchronisation at its next start.
    pub(crate) async fn push_role_change(
        &self,
        project_id: &str,
        op: RoleOp,
    ) -> Result<(), ControlError> {
        let slot = self.slot(project_id);
        let _guard = slot.lock.lock().await;
        let Some(compute) = self.store.compute_for_project(project_id).await? else {
            return Ok(());
        };
        // A compute another replica started is adopted here, so the change reaches it now.
        if compute.state == ComputeState::Running
            && matches!(self.running_info(&compute).await, Liveness::Alive(_))
        {
            match self
                .driver
                .apply_roles(project_id, std::slice::from_ref(&op))
                .await
            {
                Ok(()) => {
                    if let RoleOp::Drop(name) = &op {
                        self.store
                            .clear_role_tombstones(project_id, std::slice::from_ref(name))
                            .await?;
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(project_id, compute_id = %compute.id, error = %format!("{e:#}"),
                        "applying a role change to the running compute failed; it will be synchronised at the next start");
                }
            }
        }
        self.store.set_roles_dirty(project_id, true).await?;
        Ok(())
    }
}
