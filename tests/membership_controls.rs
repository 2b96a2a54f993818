//! The configuration register's negative controls, each on the one
//! interleaving that its rule exists for: a calm simulated group of five
//! managed nodes, driven step by step (desired-set edits, a hand-over, a
//! partition), under the simulator's checker. With the rule the run is
//! clean; with the rule broken (`leasehold::core::Broken`) the checker
//! reports two leases at once. The random fault mix of `membership_sim.rs`
//! reaches these interleavings too rarely to count on.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use leasehold::core::{AdminRequest, Broken};
use leasehold::sim::{Breakage, Invariant, World, WorldConfig};

const MS: u64 = 1_000_000;
const TTL: u64 = 1_000 * MS;

fn world(broken: Broken) -> World {
    let mut cfg = WorldConfig::calm(5, Duration::from_secs(1), Duration::from_millis(200), 11);
    cfg.membership = true;
    cfg.breakage = Breakage { core: broken, ..Breakage::default() };
    World::new(cfg)
}

fn run(w: &mut World, ns: u64) {
    let until = w.now() + ns;
    w.run_until(until);
}

/// How many voters the configuration of node `i` lists.
fn voters(w: &World, i: usize) -> usize {
    w.node(i).and_then(|n| n.configuration()).map_or(0, |c| c.voters.len())
}

fn leader(w: &World) -> usize {
    w.leaseholder().expect("a calm group has a leader")
}

/// Edits the desired set and makes every node read it at once.
fn edit(w: &mut World, add: Option<usize>, remove: Option<usize>) {
    w.change_desired(add, remove);
    w.read_desired_everywhere();
}

/// Cuts every link between the nodes of `a` and those of `b`.
fn partition(w: &mut World, a: &[usize], b: &[usize]) {
    for &x in a {
        for &y in b {
            w.cut_link(x, y);
            w.cut_link(y, x);
        }
    }
}

/// Forms the group of five, shrinks it to three (two followers removed and
/// stopped), and hands leadership to another of the three, so that the
/// leader won with a three-voter configuration. Returns (leader, the other
/// two voters, the two removed nodes).
fn three_of_five(w: &mut World) -> (usize, [usize; 2], [usize; 2]) {
    run(w, 4 * TTL);
    let first = leader(w);
    let others: Vec<usize> = (0..5).filter(|&i| i != first).collect();
    let removed = [others[2], others[3]];
    for r in removed {
        edit(w, None, Some(r));
        run(w, 4 * TTL);
    }
    assert_eq!(voters(w, first), 3, "the group shrank to three");
    w.admin(first, AdminRequest::TransferTo(w.id(others[0]).clone()));
    run(w, 3 * TTL);
    let l = leader(w);
    assert_ne!(l, first, "leadership moved");
    let rest: Vec<usize> = [first, others[0], others[1]].into_iter().filter(|&i| i != l).collect();
    (l, [rest[0], rest[1]], removed)
}

/// Brings both removed nodes back (new volumes: new identities, learners)
/// and runs in steps of `step` until the leader's configuration lists
/// `until` voters; returns false if it never does within ten leases.
fn regrow_until(w: &mut World, l: usize, removed: [usize; 2], until: usize, step: u64) -> bool {
    edit(w, Some(removed[0]), None);
    edit(w, Some(removed[1]), None);
    for _ in 0..(10 * TTL / step) {
        run(w, step);
        if voters(w, l) >= until {
            return true;
        }
    }
    false
}

/// The scenario is clean with the rule, and the checker reports two
/// leaders (two leases at once, or two leaders of one term) with it broken.
fn control(scenario: impl Fn(Broken) -> World, broken: Broken) {
    let w = scenario(Broken::default());
    assert!(w.checker.violations.is_empty(), "with the rule: {:?}", w.checker.violations);
    let w = scenario(broken);
    let two_leaders = [Invariant::LeaseExclusive, Invariant::OneLeaderPerTerm];
    let found: Vec<_> = w.checker.violations.iter().filter(|v| two_leaders.contains(&v.invariant)).collect();
    eprintln!("{broken:?}: {found:?}");
    assert!(!found.is_empty(), "without the rule ({broken:?}): {:?}", w.checker.violations);
}

/// Rule 5: a round's acks count under the configuration it carried. A
/// leader that won with three voters and grew to five, cut off with one of
/// the three: under the five its lease ends; counted under the three it
/// won with, two acks keep it, while the other three elect.
fn lease_counted_under_the_first_configuration(broken: Broken) -> World {
    let mut w = world(broken);
    let (l, [x, y], removed) = three_of_five(&mut w);
    assert!(regrow_until(&mut w, l, removed, 5, 50 * MS), "the leader added both back");
    run(&mut w, 2 * TTL);
    partition(&mut w, &[l, x], &[y, removed[0], removed[1]]);
    run(&mut w, 6 * TTL);
    w
}

