//! The catalog: projects and roles as the store keeps them, and the caches in front of them.
//!
//! One owner for one rule: every lookup the data path makes (a project key, a role's stored
//! hash) is answered here, from caches that every project or role change clears through
//! [`Catalog::changed`]. Nothing here runs a compute; the [`crate::lifecycle::Lifecycle`] does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::activity::now_ms;
use crate::error::ControlError;
use crate::gateway::{LookupError, RoleLookup};
use crate::roles;
use crate::stats::Stats;
use crate::store::{Project, Role, Store, is_unique_violation};
use crate::tenancy::Tenancy;

/// Ten years: longer idle timeouts are a typo.
const MAX_IDLE_TIMEOUT_SECS: f64 = 315_360_000.0;

/// Projects, roles and their caches.
pub struct Catalog {
    store: Store,
    stats: Arc<Stats>,
    /// (project key, user) -> lookup answer.
    role_cache: moka::future::Cache<(String, String), RoleLookup>,
    /// project id or name -> (id, name).
    key_cache: moka::future::Cache<String, (String, String)>,
    /// Bumped on every project or role change (see [`Catalog::lookup_role`]).
    generation: AtomicU64,
    /// Tenants, their tokens and quotas, and the audit log.
    tenancy: Tenancy,
}

impl Catalog {
    pub(crate) fn new(store: Store, stats: Arc<Stats>) -> Self {
        Self {
            store: store.clone(),
            stats,
            role_cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            key_cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            generation: AtomicU64::new(0),
            tenancy: Tenancy::new(store.clone()),
        }
    }

    pub fn tenancy(&self) -> &Tenancy {
        &self.tenancy
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Clears every cached lookup after a project or role change.
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.role_cache.invalidate_all();
        self.key_cache.invalidate_all();
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
        let generation = self.generation.load(Ordering::SeqCst);
        let answer = self
            .role_cache
            .try_get_with(key.clone(), self.load_role(project_key, user))
            .await
            .map_err(|e| (*e).clone())?;
        // A change that landed during the load must not leave a stale entry behind.
        if self.generation.load(Ordering::SeqCst) != generation {
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
            max_connections: project
                .config
                .get("max_connections")
                .and_then(serde_json::Value::as_u64)
                .filter(|n| *n > 0),
            pooling: pooling_of(&project.config),
        })
    }

    /// (id, name) of a project by id or name, cached; concurrent misses share one lookup.
    /// Unknown keys are not cached.
    pub(crate) async fn resolve(
        &self,
        key: &str,
    ) -> Result<Option<(String, String)>, anyhow::Error> {
        let generation = self.generation.load(Ordering::SeqCst);
        let load = async {
            match self.store.project_by_key(key).await {
                Ok(Some(p)) => Ok((p.id, p.name)),
                Ok(None) => Err(None),
                Err(e) => Err(Some(format!("{e:#}"))),
            }
        };
        let found = match self.key_cache.try_get_with(key.to_owned(), load).await {
            Ok(v) => v,
            Err(e) => {
                return match &*e {
                    None => Ok(None),
                    Some(message) => Err(anyhow::anyhow!("{message}")),
                };
            }
        };
        if self.generation.load(Ordering::SeqCst) != generation {
            self.key_cache.invalidate(key).await;
        }
        Ok(Some(found))
    }

    // ---- projects ----

    /// Creates a project in `tenant_id`, within the tenant's project quota.
    pub async fn create_project(
        &self,
        name: &str,
        config: serde_json::Value,
        tenant_id: &str,
    ) -> Result<Project, ControlError> {
        validate_project_name(name).map_err(ControlError::Invalid)?;
        validate_project_config(&config).map_err(ControlError::Invalid)?;
        let project = Project {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            config,
            created_at: now_ms() as i64,
            tenant_id: tenant_id.to_owned(),
        };
        self.tenancy
            .with_project_quota(tenant_id, self.insert_project(project))
            .await
    }

    async fn insert_project(&self, project: Project) -> Result<Project, ControlError> {
        let name = project.name.as_str();
        match self.store.insert_project(&project).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(ControlError::NotFound(format!(
                    "no tenant with id or name '{}'",
                    project.tenant_id
                )));
            }
            Err(e) if is_unique_violation(&e) => {
                return Err(ControlError::Conflict(format!(
                    "a project named '{name}' already exists"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.changed();
        tracing::info!(project_id = %project.id, project = %project.name, tenant_id = %project.tenant_id, "project created");
        Ok(project)
    }

    pub async fn list_projects(&self) -> Result<Vec<Project>, ControlError> {
        Ok(self.store.list_projects().await?)
    }

    /// A project by id or name.
    pub async fn project(&self, key: &str) -> Result<Project, ControlError> {
        self.store
            .project_by_key(key)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("no project with id or name '{key}'")))
    }

    // ---- roles (their records; the compute's accounts follow through the lifecycle) ----

    /// Records a new role; 409 when it exists.
    pub(crate) async fn insert_role(
        &self,
        project: &Project,
        name: &str,
        password: &str,
    ) -> Result<Role, ControlError> {
        roles::validate_role_name(name).map_err(ControlError::Invalid)?;
        roles::validate_password(password).map_err(ControlError::Invalid)?;
        let role = Role {
            project_id: project.id.clone(),
            name: name.to_owned(),
            stored_hash: roles::format_stored_hash(&roles::stored_hash(password.as_bytes())),
            created_at: now_ms() as i64,
        };
        match self.store.insert_role(&role).await {
            Ok(()) => Ok(role),
            Err(e) if is_unique_violation(&e) => Err(ControlError::Conflict(format!(
                "role '{name}' already exists in project '{}'; change its password with \
                 PUT /api/v1/projects/{}/roles/{name}",
                project.name, project.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a role's new password; returns the stored hash.
    pub(crate) async fn update_role_password(
        &self,
        project: &Project,
        name: &str,
        password: &str,
    ) -> Result<String, ControlError> {
        roles::validate_password(password).map_err(ControlError::Invalid)?;
        let hash = roles::format_stored_hash(&roles::stored_hash(password.as_bytes()));
        if !self
            .store
            .update_role_hash(&project.id, name, &hash)
            .await?
        {
            return Err(ControlError::NotFound(format!(
                "no role '{name}' in project '{}'",
                project.name
            )));
        }
        Ok(hash)
    }

    /// Removes a role's record; 404 when unknown.
    pub(crate) async fn remove_role(
        &self,
        project: &Project,
        name: &str,
    ) -> Result<(), ControlError> {
        if !self.store.delete_role(&project.id, name).await? {
            return Err(ControlError::NotFound(format!(
                "no role '{name}' in project '{}'",
                project.name
            )));
        }
        Ok(())
    }

    pub async fn role(&self, project: &Project, name: &str) -> Result<Role, ControlError> {
        self.store
            .role(&project.id, name)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("no role '{name}'")))
    }

    pub async fn list_roles(
        &self,
        project_key: &str,
    ) -> Result<(Project, Vec<Role>), ControlError> {
        let project = self.project(project_key).await?;
        let roles = self.store.list_roles(&project.id).await?;
        Ok((project, roles))
    }
}

/// Checks a project name: 1-63 characters of a-z, 0-9 and '-', and not shaped like a project
/// id (so that `:id` in the API can be an id or a name without ambiguity).
pub fn validate_project_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "project name must be 1-63 characters long, got {}",
            name.chars().count()
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "project name '{name}' may only contain lower-case letters, digits and '-'"
        ));
    }
    if uuid::Uuid::parse_str(name).is_ok() {
        return Err("project name must not look like a project id (a UUID)".into());
    }
    Ok(())
}

