//! The admin REST API: HTTP in, calls on [`ControlPlane`] out, nothing else.
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}`, including malformed JSON,
//! a wrong content type, unknown paths and methods (no plain-text rejections).

use std::sync::Arc;

use crate::config::SuspendMode;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use crate::ControlPlane;
use crate::error::ControlError;
use crate::gateway::WakeError;
use crate::store::{ApiToken, AuditEntry, Compute, ComputeEvent, Project, Role, Tenant};
use crate::tenancy::{Caller, Quotas};
use crate::time::rfc3339;

const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Clone)]
struct AppState {
    plane: Arc<ControlPlane>,
    metrics: Option<PrometheusHandle>,
}

/// `/api/v1/...` (bearer token when configured), `/healthz` and `/metrics`.
pub fn router(plane: Arc<ControlPlane>, metrics: Option<PrometheusHandle>) -> Router {
    let state = AppState { plane, metrics };
    let api = Router::new()
        .route("/api/v1/projects", post(create_project).get(list_projects))
        .route(
            "/api/v1/projects/{id}",
            get(get_project).delete(delete_project),
        )
        .route(
            "/api/v1/projects/{id}/compute",
            post(create_compute).get(get_project_compute),
        )
        .route("/api/v1/compute", get(list_computes))
        .route("/api/v1/info", get(info))
        .route(
            "/api/v1/projects/{id}/roles",
            post(create_role).get(list_roles),
        )
        .route(
            "/api/v1/projects/{id}/roles/{name}",
            put(set_role_password).delete(delete_role),
        )
        .route(
            "/api/v1/compute/{id}",
            get(get_compute).delete(delete_compute),
        )
        .route("/api/v1/compute/{id}/suspend", post(suspend_compute))
        .route("/api/v1/compute/{id}/resume", post(resume_compute))
        .route("/api/v1/compute/{id}/events", get(compute_events))
        .route("/api/v1/wake_compute", get(wake_compute))
        .route("/api/v1/projects/{id}/usage", get(project_usage))
        .route("/api/v1/usage", get(all_usage))
        .route("/api/v1/replicas", get(list_replicas))
        .route("/api/v1/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/api/v1/tenants/{id}",
            get(get_tenant).patch(update_tenant).delete(delete_tenant),
        )
        .route(
            "/api/v1/tenants/{id}/tokens",
            post(create_token).get(list_tokens),
        )
        .route(
            "/api/v1/tenants/{id}/tokens/{token_id}",
            axum::routing::delete(revoke_token),
        )
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

// ---------- errors ----------

/// An API error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let msg = e.to_string();
        match e {
            ControlError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", msg),
            ControlError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            ControlError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", msg)
            }
            ControlError::SessionsOpen { .. } => {
                ApiError::new(StatusCode::CONFLICT, "sessions_open", msg)
            }
            ControlError::QuotaExceeded(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", msg)
            }
            ControlError::OperatorOnly(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "operator_only", msg)
            }
            ControlError::Wake(w) => w.into(),
            ControlError::Internal(_) => {
                tracing::error!(error = %msg, "admin API request failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg)
            }
        }
    }
}

impl From<WakeError> for ApiError {
    fn from(e: WakeError) -> Self {
        let msg = e.to_string();
        match e {
            WakeError::NoCompute(_) => ApiError::new(StatusCode::NOT_FOUND, "no_compute", msg),
            WakeError::StartFailed { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "start_failed", msg)
            }
            WakeError::RateLimited { retry_in_secs, .. } => ApiError {
                retry_after: Some(retry_in_secs),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "rate_limited", msg)
            },
            WakeError::Timeout { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "wake_timeout", msg)
            }
            WakeError::UnknownProject(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", msg),
            WakeError::QuotaExceeded(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", msg)
            }
            WakeError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", msg)
            }
            WakeError::Store(_) => {
                tracing::error!(error = %msg, "wake failed in the state store");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", msg)
            }
            WakeError::Internal(_) => {
                tracing::error!(error = %msg, "wake failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "wake_failed", msg)
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

// ---------- extractors ----------

/// A JSON body. An empty body counts as `{}`; a non-empty one needs a JSON content type.
/// Malformed JSON is 400, well-formed JSON of the wrong shape 422.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            if json_type != Some(true) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as JSON with `Content-Type: application/json`",
                ));
            }
            &bytes
        };
        // Syntax first (400), then shape (422): `[[` is broken JSON, not a wrong type.
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        serde_json::from_value(value).map(JsonBody).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("invalid request body: {e}"),
            )
        })
    }
}

/// Path parameters with JSON errors.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))
    }
}

/// Query parameters with JSON errors.
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

// ---------- auth ----------

fn digest(bytes: &[u8]) -> [u8; 20] {
    Sha1::digest(bytes).into()
}

/// Compares two secrets in time independent of where they differ (and of their lengths: the
/// digests have one length).
fn token_matches(given: &str, expected: &str) -> bool {
    doze_protocol::native_password::ct_eq(&digest(given.as_bytes()), &digest(expected.as_bytes()))
}

/// True for a `Host` or `Origin` authority naming this machine's loopback: `localhost`,
/// `127.0.0.1` (any of 127/8) or `[::1]`, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Without a token, the admin API trusts whoever can reach its loopback port, so it must not
/// be reachable through a web browser on this machine: a page elsewhere can make the browser
/// send requests to 127.0.0.1 (cross-origin POSTs need no preflight), and DNS rebinding makes
/// the browser call an attacker's name that resolves to 127.0.0.1. Both are refused: `Host`
/// must name the loopback, and an `Origin`, when a browser sends one, must too.
fn check_local_caller(req: &Request) -> Result<(), ApiError> {
    let header = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}").trim().to_owned())
    };
    if let Some(host) = header(header::HOST)
        && !is_loopback_authority(&host)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "without an admin token, the admin API answers only requests addressed to \
             localhost, 127.0.0.1 or [::1]; set --admin-token to call it by another name",
        ));
    }
    if let Some(origin) = header(header::ORIGIN) {
        let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
        if origin == "null" || !is_loopback_authority(authority.trim_end_matches('/')) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "the admin API refuses requests from web pages (cross-origin requests)",
            ));
        }
    }
    Ok(())
}

/// The bearer token of a request, if it has one.
fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// Who is calling: the operator's `--admin-token`, a tenant token, or (without an admin
/// token) a local caller, who is the operator. `local` is [`check_local_caller`]'s verdict.
async fn authenticate(
    state: &AppState,
    given: Option<&str>,
    local: Result<(), ApiError>,
) -> Result<Caller, ApiError> {
    let expected = state.plane.config().admin_token.as_deref();
    if let (Some(expected), Some(token)) = (expected, given)
        && token_matches(token, expected)
    {
        return Ok(Caller::Operator);
    }
    match given {
        Some(token) => state
            .plane
            .tenancy()
            .authenticate(token)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "invalid, revoked or expired token",
                )
            }),
        None if expected.is_some() => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <token>` header",
        )),
        None => local.map(|()| Caller::Operator),
    }
}

