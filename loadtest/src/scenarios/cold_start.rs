//! The cold-start scenario: suspend, then time the first result of a new connection.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde_json::{Map, Value, json};

use crate::common::{Common, opts, parse_duration};
use crate::stats::{Shared, finish, new_hist, record};

use super::*;

#[derive(Args, Debug)]
pub struct ColdStartArgs {
    #[arg(long, default_value_t = 9)]
    pub runs: usize,
    /// Pause after each suspend before connecting.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,
    /// What each run resumes from: `stopped` (a server start) or `frozen` (a thaw).
    #[arg(long, value_enum, default_value_t = ResumeFrom::Stopped)]
    pub from: ResumeFrom,
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
        if let Err(e) = suspend_and_check(&admin, &compute_id, a.from).await {
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
    extra.insert("from".into(), json!(a.from.mode()));
    extra.insert("warm".into(), Value::Object(crate::stats::summary(&warm)));
    extra.insert(
        "compute_starts".into(),
        json!(starts_before.zip(starts_after).map(|(b, a)| a - b)),
    );
    finish(
        c,
        "cold-start",
        &format!(
            "{} runs: suspend ({}), then connect + first result of SELECT 1 (warm connect median {:.1} ms)",
            a.runs,
            a.from.mode(),
            warm.value_at_quantile(0.5) as f64 / 1000.0
        ),
        extra,
        &h,
        &shared,
    )?;
    Ok(())
}
