//! Tenants: who owns which projects, the API tokens that act for a tenant, the tenant's
//! quotas, and the audit log of admin changes.
//!
//! One owner for one rule: every "may this caller see that object" answer and every quota
//! check is made here. The REST layer only asks ([`Caller`], [`Tenancy::visible_project`]);
//! the lifecycle asks [`Tenancy::check_wake`] before it starts a compute.
//!
//! Tokens are random 256-bit secrets, so they are stored as a plain SHA-256 digest (a slow
//! password hash buys nothing against a secret nobody can guess) and looked up by digest
//! through a cache: after its first use, a token costs a hash and a cache hit per request.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::activity::now_ms;
use crate::error::ControlError;
use crate::store::{
    ApiToken, AuditEntry, Compute, DEFAULT_TENANT_ID, Project, Store, Tenant, is_unique_violation,
};

/// The prefix of every tenant token, so that secret scanners (and people) can tell one.
pub const TOKEN_PREFIX: &str = "doze_";

/// The least memory a compute counts against a memory quota: the least memory limit the local
/// driver gives a compute (a server peaks near 200 MiB while it starts, whatever its buffer
/// pool), so that `resources.memory: "1"` cannot slip a hundred computes under a quota. A
/// compute without `resources.memory` counts this much too.
pub const MIN_COMPUTE_MEMORY: u64 = crate::driver::freezer::MIN_MEMORY_MAX;

/// Who is calling the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The `--admin-token` (or, without one, a local caller): sees and may do everything.
    Operator,
    /// A tenant token: sees only its tenant's objects.
    Tenant { tenant_id: String, token_id: String },
}

impl Caller {
    /// The tenant this caller is confined to; `None` for the operator.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Operator => None,
            Caller::Tenant { tenant_id, .. } => Some(tenant_id),
        }
    }

    /// True if the caller may see an object of `tenant_id`.
    pub fn sees(&self, tenant_id: &str) -> bool {
        self.tenant().is_none_or(|t| t == tenant_id)
    }

    /// For the audit log: `operator` or the token's id.
    pub fn actor(&self) -> &str {
        match self {
            Caller::Operator => "operator",
            Caller::Tenant { token_id, .. } => token_id,
        }
    }
}

/// A tenant's quotas; `None` is no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quotas {
    pub max_projects: Option<u64>,
    pub max_running_computes: Option<u64>,
    /// Bytes of `resources.memory` over the computes that hold a server.
    pub max_memory: Option<u64>,
}

impl Quotas {
    /// Reads and checks a `quotas` object: each key optional, null meaning no limit.
    pub fn parse(value: &serde_json::Value) -> Result<Self, String> {
        let Some(obj) = value.as_object() else {
            return Err(
                "quotas must be an object like {\"max_projects\": 10, \"max_running_computes\": 2, \"max_memory\": \"4Gi\"}"
                    .into(),
            );
        };
        let mut quotas = Quotas::default();
        for (key, v) in obj {
            match key.as_str() {
                "max_projects" | "max_running_computes" => {
                    let n = match v {
                        serde_json::Value::Null => None,
                        v => Some(v.as_u64().filter(|n| *n <= 1_000_000).ok_or_else(|| {
                            format!("quotas.{key} must be a whole number from 0 to 1000000, or null for no limit")
                        })?),
                    };
                    if key == "max_projects" {
                        quotas.max_projects = n;
                    } else {
                        quotas.max_running_computes = n;
                    }
                }
                "max_memory" => quotas.max_memory = match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(
                        crate::driver::local::parse_memory(s)
                            .filter(|b| *b <= 1 << 60)
                            .ok_or_else(|| {
                                format!(
                                    "quotas.max_memory '{s}' is not a quantity like 4Gi or 512Mi"
                                )
                            })?,
                    ),
                    _ => {
                        return Err(
                                "quotas.max_memory must be a quantity string like \"4Gi\", or null for no limit"
                                    .into(),
                            );
                    }
                },
                other => {
                    return Err(format!(
                        "unknown quota '{other}': the quotas are max_projects, max_running_computes and max_memory"
                    ));
                }
            }
        }
        Ok(quotas)
    }
}

