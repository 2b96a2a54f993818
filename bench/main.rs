//! leasehold-bench: failover, hand-over, leader-query and cost figures for
//! leasehold, side by side with etcd's election on the same machine in the
//! same run. Everything it measures it starts itself on loopback (leasehold
//! sidecars, a 3-member etcd, plain etcd election clients, a minimal hyper
//! server as the HTTP ceiling, `wrk` as the load generator) and ends by pid.
//!
//!   cargo build --release --features etcd
//!   ./target/release/leasehold-bench [--quick] [--json] [--out DIR]
//!
//! Progress goes to stderr, the table to stdout; with --json the last line
//! of stdout is one JSON object. scripts/bench.sh installs what it needs and
//! draws the failover plot from the JSON. BENCHMARKS.md records a run.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod etcd_elect;
mod hello;
mod measure;
mod procs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "leasehold-bench", about = "leasehold and etcd's election, measured side by side")]
struct Cli {
    #[command(subcommand)]
    helper: Option<Helper>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A reduced round (5 trials, 3s loads and idle windows): under 3 minutes.
    #[arg(long)]
    pub quick: bool,
    /// The last line of stdout is one JSON object with every figure.
    #[arg(long)]
    pub json: bool,
    /// Trials per figure (default 20, or 5 with --quick).
    #[arg(long)]
    pub trials: Option<usize>,
    /// Seconds of load per leader-query run (default 10, or 3 with --quick).
    #[arg(long)]
    pub load_seconds: Option<u64>,
    /// The leasehold binary, built with the etcd feature (default: beside
    /// this program).
    #[arg(long)]
    pub leasehold: Option<PathBuf>,
    /// The etcd server binary.
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// The load generator.
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// Measure leasehold alone (no etcd; the common TTL is then 2s, etcd's
    /// minimum at its default timing).
    #[arg(long)]
    pub skip_etcd: bool,
    /// Also write the JSON to DIR/bench.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl RunArgs {
    pub fn trials(&self) -> usize {
        self.trials.unwrap_or(if self.quick { 5 } else { 20 })
    }
    pub fn load(&self) -> Duration {
        Duration::from_secs(self.load_seconds.unwrap_or(if self.quick { 3 } else { 10 }))
    }
    pub fn idle(&self) -> Duration {
        Duration::from_secs(if self.quick { 3 } else { 10 })
    }
}

/// Child processes the benchmark runs; not for direct use.
#[derive(Subcommand, Debug)]
enum Helper {
    /// A plain etcd election client: lease, keep-alive, campaign; prints
    /// "elected" when it leads; resigns on SIGTERM.
    #[command(hide = true)]
    EtcdElect(etcd_elect::ElectArgs),
    /// A minimal hyper server answering every request with a fixed JSON body.
    #[command(hide = true)]
    Hello(hello::HelloArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.helper {
        Some(Helper::EtcdElect(a)) => etcd_elect::run(&a),
        Some(Helper::Hello(a)) => hello::run(&a),
        None => match measure::run(&cli.run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("leasehold-bench: {e}");
                ExitCode::from(1)
            }
        },
    }
}
