//! The simulated world's part in rule 11 (docs/safety.md): a static group
//! restarted node by node with `--peers-file`, the hellos that tell each
//! node what its peers are, and when the group can still convert.

use super::World;
use crate::core::lease::quorum;
use crate::core::{static_digest, Incarnation, Input, NodeId, PeerKind};

impl World {
    /// Does node `i` run as a managed identity? In a managed world always;
    /// in an upgrade, once restarted with `--peers-file` and holding no
    /// static state (a blank node, or one whose group converted).
    pub(super) fn runs_managed(&self, i: usize) -> bool {
        let s = &self.slots[i];
        self.cfg.membership || (s.upgraded && s.disk.as_ref().is_none_or(|d| d.members.is_some()))
    }

    /// The incarnation of an upgrading static node (rule 11), or None.
    pub(super) fn upgrading(&self, i: usize) -> Option<Incarnation> {
        let s = &self.slots[i];
        (self.cfg.upgrade && s.upgraded && !self.runs_managed(i)).then_some(s.life)
    }

    /// What node `i` says of itself in its hello.
    fn peer_kind(&self, i: usize) -> PeerKind {
        let life = self.slots[i].life;
        if self.runs_managed(i) {
            let blank = self.slots[i].disk.as_ref().and_then(|d| d.members.as_ref()).is_none_or(|m| m.config.is_none());
            PeerKind::Managed { incarnation: life, blank }
        } else if self.upgrading(i).is_some() {
            let names: std::collections::BTreeSet<NodeId> = self.slots.iter().map(|s| s.id.clone()).collect();
            PeerKind::Upgrading { incarnation: life, digest: static_digest(&names) }
        } else {
            PeerKind::Static
        }
    }

    /// Node `i` (re)started: its connections open, and each side learns
    /// what the other is from its hello.
    pub(super) fn exchange_hellos(&mut self, i: usize) {
        let kind = self.peer_kind(i);
        let name = self.slots[i].id.clone();
        for j in 0..self.slots.len() {
            if j == i || self.slots[j].node.is_none() || self.slots[j].paused {
                continue;
            }
            let theirs = self.peer_kind(j);
            let their_name = self.slots[j].id.clone();
            self.step(j, Input::Peer { name: name.clone(), kind });
            self.step(i, Input::Peer { name: their_name, kind: theirs });
        }
    }

    /// The rolling upgrade restarts node `i` with `--peers-file`.
    pub fn upgrade_node(&mut self, i: usize) {
        if self.slots[i].upgraded {
            return;
        }
        self.crash(i);
        self.slots[i].upgraded = true;
        self.note(super::Verbosity::Events, |w| format!("{} restarts with --peers-file", w.slots[i].id));
        self.restart(i);
    }

    /// An upgrade no node's configuration came of yet: can it still
    /// convert? The static nodes must be able to elect, and at most one
    /// voter may have come back managed after losing its volume.
    pub(super) fn upgrade_can_convert(&self) -> bool {
        let n = self.slots.len();
        let lost = (0..n).filter(|&i| self.runs_managed(i)).count();
        let static_up = (0..n).filter(|&i| self.slots[i].node.is_some() && !self.runs_managed(i)).count();
        lost <= 1 && static_up >= quorum(n) && (0..n).any(|i| !self.runs_managed(i) && self.cfg.priorities[i] > 0)
    }
}
