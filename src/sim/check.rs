//! The invariant checker. It sits outside the nodes and sees only what an
//! observer could: the views the nodes publish (converted to *true* time with
//! each node's clock) and the messages they put on the wire. Every check runs
//! at the event that could break it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use std::time::Duration;

use crate::core::{Body, Configuration, Envelope, GroupUid, Incarnation, LeaderView, Nanos, NodeId, Role, Term};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// At most one leader per term.
    OneLeaderPerTerm,
    /// Never two leases with different tokens valid at the same true instant.
    LeaseExclusive,
    /// Each new leadership's token is greater than every earlier one's.
    TokenOrder,
    /// The token a node reports never goes backwards, across restarts too.
    TokenMonotonicPerNode,
    /// A node never sends a term lower than one it sent before, across
    /// restarts too (its term is durable before anything depends on it).
    TermDurable,
    /// A voter grants at most one candidate per term, across restarts too.
    OneVotePerTerm,
    /// Rule 1: no vote (its own campaign included) for anyone but the node
    /// last promised, before that promise's lease_ttl has passed on the
    /// voter's own clock; a transfer vote from the promised leader excepted.
    PromiseKept,
    /// After the faults stop, a leader within the stated bound.
    Liveness,
    /// A node that lost its state file (a wipe) voted, or campaigned, in a
    /// term at or below the highest term it had reached before the loss: it
    /// may have voted in that term already and forgotten it. Such a double
    /// vote (`one-vote-per-term` of that node), and a violation of
    /// `one-leader-per-term`, `token-order` or `lease-exclusive` that
    /// involves a leadership counting such a vote, is reported as this
    /// one. A known open hole, not yet a failure: voter identities with
    /// incarnations (DESIGN §2b) close it. Every other violation, and
    /// `promise-kept` always, is reported as itself.
    WipedVote,
    /// Managed groups: a blank node booted with an incarnation that was
    /// used before (a wiped node must be a new identity).
    IncarnationReused,
    /// Managed groups: a node that is not a voter of the configuration it
    /// holds granted a vote, campaigned or led (learners never do).
    LearnerActed,
    /// Managed groups: two configurations with one stamp and group but
    /// other voters.
    OneConfigPerStamp,
    /// Managed groups: one identity held configurations of two groups
    /// (it acted under two geneses).
    GenesisOnce,
    /// Managed groups, liveness: after the heal, with every node up and
    /// the desired set stable, the configuration did not come to list
    /// every node's identity within the bound.
    Converges,
    /// Positions: a new leader's database lacks a write acknowledged to
    /// its client before it took over.
    AckedWriteKept,
    /// Positions in a managed group: a leader made a membership change,
    /// which positions do not allow yet (docs/safety.md).
    NoChangeWithPositions,
}

impl Invariant {
    pub fn is_safety(self) -> bool {
        !matches!(self, Invariant::Liveness | Invariant::WipedVote | Invariant::Converges)
    }
    /// A hole that is known and reported, but does not fail a run yet.
    pub fn is_known_open(self) -> bool {
        self == Invariant::WipedVote
    }
    pub fn name(self) -> &'static str {
        match self {
            Invariant::OneLeaderPerTerm => "one-leader-per-term",
            Invariant::LeaseExclusive => "lease-exclusive",
            Invariant::TokenOrder => "token-order",
            Invariant::TokenMonotonicPerNode => "token-monotonic-per-node",
            Invariant::TermDurable => "term-durable",
            Invariant::OneVotePerTerm => "one-vote-per-term",
            Invariant::PromiseKept => "promise-kept",
            Invariant::Liveness => "liveness",
            Invariant::WipedVote => "wiped-vote",
            Invariant::IncarnationReused => "incarnation-reused",
            Invariant::LearnerActed => "learner-acted",
            Invariant::OneConfigPerStamp => "one-config-per-stamp",
            Invariant::GenesisOnce => "genesis-once",
            Invariant::Converges => "converges",
            Invariant::AckedWriteKept => "acked-write-kept",
            Invariant::NoChangeWithPositions => "no-change-with-positions",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub at_ns: u64,
    pub invariant: Invariant,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.invariant.name(), fmt_ns(self.at_ns), self.detail)
    }
}

