//! Scenario tests of the consensus core, in the style of etcd-raft's
//! interaction tests: each file under `tests/testdata/` is a script of
//! commands, each followed by `----` and the output it must print. The
//! commands drive a calm simulated world (perfect clocks, 1ms links and
//! fsyncs unless told otherwise), with the simulator's invariant checker
//! watching every step.
//!
//! Rewrite the expectations after an intended change with
//! `LEASEHOLD_REWRITE=1 cargo test --test scenarios`, then review the diff.
//!
//! Commands:
//! - `cluster nodes=N [lease-ttl=D] [heartbeat=D] [priority=n1:0,n2:3] [latency=D] [fsync=D] [seed=S]`
//! - `run D`: let D of simulated time pass
//! - `crash nX`, `restart nX`, `pause nX`, `resume nX`, `health nX up|down`
//! - `partition nX nY | nZ ...`, `cut nX->nY` (one way), `heal`
//! - `transfer nX nY`, `step-down nX`
//! - `inject nX <field=value ...> <Body> [args]`: hand a crafted message to nX
//! - `status`: one line per node
//! - `trace on|off`: also print every message sent, delivered and dropped
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use leasehold::core::{AdminRequest, Body, Envelope, NodeId, Role, Term};
use leasehold::sim::{Verbosity, World, WorldConfig};

struct Harness {
    world: Option<World>,
}

impl Harness {
    fn world(&mut self) -> &mut World {
        self.world.as_mut().expect("the script must start with `cluster`")
    }

