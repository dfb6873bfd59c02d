//! Metric names as the binary's Prometheus recorder sees them (own test binary: it installs
//! the global recorder).

mod common;

use axum::http::StatusCode;
use common::*;
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_emitted_with_the_documented_names_and_buckets() {
    let mut builder = PrometheusBuilder::new();
    for (matcher, buckets) in doze_control::metrics::histogram_buckets() {
        builder = builder
            .set_buckets_for_metric(matcher, &buckets)
            .expect("buckets");
    }
    let handle = builder.install_recorder().expect("install recorder");
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (pid, cid) = env.project_with_compute("measured", "app", "m-pw").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let plane = std::sync::Arc::clone(plane);
        let pid = pid.clone();
        tasks.push(tokio::spawn(async move { plane.wake(&pid).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("wake");
    }
    plane.wake(&pid).await.expect("warm wake");
    let woke = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    plane.suspend_compute(&cid).await.expect("suspend");
    let ran = woke.elapsed().as_secs_f64();
    let router = doze_control::rest::router(std::sync::Arc::clone(plane), Some(handle));
    let (status, body) = call(&router, "GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("text").to_owned();
    for needle in [
        "doze_wake_duration_seconds_bucket{outcome=\"resumed\",from=\"stopped\",le=\"0.001\"}",
        "doze_wake_duration_seconds_bucket{outcome=\"warm\",from=\"running\",le=\"30\"}",
        "doze_compute_starts_total 1",
        "doze_compute_start_duration_seconds_bucket{le=\"0.001\"}",
        "doze_wakes_coalesced_total",
        "doze_computes{state=\"suspended\"} 1",
        "doze_computes{state=\"running\"} 0",
        "doze_suspends_total{reason=\"api\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // The integral of doze_computes: this compute ran at least the time it was awake (the
    // counter counts whole seconds), and nothing was frozen.
    let seconds = |state: &str| -> f64 {
        let key = format!("doze_compute_seconds_total{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
    };
    let running = seconds("running");
    assert!(
        running >= ran.floor() && running <= ran + 10.0,
        "running {running} s, awake {ran} s"
    );
    assert_eq!(seconds("frozen"), 0.0);
    plane.shutdown().await;
}
