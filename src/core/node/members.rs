//! The managed-group half of [`Node`] (DESIGN §2b; docs/safety.md,
//! "Membership", rules 1, 6, 8 and 9): who counts as a voter, blank nodes,
//! learners and genesis. A static group (rule 11) passes through every
//! function here unchanged: all of `--peers` vote, matched by name.

use std::collections::{BTreeMap, BTreeSet};

use super::Node;
use crate::core::membership::{
    static_digest, Configuration, GroupUid, Identity, MemberState, Mode, PeerKind, Proposal,
};
use crate::core::message::{Body, Envelope, RejectReason};
use crate::core::{Event, Incarnation, Nanos, NodeId, Term};

/// What a node without a configuration last heard from a desired member.
#[derive(Clone, Debug)]
pub(super) struct Announced {
    incarnation: Incarnation,
    desired: u64,
    pending: Option<GroupUid>,
    /// The group it announced it left by `--force-new-group` (rule 10).
    left: Option<GroupUid>,
    at: Nanos,
}

/// A managed node's view of the others, in memory only.
#[derive(Clone, Debug, Default)]
pub(super) struct Members {
    /// The incarnation last heard from each name: the addressee's
    /// incarnation of what this node sends it.
    pub(super) seen: BTreeMap<NodeId, Incarnation>,
    announced: BTreeMap<NodeId, Announced>,
    /// The acceptances collected for the genesis this node accepted.
    acceptances: BTreeMap<Identity, u64>,
    /// When this node accepted (or, after a restart, found) that genesis.
    accepted_at: Nanos,
    next_announce: Nanos,
    /// The driver's last wall-clock reading, microseconds since 1970.
    wall_micros: u64,
    /// The desired set last read and its generation; until one is read,
    /// `--peers` (the configured names), generation 0.
    pub(super) desired: Option<(BTreeSet<NodeId>, u64)>,
    /// Static groups (rule 11): what each peer's hello said it is, and the
    /// term of the last round it acked since.
    pub(super) peer_kinds: BTreeMap<NodeId, (PeerKind, Option<Term>)>,
}

/// How far above its own term a node that left a group by
/// `--force-new-group` reads in its acceptance (rule 10): more elections
/// than an old group could have held unseen by every survivor, and well
/// under `MAX_TERM_AHEAD`, so that the other members accept the terms.
pub const FORCED_MARGIN: u64 = 1 << 24;

/// How long an accepted genesis may stay incomplete before this identity
/// withdraws from it, in leases.
const WITHDRAW_AFTER_LEASES: u32 = 6;

impl Node {
    pub(super) fn me(&self) -> Option<Identity> {
        match self.cfg.mode {
            Mode::Static => None,
            Mode::Managed { incarnation } => Some(Identity::new(self.cfg.node_id.clone(), incarnation)),
        }
    }

    pub(super) fn my_incarnation(&self) -> Option<Incarnation> {
        match self.cfg.mode {
            Mode::Static => None,
            Mode::Managed { incarnation } => Some(incarnation),
        }
    }

    fn managed(&self) -> bool {
        matches!(self.cfg.mode, Mode::Managed { .. })
    }

    fn member_state(&self) -> Option<&MemberState> {
        self.hard.members.as_deref()
    }

    fn member_state_mut(&mut self) -> &mut MemberState {
        self.hard.members.get_or_insert_with(Box::default)
    }

    /// The configuration this node holds (managed groups only).
    pub fn configuration(&self) -> Option<&Configuration> {
        self.member_state().and_then(|s| s.config.as_ref())
    }

    /// How many votes make a majority's worth of voters.
    pub(super) fn voter_count(&self) -> usize {
        match self.cfg.mode {
            Mode::Static => self.cfg.voters.len(),
            Mode::Managed { .. } => self.configuration().map_or(0, |c| c.voters.len()),
        }
    }

