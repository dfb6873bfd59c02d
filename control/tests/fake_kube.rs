//! The fake Kubernetes API server and kubelet (`testkit::kube`) against kube-rs's real client
//! and kube-runtime's watcher: what the Kubernetes driver's tests rely on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use doze_control::testkit::kube::FakeCluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{wait::await_condition, watcher};
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

const PASSWORD: &str = "s3cret pass'word";

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

fn pod(name: &str, image: &str, cpu: &str, args: &[&str]) -> Pod {
    obj(json!({
        "metadata": {"name": name, "labels": {"app": "doze", "pod": name}},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "mariadb", "image": image, "args": args,
                "env": [{"name": "MARIADB_ROOT_PASSWORD",
                         "valueFrom": {"secretKeyRef": {"name": "db-root", "key": "password"}}}],
                "ports": [{"name": "mysql", "containerPort": 3306}],
                "resources": {"requests": {"cpu": cpu, "memory": "256Mi"}},
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/mysql"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        }
    }))
}

fn secret(name: &str, labels: Value) -> Secret {
    obj(json!({"metadata": {"name": name, "labels": labels}, "stringData": {"password": PASSWORD}}))
}

fn pvc(name: &str) -> PersistentVolumeClaim {
    obj(
        json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}}}}),
    )
}

async fn wait_pod(
    api: &Api<Pod>,
    name: &str,
    what: &str,
    cond: impl Fn(&Pod) -> bool + Send + 'static,
) -> Pod {
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(api.clone(), name, move |p: Option<&Pod>| {
            p.is_some_and(&cond)
        }),
    )
    .await;
    waited
        .unwrap_or_else(|_| panic!("pod {name}: timed out waiting for {what}"))
        .expect("watch")
        .expect("pod")
}

