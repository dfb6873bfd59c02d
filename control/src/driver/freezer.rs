//! How the local driver freezes a compute: the kernel stops scheduling the server, so an idle
//! compute costs no CPU while its memory, its warm buffer pool and its open sockets stay, and
//! a thaw makes it answer again in well under a millisecond.
//!
//! Three mechanisms, best first, chosen once at start (and logged):
//! - **cgroup v2**: each compute runs in a cgroup of its own, `<parent>/<project_id>`;
//!   `cgroup.freeze` freezes every thread of it, and `cgroup.events` says when it is done.
//!   Its memory use is `memory.current` where the memory controller is enabled (then
//!   `resources.memory` is applied as `memory.max`), the server's private resident memory
//!   (anonymous and shared-memory pages, not the binary's) otherwise.
//! - **cgroup v1 freezer**: the same with `freezer.state`, where only the v1 controller can be
//!   written (systemd's hybrid layout without a writable v2 hierarchy).
//! - **signals**: SIGSTOP/SIGCONT to the server's process, where no cgroup is writable (doze
//!   as an ordinary user). The kernel stops every thread of the process all the same.
//!
//! A frozen process does not handle SIGTERM until it is thawed, so every stop thaws first.
//! The cgroup of a compute is named after its project alone, so another doze replica on this
//! machine (or the next doze after a restart) thaws it without any state of this one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;

use super::mariadb;

/// How long a freeze may take before it is undone and reported as failed. A server frozen in
/// the middle of a disk write waits for the write first; that takes milliseconds, not this.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The smallest `memory.max` a compute gets: a server with a 16 MiB buffer pool (the
/// smallest doze gives) peaks near 200 MiB while it starts and recovers.
pub(crate) const MIN_MEMORY_MAX: u64 = 256 * 1024 * 1024;

/// The directory, below doze's own cgroup, that holds one cgroup per compute.
const COMPUTES_CGROUP: &str = "doze-computes";

/// Which mechanism to use (`--freezer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FreezerChoice {
    /// The best one this machine allows.
    #[default]
    Auto,
    CgroupV2,
    CgroupV1,
    Signal,
    /// Never freeze: idle computes are stopped.
    Off,
}

impl std::str::FromStr for FreezerChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "cgroup2" | "cgroup-v2" | "cgroupv2" => Self::CgroupV2,
            "cgroup1" | "cgroup-v1" | "cgroupv1" => Self::CgroupV1,
            "signal" | "sigstop" => Self::Signal,
            "off" | "none" => Self::Off,
            other => {
                bail!("unknown freezer '{other}'; choose auto, cgroup2, cgroup1, signal or off")
            }
        })
    }
}

/// A chosen mechanism.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freezer {
    /// `parent` holds one cgroup per compute; `memory` when the memory controller is enabled
    /// for them.
    CgroupV2 {
        parent: PathBuf,
        memory: bool,
    },
    CgroupV1 {
        parent: PathBuf,
    },
    Signal,
}

impl Freezer {
    /// The mechanism `choice` asks for, or the best one available for `Auto`. `None` for
    /// `Off`; an error when an explicit choice is not available here.
    pub fn choose(choice: FreezerChoice) -> anyhow::Result<Option<Freezer>> {
        let v2 = || cgroup_v2_parent().map(|(parent, memory)| Freezer::CgroupV2 { parent, memory });
        let v1 = || cgroup_v1_parent().map(|parent| Freezer::CgroupV1 { parent });
        Ok(match choice {
            FreezerChoice::Off => None,
            FreezerChoice::Signal => Some(Freezer::Signal),
            FreezerChoice::CgroupV2 => Some(v2().context("cgroup v2 freezer unavailable")?),
            FreezerChoice::CgroupV1 => Some(v1().context("cgroup v1 freezer unavailable")?),
            FreezerChoice::Auto => Some(match v2() {
                Ok(f) => f,
                Err(e2) => match v1() {
                    Ok(f) => {
                        tracing::info!(reason = %format!("{e2:#}"), "no writable cgroup v2 hierarchy; using the v1 freezer");
                        f
                    }
                    Err(e1) => {
                        tracing::info!(v2 = %format!("{e2:#}"), v1 = %format!("{e1:#}"),
                            "no writable cgroup freezer; freezing computes with SIGSTOP/SIGCONT");
                        Freezer::Signal
                    }
                },
            }),
        })
    }

