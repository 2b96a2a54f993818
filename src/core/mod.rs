//! The consensus state machine: Raft's leader election without a log, plus
//! leader leases, PreVote, CheckQuorum, leadership transfer, priority and
//! health-gated eligibility (DESIGN §2).
//!
//! Owns: roles, terms, votes, promises, leases and the messages between peers.
//! Must not: read a clock, touch sockets or files, spawn threads or draw
//! randomness other than from its seeded [`rng::SplitMix64`]. Time enters only
//! as the `now` argument of [`Node::step`], a monotonic instant in nanoseconds
//! (CLOCK_BOOTTIME in the real driver). The clippy configuration enforces this.
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

#[cfg(boundary_probe)]
mod boundary_probe;
pub mod lease;
pub mod membership;
pub mod message;
mod node;
pub mod outbox;
pub mod rng;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use membership::{
    static_digest, Broken, Configuration, GroupUid, Identity, MemberState, MembershipView, Mode, PeerKind, Proposal,
};
pub use message::{
    Body, Envelope, RejectReason, MANAGED_PROTOCOL_VERSION, MAX_TERM_AHEAD, POSITIONS_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
pub use node::Node;

/// A monotonic instant in nanoseconds on the node's own clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Nanos(pub u64);

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);
    /// "Never": used as the wake-up time when nothing is pending.
    pub const NEVER: Nanos = Nanos(u64::MAX);

    pub fn plus(self, d: Duration) -> Nanos {
        let d_ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Nanos(self.0.saturating_add(d_ns))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Nanos) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// A term of the election. The term in which a leader was elected is its
/// fencing token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

impl Term {
    pub fn next(self) -> Term {
        // A forged u64::MAX term must not wrap to 0; saturating keeps terms
        // monotonic (a node at u64::MAX never campaigns, which is safe but
        // wedges the group: keeping forged terms out is the job of peer
        // authentication).
        Term(self.0.saturating_add(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A node's identity within its group (the `--node-id`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Self {
        NodeId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which life of a node this is (DESIGN §2b): 128 random bits written with
/// the node's first state file. A node whose state file is gone draws a new
/// one and is a new identity, never "the same voter with its memory gone".
/// The core only carries it; drawing it is the caller's (the core has no
/// unseeded randomness).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub u128);

impl fmt::Display for Incarnation {
    /// 32 lowercase hex digits, as in the state file and `/v1/status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for Incarnation {
    type Err = String;

    /// Exactly 32 lowercase hex digits, not zero (zero is never drawn, so
    /// it cannot be mistaken for "none").
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match u128::from_str_radix(s, 16) {
            Ok(n) if hex && n != 0 => Ok(Incarnation(n)),
            _ => Err(format!("incarnation {s:?} is not 32 lowercase hex digits other than all zeros")),
        }
    }
}

/// A replication position of the local database (docs/safety.md,
/// "Replication positions"): the fencing token of the leadership whose
/// write ends its history, then how far it got (a PostgreSQL LSN).
/// Compared in that order, as Raft compares logs by last term, then index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub branch: Term,
    pub at: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.at, self.branch)
    }
}

/// What must survive a crash: the term and the vote cast in it, and in a
/// managed group the voted-for incarnation and the membership state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
    /// Managed groups only: which incarnation of `voted_for`.
    pub voted_incarnation: Option<Incarnation>,
    /// Managed groups only.
    pub members: Option<Box<MemberState>>,
}

impl HardState {
    /// A static group's state: a term and the vote cast in it.
    pub fn new(term: Term, voted_for: Option<NodeId>) -> Self {
        HardState { term, voted_for, ..HardState::default() }
    }
}

/// Configuration of one node of the group.
#[derive(Clone, Debug)]
pub struct Config {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Every voter of the group, this node included.
    pub voters: BTreeSet<NodeId>,
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// Bound on the rate difference between any clock and real time
    /// (0.01 = 1%).
    pub max_clock_drift: f64,
    /// 0 = votes but never leads; higher = preferred leader.
    pub priority: u32,
    /// What other nodes report as `leader_address` while this node leads.
    pub advertise: String,
    /// A static group (`voters` are the voters, by name) or an identity of
    /// a managed one (`voters` are the desired members' names).
    pub mode: Mode,
    /// Managed groups: `--force-new-group GROUP` (rule 10). While this node
    /// holds no configuration it takes part in a genesis of a later
    /// generation than the first, but only one whose proposal names GROUP
    /// as left by a listed identity.
    pub force_new_group: Option<GroupUid>,
    /// A static node started with `--peers-file` (rule 11): its own
    /// incarnation, from its static state file. It runs as a static node
    /// until its group converts: as the leader, once every static voter is
    /// upgrading and acked a round of its term; as a follower, when a
    /// message carries a configuration that lists it.
    pub upgrading: Option<Incarnation>,
    /// Position-aware votes (docs/safety.md, "Replication positions"): a
    /// voter grants only a candidate whose position is at least its own,
    /// read after its promise ended; requests carry the candidate's.
    pub positions: bool,
    /// Rules broken on purpose, for the simulator's negative controls only.
    pub broken: Broken,
}

