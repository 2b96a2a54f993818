//! The `leasehold` command: parse, check, wire, run. Start-up refusals are
//! one line on stderr and exit code 2.

// The binary does IO; the clippy bans guard src/core and src/sim only.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use leasehold::api::{self, ApiState};
use leasehold::cli::{Cli, Command, LogFormat, RunArgs};
use leasehold::clock::boottime_now;
use leasehold::config::{Config, HealthCheck};
use leasehold::core::{AdminRequest, Event, HardState, NodeId};
use leasehold::driver::{Driver, Observer};
use leasehold::hooks;
use leasehold::metrics::Metrics;
use leasehold::storage::{Identity, StateFile};
use leasehold::transport::tcp::{self, Transport, TransportConfig};
use leasehold::transport::tls::{self, PeerTls};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
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
    #[cfg(feature = "etcd")]
    if config.etcd.is_some() {
        return etcd::run(config);
    }
    let peer_tls = match load_peer_tls(&config) {
        Ok(t) => t,
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
    let initial = match state.load(&identity, config.accept_new_membership) {
        Ok(s) => s,
        Err(e) => return refuse(&e),
    };
    init_logs(config.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return refuse(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(serve(config, state, initial, peer_tls))
}

/// Reads and checks the `--peer-tls-*` files; this node's certificate must
/// name its own host in --peers, as the peers dialling it will check.
fn load_peer_tls(config: &Config) -> Result<Option<Arc<PeerTls>>, String> {
    let Some(files) = config.peer_tls.clone() else { return Ok(None) };
    let own_name = match config.peers.get(&config.node.node_id) {
        Some(addr) => Some(tls::server_name(addr).map_err(|e| format!("--peers: {e}"))?),
        None => None,
    };
    PeerTls::load(files, own_name).map(|t| Some(Arc::new(t))).map_err(|e| e.to_string())
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

/// What both backends serve from: the API token, the two listeners and the
/// metrics registry.
struct Listeners {
    token: Option<String>,
    api: TcpListener,
    metrics_listener: TcpListener,
    metrics: Arc<Metrics>,
}

async fn listen(config: &Config, peers: &[NodeId]) -> Result<Listeners, String> {
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
    let metrics_listener = TcpListener::bind(config.listen_metrics)
        .await
        .map_err(|e| format!("--listen-metrics {}: {e}", config.listen_metrics))?;
    let metrics = Metrics::new(peers).map_err(|e| format!("metrics: {e}"))?;
    Ok(Listeners { token, api, metrics_listener, metrics })
}

/// Starts what reads the view (API, metrics, hooks) and the health check.
fn start_readers(
    config: &Config,
    l: Listeners,
    view: &watch::Receiver<leasehold::core::LeaderView>,
    admin: mpsc::Sender<leasehold::driver::AdminCall>,
    backend: &'static str,
    peers: Option<Arc<tcp::PeerTable>>,
    health_tx: mpsc::Sender<bool>,
) {
    tokio::spawn(hooks::watch_health(config.health_check.clone(), config.node.heartbeat_interval, health_tx));
    let counter = l.metrics.clone();
    tokio::spawn(hooks::run_hooks(
        config.on_elected.clone(),
        config.on_demoted.clone(),
        view.clone(),
        Arc::new(move |hook, result| counter.hook(hook, result)),
    ));
    let api_state = ApiState {
        view: view.clone(),
        backend,
        admin,
        token: l.token,
        host_name: None,
        metrics: Some(l.metrics.clone()),
        peers,
    };
    tokio::spawn(api::serve(l.api, Arc::new(api_state)));
    tokio::spawn(leasehold::metrics::serve(l.metrics_listener, l.metrics.clone(), view.clone()));
    tokio::spawn(l.metrics.clone().count_leader_changes(view.clone()));
}

async fn serve(
    config: Config,
    state: StateFile,
    initial: Option<HardState>,
    peer_tls: Option<Arc<PeerTls>>,
) -> ExitCode {
    let peers: Vec<NodeId> = config.node.voters.iter().filter(|v| **v != config.node.node_id).cloned().collect();
    let listeners = match listen(&config, &peers).await {
        Ok(l) => l,
        Err(e) => return refuse(&e),
    };
    let metrics = listeners.metrics.clone();
    let (inbound_tx, inbound_rx) = mpsc::channel(1024);
    let peer_table = Arc::new(tcp::PeerTable::new(peers.iter().cloned()));
    let log = Arc::new(Observers { metrics: metrics.clone(), peers: peer_table.clone() });
    let transport = match &config.listen_peer {
        Some(addr) if !config.peers.is_empty() => {
            let listener = match TcpListener::bind(addr.as_str()).await {
                Ok(l) => l,
                Err(e) => return refuse(&format!("--listen-peer {addr}: {e}")),
            };
            let cfg = TransportConfig {
                cluster_id: config.node.cluster_id.clone(),
                node_id: config.node.node_id.clone(),
                peers: config.peers.clone(),
                tls: peer_tls,
            };
            match Transport::start(cfg, listener, inbound_tx.clone(), log.clone()) {
                Ok(t) => Some(t),
                Err(e) => return refuse(&format!("--listen-peer {addr}: {e}")),
            }
        }
        _ => None,
    };
    let (admin_tx, admin_rx) = mpsc::channel(16);
    let seed = boottime_now().0 ^ u64::from(std::process::id());
    let (driver, view) =
        match Driver::new(config.node.clone(), initial, state, transport, inbound_rx, admin_rx, log, seed) {
            Ok(d) => d,
            Err(e) => return refuse(&e),
        };
    let (health_tx, health_rx) = mpsc::channel(4);
    let driver = if config.health_check == HealthCheck::None { driver } else { driver.with_health(health_rx) };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut driver_task = tokio::spawn(driver.run(stop_rx));
    start_readers(&config, listeners, &view, admin_tx.clone(), "raft", Some(peer_table), health_tx);
    info!(
        node = %config.node.node_id,
        cluster = %config.node.cluster_id,
        voters = config.node.voters.len(),
        api = %config.listen_api,
        metrics = %config.listen_metrics,
        lease_ttl = ?config.node.lease_ttl,
        "started"
    );
    let terminated = tokio::select! {
        t = wait_for_signal() => t,
        ended = &mut driver_task => {
            // The consensus loop must never end by itself: without it the
            // view is frozen. Exit so that a supervisor restarts the node.
            tracing::error!(outcome = ?ended, "the consensus loop stopped");
            return ExitCode::from(1);
        }
    };
    if terminated && view.borrow().is_leader(boottime_now()) {
        hand_over(&admin_tx, view, &config.node.node_id, config.node.lease_ttl).await;
    }
    stop_tx.send_replace(true);
    let _ = driver_task.await;
    ExitCode::SUCCESS
}

/// SIGTERM on a leader: end the lease, hand over to the best peer, and wait
/// (at most a lease) until another node is known to lead.
async fn hand_over(
    admin: &mpsc::Sender<leasehold::driver::AdminCall>,
    mut view: watch::Receiver<leasehold::core::LeaderView>,
    me: &NodeId,
    lease_ttl: Duration,
) {
    let (reply_tx, reply_rx) = oneshot::channel();
    if admin.send((AdminRequest::StepDown, reply_tx)).await.is_err() {
        return;
    }
    if let Ok(Err(e)) = reply_rx.await {
        warn!(error = %e, "step-down on SIGTERM refused");
        return;
    }
    let wait = async {
        loop {
            let other = view.borrow_and_update().leader_id.as_ref().is_some_and(|l| l != me);
            if other || view.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(lease_ttl, wait).await;
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

/// Role changes and connection events go to stderr and to the metrics.
struct Observers {
    metrics: Arc<Metrics>,
    peers: Arc<tcp::PeerTable>,
}

impl Observer for Observers {
    fn fsync(&self, seconds: f64) {
        self.metrics.fsync(seconds);
    }
    fn event(&self, event: &Event) {
        self.metrics.event(event);
        match event {
            Event::ElectionWon { term } => info!(term = term.0, token = term.0, "became leader"),
            Event::SteppedDown { term, reason } => info!(term = term.0, reason = ?reason, "stepped down"),
            Event::TransferStarted { term, to } => match to {
                Some(to) => info!(term = term.0, to = %to, "ended the lease to hand over"),
                None => info!(term = term.0, "ended the lease; no peer can take over now"),
            },
            Event::StorageFault => {
                warn!("writing the state file failed; not voting or campaigning until a write succeeds")
            }
            Event::StorageRecovered => info!("state file writable again"),
            Event::ElectionStarted { term, transfer } => debug!(term = term.0, transfer, "campaigning"),
            _ => {}
        }
    }
    fn rejected(&self, reason: &'static str) {
        debug!(reason, "rejected a peer message");
        Observer::rejected(&*self.metrics, reason);
    }
}

impl tcp::Events for Observers {
    fn rejected(&self, reason: &'static str) {
        debug!(reason, "closed a peer connection");
        tcp::Events::rejected(&*self.metrics, reason);
    }
    fn received(&self, peer: &NodeId) {
        self.peers.received(peer);
    }
    fn tls_reloaded(&self, ok: bool) {
        tcp::Events::tls_reloaded(&*self.metrics, ok);
    }
    fn peer_up(&self, peer: &NodeId, up: bool) {
        self.peers.set_up(peer, up);
        tcp::Events::peer_up(&*self.metrics, peer, up);
        info!(peer = %peer, "{}", if up { "peer connected" } else { "peer disconnected" });
    }
}

fn refuse(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("leasehold: {e}");
    ExitCode::from(2)
}

/// `--backend etcd`: etcd's election API instead of the built-in group.
#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use leasehold::backend::etcd::{Backend, Settings};

    pub fn run(config: Config) -> ExitCode {
        let Some(etcd) = config.etcd.clone() else { return ExitCode::from(2) };
        let settings = Settings {
            etcd,
            cluster_id: config.node.cluster_id.clone(),
            node_id: config.node.node_id.clone(),
            advertise: config.node.advertise.clone(),
            priority: config.node.priority,
            max_clock_drift: config.node.max_clock_drift,
            data_dir: config.data_dir.clone(),
        };
        init_logs(config.log_format);
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return refuse(&format!("cannot start the runtime: {e}")),
        };
        runtime.block_on(serve(config, settings))
    }

    async fn serve(config: Config, settings: Settings) -> ExitCode {
        let listeners = match listen(&config, &[]).await {
            Ok(l) => l,
            Err(e) => return refuse(&e),
        };
        let log = Arc::new(Observers { metrics: listeners.metrics.clone(), peers: Arc::new(tcp::PeerTable::new([])) });
        let seed = boottime_now().0 ^ u64::from(std::process::id());
        let (backend, view) = match Backend::new(settings, log, seed) {
            Ok(b) => b,
            Err(e) => return refuse(&e),
        };
        let (admin_tx, admin_rx) = mpsc::channel(16);
        let (health_tx, health_rx) = mpsc::channel(4);
        let health = (config.health_check != HealthCheck::None).then_some(health_rx);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut task = tokio::spawn(backend.run(admin_rx, health, stop_rx));
        start_readers(&config, listeners, &view, admin_tx, "etcd", None, health_tx);
        info!(
            node = %config.node.node_id,
            backend = "etcd",
            api = %config.listen_api,
            metrics = %config.listen_metrics,
            "started"
        );
        let outcome = tokio::select! {
            _ = wait_for_signal() => None,
            ended = &mut task => Some(ended),
        };
        let outcome = match outcome {
            Some(ended) => ended,
            None => {
                // Resign and revoke: the next candidate wins at once.
                stop_tx.send_replace(true);
                match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
                    Ok(ended) => ended,
                    Err(_) => return ExitCode::SUCCESS,
                }
            }
        };
        match outcome {
            Ok(Ok(())) if *stop_tx.borrow() => ExitCode::SUCCESS,
            Ok(Err(e)) => refuse(&e),
            other => {
                tracing::error!(outcome = ?other, "the etcd election loop stopped");
                ExitCode::from(1)
            }
        }
    }
}
