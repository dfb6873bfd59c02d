//! The Kubernetes driver end to end, against the test kit's fake API server (real REST and
//! watch semantics) whose fake kubelet runs a real mariadbd per pod on the pod's own loopback
//! address, with the data directory on the PVC's directory. No real cluster runs here.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use doze_control::activity::Activity;
use doze_control::store::ComputeState;
use doze_control::testkit::kube::FakeCluster;
use doze_control::{ControlConfig, ControlPlane, DriverKind};
use mysql_async::prelude::Queryable;
use serde_json::json;

const NS: &str = "default";

struct K8sEnv {
    cluster: FakeCluster,
    cfg: ControlConfig,
    plane: Arc<ControlPlane>,
    _dir: tempfile::TempDir,
}

async fn k8s_env() -> K8sEnv {
    let cluster = FakeCluster::start().await.expect("fake cluster");
    let dir = doze_control::testkit::scratch_dir("doze-k8s-").expect("tempdir");
    let mut cfg = config(&dir);
    cfg.driver = DriverKind::Kubernetes;
    cfg.kubernetes.kubeconfig = Some(cluster.kubeconfig_path());
    cfg.kubernetes.namespace = NS.into();
    cfg.kubernetes.image = "mariadb:11.8".into();
    cfg.stop_timeout = Duration::from_secs(20);
    let plane = ControlPlane::start(cfg.clone(), Activity::new())
        .await
        .expect("control plane with the kubernetes driver");
    K8sEnv {
        cluster,
        cfg,
        plane,
        _dir: dir,
    }
}

impl K8sEnv {
    /// A project with a role `app` and a compute with `config`; returns (project id, compute id).
    async fn project(&self, name: &str, config: serde_json::Value) -> (String, String) {
        let p = self
            .plane
            .create_project(name, json!({}))
            .await
            .expect("project");
        self.plane
            .create_role(&p.id, "app", "app-password-1")
            .await
            .expect("role");
        let c = self
            .plane
            .create_compute(&p.id, config)
            .await
            .expect("compute");
        (p.id, c.id)
    }

    fn api_calls(&self) -> Vec<String> {
        self.cluster
            .requests()
            .iter()
            .filter(|r| !r.watch)
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

/// What doze's Role (deploy/kubernetes/base/rbac.yaml) allows: (resource, verb) pairs.
fn role_allows() -> std::collections::HashSet<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/base/rbac.yaml");
    let text = std::fs::read_to_string(&path).expect("rbac.yaml");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("yaml");
    let role = docs.iter().find(|d| d["kind"] == "Role").expect("a Role");
    let mut allowed = std::collections::HashSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        for resource in rule["resources"].as_array().expect("resources") {
            for verb in rule["verbs"].as_array().expect("verbs") {
                allowed.insert((
                    resource.as_str().expect("resource").to_owned(),
                    verb.as_str().expect("verb").to_owned(),
                ));
            }
        }
    }
    allowed
}

/// Every request the driver made must be one doze's Role allows: the RBAC in deploy/ is the
/// driver's, checked against what it really does.
fn assert_rbac_allows(cluster: &FakeCluster) {
    let allowed = role_allows();
    for r in cluster.requests() {
        let parts: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
        let (resource, named) = match parts.as_slice() {
            ["api", "v1", "namespaces", _, kind] => (kind.to_string(), false),
            ["api", "v1", "namespaces", _, kind, _name] => (kind.to_string(), true),
            ["api", "v1", "namespaces", _, kind, _name, sub] => (format!("{kind}/{sub}"), true),
            _ => panic!(
                "a request outside the namespaced core API: {} {}",
                r.method, r.path
            ),
        };
        let verb = match (r.method.as_str(), named, r.watch) {
            ("GET", _, true) => "watch",
            ("GET", false, false) => "list",
            ("GET", true, false) => "get",
            ("POST", _, _) => "create",
            ("DELETE", _, _) => "delete",
            ("PATCH", _, _) => "patch",
            ("PUT", _, _) => "update",
            (m, _, _) => panic!("unexpected method {m}"),
        };
        assert!(
            allowed.contains(&(resource.clone(), verb.to_owned())),
            "the driver made `{} {}?{}` ({verb} {resource}), which doze's Role does not allow",
            r.method,
            r.path,
            r.query
        );
    }
}

fn pod(project: &str) -> String {
    format!("doze-{project}")
}

