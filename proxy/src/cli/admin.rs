//! `doze project|compute|role ...`: thin clients of the admin REST API, so nobody needs curl.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Where the admin API is.
#[derive(Args, Debug, Clone)]
pub struct AdminConn {
    /// Base URL of a running doze's admin API.
    #[arg(long, env = "DOZE_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    admin: String,

    /// Bearer token of the admin API (the token doze serve was given). Prefer DOZE_ADMIN_TOKEN or --admin-token-file: a flag's value shows in `ps`.
    #[arg(long, env = "DOZE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// File holding the admin token (its first line); wins over --admin-token.
    #[arg(long, env = "DOZE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,

    /// Data dir of the doze serve to talk to: without a token or token file, the token it generated is read from <data-dir>/admin.token.
    #[arg(long, env = "DOZE_DATA_DIR", default_value = "./doze-data")]
    data_dir: std::path::PathBuf,

    /// Output format: `table` (for people), or `json` / `yaml` (one document, for scripts); `doze usage` also takes `csv`.
    #[arg(short = 'o', long = "output", env = "DOZE_OUTPUT", default_value = "table", value_parser = ["table", "json", "yaml", "csv"])]
    output: String,
}

impl AdminConn {
    /// True when the output is the human table (so extra lines go to stderr, not into JSON).
    pub(super) fn is_table(&self) -> bool {
        self.output == "table"
    }
}

/// `doze usage [PROJECT]`.
#[derive(Args, Debug)]
pub struct UsageArgs {
    /// A project's id or name; every project without it.
    project: Option<String>,
    /// Start: RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01, midnight UTC). Default: 30 days before --to, or 24 hours with --granularity hour.
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive, in the same forms. Default: now.
    #[arg(long)]
    to: Option<String>,
    /// One row per UTC `hour`, per UTC `day`, or one `total` for the range.
    #[arg(long, default_value = "day", value_parser = ["hour", "day", "total"])]
    granularity: String,
    /// Only this tenant's projects (id or name), without PROJECT.
    #[arg(long, conflicts_with = "project")]
    tenant: Option<String>,
    #[command(flatten)]
    conn: AdminConn,
}

pub async fn usage(args: UsageArgs) -> anyhow::Result<()> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let mut path = match &args.project {
        Some(p) => api_path(&["projects", p, "usage"]),
        None => "/api/v1/usage".to_owned(),
    };
    path.push_str(&format!("?granularity={}", args.granularity));
    for (name, value) in [
        ("from", &args.from),
        ("to", &args.to),
        ("tenant", &args.tenant),
    ] {
        if let Some(v) = value {
            path.push_str(&format!(
                "&{name}={}",
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            ));
        }
    }
    let conn = &args.conn;
    if conn.output == "csv" {
        let answer = call_accepting(conn, Method::GET, &path, None, Some("text/csv")).await?;
        print!("{}", answer.as_str().unwrap_or_default());
        return Ok(());
    }
    let answer = call(conn, Method::GET, &path, None).await?;
    match conn.output.as_str() {
        // The rows alone, so the table has one line per row.
        "table" => print(conn, json!({"usage": answer["usage"]})),
        _ => print(conn, answer),
    }
}

