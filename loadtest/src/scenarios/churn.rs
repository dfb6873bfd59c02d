//! The churn scenario: connect, authenticate, SELECT 1, quit, as fast as it goes.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde_json::{Map, json};
use tokio::task::JoinSet;

use crate::common::{Common, parse_duration};
use crate::stats::{Progress, Shared, finish, new_hist, record};

use super::*;

#[derive(Args, Debug)]
pub struct ChurnArgs {
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
}

pub async fn churn(c: &Common, a: &ChurnArgs) -> Result<()> {
    let targets = c.all_opts()?;
    let shared = Shared::new();
    eprintln!(
        "churn: {} workers on {}, running {:?}",
        a.workers, c.target, a.duration
    );
    let progress = Progress::start("churn", shared.clone(), c.doze_pid);
    let t0 = Instant::now();
    let deadline = t0 + a.duration;
    let mut set = JoinSet::new();
    for i in 0..a.workers {
        let shared = shared.clone();
        let o = targets[i % targets.len()].clone();
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
