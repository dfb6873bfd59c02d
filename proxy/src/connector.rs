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
//! With pooling on for the project, a parked session of the same compute, user and wire format
//! is taken first (see [`crate::pool`]); a fresh login is the fallback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use doze_gateway::activity::ProjectActivity;
use doze_gateway::{ColdStart, WakeInfo};
use tracing::{debug, warn};

use crate::backend::{self, Backend, Login};
use crate::config::ProxyConfig;
use crate::control::Control;
use crate::error::ProxyError;
use crate::metrics;
use crate::pool::{self, Discard, Pool, SessionKey};
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
    /// Idle logged-in sessions, per project.
    pub pool: Arc<Pool>,
}

impl Connector {
    pub fn new(cfg: &ProxyConfig) -> Self {
        Self {
            wake_timeout: cfg.wake_timeout,
            connect_timeout: cfg.connect_timeout,
            login_timeout: cfg.backend_login_timeout,
            retries: 1,
            tls: cfg.backend_tls.clone(),
            pool: Pool::new(cfg.pool.clone()),
        }
    }

    /// A backend of `project_id`'s compute, logged in as `login` says.
    /// `pooled` is the project's activity record when its sessions may be reused.
    pub async fn backend_for<C: Control>(
        &self,
        control: &C,
        project_id: &str,
        login: &Login<'_>,
        pooled: Option<&ProjectActivity>,
    ) -> Result<Backend, ProxyError> {
        let pooled = pooled.filter(|_| self.pool.enabled());
        let mut retries_left = self.retries;
        let mut full_retried = false;
        loop {
            let wake = self.wake(control, project_id).await?;
            let key = pooled.map(|_| session_key(&wake, login));
            if let (Some(activity), Some(key)) = (pooled, &key) {
                if let Some(backend) = self.take_pooled(project_id, activity, key, login).await? {
                    metrics::pool_checkout("hit");
                    return Ok(backend);
                }
                metrics::pool_checkout("miss");
            }
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
                Ok(Err(ProxyError::BackendErr(e)))
                    if matches!(e.code, 1040 | 1203)
                        && !full_retried
                        && self.pool.idle(project_id) > 0 =>
                {
                    // The compute's connection limit (or the user's) is taken up partly by
                    // parked sessions: give them back, and try once more.
                    warn!(compute = %wake.compute_id, code = e.code, "the compute refused a login for too many connections; closing the project's parked sessions and retrying");
                    self.pool.drain_project(project_id);
                    full_retried = true;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(logged_in) => {
                    let mut backend = logged_in?;
                    metrics::backend_login().record(started.elapsed().as_secs_f64());
                    backend.address = wake.address;
                    backend.compute_id = wake.compute_id;
                    backend.pool_key = key;
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

    /// What carries out KILLs on computes (cheap to clone into a task).
    pub fn killer(&self) -> Killer {
        Killer {
            connect_timeout: self.connect_timeout,
            login_timeout: self.login_timeout,
            tls: self.tls.clone(),
        }
    }

    /// A parked session for `login`, switched to its database; `None` when none fits (or the
    /// ones that did failed: a fresh login follows). A database the compute refuses is the
    /// client's error, as at a fresh login.
    async fn take_pooled(
        &self,
        project_id: &str,
        activity: &ProjectActivity,
        key: &SessionKey,
        login: &Login<'_>,
    ) -> Result<Option<Backend>, ProxyError> {
        while let Some(parked) = self.pool.take(project_id, activity, key, login.database) {
            let mut backend = parked.backend;
            if let Some(db) = login
                .database
                .filter(|db| parked.database.as_deref() != Some(*db))
            {
                match tokio::time::timeout(
                    self.login_timeout,
                    pool::init_db(&mut backend.stream, db),
                )
                .await
                {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(refused))) => {
                        pool::close(backend, Discard::InitDb);
                        return Err(ProxyError::BackendErr(refused));
                    }
                    Ok(Err(why)) => {
                        debug!(
                            thread_id = backend.thread_id,
                            "pooled session failed COM_INIT_DB: {why}"
                        );
                        pool::close(backend, Discard::Stale);
                        continue;
                    }
                    Err(_) => {
                        pool::close(backend, Discard::Stale);
                        continue;
                    }
                }
            }
            backend.ok_payload = bytes::Bytes::copy_from_slice(&pool::pooled_ok(parked.status));
            backend.pool_key = Some(key.clone());
            debug!(
                thread_id = backend.thread_id,
                "reusing a pooled backend session"
            );
            return Ok(Some(backend));
        }
        Ok(None)
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

/// What a parked session must match to serve `login` on the compute `wake` names.
fn session_key(wake: &WakeInfo, login: &Login<'_>) -> SessionKey {
    SessionKey {
        address: wake.address.clone(),
        compute_id: wake.compute_id.clone(),
        user: login.user.to_owned(),
        stored: login.credentials.stored,
        collation: login.collation,
        capabilities: SessionKey::key_capabilities(login.capabilities),
        client_ip: login.proxy_header.map(|(client, _)| client.ip()),
    }
}

/// Why a KILL was not carried out.
#[derive(Debug)]
pub enum KillError {
    /// The target no longer serves the client it was named for.
    Gone,
    /// The compute's own ERR (for the client).
    Refused(doze_protocol::ErrPacket),
    /// The compute could not be reached or logged in to.
    Failed(String),
    /// The KILL was sent but no answer came back: the compute may still carry it out, late.
    Unanswered(String),
}

/// Runs KILL statements on computes over a separate login as the target's user (MariaDB lets a
/// user kill their own sessions; doze needs no privileged account on the compute).
#[derive(Clone)]
pub struct Killer {
    connect_timeout: Duration,
    login_timeout: Duration,
    tls: Option<BackendTls>,
}

impl Killer {
    /// Logs in to `address` as `user`, checks `still_target()` (right before sending: the
    /// session may have gone back to the pool while this logged in), then sends
    /// `KILL [QUERY] thread_id`.
    pub async fn kill_thread(
        &self,
        address: &str,
        user: &str,
        credentials: &crate::auth::Credentials,
        thread_id: u32,
        query_only: bool,
        still_target: impl FnOnce() -> bool,
    ) -> Result<(), KillError> {
        use doze_protocol::Capabilities;
        let login = Login {
            user,
            database: None,
            credentials,
            capabilities: Capabilities::PROTOCOL_41
                | Capabilities::SECURE_CONNECTION
                | Capabilities::PLUGIN_AUTH
                | Capabilities::TRANSACTIONS,
            collation: 45,
            max_packet: 1 << 24,
            attributes: None,
            proxy_header: None,
        };
        let fail = |e: &dyn std::fmt::Display| KillError::Failed(e.to_string());
        let tcp = backend::connect(address, self.connect_timeout)
            .await
            .map_err(|e| fail(&e))?;
        let mut control = tokio::time::timeout(
            self.login_timeout,
            backend::login(tcp, &login, self.tls.as_ref()),
        )
        .await
        .map_err(|_| fail(&"the login timed out"))?
        .map_err(|e| fail(&e))?;
        if !still_target() {
            pool::quit(control.stream);
            return Err(KillError::Gone);
        }
        let statement = if query_only {
            format!("\x03KILL QUERY {thread_id}")
        } else {
            format!("\x03KILL {thread_id}")
        };
        // Once a byte of the statement may have left, a missing answer does not mean the
        // KILL will not happen: the compute may still run it after this connection is gone.
        let unanswered = |e: &dyn std::fmt::Display| KillError::Unanswered(e.to_string());
        let answer = tokio::time::timeout(self.login_timeout, async {
            crate::stream::write_payload(&mut control.stream, 0, statement.as_bytes()).await?;
            crate::stream::read_packet(&mut control.stream, 1 << 16)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(|_| unanswered(&"the compute did not answer the KILL in time"))?
        .map_err(|e| unanswered(&e))?;
        pool::quit(control.stream);
        match answer.payload.first() {
            Some(0x00) => Ok(()),
            Some(0xff) => match doze_protocol::ErrPacket::decode(&answer.payload) {
                Ok(err) => Err(KillError::Refused(err)),
                Err(e) => Err(fail(&e)),
            },
            _ => Err(fail(&"unexpected answer to KILL")),
        }
    }
}
