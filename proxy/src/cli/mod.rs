//! The command line: `serve`, and `project` / `compute` / `role` over the admin API.

pub mod admin;
pub mod config_file;
mod metrics_http;
mod output;
mod serve;
mod tenants;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "doze",
    version = doze_gateway::VERSION,
    about = "A serverless front door for MariaDB: one MySQL endpoint that wakes each project's compute on connect and suspends it when idle.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy, the control plane (admin API, computes, wake) and the auto-suspend scheduler.
    Serve(Box<serve::ServeArgs>),
    /// Create, list, show and delete projects (through a running doze's admin API).
    #[command(subcommand)]
    Project(admin::ProjectCmd),
    /// Create, show, suspend, resume and delete computes (through the admin API).
    #[command(subcommand)]
    Compute(admin::ComputeCmd),
    /// Create, list and delete a project's roles, and change their passwords (through the admin API).
    #[command(subcommand)]
    Role(admin::RoleCmd),
    /// Create, list and delete tenants, and set their quotas (through the admin API).
    #[command(subcommand)]
    Tenant(tenants::TenantCmd),
    /// Create, list and revoke a tenant's API tokens.
    #[command(subcommand)]
    Token(tenants::TokenCmd),
    /// The audit log: who changed what through the admin API, newest first.
    Audit(tenants::AuditArgs),
    /// Usage per project, from the admin API: seconds the compute ran and sat frozen, per day, hour or in total (`doze usage shop --from 2026-11-01 -o csv`).
    Usage(admin::UsageArgs),
    /// Print this doze's version and commit, and those of the running doze it talks to.
    Version(admin::AdminConn),
    /// Print a shell completion script: `doze completions bash > /etc/bash_completion.d/doze`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `doze man > /usr/local/share/man/man1/doze.1`.
    Man,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Project(cmd) => admin::project(cmd).await,
        Command::Compute(cmd) => admin::compute(cmd).await,
        Command::Role(cmd) => admin::role(cmd).await,
        Command::Usage(args) => admin::usage(args).await,
        Command::Tenant(cmd) => tenants::tenant(cmd).await,
        Command::Token(cmd) => tenants::token(cmd).await,
        Command::Audit(args) => tenants::audit(args).await,
        Command::Version(conn) => admin::version(conn).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "doze", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

/// Where `doze serve` keeps the admin token it generated, inside its data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The first line of a token file, without surrounding whitespace.
/// A file that others may read is accepted, with a warning.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the admin token file can be read by other users; chmod 600 it");
    }
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

pub use doze_proxy::config::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
