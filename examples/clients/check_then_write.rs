//! Check, then write: hold leasehold's lease before each write, with its token.
//!
//!     cargo run --example check-then-write -- [API] [COUNT]
//!
//! `store` stands for your storage's write: it must refuse a token lower
//! than the highest it has seen (see examples/postgres for a PostgreSQL one).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;

#[derive(Deserialize)]
struct Leader {
    is_leader: bool,
    fencing_token: Option<u64>,
    lease_deadline_boottime_ns: Option<u64>,
}

/// The token and deadline this node holds, if it leads.
#[derive(Default)]
struct Lease {
    token: u64,
    deadline: u64,
    /// How many watch events came.
    events: u64,
}

impl Lease {
    /// Keeps an answer of /v1/leader, unless a watch event came since it was
    /// asked for (`events` is not `self.events`): then it may be stale.
    fn grant(&mut self, leader: &Leader, events: u64) {
        if let (true, true, Some(token), Some(deadline)) =
            (events == self.events, leader.is_leader, leader.fencing_token, leader.lease_deadline_boottime_ns)
        {
            (self.token, self.deadline) = (token, deadline);
        }
    }

    /// A watch event: whatever it says, ask again before the next write.
    fn revoke(&mut self) {
        self.events += 1;
        self.deadline = 0;
    }

    /// The token while the lease lasts on CLOCK_BOOTTIME.
    fn token_now(&self) -> Option<u64> {
        (boottime() < self.deadline).then_some(self.token)
    }
}

fn boottime() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The leader JSON of /v1/leader; a 503 (not the leader) has the same body.
async fn ask(http: &reqwest::Client, api: &str) -> reqwest::Result<Leader> {
    http.get(format!("{api}/v1/leader")).timeout(Duration::from_secs(2)).send().await?.json().await
}

/// `/v1/watch`: a hand-over ends the lease before its deadline.
async fn follow(http: reqwest::Client, api: String, lease: Arc<Mutex<Lease>>, changed: Arc<Notify>) {
    let revoke = || {
        lease.lock().expect("lease").revoke();
        changed.notify_waiters();
    };
    loop {
        if let Ok(mut events) = http.get(format!("{api}/v1/watch")).send().await {
            let mut buf = Vec::new();
            while let Ok(Some(chunk)) = events.chunk().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    if buf.drain(..=end).as_slice().starts_with(b"data: ") {
                        revoke();
                    }
                }
            }
        }
        revoke(); // the stream broke or the sidecar does not answer
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn store(token: u64, record: u64) {
    println!("{token} {record}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let api = args.next().unwrap_or_else(|| "http://127.0.0.1:4040".into());
    let count: u64 = args.next().map_or(100, |c| c.parse().expect("COUNT is a number"));
    let http = reqwest::Client::new();
    let lease = Arc::new(Mutex::new(Lease::default()));
    let changed = Arc::new(Notify::new());
    tokio::spawn(follow(http.clone(), api.clone(), lease.clone(), changed.clone()));
    let mut record = 0;
    while record < count {
        // Registered before the state is read, so that no event is missed.
        let next_event = changed.notified();
        let (token, events) = {
            let lease = lease.lock().expect("lease");
            (lease.token_now(), lease.events)
        };
        if let Some(token) = token {
            store(token, record);
            record += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // The lease ran out (renewals send no event) or is elsewhere: ask.
        match ask(&http, &api).await {
            Ok(leader) => {
                lease.lock().expect("lease").grant(&leader, events);
                if !leader.is_leader {
                    // Until who leads changes, or 1 s.
                    let _ = tokio::time::timeout(Duration::from_secs(1), next_event).await;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await, // no answer: no lease
        }
    }
}