/// Authenticates every `/api/v1` request, hands the caller to the handler ([`Auth`]), and
/// records every change (any method but GET and HEAD) in the audit log with its outcome.
async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = bearer(&req).map(str::to_owned);
    let local = check_local_caller(&req);
    let caller = match authenticate(&state, given.as_deref(), local).await {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    let auth = Auth {
        caller,
        target: Arc::new(std::sync::OnceLock::new()),
    };
    req.extensions_mut().insert(auth.clone());
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let resp = next.run(req).await;
    // Changes, and the one GET that changes something (a wake starts a compute).
    let audited = (method != axum::http::Method::GET && method != axum::http::Method::HEAD)
        || path.starts_with("/api/v1/wake_compute");
    if audited {
        let tenant_id = auth
            .target
            .get()
            .cloned()
            .or_else(|| auth.caller.tenant().map(str::to_owned));
        state
            .plane
            .tenancy()
            .record(AuditEntry {
                id: uuid::Uuid::new_v4().to_string(),
                at: crate::activity::now_ms() as i64,
                actor: auth.caller.actor().to_owned(),
                actor_tenant_id: auth.caller.tenant().map(str::to_owned),
                tenant_id,
                method: method.to_string(),
                path: path.chars().take(2000).collect(),
                status: i64::from(resp.status().as_u16()),
                replica: state.plane.config().replica_id.clone(),
            })
            .await;
    }
    resp
}

