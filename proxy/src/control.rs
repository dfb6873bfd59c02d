//! The three questions the data path asks the control plane: who is this role (and its stored
//! hash), where is the project's compute (waking it if needed), and "that address just failed".
//!
//! Two implementations: the embedded control plane (`doze serve`), and a static routes file
//! (`doze serve --routes`) for people who only want the proxy.

use std::future::Future;
use std::sync::Arc;

use doze_control::ControlPlane;
use doze_control::activity::ProjectActivity;
use doze_control::gateway::{LookupError, RoleLookup, WakeError, WakeInfo};

/// What the proxy needs from a control plane.
pub trait Control: Send + Sync + 'static {
    /// Resolves `project_key` (a project's name or id) and the role `user` within it.
    fn lookup_role(
        &self,
        project_key: &str,
        user: &str,
    ) -> impl Future<Output = Result<RoleLookup, LookupError>> + Send;

    /// The address of the project's running compute, waking it when suspended.
    fn wake(&self, project_id: &str) -> impl Future<Output = Result<WakeInfo, WakeError>> + Send;

    /// Forgets a cached address that refused a connection.
    fn invalidate(&self, project_id: &str);

    /// The activity record the scheduler reads for `project_id`.
    fn activity(&self, project_id: &str) -> Arc<ProjectActivity>;
}

impl Control for Arc<ControlPlane> {
    async fn lookup_role(&self, project_key: &str, user: &str) -> Result<RoleLookup, LookupError> {
        ControlPlane::lookup_role(self, project_key, user).await
    }

    async fn wake(&self, project_id: &str) -> Result<WakeInfo, WakeError> {
        ControlPlane::wake(self, project_id).await
    }

    fn invalidate(&self, project_id: &str) {
        ControlPlane::invalidate(self, project_id)
    }

    fn activity(&self, project_id: &str) -> Arc<ProjectActivity> {
        ControlPlane::activity(self).project(project_id)
    }
}
