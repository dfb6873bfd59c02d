//! The data path against a real mariadbd and real clients (mysql_async and the `mariadb`
//! command-line client), with static routes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use doze_proxy::ProxyConfig;
use mysql_async::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_routing_with_queries_prepared_statements_and_multi_statements() {
    let db = backend().await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;

    let mut conn = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .unwrap();
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert_eq!(who.as_deref(), Some("app@%"), "backend sees the bare user");
    let dbname: Option<String> = conn.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(dbname.as_deref(), Some("testdb"));

    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
        .await
        .unwrap();
    let stmt = conn.prep("INSERT INTO t VALUES (?, ?)").await.unwrap();
    for i in 0..10 {
        conn.exec_drop(&stmt, (i, format!("v{i}"))).await.unwrap();
    }
    let got: Vec<(i32, String)> = conn
        .exec("SELECT id, v FROM t WHERE id >= ? ORDER BY id", (7,))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![(7, "v7".into()), (8, "v8".into()), (9, "v9".into())]
    );

    // Multi-statements: two result sets in one round trip.
    let mut result = conn.query_iter("SELECT 1; SELECT 2, 3").await.unwrap();
    let first: Vec<i64> = result.collect().await.unwrap();
    let second: Vec<(i64, i64)> = result.collect().await.unwrap();
    assert_eq!((first, second), (vec![1], vec![(2, 3)]));
    drop(result);
    conn.disconnect().await.unwrap();

    // The mariadb command-line client, a second independent implementation.
    let out = mariadb_cli(
        proxy.addr,
        "shop.app",
        PASSWORD,
        &["testdb", "-e", "SELECT COUNT(*) FROM t; SELECT 'two'"],
    )
    .await;
    assert!(out.status.success(), "cli failed: {}", stderr(&out));
    assert_eq!(stdout(&out), "10\ntwo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_routing_and_project_id() {
    let db = backend().await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;

    let mut conn = connect(proxy.addr, "app", Some("shop/testdb"))
        .await
        .unwrap();
    let dbname: Option<String> = conn.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(dbname.as_deref(), Some("testdb"));
    conn.disconnect().await.unwrap();

    // The project's id works as well as its name; no database at all is fine.
    let mut conn = connect(proxy.addr, "id-shop.app", None).await.unwrap();
    let dbname: Option<Option<String>> = conn.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(dbname, Some(None));
    conn.disconnect().await.unwrap();

    let out = mariadb_cli(
        proxy.addr,
        "app",
        PASSWORD,
        &["shop/testdb", "-e", "SELECT DATABASE()"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "testdb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_mysql_errors() {
    let db = backend().await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;

    let wrong = mysql_async::Conn::new(opts(proxy.addr, "shop.app", "wrong", None))
        .await
        .unwrap_err();
    assert_eq!(server_code(&wrong), Some(1045), "{wrong}");
    assert!(
        wrong.to_string().contains("Access denied for user 'app'"),
        "{wrong}"
    );

    let unknown_role = mysql_async::Conn::new(opts(proxy.addr, "shop.nobody", PASSWORD, None))
        .await
        .unwrap_err();
    assert_eq!(server_code(&unknown_role), Some(1045), "{unknown_role}");

    let unknown = connect(proxy.addr, "nope.app", None).await.unwrap_err();
    assert_eq!(server_code(&unknown), Some(1049), "{unknown}");
    assert!(
        unknown.to_string().contains("unknown project 'nope'"),
        "{unknown}"
    );

    let none = connect(proxy.addr, "app", Some("testdb"))
        .await
        .unwrap_err();
    assert_eq!(server_code(&none), Some(1045));
    let text = none.to_string();
    assert!(
        text.contains("<project>.<user>")
            && text.contains("<project>/<database>")
            && text.contains("SNI"),
        "{text}"
    );

    let out = mariadb_cli(proxy.addr, "shop.app", "wrong", &["-e", "SELECT 1"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("1045"), "{}", stderr(&out));

    // Unknown database: the backend's own ERR reaches the client.
    let nodb = connect(proxy.addr, "shop.app", Some("missing"))
        .await
        .unwrap_err();
    assert_eq!(server_code(&nodb), Some(1049), "{nodb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_user_is_resigned_and_stays_in_project() {
    let db = backend().await;
    let other = backend().await;
    let proxy = Proxy::start_static(
        &routes(&[("shop", &db.addr()), ("blog", &other.addr())]),
        ProxyConfig::default(),
    )
    .await;

    let mut conn = connect(proxy.addr, "shop.app", None).await.unwrap();
    conn.query_drop("SET @marker = 42").await.unwrap();
    let opts = mysql_async::ChangeUserOpts::default()
        .with_user(Some("shop.other".into()))
        .with_pass(Some("other-pw".into()))
        .with_db_name(Some("testdb".into()));
    conn.change_user(opts).await.unwrap();
    let (who, dbname, marker): (String, Option<String>, Option<i64>) = conn
        .query_first("SELECT CURRENT_USER(), DATABASE(), @marker")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "other@%");
    assert_eq!(dbname.as_deref(), Some("testdb"));
    assert_eq!(marker, None, "session state was reset by the change");

    // Back to the first user with the bare name (same project implied), twice in a row.
    for _ in 0..2 {
        let back = mysql_async::ChangeUserOpts::default()
            .with_user(Some("app".into()))
            .with_pass(Some(PASSWORD.into()));
        conn.change_user(back).await.unwrap();
        let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
        assert_eq!(who.as_deref(), Some("app@%"));
    }

    // COM_RESET_CONNECTION passes through.
    conn.query_drop("SET @x = 1").await.unwrap();
    conn.reset().await.unwrap();
    let x: Option<Option<i64>> = conn.query_first("SELECT @x").await.unwrap();
    assert_eq!(x, Some(None));

    // Another project is refused with a clear error.
    let cross = mysql_async::ChangeUserOpts::default()
        .with_user(Some("blog.app".into()))
        .with_pass(Some(PASSWORD.into()));
    let err = conn.change_user(cross).await.unwrap_err();
    assert!(err.to_string().contains("another project"), "{err}");

    // A wrong password is refused.
    let mut conn = connect(proxy.addr, "shop.app", None).await.unwrap();
    let bad = mysql_async::ChangeUserOpts::default()
        .with_user(Some("shop.other".into()))
        .with_pass(Some("nope".into()));
    let err = conn.change_user(bad).await.unwrap_err();
    assert!(err.to_string().contains("Access denied"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_of_20_mib_both_ways() {
    let db = backend().await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;
    let mut conn = connect(proxy.addr, "shop.app", Some("testdb"))
        .await
        .unwrap();
    conn.query_drop("CREATE TABLE b (id INT PRIMARY KEY, data LONGBLOB)")
        .await
        .unwrap();
    let blob: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    // Text protocol (COM_QUERY with the blob inline, > 16 MiB: split into continuation packets).
    conn.exec_drop("INSERT INTO b VALUES (1, ?)", (blob.clone(),))
        .await
        .unwrap();
    let hex_literal = format!(
        "INSERT INTO b VALUES (2, x'{}')",
        hex::encode(&blob[..9 * 1024 * 1024])
    );
    conn.query_drop(hex_literal).await.unwrap();
    let back: Option<Vec<u8>> = conn
        .query_first("SELECT data FROM b WHERE id = 1")
        .await
        .unwrap();
    assert!(
        back.as_deref() == Some(blob.as_slice()),
        "20 MiB blob came back different"
    );
    let len: Option<i64> = conn
        .query_first("SELECT LENGTH(data) FROM b WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(len, Some(9 * 1024 * 1024));
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_data_local_infile_with_sequence_wrap() {
    let db = backend_with(&["--local-infile=1"]).await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.txt");
    // 6,000 lines of 0x11 bytes: far more than 256 packets, so sequence ids wrap to 0 inside
    // the data stream, and nearly every data packet begins with the COM_CHANGE_USER byte.
    let line = vec![0x11u8; 999];
    let mut content = Vec::new();
    for _ in 0..6000 {
        content.extend_from_slice(&line);
        content.push(b'\n');
    }
    std::fs::write(&file, &content).unwrap();
    let out = mariadb_cli(
        proxy.addr,
        "shop.app",
        PASSWORD,
        &[
            "--local-infile=1",
            "testdb",
            "-e",
            &format!(
                "CREATE TABLE l (v VARBINARY(1000)); LOAD DATA LOCAL INFILE '{}' INTO TABLE l; \
                 SELECT COUNT(*), SUM(LENGTH(v)) FROM l; SELECT 'still alive'",
                file.display()
            ),
        ],
    )
    .await;
    assert!(out.status.success(), "LOAD DATA failed: {}", stderr(&out));
    assert_eq!(stdout(&out), "6000\t5994000\nstill alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions() {
    let db = backend_with(&["--max-connections=400"]).await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(addr, "shop.app", None).await?;
            let v: Option<i64> = conn.query_first(format!("SELECT {i} + 1")).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let again: Option<i64> = conn.exec_first("SELECT ?", (i,)).await?;
            conn.disconnect().await?;
            Ok::<_, mysql_async::Error>((v, again))
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (v, again) = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
        assert_eq!((v, again), (Some(i as i64 + 1), Some(i as i64)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_session_fails_that_session_only() {
    let mut doomed = backend().await;
    let healthy = backend().await;
    let proxy = Proxy::start_static(
        &routes(&[("shop", &doomed.addr()), ("blog", &healthy.addr())]),
        ProxyConfig::default(),
    )
    .await;
    let mut a = connect(proxy.addr, "shop.app", None).await.unwrap();
    let mut b = connect(proxy.addr, "blog.app", None).await.unwrap();
    a.query_drop("SELECT 1").await.unwrap();
    doomed.kill().await;
    let err = a.query_drop("SELECT 1").await.unwrap_err();
    assert!(
        matches!(
            err,
            mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)
        ),
        "{err:?}"
    );
    let v: Option<i64> = b.query_first("SELECT 7").await.unwrap();
    assert_eq!(v, Some(7));
    let mut c = connect(proxy.addr, "blog.app", None).await.unwrap();
    let v: Option<i64> = c.query_first("SELECT 8").await.unwrap();
    assert_eq!(v, Some(8));
    // New connections to the dead project get an error, not a hang.
    let err = connect(proxy.addr, "shop.app", None).await.unwrap_err();
    assert_eq!(server_code(&err), Some(2013), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_garbage_handshakes_are_closed() {
    let db = backend().await;
    let cfg = ProxyConfig {
        handshake_timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;

    // Stalls after the greeting: closed at the timeout.
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    let mut greeting = [0u8; 256];
    let n = stalled.read(&mut greeting).await.unwrap();
    assert!(n > 5 && greeting[4] == 10, "greeting expected");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "stalled client not closed: {closed:?}"
    );

    // Garbage (an HTTP request) instead of a handshake response: an ERR, then close.
    let mut garbage = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = garbage.read(&mut greeting).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut reply))
        .await
        .unwrap();
    // "GET" read as a length announces a 5.5 MB packet: refused at once, not buffered.
    assert!(
        reply.len() > 7 && reply[4] == 0xff,
        "ERR packet expected, got {reply:?}"
    );
    // Short binary garbage that forms a complete packet gets an ERR packet too:
    let mut short = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = short.read(&mut greeting).await.unwrap();
    short
        .write_all(&[5, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), short.read_to_end(&mut reply))
        .await
        .unwrap();
    assert!(
        reply.len() > 7 && reply[4] == 0xff,
        "ERR packet expected, got {reply:?}"
    );
    let code = u16::from_le_bytes([reply[5], reply[6]]);
    assert_eq!(code, 1043);

    // An oversized length prefix is refused at once rather than buffered.
    let mut huge = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = huge.read(&mut greeting).await.unwrap();
    huge.write_all(&[0xff, 0xff, 0xff, 1]).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), huge.read_to_end(&mut reply))
        .await
        .unwrap();
    assert!(
        reply.len() > 5 && reply[4] == 0xff,
        "ERR expected for an oversized packet"
    );

    // The proxy keeps serving real clients.
    let mut conn = connect(proxy.addr, "shop.app", None).await.unwrap();
    let v: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_answer_err_1040() {
    let db = backend().await;
    let cfg = ProxyConfig {
        max_connections: 2,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    let _a = connect(proxy.addr, "shop.app", None).await.unwrap();
    let _b = connect(proxy.addr, "shop.app", None).await.unwrap();
    let err = connect(proxy.addr, "shop.app", None).await.unwrap_err();
    assert_eq!(server_code(&err), Some(1040), "{err}");

    let per_project = ProxyConfig {
        max_connections_per_project: 1,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), per_project).await;
    let _a = connect(proxy.addr, "shop.app", None).await.unwrap();
    let err = connect(proxy.addr, "shop.app", None).await.unwrap_err();
    assert_eq!(server_code(&err), Some(1040), "{err}");
    assert!(err.to_string().contains("for this project"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_open_sessions() {
    let db = backend().await;
    let cfg = ProxyConfig {
        drain_timeout: Duration::from_secs(20),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    let addr = proxy.addr;
    let mut open = connect(addr, "shop.app", None).await.unwrap();
    let stopping = tokio::spawn(proxy.stop());
    // New connections are refused once the listener is dropped...
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "listener should be closed");
    // ...while the open session keeps working until it ends.
    let v: Option<i64> = open.query_first("SELECT 5").await.unwrap();
    assert_eq!(v, Some(5));
    assert!(
        !stopping.is_finished(),
        "drain must wait for the open session"
    );
    open.disconnect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_header_gives_mariadb_the_client_address() {
    let db = backend().await;
    let mut root = db.root().await.unwrap();
    root.query_drop("SET GLOBAL proxy_protocol_networks = '127.0.0.1/32'")
        .await
        .unwrap();
    let cfg = ProxyConfig {
        backend_proxy_protocol: true,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    // The client connects from 127.0.0.2; doze connects to MariaDB from 127.0.0.1. MariaDB can
    // only learn 127.0.0.2 from the PROXY header.
    let script = format!(
        r#"
import pymysql
c = pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", bind_address="127.0.0.2")
with c.cursor() as cur:
    cur.execute("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
    print(cur.fetchone()[0].split(":")[0])
c.close()
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    assert_eq!(python_client(&script).await, "127.0.0.2");
}
