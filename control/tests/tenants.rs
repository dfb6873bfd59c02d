//! Tenants, scoped tokens, quotas and the audit log, through the admin API in process, against
//! the fake driver (no compute is started for real), on SQLite and on a real PostgreSQL.
//!
//! The isolation matrix reads the OpenAPI document's routes: a route added to the document
//! without a line in the matrix fails the test.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::{assert_error, call};
use doze_control::activity::Activity;
use doze_control::gateway::WakeError;
use doze_control::store::{ComputeState, Store};
use doze_control::testkit::{FakeDriver, Postgres};
use doze_control::{ControlConfig, ControlPlane};
use serde_json::{Value, json};

const OPERATOR: &str = "operator-token-0123456789abcdef0123";

struct Env {
    plane: Arc<ControlPlane>,
    driver: Arc<FakeDriver>,
    router: axum::Router,
    _pg: Option<Postgres>,
}

async fn env(postgres: bool) -> Env {
    env_with(postgres, |_| {}).await
}

async fn env_with(postgres: bool, tweak: impl FnOnce(&mut ControlConfig)) -> Env {
    let pg = if postgres {
        Some(Postgres::start().await.expect("postgres"))
    } else {
        None
    };
    let mut cfg = ControlConfig {
        db_dsn: pg
            .as_ref()
            .map_or_else(|| "sqlite::memory:".to_owned(), Postgres::dsn),
        data_dir: std::env::temp_dir(),
        idle_timeout: Duration::ZERO,
        check_interval: Duration::from_secs(3600),
        wake_timeout: Duration::from_secs(10),
        admin_token: Some(OPERATOR.into()),
        ..ControlConfig::default()
    };
    tweak(&mut cfg);
    let store = Store::open(&cfg.db_dsn).await.expect("store");
    let driver = FakeDriver::new();
    let plane = ControlPlane::start_with_driver(cfg, Activity::new(), store, driver.clone())
        .await
        .expect("plane");
    let router = doze_control::rest::router(Arc::clone(&plane), None);
    Env {
        plane,
        driver,
        router,
        _pg: pg,
    }
}

impl Env {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        token: &str,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        call(&self.router, method, uri, body.as_deref(), Some(token)).await
    }

    /// As the operator; asserts `want`.
    async fn op(&self, method: &str, uri: &str, body: Option<Value>, want: StatusCode) -> Value {
        let resp = self.call(method, uri, body, OPERATOR).await;
        assert_eq!(resp.0, want, "{method} {uri}: {}", resp.1);
        resp.1
    }

    async fn tenant(&self, name: &str, quotas: Value) -> String {
        let t = self
            .op(
                "POST",
                "/api/v1/tenants",
                Some(json!({"name": name, "quotas": quotas})),
                StatusCode::CREATED,
            )
            .await;
        t["id"].as_str().expect("tenant id").to_owned()
    }

    /// A token of `tenant`: (id, secret).
    async fn token(&self, tenant: &str, expires_at: Option<String>) -> (String, String) {
        let t = self
            .op(
                "POST",
                &format!("/api/v1/tenants/{tenant}/tokens"),
                Some(json!({"name": "ci", "expires_at": expires_at})),
                StatusCode::CREATED,
            )
            .await;
        (
            t["id"].as_str().expect("token id").to_owned(),
            t["token"].as_str().expect("secret").to_owned(),
        )
    }
}

/// What a tenant's token may see of another tenant, route by route.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The other tenant's object is as unknown as one that does not exist.
    NotFound,
    /// Refused to every tenant token, whatever the object (so nothing leaks).
    OperatorOnly,
    /// A list: answered, without anything of the other tenant.
    ListWithout,
    /// Not about tenants (health, metrics, the document, this doze's version).
    Public,
}

/// One probe of the matrix: a route of the document and a request that aims it at tenant B.
struct Probe {
    method: &'static str,
    route: &'static str,
    uri: String,
    body: Option<Value>,
    expect: Expect,
}

/// B's objects, and names of objects that exist nowhere (for comparing 404 messages).
struct Victim {
    tenant_id: String,
    tenant_name: String,
    project_id: String,
    project_name: String,
    compute_id: String,
    token_id: String,
    token: String,
}

