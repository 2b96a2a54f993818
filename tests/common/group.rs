//! A static group of real sidecars on loopback for tests that drive it from
//! outside (the API contract, the client loops): started with the layout of
//! [`super::layout`] and per-node extra arguments, watched by the observer
//! check, every process ended by its pid when the group is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{describe_node, get, wait_for_one_leader, Observer};

pub struct Group {
    pub dir: PathBuf,
    pub apis: Vec<String>,
    pub metrics: Vec<String>,
    args: Vec<Vec<String>>,
    children: Vec<Option<Child>>,
    pub observer: Option<Observer>,
    /// When the last transfer [`Group::make_leader`] asked for was answered 200.
    pub handed_over_at: Option<Instant>,
}

impl Group {
    /// `n` sidecars `n1..nN` with lease `ttl`; `args(i, a)` makes node `i`'s
    /// arguments from the layout's `a`. The observer starts with them.
    /// `args` runs once the group's folder ([`Group::dir_for`]) exists, so
    /// it may write files there.
    pub fn start(name: &str, n: usize, ttl: Duration, args: impl Fn(usize, Vec<String>) -> Vec<String>) -> Group {
        let dir = Group::dir_for(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("group dir");
        let layout = super::layout(n, &dir, ttl);
        let mut g = Group {
            dir,
            apis: layout.nodes.iter().map(|l| l.api.clone()).collect(),
            metrics: layout.nodes.iter().map(|l| l.metrics.clone()).collect(),
            args: layout.nodes.into_iter().enumerate().map(|(i, l)| args(i, l.args)).collect(),
            children: (0..n).map(|_| None).collect(),
            observer: None,
            handed_over_at: None,
        };
        for i in 0..n {
            g.spawn(i);
        }
        // Every API answers before the test goes on (at most 10 s).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !g.apis.iter().all(|a| get(a, "/healthz").is_some()) {
            assert!(Instant::now() < deadline, "a node's API did not answer within 10 s\n{}", g.describe());
            thread::sleep(Duration::from_millis(10));
        }
        g.observer = Some(Observer::start(g.apis.clone()));
        g
    }

    /// The folder of the group `name` of this test process, removed when
    /// the group is dropped.
    pub fn dir_for(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("leasehold-{name}-{}", std::process::id()))
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{}.log", i + 1)))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(&self.args[i])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leasehold");
        self.children[i] = Some(child);
    }

    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(c) = &self.children[i] {
            // SAFETY: kill(2) on the pid of a child this test spawned.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits (at most `within`) until exactly one node other than `not`
    /// answers 200 on /v1/leader; its index and token.
    pub fn leader(&self, within: Duration, not: Option<usize>) -> (usize, u64) {
        let apis: Vec<Option<&str>> = self.apis.iter().map(|a| Some(a.as_str())).collect();
        let (i, token, _) = wait_for_one_leader(&apis, within, not)
            .unwrap_or_else(|| panic!("no leader within {within:?}\n{}", self.describe()));
        (i, token)
    }

    /// Makes node `to` the leader by transfers from whoever leads (at most
    /// 5 tries), recording each as a planned hand-over for the observer;
    /// returns its token.
    pub fn make_leader(&mut self, to: usize, bearer: Option<&str>) -> u64 {
        for _ in 0..5 {
            let (from, token) = self.leader(Duration::from_secs(10), None);
            if from == to {
                return token;
            }
            let auth = bearer.map(|t| format!("Authorization: Bearer {t}"));
            let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
            let path = format!("/v1/transfer?to=n{}&wait=5s", to + 1);
            let asked = Instant::now();
            let answer =
                leasehold::http::request(&self.apis[from], "POST", &path, &headers, "", Duration::from_secs(8));
            let done = Instant::now();
            // A refusal hands nothing over: only an accepted (or unanswered)
            // request excuses an overlap for the observer.
            if !matches!(answer, Ok(ref a) if a.status == 400 || a.status == 409) {
                if let Some(o) = self.observer.as_mut() {
                    o.handovers.push((from, asked, done));
                }
            }
            if matches!(answer, Ok(ref a) if a.status == 200) {
                self.handed_over_at = Some(done);
            } else {
                // Refused (the target not heard from lately, say): try again.
                thread::sleep(Duration::from_millis(200));
            }
        }
        panic!("n{} did not become the leader in 5 transfers\n{}", to + 1, self.describe());
    }

    /// Stops the observer and asserts its check; how many proofs it saw.
    pub fn check(&mut self) -> usize {
        self.observer.take().expect("observer running").finish()
    }

    /// What every node says of itself and the end of its log, for a failure.
    pub fn describe(&self) -> String {
        let log = |i: usize| std::fs::read_to_string(self.dir.join(format!("n{}.log", i + 1))).unwrap_or_default();
        (0..self.apis.len())
            .map(|i| {
                describe_node(&format!("n{}", i + 1), get(&self.apis[i], "/v1/status").map(|(_, b)| b), &log(i), 30)
            })
            .collect()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        drop(self.observer.take());
        for i in 0..self.children.len() {
            self.signal(i, libc::SIGCONT);
            self.signal(i, libc::SIGKILL);
            if let Some(mut c) = self.children[i].take() {
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
