//! The simulator on managed groups (DESIGN §2b): nodes start blank and form
//! their group by genesis, under every fault the static runs inject plus
//! wipes while the group forms and edits of the desired set that reach the
//! nodes late, out of order or not at all; a wiped node comes back as a new
//! identity, joins as a learner and replaces its old self. Every invariant
//! holds with no exception (the static runs' known `wiped-vote` hole is a
//! failure here), and the negative controls are caught.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use leasehold::core::Broken;
use leasehold::sim::{run_seed, Breakage, Invariant, SeedOptions};

fn managed(nodes: usize) -> SeedOptions {
    let mut opts = SeedOptions::new(nodes);
    opts.membership = true;
    opts
}

/// Runs the seeds; every one must be free of violations. Returns (seeds
/// that formed their group more than once, seeds stuck with too few
/// voters left, seeds whose liveness was judged), and checks that changes
/// were made.
fn assert_clean(nodes: usize, seeds: std::ops::Range<u64>) -> (u64, u64, u64) {
    let opts = managed(nodes);
    let (mut regenesis, mut stuck, mut judged, mut leaderships, mut changes) = (0, 0, 0, 0, 0);
    for seed in seeds.clone() {
        let r = run_seed(seed, &opts);
        assert!(
            r.violations.is_empty(),
            "seed {seed} ({nodes} nodes): {}\nreplay: cargo run --release --bin leasehold-sim -- --first-seed {seed} --seeds 1 --nodes {nodes} --membership --trace",
            r.violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        );
        regenesis += u64::from(r.geneses > 1);
        stuck += u64::from(r.stuck);
        judged += u64::from(!r.stuck);
        leaderships += r.leaderships;
        changes += r.changes;
    }
    let count = seeds.end - seeds.start;
    assert!(leaderships as u64 > count, "only {leaderships} leaderships");
    assert!(changes > count, "only {changes} membership changes in {count} seeds");
    (regenesis, stuck, judged)
}

#[test]
fn two_thousand_five_hundred_seeds_of_three_managed_nodes_hold_every_invariant() {
    let (regenesis, stuck, judged) = assert_clean(3, 1..2501);
    // The fault mix must reach a genesis undone by wipes and formed again,
    // and must leave enough groups able to elect that liveness and
    // convergence are judged.
    assert!(regenesis >= 10, "only {regenesis} seeds formed their group again");
    assert!(stuck > 0 && judged > 600, "stuck {stuck}, judged {judged}");
}

#[test]
fn one_thousand_seeds_of_five_managed_nodes_hold_every_invariant() {
    let (regenesis, _, judged) = assert_clean(5, 1..1001);
    assert!(regenesis >= 1 && judged > 500, "regenesis {regenesis}, judged {judged}");
}

/// Seeds (of `1..=seeds`) whose run broke `invariant`.
fn caught(opts: &SeedOptions, seeds: u64, invariants: &[Invariant]) -> Vec<u64> {
    (1..=seeds)
        .filter(|&seed| run_seed(seed, opts).violations.iter().any(|v| invariants.contains(&v.invariant)))
        .collect()
}

/// A consequence an operator would feel, not only the proxy invariant.
const HARM: [Invariant; 5] = [
    Invariant::OneLeaderPerTerm,
    Invariant::OneVotePerTerm,
    Invariant::LeaseExclusive,
    Invariant::TokenOrder,
    Invariant::PromiseKept,
];

/// A node that lost its state file and kept its incarnation is its old
/// self with its votes forgotten: caught as a reused incarnation (and, in
/// rarer seeds, as one stamp naming two voter sets or two leaders of a
/// term: docs/testing.md has the counts).
#[test]
fn a_wiped_node_that_keeps_its_incarnation_is_caught() {
    let mut opts = managed(3);
    opts.breakage = Breakage { wiped_keeps_incarnation: true, ..Breakage::default() };
    assert!(caught(&opts, 200, &[Invariant::IncarnationReused]).len() > 100);
    let consequence = [HARM.as_slice(), &[Invariant::OneConfigPerStamp, Invariant::GenesisOnce]].concat();
    assert!(!caught(&opts, 500, &consequence).is_empty(), "and it must break more than the proxy");
}

