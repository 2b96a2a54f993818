//! Check, then write: hold leasehold's lease before each write, with its token.
//!
//!     cargo run --example check-then-write -- [API] [COUNT]
//!
//! `store` stands for your storage's write: it must refuse a token lower
//! than the highest it has seen (see examples/postgres for a PostgreSQL one).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

#[derive(Default, Deserialize)]
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
    /// How many watch events were applied.
    events: u64,
}

impl Lease {
    /// Applies a leader JSON; an answer asked for before the latest watch
    /// event (`asked` is not `Some(self.events)`) may be stale and is dropped.
    fn update(&mut self, leader: &Leader, asked: Option<u64>) {
        match asked {
            None => self.events += 1,
            Some(events) if events != self.events => return,
            Some(_) => {}
        }
        (self.token, self.deadline) = match (leader.is_leader, leader.fencing_token, leader.lease_deadline_boottime_ns)
        {
            (true, Some(token), Some(deadline)) => (token, deadline),
            _ => (0, 0),
        };
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

/// The leader JSON of GET `path`; a 503 (not the leader) has the same body.
async fn ask(http: &reqwest::Client, api: &str, path: &str, timeout: Duration) -> reqwest::Result<Leader> {
    http.get(format!("{api}{path}")).timeout(timeout).send().await?.json().await
}

/// `/v1/watch`: a hand-over ends the lease before its deadline.
async fn follow(http: reqwest::Client, api: String, lease: Arc<Mutex<Lease>>) {
    loop {
        if let Ok(mut events) = http.get(format!("{api}/v1/watch")).send().await {
            let mut buf = Vec::new();
            while let Ok(Some(chunk)) = events.chunk().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    if let Some(Ok(leader)) = line.strip_prefix(b"data: ").map(serde_json::from_slice::<Leader>) {
                        lease.lock().expect("lease").update(&leader, None);
                    }
                }
            }
        }
        lease.lock().expect("lease").update(&Leader::default(), None);
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
    tokio::spawn(follow(http.clone(), api.clone(), lease.clone()));
    let mut record = 0;
    while record < count {
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
        match ask(&http, &api, "/v1/leader", Duration::from_secs(2)).await {
            Ok(leader) => {
                lease.lock().expect("lease").update(&leader, Some(events));
                if !leader.is_leader {
                    // Until who leads changes.
                    let _ = ask(&http, &api, "/v1/leader?wait=10s", Duration::from_secs(12)).await;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await, // no answer: no lease
        }
    }
}
