//! Request-level tests of the Kubernetes driver, in the manner of kube-rs's controller-rs
//! `fixtures.rs`: the driver talks to a `tower_test` mock, and an API-server verifier asserts the
//! method, path, query and body of every call and answers as the API server would.
//!
//! The pod watch (LIST then WATCH) is answered by the verifier too: a streaming body the test
//! pushes watch events into, as the API server's watch stream does.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use doze_control::driver::kubernetes::{AdminTls, KubernetesConfig, KubernetesDriver};
use doze_control::driver::{ComputeDriver, ComputeSpec};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

type RespBody = BoxBody<Bytes, std::io::Error>;
type Handle = tower_test::mock::Handle<Request<Body>, Response<RespBody>>;
type Answer = tokio::sync::oneshot::Sender<Response<RespBody>>;
type Params = HashMap<String, String>;

const NS: &str = "tenants";
const PROJECT: &str = "5b0c4b7e-1111-4222-8333-944455556666";
const COMPUTE: &str = "c0ffee00-1111-4222-8333-944455556666";

fn full(status: StatusCode, body: Value) -> Response<RespBody> {
    let bytes = Bytes::from(serde_json::to_vec(&body).expect("json"));
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(bytes)
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Response<RespBody> {
    full(
        StatusCode::from_u16(code).expect("code"),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// A request as the API server received it.
#[derive(Debug)]
struct Call {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    body: Option<Value>,
}

async fn call_of(req: Request<Body>) -> Call {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let query = parts
        .uri
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default();
    Call {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query,
        body: (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("JSON body")),
    }
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(v: &str) -> String {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(n) = u8::from_str_radix(&v[i + 1..i + 3], 16)
        {
            out.push(n);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).expect("utf8")
}

/// The fake API server's side: answers the watch itself and hands every other call to the
/// test, in order.
struct Verifier {
    calls: mpsc::UnboundedReceiver<(Call, Answer)>,
    events: mpsc::UnboundedSender<Value>,
    watch_params: tokio::sync::watch::Receiver<Option<(Params, Params)>>,
}

impl Verifier {
    fn spawn(mut handle: Handle) -> Verifier {
        let (call_tx, calls) = mpsc::unbounded_channel();
        let (events, mut event_rx) = mpsc::unbounded_channel::<Value>();
        let (params_tx, watch_params) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            let mut list_query = None;
            let mut watch_sender: Option<mpsc::UnboundedSender<Bytes>> = None;
            loop {
                tokio::select! {
                    next = handle.next_request() => {
                        let Some((req, respond)) = next else { break };
                        let call = call_of(req).await;
                        let pods = format!("/api/v1/namespaces/{NS}/pods");
                        if call.method == Method::GET && call.path == pods {
                            if call.query.get("watch").map(String::as_str) == Some("true") {
                                let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
                                watch_sender = Some(tx);
                                let stream = futures::stream::unfold(rx, |mut rx| async move {
                                    rx.recv().await.map(|b| (Ok::<_, std::io::Error>(hyper::body::Frame::data(b)), rx))
                                });
                                let _ = params_tx.send(Some((list_query.clone().unwrap_or_default(), call.query.clone())));
                                respond.send_response(
                                    Response::builder()
                                        .status(200)
                                        .header("content-type", "application/json")
                                        .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
                                        .expect("watch response"),
                                );
                            } else {
                                list_query = Some(call.query.clone());
                                respond.send_response(full(StatusCode::OK, json!({
                                    "kind": "PodList", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": "10"}, "items": []})));
                            }
                            continue;
                        }
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        if call_tx.send((call, tx)).is_err() { break }
                        match rx.await {
                            Ok(resp) => respond.send_response(resp),
                            Err(_) => break,
                        }
                    }
                    Some(event) = event_rx.recv() => {
                        if let Some(tx) = &watch_sender {
                            let mut line = serde_json::to_vec(&event).expect("event");
                            line.push(b'\n');
                            let _ = tx.send(Bytes::from(line));
                        }
                    }
                }
            }
        });
        Verifier {
            calls,
            events,
            watch_params,
        }
    }

    /// The next call the driver makes (other than the watch), with the means to answer it.
    async fn next(&mut self) -> (Call, Answer) {
        tokio::time::timeout(Duration::from_secs(10), self.calls.recv())
            .await
            .expect("the driver made no further call")
            .expect("verifier stopped")
    }

    fn push(&self, kind: &str, pod: Value) {
        self.events
            .send(json!({"type": kind, "object": pod}))
            .expect("watch open");
    }
}

fn settings() -> KubernetesConfig {
    KubernetesConfig {
        kubeconfig: None,
        namespace: NS.into(),
        image: "mariadb:11.8".into(),
        storage_class: Some("fast-ssd".into()),
        storage_size: "20Gi".into(),
        tls_secret: None,
    }
}

async fn driver_with_verifier() -> (std::sync::Arc<KubernetesDriver>, Verifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
    let client = kube::Client::new(service, NS);
    let verifier = Verifier::spawn(handle);
    let driver = KubernetesDriver::connect(
        client,
        &settings(),
        "64M".into(),
        Duration::from_secs(45),
        Duration::from_secs(10),
        AdminTls::default(),
    )
    .await
    .expect("connect");
    (std::sync::Arc::new(driver), verifier)
}

fn spec() -> ComputeSpec {
    ComputeSpec {
        project_id: PROJECT.into(),
        compute_id: COMPUTE.into(),
        config: json!({"resources": {"cpu": "1", "memory": "2Gi", "storage": "5Gi"}}),
        roles: None,
    }
}

/// A pod as the API server returns it, with `status`.
fn pod_object(uid: &str, rv: u64, status: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("doze-{PROJECT}"), "namespace": NS, "uid": uid,
                     "resourceVersion": rv.to_string(),
                     "labels": {"app.kubernetes.io/managed-by": "doze", "doze.io/project": PROJECT}},
        "spec": {"containers": [{"name": "mariadb", "image": "mariadb:11.8"}], "nodeName": "node-7"},
        "status": status})
}

fn running(ip: &str) -> Value {
    json!({"phase": "Running", "podIP": ip, "containerStatuses": [{"name": "mariadb",
        "image": "mariadb:11.8", "imageID": "", "ready": false, "restartCount": 0, "started": true,
        "state": {"running": {"startedAt": "2026-11-27T10:00:00Z"}}}]})
}

/// A socket on `ip:3306` that greets like MariaDB (a v10 handshake's first bytes): what the
/// driver's readiness probe reads.
async fn fake_greeter(ip: &str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind((ip, 3306))
        .await
        .expect("bind the fake server on port 3306");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(&[10, 0, 0, 0, 0x0a, b'1', b'1', 0, 0, 0]).await;
        }
    })
}