/// The shortest lease the core accepts.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--node-id {0} is not one of the voters in --peers")]
    NodeNotAVoter(NodeId),
    #[error("--lease-ttl {0:?} is below the minimum of 100ms")]
    LeaseTooShort(Duration),
    #[error(
        "--heartbeat-interval {heartbeat:?} must be at most a third of the leader's lease {lease:?} \
         (--lease-ttl x (1 - drift) / (1 + drift)), so that a lost round does not end the lease"
    )]
    HeartbeatTooSlow { heartbeat: Duration, lease: Duration },
    #[error("--heartbeat-interval must be above zero")]
    HeartbeatZero,
    #[error("--max-clock-drift {0} must be a number in [0, 0.5)")]
    BadDrift(f64),
    #[error("--cluster-id must not be empty")]
    EmptyClusterId,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_id.is_empty() {
            return Err(ConfigError::EmptyClusterId);
        }
        if !self.voters.contains(&self.node_id) {
            return Err(ConfigError::NodeNotAVoter(self.node_id.clone()));
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            return Err(ConfigError::LeaseTooShort(self.lease_ttl));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::HeartbeatZero);
        }
        if !(0.0..0.5).contains(&self.max_clock_drift) || self.max_clock_drift.is_nan() {
            return Err(ConfigError::BadDrift(self.max_clock_drift));
        }
        let lease = lease::leader_lease(self.lease_ttl, lease::drift_ppm(self.max_clock_drift));
        // Checked: three times a heartbeat of billions of years overflows.
        if self.heartbeat_interval.checked_mul(3).is_none_or(|three| three > lease) {
            return Err(ConfigError::HeartbeatTooSlow { heartbeat: self.heartbeat_interval, lease });
        }
        Ok(())
    }
}

/// What can happen to a node.
// A message is most of what a node is fed, one at a time: boxing it to
// shrink the other variants would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Time passed; timers may fire. Call at `Outputs::wake_at` (or any time).
    Tick,
    /// A message from a peer (any message: it is validated here).
    Message(Envelope),
    /// This state is now durable (the driver's write and fsync completed).
    Persisted(HardState),
    /// The last write of the hard state failed. The node stops campaigning and
    /// voting until a later `Persisted`.
    PersistFailed,
    /// The local health check changed.
    Health(bool),
    Admin(AdminRequest),
    /// Managed groups: the desired set changed (DESIGN §2b): the names the
    /// operator wants as voters, and the generation of that wish. An older
    /// generation than one already read is ignored.
    Desired {
        names: BTreeSet<NodeId>,
        generation: u64,
    },
    /// What a peer said of itself when its connection opened (its hello):
    /// static, upgrading (rule 11), or managed. Static groups only.
    Peer {
        name: NodeId,
        kind: PeerKind,
    },
    /// The local database's replication position (None: it could not be
    /// read), and the instant its read started: everything the database
    /// confirmed before that instant is in it. With `Config::positions`
    /// only; an instant later than the step's counts as the step's.
    Position {
        position: Option<Position>,
        read_at: Nanos,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum AdminRequest {
    /// Hand leadership to the best eligible peer (or just end the lease).
    StepDown,
    /// Hand leadership to this peer.
    TransferTo(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("this node is not the leader (leader: {})", .0.as_ref().map_or("unknown", |l| l.as_str()))]
    NotLeader(Option<NodeId>),
    #[error("{0} is not a voter of this group")]
    UnknownPeer(NodeId),
    #[error("{0} is this node")]
    SelfTarget(NodeId),
    #[error("{0} cannot lead: priority 0, unhealthy, or not heard from recently")]
    TargetIneligible(NodeId),
    #[error("a leadership transfer is already in progress")]
    TransferInProgress,
    /// The backend cannot do what was asked, and says why (HTTP 409).
    #[error("{0}")]
    Refused(String),
    /// The backend could not reach its consensus group (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// What the API reports: who leads, with which token, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    pub node_id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader_id: Option<NodeId>,
    pub leader_address: Option<String>,
    /// The term in which the known leader was elected.
    pub fencing_token: Option<Term>,
    /// Set only on the leader: its lease ends at this instant of its clock.
    pub lease_until: Option<Nanos>,
    /// Until when this node has promised not to vote for another candidate.
    pub promise_until: Nanos,
    pub healthy: bool,
    /// False after a failed persist, until a later one succeeds.
    pub storage_ok: bool,
}

impl LeaderView {
    /// DESIGN §2 rule 2: role is Leader AND now < lease_until. Nothing else.
    pub fn is_leader(&self, now: Nanos) -> bool {
        self.role == Role::Leader && self.lease_until.is_some_and(|until| now < until)
    }

    pub fn lease_remaining(&self, now: Nanos) -> Duration {
        match self.lease_until {
            Some(until) if self.role == Role::Leader => until.since(now),
            _ => Duration::ZERO,
        }
    }
}

/// Why a leader stopped leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepDownReason {
    HigherTerm,
    LeaseLapsed,
    Transferred,
}

