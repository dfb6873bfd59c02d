//! The control plane's logic against the fake driver (`testkit::FakeDriver`): wakes, herds,
//! back-off, timeouts, suspend races, the scheduler and restarts, in milliseconds. The same
//! behaviours are tested against real mariadbd in wake.rs, suspend.rs and isolation.rs; these
//! tests pin the logic down with timings a real server cannot be made to have.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use doze_control::activity::Activity;
use doze_control::gateway::{ColdStart, WakeError};
use doze_control::store::{ComputeState, Store};
use doze_control::testkit::FakeDriver;
use doze_control::{ControlConfig, ControlError, ControlPlane, Stats};

struct Env {
    plane: Arc<ControlPlane>,
    driver: Arc<FakeDriver>,
    activity: Arc<Activity>,
    store: Store,
    cfg: ControlConfig,
}

async fn env(tweak: impl FnOnce(&mut ControlConfig)) -> Env {
    let mut cfg = ControlConfig {
        db_dsn: "sqlite::memory:".into(),
        data_dir: std::env::temp_dir(),
        idle_timeout: Duration::ZERO,
        check_interval: Duration::from_secs(3600),
        wake_timeout: Duration::from_secs(10),
        ..ControlConfig::default()
    };
    tweak(&mut cfg);
    let store = Store::open(&cfg.db_dsn).await.expect("store");
    let driver = FakeDriver::new();
    let activity = Activity::new();
    let plane = ControlPlane::start_with_driver(
        cfg.clone(),
        Arc::clone(&activity),
        store.clone(),
        driver.clone(),
    )
    .await
    .expect("plane");
    Env {
        plane,
        driver,
        activity,
        store,
        cfg,
    }
}

impl Env {
    async fn project(&self, name: &str, config: serde_json::Value) -> (String, String) {
        common::new_project(&self.plane, name, config).await
    }

