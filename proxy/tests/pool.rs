//! The backend session pool and KILL through the proxy, against a real mariadbd and real
//! clients (mysql_async, PyMySQL and the interactive `mariadb` command line).
//!
//! A pool hit is visible from the client side: `SELECT CONNECTION_ID()` is the backend thread
//! id, so two consecutive clients that see the same value shared one backend session. Check-in
//! is asynchronous (reset and verification happen off the client's path), so every test that
//! expects a hit first waits with [`parked`] until the session is idle in the pool.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use doze_proxy::ProxyConfig;
use mysql_async::Conn;
use mysql_async::prelude::*;
use tokio::io::AsyncBufReadExt;

/// Doze's own connection ids (in its greeting) start here, above every MariaDB thread id.
const DOZE_ID_BASE: u32 = 0x8000_0000;

/// Waits (polling every 20 ms, up to 5 s) until `n` sessions of `project` (its id, e.g.
/// `id-shop`) are idle in the pool.
async fn parked(proxy: &Proxy, project: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let idle = proxy.pool_idle(project);
        if idle == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pool of {project} should have {n} idle session(s) within 5 s, it has {idle}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `SELECT CONNECTION_ID()`: the backend thread serving this client.
async fn backend_thread(conn: &mut Conn) -> u64 {
    conn.query_first("SELECT CONNECTION_ID()")
        .await
        .expect("SELECT CONNECTION_ID()")
        .expect("CONNECTION_ID() returns a row")
}

/// Runs `sql`, which must fail; returns the error.
async fn must_fail(conn: &mut Conn, sql: &str) -> mysql_async::Error {
    match conn.query_drop(sql).await {
        Ok(()) => panic!("`{sql}` should have failed but succeeded"),
        Err(e) => e,
    }
}

/// A `SELECT COUNT(*) ...` on the backend's root connection.
async fn count(root: &mut Conn, sql: &str) -> i64 {
    root.query_first(sql)
        .await
        .unwrap_or_else(|e| panic!("root: `{sql}`: {e}"))
        .expect("COUNT(*) returns a row")
}

/// Waits (up to 5 s) until backend thread `thread` is running a statement starting with
/// `prefix`, so that a test never kills or abandons a query that has not reached the server.
async fn wait_running(root: &mut Conn, thread: u64, prefix: &str) {
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE ID = {thread} AND INFO LIKE '{prefix}%'"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(root, &sql).await == 0 {
        assert!(
            Instant::now() < deadline,
            "backend thread {thread} should be running `{prefix}...` within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 5 s) until backend thread `thread` no longer exists; returns how long it took.
async fn wait_thread_gone(root: &mut Conn, thread: u64) -> Duration {
    let sql = format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {thread}");
    let start = Instant::now();
    while count(root, &sql).await != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "backend thread {thread} should be gone from the server within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Runs `SELECT SLEEP(secs)` on `conn` in a task; yields the connection, the result and when
/// the query finished.
fn spawn_sleep(
    mut conn: Conn,
    secs: u32,
) -> tokio::task::JoinHandle<(Conn, Result<Option<i64>, mysql_async::Error>, Instant)> {
    tokio::spawn(async move {
        let r = conn.query_first(format!("SELECT SLEEP({secs})")).await;
        (conn, r, Instant::now())
    })
}

/// The rest of the first line of a client program's output that starts with `prefix`.
fn line_after(out: &str, prefix: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in:\n{out}"))
        .trim()
        .to_owned()
}

/// `id`, the connection id a client library read from the greeting, is from doze's range.
fn assert_doze_id(id: &str, out: &str) {
    let id: u64 = id.parse().expect("id");
    assert!(id >= 0x8000_0000, "the greeting's id is doze's: {out}");
}

/// The proxy's defaults, on two session threads as `doze serve` runs it on two cores: a session
/// parked by one thread is then often taken by a client of the other.
fn threaded() -> ProxyConfig {
    ProxyConfig {
        threads: 2,
        ..ProxyConfig::default()
    }
}

/// A backend with project `shop` routed to it through a fresh proxy (default settings).
async fn shop() -> (doze_control::testkit::MariaDb, Proxy) {
    let db = backend().await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), threaded()).await;
    (db, proxy)
}

/// A client as `shop.app` on `testdb` that must be served by the parked backend `thread`.
async fn connect_reusing(proxy: &Proxy, thread: u64, who: &str) -> Conn {
    let mut conn = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .unwrap_or_else(|e| panic!("connect {who}: {e}"));
    assert_eq!(
        backend_thread(&mut conn).await,
        thread,
        "{who} reuses the session"
    );
    conn
}

/// A client as `shop.other` (the second role of every project in `routes`).
async fn connect_other(proxy: &Proxy, project: &str) -> Conn {
    Conn::new(opts(
        proxy.addr,
        &format!("{project}.other"),
        "other-pw",
        Some("testdb"),
    ))
    .await
    .unwrap_or_else(|e| panic!("connect as {project}.other: {e}"))
}

/// Asserts `e` is MariaDB's "Unknown thread id" (1094), as doze answers a KILL it refuses.
fn assert_unknown_thread(e: &mysql_async::Error, what: &str) {
    assert_eq!(server_code(e), Some(1094), "{what}: {e}");
    assert!(e.to_string().contains("Unknown thread id"), "{what}: {e}");
}

/// The central promise of session pooling: a parked session is reused (same backend thread)
/// and the next client sees none of the previous client's session state — user variables,
/// temporary tables, sql_mode, prepared statements, user locks, an open transaction, the
/// character set, the default database and LOCK TABLES.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reuses_a_session_and_nothing_leaks() {
    let db = backend().await;
    let mut root = db.root().await.expect("root");
    root.query_drop(
        "CREATE TABLE testdb.t (x INT) ENGINE=InnoDB; \
         CREATE TABLE testdb.t2 (x INT) ENGINE=InnoDB; \
         CREATE DATABASE otherdb",
    )
    .await
    .expect("setup tables");
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), threaded()).await;

    // Round 1: client A leaves every kind of session state behind.
    let mut a = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect A");
    let thread = backend_thread(&mut a).await;
    for sql in [
        "SET @v = 'secret-a'",
        "CREATE TEMPORARY TABLE tmp_a (x INT)",
        "INSERT INTO tmp_a VALUES (1)",
        "SET SESSION sql_mode = 'ANSI_QUOTES'",
        "PREPARE st FROM 'SELECT 1'",
    ] {
        a.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("A: `{sql}`: {e}"));
    }
    let got: Option<i64> = a
        .query_first("SELECT GET_LOCK('lock-a', 0)")
        .await
        .expect("A: GET_LOCK");
    assert_eq!(got, Some(1), "A takes the user lock");
    for sql in [
        "START TRANSACTION",
        "INSERT INTO testdb.t VALUES (1)",
        "SET NAMES latin1",
        "USE otherdb",
    ] {
        a.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("A: `{sql}`: {e}"));
    }
    // The state really is there before A quits (so the checks on B cannot pass vacuously).
    let (v, mode, in_trx, charset, dbname): (String, String, i64, String, String) = a
        .query_first(
            "SELECT @v, @@SESSION.sql_mode, @@in_transaction, @@character_set_client, DATABASE()",
        )
        .await
        .expect("A: read state")
        .expect("a row");
    assert_eq!(
        (
            v.as_str(),
            mode.as_str(),
            in_trx,
            charset.as_str(),
            dbname.as_str()
        ),
        ("secret-a", "ANSI_QUOTES", 1, "latin1", "otherdb")
    );
    let rows: Option<i64> = a
        .query_first("SELECT COUNT(*) FROM testdb.t")
        .await
        .expect("A: count t");
    assert_eq!(rows, Some(1), "A sees its own uncommitted row");
    let tmp: Option<i64> = a
        .query_first("SELECT COUNT(*) FROM testdb.tmp_a")
        .await
        .expect("A: count tmp_a");
    assert_eq!(tmp, Some(1));
    a.query_drop("EXECUTE st").await.expect("A: EXECUTE st");
    let holder: Option<Option<u64>> = a
        .query_first("SELECT IS_USED_LOCK('lock-a')")
        .await
        .expect("A: IS_USED_LOCK");
    assert_eq!(holder, Some(Some(thread)));
    a.disconnect().await.expect("A quits");
    parked(&proxy, "id-shop", 1).await;

    // Client B gets the same backend session, clean.
    let mut b = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect B");
    assert_eq!(
        backend_thread(&mut b).await,
        thread,
        "B reuses A's parked backend session"
    );
    let v: Option<Option<String>> = b.query_first("SELECT @v").await.expect("B: @v");
    assert_eq!(v, Some(None), "A's user variable leaked to B");
    let e = must_fail(&mut b, "SELECT * FROM testdb.tmp_a").await;
    assert_eq!(server_code(&e), Some(1146), "A's temporary table: {e}");
    let (session, global): (String, String) = b
        .query_first("SELECT @@SESSION.sql_mode, @@GLOBAL.sql_mode")
        .await
        .expect("B: sql_mode")
        .expect("a row");
    assert_eq!(session, global, "A's sql_mode leaked to B");
    let e = must_fail(&mut b, "EXECUTE st").await;
    assert_eq!(server_code(&e), Some(1243), "A's prepared statement: {e}");
    let holder: Option<Option<u64>> = b
        .query_first("SELECT IS_USED_LOCK('lock-a')")
        .await
        .expect("B: IS_USED_LOCK");
    assert_eq!(holder, Some(None), "A's user lock is still held");
    let got: Option<i64> = root
        .query_first("SELECT GET_LOCK('lock-a', 0)")
        .await
        .expect("root: GET_LOCK");
    assert_eq!(got, Some(1), "another session can take A's former lock");
    root.query_drop("DO RELEASE_LOCK('lock-a')")
        .await
        .expect("root: RELEASE_LOCK");
    let (rows, in_trx): (i64, i64) = b
        .query_first("SELECT (SELECT COUNT(*) FROM testdb.t), @@in_transaction")
        .await
        .expect("B: transaction state")
        .expect("a row");
    assert_eq!(
        (rows, in_trx),
        (0, 0),
        "A's transaction was rolled back, not carried over or committed"
    );
    assert_eq!(count(&mut root, "SELECT COUNT(*) FROM testdb.t").await, 0);
    let dbname: Option<Option<String>> = b
        .query_first("SELECT DATABASE()")
        .await
        .expect("B: DATABASE()");
    assert_eq!(
        dbname,
        Some(Some("testdb".to_owned())),
        "B gets the database it asked for"
    );
    let charsets: Option<(String, String, String)> = b
        .query_first(
            "SELECT @@character_set_client, @@character_set_connection, @@character_set_results",
        )
        .await
        .expect("B: character sets");
    assert_eq!(
        charsets,
        Some(("utf8mb4".into(), "utf8mb4".into(), "utf8mb4".into())),
        "B has the character set it negotiated, not A's SET NAMES"
    );
    b.disconnect().await.expect("B quits");
    parked(&proxy, "id-shop", 1).await;

    // Round 2: LOCK TABLES (which cannot coexist with round 1's open transaction).
    let mut a2 = connect_reusing(&proxy, thread, "A2").await;
    a2.query_drop("LOCK TABLES testdb.t WRITE")
        .await
        .expect("A2: LOCK TABLES");
    let e = must_fail(&mut a2, "SELECT COUNT(*) FROM testdb.t2").await;
    assert_eq!(server_code(&e), Some(1100), "A2 is under LOCK TABLES: {e}");
    a2.disconnect().await.expect("A2 quits");
    parked(&proxy, "id-shop", 1).await;

    let mut b2 = connect_reusing(&proxy, thread, "B2").await;
    // Under a leftover LOCK TABLES, a table not locked would be refused (1100).
    b2.query_drop("INSERT INTO testdb.t2 VALUES (1)")
        .await
        .expect("B2: a table A2 did not lock is usable (no LOCK TABLES left)");
    b2.query_drop("INSERT INTO testdb.t VALUES (2)")
        .await
        .expect("B2: INSERT into t");
    // A fresh session (the pool is empty while B2 holds the session) must not wait for A2's
    // write lock.
    let mut fresh = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect a fresh client");
    assert_ne!(
        backend_thread(&mut fresh).await,
        thread,
        "the fresh client has its own backend session"
    );
    fresh
        .query_drop("SET SESSION lock_wait_timeout = 2")
        .await
        .expect("fresh: lock_wait_timeout");
    tokio::time::timeout(
        Duration::from_secs(10),
        fresh.query_drop("INSERT INTO testdb.t VALUES (3)"),
    )
    .await
    .expect("fresh: INSERT must not hang")
    .expect("fresh: INSERT into t (A2's table lock must be released)");
    b2.disconnect().await.expect("B2 quits");
    fresh.disconnect().await.expect("fresh quits");
}

