//! `doze`: the serverless front door for MariaDB. `doze serve` runs the proxy, the control plane
//! and the scheduler; the other subcommands talk to a running doze's admin API.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `doze serve --config FILE`: the file's settings become flags, below the command line and
    // the DOZE_* environment in precedence.
    let argv = match cli::config_file::apply(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("doze: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let args = cli::Cli::parse_from(argv);
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
