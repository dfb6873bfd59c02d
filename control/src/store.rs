//! Durable state: projects, computes, roles and the compute event log, over sqlx.
//!
//! One code path for both backends: an [`sqlx::AnyPool`] with `$n` placeholders (SQLite and
//! PostgreSQL both accept them) and only `BIGINT`/`TEXT` columns, so every value is an `i64`,
//! a `String` or an `Option` of those. SQLite is the default (`sqlite://path`, file and parent
//! directory created on first start, WAL journal); `postgres://...` selects PostgreSQL.
//! Schema changes are embedded, versioned migrations recorded in `schema_migrations`.

use std::path::Path;
use std::str::FromStr;
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
];

/// A compute's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeState {
    Suspended,
    Starting,
    Running,
    Suspending,
    Failed,
}

impl ComputeState {
    pub const ALL: [ComputeState; 5] = [
        ComputeState::Suspended,
        ComputeState::Starting,
        ComputeState::Running,
        ComputeState::Suspending,
        ComputeState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ComputeState::Suspended => "suspended",
            ComputeState::Starting => "starting",
            ComputeState::Running => "running",
            ComputeState::Suspending => "suspending",
            ComputeState::Failed => "failed",
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

/// A state change to record on a compute.
pub struct Transition<'a> {
    pub to: ComputeState,
    pub address: Option<&'a str>,
    pub handle: Option<&'a str>,
    /// `Some` replaces last_error (use `Some(None)` to clear it), `None` keeps it.
    pub last_error: Option<Option<&'a str>>,
    pub reason: &'a str,
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
}

impl Store {
    /// Opens (creating a SQLite file and its directory if needed) and migrates the store.
    pub async fn open(dsn: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, sqlite, memory) = normalise_dsn(dsn)?;
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
        let store = Self { pool };
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

    async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .context("creating schema_migrations")?;
        for (version, statements) in MIGRATIONS {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&self.pool)
                    .await?;
            if done.is_some() {
                continue;
            }
            let mut tx = self.pool.begin().await?;
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
            tx.commit().await?;
            tracing::info!(version, "applied state store migration");
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    // ---- projects ----

    pub async fn insert_project(&self, p: &Project) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO projects (id, name, config, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&p.id)
            .bind(&p.name)
            .bind(p.config.to_string())
            .bind(p.created_at)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// A project by id or by name.
    pub async fn project_by_key(&self, key: &str) -> anyhow::Result<Option<Project>> {
        let row = sqlx::query(
            "SELECT id, name, config, created_at FROM projects WHERE id = $1 OR name = $2",
        )
        .bind(key)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| project_from_row(&r)).transpose()
    }

    pub async fn list_projects(&self) -> anyhow::Result<Vec<Project>> {
        let rows = sqlx::query(
            "SELECT id, name, config, created_at FROM projects ORDER BY created_at, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(project_from_row).collect()
    }

    /// Deletes a project with its roles, computes and events.
    pub async fn delete_project(&self, id: &str) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for sql in [
            "DELETE FROM compute_events WHERE project_id = $1",
            "DELETE FROM roles WHERE project_id = $1",
            "DELETE FROM role_tombstones WHERE project_id = $1",
            "DELETE FROM computes WHERE project_id = $1",
            "DELETE FROM projects WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
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

    pub async fn list_computes(&self) -> anyhow::Result<Vec<Compute>> {
        let rows = sqlx::query(&format!("{COMPUTE_SELECT} ORDER BY created_at"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(compute_from_row).collect()
    }

    /// Records a state change and its event in one transaction.
    pub async fn transition(&self, c: &Compute, t: &Transition<'_>) -> anyhow::Result<Compute> {
        let now = now_ms() as i64;
        let last_error = match t.last_error {
            Some(v) => v.map(str::to_owned),
            None => c.last_error.clone(),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE computes SET state = $1, address = $2, handle = $3, last_error = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(t.to.as_str())
        .bind(t.address.map(str::to_owned))
        .bind(t.handle.map(str::to_owned))
        .bind(last_error.clone())
        .bind(now)
        .bind(&c.id)
        .execute(&mut *tx)
        .await?;
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
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Compute {
            state: t.to,
            address: t.address.map(str::to_owned),
            handle: t.handle.map(str::to_owned),
            last_error,
            updated_at: now,
            ..c.clone()
        })
    }

    pub async fn set_roles_dirty(&self, project_id: &str, dirty: bool) -> anyhow::Result<()> {
        sqlx::query("UPDATE computes SET roles_dirty = $1 WHERE project_id = $2")
            .bind(i64::from(dirty))
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_compute(&self, id: &str) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM compute_events WHERE compute_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM computes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn events(&self, compute_id: &str) -> anyhow::Result<Vec<ComputeEvent>> {
        let rows = sqlx::query(
            "SELECT compute_id, project_id, from_state, to_state, reason, at FROM compute_events
             WHERE compute_id = $1 ORDER BY at, id",
        )
        .bind(compute_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ComputeEvent {
                    compute_id: r.try_get("compute_id")?,
                    project_id: r.try_get("project_id")?,
                    from_state: r.try_get("from_state")?,
                    to_state: r.try_get("to_state")?,
                    reason: r.try_get("reason")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    // ---- roles ----

    pub async fn insert_role(&self, r: &Role) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
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
        tx.commit().await
    }

    /// Replaces a role's hash; false when the role does not exist.
    pub async fn update_role_hash(
        &self,
        project_id: &str,
        name: &str,
        hash: &str,
    ) -> anyhow::Result<bool> {
        let done =
            sqlx::query("UPDATE roles SET stored_hash = $1 WHERE project_id = $2 AND name = $3")
                .bind(hash)
                .bind(project_id)
                .bind(name)
                .execute(&self.pool)
                .await?;
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
        let mut tx = self.pool.begin().await?;
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

const COMPUTE_SELECT: &str = "SELECT id, project_id, state, address, handle, config, created_at, updated_at, last_error, roles_dirty FROM computes";

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

fn project_from_row(r: &AnyRow) -> anyhow::Result<Project> {
    Ok(Project {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        config: parse_json(&r.try_get::<String, _>("config")?)?,
        created_at: r.try_get("created_at")?,
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
