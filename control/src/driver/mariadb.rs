//! Finding, initialising and starting `mariadbd` on this machine.
//!
//! Shared by the local compute driver and the test kit, so that tests start servers exactly the
//! way doze starts computes.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::unistd::{Gid, Uid};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Where Debian and most distributions put the server binaries when they are not on `PATH`.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];

/// Finds an executable by name on `PATH` or in the usual sbin directories.
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let extra = EXTRA_DIRS.iter().map(PathBuf::from);
    for dir in path_dirs.into_iter().chain(extra) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{name}` was not found on PATH or in /usr/sbin; install the MariaDB server \
         (Debian/Ubuntu: `apt-get install mariadb-server`)"
    )
}

/// True when this process runs as root, in which case mariadbd must run as the `mysql` user.
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The OS account a server runs as: `None` is this process's own account; `Some` is switched to
/// before `mariadbd` (or `mariadb-install-db`) starts, which needs root.
pub type Owner = Option<(Uid, Gid)>;

/// The account of a server that has no account of its own: `mysql` when doze runs as root
/// (mariadbd refuses to run as root), this process's own account otherwise. The local driver
/// gives every compute its own account instead (see `driver::local`).
pub fn mysql_owner() -> anyhow::Result<Owner> {
    if !running_as_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("mysql")
        .context("looking up the `mysql` user")?
        .context("running as root needs a `mysql` user (created by the mariadb-server package)")?;
    Ok(Some((user.uid, user.gid)))
}

/// Makes `cmd` run as `owner`.
fn run_as(cmd: &mut Command, owner: Owner) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
}

/// Mode of a directory only its owner may enter.
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of a doze-owned directory the compute user must pass through without listing it.
pub const TRAVERSE_ONLY_DIR: u32 = 0o711;

/// Creates `dir` (one level: its parent must exist) when missing, then sets its owner and
/// mode, whatever they were. Never touches a parent: directories doze did not create keep
/// their modes.
/// A symbolic link where a directory belongs is refused, never followed: someone may have
/// planted it (a shared temp dir) to make doze chown or chmod its target.
pub fn own_dir(dir: &Path, mode: u32, owner: Option<(Uid, Gid)>) -> anyhow::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.file_type().is_dir() {
        bail!(
            "{} should be a directory of doze's, but is a {}; remove it",
            dir.display(),
            if meta.file_type().is_symlink() {
                "symbolic link"
            } else {
                "file"
            }
        );
    }
    if let Some((uid, gid)) = owner
        && (meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw())
    {
        std::os::unix::fs::lchown(dir, Some(uid.as_raw()), Some(gid.as_raw()))
            .with_context(|| format!("chown {}", dir.display()))?;
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", dir.display()))?;
    }
    Ok(())
}

/// Checks that the compute user can pass through every directory above `dir`. doze does not
/// widen anyone's permissions to make that so: it says which directory is in the way.
pub fn check_reachable(dir: &Path, owner: Option<(Uid, Gid)>) -> anyhow::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p.as_os_str().is_empty() {
            break;
        }
        let meta = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        let mode = meta.mode();
        let passes = mode & 0o001 != 0
            || (mode & 0o010 != 0 && meta.gid() == gid.as_raw())
            || (mode & 0o100 != 0 && meta.uid() == uid.as_raw());
        if !passes {
            bail!(
                "the compute user (uid {uid}) cannot reach {}: {} has mode {:o}. Choose a \
                 --data-dir below directories that other users may pass through, or allow it \
                 with `chmod o+x {}`",
                dir.display(),
                p.display(),
                mode & 0o7777,
                p.display()
            );
        }
        parent = p.parent();
    }
    Ok(())
}

/// Gives `dir` and everything below it to `owner`, makes `dir` private (0700), and checks
/// `owner` can reach it.
///
/// The tree is walked only when `dir` is not `owner`'s yet (a new data directory, or storage
/// moving to the compute's own account): not on every start, and never through a symbolic
/// link (each entry is changed with `lchown`, and only real directories are entered).
pub fn hand_to(dir: &Path, owner: Owner) -> anyhow::Result<()> {
    if let Some((uid, gid)) = owner {
        let meta = std::fs::symlink_metadata(dir)?;
        if meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw() {
            chown_tree(dir, uid, gid)?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR))
        .with_context(|| format!("chmod 700 {}", dir.display()))?;
    check_reachable(dir, owner)
}

fn chown_tree(path: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))
        .with_context(|| format!("chown {}", path.display()))?;
    if std::fs::symlink_metadata(path)?.file_type().is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Makes `cmd` start with a clean environment: only what a server needs. doze's own
/// environment holds its secrets (`DOZE_DB_DSN`, `DOZE_ADMIN_TOKEN`), and a compute can read
/// its own `/proc/PID/environ`.
fn clean_env(cmd: &mut Command, tmp: &Path) {
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C")
        .env("TMPDIR", tmp);
}

/// A random administrative password: 32 characters from a 62-letter alphabet (190 bits).
pub fn new_admin_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Initialises an empty data directory with `mariadb-install-db`, sealed: the only account
/// with privileges over the server is `root@localhost`, reachable only through the unix socket
/// (`--skip-name-resolve` keeps TCP clients from ever matching `localhost`), and it needs
/// `root_password`, which only doze holds.
pub async fn install_db(datadir: &Path, root_password: &str, owner: Owner) -> anyhow::Result<()> {
    if !datadir.is_dir() {
        std::fs::create_dir(datadir).with_context(|| format!("creating {}", datadir.display()))?;
    }
    hand_to(datadir, owner)?;
    // A private temp dir: the bootstrap server's temporary tables must not live in a /tmp
    // that other programs clean up or share.
    let tmp = private_tmpdir(datadir, owner)?;
    let install = find_binary("mariadb-install-db")?;
    let mut cmd = Command::new(&install);
    clean_env(&mut cmd, &tmp);
    cmd.current_dir(&tmp)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--skip-name-resolve")
        .stdin(Stdio::null());
    run_as(&mut cmd, owner);
    let output = cmd
        .output()
        .await
        .with_context(|| format!("running {}", install.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        bail!(
            "mariadb-install-db failed ({}): {}",
            output.status,
            tail(&format!("{stdout}\n{stderr}"), 20)
        );
    }
    seal_root(datadir, root_password, owner).await
}

/// Keeps only `root@localhost` (mariadb-install-db also creates password-less `root@127.0.0.1`,
/// `root@::1` and `root@<hostname>`, which anyone on the machine could use over TCP) and sets
/// its password, in a short bootstrap run while the server does not listen. Also seals a data
/// directory made by an older doze, whose root had no password.
pub async fn seal_root(datadir: &Path, root_password: &str, owner: Owner) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    if !root_password.chars().all(|c| c.is_ascii_alphanumeric()) || root_password.len() < 16 {
        bail!("the administrative password must be at least 16 letters and digits");
    }
    let tmp = private_tmpdir(datadir, owner)?;
    let mariadbd = find_binary("mariadbd")?;
    let mut cmd = Command::new(&mariadbd);
    clean_env(&mut cmd, &tmp);
    cmd.current_dir(&tmp)
        .arg("--no-defaults")
        .arg("--bootstrap")
        .arg(format!("--datadir={}", datadir.display()))
        .arg("--skip-networking")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_as(&mut cmd, owner);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} --bootstrap", mariadbd.display()))?;
    // Bootstrap runs without the grant tables loaded, so ALTER USER is refused: the account
    // row is written directly, in the form MariaDB itself uses.
    // Every account but root@localhost and MariaDB's own goes, with every grant: storage of
    // an older doze, whose roles had ALL PRIVILEGES, may hold accounts a tenant created for
    // itself. doze's roles are created again (with their current privileges) before the
    // compute serves anyone.
    let sql = format!(
        "DELETE FROM mysql.global_priv WHERE NOT (Host = 'localhost' AND User IN ('root', 'mariadb.sys')) \
           AND NOT (User = 'PUBLIC' AND Host = '');\n\
         DELETE FROM mysql.db WHERE NOT (User = 'mariadb.sys' AND Host = 'localhost');\n\
         DELETE FROM mysql.tables_priv WHERE NOT (User = 'mariadb.sys' AND Host = 'localhost');\n\
         DELETE FROM mysql.columns_priv WHERE NOT (User = 'mariadb.sys' AND Host = 'localhost');\n\
         DELETE FROM mysql.procs_priv WHERE NOT (User = 'mariadb.sys' AND Host = 'localhost');\n\
         DELETE FROM mysql.roles_mapping;\n\
         DELETE FROM mysql.proxies_priv WHERE NOT (User = 'root' AND Host = 'localhost');\n\
         UPDATE mysql.global_priv SET Priv = JSON_SET(Priv, '$.plugin', 'mysql_native_password', \
         '$.authentication_string', PASSWORD('{root_password}')) \
         WHERE User = 'root' AND Host = 'localhost';\n"
    );
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(sql.as_bytes()).await?;
    }
    let output = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stderr.contains("ERROR") {
        bail!(
            "sealing the compute's root account failed ({}): {}",
            output.status,
            tail(&stderr, 20)
        );
    }
    Ok(())
}

/// `<datadir>/../tmp`, created private to the compute user: the temp dir of a server on
/// `datadir`, outside the datadir so it never shows up as a database.
pub fn private_tmpdir(datadir: &Path, owner: Owner) -> anyhow::Result<PathBuf> {
    sibling_dir(datadir, "tmp", owner)
}

/// `<datadir>/../files`, created private to the compute user: the server's
/// `secure_file_priv`, the only directory its file functions may touch (for its own root; roles
/// have no FILE privilege at all).
pub fn files_dir(datadir: &Path, owner: Owner) -> anyhow::Result<PathBuf> {
    sibling_dir(datadir, "files", owner)
}

fn sibling_dir(datadir: &Path, name: &str, owner: Owner) -> anyhow::Result<PathBuf> {
    let base = datadir.parent().unwrap_or(datadir);
    let dir = base.join(name);
    own_dir(&dir, PRIVATE_DIR, owner)?;
    check_reachable(&dir, owner)?;
    Ok(dir)
}

/// Client connections a compute accepts unless its config says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1000;

/// Server options that make a start faster without costing steady-state throughput. The Aria
/// page cache (128M by default) and the MyISAM key buffer (128M) are allocated and initialised
/// at start, about 25 ms of a ~85 ms start here, for engines a compute uses only for its system
/// tables and on-disk temporary tables; a 16M InnoDB log buffer (2M suffices for OLTP
/// transactions) costs a few ms more. sysbench oltp_read_write measured the same throughput
/// with and without them (docs/benchmarks.md). A project's `mariadb_options` still override them.
pub const FAST_START_ARGS: [&str; 3] = [
    "--aria-pagecache-buffer-size=16M",
    "--key-buffer-size=8M",
    "--innodb-log-buffer-size=2M",
];

/// How to start one mariadbd.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    pub datadir: PathBuf,
    pub port: u16,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub error_log: PathBuf,
    pub buffer_pool: String,
    pub max_allowed_packet: String,
    /// The only directory the server's file functions may read and write (`None`: the
    /// server's default, which is no restriction).
    pub secure_file_priv: Option<PathBuf>,
    /// The OS account the server runs as.
    pub owner: Owner,
    /// Further `--option=value` arguments, appended last so they win.
    pub extra_args: Vec<String>,
}

impl ServerSpec {
    /// A spec with every file inside `datadir` (the socket too, unless that path is too long
    /// for a unix socket, in which case it goes to a private directory in the temp dir).
    pub fn in_datadir(datadir: &Path, port: u16) -> Self {
        let mut socket = datadir.join("mariadbd.sock");
        if socket.as_os_str().len() > 100 {
            socket = std::env::temp_dir()
                .join(format!("doze-{port}-{}", std::process::id()))
                .join("mariadbd.sock");
        }
        Self {
            datadir: datadir.to_path_buf(),
            port,
            socket,
            pid_file: datadir.join("mariadbd.pid"),
            error_log: datadir.join("mariadbd.err"),
            buffer_pool: "32M".to_owned(),
            max_allowed_packet: "64M".to_owned(),
            secure_file_priv: None,
            owner: mysql_owner().unwrap_or(None),
            extra_args: Vec::new(),
        }
    }

    /// The full argument list for mariadbd.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--no-defaults".to_owned(),
            format!("--datadir={}", self.datadir.display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--socket={}", self.socket.display()),
            format!("--pid-file={}", self.pid_file.display()),
            format!("--log-error={}", self.error_log.display()),
            "--skip-name-resolve".to_owned(),
            "--skip-log-bin".to_owned(),
            // DATA/INDEX DIRECTORY would let a role put table files in any directory the
            // compute user can write, another compute's datadir included.
            "--skip-symbolic-links".to_owned(),
            "--performance-schema=OFF".to_owned(),
            format!("--innodb-buffer-pool-size={}", self.buffer_pool),
            format!("--max-allowed-packet={}", self.max_allowed_packet),
            // doze holds one compute connection per client session, so the compute's limit is
            // the project's session limit; MariaDB's default of 151 is too low for a front door.
            format!("--max-connections={DEFAULT_MAX_CONNECTIONS}"),
            // A herd of clients makes doze open as many compute connections at once; MariaDB's
            // default back_log (250 here) overflows and the kernel retries the dropped SYNs a
            // whole second later. Queue as many as the compute accepts.
            format!("--back-log={DEFAULT_MAX_CONNECTIONS}"),
        ];
        args.extend(FAST_START_ARGS.iter().map(|a| (*a).to_owned()));
        if let Some(files) = &self.secure_file_priv {
            args.push(format!("--secure-file-priv={}", files.display()));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts mariadbd in its own process group (so a Ctrl-C to doze does not reach it
    /// before doze has stopped it cleanly).
    pub fn spawn(&self) -> anyhow::Result<Child> {
        let mariadbd = find_binary("mariadbd")?;
        let mut cmd = Command::new(&mariadbd);
        let tmp = private_tmpdir(&self.datadir, self.owner)?;
        clean_env(&mut cmd, &tmp);
        cmd.current_dir(&tmp);
        if let Some(dir) = self.socket.parent()
            && dir != self.datadir
        {
            own_dir(dir, PRIVATE_DIR, self.owner)?;
        }
        if let Some(files) = &self.secure_file_priv {
            own_dir(files, PRIVATE_DIR, self.owner)?;
        }
        run_as(&mut cmd, self.owner);
        let child = cmd
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .with_context(|| format!("starting {}", mariadbd.display()))?;
        Ok(child)
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// Why a server did not start, in one line for a log and a client's ERR (whose clients show
/// about 512 bytes): the `[ERROR]` lines of its error log's last start, without their
/// timestamps, the first (the cause) first; the last lines when there is none.
pub fn error_log_causes(path: &Path) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(no error log at {}: {e})", path.display()),
    };
    causes_in(&text)
}

fn causes_in(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let recent = &lines[lines.len().saturating_sub(60)..];
    let errors: Vec<&str> = recent
        .iter()
        .filter_map(|l| l.split_once("[ERROR] ").map(|(_, cause)| cause.trim()))
        .filter(|c| !c.is_empty())
        .fold(Vec::new(), |mut seen, c| {
            if !seen.contains(&c) {
                seen.push(c);
            }
            seen
        });
    let picked: Vec<String> = if errors.is_empty() {
        recent[recent.len().saturating_sub(3)..]
            .iter()
            .map(|l| l.trim().to_owned())
            .collect()
    } else {
        errors.iter().map(|c| (*c).to_owned()).collect()
    };
    let joined = picked.join("; ");
    if joined.is_empty() {
        "(its error log is empty)".to_owned()
    } else {
        joined
    }
}

/// The last lines of a server's error log, for error messages.
pub fn error_log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("(no error log at {}: {e})", path.display()),
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: another process could take it first,
/// which a start then reports as a failure).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// How often a starting server's port is probed. Resume latency is the product: poll tightly.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);

/// Waits until a MySQL greeting (or an ERR packet, which still proves the server is up) arrives
/// on `port`, the child exits, or `timeout` passes.
pub async fn wait_for_greeting(
    port: u16,
    child: &mut Child,
    error_log: &Path,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "mariadbd exited during start-up ({status}); its error log says: {}",
                error_log_causes(error_log)
            );
        }
        if probe_greeting(port).await {
            return Ok(started.elapsed());
        }
        if Instant::now() >= deadline {
            bail!(
                "mariadbd did not answer on port {port} within {timeout:?}; its error log says: {}",
                error_log_causes(error_log)
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Connects and reads the first packet header and byte: true when it is a greeting (0x0a) or
/// an ERR (0xff).
pub async fn probe_greeting(port: u16) -> bool {
    probe_greeting_at(&format!("127.0.0.1:{port}")).await
}

/// A MySQL greeting, or a server's ERR packet (too many connections, host blocked: the server
/// is up), on `address` (`host:port`).
pub async fn probe_greeting_at(address: &str) -> bool {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(address)).await
    else {
        return false;
    };
    let mut head = [0u8; 5];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut head)).await,
        Ok(Ok(_)) if head[4] == 0x0a || head[4] == 0xff
    )
}

/// Sends SIGTERM and waits for a clean exit (InnoDB shutdown), SIGKILL after `grace`.
pub async fn stop_child(child: &mut Child, grace: Duration) -> anyhow::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    if let Some(pid) = child.id() {
        signal_pid(pid as i32, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            status?;
            Ok(())
        }
        Err(_) => {
            // SIGKILL, and a bounded wait: a task the kernel cannot kill at once (a v1-frozen
            // one, a D-state I/O) must not hold the project's lock for ever.
            child.start_kill()?;
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                bail!("mariadbd did not stop within {grace:?}, and not within 10 s of SIGKILL");
            }
            bail!("mariadbd did not stop within {grace:?} and was killed")
        }
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn signal_pid(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_failure_causes_are_the_error_lines_without_timestamps() {
        let log = "2026-11-27 16:14:01 0 [Note] Starting MariaDB 10.11.19 source revision\n\
                   2026-11-27 16:14:01 0 [ERROR] mariadbd: unknown variable 'innodb_bogus=1'\n\
                   2026-11-27 16:14:01 0 [ERROR] Aborting\n";
        assert_eq!(
            causes_in(log),
            "mariadbd: unknown variable 'innodb_bogus=1'; Aborting"
        );
        assert_eq!(causes_in("a\nb\nc\nd"), "b; c; d");
        assert_eq!(causes_in(""), "(its error log is empty)");
    }

    use super::*;

    #[test]
    fn computes_queue_as_many_connects_as_they_accept() {
        let args = ServerSpec::in_datadir(Path::new("/tmp/x"), 3306).args();
        let value = |name: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(name))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let max = value("--max-connections=").unwrap_or(0);
        let back_log = value("--back-log=").unwrap_or(0);
        assert!(max >= 1000, "max_connections {max}");
        assert!(
            back_log >= max,
            "back_log {back_log} < max_connections {max}"
        );
    }
}
