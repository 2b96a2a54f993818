//! [`Node`]: one member of the group, as a pure state machine.
//!
//! Only the `become_*` functions change the role. Every handler takes `now`
//! and appends to `self.out`; [`Node::step`] returns what accumulated.

use std::collections::BTreeSet;
use std::time::Duration;

mod leader;
mod members;
mod position;
mod register;
mod upgrade;
mod vote;

use leader::LeaderState;
use members::Members;

use super::lease::{self, quorum};
use super::message::{
    Body, Envelope, RejectReason, MANAGED_PROTOCOL_VERSION, MAX_TERM_AHEAD, POSITIONS_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use super::rng::SplitMix64;
use super::{
    Config, ConfigError, Event, HardState, Incarnation, Input, LeaderView, Mode, Nanos, NodeId, Outputs, Position,
    Rejection, Role, StepDownReason, Term,
};

/// A promise (rule 1): not to vote for anyone but `to` before `until`.
/// In a managed group `to` is an identity: its incarnation too.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Promise {
    until: Nanos,
    to: Option<(NodeId, Option<Incarnation>)>,
}

impl Promise {
    fn is_to(&self, name: &NodeId, incarnation: Option<Incarnation>) -> bool {
        self.to.as_ref().is_some_and(|(n, i)| n == name && *i == incarnation)
    }
}

#[derive(Clone, Debug)]
struct KnownLeader {
    id: NodeId,
    incarnation: Option<Incarnation>,
    address: String,
}

#[derive(Clone, Debug)]
enum RoleState {
    Follower,
    PreCandidate { next_term: Term, granted: BTreeSet<NodeId>, refused: BTreeSet<NodeId>, deadline: Nanos },
    Candidate { granted: BTreeSet<NodeId>, sent_at: Nanos, deadline: Nanos },
    Leader(Box<LeaderState>),
}

/// One member of the group. See [`Outputs`] for the driver's obligations.
#[derive(Debug)]
pub struct Node {
    cfg: Config,
    leader_lease: Duration,
    rng: SplitMix64,
    hard: HardState,
    durable: HardState,
    storage_ok: bool,
    healthy: bool,
    role: RoleState,
    leader: Option<KnownLeader>,
    promise: Promise,
    /// Rule 7: after a restart the node cannot know what it promised, so it
    /// neither votes nor campaigns before this instant.
    boot_promise_until: Nanos,
    /// A follower campaigns no earlier than this.
    election_due: Nanos,
    /// The end of the last lease this node held. It does not campaign before
    /// then: an application may have cached that deadline, and a new token
    /// of its own must not overlap it.
    own_lease_until: Nanos,
    /// Elections lost in a row (split votes); widens the jitter.
    lost_elections: u32,
    /// The pre-vote this node granted last: for which term, to whom, and
    /// until when it endorses no one else for that term.
    pre_vote_hold: Option<(Term, NodeId, Nanos)>,
    last_now: Nanos,
    /// When the state write in flight was asked for, and how long recent
    /// writes took (a decaying maximum): a vote round waits for this
    /// node's write and a voter's, so a slow disk lengthens the round
    /// instead of abandoning every election it starts.
    persist_asked: Option<Nanos>,
    persist_latency: Duration,
    published: Option<LeaderView>,
    /// Managed groups: what this node knows of the other members.
    members: Members,
    /// The local database's replication position and when it was read
    /// (`Config::positions`).
    position: Option<(Position, Nanos)>,
    /// The end of the last promise this node made to another node (its
    /// acks of a leader, its votes): a write acknowledged under that
    /// lease is in its database before then.
    acked_until: Nanos,
    /// The latest lease end this node ever published as leader.
    deadline_given: Nanos,
    out: Outputs,
}

