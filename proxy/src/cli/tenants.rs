//! `doze tenant|token|audit ...`: tenants, their API tokens and quotas, and the audit log,
//! through the admin API (as `doze project` is).

use clap::Subcommand;
use hyper::Method;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use super::admin::{AdminConn, api_path, call, print};

/// Quota flags shared by `tenant create` and `tenant set-quotas`.
#[derive(clap::Args, Debug)]
pub struct QuotaArgs {
    /// Most projects the tenant may have (none: no limit).
    #[arg(long)]
    max_projects: Option<u64>,
    /// Most computes holding a server at once (starting, running or frozen); a connection that would wake one more gets MySQL error 1226.
    #[arg(long)]
    max_running_computes: Option<u64>,
    /// Most `resources.memory` over those computes, like 4Gi (a compute counts at least 256Mi).
    #[arg(long)]
    max_memory: Option<String>,
}

impl QuotaArgs {
    fn to_json(&self) -> Value {
        json!({
            "max_projects": self.max_projects,
            "max_running_computes": self.max_running_computes,
            "max_memory": self.max_memory,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant (operator only), with optional quotas.
    Create {
        /// Tenant name: 1-63 characters of a-z, 0-9 and '-'.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List tenants with their quotas and use (a tenant token sees its own).
    List {
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Show a tenant (by id or name): its quotas and what it uses of them.
    Get {
        tenant: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Replace a tenant's quotas (operator only); a quota left out is no limit. Running computes are never stopped by a lower quota.
    SetQuotas {
        tenant: String,
        #[command(flatten)]
        quotas: QuotaArgs,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Delete a tenant that has no projects, with its tokens (operator only).
    Delete {
        tenant: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an API token for a tenant; its secret is printed once (doze keeps only a digest).
    Create {
        tenant: String,
        /// A label: where the token is used.
        #[arg(long, default_value = "")]
        name: String,
        /// The token stops working after this long, like `30d` or `12h` (default: never).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
        expires_in: Option<std::time::Duration>,
        /// The token stops working at this time: RFC 3339 or a date.
        #[arg(long)]
        expires_at: Option<String>,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// List a tenant's tokens (never their secrets), revoked ones included.
    List {
        tenant: String,
        #[command(flatten)]
        conn: AdminConn,
    },
    /// Revoke a token: it fails from the next request on, on every replica.
    Revoke {
        tenant: String,
        token_id: String,
        #[command(flatten)]
        conn: AdminConn,
    },
}

/// `doze audit`.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// Only changes to this tenant's objects (id or name).
    #[arg(long)]
    tenant: Option<String>,
    /// Only entries before this time (RFC 3339 or a date), to page back.
    #[arg(long)]
    before: Option<String>,
    /// At most this many entries, 1-1000.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    conn: AdminConn,
}

pub async fn tenant(cmd: TenantCmd) -> anyhow::Result<()> {
    let (method, path, body, conn) = match cmd {
        TenantCmd::Create { name, quotas, conn } => (
            Method::POST,
            "/api/v1/tenants".to_owned(),
            Some(json!({"name": name, "quotas": quotas.to_json()})),
            conn,
        ),
        TenantCmd::List { conn } => (Method::GET, "/api/v1/tenants".to_owned(), None, conn),
        TenantCmd::Get { tenant, conn } => {
            (Method::GET, api_path(&["tenants", &tenant]), None, conn)
        }
        TenantCmd::SetQuotas {
            tenant,
            quotas,
            conn,
        } => (
            Method::PATCH,
            api_path(&["tenants", &tenant]),
            Some(json!({"quotas": quotas.to_json()})),
            conn,
        ),
        TenantCmd::Delete { tenant, conn } => {
            (Method::DELETE, api_path(&["tenants", &tenant]), None, conn)
        }
    };
    print(&conn, call(&conn, method, &path, body).await?)
}

pub async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            tenant,
            name,
            expires_in,
            expires_at,
            conn,
        } => {
            let expires_at = match (expires_in, expires_at) {
                (Some(d), _) => Some(
                    humantime::format_rfc3339_millis(std::time::SystemTime::now() + d).to_string(),
                ),
                (None, at) => at,
            };
            let created = call(
                &conn,
                Method::POST,
                &api_path(&["tenants", &tenant, "tokens"]),
                Some(json!({"name": name, "expires_at": expires_at})),
            )
            .await?;
            let secret = created["token"].as_str().unwrap_or_default().to_owned();
            print(&conn, created)?;
            if conn.is_table() {
                eprintln!(
                    "token (shown once; doze keeps only its digest): {secret}\nuse it as DOZE_ADMIN_TOKEN, or `Authorization: Bearer <token>`"
                );
            }
            Ok(())
        }
        TokenCmd::List { tenant, conn } => {
            let path = api_path(&["tenants", &tenant, "tokens"]);
            print(&conn, call(&conn, Method::GET, &path, None).await?)
        }
        TokenCmd::Revoke {
            tenant,
            token_id,
            conn,
        } => {
            let path = api_path(&["tenants", &tenant, "tokens", &token_id]);
            print(&conn, call(&conn, Method::DELETE, &path, None).await?)
        }
    }
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let mut path = format!("/api/v1/audit?limit={}", args.limit);
    for (name, value) in [("tenant", &args.tenant), ("before", &args.before)] {
        if let Some(v) = value {
            path.push_str(&format!(
                "&{name}={}",
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            ));
        }
    }
    print(
        &args.conn,
        call(&args.conn, Method::GET, &path, None).await?,
    )
}
