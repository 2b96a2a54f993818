//! The committed seed corpus of the fuzz targets (`fuzz/corpus/<target>/`,
//! docs/testing.md "Fuzzing"), made here from the crate's own encoders so
//! that it follows the wire and file formats.
//!
//! Every `seed-*` file of a target must be exactly what this file makes, and
//! nothing else may be named `seed-*`. Other files there (a crashing input
//! kept as a regression case) are left alone. After changing a seed or a
//! format: `LEASEHOLD_REWRITE=1 cargo test --test fuzz_seeds`, then review
//! `git status fuzz/corpus`.

// Reads and writes the corpus files; the clippy bans guard src/core only.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use clap::Parser;
use leasehold::cli::{Cli, Command};
use leasehold::config::Config;
use leasehold::core::{Body, Envelope, HardState, Incarnation, NodeId, Term, PROTOCOL_VERSION};
use leasehold::storage::{self, Identity};
use leasehold::transport::frame::{self, Hello, MAX_FRAME_BYTES};

type Seeds = BTreeMap<&'static str, Vec<u8>>;

fn envelope(body: Body) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        cluster_id: "pg".into(),
        from: NodeId::new("a"),
        to: NodeId::new("b"),
        term: Term(42),
        body,
        from_incarnation: None,
        to_incarnation: None,
        group: None,
        config: None,
        position: None,
    }
}

fn bodies() -> [(&'static str, Body); 7] {
    [
        ("prevote-request", Body::PreVoteRequest { next_term: Term(43) }),
        ("prevote-response", Body::PreVoteResponse { next_term: Term(43), granted: true }),
        ("vote-request", Body::VoteRequest { transfer_from: Some(NodeId::new("c")) }),
        ("vote-response", Body::VoteResponse { granted: false }),
        ("heartbeat", Body::Heartbeat { round: 7, leader_address: "10.0.0.1:5432".into() }),
        ("heartbeat-ack", Body::HeartbeatAck { round: 7, ok: true, priority: 2, healthy: true }),
        ("timeout-now", Body::TimeoutNow),
    ]
}

fn encoded<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    frame::encode(msg).expect("a seed encodes")
}

