//! The projects scenario: Zipf traffic over many projects with short idle timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, json};
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::common::{Common, opts, parse_duration, rss_opt};
use crate::stats::{Progress, Shared, finish, new_hist, record};

use super::*;

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