/// One stretch of time in which a node held a valid lease, in true time.
#[derive(Clone, Debug)]
pub struct LeaseRecord {
    pub node: usize,
    pub token: Term,
    pub start: u64,
    pub end: u64,
    /// The end on the holder's own clock; `end` follows it if the clock's
    /// rate changes.
    pub until_local: Nanos,
    /// The holder handed over (rule 8): only then may the lease end early.
    pub abdicated: bool,
}

/// A promise (rule 1) as the checker tracks it.
#[derive(Clone, Debug, PartialEq)]
pub struct Promise {
    pub at: Nanos,
    pub to: NodeId,
    /// Managed groups: the incarnation of `to` (promises bind identities).
    pub to_inc: Option<Incarnation>,
    pub term: Term,
}

#[derive(Debug, Default)]
pub struct Checker {
    leader_of_term: BTreeMap<Term, usize>,
    pub leases: Vec<LeaseRecord>,
    /// Index into `leases` of each node's latest record.
    current: BTreeMap<usize, usize>,
    highest_token_started: Option<Term>,
    token_seen: BTreeMap<usize, Term>,
    term_sent: BTreeMap<usize, Term>,
    /// The vote each identity cast per term: (node, incarnation or 0,
    /// term) -> candidate.
    votes: BTreeMap<(usize, u128, Term), NodeId>,
    /// Each node's latest promise that left it: its local time, to whom, and
    /// the term it was made in.
    promises: BTreeMap<usize, Promise>,
    /// Rule 11: the incarnation of each static node's state file, by
    /// which its votes are keyed.
    static_life: BTreeMap<usize, u128>,
    /// Rule 11: each converted node's first configuration, name to
    /// listed incarnation.
    converted: BTreeMap<usize, BTreeMap<NodeId, Incarnation>>,
    /// The same for a conversion not yet durable.
    converting: BTreeMap<usize, BTreeMap<NodeId, Incarnation>>,
    /// Each node's latest promise decided but not yet on the wire (waiting
    /// for a write); a crash discards it.
    tentative: BTreeMap<usize, Promise>,
    /// Leaders that handed over, and the term they handed over in.
    abdications: BTreeSet<(NodeId, Term)>,
    /// Per node, the highest term it had durably before it lost its state
    /// file (the highest over all its wipes).
    forgotten: BTreeMap<usize, Term>,
    /// Leaderships (term, candidate) that a wiped node voted for, or that
    /// it was itself the candidate of, at or below its forgotten term (see
    /// [`Invariant::WipedVote`]).
    wiped_votes: BTreeSet<(Term, usize)>,
    /// Each node's index, by name (learned from what it sends).
    index_of: BTreeMap<NodeId, usize>,
    lease_ttl: Duration,
    /// Managed groups: a wiped node is a new identity, so what a wipe
    /// makes possible is no longer a known hole but a failure.
    pub managed: bool,
    /// Every identity that booted blank.
    lives: BTreeSet<(NodeId, Incarnation)>,
    /// The digest of each configuration stamp seen, per group.
    stamps: BTreeMap<(GroupUid, Term, u64), u64>,
    /// The group each identity held a configuration of.
    group_of: BTreeMap<(NodeId, Incarnation), GroupUid>,
    pub violations: Vec<Violation>,
}

impl Checker {
    pub fn new(lease_ttl: Duration) -> Self {
        Checker { lease_ttl, ..Checker::default() }
    }

    /// Did leadership (`term`, `node`) count a vote that a wiped node may
    /// have cast twice?
    fn tainted(&self, term: Term, node: usize) -> bool {
        self.wiped_votes.contains(&(term, node))
    }

    /// A violation that the known hole explains (`known_open`) is reported
    /// as [`Invariant::WipedVote`], any other as itself.
    fn violate_unless_wiped(&mut self, at_ns: u64, invariant: Invariant, known_open: bool, detail: String) {
        if known_open && !self.managed {
            let detail = format!("{} after a wipe: {detail}", invariant.name());
            self.violate(at_ns, Invariant::WipedVote, detail);
        } else {
            self.violate(at_ns, invariant, detail);
        }
    }

    fn violate(&mut self, at_ns: u64, invariant: Invariant, detail: String) {
        // One report per invariant is enough to fail a seed and keeps memory
        // bounded in a broken run.
        if !self.violations.iter().any(|v| v.invariant == invariant) {
            self.violations.push(Violation { at_ns, invariant, detail });
        }
    }

