//! The rules of a managed group (DESIGN §2b; docs/safety.md, "Membership",
//! rules 1, 6, 8 and 9) in the core, one step test each: learners and
//! blank nodes never vote, votes count only from listed identities, a
//! genesis completes only with every acceptance, an acceptance is withdrawn
//! when a listed name comes back as another identity, and another group's
//! messages are refused. Each fails when its rule is dropped.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeSet;

use leasehold::core::{
    Body, Configuration, Envelope, Event, GroupUid, HardState, Identity, Incarnation, Input, MemberState, Mode, Node,
    Outputs, Proposal, RejectReason, Term,
};

mod common;
use common::steps::*;

const GROUP: GroupUid = GroupUid(0x6a);
/// The genesis floor of [`group`]: a wall-clock reading in microseconds.
const FLOOR: u64 = 1_700_000_000_000_000;

fn who(name: &str, life: u128) -> Identity {
    Identity::new(id(name), Incarnation(life))
}

/// The first configuration of a, b and c, each in its first life.
fn group() -> Configuration {
    Configuration {
        group: GROUP,
        cterm: Term(0),
        epoch: 1,
        voters: [who("a", 1), who("b", 1), who("c", 1)].into_iter().collect(),
        removed: BTreeSet::new(),
        generation: 0,
        floor: Term(FLOOR),
    }
}

/// Identity `(me, life)` of the desired set a, b, c, holding `config`
/// (None: blank, its state file just written).
fn managed(me: &str, life: u128, config: Option<Configuration>) -> Node {
    let mut cfg = config_of(me);
    cfg.mode = Mode::Managed { incarnation: Incarnation(life) };
    let term = config.as_ref().map_or(Term(0), |c| c.floor);
    let members = MemberState { config, ..MemberState::default() };
    let durable = HardState { term, members: Some(Box::new(members)), ..HardState::default() };
    let mut n = Node::new(cfg, Some(durable), boot(), 7).expect("valid config");
    n.observe_wall_clock(FLOOR + 5_000_000);
    n
}

fn config_of(me: &str) -> leasehold::core::Config {
    config(me, &["a", "b", "c"])
}

/// A message from identity `(from, life)` to `to`, in `group()`.
fn from(from: &str, life: u128, to: &str, term: u64, body: Body) -> Envelope {
    let mut m = msg(from, to, term, body);
    m.version = leasehold::core::MANAGED_PROTOCOL_VERSION;
    m.from_incarnation = Some(Incarnation(life));
    m.group = Some(GROUP);
    m.config = Some(Box::new(group()));
    m
}

fn sent(out: &Outputs) -> Vec<&Envelope> {
    out.send_now.iter().chain(&out.send_after_persist).collect()
}

fn holds(n: &Node) -> Option<(GroupUid, bool)> {
    n.configuration().map(|c| (c.group, n.is_voter()))
}

const T: u64 = FLOOR + 1;

// ---- rules 1 and 8: learners and blank nodes ---------------------------

/// b in its second life holds the group that lists its first: a learner.
/// It neither grants a vote nor campaigns, however long it waits.
#[test]
fn a_learner_neither_votes_nor_campaigns() {
    let mut b = managed("b", 2, Some(group()));
    assert!(!b.is_voter());
    let out = deliver(&mut b, at(0), from("a", 1, "b", T, Body::VoteRequest { transfer_from: None }));
    assert_ne!(granted_vote(&out), Some(true), "a learner's vote would count for a name it no longer is");
    for s in 1..20 {
        let out = b.step(at(s * 1_000), Input::Tick);
        assert!(!out.events.iter().any(|e| matches!(e, Event::PreVoteStarted { .. } | Event::ElectionStarted { .. })));
    }
    // b in its first life, the listed identity, grants.
    let mut b1 = managed("b", 1, Some(group()));
    let out = deliver(&mut b1, at(0), from("a", 1, "b", T, Body::VoteRequest { transfer_from: None }));
    assert_eq!(granted_vote(&out), Some(true));
}

/// A vote or a pre-vote from another incarnation of a listed name counts
/// for nothing; the listed identity's does.
#[test]
fn only_a_listed_identity_is_counted() {
    let mut a = managed("a", 1, Some(group()));
    let out = a.step(at(2_000), Input::Tick);
    let asked = out.events.iter().find_map(|e| match e {
        Event::PreVoteStarted { next_term } => Some(*next_term),
        _ => None,
    });
    let next_term = asked.expect("a, a voter past its boot promise, asks for pre-votes");
    let answer = |life| from("b", life, "a", FLOOR, Body::PreVoteResponse { next_term, granted: true });
    let out = deliver(&mut a, at(2_001), answer(2));
    assert!(!out.events.iter().any(|e| matches!(e, Event::ElectionStarted { .. })), "b's second life is no voter");
    let out = deliver(&mut a, at(2_002), answer(1));
    assert!(out.events.iter().any(|e| matches!(e, Event::ElectionStarted { .. })));
    let term = a.hard_state().term.0;
    let vote = |life| from("c", life, "a", term, Body::VoteResponse { granted: true });
    let out = deliver(&mut a, at(2_003), vote(2));
    assert!(!out.events.iter().any(|e| matches!(e, Event::ElectionWon { .. })), "c's second life is no voter");
    let out = deliver(&mut a, at(2_004), vote(1));
    assert!(out.events.iter().any(|e| matches!(e, Event::ElectionWon { .. })));
}

