//! The local driver: one `mariadbd` process per running compute on this machine.
//!
//! Every compute runs as an OS account of its own when doze runs as root: a uid (and gid) of
//! [`COMPUTE_UIDS`], chosen at the project's first start, recorded in `compute.uid`, and found
//! in no passwd database (mariadbd needs no name for it: doze switches to it before exec).
//! Another compute, even one a flaw in MariaDB let run code, cannot enter a project's
//! directories. Without root, every compute runs as doze's own user.
//!
//! Layout of a project, and who may enter what (doze as root):
//!
//! ```text
//! <data_dir>/                    doze     0711 (0700 when doze is not root)
//!   projects/                    doze     0711
//!     <project_id>/              doze     0711
//!       admin.secret             doze     0600  the compute's root password, held by doze only
//!       compute.uid              doze     0600  the compute's own uid
//!       data/                    compute  0700  the MariaDB datadir, with the unix socket
//!       tmp/                     compute  0700  the server's TMPDIR
//!       files/                   compute  0700  secure_file_priv
//! ```
//!
//! Each start gets a fresh free port on 127.0.0.1. Ready means a MySQL greeting on the port.
//! Stop is SIGTERM (clean InnoDB shutdown) and SIGKILL after the grace period.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;
use nix::sys::signal::Signal;
use tokio::process::Child;

use super::{BoxFuture, ComputeDriver, ComputeSpec, RoleOp, Running};
use crate::driver::accounts;
use crate::driver::freezer::Freezer;
use crate::driver::mariadb::{self, ServerSpec, TRAVERSE_ONLY_DIR};

/// The uids (and gids) computes run as when doze is root: far above the ranges distributions
/// give users (1000..60000), systemd's dynamic users (61184..65519) and the usual subordinate
/// id ranges of containers (100000 up, 65536 per user).
pub const COMPUTE_UIDS: std::ops::Range<u32> = 3_000_000_000..3_001_000_000;

/// Bound of doze's root login to a compute (its socket accepts even when the server hangs).
const ROOT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of doze's administrative work in a compute (role changes, the process list).
const ROOT_WORK_TIMEOUT: Duration = Duration::from_secs(15);

/// InnoDB's semaphore watchdog at its maximum, for computes that may be frozen.
const SEMAPHORE_WAIT_UNLIMITED: &str = "--innodb-fatal-semaphore-wait-threshold=4294967295";

/// Default buffer pool when the compute config has no `resources.memory`.
const DEFAULT_BUFFER_POOL: &str = "64M";
const MIN_BUFFER_POOL: u64 = 16 * 1024 * 1024;

struct Instance {
    /// `None` for a server adopted from a previous run of doze (not our child).
    child: Option<Child>,
    pid: u32,
    socket: PathBuf,
}

pub struct LocalDriver {
    data_dir: PathBuf,
    max_allowed_packet: String,
    stop_timeout: Duration,
    ready_timeout: Duration,
    instances: Mutex<HashMap<String, Instance>>,
    /// Serialises the choice of new compute uids.
    uids: Mutex<()>,
    /// Serialises setting root passwords on running older computes.
    sealing: tokio::sync::Mutex<()>,
    /// How computes are frozen; `None`: they are not.
    freezer: Option<Freezer>,
}

impl LocalDriver {
    /// `data_dir` should be absolute (the control plane canonicalises it).
    pub fn new(
        data_dir: PathBuf,
        max_allowed_packet: String,
        stop_timeout: Duration,
        ready_timeout: Duration,
    ) -> Self {
        Self {
            data_dir,
            max_allowed_packet,
            stop_timeout,
            ready_timeout,
            instances: Mutex::new(HashMap::new()),
            uids: Mutex::new(()),
            sealing: tokio::sync::Mutex::new(()),
            freezer: None,
        }
    }

