//! A rolling upgrade from the previous version, with real processes of
//! both: three sidecars of the commit below are built from this repository's
//! history, started, replaced one at a time by this version on the same data
//! dirs, and one is rolled back. The group must elect throughout, under the
//! observer check, with the old and the new nodes talking to each other
//! (the new ones fall back to the version-1 hello) and each kind reading
//! the other's state file.
//!
//! The old binary is built once per target dir (`target/upgrade-from/`),
//! without the `etcd` feature; that build is most of this test's time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// The last commit before state files and hellos carried incarnations.
const PREVIOUS: &str = "b3d5d74";
const TTL: Duration = Duration::from_secs(1);

/// The `leasehold` binary of [`PREVIOUS`], built from `git archive`.
fn previous_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/upgrade-from").join(PREVIOUS);
    let bin = dir.join("target/debug/leasehold");
    if bin.exists() {
        return bin;
    }
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).expect("source dir");
    let archive = format!("git -C '{}' archive {PREVIOUS} | tar -x -C '{}'", root.display(), src.display());
    let status = Command::new("sh").args(["-c", &archive]).status().expect("git archive");
    assert!(status.success(), "git archive {PREVIOUS} failed: is the clone's history there?");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--locked", "--bin", "leasehold", "--target-dir"])
        .arg(dir.join("target"))
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo build");
    assert!(out.status.success(), "building {PREVIOUS}: {}", String::from_utf8_lossy(&out.stderr));
    bin
}

struct Node {
    id: String,
    api: String,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn start(&mut self, bin: &Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log");
        let child =
            Command::new(bin).args(&self.args).stdout(Stdio::null()).stderr(log).spawn().expect("spawn leasehold");
        self.child = Some(child);
    }

    /// SIGTERM, then waits (bounded) for the exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on the pid of a child this test spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + 5 * TTL;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within 5 leases of SIGTERM", self.id);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct Group {
    nodes: Vec<Node>,
    dir: PathBuf,
    observer: Option<Observer>,
}

impl Group {
    fn apis(&self) -> Vec<Option<&str>> {
        self.nodes.iter().map(|n| n.child.as_ref().map(|_| n.api.as_str())).collect()
    }

    fn leader(&self, within: Duration) -> (usize, u64) {
        let found = wait_for_one_leader(&self.apis(), within, None);
        let (i, token, _) = found.unwrap_or_else(|| panic!("no leader within {within:?}\n{}", self.describe()));
        (i, token)
    }

    /// Replaces node `i`'s process with one of `bin`, as a rolling upgrade
    /// does: SIGTERM (a leader hands over), start, and wait until it follows
    /// a leader and its boot promise (one lease from its start) is over, as
    /// docs/operations.md asks before the next node.
    fn replace(&mut self, i: usize, bin: &Path) {
        let (leader, _) = self.leader(10 * TTL);
        let t0 = Instant::now();
        self.nodes[i].stop();
        if leader == i {
            let (_, _, at) = wait_for_one_leader(&self.apis(), 5 * TTL, Some(i))
                .unwrap_or_else(|| panic!("no successor of {}\n{}", self.nodes[i].id, self.describe()));
            self.observer.as_mut().expect("observer").handovers.push((i, t0, at));
        }
        let started = Instant::now();
        self.nodes[i].start(bin);
        let deadline = started + 10 * TTL;
        loop {
            let status = get(&self.nodes[i].api, "/v1/status").map(|(_, b)| b).unwrap_or_default();
            let follows = status.contains("\"leader_id\":\"n");
            if follows && started.elapsed() > TTL + TTL / 5 {
                return;
            }
            assert!(Instant::now() < deadline, "{} did not rejoin:\n{}", self.nodes[i].id, self.describe());
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let status = n.child.as_ref().and_then(|_| get(&n.api, "/v1/status")).map(|(_, b)| b);
            out += &describe_node(&n.id, status, &n.log(), 30);
        }
        out
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        drop(self.observer.take());
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_group_of_the_previous_version_keeps_electing_through_a_rolling_upgrade_and_a_rollback() {
    let old = previous_binary();
    let new = PathBuf::from(env!("CARGO_BIN_EXE_leasehold"));
    let dir = std::env::temp_dir().join(format!("leasehold-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let nodes = layout(3, &dir, TTL)
        .nodes
        .into_iter()
        .map(|l| Node { log: dir.join(format!("{}.log", l.id)), id: l.id, api: l.api, args: l.args, child: None })
        .collect();
    let mut g = Group { nodes, dir, observer: None };
    for n in &mut g.nodes {
        n.start(&old);
    }
    g.observer = Some(Observer::start(g.nodes.iter().map(|n| n.api.clone()).collect()));
    let (_, first) = g.leader(10 * TTL);

    // The upgrade, one node at a time; after each step a leader is found,
    // and after the first the group is mixed.
    for i in 0..3 {
        g.replace(i, &new);
        let log = g.nodes[i].log();
        assert!(log.contains("state file of an earlier version"), "{}:\n{log}", g.nodes[i].id);
        g.leader(10 * TTL);
        if i == 0 {
            // Mixed: the new node's own connections to the old ones are up
            // (it fell back to the version-1 hello), and it knows they have
            // no incarnation to tell.
            let (_, status) = get(&g.nodes[0].api, "/v1/status").expect("status");
            for old_peer in ["n2", "n3"] {
                let up = format!("{{\"connected\":true,\"id\":\"{old_peer}\",\"incarnation\":null");
                assert!(status.contains(&up), "n1 talks to the old {old_peer}: {status}");
            }
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let (_, status) = get(&n.api, "/v1/status").expect("status");
        let others = g.nodes.iter().enumerate().filter(|(j, _)| *j != i);
        for (_, peer) in others {
            let heard = format!("\"id\":\"{}\",\"incarnation\":\"", peer.id);
            assert!(status.contains(&heard), "after the upgrade {} knows {}'s incarnation: {status}", n.id, peer.id);
        }
    }

    // A rollback of one node: the previous version reads a state file that
    // names an incarnation, and the group goes on electing.
    g.replace(0, &old);
    let log = g.nodes[0].log();
    let last_start = log.rfind("started").expect("a start line");
    assert!(!log[last_start..].contains("corrupt"), "{log}");
    let (_, last) = g.leader(10 * TTL);
    assert!(last >= first, "tokens went back: {first} then {last}");
    let proofs = g.observer.take().expect("observer").finish();
    assert!(proofs > 100, "the observer saw the leader throughout ({proofs} proofs)");
}
