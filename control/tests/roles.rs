//! Roles: lookups for the proxy, changes while suspended and while running.

mod common;

use common::*;
use doze_control::Stats;
use doze_control::gateway::LookupError;
use doze_control::roles::stored_hash;

#[tokio::test]
async fn lookup_role_follows_every_change() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let p = plane
        .create_project("lookups", serde_json::json!({}))
        .await
        .expect("project");
    let missing = plane.lookup_role("lookups", "app").await.expect("lookup");
    assert_eq!(missing.project_id, p.id);
    assert_eq!(missing.project_name, "lookups");
    assert_eq!(missing.stored_hash, None);
    plane
        .create_role(&p.id, "app", "first")
        .await
        .expect("role");
    for key in [p.id.as_str(), "lookups"] {
        let found = plane.lookup_role(key, "app").await.expect("lookup");
        assert_eq!(found.stored_hash, Some(stored_hash(b"first")), "by {key}");
        // Cached answers are the same.
        assert_eq!(plane.lookup_role(key, "app").await.expect("again"), found);
    }
    plane
        .set_role_password("lookups", "app", "second")
        .await
        .expect("password");
    let changed = plane.lookup_role("lookups", "app").await.expect("lookup");
    assert_eq!(changed.stored_hash, Some(stored_hash(b"second")));
    plane.delete_role(&p.id, "app").await.expect("delete");
    assert_eq!(
        plane
            .lookup_role("lookups", "app")
            .await
            .expect("lookup")
            .stored_hash,
        None
    );
    assert!(matches!(
        plane.lookup_role("nope", "app").await,
        Err(LookupError::UnknownProject(k)) if k == "nope"
    ));
    plane
        .delete_project("lookups")
        .await
        .expect("delete project");
    assert!(matches!(
        plane.lookup_role("lookups", "app").await,
        Err(LookupError::UnknownProject(_))
    ));
    // Nothing stored or answered contains the password.
    let db = std::fs::read(env.dir.path().join("state.db")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&db).contains("second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_while_suspended_apply_before_the_next_wake_returns() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (pid, cid) = env.project_with_compute("roles", "app", "old-pw").await;
    let info = plane.wake(&pid).await.expect("wake");
    assert_eq!(select_one(&info.address, "app", "old-pw").await, 1);
    // An account doze did not make (roles cannot create accounts; an operator can, as root)
    // is not doze's to remove.
    let mut conn = root_of(plane, &pid).await;
    mysql_async::prelude::Queryable::query_drop(
        &mut conn,
        "CREATE USER 'own'@'%' IDENTIFIED BY 'own-pw'",
    )
    .await
    .expect("root may create users");
    conn.disconnect().await.ok();
    plane
        .create_role(&pid, "doomed", "doomed-pw")
        .await
        .expect("create while running");
    assert_eq!(select_one(&info.address, "doomed", "doomed-pw").await, 1);
    plane.suspend_compute(&cid).await.expect("suspend");

    plane
        .create_role(&pid, "second", "second-pw")
        .await
        .expect("create while suspended");
    plane
        .set_role_password(&pid, "app", "new-pw")
        .await
        .expect("change while suspended");
    plane
        .create_role(&pid, "ghost", "ghost-pw")
        .await
        .expect("create while suspended");
    plane
        .delete_role(&pid, "ghost")
        .await
        .expect("delete while suspended");
    plane
        .delete_role(&pid, "doomed")
        .await
        .expect("delete while suspended");

    let info = plane.wake(&pid).await.expect("wake");
    assert_eq!(select_one(&info.address, "second", "second-pw").await, 1);
    assert_eq!(select_one(&info.address, "app", "new-pw").await, 1);
    assert!(
        connect(&info.address, "app", "old-pw").await.is_err(),
        "old password refused"
    );
    assert!(
        connect(&info.address, "doomed", "doomed-pw").await.is_err(),
        "deleted role absent"
    );
    assert!(connect(&info.address, "ghost", "ghost-pw").await.is_err());
    assert!(
        plane
            .store()
            .role_tombstones(&pid)
            .await
            .expect("tombstones")
            .is_empty(),
        "tombstones are cleared once applied"
    );
    assert_eq!(
        select_one(&info.address, "own", "own-pw").await,
        1,
        "accounts doze never managed survive a role sync"
    );

    // While running: changes apply at once, without a restart.
    let starts = Stats::get(&plane.stats().compute_starts);
    plane
        .create_role(&pid, "live", "live-pw")
        .await
        .expect("create while running");
    assert_eq!(select_one(&info.address, "live", "live-pw").await, 1);
    plane
        .delete_role(&pid, "second")
        .await
        .expect("delete while running");
    let err = connect(&info.address, "second", "second-pw")
        .await
        .expect_err("deleted");
    assert!(err.to_string().contains("Access denied"), "{err}");
    plane
        .set_role_password(&pid, "live", "live-pw-2")
        .await
        .expect("password while running");
    assert_eq!(select_one(&info.address, "live", "live-pw-2").await, 1);
    assert_eq!(
        Stats::get(&plane.stats().compute_starts),
        starts,
        "no restart needed"
    );

    // Roles may create databases.
    let mut conn = connect(&info.address, "live", "live-pw-2")
        .await
        .expect("connect");
    mysql_async::prelude::Queryable::query_drop(&mut conn, "CREATE DATABASE made_by_role")
        .await
        .expect("create database");
    conn.disconnect().await.ok();
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_created_before_the_compute_exist_at_its_first_start() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let p = plane
        .create_project("early", serde_json::json!({}))
        .await
        .expect("project");
    plane
        .create_role(&p.id, "early", "early-pw")
        .await
        .expect("role before compute");
    plane
        .create_compute(
            "early",
            serde_json::json!({"resources": {"memory": "256Mi"}}),
        )
        .await
        .expect("compute");
    let info = plane.wake("early").await.expect("wake");
    let mut conn = connect(&info.address, "early", "early-pw")
        .await
        .expect("connect");
    let pool: Option<i64> =
        mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT @@innodb_buffer_pool_size")
            .await
            .expect("select");
    assert_eq!(pool, Some(128 << 20), "half of resources.memory");
    let packet: Option<i64> =
        mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT @@max_allowed_packet")
            .await
            .expect("select");
    assert_eq!(packet, Some(64 << 20));
    conn.disconnect().await.ok();
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_is_reachable_over_the_socket_only() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let (pid, _) = env.project_with_compute("locked", "app", "app-pw").await;
    let info = plane.wake(&pid).await.expect("wake");
    let err = connect(&info.address, "root", "")
        .await
        .expect_err("no TCP root");
    assert!(err.to_string().contains("Access denied"), "{err}");
    let mut conn = connect(&info.address, "app", "app-pw")
        .await
        .expect("connect");
    let denied = mysql_async::prelude::Queryable::query_drop(&mut conn, "SELECT * FROM mysql.user")
        .await
        .expect_err("a role cannot read the accounts");
    assert!(denied.to_string().contains("1142"), "{denied}");
    conn.disconnect().await.ok();
    let mut conn = root_of(plane, &pid).await;
    let users: Vec<(String, String)> = mysql_async::prelude::Queryable::query(
        &mut conn,
        "SELECT CONVERT(User USING utf8mb4), CONVERT(Host USING utf8mb4) FROM mysql.user ORDER BY 1, 2",
    )
    .await
    .expect("users");
    conn.disconnect().await.ok();
    let roots: Vec<&str> = users
        .iter()
        .filter(|(u, _)| u == "root")
        .map(|(_, h)| h.as_str())
        .collect();
    assert_eq!(roots, ["localhost"], "all users: {users:?}");
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_lookups_share_one_store_query() {
    let env = sqlite_env(|_| {}).await;
    let plane = &env.plane;
    let p = plane
        .create_project("herdlookup", serde_json::json!({}))
        .await
        .expect("project");
    plane.create_role(&p.id, "app", "pw").await.expect("role");
    let before = plane
        .stats()
        .role_loads
        .load(std::sync::atomic::Ordering::SeqCst);
    let lookups = (0..200).map(|_| plane.lookup_role("herdlookup", "app"));
    let answers = futures::future::join_all(lookups).await;
    for a in answers {
        assert!(a.expect("lookup").stored_hash.is_some());
    }
    let loads = plane
        .stats()
        .role_loads
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    assert_eq!(loads, 1, "200 concurrent misses must share one load");
}
