//! Rule 11 (docs/safety.md, "Membership") in the core, one step test
//! each: a static leader converts its group only once every other static
//! voter is upgrading with the same voters and acked a round of its term
//! (one voter that came back blank is left out, never two); an upgrading
//! follower converts only on a configuration that lists it, keeping its
//! vote; a converted node hands its configuration to a static peer. The
//! vote test fails under the negative control `convert_forgets_vote`.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeSet;

use leasehold::core::{
    static_digest, Body, Broken, Configuration, Envelope, Event, GroupUid, HardState, Identity, Incarnation, Input,
    MemberState, Mode, Node, NodeId, Outputs, PeerKind, RejectReason, Term, MANAGED_PROTOCOL_VERSION,
};

mod common;
use common::steps::*;

fn who(name: &str, life: u128) -> Identity {
    Identity::new(id(name), Incarnation(life))
}

fn names() -> BTreeSet<NodeId> {
    ["a", "b", "c"].into_iter().map(id).collect()
}

/// Static node `me` of a, b, c, started with `--peers-file` (its
/// incarnation is its letter's position: a = 1, b = 2, c = 3).
fn upgrading(me: &str, durable: HardState, broken: Broken) -> Node {
    let mut cfg = config(me, &["a", "b", "c"]);
    cfg.upgrading = Some(Incarnation(life_of(me)));
    cfg.broken = broken;
    Node::new(cfg, Some(durable), boot(), 7).expect("valid config")
}

fn life_of(name: &str) -> u128 {
    u128::from(name.as_bytes()[0] - b'a' + 1)
}

fn upgrading_kind(name: &str) -> PeerKind {
    PeerKind::Upgrading { incarnation: Incarnation(life_of(name)), digest: static_digest(&names()) }
}

fn sent_to<'a>(out: &'a Outputs, to: &str) -> Option<&'a Envelope> {
    out.send_now.iter().chain(&out.send_after_persist).find(|m| m.to.as_str() == to)
}

fn converted(out: &Outputs) -> bool {
    out.events.iter().any(|e| matches!(e, Event::Converted { .. }))
}

fn ack(from: &str, term: u64, round: u64) -> Envelope {
    msg(from, "a", term, Body::HeartbeatAck { round, ok: true, priority: 1, healthy: true })
}

/// `a`, upgrading, elected in term 1 by b's vote (static messages).
fn leader_a() -> Node {
    let mut a = upgrading("a", HardState::default(), Broken::default());
    let out = a.step(at(1_000), Input::Tick);
    assert!(out.events.iter().any(|e| matches!(e, Event::PreVoteStarted { .. })));
    let _ = deliver(&mut a, at(1_001), msg("b", "a", 0, Body::PreVoteResponse { next_term: Term(1), granted: true }));
    let out = deliver(&mut a, at(1_002), msg("b", "a", 1, Body::VoteResponse { granted: true }));
    assert!(out.events.iter().any(|e| matches!(e, Event::ElectionWon { term: Term(1) })));
    a
}

/// The first configuration `a` made, once durable.
fn first_configuration(a: &mut Node, out: &Outputs) -> Configuration {
    let hs = out.persist.clone().expect("the conversion is written before anything acts on it");
    let _ = a.step(at(1_100), Input::Persisted(hs.clone()));
    hs.members.and_then(|m| m.config).expect("a configuration")
}

#[test]
fn a_static_leader_converts_once_every_voter_is_upgrading_and_acked_its_term() {
    let mut a = leader_a();
    let _ = a.step(at(1_010), Input::Peer { name: id("b"), kind: upgrading_kind("b") });
    // b acked before c's hello: still static.
    let out = deliver(&mut a, at(1_011), ack("b", 1, 1));
    assert!(!converted(&out), "c has not said it is upgrading");
    let _ = a.step(at(1_012), Input::Peer { name: id("c"), kind: upgrading_kind("c") });
    let out = deliver(&mut a, at(1_013), ack("b", 1, 1));
    assert!(!converted(&out), "c has not acked a round of term 1");
    let out = deliver(&mut a, at(1_014), ack("c", 1, 1));
    assert!(converted(&out));
    let c = first_configuration(&mut a, &out);
    assert_eq!((c.cterm, c.epoch), (Term(1), 1), "stamped with the leader's term");
    assert_eq!(c.voters, [who("a", 1), who("b", 2), who("c", 3)].into_iter().collect());
    assert_eq!(a.incarnation(), Some(Incarnation(1)), "a managed identity from now on");
    // Its next round carries the configuration, in protocol 2, to each
    // listed identity.
    let out = a.step(at(1_500), Input::Tick);
    let round = out.send_now.iter().find(|m| matches!(m.body, Body::Heartbeat { .. })).expect("a round");
    assert_eq!(round.version, MANAGED_PROTOCOL_VERSION);
    assert_eq!(round.config.as_deref(), Some(&c));
}

