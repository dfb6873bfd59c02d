//! Suspends never cut open sessions; idle computes are suspended by the scheduler.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use doze_control::Stats;
use doze_control::store::ComputeState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_is_refused_while_sessions_are_open() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (pid, cid) = env
        .project_with_config(
            "busy",
            serde_json::json!({"idle_timeout": 1, "suspend_mode": "stop"}),
        )
        .await;
    plane
        .create_role(&pid, "app", "busy-pw")
        .await
        .expect("role");
    // As the proxy does: open the session, then wake.
    let guard = env.activity.project(&pid).open_session();
    let guard2 = env.activity.project(&pid).open_session();
    let info = plane.wake("busy").await.expect("wake");
    let router = doze_control::rest::router(std::sync::Arc::clone(plane), None);
    let resp = call(
        &router,
        "POST",
        &format!("/api/v1/compute/{}/suspend", cid),
        None,
        None,
    )
    .await;
    assert_error(&resp, StatusCode::CONFLICT, "sessions_open");
    let msg = resp.1["error"]["message"].as_str().expect("message");
    assert!(msg.contains("2 client session"), "{msg}");
    assert!(
        msg.contains("a suspend never cuts an open session"),
        "{msg}"
    );
    let resp = call(
        &router,
        "DELETE",
        &format!("/api/v1/compute/{}", cid),
        None,
        None,
    )
    .await;
    assert_error(&resp, StatusCode::CONFLICT, "sessions_open");
    let resp = call(&router, "DELETE", "/api/v1/projects/busy", None, None).await;
    assert_error(&resp, StatusCode::CONFLICT, "sessions_open");

    // The scheduler skips it too, however long it has been idle.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(plane.suspend_idle().await.expect("pass"), 0);
    assert_eq!(
        plane.compute(&cid).await.expect("c").state,
        ComputeState::Running
    );
    assert_eq!(
        select_one(&info.address, "app", "busy-pw").await,
        1,
        "the session's compute still serves"
    );
    // The refused suspend invalidated the cache; the next wake still finds the same compute.
    let again = plane.wake(&pid).await.expect("wake");
    assert_eq!(again.address, info.address);
    assert_eq!(Stats::get(&plane.stats().compute_starts), 1);

    drop(guard);
    let resp = call(
        &router,
        "POST",
        &format!("/api/v1/compute/{}/suspend", cid),
        None,
        None,
    )
    .await;
    assert_error(&resp, StatusCode::CONFLICT, "sessions_open");
    drop(guard2);
    let resp = call(
        &router,
        "POST",
        &format!("/api/v1/compute/{}/suspend", cid),
        None,
        None,
    )
    .await;
    assert_eq!(resp.0, StatusCode::OK, "{}", resp.1);
    assert_eq!(resp.1["state"], "suspended");
    assert_eq!(Stats::get(&plane.stats().suspends), 1);
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_computes_are_suspended_but_not_while_a_session_is_open() {
    let env = sqlite_env(|c| {
        c.check_interval = Duration::from_millis(200);
        c.idle_timeout = Duration::from_secs(3600);
    })
    .await;
    let plane = &env.plane;
    let (pid, cid) = env
        .project_with_config(
            "sleepy",
            serde_json::json!({"idle_timeout": 1, "suspend_mode": "stop"}),
        )
        .await;
    // A second project keeps the default (1 hour): never suspended here.
    let (other_pid, other_cid) = env.project_with_compute("awake", "app", "pw").await;
    let scheduler = plane.spawn_scheduler();

    let guard = env.activity.project(&pid).open_session();
    plane.wake(&pid).await.expect("wake");
    plane.wake(&other_pid).await.expect("wake other");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        plane.compute(&cid).await.expect("c").state,
        ComputeState::Running,
        "an open session keeps the compute up"
    );
    drop(guard);
    let released = Instant::now();
    loop {
        let state = plane.compute(&cid).await.expect("c").state;
        if state == ComputeState::Suspended {
            break;
        }
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "not suspended after 10 s: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = released.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "suspended before its idle timeout: {waited:?}"
    );
    assert_eq!(mariadbd_on(&datadir_of(plane, &pid)), 0);
    let events = plane.compute_events(&cid).await.expect("events");
    assert_eq!(events.last().map(|e| e.reason.as_str()), Some("idle"));
    assert_eq!(
        plane.compute(&other_cid).await.expect("other").state,
        ComputeState::Running
    );
    assert_eq!(Stats::get(&plane.stats().suspends), 1);

    // Woken again, it is suspended again once idle.
    plane.wake(&pid).await.expect("wake again");
    let woke = Instant::now();
    loop {
        if plane.compute(&cid).await.expect("c").state == ComputeState::Suspended {
            break;
        }
        assert!(woke.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(Stats::get(&plane.stats().suspends), 2);
    plane.shutdown().await;
    scheduler.await.expect("the scheduler ends after shutdown");
}