async fn rows(address: &str) -> Vec<String> {
    let mut conn = connect(address, "app", "app-password-1")
        .await
        .expect("connect as the role");
    let rows: Vec<String> = conn
        .query("SELECT v FROM app.t ORDER BY v")
        .await
        .expect("select");
    conn.disconnect().await.ok();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_suspend_and_wake_again_keeps_the_rows_on_the_volume() {
    let env = k8s_env().await;
    let (project, compute) = env
        .project("shop", json!({"resources": {"memory": "256Mi"}}))
        .await;
    // Creating the compute made its Secret and PVC, and no pod.
    assert!(
        env.cluster
            .get("secrets", NS, &format!("doze-{project}-admin"))
            .is_some()
    );
    assert!(
        env.cluster
            .get("persistentvolumeclaims", NS, &pod(&project))
            .is_some()
    );
    assert!(env.cluster.get("pods", NS, &pod(&project)).is_none());

    env.cluster.clear_requests();
    let info = env.plane.wake(&project).await.expect("wake");
    assert_eq!(
        env.api_calls(),
        vec![format!("POST /api/v1/namespaces/{NS}/pods")],
        "a wake is one API request (plus the watch)"
    );
    let mut conn = connect(&info.address, "app", "app-password-1")
        .await
        .expect("the role logs in to the pod");
    conn.query_drop("CREATE DATABASE app").await.expect("db");
    conn.query_drop("CREATE TABLE app.t (v VARCHAR(10) PRIMARY KEY)")
        .await
        .expect("table");
    conn.query_drop("INSERT INTO app.t VALUES ('kept')")
        .await
        .expect("insert");
    conn.disconnect().await.ok();
    let pod_json = env.cluster.get("pods", NS, &pod(&project)).expect("pod");
    assert_eq!(pod_json["metadata"]["labels"]["doze.io/compute"], compute);

    env.plane.suspend_compute(&compute).await.expect("suspend");
    assert!(
        env.cluster.get("pods", NS, &pod(&project)).is_none(),
        "the pod is gone"
    );
    assert!(
        env.cluster
            .get("persistentvolumeclaims", NS, &pod(&project))
            .is_some(),
        "the PVC stays"
    );
    let c = env.plane.compute(&compute).await.expect("compute");
    assert_eq!(c.state, ComputeState::Suspended);

    let info = env.plane.wake(&project).await.expect("wake again");
    assert_eq!(rows(&info.address).await, vec!["kept".to_owned()]);

    // Deleting the compute removes all three objects.
    env.plane.suspend_compute(&compute).await.expect("suspend");
    env.plane.delete_compute(&compute).await.expect("delete");
    assert!(env.cluster.get("pods", NS, &pod(&project)).is_none());
    assert!(
        env.cluster
            .get("secrets", NS, &format!("doze-{project}-admin"))
            .is_none()
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        while env
            .cluster
            .get("persistentvolumeclaims", NS, &pod(&project))
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the PVC is deleted");
    assert_rbac_allows(&env.cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_500_makes_one_pod_and_a_restart_adopts_it() {
    let env = k8s_env().await;
    let (project, compute) = env.project("herd", json!({})).await;
    env.cluster.clear_requests();
    let mut wakes = Vec::new();
    for _ in 0..500 {
        let plane = Arc::clone(&env.plane);
        let project = project.clone();
        wakes.push(tokio::spawn(async move { plane.wake(&project).await }));
    }
    let mut addresses = std::collections::HashSet::new();
    for w in wakes {
        addresses.insert(w.await.expect("join").expect("wake").address);
    }
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    let creates = env
        .api_calls()
        .iter()
        .filter(|c| c.starts_with("POST") && c.ends_with("/pods"))
        .count();
    assert_eq!(
        creates,
        1,
        "500 clients, one pod create: {:?}",
        env.api_calls()
    );
    let address = addresses.into_iter().next().expect("address");

    // doze stops (a rolling update): the pod keeps running, the next process adopts it with
    // one LIST and no further call.
    env.plane.shutdown().await;
    assert!(
        env.cluster.get("pods", NS, &pod(&project)).is_some(),
        "pods outlive doze"
    );
    env.cluster.clear_requests();
    let plane = ControlPlane::start(env.cfg.clone(), Activity::new())
        .await
        .expect("restart");
    let c = plane.compute(&compute).await.expect("compute");
    assert_eq!(c.state, ComputeState::Running);
    assert_eq!(c.address.as_deref(), Some(address.as_str()));
    let lists: Vec<String> = env.api_calls();
    assert_eq!(
        lists,
        vec![format!("GET /api/v1/namespaces/{NS}/pods")],
        "startup is one LIST"
    );
    assert_eq!(plane.wake(&project).await.expect("wake").address, address);
    // A role change after the restart reads the password back from the Secret.
    plane
        .create_role(&project, "after", "after-password-1")
        .await
        .expect("role after restart");
    assert!(
        env.api_calls()
            .iter()
            .any(|c| c.starts_with("GET") && c.contains("/secrets/")),
        "{:?}",
        env.api_calls()
    );
    assert_rbac_allows(&env.cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_behind_dozes_back_is_noticed_and_woken_again() {
    let env = k8s_env().await;
    let _scheduler = env.plane.spawn_scheduler();
    let (project, compute) = env.project("evicted", json!({})).await;
    let info = env.plane.wake(&project).await.expect("wake");
    let mut conn = connect(&info.address, "app", "app-password-1")
        .await
        .expect("login");
    conn.query_drop("CREATE DATABASE app").await.expect("db");
    conn.query_drop("CREATE TABLE app.t (v VARCHAR(10) PRIMARY KEY)")
        .await
        .expect("t");
    conn.query_drop("INSERT INTO app.t VALUES ('durable')")
        .await
        .expect("insert");
    conn.disconnect().await.ok();

    // kubectl delete pod: graceful. The watch tells doze; the scheduler's check interval is an
    // hour, so only the watch can make this pass in time.
    env.cluster
        .delete_pod_externally(NS, &pod(&project))
        .await
        .expect("kubectl delete");
    let noticed = Instant::now();
    loop {
        let c = env.plane.compute(&compute).await.expect("compute");
        if c.state == ComputeState::Suspended {
            break;
        }
        assert!(
            noticed.elapsed() < Duration::from_secs(15),
            "not noticed: {:?}",
            c.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = env.plane.compute_events(&compute).await.expect("events");
    assert!(events.iter().any(|e| e.reason == "lost"), "{events:?}");
    let info = env.plane.wake(&project).await.expect("woken again");
    assert_eq!(rows(&info.address).await, vec!["durable".to_owned()]);

    // A lost node: the process is killed and the pod vanishes without a graceful phase.
    env.cluster
        .lose_pod(NS, &pod(&project))
        .await
        .expect("lose the node");
    let noticed = Instant::now();
    while env.plane.compute(&compute).await.expect("compute").state != ComputeState::Suspended {
        assert!(
            noticed.elapsed() < Duration::from_secs(15),
            "lost node not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = env
        .plane
        .wake(&project)
        .await
        .expect("woken after the node loss");
    assert_eq!(rows(&info.address).await, vec!["durable".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_and_unschedulable_pods_fail_the_wake_with_the_reason() {
    let env = k8s_env().await;
    let (bad_image, _) = env
        .project("bad-image", json!({"image": "nope/nope:1"}))
        .await;
    let err = env.plane.wake(&bad_image).await.expect_err("no such image");
    let msg = err.to_string();
    assert!(
        msg.contains("ErrImagePull") || msg.contains("ImagePullBackOff"),
        "{msg}"
    );
    assert!(msg.contains("nope/nope:1"), "{msg}");

    let (too_big, _) = env
        .project("too-big", json!({"resources": {"cpu": "64"}}))
        .await;
    let err = env.plane.wake(&too_big).await.expect_err("unschedulable");
    let msg = err.to_string();
    assert!(
        msg.contains("Unschedulable") && msg.contains("Insufficient cpu"),
        "{msg}"
    );
    // The failed pods were removed: the next wake starts clean.
    for p in [&bad_image, &too_big] {
        tokio::time::timeout(Duration::from_secs(10), async {
            while env.cluster.get("pods", NS, &pod(p)).is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("failed pod removed");
    }
    assert_rbac_allows(&env.cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_reach_the_pod_and_root_has_no_default_password() {
    let env = k8s_env().await;
    let (project, _) = env.project("roles", json!({})).await;
    let info = env.plane.wake(&project).await.expect("wake");
    // A role made while the compute runs is pushed into the pod.
    env.plane
        .create_role(&project, "late", "late-password-1")
        .await
        .expect("role");
    let conn = connect(&info.address, "late", "late-password-1")
        .await
        .expect("late role");
    conn.disconnect().await.ok();
    // No default credential reaches the server from outside the pod.
    for (user, password) in [
        ("root", ""),
        ("root", "root"),
        ("root", "password"),
        ("mysql", ""),
        ("", ""),
    ] {
        assert!(
            connect(&info.address, user, password).await.is_err(),
            "{user}/{password} must not log in"
        );
    }
    // The password is in the Secret only, never in the compute record or its events.
    let secret = env
        .cluster
        .get("secrets", NS, &format!("doze-{project}-admin"))
        .expect("secret");
    let password: k8s_openapi::ByteString =
        serde_json::from_value(secret["data"]["password"].clone()).expect("base64");
    let password = String::from_utf8(password.0).expect("utf8");
    assert_eq!(password.len(), 32);
    let computes = env.plane.store().list_computes().await.expect("computes");
    let recorded = serde_json::to_string(
        &computes
            .iter()
            .map(|c| (&c.config, &c.handle, &c.address))
            .collect::<Vec<_>>(),
    )
    .expect("json");
    assert!(!recorded.contains(&password));
}
