//! SIGHUP: doze keeps running (it used to die without a drain) and swaps in a renewed TLS
//! certificate; a broken renewal keeps the old one. Checked with `openssl s_client -starttls
//! mysql`, another TLS implementation than doze's.
#![allow(clippy::unwrap_used)]

mod binary;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use binary::{Doze, api};
use doze_control::testkit::scratch_dir;

/// A self-signed certificate for `name`, written to `dir/cert.pem` and `dir/key.pem`.
fn write_cert(dir: &Path, name: &str) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), c.signing_key.serialize_pem()).unwrap();
}

/// The subject of the certificate the proxy presents, as openssl reads it.
fn presented_subject(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -starttls mysql -connect 127.0.0.1:{port} </dev/null 2>/dev/null \
             | openssl x509 -noout -subject -ext subjectAltName"
        ))
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hup(doze: &Doze) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(doze.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_serving() {
    let dir = scratch_dir("doze-reload-").unwrap();
    write_cert(dir.path(), "first.doze.test");
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, "").unwrap();
    let mut doze = Doze::serve(&[
        format!("--routes={}", routes.display()),
        format!("--tls-cert={}", dir.path().join("cert.pem").display()),
        format!("--tls-key={}", dir.path().join("key.pem").display()),
    ]);
    assert!(presented_subject(doze.proxy).contains("first.doze.test"));

    write_cert(dir.path(), "second.doze.test");
    hup(&doze);
    let mut seen = String::new();
    for _ in 0..50 {
        seen = presented_subject(doze.proxy);
        if seen.contains("second.doze.test") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.contains("second.doze.test"), "after SIGHUP: {seen}");
    assert!(
        doze.child.try_wait().unwrap().is_none(),
        "doze survived SIGHUP"
    );

    // A renewal caught half-written: the reload fails and the current pair stays.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    hup(&doze);
    std::thread::sleep(Duration::from_millis(300));
    assert!(doze.child.try_wait().unwrap().is_none(), "still running");
    assert!(presented_subject(doze.proxy).contains("second.doze.test"));
    assert_eq!(api(doze.admin, "GET", "/healthz", None).0, 200);
}

/// The `--routes` line for project `name` on `backend`, role `app` with `password`.
fn route(name: &str, backend: &str, password: &str) -> String {
    let hash = doze_protocol::native_password::format_stored_hash(
        &doze_protocol::native_password::stored_hash(password.as_bytes()),
    );
    format!(
        "[[project]]\nname = \"{name}\"\nid = \"id-{name}\"\nbackend = \"{backend}\"\n\
         [[project.role]]\nname = \"app\"\npassword_hash = \"{hash}\"\n"
    )
}