    /// Is this node a voter of what it holds? A learner, or a blank node,
    /// never votes or campaigns (rules 1 and 8).
    pub fn is_voter(&self) -> bool {
        match self.me() {
            None => true,
            Some(_) if self.cfg.broken.learners_vote => self.configuration().is_some(),
            Some(me) => self.configuration().is_some_and(|c| c.lists(&me)),
        }
    }

    /// Does a vote or ack in `m` count? In a managed group only a listed
    /// identity's (rules 1 and 5): never a learner's, a removed voter's, or
    /// another incarnation's of a listed name.
    pub(super) fn counts(&self, m: &Envelope) -> bool {
        if !self.managed() {
            return true;
        }
        let Some(inc) = m.from_incarnation else { return false };
        if self.cfg.broken.learners_vote {
            return self.configuration().is_some_and(|c| c.incarnation_of(&m.from).is_some());
        }
        self.configuration().is_some_and(|c| c.lists(&Identity::new(m.from.clone(), inc)))
    }

    /// The incarnation to address `name` by: the one this node's
    /// configuration lists, else the one last heard (a learner's). A
    /// delayed message of a name's earlier life cannot turn a voter's
    /// address back. Only a message's reach depends on it: what counts is
    /// the sender's incarnation, checked on arrival.
    pub(super) fn incarnation_of(&self, name: &NodeId) -> Option<Incarnation> {
        self.configuration().and_then(|c| c.incarnation_of(name)).or_else(|| self.members.seen.get(name).copied())
    }

    /// Envelope checks of a managed group: the sender names its
    /// incarnation, a message meant for another life of this node is not
    /// for it, and another group's messages are refused.
    pub(super) fn invalid_membership(&self, m: &Envelope) -> Option<RejectReason> {
        let mine = self.my_incarnation()?;
        if m.from_incarnation.is_none() {
            return Some(RejectReason::UnknownPeer);
        }
        if m.to_incarnation.is_some_and(|to| to != mine) {
            return Some(RejectReason::WrongAddressee);
        }
        let abandoned = |g: GroupUid| self.member_state().is_some_and(|s| s.abandoned.contains(&g));
        match (self.configuration(), m.group) {
            (Some(c), Some(g)) if c.group != g => Some(RejectReason::OtherGroup),
            // A group this node left by --force-new-group (rule 10).
            (_, Some(g)) if abandoned(g) => Some(RejectReason::OtherGroup),
            _ => None,
        }
    }

    /// The term floor `term_too_far` is measured from: a node's term, or
    /// in a managed group its own wall clock, so that a blank node does not
    /// refuse the terms of a group whose genesis floor is a wall-clock
    /// reading (rule 9).
    pub(super) fn term_base(&self) -> Term {
        if self.managed() {
            self.hard.term.max(Term(self.members.wall_micros))
        } else {
            self.hard.term
        }
    }

    /// The driver's wall clock, in microseconds since 1970: read for the
    /// genesis floor (rule 9). Only a managed group uses it.
    pub fn observe_wall_clock(&mut self, micros: u64) {
        self.members.wall_micros = self.members.wall_micros.max(micros);
    }

    /// A message meant for an earlier life of this node's name: answer
    /// with an announcement, so that the sender learns this identity (a
    /// leader replaces the old one, rule 8; a learner is reached at all).
    pub(super) fn introduce(&mut self, m: &Envelope) {
        if self.my_incarnation().is_none() || m.from_incarnation.is_none() {
            return;
        }
        let desired = self.desired_digest();
        let pending = self.member_state().and_then(|s| s.accepted.as_ref()).map(|(p, _)| p.group);
        let left = self.left();
        self.send_to(m.from.clone(), m.from_incarnation, Body::Announce { desired, pending, left });
    }

    /// The group this node left by `--force-new-group`, when it runs with
    /// the flag naming it (rule 10).
    fn left(&self) -> Option<GroupUid> {
        let group = self.cfg.force_new_group?;
        self.member_state().is_some_and(|s| s.abandoned.contains(&group)).then_some(group)
    }

