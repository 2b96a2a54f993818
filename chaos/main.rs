//! `leasehold-chaos`: the fault harness. It runs 3 or 5 real sidecars on
//! loopback, each dialing its peers through a fault-injecting proxy, with an
//! application simulator beside each that writes to a fencing store with
//! the token its sidecar gave it. It injects one kind of fault round after
//! round and checks, over the whole run:
//!
//! - the observer check of DESIGN §7 (no two provable leases overlap, no
//!   token goes back);
//! - the fencing store's log (accepted tokens never go down; each token is
//!   used by one node only; stale writes were refused, and how many);
//! - no panic in any node's log and no node exiting by itself;
//! - a leader back within the bound after every heal.
//!
//! Bounded in rounds and time; a seed reproduces the fault schedule.
//! `--control` breaks one thing on purpose so that a check can be shown to
//! bite (docs/reliability.md).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

// Certificates for --peer-tls, made with the openssl command (shared with
// the TLS tests).
#[path = "../tests/common/certs.rs"]
mod certs;
mod cluster;
mod proxy;
mod scenario;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use leasehold::core::rng::SplitMix64;
use leasehold::observe;

use cluster::{Apps, Cluster};
use scenario::{Ctx, Kind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Control {
    None,
    /// The store accepts every write: the fencing order check must fire.
    UnfencedStore,
    /// Each application asks its neighbour's sidecar: the one-node-per-
    /// token check must fire.
    CrossWiredApp,
    /// A node is sent SIGABRT behind the harness's back: the robustness
    /// check must fire.
    ForeignAbort,
    /// A follower panics in the middle of a state write (a failpoint of
    /// debug builds): the no-panic check must fire.
    PanicAtWrite,
    /// The last fault is never healed (a majority stays down): the
    /// liveness check must fire.
    NoHeal,
}

/// Drives real leasehold sidecars through faults and checks what matters.
#[derive(Parser, Debug)]
#[command(name = "leasehold-chaos", version)]
struct Opts {
    /// Scenarios to run, comma-separated, or `all`:
    /// kill, pause, partition, asymmetric, bridge, network, clock-skew,
    /// clock-skew-beyond, disk-full, disk-ro, slow-fsync, rolling-restart.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    scenario: Vec<String>,
    /// Sidecars in the group (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Rounds per scenario.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seed of the fault schedule (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// The drift bound the sidecars run with (their default).
    #[arg(long, default_value_t = 0.01)]
    rho: f64,
    /// Stops starting rounds after this long, per scenario.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    time_limit: Duration,
    /// The leasehold binary (default: beside this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where runs keep data dirs and logs (default: a temporary directory,
    /// kept only when a check fires).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "none")]
    control: Control,
    /// Peers talk mutual TLS; the links then pass bytes unparsed (only
    /// blackholes, delays and cuts apply).
    #[arg(long)]
    peer_tls: bool,
    /// Print one JSON object per scenario, on stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    let mut kinds = Vec::new();
    for s in &opts.scenario {
        if s == "all" {
            kinds.extend(scenario::ALL);
        } else if let Some(k) = Kind::parse(s) {
            kinds.push(k);
        } else {
            eprintln!("leasehold-chaos: unknown scenario {s:?}");
            return ExitCode::from(2);
        }
    }
    if opts.nodes != 3 && opts.nodes != 5 {
        eprintln!("leasehold-chaos: --nodes must be 3 or 5");
        return ExitCode::from(2);
    }
    let bin = opts.bin.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| Some(p.parent()?.join("leasehold"))).unwrap_or_default()
    });
    if !bin.is_file() {
        eprintln!(
            "leasehold-chaos: no leasehold binary at {} (build it: cargo build --bin leasehold, or pass --bin)",
            bin.display()
        );
        return ExitCode::from(2);
    }
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let mut failed = false;
    for kind in kinds {
        let run_seed = seed ^ fnv(kind.name());
        let root = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = root.join(format!("leasehold-chaos-{}-{}-{}", std::process::id(), kind.name(), opts.nodes));
        let report = match run(&opts, kind, &bin, &dir, seed, run_seed) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("leasehold-chaos: {}: {e}", kind.name());
                failed = true;
                continue;
            }
        };
        let findings = report["findings"].as_u64().unwrap_or(0);
        // Beyond the model only the lease may break: the observer's
        // findings are reported, every other check still gates.
        let gated =
            if kind.in_model() { findings } else { findings - report["observer_violations"].as_u64().unwrap_or(0) };
        if gated > 0 {
            failed = true;
        }
        if findings == 0 && opts.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        if opts.json {
            println!("{report}");
        } else {
            print_human(&report);
        }
        eprintln!(
            "reproduce: leasehold-chaos --scenario {} --nodes {} --rounds {} --seed {seed} --lease-ttl {:?}{}{}",
            kind.name(),
            opts.nodes,
            opts.rounds,
            opts.lease_ttl,
            if opts.peer_tls { " --peer-tls" } else { "" },
            if findings > 0 { format!("  (logs: {})", dir.display()) } else { String::new() }
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// One scenario, start to end; a JSON report.
/// `seed` is the one given (it reproduces the run with `--scenario`);
/// `run_seed`, derived from it and the scenario's name, drives the run.
fn run(opts: &Opts, kind: Kind, bin: &Path, dir: &Path, seed: u64, run_seed: u64) -> Result<serde_json::Value, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ttl = opts.lease_ttl;
    // Election after a promise, a restart's quarantine, process start.
    let bound = ttl * 3 + Duration::from_secs(1) + if kind == Kind::SlowFsync { ttl * 3 } else { Duration::ZERO };
    let mut rng = SplitMix64::new(run_seed);
    let mut c = Cluster::new(bin, dir, opts.nodes, ttl, rng.next_u64(), opts.peer_tls)?;
    let target = rng.below(opts.nodes as u64) as usize;
    scenario::prepare(kind, &mut c, target, opts.rho)?;
    c.start_all()?;
    let apis: Vec<String> = c.nodes.iter().map(|n| n.api.clone()).collect();
    let store = store::Store::start(opts.control != Control::UnfencedStore).map_err(|e| format!("store: {e}"))?;
    let apps = Apps::start(apis.clone(), store.addr, ttl, rng.next_u64(), opts.control == Control::CrossWiredApp);
    let observer = observe::Observer::start(apis, Duration::from_millis(5), opts.time_limit + Duration::from_secs(120));
    let started = Instant::now();
    let mut ctx =
        Ctx { c: &mut c, rng, bound, handovers: Vec::new(), failovers: Vec::new(), liveness: Vec::new(), target };
    if ctx.c.wait_leader(0, bound).is_none() {
        ctx.liveness.push(format!("no first leader within {bound:?}"));
    }
    for i in 0..opts.nodes {
        if !ctx.c.wait_joined(i, bound) {
            ctx.liveness.push(format!("n{} did not join within {bound:?}", i + 1));
        }
    }
    let mut rounds = 0;
    while rounds < opts.rounds && started.elapsed() < opts.time_limit {
        let panicking = (rounds == 1 && opts.control == Control::PanicAtWrite).then(|| {
            let leader = ctx.c.leader().map_or(0, |(l, _)| l);
            let victim = (leader + 1) % opts.nodes;
            let _ = std::fs::write(&ctx.c.nodes[victim].failpoint, "panic");
            victim
        });
        ctx.round(kind, rounds);
        if let Some(victim) = panicking {
            let _ = std::fs::remove_file(&ctx.c.nodes[victim].failpoint);
        }
        rounds += 1;
        if rounds == 1 && opts.control == Control::ForeignAbort {
            let victim = ctx.rng.below(opts.nodes as u64) as usize;
            ctx.c.signal(victim, libc::SIGABRT);
            let deadline = Instant::now() + Duration::from_secs(2);
            while ctx.c.unexpected_exits.is_empty() && Instant::now() < deadline {
                ctx.c.reap();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    if opts.control == Control::NoHeal {
        for i in 0..opts.nodes.div_ceil(2) {
            ctx.c.kill(i);
        }
    }
    // After the last heal: a leader within the bound.
    let last = ctx.c.wait_leader(0, bound);
    if last.is_none() {
        ctx.liveness.push(format!("no leader within {bound:?} after the last fault"));
    }
    let Ctx { handovers, failovers, liveness, .. } = ctx;
    apps.stop();
    let proofs = observer.stop();
    c.reap();
    let obs = observe::check(&proofs, &handovers, opts.rho);
    let fencing = store::check(&store.log());
    let panics = c.panics();
    let exits = c.unexpected_exits.clone();
    let counters = c.links.values().fold([0u64; 5], |mut acc, l| {
        use std::sync::atomic::Ordering::Relaxed;
        let k = &l.counters;
        for (a, v) in acc.iter_mut().zip([&k.frames, &k.dropped, &k.duplicated, &k.reordered, &k.cut]) {
            *a += v.load(Relaxed);
        }
        acc
    });
    let findings = obs.count
        + fencing.out_of_order.len()
        + fencing.shared_tokens.len()
        + panics.len()
        + exits.len()
        + liveness.len();
    let mut described: Vec<String> = Vec::new();
    described.extend(obs.described.iter().take(5).cloned());
    described.extend(fencing.out_of_order.iter().take(5).cloned());
    described.extend(fencing.shared_tokens.iter().take(5).cloned());
    described.extend(panics.iter().take(5).cloned());
    described.extend(exits.iter().cloned());
    described.extend(liveness.iter().cloned());
    Ok(json!({
        "scenario": kind.name(),
        "fault": kind.describe(),
        "in_model": kind.in_model(),
        "nodes": opts.nodes,
        "seed": seed,
        "rounds": rounds,
        "lease_ttl_ms": ttl.as_millis() as u64,
        "bound_ms": bound.as_millis() as u64,
        "control": format!("{:?}", opts.control),
        "peer_tls": opts.peer_tls,
        "target": c.nodes[target].id,
        "target_clock_rate": c.nodes[target].rate,
        "findings": findings,
        "observer_violations": obs.count,
        "fencing_out_of_order": fencing.out_of_order.len(),
        "fencing_shared_tokens": fencing.shared_tokens.len(),
        "panics": panics.len(),
        "unexpected_exits": exits.len(),
        "liveness": liveness.len(),
        "proofs": proofs.len(),
        "accepted_writes": fencing.accepted,
        "stale_writes_rejected": fencing.stale_rejected,
        "failovers": failovers.len(),
        "worst_failover_ms": failovers.iter().max().map(|d| d.as_millis() as u64),
        "median_failover_ms": median(&failovers).map(|d| d.as_millis() as u64),
        "frames": {"seen": counters[0], "dropped": counters[1], "duplicated": counters[2], "reordered": counters[3], "cut": counters[4]},
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "described": described,
    }))
}

fn median(ds: &[Duration]) -> Option<Duration> {
    let mut v = ds.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

fn print_human(r: &serde_json::Value) {
    println!(
        "{:<18} nodes {} rounds {:>3}  findings {:>3} (observer {}, fencing {}+{}, panics {}, exits {}, liveness {})  \
         worst failover {} ms  stale writes rejected {}{}",
        r["scenario"].as_str().unwrap_or(""),
        r["nodes"],
        r["rounds"],
        r["findings"],
        r["observer_violations"],
        r["fencing_out_of_order"],
        r["fencing_shared_tokens"],
        r["panics"],
        r["unexpected_exits"],
        r["liveness"],
        r["worst_failover_ms"],
        r["stale_writes_rejected"],
        if r["in_model"] == false { "  [beyond the model: reported, not gated]" } else { "" },
    );
    for d in r["described"].as_array().into_iter().flatten() {
        println!("    {}", d.as_str().unwrap_or(""));
    }
}
