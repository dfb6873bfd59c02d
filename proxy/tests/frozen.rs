//! The frozen tier, end to end: clients through the proxy, real mariadbd computes frozen and
//! thawed by each mechanism this machine offers (cgroup v2, the cgroup v1 freezer, signals),
//! stopped by policy, adopted after a restart of doze.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use doze_control::activity::Activity;
use doze_control::store::ComputeState;
use doze_control::{ControlConfig, ControlError, ControlPlane, FreezerChoice};
use doze_proxy::ProxyConfig;
use mysql_async::prelude::*;

struct Env {
    plane: Arc<ControlPlane>,
    proxy: Proxy,
    cfg: ControlConfig,
    dir: Scratch,
}

/// The test's directory; computes under it are killed when it goes (a failed test must not
/// leave servers running).
struct Scratch(tempfile::TempDir);

impl Drop for Scratch {
    fn drop(&mut self) {
        doze_control::testkit::kill_mariadbd_under(self.0.path());
    }
}

fn config(dir: &tempfile::TempDir, freezer: FreezerChoice) -> ControlConfig {
    let mut cfg = ControlConfig {
        db_dsn: format!("sqlite://{}/state.db", dir.path().display()),
        data_dir: dir.path().join("data"),
        idle_timeout: Duration::ZERO,
        check_interval: Duration::from_secs(3600),
        wake_timeout: Duration::from_secs(30),
        ..ControlConfig::default()
    };
    cfg.frozen.freezer = freezer;
    cfg
}

async fn env_with(freezer: FreezerChoice, tweak: impl FnOnce(&mut ControlConfig)) -> Env {
    let dir = doze_control::testkit::scratch_dir("doze-frozen-").unwrap();
    let mut cfg = config(&dir, freezer);
    tweak(&mut cfg);
    let plane = ControlPlane::start(cfg.clone(), Activity::new())
        .await
        .unwrap();
    let proxy = Proxy::start(
        ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ProxyConfig::default()
        },
        Arc::clone(&plane),
    )
    .await;
    Env {
        plane,
        proxy,
        cfg,
        dir: Scratch(dir),
    }
}

async fn env() -> Env {
    env_with(FreezerChoice::Auto, |_| {}).await
}

