//! The processes the benchmark starts (sidecars, etcd members, plain etcd
//! election clients, the ceiling server), loopback HTTP, and /proc readings.
//! Every process is ended by its pid when its owner is dropped; every wait
//! has a deadline.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A loopback port free now, below the ephemeral range
/// ([`leasehold::local::free_port`]).
pub fn free_port() -> u16 {
    leasehold::local::free_port().expect("a free loopback port")
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str, limit: Duration) -> Option<(u16, String)> {
    leasehold::http::request(addr, method, path, &[], body, limit).ok().map(|a| (a.status, a.body))
}

pub fn json_u64(body: &str, name: &str) -> Option<u64> {
    let at = body.find(&format!("\"{name}\":"))? + name.len() + 3;
    body[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this program spawned and has not
    // yet reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Resident set size (KiB) and CPU time (clock ticks) of a process.
pub fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Idle cost of some processes over `window`: per process (RSS KiB, CPU %
/// of one core).
pub fn idle_cost(pids: &[u32], window: Duration) -> Vec<(u64, f64)> {
    let before: Vec<Option<(u64, u64)>> = pids.iter().map(|&p| proc_usage(p)).collect();
    thread::sleep(window);
    let hz = clock_ticks_per_second() as f64;
    pids.iter()
        .zip(before)
        .filter_map(|(&p, b)| {
            let (rss, t1) = proc_usage(p)?;
            let (_, t0) = b?;
            Some((rss, (t1.saturating_sub(t0)) as f64 / hz / window.as_secs_f64() * 100.0))
        })
        .collect()
}

/// A group of leasehold sidecars, on the built-in group or on etcd.
pub struct Sidecars {
    bin: PathBuf,
    pub nodes: Vec<Sidecar>,
    pub ttl: Duration,
}

pub struct Sidecar {
    args: Vec<String>,
    pub api: String,
    pub child: Option<Child>,
    /// Where the sidecar's stderr goes (appended across restarts).
    log: PathBuf,
}

impl Sidecars {
    /// `n` sidecars of the built-in group.
    pub fn raft(bin: &Path, dir: &Path, n: usize, ttl: Duration) -> Sidecars {
        let peers: Vec<String> = (1..=n).map(|i| format!("n{i}=127.0.0.1:{}", free_port())).collect();
        let peers = peers.join(",");
        let nodes =
            (1..=n).map(|i| Sidecar::new(dir, i, ttl, &["--node-id", &format!("n{i}"), "--peers", &peers])).collect();
        Sidecars::start(bin, nodes, ttl)
    }

    /// `n` sidecars on the etcd backend.
    pub fn etcd(bin: &Path, dir: &Path, n: usize, ttl: Duration, endpoints: &str, election: &str) -> Sidecars {
        let nodes = (1..=n)
            .map(|i| {
                let id = format!("n{i}");
                let args =
                    ["--node-id", &id, "--backend", "etcd", "--etcd-endpoints", endpoints, "--election", election];
                Sidecar::new(dir, i, ttl, &args)
            })
            .collect();
        Sidecars::start(bin, nodes, ttl)
    }

    fn start(bin: &Path, nodes: Vec<Sidecar>, ttl: Duration) -> Sidecars {
        let mut s = Sidecars { bin: bin.to_path_buf(), nodes, ttl };
        for i in 0..s.nodes.len() {
            s.spawn(i);
        }
        s
    }

    pub fn spawn(&mut self, i: usize) {
        if let Some(parent) = self.nodes[i].log.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let child = Command::new(&self.bin)
            .args(&self.nodes[i].args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        self.nodes[i].child = Some(child);
    }

    /// For an error message: each sidecar's answer on /v1/leader, whether it
    /// has exited, and the last lines of its log.
    pub fn describe(&mut self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let answer = http(&n.api, "GET", "/v1/leader", "", Duration::from_secs(1));
            let state = match n.child.as_mut().map(|c| c.try_wait()) {
                None => "stopped by the benchmark".to_string(),
                Some(Ok(None)) => "running".to_string(),
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Err(e)) => format!("unknown: {e}"),
            };
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            out.push_str(&format!("\n  sidecar {i} ({state}): {answer:?}\n    {}", tail.join("\n    ")));
        }
        out
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.child.as_ref().map(Child::id)).collect()
    }

    /// The node answering 200 on /v1/leader, with its token, within `limit`.
    pub fn leader(&self, limit: Duration) -> Option<(usize, u64)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child.is_none() {
                    continue;
                }
                if let Some((200, body)) = http(&n.api, "GET", "/v1/leader", "", Duration::from_millis(500)) {
                    return json_u64(&body, "fencing_token").map(|t| (i, t));
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// Long polls every running node but `not` for a leadership other than
    /// `token`; the first node to answer 200 (it holds the lease) and when.
    /// Start it before the event, then call `wait`.
    pub fn watch_for_successor(&self, not: usize, token: u64, limit: Duration) -> Successor {
        let (tx, rx) = mpsc::channel();
        for (i, n) in self.nodes.iter().enumerate() {
            if i == not || n.child.is_none() {
                continue;
            }
            let (tx, api) = (tx.clone(), n.api.clone());
            let path = format!("/v1/leader?wait={}ms&after_token={token}", limit.as_millis());
            thread::spawn(move || {
                let deadline = Instant::now() + limit;
                let mut answer = http(&api, "GET", &path, "", limit + Duration::from_secs(1));
                // A node can learn the new token before it holds the lease
                // (the etcd backend observes its own key before the campaign
                // returns): then look every millisecond.
                while !matches!(answer, Some((200, _))) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(1));
                    answer = http(&api, "GET", "/v1/leader", "", Duration::from_secs(1))
                        .filter(|(_, b)| json_u64(b, "fencing_token").is_some_and(|t| t != token));
                }
                if let Some((200, body)) = answer {
                    let _ = tx.send((i, Instant::now(), json_u64(&body, "fencing_token").unwrap_or(0)));
                }
            });
        }
        // Give the polls a moment to be parked at the nodes.
        thread::sleep(Duration::from_millis(20));
        Successor { rx, limit }
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn sigterm(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            signal(&c, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Restarts node `i` and waits until every node knows a leader, then one
    /// lease more: a restarted node may not vote for one lease (DESIGN §2
    /// rule 7), and the next trial should not pay for that.
    pub fn restart_and_settle(&mut self, i: usize) -> Result<(), String> {
        self.spawn(i);
        let deadline = Instant::now() + Duration::from_secs(20);
        let knows = |api: &str| {
            http(api, "GET", "/v1/leader", "", Duration::from_millis(500))
                .is_some_and(|(_, b)| b.contains("\"leader_id\":\"n"))
        };
        while !self.nodes.iter().all(|n| knows(&n.api)) {
            if Instant::now() > deadline {
                return Err("a restarted sidecar did not rejoin within 20s".into());
            }
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(self.ttl + self.ttl / 5);
        Ok(())
    }
}

impl Sidecar {
    fn new(dir: &Path, i: usize, ttl: Duration, extra: &[&str]) -> Sidecar {
        let api = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--listen-api".into(),
            api.clone(),
            "--listen-metrics".into(),
            format!("127.0.0.1:{}", free_port()),
            "--data-dir".into(),
            dir.join(format!("n{i}")).to_string_lossy().into_owned(),
            "--lease-ttl".into(),
            format!("{}ms", ttl.as_millis()),
        ]);
        Sidecar { args, api, child: None, log: dir.join(format!("n{i}.log")) }
    }
}

impl Drop for Sidecars {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}

pub struct Successor {
    rx: mpsc::Receiver<(usize, Instant, u64)>,
    limit: Duration,
}

impl Successor {
    /// The first node that answered 200 with a new token: (node, when, token).
    pub fn wait(self) -> Option<(usize, Instant, u64)> {
        self.rx.recv_timeout(self.limit + Duration::from_secs(1)).ok()
    }
}

/// A 3-member etcd cluster with etcd's default timing, on loopback.
pub struct Etcd {
    pub members: Vec<Child>,
    pub clients: Vec<String>,
}

impl Etcd {
    pub fn start(bin: &Path, dir: &Path, n: usize) -> Result<Etcd, String> {
        let peers: Vec<(String, String)> =
            (0..n).map(|_| (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()))).collect();
        let initial: Vec<String> = peers.iter().enumerate().map(|(i, (_, p))| format!("e{i}=http://{p}")).collect();
        let initial = initial.join(",");
        let mut etcd = Etcd { members: Vec::new(), clients: Vec::new() };
        for (i, (client, peer)) in peers.iter().enumerate() {
            let log = std::fs::File::create(dir.join(format!("etcd-{i}.log"))).map_err(|e| e.to_string())?;
            let child = Command::new(bin)
                .args(["--name", &format!("e{i}")])
                .args(["--data-dir", &dir.join(format!("etcd-{i}")).to_string_lossy()])
                .args(["--listen-client-urls", &format!("http://{client}")])
                .args(["--advertise-client-urls", &format!("http://{client}")])
                .args(["--listen-peer-urls", &format!("http://{peer}")])
                .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            etcd.members.push(child);
            etcd.clients.push(client.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for c in &etcd.clients {
            while !http(c, "GET", "/health", "", Duration::from_millis(500))
                .is_some_and(|(s, b)| s == 200 && b.contains("\"health\":\"true\""))
            {
                if Instant::now() > deadline {
                    return Err(format!("etcd member {c} not healthy within 30s (logs in {})", dir.display()));
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(etcd)
    }

    pub fn endpoints(&self) -> String {
        self.clients.iter().map(|c| format!("http://{c}")).collect::<Vec<_>>().join(",")
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.members {
            signal(c, libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// Plain etcd election clients (`leasehold-bench etcd-elect`).
pub struct Electors {
    bench: PathBuf,
    endpoints: String,
    election: String,
    ttl_secs: u64,
    pub children: Vec<Option<Child>>,
    elected: mpsc::Receiver<(usize, Instant)>,
    tx: mpsc::Sender<(usize, Instant)>,
    pub holder: Option<usize>,
}

impl Electors {
    pub fn start(bench: &Path, endpoints: &str, election: &str, ttl_secs: u64, n: usize) -> Electors {
        let (tx, elected) = mpsc::channel();
        let mut e = Electors {
            bench: bench.to_path_buf(),
            endpoints: endpoints.to_string(),
            election: election.to_string(),
            ttl_secs,
            children: (0..n).map(|_| None).collect(),
            elected,
            tx,
            holder: None,
        };
        for i in 0..n {
            e.spawn(i);
            // Campaign in order, so that the queue is e0, e1, e2.
            thread::sleep(Duration::from_millis(100));
        }
        e
    }

    pub fn spawn(&mut self, i: usize) {
        let mut child = Command::new(&self.bench)
            .args(["etcd-elect", "--endpoints", &self.endpoints, "--election", &self.election])
            .args(["--proposal", &format!("e{i}"), "--ttl", &self.ttl_secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bench.display()));
        let out = child.stdout.take().expect("piped stdout");
        let tx = self.tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("elected ") && tx.send((i, Instant::now())).is_err() {
                    break;
                }
            }
        });
        self.children[i] = Some(child);
    }

    /// The next "elected" line within `limit`: (client, when).
    pub fn next_elected(&mut self, limit: Duration) -> Option<(usize, Instant)> {
        let got = self.elected.recv_timeout(limit).ok();
        if let Some((i, _)) = got {
            self.holder = Some(i);
        }
        got
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    pub fn sigterm(&mut self, i: usize) {
        if let Some(c) = &self.children[i] {
            signal(c, libc::SIGTERM);
        }
    }

    /// Reaps a client asked to stop (bounded), then starts it again: it
    /// campaigns at the back of the queue.
    pub fn reap_and_restart(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
        self.spawn(i);
        thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Electors {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill9(i);
        }
    }
}

/// The ceiling server (`leasehold-bench hello`).
pub struct Hello {
    child: Child,
    pub addr: String,
}

impl Hello {
    pub fn start(bench: &Path) -> Result<Hello, String> {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bench)
            .args(["hello", "--listen", &addr])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while http(&addr, "GET", "/", "", Duration::from_millis(500)).is_none() {
            if Instant::now() > deadline {
                return Err("the ceiling server did not answer".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(Hello { child, addr })
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        signal(&self.child, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// What one load run measured; latencies in µs.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub rps: f64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
}

/// One `wrk` run: -t1 -c`conns` for `load`, with a Lua script for the
/// exact percentiles.
pub fn wrk(
    wrk: &Path,
    dir: &Path,
    url: &str,
    conns: u32,
    load: Duration,
    post_body: Option<&str>,
) -> Result<Load, String> {
    let script = dir.join("wrk.lua");
    let request = match post_body {
        Some(b) => {
            format!("wrk.method = \"POST\"\nwrk.body = '{b}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n")
        }
        None => String::new(),
    };
    let lua = format!(
        "{request}done = function(s, latency, r)\n  io.write(string.format(\"RESULT %d %d %d %d %d %d\\n\", s.requests, s.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9), s.errors.status))\nend\n"
    );
    std::fs::write(&script, lua).map_err(|e| e.to_string())?;
    let out = Command::new(wrk)
        .args(["-t1", &format!("-c{conns}"), &format!("-d{}s", load.as_secs()), "--timeout", "2s", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| format!("{}: {e} (Debian package wrk)", wrk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT ")).ok_or_else(|| format!("wrk said: {text}"))?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if v.len() != 6 || v[1] == 0 {
        return Err(format!("wrk said: {text}"));
    }
    Ok(Load { rps: v[0] as f64 / (v[1] as f64 / 1e6), p50: v[2], p99: v[3], p999: v[4] })
}