/// Reuse and reset with a second, independent client library (PyMySQL sends its own
/// capability flags, charset and `SET AUTOCOMMIT` at connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_reuses_too() {
    let (_db, proxy) = shop().await;
    let connect_py = format!(
        r#"
import pymysql
c = pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", database="testdb")
cur = c.cursor()
cur.execute("SELECT CONNECTION_ID()")
print(cur.fetchone()[0])
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let first = format!(
        r#"{connect_py}
cur.execute("SET @v = 'secret-py'")
cur.execute("CREATE TEMPORARY TABLE tmp_py (x INT)")
cur.execute("SELECT @v")
print(cur.fetchone()[0])
c.close()
"#
    );
    let out = python_client(&first).await;
    let (first_id, v) = out
        .split_once('\n')
        .expect("two lines from the first client");
    assert_eq!(v, "secret-py", "the first client set its state");
    parked(&proxy, "id-shop", 1).await;

    let second = format!(
        r#"{connect_py}
cur.execute("SELECT @v")
print(cur.fetchone()[0])
try:
    cur.execute("SELECT * FROM tmp_py")
    print("tmp_py exists")
except pymysql.MySQLError as e:
    print("missing", e.args[0])
c.close()
"#
    );
    let out = python_client(&second).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![first_id, "None", "missing 1146"],
        "the second PyMySQL client reuses the first one's session (same CONNECTION_ID) and \
         sees none of its state"
    );
}

