//! The leader's half of [`Node`]: heartbeat rounds, the lease they earn,
//! admin requests and hand-overs (DESIGN §2 rules 2, 5, 8, 9).

use std::collections::{BTreeMap, VecDeque};

use crate::core::membership::{Configuration, Identity};
use crate::core::Incarnation;
use std::time::Duration;

use super::{KnownLeader, Node, RoleState};
use crate::core::lease;
use crate::core::message::{Body, Envelope, RejectReason};
use crate::core::{AdminError, AdminRequest, Event, Nanos, NodeId};

/// What the leader learns of a peer from its acks.
#[derive(Clone, Debug)]
pub(super) struct PeerReport {
    pub(super) priority: u32,
    pub(super) healthy: bool,
    pub(super) healthy_since: Option<Nanos>,
    pub(super) last_ack_at: Nanos,
    pub(super) last_ack_round: u64,
    /// The replication position its latest ack carried (protocol 3).
    pub(super) position: Option<crate::core::Position>,
}

#[derive(Clone, Debug)]
pub(super) struct Abdication {
    pub(super) deadline: Nanos,
}

#[derive(Clone, Debug)]
pub(super) struct LeaderState {
    pub(super) round: u64,
    pub(super) next_heartbeat: Nanos,
    /// Send time of each recent round; round 0 is the VoteRequest.
    pub(super) sent: VecDeque<(u64, Nanos)>,
    /// Highest round each peer has acknowledged in this term.
    pub(super) acked: BTreeMap<NodeId, u64>,
    pub(super) peers: BTreeMap<NodeId, PeerReport>,
    pub(super) lease_until: Nanos,
    pub(super) elected_at: Nanos,
    /// Set once this leader has ended its lease for a hand-over; it never
    /// holds a lease again in this term (rule 8).
    pub(super) abdicated: Option<Abdication>,
    /// Managed groups: the configurations of this leadership in the order
    /// made: the one it won with (round 0's), its re-stamp, then each
    /// change (docs/safety.md, membership rules 3 and 4).
    pub(super) made: Vec<Configuration>,
    /// Which of `made` each round in `sent` carried.
    pub(super) carried: VecDeque<(u64, usize)>,
    /// The highest round each name acked, and as which incarnation.
    pub(super) acked_life: BTreeMap<crate::core::NodeId, (u64, Incarnation)>,
    /// The newest of `made` committed in this term.
    pub(super) committed: Option<usize>,
    /// When the change waiting to commit was made.
    pub(super) change_since: Option<Nanos>,
    /// Identities not listed that ack the rounds: since when without a
    /// gap, and last (rule 8's "answered steadily").
    pub(super) learners: BTreeMap<Identity, (Nanos, Nanos)>,
}

impl Node {
    pub(super) fn on_heartbeat_ack(
        &mut self,
        now: Nanos,
        m: &Envelope,
        round: u64,
        ok: bool,
        priority: u32,
        healthy: bool,
    ) {
        if m.term < self.hard.term {
            self.reject(m, RejectReason::StaleTerm);
            return;
        }
        let leader_lease = self.leader_lease;
        let voters = self.voter_count();
        let counts = self.counts(m);
        let managed = self.me().is_some();
        if ok && !counts && managed {
            if let Some(inc) = m.from_incarnation {
                self.note_learner(now, Identity::new(m.from.clone(), inc));
            }
            return;
        }
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if !ok || round > l.round || !counts {
            return;
        }
        let report = l.peers.entry(m.from.clone()).or_insert(PeerReport {
            priority,
            healthy,
            healthy_since: None,
            last_ack_at: now,
            last_ack_round: 0,
            position: None,
        });
        report.position = m.position.or(report.position);
        report.priority = priority;
        report.healthy_since = match (healthy, report.healthy_since) {
            (true, None) => Some(now),
            (true, since) => since,
            (false, _) => None,
        };
        report.healthy = healthy;
        report.last_ack_at = now;
        report.last_ack_round = report.last_ack_round.max(round);
        let acked = l.acked.entry(m.from.clone()).or_insert(0);
        *acked = (*acked).max(round);
        if let Some(inc) = m.from_incarnation {
            let life = l.acked_life.entry(m.from.clone()).or_insert((round, inc));
            if round >= life.0 {
                *life = (round, inc);
            }
        }
        let rtt = l.sent.iter().find(|(r, _)| *r == round).map(|(_, sent)| now.since(*sent));
        if managed {
            self.count_managed();
            self.maybe_change(now);
        } else if l.abdicated.is_none() {
            extend_lease(l, voters, leader_lease);
            self.note_static_ack(now, &m.from);
        }
        if let Some(rtt) = rtt {
            self.out.events.push(Event::AckRoundTrip { peer: m.from.clone(), rtt });
        }
    }