/// The memory a compute config counts against a quota: its `resources.memory`, at least
/// [`MIN_COMPUTE_MEMORY`].
pub fn compute_memory(config: &serde_json::Value) -> u64 {
    config
        .pointer("/resources/memory")
        .and_then(|v| v.as_str())
        .and_then(crate::driver::local::parse_memory)
        .unwrap_or(0)
        .max(MIN_COMPUTE_MEMORY)
}

/// A tenant's current use of what its quotas bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantUse {
    pub projects: u64,
    pub running_computes: u64,
    pub memory: u64,
}

/// SHA-256 of a token secret, lower-case hex.
pub fn token_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new token secret: the prefix and 256 random bits in hex.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Tenants, tokens, quotas and the audit log.
pub struct Tenancy {
    store: Store,
    /// Token digest -> its record. Revocations clear it here and, through the change channel,
    /// on every replica; expiry is checked at every use, cached or not.
    tokens: moka::future::Cache<String, ApiToken>,
    /// Digests no token has, for a few seconds: a client retrying a wrong token costs a hash,
    /// not a store query each time. Safe to cache: a new token's secret is random, so its digest
    /// cannot have been asked for before it existed.
    unknown: moka::future::Cache<String, ()>,
    /// Bumped by every revocation: a lookup that read a token before a revocation and lands in
    /// the cache after it is dropped again (see [`Tenancy::authenticate`]).
    generation: std::sync::atomic::AtomicU64,
    /// Held from a quota check to the change it allows (a project's insert, a compute's claim
    /// to start), so two creates or wakes of one tenant in this process cannot both pass a
    /// check that only one of them fits.
    quota_gate: tokio::sync::Mutex<()>,
}

