//! Position-aware elections as real processes (docs/positions.md): three
//! managed sidecars on loopback whose `--position-exec` reads a file the
//! test writes (and records what it was told), or whose application sets
//! the position with `PUT /v1/position`. A node whose database is behind
//! both others' must never lead; the observer check of DESIGN §7 runs
//! throughout. Every process is ended by its pid; every wait has a deadline.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::*;

const TTL: Duration = Duration::from_secs(1);
/// One group at a time: who wins a failover depends on how soon each
/// voter's `--position-exec` read comes after its promise ends, which a
/// second group on the same 2 cores delays.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Group {
    dir: PathBuf,
    names: Vec<String>,
    peers: Vec<String>,
    apis: Vec<String>,
    metrics: Vec<String>,
    children: Vec<Option<Child>>,
    /// `--position-exec` (reading `<name>.pos`) or `--position-from-api`.
    exec: bool,
}

impl Group {
    fn new(name: &str, exec: bool) -> Group {
        let dir = std::env::temp_dir().join(format!("leasehold-positions-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let names: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
        let peers: Vec<String> = names.iter().map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let file: String = names.iter().zip(&peers).map(|(n, p)| format!("{n}={p}\n")).collect();
        std::fs::write(dir.join("peers"), format!("generation 1\n{file}")).expect("peers file");
        let apis = names.iter().map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let metrics = names.iter().map(|_| format!("127.0.0.1:{}", free_port())).collect();
        Group { dir, names, peers, apis, metrics, children: vec![None, None, None], exec }
    }

    /// What node `i`'s database reports: `BRANCH POSITION`.
    fn set_position(&self, i: usize, text: &str) {
        let tmp = self.dir.join(format!("{}.pos.tmp", self.names[i]));
        std::fs::write(&tmp, text).expect("position");
        std::fs::rename(&tmp, self.dir.join(format!("{}.pos", self.names[i]))).expect("rename");
    }

    fn spawn(&mut self, i: usize) {
        let name = &self.names[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
        cmd.args(["--node-id", name, "--cluster-id", "positions", "--lease-ttl", "1s"])
            .args(["--peers-file", &self.dir.join("peers").to_string_lossy()])
            .args(["--listen-peer", &self.peers[i], "--listen-api", &self.apis[i]])
            .args(["--listen-metrics", &self.metrics[i]])
            .args(["--data-dir", &self.dir.join(name).to_string_lossy()]);
        if self.exec {
            // Records what it was told, then prints the position file.
            let d = self.dir.to_string_lossy();
            let script = format!(
                "env | grep ^LEASEHOLD_ | sort > {d}/{name}.env.tmp && mv {d}/{name}.env.tmp {d}/{name}.env; \
                 cat {d}/{name}.pos"
            );
            cmd.args(["--position-exec", &script, "--position-interval", "100ms"]);
        } else {
            cmd.arg("--position-from-api");
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("spawn leasehold");
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn api(&self, i: usize) -> Option<&str> {
        self.children[i].as_ref().map(|_| self.apis[i].as_str())
    }

    fn leader(&self, within: Duration) -> Option<(usize, u64)> {
        let apis: Vec<Option<&str>> = (0..3).map(|i| self.api(i)).collect();
        wait_for_one_leader(&apis, within, None).map(|(i, t, _)| (i, t))
    }

    fn env(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.env", self.names[i]))).unwrap_or_default()
    }

    fn status(&self, i: usize) -> Value {
        let (_, body) = get(&self.apis[i], "/v1/status").expect("status");
        serde_json::from_str(&body).expect("status JSON")
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits (at most `within`) until `ok` holds.
fn wait(within: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the leader `rounds` times (and starts it again once another
/// leads); returns which nodes led, in order, and the votes refused for a
/// position behind, summed over every process (a restart resets its
/// counters: each is read before its process is killed, and at the end).
fn failovers(g: &mut Group, rounds: usize) -> (Vec<usize>, f64) {
    const BEHIND: &str = "leasehold_position_refusals_total{reason=\"behind\"}";
    let mut led = Vec::new();
    let mut refused = 0.0;
    for _ in 0..rounds {
        let (l, _) = g.leader(Duration::from_secs(15)).expect("a leader");
        led.push(l);
        refused += counter(&g.metrics[l], BEHIND);
        g.kill(l);
        let (next, _) = g.leader(Duration::from_secs(15)).expect("a leader after the kill");
        led.push(next);
        g.spawn(l);
        // The restarted node follows the leader before the next round.
        wait(Duration::from_secs(15), "the restarted node follows a leader", || {
            get(&g.apis[l], "/v1/leader").is_some_and(|(_, b)| b.contains("\"leader_id\":\"n"))
        });
    }
    refused += (0..3).map(|i| counter(&g.metrics[i], BEHIND)).sum::<f64>();
    (led, refused)
}

fn counter(metrics: &str, name_and_labels: &str) -> f64 {
    let (_, body) = get(metrics, "/metrics").expect("metrics");
    body.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
}

#[test]
fn a_lagging_database_never_leads_and_the_command_is_told_its_upstream() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::new("exec", true);
    let observer = Observer::start(g.apis.clone());
    // n1 campaigns first (turns go by name), and is behind both others.
    g.set_position(0, "4 0/500\n");
    g.set_position(1, "4 0/2000\n");
    g.set_position(2, "4 0/1000\n");
    for i in 0..3 {
        g.spawn(i);
    }
    let (l, token) = g.leader(Duration::from_secs(20)).expect("a first leader");
    assert_ne!(l, 0, "n1's database is behind both others', and it leads");
    // The command is told the leader's role and, on a follower, the
    // leader's address (its --advertise: its peer address by default).
    let f = (0..3).find(|&i| i != l).expect("a follower");
    wait(Duration::from_secs(5), "the leader's command told it leads", || {
        g.env(l).contains("LEASEHOLD_ROLE=leader") && g.env(l).contains(&format!("LEASEHOLD_TOKEN={token}"))
    });
    wait(Duration::from_secs(5), "a follower's command told its upstream", || {
        let env = g.env(f);
        env.contains("LEASEHOLD_ROLE=follower")
            && env.contains(&format!("LEASEHOLD_UPSTREAM={}", g.peers[l]))
            && env.contains(&format!("LEASEHOLD_UPSTREAM_ID={}", g.names[l]))
    });
    let s = g.status(f);
    assert_eq!(s["position"]["role"], "follower", "{s}");
    assert_eq!(s["position"]["upstream"], g.peers[l].as_str(), "{s}");
    let own = &s["position"]["own"];
    assert_eq!(own["branch"], 4, "{s}");
    let lsn = ["0/500", "0/2000", "0/1000"][f];
    assert_eq!(own["lsn"], lsn, "{s}");
    wait(Duration::from_secs(5), "each peer's position in the follower's status", || {
        let s = g.status(f);
        s["peers"].as_array().is_some_and(|p| p.iter().all(|p| p["position"]["branch"] == 4))
    });
    let (led, refused) = failovers(&mut g, 3);
    assert!(!led.contains(&0), "n1 led (leaders in order: {led:?})");
    assert!(refused > 0.0, "no vote was refused for a position behind");
    for i in 0..3 {
        let (_, body) = get(&g.metrics[i], "/metrics").expect("metrics");
        promtool_check(&body);
    }
    let proofs = observer.finish();
    assert!(proofs > 0);
}

/// The check above can fail: with n1's database as far as the others',
/// n1 (which campaigns first in turn) leads within a few failovers (at
/// most 8: a campaign can still lose to a voter whose read is not fresh
/// yet, and the next in turn win).
#[test]
fn with_equal_positions_the_first_in_turn_leads() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::new("equal", true);
    for i in 0..3 {
        g.set_position(i, "4 0/1000\n");
        g.spawn(i);
    }
    let mut led = Vec::new();
    for _ in 0..8 {
        led.extend(failovers(&mut g, 1).0);
        if led.contains(&0) {
            break;
        }
    }
    assert!(led.contains(&0), "n1 never led, so the check that it never leads proves nothing: {led:?}");
}

/// PUT /v1/position, as an application that reports its database's
/// position itself: until every node reported one, nobody leads; then the
/// lagging node does not; bad bodies get a 400 and guards hold.
#[test]
fn positions_from_the_api() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::new("api", false);
    let observer = Observer::start(g.apis.clone());
    for i in 0..3 {
        g.spawn(i);
    }
    assert!(g.leader(TTL * 3).is_none(), "a leader before any position was known");
    let put = |api: &str, body: &str, extra: &[&str]| {
        let a = leasehold::http::request(api, "PUT", "/v1/position", extra, body, Duration::from_secs(2))
            .expect("PUT /v1/position");
        (a.status, a.body)
    };
    let (code, body) = put(&g.apis[0], r#"{"position":"0/G"}"#, &[]);
    assert_eq!(code, 400, "{body}");
    let (code, body) = put(&g.apis[0], r#"{"position":5,"extra":1}"#, &[]);
    assert_eq!(code, 400, "{body}");
    let (code, body) = put(&g.apis[0], r#"{"position":5,"read_at_boottime_ns":18446744073709551615}"#, &[]);
    assert!(code == 400 && body.contains("future"), "{code} {body}");
    let (code, body) = put(&g.apis[0], r#"{"position":5}"#, &["Origin: http://example.com"]);
    assert_eq!(code, 403, "{body}");
    // The applications report every 150 ms for 8 s, n1 behind the others.
    let apis = g.apis.clone();
    let reporter = thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            for (api, lsn) in apis.iter().zip(["0/500", "0/2000", "0/1000"]) {
                let read_at = leasehold::clock::boottime_now().0;
                let body = format!(r#"{{"position":"{lsn}","branch":2,"read_at_boottime_ns":{read_at}}}"#);
                let _ = leasehold::http::request(api, "PUT", "/v1/position", &[], &body, Duration::from_secs(1));
            }
            thread::sleep(Duration::from_millis(150));
        }
    });
    let (l, _) = g.leader(Duration::from_secs(6)).expect("a leader once positions are known");
    assert_ne!(l, 0, "n1's database is behind both others', and it leads");
    let s = g.status(l);
    assert_eq!(s["position"]["role"], "leader", "{s}");
    assert_eq!(s["position"]["own"]["branch"], 2, "{s}");
    reporter.join().expect("reporter");
    observer.finish();
}

#[test]
fn position_flags_are_checked_at_start() {
    let dir = std::env::temp_dir().join(format!("leasehold-positions-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let peers = dir.join("peers");
    std::fs::write(&peers, format!("n1=127.0.0.1:{}\n", free_port())).expect("peers");
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = ["--node-id", "n1", "--data-dir"].iter().map(|s| s.to_string()).collect();
        args.push(dir.join("data").to_string_lossy().into_owned());
        args.extend(["--listen-api".to_string(), format!("127.0.0.1:{}", free_port())]);
        args.extend(["--listen-metrics".to_string(), format!("127.0.0.1:{}", free_port())]);
        args.extend(extra.iter().map(|s| s.to_string()));
        run_bounded(&args, Duration::from_secs(10))
    };
    let p = peers.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 4] = [
        (&["--peers", "n1=127.0.0.1:1", "--position-exec", "echo 1"], "--position-exec: needs --peers-file"),
        (&["--peers-file", &p, "--position-exec", "echo 1", "--position-interval", "1500ms"], "--position-interval"),
        (&["--peers-file", &p, "--position-interval", "100ms"], "--position-interval: goes with --position-exec"),
        (&["--peers-file", &p, "--position-exec", " "], "--position-exec: is empty"),
    ];
    for (extra, expected) in cases {
        let (code, err) = run(extra);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert!(err.contains(expected) && err.trim().lines().count() == 1, "{extra:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
