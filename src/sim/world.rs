//! The simulated world: N nodes, each with its own clock and disk, a network
//! between them, and one event queue ordered by true time. It plays the
//! driver's part for every node exactly as [`crate::core::Outputs`] demands
//! (unless told to break a rule on purpose, see [`Breakage`]), and reports
//! every view and every message to the [`Checker`].

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use super::check::{fmt_ns, Checker};
use super::clock::Clock;

mod config;
mod db;
mod fmt;
mod members;
mod observe;
mod upgrade;

pub use config::{Breakage, NetConfig, WorldConfig};

use crate::core::outbox::{Held, Outbox};
use crate::core::rng::SplitMix64;
use crate::core::{
    AdminRequest, Body, Config, Envelope, Event, GroupUid, HardState, Incarnation, Input, LeaderView, Mode, Nanos,
    Node, NodeId, Outputs,
};
use fmt::{fmt_event, fmt_vote};
use members::draw_incarnation;

/// The simulated wall clock's reading at true time zero, in microseconds
/// since 1970 (2023-11-14): genesis floors are wall-clock readings.
pub const WALL_EPOCH_US: u64 = 1_700_000_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    /// Role changes, persists, rejections, faults.
    Events,
    /// Plus every message sent, delivered and dropped.
    Messages,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: usize,
        msg: Box<Envelope>,
    },
    Wake {
        node: usize,
        incarnation: u64,
        at_local: Nanos,
    },
    PersistDone {
        node: usize,
        incarnation: u64,
    },
    /// After a failed write's pause: start the retry, if one still waits.
    PersistRetry {
        node: usize,
        incarnation: u64,
    },
    Call(usize),
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap, the earliest event must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Slot {
    id: NodeId,
    /// The incarnation of the node's state file (managed groups): a wipe
    /// draws a new one.
    life: Incarnation,
    node: Option<Node>,
    incarnation: u64,
    /// Rule 11's rolling upgrade: restarted with `--peers-file`.
    upgraded: bool,
    paused: bool,
    inbox: Vec<Envelope>,
    disk: Option<HardState>,
    /// The persist-then-send contract, as the real driver carries it out.
    outbox: Outbox,
    last_persist_done: u64,
    scheduled_wake: Option<Nanos>,
    clock: Clock,
    healthy: bool,
    view: Option<LeaderView>,
    /// Writes fail until this true time (a full or broken disk).
    disk_fails_until: u64,
}

/// A scheduled action of the test driving the world (faults, admin calls).
pub type Action = Box<dyn FnOnce(&mut World)>;

pub struct World {
    now: u64,
    seq: u64,
    cfg: WorldConfig,
    rng: SplitMix64,
    lives: SplitMix64,
    slots: Vec<Slot>,
    queue: BinaryHeap<Scheduled>,
    actions: BTreeMap<usize, Action>,
    next_action: usize,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(usize, usize)>,
    pub net: NetConfig,
    pub checker: Checker,
    pub verbosity: Verbosity,
    log: Vec<String>,
    /// FNV-1a over every processed event, to prove determinism.
    trace_hash: u64,
    /// True time of the crash of a lease holder, until the next lease begins.
    failover_from: Option<u64>,
    pub failovers: Vec<u64>,
    pub events_processed: u64,
    /// Managed groups: configurations made by a change (rule 4).
    pub changes: u64,
    heal_at: Option<u64>,
    leader_since_heal: Option<u64>,
    /// Managed groups: the desired set (the nodes the operator wants), its
    /// generation, and the nodes scaled down (stopped until desired again).
    desired: BTreeSet<usize>,
    generation: u64,
    scaled_down: BTreeSet<usize>,
    /// The group the desired nodes were restarted with `--force-new-group`
    /// for (rule 10).
    forced: Option<GroupUid>,
    /// The nodes' databases, with `WorldConfig::positions`.
    db: Option<db::Databases>,
}