/// A node that holds no configuration acks, votes and follows no one: it
/// has nothing persisted to act under.
#[test]
fn a_blank_node_ignores_votes_and_heartbeats() {
    let mut b = managed("b", 1, None);
    let out = deliver(&mut b, at(0), from("a", 1, "b", T, Body::VoteRequest { transfer_from: None }));
    assert_eq!(granted_vote(&out), None);
    let out = deliver(&mut b, at(1), from("a", 1, "b", T, Body::Heartbeat { round: 1, leader_address: "a".into() }));
    assert!(sent(&out).iter().all(|m| !matches!(m.body, Body::HeartbeatAck { .. })));
    assert_eq!(b.hard_state().term, Term(0), "and takes no term from them");
}

/// A blank node that reaches a member joins as a learner (rule 8), taking
/// the group's floor as its term.
#[test]
fn a_blank_node_joins_a_group_as_a_learner() {
    let mut b = managed("b", 2, None);
    let out = deliver(&mut b, at(0), from("a", 1, "b", T, Body::Config { config: Box::new(group()) }));
    assert_eq!(holds(&b), Some((GROUP, false)));
    assert!(out.events.contains(&Event::ConfigurationHeld { group: GROUP, voter: false }));
    assert_eq!(out.persist.as_ref().and_then(|p| p.members.as_ref()).and_then(|m| m.config.clone()), Some(group()));
    assert!(b.hard_state().term >= Term(FLOOR));
    // And a member answers a blank node's announcement with its
    // configuration, addressed to the announcing life.
    let mut a = managed("a", 1, Some(group()));
    let out = deliver(&mut a, at(0), from("b", 2, "a", 0, Body::Announce { desired: 0, pending: None, left: None }));
    let reply = sent(&out).into_iter().find(|m| matches!(m.body, Body::Config { .. })).expect("a Config reply");
    assert_eq!(reply.to_incarnation, Some(Incarnation(2)));
}

#[test]
fn messages_of_another_group_are_refused() {
    let mut b = managed("b", 1, Some(group()));
    let mut m = from("a", 1, "b", T, Body::Heartbeat { round: 1, leader_address: "a".into() });
    m.group = Some(GroupUid(0x6b));
    let out = deliver(&mut b, at(0), m);
    assert_eq!(out.rejected.first().map(|r| r.reason), Some(RejectReason::OtherGroup));
    assert!(sent(&out).is_empty());
    let mut m = from("a", 1, "b", T, Body::Heartbeat { round: 1, leader_address: "a".into() });
    m.to_incarnation = Some(Incarnation(9));
    let out = deliver(&mut b, at(0), m);
    assert_eq!(out.rejected.first().map(|r| r.reason), Some(RejectReason::WrongAddressee), "meant for another life");
}

// ---- rule 9: genesis --------------------------------------------------

fn proposal() -> Proposal {
    Proposal { group: GROUP, voters: group().voters, generation: 0, forced: None }
}

fn accept(name: &str, to: &str, wall: u64) -> Envelope {
    let mut m = from(name, 1, to, 0, Body::Accept { proposal: Box::new(proposal()), wall_micros: wall });
    m.group = None;
    m.config = None;
    m
}

/// b accepts a's proposal (persisting it before its acceptance leaves) and
/// completes only once c's acceptance is in too: a majority is not enough.
/// The floor is the largest wall-clock reading among the acceptances.
#[test]
fn a_genesis_completes_only_with_every_acceptance() {
    let mut b = managed("b", 1, None);
    let out = b.step(at(0), Input::Message(accept("a", "b", FLOOR + 7)));
    let persisted = out.persist.as_ref().and_then(|p| p.members.as_ref()).and_then(|m| m.accepted.clone());
    assert_eq!(persisted.map(|(p, _)| p), Some(proposal()), "the acceptance is persisted");
    assert!(out.send_now.is_empty(), "and the acceptances wait for the write");
    let to: BTreeSet<_> =
        out.send_after_persist.iter().map(|m| (m.to.as_str().to_string(), m.to_incarnation)).collect();
    assert!(to.contains(&("a".into(), Some(Incarnation(1)))) && to.contains(&("c".into(), Some(Incarnation(1)))));
    let _ = b.step(at(0), Input::Persisted(out.persist.clone().expect("a write")));
    assert_eq!(holds(&b), None, "two of three acceptances complete nothing");
    let out = deliver(&mut b, at(1), accept("c", "b", FLOOR + 9_000_000));
    assert_eq!(holds(&b), Some((GROUP, true)));
    assert!(out.events.contains(&Event::ConfigurationHeld { group: GROUP, voter: true }));
    assert_eq!(b.configuration().map(|c| c.floor), Some(Term(FLOOR + 9_000_000)));
    assert_eq!(b.hard_state().term, Term(FLOOR + 9_000_000));
}