#[test]
fn a_leader_does_not_convert_on_other_voters_or_an_ack_of_an_earlier_term() {
    // c's static voters differ.
    let mut a = leader_a();
    let _ = a.step(at(1_010), Input::Peer { name: id("b"), kind: upgrading_kind("b") });
    let other = PeerKind::Upgrading { incarnation: Incarnation(3), digest: static_digest(&[id("c")].into()) };
    let _ = a.step(at(1_010), Input::Peer { name: id("c"), kind: other });
    let _ = deliver(&mut a, at(1_011), ack("b", 1, 1));
    assert!(!converted(&deliver(&mut a, at(1_012), ack("c", 1, 1))), "two leaders whose --peers disagree");
    // c converted already (it holds a configuration): a waits for it.
    let mut a = leader_a();
    let _ = a.step(at(1_010), Input::Peer { name: id("b"), kind: upgrading_kind("b") });
    let held = PeerKind::Managed { incarnation: Incarnation(3), blank: false };
    let _ = a.step(at(1_010), Input::Peer { name: id("c"), kind: held });
    assert!(!converted(&deliver(&mut a, at(1_011), ack("b", 1, 1))), "c holds a configuration already");
    // A new hello from c forgets its earlier acks.
    let mut a = leader_a();
    let _ = a.step(at(1_010), Input::Peer { name: id("b"), kind: upgrading_kind("b") });
    let _ = a.step(at(1_010), Input::Peer { name: id("c"), kind: upgrading_kind("c") });
    let _ = deliver(&mut a, at(1_011), ack("c", 1, 1));
    let _ = a.step(at(1_012), Input::Peer { name: id("c"), kind: PeerKind::Static });
    let _ = a.step(at(1_013), Input::Peer { name: id("c"), kind: upgrading_kind("c") });
    assert!(!converted(&deliver(&mut a, at(1_014), ack("b", 1, 1))), "c's ack came before its new hello");
}

#[test]
fn one_voter_that_came_back_blank_is_left_out_never_two() {
    let blank = |life| PeerKind::Managed { incarnation: Incarnation(life), blank: true };
    let mut a = leader_a();
    let _ = a.step(at(1_010), Input::Peer { name: id("b"), kind: upgrading_kind("b") });
    let _ = a.step(at(1_010), Input::Peer { name: id("c"), kind: blank(33) });
    let out = deliver(&mut a, at(1_011), ack("b", 1, 1));
    assert!(converted(&out));
    let c = first_configuration(&mut a, &out);
    assert_eq!(c.voters, [who("a", 1), who("b", 2)].into_iter().collect(), "c's new identity joins as a learner");
    // Five voters, two of them blank: no conversion.
    let five = ["a", "b", "c", "d", "e"];
    let mut cfg = config("a", &five);
    cfg.upgrading = Some(Incarnation(1));
    let mut a = Node::new(cfg, Some(HardState::default()), boot(), 7).expect("valid config");
    let _ = a.step(at(1_000), Input::Tick);
    for v in ["b", "c"] {
        let _ = deliver(&mut a, at(1_001), msg(v, "a", 0, Body::PreVoteResponse { next_term: Term(1), granted: true }));
    }
    for v in ["b", "c"] {
        let _ = deliver(&mut a, at(1_002), msg(v, "a", 1, Body::VoteResponse { granted: true }));
    }
    assert_eq!(a.role(), leasehold::core::Role::Leader);
    let digest = static_digest(&five.into_iter().map(id).collect());
    for v in ["b", "c", "d", "e"] {
        let kind = if v >= "d" {
            blank(40 + life_of(v))
        } else {
            PeerKind::Upgrading { incarnation: Incarnation(life_of(v)), digest }
        };
        let _ = a.step(at(1_010), Input::Peer { name: id(v), kind });
    }
    let mut out = deliver(&mut a, at(1_011), ack("b", 1, 1));
    out.events.extend(deliver(&mut a, at(1_012), ack("c", 1, 1)).events);
    assert!(!converted(&out), "two voters lost: the conversion waits");
}

/// C1 = (4, 1, {a/1, b/2, c/3}).
fn first() -> Configuration {
    Configuration {
        group: GroupUid(0x11),
        cterm: Term(4),
        epoch: 1,
        voters: [who("a", 1), who("b", 2), who("c", 3)].into_iter().collect(),
        removed: BTreeSet::new(),
        generation: 0,
        floor: Term(0),
    }
}

/// A protocol-2 message from `from` (its letter's incarnation) to b/2.
fn managed_msg(from: &str, term: u64, body: Body, config: Configuration) -> Envelope {
    let mut m = msg(from, "b", term, body);
    m.version = MANAGED_PROTOCOL_VERSION;
    m.from_incarnation = Some(Incarnation(life_of(from)));
    m.to_incarnation = Some(Incarnation(2));
    m.group = Some(config.group);
    m.config = Some(Box::new(config));
    m
}