    async fn state(&self, compute: &str) -> ComputeState {
        self.plane.compute(compute).await.expect("compute").state
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_500_wakes_starts_once() {
    let env = env(|_| {}).await;
    let (p, c) = env.project("herd", serde_json::json!({})).await;
    env.driver.set_start_delay(Duration::from_millis(100));
    let wakes = (0..500).map(|_| {
        let plane = Arc::clone(&env.plane);
        let p = p.clone();
        tokio::spawn(async move { plane.wake(&p).await })
    });
    let answers = futures::future::join_all(wakes).await;
    let addresses: std::collections::HashSet<String> = answers
        .into_iter()
        .map(|a| a.expect("join").expect("wake").address)
        .collect();
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    assert_eq!(env.driver.starts(), 1);
    assert_eq!(env.state(&c).await, ComputeState::Running);
    let coalesced = Stats::get(&env.plane.stats().wakes_coalesced);
    assert!(coalesced >= 1, "coalesced {coalesced}");
    let warm = env.plane.wake(&p).await.expect("warm");
    assert_eq!(warm.cold_start, ColdStart::Warm);
    assert_eq!(env.driver.starts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_starts_back_off_and_recover() {
    let env = env(|_| {}).await;
    let (p, c) = env.project("flaky", serde_json::json!({})).await;
    env.driver.fail_next_starts(1);
    let err = env.plane.wake(&p).await.expect_err("first start fails");
    assert!(matches!(err, WakeError::StartFailed { .. }), "{err:?}");
    assert_eq!(env.state(&c).await, ComputeState::Failed);
    let held = env.plane.wake(&p).await.expect_err("held back");
    let WakeError::RateLimited { retry_in_secs, .. } = held else {
        panic!("expected RateLimited, got {held:?}");
    };
    assert!((1..=1).contains(&retry_in_secs), "{retry_in_secs}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let info = env.plane.wake(&p).await.expect("after the back-off");
    assert_eq!(info.cold_start, ColdStart::Resumed);
    assert_eq!(env.state(&c).await, ComputeState::Running);
    let compute = env.plane.compute(&c).await.expect("compute");
    assert_eq!(compute.last_error, None, "a success clears the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_times_the_wake_out_but_completes() {
    let env = env(|c| c.wake_timeout = Duration::from_millis(200)).await;
    let (p, c) = env.project("slow", serde_json::json!({})).await;
    env.driver.set_start_delay(Duration::from_millis(600));
    let started = Instant::now();
    let err = env.plane.wake(&p).await.expect_err("timeout");
    assert!(matches!(err, WakeError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    // The start was not cancelled with the waiter: it finishes and is recorded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.state(&c).await != ComputeState::Running {
        assert!(Instant::now() < deadline, "the start never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.driver.set_start_delay(Duration::ZERO);
    let info = env.plane.wake(&p).await.expect("wake");
    assert_eq!(info.cold_start, ColdStart::Warm);
    assert_eq!(env.driver.starts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_racing_suspends_always_get_a_running_compute() {
    let env = env(|_| {}).await;
    let (p, c) = env.project("race", serde_json::json!({})).await;
    env.driver.set_start_delay(Duration::from_millis(5));
    for _ in 0..20 {
        env.plane.wake(&p).await.expect("wake");
        let plane = Arc::clone(&env.plane);
        let suspend = tokio::spawn({
            let c = c.clone();
            async move { plane.suspend_compute(&c).await }
        });
        let info = env.plane.wake(&p).await.expect("a wake during a suspend");
        suspend.await.expect("join").expect("suspend");
        // Whatever the order, the wake's answer is a compute that runs now, or the suspend
        // came after it and the next wake starts it again.
        if !env.driver.is_running(&p) {
            let again = env.plane.wake(&p).await.expect("wake after suspend");
            assert_eq!(again.cold_start, ColdStart::Resumed);
        } else {
            assert_eq!(env.state(&c).await, ComputeState::Running, "{info:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspend_never_cuts_an_open_session() {
    let env = env(|_| {}).await;
    let (p, c) = env
        .project("busy", serde_json::json!({"idle_timeout": 0.01}))
        .await;
    env.plane.wake(&p).await.expect("wake");
    let session = env.activity.project(&p).open_session();
    let err = env.plane.suspend_compute(&c).await.expect_err("refused");
    assert!(
        matches!(err, ControlError::SessionsOpen { sessions: 1, .. }),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(env.plane.suspend_idle().await.expect("pass"), 0);
    drop(session);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(env.plane.suspend_idle().await.expect("pass"), 1);
    assert_eq!(env.state(&c).await, ComputeState::Suspended);
    assert_eq!(env.driver.stops(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_finds_dead_computes_and_respects_direct_sessions() {
    let env = env(|c| c.check_interval = Duration::from_millis(50)).await;
    let (dead, dead_c) = env.project("dead", serde_json::json!({})).await;
    let (direct, direct_c) = env
        .project("direct", serde_json::json!({"idle_timeout": 0.01}))
        .await;
    env.plane.wake(&dead).await.expect("wake");
    env.plane.wake(&direct).await.expect("wake");
    env.driver.set_client_sessions(&direct, 2);
    let scheduler = env.plane.spawn_scheduler();
    env.driver.kill(&dead);
    let deadline = Instant::now() + Duration::from_secs(2);
    while env.state(&dead_c).await != ComputeState::Suspended {
        assert!(
            Instant::now() < deadline,
            "the dead compute was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let events = env.plane.compute_events(&dead_c).await.expect("events");
    assert_eq!(events.last().map(|e| e.reason.as_str()), Some("lost"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.state(&direct_c).await,
        ComputeState::Running,
        "direct sessions count as activity"
    );
    env.driver.set_client_sessions(&direct, 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while env.state(&direct_c).await != ComputeState::Suspended {
        assert!(
            Instant::now() < deadline,
            "the idle compute was not suspended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    scheduler.abort();
    // The next connection starts the lost one again.
    let again = env.plane.wake(&dead).await.expect("wake again");
    assert_eq!(again.cold_start, ColdStart::Resumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_adopts_what_still_runs() {
    let env = env(|_| {}).await;
    let (alive, alive_c) = env.project("alive", serde_json::json!({})).await;
    let (gone, gone_c) = env.project("gone", serde_json::json!({})).await;
    env.plane.wake(&alive).await.expect("wake");
    env.plane.wake(&gone).await.expect("wake");
    env.driver.kill(&gone);
    // A second control plane on the same store and machine, as after a crash of doze.
    let again = ControlPlane::start_with_driver(
        env.cfg.clone(),
        Activity::new(),
        env.store.clone(),
        env.driver.clone(),
    )
    .await
    .expect("restart");
    assert_eq!(
        again.compute(&alive_c).await.expect("c").state,
        ComputeState::Running
    );
    assert_eq!(
        again.compute(&gone_c).await.expect("c").state,
        ComputeState::Suspended
    );
    let info = again.wake(&alive).await.expect("wake");
    assert_eq!(info.cold_start, ColdStart::Warm);
    assert_eq!(env.driver.starts(), 2, "nothing was started twice");
}

#[tokio::test]
async fn compute_configs_are_checked_by_the_driver() {
    let env = env(|_| {}).await;
    let p = env
        .plane
        .create_project("cfg", serde_json::json!({}))
        .await
        .expect("project");
    let err = env
        .plane
        .create_compute(&p.id, serde_json::json!([1, 2]))
        .await
        .expect_err("not an object");
    assert!(matches!(err, ControlError::Invalid(_)), "{err}");
    // The fake driver takes any object, whatever the local driver would say of it: the
    // control plane asks the driver, and knows no driver's rules itself.
    env.plane
        .create_compute(
            &p.id,
            serde_json::json!({"mariadb_options": {"anything": 1}}),
        )
        .await
        .expect("the fake driver's rules");
}

/// A driver that cannot freeze (the Kubernetes driver, this fake): idle computes are stopped
/// whatever the suspend mode says, and an explicit freeze is refused with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_that_cannot_freeze_stop_idle_computes() {
    let env = env(|_| {}).await;
    let (p, c) = env
        .project(
            "stiff",
            serde_json::json!({"idle_timeout": 0.01, "suspend_mode": "freeze"}),
        )
        .await;
    env.plane.wake(&p).await.expect("wake");
    assert_eq!(env.plane.freezer(), None);
    let err = env.plane.freeze_compute(&c).await.expect_err("refused");
    assert!(matches!(err, ControlError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("cannot freeze"), "{err}");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(env.plane.suspend_idle().await.expect("pass"), 1);
    assert_eq!(env.state(&c).await, ComputeState::Suspended);
    assert_eq!(env.driver.stops(), 1);
}

/// A compute that dies unseen is metered up to its last sign of life, never up to when it was
/// found dead: by the scheduler while doze runs, and by the next doze after a crash of doze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_death_nobody_saw_is_dated_at_the_last_sign_of_life() {
    let env = env(|_| {}).await;
    let now = || doze_control::activity::now_ms() as i64;
    let (seen, seen_c) = env.project("seen", serde_json::json!({})).await;
    let (unseen, unseen_c) = env.project("unseen", serde_json::json!({})).await;
    env.plane.wake(&seen).await.expect("wake");
    env.plane.wake(&unseen).await.expect("wake");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A liveness pass finds both alive: their last sign of life.
    let checked = now();
    assert_eq!(env.plane.find_lost().await.expect("pass"), 0);
    let checked_after = now();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // While doze runs: dies, found by the next pass 800 ms later.
    env.driver.kill(&seen);
    let second = now();
    assert_eq!(env.plane.find_lost().await.expect("pass"), 1);
    let found = now();
    let lost: Vec<_> = env
        .plane
        .compute_events(&seen_c)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.reason == "lost")
        .collect();
    assert_eq!(lost.len(), 2, "{lost:?}");
    for e in &lost {
        assert!(
            e.at >= checked && e.at <= checked_after,
            "dated at the check that last saw it ({checked}..{checked_after}), not when found ({found}): {e:?}"
        );
    }

    // After a crash of doze: the compute dies while nobody watches; the next doze dates it at
    // the last check that saw it (the second pass), not at its own start.
    env.driver.kill(&unseen);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = ControlPlane::start_with_driver(
        env.cfg.clone(),
        Activity::new(),
        env.store.clone(),
        env.driver.clone(),
    )
    .await
    .expect("second plane");
    let events = restarted.compute_events(&unseen_c).await.expect("events");
    let last = events.last().expect("events");
    assert_eq!(last.to_state, "suspended", "{events:?}");
    assert!(
        last.at >= second && last.at <= found,
        "dated at the last check ({second}..{found}): {last:?}"
    );
    // Metered: running from the wake up to that check (±, never through the downtime).
    let usage = restarted
        .usage(
            Some(&unseen),
            None,
            0,
            now(),
            doze_control::usage::Granularity::Total,
        )
        .await
        .expect("usage");
    let woke = events
        .iter()
        .find(|e| e.to_state == "starting")
        .expect("a start")
        .at;
    let metered = usage[0].0.running_ms;
    assert!(
        metered <= found - woke && metered >= second - woke,
        "running {metered} ms, expected about {} ms",
        second - woke
    );
}