fn probes(b: &Victim, own_tenant: &str) -> Vec<Probe> {
    use Expect::*;
    let p = |method, route, uri: String, body: Option<Value>, expect| Probe {
        method,
        route,
        uri,
        body,
        expect,
    };
    let mut v = Vec::new();
    // Every project-scoped route, by B's project id and by its name.
    for key in [&b.project_id, &b.project_name] {
        v.extend([
            p(
                "GET",
                "/api/v1/projects/{id}",
                format!("/api/v1/projects/{key}"),
                None,
                NotFound,
            ),
            p(
                "DELETE",
                "/api/v1/projects/{id}",
                format!("/api/v1/projects/{key}"),
                None,
                NotFound,
            ),
            p(
                "POST",
                "/api/v1/projects/{id}/compute",
                format!("/api/v1/projects/{key}/compute"),
                Some(json!({"config": {}})),
                NotFound,
            ),
            p(
                "GET",
                "/api/v1/projects/{id}/compute",
                format!("/api/v1/projects/{key}/compute"),
                None,
                NotFound,
            ),
            p(
                "POST",
                "/api/v1/projects/{id}/roles",
                format!("/api/v1/projects/{key}/roles"),
                Some(json!({"name": "intruder", "password": "Passw0rd-long-enough"})),
                NotFound,
            ),
            p(
                "GET",
                "/api/v1/projects/{id}/roles",
                format!("/api/v1/projects/{key}/roles"),
                None,
                NotFound,
            ),
            p(
                "PUT",
                "/api/v1/projects/{id}/roles/{name}",
                format!("/api/v1/projects/{key}/roles/app"),
                Some(json!({"password": "Passw0rd-long-enough"})),
                NotFound,
            ),
            p(
                "DELETE",
                "/api/v1/projects/{id}/roles/{name}",
                format!("/api/v1/projects/{key}/roles/app"),
                None,
                NotFound,
            ),
            p(
                "GET",
                "/api/v1/projects/{id}/usage",
                format!("/api/v1/projects/{key}/usage"),
                None,
                NotFound,
            ),
            p(
                "GET",
                "/api/v1/wake_compute",
                format!("/api/v1/wake_compute?endpointish={key}"),
                None,
                NotFound,
            ),
            p(
                "GET",
                "/api/v1/compute",
                format!("/api/v1/compute?project={key}"),
                None,
                NotFound,
            ),
        ]);
    }
    let c = &b.compute_id;
    v.extend([
        p(
            "GET",
            "/api/v1/compute/{id}",
            format!("/api/v1/compute/{c}"),
            None,
            NotFound,
        ),
        p(
            "DELETE",
            "/api/v1/compute/{id}",
            format!("/api/v1/compute/{c}"),
            None,
            NotFound,
        ),
        p(
            "POST",
            "/api/v1/compute/{id}/suspend",
            format!("/api/v1/compute/{c}/suspend"),
            None,
            NotFound,
        ),
        p(
            "POST",
            "/api/v1/compute/{id}/resume",
            format!("/api/v1/compute/{c}/resume"),
            None,
            NotFound,
        ),
        p(
            "GET",
            "/api/v1/compute/{id}/events",
            format!("/api/v1/compute/{c}/events"),
            None,
            NotFound,
        ),
    ]);
    for key in [&b.tenant_id, &b.tenant_name] {
        v.extend([
            p(
                "GET",
                "/api/v1/tenants/{id}",
                format!("/api/v1/tenants/{key}"),
                None,
                NotFound,
            ),
            p(
                "POST",
                "/api/v1/tenants/{id}/tokens",
                format!("/api/v1/tenants/{key}/tokens"),
                Some(json!({"name": "stolen"})),
                NotFound,
            ),
            p(
                "GET",
                "/api/v1/tenants/{id}/tokens",
                format!("/api/v1/tenants/{key}/tokens"),
                None,
                NotFound,
            ),
            p(
                "DELETE",
                "/api/v1/tenants/{id}/tokens/{token_id}",
                format!("/api/v1/tenants/{key}/tokens/{}", b.token_id),
                None,
                NotFound,
            ),
            p(
                "GET",
                "/api/v1/projects",
                format!("/api/v1/projects?tenant={key}"),
                None,
                NotFound,
            ),
            p(
                "GET",
                "/api/v1/usage",
                format!("/api/v1/usage?tenant={key}"),
                None,
                NotFound,
            ),
            p(
                "GET",
                "/api/v1/audit",
                format!("/api/v1/audit?tenant={key}"),
                None,
                NotFound,
            ),
            p(
                "POST",
                "/api/v1/projects",
                "/api/v1/projects".into(),
                Some(json!({"name": "planted", "tenant": key})),
                NotFound,
            ),
            // Operator-only whatever the tenant, so these leak nothing either.
            p(
                "PATCH",
                "/api/v1/tenants/{id}",
                format!("/api/v1/tenants/{key}"),
                Some(json!({"quotas": {"max_projects": 0}})),
                OperatorOnly,
            ),
            p(
                "DELETE",
                "/api/v1/tenants/{id}",
                format!("/api/v1/tenants/{key}"),
                None,
                OperatorOnly,
            ),
        ]);
    }
    // B's token revoked through A's own tenant path: the token is not A's.
    v.push(p(
        "DELETE",
        "/api/v1/tenants/{id}/tokens/{token_id}",
        format!("/api/v1/tenants/{own_tenant}/tokens/{}", b.token_id),
        None,
        NotFound,
    ));
    v.extend([
        p(
            "POST",
            "/api/v1/tenants",
            "/api/v1/tenants".into(),
            Some(json!({"name": "rogue"})),
            OperatorOnly,
        ),
        p(
            "GET",
            "/api/v1/replicas",
            "/api/v1/replicas".into(),
            None,
            OperatorOnly,
        ),
        p(
            "GET",
            "/api/v1/projects",
            "/api/v1/projects".into(),
            None,
            ListWithout,
        ),
        p(
            "POST",
            "/api/v1/projects",
            "/api/v1/projects".into(),
            Some(json!({"name": "a-own"})),
            ListWithout,
        ),
        p(
            "GET",
            "/api/v1/compute",
            "/api/v1/compute".into(),
            None,
            ListWithout,
        ),
        p(
            "GET",
            "/api/v1/usage",
            "/api/v1/usage?granularity=total".into(),
            None,
            ListWithout,
        ),
        p(
            "GET",
            "/api/v1/tenants",
            "/api/v1/tenants".into(),
            None,
            ListWithout,
        ),
        p(
            "GET",
            "/api/v1/audit",
            "/api/v1/audit".into(),
            None,
            ListWithout,
        ),
        p("GET", "/api/v1/info", "/api/v1/info".into(), None, Public),
        p(
            "GET",
            "/api/v1/openapi.json",
            "/api/v1/openapi.json".into(),
            None,
            Public,
        ),
        p("GET", "/healthz", "/healthz".into(), None, Public),
        p("GET", "/livez", "/livez".into(), None, Public),
        p("GET", "/readyz", "/readyz".into(), None, Public),
        p("GET", "/metrics", "/metrics".into(), None, Public),
    ]);
    v
}

