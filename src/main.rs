//! The `leasehold` command.

use clap::Parser;

/// Lease-based leader election sidecar with fencing tokens.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "leasehold {}: the consensus core and simulator are built; the sidecar runtime \
         (driver, peer transport, storage, HTTP API) is not part of this build yet. \
         Run `cargo run --release --bin leasehold-sim -- --help` for the simulator.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
