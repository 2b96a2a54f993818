//! The built-in group, wired: the state file, peer TLS, the transport and the
//! driver that owns a `core::Node`.
//!
//! Owns: the order of start-up (every file is read and checked before any
//! socket is opened). Must not: make a protocol decision (the core does).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::{HandOver, Running};
use crate::clock::boottime_now;
use crate::config::{Config, Positions};
use crate::core;
use crate::desired::Desired;
use crate::driver::Driver;
use crate::report::Reporter;
use crate::storage::{Claim, Claimed, Identity, StateFile};
use crate::transport::frame::Standing;
use crate::transport::tcp::{Transport, TransportConfig};
use crate::transport::tls::{self, PeerTls};

/// What start-up read and checked before the runtime starts.
pub struct Prepared {
    state: StateFile,
    claimed: Claimed,
    peer_tls: Option<Arc<PeerTls>>,
}

/// Reads the peer TLS files and the state file; refuses a foreign or
/// damaged one (a one-line error naming the flag or the file). This node's
/// incarnation is durable when it returns: drawn for a node with no state
/// file, added to a format-1 file.
pub fn prepare(config: &Config) -> Result<Prepared, String> {
    let peer_tls = load_peer_tls(config)?;
    let state = StateFile::open(&config.data_dir).map_err(|e| e.to_string())?;
    let identity = Identity {
        cluster_id: config.node.cluster_id.clone(),
        node_id: config.node.node_id.clone(),
        voters: config.node.voters.clone(),
        incarnation: None,
    };
    let mut claimed = match &config.peers_file {
        Some(_) => state.claim_managed(&identity.cluster_id, &identity.node_id),
        None => state.claim(&identity, config.accept_new_membership),
    }
    .map_err(|e| e.to_string())?;
    if let Some(group) = config.force_new_group {
        force_new_group(&state, &mut claimed, group)?;
    }
    if claimed.how == Claim::Upgrading {
        // Rule 11: the conversion lists every static voter; each must be
        // reachable at an address of the peers file.
        let missing: Vec<String> =
            claimed.identity.voters.iter().filter(|v| !config.peers.contains_key(*v)).map(|v| v.to_string()).collect();
        if !missing.is_empty() {
            return Err(format!(
                "--peers-file: this node's state file belongs to a static group of {}, and the file does not name {}: \
                 convert a static group with every voter named (the same set as --peers), then change the set",
                claimed.identity.voters.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(","),
                missing.join(",")
            ));
        }
    }
    Ok(Prepared { state, claimed, peer_tls })
}

