//! The data path under attack (issue 7): silent sockets, a hung compute, password guessing,
//! oversized names. Real mariadbd, real clients, static routes.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use doze_proxy::ProxyConfig;
use doze_proxy::throttle::Backoff;
use mysql_async::prelude::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// The first packet's payload, or `None` when the connection closes first.
async fn first_payload(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.ok()?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some(payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_cannot_take_the_slots_of_real_clients() {
    let db = backend().await;
    let cfg = ProxyConfig {
        max_connections: 3,
        max_pending_logins: 16,
        max_pending_logins_per_ip: 4,
        first_packet_timeout: Duration::from_secs(2),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    // 40 sockets from one address that never say a word.
    let mut silent = Vec::new();
    let (mut greeted, mut refused) = (0, 0);
    for _ in 0..40 {
        let mut s = connect_from("127.0.0.2", proxy.addr).await;
        match first_payload(&mut s).await {
            Some(p) if <[u8]>::first(&p) == Some(&0x0a) => greeted += 1,
            Some(p) if <[u8]>::first(&p) == Some(&0xff) => {
                assert_eq!(u16::from_le_bytes([p[1], p[2]]), 1040);
                refused += 1;
            }
            other => panic!("unexpected first packet {other:?}"),
        }
        silent.push(s);
    }
    // The flood holds at most half the login budget; the rest was refused at once.
    assert_eq!(greeted + refused, 40);
    assert!(greeted <= 8, "the flood holds {greeted} login slots");
    // Real clients from elsewhere log in, and all three session slots are theirs.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut c = connect(proxy.addr, "shop.app", None).await.unwrap();
        let v: Option<i64> = c.query_first("SELECT 1").await.unwrap();
        assert_eq!(v, Some(1));
        sessions.push(c);
    }
    // The silent sockets are closed after the first-packet timeout, well before the
    // handshake timeout.
    let started = Instant::now();
    for mut s in silent.drain(..) {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut byte))
            .await
            .expect("closed by doze")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    for c in sessions {
        c.disconnect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_compute_gives_a_clear_error_within_the_login_timeout() {
    let db = backend().await;
    let timeout = Duration::from_secs(1);
    let cfg = ProxyConfig {
        backend_login_timeout: timeout,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    let pid = nix::unistd::Pid::from_raw(db.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let err = connect(proxy.addr, "shop.app", None).await.unwrap_err();
    let took = started.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(server_code(&err), Some(1105), "{err}");
    assert!(
        err.to_string()
            .contains("did not answer the login within 1s"),
        "{err}"
    );
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout + Duration::from_millis(1500), "{took:?}");
    // Once the compute runs again, so do logins.
    let mut c = connect(proxy.addr, "shop.app", None).await.unwrap();
    let v: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessed_passwords_are_slowed_down_and_the_real_user_still_gets_in() {
    let db = backend().await;
    let backoff = Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(10),
    };
    let cfg = ProxyConfig {
        auth_backoff: backoff,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    let guesses = 200u32;
    // Each guess waits for the failures before it: the designed minimum of the whole run.
    let designed: Duration = (0..guesses).map(|n| backoff.delay(n)).sum();
    assert!(designed >= Duration::from_millis(1900), "{designed:?}");
    let started = Instant::now();
    for i in 0..guesses {
        let opts = opts(proxy.addr, "shop.app", &format!("guess-{i}"), None);
        let err = mysql_async::Conn::new(opts).await.unwrap_err();
        assert_eq!(server_code(&err), Some(1045), "{err}");
    }
    let took = started.elapsed();
    assert!(took >= designed, "200 guesses took {took:?} < {designed:?}");
    // The real user, from another address, is delayed at most `max`, never locked out.
    let script = format!(
        r#"
import pymysql
c = pymysql.connect(host="127.0.0.1", port={port}, user="shop.app", password="{pw}", bind_address="127.0.0.2")
with c.cursor() as cur:
    cur.execute("SELECT 42")
    print(cur.fetchone()[0])
c.close()
"#,
        port = proxy.addr.port(),
        pw = PASSWORD
    );
    assert_eq!(python_client(&script).await, "42");
    // And after that success, the role starts afresh.
    let mut c = connect(proxy.addr, "shop.app", None).await.unwrap();
    let v: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(v, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_user_name_is_not_echoed_back_in_full() {
    let db = backend().await;
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), ProxyConfig::default()).await;
    let user = format!("shop.{}", "x".repeat(60_000));
    let err = connect(proxy.addr, &user, None).await.unwrap_err();
    assert_eq!(server_code(&err), Some(1045), "{err}");
    let message = err.to_string();
    assert!(message.len() < 300, "{} bytes echoed", message.len());
    let project = format!("{}.app", "p".repeat(60_000));
    let err = connect(proxy.addr, &project, None).await.unwrap_err();
    assert_eq!(server_code(&err), Some(1049), "{err}");
    assert!(err.to_string().len() < 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_left_at_the_drain_timeout_are_told_the_server_is_shutting_down() {
    let db = backend().await;
    let cfg = ProxyConfig {
        drain_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    let mut idle = connect(proxy.addr, "shop.app", None).await.unwrap();
    let stopped = tokio::spawn(proxy.stop());
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the drain ends at its timeout")
        .unwrap();
    let err = idle.query_drop("SELECT 1").await.unwrap_err();
    assert_eq!(server_code(&err), Some(1053), "{err}");
    assert!(err.to_string().contains("shutdown"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_project_names_slows_down_like_guessing_passwords() {
    let db = backend().await;
    let backoff = Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    };
    let cfg = ProxyConfig {
        auth_backoff: backoff,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start_static(&routes(&[("shop", &db.addr())]), cfg).await;
    let probes = 30u32;
    let designed: Duration = (0..probes).map(|n| backoff.delay(n)).sum();
    let started = Instant::now();
    for i in 0..probes {
        let err = connect(proxy.addr, &format!("guess{i}.app"), None)
            .await
            .unwrap_err();
        assert_eq!(server_code(&err), Some(1049), "{err}");
    }
    let took = started.elapsed();
    assert!(
        took >= designed,
        "{probes} probes took {took:?} < {designed:?}"
    );
}