    /// A short name for logs, metrics and the API (`cgroup2`, `cgroup1`, `signal`).
    pub fn name(&self) -> &'static str {
        match self {
            Freezer::CgroupV2 { .. } => "cgroup2",
            Freezer::CgroupV1 { .. } => "cgroup1",
            Freezer::Signal => "signal",
        }
    }

    fn dir(&self, project_id: &str) -> Option<PathBuf> {
        match self {
            Freezer::CgroupV2 { parent, .. } | Freezer::CgroupV1 { parent } => {
                Some(parent.join(project_id))
            }
            Freezer::Signal => None,
        }
    }

    /// Puts a freshly started server into its compute's cgroup (made if needed), and applies
    /// the memory limit where the memory controller allows.
    pub fn enter(&self, project_id: &str, pid: u32, memory_max: Option<u64>) -> anyhow::Result<()> {
        let Some(dir) = self.dir(project_id) else {
            return Ok(());
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("creating the cgroup {}", dir.display()));
            }
        }
        if let Freezer::CgroupV2 { memory: true, .. } = self {
            // `resources.memory` sizes the buffer pool at half of it; the limit leaves the
            // server at least MIN_MEMORY_MAX, so a small value cannot OOM-kill it at start.
            let limit =
                memory_max.map_or_else(|| "max".to_owned(), |b| b.max(MIN_MEMORY_MAX).to_string());
            write(&dir.join("memory.max"), &limit)?;
        }
        write(&dir.join("cgroup.procs"), &pid.to_string())
    }

    /// Freezes the compute and returns once every thread is stopped. `pid` is its server (the
    /// one process in its cgroup); a server that is not in the cgroup (started before doze
    /// froze computes) is moved into it first.
    pub async fn freeze(&self, project_id: &str, pid: u32) -> anyhow::Result<()> {
        if !mariadb_alive(pid) {
            bail!("the compute's server (pid {pid}) is not running");
        }
        match self {
            Freezer::CgroupV2 { .. } | Freezer::CgroupV1 { .. } => {
                let dir = self.dir(project_id).unwrap_or_default();
                if !dir.join("cgroup.procs").exists() || !cgroup_holds(&dir, pid) {
                    self.enter(project_id, pid, None)?;
                }
                let (file, on, done) = self.switch();
                write(&dir.join(file), on)?;
                let frozen = wait_until(FREEZE_TIMEOUT, || self.is_frozen_dir(&dir, done)).await;
                if !frozen {
                    let _ = self.thaw(project_id, pid);
                    bail!("the compute did not freeze within {FREEZE_TIMEOUT:?}; thawed it again");
                }
                Ok(())
            }
            Freezer::Signal => {
                mariadb::signal_pid(pid as i32, Signal::SIGSTOP);
                if !wait_until(FREEZE_TIMEOUT, || all_threads_stopped(pid)).await {
                    mariadb::signal_pid(pid as i32, Signal::SIGCONT);
                    bail!("the compute did not stop within {FREEZE_TIMEOUT:?}; resumed it again");
                }
                Ok(())
            }
        }
    }

    /// Thaws the compute. Immediate: the kernel schedules its threads again at once. Thawing a
    /// compute that is not frozen (or has no cgroup) does nothing. Whatever froze it is undone:
    /// this doze's cgroup, the `doze-computes` cgroup of another doze process (a replica in
    /// another service, a previous run under another cgroup or freezer), and a SIGSTOP.
    pub fn thaw(&self, project_id: &str, pid: u32) -> anyhow::Result<()> {
        let mut result = Ok(());
        if let Some(dir) = self.dir(project_id) {
            let (file, _, _) = self.switch();
            let off = match self {
                Freezer::CgroupV1 { .. } => "THAWED",
                _ => "0",
            };
            match std::fs::write(dir.join(file), off) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    result = Err(e).with_context(|| format!("thawing {}", dir.display()));
                }
            }
        }
        thaw_anywhere(project_id, pid);
        result
    }

    /// Whether the compute is frozen now.
    pub fn is_frozen(&self, project_id: &str, pid: u32) -> bool {
        match self.dir(project_id) {
            Some(dir) => {
                let (_, _, done) = self.switch();
                self.is_frozen_dir(&dir, done) && cgroup_holds(&dir, pid)
            }
            None => process_state(pid) == Some('T'),
        }
    }

    /// The compute's memory use in bytes: the cgroup's charge where the memory controller
    /// counts it, else the server's private resident memory.
    pub fn memory_bytes(&self, project_id: &str, pid: u32) -> Option<u64> {
        if let (Freezer::CgroupV2 { memory: true, .. }, Some(dir)) = (self, self.dir(project_id))
            && let Ok(text) = std::fs::read_to_string(dir.join("memory.current"))
            && let Ok(bytes) = text.trim().parse()
        {
            return Some(bytes);
        }
        resident_bytes(pid)
    }

    /// Removes the compute's cgroup once its server has exited (kept while anything runs in
    /// it; the kernel refuses to remove a populated cgroup).
    pub fn release(&self, project_id: &str) {
        if let Some(dir) = self.dir(project_id) {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The control file, the value that freezes, and the value that says it is frozen.
    fn switch(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            Freezer::CgroupV1 { .. } => ("freezer.state", "FROZEN", "FROZEN"),
            _ => ("cgroup.freeze", "1", "frozen 1"),
        }
    }

    fn is_frozen_dir(&self, dir: &Path, done: &str) -> bool {
        match self {
            Freezer::CgroupV1 { .. } => {
                std::fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == done)
            }
            _ => std::fs::read_to_string(dir.join("cgroup.events"))
                .is_ok_and(|s| s.lines().any(|l| l.trim() == done)),
        }
    }
}

