//! Durable state: projects, computes, roles and the compute event log, over sqlx.
//!
//! One code path for both backends: an [`sqlx::AnyPool`] with `$n` placeholders (SQLite and
//! PostgreSQL both accept them) and only `BIGINT`/`TEXT` columns, so every value is an `i64`,
//! a `String` or an `Option` of those. SQLite is the default (`sqlite://path`, file and parent
//! directory created on first start, WAL journal); `postgres://...` selects PostgreSQL.
//! Schema changes are embedded, versioned migrations recorded in `schema_migrations`.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::activity::now_ms;

/// The embedded migrations: `(version, statements)`, applied in order, each version once.
/// Only portable SQL: `TEXT`, `BIGINT`, primary keys, unique constraints and indexes.
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE projects (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            config TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
            "CREATE TABLE computes (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            address TEXT,
            pid BIGINT,
            config TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            last_error TEXT,
            roles_dirty BIGINT NOT NULL DEFAULT 1
        )",
            "CREATE TABLE roles (
            project_id TEXT NOT NULL,
            name TEXT NOT NULL,
            stored_hash TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (project_id, name)
        )",
            "CREATE TABLE compute_events (
            id TEXT PRIMARY KEY,
            compute_id TEXT NOT NULL,
            project_id TEXT NOT NULL,
            from_state TEXT NOT NULL,
            to_state TEXT NOT NULL,
            reason TEXT NOT NULL,
            at BIGINT NOT NULL
        )",
            "CREATE INDEX compute_events_compute ON compute_events (compute_id, at)",
        ],
    ),
    (
        2,
        // Roles deleted while the compute could not drop them: dropped at its next start.
        &["CREATE TABLE role_tombstones (
            project_id TEXT NOT NULL,
            name TEXT NOT NULL,
            deleted_at BIGINT NOT NULL,
            PRIMARY KEY (project_id, name)
        )"],
    ),
    (
        3,
        // Roles used to be granted ALL PRIVILEGES ON *.*; re-create every role with the
        // database-owner privilege list at its compute's next start (or adoption).
        &["UPDATE computes SET roles_dirty = 1"],
    ),
    (
        4,
        // A driver-neutral handle of a running compute (a pid for the local driver, a pod's
        // name and uid for Kubernetes) in place of the pid column, which stays unused.
        &[
            "ALTER TABLE computes ADD COLUMN handle TEXT",
            "UPDATE computes SET handle = CAST(pid AS TEXT) WHERE pid IS NOT NULL",
        ],
    ),
    (
        5,
        // Several replicas on one PostgreSQL: every state change of a compute is a
        // compare-and-set on its epoch; a start holds a lease (owner, expiry on the store's
        // clock) that another replica may take over once it expires. Replicas heartbeat;
        // the scheduler runs under a leader lease.
        &[
            "ALTER TABLE computes ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE computes ADD COLUMN lease_owner TEXT",
            "ALTER TABLE computes ADD COLUMN lease_until BIGINT",
            "CREATE TABLE replicas (
            id TEXT PRIMARY KEY,
            started_at BIGINT NOT NULL,
            heartbeat_at BIGINT NOT NULL,
            sessions BIGINT NOT NULL,
            activity TEXT NOT NULL
        )",
            "CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            term BIGINT NOT NULL,
            expires_at BIGINT NOT NULL
        )",
        ],
    ),
    (
        6,
        // Usage (crate::usage): compute time from the event log, and what the proxy counted
        // (client sessions, bytes each way), added up per project and UTC hour by every replica.
        &[
            "CREATE INDEX compute_events_project ON compute_events (project_id, at)",
            "CREATE TABLE usage_counters (
            project_id TEXT NOT NULL,
            hour BIGINT NOT NULL,
            connections BIGINT NOT NULL,
            bytes_in BIGINT NOT NULL,
            bytes_out BIGINT NOT NULL,
            PRIMARY KEY (project_id, hour)
        )",
        ],
    ),
    (
        7,
        // Tenants (crate::tenancy): every project belongs to one, the existing ones to the
        // default tenant; API tokens stored as SHA-256 digests; the audit log of admin changes.
        &[
            "CREATE TABLE tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            quotas TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )",
            "INSERT INTO tenants (id, name, quotas, created_at)
             VALUES ('00000000-0000-0000-0000-000000000000', 'default', '{}', 0)",
            "ALTER TABLE projects ADD COLUMN tenant_id TEXT NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000'",
            "CREATE INDEX projects_tenant ON projects (tenant_id)",
            "CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            name TEXT NOT NULL,
            digest TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL,
            expires_at BIGINT,
            revoked_at BIGINT,
            created_by TEXT NOT NULL
        )",
            "CREATE INDEX api_tokens_creator ON api_tokens (created_by)",
            "CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id)",
            "CREATE TABLE audit_log (
            id TEXT PRIMARY KEY,
            at BIGINT NOT NULL,
            actor TEXT NOT NULL,
            actor_tenant_id TEXT,
            tenant_id TEXT,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            status BIGINT NOT NULL,
            replica TEXT NOT NULL
        )",
            "CREATE INDEX audit_log_at ON audit_log (at)",
            "CREATE INDEX audit_log_tenant ON audit_log (tenant_id, at)",
            // The compute's last sign of life (the scheduler's liveness check), so that one
            // found dead is metered up to then, never up to when it was found.
            "ALTER TABLE computes ADD COLUMN alive_at BIGINT",
        ],
    ),
];

/// The tenant every project belonged to before tenants existed, and the one an operator's
/// project lands in when no tenant is named.
pub const DEFAULT_TENANT_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The channel on which PostgreSQL tells every replica what changed (`<kind>:<project id>`),
/// sent in the transaction of the change.
pub const CHANGES_CHANNEL: &str = "doze_changes";

