//! The guards of DESIGN §2 rules 1 (promise), 7 (boot promise) and 8
//! (transfer) in the core, one step test each. Each test names the guard's
//! reason and fails when the guard is dropped, inverted or moved by one
//! tick (`cargo mutants`, docs/testing.md): the simulator's random seeds
//! reach these corners too rarely to pin them.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use leasehold::core::lease::{drift_ppm, leader_lease};
use leasehold::core::{
    AdminRequest, Body, Event, HardState, Input, LeaderView, Nanos, Node, NodeId, Outputs, RejectReason, Role,
    StepDownReason, Term,
};

mod common;
use common::steps::*;

fn hs(term: u64, voted_for: Option<&str>) -> HardState {
    HardState::new(Term(term), voted_for.map(id))
}

fn campaigned(out: &Outputs) -> Option<(Term, bool)> {
    out.events.iter().find_map(|e| match e {
        Event::ElectionStarted { term, transfer } => Some((*term, *transfer)),
        _ => None,
    })
}

fn pre_voted(out: &Outputs) -> bool {
    out.events.iter().any(|e| matches!(e, Event::PreVoteStarted { .. }))
}

fn pre_vote_answer(out: &Outputs) -> Option<bool> {
    out.send_now.iter().find_map(|m| match m.body {
        Body::PreVoteResponse { granted, .. } => Some(granted),
        _ => None,
    })
}

fn silent(out: &Outputs) -> bool {
    out.persist.is_none() && out.send_now.is_empty() && out.send_after_persist.is_empty()
}

/// b, restarted with term 3 (its vote went to a), past its boot promise,
/// following leader a in term 3 since `at(0)`.
fn follower_of_a() -> Node {
    let mut b = node("b", Some(hs(3, Some("a"))));
    let out = deliver(&mut b, at(0), heartbeat("a", "b", 3, 1));
    assert!(out.send_now.iter().any(|m| matches!(m.body, Body::HeartbeatAck { ok: true, .. })));
    b
}

// ---- rule 7: every start takes the boot promise --------------------------

/// A blank node may have lost a state file whose last ack still backs a
/// lease: it neither votes nor pre-votes until lease_ttl after boot, and
/// does from that very instant.
#[test]
fn a_blank_node_neither_votes_nor_pre_votes_before_its_boot_promise_ends() {
    let mut n = node("b", None);
    let just_before = Nanos(boot().plus(TTL).0 - 1);
    let out = n.step(just_before, Input::Message(vote_request("c", "b", 1, None)));
    assert!(silent(&out), "a vote request inside the boot promise is ignored, term included: {out:?}");
    assert_eq!(n.hard_state(), &HardState::default());
    let out = n.step(just_before, Input::Message(msg("c", "b", 0, Body::PreVoteRequest { next_term: Term(1) })));
    assert_eq!(pre_vote_answer(&out), Some(false));
    let out = n.step(boot().plus(TTL), Input::Message(vote_request("c", "b", 1, None)));
    assert_eq!(granted_vote(&out), Some(true), "the boot promise ends at boot + lease_ttl");
    assert_eq!(out.persist, Some(hs(1, Some("c"))));
}

/// A restarted node may follow and ack a leader at once, but its promise
/// to that leader does not let it vote for it before the boot promise
/// ends: before the crash it may have promised someone else. Its acks say
/// it cannot campaign yet (`healthy: false`), so no leader hands over to it.
#[test]
fn a_restarted_node_follows_at_once_but_votes_even_for_its_leader_only_after_the_boot_promise() {
    let mut b = node("b", Some(hs(3, Some("a"))));
    let out = deliver(&mut b, Nanos(10_000_000), heartbeat("a", "b", 3, 1));
    assert!(
        out.send_now.iter().any(|m| matches!(m.body, Body::HeartbeatAck { ok: true, healthy: false, .. })),
        "{out:?}"
    );
    assert_eq!(b.view().leader_id, Some(id("a")));
    let out = b.step(Nanos(20_000_000), Input::Message(vote_request("a", "b", 4, None)));
    assert!(silent(&out), "no vote inside the boot promise, even for the node promised: {out:?}");
    let out = b.step(Nanos(30_000_000), Input::Message(msg("a", "b", 3, Body::TimeoutNow)));
    assert_eq!(campaigned(&out), None, "no transfer campaign inside the boot promise");
    // Past the boot promise: its acks say it could campaign, and it votes.
    let out = deliver(&mut b, at(1), heartbeat("a", "b", 3, 2));
    assert!(out.send_now.iter().any(|m| matches!(m.body, Body::HeartbeatAck { ok: true, healthy: true, .. })));
    let out = deliver(&mut b, at(2), vote_request("a", "b", 4, None));
    assert_eq!(granted_vote(&out), Some(true));
}

