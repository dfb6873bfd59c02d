//! Shared test helpers: a control plane on a temp dir (SQLite or a throwaway PostgreSQL), REST
//! calls through the router in process, MySQL connections as a role.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use doze_control::activity::Activity;
use doze_control::testkit::Postgres;
use doze_control::{ControlConfig, ControlPlane};
use http_body_util::BodyExt;
use mysql_async::prelude::Queryable;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

pub struct Env {
    pub plane: Arc<ControlPlane>,
    pub cfg: ControlConfig,
    pub activity: Arc<Activity>,
    pub dir: TempDir,
    pub pg: Option<Postgres>,
}

pub fn config(dir: &TempDir) -> ControlConfig {
    ControlConfig {
        db_dsn: format!("sqlite://{}/state.db", dir.path().display()),
        data_dir: dir.path().join("data"),
        idle_timeout: Duration::ZERO,
        check_interval: Duration::from_secs(3600),
        wake_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(20),
        ..ControlConfig::default()
    }
}

pub async fn sqlite_env(tweak: impl FnOnce(&mut ControlConfig)) -> Env {
    let dir = doze_control::testkit::scratch_dir("doze-ctl-").expect("tempdir");
    let mut cfg = config(&dir);
    tweak(&mut cfg);
    start(cfg, dir, None).await
}

pub async fn postgres_env(tweak: impl FnOnce(&mut ControlConfig)) -> Env {
    let pg = Postgres::start().await.expect("start postgres");
    let dir = doze_control::testkit::scratch_dir("doze-ctl-").expect("tempdir");
    let mut cfg = config(&dir);
    cfg.db_dsn = pg.dsn();
    tweak(&mut cfg);
    start(cfg, dir, Some(pg)).await
}

async fn start(cfg: ControlConfig, dir: TempDir, pg: Option<Postgres>) -> Env {
    let activity = Activity::new();
    let plane = ControlPlane::start(cfg.clone(), Arc::clone(&activity))
        .await
        .expect("control plane starts");
    Env {
        plane,
        cfg,
        activity,
        dir,
        pg,
    }
}

impl Env {
    /// A project with `config` and a compute; returns (project id, compute id).
    pub async fn project_with_config(&self, name: &str, config: Value) -> (String, String) {
        new_project(&self.plane, name, config).await
    }

    /// A project with a compute and a role; returns (project id, compute id).
    pub async fn project_with_compute(
        &self,
        name: &str,
        role: &str,
        password: &str,
    ) -> (String, String) {
        let (project, compute) = self.project_with_config(name, serde_json::json!({})).await;
        self.plane
            .create_role(&project, role, password)
            .await
            .expect("role");
        (project, compute)
    }
}

/// A project with `config` and a compute on `plane`; returns (project id, compute id).
pub async fn new_project(plane: &ControlPlane, name: &str, config: Value) -> (String, String) {
    let p = plane.create_project(name, config).await.expect("project");
    let c = plane
        .create_compute(&p.id, serde_json::json!({}))
        .await
        .expect("compute");
    (p.id, c.id)
}

/// Calls the router in process: (status, JSON body or Null).
pub async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(
            body.map(|b| Body::from(b.to_owned()))
                .unwrap_or_else(Body::empty),
        )
        .expect("request");
    raw(router, req).await
}

pub async fn raw(router: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router.clone().oneshot(req).await.expect("router answers");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, value)
}

/// Asserts the error format and code.
pub fn assert_error(resp: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(resp.0, status, "unexpected status, body {}", resp.1);
    assert_eq!(resp.1["error"]["code"], code, "unexpected body {}", resp.1);
    assert!(
        resp.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without message: {}",
        resp.1
    );
}

/// A TCP connection to `addr` as `user`.
pub async fn connect(
    addr: &str,
    user: &str,
    password: &str,
) -> Result<mysql_async::Conn, mysql_async::Error> {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_owned())
        .tcp_port(port.parse().expect("port"))
        .prefer_socket(false)
        .user(Some(user.to_owned()))
        .pass(Some(password.to_owned()));
    mysql_async::Conn::new(opts).await
}

/// `SELECT 1` through `addr` as `user`.
pub async fn select_one(addr: &str, user: &str, password: &str) -> i64 {
    let mut conn = connect(addr, user, password)
        .await
        .expect("connect as role");
    let v: Option<i64> = conn.query_first("SELECT 1").await.expect("select 1");
    conn.disconnect().await.ok();
    v.expect("a row")
}

/// Counts mariadbd processes whose command line names `datadir`.
pub fn mariadbd_on(datadir: &std::path::Path) -> usize {
    let needle = format!("--datadir={}", datadir.display());
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
                == Some('Z');
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            !zombie && cmd.contains("mariadbd") && cmd.contains(&needle)
        })
        .count()
}

/// Kills every mariadbd left under `root` (a failed test must not leak servers).
pub fn kill_all_under(root: &std::path::Path) {
    doze_control::testkit::kill_mariadbd_under(root);
}

/// Kills every mariadbd under its directory when dropped, panics included.
pub struct KillOnDrop(pub std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_all_under(&self.0);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        kill_all_under(&self.plane.config().data_dir);
    }
}

/// The datadir of a project under a control plane.
pub fn datadir_of(plane: &ControlPlane, project_id: &str) -> std::path::PathBuf {
    plane
        .config()
        .data_dir
        .join("projects")
        .join(project_id)
        .join("data")
}

/// The project's directory under a control plane.
pub fn project_dir_of(plane: &ControlPlane, project_id: &str) -> std::path::PathBuf {
    plane.config().data_dir.join("projects").join(project_id)
}

/// A root session on a running compute, as doze opens one: over the unix socket, with the
/// password only doze holds.
pub async fn root_of(plane: &ControlPlane, project_id: &str) -> mysql_async::Conn {
    let dir = project_dir_of(plane, project_id);
    let password = std::fs::read_to_string(dir.join("admin.secret")).expect("admin secret");
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("localhost")
        .socket(Some(
            dir.join("data")
                .join("mariadbd.sock")
                .to_string_lossy()
                .into_owned(),
        ))
        .prefer_socket(true)
        .user(Some("root"))
        .pass(Some(password.trim().to_owned()));
    mysql_async::Conn::new(opts)
        .await
        .expect("root over the socket")
}