/// The caller of an `/api/v1` request, and the tenant whose objects it touched once a handler
/// has found them (for the audit log).
#[derive(Clone)]
struct Auth {
    caller: Caller,
    target: Arc<std::sync::OnceLock<String>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Auth>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request was not authenticated",
            )
        })
    }
}

impl Auth {
    /// Notes the tenant whose object this request touches.
    fn touched(&self, tenant_id: &str) {
        let _ = self.target.set(tenant_id.to_owned());
    }

    /// Refuses tenant tokens: `what` is for the operator only.
    fn operator_only(&self, what: &str) -> Result<(), ControlError> {
        match self.caller {
            Caller::Operator => Ok(()),
            Caller::Tenant { .. } => Err(ControlError::OperatorOnly(format!(
                "only the operator's admin token may {what}"
            ))),
        }
    }

    /// A project by id or name, if the caller may see it; another tenant's project is as
    /// unknown as one that does not exist (the same 404 and message).
    async fn project(&self, s: &AppState, key: &str) -> Result<Project, ControlError> {
        let p = s.plane.project(key).await?;
        if !self.caller.sees(&p.tenant_id) {
            return Err(ControlError::NotFound(format!(
                "no project with id or name '{key}'"
            )));
        }
        self.touched(&p.tenant_id);
        Ok(p)
    }

    /// A compute by id, if the caller may see its project (the unknown compute's 404
    /// otherwise).
    async fn compute(&self, s: &AppState, id: &str) -> Result<Compute, ControlError> {
        let c = s.plane.compute(id).await?;
        let unknown = || ControlError::NotFound(format!("no compute with id '{id}'"));
        let p = match s.plane.project(&c.project_id).await {
            Ok(p) => p,
            Err(ControlError::NotFound(_)) => return Err(unknown()),
            Err(e) => return Err(e),
        };
        if !self.caller.sees(&p.tenant_id) {
            return Err(unknown());
        }
        self.touched(&p.tenant_id);
        Ok(c)
    }

    /// A tenant by id or name, if the caller may see it.
    async fn tenant(&self, s: &AppState, key: &str) -> Result<Tenant, ControlError> {
        let t = s.plane.tenancy().tenant(&self.caller, key).await?;
        self.touched(&t.id);
        Ok(t)
    }
}

// ---------- JSON shapes ----------

fn project_json(p: &Project) -> Value {
    json!({"id": p.id, "name": p.name, "config": p.config, "tenant_id": p.tenant_id, "created_at": rfc3339(p.created_at)})
}

fn compute_json(c: &Compute) -> Value {
    json!({
        "id": c.id,
        "project_id": c.project_id,
        "state": c.state,
        "address": c.address,
        "config": c.config,
        "created_at": rfc3339(c.created_at),
        "updated_at": rfc3339(c.updated_at),
        "last_error": c.last_error,
        // Filled in by GET /api/v1/compute/{id} only (it reads /proc or the cgroup).
        "memory_bytes": null,
    })
}

fn role_json(r: &Role) -> Value {
    json!({"name": r.name, "project_id": r.project_id, "created_at": rfc3339(r.created_at)})
}

fn event_json(e: &ComputeEvent) -> Value {
    json!({"from_state": e.from_state, "to_state": e.to_state, "reason": e.reason, "at": rfc3339(e.at)})
}

fn config_or_empty(config: Option<Value>) -> Value {
    match config {
        None | Some(Value::Null) => json!({}),
        Some(v) => v,
    }
}

// ---------- handlers ----------

#[derive(Deserialize)]
struct CreateProject {
    name: String,
    #[serde(default)]
    config: Option<Value>,
    /// The owning tenant (id or name); a tenant token's own tenant by default, else the
    /// default tenant.
    #[serde(default)]
    tenant: Option<String>,
}

