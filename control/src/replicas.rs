//! Several doze processes (replicas) on one PostgreSQL behaving as one doze.
//!
//! - **Identity and liveness**: each replica heartbeats (`replicas` table, the store's clock)
//!   with its open sessions and last activity per project; a replica whose heartbeat is older
//!   than the TTL is dead, and its row is removed.
//! - **One scheduler**: the scheduler runs only on the holder of the `scheduler` lease (term,
//!   renewal, expiry on the store's clock); a suspend by the scheduler first renews the lease,
//!   so a leader that lost it stops at once.
//! - **Caches that agree**: every change of a project, role or compute is announced on
//!   [`CHANGES_CHANNEL`] in its own transaction; each replica's listener drops the affected
//!   entries, wakes the waiters of another replica's start, and after a reconnect (when
//!   notifications may have been lost) flushes everything.
//!
//! On SQLite (one process, enforced by a lock file) the replica is alone: it leads, and there
//! is nothing to listen to.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::activity::{Activity, now_ms};
use crate::metrics as m;
use crate::store::{CHANGES_CHANNEL, ReplicaRow, Store};

/// The scheduler's lease.
const SCHEDULER_LEASE: &str = "scheduler";

/// How often a replica heartbeats and renews the scheduler lease.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How often a replica pings the change channel, and how long its listener may hear nothing
/// (not even a ping) before it reconnects and flushes.
const PING_EVERY: Duration = Duration::from_secs(3);
const LISTEN_SILENCE: Duration = Duration::from_secs(10);

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A replica whose heartbeat is older than this is dead; the scheduler lease lasts as long.
pub const REPLICA_TTL: Duration = Duration::from_secs(8);

/// This replica, and what it knows of the others.
pub struct Replicas {
    pub id: String,
    started_at: i64,
    store: Store,
    activity: Arc<Activity>,
    /// The scheduler lease's term while this replica holds it; 0 otherwise.
    term: AtomicI64,
    /// When the lease was last taken or renewed (the moment the request was sent).
    renewed: std::sync::Mutex<Option<std::time::Instant>>,
    /// Sessions and last activity per project on the other live replicas.
    remote: std::sync::Mutex<std::collections::HashMap<String, (u64, u64, u64)>>,
    /// Bumped whenever another replica changed a compute: waiters of its start re-read.
    pub(crate) compute_changes: tokio::sync::watch::Sender<u64>,
    stopping: AtomicBool,
}

/// A default replica id: the host name and a random suffix.
pub fn default_replica_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "doze".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{suffix:08x}")
}

impl Replicas {
    pub fn new(id: String, store: Store, activity: Arc<Activity>) -> Arc<Self> {
        Arc::new(Self {
            id,
            started_at: now_ms() as i64,
            store,
            activity,
            // Alone on SQLite: always the leader.
            term: AtomicI64::new(0),
            renewed: std::sync::Mutex::new(None),
            remote: Default::default(),
            compute_changes: tokio::sync::watch::channel(0).0,
            stopping: AtomicBool::new(false),
        })
    }

    /// Whether this replica runs the scheduler now: it holds the lease and renewed it
    /// recently enough that nobody else can have taken it (a replica whose heartbeats fail
    /// stops acting before its lease runs out).
    pub fn is_leader(&self) -> bool {
        if !self.store.is_shared() {
            return true;
        }
        let renewed = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        self.term.load(Ordering::SeqCst) > 0
            && renewed.is_some_and(|at| at.elapsed() < REPLICA_TTL - HEARTBEAT_EVERY)
    }

    /// Renews the scheduler lease right before a suspend: a leader that lost its lease (a
    /// pause longer than the TTL, a partition) must not act on a stale view.
    pub async fn confirm_leader(&self) -> bool {
        if !self.store.is_shared() {
            return true;
        }
        let held = self.term.load(Ordering::SeqCst);
        match self.lead().await {
            Ok(term) => held > 0 && term == held,
            Err(_) => false,
        }
    }

    async fn lead(&self) -> anyhow::Result<i64> {
        if self.stopping.load(Ordering::SeqCst) {
            // Leaving: never take the lease back after resigning it.
            return Ok(0);
        }
        let asked = std::time::Instant::now();
        let ttl = REPLICA_TTL.as_millis() as i64;
        let term = self
            .store
            .try_lead(SCHEDULER_LEASE, &self.id, ttl)
            .await?
            .unwrap_or(0);
        if term > 0 {
            *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Some(asked);
        }
        let before = self.term.swap(term, Ordering::SeqCst);
        if before != term {
            if term > 0 {
                tracing::info!(replica = %self.id, term, "this replica now runs the scheduler");
            } else if before > 0 {
                tracing::warn!(replica = %self.id, "lost the scheduler lease");
            }
        }
        metrics::gauge!(m::SCHEDULER_LEADER).set(if term > 0 { 1.0 } else { 0.0 });
        Ok(term)
    }

    /// Sessions and last activity of `project_id` on the other live replicas.
    pub fn remote_activity(&self, project_id: &str) -> (u64, u64) {
        self.remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(project_id)
            .map(|&(sessions, at, _)| (sessions, at))
            .unwrap_or((0, 0))
    }

    /// Backend sessions the other live replicas hold parked in their pools for `project_id`
    /// (connections to the compute that are not activity).
    pub fn remote_parked(&self, project_id: &str) -> u64 {
        self.remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(project_id)
            .map_or(0, |&(_, _, parked)| parked)
    }

