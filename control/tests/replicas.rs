//! Several replicas of doze on one PostgreSQL, in one process: three control planes sharing a
//! throwaway PostgreSQL and one data directory (the local driver across replicas on one
//! machine), against real mariadbd. The binary-level cases (kill -9 of a replica, SQLite
//! refusing a second process) are in `proxy/tests/serve_replicas.rs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use doze_control::activity::Activity;
use doze_control::store::ComputeState;
use doze_control::testkit::Postgres;
use doze_control::{ControlConfig, ControlPlane};
use mysql_async::prelude::Queryable;
use serde_json::json;

struct Cluster {
    planes: Vec<Arc<ControlPlane>>,
    // Dropped first: the computes the replicas left running.
    _cleanup: KillOnDrop,
    _pg: Postgres,
    _dir: tempfile::TempDir,
}

/// `n` replicas on one PostgreSQL and one data directory.
async fn replicas(n: usize, tweak: impl Fn(&mut ControlConfig)) -> Cluster {
    let pg = Postgres::start().await.expect("postgres");
    let dir = doze_control::testkit::scratch_dir("doze-replicas-").expect("dir");
    let mut planes = Vec::new();
    for i in 0..n {
        let mut cfg = config(&dir);
        cfg.db_dsn = pg.dsn();
        cfg.replica_id = format!("replica-{i}");
        tweak(&mut cfg);
        planes.push(
            ControlPlane::start(cfg, Activity::new())
                .await
                .expect("replica starts"),
        );
    }
    Cluster {
        planes,
        _cleanup: KillOnDrop(dir.path().to_path_buf()),
        _pg: pg,
        _dir: dir,
    }
}

