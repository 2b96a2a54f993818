//! Helpers for tests of single core steps (`tests/core_steps.rs`,
//! `tests/guards.rs`): a three-node configuration, envelopes, and time
//! counted from the end of the boot promise.

use std::collections::BTreeSet;
use std::time::Duration;

use leasehold::core::{Body, Config, Envelope, HardState, Input, Nanos, Node, NodeId, Outputs, Term};

pub const TTL: Duration = Duration::from_secs(2);
pub const HB: Duration = Duration::from_millis(400);

pub fn id(s: &str) -> NodeId {
    NodeId::new(s)
}

pub fn config(me: &str, voters: &[&str]) -> Config {
    Config {
        cluster_id: "c".into(),
        node_id: id(me),
        voters: voters.iter().map(|v| id(v)).collect::<BTreeSet<_>>(),
        lease_ttl: TTL,
        heartbeat_interval: HB,
        max_clock_drift: 0.01,
        priority: 1,
        advertise: format!("{me}:5432"),
        mode: leasehold::core::Mode::Static,
        force_new_group: None,
        upgrading: None,
        positions: false,
        broken: leasehold::core::Broken::default(),
    }
}

pub fn msg(from: &str, to: &str, term: u64, body: Body) -> Envelope {
    Envelope::new("c", id(from), id(to), Term(term), body)
}

/// The instant every node in these tests boots.
pub fn boot() -> Nanos {
    Nanos::ZERO
}

/// `ms` milliseconds after the boot promise (one `TTL` after boot) ended:
/// every start takes it (rule 7), so most tests begin there.
pub fn at(ms: u64) -> Nanos {
    Nanos((TTL.as_millis() as u64 + ms) * 1_000_000)
}

/// Node `me` of the group a, b, c, booted with `durable` (None: blank).
pub fn node(me: &str, durable: Option<HardState>) -> Node {
    Node::new(config(me, &["a", "b", "c"]), durable, boot(), 7).expect("valid config")
}

/// Delivers `m` at `now`; if the step asked for a write, completes it at
/// once, and returns both steps' outputs (the write's messages included).
pub fn deliver(n: &mut Node, now: Nanos, m: Envelope) -> Outputs {
    let mut out = n.step(now, Input::Message(m));
    if let Some(hs) = out.persist.clone() {
        let done = n.step(now, Input::Persisted(hs));
        out.send_now.extend(done.send_now);
        out.events.extend(done.events);
        if done.view.is_some() {
            out.view = done.view;
        }
    }
    out
}

pub fn heartbeat(from: &str, to: &str, term: u64, round: u64) -> Envelope {
    msg(from, to, term, Body::Heartbeat { round, leader_address: format!("{from}:5432") })
}

pub fn vote_request(from: &str, to: &str, term: u64, transfer_from: Option<&str>) -> Envelope {
    msg(from, to, term, Body::VoteRequest { transfer_from: transfer_from.map(id) })
}

/// The vote this step sent (to anyone), if any.
pub fn granted_vote(out: &Outputs) -> Option<bool> {
    out.send_now.iter().chain(&out.send_after_persist).find_map(|m| match m.body {
        Body::VoteResponse { granted } => Some(granted),
        _ => None,
    })
}
