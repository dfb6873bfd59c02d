//! The local driver: one `mariadbd` process per running compute on this machine.
//!
//! Storage of a project lives in `<data_dir>/projects/<project_id>/data`. Each start gets a
//! fresh free port on 127.0.0.1; the unix socket (root's admin access, no password) sits in the
//! datadir. Ready means a MySQL greeting on the port. Stop is SIGTERM (clean InnoDB shutdown)
//! and SIGKILL after the grace period.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mysql_async::prelude::Queryable;
use nix::sys::signal::Signal;
use tokio::process::Child;

use super::{BoxFuture, ComputeDriver, ComputeSpec, RoleOp, Running};
use crate::mariadb::{self, ServerSpec};
use crate::roles::{self, RESERVED_ROLE_NAMES};

/// Options doze sets itself; a compute config may not override them.
const PROTECTED_OPTIONS: &[&str] = &[
    "datadir",
    "port",
    "socket",
    "bind-address",
    "user",
    "pid-file",
    "log-error",
    "init-file",
    "no-defaults",
    "defaults-file",
    "defaults-extra-file",
    "skip-grant-tables",
    "plugin-dir",
    "plugin-load",
    "plugin-load-add",
    "skip-networking",
];

/// Option names containing any of these are refused too: they would let an admin API caller
/// make the server read or write arbitrary files, load code, or bypass authentication.
const RISKY_OPTION_PARTS: &[&str] = &[
    "file",
    "dir",
    "path",
    "plugin",
    "init",
    "user",
    "socket",
    "port",
    "bind",
    "secure",
    "load",
    "grant",
    "networking",
    "chroot",
    "pid",
    "log-error",
    "general-log",
    "slow-query-log",
];

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
        }
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
            std::env::temp_dir().join(format!("doze-{project_id}.sock"))
        } else {
            socket
        }
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
        spec.socket = self.socket_path(project_id);
        spec.max_allowed_packet = self.max_allowed_packet.clone();
        spec.buffer_pool = buffer_pool_for(config)?;
        spec.extra_args = mariadb_options(config)?;
        Ok(spec)
    }

    async fn ensure_storage(&self, project_id: &str) -> anyhow::Result<()> {
        let datadir = self.datadir(project_id);
        if datadir.join("mysql").is_dir() {
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
        mariadb::install_db(&datadir).await
    }

    async fn start_inner(&self, spec: &ComputeSpec) -> anyhow::Result<Running> {
        let project_id = spec.project_id.as_str();
        if self.is_alive(project_id) {
            bail!("the compute of project {project_id} is already running");
        }
        self.instances().remove(project_id);
        std::fs::create_dir_all(self.project_dir(project_id))?;
        self.ensure_storage(project_id).await?;
        // Never two servers on one datadir: stop anything a previous run left behind.
        if let Some(pid) = self.find_leftover(project_id, None) {
            tracing::warn!(
                project_id,
                pid,
                "stopping a leftover mariadbd before starting"
            );
            stop_pid(pid, self.stop_timeout).await;
        }
        let mut last_err = None;
        for attempt in 0..3 {
            let port = mariadb::free_port()?;
            let server = self.server_spec(project_id, &spec.config, port)?;
            let mut child = server.spawn()?;
            let pid = child.id().context("mariadbd exited at once")?;
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
                        pid: Some(i64::from(pid)),
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
        let instance = self.instances().remove(project_id);
        match instance {
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
            None => {
                if let Some(pid) = self.find_leftover(project_id, None) {
                    stop_pid(pid, self.stop_timeout).await;
                }
                Ok(())
            }
        }
    }

    /// A live mariadbd serving this project's datadir: the recorded pid or the pid file's.
    fn find_leftover(&self, project_id: &str, recorded: Option<i64>) -> Option<u32> {
        let datadir = self.datadir(project_id);
        let from_file = std::fs::read_to_string(datadir.join("mariadbd.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let recorded = recorded.and_then(|p| u32::try_from(p).ok());
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
        let Some(pid) = self.find_leftover(project_id, recorded.and_then(|r| r.pid)) else {
            return Ok(None);
        };
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
                pid: Some(i64::from(pid)),
            }));
        }
        tracing::warn!(
            project_id,
            pid,
            "a leftover mariadbd does not answer; stopping it"
        );
        stop_pid(pid, self.stop_timeout).await;
        Ok(None)
    }

    async fn root_conn(&self, project_id: &str) -> anyhow::Result<mysql_async::Conn> {
        let socket = self
            .instances()
            .get(project_id)
            .map(|i| i.socket.clone())
            .with_context(|| format!("the compute of project {project_id} is not running"))?;
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("localhost")
            .socket(Some(socket.to_string_lossy().into_owned()))
            .prefer_socket(true)
            .user(Some("root"));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match mysql_async::Conn::new(opts.clone()).await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline => {
                    return Err(anyhow::Error::new(e)
                        .context("connecting to the compute as root over its socket"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    async fn apply(&self, project_id: &str, ops: &[RoleOp]) -> anyhow::Result<()> {
        let mut conn = self.root_conn(project_id).await?;
        let result = apply_ops(&mut conn, ops).await;
        let _ = conn.disconnect().await;
        result
    }

    async fn destroy_inner(&self, project_id: &str) -> anyhow::Result<()> {
        self.stop_inner(project_id).await?;
        let dir = self.project_dir(project_id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("doze-{project_id}.sock")));
        Ok(())
    }
}

async fn apply_ops(conn: &mut mysql_async::Conn, ops: &[RoleOp]) -> anyhow::Result<()> {
    for op in ops {
        match op {
            RoleOp::Upsert(role) => {
                for sql in roles::upsert_sql(role) {
                    conn.query_drop(sql).await?;
                }
            }
            RoleOp::Drop(name) => conn.query_drop(roles::drop_sql(name)).await?,
            RoleOp::Sync(sync) => {
                for name in &sync.drop {
                    let reserved = RESERVED_ROLE_NAMES
                        .iter()
                        .any(|r| r.eq_ignore_ascii_case(name));
                    if !reserved && !sync.upsert.iter().any(|w| &w.name == name) {
                        conn.query_drop(roles::drop_sql(name)).await?;
                    }
                }
                for role in &sync.upsert {
                    for sql in roles::upsert_sql(role) {
                        conn.query_drop(sql).await?;
                    }
                }
            }
        }
    }
    Ok(())
}

impl ComputeDriver for LocalDriver {
    fn name(&self) -> &'static str {
        "local"
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
            Some(Instance {
                child: None, pid, ..
            }) => pid_alive(*pid),
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

    fn destroy_storage<'a>(&'a self, project_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.destroy_inner(project_id))
    }
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

/// Extra server options from `config.mariadb_options` (`{"option_name": value}`), as
/// `--option-name=value`. Options doze manages itself are refused.
pub fn mariadb_options(config: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    let Some(opts) = config.get("mariadb_options") else {
        return Ok(Vec::new());
    };
    let Some(map) = opts.as_object() else {
        bail!("mariadb_options must be an object of option names to values");
    };
    let mut args = Vec::new();
    for (key, value) in map {
        let name = key.replace('_', "-");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("mariadb_options: '{key}' is not an option name");
        }
        if PROTECTED_OPTIONS.contains(&name.as_str())
            || RISKY_OPTION_PARTS.iter().any(|part| name.contains(part))
        {
            bail!(
                "mariadb_options: '{key}' is managed by doze or touches files, paths, plugins or \
                 accounts, and cannot be set"
            );
        }
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => if *b { "ON" } else { "OFF" }.to_owned(),
            other => bail!("mariadb_options: '{key}' has an unsupported value {other}"),
        };
        if value.contains('\0') || value.contains('\n') {
            bail!("mariadb_options: '{key}' has an invalid value");
        }
        args.push(format!("--{name}={value}"));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn options() {
        let args = mariadb_options(
            &json!({"mariadb_options": {"max_connections": 50, "sql_mode": "ANSI"}}),
        )
        .expect("opts");
        assert_eq!(args, vec!["--max-connections=50", "--sql-mode=ANSI"]);
        assert!(mariadb_options(&json!({"mariadb_options": {"datadir": "/"}})).is_err());
        for risky in [
            "general_log_file",
            "plugin_maturity",
            "init_connect",
            "secure_file_priv",
            "skip_grant_tables",
            "log_error",
        ] {
            assert!(
                mariadb_options(&json!({"mariadb_options": {risky: "x"}})).is_err(),
                "{risky}"
            );
        }
        assert!(mariadb_options(&json!({"mariadb_options": {"a b": "1"}})).is_err());
        assert!(mariadb_options(&json!({"mariadb_options": 3})).is_err());
    }
}
