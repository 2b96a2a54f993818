//! Managed groups as real processes (DESIGN §2b): `leasehold` sidecars on
//! loopback with `--peers-file`, the file rewritten under them as a
//! ConfigMap changes, nodes started blank, killed with SIGKILL and wiped.
//! Every test runs the observer check of DESIGN §7 and a fencing check: no
//! token is ever held by two nodes. Every process is ended by its pid;
//! every wait has a deadline.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::*;

const TTL: Duration = Duration::from_secs(1);

struct Slot {
    name: String,
    peer: String,
    api: String,
    metrics: String,
    child: Option<Child>,
    /// Overrides `--cluster-id` (default "managed").
    cluster: Option<String>,
    /// More arguments for its next starts.
    extra: Vec<String>,
    /// Starts with `--peers` naming the first three slots instead of the
    /// peers file: a static node.
    static_peers: bool,
}

/// Up to `n` nodes named n1..nN on fixed loopback ports; a peers file that
/// the test rewrites; a data dir per node.
struct Group {
    slots: Vec<Slot>,
    dir: PathBuf,
    observer: Option<Observer>,
    generation: u64,
    /// (cterm, epoch) -> voters, from every status read: one configuration
    /// per stamp (DESIGN §2b).
    stamps: BTreeMap<(u64, u64), BTreeSet<String>>,
}

