//! The load scenarios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::common::{Common, connect, opts, parse_duration, rss_opt};
use crate::stats::{Progress, Shared, finish, new_hist, record};

async fn join_hists(set: &mut JoinSet<Histogram<u64>>) -> Result<Histogram<u64>> {
    let mut h = new_hist();
    while let Some(r) = set.join_next().await {
        let part = r.context("worker task panicked")?;
        h.add(&part).context("merge histograms")?;
    }
    Ok(h)
}

// ---------------------------------------------------------------------------------------------
// relay

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// Concurrent sessions.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Create and fill the sbtest tables if missing (then run, unless --duration 0).
    #[arg(long)]
    pub prepare: bool,
    #[arg(long, default_value_t = 4)]
    pub tables: u32,
    #[arg(long, default_value_t = 10_000)]
    pub table_size: u32,
}

pub async fn relay(c: &Common, a: &RelayArgs) -> Result<()> {
    if a.tables == 0 || a.table_size == 0 || a.connections == 0 {
        bail!("--tables, --table-size and --connections must be > 0");
    }
    let o = opts(c, &c.target, &c.user, &c.password)?;
    if c.database.is_none() {
        eprintln!(
            "warning: no --database given; sbtest tables are looked up in the user's default schema"
        );
    }
    if a.prepare {
        prepare_tables(c, &o, a.tables, a.table_size).await?;
        if a.duration.is_zero() {
            return Ok(());
        }
    }
    let shared = Shared::new();
    // Open every session first so the measured window is steady-state relaying.
    let mut conns = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        let mut conn = connect(&o, c.connect_timeout)
            .await
            .with_context(|| format!("open session {i} of {}", a.connections))?;
        let mut stmts = Vec::new();
        for t in 1..=a.tables {
            let st = conn
                .prep(format!("SELECT c FROM sbtest{t} WHERE id=?"))
                .await
                .with_context(|| format!("prepare on sbtest{t} (did you run --prepare?)"))?;
            stmts.push(st);
        }
        conns.push((conn, stmts));
    }
    eprintln!(
        "relay: {} sessions open on {}, running {:?}",
        a.connections, c.target, a.duration
    );
    let progress = Progress::start("relay", shared.clone(), c.doze_pid);
    let t0 = Instant::now();
    let deadline = t0 + a.duration;
    let mut set = JoinSet::new();
    for (mut conn, stmts) in conns {
        let shared = shared.clone();
        let table_size = a.table_size;
        set.spawn(async move {
            let mut h = new_hist();
            let mut rng = SmallRng::from_os_rng();
            while Instant::now() < deadline {
                let st = &stmts[rng.random_range(0..stmts.len())];
                let id: u32 = rng.random_range(1..=table_size);
                let q0 = Instant::now();
                match conn.exec_first::<String, _, _>(st, (id,)).await {
                    Ok(_) => {
                        record(&mut h, q0.elapsed());
                        shared.ok();
                    }
                    Err(e) => {
                        shared.error("point select", &e.into());
                        if conn.ping().await.is_err() {
                            // The session is gone; stop this worker rather than spin on errors.
                            break;
                        }
                    }
                }
            }
            let _ = conn.disconnect().await;
            h
        });
    }
    let h = join_hists(&mut set).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    drop(progress);
    let qps = shared.ok_count() as f64 / elapsed;
    let mut extra = Map::new();
    extra.insert("qps".into(), json!(qps));
    extra.insert("connections".into(), json!(a.connections));
    extra.insert("duration_s".into(), json!(elapsed));
    extra.insert("tables".into(), json!(a.tables));
    extra.insert("table_size".into(), json!(a.table_size));
    finish(
        c,
        "relay",
        &format!(
            "{} sessions, {:.1} s: {:.0} queries/s (prepared point select)",
            a.connections, elapsed, qps
        ),
        extra,
        &h,
        &shared,
    )?;
    Ok(())
}

fn sb_digits(rng: &mut SmallRng, groups: usize) -> String {
    let mut s = String::with_capacity(groups * 12);
    for g in 0..groups {
        if g > 0 {
            s.push('-');
        }
        for _ in 0..11 {
            s.push(char::from(b'0' + rng.random_range(0..10u8)));
        }
    }
    s
}

