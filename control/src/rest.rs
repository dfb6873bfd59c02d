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
use crate::store::{Compute, ComputeEvent, Project, Role};
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

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.plane.config().admin_token.as_deref() else {
        if let Err(refused) = check_local_caller(&req) {
            return refused.into_response();
        }
        return next.run(req).await;
    };
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        match given {
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing `Authorization: Bearer <token>` header",
                )
                .into_response();
            }
            Some(token) if !token_matches(token, expected) => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "invalid admin token",
                )
                .into_response();
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

// ---------- JSON shapes ----------

fn project_json(p: &Project) -> Value {
    json!({"id": p.id, "name": p.name, "config": p.config, "created_at": rfc3339(p.created_at)})
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
}

async fn create_project(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<CreateProject>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = s
        .plane
        .create_project(&body.name, config_or_empty(body.config))
        .await?;
    Ok((StatusCode::CREATED, Json(project_json(&p))))
}

async fn list_projects(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let projects = s.plane.list_projects().await?;
    Ok(Json(
        json!({"projects": projects.iter().map(project_json).collect::<Vec<_>>()}),
    ))
}

async fn get_project(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(project_json(&s.plane.project(&id).await?)))
}

async fn delete_project(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.plane.delete_project(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct CreateCompute {
    #[serde(default)]
    config: Option<Value>,
}

async fn create_compute(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<CreateCompute>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let c = s
        .plane
        .create_compute(&id, config_or_empty(body.config))
        .await?;
    Ok((StatusCode::CREATED, Json(compute_json(&c))))
}

async fn get_project_compute(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let c = s.plane.project_compute(&id).await?;
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
    ApiQuery(q): ApiQuery<ComputeListQuery>,
) -> ApiResult<Json<Value>> {
    let computes = s.plane.list_computes(q.project.as_deref()).await?;
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
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let c = s.plane.compute(&id).await?;
    let mut body = compute_json(&c);
    body["memory_bytes"] = json!(s.plane.compute_memory(&c));
    Ok(Json(body))
}

async fn delete_compute(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    s.plane.delete_compute(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct SuspendQuery {
    mode: Option<String>,
}

async fn suspend_compute(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<SuspendQuery>,
) -> ApiResult<Json<Value>> {
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
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (c, _) = s.plane.resume_compute(&id).await?;
    Ok(Json(compute_json(&c)))
}

async fn compute_events(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
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
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<UsageQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let range = usage_range(&q)?;
    let rows = s.plane.usage(Some(&id), range.0, range.1, range.2).await?;
    Ok(usage_response(&rows, range, &headers))
}

async fn all_usage(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<UsageQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let range = usage_range(&q)?;
    let rows = s.plane.usage(None, range.0, range.1, range.2).await?;
    Ok(usage_response(&rows, range, &headers))
}

#[derive(Deserialize)]
struct WakeQuery {
    endpointish: Option<String>,
}

async fn wake_compute(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<WakeQuery>,
) -> ApiResult<Json<Value>> {
    let Some(key) = q.endpointish.filter(|k| !k.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "missing query parameter `endpointish` (a project id or name)",
        ));
    };
    let project = s.plane.project(&key).await?;
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
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<CreateRole>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let r = s.plane.create_role(&id, &body.name, &body.password).await?;
    Ok((StatusCode::CREATED, Json(role_json(&r))))
}

#[derive(Deserialize)]
struct SetPassword {
    password: String,
}

async fn set_role_password(
    State(s): State<AppState>,
    ApiPath((id, name)): ApiPath<(String, String)>,
    JsonBody(body): JsonBody<SetPassword>,
) -> ApiResult<Json<Value>> {
    let r = s
        .plane
        .set_role_password(&id, &name, &body.password)
        .await?;
    Ok(Json(role_json(&r)))
}

async fn list_roles(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (_, roles) = s.plane.list_roles(&id).await?;
    Ok(Json(
        json!({"roles": roles.iter().map(role_json).collect::<Vec<_>>()}),
    ))
}

async fn delete_role(
    State(s): State<AppState>,
    ApiPath((id, name)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    s.plane.delete_role(&id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list_replicas(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(s.plane.replicas().await?))
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