    pub fn has_safety_violation(&self) -> bool {
        self.violations.iter().any(|v| v.invariant.is_safety())
    }

    /// A node published a view at true time `t`. `lease_end` is the true time
    /// at which its lease ends (its clock reaches `lease_until`), if leader.
    pub fn on_view(&mut self, t: u64, node: usize, view: &LeaderView, lease_end: Option<u64>) {
        let (name, role, term, token) = (&view.node_id, view.role, view.term, view.fencing_token);
        if role == Role::Leader {
            match self.leader_of_term.get(&term) {
                Some(&other) if other != node => {
                    let detail = format!("{name} and node #{other} both leaders of term {term}");
                    let open = self.tainted(term, node) || self.tainted(term, other);
                    self.violate_unless_wiped(t, Invariant::OneLeaderPerTerm, open, detail);
                }
                _ => {
                    self.leader_of_term.insert(term, node);
                }
            }
        }
        if let Some(tok) = token {
            let seen = self.token_seen.entry(node).or_default();
            if tok < *seen {
                let detail = format!("{name} reported token {tok} after token {seen}");
                self.violate(t, Invariant::TokenMonotonicPerNode, detail);
            } else {
                *seen = tok;
            }
        }
        match (lease_end, view.lease_until) {
            (Some(end), Some(until)) if role == Role::Leader && end > t => {
                self.lease_held(t, node, name, term, end, until)
            }
            _ => self.lease_not_held(t, node),
        }
    }

    fn lease_held(&mut self, t: u64, node: usize, name: &NodeId, token: Term, end: u64, until_local: Nanos) {
        let idx = match self.current.get(&node).copied() {
            // The same leadership, still running: move its end (a transfer
            // shortens it, a heartbeat round extends it).
            Some(i) if self.leases[i].token == token && self.leases[i].end > t => {
                // Only a hand-over may shorten a lease; otherwise it only grows.
                let r = &mut self.leases[i];
                if r.abdicated || end >= r.end {
                    r.end = end;
                    r.until_local = until_local;
                }
                i
            }
            _ => {
                let new_leadership = !self.leases.iter().any(|r| r.node == node && r.token == token);
                if new_leadership {
                    if let Some(high) = self.highest_token_started {
                        if token <= high {
                            let detail = format!("{name} began a lease with token {token} after token {high}");
                            let open = self.tainted(token, node);
                            self.violate_unless_wiped(t, Invariant::TokenOrder, open, detail);
                        }
                    }
                    self.highest_token_started = Some(self.highest_token_started.map_or(token, |h| h.max(token)));
                }
                self.leases.push(LeaseRecord { node, token, start: t, end, until_local, abdicated: false });
                self.leases.len() - 1
            }
        };
        self.current.insert(node, idx);
        self.check_overlap(t, idx);
    }

    /// The rate of `node`'s clock changed at true time `t`: the leases it
    /// holds or held end at another true time now.
    pub fn on_clock_change(&mut self, t: u64, node: usize, to_true: impl Fn(Nanos) -> u64) {
        let running: Vec<usize> =
            (0..self.leases.len()).filter(|&i| self.leases[i].node == node && self.leases[i].end > t).collect();
        for i in running {
            self.leases[i].end = to_true(self.leases[i].until_local).max(t);
            self.check_overlap(t, i);
        }
    }

    /// Two leases of different tokens must never overlap. An overlap with
    /// a lease of a term in which a wiped node voted below what it forgot
    /// is the known hole (`wiped-vote`): its forgotten vote can elect a
    /// leadership out of term order, which no promise then holds back.
    fn check_overlap(&mut self, t: u64, idx: usize) {
        let me = self.leases[idx].clone();
        let name = format!("node #{}", me.node);
        let clashes: Vec<LeaseRecord> = self
            .leases
            .iter()
            .filter(|o| o.token != me.token && o.start < me.end && me.start < o.end)
            .cloned()
            .collect();
        let tainted = |r: &LeaseRecord| self.tainted(r.token, r.node);
        let clash = clashes.iter().find(|o| !tainted(&me) && !tainted(o)).or(clashes.first());
        if let Some(o) = clash {
            let detail = format!(
                "{name} holds token {} over [{}, {}) while node #{} holds token {} over [{}, {})",
                me.token,
                fmt_ns(me.start),
                fmt_ns(me.end),
                o.node,
                o.token,
                fmt_ns(o.start),
                fmt_ns(o.end)
            );
            let open = tainted(&me) || tainted(o);
            self.violate_unless_wiped(t, Invariant::LeaseExclusive, open, detail);
        }
    }