#[tokio::test]
async fn startup_lists_once_then_watches_by_label() {
    let (_driver, mut v) = driver_with_verifier().await;
    let params = v
        .watch_params
        .wait_for(|p| p.is_some())
        .await
        .expect("watch")
        .clone()
        .expect("params");
    let (list, watch) = params;
    assert_eq!(
        list.get("labelSelector").map(String::as_str),
        Some("app.kubernetes.io/managed-by=doze")
    );
    assert_eq!(
        list.get("limit").map(String::as_str),
        Some("500"),
        "paginated LIST: {list:?}"
    );
    assert_eq!(
        watch.get("labelSelector").map(String::as_str),
        Some("app.kubernetes.io/managed-by=doze")
    );
    assert_eq!(
        watch.get("resourceVersion").map(String::as_str),
        Some("10"),
        "{watch:?}"
    );
    assert_eq!(
        watch.get("allowWatchBookmarks").map(String::as_str),
        Some("true")
    );
    assert!(watch.contains_key("timeoutSeconds"), "{watch:?}");
    assert!(v.calls.try_recv().is_err(), "startup makes no other call");
}

#[tokio::test]
async fn provision_start_stop_and_delete_make_exactly_these_calls() {
    let (driver, mut v) = driver_with_verifier().await;
    let ip = "127.0.91.7";
    let _greeter = fake_greeter(ip).await;

    // Creating the compute: its Secret, then its PVC.
    let d = std::sync::Arc::clone(&driver);
    let provision = tokio::spawn(async move { d.provision(&spec()).await });
    let (call, respond) = v.next().await;
    assert_eq!(
        (call.method.clone(), call.path.as_str()),
        (
            Method::POST,
            format!("/api/v1/namespaces/{NS}/secrets").as_str()
        )
    );
    let body = call.body.expect("secret body");
    assert_eq!(body["metadata"]["name"], format!("doze-{PROJECT}-admin"));
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "doze"
    );
    assert_eq!(body["metadata"]["labels"]["doze.io/compute"], COMPUTE);
    assert_eq!(body["immutable"], true);
    let password_b64 = body["data"]["password"]
        .as_str()
        .expect("password")
        .to_owned();
    assert!(
        password_b64.len() >= 40,
        "a 32-character password, base64: {password_b64}"
    );
    respond.send(full(StatusCode::CREATED, body)).expect("send");
    let (call, respond) = v.next().await;
    assert_eq!(
        (call.method.clone(), call.path.as_str()),
        (
            Method::POST,
            format!("/api/v1/namespaces/{NS}/persistentvolumeclaims").as_str()
        )
    );
    let body = call.body.expect("pvc body");
    assert_eq!(body["metadata"]["name"], format!("doze-{PROJECT}"));
    assert_eq!(body["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(body["spec"]["storageClassName"], "fast-ssd");
    assert_eq!(body["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    respond.send(full(StatusCode::CREATED, body)).expect("send");
    provision.await.expect("join").expect("provision");

    // A wake: one POST of the pod, then the watch.
    let d = std::sync::Arc::clone(&driver);
    let start = tokio::spawn(async move { d.start(&spec()).await });
    let (call, respond) = v.next().await;
    assert_eq!(
        (call.method.clone(), call.path.as_str()),
        (
            Method::POST,
            format!("/api/v1/namespaces/{NS}/pods").as_str()
        )
    );
    let body = call.body.expect("pod body");
    assert_eq!(body["spec"]["automountServiceAccountToken"], false);
    assert_eq!(body["spec"]["enableServiceLinks"], false);
    assert_eq!(body["spec"]["terminationGracePeriodSeconds"], 45);
    assert_eq!(
        body["spec"]["containers"][0]["resources"]["limits"],
        json!({"cpu": "1", "memory": "2Gi"})
    );
    assert_eq!(
        body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        format!("doze-{PROJECT}")
    );
    assert!(body["spec"]["containers"][0]["readinessProbe"]["tcpSocket"].is_object());
    respond
        .send(full(
            StatusCode::CREATED,
            pod_object("uid-1", 11, json!({"phase": "Pending"})),
        ))
        .expect("send");
    v.push(
        "ADDED",
        pod_object("uid-1", 11, json!({"phase": "Pending"})),
    );
    v.push("MODIFIED", pod_object("uid-1", 12, running(ip)));
    let run = tokio::time::timeout(Duration::from_secs(10), start)
        .await
        .expect("start finished")
        .expect("join")
        .expect("started");
    assert_eq!(run.address, format!("{ip}:3306"));
    assert!(run.handle.as_deref().is_some_and(|h| h.contains("uid-1")));
    assert!(driver.is_alive(PROJECT));
    assert!(v.calls.try_recv().is_err(), "a wake is one API call");

    // A suspend: DELETE with the grace period, then the wait for the watch's DELETED.
    let d = std::sync::Arc::clone(&driver);
    let stop = tokio::spawn(async move { d.stop(PROJECT).await });
    let (call, respond) = v.next().await;
    assert_eq!(
        (call.method.clone(), call.path.clone()),
        (
            Method::DELETE,
            format!("/api/v1/namespaces/{NS}/pods/doze-{PROJECT}")
        )
    );
    assert_eq!(
        call.body.as_ref().expect("delete options")["gracePeriodSeconds"],
        45
    );
    respond
        .send(full(StatusCode::OK, pod_object("uid-1", 13, running(ip))))
        .expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!stop.is_finished(), "a suspend waits until the pod is gone");
    v.push("DELETED", pod_object("uid-1", 14, running(ip)));
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("stop finished")
        .expect("join")
        .expect("stopped");
    assert!(!driver.is_alive(PROJECT));

    // Deleting the compute: pod (already gone: 404), PVC, Secret.
    let d = std::sync::Arc::clone(&driver);
    let delete = tokio::spawn(async move { d.compute_deleted(PROJECT).await });
    for path in [
        format!("/api/v1/namespaces/{NS}/pods/doze-{PROJECT}"),
        format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/doze-{PROJECT}"),
        format!("/api/v1/namespaces/{NS}/secrets/doze-{PROJECT}-admin"),
    ] {
        let (call, respond) = v.next().await;
        assert_eq!(
            (call.method.clone(), call.path.clone()),
            (Method::DELETE, path)
        );
        if call.path.contains("/pods/") {
            respond
                .send(status(404, "NotFound", "pods not found"))
                .expect("send");
        } else {
            respond
                .send(full(
                    StatusCode::OK,
                    json!({"kind": "Status", "status": "Success"}),
                ))
                .expect("send");
        }
    }
    delete.await.expect("join").expect("deleted");
}

#[tokio::test]
async fn an_image_pull_error_fails_the_wake_with_the_reason_and_removes_the_pod() {
    let (driver, mut v) = driver_with_verifier().await;
    let d = std::sync::Arc::clone(&driver);
    let start = tokio::spawn(async move { d.start(&spec()).await });
    // Not provisioned in this process: the Secret is read and the PVC made (409: exists).
    let (call, respond) = v.next().await;
    assert_eq!(
        (call.method.clone(), call.path.clone()),
        (
            Method::GET,
            format!("/api/v1/namespaces/{NS}/secrets/doze-{PROJECT}-admin")
        )
    );
    respond
        .send(full(StatusCode::OK, json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("doze-{PROJECT}-admin")}, "data": {"password": "c2VjcmV0cGFzc3dvcmQxMjM0NTY3OA=="}})))
        .expect("send");
    let (call, respond) = v.next().await;
    assert_eq!(call.method, Method::POST);
    assert!(call.path.ends_with("/persistentvolumeclaims"));
    respond
        .send(status(409, "AlreadyExists", "exists"))
        .expect("send");
    let (call, respond) = v.next().await;
    assert_eq!(
        (call.method.clone(), call.path.clone()),
        (Method::POST, format!("/api/v1/namespaces/{NS}/pods"))
    );
    respond
        .send(full(
            StatusCode::CREATED,
            pod_object("uid-2", 20, json!({"phase": "Pending"})),
        ))
        .expect("send");
    v.push(
        "MODIFIED",
        pod_object("uid-2", 21, json!({"phase": "Pending", "containerStatuses": [{"name": "mariadb",
            "image": "mariadb:11.8", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull",
                "message": "rpc error: code = NotFound desc = failed to pull image \"mariadb:11.8\""}}}]})),
    );
    // The pod never ran: it is deleted at once (grace 0), and no log is asked for.
    let (call, respond) = v.next().await;
    assert_eq!(
        (call.method.clone(), call.path.clone()),
        (
            Method::DELETE,
            format!("/api/v1/namespaces/{NS}/pods/doze-{PROJECT}")
        )
    );
    assert_eq!(
        call.body.as_ref().expect("options")["gracePeriodSeconds"],
        0
    );
    respond
        .send(full(StatusCode::OK, pod_object("uid-2", 22, json!({}))))
        .expect("send");
    let err = start.await.expect("join").expect_err("the wake fails");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ErrImagePull") && msg.contains("failed to pull image"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_crash_loop_quotes_the_previous_containers_log() {
    let (driver, mut v) = driver_with_verifier().await;
    let d = std::sync::Arc::clone(&driver);
    let start = tokio::spawn(async move { d.start(&spec()).await });
    for _ in 0..2 {
        let (call, respond) = v.next().await;
        if call.method == Method::GET {
            respond
                .send(full(
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"},
                    "data": {"password": "c2VjcmV0cGFzc3dvcmQxMjM0NTY3OA=="}}),
                ))
                .expect("send");
        } else {
            respond
                .send(status(409, "AlreadyExists", "exists"))
                .expect("send");
        }
    }
    let (_call, respond) = v.next().await;
    respond
        .send(full(
            StatusCode::CREATED,
            pod_object("uid-3", 30, json!({"phase": "Pending"})),
        ))
        .expect("send");
    v.push(
        "MODIFIED",
        pod_object("uid-3", 31, json!({"phase": "Running", "podIP": "127.0.91.8", "containerStatuses": [{"name": "mariadb",
            "image": "mariadb:11.8", "imageID": "", "ready": false, "restartCount": 2,
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}}]})),
    );
    let (call, respond) = v.next().await;
    assert_eq!(
        call.path,
        format!("/api/v1/namespaces/{NS}/pods/doze-{PROJECT}/log")
    );
    assert_eq!(call.query.get("previous").map(String::as_str), Some("true"));
    assert_eq!(
        call.query.get("container").map(String::as_str),
        Some("mariadb")
    );
    assert!(call.query.contains_key("tailLines"));
    respond
        .send(
            Response::builder()
                .status(200)
                .body(
                    http_body_util::Full::new(Bytes::from_static(
                        b"[ERROR] mariadbd: unknown variable 'innodb-bogus=1'\n[ERROR] Aborting\n",
                    ))
                    .map_err(|never| match never {})
                    .boxed(),
                )
                .expect("log"),
        )
        .expect("send");
    let (call, respond) = v.next().await;
    assert_eq!(call.method, Method::DELETE);
    respond
        .send(full(StatusCode::OK, pod_object("uid-3", 32, json!({}))))
        .expect("send");
    let msg = format!("{:#}", start.await.expect("join").expect_err("fails"));
    assert!(
        msg.contains("CrashLoopBackOff") && msg.contains("unknown variable 'innodb-bogus=1'"),
        "{msg}"
    );
}
