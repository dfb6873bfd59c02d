//! Shared setup for the proxy's integration tests: a real mariadbd (testkit), doze's proxy in
//! front of it on a free port, and real clients (mysql_async and the `mariadb` command line).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use doze_control::testkit::MariaDb;
use doze_proxy::static_routes::StaticRoutes;
use doze_proxy::{ProxyConfig, Shared, accept};
use mysql_async::{Conn, OptsBuilder};
use tokio_util::sync::CancellationToken;

pub const PASSWORD: &str = "app-pw";

/// A backend with user `app` (PASSWORD) and `other` ("other-pw"), database `testdb`.
pub async fn backend() -> MariaDb {
    backend_with(&[]).await
}

pub async fn backend_with(args: &[&str]) -> MariaDb {
    let db = MariaDb::start_with(args).await.expect("start mariadbd");
    db.create_user("app", PASSWORD).await.expect("user app");
    db.create_user("other", "other-pw")
        .await
        .expect("user other");
    use mysql_async::prelude::Queryable;
    let mut root = db.root().await.expect("root");
    root.query_drop("CREATE DATABASE testdb")
        .await
        .expect("create db");
    root.disconnect().await.expect("disconnect");
    db
}

/// The routes file of one project per (name, backend address).
pub fn routes(projects: &[(&str, &str)]) -> String {
    let app = doze_protocol::native_password::format_stored_hash(
        &doze_protocol::native_password::stored_hash(PASSWORD.as_bytes()),
    );
    let other = doze_protocol::native_password::format_stored_hash(
        &doze_protocol::native_password::stored_hash(b"other-pw"),
    );
    let mut out = String::new();
    for (name, backend) in projects {
        out.push_str(&format!(
            "[[project]]\nname = \"{name}\"\nid = \"id-{name}\"\nbackend = \"{backend}\"\n\
             [[project.role]]\nname = \"app\"\npassword_hash = \"{app}\"\n\
             [[project.role]]\nname = \"other\"\npassword_hash = \"{other}\"\n"
        ));
    }
    out
}

/// A running proxy; stops (and drains) when dropped or on `stop`. With `cfg.threads` above 0
/// it runs on its own threads, as `doze serve` does ([`accept::serve_on_threads`]).
pub struct Proxy {
    pub addr: SocketAddr,
    pool: Arc<doze_proxy::pool::Pool>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy with static routes and `cfg` (its listen address is replaced by a free port).
    pub async fn start_static(routes_toml: &str, mut cfg: ProxyConfig) -> Proxy {
        let routes = Arc::new(StaticRoutes::parse(routes_toml).expect("routes"));
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        Self::start(cfg, routes).await
    }

    pub async fn start<C: doze_proxy::Control + Clone>(cfg: ProxyConfig, control: C) -> Proxy {
        let listener = accept::bind(&cfg).expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let threaded = cfg.threads > 0;
        let shared = Arc::new(Shared::new(cfg, control));
        let pool = Arc::clone(&shared.connector.pool);
        let task = if threaded {
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    accept::serve_on_threads(listener, shared, stop)
                        .await
                        .expect("proxy threads");
                }
            })
        } else {
            tokio::spawn(accept::serve(
                listener,
                shared,
                stop.clone().cancelled_owned(),
            ))
        };
        Proxy {
            addr,
            pool,
            stop,
            task: Some(task),
        }
    }

    /// Backend sessions idle in the pool of `project_id` now.
    pub fn pool_idle(&self, project_id: &str) -> usize {
        self.pool.idle(project_id)
    }

    /// Stops accepting and waits for the drain to finish.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// mysql_async options for a client of the proxy (never switching to a unix socket).
pub fn opts(addr: SocketAddr, user: &str, password: &str, db: Option<&str>) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        .prefer_socket(false)
}

pub async fn connect(
    addr: SocketAddr,
    user: &str,
    db: Option<&str>,
) -> Result<Conn, mysql_async::Error> {
    Conn::new(opts(addr, user, PASSWORD, db)).await
}

/// The server error code of a mysql_async error, if it is one.
pub fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Runs the `mariadb` command-line client against `addr`.
pub async fn mariadb_cli(addr: SocketAddr, user: &str, password: &str, extra: &[&str]) -> Output {
    let bin = doze_control::mariadb::find_binary("mariadb").expect("mariadb client installed");
    tokio::process::Command::new(bin)
        .arg("--no-defaults")
        .arg(format!("--host={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .arg("--protocol=TCP")
        .arg(format!("--user={user}"))
        .arg(format!("--password={password}"))
        .args(["--batch", "--skip-column-names"])
        .args(extra)
        .output()
        .await
        .expect("run mariadb client")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

/// Runs a client program (`what` names it in the failure), asserts it succeeded and returns
/// its trimmed stdout.
async fn run_client(what: &str, command: &mut tokio::process::Command) -> String {
    let out = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {what} (it comes from .ci/install-deps): {e}"));
    assert!(
        out.status.success(),
        "{what} client failed (drivers come from .ci/install-deps): {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

/// Runs `source`, a Java program whose public class is `class_name`, with MariaDB Connector/J
/// (Debian's libmariadb-java, installed by .ci/install-deps) on the class path, through the
/// JDK's single-file launcher; its stdout.
pub async fn java_client(class_name: &str, source: &str) -> String {
    const JAR: &str = "/usr/share/java/mariadb-java-client.jar";
    assert!(
        std::path::Path::new(JAR).exists(),
        "{JAR} is missing: run .ci/install-deps (Debian package libmariadb-java)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(format!("{class_name}.java"));
    std::fs::write(&file, source).expect("write the Java source");
    run_client(
        "java",
        tokio::process::Command::new("java")
            .arg("-cp")
            .arg(JAR)
            .arg(&file),
    )
    .await
}

/// Runs `script` with Node.js and the mysql2 driver (npm, pinned; `.ci/install-deps` puts it
/// in target/tools/node) on `NODE_PATH`; its stdout.
pub async fn node_client(script: &str) -> String {
    let modules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/tools/node/node_modules"
    );
    assert!(
        std::path::Path::new(modules).join("mysql2").exists(),
        "{modules}/mysql2 is missing: run .ci/install-deps (npm install mysql2)"
    );
    run_client(
        "node",
        tokio::process::Command::new("node")
            .arg("-e")
            .arg(script)
            .env("NODE_PATH", modules),
    )
    .await
}

/// Runs a Python client script (PyMySQL / mysql-connector-python, installed by
/// `.ci/install-deps`), asserts it succeeded and returns its trimmed stdout.
pub async fn python_client(script: &str) -> String {
    run_client(
        "python3",
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script),
    )
    .await
}