// ---- rule 1: the promise --------------------------------------------------

/// A follower promised its leader: a vote request of another candidate is
/// ignored outright, its term included, so the leader is not deposed.
#[test]
fn a_promised_voter_ignores_another_candidate_and_votes_for_the_one_it_promised() {
    let mut b = follower_of_a();
    let out = b.step(at(10), Input::Message(vote_request("c", "b", 4, None)));
    assert!(silent(&out), "{out:?}");
    assert_eq!(b.hard_state().term, Term(3), "the candidate's term is not adopted");
    let out = deliver(&mut b, at(20), vote_request("a", "b", 4, None));
    assert_eq!(granted_vote(&out), Some(true), "the promised node itself may have the vote");
}

/// Once the promise has run out (lease_ttl after the last ack, on the
/// voter's clock), any candidate may have the vote, from that instant.
#[test]
fn a_voter_whose_promise_has_run_out_votes_for_another() {
    let mut b = follower_of_a();
    let ends = at(0).plus(TTL);
    let out = b.step(Nanos(ends.0 - 1), Input::Message(vote_request("c", "b", 4, None)));
    assert!(silent(&out), "one nanosecond before the end the promise holds: {out:?}");
    let out = deliver(&mut b, ends, vote_request("c", "b", 4, None));
    assert_eq!(granted_vote(&out), Some(true));
}

/// A pre-vote is granted only for a term above the voter's, to a
/// pre-candidate whose own term is below that term, and never while the
/// voter is promised to someone else.
#[test]
fn pre_votes_follow_the_promise_and_the_terms() {
    let pre_vote =
        |from: &str, term: u64, next: u64| msg(from, "b", term, Body::PreVoteRequest { next_term: Term(next) });
    let mut b = follower_of_a();
    let out = b.step(at(10), Input::Message(pre_vote("c", 3, 4)));
    assert_eq!(pre_vote_answer(&out), Some(false), "promised to a");
    let out = b.step(at(11), Input::Message(pre_vote("a", 3, 4)));
    assert_eq!(pre_vote_answer(&out), Some(true), "a is the node promised");
    let free = at(0).plus(TTL);
    let mut b = follower_of_a();
    let out = b.step(free, Input::Message(pre_vote("c", 2, 3)));
    assert_eq!(pre_vote_answer(&out), Some(false), "a next term equal to the voter's is stale");
    let out = b.step(free, Input::Message(pre_vote("c", 4, 4)));
    assert_eq!(pre_vote_answer(&out), Some(false), "a pre-candidate already in that term gains nothing");
    let out = b.step(free, Input::Message(pre_vote("c", 3, 4)));
    assert_eq!(pre_vote_answer(&out), Some(true));
    assert_eq!(b.hard_state().term, Term(3), "a pre-vote changes nothing at the voter");
    // Liveness, not safety: for one heartbeat interval after a pre-vote the
    // voter endorses no other pre-candidate for that term, so that two of
    // them do not both go on to split the real vote.
    let held_until = free.plus(HB);
    let out = b.step(Nanos(held_until.0 - 1), Input::Message(pre_vote("a", 3, 4)));
    assert_eq!(pre_vote_answer(&out), Some(false), "held for c");
    let out = b.step(held_until, Input::Message(pre_vote("a", 3, 4)));
    assert_eq!(pre_vote_answer(&out), Some(true), "the hold ends after one heartbeat interval");
}