    /// Handles the membership messages; returns false for any other, which
    /// the caller handles if this node holds a configuration (a node that
    /// holds none takes part in nothing else).
    pub(super) fn on_membership_message(&mut self, now: Nanos, m: &Envelope) -> bool {
        if !self.managed() {
            return matches!(m.body, Body::Announce { .. } | Body::Accept { .. } | Body::Config { .. });
        }
        if let Some(inc) = m.from_incarnation {
            self.members.seen.insert(m.from.clone(), inc);
        }
        match &m.body {
            Body::Announce { desired, pending, left } => {
                self.on_announce(now, m, *desired, *pending, *left);
                true
            }
            Body::Accept { proposal, wall_micros } => {
                self.on_accept(now, m, proposal, *wall_micros);
                true
            }
            Body::Config { config } => {
                self.on_config(now, m, config);
                true
            }
            // A node that holds no configuration votes, acks and follows
            // no one (rule 8: it persists a configuration before it acks).
            _ => self.configuration().is_none(),
        }
    }

    fn sender(m: &Envelope) -> Option<Identity> {
        m.from_incarnation.map(|inc| Identity::new(m.from.clone(), inc))
    }

    fn on_announce(
        &mut self,
        now: Nanos,
        m: &Envelope,
        desired: u64,
        pending: Option<GroupUid>,
        left: Option<GroupUid>,
    ) {
        let Some(who) = Self::sender(m) else { return };
        let announced = Announced { incarnation: who.incarnation, desired, pending, left, at: now };
        self.members.announced.insert(m.from.clone(), announced);
        if let Some(config) = self.configuration().cloned() {
            self.send_to(m.from.clone(), Some(who.incarnation), Body::Config { config: Box::new(config) });
            return;
        }
        // A listed name that answers with another incarnation has lost its
        // state: the genesis that lists its old self can never complete.
        let stale = self
            .member_state()
            .and_then(|s| s.accepted.as_ref())
            .is_some_and(|(p, _)| p.voters.iter().any(|v| v.name == who.name && v.incarnation != who.incarnation));
        if stale {
            self.withdraw(now);
        }
    }

    fn on_accept(&mut self, now: Nanos, m: &Envelope, proposal: &Proposal, wall_micros: u64) {
        let Some(who) = Self::sender(m) else { return };
        if let Some(config) = self.configuration().cloned() {
            // A listed identity that has not completed: this configuration
            // is its certificate.
            if config.group == proposal.group && config.lists(&who) {
                self.send_to(m.from.clone(), Some(who.incarnation), Body::Config { config: Box::new(config) });
            }
            return;
        }
        let Some(me) = self.me() else { return };
        if !proposal.voters.contains(&who) {
            return;
        }
        let state = self.member_state().cloned().unwrap_or_default();
        match &state.accepted {
            Some((mine, _)) if mine == proposal => {}
            Some(_) => return,
            None => {
                if !self.may_accept(&state, proposal, &me) {
                    return;
                }
                self.accept(now, proposal.clone());
            }
        }
        self.members.acceptances.insert(who, wall_micros);
        self.maybe_complete(now);
    }

    /// Rule 9: a blank identity accepts a genesis only if it lists this
    /// very identity, names exactly the desired members, and was not
    /// withdrawn from.
    fn may_accept(&self, state: &MemberState, proposal: &Proposal, me: &Identity) -> bool {
        let names: BTreeSet<&NodeId> = proposal.voters.iter().map(|v| &v.name).collect();
        // Without a wall-clock reading the floor could be 0, and a group
        // created again would hand out tokens from 1 (rule 9).
        self.members.wall_micros > 0
            && state.is_blank()
            && !state.withdrawn.contains(&proposal.group)
            && proposal.voters.contains(me)
            && names.len() == proposal.voters.len()
            && self.genesis_allowed(proposal.forced)
            && proposal.generation == self.desired_generation()
            && names.into_iter().eq(self.desired_names().iter())
    }