    /// Lets the driver freeze computes with `freezer`.
    pub fn with_freezer(mut self, freezer: Option<Freezer>) -> Self {
        self.freezer = freezer;
        self
    }

    /// The pid of the project's server: the one this driver runs, else the recorded handle
    /// when that pid still is a mariadbd on this project's datadir (a pid from the store may
    /// have been reused by any process by now).
    fn pid_of(&self, project_id: &str, handle: Option<&str>) -> Option<u32> {
        if let Some(pid) = self.instances().get(project_id).map(|i| i.pid) {
            return Some(pid);
        }
        handle
            .and_then(|h| h.parse().ok())
            .filter(|pid| pid_alive(*pid) && serves_datadir(*pid, &self.datadir(project_id)))
    }

    /// Thaws whatever server serves the project (before a stop or an adoption: a frozen
    /// process neither handles SIGTERM nor answers a probe), however it was frozen: by this
    /// doze, another doze process, or an earlier run with another freezer.
    fn thaw_any(&self, project_id: &str, pid: Option<u32>) {
        let Some(pid) = pid.or_else(|| self.find_leftover(project_id, None)) else {
            return;
        };
        if let Some(freezer) = &self.freezer
            && let Err(e) = freezer.thaw(project_id, pid)
        {
            tracing::warn!(project_id, pid, error = %format!("{e:#}"), "thawing the compute failed");
        }
        crate::driver::freezer::thaw_anywhere(project_id, pid);
    }

