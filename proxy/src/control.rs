//! The proxy's seam to a control plane: the four things the data path asks of it: who is this
//! role (and its stored hash), where is the project's compute (waking it if needed), "that
//! address just failed", and where to count a project's sessions.
//!
//! Two implementations: the embedded control plane (`doze serve`, with the `control-plane`
//! feature; this module holds the only adapter that names it), and a static routes file
//! (`doze serve --routes`) for people who only want the proxy.

use std::future::Future;
use std::sync::Arc;

use doze_gateway::activity::ProjectActivity;
use doze_gateway::{LookupError, RoleLookup, WakeError, WakeInfo};

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

#[cfg(feature = "control-plane")]
impl Control for Arc<doze_control::ControlPlane> {
    async fn lookup_role(&self, project_key: &str, user: &str) -> Result<RoleLookup, LookupError> {
        doze_control::ControlPlane::lookup_role(self, project_key, user).await
    }

    async fn wake(&self, project_id: &str) -> Result<WakeInfo, WakeError> {
        doze_control::ControlPlane::wake(self, project_id).await
    }

    fn invalidate(&self, project_id: &str) {
        doze_control::ControlPlane::invalidate(self, project_id)
    }

    fn activity(&self, project_id: &str) -> Arc<ProjectActivity> {
        doze_control::ControlPlane::activity(self).project(project_id)
    }
}