/// `--force-new-group GROUP` (rule 10): a node that holds a configuration
/// of GROUP leaves it as a new identity, durably, before anything else.
fn force_new_group(state: &StateFile, claimed: &mut Claimed, group: core::GroupUid) -> Result<(), String> {
    let Some(members) = claimed.initial.as_mut().and_then(|hs| hs.members.as_deref_mut()) else { return Ok(()) };
    let held = members.config.as_ref().map(|c| c.group);
    let fresh = crate::storage::draw_incarnation().map_err(|e| format!("/dev/urandom: {e}"))?;
    if !members.force_new_group(group, fresh) {
        match held {
            Some(other) => tracing::warn!(
                group = %group,
                holds = %other,
                "--force-new-group: this node holds another group; nothing to do (remove the flag)"
            ),
            None => tracing::warn!(
                group = %group,
                "--force-new-group: this node holds no group; it may take part in creating a new one whatever the \
                 desired set's generation"
            ),
        }
        return Ok(());
    }
    let hs = claimed.initial.clone().unwrap_or_default();
    state.store(&claimed.identity, &hs).map_err(|e| e.to_string())?;
    tracing::error!(
        group = %group,
        incarnation = %fresh,
        term = hs.term.0,
        "--force-new-group: LEFT GROUP {group} FOR GOOD as a new identity, to create a new group with every desired \
         member. This is unsafe by nature: if the members of the old group that were given up for lost run \
         again, they elect on their own; stop them for good, and remove this flag once the new group leads"
    );
    Ok(())
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

/// Binds the peer listener, starts the transport and the driver.
pub async fn start(
    config: &Config,
    prepared: Prepared,
    reporter: Arc<Reporter>,
    health: Option<mpsc::Receiver<bool>>,
) -> Result<Running, String> {
    // A managed node's incarnation now: the one its first state file drew,
    // or the one it drew since (membership rules 8 and 10).
    let current = prepared
        .claimed
        .initial
        .as_ref()
        .and_then(|hs| hs.members.as_ref())
        .and_then(|m| m.renewed)
        .or(prepared.claimed.identity.incarnation);
    let incarnation = current.map(|i| i.to_string()).unwrap_or_default();
    match prepared.claimed.how {
        Claim::Kept => {}
        Claim::New if config.peers_file.is_some() => tracing::info!(
            incarnation,
            "no state file: a new identity of this node, blank; it joins its group as a learner, or takes part \
             in creating it if every desired member is blank"
        ),
        Claim::New => tracing::info!(
            incarnation,
            "no state file: a new identity of this node; it votes only after one lease (its boot promise)"
        ),
        Claim::Upgraded => tracing::info!(
            incarnation,
            "state file of an earlier version: kept its term and vote, added this node's incarnation"
        ),
        Claim::Upgrading => tracing::warn!(
            incarnation,
            "a static group's state file, with --peers-file: this node runs as a static node until its group \
             converts to a managed one, once every voter runs with --peers-file (restart them one at a time)"
        ),
    }
    let upgrading = prepared.claimed.how == Claim::Upgrading;
    let prepared_voters = prepared.claimed.identity.voters.len();
    let standing = match prepared.claimed.initial.as_ref().and_then(|hs| hs.members.as_ref()) {
        _ if upgrading => Standing::Upgrading { digest: core::static_digest(&prepared.claimed.identity.voters) },
        Some(m) if m.config.is_some() => Standing::Holding,
        Some(_) => Standing::Blank,
        None => Standing::Static,
    };
    let (hellos_tx, hellos_rx) = mpsc::unbounded_channel();
    let (inbound_tx, inbound_rx) = mpsc::channel(1024);
    let transport = match &config.listen_peer {
        Some(addr) if !config.peers.is_empty() => {
            let listener = TcpListener::bind(addr.as_str()).await.map_err(|e| format!("--listen-peer {addr}: {e}"))?;
            let cfg = TransportConfig {
                cluster_id: config.node.cluster_id.clone(),
                node_id: config.node.node_id.clone(),
                peers: config.peers.clone(),
                tls: prepared.peer_tls,
                incarnation: current,
                standing,
                hellos: Some(hellos_tx),
            };
            let started = Transport::start(cfg, listener, inbound_tx, reporter.clone());
            Some(started.map_err(|e| format!("--listen-peer {addr}: {e}"))?)
        }
        _ => None,
    };
    let (admin_tx, admin_rx) = mpsc::channel(16);
    let mut node = config.node.clone();
    let mut seed = boottime_now().0 ^ u64::from(std::process::id());
    if let (Some(_), Some(incarnation), true) = (&config.peers_file, prepared.claimed.identity.incarnation, upgrading) {
        // Rule 11: a static node until its group converts, with the
        // voters of its state file.
        node.voters = prepared.claimed.identity.voters.clone();
        node.upgrading = Some(incarnation);
        seed = crate::storage::draw_incarnation().map_err(|e| format!("/dev/urandom: {e}"))?.0 as u64;
    } else if let (Some(_), Some(incarnation)) = (&config.peers_file, prepared.claimed.identity.incarnation) {
        node.mode = core::Mode::Managed { incarnation };
        // A managed node draws group uids and new incarnations from its
        // seed: two nodes must never share one.
        seed = crate::storage::draw_incarnation().map_err(|e| format!("/dev/urandom: {e}"))?.0 as u64;
    }
    let peers = reporter.peers.clone();
    let metrics = reporter.metrics.clone();
    let (driver, view) = Driver::new(
        node,
        prepared.claimed.initial,
        prepared.claimed.identity.clone(),
        prepared.state,
        transport,
        inbound_rx,
        admin_rx,
        reporter,
        seed,
    )
    .map_err(|e| e.to_string())?;
    let driver = match health {
        Some(h) => driver.with_health(h),
        None => driver,
    }
    .with_hellos(hellos_rx, standing);
    let (driver, membership) = match &config.peers_file {
        Some((path, generation)) => {
            let first = Desired { peers: config.peers.clone(), generation: *generation };
            let (tx, rx) = mpsc::channel(4);
            let counter = metrics.clone();
            let refused = move || counter.membership_change("refused");
            tokio::spawn(crate::desired::watch(path.clone(), first.clone(), tx, refused));
            if upgrading {
                // Until the group converts (rule 11), its static voters.
                metrics.static_voters(prepared_voters);
            }
            let (driver, membership) = driver.with_desired(first, rx);
            tokio::spawn(metrics.clone().follow_membership(membership.clone(), config.node.lease_ttl));
            (driver, Some(membership))
        }
        None => {
            metrics.static_voters(config.node.voters.len());
            (driver, None)
        }
    };
    let (driver, positions, upstream) = match &config.positions {
        None => (driver, None, None),
        Some(source) => {
            metrics.positions_on();
            let (tx, rx) = mpsc::channel(16);
            let (driver, upstream) = driver.with_positions(rx);
            match source {
                Positions::Exec { command, interval } => {
                    // The driver counts and reports every reading it is fed.
                    tokio::spawn(crate::position::watch_exec(command.clone(), *interval, upstream.clone(), tx));
                    (driver, None, Some(upstream))
                }
                Positions::Api => (driver, Some(tx), Some(upstream)),
            }
        }
    };
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        driver.run(stop_rx).await;
        Ok(())
    });
    Ok(Running {
        kind: "raft",
        view,
        admin: admin_tx,
        peers: Some(peers),
        node_id: config.node.node_id.clone(),
        incarnation: current,
        membership,
        positions,
        upstream,
        lease_ttl: config.node.lease_ttl,
        hand_over: HandOver::StepDown,
        task,
        stop,
    })
}