async fn prepare_tables(c: &Common, o: &Opts, tables: u32, size: u32) -> Result<()> {
    // Connect without a default schema so the schema can be created first.
    let o = mysql_async::OptsBuilder::from_opts(o.clone()).db_name(None::<String>);
    let mut conn = connect(&o.into(), c.connect_timeout).await?;
    if let Some(db) = &c.database {
        let quoted = format!("`{}`", db.replace('`', "``"));
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {quoted}"))
            .await
            .with_context(|| format!("create database {db}"))?;
        conn.query_drop(format!("USE {quoted}")).await?;
    }
    let mut rng = SmallRng::from_os_rng();
    for t in 1..=tables {
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS sbtest{t} (\
             id INT NOT NULL AUTO_INCREMENT, k INT NOT NULL DEFAULT 0, \
             c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', \
             PRIMARY KEY (id), KEY k_{t} (k)) ENGINE=InnoDB"
        ))
        .await
        .with_context(|| format!("create sbtest{t}"))?;
        let (n, max): (u64, Option<u64>) = conn
            .query_first(format!("SELECT COUNT(*), MAX(id) FROM sbtest{t}"))
            .await
            .with_context(|| format!("count sbtest{t}"))?
            .unwrap_or((0, None));
        if n == u64::from(size) && max == Some(u64::from(size)) {
            eprintln!("prepare: sbtest{t} already has {size} rows");
            continue;
        }
        eprintln!("prepare: filling sbtest{t} with {size} rows");
        conn.query_drop(format!("TRUNCATE TABLE sbtest{t}")).await?;
        let mut id = 1u32;
        while id <= size {
            let end = (id + 999).min(size);
            let mut sql = format!("INSERT INTO sbtest{t} (id, k, c, pad) VALUES ");
            for i in id..=end {
                if i > id {
                    sql.push(',');
                }
                let k = rng.random_range(1..=size);
                sql.push_str(&format!(
                    "({i},{k},'{}','{}')",
                    sb_digits(&mut rng, 10),
                    sb_digits(&mut rng, 5)
                ));
            }
            conn.query_drop(sql)
                .await
                .with_context(|| format!("insert into sbtest{t}"))?;
            id = end + 1;
        }
    }
    conn.disconnect().await.context("disconnect")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// churn

