//! The voter's and the candidate's half of [`Node`]: pre-votes and votes
//! (DESIGN §2 rules 1, 4 and 7; in a managed group §2b rule 1, by
//! identity).

use std::cmp::Ordering;

use super::{Node, RoleState};
use crate::core::lease::quorum;
use crate::core::message::{Body, Envelope, RejectReason};
use crate::core::{Event, Nanos, NodeId, Term};

impl Node {
    pub(super) fn on_pre_vote_request(&mut self, now: Nanos, m: &Envelope, next_term: Term) {
        // Rule 4: granted only if the voter's promise has expired (or is to
        // this very candidate) and the candidate's term would not be stale.
        let otherwise = next_term > self.hard.term
            && m.term < next_term
            && self.is_voter()
            && self.counts(m)
            && self.config_at_least_mine(m)
            && self.may_vote_for(now, &m.from, m.from_incarnation, None, next_term)
            && !self.pre_vote_held_for_another(now, &m.from, next_term);
        let granted = self.position_allows(m, otherwise);
        if granted {
            self.pre_vote_hold = Some((next_term, m.from.clone(), now.plus(self.cfg.heartbeat_interval)));
            if self.yields_pre_vote_to(&m.from, next_term) {
                self.out.events.push(Event::PreVoteFailed { next_term });
                self.become_follower(now);
            }
        }
        self.send(m.from.clone(), Body::PreVoteResponse { next_term, granted });
    }

    /// Liveness only (pre-votes bind nothing): a pre-candidate that grants
    /// the pre-vote of a rival for the same term with a smaller node id gives
    /// up its own. Two pre-candidates that ask each other at once would
    /// otherwise both win their pre-votes, both campaign and split the real
    /// vote, which costs a whole vote round; their turns
    /// (`succession_delay`) keep them apart only while both processes run
    /// on time, and a stalled machine or a throttled container wakes them
    /// together. The one with the smaller id still grants the other: if its
    /// own round is stuck (its requests lost), it does not hold back a
    /// rival that can win.
    fn yields_pre_vote_to(&self, candidate: &NodeId, next_term: Term) -> bool {
        match &self.role {
            RoleState::PreCandidate { next_term: mine, .. } => *mine == next_term && *candidate < self.cfg.node_id,
            _ => false,
        }
    }

    /// Liveness only (pre-votes bind nothing): for one heartbeat interval
    /// after granting a pre-vote for a term, a node endorses no other
    /// candidate for that term. Otherwise every pre-candidate that asks
    /// within a round trip of the promises expiring wins its pre-vote, and
    /// they split the real vote.
    fn pre_vote_held_for_another(&self, now: Nanos, candidate: &NodeId, next_term: Term) -> bool {
        self.pre_vote_hold.as_ref().is_some_and(|(t, c, until)| *t >= next_term && c != candidate && now < *until)
    }

    pub(super) fn on_pre_vote_response(&mut self, now: Nanos, m: &Envelope, next_term: Term, granted: bool) {
        if !self.counts(m) {
            return;
        }
        let voters = self.voter_count();
        let RoleState::PreCandidate { next_term: want, granted: votes, refused, .. } = &mut self.role else {
            return;
        };
        if next_term != *want {
            return;
        }
        if !granted {
            // Once a win is impossible, give up now rather than at the
            // deadline, so the retry comes a jitter later, not a timeout.
            refused.insert(m.from.clone());
            if voters - refused.len() < quorum(voters) {
                self.out.events.push(Event::PreVoteFailed { next_term });
                self.become_follower(now);
            }
            return;
        }
        votes.insert(m.from.clone());
        if votes.len() < quorum(voters) {
            return;
        }
        // Re-check rule 1 at the moment of campaigning: a promise made to
        // another node since the pre-vote began forbids voting for itself.
        if self.may_campaign(now) {
            self.become_candidate(now, None);
        } else {
            self.become_follower(now);
        }
    }

    pub(super) fn on_vote_request(&mut self, now: Nanos, m: &Envelope, allowed_by_promise: bool) {
        if m.term < self.hard.term {
            self.reject(m, RejectReason::StaleTerm);
            self.send(m.from.clone(), Body::VoteResponse { granted: false });
            return;
        }
        let free = self.hard.voted_for.is_none()
            || (self.hard.voted_for.as_ref() == Some(&m.from) && self.hard.voted_incarnation == m.from_incarnation);
        // Membership rule 1: the candidate's configuration, adopted first
        // if newer (rule 2, in `on_message`), must be exactly this node's.
        let same_config = self.me().is_none() || self.carried_order(m) == Some(Ordering::Equal);
        let otherwise =
            free && self.storage_ok && allowed_by_promise && self.is_voter() && self.counts(m) && same_config;
        let granted = self.position_allows(m, otherwise);
        if granted {
            if self.hard.voted_for.is_none() {
                self.hard.voted_for = Some(m.from.clone());
                self.hard.voted_incarnation = m.from_incarnation;
                self.request_persist();
            }
            // The vote is a promise (rule 1): a pending pre-vote of this
            // node's own must not turn into a campaign that breaks it.
            if matches!(self.role, RoleState::PreCandidate { .. }) {
                self.become_follower(now);
            }
            self.promise_to(now, m.from.clone(), m.from_incarnation);
        }
        self.send(m.from.clone(), Body::VoteResponse { granted });
    }

    pub(super) fn on_vote_response(&mut self, now: Nanos, m: &Envelope, granted: bool) {
        if m.term < self.hard.term {
            self.reject(m, RejectReason::StaleTerm);
            return;
        }
        // A vote counts only from a voter that held this candidate's
        // configuration when it answered (membership rule 1).
        let same_config = self.me().is_none() || self.carried_order(m) == Some(Ordering::Equal);
        let counts = self.counts(m) && same_config;
        let RoleState::Candidate { granted: votes, .. } = &mut self.role else {
            return;
        };
        if granted && counts {
            votes.insert(m.from.clone());
            self.maybe_win(now);
        }
    }

    /// Membership rule 1 for a pre-vote: the candidate's configuration is
    /// this node's or newer (a static group has none).
    fn config_at_least_mine(&self, m: &Envelope) -> bool {
        self.me().is_none() || matches!(self.carried_order(m), Some(Ordering::Equal | Ordering::Greater))
    }
}
