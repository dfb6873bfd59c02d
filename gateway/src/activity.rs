//! Per-project session counts and last-activity times, shared between the proxy (which writes
//! them) and the auto-suspend scheduler (which reads them).
//!
//! The proxy looks a project's [`ProjectActivity`] up once per connection (one short map lock)
//! and then only touches atomics: nothing on the relay's hot path locks or allocates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit every activity timestamp uses.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Activity of every project this process has seen a connection for.
#[derive(Default)]
pub struct Activity {
    projects: Mutex<HashMap<String, Arc<ProjectActivity>>>,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The activity record of `project_id`, created on first use.
    pub fn project(&self, project_id: &str) -> Arc<ProjectActivity> {
        let mut map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = map.get(project_id) {
            return Arc::clone(found);
        }
        let fresh = Arc::new(ProjectActivity::new());
        map.insert(project_id.to_owned(), Arc::clone(&fresh));
        fresh
    }

    /// The record of `project_id` if any connection has ever been made to it.
    pub fn get(&self, project_id: &str) -> Option<Arc<ProjectActivity>> {
        let map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        map.get(project_id).cloned()
    }

    /// Every project's (id, open sessions, last activity in ms): what a replica reports in its
    /// heartbeat, so that the scheduler of another replica sees this one's sessions.
    pub fn snapshot(&self) -> Vec<(String, u64, u64)> {
        let map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(id, a)| (id.clone(), a.sessions(), a.last_active_ms()))
            .collect()
    }

    /// Forgets a project (after it is deleted).
    pub fn remove(&self, project_id: &str) {
        let mut map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(project_id);
    }
}

/// Counters of one project. All fields are atomics so the relay can update them per read.
pub struct ProjectActivity {
    sessions: AtomicU64,
    last_active_ms: AtomicU64,
}

impl Default for ProjectActivity {
    fn default() -> Self {
        Self::new()
    }
}

impl ProjectActivity {
    pub fn new() -> Self {
        Self {
            sessions: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Counts a client session as open until the returned guard is dropped.
    ///
    /// The proxy opens the session *before* it asks for a wake, so a scheduler that sees zero
    /// sessions after invalidating the address cache knows no client can still be handed the
    /// old address (see the wake service's suspend path).
    pub fn open_session(self: &Arc<Self>) -> SessionGuard {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        self.touch();
        SessionGuard {
            project: Arc::clone(self),
        }
    }

    /// Records traffic now.
    #[inline]
    pub fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Sessions open right now.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::SeqCst)
    }

    /// When traffic or a session change was last seen, in ms since the epoch.
    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }
}

/// Keeps one session counted; dropping it closes the session.
pub struct SessionGuard {
    project: Arc<ProjectActivity>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.project.touch();
        self.project.sessions.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_sessions_and_touches() {
        let activity = Activity::new();
        let project = activity.project("p1");
        assert_eq!(project.sessions(), 0);
        let g1 = project.open_session();
        let g2 = activity.project("p1").open_session();
        assert_eq!(project.sessions(), 2);
        drop(g1);
        assert_eq!(project.sessions(), 1);
        drop(g2);
        assert_eq!(project.sessions(), 0);
        assert!(project.last_active_ms() > 0);
        assert!(activity.get("p2").is_none());
    }
}
