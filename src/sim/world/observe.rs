//! What the simulated world reports to the checker at each step: the
//! promises and votes a step decides (rule 1) and the views nodes publish.

use super::fmt::fmt_view;
use super::{Verbosity, World};
use crate::core::{Body, Event, LeaderView, Nanos, NodeId, Outputs, Role};

impl World {
    /// Rule 1, checked at the step that decides a vote: is the voter free to
    /// vote for that candidate? Promises count from the step that makes them;
    /// one that a crash loses before its message leaves never existed.
    pub(super) fn check_promises(&mut self, i: usize, local: Nanos, out: &Outputs, transfer_from: Option<&NodeId>) {
        let me = self.slots[i].id.clone();
        // The node's identity, once it is a managed one (rule 11: an
        // upgrading node becomes one mid-run).
        let my_life = self.slots[i].node.as_ref().and_then(|n| n.incarnation());
        for e in &out.events {
            match e {
                Event::ElectionStarted { transfer, term } => {
                    let from = if *transfer { transfer_from } else { None };
                    self.checker.check_vote(self.now, i, &me, local, (&me, my_life), *term, from);
                    self.checker.on_promise_decided(i, local, &me, my_life, *term);
                }
                Event::TransferStarted { term, .. } => self.checker.on_abdicate(i, &me, *term),
                Event::Converted { .. } => {
                    let config = self.slots[i].node.as_ref().and_then(|n| n.configuration());
                    let listed = config.iter().flat_map(|c| &c.voters).map(|v| (v.name.clone(), v.incarnation));
                    self.checker.on_converted(i, listed.collect());
                }
                _ => {}
            }
        }
        for m in out.send_now.iter().chain(&out.send_after_persist) {
            match &m.body {
                Body::VoteResponse { granted: true } => {
                    let to = (&m.to, m.to_incarnation);
                    self.checker.check_vote(self.now, i, &me, local, to, m.term, transfer_from);
                    self.checker.on_promise_decided(i, local, &m.to, m.to_incarnation, m.term);
                }
                Body::HeartbeatAck { ok: true, .. } => {
                    self.checker.on_promise_decided(i, local, &m.to, m.to_incarnation, m.term)
                }
                Body::Heartbeat { .. } => self.checker.on_promise_decided(i, local, &me, my_life, m.term),
                _ => {}
            }
        }
    }

    pub(super) fn on_view(&mut self, i: usize, view: LeaderView) {
        let old = self.slots[i].view.replace(view.clone());
        let changed =
            old.as_ref().is_none_or(|o| (o.role, o.term, &o.leader_id) != (view.role, view.term, &view.leader_id));
        if changed {
            let id = self.slots[i].id.clone();
            self.note(Verbosity::Events, |_| fmt_view(&id, &view));
        }
        let lease_end = view.lease_until.map(|u| self.slots[i].clock.to_true(u));
        let was_leading = self.checker.lease_active_at(self.now);
        self.checker.on_view(self.now, i, &view, lease_end);
        let leading = view.role == Role::Leader && lease_end.is_some_and(|e| e > self.now);
        if leading {
            self.db_on_lease(i, view.term);
        }
        if leading && self.heal_at.is_some() && self.leader_since_heal.is_none() {
            self.leader_since_heal = Some(self.now);
        }
        if leading && !was_leading {
            if let Some(from) = self.failover_from.take() {
                self.failovers.push(self.now - from);
            }
        }
    }
}
