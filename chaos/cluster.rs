//! The sidecars under test: real `leasehold run` processes on loopback, each
//! dialing its peers through a fault proxy link, each with its own log
//! file, data dir and (optionally) a faked clock rate, plus one application
//! simulator per node. Every process is started and ended here, by pid.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use leasehold::core::rng::SplitMix64;
use leasehold::http;

use crate::certs;
use crate::proxy::{Faults, Link};

/// libfaketime's multi-threaded preload (Debian's `faketime` package).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub struct Node {
    pub id: String,
    pub api: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The node's state-write failpoint (debug builds): a duration slows
    /// each write, `panic` crashes one.
    pub failpoint: PathBuf,
    args: Vec<String>,
    pub child: Option<Child>,
    /// The clock rate the node runs at (libfaketime), when not 1.
    pub rate: Option<f64>,
    /// The harness ended this process: its exit is no finding.
    ended_by_us: bool,
}

pub struct Cluster {
    bin: PathBuf,
    pub nodes: Vec<Node>,
    /// (from, to) -> the proxy node `from` dials node `to` through.
    pub links: BTreeMap<(usize, usize), Link>,
    pub ttl: Duration,
    /// Exits the harness did not cause: a finding of the robustness check.
    pub unexpected_exits: Vec<String>,
    /// tmpfs mounts made for disk faults, unmounted on drop.
    pub mounts: Vec<PathBuf>,
    /// What the harness did and saw, when (harness.log in the run's dir).
    journal: Option<File>,
    began: Instant,
}

/// A free loopback address for a node's listener, below the kernel's
/// ephemeral range ([`leasehold::local::free_port`]): a restarted node must
/// find its ports free, and the ephemeral range is where proxies' and
/// peers' outgoing connections take theirs.
fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], leasehold::local::free_port().expect("a free loopback port")))
}