impl World {
    pub fn new(cfg: WorldConfig) -> World {
        let voters: BTreeSet<NodeId> = (1..=cfg.nodes).map(|i| NodeId::new(format!("n{i}"))).collect();
        let mut rng = SplitMix64::new(cfg.seed ^ 0x05EE_D0F1_EA5E);
        // Incarnations come from a stream of their own, so that a static
        // group's seeds run as they did before identities existed.
        let mut lives = SplitMix64::new(cfg.seed ^ 0x011F_E5EE_D000);
        let slots = voters
            .iter()
            .enumerate()
            .map(|(i, id)| Slot {
                id: id.clone(),
                life: draw_incarnation(&mut lives),
                node: None,
                incarnation: 0,
                upgraded: false,
                paused: false,
                inbox: Vec::new(),
                disk: None,
                outbox: Outbox::new(),
                last_persist_done: 0,
                scheduled_wake: None,
                clock: Clock::new(cfg.clock_offset_ns[i], cfg.clock_drift_ppm[i]),
                healthy: true,
                view: None,
                disk_fails_until: 0,
            })
            .collect();
        let net = cfg.net.clone();
        let mut checker = Checker::new(cfg.lease_ttl);
        checker.managed = cfg.membership || cfg.upgrade;
        let mut world = World {
            now: 0,
            seq: 0,
            rng: SplitMix64::new(rng.next_u64()),
            lives,
            cfg,
            slots,
            queue: BinaryHeap::new(),
            actions: BTreeMap::new(),
            next_action: 0,
            cut: BTreeSet::new(),
            net,
            checker,
            verbosity: Verbosity::Quiet,
            log: Vec::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            failover_from: None,
            failovers: Vec::new(),
            events_processed: 0,
            changes: 0,
            heal_at: None,
            leader_since_heal: None,
            desired: BTreeSet::new(),
            generation: 1,
            scaled_down: BTreeSet::new(),
            forced: None,
            db: None,
        };
        if world.cfg.positions {
            world.db = Some(db::Databases::new(world.slots.len(), world.cfg.seed));
        }
        world.desired = (0..world.slots.len()).collect();
        for i in 0..world.slots.len() {
            world.boot(i);
        }
        world
    }