    pub(super) fn on_admin(&mut self, now: Nanos, req: AdminRequest) -> Result<(), AdminError> {
        let leader_id = self.leader.as_ref().map(|l| l.id.clone());
        let RoleState::Leader(l) = &self.role else {
            return Err(AdminError::NotLeader(leader_id));
        };
        if l.abdicated.is_some() {
            return Err(AdminError::TransferInProgress);
        }
        if now >= l.lease_until {
            return Err(AdminError::NotLeader(None));
        }
        if self.change_pending() {
            return Err(AdminError::Refused("a membership change is waiting to commit; try again".into()));
        }
        match req {
            AdminRequest::StepDown => {
                let target = self.best_peer(now, |_| true);
                self.abdicate(now, target);
                Ok(())
            }
            AdminRequest::TransferTo(target) => {
                if target == self.cfg.node_id {
                    return Err(AdminError::SelfTarget(target));
                }
                let voter = match self.configuration() {
                    Some(c) => c.incarnation_of(&target).is_some(),
                    None => self.cfg.voters.contains(&target),
                };
                if !voter {
                    return Err(AdminError::UnknownPeer(target));
                }
                if self.best_peer(now, |p| *p == target).is_none() {
                    return Err(AdminError::TargetIneligible(target));
                }
                self.abdicate(now, Some(target));
                Ok(())
            }
        }
    }

    pub(super) fn become_leader(
        &mut self,
        now: Nanos,
        vote_sent_at: Nanos,
        acked: BTreeMap<NodeId, u64>,
        acked_life: BTreeMap<NodeId, (u64, Incarnation)>,
    ) {
        let mut sent = VecDeque::new();
        sent.push_back((0, vote_sent_at));
        let made = self.restamp();
        let mut state = LeaderState {
            round: 0,
            next_heartbeat: now,
            sent,
            acked,
            peers: BTreeMap::new(),
            lease_until: Nanos::ZERO,
            elected_at: now,
            abdicated: None,
            carried: if made.is_empty() { VecDeque::new() } else { VecDeque::from([(0, 0)]) },
            made,
            acked_life,
            committed: None,
            change_since: None,
            learners: BTreeMap::new(),
        };
        // Rule 2: votes are acks of the VoteRequest's send time, so the lease
        // starts at the moment of winning.
        let managed = self.me().is_some();
        if !managed {
            extend_lease(&mut state, self.voter_count(), self.leader_lease);
        }
        self.role = RoleState::Leader(Box::new(state));
        if managed {
            self.count_managed();
        }
        self.lost_elections = 0;
        let incarnation = self.my_incarnation();
        self.leader =
            Some(KnownLeader { id: self.cfg.node_id.clone(), incarnation, address: self.cfg.advertise.clone() });
        self.out.events.push(Event::ElectionWon { term: self.hard.term });
        self.broadcast_heartbeat(now);
    }

    /// Rule 8: end the lease now, never hold one again in this term, and ask
    /// `target` to campaign at once.
    pub(super) fn abdicate(&mut self, now: Nanos, target: Option<NodeId>) {
        let term = self.hard.term;
        let deadline = now.plus(self.cfg.lease_ttl);
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        l.lease_until = l.lease_until.min(now);
        l.abdicated = Some(Abdication { deadline });
        self.out.events.push(Event::TransferStarted { term, to: target.clone() });
        match target {
            Some(to) => self.send(to, Body::TimeoutNow),
            None => self.become_follower_after_abdication(now),
        }
    }

