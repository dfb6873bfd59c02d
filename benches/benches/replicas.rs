//! Three replicas of doze on one PostgreSQL (in one process: three control planes and three
//! proxies, one data directory, the local driver), measured in one run:
//!
//! - **herd**: 500 clients on a suspended project, connect to first row, spread over the three
//!   replicas, beside the same herd through one replica (goal: p99 ≤ 1.2× one replica's);
//! - **invalidation delay**: a password changed through one replica until another refuses the
//!   old one (goal: p99 < 100 ms).
//!
//! `cargo bench -p doze-benches --bench replicas` (`DOZE_BENCH_ROUNDS`, default 5). Needs the
//! MariaDB and PostgreSQL server binaries, like the tests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use doze_control::activity::Activity;
use doze_control::testkit::Postgres;
use doze_control::{ControlConfig, ControlPlane};
use doze_proxy::ProxyConfig;
use doze_proxy::accept;
use doze_proxy::connection::Shared;
use mysql_async::prelude::Queryable;

const HERD: usize = 500;

fn p(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    p(&mut v, 0.5)
}

/// One herd on a suspended compute: every client's connect-to-first-row time, in ms.
async fn herd(proxies: &[std::net::SocketAddr]) -> Vec<f64> {
    let barrier = Arc::new(tokio::sync::Barrier::new(HERD));
    let mut tasks = Vec::new();
    for i in 0..HERD {
        let proxy = proxies[i % proxies.len()];
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(proxy.ip().to_string())
                .tcp_port(proxy.port())
                .prefer_socket(false)
                .user(Some("herd.app"))
                .pass(Some("app-password-1"));
            barrier.wait().await;
            let t0 = Instant::now();
            let mut conn = mysql_async::Conn::new(opts).await.unwrap();
            let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
            let took = t0.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(one, Some(1));
            (took, conn)
        }));
    }
    let mut times = Vec::new();
    let mut conns = Vec::new();
    for t in tasks {
        let (took, conn) = t.await.unwrap();
        times.push(took);
        conns.push(conn);
    }
    for c in conns {
        c.disconnect().await.unwrap();
    }
    times
}

fn main() {
    let rounds: usize = doze_benches::env_count("DOZE_BENCH_ROUNDS", 5);
    let nofile = (HERD as u64) * 4 + 1024;
    let _ =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, nofile, nofile);
    let rt = doze_benches::runtime();
    rt.block_on(async move {
        let pg = Postgres::start().await.unwrap();
        let dir = doze_control::testkit::scratch_dir("doze-bench-replicas-").unwrap();
        let mut planes = Vec::new();
        let mut proxies = Vec::new();
        for i in 0..3 {
            let cfg = ControlConfig {
                db_dsn: pg.dsn(),
                data_dir: dir.path().join("data"),
                idle_timeout: Duration::ZERO,
                check_interval: Duration::from_secs(3600),
                replica_id: format!("bench-{i}"),
                ..ControlConfig::default()
            };
            let plane = ControlPlane::start(cfg, Activity::new()).await.unwrap();
            let pcfg = ProxyConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                max_pending_logins_per_ip: HERD * 2,
                ..ProxyConfig::default()
            };
            let listener = accept::bind(&pcfg).unwrap();
            proxies.push(listener.local_addr().unwrap());
            let shared = Arc::new(Shared::new(pcfg, Arc::clone(&plane)));
            tokio::spawn(accept::serve(listener, shared, std::future::pending::<()>()));
            planes.push(plane);
        }
        let project = planes[0].create_project("herd", serde_json::json!({})).await.unwrap();
        planes[0].create_role(&project.id, "app", "app-password-1").await.unwrap();
        let compute = planes[0].create_compute(&project.id, serde_json::json!({})).await.unwrap();
        planes[0].wake(&project.id).await.unwrap();

        let (mut spread_p99, mut one_p99) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first.
            let order: [&[std::net::SocketAddr]; 2] = if round % 2 == 0 {
                [&proxies[..], &proxies[..1]]
            } else {
                [&proxies[..1], &proxies[..]]
            };
            for targets in order {
                // Sessions close asynchronously, and other replicas report theirs with their
                // next heartbeat: retry until the suspend is allowed.
                let t0 = Instant::now();
                while let Err(e) = planes[round % 3].suspend_compute(&compute.id).await {
                    assert!(t0.elapsed() < Duration::from_secs(20), "suspend refused: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut times = herd(targets).await;
                let p99 = p(&mut times, 0.99);
                if targets.len() == 3 {
                    spread_p99.push(p99);
                } else {
                    one_p99.push(p99);
                }
            }
        }
        let starts = planes[0]
            .compute_events(&compute.id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.to_state == "starting")
            .count();

        // Invalidation delay: a password change through replica 0 until replica 1 sees it.
        let mut delays = Vec::new();
        for i in 0..50 {
            let before = planes[1].lookup_role("herd", "app").await.unwrap().stored_hash;
            let t0 = Instant::now();
            planes[0]
                .set_role_password(&project.id, "app", &format!("password-number-{i}"))
                .await
                .unwrap();
            while planes[1].lookup_role("herd", "app").await.unwrap().stored_hash == before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            delays.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        let (d50, d99) = (p(&mut delays.clone(), 0.5), p(&mut delays, 0.99));
        let (s, o) = (median(spread_p99.clone()), median(one_p99.clone()));
        println!("replicas: {rounds} rounds of a {HERD}-client herd on a suspended project, 3 replicas on one PostgreSQL");
        println!("  herd p99, spread over 3 replicas: median {s:.0} ms (rounds: {spread_p99:.0?})");
        println!("  herd p99, through 1 replica:      median {o:.0} ms (rounds: {one_p99:.0?})");
        println!(
            "  ratio {:.2} (goal <= 1.2: {}); compute starts: {starts} for {} herds",
            s / o,
            if s / o <= 1.2 { "met" } else { "MISSED" },
            rounds * 2
        );
        println!(
            "  invalidation delay (password change -> other replica refuses the old one): p50 {d50:.1} ms, p99 {d99:.1} ms (goal < 100 ms: {})",
            if d99 < 100.0 { "met" } else { "MISSED" }
        );
        println!(
            "{}",
            serde_json::json!({"rounds": rounds, "herd_p99_spread_ms": s, "herd_p99_one_ms": o,
                "ratio": s / o, "starts": starts, "invalidation_ms": {"p50": d50, "p99": d99}})
        );
        for plane in &planes {
            plane.shutdown().await;
        }
    });
}
