//! The `leasehold` command: parse, check, start. Start-up refusals are one
//! line on stderr and exit code 2.

use std::process::ExitCode;

use clap::Parser;
use leasehold::cli::{Cli, Command};
use leasehold::config::Config;
use leasehold::storage::{Identity, StateFile};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli.run),
        Some(Command::Run(args)) => run(&args),
        Some(_) => not_built("this subcommand"),
    }
}

fn run(args: &leasehold::cli::RunArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => return refuse(&e),
    };
    let state = match StateFile::open(&config.data_dir) {
        Ok(s) => s,
        Err(e) => return refuse(&e),
    };
    let identity = Identity {
        cluster_id: config.node.cluster_id.clone(),
        node_id: config.node.node_id.clone(),
        voters: config.node.voters.clone(),
    };
    if let Err(e) = state.load(&identity, config.accept_new_membership) {
        return refuse(&e);
    }
    not_built("the sidecar runtime (driver, peer transport, local API, metrics)")
}

fn refuse(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("leasehold: {e}");
    ExitCode::from(2)
}

fn not_built(what: &str) -> ExitCode {
    eprintln!(
        "leasehold {}: the configuration and the state file are valid, but {what} is not part of this build yet",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(1)
}
