//! The wake path on a cache hit: project -> address for a running compute, as every proxy
//! connection to an awake project asks it. Starts a real control plane and mariadbd (so it
//! needs the MariaDB server binaries, like the tests).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use doze_control::activity::Activity;
use doze_control::{ControlConfig, ControlPlane};

fn wake_cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = doze_control::testkit::scratch_dir("doze-bench-").unwrap();
    let plane = rt.block_on(async {
        let cfg = ControlConfig {
            db_dsn: format!("sqlite://{}/state.db", dir.path().display()),
            data_dir: dir.path().join("data"),
            idle_timeout: Duration::ZERO,
            ..ControlConfig::default()
        };
        let plane: Arc<ControlPlane> = ControlPlane::start(cfg, Activity::new()).await.unwrap();
        let project = plane
            .create_project("bench", serde_json::json!({}))
            .await
            .unwrap();
        plane
            .create_compute(&project.id, serde_json::json!({}))
            .await
            .unwrap();
        plane.wake("bench").await.unwrap();
        plane
    });
    c.bench_function("wake/cache_hit_by_name", |b| {
        b.to_async(&rt)
            .iter(|| async { plane.wake("bench").await.unwrap() })
    });
    let id = rt.block_on(plane.project("bench")).unwrap().id;
    c.bench_function("wake/cache_hit_by_id", |b| {
        b.to_async(&rt)
            .iter(|| async { plane.wake(&id).await.unwrap() })
    });
    c.bench_function("lookup_role/cache_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { plane.lookup_role("bench", "app").await.unwrap() })
    });
    rt.block_on(plane.shutdown());
}

criterion_group!(benches, wake_cache_hit);
criterion_main!(benches);
