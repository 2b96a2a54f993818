//! The configuration register of a managed group (docs/safety.md,
//! "Membership", rules 1 to 5, 7 and 8): configurations ordered by `(cterm,
//! epoch)`, adopted when newer, re-stamped by each new leader, committed by
//! acks of rounds that carried them, changed one identity at a time, and
//! the lease counted under the configuration each round carried.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::leader::LeaderState;
use super::{Node, RoleState};
use crate::core::lease::quorum;
use crate::core::membership::{Configuration, Identity, MembershipView};
use crate::core::message::Envelope;
use crate::core::{Event, Incarnation, Nanos, NodeId, StepDownReason};

/// How long a new identity must have answered a leader's rounds before it
/// is added as a voter ("answered steadily", rule 8), in leases.
const STEADY_LEASES: u32 = 2;

impl Node {
    /// Rule 1's order, or, under the negative control, by epoch alone.
    pub(super) fn order(&self, a: &Configuration, b: &Configuration) -> Option<Ordering> {
        if self.cfg.broken.epoch_order && a.group == b.group {
            return match a.epoch.cmp(&b.epoch) {
                Ordering::Equal if a.voters != b.voters => None,
                o => Some(o),
            };
        }
        a.order(b)
    }

    /// The configuration a message carries, compared with this node's.
    pub(super) fn carried_order(&self, m: &Envelope) -> Option<Ordering> {
        match (m.config.as_deref(), self.configuration()) {
            (Some(theirs), Some(mine)) => self.order(theirs, mine),
            _ => None,
        }
    }

    /// Rule 2: a strictly newer configuration of this group, heard on any
    /// message, is adopted and persisted before this node acts on it or
    /// acks anything (its messages wait for the write). Adopting it adopts
    /// a term at least its `cterm`. A leader steps down (only the leader
    /// of a higher term can have made it); a candidate abandons its round.
    pub(super) fn adopt_newer(&mut self, now: Nanos, m: &Envelope) {
        if self.carried_order(m) != Some(Ordering::Greater) {
            return;
        }
        let Some(config) = m.config.as_deref().cloned() else { return };
        let led = self.hard.term;
        let (stepped_down, abdicated) = match &self.role {
            RoleState::Leader(l) => (true, l.abdicated.is_some()),
            _ => (false, false),
        };
        if self.hard.term < config.cterm {
            self.hard.term = config.cterm;
            self.hard.voted_for = None;
            self.hard.voted_incarnation = None;
            self.leader = None;
        }
        let group = config.group;
        let was_voter = self.is_voter();
        if let Some(state) = self.hard.members.as_deref_mut() {
            state.config = Some(config);
        }
        self.request_persist();
        // Reported when this node's part changes (learner to voter, or
        // removed), not at every adoption.
        let voter = self.is_voter();
        if voter != was_voter {
            self.out.events.push(Event::ConfigurationHeld { group, voter });
        }
        if stepped_down {
            // The term led, not the one adopted; a leader that had handed
            // over already counts as transferred.
            let reason = if abdicated { StepDownReason::Transferred } else { StepDownReason::HigherTerm };
            self.out.events.push(Event::SteppedDown { term: led, reason });
        }
        if abdicated {
            self.become_follower_after_abdication(now);
        } else if !matches!(self.role, RoleState::Follower) {
            self.become_follower(now);
        }
    }

    /// Rule 3: the leader of term `T` re-stamps the configuration it won
    /// with as `(T, epoch)`, persisted before a round carries it. Returns
    /// the configurations of the new leadership: the one it won with
    /// (round 0's) and the re-stamp.
    pub(super) fn restamp(&mut self) -> Vec<Configuration> {
        let Some(won) = self.configuration().cloned() else { return Vec::new() };
        let mut stamped = won.clone();
        stamped.cterm = self.hard.term;
        if let Some(state) = self.hard.members.as_deref_mut() {
            state.config = Some(stamped.clone());
        }
        self.request_persist();
        vec![won, stamped]
    }

    /// Has this node durably stored `c` (or a newer configuration)? A
    /// leader counts itself toward a commit or a lease only then (rule 3).
    fn durably_holds(&self, c: &Configuration) -> bool {
        let durable = self.durable.members.as_deref().and_then(|s| s.config.as_ref());
        durable.is_some_and(|d| matches!(self.order(d, c), Some(Ordering::Greater | Ordering::Equal)))
    }