/// Undoes any freeze of `pid` that doze could have made, whoever made it: the `doze-computes`
/// cgroups of this project that hold it (found in `/proc/<pid>/cgroup`, so another doze
/// process's tree too), and a SIGSTOP. Best effort; waits (briefly) until no thread is
/// stopped, so that a SIGTERM sent next is handled.
pub fn thaw_anywhere(project_id: &str, pid: u32) {
    let suffix = format!("{COMPUTES_CGROUP}/{project_id}");
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(i), Some(c), Some(p)) => (i, c, p),
                _ => continue,
            };
            if !path.trim_end_matches('/').ends_with(&suffix) {
                continue;
            }
            let (mount, file, value) = if id == "0" && controllers.is_empty() {
                (mount_point(true, ""), "cgroup.freeze", "0")
            } else if controllers.split(',').any(|c| c == "freezer") {
                (mount_point(false, "freezer"), "freezer.state", "THAWED")
            } else {
                continue;
            };
            if let Some(mount) = mount {
                let _ = std::fs::write(mount.join(path.trim_start_matches('/')).join(file), value);
            }
        }
    }
    if process_state(pid) == Some('T') {
        mariadb::signal_pid(pid as i32, Signal::SIGCONT);
    }
}

/// True when every thread of `pid` is stopped by a signal (`T`): SIGSTOP stops them one by one.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let state = std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next())
            });
        match state {
            Some('T' | 't') => any = true,
            // Exited meanwhile.
            None | Some('Z' | 'X') => {}
            Some(_) => return false,
        }
    }
    any
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing '{value}' to {}", path.display()))
}

/// Polls `done` every half millisecond (a freeze takes a fraction of a millisecond) until it
/// holds or `timeout` passes.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn cgroup_holds(dir: &Path, pid: u32) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .is_ok_and(|s| s.lines().any(|l| l.trim().parse() == Ok(pid)))
}

