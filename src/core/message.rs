//! Peer messages. Every message travels in an [`Envelope`] that names the
//! protocol version, the cluster, the sender, the addressee and the sender's
//! current term (DESIGN §2 rule 10). The envelope is checked before the body
//! is looked at; anything that does not match is rejected and counted.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::membership::{Configuration, GroupUid, Proposal};
use super::{Incarnation, NodeId, Position, Term};

/// Version of the peer protocol of a static group (DESIGN §2): the
/// envelope's first six fields.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of the peer protocol of a managed group (DESIGN §2b): protocol
/// 1's fields, then the sender's and the addressee's incarnations, the
/// group and the sender's configuration. A static node refuses it, and a
/// managed node refuses protocol 1 (`RejectReason::Version`).
pub const MANAGED_PROTOCOL_VERSION: u32 = 2;

/// Protocol 2 and the sender's replication position (docs/safety.md,
/// "Replication positions"): sent only by a managed node that uses
/// positions; accepted by every managed node.
pub const POSITIONS_PROTOCOL_VERSION: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub version: u32,
    pub cluster_id: String,
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's current term, always (a PreVote carries the term it would
    /// campaign for in its body, so the envelope never claims a term the
    /// sender has not durably adopted).
    pub term: Term,
    pub body: Body,
    /// Managed groups only (DESIGN §2b), on the wire in protocol 2 only:
    /// the sender's incarnation, the addressee's as the sender last heard
    /// it, and the sender's group. Static groups leave them `None`.
    pub from_incarnation: Option<Incarnation>,
    pub to_incarnation: Option<Incarnation>,
    pub group: Option<GroupUid>,
    /// Managed groups: the sender's latest configuration, on every message
    /// once it holds one (rules 1, 2, 3, 5 and 7 of docs/safety.md read it).
    pub config: Option<Box<Configuration>>,
    /// Protocol 3 only: the sender's replication position, as last read.
    pub position: Option<Position>,
}

impl Serialize for Envelope {
    /// Protocol 1 as six fields, byte for byte what protocol 1 sends (and
    /// a protocol-1 envelope never carries the managed fields: they are
    /// dropped); protocol 2 adds the four managed fields.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let managed = self.version >= MANAGED_PROTOCOL_VERSION;
        let positioned = self.version >= POSITIONS_PROTOCOL_VERSION;
        let mut t = s.serialize_tuple(if positioned {
            11
        } else if managed {
            10
        } else {
            6
        })?;
        t.serialize_element(&self.version)?;
        t.serialize_element(&self.cluster_id)?;
        t.serialize_element(&self.from)?;
        t.serialize_element(&self.to)?;
        t.serialize_element(&self.term)?;
        t.serialize_element(&self.body)?;
        if managed {
            t.serialize_element(&self.from_incarnation)?;
            t.serialize_element(&self.to_incarnation)?;
            t.serialize_element(&self.group)?;
            t.serialize_element(&self.config)?;
        }
        if positioned {
            t.serialize_element(&self.position)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Envelope {
    /// Reads the managed fields only in protocol 2: a protocol-1 envelope
    /// is six fields, and the frame decoder refuses bytes left over.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a leasehold envelope")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
                let version: u32 = field(&mut seq, 0, &self)?;
                let mut m = Envelope::new(
                    field::<String, A>(&mut seq, 1, &self)?,
                    field(&mut seq, 2, &self)?,
                    field(&mut seq, 3, &self)?,
                    field(&mut seq, 4, &self)?,
                    field(&mut seq, 5, &self)?,
                );
                m.version = version;
                if version >= MANAGED_PROTOCOL_VERSION {
                    m.from_incarnation = field(&mut seq, 6, &self)?;
                    m.to_incarnation = field(&mut seq, 7, &self)?;
                    m.group = field(&mut seq, 8, &self)?;
                    m.config = field(&mut seq, 9, &self)?;
                }
                if version >= POSITIONS_PROTOCOL_VERSION {
                    m.position = field(&mut seq, 10, &self)?;
                }
                Ok(m)
            }
        }
        d.deserialize_tuple(11, Fields)
    }
}

/// The `at`th field of an envelope, or an error naming how many there were.
fn field<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    at: usize,
    expected: &dyn de::Expected,
) -> Result<T, A::Error> {
    seq.next_element()?.ok_or_else(|| de::Error::invalid_length(at, expected))
}