    /// Persists this identity's acceptance, then sends it to every listed
    /// identity (after the write: the messages wait for it).
    fn accept(&mut self, now: Nanos, proposal: Proposal) {
        // The reading is also above every term this node has seen, and a
        // node that left a group by --force-new-group reads far above:
        // the new group starts above every term of the old one, also those
        // its survivors never saw, whatever their clocks (rule 10).
        let left_a_group = self.member_state().is_some_and(|s| !s.abandoned.is_empty());
        let above = self.hard.term.0.saturating_add(1).saturating_add(if left_a_group { FORCED_MARGIN } else { 0 });
        let wall = if left_a_group && self.cfg.broken.force_floor_from_clock {
            self.members.wall_micros
        } else {
            self.members.wall_micros.max(above)
        };
        let me = self.me().expect("managed");
        self.member_state_mut().accepted = Some((proposal.clone(), wall));
        self.request_persist();
        self.members.acceptances = BTreeMap::from([(me, wall)]);
        self.members.accepted_at = now;
        self.send_acceptance(&proposal, wall);
    }

    fn send_acceptance(&mut self, proposal: &Proposal, wall_micros: u64) {
        let me = self.me();
        for v in &proposal.voters {
            if Some(v) != me.as_ref() {
                let body = Body::Accept { proposal: Box::new(proposal.clone()), wall_micros };
                self.send_to(v.name.clone(), Some(v.incarnation), body);
            }
        }
    }

    /// Complete once every listed identity's acceptance is here: hold the
    /// genesis configuration, its floor the largest wall-clock reading
    /// among the acceptances, persisted before anything acts on it.
    fn maybe_complete(&mut self, now: Nanos) {
        let Some((proposal, _)) = self.member_state().and_then(|s| s.accepted.clone()) else { return };
        let accepted = proposal.voters.iter().filter(|v| self.members.acceptances.contains_key(v)).count();
        let needed = if self.cfg.broken.genesis_majority {
            crate::core::lease::quorum(proposal.voters.len())
        } else {
            proposal.voters.len()
        };
        if accepted < needed {
            return;
        }
        let floor = Term(self.members.acceptances.values().copied().max().unwrap_or(0));
        let config = proposal.configuration(floor);
        self.hold(now, config);
    }

    /// Holds `config` from now on, persisted before anything acts on it;
    /// a configuration's floor is also a term floor (rule 2).
    fn hold(&mut self, now: Nanos, config: Configuration) {
        let group = config.group;
        let floor = config.floor;
        let state = self.member_state_mut();
        state.accepted = None;
        state.config = Some(config);
        if self.hard.term < floor {
            self.hard.term = floor;
            self.hard.voted_for = None;
            self.hard.voted_incarnation = None;
        }
        self.request_persist();
        self.members.acceptances.clear();
        let voter = self.is_voter();
        self.out.events.push(Event::ConfigurationHeld { group, voter });
        self.become_follower(now);
    }