    /// The OS account of the project's compute (see the module docs): its own uid when doze
    /// runs as root, chosen and recorded on first use; doze's own account otherwise.
    pub fn compute_owner(&self, project_id: &str) -> anyhow::Result<mariadb::Owner> {
        if !mariadb::running_as_root() {
            return Ok(None);
        }
        let _choosing = self.uids.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.project_dir(project_id).join("compute.uid");
        if let Some(uid) = read_uid(&path)? {
            return Ok(Some(owner_of(uid)));
        }
        let taken: std::collections::HashSet<u32> =
            std::fs::read_dir(self.data_dir.join("projects"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| read_uid(&e.path().join("compute.uid")).ok().flatten())
                .collect();
        check_uid_map()?;
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let uid = rand::Rng::random_range(&mut rng, COMPUTE_UIDS);
            let in_use = taken.contains(&uid)
                || nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .is_some()
                || nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(uid))
                    .ok()
                    .flatten()
                    .is_some();
            if !in_use {
                write_private_file(&path, &uid.to_string())?;
                tracing::info!(
                    project_id,
                    uid,
                    "the compute runs as an OS account of its own"
                );
                return Ok(Some(owner_of(uid)));
            }
        }
        bail!("no free uid left in {COMPUTE_UIDS:?} for the compute of project {project_id}")
    }

    pub fn project_dir(&self, project_id: &str) -> PathBuf {
        self.data_dir.join("projects").join(project_id)
    }

    pub fn datadir(&self, project_id: &str) -> PathBuf {
        self.project_dir(project_id).join("data")
    }

    fn socket_path(&self, project_id: &str) -> PathBuf {
        let socket = self.datadir(project_id).join("mariadbd.sock");
        if socket.as_os_str().len() > 100 {
            self.long_path_socket_dir(project_id).join("mariadbd.sock")
        } else {
            socket
        }
    }

    /// A private directory in the temp dir for a socket whose datadir path is too long for a
    /// unix socket address.
    fn long_path_socket_dir(&self, project_id: &str) -> PathBuf {
        std::env::temp_dir().join(format!("doze-{project_id}"))
    }

    /// The file holding the compute's root password.
    pub fn admin_secret_path(&self, project_id: &str) -> PathBuf {
        self.project_dir(project_id).join("admin.secret")
    }

    fn admin_secret(&self, project_id: &str) -> anyhow::Result<Option<String>> {
        let path = self.admin_secret_path(project_id);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Creates doze's directories down to the project's, each passable but not listable by
    /// the compute user, and checks the compute user can reach them.
    fn prepare_project_dir(&self, project_id: &str) -> anyhow::Result<()> {
        let mode = if mariadb::running_as_root() {
            TRAVERSE_ONLY_DIR
        } else {
            mariadb::PRIVATE_DIR
        };
        let projects = self.data_dir.join("projects");
        // The data dir may be the operator's (made before doze ran, owned by someone else):
        // then it keeps its mode. The directories below it are doze's.
        let me = nix::unistd::geteuid().as_raw();
        let data_dir_is_ours = std::fs::metadata(&self.data_dir)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == me)
            .unwrap_or(true);
        if data_dir_is_ours {
            mariadb::own_dir(&self.data_dir, mode, None)?;
        }
        for dir in [&projects, &self.project_dir(project_id)] {
            mariadb::own_dir(dir, mode, None)?;
        }
        mariadb::check_reachable(
            &self.project_dir(project_id),
            self.compute_owner(project_id)?,
        )
    }

    fn instances(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server spec of a project's next start.
    pub fn server_spec(
        &self,
        project_id: &str,
        config: &serde_json::Value,
        port: u16,
    ) -> anyhow::Result<ServerSpec> {
        let datadir = self.datadir(project_id);
        let mut spec = ServerSpec::in_datadir(&datadir, port);
        spec.owner = self.compute_owner(project_id)?;
        spec.socket = self.socket_path(project_id);
        spec.secure_file_priv = Some(self.project_dir(project_id).join("files"));
        spec.max_allowed_packet = self.max_allowed_packet.clone();
        spec.buffer_pool = buffer_pool_for(config)?;
        spec.extra_args = mariadb_options(config)?;
        if self.freezer.is_some() {
            // InnoDB aborts the server when a latch wait passes this threshold (600 s by
            // default), and a wait that spans a freeze counts the frozen time: the maximum
            // keeps a thaw hours later from killing the server.
            spec.extra_args
                .insert(0, SEMAPHORE_WAIT_UNLIMITED.to_owned());
        }
        Ok(spec)
    }

    async fn ensure_storage(&self, project_id: &str) -> anyhow::Result<()> {
        let datadir = self.datadir(project_id);
        let owner = self.compute_owner(project_id)?;
        if datadir.join("mysql").is_dir() {
            // Storage of an older doze (owned by `mysql`) moves to the compute's own account.
            mariadb::hand_to(&datadir, owner)?;
            if self.admin_secret(project_id)?.is_none() {
                // Made by a doze that left root without a password: seal it now.
                tracing::info!(
                    project_id,
                    "setting a root password on older compute storage"
                );
                let password = self.pending_admin_secret(project_id)?;
                mariadb::seal_root(&datadir, &password, owner).await?;
                self.commit_admin_secret(project_id)?;
            }
            return Ok(());
        }
        if datadir.join("ibdata1").exists() {
            bail!(
                "the datadir {} is damaged: it has InnoDB files but no `mysql` schema",
                datadir.display()
            );
        }
        if datadir.exists() {
            // A half-finished initialisation: nothing of the user's is in there yet.
            std::fs::remove_dir_all(&datadir)?;
        }
        tracing::info!(project_id, datadir = %datadir.display(), "initialising compute storage");
        let password = self.pending_admin_secret(project_id)?;
        mariadb::install_db(&datadir, &password, owner).await?;
        self.commit_admin_secret(project_id)
    }

    /// Generates a root password and stores it (0600) as pending before any server gets it,
    /// so that doze can never lock itself out: [`LocalDriver::commit_admin_secret`] makes it
    /// the compute's once the server has it, and a failure in between leaves the old state
    /// (no secret: sealing is tried again at the next start).
    fn pending_admin_secret(&self, project_id: &str) -> anyhow::Result<String> {
        let password = mariadb::new_admin_password();
        write_private_file(&self.pending_secret_path(project_id), &password)?;
        Ok(password)
    }

    fn commit_admin_secret(&self, project_id: &str) -> anyhow::Result<()> {
        std::fs::rename(
            self.pending_secret_path(project_id),
            self.admin_secret_path(project_id),
        )
        .context("recording the compute's root password")
    }

    fn pending_secret_path(&self, project_id: &str) -> PathBuf {
        self.project_dir(project_id).join("admin.secret.pending")
    }

    async fn start_inner(&self, spec: &ComputeSpec) -> anyhow::Result<Running> {
        let project_id = spec.project_id.as_str();
        if self.is_alive(project_id) {
            // The store says stopped (the lifecycle starts only what it recorded as stopped),
            // yet a server of ours runs: left over from a suspend another replica did with
            // an older view. Never two servers on one datadir: stop it first.
            tracing::warn!(
                project_id,
                "a server of this compute still runs; stopping it before the start"
            );
            self.stop_inner(project_id).await?;
        }
        self.instances().remove(project_id);
        // Never two servers on one datadir: stop anything a previous run left behind, before
        // the storage is touched (a bootstrap run next to a live server would fail on InnoDB's
        // locks).
        if let Some(pid) = self.find_leftover(project_id, None) {
            tracing::warn!(
                project_id,
                pid,
                "stopping a leftover mariadbd before starting"
            );
            self.thaw_any(project_id, Some(pid));
            stop_pid(pid, self.stop_timeout).await;
        }
        self.prepare_project_dir(project_id)?;
        self.ensure_storage(project_id).await?;
        let mut last_err = None;
        for attempt in 0..3 {
            let port = mariadb::free_port()?;
            let server = self.server_spec(project_id, &spec.config, port)?;
            let mut child = server.spawn()?;
            let pid = child.id().context("mariadbd exited at once")?;
            if let Some(freezer) = &self.freezer
                && let Err(e) = freezer.enter(project_id, pid, memory_limit(&spec.config))
            {
                // It runs all the same; a freeze moves it into its cgroup again, or fails
                // and leaves it running.
                tracing::warn!(project_id, pid, error = %format!("{e:#}"), "cannot place the compute in its cgroup");
            }
            match mariadb::wait_for_greeting(
                port,
                &mut child,
                &server.error_log,
                self.ready_timeout,
            )
            .await
            {
                Ok(took) => {
                    tracing::debug!(project_id, port, pid, ?took, attempt, "mariadbd ready");
                    self.instances().insert(
                        project_id.to_owned(),
                        Instance {
                            child: Some(child),
                            pid,
                            socket: server.socket.clone(),
                        },
                    );
                    if let Some(roles) = &spec.roles
                        && let Err(e) = self.apply(project_id, &[RoleOp::Sync(roles.clone())]).await
                    {
                        let _ = self.stop_inner(project_id).await;
                        return Err(e.context("synchronising roles into the new compute"));
                    }
                    return Ok(Running {
                        address: format!("127.0.0.1:{port}"),
                        handle: Some(pid.to_string()),
                    });
                }
                Err(e) => {
                    let _ = mariadb::stop_child(&mut child, Duration::from_secs(2)).await;
                    let msg = format!("{e:#}");
                    let port_taken = msg.contains("Address already in use")
                        || msg.contains("Do you already have another");
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("mariadbd did not start")))
    }

    async fn stop_inner(&self, project_id: &str) -> anyhow::Result<()> {
        let pid = self.instances().get(project_id).map(|i| i.pid);
        self.thaw_any(project_id, pid);
        let instance = self.instances().remove(project_id);
        let stopped = match instance {
            Some(Instance {
                child: Some(mut child),
                ..
            }) => mariadb::stop_child(&mut child, self.stop_timeout).await,
            Some(Instance {
                child: None, pid, ..
            }) => {
                stop_pid(pid, self.stop_timeout).await;
                Ok(())
            }
            None => Ok(()),
        };
        // Whatever else serves the datadir (a server another replica started since this one
        // last knew it, one left by a previous run) stops too: stopped means stopped.
        if let Some(pid) = self.find_leftover(project_id, None) {
            self.thaw_any(project_id, Some(pid));
            stop_pid(pid, self.stop_timeout).await;
        }
        if let Some(freezer) = &self.freezer {
            freezer.release(project_id);
        }
        stopped
    }

    /// A live mariadbd serving this project's datadir: the recorded pid or the pid file's.
    fn find_leftover(&self, project_id: &str, recorded: Option<u32>) -> Option<u32> {
        let datadir = self.datadir(project_id);
        let from_file = std::fs::read_to_string(datadir.join("mariadbd.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        [recorded, from_file]
            .into_iter()
            .flatten()
            .find(|pid| pid_alive(*pid) && serves_datadir(*pid, &datadir))
    }

    async fn adopt_inner(
        &self,
        project_id: &str,
        recorded: Option<Running>,
    ) -> anyhow::Result<Option<Running>> {
        if self.is_alive(project_id) {
            bail!("the compute of project {project_id} is already managed by this process");
        }
        let recorded_pid = recorded
            .and_then(|r| r.handle)
            .and_then(|h| h.parse::<u32>().ok());
        let Some(pid) = self.find_leftover(project_id, recorded_pid) else {
            return Ok(None);
        };
        // A server frozen by a previous doze (or by another replica) answers nothing until
        // thawed: adoption thaws it, and the lifecycle freezes it again if it was recorded
        // frozen. Never left frozen by nobody.
        self.thaw_any(project_id, Some(pid));
        let args = cmdline(pid);
        let port = arg_value(&args, "--port").and_then(|p| p.parse::<u16>().ok());
        let socket = arg_value(&args, "--socket").map(PathBuf::from);
        if let (Some(port), Some(socket)) = (port, socket)
            && mariadb::probe_greeting(port).await
        {
            self.instances().insert(
                project_id.to_owned(),
                Instance {
                    child: None,
                    pid,
                    socket,
                },
            );
            return Ok(Some(Running {
                address: format!("127.0.0.1:{port}"),
                handle: Some(pid.to_string()),
            }));
        }
        // Alive but not answering in time (busy, hung, still recovering): not proof that it
        // is gone, so it is not stopped here; a start stops it first if it comes to that.
        bail!("mariadbd (pid {pid}) serves this compute's datadir but does not answer on its port")
    }

    async fn root_conn(&self, project_id: &str) -> anyhow::Result<mysql_async::Conn> {
        let socket = self
            .instances()
            .get(project_id)
            .map(|i| i.socket.clone())
            .with_context(|| format!("the compute of project {project_id} is not running"))?;
        let password = match self.admin_secret(project_id)? {
            Some(p) => p,
            None => self.seal_running(project_id, &socket).await?,
        };
        let opts = root_opts(&socket).pass(Some(password));
        let deadline = Instant::now() + ROOT_CONNECT_TIMEOUT;
        loop {
            // A hung server (stopped, overloaded) accepts the socket and never greets: every
            // attempt is bounded, so the scheduler and role changes never hang on it.
            let attempt =
                tokio::time::timeout_at(deadline.into(), mysql_async::Conn::new(opts.clone()));
            match attempt.await {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) if Instant::now() >= deadline => {
                    return Err(anyhow::Error::new(e)
                        .context("connecting to the compute as root over its socket"));
                }
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => bail!(
                    "the compute did not answer doze's root login within {ROOT_CONNECT_TIMEOUT:?}"
                ),
            }
        }
    }

    /// A compute adopted from a doze that left root without a password: set one now. One at
    /// a time (the scheduler and a role change may both get here), re-checked under the lock.
    async fn seal_running(&self, project_id: &str, socket: &Path) -> anyhow::Result<String> {
        let _one_at_a_time = self.sealing.lock().await;
        if let Some(done) = self.admin_secret(project_id)? {
            return Ok(done);
        }
        tracing::info!(
            project_id,
            "setting a root password on a running older compute"
        );
        let connect = mysql_async::Conn::new(root_opts(socket));
        let mut conn = tokio::time::timeout(ROOT_CONNECT_TIMEOUT, connect)
            .await
            .context("the older compute did not answer")?
            .context("connecting as root to an older compute to set its password")?;
        let password = self.pending_admin_secret(project_id)?;
        conn.query_drop(format!(
            "ALTER USER 'root'@'localhost' IDENTIFIED BY '{password}'"
        ))
        .await?;
        self.commit_admin_secret(project_id)?;
        let _ = conn.disconnect().await;
        Ok(password)
    }

    async fn apply(&self, project_id: &str, ops: &[RoleOp]) -> anyhow::Result<()> {
        let conn = self.root_conn(project_id).await?;
        accounts::apply(conn, ops, ROOT_WORK_TIMEOUT).await
    }

    async fn destroy_inner(&self, project_id: &str) -> anyhow::Result<()> {
        self.stop_inner(project_id).await?;
        let dir = self.project_dir(project_id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let _ = std::fs::remove_dir_all(self.long_path_socket_dir(project_id));
        Ok(())
    }
}

impl ComputeDriver for LocalDriver {
    fn validate_config(&self, config: &serde_json::Value) -> Result<(), String> {
        if !config.is_object() {
            return Err("config must be a JSON object".into());
        }
        buffer_pool_for(config).map_err(|e| format!("{e:#}"))?;
        memory_fits(config, crate::config::machine_memory())?;
        mariadb_options(config).map_err(|e| format!("{e:#}"))?;
        Ok(())
    }

    fn start<'a>(&'a self, spec: &'a ComputeSpec) -> BoxFuture<'a, anyhow::Result<Running>> {
        Box::pin(self.start_inner(spec))
    }

    fn stop<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.stop_inner(project_id))
    }

    fn is_alive(&self, project_id: &str) -> bool {
        let mut map = self.instances();
        match map.get_mut(project_id) {
            Some(Instance {
                child: Some(child),
                pid,
                ..
            }) => {
                // A killed server's leader turns zombie while its other threads (io_uring
                // workers) still wind down; waitpid reports it only after that. It is dead.
                matches!(child.try_wait(), Ok(None)) && pid_alive(*pid)
            }
            // Adopted: not our child, so the pid could have been reused by now.
            Some(Instance {
                child: None, pid, ..
            }) => pid_alive(*pid) && serves_datadir(*pid, &self.datadir(project_id)),
            None => false,
        }
    }

    fn adopt<'a>(
        &'a self,
        project_id: &'a str,
        recorded: Option<Running>,
    ) -> BoxFuture<'a, anyhow::Result<Option<Running>>> {
        Box::pin(self.adopt_inner(project_id, recorded))
    }

    fn apply_roles<'a>(
        &'a self,
        project_id: &'a str,
        ops: &'a [RoleOp],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.apply(project_id, ops))
    }

    fn client_sessions<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move {
            let conn = self.root_conn(project_id).await?;
            accounts::client_sessions(conn, ROOT_WORK_TIMEOUT).await
        })
    }

    fn destroy_storage<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.destroy_inner(project_id))
    }

    fn freezer(&self) -> Option<&'static str> {
        self.freezer.as_ref().map(Freezer::name)
    }

    fn freeze<'a>(
        &'a self,
        project_id: &'a str,
        handle: Option<&'a str>,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let freezer = self
                .freezer
                .as_ref()
                .context("freezing is off for this doze (--freezer off)")?;
            let pid = self
                .pid_of(project_id, handle)
                .with_context(|| format!("the compute of project {project_id} is not running"))?;
            if !serves_datadir(pid, &self.datadir(project_id)) {
                bail!("pid {pid} is not this compute's server; not freezing it");
            }
            if !cmdline(pid).iter().any(|a| a == SEMAPHORE_WAIT_UNLIMITED) {
                // Started by an older doze or with --freezer off: a latch wait that spans a
                // long freeze could make InnoDB abort the server at the thaw.
                bail!(
                    "the compute's server was started without {SEMAPHORE_WAIT_UNLIMITED}; it is not frozen (it is stopped instead)"
                );
            }
            freezer.freeze(project_id, pid).await
        })
    }

    fn thaw(&self, project_id: &str, handle: Option<&str>) -> anyhow::Result<()> {
        let Some(freezer) = &self.freezer else {
            return Ok(());
        };
        match self.pid_of(project_id, handle) {
            Some(pid) => freezer.thaw(project_id, pid),
            None => Ok(()),
        }
    }

    fn memory_bytes(&self, project_id: &str, handle: Option<&str>) -> Option<u64> {
        let pid = self.pid_of(project_id, handle)?;
        match &self.freezer {
            Some(f) => f.memory_bytes(project_id, pid),
            None => crate::driver::freezer::resident_bytes(pid),
        }
    }
}