/// A compute's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeState {
    Suspended,
    Starting,
    Running,
    Suspending,
    Failed,
    /// Running but frozen by the driver: no CPU, memory and address kept. A wake thaws it.
    Frozen,
}

impl ComputeState {
    pub const ALL: [ComputeState; 6] = [
        ComputeState::Suspended,
        ComputeState::Starting,
        ComputeState::Running,
        ComputeState::Suspending,
        ComputeState::Failed,
        ComputeState::Frozen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ComputeState::Suspended => "suspended",
            ComputeState::Starting => "starting",
            ComputeState::Running => "running",
            ComputeState::Suspending => "suspending",
            ComputeState::Failed => "failed",
            ComputeState::Frozen => "frozen",
        }
    }
}

impl FromStr for ComputeState {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        ComputeState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .with_context(|| format!("unknown compute state '{s}' in the store"))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub config: serde_json::Value,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// The tenant that owns the project ([`DEFAULT_TENANT_ID`] for projects made before
    /// tenants existed).
    pub tenant_id: String,
}

/// A customer of this doze: its projects, tokens and quotas.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// `{"max_projects": n, "max_running_computes": n, "max_memory": "4Gi"}`, each optional.
    pub quotas: serde_json::Value,
    pub created_at: i64,
}

/// An API token's record; the secret itself is never stored, only its SHA-256 digest.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiToken {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// Lower-case hex SHA-256 of the secret.
    pub digest: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// `operator`, or the id of the tenant token that created it (revoked with it).
    pub created_by: String,
}

/// One admin change: who made it, on which tenant's objects, and how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub id: String,
    pub at: i64,
    /// `operator`, or the id of the tenant token used.
    pub actor: String,
    /// The tenant of the token used (`None` for the operator).
    pub actor_tenant_id: Option<String>,
    /// The tenant whose objects the change touched, when known.
    pub tenant_id: Option<String>,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: i64,
    pub replica: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Compute {
    pub id: String,
    pub project_id: String,
    pub state: ComputeState,
    /// `host:port` while running.
    pub address: Option<String>,
    /// The driver's handle of the running compute (opaque here).
    pub handle: Option<String>,
    pub config: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_error: Option<String>,
    /// The project's roles changed while the compute could not apply them.
    pub roles_dirty: bool,
    /// Bumped by every state change; a change is only written if the epoch is still the one
    /// it was read with (a stale replica's write is refused).
    pub epoch: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Role {
    pub project_id: String,
    pub name: String,
    /// `*` followed by 40 upper-case hex digits of SHA1(SHA1(password)).
    pub stored_hash: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComputeEvent {
    pub compute_id: String,
    pub project_id: String,
    pub from_state: String,
    pub to_state: String,
    pub reason: String,
    pub at: i64,
}

/// What the proxy counted for one project: client sessions opened, bytes relayed from clients
/// to the compute (`bytes_in`) and back (`bytes_out`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageCount {
    pub project_id: String,
    pub connections: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// A state change to record on a compute.
pub struct Transition<'a> {
    pub to: ComputeState,
    pub address: Option<&'a str>,
    pub handle: Option<&'a str>,
    /// `Some` replaces last_error (use `Some(None)` to clear it), `None` keeps it.
    pub last_error: Option<Option<&'a str>>,
    pub reason: &'a str,
    /// For `Starting`: the replica that starts it and for how long (ms) it may take before
    /// another replica takes the start over.
    pub lease: Option<(&'a str, i64)>,
}

/// A compute's state change was refused: another replica changed the compute first.
#[derive(Debug, thiserror::Error)]
#[error("compute {compute_id} was changed by another replica (epoch {epoch} is stale)")]
pub struct Fenced {
    pub compute_id: String,
    pub epoch: i64,
}

/// A live replica, as its heartbeat says.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaRow {
    pub id: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub sessions: i64,
    /// project id -> [open sessions, last activity ms].
    pub activity: serde_json::Value,
}

/// A tenant's quota lock across replicas ([`Store::lock_tenant`]).
pub struct TenantLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
    key: i64,
}

impl TenantLock {
    /// Unlocks, and gives the connection back to the pool.
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take()
            && sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut *conn)
                .await
                .is_err()
        {
            // Closing the session releases its locks.
            conn.close_on_drop();
        }
    }
}

impl Drop for TenantLock {
    /// Dropped without [`TenantLock::release`] (an error path): the connection is closed, not
    /// pooled, so the lock cannot outlive this.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// The advisory lock key of a tenant's quota: "doze" in the high half (apart from the
/// migrations' lock), FNV-1a of the tenant id in the low half; the same in every replica and
/// version.
fn tenant_lock_key(tenant_id: &str) -> i64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in tenant_id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (0x646f_7a65_i64 << 32) | i64::from(h)
}

/// True for a unique/primary key violation (a duplicate name, a second compute).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() || {
                let msg = db.message().to_ascii_lowercase();
                msg.contains("unique") || msg.contains("duplicate key")
            }
        }
        _ => false,
    }
}

/// The state store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    postgres: bool,
    /// SQLite only: the lock that keeps a second process off the file.
    _exclusive: Option<Arc<nix::fcntl::Flock<std::fs::File>>>,
}

/// The SQLite files this process holds, so that reopening one in the same process (a restart
/// in a test, the CLI) shares the lock instead of refusing itself.
static SQLITE_LOCKS: std::sync::Mutex<
    Vec<(PathBuf, std::sync::Weak<nix::fcntl::Flock<std::fs::File>>)>,
> = std::sync::Mutex::new(Vec::new());