/// b accepted a genesis listing c's first life; c announces itself in a
/// second life: that genesis can never complete, and b withdraws, for good.
#[test]
fn an_acceptance_is_withdrawn_when_a_listed_name_comes_back_as_another_identity() {
    let mut b = managed("b", 1, None);
    let _ = deliver(&mut b, at(0), accept("a", "b", FLOOR));
    let out = deliver(&mut b, at(1), from("c", 2, "b", 0, Body::Announce { desired: 0, pending: None, left: None }));
    assert!(out.events.contains(&Event::GenesisWithdrawn { group: GROUP }));
    let withdrawn = b.hard_state().members.as_ref().map(|m| m.withdrawn.clone()).unwrap_or_default();
    assert!(withdrawn.contains(&GROUP) && b.hard_state().members.as_ref().is_some_and(|m| m.accepted.is_none()));
    let _ = deliver(&mut b, at(2), accept("c", "b", FLOOR));
    assert!(b.hard_state().members.as_ref().is_some_and(|m| m.accepted.is_none()), "nor accepts it again");
    // The genesis completed elsewhere with the acceptance b sent before it
    // withdrew. b never acts as the identity it listed: it draws a new one
    // and joins as a learner, to be added by the leader (rule 8).
    let out = deliver(&mut b, at(3), from("a", 1, "b", T, Body::Config { config: Box::new(group()) }));
    assert_eq!(holds(&b), Some((GROUP, false)), "a withdrawn identity never votes under that genesis");
    assert!(b.incarnation().is_some_and(|i| i != Incarnation(1)));
    assert!(out.events.iter().any(|e| matches!(e, Event::Renewed { old: Incarnation(1), .. })));
    let renewed = out.persist.as_ref().and_then(|p| p.members.as_ref()).and_then(|m| m.renewed);
    assert_eq!(renewed, b.incarnation(), "the new incarnation is persisted with the configuration");
}

/// A static group takes no part in genesis: the membership messages change
/// nothing.
#[test]
fn a_static_group_ignores_membership_messages() {
    let mut b = node("b", None);
    let out = deliver(&mut b, at(0), msg("a", "b", 0, Body::Config { config: Box::new(group()) }));
    assert!(out.persist.is_none() && sent(&out).is_empty());
    let out = deliver(&mut b, at(0), msg("a", "b", 0, Body::Accept { proposal: Box::new(proposal()), wall_micros: 1 }));
    assert!(out.persist.is_none() && sent(&out).is_empty());
}

// ---- the configuration register (rules 1, 2, 3 and 5) ------------------

/// `group()` after one change: c's first life replaced by its second,
/// made by the leader of term `T`.
fn changed() -> Configuration {
    let mut c = group();
    c.cterm = Term(T);
    c.epoch = 2;
    c.voters.remove(&who("c", 1));
    c.removed.insert(who("c", 1));
    c
}

fn carrying(mut m: Envelope, c: Configuration) -> Envelope {
    m.config = Some(Box::new(c));
    m
}

#[test]
fn configurations_are_ordered_by_term_then_epoch_and_equal_stamps_must_agree() {
    use std::cmp::Ordering;
    let (old, new) = (group(), changed());
    assert_eq!(new.order(&old), Some(Ordering::Greater));
    assert_eq!(old.order(&new), Some(Ordering::Less));
    let mut higher_epoch_lower_term = old.clone();
    higher_epoch_lower_term.epoch = 9;
    assert_eq!(new.order(&higher_epoch_lower_term), Some(Ordering::Greater), "the term comes first");
    let mut sibling = new.clone();
    sibling.voters.insert(who("d", 1));
    assert_eq!(new.order(&sibling), None, "one stamp, two voter sets: incomparable");
    let mut other = old.clone();
    other.group = GroupUid(0x6b);
    assert_eq!(old.order(&other), None);
}