    fn node(&mut self, name: &str) -> usize {
        self.world().index_of(name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn run(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut out = String::new();
        match words[0] {
            "cluster" => out = self.cluster(&words[1..]),
            "run" => {
                let d = dur(words[1]);
                let w = self.world();
                let until = w.now() + d.as_nanos() as u64;
                w.run_until(until);
            }
            "crash" => {
                let i = self.node(words[1]);
                self.world().crash(i);
            }
            "restart" => {
                let i = self.node(words[1]);
                self.world().restart(i);
            }
            "pause" => {
                let i = self.node(words[1]);
                self.world().pause(i);
            }
            "resume" => {
                let i = self.node(words[1]);
                self.world().resume(i);
            }
            "health" => {
                let i = self.node(words[1]);
                self.world().set_health(i, words[2] == "up");
            }
            "partition" => {
                let split = words.iter().position(|w| *w == "|").expect("partition needs a |");
                let a: Vec<usize> = words[1..split].iter().map(|n| self.node(n)).collect();
                let b: Vec<usize> = words[split + 1..].iter().map(|n| self.node(n)).collect();
                for &x in &a {
                    for &y in &b {
                        self.world().cut_link(x, y);
                        self.world().cut_link(y, x);
                    }
                }
            }
            "cut" => {
                let (from, to) = words[1].split_once("->").expect("cut nX->nY");
                let (from, to) = (self.node(from), self.node(to));
                self.world().cut_link(from, to);
            }
            "heal" => self.world().heal_links(),
            "transfer" => {
                let i = self.node(words[1]);
                self.world().admin(i, AdminRequest::TransferTo(NodeId::new(words[2])));
            }
            "step-down" => {
                let i = self.node(words[1]);
                self.world().admin(i, AdminRequest::StepDown);
            }
            "inject" => {
                let i = self.node(words[1]);
                let msg = self.message(i, &words[2..]);
                self.world().inject(i, msg);
            }
            "status" => out = self.status(),
            "trace" => {
                self.world().verbosity = if words[1] == "on" { Verbosity::Messages } else { Verbosity::Events };
            }
            other => panic!("unknown command {other}"),
        }
        for l in self.world().take_log() {
            out.push_str(&l);
            out.push('\n');
        }
        let violations = &self.world().checker.violations;
        assert!(violations.is_empty(), "invariant violated: {}", violations[0]);
        out
    }

    fn cluster(&mut self, args: &[&str]) -> String {
        let mut nodes = 3;
        let mut ttl = Duration::from_secs(2);
        let mut heartbeat = None;
        let mut seed = 1;
        let mut priorities = Vec::new();
        let mut latency = Duration::from_millis(1);
        let mut fsync = Duration::from_millis(1);
        for a in args {
            let (k, v) = a.split_once('=').expect("key=value");
            match k {
                "nodes" => nodes = v.parse().expect("nodes"),
                "lease-ttl" => ttl = dur(v),
                "heartbeat" => heartbeat = Some(dur(v)),
                "seed" => seed = v.parse().expect("seed"),
                "latency" => latency = dur(v),
                "fsync" => fsync = dur(v),
                "priority" => {
                    for p in v.split(',') {
                        let (n, prio) = p.split_once(':').expect("nX:P");
                        priorities.push((n.to_string(), prio.parse::<u32>().expect("priority")));
                    }
                }
                other => panic!("unknown cluster option {other}"),
            }
        }
        let mut cfg = WorldConfig::calm(nodes, ttl, heartbeat.unwrap_or(ttl / 5), seed);
        cfg.net.min_delay = latency;
        cfg.net.max_delay = latency;
        cfg.fsync_min = fsync;
        cfg.fsync_max = fsync;
        for (n, p) in priorities {
            let idx: usize = n.trim_start_matches('n').parse().expect("node name nX");
            cfg.priorities[idx - 1] = p;
        }
        let lease = leasehold::core::lease::leader_lease(ttl, leasehold::core::lease::drift_ppm(cfg.max_clock_drift));
        let header =
            format!("{nodes} nodes, lease_ttl={ttl:?} heartbeat={:?} leader_lease={lease:?}\n", cfg.heartbeat_interval);
        let mut world = World::new(cfg);
        world.verbosity = Verbosity::Events;
        self.world = Some(world);
        header
    }

    /// `inject n1 from=n2 term=3 [cluster=x] [version=2] [to=n9] Heartbeat round=1`
    fn message(&mut self, to: usize, words: &[&str]) -> Envelope {
        let mut m = Envelope::new("sim", NodeId::new("n1"), self.world().id(to).clone(), Term(0), Body::TimeoutNow);
        for (idx, w) in words.iter().enumerate() {
            let Some((k, v)) = w.split_once('=') else {
                m.body = self.body(w, &words[idx + 1..]);
                break;
            };
            match k {
                "from" => m.from = NodeId::new(v),
                "to" => m.to = NodeId::new(v),
                "term" => m.term = Term(v.parse().expect("term")),
                "cluster" => m.cluster_id = v.to_string(),
                "version" => m.version = v.parse().expect("version"),
                other => panic!("unknown envelope field {other}"),
            }
        }
        m
    }

    fn body(&mut self, kind: &str, args: &[&str]) -> Body {
        let arg = |name: &str| -> Option<&str> {
            args.iter().find_map(|a| a.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        };
        let num = |name: &str| arg(name).map_or(0, |v| v.parse::<u64>().expect("number"));
        match kind {
            "Heartbeat" => Body::Heartbeat { round: num("round"), leader_address: "injected:5432".into() },
            "HeartbeatAck" => Body::HeartbeatAck { round: num("round"), ok: true, priority: 1, healthy: true },
            "VoteRequest" => Body::VoteRequest { transfer_from: arg("transfer-from").map(NodeId::new) },
            "PreVoteRequest" => Body::PreVoteRequest { next_term: Term(num("next-term")) },
            "TimeoutNow" => Body::TimeoutNow,
            other => panic!("unknown body {other}"),
        }
    }

    fn status(&mut self) -> String {
        let w = self.world();
        let mut out = String::new();
        for i in 0..w.nodes() {
            let id = w.id(i).clone();
            let Some(node) = w.node(i) else {
                let _ = writeln!(out, "{id} down");
                continue;
            };
            let now = w.local_now(i);
            let v = node.view();
            let hs = node.hard_state();
            let vote = hs.voted_for.as_ref().map_or("none".to_string(), |v| v.to_string());
            let leader = v.leader_id.as_ref().map_or("none".to_string(), |l| l.to_string());
            let lease = if v.role == Role::Leader {
                format!(" lease_remaining={:?} is_leader={}", v.lease_remaining(now), v.is_leader(now))
            } else {
                String::new()
            };
            let promise = v.promise_until.since(now);
            let paused = if w.is_paused(i) { " (paused)" } else { "" };
            let _ = writeln!(
                out,
                "{id}{paused} {} term={} vote={vote} leader={leader}{lease} promise_remaining={promise:?}",
                v.role.as_str(),
                v.term
            );
        }
        out
    }
}

fn dur(s: &str) -> Duration {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).expect("a unit: ms or s"));
    let n: f64 = num.parse().expect("a number");
    match unit {
        "ms" => Duration::from_secs_f64(n / 1e3),
        "s" => Duration::from_secs_f64(n),
        "us" => Duration::from_secs_f64(n / 1e6),
        other => panic!("unknown unit {other}"),
    }
}

/// Runs one script; returns the script with actual outputs in place of the
/// expected ones.
fn run_script(text: &str) -> String {
    let mut h = Harness { world: None };
    let mut result = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            result.push_str(line);
            result.push('\n');
            continue;
        }
        result.push_str(line);
        result.push('\n');
        assert_eq!(lines.next(), Some("----"), "command `{line}` must be followed by ----");
        // Skip the expected output up to the next blank line.
        while lines.peek().is_some_and(|l| !l.trim().is_empty()) {
            lines.next();
        }
        result.push_str("----\n");
        result.push_str(&h.run(line));
    }
    result
}

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let rewrite = std::env::var_os("LEASEHOLD_REWRITE").is_some();
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("tests/testdata").map(|e| e.expect("entry").path()).collect();
    files.sort();
    assert!(files.len() >= 12, "expected the scenario files, found {}", files.len());
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read scenario");
        let actual = run_script(&text);
        if actual != text {
            if rewrite {
                std::fs::write(&path, &actual).expect("rewrite scenario");
            } else {
                failures.push(format!("{}:\n{}", path.display(), diff(&text, &actual)));
            }
        }
    }
    assert!(failures.is_empty(), "scenario output differs (LEASEHOLD_REWRITE=1 to accept):\n{}", failures.join("\n"));
}

fn diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let first = e.iter().zip(&a).position(|(x, y)| x != y).unwrap_or(e.len().min(a.len()));
    let mut out = format!("first difference at line {}\n", first + 1);
    for l in e.iter().skip(first).take(8) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in a.iter().skip(first).take(8) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}
