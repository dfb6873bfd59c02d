//! The whole product: clients through the proxy, the embedded control plane waking and
//! suspending real mariadbd computes, state in SQLite.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use doze_control::activity::Activity;
use doze_control::store::ComputeState;
use doze_control::{ControlConfig, ControlPlane};
use doze_proxy::ProxyConfig;
use mysql_async::prelude::*;

struct Env {
    plane: Arc<ControlPlane>,
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

async fn env(tweak: impl FnOnce(&mut ControlConfig)) -> Env {
    let dir = doze_control::testkit::scratch_dir("doze-life-").unwrap();
    let mut cfg = ControlConfig {
        db_dsn: format!("sqlite://{}/state.db", dir.path().display()),
        data_dir: dir.path().join("data"),
        idle_timeout: Duration::ZERO,
        check_interval: Duration::from_secs(3600),
        wake_timeout: Duration::from_secs(30),
        ..ControlConfig::default()
    };
    tweak(&mut cfg);
    let plane = ControlPlane::start(cfg, Activity::new()).await.unwrap();
    let proxy_cfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start(proxy_cfg, Arc::clone(&plane)).await;
    Env {
        plane,
        proxy,
        _dir: dir,
    }
}

impl Drop for Env {
    /// Computes are child processes in their own process group: a test that ends (or fails)
    /// must not leave them running.
    fn drop(&mut self) {
        doze_control::testkit::kill_mariadbd_under(self._dir.path());
    }
}

impl Env {
    /// Project `name` with a compute and role `app`; returns the compute id.
    async fn project(&self, name: &str, config: serde_json::Value) -> String {
        let p = self.plane.create_project(name, config).await.unwrap();
        let c = self
            .plane
            .create_compute(&p.id, serde_json::json!({}))
            .await
            .unwrap();
        self.plane
            .create_role(&p.id, "app", PASSWORD)
            .await
            .unwrap();
        c.id
    }

    fn starts(&self) -> u64 {
        self.plane.stats().compute_starts.load(Ordering::SeqCst)
    }