/// COM_SET_OPTION switches the session's multi-statements flag, and COM_RESET_CONNECTION
/// keeps it (MariaDB resets session variables, not the client's capability flags). A client
/// that turned multi-statements on (PHP's `mysqli::multi_query` does, and leaves it on) must
/// not hand that to the next client of its role, which did not ask for it: stacked queries
/// (`...; DROP TABLE t`) would run for it, removing a common SQL-injection barrier. Such a
/// session is closed at check-in, never parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_option_never_reaches_the_next_client() {
    let (_db, proxy) = shop().await;
    let connect_py = format!(
        r#"
import pymysql
c = pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", database="testdb")
cur = c.cursor()
cur.execute("SELECT CONNECTION_ID()")
print(cur.fetchone()[0])
def stacked():
    try:
        cur.execute("SELECT 1; SELECT 2")
        return "stacked ran, more results: %s" % cur.nextset()
    except pymysql.MySQLError as e:
        return "refused %d" % e.args[0]
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let first = format!(
        r#"{connect_py}
print(stacked())
# COM_SET_OPTION (0x1b), MYSQL_OPTION_MULTI_STATEMENTS_ON (0); the server answers EOF.
c._execute_command(0x1b, b"\x00\x00")
c._read_packet()
print(stacked())
c.close()
"#
    );
    let out = python_client(&first).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.get(1..),
        Some(&["refused 1064", "stacked ran, more results: True"][..]),
        "the first client turned multi-statements on for itself: {out}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let second = format!(
        r#"{connect_py}
print(stacked())
c.close()
"#
    );
    let out = python_client(&second).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.get(1),
        Some(&"refused 1064"),
        "the next client of the role got the first one's multi-statements: {out}"
    );
}

/// A parked session is never handed to another user of the same project: that would give
/// the second user the first one's privileges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_users_never_share() {
    let (_db, proxy) = shop().await;

    let mut a = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect shop.app");
    let app_thread = backend_thread(&mut a).await;
    a.disconnect().await.expect("A quits");
    parked(&proxy, "id-shop", 1).await;

    let mut b = connect_other(&proxy, "shop").await;
    let other_thread = backend_thread(&mut b).await;
    assert_ne!(
        other_thread, app_thread,
        "shop.other must not get shop.app's parked session"
    );
    let who: Option<String> = b
        .query_first("SELECT CURRENT_USER()")
        .await
        .expect("B: CURRENT_USER()");
    assert_eq!(who.as_deref(), Some("other@%"));
    assert_eq!(
        proxy.pool_idle("id-shop"),
        1,
        "shop.app's session stays parked while shop.other is connected"
    );
    b.disconnect().await.expect("B quits");
    parked(&proxy, "id-shop", 2).await;

    // Each user gets their own session back.
    let mut c = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect shop.app again");
    assert_eq!(backend_thread(&mut c).await, app_thread);
    let mut d = connect_other(&proxy, "shop").await;
    assert_eq!(backend_thread(&mut d).await, other_thread);
    let who: Option<String> = d
        .query_first("SELECT CURRENT_USER()")
        .await
        .expect("D: CURRENT_USER()");
    assert_eq!(who.as_deref(), Some("other@%"));
    c.disconnect().await.expect("C quits");
    d.disconnect().await.expect("D quits");
}

