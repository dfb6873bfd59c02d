//! The scheduler: every `check_interval`, first notice computes recorded as running that have
//! died (crashed, killed: marked suspended with reason "lost", so the next connection starts
//! them again), then suspend running computes whose project has had no open session, no
//! traffic and no client connected to the compute directly for its idle timeout (reason
//! "idle").

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::activity::now_ms;
use crate::config::SuspendMode;
use crate::error::ControlError;
use crate::lifecycle::{Lifecycle, Liveness};
use crate::metrics as m;
use crate::store::{Compute, ComputeState};

pub(crate) fn spawn(plane: Arc<Lifecycle>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(plane.cfg.check_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let lost = plane.driver.lost_notices();
        loop {
            let noticed = async {
                match &lost {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                () = noticed => {
                    // The driver saw a compute vanish: record it now, not at the next tick.
                    if plane.shutting_down.load(Ordering::SeqCst) {
                        break;
                    }
                    if !plane.replicas.is_leader() {
                        continue;
                    }
                    if let Err(e) = plane.find_lost().await {
                        tracing::warn!(error = %format!("{e:#}"), "liveness check failed");
                    }
                    continue;
                }
            }
            if plane.shutting_down.load(Ordering::SeqCst) {
                break;
            }
            // One scheduler among the replicas: the holder of the leader lease.
            if !plane.replicas.is_leader() {
                continue;
            }
            if let Err(e) = plane.find_lost().await {
                tracing::warn!(error = %format!("{e:#}"), "liveness check failed");
            }
            if let Err(e) = plane.suspend_idle().await {
                tracing::warn!(error = %format!("{e:#}"), "idle check failed");
            }
            plane.prune_audit().await;
        }
    })
}

