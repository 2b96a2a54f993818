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
//!
//! The state file has moved on: it now holds the node's incarnation
//! (`tests/fixtures/state-incarnation/`), a field earlier versions ignore.
//! So has the hello: version 2 adds the incarnation (`tests/fixtures/
//! hello-2/`); this version still writes version 1, exactly, to a peer of
//! an earlier version.
//! A protocol-1 state file is still read, and gains an incarnation on the
//! first start of this version.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use leasehold::core::{Body, Envelope, HardState, Incarnation, NodeId, Term, PROTOCOL_VERSION};
use leasehold::storage::{self, Identity};
use leasehold::transport::frame::{check_hello, decode_envelope, encode, Hello};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocol-1")
}

fn ids(names: &[&str]) -> BTreeSet<NodeId> {
    names.iter().map(|n| NodeId::new(*n)).collect()
}

fn state_identity() -> Identity {
    Identity {
        cluster_id: "pg-main".into(),
        node_id: NodeId::new("pg-0"),
        voters: ids(&["pg-0", "pg-1", "pg-2"]),
        incarnation: None,
    }
}

fn state() -> HardState {
    HardState::new(Term(7), Some(NodeId::new("pg-1")))
}

fn token_identity() -> Identity {
    Identity { cluster_id: "pg-main".into(), node_id: NodeId::new("pg-0"), voters: ids(&["pg-0"]), incarnation: None }
}

fn tokens() -> HardState {
    HardState::new(Term(41_000_017), None)
}

fn envelope(body: Body) -> Envelope {
    Envelope {
        version: 1,
        cluster_id: "pg-main".into(),
        from: NodeId::new("pg-0"),
        to: NodeId::new("pg-1"),
        term: Term(7),
        body,
        from_incarnation: None,
        to_incarnation: None,
        group: None,
        config: None,
        position: None,
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

/// A node of protocol 1 restarted on this version keeps its term and vote
/// (it is the same identity, its memory intact) and gains an incarnation,
/// written before it talks to anyone.
#[test]
fn a_protocol_1_state_file_is_upgraded_in_place_and_keeps_its_vote() {
    let data = std::env::temp_dir().join(format!("leasehold-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("state"), fixture("state")).expect("a protocol-1 state file");
    let file = storage::StateFile::open(&data).expect("open");
    let claimed = file.claim(&state_identity(), false).expect("claim");
    assert_eq!((claimed.how, claimed.initial.clone()), (storage::Claim::Upgraded, Some(state())));
    let (on_disk, hs) = storage::parse(&std::fs::read(data.join("state")).expect("read")).expect("parses");
    assert_eq!((on_disk, hs), (claimed.identity.clone(), state()));
    assert!(claimed.identity.incarnation.is_some());
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn protocol_1_frames_decode_as_written() {
    let hello = check_hello(payload(&fixture("hello")), "pg-main", |id| id.as_str().starts_with("pg-"))
        .expect("the hello is accepted");
    assert_eq!(
        hello,
        Hello {
            magic: 0x4C48_4C44,
            version: 1,
            cluster_id: "pg-main".into(),
            node_id: NodeId::new("pg-0"),
            incarnation: None,
            standing: Default::default(),
        }
    );
    for (name, expected) in messages() {
        let got = decode_envelope(payload(&fixture(name)), 1).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn this_version_writes_exactly_the_protocol_1_fixtures() {
    assert_eq!(PROTOCOL_VERSION, 1, "a new protocol: move this test's bytes to its own fixtures");
    // The built-in backend's state file now carries an incarnation (its
    // fixture is `state-incarnation/state`); the etcd token file does not.
    assert_eq!(storage::encode(&token_identity(), &tokens()), fixture("etcd-state"));
    let hello = Hello::new("pg-main", &NodeId::new("pg-0"));
    assert_eq!(encode(&hello).expect("encodes"), fixture("hello"));
    for (name, message) in messages() {
        assert_eq!(encode(&message).expect("encodes"), fixture(name), "{name}");
    }
}

/// The state file with an incarnation (DESIGN §2b), frozen like the
/// protocol-1 fixtures: read for as long as it is supported, written
/// exactly while it is the current format.
fn state_2_identity() -> Identity {
    Identity { incarnation: Some(Incarnation(0x0f1e_2d3c_4b5a_6978_8796_a5b4_c3d2_e1f0)), ..state_identity() }
}

fn fixture_2(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-incarnation").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn state_files_with_an_incarnation_read_back_as_written() {
    let (identity, hs) = storage::parse(&fixture_2("state")).expect("the state file parses");
    assert_eq!((identity, hs), (state_2_identity(), state()));
}

#[test]
fn this_version_writes_exactly_the_state_file_with_an_incarnation() {
    assert_eq!(storage::encode(&state_2_identity(), &state()), fixture_2("state"));
}

/// The hello of version 2 (with the incarnation), frozen the same way.
#[test]
fn the_hello_of_version_2_reads_back_and_is_written_exactly() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hello-2/hello");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let expected =
        Hello::with_incarnation("pg-main", &NodeId::new("pg-0"), state_2_identity().incarnation.expect("set"));
    let hello = check_hello(payload(&bytes), "pg-main", |id| id.as_str().starts_with("pg-")).expect("accepted");
    assert_eq!(hello, expected);
    assert_eq!(encode(&expected).expect("encodes"), bytes);
}