impl Group {
    fn new(n: usize, name: &str) -> Group {
        let dir = std::env::temp_dir().join(format!("leasehold-managed-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("group dir");
        let slots: Vec<Slot> = (1..=n)
            .map(|i| Slot {
                name: format!("n{i}"),
                peer: format!("127.0.0.1:{}", free_port()),
                api: format!("127.0.0.1:{}", free_port()),
                metrics: format!("127.0.0.1:{}", free_port()),
                child: None,
                cluster: None,
                extra: Vec::new(),
                static_peers: false,
            })
            .collect();
        let observer = Some(Observer::start(slots.iter().map(|s| s.api.clone()).collect()));
        Group { slots, dir, observer, generation: 0, stamps: BTreeMap::new() }
    }

    /// `n` slots, the first three started blank with a desired set of
    /// three; returns once they formed their group and one leads: its
    /// index and status.
    fn three(n: usize, name: &str) -> (Group, usize, Value) {
        let mut g = Group::new(n, name);
        g.desire(3);
        for i in 0..3 {
            g.spawn(i);
        }
        let (leader, v) =
            g.wait_leader(Duration::from_secs(20), "a group of three", |v| voters(&v["membership"]).len() == 3);
        (g, leader, v)
    }

    /// Writes the desired set (the first `k` names) with the next
    /// generation, atomically, as kubelet swaps a ConfigMap's files.
    fn desire(&mut self, k: usize) {
        self.generation += 1;
        let mut text = format!("# desired set\ngeneration {}\n", self.generation);
        for s in &self.slots[..k] {
            text += &format!("{}={}\n", s.name, s.peer);
        }
        let tmp = self.dir.join("peers.tmp");
        std::fs::write(&tmp, text).expect("write peers");
        std::fs::rename(&tmp, self.dir.join("peers")).expect("rename peers");
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.slots[i].name)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.slots[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i)).expect("log");
        let s = &self.slots[i];
        let (peers_flag, peers) = if s.static_peers {
            let three: Vec<String> = self.slots[..3].iter().map(|s| format!("{}={}", s.name, s.peer)).collect();
            ("--peers", three.join(","))
        } else {
            ("--peers-file", self.dir.join("peers").to_string_lossy().into_owned())
        };
        let args = [
            "--node-id".to_string(),
            s.name.clone(),
            peers_flag.into(),
            peers,
            "--listen-peer".into(),
            s.peer.clone(),
            "--listen-api".into(),
            s.api.clone(),
            "--listen-metrics".into(),
            s.metrics.clone(),
            "--data-dir".into(),
            self.data_dir(i).to_string_lossy().into_owned(),
            "--cluster-id".into(),
            s.cluster.clone().unwrap_or_else(|| "managed".into()),
            "--lease-ttl".into(),
            format!("{}ms", TTL.as_millis()),
        ];
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(args)
            .args(&s.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leasehold");
        self.slots[i].child = Some(child);
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.slots[i].child.take() {
            // SAFETY: kill(2) on the pid of a child this test spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits (at most 10 s) for the process to exit.
    fn terminate(&mut self, i: usize) {
        if let Some(mut c) = self.slots[i].child.take() {
            // SAFETY: kill(2) on the pid of a child this test spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The node's `/v1/status`, recording the stamp and voters it reports.
    fn status(&mut self, i: usize) -> Option<Value> {
        self.slots[i].child.as_ref()?;
        let (code, body) = get(&self.slots[i].api, "/v1/status")?;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("status is JSON");
        let m = &v["membership"];
        if let (Some(cterm), Some(epoch)) = (m["cterm"].as_u64(), m["epoch"].as_u64()) {
            if epoch > 0 {
                let voters: BTreeSet<String> = voters(m).into_iter().map(|(n, inc)| format!("{n}/{inc}")).collect();
                let before = self.stamps.entry((cterm, epoch)).or_insert_with(|| voters.clone());
                assert_eq!(*before, voters, "two configurations stamped ({cterm}, {epoch})");
            }
        }
        Some(v)
    }

    /// The leader's index and its status, if exactly one answers as leader.
    fn leader(&mut self) -> Option<(usize, Value)> {
        let apis: Vec<Option<&str>> = self.slots.iter().map(|s| s.child.as_ref().map(|_| s.api.as_str())).collect();
        let (i, _, _) = wait_for_one_leader(&apis, Duration::from_millis(50), None)?;
        self.status(i).map(|v| (i, v))
    }

    /// Waits (at most `within`) until the leader's status satisfies `ok`.
    fn wait_leader(&mut self, within: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> (usize, Value) {
        let deadline = Instant::now() + within;
        loop {
            if let Some((i, v)) = self.leader() {
                if ok(&v) {
                    return (i, v);
                }
            }
            assert!(Instant::now() < deadline, "{what}: not within {within:?}\n{}", self.describe());
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node reports the voters `names` (each
    /// with some incarnation).
    fn wait_voters(&mut self, names: &[&str], within: Duration) -> BTreeMap<String, String> {
        let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<usize> = (0..self.slots.len()).filter(|&i| self.slots[i].child.is_some()).collect();
            let mut all = Vec::new();
            for i in running {
                all.push(self.status(i).map(|v| voters(&v["membership"])));
            }
            if let Some(Some(first)) = all.first() {
                let names: BTreeSet<String> = first.keys().cloned().collect();
                if names == want && all.iter().all(|v| v.as_ref() == Some(first)) {
                    return first.clone();
                }
            }
            assert!(Instant::now() < deadline, "voters {want:?} not reached in {within:?}\n{}", self.describe());
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn describe(&mut self) -> String {
        let mut out = String::new();
        for i in 0..self.slots.len() {
            let status = self.slots[i].child.as_ref().and_then(|_| get(&self.slots[i].api, "/v1/status"));
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            out += &format!("--- {}: {}\n", self.slots[i].name, status.map(|s| s.1).unwrap_or("(not running)".into()));
            for line in log.lines().rev().take(25).collect::<Vec<_>>().iter().rev() {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    /// Stops every node, runs the observer check and the fencing check.
    fn check(mut self) {
        for i in 0..self.slots.len() {
            self.kill9(i);
        }
        let observer = self.observer.take().expect("observer");
        let proofs = observer.proofs();
        let mut holder: BTreeMap<u64, usize> = BTreeMap::new();
        for p in &proofs {
            let first = *holder.entry(p.token).or_insert(p.node);
            assert_eq!(first, p.node, "token {} held by node {} and node {}", p.token, first, p.node);
        }
        let n = observer.finish();
        assert!(n > 0, "the observer saw no leader");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for i in 0..self.slots.len() {
            self.kill9(i);
        }
    }
}

/// A membership object's voters: name -> incarnation.
fn voters(m: &Value) -> BTreeMap<String, String> {
    m["voters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["id"].as_str().unwrap_or("?").to_string(), v["incarnation"].as_str().unwrap_or("?").to_string()))
        .collect()
}

fn token(v: &Value) -> u64 {
    v["leader"]["fencing_token"].as_u64().expect("a leader's token")
}

fn pending(v: &Value) -> bool {
    !v["membership"]["pending"].is_null()
}

/// A group created from blank nodes grows from 3 to 5 and shrinks back
/// to 3 online: the leader of the three keeps its lease and token through
/// the growth; with five, any two can die and a leader remains; on the
/// way back the highest ordinals die first, and the configuration ends as
/// the desired set. Prints how long a new node took to become a voter and
/// the longest time without a leader.
#[test]
fn three_to_five_to_three_online() {
    let (mut g, _, v) = Group::three(5, "scale");
    let before = token(&v);
    g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10));

    g.desire(5);
    let started = Instant::now();
    g.spawn(3);
    g.spawn(4);
    let (_, v) =
        g.wait_leader(Duration::from_secs(30), "five voters", |v| voters(&v["membership"]).len() == 5 && !pending(v));
    let to_voter = started.elapsed();
    assert_eq!(token(&v), before, "growing the group changed the leader: {v}");
    g.wait_voters(&["n1", "n2", "n3", "n4", "n5"], Duration::from_secs(10));
    eprintln!("measured: two blank nodes became voters {:?} after they started", to_voter);
    // The leader's metrics say so, and pass promtool.
    let (leader, _) = g.wait_leader(Duration::from_secs(5), "a leader of five", |_| true);
    let (_, metrics) = get(&g.slots[leader].metrics, "/metrics").expect("metrics");
    for line in ["leasehold_voters 5", "leasehold_learners 0", "leasehold_membership_changes_total{result=\"added\"} 2"]
    {
        assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
    }
    let epoch =
        metrics.lines().find_map(|l| l.strip_prefix("leasehold_config_epoch ")).and_then(|e| e.parse::<u64>().ok());
    assert!(epoch >= Some(3), "two changes after the re-stamp of epoch 1: {epoch:?}");
    promtool_check(&metrics);

    // Any two of five can die: the leader and one more.
    let (leader, v) = g.wait_leader(Duration::from_secs(5), "a leader of five", |_| true);
    let other = (leader + 1) % 5;
    g.kill9(leader);
    g.kill9(other);
    let killed = Instant::now();
    let (_, after) = g.wait_leader(Duration::from_secs(10), "a leader of the three left", |_| true);
    assert!(token(&after) > token(&v));
    eprintln!("measured: a leader again {:?} after two of five were killed", killed.elapsed());
    g.spawn(leader);
    g.spawn(other);
    g.wait_voters(&["n1", "n2", "n3", "n4", "n5"], Duration::from_secs(20));

    // Back to three with the leader among the removed: n5 leads first.
    // The file changes, and the highest ordinals stop as the StatefulSet
    // stops them: SIGTERM, so n5 hands over before it exits.
    let (leader, _) = g.wait_leader(Duration::from_secs(5), "a leader of five", |_| true);
    if leader != 4 {
        let api = g.slots[leader].api.clone();
        let asked = Instant::now();
        let answer = leasehold::http::request(&api, "POST", "/v1/transfer?to=n5&wait=5s", &[], "", TTL * 8);
        g.observer.as_mut().expect("observer").handovers.push((leader, asked, Instant::now()));
        assert_eq!(answer.as_ref().map(|a| a.status).ok(), Some(200), "{answer:?}");
    }
    let (_, v) = g.wait_leader(Duration::from_secs(5), "n5 leads", |v| v["leader"]["node_id"] == "n5");
    let token_before = token(&v);
    g.desire(3);
    let asked = Instant::now();
    g.terminate(4);
    let (_, after) = g.wait_leader(Duration::from_secs(10), "a leader after n5 handed over", |_| true);
    let handed = Instant::now();
    g.observer.as_mut().expect("observer").handovers.push((4, asked, handed));
    assert!(token(&after) > token_before);
    eprintln!("measured: the removed leader (n5) handed over in {:?}", handed - asked);
    g.kill9(3);
    let shrunk = Instant::now();
    g.wait_leader(Duration::from_secs(30), "three voters again", |v| {
        voters(&v["membership"]).keys().map(String::as_str).collect::<Vec<_>>() == ["n1", "n2", "n3"] && !pending(v)
    });
    eprintln!("measured: three voters {:?} after the last removed node stopped", shrunk.elapsed());
    g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10));

    // A file that keeps one of the three voters would drop below a majority
    // in one step: refused (logged, counted) while running, and by a node
    // that starts with it and holds the configuration of three, which
    // runs on with the group as it is.
    g.desire(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = "leasehold_membership_changes_total{result=\"refused\"} 1";
    while !get(&g.slots[1].metrics, "/metrics").is_some_and(|(_, m)| m.contains(refused)) {
        assert!(Instant::now() < deadline, "n2 did not refuse the set of one");
        thread::sleep(Duration::from_millis(50));
    }
    g.kill9(0);
    let log_before = std::fs::read_to_string(g.log_path(0)).unwrap_or_default().len();
    g.spawn(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(g.log_path(0)).unwrap_or_default();
        if log[log_before..].contains("fewer than a majority") {
            break;
        }
        assert!(Instant::now() < deadline, "n1 did not refuse the set of one at start:\n{}", &log[log_before..]);
        thread::sleep(Duration::from_millis(50));
    }
    g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10));
    g.desire(3);
    g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10));
    g.check();
}

/// A node whose data dir is wiped comes back blank, as a new identity: it
/// joins as a learner, the leader replaces the old identity with it, and
/// the group keeps its leader throughout.
#[test]
fn a_wiped_node_comes_back_as_a_voter_with_a_new_incarnation() {
    let (mut g, leader, v) = Group::three(3, "wipe");
    let old = g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10));
    let victim = (leader + 1) % 3;
    let name = format!("n{}", victim + 1);
    g.kill9(victim);
    std::fs::remove_dir_all(g.data_dir(victim)).expect("wipe");
    g.spawn(victim);
    // First a learner: it holds the group's configuration, which does not
    // list its new identity, and the leader sees it among the learners.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = (false, false);
    while seen != (true, true) {
        if let Some(s) = g.status(victim) {
            seen.0 |= s["membership"]["role"] == "learner";
        }
        if let Some((_, l)) = g.leader() {
            let learners = l["membership"]["learners"].as_array().cloned().unwrap_or_default();
            seen.1 |= learners.iter().any(|x| x["id"] == name.as_str());
        }
        assert!(Instant::now() < deadline, "the wiped node was never seen as a learner: {seen:?}");
        thread::sleep(Duration::from_millis(20));
    }
    let (_, after) = g.wait_leader(Duration::from_secs(30), "the wiped node a voter again", |v| {
        let now = voters(&v["membership"]);
        now.len() == 3 && now.get(&name).is_some_and(|inc| *inc != old[&name]) && !pending(v)
    });
    assert_eq!(token(&after), token(&v), "the leader changed while a follower was replaced");
    let removed = after["membership"]["removed"].as_u64();
    assert_eq!(removed, Some(1), "the old identity is a tombstone: {after}");
    g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10));
    g.check();
}

/// A blank node that the desired set names but that runs with another
/// cluster id never joins: its hellos are refused, the group stays three.
#[test]
fn a_blank_node_of_another_cluster_never_joins() {
    let (mut g, _, _) = Group::three(4, "stranger");
    g.desire(4);
    g.slots[3].cluster = Some("other".into());
    g.spawn(3);
    // Six leases: three times what a learner needs to be added.
    let until = Instant::now() + TTL * 6;
    while Instant::now() < until {
        if let Some((_, v)) = g.leader() {
            assert_eq!(voters(&v["membership"]).len(), 3, "a node of another cluster was added: {v}");
            assert_eq!(v["membership"]["learners"].as_array().map(Vec::len), Some(0), "{v}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let stranger = g.status(3).expect("the stranger answers");
    assert_eq!(stranger["membership"]["role"], "blank", "{stranger}");
    g.check();
}

/// An identity the group removed never votes again: n3's old data dir,
/// restored after n3 was replaced, finds its identity among the removed
/// ones and rejoins under a third incarnation.
#[test]
fn a_removed_identity_that_comes_back_is_refused_as_a_voter() {
    let (mut g, leader, _) = Group::three(3, "removed");
    let first = g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10));
    let victim = (leader + 2) % 3;
    let name = format!("n{}", victim + 1);
    let saved = g.dir.join("saved");
    g.kill9(victim);
    std::fs::rename(g.data_dir(victim), &saved).expect("keep the old data dir");
    g.spawn(victim);
    g.wait_leader(Duration::from_secs(30), "replaced", |v| {
        voters(&v["membership"]).get(&name).is_some_and(|inc| *inc != first[&name]) && !pending(v)
    });
    let second = g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10));
    // The old identity comes back.
    g.kill9(victim);
    std::fs::remove_dir_all(g.data_dir(victim)).expect("drop the new data dir");
    std::fs::rename(&saved, g.data_dir(victim)).expect("restore the old one");
    g.spawn(victim);
    let (_, v) = g.wait_leader(Duration::from_secs(30), "the old identity renewed and added", |v| {
        let inc = voters(&v["membership"]).get(&name).cloned();
        inc.is_some_and(|i| i != first[&name] && i != second[&name]) && !pending(v)
    });
    let old = format!("{name}/{}", first[&name]);
    let last = g.stamps.iter().filter(|(_, l)| l.contains(&old)).map(|(s, _)| *s).max();
    let replaced = g
        .stamps
        .iter()
        .filter(|(_, l)| l.iter().any(|id| id == &format!("{name}/{}", second[&name])))
        .map(|(s, _)| *s)
        .min();
    assert!(last < replaced, "the removed identity was listed again after its replacement: {:?}", g.stamps);
    assert!(v["membership"]["removed"].as_u64() >= Some(2), "{v}");
    g.check();
}

/// The leader is killed again and again while the desired set moves
/// between three and four names: each change completes or is dropped,
/// and no two configurations of one stamp are ever seen.
#[test]
fn leaders_killed_during_changes_never_split_the_configuration() {
    let (mut g, _, _) = Group::three(4, "midchange");
    for round in 0..4u64 {
        let k = if round % 2 == 0 { 4 } else { 3 };
        g.desire(k);
        // A node starts only while the desired set names it.
        for i in 0..k {
            if g.slots[i].child.is_none() {
                g.spawn(i);
            }
        }
        // Kill the leader at varying points of the change.
        let wait = Instant::now() + Duration::from_millis(200 + 450 * round);
        while Instant::now() < wait {
            g.leader();
            thread::sleep(Duration::from_millis(20));
        }
        let (leader, _) = g.wait_leader(Duration::from_secs(15), "a leader", |_| true);
        g.kill9(leader);
        g.wait_leader(Duration::from_secs(15), "a leader after the kill", |_| true);
        if leader < k {
            g.spawn(leader);
        }
    }
    // The last desired set was three names: the fourth is removed.
    g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(40));
    assert!(g.stamps.len() >= 3, "the configuration moved: {:?}", g.stamps.keys());
    g.check();
}

/// Bad input at start: one clear line and exit code 2, and nothing
/// written: a malformed peers file, a name twice, a node the file does
/// not name, both --peers and --peers-file, a static group's state file.
#[test]
fn a_bad_peers_file_stops_start_up_with_exit_2() {
    let dir = std::env::temp_dir().join(format!("leasehold-managed-{}-bad", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("peers");
    let run = |text: &str, extra: &[&str]| {
        std::fs::write(&file, text).expect("write peers");
        let mut args: Vec<String> = ["--node-id", "a", "--peers-file"].map(String::from).to_vec();
        args.push(file.to_string_lossy().into_owned());
        args.extend(["--data-dir".to_string(), dir.join("data").to_string_lossy().into_owned()]);
        args.extend(["--listen-api", "127.0.0.1:0", "--listen-metrics", "127.0.0.1:0"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        run_bounded(&args, Duration::from_secs(10))
    };
    for (text, extra, says) in [
        ("a=127.0.0.1:1\nb 127.0.0.1:2\n", &[][..], "line 2: \"b 127.0.0.1:2\" is not ID=HOST:PORT"),
        ("a=127.0.0.1:1\na=127.0.0.1:2\n", &[][..], "id a appears twice"),
        ("b=127.0.0.1:1\nc=127.0.0.1:2\n", &[][..], "a is not one of the ids in --peers-file"),
        ("a=127.0.0.1:1\n", &["--peers", "a=127.0.0.1:1"][..], "cannot be used with"),
        ("a=127.0.0.1:1\n", &["--force-new-group", "6a"][..], "\"6a\" is not a group uid"),
    ] {
        let (code, err) = run(text, extra);
        assert_eq!(code, Some(2), "{text:?}: {err}");
        assert!(err.contains(says), "{text:?}: {err}");
        assert!(!dir.join("data").join("state").exists(), "a refused start wrote a state file");
    }
    // A static group's state file, with a peers file that leaves out one
    // of its voters: it cannot convert (rule 11), and is left untouched.
    let static_args: Vec<String> = [
        "--node-id",
        "a",
        "--peers",
        "a=127.0.0.1:1,b=127.0.0.1:2",
        "--data-dir",
        &dir.join("data").to_string_lossy(),
        "--listen-api",
        "127.0.0.1:0",
        "--listen-metrics",
        "127.0.0.1:0",
        "--lease-ttl",
        "200ms",
    ]
    .map(String::from)
    .to_vec();
    let (code, _) = run_bounded(&static_args, Duration::from_millis(1500));
    assert_eq!(code, None, "the static node ran until stopped");
    let before = std::fs::read(dir.join("data").join("state")).expect("the static state file");
    let (code, err) = run("a=127.0.0.1:1\n", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not name b"), "{err}");
    assert_eq!(std::fs::read(dir.join("data").join("state")).expect("state"), before, "left untouched");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rule 11: a static group of three (`--peers`) converted online by a
/// rolling restart to `--peers-file`, highest name first as a StatefulSet
/// rolls its pods. It elects throughout as a static group; once the last
/// node runs with the file the group converts, listing each node by the
/// incarnation of its static state file, and then grows to four as any
/// managed group does.
#[test]
fn a_static_group_converts_online_by_a_rolling_restart() {
    let mut g = Group::new(4, "convert");
    for i in 0..3 {
        g.slots[i].static_peers = true;
        g.spawn(i);
    }
    g.wait_leader(Duration::from_secs(20), "a static group of three", |v| v["membership"].is_null());
    let before: Vec<String> = (0..3)
        .map(|i| g.status(i).expect("status")["incarnation"].as_str().expect("incarnation").to_string())
        .collect();
    g.desire(3);
    let mut last_start = Instant::now();
    for i in (0..3).rev() {
        // SIGTERM is a planned hand-over if the node leads: its lease ends
        // before its successor campaigns.
        let asked = Instant::now();
        g.terminate(i);
        g.observer.as_mut().expect("observer").handovers.push((i, asked, Instant::now()));
        g.slots[i].static_peers = false;
        last_start = Instant::now();
        g.spawn(i);
        g.wait_leader(Duration::from_secs(20), "a leader after the restart", |_| true);
        // Upgrading, it shows no membership yet, but its incarnation.
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match g.status(i) {
                Some(status) => break status,
                None if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                None => panic!("n{} does not answer /v1/status", i + 1),
            }
        };
        assert_eq!(status["incarnation"].as_str(), Some(before[i].as_str()), "n{} upgrading: {status}", i + 1);
        // Before the last restart the group cannot have converted.
        assert!(i == 0 || status["membership"].is_null(), "n{} converted early: {status}", i + 1);
    }
    let listed = g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(20));
    eprintln!(
        "measured: converted, every node listing three voters, {:?} after the last node started",
        last_start.elapsed()
    );
    for (i, inc) in before.iter().enumerate() {
        assert_eq!(&listed[&format!("n{}", i + 1)], inc, "each name by its static state file's incarnation");
    }
    let log = std::fs::read_to_string(g.log_path(0)).unwrap_or_default()
        + &std::fs::read_to_string(g.log_path(1)).unwrap_or_default()
        + &std::fs::read_to_string(g.log_path(2)).unwrap_or_default();
    assert!(log.contains("the static group is a managed group from now on"), "the conversion is logged");
    g.desire(4);
    g.spawn(3);
    g.wait_voters(&["n1", "n2", "n3", "n4"], Duration::from_secs(30));
    g.wait_leader(Duration::from_secs(10), "a leader of four", |v| voters(&v["membership"]).len() == 4);
    g.check();
}

/// A group that lost a majority for good (two of three volumes gone) has
/// no leader, and its blank replacements cannot be added. Restarted with
/// --force-new-group naming it, the three form a new group whose tokens
/// are above the old one's; the survivor leaves the old group as a new
/// identity; the flag is inert at the next restart.
#[test]
fn force_new_group_restores_a_group_that_lost_a_majority() {
    let (mut g, _, v) = Group::three(3, "force");
    let old_group = v["membership"]["group"].as_str().expect("a group").to_string();
    let old_token = token(&v);
    let survivor = g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10))["n1"].clone();
    // Two volumes lost for good; their pods come back blank.
    for i in [1, 2] {
        g.kill9(i);
        std::fs::remove_dir_all(g.data_dir(i)).expect("wipe");
    }
    g.desire(3);
    g.spawn(1);
    g.spawn(2);
    let apis: Vec<Option<&str>> = g.slots.iter().map(|s| Some(s.api.as_str())).collect();
    // The lease n1 may still hold runs out first.
    let deadline = Instant::now() + TTL * 3;
    while wait_for_one_leader(&apis, Duration::from_millis(50), None).is_some() {
        assert!(Instant::now() < deadline, "a leader stays without a majority");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        wait_for_one_leader(&apis, TTL * 4, None).is_none(),
        "a leader without a majority of the old group's voters"
    );
    // The recovery: every desired node restarted with the flag.
    for i in 0..3 {
        g.kill9(i);
        g.slots[i].extra = vec!["--force-new-group".into(), old_group.clone()];
        g.spawn(i);
    }
    let (_, v) = g.wait_leader(Duration::from_secs(30), "a new group", |v| {
        voters(&v["membership"]).len() == 3 && v["membership"]["group"].as_str() != Some(old_group.as_str())
    });
    assert!(token(&v) > old_token, "the new group's token {} is not above {old_token}", token(&v));
    let now = g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(10));
    assert_ne!(now["n1"], survivor, "the survivor left the old group as a new identity");
    let log = std::fs::read_to_string(g.log_path(0)).unwrap_or_default();
    assert!(log.contains("LEFT GROUP"), "the survivor says loudly what it did:\n{log}");
    // Inert at the next restart: the node holds the new group.
    let new_group = v["membership"]["group"].clone();
    g.kill9(0);
    g.spawn(0);
    g.wait_voters(&["n1", "n2", "n3"], Duration::from_secs(20));
    let (_, after) = g.wait_leader(Duration::from_secs(10), "the new group leads", |_| true);
    assert_eq!(after["membership"]["group"], new_group);
    g.check();
}