    /// A lease ends early only by a hand-over. A leader that steps down for
    /// any other reason (a higher term) keeps its record to its deadline: an
    /// application that cached that deadline may still act on it, and nobody
    /// else may lead before it.
    fn lease_not_held(&mut self, t: u64, node: usize) {
        if let Some(&i) = self.current.get(&node) {
            let r = &mut self.leases[i];
            if r.abdicated && r.end > t {
                r.end = t;
            }
        }
    }

    /// The node ended its lease of `term` to hand over (rule 8). Its
    /// promise to itself protected only that lease, so it ends too.
    pub fn on_abdicate(&mut self, node: usize, name: &NodeId, term: Term) {
        if let Some(&i) = self.current.get(&node) {
            self.leases[i].abdicated = true;
        }
        self.abdications.insert((name.clone(), term));
        if self.promises.get(&node).is_some_and(|p| p.to == *name) {
            self.promises.remove(&node);
        }
        if self.tentative.get(&node).is_some_and(|p| p.to == *name) {
            self.tentative.remove(&node);
        }
    }

    /// The node decided a promise at its local time `local`, in `term`.
    pub fn on_promise_decided(
        &mut self,
        node: usize,
        local: Nanos,
        to: &NodeId,
        to_inc: Option<Incarnation>,
        term: Term,
    ) {
        self.tentative.insert(node, Promise { at: local, to: to.clone(), to_inc, term });
    }

    /// Rule 11: `node` runs as a static node whose state file is the
    /// identity `life`.
    pub fn on_static_boot(&mut self, node: usize, life: Incarnation) {
        self.static_life.insert(node, life.0);
    }

    /// Rule 11: `node` converted. A promise it made by name, before or
    /// after (a static vote may leave once its write is done, after the
    /// conversion), is to the identity its first configuration lists
    /// under that name (`listed`), or, if none is listed, to no identity
    /// any candidate has. Until the conversion is durable a crash undoes
    /// it ([`Checker::on_durable_configuration`]).
    pub fn on_converted(&mut self, node: usize, listed: BTreeMap<NodeId, Incarnation>) {
        self.converting.insert(node, listed);
    }

    /// A configuration of `node`'s is durable: its conversion, if one was
    /// under way, stands.
    pub fn on_durable_configuration(&mut self, node: usize) {
        if let Some(listed) = self.converting.remove(&node) {
            self.converted.insert(node, listed);
        }
    }

    /// The identity a promise is to: by name, mapped on conversion.
    fn promised_life(&self, node: usize, p: &Promise) -> Option<Incarnation> {
        match (p.to_inc, self.converting.get(&node).or_else(|| self.converted.get(&node))) {
            (None, Some(listed)) => Some(listed.get(&p.to).copied().unwrap_or(Incarnation(0))),
            (inc, _) => inc,
        }
    }

    /// The node's latest promise, decided or sent.
    fn latest_promise(&self, node: usize) -> Option<Promise> {
        match (self.promises.get(&node), self.tentative.get(&node)) {
            (Some(p), Some(t)) => Some(if t.at >= p.at { t.clone() } else { p.clone() }),
            (p, t) => p.or(t).cloned(),
        }
    }

    /// A message carrying a promise left the node: an ok ack or a vote (to
    /// its addressee), a VoteRequest or heartbeat (to itself). `local` is the
    /// node's local time at the step that made the promise.
    pub fn on_promise(&mut self, node: usize, local: Nanos, to: &NodeId, to_inc: Option<Incarnation>, term: Term) {
        if self.promises.get(&node).is_none_or(|p| p.at <= local) {
            self.promises.insert(node, Promise { at: local, to: to.clone(), to_inc, term });
        }
        // The decided promise is on the wire now, unless a later decision
        // replaced it.
        if self.tentative.get(&node).is_some_and(|p| p.at == local && p.to == *to && p.term == term) {
            self.tentative.remove(&node);
        }
    }