#[test]
fn the_lease_is_counted_under_the_configuration_each_round_carried() {
    control(lease_counted_under_the_first_configuration, Broken { lease_under_first: true, ..Broken::default() });
}

/// Rule 4: one change at a time. The leader of three adds a learner, and
/// is cut off from the other two voters the moment it made the change. It
/// cannot commit it; its lease ends and the two elect. Allowed a second
/// change before the first commits, it adds the other learner too, and the
/// two new voters keep its lease under five while the old two elect under
/// three.
fn second_change_in_flight(broken: Broken) -> World {
    let mut w = world(broken);
    let (l, [x, y], removed) = three_of_five(&mut w);
    assert!(regrow_until(&mut w, l, removed, 4, MS), "the leader added one back");
    partition(&mut w, &[l, removed[0], removed[1]], &[x, y]);
    run(&mut w, 6 * TTL);
    w
}

#[test]
fn a_second_change_waits_for_the_first_to_commit() {
    // Here the two sides even elect in the same term.
    control(second_change_in_flight, Broken { two_changes: true, ..Broken::default() });
}

/// Rules 3 and 1 (Ongaro's single-server bug, 2015): leader `a` of four
/// adds a learner `u` and is cut off with it before the others hear of
/// that configuration. The other three elect `l2`; `d`, one of them, is
/// then cut off from the other two, and `l2` drops it (unreachable, no
/// longer desired). `d` then meets `a` and `u`.
/// - With the rules, `l2` first commits its re-stamp `(T2, e)` through
///   `d`, which then holds a configuration newer than `a`'s `(T1, e + 1)`
///   and refuses `a`.
/// - Changing before the re-stamp committed (`restamp_first` false),
///   `d` still holds the old `(t, e)`, takes `a`'s and votes for it: `a`
///   elects with `a`, `u`, `d` beside `l2` with the other two.
/// - Ordering by epoch alone (`restamp_first` true), `d` holds the
///   re-stamp yet takes `a`'s configuration as newer, with the same end.
fn divergent_changes(broken: Broken, restamp_first: bool) -> World {
    let mut w = world(broken);
    run(&mut w, 4 * TTL);
    let a = leader(&w);
    let others: Vec<usize> = (0..5).filter(|&i| i != a).collect();
    let u = others[3];
    edit(&mut w, None, Some(u));
    run(&mut w, 4 * TTL);
    assert_eq!(voters(&w, a), 4, "the group shrank to four");
    edit(&mut w, Some(u), None);
    for _ in 0..10 * TTL / MS {
        run(&mut w, MS);
        if voters(&w, a) == 5 {
            break;
        }
    }
    assert_eq!(voters(&w, a), 5, "a added u back");
    let three = [others[0], others[1], others[2]];
    partition(&mut w, &[a, u], &three);
    let mut l2 = None;
    for _ in 0..10 * TTL / MS {
        run(&mut w, MS);
        l2 = w.leaseholder().filter(|l| three.contains(l));
        if l2.is_some() {
            break;
        }
    }
    let l2 = l2.expect("the three elect");
    let d = *three.iter().find(|&&i| i != l2).expect("three nodes");
    let term = w.node(l2).map(|n| n.hard_state().term).expect("l2 runs");
    if restamp_first {
        // d acks rounds that carry l2's re-stamp: it commits.
        run(&mut w, 50 * MS);
    }
    let restamped = w.node(d).and_then(|n| n.configuration()).is_some_and(|c| c.cterm == term);
    if !broken.epoch_order {
        assert_eq!(restamped, restamp_first, "d holds l2's re-stamp only when the scenario waits for it");
    }
    for x in three.iter().filter(|&&x| x != d) {
        w.cut_link(*x, d);
        w.cut_link(d, *x);
    }
    edit(&mut w, None, Some(d));
    run(&mut w, 2 * TTL);
    // Without its re-stamp committed l2 may not change, unless told to.
    let dropped = restamp_first || broken.change_before_stamp;
    assert_eq!(voters(&w, l2), if dropped { 3 } else { 4 }, "l2 dropped d: {dropped} ({broken:?})");
    for x in [a, u] {
        w.restore_link(x, d);
        w.restore_link(d, x);
    }
    run(&mut w, 6 * TTL);
    w
}

#[test]
fn a_change_waits_for_the_new_leaders_stamp_to_commit() {
    control(|b| divergent_changes(b, false), Broken { change_before_stamp: true, ..Broken::default() });
}

#[test]
fn configurations_are_ordered_by_term_before_epoch() {
    control(|b| divergent_changes(b, true), Broken { epoch_order: true, ..Broken::default() });
}
