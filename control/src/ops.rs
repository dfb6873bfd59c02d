//! Project, compute and role operations behind the REST API (and the binary's CLI).

use crate::ControlPlane;
use crate::activity::now_ms;
use crate::driver::RoleOp;
use crate::error::ControlError;
use crate::gateway::WakeInfo;
use crate::roles::{self, RoleDef};
use crate::store::{Compute, ComputeEvent, ComputeState, Project, Role, is_unique_violation};

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

/// Ten years: longer idle timeouts are a typo.
const MAX_IDLE_TIMEOUT_SECS: f64 = 315_360_000.0;

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
    Ok(())
}

impl ControlPlane {
    pub async fn create_project(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<Project, ControlError> {
        validate_project_name(name).map_err(ControlError::Invalid)?;
        validate_project_config(&config).map_err(ControlError::Invalid)?;
        let project = Project {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            config,
            created_at: now_ms() as i64,
        };
        match self.store.insert_project(&project).await {
            Ok(()) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(ControlError::Conflict(format!(
                    "a project named '{name}' already exists"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.roles_changed();
        tracing::info!(project_id = %project.id, project = %project.name, "project created");
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

    /// Stops and removes the project's compute, deletes its storage, roles and the project.
    /// Refused (409) while client sessions are open.
    pub async fn delete_project(&self, key: &str) -> Result<Project, ControlError> {
        let project = self.project(key).await?;
        let slot = self.slot(&project.id);
        let _guard = slot.lock.lock().await;
        self.suspend_locked(&project.id, "deleted", true).await?;
        let compute = self.store.compute_for_project(&project.id).await?;
        self.driver.destroy_storage(&project.id).await?;
        self.store.delete_project(&project.id).await?;
        if let Some(c) = compute {
            self.gauge_move(Some(c.state), None);
        }
        self.wake_cache.invalidate(&project.id);
        self.roles_changed();
        self.activity.remove(&project.id);
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&project.id);
        tracing::info!(project_id = %project.id, project = %project.name, "project deleted");
        Ok(project)
    }

    /// Creates the project's compute (one per project), suspended: the first wake starts it
    /// (and initialises its storage if the project has none yet).
    pub async fn create_compute(
        &self,
        project_key: &str,
        config: serde_json::Value,
    ) -> Result<Compute, ControlError> {
        let project = self.project(project_key).await?;
        self.driver
            .validate_config(&config)
            .map_err(ControlError::Invalid)?;
        let now = now_ms() as i64;
        let compute = Compute {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project.id.clone(),
            state: ComputeState::Suspended,
            address: None,
            handle: None,
            config,
            created_at: now,
            updated_at: now,
            last_error: None,
            roles_dirty: true,
        };
        let slot = self.slot(&project.id);
        let _guard = slot.lock.lock().await;
        match self.store.insert_compute(&compute).await {
            Ok(()) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(ControlError::Conflict(format!(
                    "project '{}' already has a compute; delete it first",
                    project.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.gauge_move(None, Some(compute.state));
        tracing::info!(project_id = %project.id, compute_id = %compute.id, "compute created");
        Ok(compute)
    }

    pub async fn compute(&self, id: &str) -> Result<Compute, ControlError> {
        self.store
            .compute(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("no compute with id '{id}'")))
    }

    pub async fn compute_events(&self, id: &str) -> Result<Vec<ComputeEvent>, ControlError> {
        self.compute(id).await?;
        Ok(self.store.events(id).await?)
    }

    /// Stops (if needed) and removes a compute; its project's storage is kept.
    pub async fn delete_compute(&self, id: &str) -> Result<Compute, ControlError> {
        let compute = self.compute(id).await?;
        let slot = self.slot(&compute.project_id);
        let _guard = slot.lock.lock().await;
        self.suspend_locked(&compute.project_id, "deleted", true)
            .await?;
        let current = self.compute(id).await?;
        self.store.delete_compute(id).await?;
        self.gauge_move(Some(current.state), None);
        self.wake_cache.invalidate(&compute.project_id);
        tracing::info!(project_id = %compute.project_id, compute_id = %id, "compute deleted");
        Ok(current)
    }

    /// Suspends a compute now; 409 while client sessions are open.
    pub async fn suspend_compute(&self, id: &str) -> Result<Compute, ControlError> {
        let compute = self.compute(id).await?;
        self.suspend_project(&compute.project_id, "api", true)
            .await?;
        self.compute(id).await
    }

    /// Resumes a compute through the wake path; returns once it accepts connections.
    pub async fn resume_compute(&self, id: &str) -> Result<(Compute, WakeInfo), ControlError> {
        let compute = self.compute(id).await?;
        let info = self.wake(&compute.project_id).await?;
        Ok((self.compute(id).await?, info))
    }

    pub async fn create_role(
        &self,
        project_key: &str,
        name: &str,
        password: &str,
    ) -> Result<Role, ControlError> {
        let project = self.project(project_key).await?;
        roles::validate_role_name(name).map_err(ControlError::Invalid)?;
        roles::validate_password(password).map_err(ControlError::Invalid)?;
        let role = Role {
            project_id: project.id.clone(),
            name: name.to_owned(),
            stored_hash: roles::format_stored_hash(&roles::stored_hash(password.as_bytes())),
            created_at: now_ms() as i64,
        };
        match self.store.insert_role(&role).await {
            Ok(()) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(ControlError::Conflict(format!(
                    "role '{name}' already exists in project '{}'; change its password with PUT",
                    project.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let def = RoleDef {
            name: role.name.clone(),
            stored_hash: role.stored_hash.clone(),
        };
        let pushed = self
            .push_role_change(&project.id, RoleOp::Upsert(def))
            .await;
        self.roles_changed();
        pushed?;
        tracing::info!(project_id = %project.id, role = %name, "role created");
        Ok(role)
    }

    /// Changes a role's password.
    pub async fn set_role_password(
        &self,
        project_key: &str,
        name: &str,
        password: &str,
    ) -> Result<Role, ControlError> {
        let project = self.project(project_key).await?;
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
        let def = RoleDef {
            name: name.to_owned(),
            stored_hash: hash,
        };
        let pushed = self
            .push_role_change(&project.id, RoleOp::Upsert(def))
            .await;
        self.roles_changed();
        pushed?;
        tracing::info!(project_id = %project.id, role = %name, "role password changed");
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

    pub async fn delete_role(&self, project_key: &str, name: &str) -> Result<(), ControlError> {
        let project = self.project(project_key).await?;
        if !self.store.delete_role(&project.id, name).await? {
            return Err(ControlError::NotFound(format!(
                "no role '{name}' in project '{}'",
                project.name
            )));
        }
        let pushed = self
            .push_role_change(&project.id, RoleOp::Drop(name.to_owned()))
            .await;
        self.roles_changed();
        pushed?;
        tracing::info!(project_id = %project.id, role = %name, "role deleted");
        Ok(())
    }
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
