//! `doze serve --driver kubernetes` end to end: the binary, its admin API and real clients,
//! against the test kit's fake Kubernetes API server whose fake kubelet runs a real mariadbd
//! per pod. No real cluster runs here.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use doze_control::testkit::kube::FakeCluster;
use doze_control::testkit::scratch_dir;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

const TOKEN: &str = "k8s-test-token-0123456789";

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

/// One admin API call: (status, JSON body).
fn api(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

struct Doze {
    child: Child,
    admin: u16,
    proxy: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Doze {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn serve(cluster: &FakeCluster) -> Doze {
    let dir = scratch_dir("doze-k8s-serve-").unwrap();
    let (admin, proxy) = (free_port(), free_port());
    let child = Command::new(doze())
        .args(["serve", "--driver", "kubernetes", "--namespace", "tenants"])
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .arg("--proxy-listen")
        .arg(format!("127.0.0.1:{proxy}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--db-dsn")
        .arg(format!("sqlite://{}/state.db", dir.path().display()))
        .args(["--wake-timeout", "30s", "--compute-image", "mariadb:11.8"])
        .env("DOZE_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let doze = Doze {
        child,
        admin,
        proxy,
        _dir: dir,
    };
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
            && api(admin, "GET", "/healthz", None).0 == 200
        {
            return doze;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("doze serve --driver kubernetes did not come up");
}

/// A project with role `app` and a compute; returns (project id, compute id).
fn project(doze: &Doze, name: &str, compute_config: Value) -> (String, String) {
    let (status, p) = api(
        doze.admin,
        "POST",
        "/api/v1/projects",
        Some(json!({"name": name})),
    );
    assert_eq!(status, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_owned();
    let (status, r) = api(
        doze.admin,
        "POST",
        &format!("/api/v1/projects/{id}/roles"),
        Some(json!({"name": "app", "password": "app-password-1"})),
    );
    assert_eq!(status, 201, "{r}");
    let (status, c) = api(
        doze.admin,
        "POST",
        &format!("/api/v1/projects/{id}/compute"),
        Some(json!({"config": compute_config})),
    );
    assert_eq!(status, 201, "{c}");
    (id, c["id"].as_str().unwrap().to_owned())
}

fn opts(doze: &Doze, project: &str) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(doze.proxy)
        .prefer_socket(false)
        .user(Some(format!("{project}.app")))
        .pass(Some("app-password-1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_wakes_a_pod_through_doze_and_gets_rows() {
    let cluster = FakeCluster::start().await.unwrap();
    let doze = serve(&cluster);
    let (id, compute_id) = project(&doze, "shop", json!({"resources": {"memory": "256Mi"}}));
    assert!(
        cluster
            .get("pods", "tenants", &format!("doze-{id}"))
            .is_none()
    );

    let mut conn = mysql_async::Conn::new(opts(&doze, "shop")).await.unwrap();
    conn.query_drop("CREATE DATABASE app").await.unwrap();
    conn.query_drop("CREATE TABLE app.t (v INT PRIMARY KEY)")
        .await
        .unwrap();
    conn.query_drop("INSERT INTO app.t VALUES (1), (2), (3)")
        .await
        .unwrap();
    let sum: Option<i64> = conn.query_first("SELECT SUM(v) FROM app.t").await.unwrap();
    assert_eq!(sum, Some(6));
    conn.disconnect().await.unwrap();
    let pod = cluster
        .get("pods", "tenants", &format!("doze-{id}"))
        .unwrap();
    assert_eq!(pod["status"]["phase"], "Running");

    // Suspend through the API: the pod goes, the rows stay on the claim.
    let (status, body) = api(
        doze.admin,
        "POST",
        &format!("/api/v1/compute/{compute_id}/suspend"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        cluster
            .get("pods", "tenants", &format!("doze-{id}"))
            .is_none()
    );
    let mut conn = mysql_async::Conn::new(opts(&doze, "shop")).await.unwrap();
    let sum: Option<i64> = conn.query_first("SELECT SUM(v) FROM app.t").await.unwrap();
    assert_eq!(sum, Some(6));
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_and_scheduling_failures_reach_the_client_as_an_err_with_the_reason() {
    let cluster = FakeCluster::start().await.unwrap();
    let doze = serve(&cluster);
    project(
        &doze,
        "bad-image",
        json!({"image": "registry.invalid/nope:1"}),
    );
    project(&doze, "too-big", json!({"resources": {"cpu": "64"}}));
    for (name, reason) in [
        ("bad-image", "ErrImagePull"),
        ("too-big", "Insufficient cpu"),
    ] {
        let err = mysql_async::Conn::new(opts(&doze, name)).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(reason), "{name}: {msg}");
        assert!(
            matches!(err, mysql_async::Error::Server(_)),
            "a MySQL ERR, not a dropped connection: {err:?}"
        );
    }
}