/// Many short clients racing check-in against check-out: none may ever see another client's
/// user variable or temporary table, and pooling must actually happen (otherwise the state
/// checks would pass trivially on fresh sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_stress_never_sees_another_clients_state() {
    const TASKS: usize = 200;
    const CONCURRENCY: usize = 20;
    let (_db, proxy) = shop().await;
    let addr = proxy.addr;

    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            let mut c = connect(addr, "shop.app", Some("testdb"))
                .await
                .unwrap_or_else(|e| panic!("task {i}: connect: {e}"));
            let thread = backend_thread(&mut c).await;
            let mine: Option<Option<String>> = c
                .query_first("SELECT @mine")
                .await
                .unwrap_or_else(|e| panic!("task {i}: SELECT @mine: {e}"));
            assert_eq!(
                mine,
                Some(None),
                "task {i} on backend thread {thread} sees another client's @mine"
            );
            // information_schema.TEMPORARY_TABLES is MariaDB 11.2+; probe the table instead.
            match c.query_drop("SELECT COUNT(*) FROM tmp_x").await {
                Err(e) if server_code(&e) == Some(1146) => {}
                Err(e) => panic!("task {i}: probing tmp_x: {e}"),
                Ok(()) => panic!(
                    "task {i} on backend thread {thread} sees another client's temporary table"
                ),
            }
            for sql in [
                "CREATE TEMPORARY TABLE tmp_x (i INT)".to_owned(),
                format!("INSERT INTO tmp_x VALUES ({i})"),
                format!("SET @mine = 'task-{i}'"),
            ] {
                c.query_drop(sql.as_str())
                    .await
                    .unwrap_or_else(|e| panic!("task {i}: `{sql}`: {e}"));
            }
            let mine: Option<Option<String>> = c
                .query_first("SELECT @mine")
                .await
                .unwrap_or_else(|e| panic!("task {i}: SELECT @mine again: {e}"));
            assert_eq!(mine, Some(Some(format!("task-{i}"))), "task {i}");
            let rows: Vec<i64> = c
                .query("SELECT i FROM tmp_x")
                .await
                .unwrap_or_else(|e| panic!("task {i}: SELECT FROM tmp_x: {e}"));
            assert_eq!(
                rows,
                vec![i as i64],
                "task {i}: its own temporary table only"
            );
            c.disconnect()
                .await
                .unwrap_or_else(|e| panic!("task {i}: disconnect: {e}"));
            thread
        });
    }
    let mut threads = HashSet::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(thread) => {
                threads.insert(thread);
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task failed: {e}"),
        }
    }
    println!(
        "{TASKS} clients (concurrency {CONCURRENCY}) used {} distinct backend sessions",
        threads.len()
    );
    assert!(
        threads.len() < TASKS / 2,
        "pooling should have reused sessions: {} distinct backend threads for {TASKS} clients",
        threads.len()
    );
    // The pool settles with some idle sessions, never more than max_idle (16 by default).
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.pool_idle("id-shop") == 0 {
        assert!(
            Instant::now() < deadline,
            "no session was parked after the churn"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = proxy.pool_idle("id-shop");
    assert!(
        (1..=16).contains(&idle),
        "idle sessions after the churn: {idle} (max_idle defaults to 16)"
    );
}

/// `pool = "off"` on a project in the routes file: every client gets a fresh backend session
/// and a quitting client's session is closed, while another project of the same proxy (and
/// the same compute) still pools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_off_in_routes_means_fresh_sessions() {
    let db = backend().await;
    let mut root = db.root().await.expect("root");
    let addr = db.addr();
    let backend_line = format!("backend = \"{addr}\"\n");
    let shop = routes(&[("shop", &addr)]);
    let shop_off = shop.replacen(&backend_line, &format!("{backend_line}pool = \"off\"\n"), 1);
    assert_ne!(shop, shop_off, "the routes file has the backend line");
    let toml = format!("{shop_off}{}", routes(&[("cafe", &addr)]));
    let proxy = Proxy::start_static(&toml, threaded()).await;

    let mut a = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect A");
    let first = backend_thread(&mut a).await;
    a.disconnect().await.expect("A quits");
    // Nothing is parked, ever (watch for a second: check-in would be asynchronous).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            proxy.pool_idle("id-shop"),
            0,
            "pool = \"off\" parks nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_thread_gone(&mut root, first).await;
    let mut b = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect B");
    assert_ne!(
        backend_thread(&mut b).await,
        first,
        "B gets a fresh session"
    );
    b.disconnect().await.expect("B quits");

    // The other project pools (so what is observed above is the setting, not a broken pool).
    let mut c1 = connect(proxy.addr, "cafe.app", Some("testdb"))
        .await
        .expect("connect cafe C1");
    let cafe = backend_thread(&mut c1).await;
    c1.disconnect().await.expect("C1 quits");
    parked(&proxy, "id-cafe", 1).await;
    let mut c2 = connect(proxy.addr, "cafe.app", Some("testdb"))
        .await
        .expect("connect cafe C2");
    assert_eq!(backend_thread(&mut c2).await, cafe, "cafe pools");
    c2.disconnect().await.expect("C2 quits");
    assert_eq!(proxy.pool_idle("id-shop"), 0);
}

/// `max_idle = 0` in the proxy's configuration disables pooling for every project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_zero_disables_pooling() {
    let db = backend().await;
    let mut root = db.root().await.expect("root");
    let cfg = ProxyConfig {
        pool: doze_proxy::pool::PoolConfig {
            max_idle: 0,
            ..doze_proxy::pool::PoolConfig::default()
        },
        ..threaded()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    let mut a = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect A");
    let first = backend_thread(&mut a).await;
    a.disconnect().await.expect("A quits");
    // The session is closed rather than parked.
    wait_thread_gone(&mut root, first).await;
    assert_eq!(proxy.pool_idle("id-shop"), 0);
    let mut b = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect B");
    assert_ne!(backend_thread(&mut b).await, first);
    b.disconnect().await.expect("B quits");
}

/// A client that vanishes in the middle of a result leaves its backend session mid-protocol:
/// it must be discarded (closed on the server), never parked and handed to someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_result_discards() {
    let (db, proxy) = shop().await;
    let mut root = db.root().await.expect("root");
    // An unbuffered cursor reads one row of a ~110 MB result, then the process dies at once
    // (no COM_QUIT, the rest of the result unread).
    let script = format!(
        r#"
import os, sys, pymysql, pymysql.cursors
c = pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", database="testdb")
cur = c.cursor()
cur.execute("SELECT CONNECTION_ID()")
print(cur.fetchone()[0])
ss = c.cursor(pymysql.cursors.SSCursor)
ss.execute("SELECT seq, REPEAT('x', 100) FROM seq_1_to_1000000")
print(ss.fetchone()[0])
sys.stdout.flush()
os._exit(0)
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let out = python_client(&script).await;
    let (thread, first_row) = out.split_once('\n').expect("two lines from the client");
    assert_eq!(first_row, "1", "the client read the first row");
    let thread: u64 = thread.parse().expect("CONNECTION_ID() is a number");

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        proxy.pool_idle("id-shop"),
        0,
        "a session abandoned mid-result must not be parked"
    );
    let gone = wait_thread_gone(&mut root, thread).await;
    println!("the abandoned backend thread was gone {gone:?} after the check");
    let mut b = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect B");
    assert_ne!(backend_thread(&mut b).await, thread);
    let one: Option<i64> = b.query_first("SELECT 1").await.expect("B: SELECT 1");
    assert_eq!(one, Some(1));
}

/// A client that dies while its query runs: the query must not keep running on the compute
/// (holding locks and a thread for 30 s), and the session must not be parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_with_a_running_query_kills_it() {
    let (db, proxy) = shop().await;
    let mut root = db.root().await.expect("root");
    let script = format!(
        r#"
import pymysql
c = pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", database="testdb")
cur = c.cursor()
cur.execute("SELECT CONNECTION_ID()")
print(cur.fetchone()[0], flush=True)
cur.execute("SELECT SLEEP(30)")
print("sleep finished", flush=True)
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("the python client prints its CONNECTION_ID within 15 s")
        .expect("read the python client's stdout");
    let Some(first) = first else {
        let out = child.wait_with_output().await.expect("python exit");
        panic!("python client failed: {}", stderr(&out));
    };
    let thread: u64 = first.trim().parse().expect("CONNECTION_ID() is a number");
    wait_running(&mut root, thread, "SELECT SLEEP(30)").await;

    child.kill().await.expect("kill the python client");
    let killed = Instant::now();
    let sql = "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
               WHERE INFO LIKE 'SELECT SLEEP(30)%'";
    while count(&mut root, sql).await != 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the dead client's SELECT SLEEP(30) still runs on the server 5 s later"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "the orphaned query stopped {:?} after its client died",
        killed.elapsed()
    );
    wait_thread_gone(&mut root, thread).await;
    assert_eq!(
        proxy.pool_idle("id-shop"),
        0,
        "a session whose client died mid-query is not parked"
    );
}

