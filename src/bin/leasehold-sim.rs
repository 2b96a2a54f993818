//! `leasehold-sim`: runs the deterministic simulator over many seeds and
//! prints one summary line. Exit codes: 0 clean, 1 a safety violation,
//! 3 a liveness violation only, 2 bad usage. Seeds that hit the known open
//! hole of a wiped node's forgotten vote (`wiped-vote`) are printed and
//! counted as `wiped_votes=`, without failing the run.
// Wall-clock time is used only to report seeds per second.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use leasehold::core::Broken;
use leasehold::sim::{run_seed, Breakage, Invariant, SeedOptions, SeedReport, Verbosity};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Break {
    /// The simulated disk acknowledges writes that it then loses.
    FsyncLies,
    /// The simulated driver sends messages before their persist completes,
    /// then often crashes the node.
    SendBeforePersist,
    /// A node that starts with no state file takes no boot promise.
    BlankBootWithoutPromise,
    /// With --membership: a wiped node keeps its incarnation.
    WipedKeepsIncarnation,
    /// With --membership: learners vote, and votes and acks are matched by
    /// name instead of identity.
    LearnersVote,
    /// With --membership: a genesis completes on a majority of
    /// acceptances.
    GenesisMajority,
    /// With --membership --force-new-group: a forced node leaves its group
    /// as its old identity, not a new one.
    ForcedKeepsIdentity,
    /// With --membership --force-new-group: a node that left its group
    /// reads only its wall clock in its acceptance, not above its term.
    ForceFloorFromClock,
    /// With --membership: a leader makes a change while another waits to
    /// commit.
    TwoChanges,
    /// With --membership: a leader makes a change before its re-stamp is
    /// committed.
    ChangeBeforeStamp,
    /// With --membership: configurations are ordered by epoch alone.
    EpochOrder,
    /// With --membership: the lease counts acks under the configuration
    /// the leader won with, whatever its rounds carried.
    LeaseUnderFirst,
    /// With --upgrade: a static node forgets its vote when it converts.
    ConvertForgetsVote,
    /// With --positions: votes and pre-votes ignore replication positions.
    VotesIgnorePositions,
    /// With --positions: databases confirm writes whatever their sidecar
    /// promised (no fence).
    UnfencedReplication,
    /// With --positions --membership: a leader makes membership changes.
    ChangesIgnorePositions,
}