/// Two pre-candidates for the same term that ask each other settle it by
/// node id: the larger endorses the smaller and gives up its own pre-vote;
/// the smaller endorses the larger too (its own round may be stuck) but
/// goes on. Both going on, both would campaign and split the real vote.
#[test]
fn of_two_pre_candidates_for_one_term_the_larger_id_yields() {
    let free = at(0).plus(TTL * 2);
    let pre_vote = |from: &str, to: &str| msg(from, to, 3, Body::PreVoteRequest { next_term: Term(4) });
    let pre_candidate = |me: &str| {
        let mut n = node(me, Some(hs(3, Some("a"))));
        let _ = deliver(&mut n, at(0), heartbeat("a", me, 3, 1));
        assert!(pre_voted(&n.step(free, Input::Tick)), "{me}: the promise ran out");
        assert_eq!(n.role(), Role::PreCandidate);
        n
    };
    let mut b = pre_candidate("b");
    let mut c = pre_candidate("c");
    let out = b.step(free, Input::Message(pre_vote("c", "b")));
    assert_eq!(pre_vote_answer(&out), Some(true), "b endorses c");
    assert_eq!(b.role(), Role::PreCandidate, "and goes on: c comes after b");
    let out = c.step(free, Input::Message(pre_vote("b", "c")));
    assert_eq!(pre_vote_answer(&out), Some(true), "c endorses b");
    assert_eq!(c.role(), Role::Follower, "and gives up its own pre-vote");
    assert!(out.events.contains(&Event::PreVoteFailed { next_term: Term(4) }));
    let grant = msg("b", "c", 3, Body::PreVoteResponse { next_term: Term(4), granted: true });
    assert_eq!(campaigned(&c.step(free, Input::Message(grant))), None, "a late grant starts nothing");
    let grant = msg("c", "b", 3, Body::PreVoteResponse { next_term: Term(4), granted: true });
    assert_eq!(campaigned(&b.step(free, Input::Message(grant))), Some((Term(4), false)));
    // A pre-candidate for another term is no rival: a request for a higher
    // term is granted as by any follower.
    let mut b = pre_candidate("b");
    let out = b.step(free, Input::Message(msg("c", "b", 4, Body::PreVoteRequest { next_term: Term(5) })));
    assert_eq!(pre_vote_answer(&out), Some(true));
}

/// A follower whose timer fires campaigns only once its promise is over; a
/// pre-candidate that turned unhealthy does not turn its won pre-vote into
/// a campaign.
#[test]
fn a_follower_campaigns_only_when_free_and_eligible() {
    let mut b = follower_of_a();
    let out = b.step(at(0).plus(TTL / 2), Input::Tick);
    assert!(!pre_voted(&out), "promised to a: no campaign");
    let out = b.step(at(0).plus(TTL * 2), Input::Tick);
    assert!(pre_voted(&out), "the promise ran out: a pre-vote starts");
    let _ = b.step(at(0).plus(TTL * 2), Input::Health(false));
    let grant = msg("c", "b", 3, Body::PreVoteResponse { next_term: Term(4), granted: true });
    let out = b.step(at(0).plus(TTL * 2), Input::Message(grant));
    assert_eq!(campaigned(&out), None, "an unhealthy node does not campaign: {out:?}");
    assert_eq!(b.role(), Role::Follower);
}