/// `KILL QUERY <id>` with the id the client library knows (doze's, from the greeting): it
/// reaches the right backend thread and interrupts the query, not the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_through_the_proxy() {
    let (db, proxy) = shop().await;
    let mut root = db.root().await.expect("root");

    let mut a = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect A");
    let a_id = a.id();
    assert!(
        a_id >= DOZE_ID_BASE,
        "doze's connection ids are >= 0x8000_0000, got {a_id:#x}"
    );
    let thread = backend_thread(&mut a).await;
    assert_ne!(
        u64::from(a_id),
        thread,
        "the client sees doze's id, not the thread's"
    );
    let mut b = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect B");

    let sleeping = spawn_sleep(a, 30);
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_running(&mut root, thread, "SELECT SLEEP(30)").await;
    let sent = Instant::now();
    b.query_drop(format!("KILL QUERY {a_id}"))
        .await
        .expect("B may kill a query of its own user");
    let (mut a, result, finished) = tokio::time::timeout(Duration::from_secs(2), sleeping)
        .await
        .expect("A's query ends within 2 s of the KILL")
        .expect("sleep task");
    println!(
        "KILL QUERY latency: {:?} (B's KILL answered after {:?})",
        finished.saturating_duration_since(sent),
        sent.elapsed()
    );
    match result {
        Ok(v) => assert_eq!(v, Some(1), "an interrupted SLEEP returns 1"),
        Err(e) => assert_eq!(server_code(&e), Some(1317), "interrupted: {e}"),
    }
    // KILL QUERY leaves the connection usable.
    let one: Option<i64> = a
        .query_first("SELECT 1")
        .await
        .expect("A still works after KILL QUERY");
    assert_eq!(one, Some(1));
    assert_eq!(backend_thread(&mut a).await, thread, "A kept its session");
}

/// `KILL <doze id>` (the connection form) ends that client's session, and the killed backend
/// session is not parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_connection_through_the_proxy_ends_that_session() {
    let (db, proxy) = shop().await;
    let mut root = db.root().await.expect("root");
    let mut a = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect A");
    let a_id = a.id();
    let thread = backend_thread(&mut a).await;
    let mut b = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect B");
    b.query_drop(format!("KILL {a_id}"))
        .await
        .expect("B may kill a connection of its own user");
    wait_thread_gone(&mut root, thread).await;
    let next = tokio::time::timeout(Duration::from_secs(5), a.query_drop("SELECT 1"))
        .await
        .expect("A's next query answers (with an error) within 5 s");
    assert!(
        next.is_err(),
        "A's connection was killed, yet its query worked"
    );
    drop(a);
    let one: Option<i64> = b.query_first("SELECT 1").await.expect("B is unaffected");
    assert_eq!(one, Some(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        proxy.pool_idle("id-shop"),
        0,
        "a killed session is not parked"
    );
}

/// After COM_CHANGE_USER a session belongs to its new user, for KILL as for MariaDB: the old
/// user can no longer name it, and the new one can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_follows_a_change_of_user() {
    let (db, proxy) = shop().await;
    let mut root = db.root().await.expect("root");
    let mut target = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect the target");
    let target_id = target.id();
    target
        .change_user(
            mysql_async::ChangeUserOpts::default()
                .with_user(Some("shop.other".into()))
                .with_pass(Some("other-pw".into()))
                .with_db_name(Some("testdb".into())),
        )
        .await
        .expect("change to shop.other");
    let thread = backend_thread(&mut target).await;
    let mut app = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect shop.app");
    let mut other = connect_other(&proxy, "shop").await;

    let sleeping = spawn_sleep(target, 30);
    wait_running(&mut root, thread, "SELECT SLEEP(30)").await;
    let e = must_fail(&mut app, &format!("KILL QUERY {target_id}")).await;
    assert_unknown_thread(&e, "shop.app, the target's user before the change");
    let sent = Instant::now();
    other
        .query_drop(format!("KILL QUERY {target_id}"))
        .await
        .expect("shop.other, the target's user now, kills its query");
    let (_t, result, ended) = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the SLEEP ends")
        .expect("sleep task");
    assert!(
        ended.duration_since(sent) < Duration::from_secs(5),
        "the SLEEP(30) ended {:?} after the KILL ({result:?})",
        ended.duration_since(sent)
    );
}

/// KILL is confined to the killer's own project and user, whichever id it names (doze's id
/// or the backend thread's): a user with SUPER on a shared compute must not reach other
/// users' or other projects' sessions through doze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_another_users_session_is_refused() {
    let db = backend().await;
    let mut root = db.root().await.expect("root");
    let addr = db.addr();
    // Two projects on the same compute: the same MariaDB user `app` exists for both.
    let proxy = Proxy::start_static(&routes(&[("shop", &addr), ("cafe", &addr)]), threaded()).await;

    let mut a = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect A");
    let a_id = a.id();
    let thread = backend_thread(&mut a).await;
    let mut other = connect_other(&proxy, "shop").await;
    let mut cafe = connect(proxy.addr, "cafe.app", Some("testdb"))
        .await
        .expect("connect cafe.app");

    let started = Instant::now();
    let sleeping = spawn_sleep(a, 3);
    wait_running(&mut root, thread, "SELECT SLEEP(3)").await;
    for (who, conn) in [("shop.other", &mut other), ("cafe.app", &mut cafe)] {
        for sql in [
            format!("KILL QUERY {a_id}"),
            format!("KILL {a_id}"),
            format!("KILL QUERY {thread}"),
            format!("KILL {thread}"),
        ] {
            let e = must_fail(conn, &sql).await;
            assert_unknown_thread(&e, &format!("{who}: `{sql}`"));
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the refusals were tested while A's query ran ({:?})",
        started.elapsed()
    );
    let (_a, result, _) = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("A's SLEEP(3) ends")
        .expect("sleep task");
    assert_eq!(
        result.expect("A's query was not interrupted"),
        Some(0),
        "A's SLEEP(3) ran to completion"
    );
}

