//! The invariant checker. It sits outside the nodes and sees only what an
//! observer could: the views the nodes publish (converted to *true* time with
//! each node's clock) and the messages they put on the wire. Every check runs
//! at the event that could break it.

use std::collections::BTreeMap;
use std::fmt;

use crate::core::{Body, Envelope, LeaderView, NodeId, Role, Term};

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
    /// After the faults stop, a leader within the stated bound.
    Liveness,
}

impl Invariant {
    pub fn is_safety(self) -> bool {
        self != Invariant::Liveness
    }
    pub fn name(self) -> &'static str {
        match self {
            Invariant::OneLeaderPerTerm => "one-leader-per-term",
            Invariant::LeaseExclusive => "lease-exclusive",
            Invariant::TokenOrder => "token-order",
            Invariant::TokenMonotonicPerNode => "token-monotonic-per-node",
            Invariant::TermDurable => "term-durable",
            Invariant::OneVotePerTerm => "one-vote-per-term",
            Invariant::Liveness => "liveness",
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
    votes: BTreeMap<(usize, Term), NodeId>,
    pub violations: Vec<Violation>,
}

impl Checker {
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
                    self.violate(t, Invariant::OneLeaderPerTerm, detail);
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
        match lease_end {
            Some(end) if role == Role::Leader && end > t => self.lease_held(t, node, name, term, end),
            _ => self.lease_not_held(t, node),
        }
    }

    fn lease_held(&mut self, t: u64, node: usize, name: &NodeId, token: Term, end: u64) {
        let idx = match self.current.get(&node).copied() {
            // The same leadership, still running: move its end (a transfer
            // shortens it, a heartbeat round extends it).
            Some(i) if self.leases[i].token == token && self.leases[i].end > t => {
                self.leases[i].end = end;
                i
            }
            _ => {
                let new_leadership = !self.leases.iter().any(|r| r.node == node && r.token == token);
                if new_leadership {
                    if let Some(high) = self.highest_token_started {
                        if token <= high {
                            let detail = format!("{name} began a lease with token {token} after token {high}");
                            self.violate(t, Invariant::TokenOrder, detail);
                        }
                    }
                    self.highest_token_started = Some(self.highest_token_started.map_or(token, |h| h.max(token)));
                }
                self.leases.push(LeaseRecord { node, token, start: t, end });
                self.leases.len() - 1
            }
        };
        self.current.insert(node, idx);
        let me = self.leases[idx].clone();
        let clash = self.leases.iter().find(|o| o.token != me.token && o.start < me.end && me.start < o.end).cloned();
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
            self.violate(t, Invariant::LeaseExclusive, detail);
        }
    }

    fn lease_not_held(&mut self, t: u64, node: usize) {
        if let Some(&i) = self.current.get(&node) {
            if self.leases[i].end > t {
                self.leases[i].end = t;
            }
        }
    }

    /// A crashed node's lease is *not* cut short: its application may still
    /// act on the deadline it last read, so the record runs to its end.
    pub fn on_crash(&mut self, node: usize) {
        self.current.remove(&node);
    }

    /// True if some node holds a lease at true time `t`.
    pub fn lease_active_at(&self, t: u64) -> bool {
        self.leases.iter().any(|r| r.start <= t && t < r.end)
    }

    /// A message left `node` (it reached the wire).
    pub fn on_send(&mut self, t: u64, node: usize, m: &Envelope) {
        let sent = self.term_sent.entry(node).or_default();
        if m.term < *sent {
            let detail = format!("{} sent term {} after having sent term {}", m.from, m.term, sent);
            self.violate(t, Invariant::TermDurable, detail);
        } else {
            *sent = m.term;
        }
        if let Body::VoteResponse { granted: true } = m.body {
            match self.votes.get(&(node, m.term)) {
                Some(c) if *c != m.to => {
                    let detail = format!("{} voted for {} and {} in term {}", m.from, c, m.to, m.term);
                    self.violate(t, Invariant::OneVotePerTerm, detail);
                }
                _ => {
                    self.votes.insert((node, m.term), m.to.clone());
                }
            }
        }
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
