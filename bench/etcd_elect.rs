//! The reference a user would pick instead of leasehold: a plain client of
//! etcd's election API. It takes a lease of `--ttl` seconds, keeps it alive
//! every ttl/3, campaigns, prints `elected <proposal> <revision>` the moment
//! the campaign returns, and on SIGTERM resigns and exits.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use etcd_client::{Client, ResignOptions};

#[derive(Args, Debug)]
pub struct ElectArgs {
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long)]
    election: String,
    #[arg(long)]
    proposal: String,
    /// Lease TTL in whole seconds.
    #[arg(long)]
    ttl: i64,
}

pub fn run(a: &ElectArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcd-elect: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(elect(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcd-elect {}: {e}", a.proposal);
            ExitCode::from(1)
        }
    }
}

async fn elect(a: &ElectArgs) -> Result<(), etcd_client::Error> {
    let mut client = Client::connect(&a.endpoints, None).await?;
    let lease = client.lease_grant(a.ttl, None).await?;
    let (mut keeper, mut answers) = client.lease_keep_alive(lease.id()).await?;
    let every = Duration::from_millis((lease.ttl().max(1) as u64) * 1000 / 3);
    let keep = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if keeper.keep_alive().await.is_err() || !matches!(answers.message().await, Ok(Some(_))) {
                eprintln!("etcd-elect: keep-alive failed");
                std::process::exit(1);
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(etcd_client::Error::IoError)?;
    let won = tokio::select! {
        r = client.campaign(a.election.clone(), a.proposal.clone(), lease.id()) => r?,
        _ = term.recv() => return Ok(()),
    };
    let key = won.leader().cloned();
    let revision = key.as_ref().map_or(0, |k| k.rev());
    println!("elected {} {revision}", a.proposal);
    let _ = std::io::stdout().flush();
    term.recv().await;
    if let Some(key) = key {
        client.resign(Some(ResignOptions::new().with_leader(key))).await?;
    }
    keep.abort();
    Ok(())
}