impl Tenancy {
    pub(crate) fn new(store: Store) -> Self {
        Self {
            store,
            tokens: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            unknown: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
            quota_gate: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Forgets every cached token (one was revoked on another replica, or the change channel
    /// reconnected).
    pub(crate) fn tokens_changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.tokens.invalidate_all();
    }

    /// The caller a bearer secret stands for: `None` when no live token has it (unknown,
    /// revoked or expired: the same answer, so a guess learns nothing).
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Caller>, ControlError> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let digest = token_digest(secret);
        if self.unknown.contains_key(&digest) {
            return Ok(None);
        }
        let store = &self.store;
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let found = self
            .tokens
            .try_get_with(digest.clone(), async {
                match store.token_by_digest(&digest).await {
                    Ok(Some(t)) => Ok(t),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(format!("{e:#}"))),
                }
            })
            .await;
        // A revocation that landed during the lookup must not leave the old record cached.
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            self.tokens.invalidate(&digest).await;
        }
        let token = match found {
            Ok(t) => t,
            Err(e) => {
                return match &*e {
                    None => {
                        self.unknown.insert(digest, ()).await;
                        Ok(None)
                    }
                    Some(message) => Err(ControlError::Internal(anyhow::anyhow!(
                        "looking up a token: {message}"
                    ))),
                };
            }
        };
        let now = now_ms() as i64;
        if token.revoked_at.is_some() || token.expires_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        Ok(Some(Caller::Tenant {
            tenant_id: token.tenant_id,
            token_id: token.id,
        }))
    }

    // ---- tenants ----

    pub async fn create_tenant(
        &self,
        name: &str,
        quotas: serde_json::Value,
    ) -> Result<Tenant, ControlError> {
        crate::catalog::validate_project_name(name)
            .map_err(|e| ControlError::Invalid(e.replace("project name", "tenant name")))?;
        Quotas::parse(&quotas).map_err(ControlError::Invalid)?;
        let tenant = Tenant {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            quotas,
            created_at: now_ms() as i64,
        };
        match self.store.insert_tenant(&tenant).await {
            Ok(()) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(ControlError::Conflict(format!(
                    "a tenant named '{name}' already exists"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(tenant_id = %tenant.id, tenant = %tenant.name, "tenant created");
        Ok(tenant)
    }

    /// A tenant by id or name, if `caller` may see it (otherwise the unknown tenant's 404).
    pub async fn tenant(&self, caller: &Caller, key: &str) -> Result<Tenant, ControlError> {
        self.store
            .tenant_by_key(key)
            .await?
            .filter(|t| caller.sees(&t.id))
            .ok_or_else(|| ControlError::NotFound(format!("no tenant with id or name '{key}'")))
    }

    pub async fn list_tenants(&self, caller: &Caller) -> Result<Vec<Tenant>, ControlError> {
        let mut all = self.store.list_tenants().await?;
        all.retain(|t| caller.sees(&t.id));
        Ok(all)
    }

    pub async fn set_quotas(
        &self,
        tenant: &Tenant,
        quotas: serde_json::Value,
    ) -> Result<Tenant, ControlError> {
        Quotas::parse(&quotas).map_err(ControlError::Invalid)?;
        if !self.store.set_tenant_quotas(&tenant.id, &quotas).await? {
            return Err(ControlError::NotFound(format!(
                "no tenant with id or name '{}'",
                tenant.name
            )));
        }
        tracing::info!(tenant_id = %tenant.id, %quotas, "tenant quotas changed");
        Ok(Tenant {
            quotas,
            ..tenant.clone()
        })
    }

    /// Deletes an empty tenant and its tokens; the default tenant stays.
    pub async fn delete_tenant(&self, tenant: &Tenant) -> Result<(), ControlError> {
        if tenant.id == DEFAULT_TENANT_ID {
            return Err(ControlError::Conflict(
                "the default tenant cannot be deleted: projects created without a tenant land in it"
                    .into(),
            ));
        }
        if !self.store.delete_tenant(&tenant.id).await? {
            return Err(ControlError::Conflict(format!(
                "tenant '{}' still has projects; delete them first",
                tenant.name
            )));
        }
        self.tokens_changed();
        tracing::info!(tenant_id = %tenant.id, tenant = %tenant.name, "tenant deleted");
        Ok(())
    }

    /// What a tenant uses of what its quotas bound.
    pub async fn usage(&self, tenant_id: &str) -> Result<TenantUse, ControlError> {
        let projects = self.store.count_tenant_projects(tenant_id).await?;
        let held = self.store.tenant_held_computes(tenant_id).await?;
        Ok(TenantUse {
            projects,
            running_computes: held.len() as u64,
            memory: held.iter().map(|c| compute_memory(&c.config)).sum(),
        })
    }

    // ---- tokens ----

    /// Creates a token for `tenant` on behalf of `creator`; the secret is in the answer only.
    /// A token made with a tenant token expires no later than it, and is revoked with it: a
    /// leaked token cannot outlive its revocation through tokens it made.
    pub async fn create_token(
        &self,
        tenant: &Tenant,
        name: &str,
        expires_at: Option<i64>,
        creator: &Caller,
    ) -> Result<(ApiToken, String), ControlError> {
        if name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(ControlError::Invalid(
                "a token name is at most 100 characters, without control characters".into(),
            ));
        }
        let now = now_ms() as i64;
        if let Some(at) = expires_at
            && at <= now
        {
            return Err(ControlError::Invalid(
                "expires_at is in the past: a token must expire after it is created".into(),
            ));
        }
        let (expires_at, created_by) = match creator {
            Caller::Operator => (expires_at, "operator".to_owned()),
            Caller::Tenant { token_id, .. } => {
                let parent = self.store.token(token_id).await?.ok_or_else(|| {
                    ControlError::NotFound("the token making this request is gone".into())
                })?;
                let capped = match (expires_at, parent.expires_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (capped, parent.id)
            }
        };
        let secret = new_secret();
        let token = ApiToken {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.id.clone(),
            name: name.to_owned(),
            digest: token_digest(&secret),
            created_at: now,
            expires_at,
            revoked_at: None,
            created_by,
        };
        self.store.insert_token(&token).await?;
        tracing::info!(tenant_id = %tenant.id, token_id = %token.id, "token created");
        Ok((token, secret))
    }

    pub async fn list_tokens(&self, tenant: &Tenant) -> Result<Vec<ApiToken>, ControlError> {
        Ok(self.store.tenant_tokens(&tenant.id).await?)
    }

    /// Revokes a token, and the tokens made with it, at once on this replica, and on the
    /// others as soon as the change channel tells them (PostgreSQL). Revoking again changes
    /// nothing (and flushes no cache).
    pub async fn revoke_token(&self, tenant: &Tenant, token_id: &str) -> Result<(), ControlError> {
        let Some(digests) = self
            .store
            .revoke_token(&tenant.id, token_id, now_ms() as i64)
            .await?
        else {
            return Err(ControlError::NotFound(format!(
                "no token '{token_id}' in tenant '{}'",
                tenant.name
            )));
        };
        if !digests.is_empty() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for d in &digests {
                self.tokens.invalidate(d).await;
            }
            tracing::info!(tenant_id = %tenant.id, %token_id, revoked = digests.len(), "token revoked, with the tokens made with it");
        }
        Ok(())
    }

    // ---- quotas ----

    async fn quotas_of(&self, tenant_id: &str) -> Result<(Tenant, Quotas), ControlError> {
        let tenant = self.store.tenant_by_key(tenant_id).await?.ok_or_else(|| {
            ControlError::NotFound(format!("no tenant with id or name '{tenant_id}'"))
        })?;
        // Quotas were checked when set; one that no longer parses limits nothing.
        let quotas = Quotas::parse(&tenant.quotas).unwrap_or_default();
        Ok((tenant, quotas))
    }

    /// Runs `insert` (a project's creation) if the tenant is under its project quota.
    pub async fn with_project_quota<T, F>(
        &self,
        tenant_id: &str,
        insert: F,
    ) -> Result<T, ControlError>
    where
        F: std::future::Future<Output = Result<T, ControlError>>,
    {
        let (tenant, quotas) = self.quotas_of(tenant_id).await?;
        let Some(max) = quotas.max_projects else {
            return insert.await;
        };
        let _gate = self.quota_gate.lock().await;
        let shared = self.store.lock_tenant(&tenant.id).await?;
        let checked = async {
            let used = self.store.count_tenant_projects(&tenant.id).await?;
            if used >= max {
                return Err(ControlError::QuotaExceeded(format!(
                    "tenant '{}' has reached its quota max_projects = {max} ({used} in use); delete a project or ask the operator to raise the quota",
                    tenant.name
                )));
            }
            insert.await
        }
        .await;
        if let Some(lock) = shared {
            lock.release().await;
        }
        checked
    }

    /// Refuses a compute config whose memory alone is over the tenant's memory quota: it
    /// could never start.
    pub async fn check_compute_memory(
        &self,
        project: &Project,
        config: &serde_json::Value,
    ) -> Result<(), ControlError> {
        let (tenant, quotas) = self.quotas_of(&project.tenant_id).await?;
        let wants = compute_memory(config);
        match quotas.max_memory {
            Some(max) if wants > max => Err(ControlError::QuotaExceeded(format!(
                "a compute of {} MiB is over tenant '{}''s quota max_memory = {} MiB",
                wants >> 20,
                tenant.name,
                max >> 20
            ))),
            _ => Ok(()),
        }
    }

    /// Checks that starting `compute` keeps its tenant within its quotas of running computes
    /// and memory, and returns the quota gate to hold until the start is claimed (`None` when
    /// the tenant has neither quota). `Err` is the message for the client.
    pub async fn check_wake(
        &self,
        compute: &Compute,
    ) -> Result<Option<QuotaGuard<'_>>, QuotaRefusal> {
        let refusal = |e: ControlError| QuotaRefusal::Store(format!("{e:#}"));
        let project = self
            .store
            .project_by_key(&compute.project_id)
            .await
            .map_err(|e| QuotaRefusal::Store(format!("{e:#}")))?;
        let Some(project) = project else {
            return Ok(None);
        };
        let (tenant, quotas) = self.quotas_of(&project.tenant_id).await.map_err(refusal)?;
        if quotas.max_running_computes.is_none() && quotas.max_memory.is_none() {
            return Ok(None);
        }
        let local = self.quota_gate.lock().await;
        let shared = self
            .store
            .lock_tenant(&tenant.id)
            .await
            .map_err(|e| QuotaRefusal::Store(format!("{e:#}")))?;
        // From here, a refusal drops the guard: the lock's connection is closed, which
        // releases it (a refusal is rare; an accepted wake releases it cleanly).
        let gate = QuotaGuard {
            _local: local,
            shared,
        };
        let held: Vec<Compute> = self
            .store
            .tenant_held_computes(&tenant.id)
            .await
            .map_err(|e| QuotaRefusal::Store(format!("{e:#}")))?
            .into_iter()
            .filter(|c| c.id != compute.id)
            .collect();
        if let Some(max) = quotas.max_running_computes
            && held.len() as u64 >= max
        {
            return Err(QuotaRefusal::Exceeded(format!(
                "tenant '{}' has reached its quota max_running_computes = {max} ({} running); suspend another of its computes first",
                tenant.name,
                held.len()
            )));
        }
        if let Some(max) = quotas.max_memory {
            let used: u64 = held.iter().map(|c| compute_memory(&c.config)).sum();
            let wants = compute_memory(&compute.config);
            if used.saturating_add(wants) > max {
                return Err(QuotaRefusal::Exceeded(format!(
                    "starting this compute ({} MiB) would put tenant '{}' over its quota max_memory = {} MiB ({} MiB in use)",
                    wants >> 20,
                    tenant.name,
                    max >> 20,
                    used >> 20
                )));
            }
        }
        Ok(Some(gate))
    }

    // ---- audit ----

    pub async fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.store.insert_audit(&entry).await {
            // The change itself happened; losing its audit line is logged loudly.
            tracing::error!(error = %format!("{e:#}"), actor = %entry.actor, method = %entry.method, path = %entry.path, status = entry.status, "cannot write the audit log");
        }
    }

    pub async fn audit(
        &self,
        caller: &Caller,
        tenant: Option<&Tenant>,
        before: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, ControlError> {
        let only = caller.tenant().or(tenant.map(|t| t.id.as_str()));
        Ok(self.store.audit(only, before, limit).await?)
    }
}

/// Held from a quota check to the change it allowed: this process's quota gate and, on
/// PostgreSQL, the tenant's lock across replicas.
pub struct QuotaGuard<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    shared: Option<crate::store::TenantLock>,
}

