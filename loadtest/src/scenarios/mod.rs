//! The load scenarios, one per file; the helpers they share live here.

mod churn;
mod cold_start;
mod herd;
mod idle;
mod projects;
mod relay;

pub use churn::{ChurnArgs, churn};
pub use cold_start::{ColdStartArgs, cold_start};
pub use herd::{HerdArgs, herd};
pub use idle::{IdleArgs, idle};
pub use projects::{ProjectsArgs, projects};
pub use relay::{RelayArgs, relay};

use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::common::{Common, connect};
use crate::stats::new_hist;

pub(crate) async fn join_hists(set: &mut JoinSet<Histogram<u64>>) -> Result<Histogram<u64>> {
    let mut h = new_hist();
    while let Some(r) = set.join_next().await {
        let part = r.context("worker task panicked")?;
        h.add(&part).context("merge histograms")?;
    }
    Ok(h)
}

/// One connect + authenticate + `SELECT 1`; returns the connection for the caller to close.
pub(crate) async fn connect_select1(o: &Opts, timeout: Duration) -> Result<Conn> {
    let mut conn = connect(o, timeout).await?;
    let one: Option<i64> = conn.query_first("SELECT 1").await.context("SELECT 1")?;
    if one != Some(1) {
        bail!("SELECT 1 returned {one:?}");
    }
    Ok(conn)
}

pub(crate) fn need_admin(c: &Common, what: &str) -> Result<(Admin, String)> {
    let admin = Admin::from_common(c).with_context(|| format!("{what} needs --admin"))?;
    let project = c
        .project
        .clone()
        .with_context(|| format!("{what} needs --project"))?;
    Ok((admin, project))
}

/// Suspends the compute. A session the scenario just closed may still be counted for a moment
/// (doze refuses to cut open sessions, 409 `sessions_open`): that is retried for up to 2 s.
/// What a scenario suspends a compute to before it measures a resume (`--from`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Stopped: the resume is a server start.
    #[default]
    Stopped,
    /// Frozen: the resume is a thaw.
    Frozen,
}

impl ResumeFrom {
    pub fn mode(self) -> &'static str {
        match self {
            ResumeFrom::Stopped => "stop",
            ResumeFrom::Frozen => "freeze",
        }
    }

    fn state(self) -> &'static str {
        match self {
            ResumeFrom::Stopped => "suspended",
            ResumeFrom::Frozen => "frozen",
        }
    }
}

pub(crate) async fn suspend_and_check(
    admin: &Admin,
    compute_id: &str,
    from: ResumeFrom,
) -> Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let r = loop {
        match admin.suspend(compute_id, from.mode()).await {
            Ok(r) => break r,
            Err(e)
                if format!("{e:#}").contains("sessions_open")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("suspend compute {compute_id}")),
        }
    };
    if let Some(state) = r.get("state").and_then(Value::as_str)
        && !state.eq_ignore_ascii_case(from.state())
    {
        eprintln!(
            "warning: after suspend (mode {}) the compute reports state {state:?}",
            from.mode()
        );
    }
    Ok(r)
}

pub(crate) fn kib(v: Option<u64>) -> String {
    match v {
        Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
        None => "n/a".into(),
    }
}
