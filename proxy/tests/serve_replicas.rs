//! Several `doze serve` processes on one PostgreSQL (the local driver, one machine), driven
//! by real clients, and killed with SIGKILL; and SQLite refusing a second process.
#![allow(clippy::unwrap_used)]

mod binary;

use std::process::Stdio;
use std::time::{Duration, Instant};

use binary::{Doze, api};
use doze_control::testkit::{Postgres, scratch_dir};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

/// `n` replicas of doze on one PostgreSQL and one data directory.
fn replicas(pg: &Postgres, dir: &std::path::Path, n: usize, extra: &[&str]) -> Vec<Doze> {
    (0..n)
        .map(|i| {
            let mut args = vec![
                format!("--db-dsn={}", pg.dsn()),
                format!("--data-dir={}", dir.display()),
                format!("--replica-id=r{i}"),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            Doze::serve(&args)
        })
        .collect()
}

fn starts(doze: &Doze, compute: &str) -> usize {
    let (_, events) = api(
        doze.admin,
        "GET",
        &format!("/api/v1/compute/{compute}/events"),
        None,
    );
    events["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["to_state"] == "starting").count())
        .unwrap_or_else(|| panic!("no events: {events}"))
}

fn state(doze: &Doze, compute: &str) -> String {
    let (_, c) = api(
        doze.admin,
        "GET",
        &format!("/api/v1/compute/{compute}"),
        None,
    );
    c["state"].as_str().unwrap_or("?").to_owned()
}

async fn select_one(doze: &Doze, project: &str) -> Result<i64, mysql_async::Error> {
    let mut conn = mysql_async::Conn::new(doze.opts(project)).await?;
    let v: Option<i64> = conn.query_first("SELECT 1").await?;
    conn.disconnect().await?;
    Ok(v.unwrap_or(0))
}

/// mariadbd processes serving a datadir under `dir`.
fn mariadbds(dir: &std::path::Path) -> usize {
    doze_control::testkit::mariadbd_pids_under(dir).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_through_three_replicas_starts_one_compute_and_a_killed_owner_is_taken_over() {
    let pg = Postgres::start().await.unwrap();
    let dir = scratch_dir("doze-replicas-").unwrap();
    let mut r = replicas(&pg, dir.path(), 3, &[]);
    let (_, compute) = r[0].project("herd", json!({}), json!({}));

    // 500 clients, spread over the three replicas, on a suspended project.
    let mut clients = Vec::new();
    for i in 0..500 {
        let opts = r[i % 3].opts("herd");
        clients.push(tokio::spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await?;
            let v: Option<i64> = conn.query_first("SELECT 1").await?;
            conn.disconnect().await?;
            Ok::<_, mysql_async::Error>(v)
        }));
    }
    let mut failed = Vec::new();
    for c in clients {
        if let Err(e) = c.await.unwrap() {
            failed.push(e.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(starts(&r[1], &compute), 1, "one start across the replicas");
    assert_eq!(mariadbds(dir.path()), 1);

    // Kill -9 the replica that holds a start's lease, mid-start. A start takes a fraction of a
    // second here, so catch one: suspend, start a wake through that replica, and kill it as
    // soon as the store shows its lease.
    let mut killed = None;
    for attempt in 0..10 {
        let (status, body) = api(
            r[0].admin,
            "POST",
            &format!("/api/v1/compute/{compute}/suspend"),
            None,
        );
        assert_eq!(status, 200, "{body}");
        let victim = attempt % 3;
        let opts = r[victim].opts("herd");
        let waker = tokio::spawn(async move { mysql_async::Conn::new(opts).await.map(drop) });
        let t0 = Instant::now();
        let mut caught = false;
        while t0.elapsed() < Duration::from_secs(5) {
            let (_, c) = api(
                r[(victim + 1) % 3].admin,
                "GET",
                &format!("/api/v1/compute/{compute}"),
                None,
            );
            if c["state"] == "starting" {
                r[victim].kill9();
                caught = true;
                break;
            }
            if c["state"] == "running" {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = waker.await;
        if caught {
            killed = Some(victim);
            break;
        }
    }
    let victim = killed.expect("caught a start in progress within 10 attempts");
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    // Clients on the other replicas are served: after the dead owner's lease ran out, one of
    // them takes the start over.
    let t0 = Instant::now();
    for i in &others {
        assert_eq!(select_one(&r[*i], "herd").await.unwrap(), 1);
    }
    eprintln!("served after the owner's kill -9 in {:?}", t0.elapsed());
    assert_eq!(state(&r[others[0]], &compute), "running");
    assert_eq!(
        mariadbds(dir.path()),
        1,
        "exactly one compute runs afterwards"
    );
    r.remove(victim);
    drop(r);
    // The killed replica's heartbeat may still look fresh to the last one stopping, which
    // then leaves the compute running for it: clean up.
    doze_control::testkit::kill_mariadbd_under(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_of_the_leader_another_replica_suspends_idle_computes() {
    let pg = Postgres::start().await.unwrap();
    let dir = scratch_dir("doze-leader-").unwrap();
    let mut r = replicas(&pg, dir.path(), 2, &["--check-interval=500ms"]);
    let (_, listed) = api(r[0].admin, "GET", "/api/v1/replicas", None);
    let list = listed["replicas"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{listed}");
    let leader_id = list
        .iter()
        .find(|x| x["leader"] == true)
        .and_then(|x| x["id"].as_str())
        .unwrap_or_else(|| panic!("no leader: {listed}"))
        .to_owned();
    let leader = if leader_id == "r0" { 0 } else { 1 };
    let other = 1 - leader;
    let (_, compute) = r[other].project(
        "idle",
        json!({"idle_timeout": 2, "suspend_mode": "stop"}),
        json!({}),
    );
    assert_eq!(select_one(&r[other], "idle").await.unwrap(), 1);
    r[leader].kill9();
    let killed = Instant::now();
    loop {
        if state(&r[other], &compute) == "suspended" {
            break;
        }
        // Lease TTL (8 s) + 2 check intervals, plus the idle timeout (2 s).
        assert!(
            killed.elapsed() < Duration::from_secs(8 + 1 + 2 + 2),
            "not suspended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "suspended by the new leader {:?} after the kill",
        killed.elapsed()
    );
    let (_, listed) = api(r[other].admin, "GET", "/api/v1/replicas", None);
    let list: Vec<&Value> = listed["replicas"].as_array().unwrap().iter().collect();
    assert_eq!(list.len(), 1, "the dead replica left the list: {listed}");
    assert_eq!(list[0]["leader"], true);
    drop(r);
    doze_control::testkit::kill_mariadbd_under(dir.path());
}

#[test]
fn a_second_process_on_one_sqlite_file_is_refused() {
    let dir = scratch_dir("doze-sqlite-").unwrap();
    let args = [
        format!("--db-dsn=sqlite://{}/state.db", dir.path().display()),
        format!("--data-dir={}", dir.path().display()),
    ];
    let first = Doze::serve(&args);
    let mut second = Doze::spawn(&args, Stdio::piped());
    let status = second.child.wait().unwrap();
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("another doze process is using the state store"),
        "{err}"
    );
    // The first one is unharmed.
    assert_eq!(api(first.admin, "GET", "/healthz", None).0, 200);
}