/// `resources.memory` in bytes, the compute cgroup's memory limit where one can be set.
fn memory_limit(config: &serde_json::Value) -> Option<u64> {
    config
        .pointer("/resources/memory")
        .and_then(|v| v.as_str())
        .and_then(parse_memory)
}

/// In a user namespace (a rootless or user-namespaced container), "root" can switch only to
/// the uids its namespace maps. Says so clearly instead of failing later at `setuid`.
fn check_uid_map() -> anyhow::Result<()> {
    let Ok(map) = std::fs::read_to_string("/proc/self/uid_map") else {
        return Ok(());
    };
    let covered = map.lines().any(|line| {
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        matches!(nums.as_slice(), [inside, _, count]
            if *inside <= u64::from(COMPUTE_UIDS.start)
                && u64::from(COMPUTE_UIDS.end) <= inside + count)
    });
    if covered {
        return Ok(());
    }
    bail!(
        "this doze runs as root in a user namespace whose uid map ({}) does not cover the \
         compute uids {COMPUTE_UIDS:?}; run doze as a regular user (every compute then runs as \
         that user) or widen the namespace's uid map",
        map.trim().replace('\n', "; ")
    )
}

fn read_uid(path: &Path) -> anyhow::Result<Option<u32>> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse::<u32>()
            .map(Some)
            .with_context(|| format!("{} does not hold a uid", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn owner_of(uid: u32) -> (nix::unistd::Uid, nix::unistd::Gid) {
    (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(uid),
    )
}

/// root over the unix socket (the only place root may log in from).
fn root_opts(socket: &Path) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("localhost")
        .socket(Some(socket.to_string_lossy().into_owned()))
        .prefer_socket(true)
        .user(Some("root"))
}

/// Writes `contents` to `path` readable by doze's user only (0600, whatever the umask), by
/// way of a temporary file so a crash never leaves half a secret.
pub fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// True when `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn arg_value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

/// True when `pid` is a mariadbd whose `--datadir` is `datadir`.
fn serves_datadir(pid: u32, datadir: &Path) -> bool {
    let args = cmdline(pid);
    let is_mariadbd = args
        .first()
        .is_some_and(|a| a.ends_with("mariadbd") || a.ends_with("mysqld"));
    is_mariadbd && arg_value(&args, "--datadir").is_some_and(|d| Path::new(d) == datadir)
}

/// Stops a process that is not our child: SIGTERM, wait, SIGKILL after `grace`.
async fn stop_pid(pid: u32, grace: Duration) {
    let raw = pid as i32;
    mariadb::signal_pid(raw, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            tracing::warn!(pid, "mariadbd did not stop in time; killing it");
            mariadb::signal_pid(raw, Signal::SIGKILL);
            let hard = Instant::now() + Duration::from_secs(5);
            while pid_alive(pid) && Instant::now() < hard {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Parses a Kubernetes quantity ("1Gi", "512Mi", "256M", "1G", "1048576") into bytes.
pub fn parse_memory(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        "T" => 1_000_000_000_000,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `--innodb-buffer-pool-size` for a compute config: half of `resources.memory` (at least
/// 16 MiB), or 64M when absent.
pub fn buffer_pool_for(config: &serde_json::Value) -> anyhow::Result<String> {
    match config.pointer("/resources/memory") {
        None | Some(serde_json::Value::Null) => Ok(DEFAULT_BUFFER_POOL.to_owned()),
        Some(serde_json::Value::String(s)) => {
            let bytes = parse_memory(s).with_context(|| {
                format!("resources.memory '{s}' is not a quantity like 1Gi or 512Mi")
            })?;
            Ok((bytes / 2).max(MIN_BUFFER_POOL).to_string())
        }
        Some(other) => bail!("resources.memory must be a string like \"1Gi\", got {other}"),
    }
}

/// Refuses a `resources.memory` above the machine's memory (`machine`): its buffer pool
/// (half of it) could not be mapped, and the compute would fail at every start.
fn memory_fits(config: &serde_json::Value, machine: Option<u64>) -> Result<(), String> {
    let (Some(serde_json::Value::String(text)), Some(machine)) =
        (config.pointer("/resources/memory"), machine)
    else {
        return Ok(());
    };
    match parse_memory(text) {
        Some(bytes) if bytes > machine => Err(format!(
            "resources.memory {text} is more than this machine has ({} MiB)",
            machine >> 20
        )),
        _ => Ok(()),
    }
}

/// Extra server options from `config.mariadb_options`, checked against the allow-list of
/// [`super::options`].
pub fn mariadb_options(config: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    super::options::server_args(config).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn memory_above_the_machines_is_refused() {
        let gib = 1u64 << 30;
        let config = json!({"resources": {"memory": "3Gi"}});
        assert!(memory_fits(&config, Some(4 * gib)).is_ok());
        let refused = memory_fits(&config, Some(2 * gib)).expect_err("3Gi on a 2Gi machine");
        assert!(
            refused.contains("more than this machine has (2048 MiB)"),
            "{refused}"
        );
        assert!(memory_fits(&config, None).is_ok());
        assert!(memory_fits(&json!({}), Some(gib)).is_ok());
    }

    #[test]
    fn memory_and_buffer_pool() {
        assert_eq!(parse_memory("1Gi"), Some(1 << 30));
        assert_eq!(parse_memory("512Mi"), Some(512 << 20));
        assert_eq!(parse_memory("256M"), Some(256_000_000));
        assert_eq!(parse_memory("abc"), None);
        assert_eq!(parse_memory("1Xi"), None);
        assert_eq!(buffer_pool_for(&json!({})).expect("bp"), "64M");
        assert_eq!(
            buffer_pool_for(&json!({"resources": {"cpu": "500m", "memory": "1Gi"}})).expect("bp"),
            (512u64 << 20).to_string()
        );
        assert_eq!(
            buffer_pool_for(&json!({"resources": {"memory": "8Mi"}})).expect("bp"),
            (16u64 << 20).to_string()
        );
        assert!(buffer_pool_for(&json!({"resources": {"memory": "lots"}})).is_err());
    }

    #[test]
    fn options_come_from_the_allow_list() {
        let args = mariadb_options(
            &json!({"mariadb_options": {"max_connections": 50, "sql_mode": "ANSI"}}),
        )
        .expect("opts");
        assert_eq!(args, vec!["--max-connections=50", "--sql-mode=ANSI"]);
        assert!(mariadb_options(&json!({"mariadb_options": {"datadir": "/"}})).is_err());
    }
}
