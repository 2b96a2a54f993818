//! Rule 11 (docs/safety.md, "Membership"): a static group becomes a
//! managed one online. A static node started with `--peers-file` is
//! *upgrading*: it runs as a static node, matched by name, until its group
//! converts. The leader of term `T` converts once every other static voter
//! said in its hello that it is upgrading, with the same static voters,
//! and acked a round of term `T`: it makes the first configuration
//! `(T, 1, identities)` and carries it from then on. A follower converts
//! when a message carries a configuration that lists it. A voter that lost
//! its state file and came back managed and blank is left out (at most
//! one, and only with every other voter acked): the configuration then
//! removes one voter, which rule 4 allows of a configuration committed in
//! the leader's term.

use std::collections::BTreeSet;

use super::{Node, RoleState};
use crate::core::lease::quorum;
use crate::core::membership::{static_digest, Configuration, GroupUid, Identity, MemberState, Mode, PeerKind};
use crate::core::message::{Body, Envelope, MANAGED_PROTOCOL_VERSION};
use crate::core::{Event, Nanos, NodeId, StepDownReason, Term};

impl Node {
    /// A peer's hello said what it is (static groups only).
    pub(super) fn on_peer(&mut self, now: Nanos, name: NodeId, kind: PeerKind) {
        if self.me().is_some() || name == self.cfg.node_id || !self.cfg.voters.contains(&name) {
            return;
        }
        let known = self.members.peer_kinds.get(&name).map(|(k, _)| *k);
        if known != Some(kind) {
            // A new hello: acks count toward the conversion only from now.
            self.members.peer_kinds.insert(name, (kind, None));
        }
        self.maybe_convert(now);
    }

    /// A static leader got an ok ack of a round of its term from `from`.
    pub(super) fn note_static_ack(&mut self, now: Nanos, from: &NodeId) {
        if self.cfg.upgrading.is_none() || self.me().is_some() {
            return;
        }
        let term = self.hard.term;
        if let Some((PeerKind::Upgrading { .. }, acked)) = self.members.peer_kinds.get_mut(from) {
            *acked = Some(term);
        }
        self.maybe_convert(now);
    }