/// Learners that vote, with votes and acks matched by name: a wiped node's
/// new identity votes as its old name until the leader replaces it. Caught
/// as a learner acting (judged from what it holds).
#[test]
fn learners_that_vote_are_caught() {
    let mut opts = managed(3);
    opts.breakage = Breakage { core: Broken { learners_vote: true, ..Broken::default() }, ..Breakage::default() };
    assert!(caught(&opts, 1000, &[Invariant::LearnerActed]).len() > 50);
}

/// A genesis that completes on a majority of acceptances: with the desired
/// set edited while groups form, one stamp names two voter sets.
#[test]
fn a_genesis_on_a_majority_of_acceptances_is_caught() {
    let mut opts = managed(3);
    opts.breakage = Breakage { core: Broken { genesis_majority: true, ..Broken::default() }, ..Breakage::default() };
    assert!(caught(&opts, 200, &[Invariant::OneConfigPerStamp]).len() > 50);
}

/// Seeds whose group can no longer elect (a majority of its voters lost)
/// are recovered as an operator would (rule 10): the desired nodes restart
/// with --force-new-group. Every one must then elect, with tokens above
/// every token before (the checker's token order spans the recovery), and
/// break nothing else.
#[test]
fn stuck_groups_recovered_with_force_new_group_elect_again() {
    let mut opts = managed(3);
    opts.force_new_group = true;
    let mut forced = 0;
    for seed in 1..601 {
        let r = run_seed(seed, &opts);
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {}\nreplay: cargo run --release --bin leasehold-sim -- --first-seed {seed} --seeds 1 --nodes 3 --membership --force-new-group --trace",
            r.violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        );
        forced += u64::from(r.forced);
    }
    assert!(forced >= 150, "only {forced} seeds needed and got the recovery");
}

/// The control of the floor: with every clock far behind at the recovery,
/// a node that left its group and reads only its clock starts the new
/// group below the old one's tokens; the checker sees tokens go back (or
/// two leaders of one term).
#[test]
fn a_forced_genesis_floored_by_the_clocks_alone_is_caught() {
    let mut opts = managed(3);
    opts.force_new_group = true;
    let core = Broken { force_floor_from_clock: true, ..Broken::default() };
    opts.breakage = Breakage { core, ..Breakage::default() };
    let seeds = caught(&opts, 600, &[Invariant::TokenOrder, Invariant::OneLeaderPerTerm]);
    assert!(seeds.len() >= 15, "caught in only {} seeds: {seeds:?}", seeds.len());
}

/// The control: a forced node that leaves its group as its old identity
/// acts under two geneses, and the checker says so.
#[test]
fn a_forced_node_that_keeps_its_identity_is_caught() {
    let mut opts = managed(3);
    opts.force_new_group = true;
    opts.breakage = Breakage { forced_keeps_identity: true, ..Breakage::default() };
    let seeds = caught(&opts, 300, &[Invariant::GenesisOnce]);
    assert!(seeds.len() >= 50, "caught in only {} seeds: {seeds:?}", seeds.len());
}

/// Rule 11: a static group converted online by a rolling restart to
/// `--peers-file`, under every fault of the static runs, a node wiped
/// during it coming back blank and managed. Every invariant holds with no
/// exception; most seeds convert, and the group then lists every node's
/// identity (judged, like liveness, unless too many volumes were lost).
fn assert_upgrade_clean(nodes: usize, seeds: std::ops::Range<u64>) -> (u64, u64) {
    let mut opts = SeedOptions::new(nodes);
    opts.upgrade = true;
    let (mut converted, mut judged) = (0, 0);
    for seed in seeds {
        let r = run_seed(seed, &opts);
        assert!(
            r.violations.is_empty(),
            "seed {seed} ({nodes} nodes): {}\nreplay: cargo run --release --bin leasehold-sim -- --first-seed {seed} --seeds 1 --nodes {nodes} --upgrade --trace",
            r.violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        );
        converted += u64::from(r.geneses >= 1);
        judged += u64::from(!r.stuck);
    }
    (converted, judged)
}

#[test]
fn one_thousand_seeds_of_three_static_nodes_converted_online_hold_every_invariant() {
    let (converted, judged) = assert_upgrade_clean(3, 1..1001);
    assert!(converted > 800 && judged > 600, "converted {converted}, judged {judged}");
}

#[test]
fn three_hundred_seeds_of_five_static_nodes_converted_online_hold_every_invariant() {
    let (converted, judged) = assert_upgrade_clean(5, 1..301);
    assert!(converted > 150 && judged > 200, "converted {converted}, judged {judged}");
}
