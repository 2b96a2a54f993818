//! Identities, configurations and genesis (DESIGN §2b; docs/safety.md,
//! "Membership"). Types only: what a managed node persists about the group
//! and what its messages carry. The rules that use them live in
//! `node/members.rs`.
//!
//! A node runs in one of two [`Mode`]s. A **static** group is today's
//! `--peers` list, matched by name (rule 11 treats it as the configuration
//! `(0, 0, names)`). A **managed** node is an identity `(name,
//! incarnation)`: it holds no configuration until a genesis completes or a
//! member hands it one, votes only as a listed identity, and counts only
//! listed identities' votes and acks.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Incarnation, NodeId, Term};

/// One life of one node: a name and the incarnation drawn with its first
/// state file. Everything a managed node votes for, promises, counts or
/// hands over to is matched by identity, never by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub name: NodeId,
    pub incarnation: Incarnation,
}

impl Identity {
    pub fn new(name: NodeId, incarnation: Incarnation) -> Self {
        Identity { name, incarnation }
    }
}

impl fmt::Display for Identity {
    /// The name and the first eight hex digits of the incarnation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:08x}", self.name, (self.incarnation.0 >> 96) as u32)
    }
}

/// The group a configuration belongs to, drawn at genesis. Two groups of
/// one cluster id (a group created again) never mix their messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupUid(pub u128);

impl fmt::Display for GroupUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A configuration: who votes, stamped `(cterm, epoch)`. Configurations
/// are ordered by `cterm`, then `epoch`; equal stamps with other voters are
/// incomparable (docs/safety.md, rule 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    pub group: GroupUid,
    pub cterm: Term,
    pub epoch: u64,
    pub voters: BTreeSet<Identity>,
    /// Every identity ever removed (tombstones): never added again.
    pub removed: BTreeSet<Identity>,
    /// The newest desired-set generation a leader reconciled toward: no
    /// leader reconciles toward an older one.
    pub generation: u64,
    /// The first term of the group (the genesis floor, rule 9): no term at
    /// or below it is ever campaigned for.
    pub floor: Term,
}

impl Configuration {
    pub fn stamp(&self) -> (Term, u64) {
        (self.cterm, self.epoch)
    }

    pub fn lists(&self, who: &Identity) -> bool {
        self.voters.contains(who)
    }

    /// How `self` compares with `other` (docs/safety.md, rule 1): by
    /// `(cterm, epoch)`; equal stamps with other voters, or another group,
    /// are incomparable (`None`).
    pub fn order(&self, other: &Configuration) -> Option<std::cmp::Ordering> {
        if self.group != other.group {
            return None;
        }
        match self.stamp().cmp(&other.stamp()) {
            std::cmp::Ordering::Equal if self.voters != other.voters => None,
            o => Some(o),
        }
    }

    /// Is `self` strictly newer than `other`?
    pub fn newer_than(&self, other: &Configuration) -> bool {
        self.order(other) == Some(std::cmp::Ordering::Greater)
    }

    /// The listed incarnation of `name`, if `name` is a voter.
    pub fn incarnation_of(&self, name: &NodeId) -> Option<Incarnation> {
        self.voters.iter().find(|v| v.name == *name).map(|v| v.incarnation)
    }

    /// A short digest of the stamp and the voters, for logs and the checker.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        };
        eat(&self.group.0.to_le_bytes());
        eat(&self.cterm.0.to_le_bytes());
        eat(&self.epoch.to_le_bytes());
        eat(&self.floor.0.to_le_bytes());
        eat(&self.generation.to_le_bytes());
        for v in &self.voters {
            eat(v.name.as_str().as_bytes());
            eat(&v.incarnation.0.to_le_bytes());
        }
        h
    }
}

/// Membership rules broken on purpose: the simulator's negative controls
/// (docs/testing.md), each of which its checker must catch. Nothing else
/// sets them; the command line has no way to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Broken {
    /// A learner votes, and candidates and leaders count any incarnation
    /// of a listed name (acks and votes matched by name, rules 1 and 5).
    pub learners_vote: bool,
    /// A genesis completes on a majority of acceptances, not all of them
    /// (rule 9).
    pub genesis_majority: bool,
    /// A leader proposes a change while another is pending (rule 4).
    pub two_changes: bool,
    /// A leader proposes a change before its re-stamp is committed (rule 4).
    pub change_before_stamp: bool,
    /// Configurations are ordered by epoch alone, the term ignored (rule 1).
    pub epoch_order: bool,
    /// The lease counts acks of any round under the configuration the
    /// leader won with, whatever the rounds carried (rule 5).
    pub lease_under_first: bool,
    /// A node that left its group by `--force-new-group` reads only its
    /// wall clock in its acceptance, not above its term (rule 10).
    pub force_floor_from_clock: bool,
    /// A static node that converts to a managed one forgets the vote it
    /// cast in its current term (rule 11).
    pub convert_forgets_vote: bool,
    /// Votes and pre-votes ignore replication positions.
    pub votes_ignore_positions: bool,
    /// A leader makes membership changes while positions decide elections.
    pub changes_ignore_positions: bool,
}

