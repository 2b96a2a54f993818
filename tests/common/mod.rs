//! What the real-process tests share: loopback HTTP, free ports, test
//! certificates (`certs`), and the observer check of DESIGN §7.
#![allow(dead_code, clippy::disallowed_types, clippy::disallowed_methods)]

pub mod certs;
pub mod group;
pub mod steps;

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub use leasehold::observe::{self, Proof};

/// The drift bound the sidecars under test run with (the default).
pub const RHO: f64 = 0.01;

/// A loopback port free now, below the ephemeral range
/// ([`leasehold::local::free_port`]).
pub fn free_port() -> u16 {
    leasehold::local::free_port().expect("a free loopback port")
}

/// A group of `n` sidecars on loopback: `--peers` (n1..nN on free ports)
/// and, for each, its API address, its metrics address and its arguments
/// (data dir `dir/<id>`, the given lease).
pub struct Layout {
    pub peers: String,
    pub nodes: Vec<NodeLayout>,
}

pub struct NodeLayout {
    pub id: String,
    pub api: String,
    pub metrics: String,
    pub args: Vec<String>,
}

pub fn layout(n: usize, dir: &std::path::Path, lease_ttl: Duration) -> Layout {
    let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    let peers: Vec<String> = ids.iter().map(|id| format!("{id}=127.0.0.1:{}", free_port())).collect();
    let peers = peers.join(",");
    let nodes = ids
        .into_iter()
        .map(|id| {
            let api = format!("127.0.0.1:{}", free_port());
            let metrics = format!("127.0.0.1:{}", free_port());
            let args = vec![
                "--node-id".into(),
                id.clone(),
                "--peers".into(),
                peers.clone(),
                "--listen-api".into(),
                api.clone(),
                "--listen-metrics".into(),
                metrics.clone(),
                "--data-dir".into(),
                dir.join(&id).to_string_lossy().into_owned(),
                "--lease-ttl".into(),
                format!("{}ms", lease_ttl.as_millis()),
            ];
            NodeLayout { id, api, metrics, args }
        })
        .collect();
    Layout { peers, nodes }
}

/// One node's part of a failure report: what it says of itself (`None`:
/// not running or not answering) and the last `lines` lines of its log.
pub fn describe_node(name: &str, status: Option<String>, log: &str, lines: usize) -> String {
    let mut out = format!("--- {name} status: {}\n", status.as_deref().unwrap_or("(no answer)"));
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    for line in tail.iter().rev() {
        out += line;
        out.push('\n');
    }
    out
}

/// One GET over a fresh connection; None if the node does not answer.
pub fn get(api: &str, path: &str) -> Option<(u16, String)> {
    leasehold::http::get(api, path, Duration::from_millis(700))
}

pub fn field(body: &str, name: &str) -> Option<u64> {
    let at = body.find(&format!("\"{name}\":"))? + name.len() + 3;
    let digits: String = body[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Waits (at most `within`) until exactly one of `apis` (None: not running)
/// other than `not` answers 200 on /v1/leader, asserting all along that never
/// two do. Returns its index, its token and when it was seen; None if none.
pub fn wait_for_one_leader(
    apis: &[Option<&str>],
    within: Duration,
    not: Option<usize>,
) -> Option<(usize, u64, Instant)> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let leaders: Vec<(usize, u64)> = (0..apis.len())
            .filter(|&i| Some(i) != not)
            .filter_map(|i| match get(apis[i]?, "/v1/leader") {
                Some((200, body)) => Some((i, field(&body, "fencing_token").expect("token"))),
                _ => None,
            })
            .collect();
        assert!(leaders.len() <= 1, "two nodes answer 200 at once: {leaders:?}");
        if let Some(&(i, token)) = leaders.first() {
            return Some((i, token, Instant::now()));
        }
        thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The observer check of DESIGN §7 (`leasehold::observe`), polling every
/// 3 ms, with the planned hand-overs the test asked for.
pub struct Observer {
    inner: Option<observe::Observer>,
    /// Planned hand-overs the test asked for: which node, when it was
    /// asked, and when it was done (the request answered, or the successor
    /// seen).
    pub handovers: Vec<observe::Handover>,
}

impl Observer {
    pub fn start(apis: Vec<String>) -> Observer {
        // Bounded: at most 10 minutes of polling even if never stopped.
        let inner = observe::Observer::start(apis, Duration::from_millis(3), Duration::from_secs(600));
        Observer { inner: Some(inner), handovers: Vec::new() }
    }

    pub fn proofs(&self) -> Vec<Proof> {
        self.inner.as_ref().map(|o| o.proofs()).unwrap_or_default()
    }

    /// Stops polling and checks: no two proofs of different tokens overlap,
    /// and no token goes backwards. Returns how many proofs were seen.
    pub fn finish(mut self) -> usize {
        let proofs = self.inner.take().map(|o| o.stop()).unwrap_or_default();
        let found = observe::check(&proofs, &self.handovers, RHO);
        if found.count > 0 {
            let t0 = proofs.first().map(|p| p.sent);
            for p in &proofs {
                eprintln!(
                    "proof node {} token {} sent +{:?} recv +{:?} remaining {:?}",
                    p.node,
                    p.token,
                    p.sent - t0.unwrap_or(p.sent),
                    p.recv - t0.unwrap_or(p.sent),
                    p.remaining
                );
            }
        }
        assert!(
            found.count == 0,
            "observer check failed ({} violations): {:?}",
            found.count,
            &found.described[..found.described.len().min(5)]
        );
        proofs.len()
    }
}

/// Runs `leasehold` with `args` until it exits (killed after `limit`);
/// returns its exit code and stderr.
pub fn run_bounded(args: &[String], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.and_then(|s| s.code()), err)
}

/// `promtool check metrics` on a `/metrics` body finds nothing to say.
pub fn promtool_check(body: &str) {
    use std::io::Write;
    // promtool is installed by scripts/test.sh (Debian's prometheus package).
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/test.sh, which installs Debian's prometheus package");
    promtool.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}");
}