/// A doze id whose client has gone names nothing any more, even though its backend session
/// now serves someone else from the pool: KILL of the stale id must not hit the new client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_an_id_gone_back_to_the_pool_touches_nothing() {
    let (db, proxy) = shop().await;
    let mut root = db.root().await.expect("root");

    let mut a = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect A");
    let a_id = a.id();
    let thread = backend_thread(&mut a).await;
    a.disconnect().await.expect("A quits");
    parked(&proxy, "id-shop", 1).await;

    let mut b = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect B");
    assert_eq!(backend_thread(&mut b).await, thread, "B reuses A's session");
    assert_ne!(b.id(), a_id, "test premise: B has a new doze id");
    let mut c = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .expect("connect C");

    let sleeping = spawn_sleep(b, 2);
    wait_running(&mut root, thread, "SELECT SLEEP(2)").await;
    for sql in [format!("KILL QUERY {a_id}"), format!("KILL {a_id}")] {
        let e = must_fail(&mut c, &sql).await;
        assert_unknown_thread(&e, &format!("stale id: `{sql}`"));
    }
    let (mut b, result, _) = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("B's SLEEP(2) ends")
        .expect("sleep task");
    assert_eq!(
        result.expect("B's query was not interrupted"),
        Some(0),
        "B's SLEEP(2) ran to completion"
    );
    assert_eq!(backend_thread(&mut b).await, thread, "B's session is alive");
}

/// The interactive `mariadb` client's Ctrl+C: it opens a second connection and sends
/// `KILL QUERY <the id from its greeting>`. Through doze that id is doze's, so this only works
/// with KILL interception. Driven through a pseudo-terminal so that Ctrl+C is a real SIGINT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_ctrl_c_kills_the_query() {
    let (_db, proxy) = shop().await;
    let bin = doze_control::mariadb::find_binary("mariadb").expect("mariadb client installed");
    let script = format!(
        r#"
import os, pty, select, sys, time
BIN = {bin:?}
pid, fd = pty.fork()
if pid == 0:
    os.environ["MYSQL_HISTFILE"] = "/dev/null"
    os.environ["TERM"] = "dumb"
    os.execv(BIN, [BIN, "--no-defaults", "-h127.0.0.1", "-P{port}", "--protocol=TCP",
                   "-ushop.app", "-p{pw}"])
buf = b""
def pump(found, timeout):
    global buf
    deadline = time.monotonic() + timeout
    while True:
        hit = found(buf)
        if hit:
            return hit
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([fd], [], [], min(left, 0.05))
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return found(buf)
            if not data:
                return found(buf)
            buf += data
def first_of(markers, start):
    def found(b):
        for name, m in markers:
            if m in b[start:]:
                return name
        return None
    return found
def finish(result, elapsed):
    print("RESULT %s %.3f" % (result, elapsed))
    print(buf.decode(errors="replace"))
    try:
        os.write(fd, b"exit\n")
    except OSError:
        pass
    end = time.monotonic() + 5
    while time.monotonic() < end:
        pump(lambda b: None, 0.1)
        if os.waitpid(pid, os.WNOHANG)[0] != 0:
            return
    os.kill(pid, 9)
    os.waitpid(pid, 0)
if not pump(first_of([("prompt", b"]> ")], 0), 20):
    finish("no-prompt", 0)
    sys.exit(0)
os.write(fd, b"SELECT SLEEP(30);\n")
pump(lambda b: None, 1.0)
mark = len(buf)
t0 = time.monotonic()
os.write(fd, b"\x03")
hit = pump(first_of([("interrupted", b"interrupted"), ("finished", b"in set")], mark), 40)
elapsed = time.monotonic() - t0
pump(first_of([("prompt", b"]> ")], mark), 5)
finish(hit or "nothing", elapsed)
"#,
        bin = bin.display().to_string(),
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let out = python_client(&script).await;
    let result = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line from the pty driver:\n{out}"));
    let (what, secs) = result
        .split_once(' ')
        .unwrap_or_else(|| panic!("RESULT line: {result}"));
    let secs: f64 = secs
        .parse()
        .unwrap_or_else(|e| panic!("RESULT seconds {secs:?}: {e}"));
    println!("Ctrl+C in the mariadb client: {what} after {secs:.3} s");
    assert!(
        what == "interrupted" || what == "finished",
        "the query neither was interrupted nor finished ({what}):\n{out}"
    );
    assert!(
        secs < 5.0,
        "Ctrl+C should stop SELECT SLEEP(30) quickly, took {secs:.3} s ({what}):\n{out}"
    );
    assert!(
        !out.contains("sorry, cannot"),
        "the client could not kill the query:\n{out}"
    );
}

/// Parked sessions count against the compute's `max_connections`: a login another user's
/// client needs is not refused because of them (the pool gives them back and the login is
/// retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sessions_make_room_when_the_compute_is_full() {
    let db = backend_with(&["--max-connections=10"]).await;
    let routes = routes(&[("shop", &db.addr())]);
    let proxy = Proxy::start_static(&routes, threaded()).await;
    // 10 (MariaDB's least), and one more: MariaDB keeps a slot for accounts with CONNECTION
    // ADMIN, which the test users have.
    let mut conns = Vec::new();
    for _ in 0..11 {
        conns.push(connect(proxy.addr, "shop.app", None).await.unwrap());
    }
    for c in conns {
        c.disconnect().await.unwrap();
    }
    parked(&proxy, "id-shop", 11).await;
    // Every slot of the compute is a parked session of `app`; `other` must still get in.
    let mut other = Conn::new(opts(proxy.addr, "shop.other", "other-pw", None))
        .await
        .expect("a login refused because parked sessions filled the compute");
    let v: Option<i64> = other.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
    other.disconnect().await.unwrap();
}

/// Some drivers read doze's connection id as a signed 32-bit number and send KILL with a
/// negative id; it names the same session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_with_the_id_read_as_signed_works() {
    let db = backend().await;
    let routes = routes(&[("shop", &db.addr())]);
    let proxy = Proxy::start_static(&routes, threaded()).await;
    let mut a = connect(proxy.addr, "shop.app", None).await.unwrap();
    let doze_id = a.id();
    let signed = doze_id as i32;
    assert!(signed < 0, "doze ids are above 2^31: {doze_id}");
    let sleeper = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = a.query_first("SELECT SLEEP(30)").await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut b = connect(proxy.addr, "shop.app", None).await.unwrap();
    b.query_drop(format!("KILL QUERY {signed}")).await.unwrap();
    let killed_at = Instant::now();
    let (r, done) = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the sleep was not killed")
        .unwrap();
    assert!(
        matches!(&r, Ok(Some(1))) || matches!(&r, Err(e) if server_code(e) == Some(1317)),
        "{r:?}"
    );
    assert!(done.duration_since(killed_at) < Duration::from_secs(2));
}

