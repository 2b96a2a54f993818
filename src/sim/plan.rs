//! One seed, one run: the seed decides every parameter (lease, heartbeat,
//! clock rates, network, disk, priorities) and a fault schedule; a fault
//! phase is followed by a heal phase in which a leader must appear within a
//! stated bound.

use std::time::Duration;

use super::check::{Invariant, Violation};
use super::world::{Action, Breakage, NetConfig, Verbosity, World, WorldConfig};
use crate::core::rng::SplitMix64;
use crate::core::{AdminRequest, NodeId};

#[derive(Clone, Debug)]
pub struct SeedOptions {
    pub nodes: usize,
    /// How far each clock's rate may really differ from true time.
    pub clock_drift: f64,
    /// The bound the nodes are configured with (`--max-clock-drift`, rho).
    pub max_clock_drift: f64,
    pub breakage: Breakage,
    /// Some crashes lose the node's state file too (a wipe). Off replays a
    /// seed as it ran before wipes were part of the fault mix.
    pub wipes: bool,
    /// A managed group (DESIGN §2b): nodes start blank and form the group
    /// by genesis; a wipe makes a new identity, which joins as a learner.
    pub membership: bool,
    /// Managed groups: a stuck seed is recovered with `--force-new-group`
    /// (rule 10) and must then elect.
    pub force_new_group: bool,
    /// Rule 11: a static group converted online by a rolling upgrade to
    /// `--peers-file` during the fault phase.
    pub upgrade: bool,
    /// Each node runs a database; the lease holder's application writes,
    /// replicated synchronously to a majority, and no acknowledged write
    /// may be missing from a later leader's database.
    pub positions: bool,
    pub verbosity: Verbosity,
}

impl SeedOptions {
    pub fn new(nodes: usize) -> Self {
        SeedOptions {
            nodes,
            clock_drift: 0.01,
            max_clock_drift: 0.01,
            breakage: Breakage::default(),
            wipes: true,
            membership: false,
            force_new_group: false,
            upgrade: false,
            positions: false,
            verbosity: Verbosity::Quiet,
        }
    }
}

#[derive(Debug)]
pub struct SeedReport {
    pub seed: u64,
    /// The parameters the seed chose, one line.
    pub params: String,
    pub violations: Vec<Violation>,
    pub leaderships: usize,
    /// Time from the crash of a lease holder to the next lease, true ns.
    pub failovers: Vec<u64>,
    /// Time from the heal to the first leader, true ns.
    pub time_to_leader_after_heal: Option<u64>,
    pub liveness_bound_ns: u64,
    /// Managed groups: no leader after the heal, excused because no
    /// configuration has a majority of its voters alive and holding it
    /// (wiped voters wait for their replacement; an identity that withdrew
    /// from a genesis that completed elsewhere waits for the operator).
    pub stuck: bool,
    /// Managed groups: a stuck seed recovered by `--force-new-group`.
    pub forced: bool,
    /// Managed groups: how many groups were formed (a genesis undone by
    /// wipes and formed again counts twice).
    pub geneses: usize,
    /// Managed groups: configurations made by a change.
    pub changes: u64,
    pub lease_ttl_ns: u64,
    pub trace_hash: u64,
    pub events: u64,
    pub log: Vec<String>,
}

impl SeedReport {
    pub fn has_safety_violation(&self) -> bool {
        self.violations.iter().any(|v| v.invariant.is_safety())
    }
}

const MS: u64 = 1_000_000;

struct Params {
    lease_ttl: Duration,
    cfg: WorldConfig,
    fault_phase: u64,
    liveness_bound: u64,
}

