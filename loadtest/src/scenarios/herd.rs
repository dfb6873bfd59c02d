//! The herd scenario: many clients at once on a suspended or running compute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Map, json};
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::common::Common;
use crate::stats::{Progress, Shared, finish, new_hist, record};

use super::*;

#[derive(Args, Debug)]
pub struct HerdArgs {
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// With --admin: do not suspend the compute first.
    #[arg(long)]
    pub no_suspend: bool,
    /// What the herd resumes the compute from: `stopped` (a server start) or `frozen` (a thaw).
    #[arg(long, value_enum, default_value_t = ResumeFrom::Stopped)]
    pub from: ResumeFrom,
}

pub async fn herd(c: &Common, a: &HerdArgs) -> Result<()> {
    crate::common::raise_nofile(a.clients as u64 * 2 + 256);
    let targets = c.all_opts()?;
    let admin = Admin::from_common(c);
    let mut suspended = false;
    if let Some(admin) = &admin
        && !a.no_suspend
    {
        let project = c
            .project
            .clone()
            .context("herd with --admin needs --project")?;
        let compute_id = admin.compute_id(&project).await?;
        eprintln!(
            "herd: suspending compute {compute_id} of {project} (mode {})",
            a.from.mode()
        );
        suspend_and_check(admin, &compute_id, a.from).await?;
        suspended = true;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let starts_before = match &admin {
        Some(ad) => match ad.compute_starts().await {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("warning: metrics: {e:#}");
                None
            }
        },
        None => None,
    };
    let shared = Shared::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(a.clients));
    let mut set = JoinSet::new();
    let progress = Progress::start("herd", shared.clone(), c.doze_pid);
    eprintln!("herd: {} clients on {}", a.clients, c.target);
    let t_all = Instant::now();
    for i in 0..a.clients {
        let o = targets[i % targets.len()].clone();
        let shared = shared.clone();
        let barrier = barrier.clone();
        let timeout = c.connect_timeout;
        set.spawn(async move {
            let mut h = new_hist();
            barrier.wait().await;
            let t0 = Instant::now();
            match connect_select1(&o, timeout).await {
                Ok(conn) => {
                    record(&mut h, t0.elapsed());
                    shared.ok();
                    // Keep the session until everyone is done so the herd is really concurrent.
                    (h, Some(conn))
                }
                Err(e) => {
                    shared.error("herd connect+SELECT 1", &e);
                    (h, None)
                }
            }
        });
    }
    let mut h = new_hist();
    let mut conns = Vec::new();
    while let Some(r) = set.join_next().await {
        let (part, conn) = r.context("herd task panicked")?;
        h.add(&part).context("merge histograms")?;
        conns.extend(conn);
    }
    let wall = t_all.elapsed().as_secs_f64();
    drop(progress);
    let mut closers = JoinSet::new();
    for conn in conns {
        closers.spawn(async move {
            let _ = conn.disconnect().await;
        });
    }
    while closers.join_next().await.is_some() {}
    let starts = match (&admin, starts_before) {
        (Some(ad), Some(b)) => {
            // Let the control plane publish the counter.
            tokio::time::sleep(Duration::from_millis(200)).await;
            ad.compute_starts().await.ok().map(|a| a - b)
        }
        _ => None,
    };
    let mut extra = Map::new();
    extra.insert("clients".into(), json!(a.clients));
    extra.insert("failures".into(), json!(shared.error_count()));
    extra.insert("suspended_first".into(), json!(suspended));
    extra.insert("compute_starts".into(), json!(starts));
    extra.insert("wall_s".into(), json!(wall));
    finish(
        c,
        "herd",
        &format!(
            "{} clients at once{}: {} failed, wall {:.2} s, compute starts caused: {}",
            a.clients,
            if suspended {
                " on a suspended compute"
            } else {
                ""
            },
            shared.error_count(),
            wall,
            starts
                .map(|s| format!("{s}"))
                .unwrap_or_else(|| "n/a".into())
        ),
        extra,
        &h,
        &shared,
    )?;
    Ok(())
}
