//! The simulated world's databases (issue: PostgreSQL, position-aware
//! elections): one per node, each a history of write ids. The lease
//! holder's application writes; its database streams each write to the
//! others over the simulated network, and the write is acknowledged to its
//! client once a majority of databases (the primary's included) holds it,
//! before the writer's lease ends (synchronous replication to a majority,
//! checked against the deadline). A database that receives a write that
//! does not follow its own history rewinds to the sender's (`pg_rewind`).
//!
//! The invariant: every new leader's database holds every write
//! acknowledged before it took over (`acked-write-kept`). Elections that
//! ignore replication positions break it; this module is the check the
//! position-aware rule will be held to.

use std::collections::BTreeMap;

use super::World;
use crate::core::lease::quorum;
use crate::core::rng::SplitMix64;
use crate::core::{Input, Position, Term};

/// Every node's database, and the writes in flight and acknowledged.
#[derive(Debug)]
pub struct Databases {
    /// Each node's history: write ids in order. Ids are unique, and a
    /// database only ever gets an id with the history before it, so two
    /// histories that hold one id at one index agree before it.
    pub(super) history: Vec<Vec<u64>>,
    /// The leadership (token) each node's database last became primary
    /// for.
    primary_for: Vec<Option<Term>>,
    /// Writes waiting for a majority: id -> (writer, index, true time its
    /// writer's lease ends).
    pending: BTreeMap<u64, (usize, usize, u64)>,
    /// Acknowledged writes: (index, id).
    pub(super) acked: Vec<(usize, u64)>,
    /// The token of the leadership each write was made under, by id: the
    /// branch a history ends on (see [`World::db_position`]).
    token_of: Vec<Term>,
    next_id: u64,
    rng: SplitMix64,
}

impl Databases {
    pub fn new(nodes: usize, seed: u64) -> Self {
        Databases {
            history: vec![Vec::new(); nodes],
            primary_for: vec![None; nodes],
            pending: BTreeMap::new(),
            acked: Vec::new(),
            token_of: vec![Term(0)],
            next_id: 1,
            rng: SplitMix64::new(seed ^ 0x00DA_7ABA_5E00),
        }
    }
}

impl World {
    /// The lease holder's application writes once (if any node holds a
    /// lease): appended to its database, streamed to every other one.
    pub fn app_write(&mut self) {
        let Some(i) = self.leaseholder() else { return };
        let Some(end) = self.slots[i].view.as_ref().and_then(|v| v.lease_until).map(|u| self.slots[i].clock.to_true(u))
        else {
            return;
        };
        let token = self.slots[i].view.as_ref().map_or(Term(0), |v| v.term);
        let Some(db) = self.db.as_mut() else { return };
        let id = db.next_id;
        db.next_id += 1;
        db.token_of.push(token);
        db.history[i].push(id);
        let index = db.history[i].len() - 1;
        db.pending.insert(id, (i, index, end));
        for j in 0..self.slots.len() {
            if j != i {
                self.stream(i, j, index);
            }
        }
        self.maybe_ack(id);
    }

