//! Cold starts through the Kubernetes driver, against the test kit's fake API server (its fake
//! kubelet runs a real mariadbd per pod), beside the local driver's, in one run:
//!
//! - **driver overhead**: what the driver adds on top of the pod's own readiness, from the
//!   server's first greeting (the fake kubelet probes every millisecond) to the client's first
//!   row through the proxy (goal: median ≤ 15 ms, p99 ≤ 50 ms): seeing the watch event,
//!   probing the greeting, the proxy's login and query. Also from the kubelet marking the
//!   container started (the process spawned, before mariadbd listens) to the first row;
//! - **cold start**, connect to first row, Kubernetes driver and local driver alternately;
//! - **API budget**: requests per wake and per suspend (the watch not counted), and the
//!   requests of a doze startup with 1,000 registered computes.
//!
//! `cargo bench -p doze-benches --bench kube_wake` (`DOZE_BENCH_RUNS`, default 21). Prints a
//! table and one JSON line. Needs the MariaDB server binaries, like the tests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use doze_control::activity::Activity;
use doze_control::store::{Compute, ComputeState, Project, Store};
use doze_control::testkit::kube::FakeCluster;
use doze_control::{ControlConfig, ControlPlane, DriverKind};
use doze_proxy::ProxyConfig;
use doze_proxy::accept;
use doze_proxy::connection::Shared;
use mysql_async::prelude::Queryable;

const NS: &str = "default";
const PASSWORD: &str = "bench-password-1";

struct Side {
    plane: Arc<ControlPlane>,
    proxy: std::net::SocketAddr,
    project_id: String,
    compute_id: String,
}

async fn side(cfg: ControlConfig) -> Side {
    let plane = ControlPlane::start(cfg, Activity::new()).await.unwrap();
    let project = plane
        .create_project("bench", serde_json::json!({}))
        .await
        .unwrap();
    plane
        .create_role(&project.id, "app", PASSWORD)
        .await
        .unwrap();
    let compute = plane
        .create_compute(
            &project.id,
            serde_json::json!({"resources": {"memory": "256Mi"}}),
        )
        .await
        .unwrap();
    let pcfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ProxyConfig::default()
    };
    let listener = accept::bind(&pcfg).unwrap();
    let proxy = listener.local_addr().unwrap();
    let shared = Arc::new(Shared::new(pcfg, Arc::clone(&plane)));
    tokio::spawn(accept::serve(
        listener,
        shared,
        std::future::pending::<()>(),
    ));
    Side {
        plane,
        proxy,
        project_id: project.id,
        compute_id: compute.id,
    }
}

fn config(dir: &std::path::Path, name: &str) -> ControlConfig {
    ControlConfig {
        db_dsn: format!("sqlite://{}/{name}.db", dir.display()),
        data_dir: dir.join(name),
        idle_timeout: Duration::ZERO,
        check_interval: Duration::from_secs(3600),
        ..ControlConfig::default()
    }
}

/// Connect through the proxy and read one row; returns when the row is in.
async fn first_row(proxy: std::net::SocketAddr) -> Instant {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(proxy.ip().to_string())
        .tcp_port(proxy.port())
        .prefer_socket(false)
        .user(Some("bench.app"))
        .pass(Some(PASSWORD));
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    let at = Instant::now();
    assert_eq!(one, Some(1));
    conn.disconnect().await.unwrap();
    at
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, p99, min, max) in milliseconds.
fn summary(mut v: Vec<f64>) -> (f64, f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), v[0], v[v.len() - 1])
}

/// A doze startup over `n` registered (suspended) computes: the API requests it makes.
async fn startup_budget(
    cluster: &FakeCluster,
    dir: &std::path::Path,
    n: usize,
) -> (usize, usize, Duration) {
    let mut cfg = config(dir, "budget");
    cfg.driver = DriverKind::Kubernetes;
    cfg.kubernetes.kubeconfig = Some(cluster.kubeconfig_path());
    let store = Store::open(&cfg.db_dsn).await.unwrap();
    for i in 0..n {
        let now = 1_700_000_000_000;
        let p = Project {
            id: uuid_like(i),
            name: format!("p{i}"),
            config: serde_json::json!({}),
            created_at: now,
            tenant_id: doze_control::store::DEFAULT_TENANT_ID.into(),
        };
        store.insert_project(&p).await.unwrap();
        store
            .insert_compute(&Compute {
                id: format!("c-{}", uuid_like(i)),
                project_id: p.id.clone(),
                state: ComputeState::Suspended,
                address: None,
                handle: None,
                config: serde_json::json!({}),
                created_at: now,
                updated_at: now,
                last_error: None,
                roles_dirty: false,
                epoch: 0,
            })
            .await
            .unwrap();
    }
    drop(store);
    cluster.clear_requests();
    let t0 = Instant::now();
    let plane = ControlPlane::start(cfg, Activity::new()).await.unwrap();
    let took = t0.elapsed();
    let requests = cluster.requests();
    let lists = requests
        .iter()
        .filter(|r| !r.watch && r.method == "GET" && r.path.ends_with("/pods"))
        .count();
    let others = requests.iter().filter(|r| !r.watch).count() - lists;
    drop(plane);
    (lists, others, took)
}