    /// The node decides to vote for `candidate` in `term` (a granted vote,
    /// or its own campaign): is it free to? At true time `t`, local time
    /// `local`. `transfer_from` is the leader whose TimeoutNow started a
    /// transfer campaign, if this is one.
    #[allow(clippy::too_many_arguments)]
    pub fn check_vote(
        &mut self,
        t: u64,
        node: usize,
        name: &NodeId,
        local: Nanos,
        (candidate, candidate_inc): (&NodeId, Option<Incarnation>),
        term: Term,
        transfer_from: Option<&NodeId>,
    ) {
        let Some(p) = self.latest_promise(node) else { return };
        // Rule 8: a transfer vote from the promised leader, which the checker
        // saw hand over in the term right before the vote's (the term of its
        // TimeoutNow), no earlier than the promise's term. A promise to a
        // node protects only that node's leases; when it hands over it holds
        // none and never again in that term, and every lease it held in an
        // earlier term ended before it campaigned (docs/safety.md, claim 2).
        let handed_over_in = Term(term.0.saturating_sub(1));
        if transfer_from == Some(&p.to)
            && p.term <= handed_over_in
            && self.abdications.contains(&(p.to.clone(), handed_over_in))
        {
            self.promises.remove(&node);
            self.tentative.remove(&node);
            return;
        }
        let same = p.to == *candidate && self.promised_life(node, &p) == candidate_inc;
        if !same && local < p.at.plus(self.lease_ttl) {
            let detail = format!(
                "{name} voted for {candidate} {:?} after promising {} in term {} (lease_ttl {:?})",
                local.since(p.at),
                p.to,
                p.term,
                self.lease_ttl
            );
            self.violate(t, Invariant::PromiseKept, detail);
        }
    }

    /// A crashed node's lease is *not* cut short: its application may still
    /// act on the deadline it last read, so the record runs to its end.
    pub fn on_crash(&mut self, node: usize) {
        self.current.remove(&node);
        self.tentative.remove(&node);
        self.converting.remove(&node);
    }

    /// True if some node holds a lease at true time `t`.
    pub fn lease_active_at(&self, t: u64) -> bool {
        self.leases.iter().any(|r| r.start <= t && t < r.end)
    }

    /// A message left `node` (it reached the wire).
    pub fn on_send(&mut self, t: u64, node: usize, m: &Envelope) {
        self.index_of.insert(m.from.clone(), node);
        let below_forgotten = self.forgotten.get(&node).is_some_and(|f| m.term <= *f);
        let candidate = match m.body {
            Body::VoteResponse { granted: true } => self.index_of.get(&m.to).copied(),
            Body::VoteRequest { .. } => Some(node),
            _ => None,
        };
        if let Some(c) = candidate.filter(|_| below_forgotten) {
            self.wiped_votes.insert((m.term, c));
        }
        let sent = self.term_sent.entry(node).or_default();
        if m.term < *sent {
            let detail = format!("{} sent term {} after having sent term {}", m.from, m.term, sent);
            self.violate(t, Invariant::TermDurable, detail);
        } else {
            *sent = m.term;
        }
        if let Body::VoteResponse { granted: true } = m.body {
            // A static node's votes count as its static identity's, so that
            // a vote before its conversion and one after meet (rule 11).
            let life = m.from_incarnation.map(|i| i.0).or_else(|| self.static_life.get(&node).copied()).unwrap_or(0);
            match self.votes.get(&(node, life, m.term)) {
                Some(c) if *c != m.to => {
                    let detail = format!("{} voted for {} and {} in term {}", m.from, c, m.to, m.term);
                    self.violate_unless_wiped(t, Invariant::OneVotePerTerm, below_forgotten, detail);
                }
                _ => {
                    self.votes.insert((node, life, m.term), m.to.clone());
                }
            }
        }
    }

    /// The node lost its state file (a wipe), whose term was `lost_term`,
    /// and will boot blank, at term 0. Its terms were durable only as long
    /// as the file was, so the records of the terms it sent and the tokens
    /// it reported start again. Its promises are kept: they bind the node
    /// whether or not it remembers them (rule 7).
    pub fn on_wipe(&mut self, node: usize, lost_term: Term) {
        self.term_sent.remove(&node);
        self.token_seen.remove(&node);
        let forgotten = self.forgotten.entry(node).or_default();
        *forgotten = (*forgotten).max(lost_term);
    }