fn ready(p: &Pod) -> bool {
    let s = p.status.as_ref();
    s.and_then(|s| s.pod_ip.as_ref()).is_some()
        && s.and_then(|s| s.phase.as_deref()) == Some("Running")
        && s.and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

async fn connect(ip: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(ip.to_owned())
        .tcp_port(3306)
        .prefer_socket(false)
        .user(Some("root"))
        .pass(Some(PASSWORD));
    for _ in 0..100 {
        if let Ok(c) = mysql_async::Conn::new(opts.clone()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mysql_async::Conn::new(opts)
        .await
        .expect("connect as root@'%' to the pod IP")
}

fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_mariadb_on_a_claim_that_outlives_it() {
    let cluster = FakeCluster::start().await.expect("fake cluster");
    let client = kube::Client::try_from(cluster.kube_config()).expect("client");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(client.clone());
    let pp = PostParams::default();

    // A watcher over the pods, from the start.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let watching = tokio::spawn(watcher(pods.clone(), watcher::Config::default()).for_each(
        move |ev| {
            let line = match ev {
                Ok(watcher::Event::Apply(p)) => {
                    format!("apply {}", p.metadata.name.unwrap_or_default())
                }
                Ok(watcher::Event::Delete(p)) => {
                    format!("delete {}", p.metadata.name.unwrap_or_default())
                }
                Ok(watcher::Event::InitDone) => "init-done".to_owned(),
                Ok(_) => String::new(),
                Err(e) => format!("error {e}"),
            };
            log.lock().expect("lock").push(line);
            futures::future::ready(())
        },
    ));

    secrets
        .create(&pp, &secret("db-root", json!({})))
        .await
        .expect("secret");
    let claim = pvcs.create(&pp, &pvc("data")).await.expect("pvc");
    assert_eq!(
        claim.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    let args = [
        "--innodb-buffer-pool-size=32M",
        "--max-allowed-packet=64M",
        "--skip-symbolic-links",
    ];
    let created = pods
        .create(&pp, &pod("db", "mariadb:11.4", "500m", &args))
        .await
        .expect("pod");
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    let bound = pvcs.get("data").await.expect("pvc");
    assert_eq!(bound.status.and_then(|s| s.phase).as_deref(), Some("Bound"));

    let running = wait_pod(&pods, "db", "Ready", ready).await;
    let ip = running.status.and_then(|s| s.pod_ip).expect("pod IP");
    assert!(ip.starts_with("127.") && ip != "127.0.0.1", "{ip}");
    assert!(cluster.container_started_at("default", "db").is_some());
    let mut conn = connect(&ip).await;
    conn.query_drop(
        "CREATE DATABASE app; CREATE TABLE app.t (v TEXT); INSERT INTO app.t VALUES ('kept')",
    )
    .await
    .expect("write");
    let packet: u64 = conn
        .query_first("SELECT @@max_allowed_packet")
        .await
        .expect("q")
        .expect("row");
    assert_eq!(packet, 64 << 20);
    drop(conn);

    // The logs endpoint serves mariadbd's error log.
    let lines = pods
        .logs(
            "db",
            &LogParams {
                tail_lines: Some(200),
                ..Default::default()
            },
        )
        .await
        .expect("logs");
    assert!(lines.contains("ready for connections"), "{lines}");

    // Graceful deletion: MODIFIED with deletionTimestamp, then DELETED once mariadbd stopped.
    let mut raw = pods
        .watch(
            &WatchParams::default().fields("metadata.name=db"),
            &running.metadata.resource_version.expect("rv"),
        )
        .await
        .expect("watch")
        .boxed();
    let deleted = pods
        .delete(
            "db",
            &DeleteParams {
                grace_period_seconds: Some(30),
                ..Default::default()
            },
        )
        .await
        .expect("delete");
    let terminating = deleted
        .left()
        .expect("a pod being deleted gracefully comes back as the object");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let mut types = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(60), raw.next())
        .await
        .expect("events")
    {
        match ev.expect("event") {
            WatchEvent::Modified(p) => types.push(format!(
                "MODIFIED {}",
                p.metadata.deletion_timestamp.is_some()
            )),
            WatchEvent::Deleted(_) => {
                types.push("DELETED".to_owned());
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => types.push(format!("{other:?}")),
        }
    }
    assert_eq!(
        types.first().map(String::as_str),
        Some("MODIFIED true"),
        "{types:?}"
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("DELETED"),
        "{types:?}"
    );
    assert!(
        crate_pids(&cluster).is_empty(),
        "mariadbd still runs after DELETED"
    );

    // A new pod on the same claim finds the row.
    pods.create(&pp, &pod("db", "mariadb:11.4", "500m", &args))
        .await
        .expect("recreate");
    let again = wait_pod(&pods, "db", "Ready again", ready).await;
    let mut conn = connect(&again.status.and_then(|s| s.pod_ip).expect("ip")).await;
    let v: Option<String> = conn.query_first("SELECT v FROM app.t").await.expect("read");
    assert_eq!(v.as_deref(), Some("kept"));
    drop(conn);

    // The claim is protected while the pod uses it.
    let dir = cluster.pvc_dir("default", "data").expect("pvc dir");
    pvcs.delete("data", &DeleteParams::default())
        .await
        .expect("delete pvc");
    assert!(
        cluster
            .get("persistentvolumeclaims", "default", "data")
            .is_some()
    );
    cluster.lose_pod("default", "db").await.expect("lose node");
    assert!(
        cluster
            .get("persistentvolumeclaims", "default", "data")
            .is_none()
    );
    assert!(!dir.exists());

    tokio::time::sleep(Duration::from_millis(300)).await;
    watching.abort();
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.contains(&"init-done".to_owned()), "{seen:?}");
    assert!(seen.contains(&"apply db".to_owned()), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|l| *l == "delete db").count(),
        2,
        "{seen:?}"
    );
    assert!(!seen.iter().any(|l| l.starts_with("error")), "{seen:?}");
    // The watcher did one paginated LIST, then watched with bookmarks.
    let reqs = cluster.requests();
    let lists = reqs.iter().filter(|r| {
        r.method == "GET"
            && !r.watch
            && r.path == "/api/v1/namespaces/default/pods"
            && r.param("fieldSelector").is_none()
    });
    assert_eq!(
        lists.map(|r| r.param("limit")).collect::<Vec<_>>(),
        [Some("500".to_owned())]
    );
    let first_watch = reqs
        .iter()
        .find(|r| r.watch && r.param("fieldSelector").is_none())
        .expect("watch request");
    assert_eq!(
        first_watch.param("allowWatchBookmarks").as_deref(),
        Some("true")
    );
    let root = cluster.root().to_path_buf();
    drop(cluster);
    assert!(doze_control::testkit::mariadbd_pids_under(&root).is_empty());
}

