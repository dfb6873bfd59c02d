//! `mariadbd-start`: the bare-mariadbd baseline for cold starts. Installs a throwaway datadir,
//! then K times starts `mariadbd` on it and times spawn -> protocol greeting on TCP.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Map, json};

use crate::common::Common;
use crate::stats::{Shared, finish, new_hist, record};

#[derive(Args, Debug)]
pub struct MariadbdStartArgs {
    #[arg(long, default_value_t = 9)]
    pub runs: usize,
    #[arg(long, default_value = "mariadbd")]
    pub mariadbd: String,
    #[arg(long, default_value = "mariadb-install-db")]
    pub install_db: String,
    /// Extra argument for mariadbd (repeatable), e.g. --extra-arg=--innodb-buffer-pool-size=16M.
    #[arg(long = "extra-arg", allow_hyphen_values = true)]
    pub extra_args: Vec<String>,
}

/// Kills (SIGTERM, then SIGKILL) the server if the run is abandoned.
struct ServerGuard(Option<Child>);

impl ServerGuard {
    fn stop(&mut self) -> Result<Duration> {
        let Some(mut child) = self.0.take() else {
            return Ok(Duration::ZERO);
        };
        let t0 = Instant::now();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            eprintln!("warning: SIGTERM mariadbd: {e}");
        }
        let deadline = t0 + Duration::from_secs(30);
        loop {
            if child.try_wait().context("wait mariadbd")?.is_some() {
                return Ok(t0.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mariadbd did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits until a MySQL greeting (protocol version 10) arrives on port.
fn wait_greeting(port: u16, child: &mut Child, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().context("wait mariadbd")? {
            bail!("mariadbd exited early: {st}");
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).is_ok() {
                if buf[4] == 10 {
                    return Ok(());
                }
                bail!("unexpected greeting byte {}", buf[4]);
            }
        }
        if Instant::now() > deadline {
            bail!("no greeting within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub async fn mariadbd_start(c: &Common, a: &MariadbdStartArgs) -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let tmp = tempfile::Builder::new()
        .prefix("doze-lt-mariadbd-")
        .tempdir()
        .context("create temp dir")?;
    let dir: PathBuf = tmp.path().to_path_buf();
    Command::new("chmod")
        .arg("755")
        .arg(&dir)
        .status()
        .context("chmod temp dir")?;
    let data = dir.join("data");
    eprintln!("mariadbd-start: installing a datadir in {}", data.display());
    let t_inst = Instant::now();
    let mut inst = Command::new(&a.install_db);
    inst.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if root {
        inst.arg("--user=mysql");
    }
    let out = inst
        .output()
        .with_context(|| format!("run {} (install mariadb-server)", a.install_db))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            a.install_db,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let install_s = t_inst.elapsed().as_secs_f64();
    if root {
        let st = Command::new("chown")
            .args(["-R", "mysql:mysql"])
            .arg(&dir)
            .status()
            .context("chown")?;
        if !st.success() {
            bail!("chown -R mysql {} failed", dir.display());
        }
    }
    let shared = Shared::new();
    let mut h = new_hist();
    let mut runs = Vec::new();
    let mut shutdowns = Vec::new();
    let log = dir.join("mariadbd.log");
    for run in 1..=a.runs {
        let port = free_port()?;
        let logf = std::fs::File::create(&log).context("create log")?;
        let mut cmd = Command::new(&a.mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", dir.join("s.sock").display()))
            .arg(format!("--pid-file={}", dir.join("m.pid").display()))
            .arg("--skip-log-bin")
            .arg("--bind-address=127.0.0.1")
            .args(&a.extra_args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        if root {
            cmd.arg("--user=mysql");
        }
        let t0 = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", a.mariadbd))?;
        let mut guard = ServerGuard(Some(child));
        let r = match guard.0.as_mut() {
            Some(ch) => wait_greeting(port, ch, Duration::from_secs(60)),
            None => bail!("internal: no child"),
        };
        let d = t0.elapsed();
        match r {
            Ok(()) => {
                record(&mut h, d);
                shared.ok();
                eprintln!(
                    "mariadbd-start run {run}/{}: {:.1} ms",
                    a.runs,
                    d.as_secs_f64() * 1000.0
                );
                runs.push(json!({"run": run, "start_ms": d.as_secs_f64() * 1000.0}));
            }
            Err(e) => {
                let e = e.context(format!("log tail:\n{}", log_tail(&log)));
                shared.error("mariadbd start", &e);
                runs.push(json!({"run": run, "error": format!("{e:#}")}));
            }
        }
        let sd = guard.stop()?;
        shutdowns.push(sd.as_secs_f64() * 1000.0);
    }
    let mut extra = Map::new();
    extra.insert("runs".into(), json!(runs));
    extra.insert("install_db_s".into(), json!(install_s));
    extra.insert(
        "shutdown_ms_median".into(),
        json!(crate::common::median(&mut shutdowns)),
    );
    finish(
        c,
        "mariadbd-start",
        &format!(
            "{} starts of a bare mariadbd on a fresh datadir (install took {install_s:.2} s): spawn -> greeting on TCP",
            a.runs
        ),
        extra,
        &h,
        &shared,
    )?;
    drop(tmp);
    Ok(())
}