    /// The leader's half of rule 11: make the first configuration once
    /// every other static voter is upgrading with the same voters and
    /// acked a round of this term (or, for at most one of them, came back
    /// managed after losing its state file), while this leader holds its
    /// lease and its term is durable.
    pub(super) fn maybe_convert(&mut self, now: Nanos) {
        let Some(mine) = self.cfg.upgrading else { return };
        if self.me().is_some() || self.hard != self.durable || !self.storage_ok {
            return;
        }
        let RoleState::Leader(l) = &self.role else { return };
        if l.abdicated.is_some() || now >= l.lease_until {
            return;
        }
        let digest = static_digest(&self.cfg.voters);
        let term = self.hard.term;
        let mut voters = BTreeSet::from([Identity::new(self.cfg.node_id.clone(), mine)]);
        let mut lost = 0;
        for name in self.cfg.voters.iter().filter(|v| **v != self.cfg.node_id) {
            match self.members.peer_kinds.get(name) {
                Some((PeerKind::Upgrading { incarnation, digest: d }, Some(t))) if *d == digest && *t == term => {
                    voters.insert(Identity::new(name.clone(), *incarnation));
                }
                // Lost its state file: left out. One that converted
                // already answers this leader's rounds with its
                // configuration, on which this leader converts instead.
                Some((PeerKind::Managed { blank: true, .. }, _)) => lost += 1,
                _ => return,
            }
        }
        if lost > 1 || voters.len() < quorum(self.cfg.voters.len()) {
            return;
        }
        let group = GroupUid((u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64())).max(1));
        let first = Configuration {
            group,
            cterm: term,
            epoch: 1,
            voters,
            removed: BTreeSet::new(),
            generation: 0,
            floor: Term(0),
        };
        self.convert(first.clone());
        if let RoleState::Leader(l) = &mut self.role {
            // The first configuration is this leadership's re-stamp (rule
            // 3): every round from now on carries it, and it commits, and
            // extends the lease, once a majority of its voters acked such a
            // round. The lease held so far stays: it rests on acks, which
            // are promises kept across the conversion.
            l.made = vec![first.clone(), first];
            l.carried.clear();
            l.committed = None;
        }
    }

    /// A follower's half of rule 11: an upgrading node converts on a
    /// protocol-2 message, addressed to its identity, of its term or a
    /// later one, that carries a configuration listing it. A leader of a
    /// static term steps down. *Found by review:* converting on a message
    /// of an earlier term let a first configuration whose every other
    /// holder had lost its volume (delayed in flight) pull a node out of
    /// the group a later leader had converted since, for good.
    pub(super) fn maybe_convert_on(&mut self, now: Nanos, m: &Envelope) {
        let Some(mine) = self.cfg.upgrading else { return };
        if self.me().is_some()
            || m.version != MANAGED_PROTOCOL_VERSION
            || m.cluster_id != self.cfg.cluster_id
            || m.to != self.cfg.node_id
            || m.to_incarnation != Some(mine)
            || !self.cfg.voters.contains(&m.from)
        {
            return;
        }
        let Some(config) = m.config.as_deref() else { return };
        if !config.lists(&Identity::new(self.cfg.node_id.clone(), mine)) {
            return;
        }
        if m.term < self.hard.term {
            // Tell the sender this node's term, in the protocol it speaks
            // (a refused ack, as to any stale leader): a node holding the
            // configuration takes the term and hands it over again in it.
            // Otherwise a follower that never campaigns (priority 0) and
            // acked a later static leader would never convert.
            let refused = self.ack_body(now, 0, false);
            self.send(m.from.clone(), refused);
            return;
        }
        let led = self.hard.term;
        let stepped_down = matches!(self.role, RoleState::Leader(_));
        self.convert(config.clone());
        if stepped_down {
            self.out.events.push(Event::SteppedDown { term: led, reason: StepDownReason::HigherTerm });
        }
        if !matches!(self.role, RoleState::Follower) {
            self.become_follower(now);
        }
    }

    /// Rule 11: a converted node answers a protocol-1 message of a name
    /// its configuration lists with that configuration, addressed to the
    /// listed identity, which converts on it if it is upgrading. Without
    /// it a follower that never leads (priority 0) would leave a static
    /// peer behind for good, each refusing the other's protocol. An
    /// upgrading node converts only on a message of its own term or a
    /// later one, so this node first adopts a higher term the static
    /// message carries (rule 6: the sender's own term, also in a pre-vote
    /// or a vote request, which it refuses all the same), and its answer
    /// leaves once that term is durable. Without it, static nodes that
    /// campaigned above the term of a configuration made while they were
    /// cut off would never convert (the simulator found it). The cost is
    /// one election at most per static node, during the conversion only.
    pub(super) fn hand_configuration_to_static(&mut self, now: Nanos, m: &Envelope) {
        if m.version != crate::core::PROTOCOL_VERSION || m.cluster_id != self.cfg.cluster_id {
            return;
        }
        let Some(config) = self.configuration() else { return };
        let Some(incarnation) = config.incarnation_of(&m.from) else { return };
        let config = Box::new(config.clone());
        if m.term > self.hard.term {
            self.adopt_term(now, m.term);
        }
        self.send_to(m.from.clone(), Some(incarnation), Body::Config { config });
    }

    /// Holds `config` as a managed identity from now on, persisted before
    /// anything acts on it. The term, the vote and the promises stay: a
    /// vote and a promise made by name are made to the one identity of
    /// that name the configuration lists.
    fn convert(&mut self, config: Configuration) {
        let Some(incarnation) = self.cfg.upgrading else { return };
        self.cfg.mode = Mode::Managed { incarnation };
        if self.hard.term < config.cterm {
            self.hard.term = config.cterm;
            self.hard.voted_for = None;
            self.leader = None;
        }
        if self.cfg.broken.convert_forgets_vote {
            self.hard.voted_for = None;
        }
        self.hard.voted_incarnation = self.hard.voted_for.as_ref().and_then(|v| config.incarnation_of(v));
        if let Some((name, inc @ None)) = &mut self.promise.to {
            *inc = config.incarnation_of(name);
        }
        // A leader the configuration does not list is no leader of it.
        self.leader = self.leader.take().and_then(|mut l| {
            l.incarnation = Some(config.incarnation_of(&l.id)?);
            Some(l)
        });
        let (group, voters) = (config.group, config.voters.len());
        self.hard.members = Some(Box::new(MemberState { config: Some(config), ..MemberState::default() }));
        if let Some((names, _)) = &self.members.desired {
            self.cfg.voters.extend(names.iter().cloned());
        }
        self.members.peer_kinds.clear();
        self.request_persist();
        self.out.events.push(Event::Converted { group, voters });
    }
}