    pub(super) fn broadcast_heartbeat(&mut self, now: Nanos) {
        let ttl = self.cfg.lease_ttl;
        let interval = self.cfg.heartbeat_interval;
        let voters = self.voter_count();
        let leader_lease = self.leader_lease;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        l.round += 1;
        l.next_heartbeat = now.plus(interval);
        l.sent.push_back((l.round, now));
        if !l.made.is_empty() {
            l.carried.push_back((l.round, l.made.len() - 1));
        }
        // Rounds sent more than a lease ago cannot extend the lease any more.
        while l.sent.len() > 1 && l.sent[0].1.plus(ttl) < now {
            l.sent.pop_front();
        }
        let oldest = l.sent[0].0;
        while l.carried.front().is_some_and(|(r, _)| *r < oldest) {
            l.carried.pop_front();
        }
        if l.made.is_empty() {
            extend_lease(l, voters, leader_lease);
        }
        let round = l.round;
        let me = self.cfg.node_id.clone();
        // The leader's own ack of the round: it will not vote for anyone else
        // for a lease_ttl from now.
        self.promise_to(now, me, self.my_incarnation());
        let address = self.cfg.advertise.clone();
        self.broadcast(|_| Body::Heartbeat { round, leader_address: address.clone() });
        if self.me().is_some() {
            self.count_managed();
            self.maybe_change(now);
        }
    }

    /// Rule 9: an unhealthy leader hands over to a healthy peer; a healthy
    /// leader hands over to a peer of strictly higher priority that has been
    /// healthy and in contact for a while, and only after a minimum tenure,
    /// so that no flap loop can form.
    pub(super) fn maybe_transfer_away(&mut self, now: Nanos) {
        let RoleState::Leader(l) = &self.role else {
            return;
        };
        if l.abdicated.is_some() || now >= l.lease_until || self.change_pending() {
            return;
        }
        let settle = self.cfg.lease_ttl * 2;
        let target = if !self.healthy {
            self.best_peer(now, |_| true)
        } else if now.since(l.elected_at) >= settle {
            let mine = self.cfg.priority;
            let stable = |p: &PeerReport| p.healthy_since.is_some_and(|s| now.since(s) >= settle);
            let higher: Vec<NodeId> =
                l.peers.iter().filter(|(_, p)| p.priority > mine && stable(p)).map(|(id, _)| id.clone()).collect();
            self.best_peer(now, |id| higher.contains(id))
        } else {
            None
        };
        if let Some(target) = target {
            self.abdicate(now, Some(target));
        }
    }

    /// The best transfer target among peers passing `filter`: eligible
    /// (listed, priority > 0, healthy, acked within two heartbeats); with
    /// positions the most advanced database first (as its last ack said);
    /// then highest priority, then most recent round, then lowest id.
    pub(super) fn best_peer(&self, now: Nanos, filter: impl Fn(&NodeId) -> bool) -> Option<NodeId> {
        let RoleState::Leader(l) = &self.role else {
            return None;
        };
        let recent = self.cfg.heartbeat_interval * 2;
        // A managed group hands over only to a voter it lists now.
        let listed = |id: &NodeId| self.configuration().is_none_or(|c| c.incarnation_of(id).is_some());
        l.peers
            .iter()
            .filter(|(id, p)| {
                filter(id) && listed(id) && p.priority > 0 && p.healthy && now.since(p.last_ack_at) <= recent
            })
            .max_by(|(a_id, a), (b_id, b)| {
                // With positions, the most advanced database first: its
                // voters grant it, and it holds the most writes.
                let (pa, pb) = if self.cfg.positions { (a.position, b.position) } else { (None, None) };
                (pa, a.priority, a.last_ack_round).cmp(&(pb, b.priority, b.last_ack_round)).then(b_id.cmp(a_id))
            })
            .map(|(id, _)| id.clone())
    }
}

/// Extends the lease to the send time of the highest round a majority has
/// acked plus the leader lease (rule 2). Never shortens it.
fn extend_lease(l: &mut LeaderState, voters: usize, leader_lease: Duration) {
    let mut rounds: Vec<u64> = l.acked.values().copied().collect();
    rounds.push(l.round);
    let Some(q) = lease::quorum_round(rounds, voters) else {
        return;
    };
    if let Some(&(_, sent_at)) = l.sent.iter().find(|(r, _)| *r == q) {
        l.lease_until = l.lease_until.max(sent_at.plus(leader_lease));
    }
}
