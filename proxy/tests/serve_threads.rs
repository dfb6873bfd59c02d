//! `doze serve --proxy-threads N`: client sessions spread over N threads, each with its own
//! event loop and listening socket. Connection ids stay unique across the threads, a KILL
//! reaches a session whatever thread carries it, and SIGTERM drains every thread.
#![allow(clippy::unwrap_used)]

mod binary;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use binary::Doze;
use doze_control::testkit::scratch_dir;
use mysql_async::prelude::Queryable;

/// Voluntary context switches of each of `pid`'s threads named `doze-proxy-*`: a thread that
/// carries no session sleeps in epoll and does not switch.
fn proxy_thread_switches(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let name = name.trim().to_owned();
        if !name.starts_with("doze-proxy-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.insert(name, switches);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_proxy_threads_with_unique_ids_kill_and_drain() {
    let dir = scratch_dir("doze-threads-").unwrap();
    let mut doze = Doze::serve(&[
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--db-dsn=sqlite://{}/state.db", dir.path().display()),
        "--proxy-threads=3".to_owned(),
        "--drain-timeout=20s".to_owned(),
    ]);
    doze.project("spread", serde_json::json!({}), serde_json::json!({}));
    // The first connection wakes the compute.
    mysql_async::Conn::new(doze.opts("spread"))
        .await
        .unwrap()
        .disconnect()
        .await
        .unwrap();

    let pid = doze.child.id();
    let before = proxy_thread_switches(pid);
    let names: Vec<&String> = before.keys().collect();
    assert_eq!(names, ["doze-proxy-0", "doze-proxy-1", "doze-proxy-2"]);

    let mut conns = Vec::new();
    for _ in 0..48 {
        let mut conn = mysql_async::Conn::new(doze.opts("spread")).await.unwrap();
        let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
        conns.push(conn);
    }
    let ids: HashSet<u32> = conns.iter().map(|c| c.id()).collect();
    assert_eq!(ids.len(), conns.len(), "greeting ids repeat across threads");

    // The kernel spread 48 connections over the 3 sockets: every thread carried some.
    let after = proxy_thread_switches(pid);
    for (name, n) in &after {
        assert!(
            n - before[name] >= 3,
            "{name} carried no session: {before:?} -> {after:?}"
        );
    }

    // A KILL QUERY from every other session's thread reaches a query on the first.
    let mut sleeper = conns.remove(0);
    let target = sleeper.id();
    let sleeping = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = sleeper.query_first("SELECT SLEEP(30)").await;
        (sleeper, r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    conns[46]
        .query_drop(format!("KILL QUERY {target}"))
        .await
        .unwrap();
    let (sleeper, r, ended) = sleeping.await.unwrap();
    match r {
        Ok(v) => assert_eq!(v, Some(1), "an interrupted SLEEP returns 1"),
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1317, "interrupted: {e}"),
        Err(e) => panic!("SLEEP(30) failed otherwise: {e}"),
    }
    assert!(ended.duration_since(sent) < Duration::from_secs(5));
    conns.push(sleeper);

    // SIGTERM: every thread stops accepting, open sessions keep working through the drain, and
    // doze exits once the last one has left.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        mysql_async::Conn::new(doze.opts("spread")).await.is_err(),
        "a new connection was accepted during the drain"
    );
    for mut conn in conns {
        let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
        conn.disconnect().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = doze.child.try_wait().unwrap() {
            assert!(status.success(), "doze exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "doze still runs 15 s after its last session left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pooled session parked by one thread serves a client that another thread accepted: it is
/// moved onto that thread's event loop at check-out (so its packets wake only that thread),
/// and keeps working. Sequential connections land on either thread by the hash of their
/// source port, so across 60 of them the pool's few sessions change threads many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_move_between_proxy_threads() {
    let dir = scratch_dir("doze-threads-pool-").unwrap();
    let doze = Doze::serve(&[
        format!("--data-dir={}", dir.path().join("data").display()),
        format!("--db-dsn=sqlite://{}/state.db", dir.path().display()),
        "--proxy-threads=2".to_owned(),
    ]);
    doze.project("hop", serde_json::json!({}), serde_json::json!({}));
    let pid = doze.child.id();
    let mut backend_ids = HashSet::new();
    let mut served_by = BTreeMap::<String, u32>::new();
    for i in 0..60 {
        let before = proxy_thread_switches(pid);
        let mut conn = mysql_async::Conn::new(doze.opts("hop")).await.unwrap();
        let id: Option<u64> = conn.query_first("SELECT CONNECTION_ID()").await.unwrap();
        backend_ids.insert(id.unwrap());
        // Session state from an earlier client never shows through a moved session.
        let seen: Option<Option<i64>> = conn.query_first("SELECT @mark").await.unwrap();
        assert_eq!(
            seen,
            Some(None),
            "connection {i} saw an earlier client's variable"
        );
        conn.query_drop(format!("SET @mark = {i}")).await.unwrap();
        conn.disconnect().await.unwrap();
        // The check-in runs after the client has gone: let it park the session.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let after = proxy_thread_switches(pid);
        if let Some((name, _)) = after.iter().max_by_key(|(n, c)| *c - before[*n]) {
            *served_by.entry(name.clone()).or_default() += 1;
        }
    }
    assert_eq!(
        served_by.len(),
        2,
        "both threads served clients: {served_by:?}"
    );
    assert!(
        backend_ids.len() <= 4,
        "60 sequential clients needed {} backend sessions: the pool was not reused across threads",
        backend_ids.len()
    );
}