impl Node {
    /// Builds a node at boot time `now`. `durable` is the hard state read from
    /// storage, `None` when there is no state file. `rng_seed` seeds the
    /// election jitter.
    ///
    /// Every start takes the boot promise (rule 7), with or without a state
    /// file: a missing file does not prove that the node never promised
    /// anything. Its data directory may have been lost (a deleted volume, a
    /// wiped disk) after it acked a leader whose lease still rests on that
    /// ack. The cost is one `lease_ttl` before a brand-new group first elects.
    pub fn new(cfg: Config, durable: Option<HardState>, now: Nanos, rng_seed: u64) -> Result<Node, ConfigError> {
        cfg.validate()?;
        let leader_lease = lease::leader_lease(cfg.lease_ttl, lease::drift_ppm(cfg.max_clock_drift));
        let mut cfg = cfg;
        let mut hard = durable.unwrap_or_default();
        if matches!(cfg.mode, Mode::Managed { .. }) {
            let state = hard.members.get_or_insert_with(Box::default);
            if let Some(incarnation) = state.renewed {
                cfg.mode = Mode::Managed { incarnation };
            }
        }
        let boot_promise_until = now.plus(cfg.lease_ttl);
        let mut node = Node {
            cfg,
            leader_lease,
            rng: SplitMix64::new(rng_seed),
            durable: hard.clone(),
            hard,
            storage_ok: true,
            healthy: true,
            role: RoleState::Follower,
            leader: None,
            promise: Promise { until: boot_promise_until, to: None },
            boot_promise_until,
            election_due: Nanos::ZERO,
            own_lease_until: Nanos::ZERO,
            lost_elections: 0,
            pre_vote_hold: None,
            last_now: now,
            persist_asked: None,
            persist_latency: Duration::ZERO,
            published: None,
            members: Members::default(),
            position: None,
            acked_until: Nanos::ZERO,
            deadline_given: Nanos::ZERO,
            out: Outputs::default(),
        };
        node.election_due = boot_promise_until.plus(node.jitter());
        node.restore_membership(now);
        Ok(node)
    }