/// b voted for c in term 5 (static), then hears a's vote request of term
/// 5 carrying the first configuration: it converts, and keeps its vote.
fn vote_after_converting(broken: Broken) -> Outputs {
    let mut b = upgrading("b", HardState::new(Term(5), Some(id("c"))), broken);
    let request = managed_msg("a", 5, Body::VoteRequest { transfer_from: None }, first());
    let out = deliver(&mut b, at(5_000), request);
    assert!(converted(&out), "b is listed: it converts");
    assert_eq!(b.configuration(), Some(&first()));
    out
}

#[test]
fn an_upgrading_follower_converts_on_a_configuration_that_lists_it_and_keeps_its_vote() {
    assert_eq!(granted_vote(&vote_after_converting(Broken::default())), Some(false), "b voted for c in term 5");
    // The negative control: the vote forgotten, b votes twice in term 5.
    let broken = Broken { convert_forgets_vote: true, ..Broken::default() };
    assert_eq!(granted_vote(&vote_after_converting(broken)), Some(true), "the control must break the rule");
}

#[test]
fn an_upgrading_node_that_is_not_listed_stays_static() {
    let mut b = upgrading("b", HardState::new(Term(5), None), Broken::default());
    let mut other = first();
    other.voters = [who("a", 1), who("b", 22), who("c", 3)].into_iter().collect();
    let out = deliver(
        &mut b,
        at(5_000),
        managed_msg("a", 5, Body::Heartbeat { round: 1, leader_address: "a".into() }, other),
    );
    assert!(!converted(&out));
    assert_eq!(b.incarnation(), None, "still static");
    assert!(out.rejected.iter().any(|r| r.reason == RejectReason::Version));
    // A static node that is not upgrading never converts.
    let mut plain = node("b", Some(HardState::new(Term(5), None)));
    let out = deliver(
        &mut plain,
        at(5_000),
        managed_msg("a", 5, Body::Heartbeat { round: 1, leader_address: "a".into() }, first()),
    );
    assert!(!converted(&out) && plain.incarnation().is_none());
}

#[test]
fn a_converted_node_hands_its_configuration_to_a_static_peer() {
    let mut cfg = config("a", &["a", "b", "c"]);
    cfg.mode = Mode::Managed { incarnation: Incarnation(1) };
    let members = MemberState { config: Some(first()), ..MemberState::default() };
    let durable = HardState { term: Term(4), members: Some(Box::new(members)), ..HardState::default() };
    let mut a = Node::new(cfg, Some(durable), boot(), 7).expect("valid config");
    let out = deliver(&mut a, at(3_000), msg("c", "a", 6, Body::PreVoteRequest { next_term: Term(7) }));
    assert!(out.rejected.iter().any(|r| r.reason == RejectReason::Version), "protocol 1 is refused");
    assert_eq!(granted_vote(&out), None, "and never answered as a vote");
    // c's term is above a's: a takes it first (durably), so that c, which
    // converts only on a message of its own term or a later one, does.
    let hs = out.persist.clone().expect("the term is written first");
    assert_eq!(hs.term, Term(6));
    assert!(!out.send_now.iter().any(|m| matches!(m.body, Body::Config { .. })), "not before the term is durable");
    let handed =
        out.send_after_persist.iter().find(|m| matches!(m.body, Body::Config { .. })).expect("its configuration");
    assert_eq!((handed.to.as_str(), handed.to_incarnation, handed.term), ("c", Some(Incarnation(3)), Term(6)));
    let mut c = upgrading("c", HardState::new(Term(6), None), Broken::default());
    assert!(converted(&deliver(&mut c, at(3_001), handed.clone())), "c converts on it");
}

/// A first configuration of an earlier term than the upgrading node's
/// (delayed in flight while the node acked a later static leader, which
/// may have converted the group since) is not converted on.
#[test]
fn an_upgrading_node_does_not_convert_on_a_message_of_an_earlier_term() {
    let mut b = upgrading("b", HardState::new(Term(6), None), Broken::default());
    let late = managed_msg("a", 4, Body::Heartbeat { round: 1, leader_address: "a".into() }, first());
    let out = deliver(&mut b, at(5_000), late);
    assert!(!converted(&out) && b.incarnation().is_none(), "still static");
    // It tells the sender its term, in protocol 1: a refused ack.
    let told = sent_to(&out, "a").expect("an answer");
    assert_eq!((told.version, told.term), (leasehold::core::PROTOCOL_VERSION, Term(6)));
    assert!(matches!(told.body, Body::HeartbeatAck { ok: false, .. }));
    let now = managed_msg("a", 6, Body::Heartbeat { round: 1, leader_address: "a".into() }, first());
    assert!(converted(&deliver(&mut b, at(5_001), now)), "the same configuration in the node's term converts it");
}