async fn create_project(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<CreateProject>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant_id = match (&body.tenant, auth.caller.tenant()) {
        (Some(key), _) => auth.tenant(&s, key).await?.id,
        (None, Some(own)) => own.to_owned(),
        (None, None) => crate::store::DEFAULT_TENANT_ID.to_owned(),
    };
    auth.touched(&tenant_id);
    let p = s
        .plane
        .create_project_in(&body.name, config_or_empty(body.config), &tenant_id)
        .await?;
    Ok((StatusCode::CREATED, Json(project_json(&p))))
}

#[derive(Deserialize)]
struct ProjectListQuery {
    tenant: Option<String>,
}

async fn list_projects(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ProjectListQuery>,
) -> ApiResult<Json<Value>> {
    let only = match &q.tenant {
        Some(key) => Some(auth.tenant(&s, key).await?.id),
        None => auth.caller.tenant().map(str::to_owned),
    };
    let mut projects = s.plane.list_projects().await?;
    projects.retain(|p| only.as_ref().is_none_or(|t| *t == p.tenant_id));
    Ok(Json(
        json!({"projects": projects.iter().map(project_json).collect::<Vec<_>>()}),
    ))
}

async fn get_project(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(project_json(&auth.project(&s, &id).await?)))
}

async fn delete_project(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let p = auth.project(&s, &id).await?;
    s.plane.delete_project(&p.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct CreateCompute {
    #[serde(default)]
    config: Option<Value>,
}

async fn create_compute(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<CreateCompute>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = auth.project(&s, &id).await?;
    let c = s
        .plane
        .create_compute(&p.id, config_or_empty(body.config))
        .await?;
    Ok((StatusCode::CREATED, Json(compute_json(&c))))
}

async fn get_project_compute(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let p = auth.project(&s, &id).await?;
    let c = s.plane.project_compute(&p.id).await?;
    let mut body = compute_json(&c);
    body["memory_bytes"] = json!(s.plane.compute_memory(&c));
    Ok(Json(body))
}

#[derive(Deserialize)]
struct ComputeListQuery {
    project: Option<String>,
}

async fn list_computes(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ComputeListQuery>,
) -> ApiResult<Json<Value>> {
    let computes = match (&q.project, auth.caller.tenant()) {
        (Some(key), _) => {
            let p = auth.project(&s, key).await?;
            s.plane.list_computes(Some(&p.id)).await?
        }
        (None, None) => s.plane.list_computes(None).await?,
        (None, Some(tenant)) => {
            let mine: std::collections::HashSet<String> = s
                .plane
                .store()
                .tenant_projects(tenant)
                .await
                .map_err(ControlError::from)?
                .into_iter()
                .map(|p| p.id)
                .collect();
            let mut all = s.plane.list_computes(None).await?;
            all.retain(|c| mine.contains(&c.project_id));
            all
        }
    };
    Ok(Json(
        json!({"computes": computes.iter().map(compute_json).collect::<Vec<_>>()}),
    ))
}

/// What this doze is: version, commit, driver, freezer, the proxy's address.
async fn info(State(s): State<AppState>) -> Json<Value> {
    let cfg = s.plane.config();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": doze_gateway::GIT_COMMIT,
        "driver": cfg.driver.to_string(),
        "freezer": s.plane.freezer(),
        "replica_id": cfg.replica_id,
        "proxy_address": s.plane.proxy_address(),
    }))
}

async fn get_compute(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let c = auth.compute(&s, &id).await?;
    let mut body = compute_json(&c);
    body["memory_bytes"] = json!(s.plane.compute_memory(&c));
    Ok(Json(body))
}