/// A node's promise to itself (its own candidacy) does not hold back its
/// next campaign: the lease it protects was never won.
#[test]
fn a_failed_candidate_campaigns_again_without_waiting_out_its_promise_to_itself() {
    let mut b = follower_of_a();
    let t = at(0).plus(TTL * 2);
    let _ = b.step(t, Input::Tick);
    let grant = msg("c", "b", 3, Body::PreVoteResponse { next_term: Term(4), granted: true });
    let out = b.step(t, Input::Message(grant));
    assert_eq!(campaigned(&out), Some((Term(4), false)));
    let _ = b.step(t, Input::Persisted(hs(4, Some("b"))));
    // No vote comes: the round times out; the promise to itself (lease_ttl
    // from t) still runs, yet the next pre-vote starts a jitter later.
    let mut next = None;
    for ms in (10..1_900).step_by(10) {
        let now = t.plus(Duration::from_millis(ms));
        if pre_voted(&b.step(now, Input::Tick)) {
            next = Some(now);
            break;
        }
    }
    let next = next.expect("a new pre-vote within the promise to itself");
    assert!(next < t.plus(TTL), "{next:?}");
}

// ---- rule 8: the transfer ---------------------------------------------------

/// The target of a hand-over campaigns at once, with the transfer flag,
/// only on a TimeoutNow of its leader in its current term.
#[test]
fn a_follower_campaigns_at_once_on_its_leaders_timeout_now() {
    let mut b = follower_of_a();
    let out = b.step(at(1), Input::Message(msg("a", "b", 3, Body::TimeoutNow)));
    assert_eq!(campaigned(&out), Some((Term(4), true)));
    assert_eq!(out.persist, Some(hs(4, Some("b"))));
    let want = vote_request("b", "c", 4, Some("a"));
    assert!(out.send_after_persist.contains(&want), "{out:?}");
}

#[test]
fn a_timeout_now_from_a_peer_that_is_not_its_leader_is_ignored() {
    let mut b = follower_of_a();
    let out = b.step(at(1), Input::Message(msg("c", "b", 3, Body::TimeoutNow)));
    assert_eq!(campaigned(&out), None);
    assert!(silent(&out));
}

#[test]
fn a_timeout_now_of_an_older_term_is_refused_as_stale() {
    let mut b = follower_of_a();
    let out = b.step(at(1), Input::Message(msg("a", "b", 2, Body::TimeoutNow)));
    assert_eq!(campaigned(&out), None);
    assert_eq!(out.rejected.iter().map(|r| r.reason).collect::<Vec<_>>(), vec![RejectReason::StaleTerm]);
}

/// A vote granted since is a promise too: the old leader's TimeoutNow does
/// not override it.
#[test]
fn a_follower_that_voted_for_another_since_ignores_its_old_leaders_timeout_now() {
    let mut b = node("b", Some(hs(2, Some("a"))));
    let _ = deliver(&mut b, at(0), heartbeat("a", "b", 3, 1));
    assert_eq!(b.hard_state(), &hs(3, None), "following a in term 3 without a vote in it");
    let free = at(0).plus(TTL);
    let out = deliver(&mut b, free, vote_request("c", "b", 3, None));
    assert_eq!(granted_vote(&out), Some(true), "promise to a over: c may have b's vote of term 3");
    assert_eq!(b.view().leader_id, Some(id("a")));
    let out = b.step(free.plus(Duration::from_millis(1)), Input::Message(msg("a", "b", 3, Body::TimeoutNow)));
    assert_eq!(campaigned(&out), None, "promised to c: {out:?}");
    // Nor does c, which b promised but does not follow: only the leader of
    // b's present term hands over.
    let out = b.step(free.plus(Duration::from_millis(2)), Input::Message(msg("c", "b", 3, Body::TimeoutNow)));
    assert_eq!(campaigned(&out), None, "c is not b's leader: {out:?}");
}

/// Eligibility, a working disk and a finished boot promise are each needed
/// to take over: a TimeoutNow does not bypass them.
#[test]
fn an_ineligible_follower_ignores_its_leaders_timeout_now() {
    let timeout_now = msg("a", "b", 3, Body::TimeoutNow);
    let mut b = follower_of_a();
    let _ = b.step(at(1), Input::Health(false));
    assert_eq!(campaigned(&b.step(at(2), Input::Message(timeout_now.clone()))), None, "unhealthy");
    let mut cfg = config("b", &["a", "b", "c"]);
    cfg.priority = 0;
    let mut b = Node::new(cfg, Some(hs(3, Some("a"))), boot(), 7).expect("config");
    let _ = deliver(&mut b, at(0), heartbeat("a", "b", 3, 1));
    assert_eq!(campaigned(&b.step(at(2), Input::Message(timeout_now.clone()))), None, "priority 0");
    let mut b = follower_of_a();
    let _ = b.step(at(1), Input::PersistFailed);
    assert_eq!(campaigned(&b.step(at(2), Input::Message(timeout_now))), None, "storage fault");
}

