//! Settings of the control plane (the `doze serve` flags it reads).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use crate::driver::freezer::FreezerChoice;
pub use crate::driver::kubernetes::{AdminTls, KubernetesConfig};

/// What an idle compute becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SuspendMode {
    /// Frozen: no CPU, memory kept, resumed in about a millisecond; stopped later (after
    /// `stop_after`, or sooner under the frozen memory budget). Where the driver cannot
    /// freeze, stopped.
    #[default]
    Freeze,
    /// Stopped: memory freed; the next connection starts the server again.
    Stop,
}

impl SuspendMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SuspendMode::Freeze => "freeze",
            SuspendMode::Stop => "stop",
        }
    }
}

impl FromStr for SuspendMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "freeze" => Ok(SuspendMode::Freeze),
            "stop" => Ok(SuspendMode::Stop),
            other => anyhow::bail!("unknown suspend mode '{other}'; use `freeze` or `stop`"),
        }
    }
}

/// The frozen tier's policy (`--suspend-mode`, `--stop-after`, `--frozen-memory-budget`,
/// `--freezer`).
#[derive(Clone, Debug)]
pub struct FrozenPolicy {
    /// What an idle compute becomes; a project's `config.suspend_mode` overrides it.
    pub suspend_mode: SuspendMode,
    /// A compute frozen this long is stopped. Zero: never by time.
    pub stop_after: Duration,
    /// Frozen computes' total memory above which the least recently used are stopped.
    /// `None`: no budget.
    pub memory_budget: Option<u64>,
    /// The local driver's freezing mechanism.
    pub freezer: FreezerChoice,
}

impl Default for FrozenPolicy {
    fn default() -> Self {
        Self {
            suspend_mode: SuspendMode::Freeze,
            stop_after: Duration::from_secs(30 * 60),
            memory_budget: default_memory_budget(),
            freezer: FreezerChoice::Auto,
        }
    }
}

/// A quarter of the machine's memory (`MemTotal`), the default frozen memory budget.
pub fn default_memory_budget() -> Option<u64> {
    machine_memory().map(|bytes| bytes / 4)
}

/// The machine's memory (`MemTotal`, in bytes), when /proc says.
pub fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// Which compute driver runs the computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DriverKind {
    /// `mariadbd` processes on this machine.
    #[default]
    Local,
    /// A MariaDB pod per compute, with a PersistentVolumeClaim and a Secret (see
    /// [`crate::driver::kubernetes`]).
    Kubernetes,
}

impl FromStr for DriverKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(DriverKind::Local),
            "kubernetes" | "k8s" => Ok(DriverKind::Kubernetes),
            other => {
                anyhow::bail!("unknown driver '{other}'; the drivers are `local` and `kubernetes`")
            }
        }
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverKind::Local => f.write_str("local"),
            DriverKind::Kubernetes => f.write_str("kubernetes"),
        }
    }
}

/// Settings of the control plane (flags of the `doze` binary).
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// `sqlite://path` (file and parent directory created on first start) or `postgres://...`.
    pub db_dsn: String,
    /// Computes' storage: `<data_dir>/projects/<project_id>/...`.
    pub data_dir: PathBuf,
    pub driver: DriverKind,
    /// Suspend a compute after this long without sessions or traffic; a project's
    /// `config.idle_timeout` (seconds) overrides it. Zero means never.
    pub idle_timeout: Duration,
    /// How often the scheduler looks for idle computes.
    pub check_interval: Duration,
    /// Upper bound of one wake (including a compute start).
    pub wake_timeout: Duration,
    /// Bearer token required on every `/api` route when set.
    pub admin_token: Option<String>,
    /// `--max-allowed-packet` of every compute.
    pub max_allowed_packet: String,
    /// SIGTERM grace before SIGKILL when stopping a compute.
    pub stop_timeout: Duration,
    /// This replica's id (`--replica-id`): unique among the doze processes sharing one
    /// PostgreSQL.
    pub replica_id: String,
    /// The Kubernetes driver's settings (used with `driver: Kubernetes`).
    pub kubernetes: KubernetesConfig,
    /// How doze's own administrative logins to computes are protected (the Kubernetes
    /// driver's; the local driver uses the unix socket).
    pub admin_tls: AdminTls,
    /// The frozen tier.
    pub frozen: FrozenPolicy,
    /// Audit log entries older than this are deleted by the scheduler; zero keeps them all.
    pub audit_retention: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            db_dsn: "sqlite://./doze-data/state.db".to_owned(),
            data_dir: PathBuf::from("./doze-data"),
            driver: DriverKind::Local,
            idle_timeout: Duration::from_secs(300),
            check_interval: Duration::from_secs(30),
            wake_timeout: Duration::from_secs(30),
            admin_token: None,
            max_allowed_packet: "64M".to_owned(),
            stop_timeout: Duration::from_secs(30),
            replica_id: crate::replicas::default_replica_id(),
            kubernetes: KubernetesConfig::default(),
            admin_tls: AdminTls::default(),
            frozen: FrozenPolicy::default(),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}
