//! The auto-suspend scheduler: every `check_interval`, suspend running computes whose project
//! has had no open session and no traffic for its idle timeout (reason "idle").

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::ControlPlane;
use crate::activity::now_ms;
use crate::error::ControlError;
use crate::store::ComputeState;

pub(crate) fn spawn(plane: Arc<ControlPlane>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(plane.cfg.check_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if plane.shutting_down.load(Ordering::SeqCst) {
                break;
            }
            if let Err(e) = plane.suspend_idle().await {
                tracing::warn!(error = %format!("{e:#}"), "idle check failed");
            }
        }
    })
}

impl ControlPlane {
    /// The idle timeout of a project: its `config.idle_timeout` (seconds) or the default.
    fn idle_timeout_of(&self, config: &serde_json::Value) -> Duration {
        match config.get("idle_timeout").and_then(|v| v.as_f64()) {
            Some(secs) if secs >= 0.0 => Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX),
            _ => self.cfg.idle_timeout,
        }
    }

    /// One scheduler pass. Returns how many computes it suspended.
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
            if c.state != ComputeState::Running {
                continue;
            }
            let Some(config) = projects.get(&c.project_id) else {
                continue;
            };
            let idle = self.idle_timeout_of(config);
            if idle.is_zero() {
                continue;
            }
            let activity = self.activity.get(&c.project_id);
            if activity.as_ref().is_some_and(|a| a.sessions() > 0) {
                continue;
            }
            let last_active = activity
                .map(|a| a.last_active_ms())
                .unwrap_or(0)
                .max(u64::try_from(c.updated_at).unwrap_or(0));
            let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            if now.saturating_sub(last_active) < idle_ms {
                continue;
            }
            match self.suspend_project(&c.project_id, "idle", true).await {
                Ok(_) => suspended += 1,
                Err(ControlError::SessionsOpen { .. }) => {
                    tracing::debug!(project_id = %c.project_id, "a session opened; not suspending");
                }
                Err(e) => {
                    tracing::warn!(project_id = %c.project_id, compute_id = %c.id, error = %e, "idle suspend failed");
                }
            }
        }
        Ok(suspended)
    }
}