/// b leads term 4 (elected at `at(0)` with c's vote); returns it and its
/// lease end.
fn leader_b() -> (Node, Nanos) {
    let mut b = node("b", Some(hs(3, None)));
    let _ = b.step(at(0), Input::Tick);
    let t = Nanos(at(0).0 + HB.as_nanos() as u64);
    let _ = b.step(t, Input::Tick);
    let grant = msg("c", "b", 3, Body::PreVoteResponse { next_term: Term(4), granted: true });
    let out = b.step(t, Input::Message(grant));
    assert_eq!(campaigned(&out), Some((Term(4), false)), "{out:?}");
    let _ = b.step(t, Input::Persisted(hs(4, Some("b"))));
    let out = b.step(t, Input::Message(msg("c", "b", 4, Body::VoteResponse { granted: true })));
    let view = out.view.expect("b leads");
    assert!(view.is_leader(t));
    (b, view.lease_until.expect("a lease"))
}

/// A node that led does not take over again, not even on a TimeoutNow,
/// before the lease it held is over: its application may have cached that
/// deadline, and a new token of its own must not overlap it.
#[test]
fn a_deposed_leader_ignores_a_timeout_now_until_its_own_lease_is_over() {
    let (mut b, lease_until) = leader_b();
    let t = at(500);
    let out = deliver(&mut b, t, heartbeat("a", "b", 5, 1));
    assert!(out.events.contains(&Event::SteppedDown { term: Term(4), reason: StepDownReason::HigherTerm }));
    assert_eq!(b.role(), Role::Follower);
    assert!(lease_until > t.plus(Duration::from_millis(100)));
    let out = b.step(t.plus(Duration::from_millis(100)), Input::Message(msg("a", "b", 5, Body::TimeoutNow)));
    assert_eq!(campaigned(&out), None, "inside its own old lease");
    let _ = deliver(&mut b, lease_until, heartbeat("a", "b", 5, 2));
    let out = b.step(lease_until, Input::Message(msg("a", "b", 5, Body::TimeoutNow)));
    assert_eq!(campaigned(&out), Some((Term(6), true)), "its lease is over: {out:?}");
}

/// A voter breaks its promise to the leader only for a transfer vote that
/// the leader started, for the term right after the voter's, whatever the
/// term the promise was made in (docs/safety.md, claim 2).
#[test]
fn a_promised_voter_grants_a_transfer_vote_started_by_its_leader_for_the_next_term_only() {
    let mut b = follower_of_a();
    let out = b.step(at(10), Input::Message(vote_request("c", "b", 5, Some("a"))));
    assert!(silent(&out), "a transfer two terms on is no TimeoutNow of a's present term: {out:?}");
    let out = b.step(at(10), Input::Message(vote_request("c", "b", 4, Some("c"))));
    assert!(silent(&out), "only the promised leader can release the promise: {out:?}");
    let out = deliver(&mut b, at(10), vote_request("c", "b", 4, Some("a")));
    assert_eq!(granted_vote(&out), Some(true));
    // The promise made in an older term is released as well: b promised a
    // in term 3 and is now in term 4, and a (leading term 4) hands over.
    let mut b = follower_of_a();
    let _ = deliver(
        &mut b,
        at(10),
        msg("c", "b", 4, Body::HeartbeatAck { round: 0, ok: false, priority: 1, healthy: true }),
    );
    assert_eq!(b.hard_state().term, Term(4));
    let out = deliver(&mut b, at(11), vote_request("c", "b", 5, Some("a")));
    assert_eq!(granted_vote(&out), Some(true), "{out:?}");
}