impl Lifecycle {
    /// Deletes audit entries older than `--audit-retention` (none when it is zero).
    pub(crate) async fn prune_audit(&self) {
        if self.cfg.audit_retention.is_zero() {
            return;
        }
        let keep = i64::try_from(self.cfg.audit_retention.as_millis()).unwrap_or(i64::MAX);
        let before = (now_ms() as i64).saturating_sub(keep);
        match self.store.prune_audit(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                "pruned audit log entries past --audit-retention"
            ),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot prune the audit log"),
        }
    }

    /// The idle timeout of a project: its `config.idle_timeout` (seconds) or the default.
    fn idle_timeout_of(&self, config: &serde_json::Value) -> Duration {
        match config.get("idle_timeout").and_then(|v| v.as_f64()) {
            Some(secs) if secs >= 0.0 => Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX),
            _ => self.cfg.idle_timeout,
        }
    }

    /// What an idle compute of a project becomes: its `config.suspend_mode` or the default,
    /// and always a stop where the driver cannot freeze.
    pub(crate) fn suspend_mode_of(&self, config: &serde_json::Value) -> SuspendMode {
        if self.driver.freezer().is_none() {
            return SuspendMode::Stop;
        }
        config
            .get("suspend_mode")
            .and_then(|v| v.as_str())
            .and_then(|m| m.parse().ok())
            .unwrap_or(self.cfg.frozen.suspend_mode)
    }

    /// Finds computes recorded as running whose server is gone and records them suspended
    /// (event reason "lost"), so that state, metrics and the address cache stop pointing at a
    /// dead address and the next connection starts the compute again. Returns how many.
    pub async fn find_lost(&self) -> anyhow::Result<usize> {
        let mut lost = 0;
        let mut alive = Vec::new();
        let checked_at = crate::activity::now_ms() as i64;
        for c in self.store.list_computes().await? {
            // Only what is certainly gone: a compute the driver cannot check now (a server
            // slow to greet, an API error) is left alone.
            let gone = match c.state {
                ComputeState::Running => match self.running_info(&c).await {
                    Liveness::Gone => true,
                    Liveness::Alive(_) => {
                        alive.push(c.id.clone());
                        false
                    }
                    Liveness::Unknown(_) => false,
                },
                // A frozen compute is only checked where this process runs it (a check by
                // adoption would thaw it); on one replica that is every frozen compute.
                ComputeState::Frozen if !self.store.is_shared() => {
                    let up = self.driver.is_alive(&c.project_id);
                    if up {
                        alive.push(c.id.clone());
                    }
                    !up
                }
                _ => false,
            };
            if !gone {
                continue;
            }
            let slot = self.slot(&c.project_id);
            let _guard = slot.lock.lock().await;
            let Some(current) = self.store.compute_for_project(&c.project_id).await? else {
                continue;
            };
            let still_gone = match current.state {
                ComputeState::Running => self.is_gone(&current).await,
                ComputeState::Frozen => !self.driver.is_alive(&c.project_id),
                _ => false,
            };
            if !still_gone {
                continue;
            }
            if !self
                .record_lost(
                    &current,
                    "the compute's server exited while it was recorded as running",
                )
                .await?
            {
                continue;
            }
            metrics::counter!(m::COMPUTES_LOST).increment(1);
            tracing::warn!(project_id = %c.project_id, compute_id = %c.id,
                "compute found dead; marked suspended (the next connection starts it again)");
            lost += 1;
        }
        // Each compute's last sign of life, which meters one that dies unseen (doze down).
        if let Err(e) = self.store.mark_alive(&alive, checked_at).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot record the computes' liveness");
        }
        Ok(lost)
    }

    /// True when clients are connected to the compute directly, bypassing doze. Counts as
    /// activity: such sessions are never cut by an idle suspend.
    async fn has_direct_sessions(&self, compute: &Compute) -> bool {
        let project_id = compute.project_id.as_str();
        // A compute another replica started is adopted first, so its process list can be read.
        if !matches!(
            self.running_info(compute).await,
            crate::lifecycle::Liveness::Alive(_)
        ) {
            return false;
        }
        // Sessions parked in proxies' pools are connections, not activity.
        let parked = self.parked_sessions(project_id);
        match self
            .driver
            .client_sessions(project_id)
            .await
            .map(|n| n.saturating_sub(parked))
        {
            Ok(0) => false,
            Ok(n) => {
                tracing::debug!(
                    project_id,
                    sessions = n,
                    "clients connected to the compute directly; not idle"
                );
                metrics::counter!(m::DIRECT_SESSIONS_SEEN).increment(1);
                self.activity.project(project_id).touch();
                true
            }
            Err(e) => {
                tracing::warn!(project_id, error = %format!("{e:#}"),
                    "cannot read the compute's process list; treating it as idle");
                false
            }
        }
    }

    /// One scheduler pass: idle computes are frozen or stopped, computes frozen for
    /// `--stop-after` are stopped, and so are the least recently used frozen ones while frozen
    /// memory exceeds its budget. Returns how many computes it froze or stopped.
    pub async fn suspend_idle(&self) -> anyhow::Result<usize> {
        let projects: HashMap<String, serde_json::Value> = self
            .store
            .list_projects()
            .await?
            .into_iter()
            .map(|p| (p.id, p.config))
            .collect();
        let now = now_ms();
        let mut suspended = 0;
        for c in self.store.list_computes().await? {
            let Some(config) = projects.get(&c.project_id) else {
                continue;
            };
            if c.state == ComputeState::Frozen {
                let stop_after = self.cfg.frozen.stop_after;
                let frozen_for = now.saturating_sub(u64::try_from(c.updated_at).unwrap_or(0));
                if !stop_after.is_zero()
                    && u128::from(frozen_for) >= stop_after.as_millis()
                    && self.replicas.confirm_leader().await
                    && self.stop_frozen(&c, "stop-after").await
                {
                    suspended += 1;
                }
                continue;
            }
            if c.state != ComputeState::Running {
                continue;
            }
            let idle = self.idle_timeout_of(config);
            if idle.is_zero() {
                continue;
            }
            let activity = self.activity.get(&c.project_id);
            // The other replicas' sessions and traffic, from their heartbeats.
            let (remote_sessions, remote_active) = self.replicas.remote_activity(&c.project_id);
            if remote_sessions > 0 || activity.as_ref().is_some_and(|a| a.sessions() > 0) {
                continue;
            }
            let last_active = activity
                .map(|a| a.last_active_ms())
                .unwrap_or(0)
                .max(remote_active)
                .max(u64::try_from(c.updated_at).unwrap_or(0));
            let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            if now.saturating_sub(last_active) < idle_ms || self.has_direct_sessions(&c).await {
                continue;
            }
            // Fenced by the leader's term: a replica that lost the lease stops here.
            if !self.replicas.confirm_leader().await {
                tracing::info!("no longer the scheduler's leader; stopping this pass");
                break;
            }
            let done = match self.suspend_mode_of(config) {
                SuspendMode::Freeze => match self.freeze_project(&c.project_id, "idle").await {
                    // A compute that cannot be frozen (started without the semaphore
                    // setting, a freeze that timed out) is stopped instead.
                    Err(ControlError::Internal(e)) => {
                        tracing::warn!(project_id = %c.project_id, error = %format!("{e:#}"), "freezing an idle compute failed; stopping it");
                        self.suspend_project(&c.project_id, "idle", true).await
                    }
                    other => other,
                },
                SuspendMode::Stop => self.suspend_project(&c.project_id, "idle", true).await,
            };
            match done {
                Ok(_) => suspended += 1,
                Err(ControlError::SessionsOpen { .. }) => {
                    tracing::debug!(project_id = %c.project_id, "a session opened; not suspending");
                }
                Err(e) => {
                    tracing::warn!(project_id = %c.project_id, compute_id = %c.id, error = %e, "idle suspend failed");
                }
            }
        }
        suspended += self.enforce_frozen_budget().await?;
        Ok(suspended)
    }

    /// Stops a frozen compute (thawed first), unless a wake thawed it since the scheduler
    /// listed it (then it serves someone). True when it was stopped.
    async fn stop_frozen(&self, c: &Compute, reason: &str) -> bool {
        let slot = self.slot(&c.project_id);
        let _guard = slot.lock.lock().await;
        match self.store.compute_for_project(&c.project_id).await {
            Ok(Some(now)) if now.state == ComputeState::Frozen && now.epoch == c.epoch => {}
            _ => return false,
        }
        match self.suspend_locked(&c.project_id, reason, true).await {
            Ok(_) => {
                tracing::info!(project_id = %c.project_id, compute_id = %c.id, reason, "stopped a frozen compute");
                true
            }
            Err(e) => {
                tracing::warn!(project_id = %c.project_id, compute_id = %c.id, reason, error = %e, "stopping a frozen compute failed");
                false
            }
        }
    }

    /// Reads frozen computes' memory (for the gauge) and, above `--frozen-memory-budget`,
    /// stops the least recently used ones (frozen the longest) until the rest fit.
    pub async fn enforce_frozen_budget(&self) -> anyhow::Result<usize> {
        let budget = Some(self.frozen_budget.load(Ordering::Relaxed)).filter(|b| *b != u64::MAX);
        metrics::gauge!(m::FROZEN_MEMORY_BUDGET).set(budget.unwrap_or(0) as f64);
        let mut frozen: Vec<(Compute, u64)> = self
            .store
            .list_computes()
            .await?
            .into_iter()
            .filter(|c| c.state == ComputeState::Frozen)
            .map(|c| {
                let bytes = self
                    .driver
                    .memory_bytes(&c.project_id, c.handle.as_deref())
                    .unwrap_or(0);
                (c, bytes)
            })
            .collect();
        let mut total: u64 = frozen.iter().map(|(_, b)| b).sum();
        metrics::gauge!(m::FROZEN_MEMORY).set(total as f64);
        let Some(budget) = budget else {
            return Ok(0);
        };
        if total <= budget {
            return Ok(0);
        }
        frozen.sort_by_key(|(c, _)| c.updated_at);
        let mut stopped = 0;
        for (c, bytes) in frozen {
            if total <= budget || !self.replicas.confirm_leader().await {
                break;
            }
            tracing::info!(project_id = %c.project_id, bytes, total, budget, "frozen memory over budget; stopping the least recently used frozen compute");
            if self.stop_frozen(&c, "memory-budget").await {
                total = total.saturating_sub(bytes);
                stopped += 1;
            }
        }
        metrics::gauge!(m::FROZEN_MEMORY).set(total as f64);
        Ok(stopped)
    }
}
