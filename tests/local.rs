//! The two-minute tour of the README as a test: `leasehold local`, a kill -9
//! of the leader, a hand-over with `leasehold transfer`, Ctrl-C.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Waits (bounded) for a line of `local`'s output matching `pred`.
fn expect_line(lines: &mpsc::Receiver<String>, within: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(l) if pred(&l) => return l,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no line with {what} within {within:?}");
}

/// "[  1.234s] n2 leads, fencing token 3" -> "n2".
fn leader_of(line: &str) -> String {
    let after = line.split_once("] ").map(|(_, a)| a).unwrap_or(line);
    after.split_whitespace().next().expect("id").to_string()
}

/// Stops `local` (and through it its sidecars) even if an assertion fails.
struct Guard(Option<std::process::Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: SIGINT to our own child; it stops its sidecars.
                unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    thread::sleep(Duration::from_millis(10));
                }
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// `leasehold local` with `extra` arguments: the guard, its output lines,
/// each node's (id, pid, API), and the first "leads" line.
type Started = (Guard, mpsc::Receiver<String>, Vec<(String, u32, String)>, String);

fn start_local(extra: &[&str]) -> Started {
    let bin = env!("CARGO_BIN_EXE_leasehold");
    let mut guard = Guard(Some(
        Command::new(bin)
            .args(["local", "--nodes", "3", "--lease-ttl", "1s"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn local"),
    ));
    let local = guard.0.as_mut().expect("child");
    let stdout = local.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // "  n1  pid 1234     API http://127.0.0.1:4041"
    let mut nodes = Vec::new();
    while nodes.len() < 3 {
        let l = expect_line(&lines, Duration::from_secs(10), "a node", |l| l.contains(" pid "));
        let w: Vec<&str> = l.split_whitespace().collect();
        nodes.push((w[0].to_string(), w[2].parse::<u32>().expect("pid"), w[4].to_string()));
    }
    let first = expect_line(&lines, Duration::from_secs(10), "a leader", |l| l.contains(" leads, fencing token "));
    (guard, lines, nodes, first)
}

/// `local --managed`: the three start blank, create their group, and
/// `leasehold members` lists them as voters.
#[test]
fn the_local_tour_of_a_managed_group_creates_it_and_lists_its_members() {
    let (_guard, _lines, nodes, first) = start_local(&["--managed"]);
    let leader = leader_of(&first);
    let (_, _, api) = nodes.iter().find(|n| n.0 == leader).expect("leader listed").clone();
    let out = Command::new(env!("CARGO_BIN_EXE_leasehold")).args(["members", "--api", &api]).output().expect("members");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("this node is a voter"), "{text}");
    for id in ["n1", "n2", "n3"] {
        assert!(text.contains(&format!("voter {id} (incarnation ")), "{text}");
    }
}

#[test]
fn the_local_tour_elects_fails_over_hands_over_and_stops_cleanly() {
    let bin = env!("CARGO_BIN_EXE_leasehold");
    let (mut guard, lines, nodes, first) = start_local(&[]);
    let local = guard.0.as_mut().expect("child");
    let leader = leader_of(&first);
    // "[  1.034s] n2 leads, fencing token 1": the boot promise holds every
    // node back for one lease (1s) after the start.
    let first_at: f64 =
        first.trim_start_matches('[').split('s').next().and_then(|t| t.trim().parse().ok()).expect("time");
    assert!(first_at >= 0.9, "the first leader came before the boot promise ended: {first}");
    let (_, leader_pid, _) = nodes.iter().find(|n| n.0 == leader).expect("leader listed").clone();

    // SAFETY: kill(2) on a pid that `local`, our child, started.
    unsafe { libc::kill(leader_pid as i32, libc::SIGKILL) };
    let second = expect_line(&lines, Duration::from_secs(5), "a new leader", |l| l.contains(" leads, fencing token "));
    let next = leader_of(&second);
    assert_ne!(next, leader, "{second}");

    let (_, _, next_api) = nodes.iter().find(|n| n.0 == next).expect("listed").clone();
    let target = nodes.iter().find(|n| n.0 != leader && n.0 != next).expect("third").0.clone();
    let out = Command::new(bin).args(["transfer", "--api", &next_api, "--to", &target]).output().expect("transfer");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let third =
        expect_line(&lines, Duration::from_secs(3), "the hand-over", |l| l.contains(&format!("] {target} leads")));
    assert!(third.contains("fencing token"), "{third}");

    // SAFETY: SIGINT to our own child, as Ctrl-C would.
    unsafe { libc::kill(local.id() as i32, libc::SIGINT) };
    expect_line(&lines, Duration::from_secs(10), "the stop", |l| l.starts_with("stopped 3 sidecars"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = local.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "local did not exit");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
    for (id, pid, _) in &nodes {
        assert!(!alive(*pid), "{id} (pid {pid}) still runs");
    }
}