#[derive(Args, Debug)]
pub struct ChurnArgs {
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// One connect + authenticate + `SELECT 1`; returns the connection for the caller to close.
async fn connect_select1(o: &Opts, timeout: Duration) -> Result<Conn> {
    let mut conn = connect(o, timeout).await?;
    let one: Option<i64> = conn.query_first("SELECT 1").await.context("SELECT 1")?;
    if one != Some(1) {
        bail!("SELECT 1 returned {one:?}");
    }
    Ok(conn)
}

pub async fn churn(c: &Common, a: &ChurnArgs) -> Result<()> {
    let o = opts(c, &c.target, &c.user, &c.password)?;
    let shared = Shared::new();
    eprintln!(
        "churn: {} workers on {}, running {:?}",
        a.workers, c.target, a.duration
    );
    let progress = Progress::start("churn", shared.clone(), c.doze_pid);
    let t0 = Instant::now();
    let deadline = t0 + a.duration;
    let mut set = JoinSet::new();
    for _ in 0..a.workers {
        let shared = shared.clone();
        let o = o.clone();
        let timeout = c.connect_timeout;
        set.spawn(async move {
            let mut h = new_hist();
            while Instant::now() < deadline {
                let q0 = Instant::now();
                match connect_select1(&o, timeout).await {
                    Ok(conn) => {
                        record(&mut h, q0.elapsed());
                        shared.ok();
                        if let Err(e) = conn.disconnect().await {
                            shared.error("disconnect", &e.into());
                        }
                    }
                    Err(e) => {
                        shared.error("connect+SELECT 1", &e);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            h
        });
    }
    let h = join_hists(&mut set).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    drop(progress);
    let cps = shared.ok_count() as f64 / elapsed;
    let mut extra = Map::new();
    extra.insert("qps".into(), json!(cps));
    extra.insert("connections_per_s".into(), json!(cps));
    extra.insert("workers".into(), json!(a.workers));
    extra.insert("duration_s".into(), json!(elapsed));
    finish(
        c,
        "churn",
        &format!(
            "{} workers, {:.1} s: {:.0} connections/s (connect + auth + SELECT 1 + quit); latency is connect + SELECT 1",
            a.workers, elapsed, cps
        ),
        extra,
        &h,
        &shared,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// suspend helpers

fn need_admin(c: &Common, what: &str) -> Result<(Admin, String)> {
    let admin = Admin::from_common(c).with_context(|| format!("{what} needs --admin"))?;
    let project = c
        .project
        .clone()
        .with_context(|| format!("{what} needs --project"))?;
    Ok((admin, project))
}

async fn suspend_and_check(admin: &Admin, compute_id: &str) -> Result<Value> {
    let r = admin
        .suspend(compute_id)
        .await
        .with_context(|| format!("suspend compute {compute_id}"))?;
    if let Some(state) = r.get("state").and_then(Value::as_str) {
        let s = state.to_ascii_lowercase();
        if s != "suspended" && s != "stopped" {
            eprintln!("warning: after suspend the compute reports state {state:?}");
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// cold-start

#[derive(Args, Debug)]
pub struct ColdStartArgs {
    #[arg(long, default_value_t = 9)]
    pub runs: usize,
    /// Pause after each suspend before connecting.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,
}

pub async fn cold_start(c: &Common, a: &ColdStartArgs) -> Result<()> {
    let (admin, project) = need_admin(c, "cold-start")?;
    let compute_id = admin.compute_id(&project).await?;
    eprintln!(
        "cold-start: project {project}, compute {compute_id}, {} runs",
        a.runs
    );
    let o = opts(c, &c.target, &c.user, &c.password)?;
    let shared = Shared::new();
    let mut h = new_hist();
    let mut warm = new_hist();
    let mut runs = Vec::new();
    let starts_before = admin.compute_starts().await.ok();
    for run in 1..=a.runs {
        if let Err(e) = suspend_and_check(&admin, &compute_id).await {
            shared.error("suspend", &e);
            runs.push(json!({"run": run, "error": format!("{e:#}")}));
            continue;
        }
        tokio::time::sleep(a.settle).await;
        let t0 = Instant::now();
        match connect_select1(&o, c.connect_timeout).await {
            Ok(conn) => {
                let d = t0.elapsed();
                record(&mut h, d);
                shared.ok();
                let _ = conn.disconnect().await;
                // A warm connect right after, for comparison.
                let w0 = Instant::now();
                let warm_ms = match connect_select1(&o, c.connect_timeout).await {
                    Ok(conn) => {
                        let wd = w0.elapsed();
                        record(&mut warm, wd);
                        let _ = conn.disconnect().await;
                        Some(wd.as_secs_f64() * 1000.0)
                    }
                    Err(e) => {
                        shared.error("warm connect", &e);
                        None
                    }
                };
                eprintln!(
                    "cold-start run {run}/{}: {:.1} ms (warm after: {})",
                    a.runs,
                    d.as_secs_f64() * 1000.0,
                    warm_ms
                        .map(|w| format!("{w:.1} ms"))
                        .unwrap_or_else(|| "failed".into())
                );
                runs.push(
                    json!({"run": run, "cold_ms": d.as_secs_f64() * 1000.0, "warm_ms": warm_ms}),
                );
            }
            Err(e) => {
                shared.error("cold connect+SELECT 1", &e);
                runs.push(json!({"run": run, "error": format!("{e:#}")}));
            }
        }
    }
    let starts_after = admin.compute_starts().await.ok();
    let mut extra = Map::new();
    extra.insert("runs".into(), json!(runs));
    extra.insert("compute_id".into(), json!(compute_id));
    extra.insert("warm".into(), Value::Object(crate::stats::summary(&warm)));
    extra.insert(
        "compute_starts".into(),
        json!(starts_before.zip(starts_after).map(|(b, a)| a - b)),
    );
    finish(
        c,
        "cold-start",
        &format!(
            "{} runs: suspend, then connect + first result of SELECT 1 (warm connect median {:.1} ms)",
            a.runs,
            warm.value_at_quantile(0.5) as f64 / 1000.0
        ),
        extra,
        &h,
        &shared,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// herd

#[derive(Args, Debug)]
pub struct HerdArgs {
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// With --admin: do not suspend the compute first.
    #[arg(long)]
    pub no_suspend: bool,
}

pub async fn herd(c: &Common, a: &HerdArgs) -> Result<()> {
    crate::common::raise_nofile(a.clients as u64 * 2 + 256);
    let o = opts(c, &c.target, &c.user, &c.password)?;
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
        eprintln!("herd: suspending compute {compute_id} of {project}");
        suspend_and_check(admin, &compute_id).await?;
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
    for _ in 0..a.clients {
        let o = o.clone();
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

// ---------------------------------------------------------------------------------------------
// idle

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

fn kib(v: Option<u64>) -> String {
    match v {
        Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
        None => "n/a".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// projects

#[derive(Args, Debug)]
pub struct ProjectsArgs {
    #[arg(long, default_value_t = 10)]
    pub projects: usize,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent client loops.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Zipf exponent of the traffic over projects (project i gets weight 1/i^s).
    #[arg(long, default_value_t = 1.1)]
    pub zipf_s: f64,
    /// Idle timeout (seconds) set on the created projects so cold ones suspend during the run.
    #[arg(long, default_value_t = 2)]
    pub idle_timeout: u64,
    /// Pause between one client's connections.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub think: Duration,
    /// Project name prefix; projects are named <prefix><i> and deleted at the end.
    #[arg(long, default_value = "lt-")]
    pub prefix: String,
    /// Keep the projects instead of deleting them at the end.
    #[arg(long)]
    pub keep: bool,
}

/// Samples project indices with P(i) proportional to 1/(i+1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for i in 0..n {
            acc += 1.0 / ((i + 1) as f64).powf(s);
            cdf.push(acc);
        }
        for v in &mut cdf {
            *v /= acc;
        }
        Self { cdf }
    }

    fn sample(&self, rng: &mut SmallRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

pub async fn projects(c: &Common, a: &ProjectsArgs) -> Result<()> {
    if a.projects == 0 {
        bail!("--projects must be > 0");
    }
    let admin = Admin::from_common(c).context("projects needs --admin")?;
    let role = "lt";
    let password = "lt-password";
    let mut names = Vec::new();
    eprintln!("projects: creating {} projects", a.projects);
    let created = create_projects(&admin, a, role, password, &mut names).await;
    let result = match created {
        Ok(()) => run_projects(c, a, &admin, &names, role, password).await,
        Err(e) => Err(e),
    };
    if a.keep {
        eprintln!("projects: keeping {} projects (--keep)", names.len());
    } else {
        eprintln!("projects: deleting {} projects", names.len());
        for n in &names {
            if let Err(e) = admin
                .call("DELETE", format!("/api/v1/projects/{n}"), None)
                .await
            {
                eprintln!("warning: delete project {n}: {e:#}");
            }
        }
    }
    result
}

async fn create_projects(
    admin: &Admin,
    a: &ProjectsArgs,
    role: &str,
    password: &str,
    names: &mut Vec<String>,
) -> Result<()> {
    for i in 0..a.projects {
        let name = format!("{}{i}", a.prefix);
        // Leftovers from an interrupted run: remove them (ignore "not found").
        let _ = admin
            .call_status("DELETE", format!("/api/v1/projects/{name}"), None)
            .await;
        admin
            .call(
                "POST",
                "/api/v1/projects".into(),
                Some(json!({"name": name, "config": {"idle_timeout": a.idle_timeout}})),
            )
            .await
            .with_context(|| format!("create project {name}"))?;
        names.push(name.clone());
        admin
            .call(
                "POST",
                format!("/api/v1/projects/{name}/compute"),
                Some(json!({"config": {}})),
            )
            .await
            .with_context(|| format!("create compute of {name}"))?;
        admin
            .call(
                "POST",
                format!("/api/v1/projects/{name}/roles"),
                Some(json!({"name": role, "password": password})),
            )
            .await
            .with_context(|| format!("create role of {name}"))?;
    }
    Ok(())
}

async fn run_projects(
    c: &Common,
    a: &ProjectsArgs,
    admin: &Admin,
    names: &[String],
    role: &str,
    password: &str,
) -> Result<()> {
    let mut optss = Vec::new();
    for n in names {
        // New projects have no schema of their own: connect without a default database.
        let o = opts(c, &c.target, &format!("{n}.{role}"), password)?;
        optss.push(
            mysql_async::OptsBuilder::from_opts(o)
                .db_name(None::<String>)
                .into(),
        );
    }
    let optss = Arc::new(optss);
    let zipf = Arc::new(Zipf::new(names.len(), a.zipf_s));
    let per_project: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..names.len()).map(|_| Default::default()).collect());
    let starts_before = admin
        .compute_starts()
        .await
        .context("read doze_compute_starts_total")?;
    let rss_before = rss_opt(c.doze_pid);
    let shared = Shared::new();
    let progress = Progress::start("projects", shared.clone(), c.doze_pid);
    let t0 = Instant::now();
    let deadline = t0 + a.duration;
    let mut set = JoinSet::new();
    for _ in 0..a.workers {
        let (optss, zipf, shared, per_project) = (
            optss.clone(),
            zipf.clone(),
            shared.clone(),
            per_project.clone(),
        );
        let timeout = c.connect_timeout;
        let think = a.think;
        set.spawn(async move {
            let mut h = new_hist();
            let mut rng = SmallRng::from_os_rng();
            while Instant::now() < deadline {
                let i = zipf.sample(&mut rng);
                let q0 = Instant::now();
                match connect_select1(&optss[i], timeout).await {
                    Ok(conn) => {
                        record(&mut h, q0.elapsed());
                        shared.ok();
                        per_project[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = conn.disconnect().await;
                    }
                    Err(e) => shared.error(&format!("project {i}"), &e),
                }
                tokio::time::sleep(think).await;
            }
            h
        });
    }
    // Sample doze's RSS while the run goes on.
    let pid = c.doze_pid;
    let sampler = tokio::spawn(async move {
        let mut max = None::<u64>;
        loop {
            if let Some(v) = pid.and_then(|p| crate::common::rss_kib(p).ok()) {
                max = Some(max.map_or(v, |m| m.max(v)));
            }
            if Instant::now() >= deadline {
                break max;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let h = join_hists(&mut set).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    drop(progress);
    let rss_max = sampler.await.unwrap_or(None);
    let rss_after = rss_opt(c.doze_pid);
    let starts_after = admin
        .compute_starts()
        .await
        .context("read doze_compute_starts_total")?;
    let starts = starts_after - starts_before;
    let per: Vec<u64> = per_project
        .iter()
        .map(|v| v.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    let mut extra = Map::new();
    extra.insert("projects".into(), json!(names.len()));
    extra.insert("workers".into(), json!(a.workers));
    extra.insert("duration_s".into(), json!(elapsed));
    extra.insert("qps".into(), json!(shared.ok_count() as f64 / elapsed));
    extra.insert("compute_starts".into(), json!(starts));
    extra.insert("resumes_per_s".into(), json!(starts / elapsed));
    extra.insert("failed_connections".into(), json!(shared.error_count()));
    extra.insert("connections_per_project".into(), json!(per));
    extra.insert("doze_rss_before_kib".into(), json!(rss_before));
    extra.insert("doze_rss_max_kib".into(), json!(rss_max));
    extra.insert("doze_rss_after_kib".into(), json!(rss_after));
    finish(
        c,
        "projects",
        &format!(
            "{} projects, zipf s={}, {:.1} s: {:.1} connections/s, {} compute starts ({:.2} resumes/s), {} failed; doze RSS max {}",
            names.len(),
            a.zipf_s,
            elapsed,
            shared.ok_count() as f64 / elapsed,
            starts,
            starts / elapsed,
            shared.error_count(),
            kib(rss_max)
        ),
        extra,
        &h,
        &shared,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let z = Zipf::new(10, 1.1);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = [0u32; 10];
        for _ in 0..20_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9]);
        assert!(counts.iter().all(|&c| c > 0));
    }
}
