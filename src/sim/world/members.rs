//! The simulated world's part in managed groups (DESIGN §2b): drawing
//! incarnations, judging learners, and whether the group can elect and has
//! converged.

use std::collections::BTreeSet;

use super::World;
use crate::core::rng::SplitMix64;
use crate::core::{Body, Identity, Incarnation, Outputs};

impl World {
    /// Managed groups: could the group elect? True if some configuration
    /// has a majority of its voters alive as the identity it lists and
    /// holding it, one of them able to lead (priority above 0), or if no
    /// node holds any (a genesis can still form).
    pub fn electable(&self) -> bool {
        let held: Vec<&crate::core::Configuration> =
            self.slots.iter().filter_map(|s| s.node.as_ref().and_then(|n| n.configuration())).collect();
        if held.is_empty() {
            return true;
        }
        held.iter().any(|c| {
            let holding: Vec<usize> = (0..self.slots.len())
                .filter(|&i| {
                    let s = &self.slots[i];
                    c.lists(&Identity::new(s.id.clone(), s.life))
                        && s.node.as_ref().and_then(|n| n.configuration()).is_some_and(|h| h.group == c.group)
                })
                .collect();
            holding.len() >= crate::core::lease::quorum(c.voters.len())
                && holding.iter().any(|&i| self.cfg.priorities[i] > 0)
        })
    }

    /// Managed groups: does some live node hold a configuration that
    /// lists exactly every node's current identity?
    pub fn converged(&self) -> bool {
        let all: BTreeSet<Identity> = self.slots.iter().map(|s| Identity::new(s.id.clone(), s.life)).collect();
        self.slots.iter().filter_map(|s| s.node.as_ref().and_then(|n| n.configuration())).any(|c| c.voters == all)
    }

    /// The membership invariant a step can break: learners never grant,
    /// campaign or lead.
    pub(super) fn check_membership(&mut self, i: usize, out: &Outputs) {
        let Some(node) = self.slots[i].node.as_ref() else { return };
        // Judged from what the node holds, not from the node's own answer.
        let life = self.slots[i].life;
        let me = Identity::new(self.slots[i].id.clone(), life);
        let voter = node.configuration().is_some_and(|c| c.lists(&me));
        for m in out.send_now.iter().chain(&out.send_after_persist) {
            let acts = match m.body {
                Body::VoteResponse { granted } => granted,
                Body::VoteRequest { .. } | Body::Heartbeat { .. } => true,
                _ => false,
            };
            if acts && !voter {
                let what = m.body.kind();
                let detail = format!("{} ({life}) is not a voter of what it holds, and sent {what}", m.from);
                self.checker.learner_acted(self.now, detail);
            }
        }
    }
}

/// A fresh incarnation: 128 random bits, never zero.
pub(super) fn draw_incarnation(rng: &mut SplitMix64) -> Incarnation {
    let n = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
    Incarnation(n.max(1))
}