/// Why a voter that uses replication positions refused a candidate it
/// would otherwise have granted (docs/safety.md, "Replication positions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PositionRefusal {
    /// The local database's position could not be read.
    Unknown,
    /// The last read started before the last lease this node acked or
    /// published ended, or before its boot promise ended.
    Stale,
    /// The candidate's position is behind this node's.
    Behind,
}

impl PositionRefusal {
    /// The label of `leasehold_position_refusals_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            PositionRefusal::Unknown => "unknown",
            PositionRefusal::Stale => "stale",
            PositionRefusal::Behind => "behind",
        }
    }
}

/// Things that happened inside a step, for metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    PreVoteStarted {
        next_term: Term,
    },
    PreVoteFailed {
        next_term: Term,
    },
    ElectionStarted {
        term: Term,
        transfer: bool,
    },
    ElectionWon {
        term: Term,
    },
    ElectionLost {
        term: Term,
    },
    SteppedDown {
        term: Term,
        reason: StepDownReason,
    },
    TransferStarted {
        term: Term,
        to: Option<NodeId>,
    },
    StorageFault,
    StorageRecovered,
    /// This voter refused `candidate` (a vote or a pre-vote) for its
    /// replication position alone.
    PositionRefused {
        candidate: NodeId,
        reason: PositionRefusal,
    },
    /// This managed node holds a configuration of `group` from now on,
    /// as a voter or a learner.
    ConfigurationHeld {
        group: GroupUid,
        voter: bool,
    },
    /// This leader made a configuration that adds or removes `who`
    /// (rule 4), stamped `epoch` in its term.
    MembershipChange {
        who: Identity,
        add: bool,
        epoch: u64,
    },
    /// This node found its identity removed while still desired, and
    /// drew a new incarnation (membership rule 8).
    Renewed {
        old: Incarnation,
        new: Incarnation,
    },
    /// This static node's group became a managed one (rule 11): as the
    /// leader that made its first configuration, or as a listed follower.
    Converted {
        group: GroupUid,
        voters: usize,
    },
    /// This node, the lowest desired name, proposed a genesis.
    GenesisProposed {
        group: GroupUid,
    },
    /// This identity withdrew its acceptance of a genesis, for good.
    GenesisWithdrawn {
        group: GroupUid,
    },
    /// The leader got `peer`'s ack of a heartbeat round `rtt` after sending
    /// it (for `leasehold_peer_rtt_seconds`).
    AckRoundTrip {
        peer: NodeId,
        rtt: Duration,
    },
}

/// A message that was not processed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub from: NodeId,
    pub reason: RejectReason,
}

/// The result of one [`Node::step`]. The caller (the driver) must:
///
/// 1. If `persist` is set, write it durably (write, fsync, rename, fsync dir),
///    replacing the previous state.
/// 2. Send `send_now` at once.
/// 3. Send `send_after_persist` only once *every* persist requested so far has
///    completed: these messages carry or depend on state that is not durable
///    yet. If a write fails, drop these messages, report
///    [`Input::PersistFailed`], and retry writing the latest state.
/// 4. Report each completed write with [`Input::Persisted`], at a `now` read
///    before any of the `send_after_persist` messages it released leave: a
///    vote round's lease may count from that instant.
/// 5. Publish `view` if set (it changed).
/// 6. Call `step(now, Input::Tick)` no later than `wake_at`.
#[must_use]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    pub persist: Option<HardState>,
    pub send_after_persist: Vec<Envelope>,
    pub send_now: Vec<Envelope>,
    pub view: Option<LeaderView>,
    pub wake_at: Nanos,
    pub rejected: Vec<Rejection>,
    pub events: Vec<Event>,
    /// The answer to an `Input::Admin`, if this step had one.
    pub admin: Option<Result<(), AdminError>>,
}