fn choose_params(seed: u64, opts: &SeedOptions, rng: &mut SplitMix64) -> Params {
    let ttl_ms = [100u64, 200, 500, 1_000, 2_000][rng.below(5) as usize];
    let lease_ttl = Duration::from_millis(ttl_ms);
    // A quarter to an eleventh of the lease: at most a third of the leader's
    // lease for any drift bound the simulator accepts.
    let heartbeat_interval = lease_ttl / (4 + rng.below(8) as u32);
    let n = opts.nodes;
    let clock_drift_ppm = (0..n).map(|_| draw_drift_ppm(rng, opts.clock_drift)).collect();
    let clock_offset_ns = (0..n).map(|_| rng.below(10_000 * MS)).collect();
    let mut priorities: Vec<u32> = (0..n)
        .map(|_| match rng.below(10) {
            0 => 0,
            1 => 2 + rng.below(3) as u32,
            _ => 1,
        })
        .collect();
    if priorities.iter().all(|p| *p == 0) {
        priorities[0] = 1;
    }
    let min_delay = Duration::from_micros(50 + rng.below(950));
    let max_delay = if rng.chance(0.2) {
        min_delay + lease_ttl.mul_f64(rng.below(1000) as f64 / 1000.0)
    } else {
        min_delay + lease_ttl / 20
    };
    let net = NetConfig {
        min_delay,
        max_delay,
        loss: rng.below(200) as f64 / 1000.0,
        duplicate: rng.below(50) as f64 / 1000.0,
    };
    let fsync_min = Duration::from_micros(100 + rng.below(900));
    let fsync_max = fsync_min + if rng.chance(0.2) { lease_ttl / 10 } else { Duration::from_millis(5) };
    let fault_phase = ttl_ms * MS * (10 + rng.below(30));
    // After the heal, promises made before it expire within a lease_ttl of
    // the slowest clock; a campaign then needs at most a few rounds (a split
    // vote costs another promise period). Four lease_ttl, scaled for drift,
    // plus fsync and message latency, bounds it.
    let d = opts.clock_drift.min(0.9);
    let ttl_ns = ttl_ms * MS;
    let scaled = (4.0 * ttl_ns as f64 * (1.0 + d) / (1.0 - d)) as u64;
    let mut liveness_bound =
        scaled + 20 * fsync_max.as_nanos() as u64 + 20 * (min_delay + lease_ttl / 20).as_nanos() as u64;
    if opts.membership || opts.upgrade {
        // A genesis left open by the faults is withdrawn from after six
        // leases and proposed again.
        liveness_bound += 10 * ttl_ns;
    }
    // Wall clocks within 5ms of true time, from a stream of their own.
    let mut wall = SplitMix64::new(seed ^ 0x00FA_11C1_0C4E);
    let wall_skew_us = (0..n).map(|_| wall.below(10_001) as i64 - 5_000).collect();
    let cfg = WorldConfig {
        nodes: n,
        lease_ttl,
        heartbeat_interval,
        max_clock_drift: opts.max_clock_drift,
        clock_drift_ppm,
        clock_offset_ns,
        priorities,
        net,
        fsync_min,
        fsync_max,
        breakage: opts.breakage,
        membership: opts.membership,
        upgrade: opts.upgrade,
        positions: opts.positions,
        wall_skew_us,
        seed,
    };
    Params { lease_ttl, cfg, fault_phase, liveness_bound }
}

/// A clock rate within `drift` of true time: a third of the time at each
/// extreme (where the lease margin is tightest), else anywhere between.
fn draw_drift_ppm(rng: &mut SplitMix64, drift: f64) -> i64 {
    let ppm = (drift * 1e6) as i64;
    match rng.below(3) {
        0 => ppm,
        1 => -ppm,
        _ => rng.below(2 * ppm as u64 + 1) as i64 - ppm,
    }
}

