//! Secrets of the `doze` binary (issue 7): the admin token stays out of `ps`, a weak token is
//! refused, and no DSN password reaches the log.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use doze_control::testkit::{Postgres, scratch_dir};

/// The `doze` binary: cargo's, or `DOZE_BIN` when the test binary was copied elsewhere (the
/// non-root CI run).
fn doze() -> String {
    std::env::var("DOZE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_doze").to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request to the admin API; returns the status code.
fn http_status(port: u16, path: &str, token: Option<&str>) -> u16 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `doze serve` on a free admin port with `args` (the proxy on a free port too), its stderr
/// piped; returns the child and the admin port.
fn serve(args: &[&std::ffi::OsStr], env: &[(&str, Option<&str>)]) -> (Child, u16) {
    let admin_port = free_port();
    let mut cmd = Command::new(doze());
    cmd.args(["serve", "--proxy-listen", "127.0.0.1:0"])
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    (cmd.spawn().unwrap(), admin_port)
}

/// SIGTERM, and a clean exit (sessions drained, computes stopped).
fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Reads the child's stderr until `needle` appears (or the child exits / 60 s pass).
fn stderr_until(child: &mut Child, needle: &str) -> String {
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(chunk) => text.extend(chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
        if String::from_utf8_lossy(&text).contains(needle) {
            break;
        }
    }
    // Keep draining in the background so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_stays_out_of_ps_and_the_dsn_password_out_of_the_log() {
    let pg = Postgres::start().await.unwrap();
    let dir = scratch_dir("doze-secrets-").unwrap();
    // PostgreSQL trusts local connections here, so any password works; it must never show.
    let dsn = pg
        .dsn()
        .replace("postgres@", "postgres:hunter2-never-log-me@");
    let token = "c0ffee-0123456789abcdef-token";
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data = dir.path().join("data");
    let (mut child, admin_port) = serve(
        &[
            "--db-dsn".as_ref(),
            dsn.as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--admin-token-file".as_ref(),
            token_file.as_os_str(),
        ],
        &[("DOZE_ADMIN_TOKEN", None), ("DOZE_LOG", Some("debug"))],
    );
    let log = stderr_until(&mut child, "doze is up");
    assert!(log.contains("doze is up"), "{log}");
    assert!(!log.contains("hunter2"), "DSN password in the log:\n{log}");
    assert!(log.contains("postgres:***@"), "{log}");
    assert!(
        !log.contains("127.0.0.1:0 "),
        "the startup line shows the bound port"
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(token));
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&environ).contains(token));
    assert_eq!(http_status(admin_port, "/api/v1/projects", None), 401);
    assert_eq!(
        http_status(admin_port, "/api/v1/projects", Some(token)),
        200
    );
    // Everything doze created is private.
    let data_mode = std::fs::metadata(dir.path().join("data"))
        .unwrap()
        .permissions()
        .mode()
        & 0o077;
    assert_eq!(data_mode & 0o066, 0, "data dir readable by others");
    stop(child);
}

#[test]
fn weak_admin_tokens_are_refused() {
    let dir = scratch_dir("doze-weak-").unwrap();
    for weak in [" ", "short", "has a space in it!"] {
        let out = Command::new(doze())
            .args(["serve", "--proxy-listen", "127.0.0.1:0"])
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--db-dsn")
            .arg(format!("sqlite://{}/state.db", dir.path().display()))
            .env("DOZE_ADMIN_TOKEN", weak)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "token {weak:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("admin token"), "{err}");
    }
}

/// `doze serve --routes`: the proxy alone (what the proxy-only build runs), with `/metrics` and
/// `/healthz` on the admin port and sessions relayed to a backend named in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_alone_serves_routes_and_metrics() {
    let db = doze_control::testkit::MariaDb::start().await.unwrap();
    db.create_user("app", "app-pw").await.unwrap();
    let dir = scratch_dir("doze-routes-").unwrap();
    let hash = doze_protocol::native_password::format_stored_hash(
        &doze_protocol::native_password::stored_hash(b"app-pw"),
    );
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "[[project]]\nname = \"shop\"\nbackend = \"{}\"\n[[project.role]]\nname = \"app\"\npassword_hash = \"{hash}\"\n",
            db.addr()
        ),
    )
    .unwrap();
    let (mut child, admin_port) = serve(&["--routes".as_ref(), routes.as_os_str()], &[]);
    let log = stderr_until(&mut child, "doze serving static routes");
    let port: u16 = log
        .split("proxy=127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no bound port in the log:\n{log}"));
    assert_ne!(port, 0);
    assert_eq!(http_status(admin_port, "/healthz", None), 200);
    assert_eq!(http_status(admin_port, "/nope", None), 404);
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .prefer_socket(false)
        .user(Some("shop.app"))
        .pass(Some("app-pw"));
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    let v: Option<i64> = mysql_async::prelude::Queryable::query_first(&mut conn, "SELECT 7")
        .await
        .unwrap();
    assert_eq!(v, Some(7));
    conn.disconnect().await.unwrap();
    assert_eq!(http_status(admin_port, "/metrics", None), 200);
    stop(child);
}

/// Without a token, doze makes one (0600 in its data dir) instead of trusting every local
/// user, and the CLI finds it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_doze_generates_one_that_only_its_user_can_read() {
    let dir = scratch_dir("doze-gentoken-").unwrap();
    let data = dir.path().join("data");
    let state = format!("sqlite://{}/state.db", data.display());
    let (mut child, admin_port) = serve(
        &[
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--db-dsn".as_ref(),
            state.as_ref(),
        ],
        &[("DOZE_ADMIN_TOKEN", None), ("DOZE_ADMIN_TOKEN_FILE", None)],
    );
    // A failed assertion below must not leave this doze (and its computes) running.
    let mut guard = StopOnPanic {
        pid: Some(child.id()),
        dir: dir.path().to_path_buf(),
    };
    let log = stderr_until(&mut child, "doze is up");
    assert!(log.contains("doze is up"), "{log}");
    let token_file = data.join("admin.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() >= 32);
    assert!(!log.contains(&token), "the token was logged");
    assert_eq!(http_status(admin_port, "/api/v1/projects", None), 401);
    assert_eq!(
        http_status(admin_port, "/api/v1/projects", Some(&token)),
        200
    );
    let cli = |args: &[&str]| {
        let out = Command::new(doze())
            .args(args)
            .arg("--admin")
            .arg(format!("http://127.0.0.1:{admin_port}"))
            .arg("--data-dir")
            .arg(&data)
            .arg("-o")
            .arg("json")
            .env_remove("DOZE_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "doze {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["project", "create", "cli-made"]);
    // Names that need URL encoding reach the API as one path segment each.
    for name in ["q", "q?z", "a b", "x/y", "p%41"] {
        cli(&["role", "create", "cli-made", name, "--password", "pw-12345"]);
    }
    cli(&["role", "delete", "cli-made", "q?z"]);
    cli(&["role", "delete", "cli-made", "x/y"]);
    let listed: serde_json::Value =
        serde_json::from_str(&cli(&["role", "list", "cli-made"])).unwrap();
    let mut names: Vec<&str> = listed["roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["a b", "p%41", "q"], "the wrong role was deleted");
    guard.pid = None;
    stop(child);
}

/// Kills a `doze serve` child and the computes under `dir` when a test fails before it
/// stopped them itself.
struct StopOnPanic {
    pid: Option<u32>,
    dir: std::path::PathBuf,
}

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            doze_control::testkit::kill_mariadbd_under(&self.dir);
        }
    }
}
