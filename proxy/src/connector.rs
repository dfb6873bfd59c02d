//! Phases 4-5: how a session gets a logged-in backend. The one interface between a connection
//! and the computes: wake the project, connect, log in as the client, with the retry policy:
//!
//! - a cached address that refuses the connection is dropped and the project woken once more
//!   (the compute was stopped or crashed since);
//! - a compute that accepts but does not answer the login within `--backend-login-timeout` is
//!   dropped too and the project woken again, which checks that the compute lives and starts
//!   it when it does not; only a compute at a new address gets a second login, a live but hung
//!   one gets the client a clear ERR instead of a second wait.
//!
//! A pool of authenticated sessions goes behind [`Connector::backend_for`] without touching the
//! connection's code.

use std::time::{Duration, Instant};

use doze_gateway::{ColdStart, WakeInfo};
use tracing::{debug, warn};

use crate::backend::{self, Backend, Login};
use crate::config::ProxyConfig;
use crate::control::Control;
use crate::error::ProxyError;
use crate::metrics;
use crate::tls::BackendTls;

/// Connects sessions to computes with fresh logins.
pub struct Connector {
    wake_timeout: Duration,
    connect_timeout: Duration,
    login_timeout: Duration,
    /// Extra wakes after a failed connect or login (the policy above: one).
    retries: u32,
    /// `--backend-tls require`.
    tls: Option<BackendTls>,
}

impl Connector {
    pub fn new(cfg: &ProxyConfig) -> Self {
        Self {
            wake_timeout: cfg.wake_timeout,
            connect_timeout: cfg.connect_timeout,
            login_timeout: cfg.backend_login_timeout,
            retries: 1,
            tls: cfg.backend_tls.clone(),
        }
    }

    /// A backend of `project_id`'s compute, logged in as `login` says.
    pub async fn backend_for<C: Control>(
        &self,
        control: &C,
        project_id: &str,
        login: &Login<'_>,
    ) -> Result<Backend, ProxyError> {
        let mut retries_left = self.retries;
        loop {
            let wake = self.wake(control, project_id).await?;
            let started = Instant::now();
            let tcp = match backend::connect(&wake.address, self.connect_timeout).await {
                Ok(tcp) => tcp,
                Err(e) if retries_left > 0 => {
                    warn!(compute = %wake.compute_id, "compute refused the connection ({e}); waking again");
                    control.invalidate(project_id);
                    retries_left -= 1;
                    continue;
                }
                Err(e) => return Err(ProxyError::BackendConnect(e)),
            };
            let timeout = self.login_timeout;
            match tokio::time::timeout(timeout, backend::login(tcp, login, self.tls.as_ref())).await
            {
                Ok(logged_in) => {
                    let backend = logged_in?;
                    metrics::backend_login().record(started.elapsed().as_secs_f64());
                    return Ok(backend);
                }
                Err(_) => {
                    warn!(compute = %wake.compute_id, "the compute did not answer the login within {timeout:?}; checking it");
                    control.invalidate(project_id);
                    if retries_left == 0 || !self.moved(control, project_id, &wake.address).await? {
                        return Err(ProxyError::BackendLoginTimeout(timeout));
                    }
                    retries_left -= 1;
                }
            }
        }
    }

    /// Wakes the project again and says whether a login is worth retrying: the compute now has
    /// another address, or it was frozen (a replica handed out its address just before it was
    /// frozen) and this wake thawed it.
    async fn moved<C: Control>(
        &self,
        control: &C,
        project_id: &str,
        stuck: &str,
    ) -> Result<bool, ProxyError> {
        let again = self.wake(control, project_id).await?;
        Ok(again.address != stuck || again.cold_start == ColdStart::Thawed)
    }

    /// Phase 4: the compute's address, bounded by the wake timeout.
    async fn wake<C: Control>(
        &self,
        control: &C,
        project_id: &str,
    ) -> Result<WakeInfo, ProxyError> {
        let timeout = self.wake_timeout;
        let started = Instant::now();
        let woken = tokio::time::timeout(timeout, control.wake(project_id))
            .await
            .map_err(|_| ProxyError::WakeTimeout(timeout.as_secs()))?;
        let waited = started.elapsed();
        match woken {
            Ok(info) => {
                metrics::wake_wait(info.cold_start.as_str()).record(waited.as_secs_f64());
                debug!(cold_start = %info.cold_start, ms = waited.as_secs_f64() * 1e3, "compute ready");
                Ok(info)
            }
            Err(e) => {
                metrics::wake_wait("failed").record(waited.as_secs_f64());
                Err(ProxyError::Wake(e))
            }
        }
    }
}
