//! Position-aware votes (docs/safety.md, "Replication positions") in the
//! core, one step test each: a voter grants only a candidate whose
//! position, carried in its request, is at least its own, and only with
//! its own read after the last lease it acked ended; the negative control
//! `votes_ignore_positions` grants regardless.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use leasehold::core::{Body, Broken, Envelope, Event, HardState, Input, Node, Position, PositionRefusal, Term};

mod common;
use common::steps::*;

fn voter(broken: Broken) -> Node {
    let mut cfg = config("b", &["a", "b", "c"]);
    cfg.positions = true;
    cfg.broken = broken;
    Node::new(cfg, Some(HardState::new(Term(3), None)), boot(), 7).expect("valid config")
}

fn at_pos(branch: u64, at: u64) -> Position {
    Position { branch: Term(branch), at }
}

/// a's vote request for term 4, carrying `position`.
fn request(position: Option<Position>) -> Envelope {
    let mut m = vote_request("a", "b", 4, None);
    m.position = position;
    m
}

#[test]
fn a_voter_grants_only_a_candidate_at_least_as_far_as_itself() {
    let mut b = voter(Broken::default());
    let _ = b.step(at(0), Input::Position { position: Some(at_pos(3, 10)), read_at: at(0) });
    assert_eq!(granted_vote(&deliver(&mut b, at(1), request(Some(at_pos(3, 9))))), Some(false), "behind");
    assert_eq!(granted_vote(&deliver(&mut b, at(2), request(None))), Some(false), "no position");
    let mut b = voter(Broken::default());
    let _ = b.step(at(0), Input::Position { position: Some(at_pos(3, 10)), read_at: at(0) });
    assert_eq!(granted_vote(&deliver(&mut b, at(1), request(Some(at_pos(3, 10))))), Some(true), "as far");
    // A later branch is ahead whatever its length.
    let mut b = voter(Broken::default());
    let _ = b.step(at(0), Input::Position { position: Some(at_pos(3, 10)), read_at: at(0) });
    assert_eq!(granted_vote(&deliver(&mut b, at(1), request(Some(at_pos(4, 2))))), Some(true), "a later branch");
    // Without a position of its own, a voter that uses them grants no one.
    let mut b = voter(Broken::default());
    assert_eq!(granted_vote(&deliver(&mut b, at(1), request(Some(at_pos(9, 99))))), Some(false), "unknown");
}

#[test]
fn a_voter_needs_a_read_taken_after_the_last_lease_it_acked() {
    let mut b = voter(Broken::default());
    // b acks a leader c of term 3: it promises c until one lease from now.
    let _ = b.step(at(0), Input::Position { position: Some(at_pos(3, 10)), read_at: at(0) });
    let out = deliver(&mut b, at(100), heartbeat("c", "b", 3, 1));
    assert!(out
        .send_now
        .iter()
        .chain(&out.send_after_persist)
        .any(|m| matches!(m.body, Body::HeartbeatAck { ok: true, .. })));
    // After the promise (2 s), a read taken before its end is not enough.
    let late = at(100 + TTL.as_millis() as u64 + 10);
    assert_eq!(granted_vote(&deliver(&mut b, late, request(Some(at_pos(3, 10))))), Some(false), "a read from before");
    let _ = b.step(late, Input::Position { position: Some(at_pos(3, 11)), read_at: late });
    let mut m = request(Some(at_pos(3, 11)));
    m.term = Term(5);
    assert_eq!(granted_vote(&deliver(&mut b, late, m)), Some(true), "a read after the lease it acked");
}

/// The fence: a follower's database may confirm the writes of the leader
/// it follows only while its promise to it holds.
#[test]
fn a_database_confirms_the_leaders_writes_only_while_promised() {
    let mut b = voter(Broken::default());
    assert_eq!(b.replication_source(at(0)), None, "no leader yet");
    let _ = deliver(&mut b, at(100), heartbeat("c", "b", 3, 1));
    assert_eq!(b.replication_source(at(150)), Some((id("c"), Term(3))), "following c in term 3");
    let end = at(100 + TTL.as_millis() as u64);
    assert_eq!(b.replication_source(end), None, "the promise ended: fenced");
}

