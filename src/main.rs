//! The `leasehold` command: parse, check, wire, run. Start-up refusals are
//! one line on stderr and exit code 2.

// The binary does IO; the clippy bans guard src/core and src/sim only.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use leasehold::api::{self, ApiState};
use leasehold::backend::{self, Ended, Running};
use leasehold::cli::{Cli, Command, LogFormat, RunArgs};
use leasehold::config::{Config, HealthCheck};
use leasehold::core::NodeId;
use leasehold::hooks;
use leasehold::metrics::Metrics;
use leasehold::report::Reporter;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::info;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli.run),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Local(args)) => leasehold::local::run(&args),
        Some(other) => leasehold::client::run(&other),
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => return refuse(&e),
    };
    let peers: Vec<NodeId> = config.node.voters.iter().filter(|v| **v != config.node.node_id).cloned().collect();
    let metrics = match Metrics::new(&peers) {
        Ok(m) => m,
        Err(e) => return refuse(&format!("metrics: {e}")),
    };
    let reporter = Reporter::new(metrics, peers);
    // Before the backend reads its files: what it does to them is logged
    // (--force-new-group).
    init_logs(config.log_format);
    let prepared = match backend::prepare(&config, &reporter) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return refuse(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(serve(config, prepared, reporter))
}

/// Logs on stderr, as text or JSON lines; `LEASEHOLD_LOG` filters
/// (default `info`; `debug` shows every rejected message).
fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_env("LEASEHOLD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match format {
        LogFormat::Text => logs.with_ansi(false).try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}

/// The API token and the two listeners, bound before the backend starts.
struct Listeners {
    token: Option<String>,
    api: TcpListener,
    metrics: TcpListener,
}

async fn listen(config: &Config) -> Result<Listeners, String> {
    let token = match &config.api_token_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            Ok(_) => return Err(format!("--api-token-file {}: the file is empty", path.display())),
            Err(e) => return Err(format!("--api-token-file {}: {e}", path.display())),
        },
    };
    let api =
        TcpListener::bind(config.listen_api).await.map_err(|e| format!("--listen-api {}: {e}", config.listen_api))?;
    let metrics = TcpListener::bind(config.listen_metrics)
        .await
        .map_err(|e| format!("--listen-metrics {}: {e}", config.listen_metrics))?;
    Ok(Listeners { token, api, metrics })
}

/// Starts what reads the view (API, metrics, hooks) and the health check.
fn start_readers(config: &Config, l: Listeners, b: &Running, reporter: &Reporter, health: mpsc::Sender<bool>) {
    tokio::spawn(hooks::watch_health(config.health_check.clone(), config.node.heartbeat_interval, health));
    let counter = reporter.metrics.clone();
    tokio::spawn(hooks::run_hooks(
        config.on_elected.clone(),
        config.on_demoted.clone(),
        b.view.clone(),
        Arc::new(move |hook, result| counter.hook(hook, result)),
    ));
    let api_state = ApiState {
        view: b.view.clone(),
        backend: b.kind,
        admin: b.admin.clone(),
        token: l.token,
        host_name: None,
        metrics: Some(reporter.metrics.clone()),
        peers: b.peers.clone(),
        incarnation: b.incarnation,
        membership: b.membership.clone(),
        positions: b.positions.clone(),
        upstream: b.upstream.clone(),
    };
    tokio::spawn(api::serve(l.api, Arc::new(api_state)));
    tokio::spawn(leasehold::metrics::serve(l.metrics, reporter.metrics.clone(), b.view.clone()));
    tokio::spawn(reporter.metrics.clone().count_leader_changes(b.view.clone()));
}

async fn serve(config: Config, prepared: backend::Prepared, reporter: Arc<Reporter>) -> ExitCode {
    let listeners = match listen(&config).await {
        Ok(l) => l,
        Err(e) => return refuse(&e),
    };
    let (health_tx, health_rx) = mpsc::channel(4);
    let health = (config.health_check != HealthCheck::None).then_some(health_rx);
    let mut running = match backend::start(&config, prepared, reporter.clone(), health).await {
        Ok(r) => r,
        Err(e) => return refuse(&e),
    };
    start_readers(&config, listeners, &running, &reporter, health_tx);
    info!(
        node = %config.node.node_id,
        cluster = %config.node.cluster_id,
        backend = running.kind,
        voters = config.node.voters.len(),
        api = %config.listen_api,
        metrics = %config.listen_metrics,
        lease_ttl = ?config.node.lease_ttl,
        "started"
    );
    let ended = tokio::select! {
        terminated = wait_for_signal() => running.stop(terminated).await,
        ended = running.ended() => ended,
    };
    match ended {
        Ended::Stopped => ExitCode::SUCCESS,
        Ended::Refused(e) => refuse(&e),
        Ended::Failed(e) => {
            // The backend's loop must never end by itself: without it the
            // view is frozen. Exit so that a supervisor restarts the node.
            tracing::error!(error = %e, "the backend stopped");
            ExitCode::from(1)
        }
    }
}

/// True for SIGTERM, false for SIGINT (Ctrl-C).
async fn wait_for_signal() -> bool {
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return false;
    };
    tokio::select! {
        _ = term.recv() => true,
        _ = tokio::signal::ctrl_c() => false,
    }
}

fn refuse(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("leasehold: {e}");
    ExitCode::from(2)
}