/// Deterministic simulation of a leasehold group under faults.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed; seeds run are first-seed .. first-seed + seeds.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Nodes in the group.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    nodes: u64,
    /// How far simulated clock rates really drift (0.01 = 1%); beyond
    /// --max-clock-drift the safety argument no longer holds.
    #[arg(long)]
    clock_drift: Option<f64>,
    /// The drift bound the nodes are configured with (rho).
    #[arg(long, default_value_t = 0.01)]
    max_clock_drift: f64,
    /// Break a rule of the driver contract on purpose (negative control).
    #[arg(long = "break", value_enum)]
    breakage: Option<Break>,
    /// Leave wipes (crashes that also lose the state file) out of the fault
    /// mix, to replay a seed as it ran before they were part of it.
    #[arg(long)]
    no_wipes: bool,
    /// A managed group (DESIGN §2b): the nodes start blank and form the
    /// group by genesis; a wiped node is a new identity and joins as a
    /// learner. Off: a static group of names.
    #[arg(long)]
    membership: bool,
    /// With --membership: a seed whose group can no longer elect (a
    /// majority of its voters lost) is recovered as an operator would,
    /// restarting the desired nodes with --force-new-group, and must then
    /// elect, with tokens above every token before.
    #[arg(long)]
    force_new_group: bool,
    /// Rule 11: a static group that a rolling upgrade to --peers-file
    /// converts to a managed group online, under the same faults; a node
    /// wiped during it comes back blank and managed.
    #[arg(long, conflicts_with = "membership")]
    upgrade: bool,
    /// Each node runs a database that the lease holder's application
    /// writes to, replicated synchronously to a majority, and reads its
    /// position every heartbeat interval; votes are position-aware; a new
    /// leader whose database lacks an acknowledged write fails the seed
    /// (`acked-write-kept`).
    #[arg(long)]
    positions: bool,
    /// Stop at the first seed with a violation.
    #[arg(long)]
    stop_on_violation: bool,
    /// Print every event and message of each seed (use with --seeds 1).
    #[arg(long)]
    trace: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(0.0..0.9).contains(&args.max_clock_drift) || args.clock_drift.is_some_and(|d| !(0.0..0.9).contains(&d)) {
        eprintln!("leasehold-sim: --clock-drift and --max-clock-drift must be in [0, 0.9)");
        return ExitCode::from(2);
    }
    let mut opts = SeedOptions::new(args.nodes as usize);
    opts.max_clock_drift = args.max_clock_drift;
    opts.clock_drift = args.clock_drift.unwrap_or(args.max_clock_drift);
    opts.breakage = Breakage {
        fsync_lies: args.breakage == Some(Break::FsyncLies),
        send_before_persist: args.breakage == Some(Break::SendBeforePersist),
        blank_boot_without_promise: args.breakage == Some(Break::BlankBootWithoutPromise),
        wiped_keeps_incarnation: args.breakage == Some(Break::WipedKeepsIncarnation),
        forced_keeps_identity: args.breakage == Some(Break::ForcedKeepsIdentity),
        unfenced_replication: args.breakage == Some(Break::UnfencedReplication),
        core: Broken {
            learners_vote: args.breakage == Some(Break::LearnersVote),
            genesis_majority: args.breakage == Some(Break::GenesisMajority),
            two_changes: args.breakage == Some(Break::TwoChanges),
            change_before_stamp: args.breakage == Some(Break::ChangeBeforeStamp),
            epoch_order: args.breakage == Some(Break::EpochOrder),
            lease_under_first: args.breakage == Some(Break::LeaseUnderFirst),
            force_floor_from_clock: args.breakage == Some(Break::ForceFloorFromClock),
            convert_forgets_vote: args.breakage == Some(Break::ConvertForgetsVote),
            votes_ignore_positions: args.breakage == Some(Break::VotesIgnorePositions),
            changes_ignore_positions: args.breakage == Some(Break::ChangesIgnorePositions),
        },
    };
    opts.membership = args.membership;
    opts.force_new_group = args.force_new_group;
    opts.upgrade = args.upgrade;
    opts.positions = args.positions;
    opts.wipes = !args.no_wipes;
    if args.trace {
        opts.verbosity = Verbosity::Messages;
    }
    let started = Instant::now();
    let mut totals = Totals::default();
    for seed in args.first_seed..args.first_seed.saturating_add(args.seeds) {
        let report = run_seed(seed, &opts);
        if args.trace {
            println!("seed {seed}: {}", report.params);
            for line in &report.log {
                println!("{line}");
            }
        }
        let failed = !report.violations.is_empty();
        let fatal = report.violations.iter().any(|v| !v.invariant.is_known_open());
        if failed {
            print_failure(&args, &report);
        }
        totals.add(&report);
        if fatal && args.stop_on_violation {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (p50, p90) = (totals.ratio_quantile(0.5), totals.ratio_quantile(0.9));
    println!(
        "seeds={} leaderships={} failovers={} failover_p50={:.2}xttl failover_p90={:.2}xttl worst_failover={} worst_time_to_leader_after_heal={} violations={} (safety={} liveness={}) wiped_votes={} stuck={} forced={} regenesis={} changes={} seeds_per_sec={:.0}",
        totals.seeds,
        totals.leaderships,
        totals.failover_ratios.len(),
        p50,
        p90,
        fmt_ms(totals.worst_failover),
        fmt_ms(totals.worst_heal),
        totals.safety + totals.liveness,
        totals.safety,
        totals.liveness,
        totals.wiped_votes,
        totals.stuck,
        totals.forced,
        totals.regenesis,
        totals.changes,
        totals.seeds as f64 / secs.max(1e-9)
    );
    if totals.safety > 0 {
        ExitCode::from(1)
    } else if totals.liveness > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    leaderships: usize,
    /// Each failover (crash of the lease holder to the next lease) divided
    /// by that seed's lease_ttl, so seeds with different leases compare.
    failover_ratios: Vec<f64>,
    worst_failover: u64,
    worst_heal: u64,
    safety: u64,
    liveness: u64,
    /// Seeds with a violation of the known open hole only.
    wiped_votes: u64,
    /// Managed groups: seeds with no leader after the heal because no
    /// configuration had a majority of its voters left (see `SeedReport`).
    stuck: u64,
    /// Managed groups: stuck seeds recovered by --force-new-group.
    forced: u64,
    /// Managed groups: seeds that formed their group more than once.
    regenesis: u64,
    /// Managed groups: configurations made by a change, over all seeds.
    changes: u64,
}

impl Totals {
    fn add(&mut self, r: &SeedReport) {
        self.seeds += 1;
        self.stuck += u64::from(r.stuck);
        self.forced += u64::from(r.forced);
        self.regenesis += u64::from(r.geneses > 1);
        self.changes += r.changes;
        self.leaderships += r.leaderships;
        self.failover_ratios.extend(r.failovers.iter().map(|f| *f as f64 / r.lease_ttl_ns as f64));
        self.worst_failover = self.worst_failover.max(r.failovers.iter().copied().max().unwrap_or(0));
        self.worst_heal = self.worst_heal.max(r.time_to_leader_after_heal.unwrap_or(0));
        if r.has_safety_violation() {
            self.safety += 1;
        } else if r.violations.iter().any(|v| matches!(v.invariant, Invariant::Liveness | Invariant::Converges)) {
            self.liveness += 1;
        } else if !r.violations.is_empty() {
            self.wiped_votes += 1;
        }
    }
}

impl Totals {
    fn ratio_quantile(&mut self, q: f64) -> f64 {
        if self.failover_ratios.is_empty() {
            return 0.0;
        }
        self.failover_ratios.sort_by(f64::total_cmp);
        let idx = ((self.failover_ratios.len() - 1) as f64 * q).round() as usize;
        self.failover_ratios[idx]
    }
}

fn fmt_ms(ns: u64) -> String {
    format!("{:.1}ms", ns as f64 / 1e6)
}

fn print_failure(args: &Args, r: &SeedReport) {
    let open_only = r.violations.iter().all(|v| v.invariant.is_known_open());
    println!("seed {} {} ({})", r.seed, if open_only { "KNOWN OPEN" } else { "FAILED" }, r.params);
    for v in &r.violations {
        println!("  {v}");
    }
    let mut replay = format!(
        "cargo run --release --bin leasehold-sim -- --first-seed {} --seeds 1 --nodes {} --max-clock-drift {}",
        r.seed, args.nodes, args.max_clock_drift
    );
    if let Some(d) = args.clock_drift {
        replay.push_str(&format!(" --clock-drift {d}"));
    }
    if let Some(b) = args.breakage {
        let name = match b {
            Break::FsyncLies => "fsync-lies",
            Break::SendBeforePersist => "send-before-persist",
            Break::BlankBootWithoutPromise => "blank-boot-without-promise",
            Break::WipedKeepsIncarnation => "wiped-keeps-incarnation",
            Break::LearnersVote => "learners-vote",
            Break::GenesisMajority => "genesis-majority",
            Break::TwoChanges => "two-changes",
            Break::ForcedKeepsIdentity => "forced-keeps-identity",
            Break::ForceFloorFromClock => "force-floor-from-clock",
            Break::ChangeBeforeStamp => "change-before-stamp",
            Break::EpochOrder => "epoch-order",
            Break::LeaseUnderFirst => "lease-under-first",
            Break::ConvertForgetsVote => "convert-forgets-vote",
            Break::VotesIgnorePositions => "votes-ignore-positions",
            Break::ChangesIgnorePositions => "changes-ignore-positions",
            Break::UnfencedReplication => "unfenced-replication",
        };
        replay.push_str(&format!(" --break {name}"));
    }
    if args.no_wipes {
        replay.push_str(" --no-wipes");
    }
    if args.membership {
        replay.push_str(" --membership");
    }
    if args.force_new_group {
        replay.push_str(" --force-new-group");
    }
    if args.upgrade {
        replay.push_str(" --upgrade");
    }
    if args.positions {
        replay.push_str(" --positions");
    }
    println!("  replay: {replay} --trace");
}