/// A leader that hands over ends its lease at once and never holds one
/// again in that term: a late ack of an earlier round extends nothing.
#[test]
fn a_leader_that_handed_over_ignores_late_acks() {
    let (mut b, _) = leader_b();
    let t = at(500);
    let ack = |round| msg("c", "b", 4, Body::HeartbeatAck { round, ok: true, priority: 1, healthy: true });
    let _ = b.step(t, Input::Message(ack(1)));
    let out = b.step(t, Input::Admin(AdminRequest::TransferTo(id("c"))));
    assert_eq!(out.admin, Some(Ok(())));
    assert!(out.send_now.contains(&msg("b", "c", 4, Body::TimeoutNow)), "{out:?}");
    let view = b.view();
    assert_eq!(view.lease_until, Some(t));
    assert!(!view.is_leader(t));
    let _ = b.step(t.plus(Duration::from_millis(5)), Input::Message(ack(2)));
    assert_eq!(b.view().lease_until, Some(t), "no lease again in this term");
    assert_eq!(
        b.step(t.plus(Duration::from_millis(6)), Input::Admin(AdminRequest::StepDown)).admin,
        Some(Err(leasehold::core::AdminError::TransferInProgress))
    );
}

/// A leader that handed over and then hears the next term steps down as
/// `Transferred`, and like any follower waits out its whole promise (to
/// itself, from its last heartbeat) before it campaigns.
#[test]
fn a_leader_that_handed_over_waits_out_its_promise_after_the_next_term() {
    let (mut b, _) = leader_b();
    let t = at(500);
    let _ = b.step(
        t,
        Input::Message(msg("c", "b", 4, Body::HeartbeatAck { round: 1, ok: true, priority: 1, healthy: true })),
    );
    let last_heartbeat = t;
    let _ = b.step(t, Input::Tick);
    let _ = b.step(t, Input::Admin(AdminRequest::TransferTo(id("c"))));
    // c's ack of a higher term (it campaigned): b adopts term 5.
    let out = deliver(
        &mut b,
        t.plus(Duration::from_millis(3)),
        msg("c", "b", 5, Body::PreVoteResponse { next_term: Term(5), granted: false }),
    );
    assert!(out.events.contains(&Event::SteppedDown { term: Term(4), reason: StepDownReason::Transferred }), "{out:?}");
    let promise_end = b.view().promise_until;
    assert!(promise_end >= last_heartbeat.plus(TTL.mul_f64(0.9)), "{promise_end:?}");
    for ms in (10..1_500).step_by(10) {
        let out = b.step(t.plus(Duration::from_millis(ms)), Input::Tick);
        assert!(!pre_voted(&out), "campaigned {ms}ms after handing over, inside its promise");
    }
}

/// A leader deposed by a higher term (not by its own hand-over) steps down
/// as `HigherTerm`, becomes a follower, and keeps its lease deadline as the
/// earliest instant it may lead again.
#[test]
fn a_leader_that_hears_a_higher_term_steps_down() {
    let (mut b, _) = leader_b();
    let out = deliver(&mut b, at(500), msg("c", "b", 5, Body::PreVoteResponse { next_term: Term(5), granted: false }));
    assert!(out.events.contains(&Event::SteppedDown { term: Term(4), reason: StepDownReason::HigherTerm }));
    assert_eq!(b.role(), Role::Follower);
    assert_eq!(b.hard_state(), &hs(5, None));
}