#[test]
fn the_control_grants_a_candidate_behind_the_voter() {
    let broken = Broken { votes_ignore_positions: true, ..Broken::default() };
    let mut b = voter(broken);
    let _ = b.step(at(0), Input::Position { position: Some(at_pos(3, 10)), read_at: at(0) });
    assert_eq!(granted_vote(&deliver(&mut b, at(1), request(Some(at_pos(3, 1))))), Some(true), "the rule is off");
}

/// A former leader votes only with a read taken after the deadline it
/// published: its application may write until then, a hand-over that cut
/// its lease short notwithstanding (found by review).
/// `a` of a, b, c with positions, elected in term 1 with b's vote, and
/// the deadline it published.
fn elected() -> (Node, leasehold::core::Nanos) {
    let mut cfg = config("a", &["a", "b", "c"]);
    cfg.positions = true;
    let mut a = Node::new(cfg, Some(HardState::default()), boot(), 7).expect("valid config");
    let _ = a.step(at(1_000), Input::Tick);
    let _ = deliver(&mut a, at(1_001), msg("b", "a", 0, Body::PreVoteResponse { next_term: Term(1), granted: true }));
    let out = deliver(&mut a, at(1_002), msg("b", "a", 1, Body::VoteResponse { granted: true }));
    (a, out.view.as_ref().and_then(|v| v.lease_until).expect("a lease"))
}

/// `a`, elected in term 1, handed over at once; the deadline it
/// published.
fn handed_over() -> (Node, leasehold::core::Nanos) {
    let (mut a, deadline) = elected();
    // Its lease ends now; the deadline it gave stands.
    let _ = a.step(at(1_003), Input::Admin(leasehold::core::AdminRequest::StepDown));
    (a, deadline)
}

#[test]
fn a_former_leader_needs_a_read_taken_after_the_deadline_it_published() {
    // c campaigns on a's hand-over: a's transfer vote.
    let mut m = msg("c", "a", 2, Body::VoteRequest { transfer_from: Some(id("a")) });
    m.position = Some(at_pos(1, 5));
    let (mut a, _) = handed_over();
    let _ = a.step(at(1_004), Input::Position { position: Some(at_pos(1, 5)), read_at: at(1_004) });
    assert_eq!(granted_vote(&deliver(&mut a, at(1_005), m.clone())), Some(false), "a read before its deadline");
    let (mut a, deadline) = handed_over();
    let after = leasehold::core::Nanos(deadline.0 + 1);
    let _ = a.step(after, Input::Position { position: Some(at_pos(1, 5)), read_at: after });
    assert_eq!(granted_vote(&deliver(&mut a, after, m)), Some(true), "a read after it");
}

/// A leader with positions hands over to the most advanced healthy peer,
/// as its last ack said: here c, though b acked later and has the same
/// priority (without positions, b would be chosen).
#[test]
fn a_hand_over_goes_to_the_most_advanced_peer() {
    let (mut a, _) = elected();
    let ack = |from: &str, round: u64, p: Position| {
        let mut m = msg(from, "a", 1, Body::HeartbeatAck { round, ok: true, priority: 1, healthy: true });
        m.position = Some(p);
        m
    };
    let _ = deliver(&mut a, at(1_003), ack("c", 0, at_pos(1, 900)));
    let _ = deliver(&mut a, at(1_004), ack("b", 0, at_pos(1, 500)));
    let out = a.step(at(1_005), Input::Admin(leasehold::core::AdminRequest::StepDown));
    assert_eq!(out.admin, Some(Ok(())));
    let to = out.events.iter().find_map(|e| match e {
        Event::TransferStarted { to, .. } => Some(to.clone()),
        _ => None,
    });
    assert_eq!(to, Some(Some(id("c"))), "{:?}", out.events);
}

/// A refusal for the position alone is reported, with its reason.
#[test]
fn a_refusal_for_the_position_is_reported() {
    let mut b = voter(Broken::default());
    let out = deliver(&mut b, at(1), request(Some(at_pos(3, 1))));
    assert!(out.events.contains(&Event::PositionRefused { candidate: id("a"), reason: PositionRefusal::Unknown }));
    let _ = b.step(at(2), Input::Position { position: Some(at_pos(3, 10)), read_at: at(2) });
    let out = deliver(&mut b, at(3), request(Some(at_pos(3, 1))));
    assert!(out.events.contains(&Event::PositionRefused { candidate: id("a"), reason: PositionRefusal::Behind }));
}