async fn starts(plane: &ControlPlane, compute: &str) -> usize {
    plane
        .compute_events(compute)
        .await
        .expect("events")
        .iter()
        .filter(|e| e.to_state == "starting")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_over_three_replicas_makes_one_start() {
    let c = replicas(3, |_| {}).await;
    let (project, compute) = new_project(&c.planes[0], "herd", json!({})).await;
    c.planes[0]
        .create_role(&project, "app", "app-password-1")
        .await
        .expect("role");
    let mut wakes = Vec::new();
    for i in 0..500 {
        let plane = Arc::clone(&c.planes[i % 3]);
        let project = project.clone();
        wakes.push(tokio::spawn(async move { plane.wake(&project).await }));
    }
    let mut addresses = std::collections::HashSet::new();
    for w in wakes {
        addresses.insert(
            w.await
                .expect("join")
                .expect("every wake is served")
                .address,
        );
    }
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    assert_eq!(
        starts(&c.planes[0], &compute).await,
        1,
        "one start across replicas"
    );
    let address = addresses.into_iter().next().expect("address");
    // Each replica can use the compute another one started.
    for plane in &c.planes {
        assert_eq!(
            select_one(
                &plane.wake(&project).await.expect("wake").address,
                "app",
                "app-password-1"
            )
            .await,
            1
        );
    }
    // A suspend through replica 1 while replica 2 has the address cached: replica 2 hears of
    // it and wakes the compute again instead of handing out the dead address.
    assert_eq!(
        c.planes[2].wake(&project).await.expect("warm").address,
        address
    );
    c.planes[1]
        .suspend_compute(&compute)
        .await
        .expect("suspend through replica 1");
    let info = c.planes[2]
        .wake(&project)
        .await
        .expect("wake through replica 2");
    assert_eq!(select_one(&info.address, "app", "app-password-1").await, 1);
    assert_eq!(starts(&c.planes[0], &compute).await, 2);
    let state = c.planes[0].compute(&compute).await.expect("compute").state;
    assert_eq!(state, ComputeState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_on_one_replica_is_refused_on_the_others_within_a_second() {
    let c = replicas(2, |_| {}).await;
    let (project, _) = new_project(&c.planes[0], "pw", json!({})).await;
    c.planes[0]
        .create_role(&project, "app", "old-password-1")
        .await
        .expect("role");
    let before = c.planes[1]
        .lookup_role(&project, "app")
        .await
        .expect("lookup");
    assert!(before.stored_hash.is_some(), "cached on replica 1");
    let t0 = Instant::now();
    c.planes[0]
        .set_role_password(&project, "app", "new-password-2")
        .await
        .expect("change through replica 0");
    loop {
        let now = c.planes[1]
            .lookup_role(&project, "app")
            .await
            .expect("lookup");
        if now.stored_hash != before.stored_hash {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "replica 1 still accepts the old password"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "password change seen by the other replica after {:?}",
        t0.elapsed()
    );
    // A role deleted on one replica is gone on the other too.
    c.planes[0]
        .delete_role(&project, "app")
        .await
        .expect("delete");
    let t0 = Instant::now();
    while c.planes[1]
        .lookup_role(&project, "app")
        .await
        .expect("lookup")
        .stored_hash
        .is_some()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "deleted role still known"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_session_on_another_replica_keeps_the_compute_awake() {
    let c = replicas(2, |cfg| cfg.idle_timeout = Duration::from_secs(1)).await;
    let (a, b) = (&c.planes[0], &c.planes[1]);
    for p in [a, b] {
        p.replica().beat().await.expect("beat");
    }
    assert!(a.replica().is_leader(), "the first replica leads");
    assert!(!b.replica().is_leader(), "one leader only");
    let listed = a.replicas().await.expect("replicas");
    let list = listed["replicas"].as_array().expect("list");
    assert_eq!(list.len(), 2, "{listed}");
    assert_eq!(
        list.iter().filter(|r| r["leader"] == true).count(),
        1,
        "{listed}"
    );

    let (project, compute) = new_project(
        a,
        "kept",
        json!({"idle_timeout": 1, "suspend_mode": "stop"}),
    )
    .await;
    b.wake(&project).await.expect("wake through b");
    // A session through b, for longer than the idle timeout.
    let session = b.activity().project(&project).open_session();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.replica().beat().await.expect("b reports its session");
    a.replica().beat().await.expect("a reads it");
    assert_eq!(b.suspend_idle().await.expect("pass"), 0);
    assert_eq!(
        a.suspend_idle().await.expect("pass"),
        0,
        "b's session keeps it awake"
    );
    assert_eq!(
        a.compute(&compute).await.expect("c").state,
        ComputeState::Running
    );

    // The session ends; after the idle timeout the leader suspends it.
    drop(session);
    b.replica().beat().await.expect("beat");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.replica().beat().await.expect("beat");
    assert_eq!(a.suspend_idle().await.expect("pass"), 1);
    assert_eq!(
        a.compute(&compute).await.expect("c").state,
        ComputeState::Suspended
    );

    // The leader leaves: the other replica takes the lease at its next heartbeat.
    a.shutdown().await;
    b.replica().beat().await.expect("beat");
    assert!(b.replica().is_leader(), "b leads once a resigned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_owner_died_is_taken_over_after_its_lease() {
    let c = replicas(2, |_| {}).await;
    let (project, compute) = new_project(&c.planes[0], "orphan", json!({})).await;
    c.planes[0]
        .create_role(&project, "app", "app-password-1")
        .await
        .expect("role");
    // A replica that claimed the start and died at once: the compute stays `starting` under a
    // lease that nobody renews.
    let store = c.planes[0].store();
    let current = store
        .compute(&compute)
        .await
        .expect("read")
        .expect("compute");
    store
        .transition(
            &current,
            &doze_control::store::Transition {
                to: ComputeState::Starting,
                address: None,
                handle: None,
                last_error: None,
                reason: "wake",
                lease: Some(("a-dead-replica", 1500)),
            },
        )
        .await
        .expect("claim as the dead replica");
    let t0 = Instant::now();
    let info = c.planes[1].wake(&project).await.expect("taken over");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "waited for the lease: {took:?}"
    );
    assert_eq!(select_one(&info.address, "app", "app-password-1").await, 1);
}

/// Statements that the warm path would send on a cache miss: the role, project and compute
/// lookups, and an API token's. Heartbeats, leases, notifications and sqlx's own housekeeping run meanwhile on
/// their own schedule and are not counted (counting them made this test flaky).
async fn statements(dsn: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(dsn).await.expect("connect");
    let n: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(calls), 0)::BIGINT FROM pg_stat_statements
         WHERE query ILIKE '%FROM roles WHERE%' OR query ILIKE '%FROM projects WHERE%'
            OR query ILIKE '%FROM computes WHERE%' OR query ILIKE '%FROM api_tokens WHERE%'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count");
    conn.close().await.ok();
    n
}

/// Every counted statement and its calls (for the failure message).
async fn statement_texts(dsn: &str) -> Vec<(String, i64)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(dsn).await.expect("connect");
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT query, calls FROM pg_stat_statements ORDER BY calls DESC LIMIT 40")
            .fetch_all(&mut conn)
            .await
            .expect("texts");
    conn.close().await.ok();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connects_send_no_query_to_postgres() {
    let pg = Postgres::start_counting().await.expect("postgres");
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&pg.dsn())
            .await
            .expect("connect");
        sqlx::query("CREATE EXTENSION pg_stat_statements")
            .execute(&mut conn)
            .await
            .expect("extension");
        conn.close().await.ok();
    }
    let dir = doze_control::testkit::scratch_dir("doze-warm-").expect("dir");
    let _cleanup = KillOnDrop(dir.path().to_path_buf());
    let mut cfg = config(&dir);
    cfg.db_dsn = pg.dsn();
    let plane = ControlPlane::start(cfg, Activity::new())
        .await
        .expect("start");
    let (project, _) = new_project(&plane, "warm", json!({})).await;
    plane
        .create_role(&project, "app", "app-password-1")
        .await
        .expect("role");
    // A tenant's token, used once: later requests with it are cache hits.
    let tenant = plane
        .tenancy()
        .create_tenant("warm-tenant", json!({}))
        .await
        .expect("tenant");
    let (_, secret) = plane
        .tenancy()
        .create_token(
            &tenant,
            "ci",
            None,
            &doze_control::tenancy::Caller::Operator,
        )
        .await
        .expect("token");
    let token_ok = |caller: Option<doze_control::tenancy::Caller>| {
        assert!(caller.is_some_and(|c| c.tenant() == Some(tenant.id.as_str())));
    };
    token_ok(plane.tenancy().authenticate(&secret).await.expect("token"));
    // And a wrong one, retried: looked up once, then known to be wrong for a while.
    let wrong = format!("doze_{}", "e".repeat(64));
    // The first connect loads the role and starts the compute.
    plane.lookup_role("warm", "app").await.expect("lookup");
    plane.wake(&project).await.expect("wake");
    // This replica also hears its own change notifications (the compute's start), which
    // invalidate its caches whenever they arrive: warm up until a connect costs nothing.
    // One warm connect and two admin requests (a tenant's token, a wrong token).
    let ask = || async {
        let role = plane.lookup_role("warm", "app").await.expect("lookup");
        assert!(role.stored_hash.is_some());
        plane.wake(&role.project_id).await.expect("warm wake");
        token_ok(plane.tenancy().authenticate(&secret).await.expect("token"));
        let refused = plane.tenancy().authenticate(&wrong).await.expect("token");
        assert!(refused.is_none());
    };
    let mut before = statements(&pg.dsn()).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ask().await;
        let now = statements(&pg.dsn()).await;
        if now == before {
            break;
        }
        before = now;
    }
    // What the proxy asks for every connection: the role (by project name) and the address.
    // And what every admin request with a tenant token asks: the token.
    for _ in 0..1000 {
        ask().await;
    }
    let after = statements(&pg.dsn()).await;
    // The counting query itself is excluded; nothing else may have run.
    assert_eq!(
        after - before,
        0,
        "1000 warm connects and token checks sent {} statements: {:?}",
        after - before,
        statement_texts(&pg.dsn()).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_arriving_through_one_replica_during_a_suspend_through_another_all_get_served() {
    let c = replicas(2, |_| {}).await;
    let (a, b) = (Arc::clone(&c.planes[0]), Arc::clone(&c.planes[1]));
    let (project, compute) = new_project(&a, "busy", json!({})).await;
    a.create_role(&project, "app", "app-password-1")
        .await
        .expect("role");
    b.wake(&project).await.expect("first wake");
    // Clients keep arriving through b (each wakes, then runs a query on the address it got)...
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (b, project, stop) = (Arc::clone(&b), project.clone(), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let info = b.wake(&project).await.map_err(|e| e.to_string())?;
                let mut conn = match connect(&info.address, "app", "app-password-1").await {
                    Ok(conn) => conn,
                    // The address went away between the wake and the connect (a suspend
                    // through a): the proxy drops it and wakes again, as here.
                    Err(_) => {
                        b.invalidate(&project);
                        continue;
                    }
                };
                let one: Option<i64> = conn
                    .query_first("SELECT 1")
                    .await
                    .map_err(|e| e.to_string())?;
                assert_eq!(one, Some(1));
                conn.disconnect().await.ok();
                served += 1;
            }
            Ok::<u32, String>(served)
        }));
    }
    // ...while a suspends the compute three times.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        loop {
            match a.suspend_compute(&compute).await {
                Ok(_) => break,
                // b's clients hold sessions now and then; a suspend never cuts them.
                Err(doze_control::ControlError::SessionsOpen { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("suspend through a: {e}"),
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for client in clients {
        total += client.await.expect("join").expect("no client failed");
    }
    assert!(total > 0);
    assert!(
        starts(&a, &compute).await >= 2,
        "the suspends happened and b woke the compute again"
    );
}

/// Whether the server at `address` greets within 200 ms (a frozen one does not).
async fn greets(address: &str) -> bool {
    use tokio::io::AsyncReadExt;
    let within = Duration::from_millis(200);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_one_replica_froze_is_thawed_by_another() {
    let c = replicas(2, |_| {}).await;
    let (a, b) = (&c.planes[0], &c.planes[1]);
    let (project, compute) = new_project(a, "chill", json!({})).await;
    a.create_role(&project, "app", "app-password-1")
        .await
        .expect("role");
    let first = a.wake(&project).await.expect("wake on a");
    // b has the address cached too, until a's freeze tells it otherwise.
    b.wake(&project).await.expect("wake on b");
    let frozen = a.freeze_compute(&compute).await.expect("freeze on a");
    assert_eq!(frozen.state, ComputeState::Frozen);
    assert!(!greets(&first.address).await, "frozen");
    // b never hands out the frozen address: its cache was dropped, and its wake thaws.
    let info = b.wake(&project).await.expect("wake on b");
    assert_eq!(info.cold_start, doze_control::gateway::ColdStart::Thawed);
    assert_eq!(info.address, first.address, "the same server, thawed");
    assert_eq!(select_one(&info.address, "app", "app-password-1").await, 1);
    let now = a.compute(&compute).await.expect("compute");
    assert_eq!(now.state, ComputeState::Running);
    assert_eq!(starts(a, &compute).await, 1, "a thaw is not a start");
    // a's next wake is served warm from the store's state, without a second thaw.
    let again = a.wake(&project).await.expect("wake on a");
    assert_eq!(again.address, first.address);
    assert_eq!(a.stats().thaws.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A token revoked through one replica fails on the others at once (within a second, the
/// change channel's delivery), though they had it cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_replica_fails_on_the_others() {
    let c = replicas(3, |_| {}).await;
    let tenancy = |i: usize| c.planes[i].tenancy();
    let operator = doze_control::tenancy::Caller::Operator;
    let t = tenancy(0)
        .create_tenant("spread", json!({}))
        .await
        .expect("tenant");
    let (token, secret) = tenancy(0)
        .create_token(&t, "ci", None, &operator)
        .await
        .expect("token");
    for i in 0..3 {
        let caller = tenancy(i).authenticate(&secret).await.expect("lookup");
        assert!(
            matches!(&caller, Some(doze_control::tenancy::Caller::Tenant { tenant_id, .. }) if *tenant_id == t.id),
            "replica {i}: {caller:?}"
        );
    }
    let t_on_1 = tenancy(1)
        .tenant(&operator, "spread")
        .await
        .expect("tenant");
    tenancy(1)
        .revoke_token(&t_on_1, &token.id)
        .await
        .expect("revoke");
    let deadline = Instant::now() + Duration::from_secs(1);
    for i in [0, 2] {
        while tenancy(i)
            .authenticate(&secret)
            .await
            .expect("lookup")
            .is_some()
        {
            assert!(
                Instant::now() < deadline,
                "replica {i} still accepts a token revoked on replica 1"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        tenancy(1)
            .authenticate(&secret)
            .await
            .expect("lookup")
            .is_none()
    );
}
