//! The simulated world's part in managed groups (DESIGN §2b): drawing
//! incarnations, judging learners, and whether the group can elect and has
//! converged.

use std::collections::BTreeSet;

use super::{Verbosity, World};
use crate::core::rng::SplitMix64;
use crate::core::{Body, Identity, Incarnation, Input, NodeId, Outputs};

impl World {
    /// Managed groups: could the group elect? True if the newest
    /// configuration any running node holds lists a majority of running
    /// identities, one of them able to lead (priority above 0), or if no
    /// node holds any and a genesis can still form. (A node that holds an
    /// older one adopts the newest as soon as it hears of it.)
    pub fn electable(&self) -> bool {
        let newest = self
            .slots
            .iter()
            .filter_map(|s| s.node.as_ref().and_then(|n| n.configuration()))
            .max_by(|a, b| a.stamp().cmp(&b.stamp()));
        let Some(c) = newest else {
            if self.cfg.upgrade {
                return self.upgrade_can_convert();
            }
            // A genesis can form only for the first generation (rule 9);
            // after a later one the operator must create the group.
            return self.generation <= 1;
        };
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.node.is_some() && c.lists(&Identity::new(s.id.clone(), s.life))
            })
            .collect();
        running.len() >= crate::core::lease::quorum(c.voters.len())
            && running.iter().any(|&i| self.cfg.priorities[i] > 0)
    }

    /// Managed groups: does some live node hold a configuration that
    /// lists exactly the current identity of every desired node?
    pub fn converged(&self) -> bool {
        let all: BTreeSet<Identity> =
            self.desired.iter().map(|&i| Identity::new(self.slots[i].id.clone(), self.slots[i].life)).collect();
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

    fn desired_names(&self) -> BTreeSet<NodeId> {
        self.desired.iter().map(|&i| self.slots[i].id.clone()).collect()
    }

    /// Node `i` reads the desired set (its file, as it is now).
    pub(super) fn read_desired(&mut self, i: usize) {
        let names = self.desired_names();
        let generation = self.generation;
        if self.slots[i].node.is_some() && !self.slots[i].paused {
            self.step(i, Input::Desired { names, generation });
        }
    }

    /// The operator changes the desired set: adds node `add` (scaled down
    /// before: it comes back with a new volume) or removes node `remove`
    /// (stopped, as a StatefulSet stops its highest ordinals, once the
    /// group removed it or after a timeout). Each node
    /// reads the new set after its own delay of up to two leases, so the
    /// sets arrive late, out of order, or (for one in five nodes) not at
    /// all until the next change or the node's restart.
    pub fn change_desired(&mut self, add: Option<usize>, remove: Option<usize>) {
        let ttl = self.cfg.lease_ttl.as_nanos() as u64;
        if let Some(i) = add {
            self.desired.insert(i);
            let at = self.now + 1 + self.rng.below(ttl);
            self.at(at, Box::new(move |w: &mut World| w.scale_up(i)));
        }
        if let Some(i) = remove {
            self.desired.remove(&i);
            let at = self.now + 1 + self.rng.below(ttl);
            self.at(at, Box::new(move |w: &mut World| w.scale_down(i, at)));
        }
        self.generation += 1;
        let (names, generation) = (self.desired_names(), self.generation);
        self.note(Verbosity::Events, |_| format!("desired set {names:?} (generation {generation})"));
        for i in 0..self.slots.len() {
            if self.rng.chance(0.2) {
                continue;
            }
            let names = names.clone();
            let at = self.now + 1 + self.rng.below(2 * ttl);
            self.at(
                at,
                Box::new(move |w: &mut World| {
                    if w.slots[i].node.is_some() && !w.slots[i].paused {
                        w.step(i, Input::Desired { names, generation });
                    }
                }),
            );
        }
    }

    /// Stops node `i` once no running node's configuration lists it (the
    /// chart's pre-stop wait), or after twenty leases whatever it holds.
    fn scale_down(&mut self, i: usize, since: u64) {
        if self.desired.contains(&i) {
            return;
        }
        let me = Identity::new(self.slots[i].id.clone(), self.slots[i].life);
        let listed =
            self.slots.iter().filter_map(|s| s.node.as_ref().and_then(|n| n.configuration())).any(|c| c.lists(&me));
        let ttl = self.cfg.lease_ttl.as_nanos() as u64;
        if listed && self.now < since + 20 * ttl {
            let at = self.now + ttl / 2;
            self.at(at, Box::new(move |w: &mut World| w.scale_down(i, since)));
            return;
        }
        self.crash(i);
        self.scaled_down.insert(i);
    }

    fn scale_up(&mut self, i: usize) {
        if self.desired.contains(&i) && self.scaled_down.remove(&i) {
            self.wipe(i);
            self.restart(i);
        }
    }

    pub fn desired(&self) -> &BTreeSet<usize> {
        &self.desired
    }

    /// The operator's recovery of a group that cannot elect any more
    /// (rule 10): every desired node is restarted with `--force-new-group`
    /// naming the group the newest configuration belongs to. A node that
    /// holds a configuration of it leaves it as a new identity; every one
    /// of them may then take part in a genesis whatever the generation.
    pub fn force_new_group(&mut self) {
        // The group named: the newest one a desired node holds.
        let group = self
            .desired
            .iter()
            .filter_map(|&i| {
                self.slots[i].disk.as_ref().and_then(|d| d.members.as_ref()).and_then(|m| m.config.as_ref())
            })
            .max_by(|a, b| a.stamp().cmp(&b.stamp()))
            .map(|c| c.group);
        self.forced = group;
        match group {
            // No desired node holds a group: the operator writes the desired
            // set as its first generation again, and every node restarts
            // (only the clocks floor the new terms then, rule 9).
            None => self.generation = 1,
            // The operator's clocks may all be far behind: the new group's
            // terms must come from above the terms the leavers saw.
            Some(_) => {
                for skew in &mut self.cfg.wall_skew_us {
                    *skew -= FORCED_CLOCKS_BEHIND_US;
                }
            }
        }
        let desired: Vec<usize> = self.desired.iter().copied().collect();
        for i in desired {
            self.crash(i);
            let fresh = if self.cfg.breakage.forced_keeps_identity {
                self.slots[i].life
            } else {
                draw_incarnation(&mut self.lives)
            };
            let left = match (group, self.slots[i].disk.as_mut().and_then(|d| d.members.as_deref_mut())) {
                (Some(g), Some(m)) => m.force_new_group(g, fresh),
                _ => false,
            };
            if left && fresh != self.slots[i].life {
                self.checker.on_blank_boot(self.now, i, &self.slots[i].id, fresh);
                self.slots[i].life = fresh;
            }
            self.note(Verbosity::Events, |w| {
                format!("{} restarted with --force-new-group (left: {left})", w.slots[i].id)
            });
            self.scaled_down.remove(&i);
            self.restart(i);
        }
    }

    /// Could a forced genesis elect? Some desired node may lead.
    pub fn may_lead(&self) -> bool {
        self.desired.iter().any(|&i| self.cfg.priorities[i] > 0)
    }

    /// After the heal every running node reads the final desired set.
    pub fn read_desired_everywhere(&mut self) {
        for i in 0..self.slots.len() {
            self.read_desired(i);
        }
    }
}

/// How far every clock is set back at a forced recovery: 30 minutes.
const FORCED_CLOCKS_BEHIND_US: i64 = 30 * 60 * 1_000_000;

/// A fresh incarnation: 128 random bits, never zero.
pub(super) fn draw_incarnation(rng: &mut SplitMix64) -> Incarnation {
    let n = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
    Incarnation(n.max(1))
}
