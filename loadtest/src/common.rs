//! Connection options, duration parsing, RSS reading and other small helpers.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use mysql_async::{Conn, Opts, OptsBuilder};

/// Flags shared by every scenario.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// MySQL endpoint under test (doze's proxy, HAProxy or a mariadbd), host:port. The herd and
    /// churn scenarios take several, comma-separated (replicas of doze), and spread their
    /// clients over them: client i uses the (i mod n)-th.
    #[arg(long, default_value = "127.0.0.1:6033", global = true)]
    pub target: String,
    /// User name. Through doze this is `<project>.<role>`.
    #[arg(long, default_value = "bench.bench", global = true)]
    pub user: String,
    /// Password.
    #[arg(long, default_value = "", global = true)]
    pub password: String,
    /// Default database (schema).
    #[arg(long, global = true)]
    pub database: Option<String>,
    /// doze's admin REST API base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// Bearer token for the admin API.
    #[arg(long, env = "DOZE_ADMIN_TOKEN", global = true)]
    pub admin_token: Option<String>,
    /// Project (id or name) whose compute the suspend scenarios act on.
    #[arg(long, global = true)]
    pub project: Option<String>,
    /// doze's process id, to report its RSS (from /proc/PID/status).
    #[arg(long, global = true)]
    pub doze_pid: Option<u32>,
    /// Write a machine-readable JSON result to this file.
    #[arg(long, global = true)]
    pub json: Option<std::path::PathBuf>,
    /// Write a latency distribution plot (PNG) to this file.
    #[arg(long, global = true)]
    pub plot: Option<std::path::PathBuf>,
    /// Free-form label stored in the JSON (used by `report` to group rows).
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// What the target is (e.g. direct, haproxy, doze); stored in the JSON.
    #[arg(long, global = true)]
    pub via: Option<String>,
    /// Round number; stored in the JSON.
    #[arg(long, global = true)]
    pub round: Option<u32>,
    /// Timeout for one connection attempt (connect + authenticate).
    #[arg(long, default_value = "60s", value_parser = parse_duration, global = true)]
    pub connect_timeout: Duration,
}

/// Parses "8", "8s", "500ms", "2m", "1h", "1.5s".
/// doze's own duration syntax (`250ms`, `8s`, `5m`, a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    doze_proxy::config::parse_duration(s).map_err(anyhow::Error::msg)
}

impl Common {
    /// The endpoints of `--target`.
    pub fn targets(&self) -> Vec<&str> {
        self.target
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Connection options for every endpoint of `--target`, in order.
    pub fn all_opts(&self) -> Result<Vec<Opts>> {
        let all: Vec<Opts> = self
            .targets()
            .into_iter()
            .map(|t| opts(self, t, &self.user, &self.password))
            .collect::<Result<_>>()?;
        if all.is_empty() {
            bail!("--target names no endpoint");
        }
        Ok(all)
    }
}

pub fn split_hostport(target: &str) -> Result<(String, u16)> {
    let (host, port) = target
        .rsplit_once(':')
        .with_context(|| format!("target {target:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("invalid port in target {target:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_string(), port))
}

/// Builds driver options: TCP only, no TLS, statement cache on, and the settings the driver
/// would otherwise query after connecting set up front so a connect is handshake + auth only.
pub fn opts(c: &Common, target: &str, user: &str, password: &str) -> Result<Opts> {
    let (host, port) = split_hostport(target)?;
    let b = OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(c.database.clone())
        .prefer_socket(false)
        .stmt_cache_size(Some(64))
        .max_allowed_packet(Some(16 * 1024 * 1024))
        .wait_timeout(Some(28800));
    Ok(b.into())
}

pub async fn connect(opts: &Opts, timeout: Duration) -> Result<Conn> {
    match tokio::time::timeout(timeout, Conn::new(opts.clone())).await {
        Ok(r) => r.context("connect"),
        Err(_) => bail!("connect timed out after {timeout:?}"),
    }
}

/// Resident set size of a process in KiB (VmRSS from /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    for line in s.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let v = rest.trim().trim_end_matches("kB").trim();
            return v.parse().with_context(|| format!("parse VmRSS {rest:?}"));
        }
    }
    bail!("no VmRSS in {path}")
}

pub fn rss_opt(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    match rss_kib(pid) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("warning: cannot read RSS of pid {pid}: {e:#}");
            None
        }
    }
}

/// Raises the soft open-files limit to the hard limit (many sessions need many sockets).
pub fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft >= want {
                return;
            }
            let new = hard.min(want.max(soft));
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, new, hard) {
                eprintln!("warning: cannot raise RLIMIT_NOFILE to {new}: {e}");
            }
            if new < want {
                eprintln!(
                    "warning: open-files hard limit is {hard}, below the {want} this run wants (raise `ulimit -n`)"
                );
            }
        }
        Err(e) => eprintln!("warning: getrlimit: {e}"),
    }
}

pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() -> Result<()> {
        assert_eq!(parse_duration("8")?, Duration::from_secs(8));
        assert_eq!(parse_duration("8s")?, Duration::from_secs(8));
        assert_eq!(parse_duration("250ms")?, Duration::from_millis(250));
        assert_eq!(parse_duration("2m")?, Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3 parsecs").is_err());
        Ok(())
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn hostport() -> Result<()> {
        assert_eq!(
            split_hostport("127.0.0.1:6033")?,
            ("127.0.0.1".into(), 6033)
        );
        assert!(split_hostport("nohost").is_err());
        Ok(())
    }
}