/// Every (method, route) of the OpenAPI document.
fn document_routes() -> BTreeSet<(String, String)> {
    let doc: Value =
        serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json parses");
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if method != "parameters" {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// The same request aimed at objects that do not exist: a 404 for B's object must read the
/// same, or the message tells A that B's object exists.
fn as_unknown(uri: &str, b: &Victim) -> String {
    uri.replace(&b.project_id, "0f0e0d0c-0b0a-4908-8706-050403020100")
        .replace(&b.project_name, "no-such-project")
        .replace(&b.compute_id, "1f1e1d1c-1b1a-4918-9716-151413121110")
        .replace(&b.tenant_id, "2f2e2d2c-2b2a-4928-a726-252423222120")
        .replace(&b.tenant_name, "no-such-tenant")
        .replace(&b.token_id, "3f3e3d3c-3b3a-4938-b736-353433323130")
}

async fn isolation_matrix(env: &Env) {
    let a = env.tenant("acme", json!({})).await;
    let (_, a_token) = env.token(&a, None).await;
    let b_tenant = env.tenant("bravo", json!({"max_projects": 5})).await;
    let (b_token_id, b_token) = env.token(&b_tenant, None).await;
    // B's project, made by B's own token, with a role and a compute.
    let bp = env
        .call(
            "POST",
            "/api/v1/projects",
            Some(json!({"name": "bravo-shop"})),
            &b_token,
        )
        .await;
    assert_eq!(bp.0, StatusCode::CREATED, "{}", bp.1);
    assert_eq!(
        bp.1["tenant_id"],
        b_tenant.as_str(),
        "a tenant's project is its own"
    );
    let b_project = bp.1["id"].as_str().expect("id").to_owned();
    let role = env
        .call(
            "POST",
            &format!("/api/v1/projects/{b_project}/roles"),
            Some(json!({"name": "app", "password": "B-secret-password-1"})),
            &b_token,
        )
        .await;
    assert_eq!(role.0, StatusCode::CREATED, "{}", role.1);
    let bc = env
        .call(
            "POST",
            &format!("/api/v1/projects/{b_project}/compute"),
            Some(json!({})),
            &b_token,
        )
        .await;
    assert_eq!(bc.0, StatusCode::CREATED, "{}", bc.1);
    let b = Victim {
        tenant_id: b_tenant.clone(),
        tenant_name: "bravo".into(),
        project_id: b_project.clone(),
        project_name: "bravo-shop".into(),
        compute_id: bc.1["id"].as_str().expect("compute id").to_owned(),
        token_id: b_token_id,
        token: b_token,
    };
    // Something of B in the usage and audit data, so that a leak would show.
    env.plane.wake(&b.project_id).await.expect("B wakes");
    let before_starts = env.driver.starts();

    let probes = probes(&b, &a);
    let covered: BTreeSet<(String, String)> = probes
        .iter()
        .map(|p| (p.method.to_owned(), p.route.to_owned()))
        .collect();
    let documented = document_routes();
    let untested: Vec<_> = documented.difference(&covered).collect();
    assert!(
        untested.is_empty(),
        "routes in openapi.json without a line in the isolation matrix: {untested:?}"
    );
    let stale: Vec<_> = covered.difference(&documented).collect();
    assert!(
        stale.is_empty(),
        "matrix routes missing from openapi.json: {stale:?}"
    );

    let secrets = [
        b.tenant_id.as_str(),
        "bravo",
        b.project_id.as_str(),
        b.compute_id.as_str(),
        b.token_id.as_str(),
    ];
    for probe in &probes {
        let what = format!("{} {}", probe.method, probe.uri);
        let resp = env
            .call(probe.method, &probe.uri, probe.body.clone(), &a_token)
            .await;
        match probe.expect {
            Expect::NotFound => {
                assert_error(&resp, StatusCode::NOT_FOUND, "not_found");
                let body = probe
                    .body
                    .as_ref()
                    .map(|v| serde_json::from_str(&as_unknown(&v.to_string(), &b)).expect("json"));
                let unknown = env
                    .call(probe.method, &as_unknown(&probe.uri, &b), body, &a_token)
                    .await;
                assert_eq!(unknown.0, StatusCode::NOT_FOUND, "{what}: {}", unknown.1);
                assert_eq!(
                    as_unknown(&resp.1.to_string(), &b),
                    unknown.1.to_string(),
                    "{what}: B's object answers unlike an unknown one"
                );
            }
            Expect::OperatorOnly => assert_error(&resp, StatusCode::FORBIDDEN, "operator_only"),
            Expect::ListWithout if probe.route == "/api/v1/audit" => {
                // A's own log holds the paths A tried (B's names among them): what matters is
                // that every entry is A's.
                assert_eq!(resp.0, StatusCode::OK, "{what}: {}", resp.1);
                let entries = resp.1["entries"].as_array().expect("entries");
                assert!(!entries.is_empty(), "{what}: A's changes are audited");
                for e in entries {
                    assert_eq!(e["tenant_id"], a.as_str(), "{what}: {e}");
                    // A's own changes, or the operator's on A's objects (A's token's creation).
                    assert!(
                        e["actor_tenant_id"] == a.as_str() || e["actor"] == "operator",
                        "{what}: {e}"
                    );
                }
            }
            Expect::ListWithout | Expect::Public => {
                assert!(
                    resp.0.is_success() || probe.route == "/metrics",
                    "{what}: {} {}",
                    resp.0,
                    resp.1
                );
                let text = resp.1.to_string();
                for s in secrets {
                    assert!(!text.contains(s), "{what} shows B's {s}: {text}");
                }
            }
        }
    }

    // B is untouched: project, role, compute (still running, no second start), quotas, token.
    let bp = env
        .op(
            "GET",
            &format!("/api/v1/projects/{}", b.project_id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(bp["tenant_id"], b.tenant_id.as_str());
    let roles = env
        .op(
            "GET",
            &format!("/api/v1/projects/{}/roles", b.project_id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(roles["roles"].as_array().map(Vec::len), Some(1), "{roles}");
    let c = env.plane.compute(&b.compute_id).await.expect("B's compute");
    assert_eq!(c.state, ComputeState::Running);
    assert_eq!(env.driver.starts(), before_starts);
    let bt = env
        .op(
            "GET",
            &format!("/api/v1/tenants/{}", b.tenant_id),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(bt["quotas"]["max_projects"], 5, "{bt}");
    let tokens = env
        .call(
            "GET",
            &format!("/api/v1/tenants/{}/tokens", b.tenant_id),
            None,
            &b.token,
        )
        .await;
    assert_eq!(tokens.0, StatusCode::OK);
    assert!(
        tokens.1["tokens"][0]["revoked_at"].is_null(),
        "{}",
        tokens.1
    );
    assert!(
        !tokens.1.to_string().contains(&b.token),
        "a listing never shows a secret"
    );
    let planted = env
        .op("GET", "/api/v1/projects?tenant=bravo", None, StatusCode::OK)
        .await;
    assert_eq!(
        planted["projects"].as_array().map(Vec::len),
        Some(1),
        "{planted}"
    );

    // A's refused attempts are in A's audit log, not B's.
    let a_audit = env
        .call("GET", "/api/v1/audit?limit=1000", None, &a_token)
        .await;
    let b_audit = env
        .call("GET", "/api/v1/audit?limit=1000", None, &b.token)
        .await;
    let a_entries = a_audit.1["entries"].as_array().expect("entries").clone();
    let b_entries = b_audit.1["entries"].as_array().expect("entries").clone();
    assert!(
        a_entries
            .iter()
            .any(|e| e["method"] == "DELETE" && e["status"] == 404),
        "A's refused delete is audited: {a_audit:?}"
    );
    assert!(
        a_entries.iter().all(|e| e["tenant_id"] == a.as_str()),
        "{a_audit:?}"
    );
    assert!(
        b_entries
            .iter()
            .all(|e| e["tenant_id"] == b.tenant_id.as_str()),
        "{b_audit:?}"
    );
    assert!(
        b_entries
            .iter()
            .all(|e| e["actor"] != "operator" || e["method"] == "POST"),
        "{b_audit:?}"
    );
    assert!(
        b_entries.iter().all(|e| e["actor_tenant_id"] != a.as_str()),
        "{b_audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_never_reaches_another_tenant_sqlite() {
    isolation_matrix(&env(false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_never_reaches_another_tenant_postgres() {
    isolation_matrix(&env(true).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_tokens_fail_at_once() {
    let env = env(false).await;
    let t = env.tenant("tok", json!({})).await;
    let (id, secret) = env.token(&t, None).await;
    assert!(
        secret.starts_with("doze_") && secret.len() == 69,
        "{secret}"
    );
    let ok = env.call("GET", "/api/v1/projects", None, &secret).await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    // Cached now; a revocation must still take effect on the next request.
    let revoke = env
        .call(
            "DELETE",
            &format!("/api/v1/tenants/{t}/tokens/{id}"),
            None,
            &secret,
        )
        .await;
    assert_eq!(revoke.0, StatusCode::NO_CONTENT, "{}", revoke.1);
    let after = env.call("GET", "/api/v1/projects", None, &secret).await;
    assert_error(&after, StatusCode::UNAUTHORIZED, "unauthorized");
    let listed = env
        .op(
            "GET",
            &format!("/api/v1/tenants/{t}/tokens"),
            None,
            StatusCode::OK,
        )
        .await;
    assert!(listed["tokens"][0]["revoked_at"].is_string(), "{listed}");

    // Expiry, checked at every use (the token is cached before it expires).
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1500);
    let (_, short) = env.token(&t, Some(soon.to_string())).await;
    let ok = env.call("GET", "/api/v1/projects", None, &short).await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let late = env.call("GET", "/api/v1/projects", None, &short).await;
    assert_error(&late, StatusCode::UNAUTHORIZED, "unauthorized");

    // A token made with a tenant token expires no later than it and dies with it.
    let in_an_hour = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    let (parent_id, parent) = env.token(&t, Some(in_an_hour)).await;
    let mint_uri = format!("/api/v1/tenants/{t}/tokens");
    let forever = env
        .call("POST", &mint_uri, Some(json!({"name": "child"})), &parent)
        .await;
    assert_eq!(forever.0, StatusCode::CREATED, "{}", forever.1);
    let listed = env.op("GET", &mint_uri, None, StatusCode::OK).await;
    let parent_expiry = listed["tokens"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["id"] == parent_id.as_str()))
        .map(|x| x["expires_at"].clone())
        .expect("parent listed");
    assert!(parent_expiry.is_string(), "{listed}");
    assert_eq!(
        forever.1["expires_at"], parent_expiry,
        "capped at the parent's expiry"
    );
    let later = env
        .call(
            "POST",
            &mint_uri,
            Some(json!({"expires_at": "2099-01-01"})),
            &parent,
        )
        .await;
    assert_eq!(later.1["expires_at"], parent_expiry, "{}", later.1);
    let child_secret = forever.1["token"].as_str().expect("secret").to_owned();
    let grandchild = env
        .call(
            "POST",
            &mint_uri,
            Some(json!({"name": "grandchild"})),
            &child_secret,
        )
        .await;
    assert_eq!(grandchild.0, StatusCode::CREATED, "{}", grandchild.1);
    let revoke_parent = format!("/api/v1/tenants/{t}/tokens/{parent_id}");
    env.op("DELETE", &revoke_parent, None, StatusCode::NO_CONTENT)
        .await;
    for made in [&forever.1, &later.1, &grandchild.1] {
        let secret = made["token"].as_str().expect("secret");
        assert_error(
            &env.call("GET", "/api/v1/projects", None, secret).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    // Revoking again changes nothing; an unknown token id is a 404.
    env.op("DELETE", &revoke_parent, None, StatusCode::NO_CONTENT)
        .await;
    let unknown = env
        .call(
            "DELETE",
            &format!("/api/v1/tenants/{t}/tokens/nope"),
            None,
            OPERATOR,
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");

    // A past expiry, a bad one, a guess, and a token of a deleted tenant.
    let past = env
        .call(
            "POST",
            &format!("/api/v1/tenants/{t}/tokens"),
            Some(json!({"expires_at": "2020-01-01"})),
            OPERATOR,
        )
        .await;
    assert_error(&past, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let bad = env
        .call(
            "POST",
            &format!("/api/v1/tenants/{t}/tokens"),
            Some(json!({"expires_at": "soon"})),
            OPERATOR,
        )
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let guess = format!("doze_{}", "0".repeat(64));
    assert_error(
        &env.call("GET", "/api/v1/projects", None, &guess).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let gone = env.tenant("gone", json!({})).await;
    let (_, gone_secret) = env.token(&gone, None).await;
    assert_eq!(
        env.call("GET", "/api/v1/projects", None, &gone_secret)
            .await
            .0,
        StatusCode::OK
    );
    env.op(
        "DELETE",
        &format!("/api/v1/tenants/{gone}"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    assert_error(
        &env.call("GET", "/api/v1/projects", None, &gone_secret)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_at_create_and_at_wake() {
    let env = env(false).await;
    let t = env
        .tenant(
            "quota",
            json!({"max_projects": 2, "max_running_computes": 1, "max_memory": "384Mi"}),
        )
        .await;
    let (_, token) = env.token(&t, None).await;
    let mut projects = Vec::new();
    for name in ["q-one", "q-two"] {
        let p = env
            .call(
                "POST",
                "/api/v1/projects",
                Some(json!({"name": name})),
                &token,
            )
            .await;
        assert_eq!(p.0, StatusCode::CREATED, "{}", p.1);
        projects.push(p.1["id"].as_str().expect("id").to_owned());
    }
    let third = env
        .call(
            "POST",
            "/api/v1/projects",
            Some(json!({"name": "q-three"})),
            &token,
        )
        .await;
    assert_error(&third, StatusCode::FORBIDDEN, "quota_exceeded");
    let msg = third.1["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("max_projects = 2") && msg.contains("2 in use"),
        "{msg}"
    );

    // A compute bigger than the whole memory quota is refused at create.
    let big = env
        .call(
            "POST",
            &format!("/api/v1/projects/{}/compute", projects[0]),
            Some(json!({"config": {"resources": {"memory": "512Mi"}}})),
            &token,
        )
        .await;
    assert_error(&big, StatusCode::FORBIDDEN, "quota_exceeded");
    assert!(
        big.1["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_memory"),
        "{}",
        big.1
    );
    let mut computes = Vec::new();
    for p in &projects {
        let c = env
            .call(
                "POST",
                &format!("/api/v1/projects/{p}/compute"),
                Some(json!({"config": {"resources": {"memory": "256Mi"}}})),
                &token,
            )
            .await;
        assert_eq!(c.0, StatusCode::CREATED, "{}", c.1);
        computes.push(c.1["id"].as_str().expect("id").to_owned());
    }

    // Two wakes at once, one slot: exactly one starts, the other is refused with the quota.
    env.driver.set_start_delay(Duration::from_millis(300));
    let wakes = projects.iter().map(|p| {
        let plane = Arc::clone(&env.plane);
        let p = p.clone();
        tokio::spawn(async move { plane.wake(&p).await })
    });
    let answers: Vec<_> = futures::future::join_all(wakes)
        .await
        .into_iter()
        .map(|j| j.expect("join"))
        .collect();
    let started = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(started, 1, "{answers:?}");
    let refused = answers
        .iter()
        .find_map(|a| a.as_ref().err())
        .expect("one refused");
    assert!(
        matches!(refused, WakeError::QuotaExceeded(m) if m.contains("max_running_computes = 1")),
        "{refused:?}"
    );
    assert_eq!(env.driver.starts(), 1);
    let (running, idle) = if answers[0].is_ok() { (0, 1) } else { (1, 0) };

    // Through REST too: resume of the idle one is a 403 naming the quota.
    let resume = env
        .call(
            "POST",
            &format!("/api/v1/compute/{}/resume", computes[idle]),
            None,
            &token,
        )
        .await;
    assert_error(&resume, StatusCode::FORBIDDEN, "quota_exceeded");
    let tenant = env
        .call("GET", &format!("/api/v1/tenants/{t}"), None, &token)
        .await;
    assert_eq!(tenant.1["usage"]["running_computes"], 1, "{}", tenant.1);
    assert_eq!(
        tenant.1["usage"]["memory_bytes"],
        256u64 << 20,
        "{}",
        tenant.1
    );

    // The operator raises the slot count; memory (256 + 256 > 384 MiB) still refuses.
    env.op(
        "PATCH",
        &format!("/api/v1/tenants/{t}"),
        Some(json!({"quotas": {"max_projects": 2, "max_running_computes": 2, "max_memory": "384Mi"}})),
        StatusCode::OK,
    )
    .await;
    let mem = env
        .plane
        .wake(&projects[idle])
        .await
        .expect_err("over memory");
    assert!(
        matches!(&mem, WakeError::QuotaExceeded(m) if m.contains("max_memory")),
        "{mem:?}"
    );
    // A tenant cannot raise its own quota.
    let selfish = env
        .call(
            "PATCH",
            &format!("/api/v1/tenants/{t}"),
            Some(json!({"quotas": {}})),
            &token,
        )
        .await;
    assert_error(&selfish, StatusCode::FORBIDDEN, "operator_only");

    // Suspending the running one frees the slot and the memory.
    let s = env
        .call(
            "POST",
            &format!("/api/v1/compute/{}/suspend", computes[running]),
            None,
            &token,
        )
        .await;
    assert_eq!(s.0, StatusCode::OK, "{}", s.1);
    env.plane.wake(&projects[idle]).await.expect("fits now");
    assert_eq!(env.driver.starts(), 2);

    // Bad quotas are 422 and change nothing.
    for bad in [
        json!({"max_projects": -1}),
        json!({"max_memory": 7}),
        json!({"max_disk": 1}),
    ] {
        let r = env
            .call(
                "PATCH",
                &format!("/api/v1/tenants/{t}"),
                Some(json!({"quotas": bad})),
                OPERATOR,
            )
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    let kept = env
        .op("GET", &format!("/api/v1/tenants/{t}"), None, StatusCode::OK)
        .await;
    assert_eq!(kept["quotas"]["max_running_computes"], 2, "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_lifecycle_and_audit() {
    let env = env(false).await;
    // The default tenant holds projects made without one (and those from before tenants).
    let p = env
        .plane
        .create_project("legacy", json!({}))
        .await
        .expect("project");
    assert_eq!(p.tenant_id, doze_control::store::DEFAULT_TENANT_ID);
    // A project never lands in a tenant that does not exist (or was deleted meanwhile).
    let orphan = env
        .plane
        .create_project_in("orphan", json!({}), "5e1f0000-0000-4000-8000-000000000000")
        .await;
    assert!(
        matches!(&orphan, Err(doze_control::ControlError::NotFound(m)) if m.contains("no tenant")),
        "{orphan:?}"
    );
    let list = env.op("GET", "/api/v1/tenants", None, StatusCode::OK).await;
    let default = list["tenants"]
        .as_array()
        .and_then(|l| l.iter().find(|t| t["name"] == "default"))
        .cloned()
        .expect("the default tenant exists");
    assert_eq!(default["usage"]["projects"], 1, "{default}");
    let d = env
        .call("DELETE", "/api/v1/tenants/default", None, OPERATOR)
        .await;
    assert_error(&d, StatusCode::CONFLICT, "conflict");

    // Names: validated, unique; a tenant with projects is not deleted.
    for bad in [
        json!({"name": "Bad Name"}),
        json!({"name": ""}),
        json!({"name": "ok", "quotas": []}),
    ] {
        let r = env
            .call("POST", "/api/v1/tenants", Some(bad), OPERATOR)
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    let t = env.tenant("busy", json!({})).await;
    let dup = env
        .call(
            "POST",
            "/api/v1/tenants",
            Some(json!({"name": "busy"})),
            OPERATOR,
        )
        .await;
    assert_error(&dup, StatusCode::CONFLICT, "conflict");
    env.op(
        "POST",
        "/api/v1/projects",
        Some(json!({"name": "busy-app", "tenant": "busy"})),
        StatusCode::CREATED,
    )
    .await;
    let busy = env
        .call("DELETE", &format!("/api/v1/tenants/{t}"), None, OPERATOR)
        .await;
    assert_error(&busy, StatusCode::CONFLICT, "conflict");
    env.op(
        "DELETE",
        "/api/v1/projects/busy-app",
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    env.op(
        "DELETE",
        &format!("/api/v1/tenants/{t}"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;

    // A wake through the API starts a compute: audited although it is a GET.
    let wake = env
        .call(
            "GET",
            "/api/v1/wake_compute?endpointish=legacy",
            None,
            OPERATOR,
        )
        .await;
    assert_error(&wake, StatusCode::NOT_FOUND, "no_compute");
    // The audit log: every change, with who, the tenant touched and the status; no reads.
    let audit = env
        .op("GET", "/api/v1/audit?limit=1000", None, StatusCode::OK)
        .await;
    let entries = audit["entries"].as_array().expect("entries");
    let find = |method: &str, path: &str, status: u64| {
        entries
            .iter()
            .find(|e| e["method"] == method && e["path"] == path && e["status"] == status)
            .cloned()
            .unwrap_or_else(|| panic!("no {method} {path} {status} in {audit}"))
    };
    let created = find("POST", "/api/v1/tenants", 201);
    assert_eq!(created["actor"], "operator");
    find("DELETE", "/api/v1/tenants/default", 409);
    let deleted = find("DELETE", &format!("/api/v1/tenants/{t}"), 204);
    assert_eq!(deleted["tenant_id"], t.as_str(), "{deleted}");
    assert!(
        entries.iter().all(|e| e["method"] != "GET"
            || e["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/api/v1/wake_compute"))),
        "reads are not audited"
    );
    find("GET", "/api/v1/wake_compute?endpointish=legacy", 404);
    let times: Vec<&str> = entries.iter().filter_map(|e| e["at"].as_str()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let one = env
        .op("GET", "/api/v1/audit?limit=1", None, StatusCode::OK)
        .await;
    assert_eq!(one["entries"].as_array().map(Vec::len), Some(1));
    for bad in ["limit=0", "limit=x", "before=yesterday"] {
        let r = env
            .call("GET", &format!("/api/v1/audit?{bad}"), None, OPERATOR)
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    // No token at all, and a wrong one.
    let anon = call(&env.router, "GET", "/api/v1/tenants", None, None).await;
    assert_error(&anon, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_prunes_the_audit_log_past_its_retention() {
    let env = env_with(false, |c| {
        c.audit_retention = Duration::from_millis(600);
        c.check_interval = Duration::from_millis(100);
    })
    .await;
    env.tenant("old-news", json!({})).await;
    let count = || async {
        env.op("GET", "/api/v1/audit", None, StatusCode::OK).await["entries"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(count().await, 1);
    let scheduler = env.plane.spawn_scheduler();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count().await, 1, "younger than the retention: kept");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while count().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the entry outlived --audit-retention"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scheduler.abort();
}

/// Two replicas on one PostgreSQL, waking two computes of one tenant with one slot at the
/// same instant, again and again: exactly one starts each time (the tenant's lock across
/// replicas, not only each process's own gate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_never_both_take_a_tenants_last_slot() {
    let pg = Postgres::start().await.expect("postgres");
    let mut planes = Vec::new();
    for i in 0..2 {
        let cfg = ControlConfig {
            db_dsn: pg.dsn(),
            data_dir: std::env::temp_dir(),
            idle_timeout: Duration::ZERO,
            check_interval: Duration::from_secs(3600),
            wake_timeout: Duration::from_secs(10),
            replica_id: format!("quota-{i}"),
            ..ControlConfig::default()
        };
        let store = Store::open(&cfg.db_dsn).await.expect("store");
        planes.push(
            ControlPlane::start_with_driver(cfg, Activity::new(), store, FakeDriver::new())
                .await
                .expect("plane"),
        );
    }
    let t = planes[0]
        .tenancy()
        .create_tenant("one-slot", json!({"max_running_computes": 1}))
        .await
        .expect("tenant");
    let mut projects = Vec::new();
    for name in ["slot-a", "slot-b"] {
        let p = planes[0]
            .create_project_in(name, json!({}), &t.id)
            .await
            .expect("project");
        let c = planes[0]
            .create_compute(&p.id, json!({}))
            .await
            .expect("compute");
        projects.push((p.id, c.id));
    }
    for round in 0..15 {
        let wakes = [0, 1].map(|i| {
            let plane = Arc::clone(&planes[i]);
            let project = projects[i].0.clone();
            tokio::spawn(async move { plane.wake(&project).await })
        });
        let mut started = Vec::new();
        for (i, w) in wakes.into_iter().enumerate() {
            match w.await.expect("join") {
                Ok(_) => started.push(i),
                Err(WakeError::QuotaExceeded(_)) => {}
                Err(e) => panic!("round {round}: {e:?}"),
            }
        }
        assert_eq!(started.len(), 1, "round {round}: {started:?} started");
        let winner = started[0];
        planes[winner]
            .suspend_compute(&projects[winner].1)
            .await
            .expect("suspend");
    }
}
