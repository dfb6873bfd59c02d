//! `doze serve --driver kubernetes` end to end: the binary, its admin API and real clients,
//! against the test kit's fake Kubernetes API server whose fake kubelet runs a real mariadbd
//! per pod. No real cluster runs here.
#![allow(clippy::unwrap_used)]

use doze_control::testkit::kube::FakeCluster;
use doze_control::testkit::scratch_dir;
use mysql_async::prelude::Queryable;
use serde_json::json;

mod binary;

use binary::Doze;

fn serve(cluster: &FakeCluster, dir: &std::path::Path) -> Doze {
    Doze::serve(&[
        "--driver".into(),
        "kubernetes".into(),
        "--namespace".into(),
        "tenants".into(),
        format!("--kubeconfig={}", cluster.kubeconfig_path().display()),
        format!("--data-dir={}", dir.display()),
        format!("--db-dsn=sqlite://{}/state.db", dir.display()),
        "--wake-timeout=30s".into(),
        "--compute-image=mariadb:11.8".into(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_wakes_a_pod_through_doze_and_gets_rows() {
    let cluster = FakeCluster::start().await.unwrap();
    let dir = scratch_dir("doze-k8s-serve-").unwrap();
    let doze = serve(&cluster, dir.path());
    let (id, compute_id) =
        doze.project("shop", json!({}), json!({"resources": {"memory": "256Mi"}}));
    assert!(
        cluster
            .get("pods", "tenants", &format!("doze-{id}"))
            .is_none()
    );

    let mut conn = mysql_async::Conn::new(doze.opts("shop")).await.unwrap();
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
    let (status, body) = binary::api(
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
    let mut conn = mysql_async::Conn::new(doze.opts("shop")).await.unwrap();
    let sum: Option<i64> = conn.query_first("SELECT SUM(v) FROM app.t").await.unwrap();
    assert_eq!(sum, Some(6));
    conn.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_and_scheduling_failures_reach_the_client_as_an_err_with_the_reason() {
    let cluster = FakeCluster::start().await.unwrap();
    let dir = scratch_dir("doze-k8s-serve-").unwrap();
    let doze = serve(&cluster, dir.path());
    doze.project(
        "bad-image",
        json!({}),
        json!({"image": "registry.invalid/nope:1"}),
    );
    doze.project("too-big", json!({}), json!({"resources": {"cpu": "64"}}));
    for (name, reason) in [
        ("bad-image", "ErrImagePull"),
        ("too-big", "Insufficient cpu"),
    ] {
        let err = mysql_async::Conn::new(doze.opts(name)).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(reason), "{name}: {msg}");
        assert!(
            matches!(err, mysql_async::Error::Server(_)),
            "a MySQL ERR, not a dropped connection: {err:?}"
        );
    }
}