impl Envelope {
    /// A message of this protocol version, with the fields only a managed
    /// group fills left empty.
    pub fn new(cluster_id: impl Into<String>, from: NodeId, to: NodeId, term: Term, body: Body) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            cluster_id: cluster_id.into(),
            from,
            to,
            term,
            body,
            from_incarnation: None,
            to_incarnation: None,
            group: None,
            config: None,
            position: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// "Would you vote for me in `next_term`?" Changes nothing at the voter.
    PreVoteRequest {
        next_term: Term,
    },
    PreVoteResponse {
        next_term: Term,
        granted: bool,
    },
    /// A real vote request for the envelope's term. `transfer_from` names the
    /// leader whose `TimeoutNow` started this campaign (rule 8).
    VoteRequest {
        transfer_from: Option<NodeId>,
    },
    /// A granted vote counts as an ack of round 0 of the term (rule 2).
    VoteResponse {
        granted: bool,
    },
    /// Lease renewal round `round` of the envelope's term.
    Heartbeat {
        round: u64,
        leader_address: String,
    },
    /// `ok` is false when the responder is in a higher term (the envelope term
    /// tells the stale leader which). Priority and health let the leader pick
    /// a transfer target (rule 9).
    HeartbeatAck {
        round: u64,
        ok: bool,
        priority: u32,
        healthy: bool,
    },
    /// The leader has ended its lease and asks the addressee to campaign now.
    TimeoutNow,
    // Managed groups only (DESIGN §2b). Appended, so that the variants
    // above keep their numbers on the wire.
    /// "I hold no configuration": sent by a node without one to every
    /// desired member, each heartbeat interval. `desired` digests the
    /// desired set it reads; `pending` names the genesis it accepted and
    /// has neither completed nor withdrawn.
    Announce {
        desired: u64,
        pending: Option<GroupUid>,
        /// The group this node left by `--force-new-group` (rule 10), if
        /// it runs with that flag and left it: the evidence a forced
        /// genesis of a later generation needs.
        left: Option<GroupUid>,
    },
    /// The sender persisted its acceptance of `proposal`, with its
    /// wall-clock reading in microseconds since 1970. The lowest desired
    /// name proposes a genesis (rule 9) by sending its own acceptance.
    Accept {
        proposal: Box<Proposal>,
        wall_micros: u64,
    },
    /// The configuration the sender holds, sent to a node that holds none
    /// (a blank node joins as a learner; a listed one takes it as the
    /// certificate that its genesis completed).
    Config {
        config: Box<Configuration>,
    },
}

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::PreVoteRequest { .. } => "PreVoteRequest",
            Body::PreVoteResponse { .. } => "PreVoteResponse",
            Body::VoteRequest { .. } => "VoteRequest",
            Body::VoteResponse { .. } => "VoteResponse",
            Body::Heartbeat { .. } => "Heartbeat",
            Body::HeartbeatAck { .. } => "HeartbeatAck",
            Body::TimeoutNow => "TimeoutNow",
            Body::Announce { .. } => "Announce",
            Body::Accept { .. } => "Accept",
            Body::Config { .. } => "Config",
        }
    }
}

/// Why a message was not processed. The label is the `reason` of
/// `leasehold_rejected_messages_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    Version,
    /// A term (in the envelope or a PreVote body) more than
    /// [`MAX_TERM_AHEAD`] above the receiver's.
    TermTooFar,
    ClusterId,
    WrongAddressee,
    UnknownPeer,
    StaleTerm,
    ConflictingLeader,
    /// Another group of the same cluster id (DESIGN §2b).
    OtherGroup,
}

/// How far above its own term a node accepts a peer's term. Terms grow by
/// one per election, so a real peer is never this far ahead; a forged or
/// corrupt term near `u64::MAX`, once adopted, would leave the group no term
/// to campaign in (a node at `u64::MAX` votes and follows only). Dropping
/// the message is always safe: it is a lost message.
pub const MAX_TERM_AHEAD: u64 = 1 << 32;

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        use crate::labels::reason;
        match self {
            RejectReason::Version => reason::VERSION,
            RejectReason::TermTooFar => reason::TERM_TOO_FAR,
            RejectReason::ClusterId => reason::CLUSTER_ID,
            RejectReason::WrongAddressee => reason::WRONG_ADDRESSEE,
            RejectReason::UnknownPeer => reason::UNKNOWN_PEER,
            RejectReason::StaleTerm => reason::STALE_TERM,
            RejectReason::ConflictingLeader => reason::CONFLICTING_LEADER,
            RejectReason::OtherGroup => reason::OTHER_GROUP,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{} t{} ", self.from, self.to, self.term.0)?;
        match &self.body {
            Body::PreVoteRequest { next_term } => write!(f, "PreVoteRequest next_term={}", next_term.0),
            Body::PreVoteResponse { next_term, granted } => {
                write!(f, "PreVoteResponse next_term={} granted={granted}", next_term.0)
            }
            Body::VoteRequest { transfer_from: None } => write!(f, "VoteRequest"),
            Body::VoteRequest { transfer_from: Some(l) } => write!(f, "VoteRequest transfer_from={l}"),
            Body::VoteResponse { granted } => write!(f, "VoteResponse granted={granted}"),
            Body::Heartbeat { round, .. } => write!(f, "Heartbeat round={round}"),
            Body::HeartbeatAck { round, ok, priority, healthy } => {
                write!(f, "HeartbeatAck round={round} ok={ok} priority={priority} healthy={healthy}")
            }
            Body::TimeoutNow => write!(f, "TimeoutNow"),
            Body::Announce { desired, pending, left } => {
                write!(f, "Announce desired={desired:016x} pending={pending:?} left={left:?}")
            }
            Body::Accept { proposal, wall_micros } => {
                write!(f, "Accept group={} wall={wall_micros}", proposal.group)
            }
            Body::Config { config } => write!(f, "Config group={} stamp={:?}", config.group, config.stamp()),
        }
    }
}
