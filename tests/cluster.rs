//! Real `leasehold` processes on loopback, real TCP, real fsync, real
//! signals; every test runs the observer check of DESIGN §7 while it works.
//! Every process is ended by its pid; every wait has a deadline.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(1);
mod common;
use common::*;

struct Node {
    api: String,
    metrics: String,
    args: Vec<String>,
    child: Option<Child>,
}

struct Cluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    observer: Option<Observer>,
}

impl Cluster {
    fn start(n: usize, name: &str) -> Cluster {
        Cluster::start_with(n, name, TTL)
    }

    fn start_with(n: usize, name: &str, ttl: Duration) -> Cluster {
        let dir = std::env::temp_dir().join(format!("leasehold-cluster-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let nodes = layout(n, &dir, ttl)
            .nodes
            .into_iter()
            .map(|l| Node { api: l.api, metrics: l.metrics, args: l.args, child: None })
            .collect();
        let mut c = Cluster { nodes, dir, observer: None };
        for i in 0..n {
            c.spawn(i);
        }
        c.observer = Some(Observer::start(c.nodes.iter().map(|n| n.api.clone()).collect()));
        c
    }

    /// Each node's log, kept across its restarts, shown when a wait fails.
    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}.log", i + 1))
    }

    fn spawn(&mut self, i: usize) {
        std::fs::create_dir_all(&self.dir).expect("cluster dir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i)).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(&self.nodes[i].args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leasehold");
        self.nodes[i].child = Some(child);
    }

    fn signal(&mut self, i: usize, sig: i32) {
        if let Some(c) = &self.nodes[i].child {
            // SAFETY: kill(2) on the pid of a child this test spawned.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    fn kill9(&mut self, i: usize) {
        self.signal(i, libc::SIGKILL);
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.wait();
        }
    }

    /// Waits (at most `within`) until exactly one live node answers 200 on
    /// /v1/leader, other than `not`; returns its index, its token, and when.
    fn wait_for_leader(&self, within: Duration, not: Option<usize>) -> (usize, u64, Instant) {
        let apis: Vec<Option<&str>> = self.nodes.iter().map(|n| n.child.as_ref().map(|_| n.api.as_str())).collect();
        wait_for_one_leader(&apis, within, not)
            .unwrap_or_else(|| panic!("no leader within {within:?}\n{}", self.describe()))
    }