/// Byte streams as a peer's socket delivers them, and bare payloads.
fn frame_seeds() -> Seeds {
    let hello = encoded(&Hello::new("pg", &NodeId::new("a")));
    let heartbeat = encoded(&envelope(bodies()[4].1.clone()));
    let mut seeds = Seeds::new();
    seeds.insert("seed-stream-hello-heartbeat", [hello.clone(), heartbeat].concat());
    let mut every = hello.clone();
    for (_, body) in bodies() {
        every.extend(encoded(&envelope(body)));
    }
    seeds.insert("seed-stream-every-message", every);
    let oversize = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    seeds.insert("seed-stream-oversize", [hello.clone(), oversize.to_vec()].concat());
    seeds.insert("seed-stream-partial", [&100u32.to_be_bytes()[..], &[7; 10]].concat());
    seeds.insert("seed-stream-empty-frame", 0u32.to_be_bytes().to_vec());
    seeds.insert("seed-payload-hello", hello[4..].to_vec());
    let incarnation = Incarnation(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
    let hello_2 = encoded(&Hello::with_incarnation("pg", &NodeId::new("a"), incarnation));
    seeds.insert("seed-payload-hello-2", hello_2[4..].to_vec());
    seeds.insert("seed-payload-stranger", b"GET /v1/leader HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n".to_vec());
    let names = [
        "seed-payload-prevote-request",
        "seed-payload-prevote-response",
        "seed-payload-vote-request",
        "seed-payload-vote-response",
        "seed-payload-heartbeat",
        "seed-payload-heartbeat-ack",
        "seed-payload-timeout-now",
    ];
    for (name, (kind, body)) in names.into_iter().zip(bodies()) {
        assert!(name.ends_with(kind));
        seeds.insert(name, encoded(&envelope(body))[4..].to_vec());
    }
    seeds.insert(
        "seed-payload-managed-announce",
        encoded(&managed(Body::Announce { desired: 7, pending: None, left: None }))[4..].to_vec(),
    );
    seeds.insert("seed-payload-managed-heartbeat", encoded(&managed(bodies()[4].1.clone()))[4..].to_vec());
    seeds
}

/// An envelope of protocol 2 (a managed group) carrying `body` and the
/// managed seed's configuration.
fn managed(body: Body) -> Envelope {
    let mut m = envelope(body);
    m.version = leasehold::core::MANAGED_PROTOCOL_VERSION;
    m.from_incarnation = Some(Incarnation(1));
    m.to_incarnation = Some(Incarnation(2));
    let config = storage::parse(&state_managed()).expect("the managed seed parses").1.members.and_then(|m| m.config);
    m.group = config.as_ref().map(|c| c.group);
    m.config = config.map(Box::new);
    m
}

fn state(cluster: &str, node: &str, voters: &[&str], term: u64, vote: Option<&str>) -> Vec<u8> {
    let identity = Identity {
        cluster_id: cluster.into(),
        node_id: NodeId::new(node),
        voters: voters.iter().map(|v| NodeId::new(*v)).collect(),
        incarnation: None,
    };
    storage::encode(&identity, &HardState::new(Term(term), vote.map(NodeId::new)))
}

/// A state file with this node's incarnation.
fn state_2(term: u64, vote: Option<&str>) -> Vec<u8> {
    let identity = Identity {
        cluster_id: "pg".into(),
        node_id: NodeId::new("a"),
        voters: ["a", "b", "c"].into_iter().map(NodeId::new).collect(),
        incarnation: Some(Incarnation(0x0123_4567_89ab_cdef_0011_2233_4455_6677)),
    };
    storage::encode(&identity, &HardState::new(Term(term), vote.map(NodeId::new)))
}

/// A managed node's state file (version 2): a configuration, an open
/// acceptance, a withdrawn group, a renewed incarnation, an abandoned
/// group, a vote by identity.
fn state_managed() -> Vec<u8> {
    use leasehold::core::{Configuration, GroupUid, Identity as Who, MemberState, Proposal};
    let identity = Identity {
        cluster_id: "pg".into(),
        node_id: NodeId::new("a"),
        voters: ["a", "b", "c"].into_iter().map(NodeId::new).collect(),
        incarnation: Some(Incarnation(0x0123_4567_89ab_cdef_0011_2233_4455_6677)),
    };
    let who = |n: &str, i: u128| Who::new(NodeId::new(n), Incarnation(i));
    let voters: std::collections::BTreeSet<Who> = [who("a", 1), who("b", 2), who("c", 3)].into_iter().collect();
    let config = Configuration {
        group: GroupUid(0x6a),
        cterm: Term(1_700_000_000_000_009),
        epoch: 4,
        voters: voters.clone(),
        removed: [who("c", 9)].into_iter().collect(),
        generation: 3,
        floor: Term(1_700_000_000_000_000),
    };
    let members = MemberState {
        config: Some(config),
        accepted: Some((
            Proposal { group: GroupUid(0x6b), voters, generation: 1, forced: Some(GroupUid(0x6a)) },
            1_700_000_000_000_000,
        )),
        withdrawn: [GroupUid(0x6c)].into_iter().collect(),
        renewed: Some(Incarnation(0xabc)),
        abandoned: [GroupUid(0x6d)].into_iter().collect(),
    };
    let mut hs = HardState::new(Term(1_700_000_000_000_009), Some(NodeId::new("b")));
    hs.voted_incarnation = Some(Incarnation(2));
    hs.members = Some(Box::new(members));
    storage::encode(&identity, &hs)
}

fn state_file_seeds() -> Seeds {
    let abc = ["a", "b", "c"];
    let voted = state("pg", "a", &abc, 7, Some("b"));
    let mut seeds = Seeds::new();
    seeds.insert("seed-voted", voted.clone());
    seeds.insert("seed-no-vote", state("pg", "a", &abc, 0, None));
    seeds.insert("seed-max-term", state("pg", "c", &abc, u64::MAX, Some("c")));
    seeds.insert("seed-five-voters", state("mysql", "e", &["a", "b", "c", "d", "e"], 12, Some("d")));
    seeds.insert("seed-incarnation", state_2(7, Some("b")));
    seeds.insert("seed-incarnation-no-vote", state_2(0, None));
    seeds.insert("seed-managed", state_managed());
    seeds.insert("seed-escaped-ids", state("p\"g\\1", "ä", &["ä", "\u{7f}", "x y"], 3, Some("\u{7f}")));
    let mut bad_sum = voted.clone();
    let at = bad_sum.len() - 2;
    bad_sum[at] = if bad_sum[at] == b'0' { b'1' } else { b'0' };
    seeds.insert("seed-bad-checksum", bad_sum);
    seeds.insert("seed-truncated", voted[..voted.len() / 2].to_vec());
    seeds
}

/// Arguments after `leasehold`, NUL-separated.
fn args(list: &[&str]) -> Vec<u8> {
    list.join("\0").into_bytes()
}

const PEERS: &str = "a=10.0.0.1:7000,b=10.0.0.2:7000,c=pg-2.pg:7000";

fn config_seeds() -> Seeds {
    let mut seeds = Seeds::new();
    seeds.insert("seed-single-node", args(&["run"]));
    seeds.insert("seed-peers", args(&["run", "--node-id", "b", "--peers", PEERS, "--lease-ttl", "1s"]));
    seeds.insert(
        "seed-flags-without-run",
        args(&[
            "--node-id",
            "a",
            "--peers",
            PEERS,
            "--heartbeat-interval",
            "200ms",
            "--max-clock-drift",
            "0.02",
            "--priority",
            "0",
            "--listen-peer",
            "[::]:7000",
            "--listen-api",
            "127.0.0.1:4040",
            "--advertise",
            "db-0:5432",
        ]),
    );
    seeds.insert(
        "seed-every-other-flag",
        args(&[
            "run",
            "--cluster-id",
            "pg",
            "--data-dir",
            "/var/lib/leasehold",
            "--log-format",
            "json",
            "--listen-metrics",
            "0.0.0.0:4042",
            "--api-token-file",
            "/run/token",
            "--on-elected",
            "pg_ctl promote",
            "--on-demoted",
            "pg_ctl stop",
            "--accept-new-membership",
        ]),
    );
    seeds.insert("seed-health-url", args(&["run", "--health-check-url", "http://127.0.0.1:8008/health"]));
    seeds.insert("seed-health-exec", args(&["run", "--health-check-exec", "pg_isready -q"]));
    seeds.insert(
        "seed-etcd",
        args(&[
            "run",
            "--backend",
            "etcd",
            "--node-id",
            "a",
            "--etcd-endpoints",
            "https://e1:2379,https://e2:2379",
            "--election",
            "pg",
            "--etcd-ca",
            "ca.pem",
            "--etcd-cert",
            "c.pem",
            "--etcd-key",
            "k.pem",
            "--etcd-user",
            "u",
            "--etcd-password-file",
            "p",
        ]),
    );
    seeds.insert("seed-slow-heartbeat", args(&["run", "--lease-ttl", "1s", "--heartbeat-interval", "500ms"]));
    // At the edges of what is accepted, so that a loosened check is one
    // mutation away: the longest heartbeat for a 1s lease (3 x 326ms <=
    // 980.2ms), the shortest lease, the widest drift bound.
    seeds.insert("seed-edge-heartbeat", args(&["run", "--lease-ttl", "1s", "--heartbeat-interval", "326ms"]));
    seeds.insert("seed-edge-lease", args(&["run", "--lease-ttl", "100ms"]));
    seeds.insert(
        "seed-edge-drift",
        args(&["run", "--lease-ttl", "10s", "--heartbeat-interval", "1s", "--max-clock-drift", "0.49"]),
    );
    seeds.insert("seed-transfer", args(&["transfer", "--to", "b", "--wait", "30s", "--json"]));
    seeds.insert(
        "seed-step-down",
        args(&["step-down", "--if-leader", "--wait", "1m", "--api", "http://127.0.0.1:4040"]),
    );
    seeds.insert("seed-local", args(&["local", "--nodes", "5", "--lease-ttl", "300ms"]));
    seeds
}

/// Path, query, Host, configured host name, configured token,
/// Authorization, Origin; NUL-separated, absent when left off.
fn request(fields: &[&str]) -> Vec<u8> {
    fields.join("\0").into_bytes()
}

fn api_query_seeds() -> Seeds {
    let mut seeds = Seeds::new();
    seeds.insert("seed-long-poll", request(&["/v1/leader", "wait=30s&after_token=7", "127.0.0.1:4040"]));
    seeds.insert(
        "seed-transfer-with-token",
        request(&["/v1/transfer", "to=b&wait=10s", "localhost:4040", "", "s3cret", "Bearer s3cret"]),
    );
    seeds.insert("seed-step-down-ipv6", request(&["/v1/step-down", "wait=500ms", "[::1]:4040"]));
    seeds.insert("seed-named-host", request(&["/v1/step-down", "", "pg-0:4040", "pg-0"]));
    seeds.insert("seed-origin", request(&["/v1/transfer", "to=c", "127.0.0.1", "", "", "", "http://evil.example"]));
    seeds.insert("seed-rebinding", request(&["/v1/step-down", "", "evil.example:4040"]));
    seeds.insert("seed-bad-wait", request(&["/v1/leader", "wait=soon&after_token=x&to="]));
    seeds.insert("seed-patroni", request(&["/replica", "", "localhost"]));
    seeds.insert("seed-escaped-query", request(&["/v1/transfer", "to=pg%2D1&wait=1%30s&x+y", "LocalHost:4040"]));
    seeds.insert("seed-repeated-name", request(&["/v1/leader", "wait=1s&wait=2s", "127.0.0.1", "", "t", "bearer t"]));
    seeds
}

fn targets() -> [(&'static str, Seeds); 4] {
    [
        ("frame", frame_seeds()),
        ("state_file", state_file_seeds()),
        ("config", config_seeds()),
        ("api_query", api_query_seeds()),
    ]
}

#[test]
fn the_seeds_exercise_what_they_are_named_for() {
    let frames = frame_seeds();
    let hello = frame::check_hello(&frames["seed-payload-hello"], "pg", |id| id.as_str() == "a").expect("hello");
    assert_eq!(hello.node_id, NodeId::new("a"));
    let hello = frame::check_hello(&frames["seed-payload-hello-2"], "pg", |id| id.as_str() == "a").expect("hello");
    assert_eq!((hello.version, hello.incarnation.is_some()), (2, true));
    for (name, payload) in frames.iter().filter(|(n, _)| n.starts_with("seed-payload-") && !n.contains("hello")) {
        assert_eq!(frame::decode_envelope(payload, 2).is_ok(), !name.ends_with("stranger"), "{name}");
    }
    for (name, bytes) in state_file_seeds() {
        let valid = !name.ends_with("checksum") && !name.ends_with("truncated");
        assert_eq!(storage::parse(&bytes).is_ok(), valid, "{name}");
    }
}

/// `leasehold` with these NUL-separated arguments passes the checks.
fn accepted(seed: &[u8]) -> bool {
    let argv = std::iter::once("leasehold").chain(std::str::from_utf8(seed).expect("UTF-8").split('\0'));
    match Cli::try_parse_from(argv).expect("the arguments parse").command {
        Some(Command::Run(run)) => Config::from_args(&run).is_ok(),
        other => panic!("not a run command: {other:?}"),
    }
}

#[test]
fn the_edge_seeds_of_the_command_line_sit_on_the_edge() {
    let seeds = config_seeds();
    let past_the_edge = [
        ("seed-edge-heartbeat", "326ms", "327ms"),
        ("seed-edge-lease", "100ms", "99ms"),
        ("seed-edge-drift", "0.49", "0.5"),
    ];
    for (name, edge, past) in past_the_edge {
        let seed = &seeds[name];
        assert!(accepted(seed), "{name} is accepted");
        let beyond = String::from_utf8(seed.clone()).expect("UTF-8").replace(edge, past);
        assert!(!accepted(beyond.as_bytes()), "{name} with {past} instead of {edge} is refused");
    }
}

#[test]
fn the_committed_seed_corpus_is_what_this_file_makes() {
    let rewrite = std::env::var_os("LEASEHOLD_REWRITE").is_some();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut stale = Vec::new();
    for (target, seeds) in targets() {
        let dir = corpus.join(target);
        if rewrite {
            fs::create_dir_all(&dir).expect("create the corpus directory");
        }
        let committed: BTreeMap<String, Vec<u8>> = fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .map(|e| e.expect("read the corpus directory").path())
                    .filter_map(|p| {
                        let name = p.file_name()?.to_str()?.to_string();
                        name.starts_with("seed-").then(|| (name, fs::read(&p).expect("read a seed")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (name, bytes) in &seeds {
            if committed.get(*name) != Some(bytes) {
                if rewrite {
                    fs::write(dir.join(name), bytes).expect("write a seed");
                } else {
                    stale.push(format!("{target}/{name} is missing or differs"));
                }
            }
        }
        for name in committed.keys().filter(|n| !seeds.contains_key(n.as_str())) {
            if rewrite {
                fs::remove_file(dir.join(name)).expect("remove a stale seed");
            } else {
                stale.push(format!("{target}/{name} is made by nothing here"));
            }
        }
    }
    assert!(stale.is_empty(), "fuzz/corpus is stale (LEASEHOLD_REWRITE=1 to rewrite):\n{}", stale.join("\n"));
}