/// Takes `<db>.lock` exclusively for this process. SQLite's wake semantics (one start per
/// herd, one scheduler) hold within one process only: a second `doze serve` on the same file
/// is refused with a message instead of starting computes twice.
fn lock_sqlite(db: &Path) -> anyhow::Result<Arc<nix::fcntl::Flock<std::fs::File>>> {
    let path = PathBuf::from(format!("{}.lock", db.display()));
    let key = std::fs::canonicalize(db.parent().unwrap_or(Path::new(".")))
        .unwrap_or_default()
        .join(path.file_name().unwrap_or_default());
    let mut held = SQLITE_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    held.retain(|(_, w)| w.strong_count() > 0);
    if let Some(lock) = held
        .iter()
        .find(|(p, _)| *p == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(lock);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                anyhow::anyhow!(
                    "another doze process is using the state store {} (SQLite serves one process; \
                     stop the other one, or run several replicas on PostgreSQL)",
                    db.display()
                )
            } else {
                anyhow::anyhow!("locking {}: {errno}", path.display())
            }
        },
    )?;
    let lock = Arc::new(lock);
    held.push((key, Arc::downgrade(&lock)));
    Ok(lock)
}

impl Store {
    /// Opens (creating a SQLite file and its directory if needed) and migrates the store.
    pub async fn open(dsn: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, sqlite, memory) = normalise_dsn(dsn)?;
        let exclusive = match (sqlite, memory) {
            (true, false) => Some(lock_sqlite(&sqlite_path(&url))?),
            _ => None,
        };
        let mut opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        opts = if memory {
            opts.max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            opts.max_connections(8)
        };
        let pool = opts
            .connect(&url)
            .await
            .with_context(|| format!("opening the state store {}", redact_dsn(dsn)))?;
        let store = Self {
            pool,
            postgres: !sqlite,
            _exclusive: exclusive,
        };
        // WAL is a property of the file; the busy timeout (sqlx's default, 5 s) is set on every
        // pooled connection by sqlx itself.
        if sqlite && !memory {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&store.pool)
                .await?;
        }
        store.migrate().await?;
        Ok(store)
    }

    /// Begins a transaction that may write. On SQLite it is `BEGIN IMMEDIATE`: a deferred
    /// transaction that reads and then writes fails at once with `SQLITE_BUSY_SNAPSHOT`
    /// ("database is locked", code 517) when another connection wrote since its read, and the
    /// busy timeout cannot wait that out. Taking the write lock first makes writers queue on
    /// the busy timeout instead.
    async fn begin(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Any>> {
        if self.postgres {
            self.pool.begin().await
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        }
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        // Replicas starting together on one PostgreSQL migrate one at a time: a lock held by
        // the migrating transaction (never a session-level one on a pooled connection), and
        // the versions read again under it.
        let mut tx = self.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7305105)")
                .execute(&mut *tx)
                .await
                .context("waiting for another replica's migrations")?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .context("creating schema_migrations")?;
        for (version, statements) in MIGRATIONS {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            for stmt in *statements {
                sqlx::query(stmt)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("migration {version}"))?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(now_ms() as i64)
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, "applied state store migration");
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    // ---- projects ----

    /// Inserts a project; `false` when its tenant does not exist (deleted meanwhile: the
    /// tenant's row is locked on PostgreSQL, and SQLite runs one writer at a time, so a project
    /// is never left without its tenant).
    pub async fn insert_project(&self, p: &Project) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin().await?;
        if self.postgres {
            sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR SHARE")
                .bind(&p.tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
        }
        let done = sqlx::query(
            "INSERT INTO projects (id, name, config, created_at, tenant_id)
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $6)",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(p.config.to_string())
        .bind(p.created_at)
        .bind(&p.tenant_id)
        .bind(&p.tenant_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// A project by id or by name.
    pub async fn project_by_key(&self, key: &str) -> anyhow::Result<Option<Project>> {
        let row = sqlx::query(
            "SELECT id, name, config, created_at, tenant_id FROM projects WHERE id = $1 OR name = $2",
        )
        .bind(key)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| project_from_row(&r)).transpose()
    }

    pub async fn list_projects(&self) -> anyhow::Result<Vec<Project>> {
        let rows = sqlx::query(
            "SELECT id, name, config, created_at, tenant_id FROM projects ORDER BY created_at, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(project_from_row).collect()
    }

    /// Deletes a project with its roles, computes and events.
    pub async fn delete_project(&self, id: &str) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        for sql in [
            "DELETE FROM compute_events WHERE project_id = $1",
            "DELETE FROM usage_counters WHERE project_id = $1",
            "DELETE FROM roles WHERE project_id = $1",
            "DELETE FROM role_tombstones WHERE project_id = $1",
            "DELETE FROM computes WHERE project_id = $1",
            "DELETE FROM projects WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        self.notify(&mut tx, "project", id).await?;
        tx.commit().await?;
        Ok(())
    }

    // ---- tenants, tokens, audit ----

    pub async fn insert_tenant(&self, t: &Tenant) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO tenants (id, name, quotas, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.quotas.to_string())
            .bind(t.created_at)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// A tenant by id or by name.
    pub async fn tenant_by_key(&self, key: &str) -> anyhow::Result<Option<Tenant>> {
        let row = sqlx::query(
            "SELECT id, name, quotas, created_at FROM tenants WHERE id = $1 OR name = $2",
        )
        .bind(key)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| tenant_from_row(&r)).transpose()
    }

    pub async fn list_tenants(&self) -> anyhow::Result<Vec<Tenant>> {
        let rows = sqlx::query(
            "SELECT id, name, quotas, created_at FROM tenants ORDER BY created_at, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    pub async fn set_tenant_quotas(
        &self,
        id: &str,
        quotas: &serde_json::Value,
    ) -> anyhow::Result<bool> {
        let done = sqlx::query("UPDATE tenants SET quotas = $1 WHERE id = $2")
            .bind(quotas.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a tenant without projects, with its tokens; `false` when it still has projects
    /// (checked in the same transaction, so a project created meanwhile is never orphaned).
    pub async fn delete_tenant(&self, id: &str) -> anyhow::Result<bool> {
        let mut tx = self.begin().await?;
        if self.postgres {
            // Waits for project inserts into this tenant (they hold it FOR SHARE).
            sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        }
        let projects: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE tenant_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if projects > 0 {
            return Ok(false);
        }
        for sql in [
            "DELETE FROM api_tokens WHERE tenant_id = $1",
            "DELETE FROM tenants WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        self.notify(&mut tx, "token", id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Serialises quota checks of one tenant across replicas: on PostgreSQL, a session
    /// advisory lock on a connection held for it (`None` on SQLite, which has one process).
    /// Callers take it under their process's own quota gate, so a process holds at most one
    /// such connection.
    pub async fn lock_tenant(&self, tenant_id: &str) -> anyhow::Result<Option<TenantLock>> {
        if !self.postgres {
            return Ok(None);
        }
        let mut conn = self.pool.acquire().await?;
        let key = tenant_lock_key(tenant_id);
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await
            .context("waiting for another replica's quota check")?;
        Ok(Some(TenantLock {
            conn: Some(conn),
            key,
        }))
    }

    /// How many projects one tenant has.
    pub async fn count_tenant_projects(&self, tenant_id: &str) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM projects WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The projects of one tenant, oldest first.
    pub async fn tenant_projects(&self, tenant_id: &str) -> anyhow::Result<Vec<Project>> {
        let rows = sqlx::query(
            "SELECT id, name, config, created_at, tenant_id FROM projects WHERE tenant_id = $1 ORDER BY created_at, name",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(project_from_row).collect()
    }

    /// The computes of one tenant's projects that hold a server (starting, running,
    /// suspending or frozen): what its quotas of running computes and memory count.
    pub async fn tenant_held_computes(&self, tenant_id: &str) -> anyhow::Result<Vec<Compute>> {
        let rows = sqlx::query(&format!(
            "{COMPUTE_SELECT} WHERE state IN ('starting', 'running', 'suspending', 'frozen')
             AND project_id IN (SELECT id FROM projects WHERE tenant_id = $1) ORDER BY created_at"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(compute_from_row).collect()
    }

    pub async fn insert_token(&self, t: &ApiToken) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO api_tokens (id, tenant_id, name, digest, created_at, expires_at, revoked_at, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(&t.tenant_id)
        .bind(&t.name)
        .bind(&t.digest)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .bind(&t.created_by)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// The token whose secret has this SHA-256 digest (lower-case hex).
    pub async fn token_by_digest(&self, digest: &str) -> anyhow::Result<Option<ApiToken>> {
        let row = sqlx::query(&format!("{TOKEN_SELECT} WHERE digest = $1"))
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    pub async fn tenant_tokens(&self, tenant_id: &str) -> anyhow::Result<Vec<ApiToken>> {
        let rows = sqlx::query(&format!(
            "{TOKEN_SELECT} WHERE tenant_id = $1 ORDER BY created_at, id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// A token by id.
    pub async fn token(&self, id: &str) -> anyhow::Result<Option<ApiToken>> {
        let row = sqlx::query(&format!("{TOKEN_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    /// Marks a token revoked (kept for the audit trail), with every token created through it,
    /// and theirs; returns the digests revoked now (empty when the tenant has no such token,
    /// or it was revoked already). Tells every replica, which drop them from their caches.
    pub async fn revoke_token(
        &self,
        tenant_id: &str,
        id: &str,
        at: i64,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let mut tx = self.begin().await?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM api_tokens WHERE id = $1 AND tenant_id = $2")
                .bind(id)
                .bind(tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let mut revoked = Vec::new();
        let mut frontier = vec![id.to_owned()];
        // Tokens form a tree (a token's creator is older than it), so this ends.
        while let Some(next) = frontier.pop() {
            let digest: Option<String> = sqlx::query_scalar(
                "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING digest",
            )
            .bind(at)
            .bind(&next)
            .fetch_optional(&mut *tx)
            .await?;
            revoked.extend(digest);
            let children: Vec<String> =
                sqlx::query_scalar("SELECT id FROM api_tokens WHERE created_by = $1")
                    .bind(&next)
                    .fetch_all(&mut *tx)
                    .await?;
            frontier.extend(children);
        }
        if !revoked.is_empty() {
            self.notify(&mut tx, "token", id).await?;
        }
        tx.commit().await?;
        Ok(Some(revoked))
    }

    pub async fn insert_audit(&self, e: &AuditEntry) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, actor_tenant_id, tenant_id, method, path, status, replica)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&e.id)
        .bind(e.at)
        .bind(&e.actor)
        .bind(e.actor_tenant_id.clone())
        .bind(e.tenant_id.clone())
        .bind(&e.method)
        .bind(&e.path)
        .bind(e.status)
        .bind(&e.replica)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the audit entries older than `before` (ms); how many.
    pub async fn prune_audit(&self, before: i64) -> anyhow::Result<u64> {
        let done = sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Audit entries before `before` (ms), newest first, of one tenant or of all.
    pub async fn audit(
        &self,
        tenant_id: Option<&str>,
        before: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<AuditEntry>> {
        const COLUMNS: &str = "SELECT id, at, actor, actor_tenant_id, tenant_id, method, path, status, replica FROM audit_log";
        let rows =
            match tenant_id {
                Some(t) => sqlx::query(&format!(
                    "{COLUMNS} WHERE tenant_id = $1 AND at < $2 ORDER BY at DESC, id DESC LIMIT $3"
                ))
                .bind(t)
                .bind(before)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query(&format!(
                        "{COLUMNS} WHERE at < $1 ORDER BY at DESC, id DESC LIMIT $2"
                    ))
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
                }
            };
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    actor_tenant_id: r.try_get("actor_tenant_id")?,
                    tenant_id: r.try_get("tenant_id")?,
                    method: r.try_get("method")?,
                    path: r.try_get("path")?,
                    status: r.try_get("status")?,
                    replica: r.try_get("replica")?,
                })
            })
            .collect()
    }

    // ---- computes ----

    pub async fn insert_compute(&self, c: &Compute) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO computes (id, project_id, state, address, handle, config, created_at, updated_at, last_error, roles_dirty)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&c.id)
        .bind(&c.project_id)
        .bind(c.state.as_str())
        .bind(c.address.clone())
        .bind(c.handle.clone())
        .bind(c.config.to_string())
        .bind(c.created_at)
        .bind(c.updated_at)
        .bind(c.last_error.clone())
        .bind(i64::from(c.roles_dirty))
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    pub async fn compute(&self, id: &str) -> anyhow::Result<Option<Compute>> {
        let row = sqlx::query(&format!("{COMPUTE_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| compute_from_row(&r)).transpose()
    }

    pub async fn compute_for_project(&self, project_id: &str) -> anyhow::Result<Option<Compute>> {
        let row = sqlx::query(&format!("{COMPUTE_SELECT} WHERE project_id = $1"))
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| compute_from_row(&r)).transpose()
    }

    /// Records that these computes were seen alive at `at` (ms).
    pub async fn mark_alive(&self, ids: &[String], at: i64) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (2..ids.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "UPDATE computes SET alive_at = $1 WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(at);
        for id in ids {
            q = q.bind(id);
        }
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// When the compute was last seen alive, if ever.
    pub async fn alive_at(&self, id: &str) -> anyhow::Result<Option<i64>> {
        let at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT alive_at FROM computes WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(at.flatten())
    }

    pub async fn list_computes(&self) -> anyhow::Result<Vec<Compute>> {
        let rows = sqlx::query(&format!("{COMPUTE_SELECT} ORDER BY created_at"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(compute_from_row).collect()
    }

    /// Records a state change and its event in one transaction, if nobody changed the compute
    /// since it was read (its epoch); otherwise fails with [`Fenced`]. Tells every replica.
    pub async fn transition(&self, c: &Compute, t: &Transition<'_>) -> anyhow::Result<Compute> {
        self.transition_at(c, t, None).await
    }

    /// As [`Store::transition`], with the event dated `event_at` (ms) when given: a change that
    /// happened before it was recorded (a compute that died unseen). Never after now.
    pub async fn transition_at(
        &self,
        c: &Compute,
        t: &Transition<'_>,
        event_at: Option<i64>,
    ) -> anyhow::Result<Compute> {
        let now = now_ms() as i64;
        let at = event_at.map_or(now, |at| at.min(now));
        let last_error = match t.last_error {
            Some(v) => v.map(str::to_owned),
            None => c.last_error.clone(),
        };
        let (owner, ttl) = match t.lease {
            Some((owner, ttl)) => (Some(owner.to_owned()), Some(ttl)),
            None => (None, None),
        };
        let clock = self.clock_sql();
        let mut tx = self.begin().await?;
        let updated = sqlx::query(&format!(
            "UPDATE computes SET state = $1, address = $2, handle = $3, last_error = $4, updated_at = $5,
                 epoch = epoch + 1, lease_owner = $6, lease_until = {clock} + $7
             WHERE id = $8 AND epoch = $9"
        ))
        .bind(t.to.as_str())
        .bind(t.address.map(str::to_owned))
        .bind(t.handle.map(str::to_owned))
        .bind(last_error.clone())
        .bind(now)
        .bind(owner)
        .bind(ttl)
        .bind(&c.id)
        .bind(c.epoch)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(Fenced {
                compute_id: c.id.clone(),
                epoch: c.epoch,
            }
            .into());
        }
        sqlx::query(
            "INSERT INTO compute_events (id, compute_id, project_id, from_state, to_state, reason, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(event_id(now))
        .bind(&c.id)
        .bind(&c.project_id)
        .bind(c.state.as_str())
        .bind(t.to.as_str())
        .bind(t.reason)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        self.notify(&mut tx, "compute", &c.project_id).await?;
        tx.commit().await?;
        Ok(Compute {
            state: t.to,
            address: t.address.map(str::to_owned),
            handle: t.handle.map(str::to_owned),
            last_error,
            updated_at: now,
            epoch: c.epoch + 1,
            ..c.clone()
        })
    }

    /// Whether a start lease on this compute has run out (its owner died or hung), on the
    /// store's clock.
    pub async fn start_lease_expired(&self, compute_id: &str) -> anyhow::Result<bool> {
        let clock = self.clock_sql();
        let expired: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT CASE WHEN lease_until IS NULL OR lease_until < {clock} THEN 1 ELSE 0 END
             FROM computes WHERE id = $1"
        ))
        .bind(compute_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(expired == Some(1))
    }

    /// Extends a start's or suspend's lease this replica holds (`epoch` is its own): one
    /// that takes longer than one lease keeps it, a dead owner's runs out.
    pub async fn renew_start_lease(
        &self,
        compute_id: &str,
        epoch: i64,
        owner: &str,
        ttl_ms: i64,
    ) -> anyhow::Result<bool> {
        let clock = self.clock_sql();
        let done = sqlx::query(&format!(
            "UPDATE computes SET lease_until = {clock} + $1
             WHERE id = $2 AND epoch = $3 AND lease_owner = $4 AND state IN ('starting', 'suspending')"
        ))
        .bind(ttl_ms)
        .bind(compute_id)
        .bind(epoch)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether several processes may share this store (PostgreSQL) or only one (SQLite).
    pub fn is_shared(&self) -> bool {
        self.postgres
    }

    /// The store's clock in milliseconds, as SQL: leases expire on one clock for every replica.
    fn clock_sql(&self) -> &'static str {
        if self.postgres {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        } else {
            "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
        }
    }

    /// Tells every replica listening on [`CHANGES_CHANNEL`], in `tx` (delivered only if it
    /// commits). A no-op on SQLite, which has one process.
    async fn notify(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        kind: &str,
        project_id: &str,
    ) -> Result<(), sqlx::Error> {
        if self.postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(format!("{kind}:{project_id}"))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Tells every replica that `project_id`'s projects, roles or compute changed.
    pub async fn announce(&self, kind: &str, project_id: &str) -> Result<(), sqlx::Error> {
        if self.postgres {
            let mut tx = self.begin().await?;
            self.notify(&mut tx, kind, project_id).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    // ---- replicas and leases ----

    /// Records this replica's heartbeat (the store's clock) with its sessions per project.
    pub async fn heartbeat(
        &self,
        id: &str,
        started_at: i64,
        sessions: i64,
        activity: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let clock = self.clock_sql();
        sqlx::query(&format!(
            "INSERT INTO replicas (id, started_at, heartbeat_at, sessions, activity)
             VALUES ($1, $2, {clock}, $3, $4)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = {clock}, sessions = $3, activity = $4"
        ))
        .bind(id)
        .bind(started_at)
        .bind(sessions)
        .bind(activity.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the replicas whose heartbeat is older than `ttl_ms` (dead: their sessions died
    /// with them).
    pub async fn prune_replicas(&self, ttl_ms: i64) -> anyhow::Result<()> {
        let clock = self.clock_sql();
        sqlx::query(&format!(
            "DELETE FROM replicas WHERE heartbeat_at < {clock} - $1"
        ))
        .bind(ttl_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replicas whose heartbeat is younger than `ttl_ms`, oldest first.
    pub async fn live_replicas(&self, ttl_ms: i64) -> anyhow::Result<Vec<ReplicaRow>> {
        let clock = self.clock_sql();
        let rows = sqlx::query(&format!(
            "SELECT id, started_at, heartbeat_at, sessions, activity FROM replicas
             WHERE heartbeat_at >= {clock} - $1 ORDER BY started_at, id"
        ))
        .bind(ttl_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReplicaRow {
                    id: r.try_get("id")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                    sessions: r.try_get("sessions")?,
                    activity: parse_json(&r.try_get::<String, _>("activity")?)?,
                })
            })
            .collect()
    }

    /// A replica leaving cleanly.
    pub async fn remove_replica(&self, id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes or renews the lease `name` for `holder` for `ttl_ms` (the store's clock). Returns
    /// the term when `holder` holds it: the same term on a renewal, a new one on a takeover.
    pub async fn try_lead(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> anyhow::Result<Option<i64>> {
        let clock = self.clock_sql();
        let term: Option<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO leases (name, holder, term, expires_at) VALUES ($1, $2, 1, {clock} + $3)
             ON CONFLICT (name) DO UPDATE SET
                 term = CASE WHEN leases.holder = excluded.holder AND leases.expires_at >= {clock}
                             THEN leases.term ELSE leases.term + 1 END,
                 holder = excluded.holder,
                 expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.expires_at < {clock}
             RETURNING term"
        ))
        .bind(name)
        .bind(holder)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(term)
    }

    /// Who holds the lease `name` now (`None` when nobody does or it ran out).
    pub async fn lease_holder(&self, name: &str) -> anyhow::Result<Option<String>> {
        let clock = self.clock_sql();
        Ok(sqlx::query_scalar(&format!(
            "SELECT holder FROM leases WHERE name = $1 AND expires_at >= {clock}"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Gives the lease up (a clean shutdown), so another replica need not wait for it to expire.
    pub async fn resign(&self, name: &str, holder: &str) -> anyhow::Result<()> {
        // Expired, not deleted: the next holder's term stays above every earlier one.
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_roles_dirty(&self, project_id: &str, dirty: bool) -> anyhow::Result<()> {
        sqlx::query("UPDATE computes SET roles_dirty = $1 WHERE project_id = $2")
            .bind(i64::from(dirty))
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a compute. Its events stay: they are its project's usage ([`crate::usage`]).
    pub async fn delete_compute(&self, id: &str) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        let project_id: Option<String> =
            sqlx::query_scalar("SELECT project_id FROM computes WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM computes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if let Some(project_id) = project_id {
            self.notify(&mut tx, "compute", &project_id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a stopped compute, unless another replica changed it since it was read
    /// (`Ok(false)`): a delete never races a start into an unrecorded server.
    pub async fn delete_stopped_compute(&self, c: &Compute) -> anyhow::Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "DELETE FROM computes WHERE id = $1 AND epoch = $2 AND state IN ('suspended', 'failed')",
        )
        .bind(&c.id)
        .bind(c.epoch)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // The compute's events stay: they are its project's usage.
        self.notify(&mut tx, "compute", &c.project_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Events recorded before `to` of the computes of `project_id` (every project's with
    /// `None`), deleted computes included; oldest first. Usage is metered from them.
    pub async fn events_before(
        &self,
        project_id: Option<&str>,
        to: i64,
    ) -> anyhow::Result<Vec<ComputeEvent>> {
        const COLUMNS: &str =
            "SELECT compute_id, project_id, from_state, to_state, reason, at FROM compute_events";
        let rows = match project_id {
            Some(p) => {
                sqlx::query(&format!(
                    "{COLUMNS} WHERE project_id = $1 AND at < $2 ORDER BY at, id"
                ))
                .bind(p)
                .bind(to)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("{COLUMNS} WHERE at < $1 ORDER BY at, id"))
                    .bind(to)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(event_from_row).collect()
    }

    /// Adds what the proxy counted for each project to the hour starting at `hour` (ms).
    /// An upsert that adds, so replicas flushing the same hour never overwrite each other.
    pub async fn add_usage(&self, hour: i64, counts: &[UsageCount]) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        for c in counts {
            sqlx::query(
                "INSERT INTO usage_counters (project_id, hour, connections, bytes_in, bytes_out)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (project_id, hour) DO UPDATE SET
                   connections = usage_counters.connections + excluded.connections,
                   bytes_in = usage_counters.bytes_in + excluded.bytes_in,
                   bytes_out = usage_counters.bytes_out + excluded.bytes_out",
            )
            .bind(&c.project_id)
            .bind(hour)
            .bind(c.connections)
            .bind(c.bytes_in)
            .bind(c.bytes_out)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Counted usage of the hours starting in `[from_hour, to)`, of `project_id` or of all.
    pub async fn usage_counts(
        &self,
        project_id: Option<&str>,
        from_hour: i64,
        to: i64,
    ) -> anyhow::Result<Vec<(i64, UsageCount)>> {
        const COLUMNS: &str =
            "SELECT project_id, hour, connections, bytes_in, bytes_out FROM usage_counters";
        let rows = match project_id {
            Some(p) => {
                sqlx::query(&format!(
                    "{COLUMNS} WHERE project_id = $1 AND hour >= $2 AND hour < $3"
                ))
                .bind(p)
                .bind(from_hour)
                .bind(to)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!("{COLUMNS} WHERE hour >= $1 AND hour < $2"))
                    .bind(from_hour)
                    .bind(to)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("hour")?,
                    UsageCount {
                        project_id: r.try_get("project_id")?,
                        connections: r.try_get("connections")?,
                        bytes_in: r.try_get("bytes_in")?,
                        bytes_out: r.try_get("bytes_out")?,
                    },
                ))
            })
            .collect()
    }

    pub async fn events(&self, compute_id: &str) -> anyhow::Result<Vec<ComputeEvent>> {
        let rows = sqlx::query(
            "SELECT compute_id, project_id, from_state, to_state, reason, at FROM compute_events
             WHERE compute_id = $1 ORDER BY at, id",
        )
        .bind(compute_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    // ---- roles ----

    pub async fn insert_role(&self, r: &Role) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO roles (project_id, name, stored_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&r.project_id)
        .bind(&r.name)
        .bind(&r.stored_hash)
        .bind(r.created_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM role_tombstones WHERE project_id = $1 AND name = $2")
            .bind(&r.project_id)
            .bind(&r.name)
            .execute(&mut *tx)
            .await?;
        self.notify(&mut tx, "role", &r.project_id).await?;
        tx.commit().await
    }

    /// Replaces a role's hash; false when the role does not exist.
    pub async fn update_role_hash(
        &self,
        project_id: &str,
        name: &str,
        hash: &str,
    ) -> anyhow::Result<bool> {
        let mut tx = self.begin().await?;
        let done =
            sqlx::query("UPDATE roles SET stored_hash = $1 WHERE project_id = $2 AND name = $3")
                .bind(hash)
                .bind(project_id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        // The old password must stop working on every replica, now.
        self.notify(&mut tx, "role", project_id).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn role(&self, project_id: &str, name: &str) -> anyhow::Result<Option<Role>> {
        let row = sqlx::query(
            "SELECT project_id, name, stored_hash, created_at FROM roles WHERE project_id = $1 AND name = $2",
        )
        .bind(project_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| role_from_row(&r)).transpose()
    }

    pub async fn list_roles(&self, project_id: &str) -> anyhow::Result<Vec<Role>> {
        let rows = sqlx::query(
            "SELECT project_id, name, stored_hash, created_at FROM roles WHERE project_id = $1 ORDER BY name",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(role_from_row).collect()
    }

    /// Deletes a role and leaves a tombstone until a compute has dropped it. False when the
    /// role did not exist.
    pub async fn delete_role(&self, project_id: &str, name: &str) -> anyhow::Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM roles WHERE project_id = $1 AND name = $2")
            .bind(project_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM role_tombstones WHERE project_id = $1 AND name = $2")
            .bind(project_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO role_tombstones (project_id, name, deleted_at) VALUES ($1, $2, $3)",
        )
        .bind(project_id)
        .bind(name)
        .bind(now_ms() as i64)
        .execute(&mut *tx)
        .await?;
        self.notify(&mut tx, "role", project_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Roles deleted but not yet dropped from the project's compute.
    pub async fn role_tombstones(&self, project_id: &str) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM role_tombstones WHERE project_id = $1 ORDER BY name",
        )
        .bind(project_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Forgets tombstones once the compute has dropped those roles.
    pub async fn clear_role_tombstones(
        &self,
        project_id: &str,
        names: &[String],
    ) -> anyhow::Result<()> {
        for name in names {
            sqlx::query("DELETE FROM role_tombstones WHERE project_id = $1 AND name = $2")
                .bind(project_id)
                .bind(name)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

/// Event ids sort in the order the events were recorded (within a millisecond too).
fn event_id(now_ms: i64) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let salt = uuid::Uuid::new_v4().simple().to_string();
    format!("{now_ms:015}-{seq:012}-{}", &salt[..8])
}

const COMPUTE_SELECT: &str = "SELECT id, project_id, state, address, handle, config, created_at, updated_at, last_error, roles_dirty, epoch FROM computes";

/// A stored config. One that no longer parses is an error to report, never a silent `null`
/// (which would start a compute without its options).
fn parse_json(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).with_context(|| {
        format!(
            "a stored config is not valid JSON ({} bytes); fix it in the state store",
            text.len()
        )
    })
}

fn event_from_row(r: &AnyRow) -> anyhow::Result<ComputeEvent> {
    Ok(ComputeEvent {
        compute_id: r.try_get("compute_id")?,
        project_id: r.try_get("project_id")?,
        from_state: r.try_get("from_state")?,
        to_state: r.try_get("to_state")?,
        reason: r.try_get("reason")?,
        at: r.try_get("at")?,
    })
}

fn project_from_row(r: &AnyRow) -> anyhow::Result<Project> {
    Ok(Project {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        config: parse_json(&r.try_get::<String, _>("config")?)?,
        created_at: r.try_get("created_at")?,
        tenant_id: r.try_get("tenant_id")?,
    })
}

const TOKEN_SELECT: &str = "SELECT id, tenant_id, name, digest, created_at, expires_at, revoked_at, created_by FROM api_tokens";

fn tenant_from_row(r: &AnyRow) -> anyhow::Result<Tenant> {
    Ok(Tenant {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        quotas: parse_json(&r.try_get::<String, _>("quotas")?)?,
        created_at: r.try_get("created_at")?,
    })
}

fn token_from_row(r: &AnyRow) -> anyhow::Result<ApiToken> {
    Ok(ApiToken {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        digest: r.try_get("digest")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        created_by: r.try_get("created_by")?,
    })
}

fn compute_from_row(r: &AnyRow) -> anyhow::Result<Compute> {
    Ok(Compute {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        state: r.try_get::<String, _>("state")?.parse()?,
        address: r.try_get("address")?,
        handle: r.try_get("handle")?,
        config: parse_json(&r.try_get::<String, _>("config")?)?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        last_error: r.try_get("last_error")?,
        roles_dirty: r.try_get::<i64, _>("roles_dirty")? != 0,
        epoch: r.try_get("epoch")?,
    })
}

fn role_from_row(r: &AnyRow) -> anyhow::Result<Role> {
    Ok(Role {
        project_id: r.try_get("project_id")?,
        name: r.try_get("name")?,
        stored_hash: r.try_get("stored_hash")?,
        created_at: r.try_get("created_at")?,
    })
}

/// The file of a normalised `sqlite://PATH?query` URL.
fn sqlite_path(url: &str) -> PathBuf {
    let rest = url.trim_start_matches("sqlite://");
    PathBuf::from(rest.split_once('?').map_or(rest, |(p, _)| p))
}

/// `(url for sqlx, is_sqlite, is_in_memory)`; creates a SQLite file's parent directory.
fn normalise_dsn(dsn: &str) -> anyhow::Result<(String, bool, bool)> {
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        return Ok((dsn.to_owned(), false, false));
    }
    let Some(rest) = dsn.strip_prefix("sqlite:") else {
        anyhow::bail!(
            "unsupported --db-dsn '{}': use sqlite://<path> or postgres://...",
            redact_dsn(dsn)
        );
    };
    if rest.contains(":memory:") {
        return Ok(("sqlite::memory:".to_owned(), true, true));
    }
    let path_part = rest.trim_start_matches("//");
    let (path, query) = match path_part.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_part, None),
    };
    if path.is_empty() {
        anyhow::bail!("the SQLite DSN '{dsn}' names no file");
    }
    if let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    make_private(Path::new(path))?;
    let query = match query {
        Some(q) if q.contains("mode=") => q.to_owned(),
        Some(q) => format!("{q}&mode=rwc"),
        None => "mode=rwc".to_owned(),
    };
    Ok((format!("sqlite://{path}?{query}"), true, false))
}

/// The SQLite file holds every role's password hash: it and its WAL and shared-memory files
/// are readable by doze's user only. The file is created 0600 before SQLite opens it (SQLite
/// gives the WAL and SHM files the mode of the database file), and files left by an older
/// doze with wider modes are narrowed.
fn make_private(db: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .with_context(|| format!("creating {}", db.display()))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        if file.exists() {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 600 {}", file.display()))?;
        }
    }
    Ok(())
}

/// A DSN with any password replaced by `***`, for messages and logs: the password of the
/// user-info part (`user:pw@host`, split at the last `@`, since a password may contain one)
/// and a `password=` query parameter.
pub fn redact_dsn(dsn: &str) -> String {
    let (base, query) = match dsn.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (dsn, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_normalisation() {
        let dir = std::env::temp_dir().join(format!("doze-dsn-{}", std::process::id()));
        let dsn = format!("sqlite://{}/state.db", dir.display());
        let (url, sqlite, mem) = normalise_dsn(&dsn).expect("dsn");
        assert!(sqlite && !mem);
        assert!(url.ends_with("state.db?mode=rwc"));
        assert!(dir.is_dir());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(normalise_dsn("mysql://x").is_err());
        assert_eq!(
            redact_dsn("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_dsn("postgres://u:p@ss@h/db?sslmode=require&password=x2"),
            "postgres://u:***@h/db?sslmode=require&password=***"
        );
        assert_eq!(redact_dsn("sqlite://./s.db"), "sqlite://./s.db");
    }
}