impl Cluster {
    /// `n` nodes and their links, created but not started.
    /// `tls`: the nodes talk mutual TLS (certificates of a CA made here
    /// with the openssl command), and the links pass the bytes unparsed.
    pub fn new(bin: &Path, dir: &Path, n: usize, ttl: Duration, seed: u64, tls: bool) -> Result<Cluster, String> {
        let peers: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let mut links = BTreeMap::new();
        let mut rng = SplitMix64::new(seed);
        for from in 0..n {
            for (to, &peer) in peers.iter().enumerate() {
                if from != to {
                    let link = Link::start(peer, rng.next_u64(), tls).map_err(|e| format!("proxy: {e}"))?;
                    links.insert((from, to), link);
                }
            }
        }
        let openssl = Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success());
        if tls && !openssl {
            return Err("--peer-tls needs the openssl command to make certificates".into());
        }
        let ca = tls.then(|| certs::Ca::new(&dir.join("tls"), "ca"));
        let mut nodes = Vec::new();
        for (i, &peer) in peers.iter().enumerate() {
            let id = format!("n{}", i + 1);
            // Each node sees its peers at the proxy in front of them.
            let view: Vec<String> = (0..n)
                .map(|j| {
                    let addr = if i == j { peer } else { links[&(i, j)].addr };
                    format!("n{}={addr}", j + 1)
                })
                .collect();
            let api = free_addr().to_string();
            let data_dir = dir.join(&id);
            fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
            let args = [
                "run",
                "--node-id",
                &id,
                "--peers",
                &view.join(","),
                "--listen-peer",
                &peer.to_string(),
                "--listen-api",
                &api,
                "--listen-metrics",
                &free_addr().to_string(),
                "--data-dir",
                &data_dir.to_string_lossy(),
                "--cluster-id",
                "chaos",
                "--lease-ttl",
                &format!("{}ms", ttl.as_millis()),
            ]
            .map(String::from)
            .to_vec();
            let mut args = args;
            if let Some(ca) = &ca {
                args.extend(peer_tls(ca, &id, i as u64 + 1));
            }
            nodes.push(Node {
                log: dir.join(format!("{id}.log")),
                failpoint: dir.join(format!("{id}.failpoint")),
                id,
                api,
                data_dir,
                args,
                child: None,
                rate: None,
                ended_by_us: false,
            });
        }
        Ok(Cluster {
            bin: bin.to_path_buf(),
            nodes,
            links,
            ttl,
            unexpected_exits: Vec::new(),
            mounts: Vec::new(),
            journal: File::create(dir.join("harness.log")).ok(),
            began: Instant::now(),
        })
    }

    /// Notes an action or an observation in harness.log, with the time
    /// since the run began.
    pub fn note(&mut self, what: &str) {
        use std::io::Write;
        let at = self.began.elapsed();
        if let Some(j) = self.journal.as_mut() {
            let _ = writeln!(j, "{:>9.3}s {what}", at.as_secs_f64());
        }
    }

    pub fn start_all(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Starts node `i` (its log is appended to across restarts).
    pub fn spawn(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let log = OpenOptions::new().create(true).append(true).open(&node.log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&node.args).env("LEASEHOLD_FAILPOINT_STATE_WRITE", &node.failpoint).stdout(Stdio::null()).stderr(log);
        if let Some(rate) = node.rate {
            cmd.env("LD_PRELOAD", LIBFAKETIME).env("FAKETIME", format!("+0 x{rate}")).env("FAKETIME_NO_CACHE", "1");
        }
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", self.bin.display()))?;
        let what = format!("start {} pid {} rate {:?}", node.id, child.id(), node.rate);
        node.child = Some(child);
        node.ended_by_us = false;
        self.note(&what);
        Ok(())
    }

    /// Sends `sig` to node `i` if it runs.
    pub fn signal(&mut self, i: usize, sig: i32) {
        let what = format!("signal {} to {}", sig, self.nodes[i].id);
        self.note(&what);
        if let Some(c) = &self.nodes[i].child {
            // SAFETY: kill(2) on the pid of a child this harness spawned
            // and has not yet reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// kill -9 and reap.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.nodes[i].ended_by_us = true;
        self.signal(i, libc::SIGKILL);
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM (a planned hand-over), then waits up to `limit` for the exit
    /// before kill -9. True if it exited by itself.
    pub fn terminate(&mut self, i: usize, limit: Duration) -> bool {
        self.nodes[i].ended_by_us = true;
        self.signal(i, libc::SIGTERM);
        let Some(mut c) = self.nodes[i].child.take() else {
            return true;
        };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Notes every process that ended without the harness ending it.
    pub fn reap(&mut self) {
        let mut ended = Vec::new();
        for n in &mut self.nodes {
            let Some(c) = n.child.as_mut() else { continue };
            if let Ok(Some(status)) = c.try_wait() {
                if !n.ended_by_us {
                    self.unexpected_exits.push(format!("{} exited by itself: {status}", n.id));
                }
                ended.push(format!("{} exited: {status}", n.id));
                n.child = None;
            }
        }
        for e in ended {
            self.note(&e);
        }
    }

    /// The running node answering 200 on /v1/leader with the highest token
    /// (asked all at once, so a stopped node delays no other answer).
    pub fn leader(&self) -> Option<(usize, u64)> {
        thread::scope(|scope| {
            let asks: Vec<_> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.child.is_some())
                .map(|(i, n)| {
                    scope.spawn(move || {
                        let a = http::request(&n.api, "GET", "/v1/leader", &[], "", Duration::from_millis(300)).ok()?;
                        let v: serde_json::Value = serde_json::from_str(&a.body).ok()?;
                        (a.status == 200).then(|| (i, v["fencing_token"].as_u64().unwrap_or(0)))
                    })
                })
                .collect();
            asks.into_iter().filter_map(|h| h.join().ok().flatten()).max_by_key(|&(_, t)| t)
        })
    }

    /// Polls (every 5 ms, at most `limit`) for a leader whose token is
    /// above `after`; when it was seen.
    pub fn wait_leader(&mut self, after: u64, limit: Duration) -> Option<(usize, u64, Instant)> {
        let deadline = Instant::now() + limit;
        loop {
            self.reap();
            if let Some((i, t)) = self.leader().filter(|&(_, t)| t > after) {
                self.note(&format!("leader n{} token {t}", i + 1));
                return Some((i, t, Instant::now()));
            }
            if Instant::now() >= deadline {
                self.note(&format!("no leader above token {after} within {limit:?}"));
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (at most `limit`) until node `i` answers and knows a leader.
    pub fn wait_joined(&self, i: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let knows = http::request(&self.nodes[i].api, "GET", "/v1/leader", &[], "", Duration::from_millis(300))
                .is_ok_and(|a| a.body.contains("\"leader_id\":\"n"));
            if knows {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Sets the faults of every link `pick(from, to)` selects; the others
    /// pass.
    pub fn faults(&mut self, pick: impl Fn(usize, usize) -> Option<Faults>) {
        let mut faulted = Vec::new();
        for (&(from, to), link) in &self.links {
            let f = pick(from, to);
            if let Some(f) = &f {
                faulted.push(format!("n{}->n{} {}", from + 1, to + 1, f.describe()));
            }
            link.set(f.unwrap_or_default());
        }
        let what =
            if faulted.is_empty() { "links: all pass".to_string() } else { format!("links: {}", faulted.join("; ")) };
        self.note(&what);
    }

    /// Cuts every link between nodes of different `side`s, both ways.
    pub fn partition(&mut self, side: impl Fn(usize) -> usize) {
        self.faults(|a, b| (side(a) != side(b)).then(|| Faults { blackhole: true, ..Faults::default() }));
    }

    pub fn heal(&mut self) {
        self.faults(|_, _| None);
    }

    /// Lines of the nodes' logs that show a panic or an abort.
    pub fn panics(&self) -> Vec<String> {
        let mut found = Vec::new();
        for n in &self.nodes {
            let text = fs::read_to_string(&n.log).unwrap_or_default();
            for line in text.lines() {
                if line.contains("panicked at")
                    || line.contains("fatal runtime error")
                    || line.contains("RUST_BACKTRACE")
                {
                    found.push(format!("{}: {line}", n.id));
                }
            }
        }
        found
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for m in self.mounts.drain(..) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

/// The application beside each sidecar: it asks its own sidecar whether it
/// leads, and if so waits a random while (up to two leases, as a paused or
/// slow database would) and then writes to the fencing store with the token
/// it was given. `cross_wired` makes half of each app's writers ask the
/// neighbour's sidecar instead, as with a wrong address in the app's
/// config (the negative control of the one-node-per-token check).
/// Concurrent writers per application.
const WORKERS_PER_APP: usize = 4;

pub struct Apps {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Apps {
    pub fn start(apis: Vec<String>, store: SocketAddr, ttl: Duration, seed: u64, cross_wired: bool) -> Apps {
        let stop = Arc::new(AtomicBool::new(false));
        let n = apis.len();
        // Each node's application writes over a few connections at once,
        // as a database's sessions would, each with its own pauses.
        let threads = (0..n * WORKERS_PER_APP)
            .map(|w| {
                let node = w % n;
                let asks = if cross_wired && (w / n) % 2 == 1 { (node + 1) % n } else { node };
                let api = apis[asks].clone();
                let stop = stop.clone();
                let mut rng = SplitMix64::new(seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9));
                thread::spawn(move || {
                    // Bounded even if never stopped.
                    let end = Instant::now() + Duration::from_secs(3600);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        if let Some(token) = leading(&api) {
                            thread::sleep(Duration::from_nanos(rng.below(2 * ttl.as_nanos() as u64)));
                            let path = format!("/k/shared?token={token}&node={node}");
                            let _ = http::request(&store.to_string(), "PUT", &path, &[], "", Duration::from_secs(1));
                        }
                        thread::sleep(Duration::from_millis(5 + rng.below(15)));
                    }
                })
            })
            .collect();
        Apps { stop, threads }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn leading(api: &str) -> Option<u64> {
    let a = http::request(api, "GET", "/v1/leader", &[], "", Duration::from_millis(300)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&a.body).ok()?;
    (a.status == 200).then(|| v["fencing_token"].as_u64()).flatten()
}

/// The `--peer-tls-*` arguments of node `id`: a certificate for
/// 127.0.0.1 from the run's CA.
fn peer_tls(ca: &certs::Ca, id: &str, serial: u64) -> Vec<String> {
    let issued = ca.issue(id, "IP:127.0.0.1", serial, 2);
    let s = |p: &Path| p.to_string_lossy().into_owned();
    ["--peer-tls-cert", &s(&issued.cert), "--peer-tls-key", &s(&issued.key), "--peer-tls-ca", &s(&ca.cert)]
        .map(String::from)
        .to_vec()
}

/// Makes `dir` a 256 KiB tmpfs (root only).
pub fn mount_tmpfs(dir: &Path) -> Result<(), String> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("cannot mount a tmpfs on {} (needs root)", dir.display()))
    }
}

/// Fills the filesystem of `dir` to the last byte.
pub fn fill(dir: &Path) {
    let Ok(mut f) = File::create(dir.join("filler")) else { return };
    let chunk = vec![0u8; 4096];
    use std::io::Write;
    while f.write_all(&chunk).is_ok() {}
    let byte = [0u8; 1];
    while f.write_all(&byte).is_ok() {}
    let _ = f.sync_all();
}

pub fn remount(dir: &Path, how: &str) -> bool {
    Command::new("mount").args(["-o", &format!("remount,{how}")]).arg(dir).status().is_ok_and(|s| s.success())
}