fn crate_pids(cluster: &FakeCluster) -> Vec<i32> {
    doze_control::testkit::mariadbd_pids_under(cluster.root())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_semantics_and_kubelet_failures() {
    let cluster = FakeCluster::start().await.expect("fake cluster");
    let client = kube::Client::try_from(cluster.kube_config()).expect("client");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(client.clone());
    let pp = PostParams::default();

    // The kubeconfig file leads kube-rs to the same server.
    let kubeconfig =
        kube::config::Kubeconfig::read_from(cluster.kubeconfig_path()).expect("kubeconfig");
    let from_file = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    assert_eq!(
        from_file.cluster_url.to_string().trim_end_matches('/'),
        cluster.url()
    );
    assert_eq!(from_file.default_namespace, "default");

    // 409, 404, 422.
    secrets
        .create(&pp, &secret("db-root", json!({"app": "x"})))
        .await
        .expect("secret");
    let (code, reason) = api_code(
        secrets
            .create(&pp, &secret("db-root", json!({})))
            .await
            .expect_err("409"),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    let (code, reason) = api_code(pods.get("missing").await.expect_err("404"));
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let (code, _) = api_code(
        secrets
            .create(&pp, &secret("", json!({})))
            .await
            .expect_err("422"),
    );
    assert_eq!(code, 422);
    let stored = secrets.get("db-root").await.expect("get");
    assert_eq!(
        stored.data.expect("data")["password"].0,
        PASSWORD.as_bytes()
    );

    // Label selectors and pagination.
    secrets
        .create(&pp, &secret("b", json!({"app": "x"})))
        .await
        .expect("b");
    secrets
        .create(&pp, &secret("c", json!({"app": "y"})))
        .await
        .expect("c");
    let page = secrets
        .list(&ListParams::default().labels("app=x").limit(1))
        .await
        .expect("page 1");
    assert_eq!(page.items.len(), 1);
    let token = page.metadata.continue_.clone().expect("continue");
    secrets
        .create(&pp, &secret("bb", json!({"app": "x"})))
        .await
        .expect("bb, after the snapshot");
    let page2 = secrets
        .list(
            &ListParams::default()
                .labels("app=x")
                .limit(1)
                .continue_token(&token),
        )
        .await
        .expect("page 2");
    let names: Vec<_> = page
        .items
        .iter()
        .chain(&page2.items)
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, ["b", "db-root"]);
    assert!(page2.metadata.continue_.is_none(), "the snapshot had two");
    assert_eq!(
        page2.metadata.resource_version,
        page.metadata.resource_version
    );
    let not_x = secrets
        .list(&ListParams::default().labels("app!=x"))
        .await
        .expect("!=");
    assert_eq!(not_x.items.len(), 1);
    let set = secrets
        .list(&ListParams::default().labels("app in (x,y),!missing"))
        .await
        .expect("in");
    assert_eq!(set.items.len(), 4);

    // A compacted history answers 410 to an old resourceVersion.
    let old = page.metadata.resource_version.expect("rv");
    cluster.compact_history();
    let mut stale = secrets
        .watch(&WatchParams::default(), &old)
        .await
        .expect("watch")
        .boxed();
    match stale.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }

    // Kubelet failures.
    pvcs.create(&pp, &pvc("data")).await.expect("pvc");
    pods.create(&pp, &pod("badimage", "nope/nope:1", "100m", &[]))
        .await
        .expect("pod");
    let p = wait_pod(&pods, "badimage", "ErrImagePull", |p| {
        waiting_reason(p).as_deref() == Some("ErrImagePull")
    })
    .await;
    let msg = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c[0].state.clone())
        .and_then(|s| s.waiting)
        .and_then(|w| w.message);
    assert!(msg.is_some_and(|m| m.contains("docker.io/nope/nope:1")));
    pods.create(&pp, &pod("huge", "mariadb:11.4", "64", &[]))
        .await
        .expect("pod");
    let p = wait_pod(&pods, "huge", "Unschedulable", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                })
            })
    })
    .await;
    assert!(p.spec.and_then(|s| s.node_name).is_none());
    let unsched = cluster.get("pods", "default", "huge").expect("pod");
    assert!(unsched.to_string().contains("Insufficient cpu"));
    // An unscheduled pod goes at once.
    pods.delete("huge", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(cluster.get("pods", "default", "huge").is_none());

    // A bad option: CrashLoopBackOff, restarts, the previous log tells why.
    pods.create(
        &pp,
        &pod(
            "crash",
            "registry.test/mariadb:11.4",
            "100m",
            &["--no-such-option=1"],
        ),
    )
    .await
    .expect("pod");
    wait_pod(&pods, "crash", "CrashLoopBackOff", |p| {
        waiting_reason(p).as_deref() == Some("CrashLoopBackOff")
    })
    .await;
    let prev = pods
        .logs(
            "crash",
            &LogParams {
                previous: true,
                ..Default::default()
            },
        )
        .await;
    let current = pods
        .logs("crash", &LogParams::default())
        .await
        .expect("logs");
    let text = prev.unwrap_or(current);
    assert!(text.contains("no-such-option"), "{text}");

    // The fake records requests.
    let reqs = cluster.requests();
    assert!(
        reqs.iter()
            .any(|r| r.method == "DELETE" && r.path.ends_with("/pods/huge"))
    );
    assert!(reqs.iter().any(|r| {
        r.method == "POST"
            && r.body
                .as_ref()
                .is_some_and(|b| b["metadata"]["name"] == "crash")
    }));
    cluster.clear_requests();
    assert!(cluster.requests().is_empty());
}