    /// Rules 3 and 5, after an ack or a write: the newest configuration a
    /// term-`T` round carried that a majority of its own voters acked
    /// extends the lease from that round, and commits.
    pub(super) fn count_managed(&mut self) {
        let Some(me) = self.me() else { return };
        let leader_lease = self.leader_lease;
        let first_only = self.cfg.broken.lease_under_first;
        let RoleState::Leader(l) = &self.role else { return };
        let durable: Vec<bool> = l.made.iter().map(|c| self.durably_holds(c)).collect();
        let RoleState::Leader(l) = &mut self.role else { return };
        // The newest round a majority of its configuration's voters acked,
        // each holding that configuration: its send time and configuration.
        let majority = |l: &LeaderState, under_first: bool| {
            l.sent.iter().rev().find_map(|&(round, sent_at)| {
                let idx = l.carried_by(round)?;
                let idx = if under_first { 0 } else { idx };
                let c = &l.made[idx];
                let acks = c
                    .voters
                    .iter()
                    .filter(|v| {
                        if **v == me {
                            return durable[idx];
                        }
                        l.acked_life.get(&v.name).is_some_and(|(r, inc)| {
                            *inc == v.incarnation && *r >= round && (under_first || l.carried_by(*r) == Some(idx))
                        })
                    })
                    .count();
                (acks >= quorum(c.voters.len())).then_some((sent_at, idx))
            })
        };
        if let Some((_, idx)) = majority(l, false) {
            if idx > 0 && l.committed.is_none_or(|k| k < idx) {
                l.committed = Some(idx);
                l.change_since = None;
            }
        }
        if let Some((sent_at, _)) = majority(l, first_only) {
            if l.abdicated.is_none() {
                l.lease_until = l.lease_until.max(sent_at.plus(leader_lease));
            }
        }
    }

    /// Reconciliation toward the desired set, one identity at a time
    /// (rule 4; DESIGN §2b "Desired set"), in this order: replace a voter
    /// whose name answers with another incarnation that is not a
    /// tombstone (rule 8: remove it; its new identity is added later);
    /// remove an unreachable voter that is not desired; add a desired name
    /// whose identity has answered steadily; remove a reachable voter that
    /// is not desired. A leader that is not desired hands over first. Only
    /// by a leader holding its lease whose latest configuration is
    /// committed in its own term, with no transfer under way, and toward a
    /// desired generation no older than one already applied (replacing a
    /// stale incarnation needs none). Never with replication positions.
    pub(super) fn maybe_change(&mut self, now: Nanos) {
        let Some(me) = self.me() else { return };
        // Replication positions: a change could leave a majority whose
        // databases lack an acknowledged write (docs/safety.md, "Replication
        // positions", membership changes); none is made while positions
        // decide elections.
        if self.cfg.positions && !self.cfg.broken.changes_ignore_positions {
            return;
        }
        let broken = self.cfg.broken;
        let steady = self.cfg.lease_ttl * STEADY_LEASES;
        let recent = self.cfg.heartbeat_interval * 2;
        let desired = self.desired_names().clone();
        let generation = self.desired_generation();
        let seen = self.members_seen();
        let term = self.hard.term;
        let RoleState::Leader(l) = &self.role else { return };
        if l.abdicated.is_some() || now >= l.lease_until || l.made.len() < 2 {
            return;
        }
        let latest = l.made.len() - 1;
        let allowed = l.committed == Some(latest)
            || (broken.two_changes && l.committed.is_some())
            || (broken.change_before_stamp && latest == 1);
        if !allowed {
            return;
        }
        let c = &l.made[latest];
        let current = generation >= c.generation;
        let reachable = |v: &Identity| {
            l.peers.get(&v.name).is_some_and(|p| now.since(p.last_ack_at) <= recent)
                && l.acked_life.get(&v.name).is_some_and(|(_, i)| *i == v.incarnation)
        };
        let others = || c.voters.iter().filter(|v| **v != me);
        // Replaced only while the listed identity does not answer: a late
        // message of an earlier life of the name must not evict a voter
        // that acks.
        let stale = others().find(|v| {
            !reachable(v)
                && seen
                    .get(&v.name)
                    .is_some_and(|i| *i != v.incarnation && !c.removed.contains(&Identity::new(v.name.clone(), *i)))
        });
        let undesired = |v: &&Identity| current && !desired.contains(&v.name);
        let learner = || {
            desired.iter().filter(|name| current && c.incarnation_of(name).is_none()).find_map(|name| {
                let who = Identity::new(name.clone(), *seen.get(name)?);
                let (first, last) = l.learners.get(&who)?;
                let ok = !c.removed.contains(&who) && now.since(*first) >= steady && now.since(*last) <= recent;
                ok.then_some(who)
            })
        };
        // A reachable voter is removed only if the voters left that this
        // leader reaches (itself included) still make a majority of the
        // smaller configuration: a change never leaves the group unable to
        // elect by itself.
        let reached = 1 + others().filter(|v| reachable(v)).count();
        let keeps_majority = reached > quorum(c.voters.len() - 1);
        let change = stale
            .or_else(|| others().filter(undesired).find(|v| !reachable(v)))
            .map(|v| (v.clone(), false))
            .or_else(|| learner().map(|who| (who, true)))
            .or_else(|| others().filter(|_| keeps_majority).find(undesired).map(|v| (v.clone(), false)));
        let Some((who, add)) = change else {
            if current && !desired.contains(&me.name) {
                // To remove the leader, hand over first (rule 4).
                let target = self.best_peer(now, |id| desired.contains(id));
                if target.is_some() {
                    self.abdicate(now, target);
                }
            }
            return;
        };
        let mut next = c.clone();
        next.cterm = term;
        next.epoch += 1;
        next.generation = next.generation.max(generation);
        if add {
            next.voters.insert(who.clone());
        } else {
            next.voters.remove(&who);
            next.removed.insert(who.clone());
        }
        let epoch = next.epoch;
        let RoleState::Leader(l) = &mut self.role else { return };
        l.made.push(next.clone());
        l.change_since = Some(now);
        if let Some(state) = self.hard.members.as_deref_mut() {
            state.config = Some(next);
        }
        self.request_persist();
        self.out.events.push(Event::MembershipChange { who, add, epoch });
    }