impl QuotaGuard<'_> {
    /// Releases both, the replicas' lock first.
    pub async fn release(mut self) {
        if let Some(lock) = self.shared.take() {
            lock.release().await;
        }
    }
}

/// Why a wake may not start a compute.
#[derive(Debug)]
pub enum QuotaRefusal {
    Exceeded(String),
    Store(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quotas_parse() {
        let q = Quotas::parse(
            &json!({"max_projects": 3, "max_running_computes": null, "max_memory": "1Gi"}),
        )
        .expect("valid");
        assert_eq!(q.max_projects, Some(3));
        assert_eq!(q.max_running_computes, None);
        assert_eq!(q.max_memory, Some(1 << 30));
        assert_eq!(Quotas::parse(&json!({})).expect("empty"), Quotas::default());
        for bad in [
            json!([]),
            json!({"max_projects": -1}),
            json!({"max_projects": 1.5}),
            json!({"max_projects": "3"}),
            json!({"max_memory": 5}),
            json!({"max_memory": "lots"}),
            json!({"max_disk": 5}),
        ] {
            assert!(Quotas::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_of_configs() {
        assert_eq!(compute_memory(&json!({})), MIN_COMPUTE_MEMORY);
        assert_eq!(
            compute_memory(&json!({"resources": {"memory": "1"}})),
            MIN_COMPUTE_MEMORY
        );
        assert_eq!(
            compute_memory(&json!({"resources": {"memory": "512Mi"}})),
            512 << 20
        );
    }

    #[test]
    fn callers() {
        let t = Caller::Tenant {
            tenant_id: "a".into(),
            token_id: "tok".into(),
        };
        assert!(t.sees("a"));
        assert!(!t.sees("b"));
        assert!(Caller::Operator.sees("b"));
        assert_eq!(t.actor(), "tok");
        assert_eq!(Caller::Operator.actor(), "operator");
    }

    #[test]
    fn secrets() {
        let a = new_secret();
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_ne!(a, new_secret());
        assert_eq!(token_digest("x").len(), 64);
    }
}
