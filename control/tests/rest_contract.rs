//! The admin REST API contract, on both state stores (SQLite file and a real PostgreSQL).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::{Value, json};

const SEED_PROJECT: &str = r#"{
    "name": "my-project",
    "config": {
      "page_server_url": "http://page-server:8080",
      "safekeeper_url": "http://safekeeper:8080",
      "idle_timeout": 300,
      "max_connections": 100
    }
  }"#;

const SEED_COMPUTE: &str = r#"{
    "config": {
      "image": "mariadb:latest",
      "resources": {
        "cpu": "500m",
        "memory": "1Gi"
      }
    }
  }"#;

/// Every route and error case; starts one real compute.
async fn contract(env: &Env) {
    let r = doze_control::rest::router(std::sync::Arc::clone(&env.plane), None);
    let r = &r;

    // --- projects ---
    let created = call(r, "POST", "/api/v1/projects", Some(SEED_PROJECT), None).await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.1);
    let project = created.1.clone();
    let pid = project["id"].as_str().expect("id").to_owned();
    assert_eq!(project["name"], "my-project");
    let seed: Value = serde_json::from_str(SEED_PROJECT).expect("seed");
    assert_eq!(
        project["config"], seed["config"],
        "config stored and returned as given"
    );
    assert!(
        project["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let dup = call(r, "POST", "/api/v1/projects", Some(SEED_PROJECT), None).await;
    assert_error(&dup, StatusCode::CONFLICT, "conflict");
    for bad in [
        r#"{"name": "My_Project"}"#,
        r#"{"name": "a.b"}"#,
        r#"{"name": ""}"#,
        r#"{"name": "3f1c2b9e-8d1a-4b7e-9c2d-1a2b3c4d5e6f"}"#,
        r#"{"name": 5}"#,
        r#"{}"#,
        r#"{"name": "ok-name", "config": {"idle_timeout": "soon"}}"#,
        r#"{"name": "ok-name", "config": [1]}"#,
        r#"{"name": "ok-name", "config": {"idle_timeout": 1e300}}"#,
        r#"{"name": "ok-name", "config": {"idle_timeout": -1}}"#,
        r#"{"name": "ok-name", "config": {"page_server_url": {}}}"#,
        r#"{"name": "ok-name", "config": {"max_connections": {}}}"#,
        r#"[1, 2]"#,
    ] {
        let resp = call(r, "POST", "/api/v1/projects", Some(bad), None).await;
        assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    let long = format!(r#"{{"name": "{}"}}"#, "a".repeat(64));
    let resp = call(r, "POST", "/api/v1/projects", Some(&long), None).await;
    assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    for broken in [
        r#"{"name": "#,
        "not json",
        "{\"name\": \"x\"} trailing",
        "\u{0}",
    ] {
        let resp = call(r, "POST", "/api/v1/projects", Some(broken), None).await;
        assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_json");
    }
    // Missing body: the required name is missing.
    let resp = call(r, "POST", "/api/v1/projects", None, None).await;
    assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    // Wrong content type.
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/projects")
        .header("content-type", "text/plain")
        .body(Body::from(r#"{"name": "typed"}"#))
        .expect("request");
    assert_error(
        &raw(r, req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    let list = call(r, "GET", "/api/v1/projects", None, None).await;
    assert_eq!(list.0, StatusCode::OK);
    assert_eq!(list.1["projects"].as_array().map(Vec::len), Some(1));
    assert_eq!(list.1["projects"][0], project);
    for key in [pid.as_str(), "my-project"] {
        let got = call(r, "GET", &format!("/api/v1/projects/{key}"), None, None).await;
        assert_eq!(got.0, StatusCode::OK);
        assert_eq!(got.1, project, "lookup by {key}");
    }
    let resp = call(r, "GET", "/api/v1/projects/nope", None, None).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");

    // --- computes ---
    let resp = call(
        r,
        "POST",
        "/api/v1/projects/nope/compute",
        Some(SEED_COMPUTE),
        None,
    )
    .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let resp = call(
        r,
        "POST",
        "/api/v1/projects/my-project/compute",
        Some(r#"{"config": {"resources": {"memory": "lots"}}}"#),
        None,
    )
    .await;
    assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let resp = call(
        r,
        "POST",
        "/api/v1/projects/my-project/compute",
        Some(r#"{"config": {"mariadb_options": {"datadir": "/etc"}}}"#),
        None,
    )
    .await;
    assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    // Known fields of the document's types only (found by schemathesis: a config stored with
    // the wrong types came back in every answer, against the document).
    for bad in [
        r#"{"config": {"image": false}}"#,
        r#"{"config": {"resources": 1.5}}"#,
        r#"{"config": {"resources": {"cpu": true}}}"#,
        r#"{"config": {"mariadb_options": [1]}}"#,
    ] {
        let resp = call(
            r,
            "POST",
            "/api/v1/projects/my-project/compute",
            Some(bad),
            None,
        )
        .await;
        assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    let resp = call(
        r,
        "POST",
        "/api/v1/projects/my-project/compute",
        Some("{oops"),
        None,
    )
    .await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_json");

    let created = call(
        r,
        "POST",
        "/api/v1/projects/my-project/compute",
        Some(SEED_COMPUTE),
        None,
    )
    .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.1);
    let compute = created.1.clone();
    let cid = compute["id"].as_str().expect("compute id").to_owned();
    assert_eq!(compute["project_id"], pid.as_str());
    assert_eq!(compute["state"], "suspended");
    assert_eq!(compute["address"], Value::Null);
    let seed: Value = serde_json::from_str(SEED_COMPUTE).expect("seed");
    assert_eq!(compute["config"], seed["config"]);
    for field in ["created_at", "updated_at"] {
        assert!(compute[field].as_str().is_some(), "{field}");
    }
    assert_eq!(compute["last_error"], Value::Null);
    let second = call(
        r,
        "POST",
        &format!("/api/v1/projects/{pid}/compute"),
        Some(SEED_COMPUTE),
        None,
    )
    .await;
    assert_error(&second, StatusCode::CONFLICT, "conflict");
    let got = call(r, "GET", &format!("/api/v1/compute/{cid}"), None, None).await;
    assert_eq!(got.0, StatusCode::OK);
    assert_eq!(got.1, compute);
    let resp = call(r, "GET", "/api/v1/compute/nope", None, None).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    // The project's compute by project id or name, without waking it; and the list.
    for key in [pid.as_str(), "my-project"] {
        let by_project = call(
            r,
            "GET",
            &format!("/api/v1/projects/{key}/compute"),
            None,
            None,
        )
        .await;
        assert_eq!(by_project.0, StatusCode::OK, "{}", by_project.1);
        assert_eq!(by_project.1["id"], cid.as_str());
        assert_eq!(by_project.1["state"], "suspended", "a lookup never wakes");
    }
    let listed = call(r, "GET", "/api/v1/compute", None, None).await;
    assert_eq!(listed.0, StatusCode::OK, "{}", listed.1);
    assert!(
        listed.1["computes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["id"] == cid.as_str())),
        "{}",
        listed.1
    );
    let filtered = call(r, "GET", "/api/v1/compute?project=my-project", None, None).await;
    assert_eq!(filtered.1["computes"].as_array().map(Vec::len), Some(1));
    let resp = call(r, "GET", "/api/v1/compute?project=nope", None, None).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let resp = call(r, "GET", "/api/v1/projects/nope/compute", None, None).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let info = call(r, "GET", "/api/v1/info", None, None).await;
    assert_eq!(info.0, StatusCode::OK);
    assert_eq!(info.1["driver"], "local");
    assert!(info.1["commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(call(r, "GET", "/livez", None, None).await.0, StatusCode::OK);
    assert_eq!(
        call(r, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    for action in ["suspend", "resume"] {
        let resp = call(
            r,
            "POST",
            &format!("/api/v1/compute/nope/{action}"),
            None,
            None,
        )
        .await;
        assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    }

    // --- roles ---
    let resp = call(
        r,
        "POST",
        "/api/v1/projects/my-project/roles",
        Some(r#"{"name": "app", "password": "s3cret-pw"}"#),
        None,
    )
    .await;
    assert_eq!(resp.0, StatusCode::CREATED, "{}", resp.1);
    assert_eq!(resp.1["name"], "app");
    assert_eq!(resp.1["project_id"], pid.as_str());
    assert!(resp.1["created_at"].as_str().is_some());
    let text = resp.1.to_string();
    assert!(
        !text.contains("s3cret-pw") && !text.contains("password") && !text.contains("hash"),
        "{text}"
    );
    let dup = call(
        r,
        "POST",
        "/api/v1/projects/my-project/roles",
        Some(r#"{"name": "app", "password": "other"}"#),
        None,
    )
    .await;
    assert_error(&dup, StatusCode::CONFLICT, "conflict");
    for bad in [
        r#"{"name": "root", "password": "x"}"#,
        r#"{"name": "PUBLIC", "password": "x"}"#,
        r#"{"name": "mariadb.sys", "password": "x"}"#,
        r#"{"name": "a'b", "password": "x"}"#,
        r#"{"name": "a\\b", "password": "x"}"#,
        r#"{"name": "", "password": "x"}"#,
        r#"{"name": "ok", "password": ""}"#,
        r#"{"name": "ok"}"#,
    ] {
        let resp = call(
            r,
            "POST",
            "/api/v1/projects/my-project/roles",
            Some(bad),
            None,
        )
        .await;
        assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    let resp = call(
        r,
        "POST",
        "/api/v1/projects/nope/roles",
        Some(r#"{"name": "a", "password": "b"}"#),
        None,
    )
    .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let resp = call(
        r,
        "POST",
        "/api/v1/projects/my-project/roles",
        Some("[["),
        None,
    )
    .await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_json");
    let resp = call(
        r,
        "POST",
        &format!("/api/v1/projects/{pid}/roles"),
        Some(r#"{"name": "reader", "password": "r-pw"}"#),
        None,
    )
    .await;
    assert_eq!(resp.0, StatusCode::CREATED);
    let roles = call(r, "GET", "/api/v1/projects/my-project/roles", None, None).await;
    assert_eq!(roles.0, StatusCode::OK);
    let names: Vec<&str> = roles.1["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["app", "reader"]);
    assert!(!roles.1.to_string().contains('*'), "no hash in listings");
    let resp = call(
        r,
        "DELETE",
        "/api/v1/projects/my-project/roles/ghost",
        None,
        None,
    )
    .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let resp = call(
        r,
        "PUT",
        "/api/v1/projects/my-project/roles/reader",
        Some(r#"{"password": "r-pw-2"}"#),
        None,
    )
    .await;
    assert_eq!(resp.0, StatusCode::OK, "{}", resp.1);

    // --- wake ---
    let resp = call(r, "GET", "/api/v1/wake_compute", None, None).await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "invalid_query");
    let resp = call(
        r,
        "GET",
        "/api/v1/wake_compute?endpointish=nope",
        None,
        None,
    )
    .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let woke = call(
        r,
        "GET",
        "/api/v1/wake_compute?endpointish=my-project",
        None,
        None,
    )
    .await;
    assert_eq!(woke.0, StatusCode::OK, "{}", woke.1);
    assert_eq!(woke.1["cold_start"], "resumed");
    assert_eq!(woke.1["compute_id"], cid.as_str());
    let address = woke.1["address"].as_str().expect("address").to_owned();
    let warm = call(
        r,
        "GET",
        &format!("/api/v1/wake_compute?endpointish={pid}"),
        None,
        None,
    )
    .await;
    assert_eq!(warm.1["cold_start"], "warm");
    assert_eq!(warm.1["address"], address.as_str());
    assert_eq!(select_one(&address, "app", "s3cret-pw").await, 1);
    assert_eq!(select_one(&address, "reader", "r-pw-2").await, 1);
    let got = call(r, "GET", &format!("/api/v1/compute/{cid}"), None, None).await;
    assert_eq!(got.1["state"], "running");
    assert_eq!(got.1["address"], address.as_str());
    assert!(
        got.1["memory_bytes"].as_u64().is_some_and(|b| b > 1 << 20),
        "a running compute's memory: {}",
        got.1
    );

    // --- freeze / thaw ---
    let resp = call(
        r,
        "POST",
        &format!("/api/v1/compute/{cid}/suspend?mode=nap"),
        None,
        None,
    )
    .await;
    assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    // An empty mode is a mistake too, not the default (schemathesis sent `?mode=`).
    let resp = call(
        r,
        "POST",
        &format!("/api/v1/compute/{cid}/suspend?mode="),
        None,
        None,
    )
    .await;
    assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    // A connection the compute has not finished closing (the start's role sync, a readiness
    // probe) still counts as a session for a moment: the freeze is refused (409) until it is
    // gone, so ask again a few times.
    let mut resp = (StatusCode::CONFLICT, serde_json::Value::Null);
    for _ in 0..30 {
        resp = call(
            r,
            "POST",
            &format!("/api/v1/compute/{cid}/suspend?mode=freeze"),
            None,
            None,
        )
        .await;
        if resp.0 != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(resp.0, StatusCode::OK, "{}", resp.1);
    assert_eq!(resp.1["state"], "frozen");
    assert_eq!(
        resp.1["address"],
        address.as_str(),
        "a frozen compute keeps its address"
    );
    let thawed = call(
        r,
        "GET",
        &format!("/api/v1/wake_compute?endpointish={pid}"),
        None,
        None,
    )
    .await;
    assert_eq!(thawed.1["cold_start"], "thawed", "{}", thawed.1);
    assert_eq!(thawed.1["address"], address.as_str());
    assert_eq!(select_one(&address, "app", "s3cret-pw").await, 1);

    // --- suspend / resume ---
    let resp = call(
        r,
        "POST",
        &format!("/api/v1/compute/{cid}/suspend"),
        None,
        None,
    )
    .await;
    assert_eq!(resp.0, StatusCode::OK, "{}", resp.1);
    assert_eq!(resp.1["state"], "suspended");
    assert_eq!(resp.1["address"], Value::Null);
    let resp = call(
        r,
        "POST",
        &format!("/api/v1/compute/{cid}/suspend"),
        None,
        None,
    )
    .await;
    assert_eq!(
        resp.1["state"], "suspended",
        "suspending a suspended compute is a no-op"
    );
    let resp = call(
        r,
        "POST",
        &format!("/api/v1/compute/{cid}/resume"),
        None,
        None,
    )
    .await;
    assert_eq!(resp.0, StatusCode::OK, "{}", resp.1);
    assert_eq!(resp.1["state"], "running");
    let address = resp.1["address"].as_str().expect("address").to_owned();
    assert_eq!(select_one(&address, "app", "s3cret-pw").await, 1);
    let events = call(
        r,
        "GET",
        &format!("/api/v1/compute/{cid}/events"),
        None,
        None,
    )
    .await;
    let reasons: Vec<&str> = events.1["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"api") && reasons.contains(&"wake"),
        "{reasons:?}"
    );

    // --- deletes ---
    let resp = call(
        r,
        "DELETE",
        "/api/v1/projects/my-project/roles/reader",
        None,
        None,
    )
    .await;
    assert_eq!(resp.0, StatusCode::NO_CONTENT);
    assert!(
        connect(&address, "reader", "r-pw-2").await.is_err(),
        "deleted role is gone at once"
    );
    let datadir = datadir_of(&env.plane, &pid);
    let resp = call(r, "DELETE", &format!("/api/v1/compute/{cid}"), None, None).await;
    assert_eq!(resp.0, StatusCode::NO_CONTENT, "{}", resp.1);
    assert_eq!(mariadbd_on(&datadir), 0);
    assert!(
        datadir.join("mysql").is_dir(),
        "deleting a compute keeps the storage"
    );
    let resp = call(r, "GET", &format!("/api/v1/compute/{cid}"), None, None).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let resp = call(
        r,
        "GET",
        "/api/v1/wake_compute?endpointish=my-project",
        None,
        None,
    )
    .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "no_compute");
    let resp = call(r, "DELETE", &format!("/api/v1/compute/{cid}"), None, None).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let resp = call(r, "DELETE", "/api/v1/projects/my-project", None, None).await;
    assert_eq!(resp.0, StatusCode::NO_CONTENT, "{}", resp.1);
    assert!(!datadir.exists(), "deleting a project deletes its storage");
    let resp = call(r, "GET", &format!("/api/v1/projects/{pid}"), None, None).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let resp = call(r, "DELETE", "/api/v1/projects/my-project", None, None).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
    let list = call(r, "GET", "/api/v1/projects", None, None).await;
    assert_eq!(list.1, json!({"projects": []}));

    // --- the rest ---
    assert_error(
        &call(r, "GET", "/api/v1/nothing", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &call(r, "PATCH", "/api/v1/projects", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    let health = call(r, "GET", "/healthz", None, None).await;
    assert_eq!(health, (StatusCode::OK, json!({"status": "ok"})));
    assert_error(
        &call(r, "GET", "/metrics", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_contract_on_sqlite() {
    let env = sqlite_env(|_| {}).await;
    assert!(env.cfg.db_dsn.starts_with("sqlite:"));
    contract(&env).await;
    env.plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_contract_on_postgres() {
    let env = postgres_env(|_| {}).await;
    assert!(env.cfg.db_dsn.starts_with("postgres:"));
    contract(&env).await;
    env.plane.shutdown().await;
}

#[tokio::test]
async fn bearer_token_guards_every_api_route_but_not_health_or_metrics() {
    let env = sqlite_env(|c| c.admin_token = Some("t0ken".into())).await;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let r = doze_control::rest::router(std::sync::Arc::clone(&env.plane), Some(handle));
    let routes = [
        ("GET", "/api/v1/projects"),
        ("POST", "/api/v1/projects"),
        ("GET", "/api/v1/projects/x"),
        ("DELETE", "/api/v1/projects/x"),
        ("POST", "/api/v1/projects/x/compute"),
        ("GET", "/api/v1/compute/x"),
        ("DELETE", "/api/v1/compute/x"),
        ("POST", "/api/v1/compute/x/suspend"),
        ("POST", "/api/v1/compute/x/resume"),
        ("GET", "/api/v1/wake_compute?endpointish=x"),
        ("POST", "/api/v1/projects/x/roles"),
        ("GET", "/api/v1/projects/x/roles"),
        ("DELETE", "/api/v1/projects/x/roles/y"),
        ("GET", "/api/v1/openapi.json"),
    ];
    for (method, uri) in routes {
        let resp = call(&r, method, uri, None, None).await;
        assert_error(&resp, StatusCode::UNAUTHORIZED, "unauthorized");
        let resp = call(&r, method, uri, None, Some("wrong")).await;
        assert_error(&resp, StatusCode::UNAUTHORIZED, "unauthorized");
        let resp = call(&r, method, uri, None, Some("t0ken0")).await;
        assert_error(&resp, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let req = Request::builder()
        .uri("/api/v1/projects")
        .header("authorization", "Basic dDBrZW4=")
        .body(Body::empty())
        .expect("req");
    assert_error(
        &raw(&r, req).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let ok = call(&r, "GET", "/api/v1/projects", None, Some("t0ken")).await;
    assert_eq!(ok, (StatusCode::OK, json!({"projects": []})));
    let created = call(
        &r,
        "POST",
        "/api/v1/projects",
        Some(r#"{"name": "p"}"#),
        Some("t0ken"),
    )
    .await;
    assert_eq!(created.0, StatusCode::CREATED);
    assert_eq!(created.1["config"], json!({}));
    assert_eq!(
        call(&r, "GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .expect("req");
    let (status, _) = raw(&r, req).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn openapi_document_covers_every_route() {
    let env = sqlite_env(|_| {}).await;
    let r = doze_control::rest::router(std::sync::Arc::clone(&env.plane), None);
    let (status, doc) = call(&r, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    // Oversized bodies are refused in the JSON error format too.
    let huge = format!(r#"{{"name": "{}"}}"#, "a".repeat(3 << 20));
    let resp = call(&r, "POST", "/api/v1/projects", Some(&huge), None).await;
    assert_error(&resp, StatusCode::PAYLOAD_TOO_LARGE, "invalid_body");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/api/v1/projects", &["get", "post"][..]),
        ("/api/v1/projects/{id}", &["get", "delete"]),
        ("/api/v1/projects/{id}/compute", &["get", "post"]),
        ("/api/v1/compute", &["get"]),
        ("/api/v1/info", &["get"]),
        ("/livez", &["get"]),
        ("/readyz", &["get"]),
        ("/api/v1/projects/{id}/roles", &["get", "post"]),
        ("/api/v1/projects/{id}/roles/{name}", &["put", "delete"]),
        ("/api/v1/compute/{id}", &["get", "delete"]),
        ("/api/v1/compute/{id}/suspend", &["post"]),
        ("/api/v1/compute/{id}/resume", &["post"]),
        ("/api/v1/compute/{id}/events", &["get"]),
        ("/api/v1/wake_compute", &["get"]),
        ("/api/v1/openapi.json", &["get"]),
        ("/healthz", &["get"]),
        ("/metrics", &["get"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} documented"
            );
        }
    }
}

#[tokio::test]
async fn admin_api_over_a_real_tcp_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = sqlite_env(|_| {}).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = doze_control::rest::router(std::sync::Arc::clone(&env.plane), None);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let body = r#"{"name": "over-tcp"}"#;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST /api/v1/projects HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await.expect("read");
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert!(resp.contains(r#""name":"over-tcp""#), "{resp}");
    // Garbage on the wire does not take the server down.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"\x00\x01garbage\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await.expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    server.abort();
}

#[tokio::test]
async fn readiness_follows_draining_and_liveness_does_not() {
    let env = sqlite_env(|_| {}).await;
    let r = doze_control::rest::router(std::sync::Arc::clone(&env.plane), None);
    assert_eq!(
        call(&r, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    env.plane.set_draining();
    let resp = call(&r, "GET", "/readyz", None, None).await;
    assert_error(&resp, StatusCode::SERVICE_UNAVAILABLE, "draining");
    assert_eq!(
        call(&r, "GET", "/livez", None, None).await.0,
        StatusCode::OK
    );
    env.plane.set_proxy_address("127.0.0.1:16033".to_owned());
    let info = call(&r, "GET", "/api/v1/info", None, None).await;
    assert_eq!(info.1["proxy_address"], "127.0.0.1:16033");
}
