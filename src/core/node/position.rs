//! Replication positions (docs/safety.md, "Replication positions"): the
//! fence that says which leader's writes the local database may take, and
//! the voter's rule that refuses a candidate behind it.

use super::{Node, RoleState};
use crate::core::message::Envelope;
use crate::core::message::{MANAGED_PROTOCOL_VERSION, POSITIONS_PROTOCOL_VERSION, PROTOCOL_VERSION};
use crate::core::{Event, Mode, Nanos, NodeId, Position, PositionRefusal, Term};

impl Node {
    /// Does this node accept a message of `version`? A managed node takes
    /// protocol 2 and 3 (a node that uses no positions ignores them).
    pub(super) fn accepts(&self, version: u32) -> bool {
        match self.cfg.mode {
            Mode::Static => version == PROTOCOL_VERSION,
            Mode::Managed { .. } => (MANAGED_PROTOCOL_VERSION..=POSITIONS_PROTOCOL_VERSION).contains(&version),
        }
    }

    /// Replication positions (docs/safety.md): the leader whose writes the
    /// local database may confirm now, and its term: the one this node
    /// follows in its current term, while its promise to it holds. Once
    /// the promise ends the database must stop confirming (a fence: stop
    /// the WAL receiver) before the position it votes with is read, so
    /// that no write it confirms is missing from that read. None on a
    /// leader (its database is the primary) and between leaders.
    pub fn replication_source(&self, now: Nanos) -> Option<(NodeId, Term)> {
        let l = self.leader.as_ref()?;
        let following = matches!(self.role, RoleState::Follower) && l.id != self.cfg.node_id;
        let promised = now < self.promise.until && self.promise.is_to(&l.id, l.incarnation);
        (following && promised).then(|| (l.id.clone(), self.hard.term))
    }

    /// Replication positions (docs/safety.md): may this voter grant `m`'s
    /// candidate? Only if its own position was read after the last lease
    /// it acked or held ended, and after its boot promise, and the
    /// candidate's, carried in the request, is at least as far. A promise
    /// to itself as a candidate does not count: a voter that campaigned
    /// holds no write of that campaign. A voter that uses no positions
    /// grants as before. None: allowed.
    pub(super) fn position_refusal(&self, m: &Envelope) -> Option<PositionRefusal> {
        // A node upgrading to a managed group (rule 11) speaks protocol 1,
        // which carries no position: positions count from the conversion.
        let upgrading = self.cfg.upgrading.is_some() && self.cfg.mode == Mode::Static;
        if !self.cfg.positions || upgrading || self.cfg.broken.votes_ignore_positions {
            return None;
        }
        let Some((mine, read_at)) = self.position else { return Some(PositionRefusal::Unknown) };
        // A former leader's own database took its application's writes
        // until the deadline it published, even after a hand-over cut its
        // lease short (found by review).
        if read_at < self.boot_promise_until.max(self.acked_until).max(self.deadline_given) {
            return Some(PositionRefusal::Stale);
        }
        match m.position {
            Some(theirs) if theirs >= mine => None,
            _ => Some(PositionRefusal::Behind),
        }
    }

    /// Applies [`Node::position_refusal`] to a request every other rule
    /// grants (`otherwise`), and reports a refusal for the position alone.
    pub(super) fn position_allows(&mut self, m: &Envelope, otherwise: bool) -> bool {
        if !otherwise {
            return false;
        }
        match self.position_refusal(m) {
            None => true,
            Some(reason) => {
                self.out.events.push(Event::PositionRefused { candidate: m.from.clone(), reason });
                false
            }
        }
    }

    /// The local database's position as last read, and when the read
    /// started (`Config::positions`).
    pub fn position(&self) -> Option<(Position, Nanos)> {
        self.position
    }
}
