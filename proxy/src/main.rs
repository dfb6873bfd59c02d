//! `doze`: the serverless front door for MariaDB. `doze serve` runs the proxy, the control plane
//! and the scheduler; the other subcommands talk to a running doze's admin API.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("doze: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("doze: {e:#}");
            // 2: usage (clap, before this point), 3: not found, 4: conflict, 5: unreachable.
            std::process::ExitCode::from(cli::admin::exit_code(&e))
        }
    }
}
