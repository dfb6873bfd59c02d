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

    /// Every project's (id, open sessions, last activity in ms, parked sessions): what a
    /// replica reports in its heartbeat, so that the scheduler of another replica sees this
    /// one's sessions, and knows which of the compute's connections are only parked.
    pub fn snapshot(&self) -> Vec<(String, u64, u64, u64)> {
        let map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(id, a)| (id.clone(), a.sessions(), a.last_active_ms(), a.parked()))
            .collect()
    }

    /// Drains every project's pool of backend sessions (see [`ProjectActivity::drain_pool`]).
    pub fn drain_all(&self) {
        let map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        for a in map.values() {
            a.drain_pool();
        }
    }

    /// Every project's usage counted since the last call, reset to zero: (id, connections,
    /// bytes client to compute, bytes compute to client); projects with nothing are left out.
    /// The control plane adds these to the store every few seconds ([`ProjectActivity::take_usage`]).
    pub fn take_usage(&self) -> Vec<(String, u64, u64, u64)> {
        let map = self.projects.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter_map(|(id, a)| {
                let (c, up, down) = a.take_usage();
                (c + up + down > 0).then(|| (id.clone(), c, up, down))
            })
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
    /// Backend sessions the proxy holds in its pool (or is resetting to park): connections to
    /// the compute that are not activity, so the scheduler subtracts them from what the
    /// compute's process list shows.
    parked: AtomicU64,
    /// Bumped whenever the project's parked sessions must not be reused: a suspend, freeze or
    /// stop of the compute, an address that failed, a role change. Parked sessions remember
    /// the value they were parked under.
    pool_epoch: AtomicU64,
    /// Closes the parked sessions at once when the pool is drained (set by the proxy's pool
    /// the first time it parks one), so that a suspend finds them gone.
    drain_hook: std::sync::OnceLock<DrainHook>,
    /// Usage not yet written to the store: client sessions opened, bytes relayed from clients
    /// to the compute and back. Relaxed adds on the relay's path, swapped out by the flusher.
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// What [`ProjectActivity::drain_pool`] calls.
pub type DrainHook = Box<dyn Fn() + Send + Sync>;

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
            parked: AtomicU64::new(0),
            pool_epoch: AtomicU64::new(0),
            drain_hook: std::sync::OnceLock::new(),
            connections: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }
    }

    /// Counts `n` bytes relayed from a client to the compute.
    #[inline]
    pub fn relayed_up(&self, n: u64) {
        self.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes relayed from the compute to a client.
    #[inline]
    pub fn relayed_down(&self, n: u64) {
        self.bytes_down.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds back counts a flush could not write.
    pub fn give_back_usage(&self, connections: u64, up: u64, down: u64) {
        self.connections.fetch_add(connections, Ordering::Relaxed);
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    /// (connections, bytes up, bytes down) counted since the last call, reset to zero.
    pub fn take_usage(&self) -> (u64, u64, u64) {
        (
            self.connections.swap(0, Ordering::Relaxed),
            self.bytes_up.swap(0, Ordering::Relaxed),
            self.bytes_down.swap(0, Ordering::Relaxed),
        )
    }

    /// Sets what a drain calls (once; later calls are ignored).
    pub fn set_drain_hook(&self, hook: impl FnOnce() -> DrainHook) {
        self.drain_hook.get_or_init(hook);
    }

    /// Backend sessions parked (or being reset to be parked) for this project.
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::SeqCst)
    }

    /// Counts one more parked backend session.
    pub fn park(&self) {
        self.parked.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts one parked backend session fewer (checked out or closed).
    pub fn unpark(&self) {
        let _ = self
            .parked
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// The generation parked sessions must carry to be reused.
    pub fn pool_epoch(&self) -> u64 {
        self.pool_epoch.load(Ordering::SeqCst)
    }

    /// Makes every session parked so far unusable: the pool closes them instead of handing
    /// them out (the compute is being stopped or frozen, or a role changed).
    pub fn drain_pool(&self) {
        self.pool_epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(hook) = self.drain_hook.get() {
            hook();
        }
    }

    /// Counts a client session as open until the returned guard is dropped.
    ///
    /// The proxy opens the session *before* it asks for a wake, so a scheduler that sees zero
    /// sessions after invalidating the address cache knows no client can still be handed the
    /// old address (see the wake service's suspend path).
    pub fn open_session(self: &Arc<Self>) -> SessionGuard {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        self.connections.fetch_add(1, Ordering::Relaxed);
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
