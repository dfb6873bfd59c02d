//! The idle scenario: memory per idle session held through doze.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use mysql_async::prelude::*;
use serde_json::{Map, json};
use tokio::task::JoinSet;

use crate::common::{Common, opts, parse_duration, rss_opt};
use crate::stats::{Progress, Shared, finish, new_hist, record};

use super::*;

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// How long to hold the sessions open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Connection attempts in flight while opening.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
}

pub async fn idle(c: &Common, a: &IdleArgs) -> Result<()> {
    crate::common::raise_nofile(a.connections as u64 + 256);
    let o = opts(c, &c.target, &c.user, &c.password)?;
    let shared = Shared::new();
    let rss_before = rss_opt(c.doze_pid);
    eprintln!(
        "idle: opening {} sessions on {} ({} at a time); doze RSS before: {}",
        a.connections,
        c.target,
        a.parallel,
        kib(rss_before)
    );
    let progress = Progress::start("idle-open", shared.clone(), c.doze_pid);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.parallel.max(1)));
    let mut set = JoinSet::new();
    for _ in 0..a.connections {
        let o = o.clone();
        let shared = shared.clone();
        let sem = sem.clone();
        let timeout = c.connect_timeout;
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let t0 = Instant::now();
            match connect_select1(&o, timeout).await {
                Ok(conn) => {
                    let d = t0.elapsed();
                    shared.ok();
                    (Some(d), Some(conn))
                }
                Err(e) => {
                    shared.error("open idle session", &e);
                    (None, None)
                }
            }
        });
    }
    let mut h = new_hist();
    let mut conns = Vec::new();
    while let Some(r) = set.join_next().await {
        let (d, conn) = r.context("idle task panicked")?;
        if let Some(d) = d {
            record(&mut h, d);
        }
        conns.extend(conn);
    }
    drop(progress);
    let open = conns.len();
    eprintln!("idle: {open} sessions open, holding {:?}", a.hold);
    let hold_until = Instant::now() + a.hold;
    let mut rss_max = None::<u64>;
    let mut rss_last = None;
    loop {
        let r = rss_opt(c.doze_pid);
        if let Some(v) = r {
            rss_max = Some(rss_max.map_or(v, |m| m.max(v)));
            rss_last = Some(v);
        }
        eprintln!("[idle hold] sessions={open} doze RSS={}", kib(r));
        if Instant::now() >= hold_until {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1).min(hold_until - Instant::now())).await;
    }
    // Check the sessions are still alive after holding.
    let mut alive = 0usize;
    let mut closers = JoinSet::new();
    for mut conn in conns {
        closers.spawn(async move {
            let ok = conn.ping().await.is_ok();
            let _ = conn.disconnect().await;
            ok
        });
    }
    while let Some(r) = closers.join_next().await {
        if r.unwrap_or(false) {
            alive += 1;
        }
    }
    let per_session = match (rss_before, rss_last) {
        (Some(b), Some(l)) if open > 0 => Some((l as f64 - b as f64) / open as f64),
        _ => None,
    };
    let mut extra = Map::new();
    extra.insert("connections".into(), json!(a.connections));
    extra.insert("open".into(), json!(open));
    extra.insert("alive_after_hold".into(), json!(alive));
    extra.insert("hold_s".into(), json!(a.hold.as_secs_f64()));
    extra.insert("doze_rss_before_kib".into(), json!(rss_before));
    extra.insert("doze_rss_holding_kib".into(), json!(rss_last));
    extra.insert("doze_rss_max_kib".into(), json!(rss_max));
    extra.insert("rss_per_session_kib".into(), json!(per_session));
    finish(
        c,
        "idle",
        &format!(
            "{open}/{} sessions opened, {alive} alive after {:?}; doze RSS before {} holding {} => {} per session",
            a.connections,
            a.hold,
            kib(rss_before),
            kib(rss_last),
            per_session
                .map(|p| format!("{p:.1} KiB"))
                .unwrap_or_else(|| "n/a (no --doze-pid)".into())
        ),
        extra,
        &h,
        &shared,
    )?;
    Ok(())
}
