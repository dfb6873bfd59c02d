//! doze-loadtest: load generator for doze (and, for comparison, HAProxy or a bare mariadbd).

mod admin;
mod common;
mod mariadbd;
mod plot;
mod report;
mod scenarios;
mod stats;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "doze-loadtest", version, about)]
struct Cli {
    #[command(flatten)]
    common: common::Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N sessions running sysbench oltp_point_select's shape (prepared point selects).
    Relay(scenarios::RelayArgs),
    /// Connect, authenticate, SELECT 1, disconnect in a loop on N workers.
    Churn(scenarios::ChurnArgs),
    /// K times: suspend the project's compute, then time connect -> first result of SELECT 1.
    ColdStart(scenarios::ColdStartArgs),
    /// N clients connect at the same instant (after a suspend when --admin is given).
    Herd(scenarios::HerdArgs),
    /// P projects with Zipf-distributed traffic: resumes/s, failures, doze's RSS.
    Projects(scenarios::ProjectsArgs),
    /// Open N idle sessions and hold them: doze's RSS per session.
    Idle(scenarios::IdleArgs),
    /// Baseline: time a bare mariadbd's start on a fresh datadir until its TCP greeting.
    MariadbdStart(mariadbd::MariadbdStartArgs),
    /// Convert sysbench's `run` output into a JSON result (for `report`).
    SysbenchImport(report::SysbenchImportArgs),
    /// Print one comparison table from a directory of JSON results.
    Report(report::ReportArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let c = &cli.common;
    match &cli.cmd {
        Cmd::Relay(a) => scenarios::relay(c, a).await,
        Cmd::Churn(a) => scenarios::churn(c, a).await,
        Cmd::ColdStart(a) => scenarios::cold_start(c, a).await,
        Cmd::Herd(a) => scenarios::herd(c, a).await,
        Cmd::Projects(a) => scenarios::projects(c, a).await,
        Cmd::Idle(a) => scenarios::idle(c, a).await,
        Cmd::MariadbdStart(a) => mariadbd::mariadbd_start(c, a).await,
        Cmd::SysbenchImport(a) => report::sysbench_import(c, a),
        Cmd::Report(a) => report::report(a),
    }
}