fn mariadb_alive(pid: u32) -> bool {
    !matches!(process_state(pid), None | Some('Z') | Some('X'))
}

/// The one-letter state of a process (`R`, `S`, `T`, `Z`...), `None` when it does not exist.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
}

/// Memory a process alone holds, in bytes: its resident anonymous and shared-memory pages
/// (`RssAnon` + `RssShmem`), what stopping it gives back. `VmRSS` would also count the
/// `mariadbd` binary's and libraries' pages, which every compute shares (about 20 MiB each
/// here), and overstate a hundred frozen computes by 2 GiB.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let kb = field("RssAnon:")? + field("RssShmem:").unwrap_or(0);
    Some(kb * 1024)
}

/// The mount point of the cgroup v2 hierarchy and of the v1 hierarchy holding `controller`,
/// from `/proc/self/mountinfo`.
fn mount_point(v2: bool, controller: &str) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let fstype = r.next()?;
        let _source = r.next();
        let options = r.next().unwrap_or("");
        let mount = left.split_whitespace().nth(4)?;
        let hit = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && options.split(',').any(|o| o == controller)
        };
        hit.then(|| PathBuf::from(mount))
    })
}

/// This process's cgroup in the v2 hierarchy (`0::<path>`) or in the v1 hierarchy of
/// `controller`.
fn own_cgroup(v2: bool, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if v2 {
            id == "0" && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_owned())
    })
}

fn under(mount: &Path, cgroup: &str) -> PathBuf {
    mount
        .join(cgroup.trim_start_matches('/'))
        .join(COMPUTES_CGROUP)
}

/// `<v2 mount>/<doze's cgroup>/doze-computes`, made and checked writable, and whether the
/// memory controller could be enabled for the computes.
fn cgroup_v2_parent() -> anyhow::Result<(PathBuf, bool)> {
    let mount = mount_point(true, "").context("no cgroup2 file system is mounted")?;
    let own = own_cgroup(true, "").context("this process has no cgroup v2 membership")?;
    let parent = under(&mount, &own);
    make_parent(&parent)?;
    if !parent.join("cgroup.freeze").exists() {
        bail!(
            "{} has no cgroup.freeze (kernel older than 5.2)",
            parent.display()
        );
    }
    // Delegating the memory controller needs it in the parent's own subtree_control; a
    // cgroup holding processes cannot delegate it (the "no internal processes" rule), so this
    // may fail, and then memory is read from the server's private resident memory instead.
    let available = std::fs::read_to_string(parent.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
    let memory = available
        && (std::fs::read_to_string(parent.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
            || std::fs::write(parent.join("cgroup.subtree_control"), "+memory").is_ok());
    Ok((parent, memory))
}

fn cgroup_v1_parent() -> anyhow::Result<PathBuf> {
    let mount = mount_point(false, "freezer").context("no v1 freezer hierarchy is mounted")?;
    let own = own_cgroup(false, "freezer").context("this process has no v1 freezer cgroup")?;
    let parent = under(&mount, &own);
    make_parent(&parent)?;
    Ok(parent)
}

fn make_parent(parent: &Path) -> anyhow::Result<()> {
    match std::fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", parent.display())),
    }
    // Writable means a compute's cgroup can be made and a process moved into it.
    nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK)
        .with_context(|| format!("{} is not writable", parent.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!(
            "auto".parse::<FreezerChoice>().ok(),
            Some(FreezerChoice::Auto)
        );
        assert_eq!(
            "cgroup2".parse::<FreezerChoice>().ok(),
            Some(FreezerChoice::CgroupV2)
        );
        assert_eq!(
            "SIGNAL".parse::<FreezerChoice>().ok(),
            Some(FreezerChoice::Signal)
        );
        assert!("freeze-please".parse::<FreezerChoice>().is_err());
    }

    #[test]
    fn own_process_state_and_memory() {
        let me = std::process::id();
        assert!(matches!(process_state(me), Some('R' | 'S')));
        assert!(resident_bytes(me).is_some_and(|b| b > 0));
        assert_eq!(process_state(u32::MAX), None);
    }
}