    pub fn now(&self) -> u64 {
        self.now
    }
    pub fn nodes(&self) -> usize {
        self.slots.len()
    }
    pub fn config(&self) -> &WorldConfig {
        &self.cfg
    }
    pub fn id(&self, i: usize) -> &NodeId {
        &self.slots[i].id
    }
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.id.as_str() == id)
    }
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash
    }
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }
    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].node.is_some()
    }
    pub fn is_paused(&self, i: usize) -> bool {
        self.slots[i].paused
    }
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.slots[i].node.as_ref()
    }
    pub fn local_now(&self, i: usize) -> Nanos {
        self.slots[i].clock.local(self.now)
    }
    pub fn disk(&self, i: usize) -> Option<&HardState> {
        self.slots[i].disk.as_ref()
    }

    /// From now on, note the first instant a live node holds a lease.
    pub fn mark_heal(&mut self) {
        self.heal_at = Some(self.now);
        self.leader_since_heal = self.leaseholder().map(|_| self.now);
    }

    /// The first instant since `mark_heal` at which a live node held a lease.
    pub fn leader_seen_since_heal(&self) -> Option<u64> {
        self.leader_since_heal
    }

    /// The node that holds a valid lease right now, if any.
    pub fn leaseholder(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&i| self.holds_lease(i))
    }

    pub fn holds_lease(&self, i: usize) -> bool {
        let s = &self.slots[i];
        s.node.is_some() && s.view.as_ref().is_some_and(|v| v.is_leader(s.clock.local(self.now)))
    }

    fn note(&mut self, level: Verbosity, line: impl FnOnce(&World) -> String) {
        if self.verbosity >= level {
            let text = line(self);
            self.log.push(format!("[{}] {text}", fmt_ns(self.now)));
        }
    }

    fn hash(&mut self, words: &[u64]) {
        for w in words {
            for b in w.to_le_bytes() {
                self.trace_hash ^= u64::from(b);
                self.trace_hash = self.trace_hash.wrapping_mul(0x100_0000_01b3);
            }
        }
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled { at, seq: self.seq, ev });
    }

    /// Runs `action` at true time `at`.
    pub fn at(&mut self, at: u64, action: Action) {
        let key = self.next_action;
        self.next_action += 1;
        self.actions.insert(key, action);
        self.schedule(at.max(self.now), Ev::Call(key));
    }

    /// Processes every event up to and including true time `until`.
    pub fn run_until(&mut self, until: u64) {
        while self.queue.peek().is_some_and(|e| e.at <= until) {
            let Some(e) = self.queue.pop() else { break };
            self.now = e.at;
            self.events_processed += 1;
            self.hash(&[e.at, e.seq]);
            self.process(e.ev);
        }
        self.now = self.now.max(until);
    }

    fn process(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, msg } => self.deliver(to, *msg),
            Ev::Wake { node, incarnation, at_local } => {
                let s = &self.slots[node];
                if s.incarnation == incarnation && !s.paused && s.scheduled_wake == Some(at_local) {
                    self.slots[node].scheduled_wake = None;
                    self.step(node, Input::Tick);
                }
            }
            Ev::PersistDone { node, incarnation } => {
                if self.slots[node].incarnation == incarnation {
                    self.persist_done(node);
                }
            }
            Ev::PersistRetry { node, incarnation } => {
                if self.slots[node].incarnation != incarnation {
                } else if self.slots[node].paused {
                    // A stopped process starts no write: look again later.
                    let later = self.now + (self.cfg.heartbeat_interval.as_nanos() as u64 / 4).max(1);
                    self.schedule(later, Ev::PersistRetry { node, incarnation });
                } else if self.slots[node].outbox.start_retry().is_some() {
                    self.start_write(node);
                }
            }
            Ev::Call(key) => {
                if let Some(action) = self.actions.remove(&key) {
                    action(self);
                }
            }
        }
    }

    // ---- processes ----------------------------------------------------

    pub fn incarnation(&self, i: usize) -> Incarnation {
        self.slots[i].life
    }

    /// Node `i`'s wall clock now, in microseconds since 1970.
    pub fn wall_micros(&self, i: usize) -> u64 {
        let skew = self.cfg.wall_skew_us.get(i).copied().unwrap_or(0);
        (WALL_EPOCH_US + self.now / 1_000).saturating_add_signed(skew)
    }

    fn node_config(&self, i: usize) -> Config {
        Config {
            cluster_id: "sim".to_string(),
            node_id: self.slots[i].id.clone(),
            voters: self.slots.iter().map(|s| s.id.clone()).collect(),
            lease_ttl: self.cfg.lease_ttl,
            heartbeat_interval: self.cfg.heartbeat_interval,
            max_clock_drift: self.cfg.max_clock_drift,
            priority: self.cfg.priorities[i],
            advertise: format!("{}:5432", self.slots[i].id),
            mode: if self.runs_managed(i) { Mode::Managed { incarnation: self.slots[i].life } } else { Mode::Static },
            force_new_group: self.forced,
            upgrading: self.upgrading(i),
            positions: self.cfg.positions,
            broken: self.cfg.breakage.core,
        }
    }

    fn boot(&mut self, i: usize) {
        let cfg = self.node_config(i);
        let upgrading = cfg.upgrading;
        let local = self.local_now(i);
        let seed = self.cfg.seed ^ ((i as u64 + 1) << 32) ^ self.slots[i].incarnation;
        let disk = self.slots[i].disk.clone();
        let boot_at = if disk.is_none() && self.cfg.breakage.blank_boot_without_promise {
            Nanos(local.0.saturating_sub(self.cfg.lease_ttl.as_nanos() as u64))
        } else {
            local
        };
        self.slots[i].outbox =
            if self.cfg.breakage.send_before_persist { Outbox::sending_before_persist() } else { Outbox::new() };
        let managed = matches!(cfg.mode, Mode::Managed { .. });
        if managed && disk.is_none() {
            // The incarnation is written with the first state file, before
            // the node opens a socket (`StateFile::claim`): a crash from
            // here on keeps it.
            self.checker.on_blank_boot(self.now, i, &self.slots[i].id, self.slots[i].life);
            self.slots[i].disk = Some(HardState { members: Some(Box::default()), ..HardState::default() });
        }
        if self.cfg.upgrade && !managed {
            self.checker.on_static_boot(i, self.slots[i].life);
        }
        if self.cfg.upgrade && !managed && disk.is_none() {
            // A static node writes its state file (with its incarnation)
            // before it opens a socket, too: restarted with --peers-file
            // it is an upgrading static node, not a blank managed one.
            self.slots[i].disk = Some(HardState::default());
        }
        match Node::new(cfg, disk, boot_at, seed) {
            Ok(node) => self.slots[i].node = Some(node),
            Err(e) => panic!("simulated node config rejected: {e}"),
        }
        let healthy = self.slots[i].healthy;
        self.step(i, Input::Health(healthy));
        if managed || upgrading.is_some() {
            // The desired set as the node reads it at start (its file).
            self.read_desired(i);
        }
        if self.cfg.upgrade {
            self.exchange_hellos(i);
        }
    }

    /// kill -9: the process and everything not yet durable are gone.
    pub fn crash(&mut self, i: usize) {
        if self.slots[i].node.is_none() {
            return;
        }
        if self.holds_lease(i) && self.failover_from.is_none() {
            self.failover_from = Some(self.now);
        }
        let s = &mut self.slots[i];
        s.node = None;
        s.incarnation += 1;
        s.paused = false;
        s.inbox.clear();
        s.outbox = Outbox::new();
        s.scheduled_wake = None;
        s.view = None;
        self.checker.on_crash(i);
        self.note(Verbosity::Events, |w| format!("{} crashed", w.slots[i].id));
    }

    /// kill -9 and the loss of the data directory (a deleted volume, a wiped
    /// disk): the node comes back, at its restart, with no state file.
    pub fn wipe(&mut self, i: usize) {
        self.crash(i);
        let lost_term = self.slots[i].disk.take().map(|d| d.term).unwrap_or_default();
        self.checker.on_wipe(i, lost_term);
        if !self.cfg.breakage.wiped_keeps_incarnation {
            self.slots[i].life = draw_incarnation(&mut self.lives);
        }
        // Rule 11's rolling upgrade: a pod that lost its volume comes back
        // with the new pod spec (`--peers-file`), blank and managed.
        if self.cfg.upgrade {
            self.slots[i].upgraded = true;
        }
        self.note(Verbosity::Events, |w| format!("{} lost its state file", w.slots[i].id));
    }

    pub fn restart(&mut self, i: usize) {
        if self.slots[i].node.is_some() || self.scaled_down.contains(&i) {
            return;
        }
        let disk = self.slots[i].disk.clone();
        self.note(Verbosity::Events, |w| {
            let d = disk.map_or("none".to_string(), |d| format!("term={} vote={}", d.term, fmt_vote(&d)));
            format!("{} restarted (disk: {d})", w.slots[i].id)
        });
        self.boot(i);
    }

    /// SIGSTOP: the clock keeps running, nothing is processed.
    pub fn pause(&mut self, i: usize) {
        if self.slots[i].node.is_some() && !self.slots[i].paused {
            self.slots[i].paused = true;
            self.note(Verbosity::Events, |w| format!("{} paused", w.slots[i].id));
        }
    }

    /// SIGCONT: queued messages are processed, then timers catch up.
    pub fn resume(&mut self, i: usize) {
        if !self.slots[i].paused {
            return;
        }
        self.slots[i].paused = false;
        self.note(Verbosity::Events, |w| format!("{} resumed", w.slots[i].id));
        // The hellos of peers that (re)connected meanwhile are read now.
        if self.cfg.upgrade {
            self.exchange_hellos(i);
        }
        let inbox = std::mem::take(&mut self.slots[i].inbox);
        for m in inbox {
            self.step(i, Input::Message(m));
        }
        self.step(i, Input::Tick);
    }

    pub fn set_health(&mut self, i: usize, healthy: bool) {
        self.slots[i].healthy = healthy;
        self.note(Verbosity::Events, |w| format!("{} health {}", w.slots[i].id, if healthy { "up" } else { "down" }));
        if self.slots[i].node.is_some() && !self.slots[i].paused {
            self.step(i, Input::Health(healthy));
        }
    }

    pub fn admin(&mut self, i: usize, req: AdminRequest) {
        if self.slots[i].node.is_some() && !self.slots[i].paused {
            self.step(i, Input::Admin(req));
        }
    }

    /// Hands `msg` to node `i` right now, as if it had arrived.
    pub fn inject(&mut self, i: usize, msg: Envelope) {
        self.deliver(i, msg);
    }

    // ---- network ------------------------------------------------------

    pub fn cut_link(&mut self, from: usize, to: usize) {
        self.cut.insert((from, to));
    }
    pub fn restore_link(&mut self, from: usize, to: usize) {
        self.cut.remove(&(from, to));
    }
    pub fn heal_links(&mut self) {
        self.cut.clear();
    }
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.slots.len() {
            if j != i {
                self.cut.insert((i, j));
                self.cut.insert((j, i));
            }
        }
    }

    /// Puts a message on the wire. `made_at` is the sender's local time at
    /// the step that produced it.
    fn transmit(&mut self, from: usize, msg: Envelope, made_at: Nanos) {
        self.checker.on_send(self.now, from, &msg);
        match &msg.body {
            Body::VoteResponse { granted: true } | Body::HeartbeatAck { ok: true, .. } => {
                self.checker.on_promise(from, made_at, &msg.to, msg.to_incarnation, msg.term)
            }
            // A campaign or a heartbeat round is a promise to itself.
            Body::VoteRequest { .. } | Body::Heartbeat { .. } => {
                self.checker.on_promise(from, made_at, &msg.from, msg.from_incarnation, msg.term)
            }
            _ => {}
        }
        let Some(to) = self.index_of(msg.to.as_str()) else { return };
        if self.rng.chance(self.net.loss) {
            self.note(Verbosity::Messages, |_| format!("lost {msg}"));
            return;
        }
        let copies = if self.rng.chance(self.net.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let span = self.net.max_delay.saturating_sub(self.net.min_delay).as_nanos() as u64;
            let delay = self.net.min_delay.as_nanos() as u64 + self.rng.below(span + 1);
            self.note(Verbosity::Messages, |_| format!("send {msg}"));
            self.schedule(self.now + delay.max(1), Ev::Deliver { to, msg: Box::new(msg.clone()) });
        }
    }

    fn deliver(&mut self, to: usize, msg: Envelope) {
        let from = self.index_of(msg.from.as_str());
        if from.is_some_and(|f| self.cut.contains(&(f, to))) {
            self.note(Verbosity::Messages, |_| format!("dropped (partition) {msg}"));
            return;
        }
        let s = &mut self.slots[to];
        if s.node.is_none() {
            return;
        }
        if s.paused {
            s.inbox.push(msg);
            return;
        }
        self.note(Verbosity::Messages, |_| format!("recv {msg}"));
        self.step(to, Input::Message(msg));
    }

    // ---- the driver ---------------------------------------------------

    fn step(&mut self, i: usize, input: Input) {
        let local = self.local_now(i);
        // The leader a transfer vote or campaign may name (rule 8), for the
        // promise check.
        let transfer_from = match &input {
            Input::Message(m) => match &m.body {
                Body::VoteRequest { transfer_from } => transfer_from.clone(),
                Body::TimeoutNow => Some(m.from.clone()),
                _ => None,
            },
            _ => None,
        };
        let wall = self.wall_micros(i);
        let Some(node) = self.slots[i].node.as_mut() else { return };
        node.observe_wall_clock(wall);
        let out = node.step(local, input);
        if self.slots[i].node.as_ref().is_some_and(|n| n.incarnation().is_some()) {
            self.check_membership(i, &out);
        }
        self.check_promises(i, local, &out, transfer_from.as_ref());
        self.apply(i, out);
    }

    /// From now on, node `i`'s clock runs at `drift_ppm` from true time.
    pub fn set_clock_rate(&mut self, i: usize, drift_ppm: i64) {
        self.slots[i].clock.set_rate(self.now, drift_ppm);
        let clock = self.slots[i].clock.clone();
        self.checker.on_clock_change(self.now, i, |local| clock.to_true(local));
        // A pending timer fires at another true time now.
        if let Some(wake) = self.slots[i].scheduled_wake.take() {
            self.schedule_wake(i, wake);
        }
    }

    /// Makes every write of node `i` fail until true time `until`.
    pub fn fail_disk(&mut self, i: usize, until: u64) {
        self.slots[i].disk_fails_until = until;
        self.note(Verbosity::Events, |w| format!("{} disk fails until {}", w.slots[i].id, fmt_ns(until)));
    }

    /// Carries out one step's outputs, in the order `Outputs` documents.
    fn apply(&mut self, i: usize, mut out: Outputs) {
        for r in &out.rejected {
            let (id, from, reason) = (self.slots[i].id.clone(), r.from.clone(), r.reason);
            self.note(Verbosity::Events, |_| format!("{id} rejected a message from {from}: {reason}"));
        }
        self.changes += out.events.iter().filter(|e| matches!(e, Event::MembershipChange { .. })).count() as u64;
        for e in out.events.iter().filter(|e| !matches!(e, Event::AckRoundTrip { .. })) {
            let id = self.slots[i].id.clone();
            self.note(Verbosity::Events, |_| format!("{id} {}", fmt_event(e)));
        }
        if let Some(res) = &out.admin {
            let id = self.slots[i].id.clone();
            self.note(Verbosity::Events, |_| match res {
                Ok(()) => format!("{id} admin request accepted"),
                Err(e) => format!("{id} admin request refused: {e}"),
            });
        }
        let local = self.local_now(i);
        let dispatch = self.slots[i].outbox.take(local, &mut out);
        assert_eq!(dispatch.orphaned, 0, "core bug: send_after_persist with no write requested or under way");
        let mut crash_now = false;
        if let Some(state) = dispatch.write {
            let id = self.slots[i].id.clone();
            self.note(Verbosity::Events, |_| format!("{id} persist term={} vote={}", state.term, fmt_vote(&state)));
            self.start_write(i);
            if self.cfg.breakage.send_before_persist && self.rng.chance(0.3) {
                crash_now = true;
            }
        }
        for Held { msg, made_at } in dispatch.send {
            self.transmit(i, msg, made_at);
        }
        if let Some(view) = out.view {
            self.on_view(i, view);
        }
        self.schedule_wake(i, out.wake_at);
        if crash_now {
            self.crash(i);
            let back = self.now + self.rng.below(self.cfg.lease_ttl.as_nanos() as u64 / 2) + 1;
            self.at(back, Box::new(move |w: &mut World| w.restart(i)));
        }
    }

    fn schedule_wake(&mut self, i: usize, wake_at: Nanos) {
        if wake_at == Nanos::NEVER || self.slots[i].scheduled_wake == Some(wake_at) {
            return;
        }
        self.slots[i].scheduled_wake = Some(wake_at);
        let at = self.slots[i].clock.to_true(wake_at).max(self.now);
        let incarnation = self.slots[i].incarnation;
        self.schedule(at, Ev::Wake { node: i, incarnation, at_local: wake_at });
    }

    fn persist_done(&mut self, i: usize) {
        if self.slots[i].paused {
            // A stopped process cannot learn that its write completed: look
            // again later (the write itself is kept pending, which is only
            // more conservative).
            let later = self.now + (self.cfg.heartbeat_interval.as_nanos() as u64 / 4).max(1);
            let incarnation = self.slots[i].incarnation;
            self.schedule(later, Ev::PersistDone { node: i, incarnation });
            return;
        }
        if self.now < self.slots[i].disk_fails_until {
            self.write_failed(i);
            return;
        }
        let Some(written) = self.slots[i].outbox.written() else { return };
        let lie = self.cfg.breakage.fsync_lies && self.rng.chance(0.5);
        if !lie {
            self.slots[i].disk = Some(written.state.clone());
        }
        // One configuration per stamp and one genesis per identity, checked
        // on what is durable: a configuration held only in memory, whose
        // write failed, was never acted on.
        // A renewed identity is the node's from the moment it is durable.
        if let Some(renewed) = written.state.members.as_ref().and_then(|m| m.renewed) {
            self.slots[i].life = renewed;
        }
        if let Some(c) = written.state.members.as_ref().and_then(|m| m.config.as_ref()) {
            let (id, life) = (self.slots[i].id.clone(), self.slots[i].life);
            self.checker.on_configuration_held(self.now, &id, life, c);
            self.checker.on_durable_configuration(i);
        }
        for Held { msg, made_at } in written.send {
            self.transmit(i, msg, made_at);
        }
        self.step(i, Input::Persisted(written.state));
    }

    /// Starts writing `state`: it completes after a random latency, and
    /// writes complete in the order they were started.
    fn start_write(&mut self, i: usize) {
        let span = self.cfg.fsync_max.saturating_sub(self.cfg.fsync_min).as_nanos() as u64;
        let latency = self.cfg.fsync_min.as_nanos() as u64 + self.rng.below(span + 1);
        let done = (self.now + latency.max(1)).max(self.slots[i].last_persist_done);
        self.slots[i].last_persist_done = done;
        let incarnation = self.slots[i].incarnation;
        self.schedule(done, Ev::PersistDone { node: i, incarnation });
    }

    /// A write failed: its messages are dropped, the node is told, and the
    /// latest state is written again after a pause (the contract on
    /// `Outputs`, carried out by the outbox).
    fn write_failed(&mut self, i: usize) {
        let Some(failed) = self.slots[i].outbox.failed() else { return };
        let id = self.slots[i].id.clone();
        self.note(Verbosity::Events, |_| format!("{id} write failed, {} messages dropped", failed.dropped));
        if failed.retry {
            let at = self.now + (self.cfg.heartbeat_interval.as_nanos() as u64 / 2).max(1);
            let incarnation = self.slots[i].incarnation;
            self.schedule(at, Ev::PersistRetry { node: i, incarnation });
        }
        self.step(i, Input::PersistFailed);
    }
}