    fn on_config(&mut self, now: Nanos, m: &Envelope, config: &Configuration) {
        match self.configuration() {
            Some(mine) if mine.group != config.group => {
                self.reject(m, RejectReason::OtherGroup);
                return;
            }
            // A node that holds a configuration takes a newer one from a
            // Config message as from any other (rule 2): an identity that
            // came back after its removal (a data dir restored from a
            // backup) hears of it only so, since every other message is
            // addressed to the name's newer life (rule 15).
            Some(_) => {
                self.adopt_newer(now, m);
                return;
            }
            None => {}
        }
        let Some(me) = self.me() else { return };
        let state = self.member_state().cloned().unwrap_or_default();
        if config.lists(&me) {
            // The certificate of a genesis this identity accepted: every
            // listed identity accepted, or the sender would not hold it.
            let mine = state.accepted.as_ref().is_some_and(|(p, _)| {
                p.group == config.group && p.voters == config.voters && config.stamp() == (Term(0), 1)
            });
            if mine {
                self.hold(now, config.clone());
                return;
            }
            // Listed, yet this identity withdrew from the genesis that made
            // the group (it completed elsewhere with the acceptance sent
            // before): it never acts as that identity. It draws a new one
            // and joins as a learner; the leader replaces the old (rule 8).
            // A certificate arriving while it has accepted another genesis
            // is late news of a group it gave up on: that other genesis
            // may still complete, so it is kept.
            if !state.withdrawn.contains(&config.group) || state.accepted.is_some() {
                return;
            }
            self.renew();
        }
        // A learner of a group that exists (rule 8). An open acceptance of
        // another genesis is withdrawn in the same write.
        if state.accepted.is_some() {
            self.withdraw(now);
        }
        self.hold(now, config.clone());
    }

    /// Persists that this identity refuses the genesis it accepted, for
    /// good. Only before it persisted the completion (rule 9): a completed
    /// genesis has `accepted` cleared.
    fn withdraw(&mut self, _now: Nanos) {
        let state = self.member_state_mut();
        let Some((p, _)) = state.accepted.take() else { return };
        state.withdrawn.insert(p.group);
        self.request_persist();
        self.members.acceptances.clear();
        self.out.events.push(Event::GenesisWithdrawn { group: p.group });
    }

    /// The timers of a node that holds no configuration: announce itself,
    /// resend an open acceptance, propose a genesis, or withdraw one that
    /// has waited too long.
    pub(super) fn on_membership_timers(&mut self, now: Nanos) {
        self.maybe_renew();
        if !self.managed() || self.configuration().is_some() || now < self.members.next_announce {
            return;
        }
        self.members.next_announce = now.plus(self.cfg.heartbeat_interval);
        let state = self.member_state().cloned().unwrap_or_default();
        if let Some((proposal, wall)) = &state.accepted {
            if now >= self.members.accepted_at.plus(self.cfg.lease_ttl * WITHDRAW_AFTER_LEASES) {
                self.withdraw(now);
            } else {
                self.send_acceptance(proposal, *wall);
            }
        }
        let pending = self.member_state().and_then(|s| s.accepted.as_ref()).map(|(p, _)| p.group);
        let desired = self.desired_digest();
        let left = self.left();
        let peers: Vec<NodeId> = self.cfg.voters.iter().filter(|v| **v != self.cfg.node_id).cloned().collect();
        for peer in peers {
            self.send(peer, Body::Announce { desired, pending, left });
        }
        self.maybe_propose(now);
    }