    /// What this managed node reports of its membership (None in a static
    /// group).
    pub fn membership(&self, now: Nanos) -> Option<MembershipView> {
        let me = self.me()?;
        let state = self.hard.members.as_deref();
        let config = self.configuration().cloned();
        let recent = self.cfg.heartbeat_interval * 2;
        let (reachable, learners, pending) = match &self.role {
            RoleState::Leader(l) => {
                let reached = |v: &Identity| {
                    *v == me
                        || (l.peers.get(&v.name).is_some_and(|p| now.since(p.last_ack_at) <= recent)
                            && l.acked_life.get(&v.name).is_some_and(|(_, i)| *i == v.incarnation))
                };
                let voters = config.iter().flat_map(|c| c.voters.iter());
                let reachable = voters.map(|v| (v.clone(), Some(reached(v)))).collect();
                let learners = l
                    .learners
                    .iter()
                    .filter(|(who, (_, last))| {
                        now.since(*last) <= recent && config.as_ref().is_none_or(|c| !c.lists(who))
                    })
                    .map(|(who, _)| who.clone())
                    .collect();
                let pending = match (self.change_pending(), l.made.len()) {
                    (true, n) if n >= 2 => {
                        let (before, after) = (&l.made[n - 2].voters, &l.made[n - 1].voters);
                        let added = after.difference(before).next().map(|w| (w.clone(), true));
                        let removed = before.difference(after).next().map(|w| (w.clone(), false));
                        added.or(removed).map(|(w, add)| (w, add, l.change_since.unwrap_or(now)))
                    }
                    _ => None,
                };
                (reachable, learners, pending)
            }
            _ => (config.iter().flat_map(|c| c.voters.iter()).map(|v| (v.clone(), None)).collect(), Vec::new(), None),
        };
        Some(MembershipView {
            me,
            config,
            reachable,
            learners,
            pending,
            genesis: state.and_then(|s| s.accepted.as_ref()).map(|(p, _)| p.group),
            desired: self.desired_names().clone(),
            desired_generation: self.desired_generation(),
        })
    }

    fn members_seen(&self) -> BTreeMap<NodeId, Incarnation> {
        self.members.seen.clone()
    }

    /// Rule 8: a learner's ok ack, for "answered steadily": since when it
    /// has answered without a gap of two heartbeats.
    pub(super) fn note_learner(&mut self, now: Nanos, who: Identity) {
        let recent = self.cfg.heartbeat_interval * 2;
        let RoleState::Leader(l) = &mut self.role else { return };
        let entry = l.learners.entry(who).or_insert((now, now));
        if now.since(entry.1) > recent {
            entry.0 = now;
        }
        entry.1 = now;
    }

    /// Is a change made by this leader still waiting to commit? No
    /// transfer then (rule 7).
    pub(super) fn change_pending(&self) -> bool {
        match &self.role {
            RoleState::Leader(l) => l.made.len() > 2 && l.committed != Some(l.made.len() - 1),
            _ => false,
        }
    }
}

impl LeaderState {
    /// The configuration round `round` carried, as an index into `made`.
    pub(super) fn carried_by(&self, round: u64) -> Option<usize> {
        self.carried.iter().find(|(r, _)| *r == round).map(|(_, i)| *i)
    }
}
