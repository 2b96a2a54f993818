//! The etcd backend against a real etcd (Debian's `etcd-server`): members
//! started here on free loopback ports with temporary data dirs, stopped
//! by pid. Real `leasehold` processes, real signals, and the observer check
//! of DESIGN §7 throughout. Every wait has a deadline.
#![cfg(feature = "etcd")]
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The etcd binary: `ETCD_BIN`, else `etcd` on the PATH.
fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leasehold-etcd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Removes a test's directory, unless the test failed: then its logs stay
/// for a look, and the path is printed.
fn keep_if_failed(dir: &Path) {
    if thread::panicking() {
        eprintln!("logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn signal(child: &Option<Child>, sig: i32) {
    if let Some(c) = child {
        // SAFETY: kill(2) on the pid of a child this test spawned.
        unsafe { libc::kill(c.id() as i32, sig) };
    }
}

fn kill9(child: &mut Option<Child>) {
    signal(child, libc::SIGKILL);
    if let Some(mut c) = child.take() {
        let _ = c.wait();
    }
}

struct Member {
    name: String,
    client: String,
    args: Vec<String>,
    child: Option<Child>,
}

/// An etcd cluster of real members on loopback.
struct Etcd {
    members: Vec<Member>,
    dir: PathBuf,
}

impl Etcd {
    /// `fast`: a 200ms election timeout, so that etcd accepts 1s leases
    /// (its minimum lease TTL is 1.5 election timeouts, rounded up to whole
    /// seconds). Otherwise etcd's defaults (1s: a 2s minimum).
    fn start(n: usize, name: &str, fast: bool) -> Etcd {
        let dir = temp_dir(&format!("{name}-etcd"));
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}")).collect();
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let client = format!("127.0.0.1:{client}");
                let mut args: Vec<String> = vec![
                    format!("--name=e{i}"),
                    format!("--data-dir={}", dir.join(format!("e{i}")).display()),
                    format!("--listen-client-urls=http://{client}"),
                    format!("--advertise-client-urls=http://{client}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    format!("--initial-cluster-token=leasehold-test-{name}"),
                    "--initial-cluster-state=new".into(),
                ];
                if fast {
                    args.extend(["--heartbeat-interval=20".into(), "--election-timeout=200".into()]);
                }
                Member { name: format!("e{i}"), client, args, child: None }
            })
            .collect();
        let mut etcd = Etcd { members, dir };
        for i in 0..n {
            etcd.spawn(i);
        }
        etcd.wait_healthy(Duration::from_secs(20));
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.members[i].name))).expect("log");
        let child = Command::new(etcd_bin())
            .args(&self.members[i].args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (Debian package etcd-server; the test command installs it)");
        self.members[i].child = Some(child);
    }

    fn endpoints(&self) -> String {
        self.members.iter().map(|m| format!("http://{}", m.client)).collect::<Vec<_>>().join(",")
    }

    /// Each running member's (member id, leader id), from etcd's JSON API.
    fn statuses(&self) -> Vec<(usize, String, String)> {
        let text = |body: &str, key: &str| {
            let at = body.find(&format!("\"{key}\":\""))? + key.len() + 4;
            Some(body[at..].split('"').next()?.to_string())
        };
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .filter_map(|i| {
                let (code, body) = post_json(&self.members[i].client, "/v3/maintenance/status", "{}")?;
                (code == 200).then_some(())?;
                Some((i, text(&body, "member_id")?, text(&body, "leader")?))
            })
            .collect()
    }

    /// The member that leads etcd's raft group.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(&(i, _, _)) = self.statuses().iter().find(|(_, id, leader)| id == leader) {
                return i;
            }
            assert!(Instant::now() < deadline, "etcd has no leader");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A member that does not lead etcd's raft group.
    fn follower(&self) -> usize {
        let leader = self.leader();
        (0..self.members.len()).find(|&i| i != leader && self.members[i].child.is_some()).expect("a follower")
    }

    /// Waits until every running member answers /health with true.
    fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            while !get(&m.client, "/health").is_some_and(|(code, body)| code == 200 && body.contains("true")) {
                assert!(Instant::now() < deadline, "etcd member {} not healthy within {within:?}", m.name);
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            kill9(&mut m.child);
        }
        keep_if_failed(&self.dir);
    }
}