    /// A node booted blank as identity `(name, life)`: never one seen before.
    pub fn on_blank_boot(&mut self, t: u64, node: usize, name: &NodeId, life: Incarnation) {
        if !self.lives.insert((name.clone(), life)) {
            let detail = format!("node #{node} ({name}) booted blank with incarnation {life}, used before");
            self.violate(t, Invariant::IncarnationReused, detail);
        }
    }

    /// How many groups some identity held durably.
    pub fn groups_formed(&self) -> usize {
        self.group_of.values().collect::<BTreeSet<_>>().len()
    }

    pub fn learner_acted(&mut self, t: u64, detail: String) {
        self.violate(t, Invariant::LearnerActed, detail);
    }

    /// Identity `(name, life)` holds configuration `c` from now on.
    pub fn on_configuration_held(&mut self, t: u64, name: &NodeId, life: Incarnation, c: &Configuration) {
        let digest = c.digest();
        let stamp = (c.group, c.cterm, c.epoch);
        match self.stamps.get(&stamp) {
            Some(d) if *d != digest => {
                let detail = format!("group {} stamp ({}, {}) names two voter sets", c.group, c.cterm, c.epoch);
                self.violate(t, Invariant::OneConfigPerStamp, detail);
            }
            _ => {
                self.stamps.insert(stamp, digest);
            }
        }
        match self.group_of.get(&(name.clone(), life)) {
            Some(g) if *g != c.group => {
                let detail = format!("{name} ({life}) held group {g}, then group {}", c.group);
                self.violate(t, Invariant::GenesisOnce, detail);
            }
            _ => {
                self.group_of.insert((name.clone(), life), c.group);
            }
        }
    }

    /// Positions: an acknowledged write is missing from the database of
    /// `node`, which began leading with `token`. In a static group, a
    /// leadership that counted a wiped node's forgotten vote is the known
    /// hole, reported as such.
    pub fn acked_write_lost(&mut self, t: u64, node: usize, token: Term, detail: String) {
        let known_open = self.tainted(token, node);
        self.violate_unless_wiped(t, Invariant::AckedWriteKept, known_open, detail);
    }

    /// Membership did not converge within `bound_ns` of the heal.
    /// Positions: `changes` membership changes were made in a run.
    pub fn changed_with_positions(&mut self, at_ns: u64, changes: u64) {
        let detail = format!("{changes} membership change(s) made while positions decide elections");
        self.violate(at_ns, Invariant::NoChangeWithPositions, detail);
    }

    pub fn membership_stuck(&mut self, heal_at: u64, bound_ns: u64) {
        let detail = format!(
            "the configuration does not list every node's identity {} after the heal at {}",
            fmt_ns(bound_ns),
            fmt_ns(heal_at)
        );
        self.violate(heal_at + bound_ns, Invariant::Converges, detail);
    }

    /// Liveness failed: no leader within `bound_ns` after the heal at `heal_at`.
    pub fn liveness_failed(&mut self, heal_at: u64, bound_ns: u64) {
        let detail = format!("no leader within {} of the heal at {}", fmt_ns(bound_ns), fmt_ns(heal_at));
        self.violate(heal_at + bound_ns, Invariant::Liveness, detail);
    }
}

