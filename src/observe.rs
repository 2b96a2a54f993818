//! The observer check of DESIGN §7, shared by the real-process tests and the
//! fault harness (`leasehold-chaos`): poll every node's `/v1/leader` on this
//! process's monotonic clock and look for two leases that provably overlap,
//! or a token that goes backwards.
//!
//! An answer "leader, token T, remaining r" sent at `sent` and received at
//! `recv` proves a lease over `[recv, sent + r*(1-rho))`: the node computed
//! `r` somewhere in between, and its clock runs at most `1+rho` times as fast
//! as ours. The check has no false positives; its resolution is the poll
//! period.
//!
//! Must not: be run under a faked clock (it is the one true clock).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::http;

/// A leader answer, on the observer's clock.
#[derive(Clone, Debug)]
pub struct Proof {
    pub node: usize,
    pub token: u64,
    pub sent: Instant,
    pub recv: Instant,
    pub remaining: Duration,
}

/// A planned hand-over the caller asked for: which node, when it was asked,
/// and when it was done (the request answered or the successor seen).
pub type Handover = (usize, Instant, Instant);

/// At most this many violations are described; the count is exact.
const MAX_DESCRIBED: usize = 100;

/// What the check found: how many violations and the first few described.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    pub count: usize,
    pub described: Vec<String>,
}

impl Findings {
    fn push(&mut self, what: String) {
        self.count += 1;
        if self.described.len() < MAX_DESCRIBED {
            self.described.push(what);
        }
    }
}

/// The observer check over `proofs` (any order): two proofs of different
/// tokens whose lease intervals overlap, unless a planned hand-over
/// separates them (rule 8 ends the old lease early: the older proof was
/// given before the hand-over was done, the newer after it was asked for);
/// and a leader answer sent after a higher token was already seen.
pub fn check(proofs: &[Proof], handovers: &[Handover], rho: f64) -> Findings {
    let mut sorted: Vec<&Proof> = proofs.iter().collect();
    sorted.sort_by_key(|p| p.recv);
    let end = |p: &Proof| p.sent + p.remaining.mul_f64(1.0 - rho);
    let planned = |old: &Proof, new: &Proof| {
        handovers.iter().any(|&(node, asked, done)| node == old.node && old.sent <= done && asked <= new.sent)
    };
    let mut found = Findings::default();
    for (i, a) in sorted.iter().enumerate() {
        // Later proofs start at or after a.recv; only those starting before
        // a's end can overlap it.
        for b in sorted[i + 1..].iter().take_while(|b| b.recv < end(a)) {
            let (old, new) = if a.token < b.token { (a, b) } else { (b, a) };
            if a.token != b.token && b.recv < end(a) && a.recv < end(b) && !planned(old, new) {
                found.push(format!(
                    "overlap: node {} token {} and node {} token {} (leases of {:?} and {:?})",
                    a.node, a.token, b.node, b.token, a.remaining, b.remaining
                ));
            }
        }
    }
    // Tokens never go back: the highest token received before each
    // answer was sent.
    let mut highest: Vec<(Instant, u64)> = Vec::with_capacity(sorted.len());
    for p in &sorted {
        let top = highest.last().map_or(p.token, |&(_, t)| t.max(p.token));
        highest.push((p.recv, top));
    }
    for b in &sorted {
        let before = highest.partition_point(|&(recv, _)| recv < b.sent);
        if let Some(&(_, top)) = before.checked_sub(1).and_then(|i| highest.get(i)) {
            if b.token < top {
                found.push(format!("token went back from {top} to {} (node {})", b.token, b.node));
            }
        }
    }
    found
}

/// Threads, one per node, that poll `/v1/leader` until stopped (or `limit`
/// passes) and keep every leader answer. One thread per node, so that a
/// stopped node (SIGSTOP) slows no poll of the others.
pub struct Observer {
    stop: Arc<AtomicBool>,
    proofs: Arc<Mutex<Vec<Proof>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Observer {
    /// Starts polling `apis` (index = node) with `pause` between polls.
    pub fn start(apis: Vec<String>, pause: Duration, limit: Duration) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let proofs = Arc::new(Mutex::new(Vec::new()));
        let threads = apis
            .into_iter()
            .enumerate()
            .map(|(node, api)| {
                let (s, p) = (stop.clone(), proofs.clone());
                thread::spawn(move || {
                    let end = Instant::now() + limit;
                    while !s.load(Ordering::Relaxed) && Instant::now() < end {
                        let sent = Instant::now();
                        if let Some(proof) = ask(node, &api, sent) {
                            p.lock().unwrap_or_else(|e| e.into_inner()).push(proof);
                        }
                        thread::sleep(pause);
                    }
                })
            })
            .collect();
        Observer { stop, proofs, threads }
    }

    /// The proofs so far.
    pub fn proofs(&self) -> Vec<Proof> {
        self.proofs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops polling and returns every proof.
    pub fn stop(mut self) -> Vec<Proof> {
        self.halt();
        self.proofs()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One poll: a proof if the node answers that it leads. A leader answer
/// without a token or a remaining time is an API bug, reported as a proof
/// of an impossible token so that the check cannot miss it.
fn ask(node: usize, api: &str, sent: Instant) -> Option<Proof> {
    let answer = http::request(api, "GET", "/v1/leader", &[], "", Duration::from_millis(500)).ok()?;
    let recv = Instant::now();
    if answer.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
    let token = v["fencing_token"].as_u64().unwrap_or(0);
    let remaining = Duration::from_millis(v["lease_remaining_ms"].as_u64().unwrap_or(u64::MAX / 2));
    Some(Proof { node, token, sent, recv, remaining })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn overlaps_and_tokens_going_back_are_found_and_hand_overs_excused() {
        let t = Instant::now();
        let p = |node, token, at: u64, rem: u64| Proof {
            node,
            token,
            sent: t + ms(at),
            recv: t + ms(at + 1),
            remaining: ms(rem),
        };
        let v = |proofs: &[Proof], h: &[Handover]| check(proofs, h, 0.01).count;
        assert_eq!(v(&[p(0, 1, 0, 500), p(1, 2, 600, 500)], &[]), 0);
        assert_eq!(v(&[p(0, 1, 0, 500), p(1, 2, 300, 500)], &[]), 1, "overlap");
        assert_eq!(v(&[p(1, 2, 300, 500), p(0, 1, 0, 500)], &[]), 1, "overlap, any order");
        assert_eq!(v(&[p(0, 2, 0, 10), p(1, 1, 600, 10)], &[]), 1, "token went back");
        assert_eq!(v(&[p(0, 1, 0, 10), p(0, 1, 5, 10), p(1, 2, 600, 10)], &[]), 0, "same token, then a higher one");
        let asked_at_200 = (0, t + ms(200), t + ms(210));
        assert_eq!(v(&[p(0, 1, 0, 500), p(1, 2, 300, 500)], &[asked_at_200]), 0);
        // The old answer came after the hand-over was done, or the new one
        // before it was asked for: no excuse.
        assert_eq!(v(&[p(0, 1, 250, 500), p(1, 2, 300, 500)], &[asked_at_200]), 1);
        assert_eq!(v(&[p(0, 1, 0, 500), p(1, 2, 150, 500)], &[asked_at_200]), 1);
        assert_eq!(v(&[p(0, 1, 0, 500), p(1, 2, 300, 500)], &[(2, t + ms(200), t + ms(210))]), 1);
    }
}