/// Each clock changes rate every U(lease_ttl/2, 5 lease_ttl), within the
/// drift bound, for the whole run.
fn schedule_clock_changes(world: &mut World, rng: &mut SplitMix64, ttl: u64, run_end: u64, drift: f64) {
    for node in 0..world.nodes() {
        let mut t = 0;
        // Bounded: t grows by at least ttl/2 per change.
        for _ in 0..100_000 {
            t += ttl / 2 + rng.below(5 * ttl);
            if t >= run_end {
                break;
            }
            let ppm = draw_drift_ppm(rng, drift);
            world.at(t, Box::new(move |w: &mut World| w.set_clock_rate(node, ppm)));
        }
    }
}

fn describe(p: &Params) -> String {
    let c = &p.cfg;
    format!(
        "nodes={} lease_ttl={:?} heartbeat={:?} rho={} clock_ppm={:?} priorities={:?} delay={:?}..{:?} loss={} dup={} fsync={:?}..{:?} fault_phase={}ms",
        c.nodes,
        c.lease_ttl,
        c.heartbeat_interval,
        c.max_clock_drift,
        c.clock_drift_ppm,
        c.priorities,
        c.net.min_delay,
        c.net.max_delay,
        c.net.loss,
        c.net.duplicate,
        c.fsync_min,
        c.fsync_max,
        p.fault_phase / MS
    )
}

/// Runs one seed to completion and reports what the checker found.
pub fn run_seed(seed: u64, opts: &SeedOptions) -> SeedReport {
    let mut rng = SplitMix64::new(seed);
    let p = choose_params(seed, opts, &mut rng);
    let params = describe(&p);
    let ttl = p.lease_ttl.as_nanos() as u64;
    let mut world = World::new(p.cfg.clone());
    world.verbosity = opts.verbosity;
    // A managed group that loses a majority of its voters' volumes stays
    // down until the operator recreates it (rule 10), which ends what a
    // seed can show of changes: wipes are rarer there.
    let managed = opts.membership || opts.upgrade;
    let wipe_chance = match (opts.wipes, managed) {
        (false, _) => 0.0,
        (true, false) => WIPE_CHANCE,
        (true, true) => MANAGED_WIPE_CHANCE,
    };
    schedule_faults(&mut world, &mut rng, seed, wipe_chance, ttl, p.fault_phase);
    if opts.membership && opts.wipes {
        schedule_genesis_wipes(&mut world, seed, ttl);
    }
    if opts.membership {
        schedule_desired_changes(&mut world, seed, ttl, p.fault_phase);
    }
    if opts.upgrade {
        schedule_upgrade(&mut world, seed, ttl, p.fault_phase);
    }
    let run_end = p.fault_phase + p.liveness_bound + 2 * ttl;
    if opts.positions {
        schedule_writes(&mut world, p.cfg.heartbeat_interval.as_nanos() as u64, run_end);
        schedule_position_reads(&mut world, ttl / 3, run_end);
    }
    schedule_clock_changes(&mut world, &mut rng, ttl, run_end, opts.clock_drift);
    let heal_at = p.fault_phase;
    let calm = NetConfig {
        min_delay: p.cfg.net.min_delay,
        max_delay: p.cfg.net.min_delay + p.lease_ttl / 20,
        loss: 0.0,
        duplicate: 0.0,
    };
    world.at(heal_at, Box::new(move |w: &mut World| heal(w, calm)));
    world.run_until(heal_at + p.liveness_bound);
    let time_to_leader = world.leader_seen_since_heal().map(|t| t - heal_at);
    let stuck = time_to_leader.is_none() && ((managed && !world.electable()) || world.positions_block());
    if time_to_leader.is_none() && !stuck {
        world.checker.liveness_failed(heal_at, p.liveness_bound);
    }
    // Keep going a little after the bound so that late safety violations of
    // the healed group are seen too.
    world.run_until(heal_at + p.liveness_bound + 2 * ttl);
    // Managed groups that cannot elect any more: the operator forces a new
    // group from the desired nodes (rule 10), which must then elect, with
    // tokens above every token before (the checker's token order runs on).
    let mut forced = false;
    if stuck && opts.force_new_group {
        forced = true;
        world.force_new_group();
        world.mark_heal();
        let forced_at = world.now();
        world.run_until(forced_at + p.liveness_bound);
        if world.leader_seen_since_heal().is_none() && world.may_lead() {
            world.checker.liveness_failed(forced_at, p.liveness_bound);
        }
        world.run_until(forced_at + p.liveness_bound + 2 * ttl);
        // Life goes on in the new group, the flag still given: one desired
        // node loses its volume; it must join the new group as a learner
        // and replace its old self, never start a group of its own.
        let desired: Vec<usize> = world.desired().iter().copied().collect();
        let victim = desired[(seed % desired.len() as u64) as usize];
        world.wipe(victim);
        world.restart(victim);
        let wiped_at = world.now();
        let bound = p.liveness_bound + (4 + 4 * opts.nodes as u64) * ttl;
        world.run_until(wiped_at + bound);
        if !world.converged() && world.electable() && !world.positions_block() {
            world.checker.membership_stuck(wiped_at, bound);
        }
    }
    // Managed groups: with every node back and the desired set stable,
    // the leader replaces each wiped voter (a removal and an add, each a
    // commit round, the add after the new identity answered for two
    // leases), so the configuration comes to list every node's identity.
    // With positions no change is made (docs/safety.md), so none converges.
    if opts.positions && world.changes > 0 {
        let now = world.now();
        world.checker.changed_with_positions(now, world.changes);
    }
    if managed && !stuck && !opts.positions {
        let bound = p.liveness_bound + (4 + 4 * opts.nodes as u64) * ttl;
        world.run_until(heal_at + bound);
        // Excused, like liveness, when no configuration can elect any more.
        if !world.converged() && world.electable() && !world.positions_block() {
            world.checker.membership_stuck(heal_at, bound);
        }
    }
    let leaderships = count_leaderships(&world);
    SeedReport {
        seed,
        params,
        violations: world.checker.violations.clone(),
        leaderships,
        failovers: world.failovers.clone(),
        time_to_leader_after_heal: time_to_leader,
        liveness_bound_ns: p.liveness_bound,
        stuck,
        forced,
        geneses: world.checker.groups_formed(),
        changes: world.changes,
        lease_ttl_ns: ttl,
        trace_hash: world.trace_hash(),
        events: world.events_processed,
        log: world.take_log(),
    }
}