/// `is_leader` is role Leader and `now < lease_until`, nothing else: the
/// lease's last instant is not part of it.
#[test]
fn is_leader_ends_at_the_lease_deadline_exactly() {
    let lease_until = Nanos(5_000);
    let view = LeaderView {
        node_id: NodeId::new("b"),
        role: Role::Leader,
        term: Term(4),
        leader_id: Some(NodeId::new("b")),
        leader_address: None,
        fencing_token: Some(Term(4)),
        lease_until: Some(lease_until),
        promise_until: lease_until,
        healthy: true,
        storage_ok: true,
    };
    assert!(view.is_leader(Nanos(4_999)));
    assert!(!view.is_leader(lease_until));
    assert!(!LeaderView { role: Role::Candidate, ..view.clone() }.is_leader(Nanos(1)));
    assert!(!LeaderView { lease_until: None, ..view }.is_leader(Nanos(1)));
    // The leader's lease is the voters' promise shortened by the drift
    // margin: 2s at 1% gives 1.960396039s.
    assert_eq!(leader_lease(TTL, drift_ppm(0.01)), Duration::from_nanos(1_960_396_039));
}

/// A lease grows only on acks of rounds this leader sent in its own term
/// (rule 2): a stale term's ack, a refusal, or an ack of a round not sent
/// yet extends nothing; a good ack extends the lease to that round's send
/// time plus the leader lease, and reports the round trip.
#[test]
fn a_leader_counts_only_good_acks_of_its_own_rounds() {
    let (mut b, first_lease) = leader_b();
    let t = Nanos(at(0).0 + HB.as_nanos() as u64);
    let round2 = t.plus(HB);
    let out = b.step(round2, Input::Tick);
    assert!(out.send_now.iter().any(|m| matches!(m.body, Body::Heartbeat { round: 2, .. })), "{out:?}");
    let ack = |term, round, ok| msg("c", "b", term, Body::HeartbeatAck { round, ok, priority: 1, healthy: true });
    let later = round2.plus(Duration::from_millis(5));
    let out = b.step(later, Input::Message(ack(3, 2, true)));
    assert_eq!(out.rejected.iter().map(|r| r.reason).collect::<Vec<_>>(), vec![RejectReason::StaleTerm]);
    let _ = b.step(later, Input::Message(ack(4, 2, false)));
    let _ = b.step(later, Input::Message(ack(4, 3, true)));
    assert_eq!(b.view().lease_until, Some(first_lease), "a stale, refused or future ack extends nothing");
    let out = b.step(later, Input::Message(ack(4, 2, true)));
    assert_eq!(b.view().lease_until, Some(round2.plus(leader_lease(TTL, drift_ppm(0.01)))));
    let rtt = Duration::from_millis(5);
    assert_eq!(out.events, vec![Event::AckRoundTrip { peer: id("c"), rtt }]);
}

/// A majority that comes only after the votes' lease has run out (a
/// paused candidate, late answers) elects nobody: the winner would hold no
/// lease, and its first heartbeat would make followers promise a leader
/// that steps down in the same step (with a lost state file, such a
/// promise let a late winner's successor overlap a lease; seed 10111486).
#[test]
fn votes_that_arrive_after_their_lease_elect_nobody() {
    let lease = leader_lease(TTL, drift_ppm(0.01));
    for (late_ns, wins) in [(0, true), (1, false)] {
        let mut b = node("b", Some(hs(3, None)));
        let t = Nanos(at(0).0 + HB.as_nanos() as u64);
        let _ = b.step(at(0), Input::Tick);
        let _ = b.step(t, Input::Tick);
        let grant = msg("c", "b", 3, Body::PreVoteResponse { next_term: Term(4), granted: true });
        let _ = b.step(t, Input::Message(grant));
        let _ = b.step(t, Input::Persisted(hs(4, Some("b"))));
        let arrives = Nanos(t.plus(lease).0 - 1 + late_ns);
        let out = b.step(arrives, Input::Message(msg("c", "b", 4, Body::VoteResponse { granted: true })));
        let won = out.events.contains(&Event::ElectionWon { term: Term(4) });
        assert_eq!(won, wins, "a vote {late_ns}ns past the last instant of its lease: {out:?}");
        let heartbeats = out.send_now.iter().any(|m| matches!(m.body, Body::Heartbeat { .. }));
        assert_eq!(heartbeats, wins);
        if !wins {
            assert!(out.events.contains(&Event::ElectionLost { term: Term(4) }), "{out:?}");
            assert_eq!(b.role(), Role::Follower);
        }
    }
}