/// Formats true nanoseconds as milliseconds with microsecond precision.
pub fn fmt_ns(ns: u64) -> String {
    if ns == u64::MAX {
        return "never".to_string();
    }
    format!("{}.{:03}ms", ns / 1_000_000, (ns / 1_000) % 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Nanos;

    fn view(node: &str, role: Role, term: u64) -> LeaderView {
        LeaderView {
            node_id: NodeId::new(node),
            role,
            term: Term(term),
            leader_id: Some(NodeId::new(node)),
            leader_address: None,
            fencing_token: Some(Term(term)),
            lease_until: Some(Nanos(0)),
            promise_until: Nanos(0),
            healthy: true,
            storage_ok: true,
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn overlapping_leases_of_two_nodes_are_a_violation() {
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_view(0, 0, &view("n1", Role::Leader, 1), Some(900 * MS));
        assert!(c.violations.is_empty());
        c.on_view(800 * MS, 1, &view("n2", Role::Leader, 2), Some(1700 * MS));
        assert_eq!(c.violations[0].invariant, Invariant::LeaseExclusive);
    }

    #[test]
    fn a_step_down_keeps_the_cached_deadline_but_a_hand_over_ends_it() {
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_view(0, 0, &view("n1", Role::Leader, 1), Some(900 * MS));
        // Stepping down for a higher term: the deadline an app cached holds.
        c.on_view(100 * MS, 0, &view("n1", Role::Follower, 2), None);
        c.on_view(200 * MS, 0, &view("n1", Role::Leader, 3), Some(1100 * MS));
        assert_eq!(c.violations[0].invariant, Invariant::LeaseExclusive, "same node, new token, old deadline");

        let mut c = Checker::new(Duration::from_secs(1));
        c.on_view(0, 0, &view("n1", Role::Leader, 1), Some(900 * MS));
        c.on_abdicate(0, &NodeId::new("n1"), Term(1));
        c.on_view(100 * MS, 0, &view("n1", Role::Leader, 1), Some(100 * MS));
        c.on_view(105 * MS, 1, &view("n2", Role::Leader, 2), Some(1000 * MS));
        assert!(c.violations.is_empty(), "{:?}", c.violations);
    }

    #[test]
    fn a_clock_that_slows_down_moves_the_lease_end_and_can_cause_an_overlap() {
        let mut c = Checker::new(Duration::from_secs(1));
        let mut v = view("n1", Role::Leader, 1);
        v.lease_until = Some(Nanos(900 * MS));
        c.on_view(0, 0, &v, Some(900 * MS));
        c.on_view(950 * MS, 1, &view("n2", Role::Leader, 2), Some(1800 * MS));
        assert!(c.violations.is_empty());
        // n1's clock ran at half speed from 400ms: 900ms local is now 1400ms.
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_view(0, 0, &v, Some(900 * MS));
        c.on_clock_change(400 * MS, 0, |local| 400 * MS + 2 * (local.0 - 400 * MS));
        assert_eq!(c.leases[0].end, 1400 * MS);
        c.on_view(950 * MS, 1, &view("n2", Role::Leader, 2), Some(1800 * MS));
        assert_eq!(c.violations[0].invariant, Invariant::LeaseExclusive);
    }

    #[test]
    fn a_crashed_leader_keeps_its_lease_to_the_deadline() {
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_view(0, 0, &view("n1", Role::Leader, 1), Some(900 * MS));
        c.on_crash(0);
        c.on_view(500 * MS, 1, &view("n2", Role::Leader, 2), Some(1400 * MS));
        assert_eq!(c.violations[0].invariant, Invariant::LeaseExclusive);
    }

    #[test]
    fn voting_for_another_while_promised_is_a_violation_unless_it_is_a_transfer() {
        let (n1, n2, n3) = (NodeId::new("n1"), NodeId::new("n2"), NodeId::new("n3"));
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_promise(2, Nanos(100 * MS), &n1, None, Term(1));
        c.check_vote(0, 2, &n3, Nanos(900 * MS), (&n1, None), Term(2), None);
        assert!(c.violations.is_empty(), "voting for the promised node is allowed");
        c.check_vote(0, 2, &n3, Nanos(1_200 * MS), (&n2, None), Term(2), None);
        assert!(c.violations.is_empty(), "the promise has expired");
        c.on_promise(2, Nanos(2_000 * MS), &n1, None, Term(4));
        c.on_abdicate(0, &n1, Term(4));
        c.check_vote(0, 2, &n3, Nanos(2_500 * MS), (&n2, None), Term(5), Some(&n1));
        assert!(c.violations.is_empty(), "a transfer vote after n1 handed over in term 4 is allowed");
        // A transfer claimed from a leader that never handed over in the
        // term before the vote's is no excuse.
        c.on_promise(2, Nanos(3_000 * MS), &n1, None, Term(6));
        c.check_vote(7, 2, &n3, Nanos(3_500 * MS), (&n2, None), Term(7), Some(&n1));
        assert_eq!(c.violations[0].invariant, Invariant::PromiseKept);
    }

    /// Seed 9017737 of 5 nodes: n4 voted for n2 as a candidate in term 14;
    /// n2 then led term 15 and handed over to n3. n2's term-14 candidacy
    /// had ended before it campaigned for term 15, so the promise protected
    /// no lease any more, and n4 may vote for n3's transfer in term 16.
    #[test]
    fn a_transfer_vote_may_break_a_promise_made_to_the_leader_in_an_earlier_term() {
        let (n2, n3, n4) = (NodeId::new("n2"), NodeId::new("n3"), NodeId::new("n4"));
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_promise(3, Nanos(100 * MS), &n2, None, Term(14));
        c.on_abdicate(1, &n2, Term(15));
        c.check_vote(0, 3, &n4, Nanos(190 * MS), (&n3, None), Term(16), Some(&n2));
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        // A hand-over in a term before the promise's does not excuse it: a
        // promise to n2 made in term 16 may back n2's lease of term 16.
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_abdicate(1, &n2, Term(15));
        c.on_promise(3, Nanos(100 * MS), &n2, None, Term(16));
        c.check_vote(0, 3, &n4, Nanos(190 * MS), (&n3, None), Term(16), Some(&n2));
        assert_eq!(c.violations[0].invariant, Invariant::PromiseKept);
        // Nor does a hand-over in a term other than the one right before the
        // vote's: that TimeoutNow cannot have started this campaign.
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_promise(3, Nanos(100 * MS), &n2, None, Term(14));
        c.on_abdicate(1, &n2, Term(14));
        c.check_vote(0, 3, &n4, Nanos(190 * MS), (&n3, None), Term(16), Some(&n2));
        assert_eq!(c.violations[0].invariant, Invariant::PromiseKept);
    }

    fn vote(from: &str, to: &str, term: u64) -> Envelope {
        Envelope {
            version: crate::core::PROTOCOL_VERSION,
            cluster_id: "sim".into(),
            from: NodeId::new(from),
            to: NodeId::new(to),
            term: Term(term),
            body: Body::VoteResponse { granted: true },
            from_incarnation: None,
            to_incarnation: None,
            group: None,
            config: None,
            position: None,
        }
    }

    #[test]
    fn a_wiped_node_voting_again_below_the_term_it_lost_is_the_known_hole_and_nothing_else_is() {
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_send(0, 2, &vote("n3", "n1", 4));
        c.on_wipe(2, Term(4));
        c.on_send(MS, 2, &vote("n3", "n2", 4));
        assert_eq!(c.violations.len(), 1);
        assert_eq!(c.violations[0].invariant, Invariant::WipedVote, "{}", c.violations[0]);
        assert!(c.violations[0].invariant.is_known_open() && !c.violations[0].invariant.is_safety());
        // The same double vote by a node that lost no state is a failure.
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_send(0, 2, &vote("n3", "n1", 4));
        c.on_crash(2);
        c.on_send(MS, 2, &vote("n3", "n2", 4));
        assert_eq!(c.violations[0].invariant, Invariant::OneVotePerTerm);
        // Leases of terms no wiped node voted in below its lost term must
        // never overlap, wipes or not.
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_wipe(2, Term(4));
        c.on_send(0, 2, &vote("n3", "n1", 5));
        c.on_view(0, 0, &view("n1", Role::Leader, 5), Some(900 * MS));
        c.on_view(800 * MS, 1, &view("n2", Role::Leader, 6), Some(1700 * MS));
        assert_eq!(c.violations[0].invariant, Invariant::LeaseExclusive);
    }

    #[test]
    fn a_promise_lost_in_a_crash_before_it_left_binds_nothing() {
        let (n1, n2, n3) = (NodeId::new("n1"), NodeId::new("n2"), NodeId::new("n3"));
        let mut c = Checker::new(Duration::from_secs(1));
        c.on_promise_decided(2, Nanos(100 * MS), &n1, None, Term(1));
        c.on_crash(2);
        c.check_vote(0, 2, &n3, Nanos(200 * MS), (&n2, None), Term(2), None);
        assert!(c.violations.is_empty());
        c.on_promise_decided(2, Nanos(300 * MS), &n1, None, Term(1));
        c.check_vote(0, 2, &n3, Nanos(400 * MS), (&n2, None), Term(2), None);
        assert_eq!(c.violations[0].invariant, Invariant::PromiseKept, "a decided promise binds before it is sent");
    }
}