fn uuid_like(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn main() {
    let runs: usize = doze_benches::env_count("DOZE_BENCH_RUNS", 21);
    let rt = doze_benches::runtime();
    rt.block_on(async move {
        let cluster = FakeCluster::start().await.unwrap();
        let dir = doze_control::testkit::scratch_dir("doze-bench-k8s-").unwrap();
        let mut kcfg = config(dir.path(), "k8s");
        kcfg.driver = DriverKind::Kubernetes;
        kcfg.kubernetes.kubeconfig = Some(cluster.kubeconfig_path());
        kcfg.kubernetes.namespace = NS.into();
        let k8s = side(kcfg).await;
        let local = side(config(dir.path(), "local")).await;
        let pod = format!("doze-{}", k8s.project_id);
        // The first start initialises storage on both sides: not a cold start of a compute.
        first_row(k8s.proxy).await;
        first_row(local.proxy).await;

        let (mut overhead, mut from_started) = (Vec::new(), Vec::new());
        let (mut k8s_cold, mut local_cold) = (Vec::new(), Vec::new());
        let (mut wake_requests, mut suspend_requests) = (Vec::new(), Vec::new());
        for run in 0..runs {
            cluster.clear_requests();
            k8s.plane.suspend_compute(&k8s.compute_id).await.unwrap();
            suspend_requests.push(cluster.requests().iter().filter(|r| !r.watch).count());
            local.plane.suspend_compute(&local.compute_id).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Alternate which side goes first, so neither always runs on a quieter machine.
            let order: [&Side; 2] = if run % 2 == 0 { [&k8s, &local] } else { [&local, &k8s] };
            for s in order {
                cluster.clear_requests();
                let t0 = Instant::now();
                let row = first_row(s.proxy).await;
                if std::ptr::eq(s, &k8s) {
                    k8s_cold.push(ms(row - t0));
                    let started = cluster.container_started_at(NS, &pod).unwrap();
                    from_started.push(ms(row.saturating_duration_since(started)));
                    let ready = cluster.container_ready_at(NS, &pod).unwrap();
                    overhead.push(ms(row.saturating_duration_since(ready)));
                    wake_requests.push(cluster.requests().iter().filter(|r| !r.watch).count());
                } else {
                    local_cold.push(ms(row - t0));
                }
            }
        }
        let (lists, others, startup) = startup_budget(&cluster, dir.path(), 1000).await;

        let o = summary(overhead);
        let f = summary(from_started);
        let k = summary(k8s_cold);
        let l = summary(local_cold);
        println!("kube_wake: {runs} runs, medians and p99 in ms (2 shared cores: compare within this run)");
        println!("  {:<44} {:>8} {:>8} {:>8} {:>8}", "", "median", "p99", "min", "max");
        for (name, s) in [
            ("driver overhead (server ready -> row)", o),
            ("container started -> row", f),
            ("cold start, kubernetes driver (fake API)", k),
            ("cold start, local driver", l),
        ] {
            println!("  {name:<44} {:>8.1} {:>8.1} {:>8.1} {:>8.1}", s.0, s.1, s.2, s.3);
        }
        println!(
            "  goal: overhead median <= 15 ms ({}), p99 <= 50 ms ({})",
            if o.0 <= 15.0 { "met" } else { "MISSED" },
            if o.1 <= 50.0 { "met" } else { "MISSED" }
        );
        println!(
            "  API requests per wake: max {} (goal <= 3 plus the watch); per suspend: max {}",
            wake_requests.iter().max().unwrap_or(&0),
            suspend_requests.iter().max().unwrap_or(&0)
        );
        println!(
            "  startup with 1000 registered computes: {lists} LIST request(s) of pods, {others} other request(s), {:.0} ms",
            ms(startup)
        );
        println!(
            "{}",
            serde_json::json!({
                "runs": runs,
                "overhead_ms": {"median": o.0, "p99": o.1, "min": o.2, "max": o.3},
                "started_to_row_ms": {"median": f.0, "p99": f.1},
                "cold_kubernetes_ms": {"median": k.0, "p99": k.1},
                "cold_local_ms": {"median": l.0, "p99": l.1},
                "requests_per_wake_max": wake_requests.iter().max(),
                "requests_per_suspend_max": suspend_requests.iter().max(),
                "startup_1000": {"pod_lists": lists, "other_requests": others, "ms": ms(startup)},
            })
        );
    });
}