struct Sidecar {
    api: String,
    args: Vec<String>,
    child: Option<Child>,
    stderr: PathBuf,
}

/// leasehold sidecars on one etcd election, watched by the observer.
struct Group {
    nodes: Vec<Sidecar>,
    dir: PathBuf,
    observer: Option<Observer>,
}

impl Group {
    fn start(n: usize, name: &str, endpoints: &str, ttl: &str) -> Group {
        let dir = temp_dir(&format!("{name}-sidecars"));
        let nodes = (1..=n)
            .map(|i| {
                let api = format!("127.0.0.1:{}", free_port());
                let args = vec![
                    "run".into(),
                    "--backend=etcd".into(),
                    format!("--node-id=n{i}"),
                    format!("--etcd-endpoints={endpoints}"),
                    format!("--election={name}"),
                    format!("--lease-ttl={ttl}"),
                    format!("--listen-api={api}"),
                    format!("--listen-metrics=127.0.0.1:{}", free_port()),
                    format!("--data-dir={}", dir.join(format!("n{i}")).display()),
                    format!("--advertise=db{i}:5432"),
                ];
                Sidecar { api, args, child: None, stderr: dir.join(format!("n{i}.log")) }
            })
            .collect();
        let mut g = Group { nodes, dir, observer: None };
        for i in 0..n {
            g.spawn(i);
        }
        g.observer = Some(Observer::start(g.nodes.iter().map(|n| n.api.clone()).collect()));
        g
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.nodes[i].stderr).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(&self.nodes[i].args)
            .env("LEASEHOLD_LOG", "leasehold=debug,info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leasehold");
        self.nodes[i].child = Some(child);
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].stderr).unwrap_or_default()
    }

    /// Waits until exactly one live node other than `not` answers 200;
    /// returns it, its token and when it was first seen.
    fn wait_for_leader(&self, within: Duration, not: Option<usize>) -> (usize, u64, Instant) {
        let apis: Vec<Option<&str>> = self.nodes.iter().map(|n| n.child.as_ref().map(|_| n.api.as_str())).collect();
        wait_for_one_leader(&apis, within, not).unwrap_or_else(|| {
            let logs: Vec<String> = (0..self.nodes.len()).map(|i| self.log(i)).collect();
            panic!("no leader within {within:?}; logs: {logs:#?}")
        })
    }

    /// Waits until every live node names the same leader with `token`.
    fn wait_until_all_know(&self, token: u64, within: Duration) {
        let deadline = Instant::now() + within;
        let knows = |api: &str| get(api, "/v1/leader").is_some_and(|(_, b)| field(&b, "fencing_token") == Some(token));
        while !self.nodes.iter().filter(|n| n.child.is_some()).all(|n| knows(&n.api)) {
            assert!(Instant::now() < deadline, "not every node learnt leader token {token} within {within:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (at most `within`) until no node answers 200; returns when.
    fn wait_until_nobody_leads(&self, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if !self.nodes.iter().any(|n| get(&n.api, "/v1/leader").is_some_and(|r| r.0 == 200)) {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "a node still claims its lease {within:?} after etcd went away");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Keeps a fault in place for `d`, checking all along that at most one
    /// node leads (`may_lead`) or that none does.
    fn hold(&self, d: Duration, may_lead: bool) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let leading = self.nodes.iter().filter(|n| get(&n.api, "/v1/leader").is_some_and(|r| r.0 == 200)).count();
            assert!(leading <= usize::from(may_lead), "{leading} nodes lead at once (allowed: {})", u8::from(may_lead));
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 10s) until the observer holds `n` proofs of `token`:
    /// a planned hand-over is then checked against proofs given before it.
    fn wait_for_proofs(&self, n: usize, token: u64) {
        let obs = self.observer.as_ref().expect("observer running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = obs.proofs().iter().filter(|p| p.token == token).count();
            if seen >= n {
                return;
            }
            assert!(Instant::now() < deadline, "the observer saw only {seen} of {n} proofs within 10s");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A hand-over of `node` the test asked for at `asked` and saw done now.
    fn planned_handover(&mut self, node: usize, asked: Instant) {
        if let Some(o) = &mut self.observer {
            o.handovers.push((node, asked, Instant::now()));
        }
    }

    fn check(&mut self) -> usize {
        self.observer.take().expect("observer running").finish()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        drop(self.observer.take());
        for n in &mut self.nodes {
            kill9(&mut n.child);
        }
        keep_if_failed(&self.dir);
    }
}

fn post(api: &str, path: &str) -> Option<(u16, String)> {
    post_json(api, path, "")
}

fn post_json(api: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let a = leasehold::http::request(api, "POST", path, &[], body, Duration::from_secs(6)).ok()?;
    Some((a.status, a.body))
}

#[test]
fn kill_9_and_sigterm_of_the_leader_hand_over_through_a_one_member_etcd() {
    let etcd = Etcd::start(1, "kill", true);
    let mut g = Group::start(3, "kill", &etcd.endpoints(), "1s");
    let (first, t1, _) = g.wait_for_leader(Duration::from_secs(10), None);
    g.wait_until_all_know(t1, Duration::from_secs(10));
    let body = get(&g.nodes[(first + 1) % 3].api, "/v1/leader").expect("answer").1;
    assert!(body.contains(&format!("\"leader_address\":\"db{}:5432\"", first + 1)), "{body}");
    assert!(body.contains("\"backend\":\"etcd\""), "{body}");

    // kill -9: the next candidate wins once etcd expires the dead lease.
    let killed = Instant::now();
    kill9(&mut g.nodes[first].child);
    let (second, t2, at) = g.wait_for_leader(Duration::from_secs(10), Some(first));
    assert!(t2 > t1, "tokens must grow: {t1} then {t2}");
    assert!(at - killed < Duration::from_secs(4), "failover took {:?}", at - killed);

    // SIGTERM: the leader resigns and the next candidate wins at once.
    g.wait_for_proofs(3, t2);
    let termed = Instant::now();
    signal(&g.nodes[second].child, libc::SIGTERM);
    let (third, t3, at) = g.wait_for_leader(Duration::from_secs(5), Some(second));
    g.planned_handover(second, termed);
    assert!(t3 > t2, "tokens must grow: {t2} then {t3}");
    assert!(at - termed < Duration::from_millis(900), "hand-over took {:?}, more than the lease", at - termed);
    assert_ne!(third, first);
    let status = g.nodes[second].child.take().expect("child").wait().expect("wait");
    assert!(status.success(), "SIGTERM must end the sidecar cleanly: {status:?}");
    assert!(g.log(second).contains("resigning"), "{}", g.log(second));
    let proofs = g.check();
    assert!(proofs >= 3, "the observer saw only {proofs} proofs");
}

#[test]
fn a_frozen_etcd_makes_the_leader_stop_claiming_before_its_lease_can_expire() {
    let etcd = Etcd::start(1, "freeze", true);
    let mut g = Group::start(3, "freeze", &etcd.endpoints(), "1s");
    let (leader, t1, _) = g.wait_for_leader(Duration::from_secs(10), None);
    // Let a few keep-alives go through first.
    g.wait_until_all_know(t1, Duration::from_secs(10));
    let frozen = Instant::now();
    signal(&etcd.members[0].child, libc::SIGSTOP);
    // The local lease ends at most TTL x (1-rho)/(1+rho) after the last
    // answered keep-alive, which was sent before the freeze.
    let stopped_at = g.wait_until_nobody_leads(Duration::from_millis(1200));
    assert!(stopped_at - frozen <= Duration::from_secs(1), "claimed for {:?} after the freeze", stopped_at - frozen);
    // Nobody can win while etcd is frozen.
    g.hold(Duration::from_millis(1500), false);
    signal(&etcd.members[0].child, libc::SIGCONT);
    let (_, t2, _) = g.wait_for_leader(Duration::from_secs(10), None);
    assert!(t2 > t1, "etcd expired every lease while frozen: the new token must be higher ({t1} then {t2})");
    g.check();
    // The leader said why.
    assert!(g.log(leader).contains("lease lapsed"), "{}", g.log(leader));
    etcd.wait_healthy(Duration::from_secs(5));
}

#[test]
fn the_election_resumes_after_etcd_restarts_and_tokens_keep_growing() {
    let mut etcd = Etcd::start(1, "restart", true);
    let mut g = Group::start(3, "restart", &etcd.endpoints(), "1s");
    let (first, t1, _) = g.wait_for_leader(Duration::from_secs(10), None);
    kill9(&mut etcd.members[0].child);
    // The leader's lease runs out within a TTL of its last keep-alive; then
    // nobody leads while etcd is down.
    g.wait_until_nobody_leads(Duration::from_millis(1200));
    g.hold(Duration::from_secs(1), false);
    etcd.spawn(0);
    etcd.wait_healthy(Duration::from_secs(20));
    let (second, t2, _) = g.wait_for_leader(Duration::from_secs(15), None);
    // etcd keeps leases across a restart (and renews them all when it
    // elects its leader): the same leadership may simply go on, with the
    // same token. Any other leader needs a higher one.
    assert!(t2 > t1 || (t2 == t1 && second == first), "tokens must grow across an etcd restart: {t1} then {t2}");
    g.wait_until_all_know(t2, Duration::from_secs(10));
    g.check();
}

#[test]
fn a_three_member_etcd_keeps_one_leader_while_members_pause_and_its_leader_dies() {
    let mut etcd = Etcd::start(3, "three", true);
    let mut g = Group::start(3, "three", &etcd.endpoints(), "1s");
    let (_, t1, _) = g.wait_for_leader(Duration::from_secs(10), None);
    let mut last = t1;
    // Pause each follower member in turn for two seconds (longer than the
    // lease). Pausing etcd's *leader* is left out: etcd releases without
    // etcd-io/etcd#16822 (Debian 12 ships 3.4.23) let a paused leader revoke
    // leases it no longer owns when it resumes, whatever their holders do
    // (docs/etcd.md).
    for _ in 0..2 {
        let follower = etcd.follower();
        signal(&etcd.members[follower].child, libc::SIGSTOP);
        g.hold(Duration::from_secs(2), true);
        signal(&etcd.members[follower].child, libc::SIGCONT);
        let (_, t, _) = g.wait_for_leader(Duration::from_secs(10), None);
        assert!(t >= last, "tokens went back: {last} then {t}");
        last = t;
        etcd.wait_healthy(Duration::from_secs(10));
    }
    // Kill etcd's leader: the other two elect another and keep the leases.
    let leader_member = etcd.leader();
    kill9(&mut etcd.members[leader_member].child);
    let (leader, t, _) = g.wait_for_leader(Duration::from_secs(10), None);
    assert!(t >= last, "tokens went back: {last} then {t}");
    last = t;
    // And a sidecar: the next one wins with a higher token.
    kill9(&mut g.nodes[leader].child);
    let (_, t, _) = g.wait_for_leader(Duration::from_secs(10), Some(leader));
    assert!(t > last, "tokens must grow: {last} then {t}");
    let proofs = g.check();
    assert!(proofs >= 3, "the observer saw only {proofs} proofs");
}

#[test]
fn step_down_and_transfer_follow_etcds_queue() {
    let etcd = Etcd::start(1, "transfer", true);
    let mut g = Group::start(3, "transfer", &etcd.endpoints(), "1s");
    let (leader, t1, _) = g.wait_for_leader(Duration::from_secs(10), None);
    g.wait_until_all_know(t1, Duration::from_secs(10));
    // Non-leaders refuse.
    let other = (leader + 1) % 3;
    let (code, body) = post(&g.nodes[other].api, "/v1/step-down").expect("answer");
    assert_eq!(code, 409, "{body}");
    // The candidates queued in the order they campaigned; find who is next
    // from the leader's refusal to hand over to the other one.
    let ids = ["n1", "n2", "n3"];
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    g.wait_for_proofs(3, t1);
    let asked = Instant::now();
    let (code_a, body_a) = post(&g.nodes[leader].api, &format!("/v1/transfer?to={}", ids[a])).expect("answer");
    g.planned_handover(leader, asked);
    let (next, refused) = if code_a == 200 {
        (a, None)
    } else {
        assert_eq!(code_a, 409, "{body_a}");
        assert!(body_a.contains(&format!("the next leader is {}", ids[b])), "{body_a}");
        (b, Some(body_a))
    };
    if refused.is_some() {
        let asked = Instant::now();
        let (code, body) = post(&g.nodes[leader].api, &format!("/v1/transfer?to={}", ids[b])).expect("answer");
        g.planned_handover(leader, asked);
        assert_eq!(code, 200, "{body}");
    }
    let (now, t2, _) = g.wait_for_leader(Duration::from_secs(5), None);
    assert_eq!(now, next, "the transfer must go to the node next in line");
    assert!(t2 > t1);
    // Step-down: the old leader queued again behind the third node.
    g.wait_for_proofs(3, t2);
    let asked = Instant::now();
    let (code, body) = post(&g.nodes[now].api, "/v1/step-down").expect("answer");
    g.planned_handover(now, asked);
    assert_eq!(code, 200, "{body}");
    let (third, t3, _) = g.wait_for_leader(Duration::from_secs(5), Some(now));
    assert!(t3 > t2);
    assert_ne!(third, now);
    // A node that is not a candidate at all.
    let (code, body) = post(&g.nodes[third].api, "/v1/transfer?to=n9").expect("answer");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("n9 is not a candidate"), "{body}");
    g.check();
}

fn solo_args(etcd: &Etcd, dir: &Path, ttl: &str) -> Vec<String> {
    vec![
        "--backend=etcd".into(),
        "--node-id=solo".into(),
        format!("--etcd-endpoints={}", etcd.endpoints()),
        "--election=solo".into(),
        format!("--lease-ttl={ttl}"),
        format!("--listen-api=127.0.0.1:{}", free_port()),
        format!("--listen-metrics=127.0.0.1:{}", free_port()),
        format!("--data-dir={}", dir.display()),
    ]
}

#[test]
fn a_lease_ttl_below_etcds_minimum_is_refused_with_a_clear_error() {
    // etcd's default election timeout (1s) makes its minimum lease 2s.
    let etcd = Etcd::start(1, "minttl", false);
    let dir = temp_dir("minttl-node");
    let (code, err) = run_bounded(&solo_args(&etcd, &dir, "1s"), Duration::from_secs(15));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--lease-ttl") && err.contains("minimum") && err.contains("2s"), "{err}");
    // 1.5s is rounded up to 2s, said in one line, and accepted.
    let mut args = solo_args(&etcd, &dir, "1500ms");
    let api = args[5].trim_start_matches("--listen-api=").to_string();
    args.push("--log-format=json".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&api, "/v1/leader").is_none_or(|(c, _)| c != 200) {
        assert!(Instant::now() < deadline, "a single candidate did not lead within 10s");
        thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of a child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "{err}");
    let rounding: Vec<&str> = err.lines().filter(|l| l.contains("whole-second")).collect();
    assert_eq!(rounding.len(), 1, "{err}");
    assert!(rounding[0].contains("asking for 2s"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_that_saw_a_higher_token_refuses_to_lead_with_a_lower_one() {
    // As after etcd was restored from an older snapshot: this node wrote a
    // token far above any revision the fresh etcd hands out.
    let etcd = Etcd::start(1, "rewind", true);
    let dir = temp_dir("rewind-node");
    let json = r#"{"cluster_id":"leasehold","node_id":"solo","voters":["solo"],"term":1000000,"voted_for":null}"#;
    let state = format!("leasehold-state 1\n{json}\ncrc32 {:08x}\n", crc32(json.as_bytes()));
    std::fs::write(dir.join("etcd-state"), state).expect("write state");
    let args = solo_args(&etcd, &dir, "1s");
    let api = args[5].trim_start_matches("--listen-api=").to_string();
    let mut child = Some(
        Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .spawn()
            .expect("spawn"),
    );
    let until = Instant::now() + Duration::from_secs(3);
    let mut answered = 0;
    while Instant::now() < until {
        if let Some((code, body)) = get(&api, "/v1/leader") {
            assert_ne!(code, 200, "led with a token below one it had seen: {body}");
            answered += 1;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(answered > 10, "the sidecar did not answer");
    kill9(&mut child);
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    assert!(log.contains("Refusing to lead"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// CRC-32 (IEEE), as the state file uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { 0xEDB8_8320 ^ (crc >> 1) } else { crc >> 1 };
        }
    }
    !crc
}

/// Runs a command that must succeed (certificate generation).
fn must(cmd: &mut Command) {
    let out = cmd.output().expect("run openssl (the test command installs it)");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &Path) {
    let ossl = || {
        let mut c = Command::new("openssl");
        c.current_dir(dir);
        c
    };
    must(ossl().args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]).args([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=leasehold test CA",
    ]));
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        must(ossl().args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={name}")]).args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]));
        must(
            ossl().args(["x509", "-req", "-days", "2", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"]).args([
                "-in",
                &format!("{name}.csr"),
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                ext,
            ]),
        );
    }
}

#[test]
fn a_sidecar_leads_through_etcd_with_tls_and_client_certificates() {
    let dir = temp_dir("tls");
    make_certs(&dir);
    let (client, peer) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let etcd_log = std::fs::File::create(dir.join("etcd.log")).expect("log");
    let mut etcd = Some(
        Command::new(etcd_bin())
            .args([
                "--name=e0".to_string(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=https://{client}"),
                format!("--advertise-client-urls=https://{client}"),
                format!("--listen-peer-urls=http://{peer}"),
                format!("--initial-advertise-peer-urls=http://{peer}"),
                format!("--initial-cluster=e0=http://{peer}"),
                format!("--cert-file={}", dir.join("server.pem").display()),
                format!("--key-file={}", dir.join("server.key").display()),
                format!("--trusted-ca-file={}", dir.join("ca.pem").display()),
                "--client-cert-auth".into(),
                "--heartbeat-interval=20".into(),
                "--election-timeout=200".into(),
            ])
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .expect("spawn etcd"),
    );
    let api = format!("127.0.0.1:{}", free_port());
    let base = |with_cert: bool| {
        let mut args = vec![
            "--backend=etcd".to_string(),
            "--node-id=tls".into(),
            format!("--etcd-endpoints=https://{client}"),
            "--election=tls".into(),
            "--lease-ttl=1s".into(),
            format!("--listen-api={api}"),
            format!("--listen-metrics=127.0.0.1:{}", free_port()),
            format!("--data-dir={}", dir.join("node").display()),
            format!("--etcd-ca={}", dir.join("ca.pem").display()),
        ];
        if with_cert {
            args.push(format!("--etcd-cert={}", dir.join("client.pem").display()));
            args.push(format!("--etcd-key={}", dir.join("client.key").display()));
        }
        args
    };
    // Without a client certificate etcd refuses the connection: no leader.
    let mut child = Some(
        Command::new(env!("CARGO_BIN_EXE_leasehold")).args(base(false)).stderr(Stdio::null()).spawn().expect("spawn"),
    );
    // Until it has answered "no leader" a dozen times (about 0.6s of
    // answers), however slowly it starts on a loaded machine.
    let until = Instant::now() + Duration::from_secs(15);
    let mut refused = 0;
    while Instant::now() < until && refused <= 10 {
        match get(&api, "/v1/leader").map(|r| r.0) {
            Some(200) => panic!("led without a client certificate"),
            Some(_) => refused += 1,
            None => {}
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(refused > 10, "the sidecar without a certificate did not run and answer");
    kill9(&mut child);
    // With one, it leads.
    let mut child = Some(
        Command::new(env!("CARGO_BIN_EXE_leasehold")).args(base(true)).stderr(Stdio::null()).spawn().expect("spawn"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&api, "/v1/leader").is_none_or(|(c, _)| c != 200) {
        assert!(Instant::now() < deadline, "no leader over TLS within 15s");
        thread::sleep(Duration::from_millis(20));
    }
    kill9(&mut child);
    kill9(&mut etcd);
    keep_if_failed(&dir);
}
