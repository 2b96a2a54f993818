//! Unit tests of single core steps: each asserts the whole output of one
//! `Node::step`, in particular what must be persisted and which messages may
//! leave only after that persist.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use leasehold::core::lease::{drift_ppm, leader_lease};
use leasehold::core::{
    AdminError, AdminRequest, Body, ConfigError, Envelope, Event, HardState, Input, Nanos, Node, Outputs, RejectReason,
    Role, Term, MAX_TERM_AHEAD,
};

mod common;
use common::steps::{at, boot, config, id, msg, HB, TTL};

#[test]
fn single_node_group_leads_only_once_its_term_is_durable() {
    let mut n = Node::new(config("a", &["a"]), None, boot(), 7).expect("valid config");
    // First tick: the election timer (jitter < heartbeat) has not fired.
    let first = n.step(at(0), Input::Tick);
    assert!(first.persist.is_none() && first.wake_at < at(400));
    let out = n.step(at(400), Input::Tick);
    let hs = HardState::new(Term(1), Some(id("a")));
    assert_eq!(out.persist, Some(hs.clone()));
    assert!(out.send_now.is_empty() && out.send_after_persist.is_empty());
    let view = out.view.expect("view changed");
    assert_eq!(view.role, Role::Candidate);
    assert!(!view.is_leader(at(400)), "no lease before the term is durable");

    let out = n.step(at(401), Input::Persisted(hs));
    let view = out.view.expect("view changed");
    assert_eq!(view.role, Role::Leader);
    assert_eq!(view.fencing_token, Some(Term(1)));
    // A group of one acks its own first heartbeat round, sent on winning at
    // 401ms: the lease runs from there, with the drift margin.
    assert_eq!(view.lease_until, Some(at(401).plus(leader_lease(TTL, drift_ppm(0.01)))));
    assert!(view.is_leader(at(401)));
    assert!(out.events.contains(&Event::ElectionWon { term: Term(1) }));
}

#[test]
fn vote_requests_wait_for_the_persist_of_the_new_term() {
    let mut n = Node::new(config("a", &["a", "b", "c"]), None, boot(), 7).expect("valid config");
    let out = n.step(at(400), Input::Tick);
    // PreVote first: nothing to persist, requests may leave at once.
    assert_eq!(out.persist, None);
    assert_eq!(out.send_now.len(), 2);
    assert!(matches!(out.send_now[0].body, Body::PreVoteRequest { next_term: Term(1) }));
    assert_eq!(out.send_now[0].term, Term(0));

    let grant = msg("b", "a", 0, Body::PreVoteResponse { next_term: Term(1), granted: true });
    let out = n.step(at(401), Input::Message(grant));
    assert_eq!(out.persist, Some(HardState::new(Term(1), Some(id("a")))));
    assert!(out.send_now.is_empty(), "nothing may leave before the vote for itself is durable");
    let expected: Vec<Envelope> =
        ["b", "c"].iter().map(|to| msg("a", to, 1, Body::VoteRequest { transfer_from: None })).collect();
    assert_eq!(out.send_after_persist, expected);
}

#[test]
fn a_granted_vote_is_persisted_before_it_is_sent_and_promises() {
    let mut n = Node::new(config("b", &["a", "b", "c"]), None, boot(), 7).expect("valid config");
    let req = msg("a", "b", 1, Body::VoteRequest { transfer_from: None });
    let out = n.step(at(10), Input::Message(req));
    assert_eq!(
        out,
        Outputs {
            persist: Some(HardState::new(Term(1), Some(id("a")))),
            send_after_persist: vec![msg("b", "a", 1, Body::VoteResponse { granted: true })],
            send_now: vec![],
            view: out.view.clone(),
            wake_at: out.wake_at,
            rejected: vec![],
            events: vec![],
            admin: None,
        }
    );
    let view = out.view.expect("term changed");
    assert_eq!(view.promise_until, at(10).plus(TTL));
    assert!(out.wake_at >= at(10).plus(TTL), "no campaign before the promise expires");
    // A second candidate in the same term is refused.
    let other = msg("c", "b", 1, Body::VoteRequest { transfer_from: None });
    let out = n.step(at(20), Input::Message(other));
    assert_eq!(out.send_after_persist, vec![msg("b", "c", 1, Body::VoteResponse { granted: false })]);
    assert_eq!(out.persist, None);
}

#[test]
fn persist_failure_stops_campaigning_until_a_write_succeeds() {
    let mut n = Node::new(config("a", &["a", "b", "c"]), None, boot(), 7).expect("valid config");
    let _ = n.step(at(400), Input::Tick);
    let grant = msg("b", "a", 0, Body::PreVoteResponse { next_term: Term(1), granted: true });
    let _ = n.step(at(401), Input::Message(grant));
    let out = n.step(at(402), Input::PersistFailed);
    assert_eq!(out.events, vec![Event::StorageFault]);
    let view = out.view.expect("view changed");
    assert_eq!(view.role, Role::Follower);
    assert!(!view.storage_ok);
    // Long after every timer, still no campaign and no vote granted.
    let out = n.step(at(10_000), Input::Tick);
    assert!(out.send_now.is_empty() && out.send_after_persist.is_empty() && out.persist.is_none());
    let req = msg("c", "a", 2, Body::VoteRequest { transfer_from: None });
    let out = n.step(at(10_001), Input::Message(req));
    assert!(matches!(out.send_after_persist[..], [Envelope { body: Body::VoteResponse { granted: false }, .. }]));
    let hs = n.hard_state().clone();
    let out = n.step(at(10_002), Input::Persisted(hs));
    assert_eq!(out.events, vec![Event::StorageRecovered]);
}

