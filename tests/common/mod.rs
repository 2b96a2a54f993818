//! What the real-process tests share: loopback HTTP, free ports, test
//! certificates (`certs`), and the observer check of DESIGN §7.
#![allow(dead_code, clippy::disallowed_types, clippy::disallowed_methods)]

pub mod certs;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The drift bound the sidecars under test run with (the default).
pub const RHO: f64 = 0.01;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One GET over a fresh connection; None if the node does not answer.
pub fn get(api: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&api.parse().ok()?, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.get(9..12)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1)?.to_string();
    Some((code, body))
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

/// A leader answer: sent and received on the observer's clock.
#[derive(Clone, Debug)]
pub struct Proof {
    pub node: usize,
    pub token: u64,
    pub sent: Instant,
    pub recv: Instant,
    pub remaining: Duration,
}

pub struct Observer {
    pub stop: Arc<AtomicBool>,
    pub proofs: Arc<Mutex<Vec<Proof>>>,
    /// Planned hand-overs the test asked for: which node, when it was
    /// asked, and when it was done (the request answered, or the successor
    /// seen).
    pub handovers: Vec<(usize, Instant, Instant)>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Observer {
    pub fn start(apis: Vec<String>) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let proofs = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), proofs.clone());
        let thread = thread::spawn(move || {
            // Bounded: at most 10 minutes of polling even if never stopped.
            let end = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                for (node, api) in apis.iter().enumerate() {
                    let sent = Instant::now();
                    if let Some((200, body)) = get(api, "/v1/leader") {
                        let recv = Instant::now();
                        let token = field(&body, "fencing_token").expect("token");
                        let remaining = Duration::from_millis(field(&body, "lease_remaining_ms").expect("remaining"));
                        p.lock().expect("lock").push(Proof { node, token, sent, recv, remaining });
                    }
                }
                thread::sleep(Duration::from_millis(3));
            }
        });
        Observer { stop, proofs, handovers: Vec::new(), thread: Some(thread) }
    }

    /// Stops polling and checks: no two proofs of different tokens overlap,
    /// and no token goes backwards. Returns how many proofs were seen.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("observer thread");
        }
        let proofs = self.proofs.lock().expect("lock").clone();
        let found = violations(&proofs, &self.handovers);
        if !found.is_empty() {
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
            found.is_empty(),
            "observer check failed ({} violations): {:?}",
            found.len(),
            &found[..found.len().min(5)]
        );
        proofs.len()
    }
}

/// The observer check: an answer "leader, token T, remaining r" received in
/// [sent, recv] proves a lease over [recv, sent + r*(1-rho)). Two proofs of
/// different tokens that overlap are a violation, except across a planned
/// hand-over the test asked for (rule 8 ends the old lease early): the older
/// proof was given before the hand-over was done, the newer one after it
/// was asked for.
pub fn violations(proofs: &[Proof], handovers: &[(usize, Instant, Instant)]) -> Vec<String> {
    let mut found = Vec::new();
    let end = |p: &Proof| p.sent + p.remaining.mul_f64(1.0 - RHO);
    let planned = |old: &Proof, new: &Proof| {
        handovers.iter().any(|&(node, asked, done)| node == old.node && old.sent <= done && asked <= new.sent)
    };
    for (i, a) in proofs.iter().enumerate() {
        for b in &proofs[i + 1..] {
            let (old, new) = if a.token < b.token { (a, b) } else { (b, a) };
            if a.token != b.token && a.recv < end(b) && b.recv < end(a) && !planned(old, new) {
                found.push(format!("overlap: node {} token {} and node {} token {}", a.node, a.token, b.node, b.token));
            }
            if b.sent > a.recv && b.token < a.token {
                found.push(format!("token went back from {} to {}", a.token, b.token));
            }
        }
    }
    found
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
