//! The relay scenario: sessions running prepared point selects (and the sysbench-shaped tables it prepares).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use mysql_async::Opts;
use mysql_async::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, json};
use tokio::task::JoinSet;

use crate::common::{Common, connect, opts, parse_duration};
use crate::stats::{Progress, Shared, finish, new_hist, record};

use super::*;

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