#[test]
fn a_node_at_the_last_term_never_campaigns_and_keeps_its_vote() {
    // A term near the end is reached one step at a time (a jump of more
    // than MAX_TERM_AHEAD is refused: see the next test).
    let near_end = HardState::new(Term(u64::MAX - 1), None);
    let mut n = Node::new(config("a", &["a", "b", "c"]), Some(near_end), boot(), 7).expect("valid config");
    let hb = msg("b", "a", u64::MAX, Body::Heartbeat { round: 1, leader_address: "b".into() });
    let out = n.step(at(1), Input::Message(hb));
    assert_eq!(out.persist, Some(HardState::new(Term(u64::MAX), None)));
    let out = n.step(at(1), Input::Persisted(HardState::new(Term(u64::MAX), None)));
    let _ = out;
    let out = n.step(at(60_000), Input::Tick);
    assert!(out.send_now.is_empty() && out.persist.is_none(), "no campaign at term u64::MAX");
    assert_eq!(out.wake_at, Nanos::NEVER.min(out.wake_at));
    assert_eq!(n.hard_state().term, Term(u64::MAX));
}

#[test]
fn a_term_too_far_ahead_is_refused_and_adopts_nothing() {
    let mut n = Node::new(config("a", &["a", "b", "c"]), None, boot(), 7).expect("valid config");
    for term in [u64::MAX, MAX_TERM_AHEAD + 1] {
        let hb = msg("b", "a", term, Body::Heartbeat { round: 1, leader_address: "b".into() });
        let out = n.step(at(1), Input::Message(hb));
        assert_eq!(out.rejected.len(), 1, "term {term}");
        assert_eq!(out.rejected[0].reason, RejectReason::TermTooFar);
        assert!(out.persist.is_none() && out.send_now.is_empty() && out.send_after_persist.is_empty());
    }
    // The largest jump allowed is adopted.
    let hb = msg("b", "a", MAX_TERM_AHEAD, Body::Heartbeat { round: 1, leader_address: "b".into() });
    let out = n.step(at(2), Input::Message(hb));
    assert!(out.rejected.is_empty());
    assert_eq!(out.persist.map(|h| h.term), Some(Term(MAX_TERM_AHEAD)));
}

#[test]
fn admin_requests_are_refused_with_a_reason_off_the_leader() {
    let mut n = Node::new(config("a", &["a", "b", "c"]), None, boot(), 7).expect("valid config");
    let out = n.step(at(1), Input::Admin(AdminRequest::StepDown));
    assert_eq!(out.admin, Some(Err(AdminError::NotLeader(None))));
}

#[test]
fn config_errors_name_the_flag() {
    let mut c = config("z", &["a", "b"]);
    assert_eq!(c.validate(), Err(ConfigError::NodeNotAVoter(id("z"))));
    c = config("a", &["a", "b"]);
    c.heartbeat_interval = Duration::from_secs(1);
    assert!(c.validate().expect_err("slow heartbeat").to_string().contains("--heartbeat-interval"));
    c.heartbeat_interval = HB;
    c.lease_ttl = Duration::from_millis(50);
    assert!(c.validate().expect_err("short lease").to_string().contains("--lease-ttl"));
    c.lease_ttl = TTL;
    c.max_clock_drift = 0.7;
    assert!(c.validate().expect_err("drift").to_string().contains("--max-clock-drift"));
    c.max_clock_drift = f64::NAN;
    assert!(c.validate().is_err());
}

#[test]
fn on_a_slow_disk_the_vote_round_waits_for_the_writes_and_the_lease_counts_from_the_write() {
    let lease = leader_lease(TTL, drift_ppm(0.01));
    let mut n = Node::new(config("a", &["a", "b", "c"]), None, boot(), 7).expect("valid config");
    // A vote for b, written in 1.2s (five times the usual vote round).
    let req = msg("b", "a", 1, Body::VoteRequest { transfer_from: None });
    let out = n.step(at(10), Input::Message(req));
    let voted = out.persist.expect("the vote is written");
    let _ = n.step(at(1_210), Input::Persisted(voted));
    // b is gone; long after the promise, a campaigns.
    let out = n.step(at(5_000), Input::Tick);
    assert!(matches!(out.send_now[0].body, Body::PreVoteRequest { next_term: Term(2) }), "{out:?}");
    let grant = msg("c", "a", 1, Body::PreVoteResponse { next_term: Term(2), granted: true });
    let out = n.step(at(5_001), Input::Message(grant));
    let own = out.persist.expect("the new term is written");
    assert_eq!(own.term, Term(2));
    // Its own write is as slow: 1.2s, past the usual 1s round. The round is
    // still open, and the requests leave only now.
    let out = n.step(at(6_201), Input::Persisted(own));
    assert_eq!(out.view.as_ref().map_or(Role::Candidate, |v| v.role), Role::Candidate);
    // c's vote, itself slowly written, comes 2.4s after the round began.
    let vote = msg("c", "a", 2, Body::VoteResponse { granted: true });
    let out = n.step(at(7_400), Input::Message(vote));
    let view = out.view.expect("view changed");
    assert_eq!(view.role, Role::Leader);
    // The lease counts from when the requests could leave, after the
    // write: not from when the round began (it would have lapsed).
    assert_eq!(view.lease_until, Some(at(6_201).plus(lease)));
    assert!(view.is_leader(at(7_400)));
}