async fn delete_compute(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    auth.compute(&s, &id).await?;
    s.plane.delete_compute(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct SuspendQuery {
    mode: Option<String>,
}

async fn suspend_compute(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<SuspendQuery>,
) -> ApiResult<Json<Value>> {
    auth.compute(&s, &id).await?;
    let mode = match q.mode.as_deref() {
        None => SuspendMode::Stop,
        Some(m) => m
            .parse()
            .map_err(|e: anyhow::Error| ControlError::Invalid(format!("mode: {e}")))?,
    };
    Ok(Json(compute_json(
        &s.plane.suspend_compute_with(&id, mode).await?,
    )))
}

async fn resume_compute(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    auth.compute(&s, &id).await?;
    let (c, _) = s.plane.resume_compute(&id).await?;
    Ok(Json(compute_json(&c)))
}

async fn compute_events(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    auth.compute(&s, &id).await?;
    let events = s.plane.compute_events(&id).await?;
    Ok(Json(
        json!({"events": events.iter().map(event_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
    /// `/api/v1/usage` only: one tenant's projects (id or name).
    tenant: Option<String>,
}

/// `?from=&to=&granularity=`: `to` defaults to now, `from` to a day before `to` by the hour and
/// 30 days before it otherwise; granularity to `day`.
fn usage_range(q: &UsageQuery) -> Result<(i64, i64, crate::usage::Granularity), ControlError> {
    let granularity = match q.granularity.as_deref() {
        None => crate::usage::Granularity::Day,
        Some(g) => g.parse().map_err(ControlError::Invalid)?,
    };
    let time = |name: &str, text: &str| {
        crate::time::parse_time(text).map_err(|e| ControlError::Invalid(format!("{name}: {e}")))
    };
    let to = match &q.to {
        Some(t) => time("to", t)?,
        None => i64::try_from(crate::activity::now_ms()).unwrap_or(i64::MAX),
    };
    let from = match &q.from {
        Some(f) => time("from", f)?,
        None if granularity == crate::usage::Granularity::Hour => to - 24 * 3_600_000,
        None => to - 30 * 24 * 3_600_000,
    };
    if to <= 0 {
        return Err(ControlError::Invalid(
            "to: doze meters nothing before 1970".into(),
        ));
    }
    Ok((from.max(0), to, granularity))
}

/// The usage answer: JSON, or CSV when the client accepts `text/csv` (and not JSON first).
fn usage_response(
    rows: &[(crate::usage::Usage, String)],
    (from, to, granularity): (i64, i64, crate::usage::Granularity),
    headers: &axum::http::HeaderMap,
) -> Response {
    let seconds = |ms: i64| ms as f64 / 1000.0;
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv") && !a.starts_with("application/json"));
    if wants_csv {
        let mut csv = String::from(
            "project_id,project,start,end,running_seconds,frozen_seconds,connections,bytes_in,bytes_out\r\n",
        );
        for (u, name) in rows {
            csv.push_str(&format!(
                "{},{},{},{},{:.3},{:.3},{},{},{}\r\n",
                u.project_id,
                name,
                rfc3339(u.start),
                rfc3339(u.end),
                seconds(u.running_ms),
                seconds(u.frozen_ms),
                u.connections,
                u.bytes_in,
                u.bytes_out
            ));
        }
        return ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response();
    }
    let usage: Vec<Value> = rows
        .iter()
        .map(|(u, name)| {
            json!({
                "project_id": u.project_id,
                "project": name,
                "start": rfc3339(u.start),
                "end": rfc3339(u.end),
                "running_seconds": seconds(u.running_ms),
                "frozen_seconds": seconds(u.frozen_ms),
                "connections": u.connections,
                "bytes_in": u.bytes_in,
                "bytes_out": u.bytes_out,
            })
        })
        .collect();
    Json(json!({
        "from": rfc3339(from),
        "to": rfc3339(to),
        "granularity": granularity.as_str(),
        "usage": usage,
    }))
    .into_response()
}

async fn project_usage(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<UsageQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let range = usage_range(&q)?;
    let p = auth.project(&s, &id).await?;
    let rows = s
        .plane
        .usage(Some(&p.id), None, range.0, range.1, range.2)
        .await?;
    Ok(usage_response(&rows, range, &headers))
}

async fn all_usage(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<UsageQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let range = usage_range(&q)?;
    let only = match &q.tenant {
        Some(key) => Some(auth.tenant(&s, key).await?.id),
        None => auth.caller.tenant().map(str::to_owned),
    };
    let rows = s
        .plane
        .usage(None, only.as_deref(), range.0, range.1, range.2)
        .await?;
    Ok(usage_response(&rows, range, &headers))
}

#[derive(Deserialize)]
struct WakeQuery {
    endpointish: Option<String>,
}

async fn wake_compute(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<WakeQuery>,
) -> ApiResult<Json<Value>> {
    let Some(key) = q.endpointish.filter(|k| !k.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "missing query parameter `endpointish` (a project id or name)",
        ));
    };
    let project = auth.project(&s, &key).await?;
    let info = s.plane.wake(&project.id).await?;
    Ok(Json(json!({
        "address": info.address,
        "compute_id": info.compute_id,
        "cold_start": info.cold_start,
    })))
}

#[derive(Deserialize)]
struct CreateRole {
    name: String,
    password: String,
}

async fn create_role(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<CreateRole>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = auth.project(&s, &id).await?;
    let r = s
        .plane
        .create_role(&p.id, &body.name, &body.password)
        .await?;
    Ok((StatusCode::CREATED, Json(role_json(&r))))
}

#[derive(Deserialize)]
struct SetPassword {
    password: String,
}

async fn set_role_password(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath((id, name)): ApiPath<(String, String)>,
    JsonBody(body): JsonBody<SetPassword>,
) -> ApiResult<Json<Value>> {
    let p = auth.project(&s, &id).await?;
    let r = s
        .plane
        .set_role_password(&p.id, &name, &body.password)
        .await?;
    Ok(Json(role_json(&r)))
}

async fn list_roles(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let p = auth.project(&s, &id).await?;
    let (_, roles) = s.plane.list_roles(&p.id).await?;
    Ok(Json(
        json!({"roles": roles.iter().map(role_json).collect::<Vec<_>>()}),
    ))
}

async fn delete_role(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath((id, name)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let p = auth.project(&s, &id).await?;
    s.plane.delete_role(&p.id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list_replicas(State(s): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    auth.operator_only("list the replicas")?;
    Ok(Json(s.plane.replicas().await?))
}

// ---------- tenants, tokens, audit ----------

fn quotas_json(t: &Tenant) -> Value {
    let q = Quotas::parse(&t.quotas).unwrap_or_default();
    let memory = t.quotas.get("max_memory").cloned().unwrap_or(Value::Null);
    json!({
        "max_projects": q.max_projects,
        "max_running_computes": q.max_running_computes,
        "max_memory": memory,
    })
}

async fn tenant_json(s: &AppState, t: &Tenant) -> ApiResult<Value> {
    let used = s.plane.tenancy().usage(&t.id).await?;
    Ok(json!({
        "id": t.id,
        "name": t.name,
        "quotas": quotas_json(t),
        "usage": {
            "projects": used.projects,
            "running_computes": used.running_computes,
            "memory_bytes": used.memory,
        },
        "created_at": rfc3339(t.created_at),
    }))
}

fn token_json(t: &ApiToken) -> Value {
    json!({
        "id": t.id,
        "tenant_id": t.tenant_id,
        "name": t.name,
        "created_at": rfc3339(t.created_at),
        "expires_at": t.expires_at.map(rfc3339),
        "revoked_at": t.revoked_at.map(rfc3339),
    })
}

fn audit_json(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "at": rfc3339(e.at),
        "actor": e.actor,
        "actor_tenant_id": e.actor_tenant_id,
        "tenant_id": e.tenant_id,
        "method": e.method,
        "path": e.path,
        "status": e.status,
        "replica": e.replica,
    })
}

#[derive(Deserialize)]
struct CreateTenant {
    name: String,
    #[serde(default)]
    quotas: Option<Value>,
}

async fn create_tenant(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    auth.operator_only("create tenants")?;
    let t = s
        .plane
        .tenancy()
        .create_tenant(&body.name, config_or_empty(body.quotas))
        .await?;
    auth.touched(&t.id);
    Ok((StatusCode::CREATED, Json(tenant_json(&s, &t).await?)))
}

async fn list_tenants(State(s): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    let tenants = s.plane.tenancy().list_tenants(&auth.caller).await?;
    let mut list = Vec::with_capacity(tenants.len());
    for t in &tenants {
        list.push(tenant_json(&s, t).await?);
    }
    Ok(Json(json!({ "tenants": list })))
}

async fn get_tenant(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let t = auth.tenant(&s, &id).await?;
    Ok(Json(tenant_json(&s, &t).await?))
}

#[derive(Deserialize)]
struct UpdateTenant {
    quotas: Value,
}

async fn update_tenant(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<UpdateTenant>,
) -> ApiResult<Json<Value>> {
    // A tenant's token may read its quotas, never raise them.
    auth.operator_only("change a tenant's quotas")?;
    let t = auth.tenant(&s, &id).await?;
    let t = s
        .plane
        .tenancy()
        .set_quotas(&t, config_or_empty(Some(body.quotas)))
        .await?;
    Ok(Json(tenant_json(&s, &t).await?))
}

async fn delete_tenant(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    auth.operator_only("delete tenants")?;
    let t = auth.tenant(&s, &id).await?;
    s.plane.tenancy().delete_tenant(&t).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct CreateToken {
    #[serde(default)]
    name: Option<String>,
    /// RFC 3339 time or a date; none: the token does not expire.
    #[serde(default)]
    expires_at: Option<String>,
}

async fn create_token(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<CreateToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let t = auth.tenant(&s, &id).await?;
    let expires_at = body
        .expires_at
        .as_deref()
        .map(|text| {
            crate::time::parse_time(text)
                .map_err(|e| ControlError::Invalid(format!("expires_at: {e}")))
        })
        .transpose()?;
    let (token, secret) = s
        .plane
        .tenancy()
        .create_token(
            &t,
            body.name.as_deref().unwrap_or(""),
            expires_at,
            &auth.caller,
        )
        .await?;
    let mut body = token_json(&token);
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list_tokens(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let t = auth.tenant(&s, &id).await?;
    let tokens = s.plane.tenancy().list_tokens(&t).await?;
    Ok(Json(
        json!({"tokens": tokens.iter().map(token_json).collect::<Vec<_>>()}),
    ))
}

async fn revoke_token(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath((id, token_id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let t = auth.tenant(&s, &id).await?;
    s.plane.tenancy().revoke_token(&t, &token_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditQuery {
    tenant: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

async fn audit_log(
    State(s): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let tenant = match &q.tenant {
        Some(key) => Some(auth.tenant(&s, key).await?),
        None => None,
    };
    let before = match &q.before {
        Some(t) => {
            crate::time::parse_time(t).map_err(|e| ControlError::Invalid(format!("before: {e}")))?
        }
        None => i64::MAX,
    };
    let limit = match &q.limit {
        None => 100,
        Some(n) => n
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ControlError::Invalid("limit must be a whole number from 1 to 1000".into())
            })?,
    };
    let entries = s
        .plane
        .tenancy()
        .audit(&auth.caller, tenant.as_ref(), before, limit)
        .await?;
    Ok(Json(
        json!({"entries": entries.iter().map(audit_json).collect::<Vec<_>>()}),
    ))
}

/// Liveness: the process and its event loop answer. Never depends on the store, so a store
/// outage does not make an orchestrator restart every replica.
async fn livez() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 503 while draining (new clients are refused) or when the state store does not
/// answer; 200 otherwise.
async fn readyz(State(s): State<AppState>) -> Response {
    if s.plane.is_draining() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "doze is draining its sessions before it stops; it accepts no new clients".to_owned(),
        )
        .into_response();
    }
    healthz(State(s)).await
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.plane.store().ping().await {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the state store does not answer: {e}"),
        )
        .into_response(),
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(handle) => {
            // The process_* metrics (CPU, memory, open files), read now.
            metrics_process::Collector::default().collect();
            s.plane.lifecycle().accrue_compute_seconds();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
                .into_response()
        }
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled in this process",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{is_loopback_authority, token_matches};

    #[test]
    fn loopback_authorities() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
            "127.9.9.9",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "",
            "[::2]:80",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }

    #[test]
    fn tokens() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("", "abc"));
        assert!(!token_matches("abcd", "abc"));
    }
}
