//! What this version writes, frozen as fixtures for the versions after it:
//! a state file, an etcd token file, the hello and every peer message of
//! protocol 1 (`tests/fixtures/protocol-1/`). Membership (DESIGN §2b) must
//! keep a group of these nodes electing through a rolling upgrade, so a
//! later version must still read every fixture here as the values below.
//!
//! Two kinds of assertion: *read* (the fixture decodes to these values),
//! which stays for as long as upgrades from protocol 1 are supported; and
//! *written* (this version's encoders produce exactly these bytes), which
//! holds only while protocol 1 is the current one: when the format
//! changes, it moves to the new version's fixtures and this file keeps the
//! reads. The fixtures are never regenerated.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use leasehold::core::{Body, Envelope, HardState, NodeId, Term, PROTOCOL_VERSION};
use leasehold::storage::{self, Identity};
use leasehold::transport::frame::{check_hello, decode_envelope, encode, Hello};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocol-1")
}

fn ids(names: &[&str]) -> BTreeSet<NodeId> {
    names.iter().map(|n| NodeId::new(*n)).collect()
}

fn state_identity() -> Identity {
    Identity { cluster_id: "pg-main".into(), node_id: NodeId::new("pg-0"), voters: ids(&["pg-0", "pg-1", "pg-2"]) }
}

fn state() -> HardState {
    HardState { term: Term(7), voted_for: Some(NodeId::new("pg-1")) }
}

fn token_identity() -> Identity {
    Identity { cluster_id: "pg-main".into(), node_id: NodeId::new("pg-0"), voters: ids(&["pg-0"]) }
}

fn tokens() -> HardState {
    HardState { term: Term(41_000_017), voted_for: None }
}

fn envelope(body: Body) -> Envelope {
    Envelope {
        version: 1,
        cluster_id: "pg-main".into(),
        from: NodeId::new("pg-0"),
        to: NodeId::new("pg-1"),
        term: Term(7),
        body,
    }
}

/// Every message of protocol 1, by file name.
fn messages() -> Vec<(&'static str, Envelope)> {
    vec![
        ("pre-vote-request", envelope(Body::PreVoteRequest { next_term: Term(8) })),
        ("pre-vote-response", envelope(Body::PreVoteResponse { next_term: Term(8), granted: true })),
        ("vote-request", envelope(Body::VoteRequest { transfer_from: None })),
        ("vote-request-transfer", envelope(Body::VoteRequest { transfer_from: Some(NodeId::new("pg-2")) })),
        ("vote-response", envelope(Body::VoteResponse { granted: false })),
        ("heartbeat", envelope(Body::Heartbeat { round: 12, leader_address: "pg-0.pg:5432".into() })),
        ("heartbeat-ack", envelope(Body::HeartbeatAck { round: 12, ok: true, priority: 3, healthy: true })),
        ("timeout-now", envelope(Body::TimeoutNow)),
    ]
}

fn fixture(name: &str) -> Vec<u8> {
    let path = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A frame's payload: the 4-byte length prefix taken off and checked.
fn payload(frame: &[u8]) -> &[u8] {
    let (len, rest) = frame.split_first_chunk::<4>().expect("a length prefix");
    assert_eq!(u32::from_be_bytes(*len) as usize, rest.len(), "the prefix is the payload's length");
    rest
}

#[test]
fn protocol_1_state_files_read_back_as_written() {
    let (identity, hs) = storage::parse(&fixture("state")).expect("the state file parses");
    assert_eq!((identity, hs), (state_identity(), state()));
    let (identity, hs) = storage::parse(&fixture("etcd-state")).expect("the token file parses");
    assert_eq!((identity, hs), (token_identity(), tokens()));
}

#[test]
fn protocol_1_frames_decode_as_written() {
    let hello = check_hello(payload(&fixture("hello")), "pg-main", |id| id.as_str().starts_with("pg-"))
        .expect("the hello is accepted");
    assert_eq!(
        hello,
        Hello { magic: 0x4C48_4C44, version: 1, cluster_id: "pg-main".into(), node_id: NodeId::new("pg-0") }
    );
    for (name, expected) in messages() {
        let got = decode_envelope(payload(&fixture(name))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn this_version_writes_exactly_the_protocol_1_fixtures() {
    assert_eq!(PROTOCOL_VERSION, 1, "a new protocol: move this test's bytes to its own fixtures");
    assert_eq!(storage::encode(&state_identity(), &state()), fixture("state"));
    assert_eq!(storage::encode(&token_identity(), &tokens()), fixture("etcd-state"));
    let hello = Hello::new("pg-main", &NodeId::new("pg-0"));
    assert_eq!(encode(&hello).expect("encodes"), fixture("hello"));
    for (name, message) in messages() {
        assert_eq!(encode(&message).expect("encodes"), fixture(name), "{name}");
    }
}
