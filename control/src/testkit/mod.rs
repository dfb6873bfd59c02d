//! Throwaway servers for tests: a real `mariadbd` and a real PostgreSQL, each initialised into a
//! temp dir and listening on a free port. They never touch a server already running on the
//! machine, and they are killed when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::driver::mariadb::{self, ServerSpec};

pub mod kube;

/// A private mariadbd, sealed as doze seals computes: root has a random password and is
/// reachable through [`MariaDb::root`] (the unix socket) only.
pub struct MariaDb {
    child: Child,
    pub port: u16,
    pub spec: ServerSpec,
    root_password: String,
    _dir: TempDir,
}

/// A temp dir that the compute user may pass through (0711) but not list: what a test needs
/// as the parent of a data directory when it runs as root and computes run as `mysql`. doze
/// never widens a directory it did not create; tests widen their own.
pub fn scratch_dir(prefix: &str) -> anyhow::Result<TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    Ok(dir)
}

impl MariaDb {
    /// Installs and starts a server with doze's compute defaults (64 MiB packets).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// As [`MariaDb::start`], with extra `--option=value` arguments for mariadbd.
    pub async fn start_with(extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = scratch_dir("doze-mdb-")?;
        let datadir = dir.path().join("data");
        let root_password = mariadb::new_admin_password();
        mariadb::install_db(&datadir, &root_password, mariadb::mysql_owner()?).await?;
        let mut last_err = None;
        for _ in 0..3 {
            let port = mariadb::free_port()?;
            let mut spec = ServerSpec::in_datadir(&datadir, port);
            spec.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
            let mut child = spec.spawn()?;
            match mariadb::wait_for_greeting(
                port,
                &mut child,
                &spec.error_log,
                Duration::from_secs(30),
            )
            .await
            {
                Ok(_) => {
                    return Ok(Self {
                        child,
                        port,
                        spec,
                        root_password,
                        _dir: dir,
                    });
                }
                Err(e) => {
                    let _ = child.kill().await;
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("mariadbd did not start")))
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A root connection over the unix socket.
    pub async fn root(&self) -> anyhow::Result<mysql_async::Conn> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("localhost")
            .socket(Some(self.spec.socket.to_string_lossy().into_owned()))
            .prefer_socket(true)
            .user(Some("root"))
            .pass(Some(self.root_password.clone()));
        mysql_async::Conn::new(opts)
            .await
            .context("connecting to the test mariadbd as root over its socket")
    }

    /// Creates `user`@`%` with `password` and every privilege.
    pub async fn create_user(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let mut conn = self.root().await?;
        conn.query_drop(format!(
            "CREATE OR REPLACE USER '{user}'@'%' IDENTIFIED BY '{password}'"
        ))
        .await?;
        conn.query_drop(format!(
            "GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%' WITH GRANT OPTION"
        ))
        .await?;
        conn.disconnect().await?;
        Ok(())
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The server's OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A private PostgreSQL with trust authentication on 127.0.0.1.
pub struct Postgres {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Postgres {
    /// initdb into a temp dir and start `postgres` on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// As [`Postgres::start`], with `pg_stat_statements` loaded (`CREATE EXTENSION` it), so
    /// that a test can count the statements doze sends.
    pub async fn start_counting() -> anyhow::Result<Self> {
        Self::start_with(&["-c", "shared_preload_libraries=pg_stat_statements"]).await
    }

    async fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("doze-pg-").tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let owner = postgres_owner()?;
        if let Some((uid, gid)) = owner {
            for p in [dir.path(), data.as_path()] {
                nix::unistd::chown(p, Some(uid), Some(gid))?;
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null());
        as_owner(&mut initdb, owner);
        let out = initdb.output().await.context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                mariadb::tail(&String::from_utf8_lossy(&out.stderr), 10)
            );
        }
        let port = mariadb::free_port()?;
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        as_owner(&mut server, owner);
        let child = server.spawn().context("starting postgres")?;
        let pg = Self {
            child,
            port,
            _dir: dir,
        };
        pg.wait_ready().await?;
        Ok(pg)
    }

    /// A DSN for the `postgres` database.
    pub fn dsn(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        for _ in 0..300 {
            if let Ok(conn) = sqlx::PgConnection::connect(&self.dsn()).await {
                conn.close().await.ok();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("postgres did not accept connections on port {}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The directory holding initdb/postgres: Debian's newest /usr/lib/postgresql/N/bin, else PATH.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let initdb = mariadb::find_binary("initdb").context(
        "PostgreSQL server binaries not found (Debian/Ubuntu: apt-get install postgresql)",
    )?;
    Ok(initdb
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin")))
}

/// PostgreSQL refuses to run as root: when we are root, run it as the `postgres` user.
fn postgres_owner() -> anyhow::Result<Option<(nix::unistd::Uid, nix::unistd::Gid)>> {
    if !mariadb::running_as_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")?
        .context("running tests as root needs a `postgres` user (apt-get install postgresql)")?;
    Ok(Some((user.uid, user.gid)))
}

fn as_owner(cmd: &mut Command, owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
}

/// Pids of live `mariadbd` processes whose `--datadir` lies under `root` (e.g. a test's
/// temp dir).
pub fn mariadbd_pids_under(root: &std::path::Path) -> Vec<i32> {
    let needle = format!("--datadir={}", root.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains("mariadbd") && cmd.contains(&needle)
        })
        .collect()
}

/// SIGKILLs every `mariadbd` under `root`: call it from a test fixture's `Drop` so that a
/// failing test (which never reaches `ControlPlane::shutdown`) leaks no servers.
pub fn kill_mariadbd_under(root: &std::path::Path) {
    let pids = mariadbd_pids_under(root);
    // Their compute cgroups (frozen ones included: SIGKILL ends frozen tasks too) are removed
    // once empty, so tests leave none behind.
    let cgroups: Vec<String> = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
        .flat_map(|c| {
            c.lines()
                .filter(|l| l.contains("doze-computes"))
                .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    for pid in &pids {
        mariadb::signal_pid(*pid, nix::sys::signal::Signal::SIGKILL);
    }
    for dir in cgroups {
        for mount in [
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/freezer",
        ] {
            let path = std::path::Path::new(mount).join(dir.trim_start_matches('/'));
            for _ in 0..200 {
                if !path.exists() || std::fs::remove_dir(&path).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// A compute driver that runs nothing, for the control plane's own logic (wake, herds,
/// back-off, suspend races, the scheduler) in milliseconds instead of seconds. Starts take a
/// programmable delay and can be made to fail; a compute can be "killed" to look crashed.
/// The real driver's behaviour is the business of the tests against real mariadbd.
#[derive(Default)]
pub struct FakeDriver {
    state: std::sync::Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    running: std::collections::HashMap<String, crate::driver::Running>,
    start_delay: Duration,
    failing_starts: u32,
    starts: u64,
    stops: u64,
    next_port: u16,
    client_sessions: std::collections::HashMap<String, u64>,
    role_ops: u64,
}

impl FakeDriver {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every start takes this long from now on.
    pub fn set_start_delay(&self, delay: Duration) {
        self.state().start_delay = delay;
    }

    /// The next `n` starts fail (after their delay).
    pub fn fail_next_starts(&self, n: u32) {
        self.state().failing_starts = n;
    }

    /// Starts that succeeded.
    pub fn starts(&self) -> u64 {
        self.state().starts
    }

    /// Stops of a running compute.
    pub fn stops(&self) -> u64 {
        self.state().stops
    }

    /// Role changes applied to running computes.
    pub fn role_ops(&self) -> u64 {
        self.state().role_ops
    }

    /// The compute dies, as a crash or `kill -9` would make it.
    pub fn kill(&self, project_id: &str) {
        self.state().running.remove(project_id);
    }

    /// Clients connected to the compute directly (not through doze).
    pub fn set_client_sessions(&self, project_id: &str, n: u64) {
        self.state()
            .client_sessions
            .insert(project_id.to_owned(), n);
    }

    pub fn is_running(&self, project_id: &str) -> bool {
        self.state().running.contains_key(project_id)
    }
}

impl crate::driver::ComputeDriver for FakeDriver {
    fn validate_config(&self, config: &serde_json::Value) -> Result<(), String> {
        if config.is_object() {
            Ok(())
        } else {
            Err("config must be a JSON object".into())
        }
    }

    fn start<'a>(
        &'a self,
        spec: &'a crate::driver::ComputeSpec,
    ) -> crate::driver::BoxFuture<'a, anyhow::Result<crate::driver::Running>> {
        Box::pin(async move {
            let delay = self.state().start_delay;
            tokio::time::sleep(delay).await;
            let mut state = self.state();
            if state.running.contains_key(&spec.project_id) {
                bail!(
                    "the compute of project {} is already running",
                    spec.project_id
                );
            }
            if state.failing_starts > 0 {
                state.failing_starts -= 1;
                bail!("fake start failure (the server's error log would be here)");
            }
            state.starts += 1;
            state.next_port = state.next_port.wrapping_add(1).max(1);
            let running = crate::driver::Running {
                address: format!("192.0.2.1:{}", state.next_port),
                handle: Some(format!("fake-{}", state.starts)),
            };
            state
                .running
                .insert(spec.project_id.clone(), running.clone());
            Ok(running)
        })
    }

    fn stop<'a>(&'a self, project_id: &'a str) -> crate::driver::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut state = self.state();
            if state.running.remove(project_id).is_some() {
                state.stops += 1;
            }
            Ok(())
        })
    }

    fn is_alive(&self, project_id: &str) -> bool {
        self.is_running(project_id)
    }

    fn adopt<'a>(
        &'a self,
        project_id: &'a str,
        recorded: Option<crate::driver::Running>,
    ) -> crate::driver::BoxFuture<'a, anyhow::Result<Option<crate::driver::Running>>> {
        Box::pin(async move {
            let state = self.state();
            Ok(match (state.running.get(project_id), recorded) {
                (Some(live), Some(rec)) if live.handle == rec.handle => Some(live.clone()),
                (Some(live), None) => Some(live.clone()),
                _ => None,
            })
        })
    }

    fn client_sessions<'a>(
        &'a self,
        project_id: &'a str,
    ) -> crate::driver::BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move {
            Ok(self
                .state()
                .client_sessions
                .get(project_id)
                .copied()
                .unwrap_or(0))
        })
    }

    fn apply_roles<'a>(
        &'a self,
        project_id: &'a str,
        ops: &'a [crate::driver::RoleOp],
    ) -> crate::driver::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut state = self.state();
            if !state.running.contains_key(project_id) {
                bail!("the compute of project {project_id} is not running");
            }
            state.role_ops += ops.len() as u64;
            Ok(())
        })
    }

    fn destroy_storage<'a>(
        &'a self,
        project_id: &'a str,
    ) -> crate::driver::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.state().running.remove(project_id);
            Ok(())
        })
    }
}