/// A parked session the server closed (a restart, `wait_timeout`, a KILL by an administrator)
/// is noticed at check-out and never handed to a client: the client gets a fresh session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_session_the_server_closed_is_not_handed_out() {
    let (db, proxy) = shop().await;
    let mut root = db.root().await.unwrap();
    // Several rounds: on two session threads the next client often lands on the other thread
    // than the one that parked the session (whose event loop has not seen the close).
    for round in 0..8 {
        let mut a = connect(proxy.addr, "shop.app", None).await.unwrap();
        let parked_thread = backend_thread(&mut a).await;
        a.disconnect().await.unwrap();
        parked(&proxy, "id-shop", 1).await;
        root.query_drop(format!("KILL {parked_thread}"))
            .await
            .unwrap();
        wait_thread_gone(&mut root, parked_thread).await;
        let mut b = connect(proxy.addr, "shop.app", None)
            .await
            .unwrap_or_else(|e| {
                panic!("round {round}: a closed parked session reached the client: {e}")
            });
        assert_ne!(backend_thread(&mut b).await, parked_thread);
        let v: Option<i64> = b.query_first("SELECT 2").await.unwrap();
        assert_eq!(v, Some(2));
        b.disconnect().await.unwrap();
    }
}

/// COM_PROCESS_KILL (what PyMySQL's `kill()` and the C API's `mysql_kill()` send) with the
/// id of doze's greeting ends that session, as MariaDB's own COM_PROCESS_KILL does (it is
/// `KILL CONNECTION`): its running query fails with a lost connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn com_process_kill_from_pymysql_works() {
    let (_db, proxy) = shop().await;
    let script = format!(
        r#"
import threading, time, pymysql
def conn():
    return pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", database="testdb")
a = conn()
target = a.thread_id()
result = {{}}
def sleep():
    t0 = time.monotonic()
    try:
        cur = a.cursor()
        cur.execute("SELECT SLEEP(30)")
        result["value"] = cur.fetchone()[0]
    except pymysql.MySQLError as e:
        result["value"] = "error %d" % e.args[0]
    result["took"] = time.monotonic() - t0
t = threading.Thread(target=sleep)
t.start()
time.sleep(0.5)
b = conn()
b.kill(target)
t.join(10)
print(target >= 0x80000000)
print(result.get("value"))
print("%.3f" % result.get("took", 99))
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let out = python_client(&script).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"True"),
        "doze's id from the greeting: {out}"
    );
    // 2013: lost connection during the query; 1927: connection was killed.
    assert!(
        matches!(lines.get(1), Some(&"error 2013") | Some(&"error 1927")),
        "the session was killed: {out}"
    );
    let took: f64 = lines.get(2).and_then(|t| t.parse().ok()).unwrap_or(99.0);
    assert!(took < 5.0, "the sleep ended {took} s after it began: {out}");
}

/// MariaDB Connector/J (Java), a client library that cancels a running statement itself:
/// `Statement.cancel()` opens a second connection and sends `KILL QUERY <the id from its
/// greeting>`, which through doze is doze's id; `setQueryTimeout` bounds a statement (on a
/// MariaDB server, by `SET STATEMENT max_statement_time=... FOR`). Both must stop a
/// `SELECT SLEEP(30)` within seconds, and leave the connection usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_j_cancel_and_query_timeout_work() {
    let (_db, proxy) = shop().await;
    let source = format!(
        r#"
import java.sql.*;

public class CancelTest {{
    static String run(Statement s) {{
        try (ResultSet r = s.executeQuery("SELECT SLEEP(30)")) {{
            r.next();
            return "finished " + r.getInt(1);
        }} catch (SQLException e) {{
            return "error " + e.getErrorCode();
        }}
    }}

    public static void main(String[] args) throws Exception {{
        String url = "jdbc:mariadb://127.0.0.1:{port}/testdb?user=shop.app&password={pw}";
        try (Connection c = DriverManager.getConnection(url)) {{
            long id = c.unwrap(org.mariadb.jdbc.MariaDbConnection.class).getServerThreadId();
            System.out.println("id " + Long.toUnsignedString(id & 0xffffffffL));
            Statement s = c.createStatement();
            Thread canceller = new Thread(() -> {{
                try {{
                    Thread.sleep(500);
                    s.cancel();
                }} catch (Exception e) {{
                    System.out.println("cancel failed: " + e);
                }}
            }});
            long t0 = System.nanoTime();
            canceller.start();
            String outcome = run(s);
            System.out.printf("cancel %s %.3f%n", outcome, (System.nanoTime() - t0) / 1e9);
            canceller.join();
            try (ResultSet r = c.createStatement().executeQuery("SELECT 1")) {{
                r.next();
                System.out.println("after cancel " + r.getInt(1));
            }}
            Statement t = c.createStatement();
            t.setQueryTimeout(1);
            t0 = System.nanoTime();
            outcome = run(t);
            System.out.printf("timeout %s %.3f%n", outcome, (System.nanoTime() - t0) / 1e9);
            try (ResultSet r = c.createStatement().executeQuery("SELECT 2")) {{
                r.next();
                System.out.println("after timeout " + r.getInt(1));
            }}
        }}
    }}
}}
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let out = java_client("CancelTest", &source).await;
    println!("{out}");
    let line = |prefix: &str| line_after(&out, prefix);
    assert_doze_id(&line("id "), &out);
    assert!(!out.contains("cancel failed"), "{out}");
    // Each statement ends early: interrupted (SLEEP returns 1) or an error, within seconds.
    for what in ["cancel ", "timeout "] {
        let outcome = line(what);
        let secs: f64 = outcome
            .rsplit(' ')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(99.0);
        assert!(secs < 5.0, "{what}took {secs} s: {out}");
        assert!(
            outcome.starts_with("finished 1") || outcome.starts_with("error "),
            "{what}{outcome}: {out}"
        );
    }
    assert_eq!(line("after cancel "), "1", "{out}");
    assert_eq!(line("after timeout "), "2", "{out}");
}