    /// The lowest desired name proposes, once every other desired member
    /// announced itself blank, recently, with the same desired set (rule 9).
    fn maybe_propose(&mut self, now: Nanos) {
        let Some(me) = self.me() else { return };
        let blank = self.member_state().is_none_or(|s| s.is_blank());
        let desired = self.desired_names().clone();
        let first = desired.first() == Some(&me.name);
        if !blank || !first || self.members.wall_micros == 0 {
            return;
        }
        // A forced genesis (rule 10) needs a listed identity that left the
        // group the flag names: this one, or one that announced it.
        let forced = self.cfg.force_new_group.filter(|g| {
            self.left() == Some(*g)
                || desired.iter().any(|n| self.members.announced.get(n).is_some_and(|a| a.left == Some(*g)))
        });
        if !self.genesis_allowed(forced) {
            return;
        }
        let digest = self.desired_digest();
        let fresh = self.cfg.lease_ttl;
        let mut voters = BTreeSet::from([me.clone()]);
        for name in desired.iter().filter(|v| **v != me.name) {
            match self.members.announced.get(name) {
                Some(a) if a.desired == digest && a.pending.is_none() && now.since(a.at) <= fresh => {
                    voters.insert(Identity::new(name.clone(), a.incarnation));
                }
                _ => return,
            }
        }
        let group = GroupUid((u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64())).max(1));
        self.out.events.push(Event::GenesisProposed { group });
        let generation = self.desired_generation();
        let forced = forced.filter(|_| generation > 1);
        self.accept(now, Proposal { group, voters, generation, forced });
        self.maybe_complete(now);
    }

    /// A digest of the desired set's names, so that members reading
    /// different sets never agree on a genesis.
    fn desired_digest(&self) -> u64 {
        static_digest(self.desired_names())
    }

    /// The names the operator wants as voters.
    pub(super) fn desired_names(&self) -> &BTreeSet<NodeId> {
        self.members.desired.as_ref().map_or(&self.cfg.voters, |(names, _)| names)
    }

    pub(super) fn desired_generation(&self) -> u64 {
        self.members.desired.as_ref().map_or(0, |(_, g)| *g)
    }

    /// Rule 9: a group is created only for the first generation of a
    /// desired set (none, or 1). A blank node that read a later one waits
    /// for a configuration: its group exists.
    fn genesis_allowed(&self, forced: Option<GroupUid>) -> bool {
        self.desired_generation() <= 1 || (forced.is_some() && forced == self.cfg.force_new_group)
    }

    /// A desired set read (DESIGN §2b). One older than the generation
    /// already read arrived late and is ignored; the names join the
    /// address book, so that this node reaches them.
    pub(super) fn on_desired(&mut self, names: BTreeSet<NodeId>, generation: u64) {
        if self.members.desired.is_some() && generation < self.desired_generation() {
            return;
        }
        // A static node's voters are its state file's (an upgrading one
        // reaches the desired names once it converts, rule 11).
        if self.managed() {
            self.cfg.voters.extend(names.iter().cloned());
        }
        self.members.desired = Some((names, generation));
    }

    /// This node's incarnation now (managed groups).
    pub fn incarnation(&self) -> Option<Incarnation> {
        self.my_incarnation()
    }

    /// Rule 8, for a node that is still running: an identity the group
    /// removed is never added again, so a node that finds its identity
    /// among the removed ones while its name is desired draws a new
    /// incarnation. It keeps its term, its vote and its promises, so it is
    /// a new identity that forgot nothing: what a wiped node's new identity
    /// may do, it may do with more care. Persisted before anything leaves
    /// under the new identity.
    pub(super) fn maybe_renew(&mut self) {
        let Some(me) = self.me() else { return };
        let removed = self.configuration().is_some_and(|c| c.removed.contains(&me));
        if !removed || !self.desired_names().contains(&me.name) || matches!(self.role, super::RoleState::Leader(_)) {
            return;
        }
        self.renew();
    }

    /// Draws a new incarnation for this node, kept with its state from now
    /// on; its term, vote and promises stay.
    fn renew(&mut self) {
        let Some(old) = self.my_incarnation() else { return };
        let incarnation = Incarnation((u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64())).max(1));
        self.member_state_mut().renewed = Some(incarnation);
        self.cfg.mode = Mode::Managed { incarnation };
        self.request_persist();
        self.out.events.push(Event::Renewed { old, new: incarnation });
    }

    /// When the membership timers next need a step.
    pub(super) fn membership_wake(&self) -> Nanos {
        if self.managed() && self.configuration().is_none() {
            self.members.next_announce
        } else {
            Nanos::NEVER
        }
    }

    /// After a restart with a genesis accepted and not complete: its
    /// acceptance is resent and the withdrawal clock starts again.
    pub(super) fn restore_membership(&mut self, now: Nanos) {
        if let Some(me) = self.me() {
            let state = self.member_state_mut();
            if let Some((_, wall)) = state.accepted.clone() {
                self.members.acceptances.insert(me, wall);
            }
            self.members.accepted_at = now;
        }
    }
}
