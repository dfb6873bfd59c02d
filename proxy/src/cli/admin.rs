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
        /// Password of --role (else DOZE_ROLE_PASSWORD, else one is generated and printed once).
        #[arg(long, env = "DOZE_ROLE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Suspend the compute after this many idle seconds (0 = never); default: the server's --idle-timeout.
        #[arg(long)]
        idle_timeout: Option<u64>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List projects.
    List {
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
    /// Show a compute: its state and, while running, its address.
    Get {
        compute: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Suspend a compute now (refused while client sessions are open).
    Suspend {
        compute: String,
        /// `stop` (clean shutdown, memory freed; a frozen compute is thawed and stopped) or `freeze` (no CPU, memory kept; the next connection resumes it in about a millisecond).
        #[arg(long, default_value = "stop", value_parser = ["stop", "freeze"])]
        mode: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Resume a suspended compute.
    Resume {
        compute: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Delete a compute; the project's storage is kept.
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
            conn,
        } => create_project(&conn, &name, compute, role, password, idle_timeout).await,
        ProjectCmd::List { conn } => {
            print(call(&conn, Method::GET, "/api/v1/projects", None).await?)
        }
        ProjectCmd::Get { project, conn } => {
            print(call(&conn, Method::GET, &api_path(&["projects", &project]), None).await?)
        }
        ProjectCmd::Delete { project, conn } => print(
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
        ComputeCmd::Get { compute, conn } => (Method::GET, api_path(&["compute", &compute]), conn),
        ComputeCmd::Suspend {
            compute,
            mode,
            conn,
        } => (
            Method::POST,
            format!(
                "{}?mode={mode}",
                api_path(&["compute", &compute, "suspend"])
            ),
            conn,
        ),
        ComputeCmd::Resume { compute, conn } => (
            Method::POST,
            api_path(&["compute", &compute, "resume"]),
            conn,
        ),
        ComputeCmd::Delete { compute, conn } => {
            (Method::DELETE, api_path(&["compute", &compute]), conn)
        }
    };
    let body = (method == Method::POST).then(|| json!({}));
    print(call(&conn, method, &path, body).await?)
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
            print(created)?;
            if generated {
                println!("password (shown once): {password}");
            }
            Ok(())
        }
        RoleCmd::List { project, conn } => print(
            call(
                &conn,
                Method::GET,
                &api_path(&["projects", &project, "roles"]),
                None,
            )
            .await?,
        ),
        RoleCmd::Delete {
            project,
            name,
            conn,
        } => print(
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

async fn create_project(
    conn: &AdminConn,
    name: &str,
    with_compute: bool,
    role: Option<String>,
    password: Option<String>,
    idle_timeout: Option<u64>,
) -> anyhow::Result<()> {
    let mut config = json!({});
    if let Some(secs) = idle_timeout {
        config["idle_timeout"] = json!(secs);
    }
    let project = call(
        conn,
        Method::POST,
        "/api/v1/projects",
        Some(json!({"name": name, "config": config})),
    )
    .await?;
    print(project.clone())?;
    let id = project["id"]
        .as_str()
        .context("the admin API returned a project without an id")?;
    if with_compute {
        print(
            call(
                conn,
                Method::POST,
                &api_path(&["projects", id, "compute"]),
                Some(json!({})),
            )
            .await?,
        )?;
    }
    if let Some(role) = role {
        let (password, generated) = password_or_generated(password);
        create_role(conn, id, &role, &password).await?;
        println!("\nconnect with:\n  mariadb -h 127.0.0.1 -P 6033 -u {name}.{role} -p");
        if generated {
            println!("password (shown once): {password}");
        }
    }
    Ok(())
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
fn api_path(segments: &[&str]) -> String {
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

fn print(value: Value) -> anyhow::Result<()> {
    if !value.is_null() {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

/// One admin API call; non-2xx answers become errors carrying the API's message.
async fn call(
    conn: &AdminConn,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}{}", conn.admin.trim_end_matches('/'), path);
    let mut request = Request::builder().method(method).uri(&url);
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
    let response = client.request(request).await.with_context(|| {
        format!(
            "cannot reach the admin API at {} (is `doze serve` running?)",
            conn.admin
        )
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
    bail!("{status}: {message}")
}