    /// Every running sidecar that is not paused reads its database's
    /// position (`--position-exec`).
    pub fn read_positions(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].node.is_some() && !self.slots[i].paused {
                let p = self.db_position(i).map(|(branch, at)| Position { branch, at });
                let read_at = self.local_now(i);
                self.step(i, Input::Position { position: p, read_at });
            }
        }
    }

    /// Streams `from`'s write at `index` to `to`, over the network. The
    /// databases' links are their own: a partition of the sidecars does
    /// not stop replication (only random loss does).
    fn stream(&mut self, from: usize, to: usize, index: usize) {
        let Some(db) = self.db.as_mut() else { return };
        if db.rng.chance(self.net.loss) {
            return;
        }
        let span = self.net.max_delay.saturating_sub(self.net.min_delay).as_nanos() as u64;
        let delay = self.net.min_delay.as_nanos() as u64 + db.rng.below(span + 1);
        let id = db.history[from][index];
        let at = self.now + delay.max(1);
        self.at(at, Box::new(move |w: &mut World| w.receive(from, to, index, id)));
    }

    /// `to`'s database receives `from`'s write `id` at `index`: applied in
    /// order, or by copying the sender's history up to it when `to` lags or
    /// went another way (a rewind). A database whose node is down (the
    /// process and PostgreSQL with it) receives nothing.
    fn receive(&mut self, from: usize, to: usize, index: usize, id: u64) {
        if self.slots[to].node.is_none() {
            return;
        }
        let leads = self.holds_lease(to);
        // The fence: a database takes (and so confirms) a primary's writes
        // only while its sidecar follows that primary's leadership under a
        // promise that holds.
        let local = self.local_now(to);
        let source = self.slots[to].node.as_ref().and_then(|n| n.replication_source(local));
        let fenced = !self.cfg.breakage.unfenced_replication;
        let Some(db) = self.db.as_mut() else { return };
        let writer = (self.slots[from].id.clone(), db.token_of[id as usize]);
        if fenced && source.as_ref() != Some(&writer) {
            return;
        }
        if db.history[from].get(index) != Some(&id) || db.history[to].get(index) == Some(&id) {
            return;
        }
        // The sender went another way since, or the receiver has it.
        // A database never rewinds onto an older branch than its own, and
        // a lease holder's never rewinds (PostgreSQL follows only a newer
        // primary; a primary follows no one).
        let branch = |h: &[u64]| h.last().map_or(Term(0), |id| db.token_of[*id as usize]);
        let diverges = db.history[to].len() > index
            || (index > 0 && db.history[to].get(index - 1) != db.history[from].get(index - 1));
        if diverges && (leads || branch(&db.history[from][..=index]) < branch(&db.history[to])) {
            return;
        }
        let follows = index == 0 || db.history[to].get(index - 1) == db.history[from].get(index - 1);
        if follows && db.history[to].len() == index {
            db.history[to].push(id);
        } else {
            db.history[to] = db.history[from][..=index].to_vec();
        }
        self.maybe_ack(id);
    }

    /// A write held by a majority of databases, its writer up and its lease
    /// not yet over, is acknowledged to the client.
    fn maybe_ack(&mut self, id: u64) {
        // The synchronous standbys are the voters of the writer's
        // configuration (all nodes in a static group): a learner's
        // database confirms nothing (`synchronous_standby_names` names
        // the voters).
        let Some(&(writer, _, _)) = self.db.as_ref().and_then(|d| d.pending.get(&id)) else { return };
        let config = self.slots[writer].node.as_ref().and_then(|n| n.configuration());
        let listed = |j: usize| {
            config.is_none_or(|c| c.lists(&crate::core::Identity::new(self.slots[j].id.clone(), self.slots[j].life)))
        };
        let voters: Vec<usize> = (0..self.slots.len()).filter(|&j| listed(j)).collect();
        let size = config.map_or(self.slots.len(), |c| c.voters.len());
        let Some(db) = self.db.as_mut() else { return };
        let Some(&(writer, index, end)) = db.pending.get(&id) else { return };
        let holders = voters.iter().filter(|&&j| db.history[j].get(index) == Some(&id)).count();
        if self.now >= end || self.slots[writer].node.is_none() {
            db.pending.remove(&id);
            return;
        }
        if holders >= quorum(size) {
            db.pending.remove(&id);
            db.acked.push((index, id));
        }
    }

    /// Node `i`'s replication position: the token under which the last
    /// write of its history was made, then its length. Compared in this
    /// order, as Raft compares logs by last term, then index: a history
    /// that ends on a later leadership's write holds every write a
    /// majority held before that leadership began, however short it is.
    /// A length alone does not: a database left on a branch no later
    /// leader continued can be longer than every history that holds the
    /// later leaders' acknowledged writes (the simulator shows it).
    pub fn db_position(&self, i: usize) -> Option<(Term, u64)> {
        let db = self.db.as_ref()?;
        let h = &db.history[i];
        let last = h.last().map_or(Term(0), |id| db.token_of[*id as usize]);
        Some((last, h.len() as u64))
    }

    /// Can no node that may lead win the votes of a majority under the
    /// position rule? Each voter grants only a candidate at least as far
    /// as itself, so if every running node that may lead is behind more
    /// than a minority of the running voters (a priority-0 node ahead of
    /// all the others, say), the group waits: by design, a write only
    /// such nodes hold may have been acknowledged.
    pub fn positions_block(&self) -> bool {
        let Some(_) = self.db.as_ref() else { return false };
        let running: Vec<usize> = (0..self.slots.len()).filter(|&i| self.slots[i].node.is_some()).collect();
        let voters: Vec<usize> =
            running.iter().copied().filter(|&i| self.slots[i].node.as_ref().is_some_and(|n| n.is_voter())).collect();
        let size = self
            .slots
            .iter()
            .filter_map(|s| s.node.as_ref())
            .find_map(|n| n.configuration())
            .map_or(self.slots.len(), |c| c.voters.len());
        !voters.iter().any(|&c| {
            let pc = self.db_position(c);
            let behind = voters.iter().filter(|&&v| self.db_position(v) <= pc).count();
            self.cfg.priorities[c] > 0 && behind >= quorum(size)
        })
    }

    /// Node `i` holds a lease of `token`: the first time for this token,
    /// its database becomes the primary, and must hold every write
    /// acknowledged so far.
    pub(super) fn db_on_lease(&mut self, i: usize, token: Term) {
        let Some(db) = self.db.as_mut() else { return };
        if db.primary_for[i] == Some(token) {
            return;
        }
        db.primary_for[i] = Some(token);
        let missing = db.acked.iter().find(|(index, id)| db.history[i].get(*index) != Some(id)).copied();
        if let Some((index, id)) = missing {
            let name = self.slots[i].id.clone();
            let detail = format!(
                "{name} leads with token {token} without acknowledged write {id} (position {}; its database is at {})",
                index + 1,
                db.history[i].len()
            );
            self.checker.acked_write_lost(self.now, i, token, detail);
        }
    }
}