impl Env {
    /// Project `name` with a compute and role `app`; returns the compute id.
    async fn project(&self, name: &str) -> String {
        let p = self
            .plane
            .create_project(name, serde_json::json!({}))
            .await
            .unwrap();
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

    /// Freezes once the proxy has seen the last client's close (a freeze, like a suspend,
    /// never happens under an open session).
    async fn freeze(&self, compute: &str) -> doze_control::store::Compute {
        for _ in 0..250 {
            match self.plane.freeze_compute(compute).await {
                Ok(c) => return c,
                Err(ControlError::SessionsOpen { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("freeze failed: {e}"),
            }
        }
        panic!("sessions did not close within 5 s");
    }

    async fn compute(&self, compute: &str) -> doze_control::store::Compute {
        self.plane.compute(compute).await.unwrap()
    }

    fn thaws(&self) -> u64 {
        self.plane.stats().thaws.load(Ordering::SeqCst)
    }

    fn starts(&self) -> u64 {
        self.plane.stats().compute_starts.load(Ordering::SeqCst)
    }
}

/// Whether the server at `address` sends its greeting within `within`: a frozen server
/// accepts the TCP connection (the kernel does) but says nothing.
async fn greets(address: &str, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(Ok(mut sock)) =
        tokio::time::timeout(within, tokio::net::TcpStream::connect(address)).await
    else {
        return false;
    };
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, sock.read(&mut byte)).await,
        Ok(Ok(1))
    )
}

async fn count_rows(env: &Env, user: &str) -> i64 {
    let mut conn = connect(env.proxy.addr, user, Some("shop")).await.unwrap();
    let n: Option<i64> = conn.query_first("SELECT COUNT(*) FROM kept").await.unwrap();
    conn.disconnect().await.unwrap();
    n.unwrap()
}

async fn make_table(env: &Env, user: &str) {
    let mut conn = connect(env.proxy.addr, user, None).await.unwrap();
    conn.query_drop("CREATE DATABASE shop").await.unwrap();
    conn.query_drop("CREATE TABLE shop.kept (i INT PRIMARY KEY)")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
}

/// `cycles` freeze/thaw cycles with a committed write before each freeze; every row is there
/// after each thaw, and after a stop of the frozen compute and a fresh start.
async fn freeze_thaw_cycles(env: &Env, cycles: i64) {
    let compute = env.project("cold").await;
    make_table(env, "cold.app").await;
    let starts = env.starts();
    for cycle in 0..cycles {
        let mut conn = connect(env.proxy.addr, "cold.app", Some("shop"))
            .await
            .unwrap();
        let n: Option<i64> = conn.query_first("SELECT COUNT(*) FROM kept").await.unwrap();
        assert_eq!(n, Some(cycle), "rows lost before cycle {cycle}");
        conn.exec_drop("INSERT INTO kept VALUES (?)", (cycle,))
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        let frozen = env.freeze(&compute).await;
        assert_eq!(frozen.state, ComputeState::Frozen);
        let address = frozen
            .address
            .clone()
            .expect("a frozen compute keeps its address");
        if cycle % 10 == 0 {
            assert!(
                !greets(&address, Duration::from_millis(200)).await,
                "cycle {cycle}: the frozen server still answers"
            );
        }
    }
    assert_eq!(env.starts(), starts, "no thaw is a start");
    assert_eq!(count_rows(env, "cold.app").await, cycles);
    // A stop of a frozen compute thaws it first and shuts it down cleanly.
    env.freeze(&compute).await;
    let stopped = env.plane.suspend_compute(&compute).await.unwrap();
    assert_eq!(stopped.state, ComputeState::Suspended);
    let datadir = datadir_of(&env.cfg, &stopped.project_id);
    assert_eq!(mariadbd_on(&datadir), 0, "the stopped server is gone");
    assert_eq!(count_rows(env, "cold.app").await, cycles);
    assert_eq!(env.starts(), starts + 1);
}

fn datadir_of(cfg: &ControlConfig, project_id: &str) -> std::path::PathBuf {
    std::fs::canonicalize(&cfg.data_dir)
        .unwrap()
        .join("projects")
        .join(project_id)
        .join("data")
}

fn mariadbd_on(datadir: &std::path::Path) -> usize {
    doze_control::testkit::mariadbd_pids_under(datadir).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_freeze_thaw_cycles_keep_every_committed_row() {
    let env = env().await;
    freeze_thaw_cycles(&env, 100).await;
    // Cycles 1..99 each meet a frozen compute, and so does the count after the last one.
    assert_eq!(
        env.thaws(),
        100,
        "one thaw per cycle after the first, one for the check"
    );
}

/// Every mechanism this machine offers (all three as root; signals alone as an ordinary
/// user, where no cgroup is writable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_available_freezer_freezes_and_thaws() {
    let mut tried = Vec::new();
    for choice in [
        FreezerChoice::CgroupV2,
        FreezerChoice::CgroupV1,
        FreezerChoice::Signal,
    ] {
        if doze_control::driver::freezer::Freezer::choose(choice).is_err() {
            assert!(
                !nix::unistd::geteuid().is_root(),
                "{choice:?} is unavailable even as root"
            );
            continue;
        }
        let env = env_with(choice, |_| {}).await;
        assert!(env.plane.freezer().is_some());
        freeze_thaw_cycles(&env, 5).await;
        tried.push(env.plane.freezer().unwrap());
    }
    assert!(tried.contains(&"signal"), "{tried:?}");
    if nix::unistd::geteuid().is_root() {
        assert_eq!(tried, ["cgroup2", "cgroup1", "signal"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_leaves_a_frozen_compute_frozen() {
    let env = env().await;
    let compute = env.project("locked").await;
    let conn = connect(env.proxy.addr, "locked.app", None).await.unwrap();
    conn.disconnect().await.unwrap();
    let frozen = env.freeze(&compute).await;
    let thaws = env.thaws();
    for _ in 0..3 {
        let err = mysql_async::Conn::new(opts(env.proxy.addr, "locked.app", "wrong", None))
            .await
            .expect_err("a wrong password is refused");
        assert_eq!(server_code(&err), Some(1045), "{err}");
    }
    assert_eq!(env.thaws(), thaws, "a wrong password never thaws");
    let after = env.compute(&compute).await;
    assert_eq!(after.state, ComputeState::Frozen);
    assert!(
        !greets(
            frozen.address.as_deref().unwrap(),
            Duration::from_millis(200)
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_500_client_herd_on_a_frozen_compute_thaws_it_once() {
    // 500 clients and the proxy's two sockets per session, in this one process.
    doze_proxy::accept::raise_fd_limit();
    let env = env().await;
    let compute = env.project("herd").await;
    let conn = connect(env.proxy.addr, "herd.app", None).await.unwrap();
    conn.disconnect().await.unwrap();
    env.freeze(&compute).await;
    let (thaws, starts) = (env.thaws(), env.starts());
    let addr = env.proxy.addr;
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = connect(addr, "herd.app", None).await?;
                let one: Option<i64> = conn.query_first("SELECT 1").await?;
                conn.disconnect().await?;
                Ok::<_, mysql_async::Error>(one)
            })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(Some(1)) => {}
            other => errors.push(format!("{other:?}")),
        }
    }
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(env.thaws(), thaws + 1, "one thaw for the whole herd");
    assert_eq!(env.starts(), starts, "and no start");
    assert_eq!(env.compute(&compute).await.state, ComputeState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_compute_is_stopped_after_stop_after() {
    let env = env_with(FreezerChoice::Auto, |cfg| {
        cfg.frozen.stop_after = Duration::from_millis(700);
    })
    .await;
    let compute = env.project("later").await;
    make_table(&env, "later.app").await;
    let mut conn = connect(env.proxy.addr, "later.app", Some("shop"))
        .await
        .unwrap();
    conn.query_drop("INSERT INTO kept VALUES (1)")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    let frozen = env.freeze(&compute).await;
    // Not yet: frozen for less than --stop-after.
    env.plane.suspend_idle().await.unwrap();
    assert_eq!(env.compute(&compute).await.state, ComputeState::Frozen);
    tokio::time::sleep(Duration::from_millis(800)).await;
    env.plane.suspend_idle().await.unwrap();
    let after = env.compute(&compute).await;
    assert_eq!(after.state, ComputeState::Suspended);
    assert_eq!(mariadbd_on(&datadir_of(&env.cfg, &frozen.project_id)), 0);
    let events = env.plane.compute_events(&compute).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.from_state == "frozen" && e.reason == "stop-after"),
        "{events:?}"
    );
    assert_eq!(count_rows(&env, "later.app").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_budget_the_least_recently_used_frozen_compute_is_stopped() {
    let env = env().await;
    let older = env.project("older").await;
    let newer = env.project("newer").await;
    for user in ["older.app", "newer.app"] {
        let conn = connect(env.proxy.addr, user, None).await.unwrap();
        conn.disconnect().await.unwrap();
    }
    let older_frozen = env.freeze(&older).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let newer_frozen = env.freeze(&newer).await;
    let older_mem = env
        .plane
        .compute_memory(&older_frozen)
        .expect("memory of older");
    let newer_mem = env
        .plane
        .compute_memory(&newer_frozen)
        .expect("memory of newer");
    assert!(
        older_mem > 1 << 20 && newer_mem > 1 << 20,
        "{older_mem} {newer_mem}"
    );
    // Room for one of them, not for both.
    env.plane.set_frozen_memory_budget(Some(
        older_mem.max(newer_mem) + older_mem.min(newer_mem) / 2,
    ));
    env.plane.suspend_idle().await.unwrap();
    assert_eq!(env.compute(&older).await.state, ComputeState::Suspended);
    assert_eq!(env.compute(&newer).await.state, ComputeState::Frozen);
    let events = env.plane.compute_events(&older).await.unwrap();
    assert!(
        events.iter().any(|e| e.reason == "memory-budget"),
        "{events:?}"
    );
    // Under budget now: nothing more is stopped.
    env.plane.suspend_idle().await.unwrap();
    assert_eq!(env.compute(&newer).await.state, ComputeState::Frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_of_doze_frozen_computes_are_adopted_frozen() {
    crash_and_restart(FreezerChoice::Auto).await;
}

/// The next doze may freeze differently (here: not at all): it still thaws what the previous
/// one froze, and records the compute running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_freezing_off_thaws_what_the_last_run_froze() {
    crash_and_restart(FreezerChoice::Off).await;
}

async fn crash_and_restart(next: FreezerChoice) {
    let env = env().await;
    let compute = env.project("kept").await;
    make_table(&env, "kept.app").await;
    let mut conn = connect(env.proxy.addr, "kept.app", Some("shop"))
        .await
        .unwrap();
    conn.query_drop("INSERT INTO kept VALUES (7)")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();
    let frozen = env.freeze(&compute).await;
    let address = frozen.address.clone().unwrap();
    // doze dies without stopping anything (its computes are not its children's group).
    let Env {
        plane,
        proxy,
        cfg,
        dir,
    } = env;
    drop(proxy);
    drop(plane);
    // The next doze finds the server frozen, adopts it (which thaws it to check it) and
    // freezes it again.
    let mut cfg = cfg;
    cfg.frozen.freezer = next;
    let plane = ControlPlane::start(cfg.clone(), Activity::new())
        .await
        .unwrap();
    let proxy = Proxy::start(
        ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ProxyConfig::default()
        },
        Arc::clone(&plane),
    )
    .await;
    let env = Env {
        plane,
        proxy,
        cfg,
        dir,
    };
    let adopted = env.compute(&compute).await;
    assert_eq!(adopted.address.as_deref(), Some(address.as_str()));
    if next == FreezerChoice::Off {
        assert_eq!(adopted.state, ComputeState::Running);
        assert!(
            greets(&address, Duration::from_secs(2)).await,
            "left frozen"
        );
    } else {
        assert_eq!(adopted.state, ComputeState::Frozen);
        assert!(
            !greets(&address, Duration::from_millis(200)).await,
            "left thawed"
        );
    }
    assert_eq!(count_rows(&env, "kept.app").await, 1);
    assert_eq!(env.starts(), 0, "adopted, not started again");
    assert_eq!(env.thaws(), u64::from(next != FreezerChoice::Off));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_frozen_computes_cleanly() {
    let env = env().await;
    let compute = env.project("bye").await;
    let conn = connect(env.proxy.addr, "bye.app", None).await.unwrap();
    conn.disconnect().await.unwrap();
    let frozen = env.freeze(&compute).await;
    env.plane.shutdown().await;
    let after = env.compute(&compute).await;
    assert_eq!(after.state, ComputeState::Suspended);
    assert_eq!(
        after.last_error, None,
        "stopped cleanly: {:?}",
        after.last_error
    );
    assert_eq!(mariadbd_on(&datadir_of(&env.cfg, &frozen.project_id)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_is_refused_under_an_open_session() {
    let env = env().await;
    let compute = env.project("busy").await;
    let mut conn = connect(env.proxy.addr, "busy.app", None).await.unwrap();
    let err = env
        .plane
        .freeze_compute(&compute)
        .await
        .expect_err("an open session blocks a freeze");
    assert!(matches!(err, ControlError::SessionsOpen { .. }), "{err}");
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    // InnoDB's semaphore watchdog counts frozen time: a freezable compute has it at its
    // maximum, so a latch wait that spans a long freeze never aborts the server at thaw.
    let threshold: Option<u64> = conn
        .query_first("SELECT @@GLOBAL.innodb_fatal_semaphore_wait_threshold")
        .await
        .unwrap();
    assert_eq!(threshold, Some(4_294_967_295));
    conn.disconnect().await.unwrap();
    assert_eq!(env.compute(&compute).await.state, ComputeState::Running);
    // A client connected to the compute directly, not through doze, blocks it too.
    let address: std::net::SocketAddr = env
        .compute(&compute)
        .await
        .address
        .unwrap()
        .parse()
        .unwrap();
    let direct = mysql_async::Conn::new(opts(address, "app", PASSWORD, None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = env
        .plane
        .freeze_compute(&compute)
        .await
        .expect_err("a direct session blocks a freeze");
    assert!(matches!(err, ControlError::SessionsOpen { .. }), "{err}");
    direct.disconnect().await.unwrap();
    assert_eq!(env.freeze(&compute).await.state, ComputeState::Frozen);
}

/// Roles changed while a compute is frozen reach it at the thaw, before the first client logs
/// in (a thaw is not a start, which is where they would otherwise be applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_changed_while_frozen_are_applied_at_the_thaw() {
    let env = env().await;
    let compute = env.project("roles").await;
    let conn = connect(env.proxy.addr, "roles.app", None).await.unwrap();
    conn.disconnect().await.unwrap();
    let frozen = env.freeze(&compute).await;
    env.plane
        .create_role(&frozen.project_id, "late", "late-password-1")
        .await
        .unwrap();
    env.plane
        .delete_role(&frozen.project_id, "app")
        .await
        .unwrap();
    assert_eq!(env.compute(&compute).await.state, ComputeState::Frozen);
    let mut conn =
        mysql_async::Conn::new(opts(env.proxy.addr, "roles.late", "late-password-1", None))
            .await
            .unwrap();
    let user: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert!(user.is_some_and(|u| u.starts_with("late@")));
    conn.disconnect().await.unwrap();
    // The dropped role's account is gone from the compute too, not only from doze.
    let address: std::net::SocketAddr = env
        .compute(&compute)
        .await
        .address
        .unwrap()
        .parse()
        .unwrap();
    let err = mysql_async::Conn::new(opts(address, "app", PASSWORD, None))
        .await
        .expect_err("the dropped role cannot log in to the compute directly");
    assert_eq!(server_code(&err), Some(1045), "{err}");
}
