//! Real sidecars in network namespaces of their own, joined by veth pairs
//! on a bridge the test creates, with partitions made by nftables inside
//! each namespace: real TCP that stalls as on a cut cable, not a proxy.
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); without it the test says so
//! and leaves the scenario to the fault harness's proxy (`wipe` in
//! tests/chaos.rs). The test talks only to the addresses of the namespaces
//! it made, removes them at the end, and ends every process by its pid.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::*;

const TTL: Duration = Duration::from_secs(2);
const API_PORT: u16 = 4040;
const PEER_PORT: u16 = 7000;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `nft -f -` with `script` inside namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child.stdin.take().ok_or("nft stdin")?.write_all(script.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Three namespaces on one bridge, each with a sidecar of one group.
struct Net {
    tag: String,
    bridge: String,
    subnet: String,
    namespaces: Vec<String>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
    peers: String,
}

impl Net {
    /// Creates the namespaces, links and nftables sets; an error (not root,
    /// no `ip` or `nft`) leaves nothing behind.
    fn create(n: usize) -> Result<Net, String> {
        let pid = std::process::id();
        let tag = format!("lhw{}", pid % 100_000);
        let subnet = format!("10.213.{}", pid % 250);
        let dir = std::env::temp_dir().join(format!("leasehold-netns-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let peers = (1..=n).map(|i| format!("n{i}={subnet}.{i}:{PEER_PORT}")).collect::<Vec<_>>().join(",");
        let mut net = Net {
            bridge: format!("{tag}b"),
            tag,
            subnet,
            namespaces: Vec::new(),
            children: (0..n).map(|_| None).collect(),
            dir,
            peers,
        };
        // On failure, Drop removes whatever was made.
        net.build(n)?;
        Ok(net)
    }

    fn build(&mut self, n: usize) -> Result<(), String> {
        let (bridge, subnet) = (self.bridge.clone(), self.subnet.clone());
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 1..=n {
            let ns = format!("{}n{i}", self.tag);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let (outer, inner) = (format!("{}v{i}", self.tag), format!("{}i{i}", self.tag));
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &outer, "master", &bridge, "up"])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["-n", &ns, "addr", "add", &format!("{subnet}.{i}/24"), "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            // Packets to or from an address in `cut` are dropped, both ways.
            nft(
                &ns,
                "table inet leasehold_test {\n\
                 set cut { type ipv4_addr; }\n\
                 chain input { type filter hook input priority 0; policy accept; ip saddr @cut drop; }\n\
                 chain output { type filter hook output priority 0; policy accept; ip daddr @cut drop; }\n\
                 }\n",
            )?;
        }
        Ok(())
    }

    fn api(&self, i: usize) -> String {
        format!("{}.{}:{API_PORT}", self.subnet, i + 1)
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}", i + 1))
    }

    /// Starts node `i` inside its namespace (`ip netns exec` execs the
    /// sidecar, so the child's pid is the sidecar's).
    fn spawn(&mut self, i: usize) {
        let log =
            File::options().create(true).append(true).open(self.dir.join(format!("n{}.log", i + 1))).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i], env!("CARGO_BIN_EXE_leasehold")])
            .args(["--node-id", &format!("n{}", i + 1), "--peers", &self.peers])
            .args(["--listen-peer", &format!("{}.{}:{PEER_PORT}", self.subnet, i + 1)])
            .args(["--listen-api", &self.api(i), "--listen-metrics", &format!("127.0.0.1:{}", API_PORT + 2)])
            .args(["--lease-ttl", &format!("{}ms", TTL.as_millis())])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leasehold in its namespace");
        self.children[i] = Some(child);
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            // SAFETY: kill(2) on the pid of a child this test spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Drops every packet between nodes `a` and `b`, both ways.
    fn cut(&self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            let script = format!("add element inet leasehold_test cut {{ {}.{} }}\n", self.subnet, y + 1);
            nft(&self.namespaces[x], &script).expect("nft cut");
        }
    }

    fn wait_for_leader(&self, within: Duration, not: Option<usize>) -> Option<(usize, u64, Instant)> {
        let apis: Vec<String> = (0..self.children.len()).map(|i| self.api(i)).collect();
        let live: Vec<Option<&str>> =
            apis.iter().enumerate().map(|(i, a)| self.children[i].as_ref().map(|_| a.as_str())).collect();
        wait_for_one_leader(&live, within, not)
    }
}

/// Polls `cond` every 10 ms until it holds; fails the test after `within`.
fn wait_until(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill9(i);
        }
        // The veth pairs go with their outer ends: a namespace outlives its
        // name while the kernel still holds orphaned connections in it.
        for i in 1..=self.namespaces.len() {
            let _ = ip(&["link", "del", &format!("{}v{i}", self.tag)]);
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// DESIGN §2 rule 7 for a lost volume. The leader L is cut off from
/// follower C, so its lease rests on follower B's acks alone. Once C's
/// promise has run out, B is cut off from L too, killed, its data dir
/// removed, and restarted at once. Blank, B must not vote for C while L's
/// lease, which B's last acks extended, still runs: every start takes the
/// boot promise. Without it, C wins at once and two nodes answer 200 with
/// different tokens at the same instant; the observer check fails.
#[test]
fn a_follower_that_lost_its_data_dir_does_not_vote_inside_the_lease() {
    let mut net = match Net::create(3) {
        Ok(net) => net,
        Err(e) => {
            eprintln!("network namespaces cannot be made here ({e}); the fault harness's wipe scenario covers this");
            return;
        }
    };
    for i in 0..3 {
        net.spawn(i);
    }
    let observer = Observer::start((0..3).map(|i| net.api(i)).collect());
    // The first election comes one lease after the start (the boot promise).
    let (l, token, _) = net.wait_for_leader(Duration::from_secs(15), None).expect("a first leader");
    let (b, c) = ((l + 1) % 3, (l + 2) % 3);
    net.cut(l, c);
    // Until C's promise to L (its last ack came before the cut) is over.
    let promise = |i: usize| get(&net.api(i), "/v1/status").and_then(|(_, b)| field(&b, "promise_remaining_ms"));
    wait_until("C's promise to L over", TTL * 3, || promise(c) == Some(0));
    let (still, same, _) = net.wait_for_leader(TTL, None).expect("L still leads on B's acks");
    assert_eq!((still, same), (l, token), "C cannot win while B acks L");
    net.cut(l, b);
    net.kill9(b);
    let dir = net.data_dir(b);
    std::fs::remove_dir_all(&dir).expect("remove B's data dir");
    let wiped = Instant::now();
    net.spawn(b);
    // A successor comes once L's lease and B's boot promise are over.
    let (next, next_token, at) =
        net.wait_for_leader(TTL * 4, Some(l)).expect("a successor after L's lease and B's boot promise");
    // Let the observer see the successor's lease, then check.
    wait_until("proofs of the successor's lease", TTL, || {
        observer.proofs().iter().filter(|p| p.token == next_token).count() >= 20
    });
    let proofs = observer.finish();
    assert!(proofs > 100, "the observer saw both leaderships: {proofs} proofs");
    assert!(next_token > token, "token {next_token} after {token}");
    assert!(at - wiped >= TTL.mul_f64(0.9), "the successor waited out the boot promise: {:?}", at - wiped);
    eprintln!("n{} led with token {next_token} {:?} after the wipe", next + 1, at - wiped);
}
