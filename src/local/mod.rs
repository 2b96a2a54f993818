//! `leasehold local`: N sidecars on loopback as child processes, to try
//! leasehold on one machine. Prints each node's pid and API, then one line
//! per leadership change; Ctrl-C stops them all.
//!
//! Owns: the children it starts (ended by their pids), their temporary
//! directory, and the live display. Must not: talk to anything but loopback.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::LocalArgs;
use crate::http;

struct Sidecar {
    id: String,
    api: String,
    child: Child,
    exited: bool,
}

mod ports;

pub use ports::free_port;

pub fn run(args: &LocalArgs) -> ExitCode {
    if !(1..=9).contains(&args.nodes) {
        eprintln!("leasehold: --nodes: {} is not between 1 and 9", args.nodes);
        return ExitCode::from(2);
    }
    let dir = std::env::temp_dir().join(format!("leasehold-local-{}", std::process::id()));
    let mut nodes = match start(args, &dir) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("leasehold: local: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{} sidecars, lease {:?}; logs and state in {}", nodes.len(), args.lease_ttl, dir.display());
    for n in &nodes {
        println!("  {}  pid {:<7}  API http://{}", n.id, n.child.id(), n.api);
    }
    println!("Try: curl -i http://{}/v1/leader", nodes[0].api);
    println!("     kill -9 <the leader's pid>   (a failover)");
    println!("     leasehold transfer --api http://<the leader's API> --to <id>   (a hand-over)");
    if args.managed {
        println!("     leasehold members --api http://{}   (the group's voters, by identity)", nodes[0].api);
    }
    println!("The first leader comes about one lease after the start: every sidecar waits out a lease");
    println!("before it votes (its boot promise), with or without a state file.");
    println!("Ctrl-C stops them all.\n");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("leasehold: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(watch(&mut nodes));
    stop(&mut nodes);
    let _ = std::fs::remove_dir_all(&dir);
    ExitCode::SUCCESS
}

fn start(args: &LocalArgs, dir: &PathBuf) -> std::io::Result<Vec<Sidecar>> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe()?;
    let ids: Vec<String> = (1..=args.nodes).map(|i| format!("n{i}")).collect();
    let mut peers = Vec::new();
    for id in &ids {
        peers.push(format!("{id}=127.0.0.1:{}", free_port()?));
    }
    // A managed group reads the same entries from a file, one a line.
    let file = dir.join("peers");
    let membership = if args.managed {
        std::fs::write(&file, format!("generation 1\n{}\n", peers.join("\n")))?;
        ["--peers-file".to_string(), file.to_string_lossy().into_owned()]
    } else {
        ["--peers".to_string(), peers.join(",")]
    };
    let mut nodes = Vec::new();
    for id in ids {
        let api = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
        let child = Command::new(&exe)
            .args(["run", "--node-id", &id, "--cluster-id", "local"])
            .args(&membership)
            .args(["--listen-api", &api, "--listen-metrics", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--data-dir", &dir.join(&id).to_string_lossy()])
            .args(["--lease-ttl", &humantime::format_duration(args.lease_ttl).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        nodes.push(Sidecar { id, api, child, exited: false });
    }
    Ok(nodes)
}

/// Polls every node until Ctrl-C or SIGTERM, printing leadership changes.
async fn watch(nodes: &mut [Sidecar]) {
    let Ok(mut term) = signal(SignalKind::terminate()) else { return };
    let started = Instant::now();
    let mut last: Option<(String, u64)> = None;
    let mut leaderless_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = tokio::time::sleep(Duration::from_millis(25)) => {}
        }
        let at = started.elapsed().as_secs_f64();
        for n in nodes.iter_mut().filter(|n| !n.exited) {
            if let Ok(Some(status)) = n.child.try_wait() {
                n.exited = true;
                println!("[{at:7.3}s] {} (pid {}) exited: {status}", n.id, n.child.id());
            }
        }
        let leader = nodes.iter().filter(|n| !n.exited).find_map(|n| {
            let a = http::request(&n.api, "GET", "/v1/leader", &[], "", Duration::from_millis(300)).ok()?;
            let v: Value = serde_json::from_str(&a.body).ok()?;
            (a.status == 200).then(|| (n.id.clone(), v["fencing_token"].as_u64().unwrap_or(0)))
        });
        match (&leader, &last) {
            (Some(now), prev) if Some(now) != prev.as_ref() => {
                let gap =
                    leaderless_since.take().map(|s| format!(" after {} ms without a leader", s.elapsed().as_millis()));
                println!("[{at:7.3}s] {} leads, fencing token {}{}", now.0, now.1, gap.unwrap_or_default());
                last = leader.clone();
            }
            (None, Some(_)) if leaderless_since.is_none() => {
                leaderless_since = Some(Instant::now());
                println!("[{at:7.3}s] no leader");
            }
            _ => {}
        }
        if leader.is_none() {
            last = None;
        }
    }
}

/// SIGTERM to every child (a leader hands over), then SIGKILL after 5s.
fn stop(nodes: &mut [Sidecar]) {
    for n in nodes.iter().filter(|n| !n.exited) {
        // SAFETY: kill(2) on the pid of a child this process started.
        unsafe { libc::kill(n.child.id() as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in nodes.iter_mut() {
        while Instant::now() < deadline && matches!(n.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
    println!("stopped {} sidecars", nodes.len());
}