    /// What every node says of itself and the end of its log, for a failure.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let status = n.child.as_ref().and_then(|_| get(&n.api, "/v1/status")).map(|(_, b)| b);
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            out += &describe_node(&format!("n{}", i + 1), status, &log, 40);
        }
        out
    }

    /// Waits (at most 10s) until the observer holds `n` proofs of leadership,
    /// of `token` if given.
    fn wait_for_proofs(&self, n: usize, token: Option<u64>) {
        let obs = self.observer.as_ref().expect("observer running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = obs.proofs().iter().filter(|p| token.is_none_or(|t| p.token == t)).count();
            if seen >= n {
                return;
            }
            assert!(Instant::now() < deadline, "the observer saw only {seen} of {n} proofs within 10s");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (at most 10s) until every running node knows a leader.
    fn wait_until_all_know_a_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let knows = |api: &str| get(api, "/v1/leader").is_some_and(|(_, b)| b.contains("\"leader_id\":\"n"));
        while !self.nodes.iter().filter(|n| n.child.is_some()).all(|n| knows(&n.api)) {
            assert!(Instant::now() < deadline, "a node did not rejoin within 10s");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the observer and asserts its check.
    fn check(&mut self) -> usize {
        let obs = self.observer.take().expect("observer running");
        obs.finish()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.observer.take());
        for i in 0..self.nodes.len() {
            self.signal(i, libc::SIGKILL);
            if let Some(mut c) = self.nodes[i].child.take() {
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn three_nodes_elect_exactly_one_leader() {
    let mut c = Cluster::start(3, "elect3");
    let (_, token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    assert!(token >= 1);
    c.wait_for_proofs(100, Some(token));
    // Connected, and its hello named its incarnation.
    let connected = |status: &str, peer: &str| {
        status.contains(&format!("{{\"connected\":true,\"id\":\"{peer}\",\"incarnation\":\""))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = get(&c.nodes[0].api, "/v1/status").expect("status");
        if connected(&status, "n2") && connected(&status, "n3") {
            break;
        }
        assert!(Instant::now() < deadline, "peers not reported connected: {status}");
        thread::sleep(Duration::from_millis(10));
    }
    assert!(c.check() >= 100, "the observer saw the leader many times");
}

#[test]
fn five_nodes_elect_exactly_one_leader() {
    let mut c = Cluster::start(5, "elect5");
    let (_, token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    c.wait_for_proofs(30, Some(token));
    assert!(c.check() >= 30);
}

#[test]
fn kill_9_of_the_leader_elects_another_with_a_higher_token() {
    let mut c = Cluster::start(3, "kill9");
    let mut failovers = Vec::new();
    let (mut leader, mut token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    for round in 0..3 {
        let killed_at = Instant::now();
        c.kill9(leader);
        let (next, next_token, at) = c.wait_for_leader(3 * TTL, Some(leader));
        assert!(next_token > token, "round {round}: token {next_token} after {token}");
        failovers.push(at - killed_at);
        c.spawn(leader);
        (leader, token) = (next, next_token);
        c.wait_until_all_know_a_leader();
    }
    c.check();
    eprintln!("failover after kill -9 at lease_ttl {TTL:?}: {failovers:?}");
}

/// The incarnation `api`'s /v1/status shows for itself, or for `peer`.
fn incarnation(api: &str, peer: Option<&str>) -> Option<String> {
    let (_, status) = get(api, "/v1/status")?;
    let from = match peer {
        Some(p) => status.find(&format!("\"id\":\"{p}\""))?,
        // Keys are sorted: this node's own comes before "peers".
        None => status.find("\"incarnation\":")?,
    };
    let at = status[from..].find("\"incarnation\":\"")? + from + 15;
    status.get(at..at + 32).map(str::to_string)
}

/// A node whose data dir is lost comes back as a new identity (DESIGN
/// §2b): a new incarnation, which its peers learn from its hello and log.
#[test]
fn a_node_that_lost_its_data_dir_is_seen_by_its_peers_as_a_new_identity() {
    let mut c = Cluster::start(3, "wiped");
    c.wait_for_leader(Duration::from_secs(10), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        match (incarnation(&c.nodes[0].api, Some("n3")), incarnation(&c.nodes[2].api, None)) {
            (Some(seen), Some(own)) if seen == own => break own,
            _ => assert!(Instant::now() < deadline, "n1 never learnt n3's incarnation:\n{}", c.describe()),
        }
        thread::sleep(Duration::from_millis(10));
    };
    c.kill9(2);
    std::fs::remove_dir_all(c.dir.join("n3")).expect("lose n3's data dir");
    c.spawn(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match (incarnation(&c.nodes[0].api, Some("n3")), incarnation(&c.nodes[2].api, None)) {
            (Some(seen), Some(own)) if seen == own && own != before => break own,
            _ => assert!(Instant::now() < deadline, "n1 never saw n3's new incarnation:\n{}", c.describe()),
        }
        thread::sleep(Duration::from_millis(10));
    };
    let log = std::fs::read_to_string(c.log_path(0)).expect("n1's log");
    assert!(
        log.lines().any(|l| l.contains("peer answers as a new identity") && l.contains(&after) && l.contains(&before)),
        "{log}"
    );
    c.check();
}

#[test]
fn sigterm_of_the_leader_hands_over_within_a_fraction_of_the_lease() {
    let mut c = Cluster::start(3, "sigterm");
    let (leader, token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    // Proofs of the old lease exist before the hand-over, so the observer
    // check really covers the overlap a hand-over creates.
    c.wait_for_proofs(10, Some(token));
    let t0 = Instant::now();
    c.signal(leader, libc::SIGTERM);
    let (_, next_token, at) = c.wait_for_leader(TTL, Some(leader));
    c.observer.as_mut().expect("observer").handovers.push((leader, t0, at));
    let handover = at - t0;
    assert!(next_token > token);
    let mut child = c.nodes[leader].child.take().expect("child");
    let deadline = Instant::now() + 3 * TTL;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the old leader did not exit within 3 x lease_ttl of SIGTERM");
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "clean exit after the hand-over");
    c.check();
    eprintln!("handover on SIGTERM: {handover:?}");
    assert!(handover < TTL / 2, "a planned hand-over must not wait for the lease: {handover:?}");
}

#[test]
fn a_paused_leader_never_overlaps_its_successor() {
    let mut c = Cluster::start(3, "pause");
    let (leader, token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    c.signal(leader, libc::SIGSTOP);
    let (_, next_token, _) = c.wait_for_leader(3 * TTL, Some(leader));
    assert!(next_token > token);
    c.signal(leader, libc::SIGCONT);
    // The resumed node catches up (its queued messages carry the new term)
    // and then follows the new leader; it must answer 503 throughout.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(&c.nodes[leader].api, "/v1/leader");
        if let Some((code, body)) = &answer {
            assert_eq!(*code, 503, "the resumed ex-leader is not leader: {body}");
            if field(body, "fencing_token") == Some(next_token) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the resumed node never followed the new leader: {answer:?}");
        thread::sleep(Duration::from_millis(10));
    }
    c.check();
}

#[test]
fn a_node_restarted_with_other_peers_refuses_to_start() {
    let mut c = Cluster::start(3, "membership");
    c.wait_for_leader(Duration::from_secs(10), None);
    // Its view names a leader only once its term is durable: the state file
    // holds the voter set from then on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(&c.nodes[2].api, "/v1/leader").is_some_and(|(_, b)| b.contains("\"leader_id\":\"n")) {
        assert!(Instant::now() < deadline, "n3 never learned the leader");
        thread::sleep(Duration::from_millis(10));
    }
    c.kill9(2);
    let mut args = c.nodes[2].args.clone();
    let peers = args.iter().position(|a| a == "--peers").expect("--peers") + 1;
    args[peers] = format!("{},n4=127.0.0.1:{}", args[peers], free_port());
    let (code, err) = run_bounded(&args, Duration::from_secs(10));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--accept-new-membership"), "{err}");
    c.check();
}

/// One request with extra header lines (each ending in CRLF); (status, body).
fn request(api: &str, method: &str, path: &str, headers: &str) -> Option<(u16, String)> {
    let headers: Vec<&str> = headers.split("\r\n").filter(|h| !h.is_empty()).collect();
    let a = leasehold::http::request(api, method, path, &headers, "", Duration::from_secs(10)).ok()?;
    Some((a.status, a.body))
}

#[test]
fn transfer_through_the_api_with_its_guards_and_a_long_poll_that_sees_it() {
    let mut c = Cluster::start(3, "transfer");
    let (leader, token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    let target = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let host = "Host: 127.0.0.1\r\n";
    let path = format!("/v1/transfer?to=n{}", target + 1);
    let api = c.nodes[leader].api.clone();
    let (code, body) = request(&api, "POST", &path, &format!("{host}Origin: http://evil.example\r\n")).expect("answer");
    assert_eq!(code, 403, "an Origin header is refused: {body}");
    let (code, _) = request(&api, "POST", &path, "Host: evil.example\r\n").expect("answer");
    assert_eq!(code, 403, "a foreign Host is refused");
    let (code, _) = request(&api, "POST", "/v1/transfer?to=n9", host).expect("answer");
    assert_eq!(code, 400, "an unknown target is refused");
    let (code, body) = request(&c.nodes[other].api, "POST", &path, host).expect("answer");
    assert_eq!(code, 409, "a follower cannot transfer: {body}");

    // A follower long-polls for the next leadership while the transfer runs.
    let follower_api = c.nodes[other].api.clone();
    let poll_path = format!("/v1/leader?wait=10s&after_token={token}");
    let started = Instant::now();
    let poller = thread::spawn(move || request(&follower_api, "GET", &poll_path, "Host: 127.0.0.1\r\n"));
    thread::sleep(Duration::from_millis(100)); // the long-poll is under way before the transfer
    assert!(!poller.is_finished(), "the long-poll must wait while the leadership is unchanged");
    let asked = Instant::now();
    let (code, body) = request(&api, "POST", &path, host).expect("answer");
    c.observer.as_mut().expect("observer").handovers.push((leader, asked, Instant::now()));
    assert_eq!(code, 200, "{body}");
    let (next, next_token, _) = c.wait_for_leader(TTL, Some(leader));
    assert_eq!(next, target);
    assert!(next_token > token);
    let (_, polled) = poller.join().expect("poller").expect("answer");
    assert!(started.elapsed() < Duration::from_secs(5), "the long-poll answered on the change");
    assert!(field(&polled, "fencing_token").expect("token") > token, "{polled}");
    c.check();
}

#[test]
fn the_watch_stream_sends_the_current_leader_first() {
    let mut c = Cluster::start(3, "watch");
    let (_, token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    let mut s = TcpStream::connect(c.nodes[0].api.as_str()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET /v1/watch HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.contains("data: ") && Instant::now() < deadline {
        let n = s.read(&mut buf).expect("read");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("text/event-stream"), "{got}");
    assert!(got.contains("event: leader") && got.contains(&format!("\"fencing_token\":{token}")), "{got}");
    c.check();
}

#[test]
fn metrics_are_served_and_pass_promtool() {
    let mut c = Cluster::start(3, "metrics");
    let (leader, token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    // Wait (bounded) until heartbeat round trips have reached the histogram.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        let (code, body) = get(&c.nodes[leader].metrics, "/metrics").expect("scrape");
        if body.contains("leasehold_peer_rtt_seconds_bucket{peer=") || Instant::now() >= deadline {
            break (code, body);
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, 200);
    for name in [
        "leasehold_is_leader 1",
        &format!("leasehold_fencing_token {token}"),
        &format!("leasehold_term {token}"),
        "leasehold_lease_remaining_seconds",
        "leasehold_leader_changes_total",
        "leasehold_elections_total{result=\"won\"}",
        "leasehold_peer_up{peer=",
        "leasehold_peer_rtt_seconds_bucket{peer=",
        "leasehold_fsync_seconds_bucket",
        "leasehold_api_requests_total{code=\"200\",path=\"/v1/leader\"}",
        "leasehold_rejected_messages_total",
        "leasehold_rejected_messages_total{reason=\"tls\"} 0",
        "leasehold_peer_tls_reloads_total{result=\"error\"} 0",
        "leasehold_build_info{version=",
        // A static group's voters are its --peers; the other membership
        // metrics are a managed group's (tests/membership.rs).
        "leasehold_voters 3",
        "leasehold_config_epoch 0",
        "leasehold_learners 0",
        "leasehold_membership_changes_total{result=\"stuck\"} 0",
    ] {
        assert!(body.contains(name), "missing {name} in:\n{body}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(&c.nodes[leader].metrics, path).expect("answer").0, 200, "{path}");
    }
    promtool_check(&body);
    c.check();
}

#[test]
fn fifty_rounds_of_kill_and_pause_keep_one_leader_and_growing_tokens() {
    let ttl = Duration::from_millis(300);
    let mut c = Cluster::start_with(3, "loop", ttl);
    let (mut leader, mut token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    for round in 0..50 {
        assert!(started.elapsed() < Duration::from_secs(240), "the loop is bounded in time");
        let t0 = Instant::now();
        let paused = round % 2 == 1;
        if paused {
            c.signal(leader, libc::SIGSTOP);
        } else {
            c.kill9(leader);
        }
        let (next, next_token, at) = c.wait_for_leader(10 * ttl, Some(leader));
        assert!(next_token > token, "round {round}: token {next_token} after {token}");
        worst = worst.max(at - t0);
        if paused {
            thread::sleep(ttl); // the pause itself lasts one more lease: the fault, not a wait
            c.signal(leader, libc::SIGCONT);
        } else {
            c.spawn(leader);
        }
        (leader, token) = (next, next_token);
        // Let the old leader rejoin before the next fault.
        c.wait_until_all_know_a_leader();
    }
    let proofs = c.check();
    eprintln!(
        "50 rounds at lease_ttl {ttl:?}: worst failover {worst:?}, final token {token}, {proofs} proofs observed"
    );
}

#[test]
fn killing_every_node_and_restarting_keeps_tokens_growing() {
    let mut c = Cluster::start(3, "restart-all");
    let (_, mut token, _) = c.wait_for_leader(Duration::from_secs(10), None);
    for round in 0..3 {
        for i in 0..3 {
            c.kill9(i);
        }
        for i in 0..3 {
            c.spawn(i);
        }
        // Restarted nodes keep a restart promise of one lease before voting.
        let (_, next_token, _) = c.wait_for_leader(Duration::from_secs(10), None);
        assert!(next_token > token, "round {round}: token {next_token} after {token}");
        token = next_token;
    }
    c.check();
}

#[test]
fn a_hand_over_nobody_takes_answers_504_after_the_wait() {
    let mut c = Cluster::start(3, "handover-504");
    let (leader, _, _) = c.wait_for_leader(Duration::from_secs(10), None);
    let target = (leader + 1) % 3;
    let host = "Host: 127.0.0.1\r\n";
    let api = c.nodes[leader].api.clone();
    let (code, body) = request(&api, "POST", "/v1/step-down?wait=soon", host).expect("answer");
    assert_eq!(code, 400, "a bad wait is refused before anything changes: {body}");
    // The target is paused: the leader accepts (it heard from it a moment
    // ago) and ends its lease, but nobody can take over within 300ms. On a
    // loaded machine the last ack may already be older than two heartbeats
    // when the request arrives (409, "not heard from recently"): the target
    // resumes, answers once, and the pause is tried again, at most 5 times.
    let path = format!("/v1/transfer?to=n{}&wait=300ms", target + 1);
    let target_api = c.nodes[target].api.clone();
    let mut attempt = 0;
    let (code, body, asked, answered) = loop {
        attempt += 1;
        c.signal(target, libc::SIGSTOP);
        let asked = Instant::now();
        let (code, body) = request(&api, "POST", &path, host).expect("answer");
        let answered = Instant::now();
        if code != 409 || !body.contains("not heard from recently") || attempt == 5 {
            break (code, body, asked, answered);
        }
        c.signal(target, libc::SIGCONT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&target_api, "/v1/status").is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    };
    c.observer.as_mut().expect("observer").handovers.push((leader, asked, answered));
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("no other node leads after 300ms"), "{body}");
    assert!(body.contains("\"is_leader\":false"), "the old leader's lease ended at once: {body}");
    assert!(answered - asked >= Duration::from_millis(300), "answered after {:?}", answered - asked);
    c.signal(target, libc::SIGCONT);
    // The group recovers by itself with a higher token.
    c.wait_for_leader(Duration::from_secs(10), None);
    c.check();
}