    /// Suspends once the proxy has closed the sessions a client just ended: `disconnect()`
    /// returns when COM_QUIT is sent, a moment before the proxy sees the close, and a suspend
    /// never cuts an open session.
    async fn suspend_after_disconnect(&self, compute: &str) -> doze_control::store::Compute {
        for _ in 0..250 {
            match self.plane.suspend_compute(compute).await {
                Ok(c) => return c,
                Err(doze_control::ControlError::SessionsOpen { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("suspend failed: {e}"),
            }
        }
        panic!("sessions did not close within 5 s");
    }

    async fn state(&self, compute: &str) -> ComputeState {
        self.plane.compute(compute).await.unwrap().state
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_suspend_resume_cycles_keep_every_committed_row() {
    let env = env(|_| {}).await;
    let compute = env.project("life", serde_json::json!({})).await;
    let mut conn = connect(env.proxy.addr, "life.app", None).await.unwrap();
    conn.query_drop("CREATE DATABASE shop").await.unwrap();
    conn.query_drop("CREATE TABLE shop.kept (i INT PRIMARY KEY, note VARCHAR(40))")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    for cycle in 0..20i64 {
        let mut conn = connect(env.proxy.addr, "life.app", Some("shop"))
            .await
            .unwrap();
        let count: Option<i64> = conn.query_first("SELECT COUNT(*) FROM kept").await.unwrap();
        assert_eq!(count, Some(cycle), "rows lost before cycle {cycle}");
        conn.exec_drop(
            "INSERT INTO kept VALUES (?, ?)",
            (cycle, format!("cycle {cycle}")),
        )
        .await
        .unwrap();
        conn.disconnect().await.unwrap();
        let suspended = env.suspend_after_disconnect(&compute).await;
        assert_eq!(suspended.state, ComputeState::Suspended);
    }
    let mut conn = connect(env.proxy.addr, "life.app", Some("shop"))
        .await
        .unwrap();
    let (count, last): (i64, String) = conn
        .query_first("SELECT COUNT(*), MAX(note) FROM kept")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((count, last.as_str()), (20, "cycle 9"));
    assert_eq!(
        env.starts(),
        21,
        "one start per cycle and one for the final check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_at_a_suspended_project_cause_one_start() {
    let env = env(|_| {}).await;
    let compute = env.project("herd", serde_json::json!({})).await;
    // Initialise storage and leave the compute suspended.
    env.plane.resume_compute(&compute).await.unwrap();
    env.plane.suspend_compute(&compute).await.unwrap();
    let before = env.starts();
    let addr = env.proxy.addr;
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut conn = connect(addr, "herd.app", None).await?;
            let v: Option<i64> = conn.query_first(format!("SELECT {i}")).await?;
            conn.disconnect().await?;
            Ok::<_, mysql_async::Error>(v)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let v = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(v, Some(i as i64));
    }
    assert_eq!(
        env.starts() - before,
        1,
        "exactly one compute start for the herd"
    );
    assert_eq!(env.state(&compute).await, ComputeState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_or_unknown_role_wakes_nothing() {
    let env = env(|_| {}).await;
    let compute = env.project("quiet", serde_json::json!({})).await;
    env.plane.resume_compute(&compute).await.unwrap();
    env.plane.suspend_compute(&compute).await.unwrap();
    let before = env.starts();
    let err = mysql_async::Conn::new(opts(env.proxy.addr, "quiet.app", "wrong", None))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    let err = mysql_async::Conn::new(opts(env.proxy.addr, "quiet.ghost", PASSWORD, None))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    let err = connect(env.proxy.addr, "nosuch.app", None)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1049), "{err}");
    assert_eq!(env.starts(), before);
    assert_eq!(env.state(&compute).await, ComputeState::Suspended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_racing_a_suspend_is_served() {
    let env = env(|_| {}).await;
    let compute = env.project("race", serde_json::json!({})).await;
    for round in 0..5 {
        env.plane.resume_compute(&compute).await.unwrap();
        let plane = Arc::clone(&env.plane);
        let c = compute.clone();
        let suspend = tokio::spawn(async move { plane.suspend_compute(&c).await });
        // Connect while the suspend is under way (or just before it): never an error.
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        let mut conn = connect(env.proxy.addr, "race.app", None)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let v: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
        assert_eq!(v, Some(1));
        // The suspend either finished before the client arrived or was refused because a
        // session was open; either way the client's session is intact.
        let _ = suspend.await.unwrap();
        let v: Option<i64> = conn.query_first("SELECT 2").await.unwrap();
        assert_eq!(v, Some(2));
        conn.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_compute_is_suspended_but_never_under_an_open_session() {
    let env = env(|cfg| {
        cfg.check_interval = Duration::from_millis(200);
    })
    .await;
    let scheduler = env.plane.spawn_scheduler();
    let compute = env
        .project(
            "sleepy",
            serde_json::json!({"idle_timeout": 1, "suspend_mode": "stop"}),
        )
        .await;
    let mut conn = connect(env.proxy.addr, "sleepy.app", None).await.unwrap();
    // An open (idle) session keeps it running well past the idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.state(&compute).await, ComputeState::Running);
    let v: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
    conn.disconnect().await.unwrap();
    // Without sessions it is suspended within the idle timeout plus a check interval or two.
    let mut suspended = false;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if env.state(&compute).await == ComputeState::Suspended {
            suspended = true;
            break;
        }
    }
    assert!(suspended, "idle compute was not suspended");
    // And the next client wakes it.
    let mut conn = connect(env.proxy.addr, "sleepy.app", None).await.unwrap();
    let v: Option<i64> = conn.query_first("SELECT 3").await.unwrap();
    assert_eq!(v, Some(3));
    scheduler.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_apply_on_the_next_connection_running_or_suspended() {
    let env = env(|_| {}).await;
    let compute = env.project("roles", serde_json::json!({})).await;
    let first = connect(env.proxy.addr, "roles.app", None).await.unwrap();
    // Created while running.
    env.plane
        .create_role("roles", "late", "late-pw")
        .await
        .unwrap();
    let mut late = mysql_async::Conn::new(opts(env.proxy.addr, "roles.late", "late-pw", None))
        .await
        .unwrap();
    let who: Option<String> = late.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("late@%"));
    late.disconnect().await.unwrap();
    first.disconnect().await.unwrap();
    // Created while suspended.
    env.suspend_after_disconnect(&compute).await;
    env.plane
        .create_role("roles", "sleeper", "sleep-pw")
        .await
        .unwrap();
    env.plane.delete_role("roles", "late").await.unwrap();
    let mut sleeper =
        mysql_async::Conn::new(opts(env.proxy.addr, "roles.sleeper", "sleep-pw", None))
            .await
            .unwrap();
    let who: Option<String> = sleeper.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("sleeper@%"));
    let err = mysql_async::Conn::new(opts(env.proxy.addr, "roles.late", "late-pw", None))
        .await
        .unwrap_err();
    assert_eq!(
        server_code(&err),
        Some(1045),
        "deleted role must be refused: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_without_compute_gets_a_clear_error() {
    let env = env(|_| {}).await;
    let p = env
        .plane
        .create_project("bare", serde_json::json!({}))
        .await
        .unwrap();
    env.plane.create_role(&p.id, "app", PASSWORD).await.unwrap();
    let err = connect(env.proxy.addr, "bare.app", None).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("has no compute"), "{text}");
}

/// The seed's per-project `"max_connections"` limits the project's sessions through doze (it
/// used to be stored and ignored); the smaller of it and the proxy-wide limit applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projects_max_connections_is_enforced() {
    let env = env(|_| {}).await;
    env.project("capped", serde_json::json!({"max_connections": 2}))
        .await;
    let first = connect(env.proxy.addr, "capped.app", None).await.unwrap();
    let second = connect(env.proxy.addr, "capped.app", None).await.unwrap();
    let err = connect(env.proxy.addr, "capped.app", None)
        .await
        .expect_err("a third session is over the project's limit");
    assert_eq!(server_code(&err), Some(1040), "{err}");
    assert!(err.to_string().contains("for this project"), "{err}");
    first.disconnect().await.unwrap();
    // The slot is given back once the proxy has seen the close.
    let mut third = None;
    for _ in 0..100 {
        match connect(env.proxy.addr, "capped.app", None).await {
            Ok(c) => {
                third = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    third
        .expect("a session fits again")
        .disconnect()
        .await
        .unwrap();
    second.disconnect().await.unwrap();
    // Out of range or not a number: refused at create, with the reason.
    for bad in [
        serde_json::json!(0),
        serde_json::json!("lots"),
        serde_json::json!(100_000),
    ] {
        let err = env
            .plane
            .create_project("bad-cap", serde_json::json!({"max_connections": bad}))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("max_connections"), "{err}");
    }
}

/// The project id of a compute (the key of its pool).
async fn project_of(env: &Env, compute: &str) -> String {
    env.plane.compute(compute).await.unwrap().project_id
}

/// Waits until `n` backend sessions are parked in the project's pool (check-in is
/// asynchronous: it resets the session after the client left).
async fn parked(env: &Env, project_id: &str, n: usize) {
    for _ in 0..250 {
        if env.proxy.pool_idle(project_id) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "expected {n} parked session(s), found {}",
        env.proxy.pool_idle(project_id)
    );
}

async fn thread_id(conn: &mut mysql_async::Conn) -> u64 {
    conn.query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap()
}

/// Parked sessions are connections to the compute, not clients: a full pool must not keep an
/// idle compute awake, the suspend drains the pool, and the next compute (a new generation)
/// never gets a session of the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_never_keeps_a_compute_awake_and_a_suspend_drains_it() {
    let env = env(|cfg| {
        cfg.check_interval = Duration::from_millis(200);
    })
    .await;
    let compute = env
        .project(
            "pooled",
            serde_json::json!({"idle_timeout": 2, "suspend_mode": "stop"}),
        )
        .await;
    let project = project_of(&env, &compute).await;
    // Five sessions at once, so five backend sessions; all go to the pool.
    let mut conns = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..5 {
        let mut c = connect(env.proxy.addr, "pooled.app", None).await.unwrap();
        threads.push(thread_id(&mut c).await);
        conns.push(c);
    }
    for c in conns {
        c.disconnect().await.unwrap();
    }
    parked(&env, &project, 5).await;
    let scheduler = env.plane.spawn_scheduler();
    let mut suspended = false;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if env.state(&compute).await == ComputeState::Suspended {
            suspended = true;
            break;
        }
    }
    scheduler.abort();
    assert!(
        suspended,
        "a compute with only parked sessions was not suspended"
    );
    assert_eq!(
        env.proxy.pool_idle(&project),
        0,
        "the suspend drained the pool"
    );
    // A new start: a fresh session, which works.
    let mut conn = connect(env.proxy.addr, "pooled.app", None).await.unwrap();
    let v: Option<i64> = conn.query_first("SELECT 7").await.unwrap();
    assert_eq!(v, Some(7));
    conn.disconnect().await.unwrap();
}

/// A session parked under the old password is never handed to a client of the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_drains_the_pool() {
    let env = env(|_| {}).await;
    let compute = env.project("rotate", serde_json::json!({})).await;
    let project = project_of(&env, &compute).await;
    let mut c = connect(env.proxy.addr, "rotate.app", None).await.unwrap();
    let before = thread_id(&mut c).await;
    c.disconnect().await.unwrap();
    parked(&env, &project, 1).await;
    // Reused while nothing changed.
    let mut c = connect(env.proxy.addr, "rotate.app", None).await.unwrap();
    assert_eq!(thread_id(&mut c).await, before, "the pool was not used");
    c.disconnect().await.unwrap();
    parked(&env, &project, 1).await;
    env.plane
        .set_role_password("rotate", "app", "rotated-pw-1")
        .await
        .unwrap();
    assert_eq!(
        env.proxy.pool_idle(&project),
        0,
        "the role change drained the pool"
    );
    let err = connect(env.proxy.addr, "rotate.app", None)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    let mut c = mysql_async::Conn::new(opts(env.proxy.addr, "rotate.app", "rotated-pw-1", None))
        .await
        .unwrap();
    assert_ne!(
        thread_id(&mut c).await,
        before,
        "a session of the old password was reused"
    );
    c.disconnect().await.unwrap();
}

/// `wait_timeout` counts the frozen time, so a session parked before a freeze is never used
/// after the thaw: the freeze drains the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_drains_the_pool() {
    let env = env(|_| {}).await;
    let compute = env.project("chilly", serde_json::json!({})).await;
    let project = project_of(&env, &compute).await;
    let mut c = connect(env.proxy.addr, "chilly.app", None).await.unwrap();
    let before = thread_id(&mut c).await;
    c.disconnect().await.unwrap();
    parked(&env, &project, 1).await;
    let mut frozen = false;
    for _ in 0..50 {
        if env.plane.freeze_compute(&compute).await.is_ok() {
            frozen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(frozen, "the compute could not be frozen");
    assert_eq!(env.state(&compute).await, ComputeState::Frozen);
    assert_eq!(
        env.proxy.pool_idle(&project),
        0,
        "the freeze drained the pool"
    );
    let mut c = connect(env.proxy.addr, "chilly.app", None).await.unwrap();
    assert_ne!(
        thread_id(&mut c).await,
        before,
        "a session parked before the freeze was reused"
    );
    c.disconnect().await.unwrap();
}