/// The largest `config.max_connections` a project may ask for (the compute's own limit).
const MAX_PROJECT_CONNECTIONS: u64 = crate::driver::mariadb::DEFAULT_MAX_CONNECTIONS as u64;

/// A project's `config.pool.mode`: reuse of backend sessions is on unless it says `"off"`.
fn pooling_of(config: &serde_json::Value) -> bool {
    config.pointer("/pool/mode").and_then(|m| m.as_str()) != Some("off")
}

/// `config.pool`: null, or `{"mode": "session" | "off"}`.
fn validate_pool(pool: &serde_json::Value) -> Result<(), String> {
    let message = "config.pool must be {\"mode\": \"session\"} (reuse logged-in backend sessions, the default) or {\"mode\": \"off\"} (a fresh login to the compute for every connection)";
    if pool.is_null() {
        return Ok(());
    }
    let Some(obj) = pool.as_object() else {
        return Err(message.into());
    };
    match obj.get("mode") {
        Some(m) if matches!(m.as_str(), Some("session" | "off")) && obj.len() == 1 => Ok(()),
        _ => Err(message.into()),
    }
}

fn validate_project_config(config: &serde_json::Value) -> Result<(), String> {
    let Some(obj) = config.as_object() else {
        return Err("config must be a JSON object".into());
    };
    if let Some(t) = obj.get("idle_timeout")
        && !t.is_null()
        && t.as_f64()
            .is_none_or(|v| !(0.0..=MAX_IDLE_TIMEOUT_SECS).contains(&v))
    {
        return Err(
            "config.idle_timeout must be a number of seconds from 0 to 315360000 (0 = never suspend)"
                .into(),
        );
    }
    for key in ["page_server_url", "safekeeper_url"] {
        if let Some(v) = obj.get(key)
            && !(v.is_null() || v.is_string())
        {
            return Err(format!("config.{key} must be a string (a URL)"));
        }
    }
    if let Some(n) = obj.get("max_connections")
        && !n.is_null()
        && n.as_u64()
            .is_none_or(|n| !(1..=MAX_PROJECT_CONNECTIONS).contains(&n))
    {
        return Err(format!(
            "config.max_connections must be a whole number from 1 to {MAX_PROJECT_CONNECTIONS}: the most sessions the project may have open through doze at once"
        ));
    }
    if let Some(pool) = obj.get("pool") {
        validate_pool(pool)?;
    }
    if let Some(m) = obj.get("suspend_mode")
        && !m.is_null()
        && m.as_str()
            .is_none_or(|m| m.parse::<crate::config::SuspendMode>().is_err())
    {
        return Err(
            "config.suspend_mode must be \"freeze\" (frozen when idle, stopped later) or \"stop\" (stopped when idle)"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        assert!(validate_project_name("my-project").is_ok());
        assert!(validate_project_name("a").is_ok());
        assert!(validate_project_name(&"a".repeat(63)).is_ok());
        for bad in ["", "My", "a.b", "a_b", "a b", "é"] {
            assert!(validate_project_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_project_name(&"a".repeat(64)).is_err());
        assert!(validate_project_name("3f1c2b9e-8d1a-4b7e-9c2d-1a2b3c4d5e6f").is_err());
    }
}