/// Which membership rules a node follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The `--peers` list, by name (DESIGN §2; rule 11's static group).
    Static,
    /// An identity of a managed group (DESIGN §2b).
    Managed { incarnation: Incarnation },
}

/// What a peer of a static group said of itself in its hello (rule 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A static node that is not upgrading (or said nothing).
    Static,
    /// A static node started with `--peers-file`: its incarnation, and the
    /// digest of the static voters of its state file ([`static_digest`]).
    Upgrading { incarnation: Incarnation, digest: u64 },
    /// A managed node, and whether it holds no configuration yet (blank):
    /// in a static group that has not converted, a blank one is a node
    /// that lost its state file and came back with `--peers-file`; one
    /// that holds a configuration converted already.
    Managed { incarnation: Incarnation, blank: bool },
}

/// The digest of a static group's voters, by name, that upgrading nodes
/// compare (rule 11): two leaders whose `--peers` disagree never convert.
pub fn static_digest(voters: &BTreeSet<NodeId>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for name in voters {
        for b in name.as_str().bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h.max(1)
}

/// A genesis proposal (rule 9): the identities of every desired member,
/// each reported blank, and a fresh group uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub group: GroupUid,
    pub voters: BTreeSet<Identity>,
    /// The generation of the desired set it was made for (0: `--peers`).
    pub generation: u64,
    /// A forced genesis (rule 10): the group that a listed identity
    /// announced it left by `--force-new-group`, which lets a genesis
    /// happen after the desired set's first generation.
    pub forced: Option<GroupUid>,
}

impl Proposal {
    /// The configuration the proposal makes once every listed identity
    /// accepted it, with the largest wall-clock reading among the
    /// acceptances as its floor.
    pub fn configuration(&self, floor: Term) -> Configuration {
        Configuration {
            group: self.group,
            cterm: Term(0),
            epoch: 1,
            voters: self.voters.clone(),
            removed: BTreeSet::new(),
            generation: self.generation,
            floor,
        }
    }
}

/// What a managed node persists about membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The configuration this node holds. `None` while blank.
    pub config: Option<Configuration>,
    /// The genesis this identity accepted and has neither completed nor
    /// withdrawn, with its own wall-clock reading (microseconds since
    /// 1970) sent in its acceptance.
    pub accepted: Option<(Proposal, u64)>,
    /// Geneses this identity withdrew from: refused for good.
    pub withdrawn: BTreeSet<GroupUid>,
    /// The incarnation this node drew for itself when it found its
    /// identity removed while still desired (rule 8), or when it left its
    /// group by `--force-new-group` (rule 10): it replaces the one of its
    /// first state file from then on.
    pub renewed: Option<Incarnation>,
    /// Groups this node left by `--force-new-group` (rule 10): it never
    /// takes part in them again, and refuses their messages.
    pub abandoned: BTreeSet<GroupUid>,
}

impl MemberState {
    /// Blank, for genesis: no configuration, and no genesis accepted and
    /// still open.
    pub fn is_blank(&self) -> bool {
        self.config.is_none() && self.accepted.is_none()
    }

    /// `--force-new-group GROUP` at start (rule 10): a node that holds a
    /// configuration of `group` leaves it for good, as a new identity
    /// `fresh`, and is blank again, ready for a genesis of a new group
    /// (its term stays: the genesis floor goes above it). An open
    /// acceptance of another genesis is given up too. Returns false, and
    /// changes nothing, for a node that holds another group's
    /// configuration or none: the flag is inert once the new group exists.
    pub fn force_new_group(&mut self, group: GroupUid, fresh: Incarnation) -> bool {
        if self.config.as_ref().is_none_or(|c| c.group != group) {
            return false;
        }
        self.config = None;
        if let Some((p, _)) = self.accepted.take() {
            self.withdrawn.insert(p.group);
        }
        self.abandoned.insert(group);
        self.renewed = Some(fresh);
        true
    }
}

/// What a managed node reports of its membership (`/v1/status`,
/// `leasehold members`, the metrics). Reachability and learners are known
/// to the leader only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipView {
    /// This node's identity now.
    pub me: Identity,
    /// None while blank (before genesis, or before a member handed one).
    pub config: Option<Configuration>,
    /// Each voter of `config`, and on the leader whether it acked recently.
    pub reachable: Vec<(Identity, Option<bool>)>,
    /// On the leader: identities that ack its rounds without being listed.
    pub learners: Vec<Identity>,
    /// On the leader: the change made and not yet committed (who, added or
    /// removed, since when on this node's clock).
    pub pending: Option<(Identity, bool, super::Nanos)>,
    /// The genesis this identity accepted and has not completed.
    pub genesis: Option<GroupUid>,
    pub desired: BTreeSet<NodeId>,
    pub desired_generation: u64,
}

impl MembershipView {
    pub fn is_voter(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.lists(&self.me))
    }
}