#[derive(Subcommand, Debug)]
pub enum ProjectCmd {
    /// Create a project; with --compute and --role, also its compute and a first role.
    Create {
        /// Project name: 1-63 characters of a-z, 0-9 and '-'.
        name: String,
        /// Also create the project's compute.
        #[arg(long)]
        compute: bool,
        /// Also create this role (a MariaDB user in the project).
        #[arg(long)]
        role: Option<String>,
        /// Password of --role (else one is generated and printed once). Needs --role.
        #[arg(long, requires = "role")]
        password: Option<String>,
        /// Suspend the compute after this long idle, like `30s`, `5m`, `1h` or seconds (0 = never); default: the server's --idle-timeout.
        #[arg(long, value_parser = super::parse_duration)]
        idle_timeout: Option<std::time::Duration>,
        /// What the idle compute becomes: `freeze` (resumed in about a millisecond) or `stop`; default: the server's --suspend-mode.
        #[arg(long, value_parser = ["freeze", "stop"])]
        suspend_mode: Option<String>,
        /// The tenant that owns the project (id or name); default: the token's tenant, or the `default` tenant for the operator.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Print how to connect to a project: a mysql:// URL and a mariadb command, with the proxy's real address.
    Connect {
        project: String,
        /// The role to connect as.
        #[arg(long, default_value = "app")]
        role: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List projects (a tenant token sees its tenant's).
    List {
        /// Only this tenant's projects (id or name).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Show a project (by id or name).
    Get {
        project: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Delete a project with its computes and storage.
    Delete {
        project: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Subcommand, Debug)]
pub enum ComputeCmd {
    /// Create the compute of a project (by id or name).
    Create {
        project: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List computes: all of them, or the one of --project.
    List {
        /// A project id or name.
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Show a compute (by compute id, or by its project's id or name) without waking it: its state, address and memory.
    Get {
        compute: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Suspend a compute (by compute id or project id or name) now (refused while client sessions are open).
    Suspend {
        compute: String,
        /// `stop` (clean shutdown, memory freed; a frozen compute is thawed and stopped) or `freeze` (no CPU, memory kept; the next connection resumes it in about a millisecond).
        #[arg(long, default_value = "stop", value_parser = ["stop", "freeze"])]
        mode: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Resume a suspended or frozen compute (by compute id or project id or name).
    Resume {
        compute: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Delete a compute (by compute id or project id or name); the project's storage is kept.
    Delete {
        compute: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoleCmd {
    /// Create a role (a MariaDB user) in a project.
    Create {
        project: String,
        name: String,
        /// Password (else DOZE_ROLE_PASSWORD, else one is generated and printed once).
        #[arg(long, env = "DOZE_ROLE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List a project's roles.
    List {
        project: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Change a role's password (open sessions keep running; new logins need the new one).
    SetPassword {
        project: String,
        name: String,
        /// The new password (else one is generated and printed once).
        #[arg(long, env = "DOZE_ROLE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Delete a role.
    Delete {
        project: String,
        name: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

pub async fn project(cmd: ProjectCmd) -> anyhow::Result<()> {
    match cmd {
        ProjectCmd::Create {
            name,
            compute,
            role,
            password,
            idle_timeout,
            suspend_mode,
            tenant,
            conn,
        } => {
            let mut config = json!({});
            if let Some(idle) = idle_timeout {
                config["idle_timeout"] = json!(idle.as_secs_f64());
            }
            if let Some(mode) = suspend_mode {
                config["suspend_mode"] = json!(mode);
            }
            let first_role = role.map(|r| (r, password));
            let body = json!({"name": name, "config": config, "tenant": tenant});
            create_project(&conn, &name, body, compute, first_role).await
        }
        ProjectCmd::Connect {
            project,
            role,
            conn,
        } => connect_hint(&conn, &project, &role, false).await,
        ProjectCmd::List { tenant, conn } => {
            let path = match tenant {
                Some(t) => format!(
                    "/api/v1/projects?tenant={}",
                    percent_encoding::utf8_percent_encode(&t, percent_encoding::NON_ALPHANUMERIC)
                ),
                None => "/api/v1/projects".to_owned(),
            };
            print(&conn, call(&conn, Method::GET, &path, None).await?)
        }
        ProjectCmd::Get { project, conn } => print(
            &conn,
            call(&conn, Method::GET, &api_path(&["projects", &project]), None).await?,
        ),
        ProjectCmd::Delete { project, conn } => print(
            &conn,
            call(
                &conn,
                Method::DELETE,
                &api_path(&["projects", &project]),
                None,
            )
            .await?,
        ),
    }
}

pub async fn compute(cmd: ComputeCmd) -> anyhow::Result<()> {
    let (method, path, conn) = match cmd {
        ComputeCmd::Create { project, conn } => (
            Method::POST,
            api_path(&["projects", &project, "compute"]),
            conn,
        ),
        ComputeCmd::List { project, conn } => {
            let path = match project {
                Some(p) => format!(
                    "/api/v1/compute?project={}",
                    percent_encoding::utf8_percent_encode(&p, percent_encoding::NON_ALPHANUMERIC)
                ),
                None => "/api/v1/compute".to_owned(),
            };
            (Method::GET, path, conn)
        }
        ComputeCmd::Get { compute, conn } => {
            let id = compute_id(&conn, &compute).await?;
            (Method::GET, api_path(&["compute", &id]), conn)
        }
        ComputeCmd::Suspend {
            compute,
            mode,
            conn,
        } => {
            let id = compute_id(&conn, &compute).await?;
            (
                Method::POST,
                format!("{}?mode={mode}", api_path(&["compute", &id, "suspend"])),
                conn,
            )
        }
        ComputeCmd::Resume { compute, conn } => {
            let id = compute_id(&conn, &compute).await?;
            (Method::POST, api_path(&["compute", &id, "resume"]), conn)
        }
        ComputeCmd::Delete { compute, conn } => {
            let id = compute_id(&conn, &compute).await?;
            (Method::DELETE, api_path(&["compute", &id]), conn)
        }
    };
    let body = (method == Method::POST).then(|| json!({}));
    print(&conn, call(&conn, method, &path, body).await?)
}

pub async fn role(cmd: RoleCmd) -> anyhow::Result<()> {
    match cmd {
        RoleCmd::Create {
            project,
            name,
            password,
            conn,
        } => {
            let (password, generated) = password_or_generated(password);
            let created = create_role(&conn, &project, &name, &password).await?;
            print(&conn, created)?;
            if generated {
                println!("password (shown once): {password}");
            }
            Ok(())
        }
        RoleCmd::List { project, conn } => print(
            &conn,
            call(
                &conn,
                Method::GET,
                &api_path(&["projects", &project, "roles"]),
                None,
            )
            .await?,
        ),
        RoleCmd::SetPassword {
            project,
            name,
            password,
            conn,
        } => {
            let (password, generated) = password_or_generated(password);
            print(
                &conn,
                call(
                    &conn,
                    Method::PUT,
                    &api_path(&["projects", &project, "roles", &name]),
                    Some(json!({"password": password})),
                )
                .await?,
            )?;
            if generated {
                eprintln!("password (shown once): {password}");
            }
            Ok(())
        }
        RoleCmd::Delete {
            project,
            name,
            conn,
        } => print(
            &conn,
            call(
                &conn,
                Method::DELETE,
                &api_path(&["projects", &project, "roles", &name]),
                None,
            )
            .await?,
        ),
    }
}

/// Creates the project, then (when asked) its compute and first role. A later step that fails
/// deletes the project again, so a failure never leaves half a project behind.
async fn create_project(
    conn: &AdminConn,
    name: &str,
    body: Value,
    with_compute: bool,
    first_role: Option<(String, Option<String>)>,
) -> anyhow::Result<()> {
    let project = call(conn, Method::POST, "/api/v1/projects", Some(body)).await?;
    let id = project["id"]
        .as_str()
        .context("the admin API returned a project without an id")?
        .to_owned();
    let rest = async {
        if with_compute {
            call(
                conn,
                Method::POST,
                &api_path(&["projects", &id, "compute"]),
                Some(json!({})),
            )
            .await?;
        }
        if let Some((role, password)) = &first_role {
            let (password, generated) = password_or_generated(password.clone());
            create_role(conn, &id, role, &password).await?;
            return Ok::<_, anyhow::Error>(generated.then_some(password));
        }
        Ok(None)
    }
    .await;
    let generated = match rest {
        Ok(g) => g,
        Err(e) => {
            let undone = call(conn, Method::DELETE, &api_path(&["projects", &id]), None).await;
            return Err(match undone {
                Ok(_) => e.context(format!("creating project {name} failed; it was deleted again")),
                Err(u) => e.context(format!(
                    "creating project {name} failed, and deleting it again failed too ({u:#}); delete it with `doze project delete {name}`"
                )),
            });
        }
    };
    print(
        conn,
        call(conn, Method::GET, &api_path(&["projects", &id]), None).await?,
    )?;
    if let Some((role, _)) = &first_role {
        connect_hint(conn, name, role, true).await?;
        if let Some(password) = generated {
            eprintln!("password (shown once): {password}");
        }
    }
    Ok(())
}

/// How to connect to `project` as `role`, with the proxy address the running doze reports.
/// `to_stderr`: as a hint after another command's output, which stays the only thing on stdout.
async fn connect_hint(
    conn: &AdminConn,
    project: &str,
    role: &str,
    to_stderr: bool,
) -> anyhow::Result<()> {
    let project_obj = call(conn, Method::GET, &api_path(&["projects", project]), None).await?;
    let name = project_obj["name"].as_str().unwrap_or(project);
    let info = call(conn, Method::GET, "/api/v1/info", None).await?;
    let address = info["proxy_address"]
        .as_str()
        .context("this doze does not report its proxy address (is it serving static routes?)")?;
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("the proxy address '{address}' has no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let user = format!("{name}.{role}");
    let text = format!("mysql://{user}@{address}/\nmariadb -h {host} -P {port} -u {user} -p");
    if to_stderr {
        eprintln!("\nconnect with:\n  {}", text.replace('\n', "\n  "));
    } else if conn.output == "table" {
        println!("{text}");
    } else {
        let (url, command) = text.split_once('\n').unwrap_or((&text, ""));
        print(conn, json!({"url": url, "command": command}))?;
    }
    Ok(())
}

/// The id of a compute named by its own id or by its project's id or name.
async fn compute_id(conn: &AdminConn, key: &str) -> anyhow::Result<String> {
    match call(conn, Method::GET, &api_path(&["compute", key]), None).await {
        Ok(_) => Ok(key.to_owned()),
        Err(e) if exit_code(&e) == NOT_FOUND => {
            let by_project = call(
                conn,
                Method::GET,
                &api_path(&["projects", key, "compute"]),
                None,
            )
            .await
            .map_err(|_| e)?;
            by_project["id"]
                .as_str()
                .map(str::to_owned)
                .context("the admin API returned a compute without an id")
        }
        Err(e) => Err(e),
    }
}

async fn create_role(
    conn: &AdminConn,
    project: &str,
    name: &str,
    password: &str,
) -> anyhow::Result<Value> {
    call(
        conn,
        Method::POST,
        &api_path(&["projects", project, "roles"]),
        Some(json!({"name": name, "password": password})),
    )
    .await
}

/// `/api/v1/` and `segments`, each percent-encoded: a role named `q?z` or `a b` must reach the
/// API as one path segment, never cut short at the `?` (which deleted the role `q`).
pub(super) fn api_path(segments: &[&str]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let mut path = String::from("/api/v1");
    for segment in segments {
        path.push('/');
        path.extend(utf8_percent_encode(segment, NON_ALPHANUMERIC));
    }
    path
}

/// The given password, or a new random one (and whether it was generated).
fn password_or_generated(password: Option<String>) -> (String, bool) {
    match password {
        Some(p) => (p, false),
        None => {
            use rand::Rng;
            let mut rng = rand::rng();
            let p: String = (0..24)
                .map(|_| {
                    let chars = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
                    char::from(chars[rng.random_range(0..chars.len())])
                })
                .collect();
            (p, true)
        }
    }
}

/// Prints one answer of the admin API in the chosen format (`-o`).
pub(super) fn print(conn: &AdminConn, value: Value) -> anyhow::Result<()> {
    if value.is_null() {
        return Ok(());
    }
    match conn.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&value)?),
        "yaml" => print!("{}", super::output::yaml(&value)),
        _ => print!("{}", super::output::table(&value)),
    }
    Ok(())
}

/// One admin API call; non-2xx answers become errors carrying the API's message.
pub(super) async fn call(
    conn: &AdminConn,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    if conn.output == "csv" {
        // Refused before anything is created or deleted.
        return Err(CliError {
            code: 2,
            message: "-o csv is for `doze usage`; use -o json or -o yaml here".into(),
        }
        .into());
    }
    call_accepting(conn, method, path, body, None).await
}

/// [`call`] with an `Accept` header; an answer that is not JSON comes back as a string.
async fn call_accepting(
    conn: &AdminConn,
    method: Method,
    path: &str,
    body: Option<Value>,
    accept: Option<&str>,
) -> anyhow::Result<Value> {
    let url = format!("{}{}", conn.admin.trim_end_matches('/'), path);
    let mut request = Request::builder().method(method).uri(&url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let token = match (&conn.admin_token_file, &conn.admin_token) {
        (Some(path), _) => Some(super::read_token_file(path)?),
        (None, Some(token)) => Some(token.clone()),
        (None, None) => super::read_token_file(&conn.data_dir.join(super::ADMIN_TOKEN_FILE)).ok(),
    };
    if let Some(token) = &token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let payload = match body {
        Some(v) => {
            request = request.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&v)?)
        }
        None => Bytes::new(),
    };
    let request = request
        .body(Full::new(payload))
        .with_context(|| format!("bad URL {url}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.map_err(|e| CliError {
        code: UNREACHABLE,
        message: format!(
            "cannot reach the admin API at {} (is `doze serve` running?): {e}",
            conn.admin
        ),
    })?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status.is_success() {
        return Ok(value);
    }
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    if status == StatusCode::UNAUTHORIZED {
        bail!(
            "{message} (set DOZE_ADMIN_TOKEN, pass --admin-token-file, or --data-dir of the doze \
             serve whose generated admin.token to use)"
        );
    }
    let code = match status {
        StatusCode::NOT_FOUND => NOT_FOUND,
        StatusCode::CONFLICT => CONFLICT,
        _ => 1,
    };
    Err(CliError {
        code,
        message: format!("{status}: {message}"),
    }
    .into())
}

/// Exit codes of the admin commands (documented in the README): 2 is a usage error (clap's).
pub const NOT_FOUND: u8 = 3;
pub const CONFLICT: u8 = 4;
pub const UNREACHABLE: u8 = 5;

/// A failed admin call and the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

/// The exit code for an error: the admin call's, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<CliError>())
        .map_or(1, |c| c.code)
}

/// `doze version`: this binary's version and, when it answers, the running doze's.
pub async fn version(conn: AdminConn) -> anyhow::Result<()> {
    println!("client: doze {}", doze_gateway::VERSION);
    let info = call(&conn, Method::GET, "/api/v1/info", None).await?;
    println!(
        "server: doze {} ({}) at {}, driver {}, freezer {}, proxy {}",
        info["version"].as_str().unwrap_or("?"),
        info["commit"].as_str().unwrap_or("?"),
        conn.admin,
        info["driver"].as_str().unwrap_or("?"),
        info["freezer"].as_str().unwrap_or("none"),
        info["proxy_address"].as_str().unwrap_or("unknown"),
    );
    Ok(())
}
