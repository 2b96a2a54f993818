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
    let out = deliver(&mut a, at(0), from("b", 2, "a", 0, Body::Announce { desired: 0, pending: None }));
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
    Proposal { group: GROUP, voters: group().voters }
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
/// The group's configuration, arriving later, is refused.
#[test]
fn an_acceptance_is_withdrawn_when_a_listed_name_comes_back_as_another_identity() {
    let mut b = managed("b", 1, None);
    let _ = deliver(&mut b, at(0), accept("a", "b", FLOOR));
    let out = deliver(&mut b, at(1), from("c", 2, "b", 0, Body::Announce { desired: 0, pending: None }));
    assert!(out.events.contains(&Event::GenesisWithdrawn { group: GROUP }));
    let withdrawn = b.hard_state().members.as_ref().map(|m| m.withdrawn.clone()).unwrap_or_default();
    assert!(withdrawn.contains(&GROUP) && b.hard_state().members.as_ref().is_some_and(|m| m.accepted.is_none()));
    let _ = deliver(&mut b, at(2), from("a", 1, "b", T, Body::Config { config: Box::new(group()) }));
    assert_eq!(holds(&b), None, "a withdrawn identity never acts under that genesis");
    let _ = deliver(&mut b, at(3), accept("c", "b", FLOOR));
    assert!(b.hard_state().members.as_ref().is_some_and(|m| m.accepted.is_none()), "nor accepts it again");
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