    /// One heartbeat: record this replica, read the others, take or renew the lease.
    pub async fn beat(&self) -> anyhow::Result<Vec<ReplicaRow>> {
        let snapshot = self.activity.snapshot();
        let sessions: u64 = snapshot.iter().map(|(_, s, _, _)| s).sum();
        let activity: serde_json::Map<String, serde_json::Value> = snapshot
            .into_iter()
            .map(|(id, s, at, parked)| (id, serde_json::json!([s, at, parked])))
            .collect();
        self.store
            .heartbeat(
                &self.id,
                self.started_at,
                i64::try_from(sessions).unwrap_or(i64::MAX),
                &serde_json::Value::Object(activity),
            )
            .await?;
        let ttl = REPLICA_TTL.as_millis() as i64;
        self.store.prune_replicas(ttl).await?;
        let live = self.store.live_replicas(ttl).await?;
        metrics::gauge!(m::REPLICAS_LIVE).set(live.len() as f64);
        let mut remote = std::collections::HashMap::<String, (u64, u64, u64)>::new();
        for r in live.iter().filter(|r| r.id != self.id) {
            for (project, v) in r.activity.as_object().into_iter().flatten() {
                let sessions = v.get(0).and_then(|x| x.as_u64()).unwrap_or(0);
                let at = v.get(1).and_then(|x| x.as_u64()).unwrap_or(0);
                // Absent in the heartbeats of replicas older than the pool.
                let parked = v.get(2).and_then(|x| x.as_u64()).unwrap_or(0);
                let e = remote.entry(project.clone()).or_default();
                e.0 += sessions;
                e.1 = e.1.max(at);
                e.2 += parked;
            }
        }
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = remote;
        if self.store.is_shared() && !self.stopping.load(Ordering::SeqCst) {
            self.lead().await?;
        } else if !self.store.is_shared() {
            // Alone on SQLite: the scheduler is always this replica's.
            metrics::gauge!(m::SCHEDULER_LEADER).set(1.0);
        }
        Ok(live)
    }

    /// Heartbeats every [`HEARTBEAT_EVERY`] until [`Replicas::leave`].
    pub fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Err(e) = me.beat().await {
                    tracing::warn!(replica = %me.id, error = %format!("{e:#}"), "heartbeat failed");
                }
            }
        })
    }

    /// A clean exit: give the lease up and remove this replica's row, so the others need not
    /// wait for the TTL.
    pub async fn leave(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.term.swap(0, Ordering::SeqCst) > 0 {
            let _ = self.store.resign(SCHEDULER_LEASE, &self.id).await;
        }
        metrics::gauge!(m::SCHEDULER_LEADER).set(0.0);
        let _ = self.store.remove_replica(&self.id).await;
    }
}

/// What a replica does with a change another replica announced.
pub trait Invalidate: Send + Sync + 'static {
    /// `kind` is `compute`, `role`, `project` or `token` (then `project_id` is a token's id).
    fn changed(&self, kind: &str, project_id: &str);
    /// Notifications may have been lost: forget everything cached.
    fn flush(&self);
}

/// Listens on [`CHANGES_CHANNEL`] (PostgreSQL only) and hands every change to `target`.
/// Reconnects by itself; a reconnect flushes everything.
pub fn spawn_listener(
    dsn: String,
    target: Arc<dyn Invalidate>,
    replicas: Arc<Replicas>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<()> {
    let mut ready = Some(ready);
    tokio::spawn(async move {
        // A ping through the pool every few seconds, which every replica's listener hears: a
        // listener that hears nothing for long is on a dead connection (a half-open TCP
        // connection through a NAT or a failover blocks forever without an error).
        let pinger = {
            let replicas = Arc::clone(&replicas);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PING_EVERY).await;
                    if let Err(e) = replicas.store.announce("ping", &replicas.id).await {
                        tracing::debug!(error = %e, "change-channel ping failed");
                    }
                }
            })
        };
        let _stop_pinger = AbortOnDrop(pinger);
        loop {
            if replicas.stopping.load(Ordering::SeqCst) {
                break;
            }
            let mut listener = match PgListener::connect(&dsn).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other replicas' changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANGES_CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Anything sent before LISTEN took effect is unknown: start clean.
            target.flush();
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            metrics::counter!(m::INVALIDATIONS, "kind" => "flush").increment(1);
            loop {
                let Ok(received) = tokio::time::timeout(LISTEN_SILENCE, listener.try_recv()).await
                else {
                    tracing::warn!(
                        "the change listener heard nothing, not even a ping; reconnecting"
                    );
                    target.flush();
                    metrics::counter!(m::INVALIDATIONS, "kind" => "flush").increment(1);
                    break;
                };
                match received {
                    Ok(Some(n)) if n.payload().starts_with("ping:") => {}
                    Ok(Some(n)) => {
                        let (kind, project) = n.payload().split_once(':').unwrap_or(("flush", ""));
                        match kind {
                            "token" => {
                                target.changed(kind, project);
                                metrics::counter!(m::INVALIDATIONS, "kind" => "token").increment(1);
                            }
                            "compute" | "role" | "project" => {
                                target.changed(kind, project);
                                if kind != "role" {
                                    replicas.compute_changes.send_modify(|v| *v += 1);
                                }
                                let k = match kind {
                                    "compute" => "compute",
                                    "role" => "role",
                                    _ => "project",
                                };
                                metrics::counter!(m::INVALIDATIONS, "kind" => k).increment(1);
                            }
                            _ => target.flush(),
                        }
                    }
                    Ok(None) => {
                        // The connection dropped and was re-established: notifications sent
                        // in between are lost.
                        tracing::warn!("the change listener reconnected; flushing every cache");
                        target.flush();
                        replicas.compute_changes.send_modify(|v| *v += 1);
                        metrics::counter!(m::INVALIDATIONS, "kind" => "flush").increment(1);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the change listener failed; reconnecting");
                        target.flush();
                        break;
                    }
                }
            }
        }
    })
}