    pub fn id(&self) -> &NodeId {
        &self.cfg.node_id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    /// The current view (what `Outputs::view` last reported, or would).
    /// Only a durable term is reported: a term adopted but not yet written
    /// could be forgotten by a crash, and the reported term and token would
    /// then go backwards.
    pub fn view(&self) -> LeaderView {
        let durable = self.durable.term == self.hard.term;
        let leader = self.leader.as_ref().filter(|_| durable);
        let (lease_until, token) = match &self.role {
            RoleState::Leader(l) => (Some(l.lease_until), Some(self.hard.term)),
            _ => (None, leader.map(|_| self.hard.term)),
        };
        LeaderView {
            node_id: self.cfg.node_id.clone(),
            role: self.role(),
            term: self.durable.term,
            leader_id: leader.map(|l| l.id.clone()),
            leader_address: leader.map(|l| l.address.clone()),
            fencing_token: token,
            lease_until,
            promise_until: self.promise.until.max(self.boot_promise_until),
            healthy: self.healthy,
            storage_ok: self.storage_ok,
        }
    }

    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// Feeds one input at local time `now` and returns what the driver must do.
    pub fn step(&mut self, now: Nanos, input: Input) -> Outputs {
        // The driver's clock is monotonic; never let a regression move time
        // backwards inside the core.
        let now = now.max(self.last_now);
        self.last_now = now;
        match input {
            Input::Tick => {}
            Input::Message(m) => self.on_message(now, m),
            Input::Persisted(hs) => self.on_persisted(now, hs),
            Input::PersistFailed => self.on_persist_failed(now),
            Input::Health(h) => self.on_health(now, h),
            Input::Desired { names, generation } => self.on_desired(names, generation),
            Input::Peer { name, kind } => self.on_peer(now, name, kind),
            Input::Position { position, read_at } => self.position = position.map(|p| (p, read_at.min(now))),
            Input::Admin(req) => {
                let result = self.on_admin(now, req);
                self.out.admin = Some(result);
            }
        }
        self.on_timers(now);
        if self.out.persist.is_some() && self.persist_asked.is_none() {
            self.persist_asked = Some(now);
        }
        self.finish(now)
    }

    fn finish(&mut self, _now: Nanos) -> Outputs {
        let view = self.view();
        // The latest lease end ever published: an application may have
        // cached it and write until then, a hand-over notwithstanding.
        if let Some(until) = view.lease_until {
            self.deadline_given = self.deadline_given.max(until);
        }
        if self.published.as_ref() != Some(&view) {
            self.published = Some(view.clone());
            self.out.view = Some(view);
        }
        self.out.wake_at = self.wake_at();
        std::mem::take(&mut self.out)
    }

    fn wake_at(&self) -> Nanos {
        match &self.role {
            RoleState::Follower if self.is_eligible() && self.is_voter() => self.election_due,
            RoleState::Follower => self.membership_wake(),
            RoleState::PreCandidate { deadline, .. } | RoleState::Candidate { deadline, .. } => *deadline,
            RoleState::Leader(l) => match &l.abdicated {
                Some(a) => a.deadline,
                None => l.next_heartbeat.min(l.lease_until),
            },
        }
    }

    // ---- inputs -------------------------------------------------------

    fn on_message(&mut self, now: Nanos, m: Envelope) {
        // Rule 11: an upgrading static node that a configuration lists
        // converts first, then takes the message as a managed node.
        self.maybe_convert_on(now, &m);
        if let Some(reason) = self.invalid(&m) {
            self.reject(&m, reason);
            if reason == RejectReason::WrongAddressee {
                self.introduce(&m);
            }
            if reason == RejectReason::Version {
                self.hand_configuration_to_static(now, &m);
            }
            return;
        }
        if self.on_membership_message(now, &m) {
            return;
        }
        // A vote request that would break a promise is ignored outright, term
        // included: adopting its term would depose a leader whose lease this
        // node is protecting (Raft thesis §4.2.3).
        // The promise check uses the term before any adoption (rule 8's
        // transfer exception is relative to the term the promise was made in).
        let vote_allowed = match &m.body {
            Body::VoteRequest { transfer_from } => {
                self.may_vote_for(now, &m.from, m.from_incarnation, transfer_from.as_ref(), m.term)
            }
            _ => false,
        };
        if matches!(m.body, Body::VoteRequest { .. }) && m.term > self.hard.term && !vote_allowed {
            return;
        }
        // Rule 6: a higher term seen anywhere is adopted, except in a PreVote
        // request, which changes nothing at the voter.
        if m.term > self.hard.term && !matches!(m.body, Body::PreVoteRequest { .. }) {
            self.adopt_term(now, m.term);
        }
        // Membership rule 2: a newer configuration, likewise; from a
        // pre-vote only one that needs no higher term (a pre-vote changes
        // no term), so that a voter that missed an add can vote again.
        let needs_term = m.config.as_ref().is_some_and(|c| c.cterm > self.hard.term);
        if !(matches!(m.body, Body::PreVoteRequest { .. }) && needs_term) {
            self.adopt_newer(now, &m);
        }
        match m.body.clone() {
            Body::PreVoteRequest { next_term } => self.on_pre_vote_request(now, &m, next_term),
            Body::PreVoteResponse { next_term, granted } => self.on_pre_vote_response(now, &m, next_term, granted),
            Body::VoteRequest { .. } => self.on_vote_request(now, &m, vote_allowed),
            Body::VoteResponse { granted } => self.on_vote_response(now, &m, granted),
            Body::Heartbeat { round, leader_address } => self.on_heartbeat(now, &m, round, leader_address),
            Body::HeartbeatAck { round, ok, priority, healthy } => {
                self.on_heartbeat_ack(now, &m, round, ok, priority, healthy)
            }
            Body::TimeoutNow => self.on_timeout_now(now, &m),
            Body::Announce { .. } | Body::Accept { .. } | Body::Config { .. } => {}
        }
    }

    /// Rule 10: version, cluster, addressee and sender are checked first.
    fn invalid(&self, m: &Envelope) -> Option<RejectReason> {
        if !self.accepts(m.version) {
            Some(RejectReason::Version)
        } else if m.cluster_id != self.cfg.cluster_id {
            Some(RejectReason::ClusterId)
        } else if m.to != self.cfg.node_id {
            Some(RejectReason::WrongAddressee)
        } else if m.from == self.cfg.node_id || !self.cfg.voters.contains(&m.from) {
            Some(RejectReason::UnknownPeer)
        } else if let Some(reason) = self.invalid_membership(m) {
            Some(reason)
        } else if self.too_far_ahead(m.term)
            || matches!(m.body, Body::PreVoteRequest { next_term } | Body::PreVoteResponse { next_term, .. } if self.too_far_ahead(next_term))
        {
            Some(RejectReason::TermTooFar)
        } else {
            None
        }
    }

    fn too_far_ahead(&self, term: Term) -> bool {
        term.0 > self.term_base().0.saturating_add(MAX_TERM_AHEAD)
    }

    fn reject(&mut self, m: &Envelope, reason: RejectReason) {
        self.out.rejected.push(Rejection { from: m.from.clone(), reason });
    }

    fn on_heartbeat(&mut self, now: Nanos, m: &Envelope, round: u64, leader_address: String) {
        if m.term < self.hard.term {
            self.reject(m, RejectReason::StaleTerm);
            self.send(m.from.clone(), self.ack_body(now, round, false));
            return;
        }
        if self.me().is_some() && self.carried_order(m) != Some(std::cmp::Ordering::Equal) {
            // Membership rule 5: holding a newer configuration than the
            // round carried (or one it cannot compare), this node does not
            // ack; its answer carries its own.
            self.send(m.from.clone(), self.ack_body(now, round, false));
            return;
        }
        if !self.counts(m) {
            // Only a voter of this node's configuration leads it.
            return;
        }
        if matches!(self.role, RoleState::Leader(_)) {
            // Two leaders in one term cannot happen while every voter votes
            // once per term; if it is seen, refuse to follow rather than guess.
            self.reject(m, RejectReason::ConflictingLeader);
            return;
        }
        if !matches!(self.role, RoleState::Follower) {
            self.become_follower(now);
        }
        self.leader =
            Some(KnownLeader { id: m.from.clone(), incarnation: m.from_incarnation, address: leader_address });
        self.lost_elections = 0;
        self.promise_to(now, m.from.clone(), m.from_incarnation);
        self.send(m.from.clone(), self.ack_body(now, round, true));
    }

    /// `healthy` in an ack means "could campaign right now if asked": the
    /// local check passes, the state file is writable, and no restart
    /// promise holds. A leader hands over only to such a peer; otherwise
    /// the TimeoutNow would be ignored and the group would wait out a lease.
    fn ack_body(&self, now: Nanos, round: u64, ok: bool) -> Body {
        let ready = self.healthy && self.storage_ok && now >= self.boot_promise_until;
        Body::HeartbeatAck { round, ok, priority: self.cfg.priority, healthy: ready }
    }

    fn on_timeout_now(&mut self, now: Nanos, m: &Envelope) {
        if m.term < self.hard.term {
            self.reject(m, RejectReason::StaleTerm);
            return;
        }
        // Only from the leader this node follows in this very term, and only
        // if its promise is still to that leader (or has expired): a vote
        // granted to another candidate since is a promise too.
        let from_leader = self.leader.as_ref().is_some_and(|l| l.id == m.from && l.incarnation == m.from_incarnation)
            && m.term == self.hard.term;
        let promise_allows = now >= self.promise.until || self.promise.is_to(&m.from, m.from_incarnation);
        if from_leader
            && promise_allows
            && self.is_voter()
            && self.is_eligible()
            && self.has_next_term()
            && now >= self.boot_promise_until
            && now >= self.own_lease_until
            && self.storage_ok
        {
            self.become_candidate(now, Some(m.from.clone()));
        }
    }

    fn on_persisted(&mut self, now: Nanos, hs: HardState) {
        if let Some(asked) = self.persist_asked.take() {
            self.persist_latency = now.since(asked).max(self.persist_latency / 2);
        }
        // The vote requests of this term waited for this write: they leave
        // no earlier than `now` (the driver's contract), so the votes they
        // bring acknowledge `now`. On a slow disk that keeps the write's
        // time out of the lease the election wins.
        let lease = self.leader_lease;
        if let RoleState::Candidate { sent_at, deadline, .. } = &mut self.role {
            if self.durable.term != self.hard.term && hs.term == self.hard.term {
                *sent_at = (*sent_at).max(now);
                *deadline = (*deadline).min(sent_at.plus(lease));
            }
        }
        self.durable = hs;
        if self.me().is_some() && matches!(self.role, RoleState::Leader(_)) {
            // A configuration this leader made is durable now: it counts
            // itself toward it (membership rule 3).
            self.count_managed();
            self.maybe_change(now);
        }
        if !self.storage_ok {
            self.storage_ok = true;
            self.out.events.push(Event::StorageRecovered);
        }
        // Rule 11: a static leader converts only once its term is durable.
        self.maybe_convert(now);
        self.maybe_win(now);
    }

    fn on_persist_failed(&mut self, now: Nanos) {
        // A failed write says nothing of how long a good one takes.
        self.persist_asked = None;
        if self.storage_ok {
            self.storage_ok = false;
            self.out.events.push(Event::StorageFault);
        }
        if matches!(self.role, RoleState::PreCandidate { .. } | RoleState::Candidate { .. }) {
            self.become_follower(now);
        }
    }

    fn on_health(&mut self, now: Nanos, healthy: bool) {
        self.healthy = healthy;
        if !healthy {
            self.maybe_transfer_away(now);
        }
    }

    // ---- timers -------------------------------------------------------

    fn on_timers(&mut self, now: Nanos) {
        self.on_membership_timers(now);
        match &self.role {
            RoleState::Follower => {
                if now >= self.election_due && self.is_voter() {
                    if self.may_campaign(now) {
                        self.become_pre_candidate(now);
                    } else {
                        // Not allowed yet (storage fault, promise): look again
                        // later instead of asking to be woken in the past.
                        self.election_due =
                            self.promise.until.max(self.boot_promise_until).max(now).plus(self.retry_delay());
                    }
                }
            }
            RoleState::PreCandidate { next_term, deadline, .. } => {
                if now >= *deadline {
                    let next_term = *next_term;
                    self.out.events.push(Event::PreVoteFailed { next_term });
                    self.become_follower(now);
                }
            }
            RoleState::Candidate { deadline, .. } => {
                if now >= *deadline {
                    self.out.events.push(Event::ElectionLost { term: self.hard.term });
                    self.lost_elections = self.lost_elections.saturating_add(1);
                    self.become_follower(now);
                }
            }
            RoleState::Leader(l) => {
                if let Some(a) = &l.abdicated {
                    // The transfer did not complete: step down and wait for
                    // the normal promise expiry like any follower.
                    if now >= a.deadline {
                        self.become_follower_after_abdication(now);
                    }
                } else if now >= l.lease_until {
                    // Rule 5 (CheckQuorum): a lapsed lease means no quorum;
                    // stop renewing the promises of the voters still reached.
                    let term = self.hard.term;
                    self.out.events.push(Event::SteppedDown { term, reason: StepDownReason::LeaseLapsed });
                    self.become_follower(now);
                } else if now >= l.next_heartbeat {
                    self.broadcast_heartbeat(now);
                    self.maybe_transfer_away(now);
                }
            }
        }
    }

    // ---- role changes -------------------------------------------------

    /// A follower may campaign once its promise has expired; a promise to
    /// itself (its own failed candidacy, or a lease that lapsed) does not hold
    /// it back.
    fn become_follower(&mut self, now: Nanos) {
        if let RoleState::Leader(l) = &self.role {
            self.own_lease_until = self.own_lease_until.max(l.lease_until);
            self.leader = None;
        }
        self.role = RoleState::Follower;
        let gate = if self.promised_self() { now } else { self.promise.until.max(now) };
        self.election_due = gate.max(self.boot_promise_until).max(self.own_lease_until).plus(self.jitter());
    }

    /// After handing over (rule 8) the node waits for its whole promise to
    /// expire, like any follower, before it may campaign again.
    fn become_follower_after_abdication(&mut self, now: Nanos) {
        self.become_follower(now);
        self.election_due = self.promise.until.max(self.boot_promise_until).max(now).plus(self.jitter());
    }

    fn become_pre_candidate(&mut self, now: Nanos) {
        // Campaigning means the leader has not been heard for a whole
        // promise: stop reporting it as known.
        self.leader = None;
        let next_term = self.hard.term.next();
        let mut granted = BTreeSet::new();
        granted.insert(self.cfg.node_id.clone());
        let deadline = now.plus(self.pre_vote_timeout());
        self.role = RoleState::PreCandidate { next_term, granted, refused: BTreeSet::new(), deadline };
        self.out.events.push(Event::PreVoteStarted { next_term });
        self.broadcast(|_| Body::PreVoteRequest { next_term });
        if quorum(self.voter_count()) == 1 {
            self.become_candidate(now, None);
        }
    }

    /// Starts a real election: a new term, a vote for itself, persisted
    /// before any VoteRequest leaves (the requests are `send_after_persist`).
    fn become_candidate(&mut self, now: Nanos, transfer_from: Option<NodeId>) {
        assert!(self.has_next_term(), "campaign attempted at the last term");
        let me = self.cfg.node_id.clone();
        self.hard.term = self.hard.term.next();
        self.hard.voted_for = Some(me.clone());
        self.hard.voted_incarnation = self.my_incarnation();
        self.request_persist();
        self.leader = None;
        self.promise_to(now, me.clone(), self.my_incarnation());
        let mut granted = BTreeSet::new();
        granted.insert(me);
        self.role = RoleState::Candidate { granted, sent_at: now, deadline: now.plus(self.vote_timeout()) };
        let term = self.hard.term;
        self.out.events.push(Event::ElectionStarted { term, transfer: transfer_from.is_some() });
        self.broadcast(|_| Body::VoteRequest { transfer_from: transfer_from.clone() });
        self.maybe_win(now);
    }

    /// Wins once a majority voted AND the term is durable: a leader must
    /// never hand out a token that a crash could hand out again.
    fn maybe_win(&mut self, now: Nanos) {
        let RoleState::Candidate { granted, sent_at, .. } = &self.role else {
            return;
        };
        if granted.len() < quorum(self.voter_count()) || self.durable.term != self.hard.term {
            return;
        }
        // A majority gathered only after the votes' lease ran out (a paused
        // candidate, a late answer) wins nothing: as leader it would hold no
        // lease, and its first heartbeat would only make followers promise a
        // leader that steps down in the same step. The round's deadline,
        // never later than that lease, ends the candidacy in this step.
        if now >= sent_at.plus(self.leader_lease) {
            return;
        }
        let sent_at = *sent_at;
        let voters: Vec<NodeId> = granted.iter().filter(|v| **v != self.cfg.node_id).cloned().collect();
        let acked = voters.iter().map(|v| (v.clone(), 0)).collect();
        // Votes count only from listed identities: the listed incarnation.
        let acked_life =
            voters.iter().filter_map(|v| Some((v.clone(), (0, self.configuration()?.incarnation_of(v)?)))).collect();
        self.become_leader(now, sent_at, acked, acked_life);
    }

    fn adopt_term(&mut self, now: Nanos, term: Term) {
        let stepped_down = match &self.role {
            RoleState::Leader(l) if l.abdicated.is_some() => Some(StepDownReason::Transferred),
            RoleState::Leader(_) => Some(StepDownReason::HigherTerm),
            _ => None,
        };
        let old = self.hard.term;
        self.hard.term = term;
        self.hard.voted_for = None;
        self.hard.voted_incarnation = None;
        self.request_persist();
        self.leader = None;
        if let Some(reason) = stepped_down {
            self.out.events.push(Event::SteppedDown { term: old, reason });
        }
        if stepped_down == Some(StepDownReason::Transferred) {
            // Rule 8: after handing over, wait for the whole promise.
            self.become_follower_after_abdication(now);
        } else if !matches!(self.role, RoleState::Follower) {
            self.become_follower(now);
        }
    }

    // ---- helpers ------------------------------------------------------

    /// May this node vote (or pre-vote) for `candidate` in `term`? Rule 1 and
    /// rule 7, with rule 8's single exception: a transfer vote whose
    /// TimeoutNow came from the very leader this node promised, for the term
    /// right after the one it promised in.
    ///
    /// The transfer exception compares names: the TimeoutNow came from the
    /// one leader of the term the promise was made in (the candidate
    /// checked its identity), so the name is enough to tell it.
    fn may_vote_for(
        &self,
        now: Nanos,
        candidate: &NodeId,
        incarnation: Option<Incarnation>,
        transfer_from: Option<&NodeId>,
        term: Term,
    ) -> bool {
        if now < self.boot_promise_until {
            return false;
        }
        if now >= self.promise.until || self.promise.is_to(candidate, incarnation) {
            return true;
        }
        match &self.promise.to {
            Some((to, _)) => transfer_from == Some(to) && term == self.hard.term.next(),
            None => false,
        }
    }

    /// Is this node's promise to itself (its own candidacy or leadership)?
    fn promised_self(&self) -> bool {
        self.promise.is_to(&self.cfg.node_id, self.my_incarnation())
    }

    fn may_campaign(&self, now: Nanos) -> bool {
        self.is_eligible()
            && self.is_voter()
            && self.has_next_term()
            && self.storage_ok
            && now >= self.boot_promise_until
            && now >= self.own_lease_until
            && (now >= self.promise.until || self.promised_self())
    }

    /// A term of u64::MAX has no successor: campaigning would reuse the term
    /// and overwrite the vote cast in it. Such a node votes and follows only.
    fn has_next_term(&self) -> bool {
        self.hard.term < Term(u64::MAX)
    }

    fn is_eligible(&self) -> bool {
        self.cfg.priority > 0 && self.healthy
    }

    fn promise_to(&mut self, now: Nanos, to: NodeId, incarnation: Option<Incarnation>) {
        let until = now.plus(self.cfg.lease_ttl).max(self.promise.until);
        if matches!(self.role, RoleState::Follower) {
            self.election_due = until.plus(self.succession_delay(&to));
        }
        if to != self.cfg.node_id {
            self.acked_until = self.acked_until.max(until);
        }
        self.promise = Promise { until, to: Some((to, incarnation)) };
    }

    /// How long after the end of its promise to `to` a follower campaigns.
    /// The survivors of a leader all promised it until about the same
    /// instant; drawing from one jitter window they would often campaign
    /// within a round trip of each other and split the vote, so the window
    /// had to be wide, and a failover paid for it. Instead they take turns
    /// in node-id order (leaving out `to`): the first campaigns within a
    /// quarter of the jitter window after the expiry, each next one half a
    /// heartbeat later, when the first has long won or failed. A higher
    /// priority shortens a node's turn in proportion, so with unequal
    /// priorities the preferred node usually still campaigns first.
    fn succession_delay(&mut self, to: &NodeId) -> Duration {
        let me = &self.cfg.node_id;
        let rank = self.cfg.voters.iter().filter(|v| *v != to).position(|v| v == me).unwrap_or(0);
        let rank = u32::try_from(rank).unwrap_or(u32::MAX);
        let turn = (self.cfg.heartbeat_interval / 2).saturating_mul(rank) / self.cfg.priority.max(1);
        turn + self.jitter() / 4
    }

    fn request_persist(&mut self) {
        self.out.persist = Some(self.hard.clone());
    }

    fn send(&mut self, to: NodeId, body: Body) {
        let incarnation = self.incarnation_of(&to);
        self.send_to(to, incarnation, body);
    }

    /// Sends to one life of `to` (managed groups; `None` in a static one).
    fn send_to(&mut self, to: NodeId, to_incarnation: Option<Incarnation>, body: Body) {
        let managed = matches!(self.cfg.mode, Mode::Managed { .. });
        let m = Envelope {
            version: self.protocol(),
            cluster_id: self.cfg.cluster_id.clone(),
            from: self.cfg.node_id.clone(),
            to,
            term: self.hard.term,
            body,
            from_incarnation: self.my_incarnation(),
            to_incarnation: to_incarnation.filter(|_| managed),
            group: self.configuration().map(|c| c.group),
            config: self.configuration().cloned().map(Box::new),
            position: self.position.filter(|_| self.cfg.positions).map(|(p, _)| p),
        };
        if self.hard == self.durable {
            self.out.send_now.push(m);
        } else {
            self.out.send_after_persist.push(m);
        }
    }

    /// The protocol this node speaks: 1 in a static group, 2 in a managed
    /// one (DESIGN §2b), 3 in a managed one that uses replication
    /// positions.
    fn protocol(&self) -> u32 {
        match self.cfg.mode {
            Mode::Static => PROTOCOL_VERSION,
            Mode::Managed { .. } if self.cfg.positions => POSITIONS_PROTOCOL_VERSION,
            Mode::Managed { .. } => MANAGED_PROTOCOL_VERSION,
        }
    }

    fn broadcast(&mut self, body: impl Fn(&NodeId) -> Body) {
        let peers: Vec<NodeId> = self.cfg.voters.iter().filter(|v| **v != self.cfg.node_id).cloned().collect();
        for peer in peers {
            let b = body(&peer);
            self.send(peer, b);
        }
    }

    /// Election jitter: a fraction of the heartbeat interval, smaller for
    /// higher priority, so that the preferred node usually campaigns first.
    /// After split votes it widens (x2 per election lost in a row, up to x8),
    /// so that candidates whose promises expire together stop colliding.
    fn jitter(&mut self) -> Duration {
        let widen = 1u128 << self.lost_elections.min(3);
        let span = widen * self.cfg.heartbeat_interval.as_nanos() / u128::from(self.cfg.priority.max(1));
        Duration::from_nanos(self.rng.below(u64::try_from(span).unwrap_or(u64::MAX)))
    }

    /// Delay before looking again at a campaign that was not allowed.
    fn retry_delay(&mut self) -> Duration {
        self.cfg.heartbeat_interval / 2 + self.jitter()
    }

    /// How long a PreVote round may take before it is abandoned: long
    /// enough for a few round trips, short enough that a won election
    /// still leaves most of a lease.
    fn pre_vote_timeout(&self) -> Duration {
        self.cfg.heartbeat_interval.max(self.cfg.lease_ttl / 2).min(self.leader_lease)
    }

    /// How long a vote round may take. It waits for writes (the
    /// candidate's and a voter's), so on a disk slower than the PreVote
    /// timeout allows for, it waits for three of this node's recent write
    /// times, at most two leases: a round abandoned before any vote could
    /// be durable would burn terms and never elect. Once the candidate's
    /// write is done the round is also cut to one leader lease from then
    /// (`on_persisted`): a later win would hold no lease. Safety does not
    /// depend on it: a lease counts from when the vote requests were
    /// released.
    fn vote_timeout(&self) -> Duration {
        self.pre_vote_timeout().max(self.persist_latency.saturating_mul(3).min(self.cfg.lease_ttl * 2))
    }
}