fn count_leaderships(world: &World) -> usize {
    let mut seen: Vec<(usize, u64)> = world.checker.leases.iter().map(|r| (r.node, r.token.0)).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

fn heal(w: &mut World, calm: NetConfig) {
    w.mark_heal();
    w.heal_links();
    w.net = calm;
    for i in 0..w.nodes() {
        w.resume(i);
        w.fail_disk(i, 0);
        w.restart(i);
        w.set_health(i, true);
        // Rule 11: the rolling upgrade, if one runs, is done by now.
        if w.config().upgrade {
            w.upgrade_node(i);
        }
    }
    w.read_desired_everywhere();
}

/// Managed groups: the operator edits the desired set every three to ten
/// leases during the fault phase, removing a desired node (never below
/// two) or adding back one that was removed, from a stream of its own.
fn schedule_desired_changes(world: &mut World, seed: u64, ttl: u64, fault_phase: u64) {
    let mut rng = SplitMix64::new(seed ^ 0x0DE5_12ED_5E75);
    let n = world.nodes() as u64;
    // The first edit comes after the group formed: a genesis is only for
    // the first generation (rule 9).
    let mut t = 5 * ttl;
    for _ in 0..1_000 {
        t += 3 * ttl + rng.below(7 * ttl);
        if t >= fault_phase {
            break;
        }
        let pick = rng.below(n) as usize;
        let grow = rng.chance(0.5);
        world.at(
            t,
            Box::new(move |w: &mut World| {
                let desired = w.desired().clone();
                if grow || desired.len() <= 2 {
                    let absent = (0..w.nodes()).filter(|i| !desired.contains(i)).cycle().nth(pick);
                    if let Some(i) = absent {
                        w.change_desired(Some(i), None);
                    }
                } else if let Some(&i) = desired.iter().cycle().nth(pick) {
                    w.change_desired(None, Some(i));
                }
            }),
        );
    }
}

/// The lease holder's application writes once every heartbeat interval
/// (at most 100,000 writes).
fn schedule_writes(world: &mut World, every: u64, until: u64) {
    let mut t = every;
    for _ in 0..100_000 {
        if t >= until {
            break;
        }
        world.at(t, Box::new(|w: &mut World| w.app_write()));
        t += every.max(1);
    }
}

/// Each sidecar reads its database's position every `every` (its
/// `--position-exec` interval, well below the lease), at most 100,000
/// times.
fn schedule_position_reads(world: &mut World, every: u64, until: u64) {
    let mut t = every / 2;
    for _ in 0..100_000 {
        if t >= until {
            break;
        }
        world.at(t, Box::new(|w: &mut World| w.read_positions()));
        t += every.max(1);
    }
}

/// Rule 11: the rolling upgrade restarts the nodes with `--peers-file`
/// one at a time, highest first as a StatefulSet does, each two to six
/// leases after the one before, from a stream of its own.
fn schedule_upgrade(world: &mut World, seed: u64, ttl: u64, fault_phase: u64) {
    let mut rng = SplitMix64::new(seed ^ 0x0B6E_ADE5_1111);
    let mut t = 2 * ttl + rng.below(4 * ttl);
    for i in (0..world.nodes()).rev() {
        if t >= fault_phase {
            break;
        }
        world.at(t, Box::new(move |w: &mut World| w.upgrade_node(i)));
        t += 2 * ttl + rng.below(4 * ttl);
    }
}

/// The share of crashes that also lose the node's state file.
const WIPE_CHANCE: f64 = 0.25;
/// The same for managed groups.
const MANAGED_WIPE_CHANCE: f64 = 0.1;

/// The fault schedule: one fault every `U(0, lease_ttl)` during the fault
/// phase, each undone after a random time. Targeted faults pick the current
/// lease holder when they fire. Whether a crash is a wipe is drawn from a
/// stream of its own, so that turning wipes off leaves every other draw of
/// the seed as it was.
fn schedule_faults(world: &mut World, rng: &mut SplitMix64, seed: u64, wipe_chance: f64, ttl: u64, fault_phase: u64) {
    let n = world.nodes();
    let mut wipe_rng = SplitMix64::new(seed ^ 0x0057_1BED_D15C);
    let mut t = 0;
    // The loop is bounded: t grows by at least 1ns and stops at fault_phase,
    // and at most 10_000 faults are scheduled.
    for _ in 0..10_000 {
        t += 1 + rng.below(ttl);
        if t >= fault_phase {
            break;
        }
        let span = 1 + rng.below(3 * ttl);
        let node = rng.below(n as u64) as usize;
        let wipe = wipe_rng.chance(wipe_chance);
        let action = fault(rng.below(16), node, span, n, wipe);
        world.at(t, action);
    }
}

/// The fault menu: `kind` in 0..16 picks one (weights by repetition); `node`
/// is a random node and `span` how long the fault lasts; `wipe` makes a
/// crash lose the state file too.
fn fault(kind: u64, node: usize, span: u64, n: usize, wipe: bool) -> Action {
    let crash = move |w: &mut World, i: usize| if wipe { w.wipe(i) } else { w.crash(i) };
    match kind {
        0 | 1 => Box::new(move |w: &mut World| {
            crash(w, node);
            w.at(w.now() + span, Box::new(move |w: &mut World| w.restart(node)));
        }),
        2..=4 => Box::new(move |w: &mut World| {
            let target = w.leaseholder().unwrap_or(node);
            crash(w, target);
            w.at(w.now() + span, Box::new(move |w: &mut World| w.restart(target)));
        }),
        5 | 6 => Box::new(move |w: &mut World| {
            let target = if w.rng().chance(0.5) { w.leaseholder().unwrap_or(node) } else { node };
            w.pause(target);
            w.at(w.now() + span, Box::new(move |w: &mut World| w.resume(target)));
        }),
        7 | 8 => Box::new(move |w: &mut World| {
            for a in 0..w.nodes() {
                for b in 0..w.nodes() {
                    if a != b && (a < n / 2) != (b < n / 2) {
                        w.cut_link(a, b);
                    }
                }
            }
            w.at(w.now() + span, Box::new(|w: &mut World| w.heal_links()));
        }),
        9 | 10 => Box::new(move |w: &mut World| {
            let target = w.leaseholder().unwrap_or(node);
            match w.rng().below(3) {
                0 => w.isolate(target),
                1 => (0..w.nodes()).filter(|&j| j != target).for_each(|j| w.cut_link(j, target)),
                _ => (0..w.nodes()).filter(|&j| j != target).for_each(|j| w.cut_link(target, j)),
            }
            w.at(w.now() + span, Box::new(|w: &mut World| w.heal_links()));
        }),
        11 => Box::new(move |w: &mut World| {
            for _ in 0..n {
                let a = w.rng().below(n as u64) as usize;
                let b = w.rng().below(n as u64) as usize;
                if a != b {
                    w.cut_link(a, b);
                }
            }
            w.at(w.now() + span, Box::new(|w: &mut World| w.heal_links()));
        }),
        12 => Box::new(move |w: &mut World| {
            let target = if w.rng().chance(0.5) { w.leaseholder().unwrap_or(node) } else { node };
            w.set_health(target, false);
            w.at(w.now() + span, Box::new(move |w: &mut World| w.set_health(target, true)));
        }),
        13 => Box::new(move |w: &mut World| {
            let target = if w.rng().chance(0.5) { w.leaseholder().unwrap_or(node) } else { node };
            w.fail_disk(target, w.now() + span);
        }),
        14 => Box::new(move |w: &mut World| {
            if let Some(l) = w.leaseholder() {
                let req = if w.rng().chance(0.5) {
                    AdminRequest::StepDown
                } else {
                    AdminRequest::TransferTo(NodeId::new(format!("n{}", node + 1)))
                };
                w.admin(l, req);
            }
        }),
        _ => Box::new(move |w: &mut World| {
            let loss = w.rng().below(300) as f64 / 1000.0;
            let dup = w.rng().below(100) as f64 / 1000.0;
            w.net.loss = loss;
            w.net.duplicate = dup;
        }),
    }
}

/// Wipes while the group forms: in half the seeds, one to two nodes lose
/// their state within the first three leases (a genesis takes about a
/// heartbeat; its first election waits for the boot promise), and come
/// back blank a random time later.
fn schedule_genesis_wipes(world: &mut World, seed: u64, ttl: u64) {
    let mut rng = SplitMix64::new(seed ^ 0x6E4E_5150_1FE5);
    if !rng.chance(0.5) {
        return;
    }
    let n = world.nodes() as u64;
    for _ in 0..1 + rng.below(2) {
        let node = rng.below(n) as usize;
        let at = rng.below(3 * ttl);
        let back = at + 1 + rng.below(2 * ttl);
        world.at(at, Box::new(move |w: &mut World| w.wipe(node)));
        world.at(back, Box::new(move |w: &mut World| w.restart(node)));
    }
}

/// Which invariants a set of reports violated, for summaries.
pub fn violated(reports: &[&SeedReport]) -> Vec<Invariant> {
    let mut v: Vec<Invariant> = reports.iter().flat_map(|r| r.violations.iter().map(|v| v.invariant)).collect();
    v.sort_unstable();
    v.dedup();
    v
}
