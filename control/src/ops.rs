//! The lifecycle's side of the admin operations: computes created, deleted, suspended and
//! resumed, and a project's storage removed, each under the project's lock.

use crate::activity::now_ms;
use crate::config::SuspendMode;
use crate::driver::ComputeSpec;
use crate::error::ControlError;
use crate::gateway::WakeInfo;
use crate::lifecycle::Lifecycle;
use crate::store::{Compute, ComputeEvent, ComputeState, Project, is_unique_violation};

impl Lifecycle {
    /// Stops and removes the project's compute and deletes its storage and the project's
    /// records. Refused (409) while client sessions are open.
    pub(crate) async fn delete_project(&self, project: &Project) -> Result<(), ControlError> {
        let slot = self.slot(&project.id);
        let _guard = slot.lock.lock().await;
        self.suspend_locked(&project.id, "deleted", true).await?;
        let compute = self.store.compute_for_project(&project.id).await?;
        if let Some(c) = &compute {
            self.delete_record(c).await?;
        }
        self.driver.destroy_storage(&project.id).await?;
        self.store.delete_project(&project.id).await?;
        if let Some(c) = compute {
            self.gauge_move(Some(c.state), None);
        }
        self.invalidate(&project.id);
        self.activity.remove(&project.id);
        self.forget_slot(&project.id);
        tracing::info!(project_id = %project.id, project = %project.name, "project deleted");
        Ok(())
    }

    /// Creates the project's compute (one per project), suspended: the first wake starts it
    /// (and initialises its storage if the project has none yet). The driver checks `config`.
    pub(crate) async fn create_compute(
        &self,
        project: &Project,
        config: serde_json::Value,
    ) -> Result<Compute, ControlError> {
        validate_compute_config_shape(&config).map_err(ControlError::Invalid)?;
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
            epoch: 0,
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
        let spec = ComputeSpec {
            project_id: compute.project_id.clone(),
            compute_id: compute.id.clone(),
            config: compute.config.clone(),
            roles: None,
        };
        if let Err(e) = self.driver.provision(&spec).await {
            // Nothing half-made is left behind: no record without its storage.
            let _ = self.store.delete_compute(&compute.id).await;
            return Err(ControlError::Internal(
                e.context("the compute's storage could not be created"),
            ));
        }
        self.gauge_move(None, Some(compute.state));
        tracing::info!(project_id = %project.id, compute_id = %compute.id, "compute created");
        Ok(compute)
    }

    /// Deletes a stopped compute's record, first: another replica can then no longer start
    /// it while its storage is being removed.
    async fn delete_record(&self, c: &Compute) -> Result<(), ControlError> {
        if self.store.delete_stopped_compute(c).await? {
            return Ok(());
        }
        Err(ControlError::Conflict(format!(
            "the compute {} was woken or changed by another doze replica during the delete; retry",
            c.id
        )))
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
        self.delete_record(&current).await?;
        self.driver.compute_deleted(&compute.project_id).await?;
        self.gauge_move(Some(current.state), None);
        self.invalidate(&compute.project_id);
        tracing::info!(project_id = %compute.project_id, compute_id = %id, "compute deleted");
        Ok(current)
    }

    /// Suspends a compute now: stops it (a frozen one is thawed and stopped) or freezes it;
    /// 409 while client sessions are open.
    pub async fn suspend_compute(
        &self,
        id: &str,
        mode: SuspendMode,
    ) -> Result<Compute, ControlError> {
        let compute = self.compute(id).await?;
        match mode {
            SuspendMode::Stop => {
                self.suspend_project(&compute.project_id, "api", true)
                    .await?;
            }
            SuspendMode::Freeze => {
                self.freeze_project(&compute.project_id, "api").await?;
            }
        }
        self.compute(id).await
    }

    /// Resumes a compute through the wake path; returns once it accepts connections.
    pub async fn resume_compute(&self, id: &str) -> Result<(Compute, WakeInfo), ControlError> {
        let compute = self.compute(id).await?;
        let info = self.wake(&compute.project_id).await?;
        Ok((self.compute(id).await?, info))
    }
}

/// The types the OpenAPI document gives a compute config's known fields, whatever the driver
/// (the driver then checks their values): a config stored with `"image": false` would be
/// returned in every answer about the compute, against the document.
fn validate_compute_config_shape(config: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let Some(obj) = config.as_object() else {
        return Err("config must be a JSON object".into());
    };
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    if let Some(v) = obj.get("image")
        && !(v.is_null() || v.is_string())
    {
        return Err(format!(
            "config.image must be a string (an image reference), not {}",
            kind(v)
        ));
    }
    if let Some(v) = obj.get("mariadb_options")
        && !(v.is_null() || v.is_object())
    {
        return Err(format!(
            "config.mariadb_options must be an object of server options, not {}",
            kind(v)
        ));
    }
    match obj.get("resources") {
        None | Some(Value::Null) => {}
        Some(Value::Object(r)) => {
            if let Some(v) = r.get("cpu")
                && !(v.is_null() || v.is_string() || v.is_number())
            {
                return Err(format!(
                    "config.resources.cpu must be a quantity like \"500m\", not {}",
                    kind(v)
                ));
            }
            if let Some(v) = r.get("memory")
                && !(v.is_null() || v.is_string())
            {
                return Err(format!(
                    "config.resources.memory must be a quantity like \"1Gi\", not {}",
                    kind(v)
                ));
            }
        }
        Some(v) => {
            return Err(format!(
                "config.resources must be an object like {{\"memory\": \"1Gi\"}}, not {}",
                kind(v)
            ));
        }
    }
    Ok(())
}