/// Node's mysql2, the second client library whose timeouts need KILL: its query `timeout`
/// only fails the callback and leaves the query running, so applications end it themselves
/// with `KILL QUERY <connection.threadId>` over another connection (the pattern of
/// mysql2-timeout and its kin). Through doze that id is doze's: the KILL must reach the
/// right backend session, end the `SELECT SLEEP(30)` within seconds, and leave the first
/// connection usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_timeout_then_kill_query_works() {
    let (_db, proxy) = shop().await;
    let script = format!(
        r#"
const mysql = require("mysql2");
const opts = {{ host: "127.0.0.1", port: {port}, user: "shop.app", password: "{pw}", database: "testdb" }};
const a = mysql.createConnection(opts);
const b = mysql.createConnection(opts);
const t0 = Date.now();
let calls = 0;
a.query({{ sql: "SELECT SLEEP(30) AS s", timeout: 500 }}, (err) => {{
  // mysql2 calls back again when the killed query's answer arrives.
  if (++calls > 1) {{ console.log("late " + (err ? err.errno : "none")); return; }}
  console.log("timeout " + (err ? err.code : "none") + " " + ((Date.now() - t0) / 1000).toFixed(3));
  const k0 = Date.now();
  b.query("KILL QUERY " + a.threadId, (kerr) => {{
    console.log("kill " + (kerr ? "error " + kerr.errno : "ok"));
    // Queued behind the killed query: answers once the sleep has ended.
    a.query("SELECT 2 AS v", (e2, rows) => {{
      console.log("after " + (e2 ? "error " + e2.errno : rows[0].v) + " " + ((Date.now() - k0) / 1000).toFixed(3));
      b.query("KILL QUERY " + (a.threadId + 1000), (e3) => {{
        console.log("unknown " + (e3 ? e3.errno : "ok"));
        a.end(); b.end();
      }});
    }});
  }});
}});
a.once("connect", () => console.log("id " + a.threadId));

"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let out = node_client(&script).await;
    println!("{out}");
    let line = |prefix: &str| line_after(&out, prefix);
    assert_doze_id(&line("id "), &out);
    assert!(
        line("timeout ").starts_with("PROTOCOL_SEQUENCE_TIMEOUT"),
        "mysql2's own timeout fired: {out}"
    );
    assert_eq!(line("kill "), "ok", "{out}");
    // The killed query's own answer (mysql2 calls back a second time with it).
    assert_eq!(line("late "), "1317", "ER_QUERY_INTERRUPTED: {out}");
    let after = line("after ");
    let mut parts = after.split(' ');
    assert_eq!(
        parts.next(),
        Some("2"),
        "the first connection still works: {out}"
    );
    let secs: f64 = parts.next().and_then(|t| t.parse().ok()).unwrap_or(99.0);
    assert!(secs < 5.0, "the sleep ended {secs} s after the KILL: {out}");
    // Another id is nobody's: MariaDB's own ER_NO_SUCH_THREAD.
    assert_eq!(line("unknown "), "1094", "{out}");
}

/// A client that pipelines a query and a KILL (sends both before reading) gets the two
/// answers in order: the query's rows, then the KILL's OK. doze answers a KILL it carried out
/// with the compute's answer to a COM_PING sent in its place, which comes back through the
/// relay behind the query's answer (it once read the query's first packet as the ping's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_kill_is_answered_in_order() {
    let (_db, proxy) = shop().await;
    let script = format!(
        r#"
import pymysql
from pymysql.connections import MySQLResult
from pymysql.constants import COMMAND
def conn():
    return pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", database="testdb", autocommit=True)
a, b = conn(), conn()
a._execute_command(COMMAND.COM_QUERY, "SELECT SLEEP(0.3), 'first'")
a._execute_command(COMMAND.COM_QUERY, "KILL QUERY %d" % b.thread_id())
first = MySQLResult(a); first.read()
print("first", first.rows)
a._next_seq_id = 1  # each answer numbers its packets from 1; PyMySQL counts one stream
second = MySQLResult(a); second.read()
print("second", second.affected_rows, second.rows)
cur = a.cursor(); cur.execute("SELECT 'after'"); print("after", cur.fetchone()[0])
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let out = python_client(&script).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec!["first ((0, 'first'),)", "second 0 None", "after after"],
        "answers in order: {out}"
    );
}

/// The OK doze sends for a KILL it carried out has the session's real status flags: a client
/// in a transaction, or with autocommit off, is told so (PyMySQL keeps `server_status` from
/// every OK), not that its transaction ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ok_of_a_kill_keeps_the_sessions_status_flags() {
    let (_db, proxy) = shop().await;
    let script = format!(
        r#"
import pymysql
def conn():
    return pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", database="testdb", autocommit=True)
a, b = conn(), conn()
cur = a.cursor()
cur.execute("KILL QUERY %d" % b.thread_id())
print("idle", a.server_status & 3)
a.begin()
cur.execute("SELECT 1")
cur.execute("KILL QUERY %d" % b.thread_id())
print("in_trans", a.server_status & 3)
a.rollback()
cur.execute("SET autocommit = 0")
cur.execute("KILL QUERY %d" % b.thread_id())
print("autocommit_off", a.server_status & 3)
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let out = python_client(&script).await;
    // SERVER_STATUS_IN_TRANS = 1, SERVER_STATUS_AUTOCOMMIT = 2.
    assert!(out.contains("idle 2"), "{out}");
    assert!(out.contains("in_trans 3"), "{out}");
    assert!(out.contains("autocommit_off 0"), "{out}");
}

/// A client handed a pooled session learns the session's real status flags from doze's OK:
/// on a server whose sessions start with autocommit off, the login's OK says autocommit off,
/// as the server's own OK does on a fresh login, so a driver that reads it does not believe
/// its writes commit by themselves. (The greeting, sent before doze knows the project, cannot
/// say it; drivers read the login's OK.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_login_reports_the_servers_autocommit() {
    let db = backend_with(&["--autocommit=0"]).await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), threaded()).await;
    let script = format!(
        r#"
import time, pymysql, pymysql.connections as c
# The status flags of each connection's login OK (PyMySQL reads but does not keep them).
login_ok = []
read = c.Connection._read_packet
def spy(self, packet_type=c.MysqlPacket):
    p = read(self, packet_type)
    if getattr(self, "_login_ok", None) is None and p.is_ok_packet():
        self._login_ok = c.OKPacketWrapper(p).server_status
    return p
c.Connection._read_packet = spy
def conn():
    return pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", database="testdb", autocommit=None)
first = conn()
cur = first.cursor()
cur.execute("SELECT CONNECTION_ID()")
thread = cur.fetchone()[0]
print("fresh", first._login_ok & 2)
first.close()
time.sleep(1)
second = conn()
cur = second.cursor()
cur.execute("SELECT CONNECTION_ID()")
print("reused", cur.fetchone()[0] == thread)
print("pooled", second._login_ok & 2)
cur.execute("SELECT @@autocommit")
print("server", cur.fetchone()[0])
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    let out = python_client(&script).await;
    assert!(out.contains("fresh 0"), "{out}");
    assert!(
        out.contains("reused True"),
        "the second login took the parked session: {out}"
    );
    assert!(out.contains("pooled 0"), "{out}");
    assert!(out.contains("server 0"), "{out}");
}
