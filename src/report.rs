//! The reaction to what happens: each event of either backend and of the
//! peer transport becomes its log line, its metric and its row of the peer
//! table, here and nowhere else.
//!
//! Owns: the [`PeerTable`] the API reports, and the one `info` line per
//! role change (elected, stepped down, handed over) for both backends.
//! Must not: decide anything or block (every reaction is a few atomic
//! operations or one log line).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::core::{Event, Incarnation, NodeId, Position, StepDownReason};
use crate::driver::Observer;
use crate::metrics::Metrics;
use crate::transport::tcp;

/// What the API reports about each peer: is this node's connection to it
/// up, when did a message from it last arrive, and which incarnation its
/// last hello named.
#[derive(Default)]
pub struct PeerTable {
    peers: Mutex<BTreeMap<NodeId, PeerState>>,
    /// This node's own replication position, and when it was read.
    own: Mutex<Option<(Position, Instant)>>,
}

#[derive(Default)]
struct PeerState {
    up: bool,
    last: Option<Instant>,
    incarnation: Option<Incarnation>,
    position: Option<(Position, Instant)>,
}

/// One peer as `/v1/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRow {
    pub id: NodeId,
    pub connected: bool,
    /// Milliseconds since its last message; None: never since start.
    pub last_contact_ms_ago: Option<u64>,
    /// None: not heard yet, or a node of an earlier version.
    pub incarnation: Option<Incarnation>,
    /// Its replication position as its last message carried it, and how
    /// many milliseconds ago that message came.
    pub position: Option<(Position, u64)>,
}

impl PeerTable {
    pub fn new(peers: impl IntoIterator<Item = NodeId>) -> Self {
        PeerTable {
            peers: Mutex::new(peers.into_iter().map(|p| (p, PeerState::default())).collect()),
            own: Mutex::new(None),
        }
    }

    pub fn set_up(&self, peer: &NodeId, up: bool) {
        if let Ok(mut m) = self.peers.lock() {
            m.entry(peer.clone()).or_default().up = up;
        }
    }

    pub fn received(&self, peer: &NodeId) {
        if let Ok(mut m) = self.peers.lock() {
            m.entry(peer.clone()).or_default().last = Some(Instant::now());
        }
    }

    /// Records the incarnation `peer`'s hello named; returns the one it
    /// replaces if they differ (the peer lost its state since).
    pub fn hello(&self, peer: &NodeId, incarnation: Option<Incarnation>) -> Option<Incarnation> {
        let Ok(mut m) = self.peers.lock() else { return None };
        let entry = m.entry(peer.clone()).or_default();
        let before = entry.incarnation;
        if incarnation.is_some() {
            entry.incarnation = incarnation;
        }
        before.filter(|b| incarnation.is_some_and(|now| now != *b))
    }

    /// Records a peer's replication position, as a message carried it.
    pub fn position(&self, peer: &NodeId, p: Position) {
        if let Ok(mut m) = self.peers.lock() {
            m.entry(peer.clone()).or_default().position = Some((p, Instant::now()));
        }
    }

    /// Records this node's own position, as a read found it.
    pub fn own_position(&self, p: Option<Position>) {
        if let Ok(mut own) = self.own.lock() {
            *own = p.map(|p| (p, Instant::now()));
        }
    }

    /// This node's position and how many milliseconds ago it was read.
    pub fn own(&self) -> Option<(Position, u64)> {
        let own = self.own.lock().ok()?;
        own.map(|(p, t)| (p, t.elapsed().as_millis() as u64))
    }

    pub fn snapshot(&self) -> Vec<PeerRow> {
        let Ok(m) = self.peers.lock() else { return Vec::new() };
        m.iter()
            .map(|(p, s)| PeerRow {
                id: p.clone(),
                connected: s.up,
                last_contact_ms_ago: s.last.map(|t| t.elapsed().as_millis() as u64),
                incarnation: s.incarnation,
                position: s.position.map(|(p, t)| (p, t.elapsed().as_millis() as u64)),
            })
            .collect()
    }
}

/// Logs, metrics and the peer table, fed by the backend and the transport.
pub struct Reporter {
    pub metrics: Arc<Metrics>,
    pub peers: Arc<PeerTable>,
}