/// SIGHUP rereads the routes file: a project added is served, a session open meanwhile is
/// untouched, and a broken file keeps the routes in force. It also applies the config file's
/// log-level and session limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_and_the_log_level_without_dropping_sessions() {
    use mysql_async::prelude::Queryable;
    let db = doze_control::testkit::MariaDb::start().await.unwrap();
    db.create_user("app", "app-password-1").await.unwrap();
    let dir = scratch_dir("doze-reload-").unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, route("first", &db.addr(), "app-password-1")).unwrap();
    let config = dir.path().join("doze.toml");
    std::fs::write(&config, "log-level = \"warn\"\n").unwrap();
    let mut doze = Doze::spawn(
        &[
            format!("--routes={}", routes.display()),
            format!("--config={}", config.display()),
        ],
        Stdio::piped(),
    );
    for _ in 0..300 {
        if api(doze.admin, "GET", "/healthz", None).0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let opts = |project: &str| {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(doze.proxy)
            .prefer_socket(false)
            .user(Some(format!("{project}.app")))
            .pass(Some("app-password-1"))
    };
    let mut held = mysql_async::Conn::new(opts("first")).await.unwrap();
    let err = mysql_async::Conn::new(opts("second"))
        .await
        .expect_err("not routed yet");
    assert!(err.to_string().contains("unknown project"), "{err}");

    std::fs::write(
        &routes,
        route("first", &db.addr(), "app-password-1")
            + &route("second", &db.addr(), "app-password-1"),
    )
    .unwrap();
    std::fs::write(
        &config,
        "log-level = \"debug\"\nmax-connections-per-project = 1\n",
    )
    .unwrap();
    hup(&doze);
    let mut served = None;
    for _ in 0..50 {
        if let Ok(c) = mysql_async::Conn::new(opts("second")).await {
            served = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served
        .expect("the added project is served")
        .disconnect()
        .await
        .unwrap();
    let one: Option<i64> = held.query_first("SELECT 1").await.unwrap();
    assert_eq!(
        one,
        Some(1),
        "the session open through the reload still works"
    );
    // The per-project limit the reload lowered to 1: the held session keeps "first" full.
    let err = mysql_async::Conn::new(opts("first"))
        .await
        .expect_err("over the reloaded per-project limit");
    assert!(err.to_string().contains("too many connections"), "{err}");

    // A broken file: the routes in force stay.
    std::fs::write(&routes, "[[project]]\nname = ").unwrap();
    hup(&doze);
    tokio::time::sleep(Duration::from_millis(300)).await;
    mysql_async::Conn::new(opts("second"))
        .await
        .expect("still routed after a failed reload")
        .disconnect()
        .await
        .unwrap();
    held.disconnect().await.unwrap();
    assert_eq!(api(doze.admin, "GET", "/healthz", None).0, 200);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(doze.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut doze.child.stderr.take().unwrap(), &mut log).unwrap();
    // The config file's level applied from the start (warn: no info line before the reload),
    // then debug after SIGHUP.
    let before = log.split("log level set").next().unwrap_or_default();
    assert!(!before.contains("doze serving static routes"), "{log}");
    assert!(
        log.contains("SIGHUP: log level set from the config file"),
        "{log}"
    );
    assert!(log.contains("SIGHUP: reloaded the routes"), "{log}");
    assert!(log.contains("SIGHUP: the routes did not reload"), "{log}");
}

/// A reader of doze's stderr that stops reading (a full pipe, a stalled journald or `| tee`)
/// costs log lines at worst, never sessions: lines go through doze's log thread, so no session
/// thread waits on the write. Here stderr is a one-page pipe that nobody reads, filled by the
/// startup lines and 200 sessions at debug level; every session must still complete. (With
/// lines written on the session threads, the first full pipe stops the thread that writes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_does_not_stop_sessions() {
    use mysql_async::prelude::Queryable;
    use std::os::fd::AsFd;
    let dir = scratch_dir("doze-stalled-log-").unwrap();
    let mut doze = Doze::spawn(
        &[
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--db-dsn=sqlite://{}/state.db", dir.path().display()),
            "--log-level=debug".to_owned(),
        ],
        Stdio::piped(),
    );
    // Held open and never read: writes to it block once one page is full.
    let stderr = doze.child.stderr.take().unwrap();
    nix::fcntl::fcntl(stderr.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    assert!(doze.healthy(), "doze did not come up with a stalled stderr");
    doze.project("stall", serde_json::json!({}), serde_json::json!({}));
    for i in 0..200 {
        let session = async {
            let mut conn = mysql_async::Conn::new(doze.opts("stall")).await?;
            let one: Option<i64> = conn.query_first("SELECT 1").await?;
            conn.disconnect().await?;
            Ok::<_, mysql_async::Error>(one)
        };
        let one = tokio::time::timeout(Duration::from_secs(30), session)
            .await
            .unwrap_or_else(|_| panic!("session {i} hung behind a full stderr"))
            .unwrap();
        assert_eq!(one, Some(1));
    }
    let status = api(doze.admin, "GET", "/healthz", None).0;
    assert_eq!(status, 200, "the admin API stopped answering");
    drop(stderr);
}
