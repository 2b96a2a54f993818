//! Disk faults on a real node: its data dir is a size-limited tmpfs the
//! test mounts (as root) and unmounts. A full disk, then a read-only one:
//! the node cannot write its vote, so it must not send it, and the two
//! survivors of a killed leader cannot elect until the disk heals; the node
//! says so in /v1/status and in leasehold_storage_ok, and recovers by
//! itself. Every process is ended by its pid; all traffic is loopback.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, get, wait_for_one_leader, Observer};

const TTL: Duration = Duration::from_secs(1);

/// A tmpfs mounted by this test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts a tmpfs: run it as root (the test command does)");
        std::fs::create_dir_all(at).expect("mkdir");
        run("mount", &["-t", "tmpfs", "-o", "size=256k", "leasehold-test", &at.to_string_lossy()]);
        Tmpfs(at.to_path_buf())
    }

    fn remount(&self, mode: &str) {
        run("mount", &["-o", &format!("remount,{mode}"), &self.0.to_string_lossy()]);
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).expect("filler");
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }

    fn unfill(&self) {
        std::fs::remove_file(self.0.join("filler")).expect("remove filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd).args(args).status().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed");
}

struct Node {
    args: Vec<String>,
    api: String,
    metrics: String,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn leasehold");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn storage_ok(&self) -> (Option<bool>, Option<String>) {
        let status = get(&self.api, "/v1/status").map(|(_, b)| b.contains("\"storage_ok\":true"));
        let gauge = get(&self.metrics, "/metrics")
            .and_then(|(_, b)| b.lines().find(|l| l.starts_with("leasehold_storage_ok ")).map(|l| l.to_string()));
        (status, gauge)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn apis(nodes: &[Node]) -> Vec<Option<&str>> {
    nodes.iter().map(|n| n.child.as_ref().map(|_| n.api.as_str())).collect()
}

/// The leader, made to be a node other than `not` (by a step-down, a
/// planned hand-over the observer is told about) if needed.
fn leader_other_than(nodes: &[Node], not: usize, observer: &mut Observer) -> (usize, u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (l, token, _) = wait_for_one_leader(&apis(nodes), Duration::from_secs(10), None).expect("a leader");
        if l != not {
            return (l, token);
        }
        let asked = Instant::now();
        let _ = common_post(&nodes[l].api, "/v1/step-down");
        let next = wait_for_one_leader(&apis(nodes), Duration::from_secs(10), Some(l));
        observer.handovers.push((l, asked, Instant::now()));
        assert!(next.is_some() && Instant::now() < deadline, "the leader stayed on node {not}");
    }
}

fn common_post(api: &str, path: &str) -> Option<u16> {
    leasehold::http::request(api, "POST", path, &[], "", Duration::from_secs(5)).ok().map(|a| a.status)
}

/// Kills the leader (not node `faulty`), checks that nobody leads while
/// `faulty`'s disk cannot be written, heals the disk, and checks that a
/// leader with a higher token follows and the node reports healthy storage.
fn leader_dies_while_a_disk_fails(
    nodes: &mut [Node],
    observer: &mut Observer,
    faulty: usize,
    break_disk: impl FnOnce(),
    heal_disk: impl FnOnce(),
) {
    let (leader, token) = leader_other_than(nodes, faulty, observer);
    break_disk();
    nodes[leader].kill9();
    let killed_at = Instant::now();
    // The survivors need the faulty node's vote, which it cannot write: no
    // leader, however long. (A node that sent a vote it could not persist
    // would let one through here.)
    assert_eq!(
        wait_for_one_leader(&apis(nodes), 3 * TTL, None).map(|l| l.0),
        None,
        "a leader was elected while the only other voter could not write its vote"
    );
    let (status, gauge) = nodes[faulty].storage_ok();
    assert_eq!(status, Some(false), "/v1/status reports the failed write");
    assert_eq!(gauge.as_deref(), Some("leasehold_storage_ok 0"));
    heal_disk();
    let (_, next, _) = wait_for_one_leader(&apis(nodes), Duration::from_secs(10), None)
        .expect("a leader once the disk is writable again");
    assert!(next > token, "token {next} after {token}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes[faulty].storage_ok().0 != Some(true) {
        assert!(Instant::now() < deadline, "storage_ok never came back");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(nodes[faulty].storage_ok().1.as_deref(), Some("leasehold_storage_ok 1"));
    let _ = killed_at;
    // Bring the killed node back, and let its boot promise (one lease, DESIGN
    // §2 rule 7) run out, so that in the next round the only thing keeping
    // the survivors from electing is the faulty disk.
    nodes[leader].spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(&nodes[leader].api, "/v1/leader").is_some_and(|(_, b)| b.contains("\"leader_id\":\"n")) {
        assert!(Instant::now() < deadline, "the restarted node did not rejoin");
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(TTL + TTL / 5);
}

#[test]
fn a_full_or_read_only_disk_stops_votes_and_heals_by_itself() {
    let dir = std::env::temp_dir().join(format!("leasehold-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let disk = Tmpfs::mount(&dir.join("n3"));
    let peers: Vec<String> = (1..=3).map(|i| format!("n{i}=127.0.0.1:{}", free_port())).collect();
    let peers = peers.join(",");
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| {
            let (api, metrics) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
            let data = if i == 3 { disk.0.join("data") } else { dir.join(format!("n{i}")) };
            let args = [
                "--node-id",
                &format!("n{i}"),
                "--peers",
                &peers,
                "--listen-api",
                &api,
                "--listen-metrics",
                &metrics,
                "--data-dir",
                &data.to_string_lossy(),
                "--lease-ttl",
                "1s",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            Node { args, api, metrics, child: None }
        })
        .collect();
    for n in &mut nodes {
        n.spawn();
    }
    let mut observer = Observer::start(nodes.iter().map(|n| n.api.clone()).collect());
    let faulty = 2;
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes[faulty].storage_ok().0 != Some(true) {
        assert!(Instant::now() < deadline, "node n3 never reported healthy storage");
        thread::sleep(Duration::from_millis(20));
    }

    leader_dies_while_a_disk_fails(&mut nodes, &mut observer, faulty, || disk.fill(), || disk.unfill());
    leader_dies_while_a_disk_fails(&mut nodes, &mut observer, faulty, || disk.remount("ro"), || disk.remount("rw"));

    for n in &mut nodes {
        n.kill9();
    }
    observer.finish();
    drop(disk);
    let _ = std::fs::remove_dir_all(&dir);
}