impl Reporter {
    pub fn new(metrics: Arc<Metrics>, peers: impl IntoIterator<Item = NodeId>) -> Arc<Reporter> {
        Arc::new(Reporter { metrics, peers: Arc::new(PeerTable::new(peers)) })
    }
}

impl Observer for Reporter {
    fn fsync(&self, seconds: f64) {
        self.metrics.fsync(seconds);
    }

    fn event(&self, event: &Event) {
        Observer::event(&*self.metrics, event);
        match event {
            Event::ElectionWon { term } => info!(term = term.0, token = term.0, "became leader"),
            Event::SteppedDown { term, reason: StepDownReason::LeaseLapsed } => {
                warn!(term = term.0, "stepped down: the lease lapsed before it was renewed")
            }
            Event::SteppedDown { term, reason } => info!(term = term.0, reason = ?reason, "stepped down"),
            Event::TransferStarted { term, to } => match to {
                Some(to) => info!(term = term.0, to = %to, "ended the lease to hand over"),
                None => info!(term = term.0, "ended the lease; no peer can take over now"),
            },
            Event::StorageFault => {
                warn!("writing the state file failed; not voting or campaigning until a write succeeds")
            }
            Event::StorageRecovered => info!("state file writable again"),
            Event::PositionRefused { candidate, reason } => debug!(
                candidate = %candidate,
                reason = reason.as_str(),
                "refused a vote for the replication position alone"
            ),
            Event::PreVoteStarted { next_term } => debug!(next_term = next_term.0, "asking for pre-votes"),
            Event::PreVoteFailed { next_term } => debug!(next_term = next_term.0, "the pre-vote failed"),
            Event::ElectionStarted { term, transfer } => debug!(term = term.0, transfer, "campaigning"),
            Event::ElectionLost { term } => debug!(term = term.0, "the election was lost"),
            Event::MembershipChange { who, add: true, epoch } => {
                info!(who = %who, epoch, "membership change: added a voter (it answered steadily as a learner)")
            }
            Event::MembershipChange { who, add: false, epoch } => info!(
                who = %who,
                epoch,
                "membership change: removed a voter (not desired, or replaced by a new incarnation of its name)"
            ),
            Event::ConfigurationHeld { group, voter: true } => {
                info!(group = %group, "a voter of its group from now on")
            }
            Event::ConfigurationHeld { group, voter: false } => {
                info!(group = %group, "a learner of its group from now on (it acks the leader, votes for no one)")
            }
            Event::Renewed { old, new } => warn!(
                old = %old,
                new = %new,
                "this identity was removed from the group while still desired: drew a new incarnation to rejoin"
            ),
            Event::Converted { group, voters } => info!(
                group = %group,
                voters,
                "the static group is a managed group from now on (its first configuration lists each static voter)"
            ),
            Event::GenesisProposed { group } => {
                info!(group = %group, "every desired member is blank: proposed to create the group")
            }
            Event::GenesisWithdrawn { group } => warn!(
                group = %group,
                "withdrew from creating the group: a member answered as another identity, or it did not complete"
            ),
            _ => {}
        }
    }

    fn rejected(&self, reason: &'static str) {
        debug!(reason, "rejected a peer message");
        Observer::rejected(&*self.metrics, reason);
    }

    fn desired_refused(&self) {
        self.metrics.membership_change("refused");
    }

    fn position(&self, node: &NodeId, p: Position, own: bool) {
        self.metrics.position(node, p);
        if own {
            self.peers.own_position(Some(p));
        } else {
            self.peers.position(node, p);
        }
    }

    fn position_read(&self, ok: bool) {
        self.metrics.position_read(if ok { "ok" } else { "error" });
        if !ok {
            self.peers.own_position(None);
        }
    }
}

impl tcp::Events for Reporter {
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

    fn peer_hello(&self, peer: &NodeId, incarnation: Option<Incarnation>) {
        if let (Some(before), Some(now)) = (self.peers.hello(peer, incarnation), incarnation) {
            warn!(
                peer = %peer,
                incarnation = %now,
                before = %before,
                "peer answers as a new identity: its state file was lost or replaced, or it renewed its identity, since it \
                 last connected"
            );
        }
    }

    fn peer_up(&self, peer: &NodeId, up: bool) {
        self.peers.set_up(peer, up);
        tcp::Events::peer_up(&*self.metrics, peer, up);
        info!(peer = %peer, "{}", if up { "peer connected" } else { "peer disconnected" });
    }
}