/// Rules 1 and 2: a voter holding an older configuration adopts the
/// candidate's, persisted in the same write as its vote, then grants.
#[test]
fn a_voter_adopts_a_newer_configuration_before_it_votes() {
    let mut b = managed("b", 1, Some(group()));
    let request = carrying(from("a", 1, "b", T + 1, Body::VoteRequest { transfer_from: None }), changed());
    let out = b.step(at(0), Input::Message(request));
    let written = out.persist.as_ref().and_then(|p| p.members.as_ref()).and_then(|m| m.config.clone());
    assert_eq!(written, Some(changed()));
    assert!(out.send_now.is_empty(), "the vote waits for the write");
    assert!(matches!(out.send_after_persist[..], [Envelope { body: Body::VoteResponse { granted: true }, .. }]));
}

/// Rules 1 and 5: a node holding a newer configuration than a candidate's
/// or a round's refuses the vote and does not ack; its answer carries its
/// own configuration.
#[test]
fn a_node_holding_a_newer_configuration_refuses_votes_and_acks_under_an_older_one() {
    let mut b = managed("b", 1, Some(changed()));
    let out = deliver(&mut b, at(0), from("a", 1, "b", T + 1, Body::VoteRequest { transfer_from: None }));
    assert_eq!(granted_vote(&out), Some(false));
    let answer = sent(&out).into_iter().next().expect("an answer");
    assert_eq!(answer.config.as_deref(), Some(&changed()));
    let out =
        deliver(&mut b, at(1), from("a", 1, "b", T + 1, Body::Heartbeat { round: 1, leader_address: "a".into() }));
    let acks: Vec<bool> = sent(&out)
        .iter()
        .filter_map(|m| match m.body {
            Body::HeartbeatAck { ok, .. } => Some(ok),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![false], "no ack of a round that carried an older configuration");
}

/// Rule 3: a new leader re-stamps its configuration with its term, and
/// persists it before any round carries it.
#[test]
fn a_new_leader_restamps_its_configuration_before_its_rounds_carry_it() {
    let mut a = managed("a", 1, Some(group()));
    let _ = a.step(at(2_000), Input::Tick);
    let next_term = a.hard_state().term.0 + 1;
    let answer = from("b", 1, "a", FLOOR, Body::PreVoteResponse { next_term: Term(next_term), granted: true });
    let _ = deliver(&mut a, at(2_001), answer);
    let won = a.step(at(2_002), Input::Message(from("b", 1, "a", next_term, Body::VoteResponse { granted: true })));
    // The vote came before the campaign's own write was done; complete it.
    let won = match won.events.iter().any(|e| matches!(e, Event::ElectionWon { .. })) {
        true => won,
        false => {
            let hs = a.hard_state().clone();
            a.step(at(2_002), Input::Persisted(hs))
        }
    };
    assert!(won.events.iter().any(|e| matches!(e, Event::ElectionWon { .. })));
    let stamp = a.configuration().map(|c| c.stamp());
    assert_eq!(stamp, Some((Term(next_term), 1)), "re-stamped with its own term, same epoch");
    let written =
        won.persist.as_ref().and_then(|p| p.members.as_ref()).and_then(|m| m.config.as_ref()).map(|c| c.stamp());
    assert_eq!(written, stamp, "and the re-stamp is written");
    let early = won.send_now.iter().filter(|m| matches!(m.body, Body::Heartbeat { .. })).count();
    let held = won.send_after_persist.iter().filter(|m| matches!(m.body, Body::Heartbeat { .. })).count();
    assert_eq!((early, held), (0, 2), "its first round waits for the write");
}

/// Rule 10: a blank node given `--force-new-group G` takes part in a
/// genesis of a later generation only when the proposal names G as left
/// by a listed identity: the flag left in a new node's arguments after a
/// recovery cannot create a second group.
#[test]
fn a_forced_genesis_of_a_later_generation_needs_a_node_that_left_the_group() {
    let old = GroupUid(0x99);
    let later = |forced: Option<GroupUid>| {
        let mut cfg = config_of("b");
        cfg.mode = Mode::Managed { incarnation: Incarnation(1) };
        cfg.force_new_group = Some(old);
        let durable = HardState { members: Some(Box::default()), ..HardState::default() };
        let mut b = Node::new(cfg, Some(durable), boot(), 7).expect("valid config");
        b.observe_wall_clock(FLOOR + 5_000_000);
        let names = ["a", "b", "c"].into_iter().map(id).collect();
        let _ = b.step(at(0), Input::Desired { names, generation: 7 });
        let mut p = proposal();
        p.generation = 7;
        p.forced = forced;
        let mut m = from("a", 1, "b", 0, Body::Accept { proposal: Box::new(p), wall_micros: FLOOR });
        m.group = None;
        m.config = None;
        let out = b.step(at(1), Input::Message(m));
        out.persist.and_then(|hs| hs.members).and_then(|m| m.accepted).is_some()
    };
    assert!(!later(None), "a later generation without a node that left the group");
    assert!(!later(Some(GroupUid(0x98))), "another group left");
    assert!(later(Some(old)), "the group the flag names, left by a listed identity");
}
