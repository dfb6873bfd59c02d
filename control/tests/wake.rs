//! The wake path against real mariadbd processes: herds, lifecycle, races, failures, restarts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use doze_control::activity::Activity;
use doze_control::gateway::{ColdStart, WakeError};
use doze_control::store::ComputeState;
use doze_control::{ControlPlane, Stats};
use mysql_async::prelude::Queryable;

fn starts(p: &ControlPlane) -> u64 {
    Stats::get(&p.stats().compute_starts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn herd_of_200_wakes_starts_the_compute_once() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (pid, cid) = env.project_with_compute("herd", "app", "herd-pw").await;
    // First start initialises storage; suspend so the herd meets a real resume.
    plane.wake(&pid).await.expect("first wake");
    plane.suspend_compute(&cid).await.expect("suspend");
    assert_eq!(mariadbd_on(&datadir_of(plane, &pid)), 0);

    let before = starts(plane);
    let coalesced_before = Stats::get(&plane.stats().wakes_coalesced);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let plane = Arc::clone(plane);
        // Half by id, half by name: both resolve to the one project.
        let key = if i % 2 == 0 {
            pid.clone()
        } else {
            "herd".to_owned()
        };
        tasks.push(tokio::spawn(async move { plane.wake(&key).await }));
    }
    let mut addresses = std::collections::HashSet::new();
    let mut resumed = 0;
    for t in tasks {
        let info = t.await.expect("join").expect("every wake succeeds");
        assert_eq!(info.compute_id, cid);
        if info.cold_start == ColdStart::Resumed {
            resumed += 1;
        }
        addresses.insert(info.address);
    }
    assert_eq!(starts(plane), before + 1, "exactly one driver start");
    assert_eq!(addresses.len(), 1, "every caller got the same address");
    assert!(resumed >= 1);
    let coalesced = Stats::get(&plane.stats().wakes_coalesced) - coalesced_before;
    assert_eq!(
        coalesced,
        resumed - 1,
        "every resumed answer but the starter's joined that start"
    );
    assert_eq!(mariadbd_on(&datadir_of(plane, &pid)), 1);
    let addr = addresses.into_iter().next().expect("address");
    assert_eq!(select_one(&addr, "app", "herd-pw").await, 1);
    plane.shutdown().await;
    assert_eq!(mariadbd_on(&datadir_of(plane, &pid)), 0);
    let c = plane.compute(&cid).await.expect("compute");
    assert_eq!(c.state, ComputeState::Suspended);
    let events = plane.compute_events(&cid).await.expect("events");
    assert_eq!(events.last().map(|e| e.reason.as_str()), Some("shutdown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_survive_suspend_resume_cycles() {
    let env = sqlite_env(|_| {}).await;
    suspend_resume_cycles(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_survive_suspend_resume_cycles_on_postgres() {
    let env = postgres_env(|_| {}).await;
    suspend_resume_cycles(&env).await;
}

async fn suspend_resume_cycles(env: &Env) {
    let plane = &env.plane;
    let (pid, cid) = env.project_with_compute("cycles", "app", "cycle-pw").await;
    let mut previous_address = None;
    for cycle in 0..4i64 {
        let info = plane.wake("cycles").await.expect("wake");
        assert_eq!(info.cold_start, ColdStart::Resumed, "cycle {cycle}");
        let mut conn = connect(&info.address, "app", "cycle-pw")
            .await
            .expect("connect");
        conn.query_drop("CREATE DATABASE IF NOT EXISTS app")
            .await
            .expect("db");
        conn.query_drop("CREATE TABLE IF NOT EXISTS app.t (n BIGINT PRIMARY KEY, s TEXT)")
            .await
            .expect("table");
        let count: Option<i64> = conn
            .query_first("SELECT COUNT(*) FROM app.t")
            .await
            .expect("count");
        assert_eq!(count, Some(cycle * 10), "rows of earlier cycles are there");
        for n in 0..10 {
            conn.exec_drop(
                "INSERT INTO app.t VALUES (?, ?)",
                (cycle * 10 + n, format!("row {n}")),
            )
            .await
            .expect("insert");
        }
        conn.disconnect().await.ok();
        let running = plane.compute(&cid).await.expect("compute");
        assert_eq!(running.state, ComputeState::Running);
        assert_eq!(running.address.as_deref(), Some(info.address.as_str()));
        let warm = plane.wake(&pid).await.expect("warm wake");
        assert_eq!(warm.cold_start, ColdStart::Warm);
        let suspended = plane.suspend_compute(&cid).await.expect("suspend");
        assert_eq!(suspended.state, ComputeState::Suspended);
        assert_eq!(suspended.address, None);
        assert_eq!(mariadbd_on(&datadir_of(plane, &pid)), 0);
        previous_address = Some(info.address);
    }
    assert!(previous_address.is_some());
    let info = plane.wake(&pid).await.expect("final wake");
    let mut conn = connect(&info.address, "app", "cycle-pw")
        .await
        .expect("connect");
    let count: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM app.t")
        .await
        .expect("count");
    assert_eq!(count, Some(40));
    conn.disconnect().await.ok();
    assert_eq!(starts(plane), 5);
    assert_eq!(Stats::get(&plane.stats().suspends), 4);
    let events = plane.compute_events(&cid).await.expect("events");
    let path: Vec<String> = events
        .iter()
        .take(4)
        .map(|e| format!("{}>{}", e.from_state, e.to_state))
        .collect();
    assert_eq!(
        path,
        [
            "suspended>starting",
            "starting>running",
            "running>suspending",
            "suspending>suspended"
        ]
    );
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_racing_a_suspend_waits_and_gets_a_working_compute() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (pid, cid) = env.project_with_compute("race", "app", "race-pw").await;
    let mut waited_for_suspend = 0;
    let mut suspend_refused = 0;
    for delay_ms in [0u64, 1, 2, 4, 6, 8, 10, 15, 20, 30] {
        plane.wake(&pid).await.expect("wake");
        let starts_before = starts(plane);
        let suspender = {
            let plane = Arc::clone(plane);
            let cid = cid.clone();
            tokio::spawn(async move { plane.suspend_compute(&cid).await })
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        // As the proxy does: count the session, then wake.
        let guard = env.activity.project(&pid).open_session();
        let info = plane
            .wake(&pid)
            .await
            .expect("a wake during a suspend never fails");
        // The address we were handed serves queries while our session is open.
        assert_eq!(
            select_one(&info.address, "app", "race-pw").await,
            1,
            "delay {delay_ms}"
        );
        match suspender.await.expect("join") {
            Ok(_) => {
                // The suspend ran first; our wake waited for it and resumed the compute.
                assert_eq!(info.cold_start, ColdStart::Resumed, "delay {delay_ms}");
                assert_eq!(starts(plane), starts_before + 1);
                waited_for_suspend += 1;
            }
            Err(doze_control::ControlError::SessionsOpen { .. }) => suspend_refused += 1,
            Err(e) => panic!("unexpected suspend error: {e}"),
        }
        let c = plane.compute(&cid).await.expect("compute");
        assert_eq!(c.state, ComputeState::Running);
        assert_eq!(c.address.as_deref(), Some(info.address.as_str()));
        assert_eq!(mariadbd_on(&datadir_of(plane, &pid)), 1);
        drop(guard);
    }
    assert!(
        waited_for_suspend >= 1,
        "no iteration hit a running suspend (refused {suspend_refused})"
    );
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_that_cannot_start_fails_with_its_log_and_is_rate_limited() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let p = plane
        .create_project("broken", serde_json::json!({}))
        .await
        .expect("project");
    let c = plane
        .create_compute(&p.id, serde_json::json!({}))
        .await
        .expect("compute");
    // Storage that looks initialised but whose InnoDB system tablespace is garbage: mariadbd
    // starts and exits. (A bad server option can no longer get this far: the allow-list
    // refuses it at create time.)
    let project_dir = datadir_of(plane, &p.id)
        .parent()
        .expect("project dir")
        .to_path_buf();
    std::fs::create_dir_all(datadir_of(plane, &p.id).join("mysql")).expect("mysql dir");
    std::fs::write(
        datadir_of(plane, &p.id).join("ibdata1"),
        b"not an InnoDB tablespace ".repeat(4096),
    )
    .expect("garbage ibdata1");
    std::fs::write(
        project_dir.join("admin.secret"),
        "0123456789abcdef0123456789abcdef",
    )
    .expect("secret");
    let err = plane.wake("broken").await.expect_err("start must fail");
    let WakeError::StartFailed { project, reason } = &err else {
        panic!("expected StartFailed, got {err:?}");
    };
    assert_eq!(project, "broken");
    assert!(
        reason.contains("InnoDB"),
        "reason carries the error log: {reason}"
    );
    assert!(reason.contains("error log"), "{reason}");
    let failed = plane.compute(&c.id).await.expect("compute");
    assert_eq!(failed.state, ComputeState::Failed);
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("InnoDB"))
    );

    let again = plane
        .wake(&p.id)
        .await
        .expect_err("second wake right after");
    assert!(
        matches!(
            again,
            WakeError::RateLimited {
                retry_in_secs: 1..,
                ..
            }
        ),
        "{again:?}"
    );
    assert_eq!(Stats::get(&plane.stats().start_failures), 1);
    assert_eq!(starts(plane), 0);
    assert_eq!(mariadbd_on(&datadir_of(plane, &p.id)), 0);

    // Over REST: the failure is visible and the wake answers 503.
    let router = doze_control::rest::router(std::sync::Arc::clone(plane), None);
    let resp = call(
        &router,
        "GET",
        &format!("/api/v1/wake_compute?endpointish={}", p.name),
        None,
        None,
    )
    .await;
    assert_error(
        &resp,
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "rate_limited",
    );
    let resp = call(
        &router,
        "GET",
        &format!("/api/v1/compute/{}", c.id),
        None,
        None,
    )
    .await;
    assert_eq!(resp.1["state"], "failed");
    assert!(
        resp.1["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("InnoDB"))
    );

    // After the back-off, a further start is attempted again (and fails again).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = plane.wake(&p.id).await.expect_err("still broken");
    assert!(matches!(third, WakeError::StartFailed { .. }), "{third:?}");
    assert_eq!(Stats::get(&plane.stats().start_failures), 2);
    let fourth = plane.wake(&p.id).await.expect_err("backing off longer");
    assert!(
        matches!(fourth, WakeError::RateLimited { .. }),
        "{fourth:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_doze_adopts_running_computes_and_never_starts_twice() {
    let dir = doze_control::testkit::scratch_dir("doze-ctl-").expect("tempdir");
    restart_scenario(config(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_doze_adopts_running_computes_on_postgres() {
    let pg = doze_control::testkit::Postgres::start()
        .await
        .expect("postgres");
    let dir = doze_control::testkit::scratch_dir("doze-ctl-").expect("tempdir");
    let cfg = doze_control::ControlConfig {
        db_dsn: pg.dsn(),
        ..config(&dir)
    };
    restart_scenario(cfg).await;
}

async fn restart_scenario(cfg: doze_control::ControlConfig) {
    let a = ControlPlane::start(cfg.clone(), Activity::new())
        .await
        .expect("A");
    let data_root = a.config().data_dir.clone();
    let p = a
        .create_project("phoenix", serde_json::json!({}))
        .await
        .expect("project");
    let c = a
        .create_compute(&p.id, serde_json::json!({}))
        .await
        .expect("compute");
    a.create_role(&p.id, "app", "phoenix-pw")
        .await
        .expect("role");
    let first = a.wake(&p.id).await.expect("wake via A");
    {
        let mut conn = connect(&first.address, "app", "phoenix-pw")
            .await
            .expect("connect");
        conn.query_drop("CREATE DATABASE d").await.expect("db");
        conn.query_drop("CREATE TABLE d.t (n INT)")
            .await
            .expect("table");
        conn.query_drop("INSERT INTO d.t VALUES (1), (2), (3)")
            .await
            .expect("insert");
        conn.disconnect().await.ok();
    }
    // A "crashes": dropped without shutdown, its mariadbd keeps running.
    drop(a);
    let datadir = data_root.join("projects").join(&p.id).join("data");
    assert_eq!(mariadbd_on(&datadir), 1);

    let b = ControlPlane::start(cfg.clone(), Activity::new())
        .await
        .expect("B");
    let adopted = b.compute(&c.id).await.expect("compute");
    assert_eq!(adopted.state, ComputeState::Running, "adopted as running");
    assert_eq!(adopted.address.as_deref(), Some(first.address.as_str()));
    let info = b.wake("phoenix").await.expect("wake via B");
    assert_eq!(info.address, first.address);
    assert_eq!(info.cold_start, ColdStart::Warm);
    assert_eq!(starts(&b), 0, "B started nothing");
    assert_eq!(
        mariadbd_on(&datadir),
        1,
        "still exactly one mariadbd on the datadir"
    );
    assert_eq!(select_one(&info.address, "app", "phoenix-pw").await, 1);

    // B crashes too, and then the server dies while nobody watches.
    // The local driver's handle of a running compute is its server's pid.
    let pid: i32 = adopted
        .handle
        .as_deref()
        .and_then(|h| h.parse().ok())
        .expect("pid recorded");
    drop(b);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill mariadbd");
    for _ in 0..500 {
        if mariadbd_on(&datadir) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c2 = ControlPlane::start(cfg, Activity::new()).await.expect("C");
    let marked = c2.compute(&c.id).await.expect("compute");
    assert_eq!(
        marked.state,
        ComputeState::Suspended,
        "a dead compute is marked suspended"
    );
    assert_eq!(marked.address, None);
    let info = c2.wake(&p.id).await.expect("wake via C");
    assert_eq!(info.cold_start, ColdStart::Resumed);
    assert_eq!(starts(&c2), 1);
    assert_eq!(mariadbd_on(&datadir), 1);
    let mut conn = connect(&info.address, "app", "phoenix-pw")
        .await
        .expect("connect");
    let n: Option<i64> = conn
        .query_first("SELECT COUNT(*) FROM d.t")
        .await
        .expect("count");
    assert_eq!(
        n,
        Some(3),
        "committed rows survive a crash (InnoDB recovery)"
    );
    conn.disconnect().await.ok();
    c2.shutdown().await;
    assert_eq!(mariadbd_on(&datadir), 0);
    kill_all_under(&data_root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_after_a_crash_restarts_the_compute() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (pid, cid) = env.project_with_compute("crashy", "app", "crash-pw").await;
    plane.wake(&pid).await.expect("wake");
    let c = plane.compute(&cid).await.expect("compute");
    let server: u32 = c
        .handle
        .as_deref()
        .and_then(|h| h.parse().ok())
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    // Exit (and io_uring teardown) of a killed server takes a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while doze_control::driver::local::pid_alive(server) {
        assert!(
            std::time::Instant::now() < deadline,
            "killed mariadbd never exited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The proxy fails to connect and invalidates; the next wake notices and restarts.
    plane.invalidate(&pid);
    let info = plane.wake(&pid).await.expect("wake after crash");
    assert_eq!(info.cold_start, ColdStart::Resumed);
    assert_eq!(select_one(&info.address, "app", "crash-pw").await, 1);
    assert_eq!(starts(plane), 2);
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_is_bounded_by_wake_timeout_and_the_start_still_completes() {
    let env = sqlite_env(|c| c.wake_timeout = Duration::from_millis(300)).await;
    let plane = &env.plane;
    let (pid, cid) = env.project_with_compute("slow", "app", "slow-pw").await;
    // The first start initialises storage (about a second): longer than the wake timeout.
    let t0 = std::time::Instant::now();
    let err = plane.wake(&pid).await.expect_err("times out");
    assert!(matches!(err, WakeError::Timeout { .. }), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        t0.elapsed()
    );
    // The start was not abandoned: it finishes and the next wake gets it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while plane.compute(&cid).await.expect("c").state != ComputeState::Running {
        assert!(
            std::time::Instant::now() < deadline,
            "start never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = plane.wake(&pid).await.expect("wake");
    assert_eq!(select_one(&info.address, "app", "slow-pw").await, 1);
    assert_eq!(starts(plane), 1);
    plane.shutdown().await;
}
