//! The benchmark's phases, in order: fsync on this disk; etcd (its minimum
//! lease TTL, plain election clients, leasehold on the etcd backend, the
//! gateway's leader query, idle members); then leasehold's built-in group
//! (failover at etcd's minimum TTL, at 1s and at 200ms, hand-over by SIGTERM
//! and by step-down, the leader query against the ceiling server while
//! elections run, idle sidecars). etcd is stopped before leasehold's own
//! figures are taken, so the two never share the machine's cores.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::procs::{http, idle_cost, wrk, Electors, Etcd, Hello, Load, Sidecars};
use crate::RunArgs;

/// Connections of the leader-query load (DESIGN §8: p99 at 10 connections).
const CONNS: u32 = 10;
/// leasehold's smallest lease on loopback.
const MIN_TTL: Duration = Duration::from_millis(200);

fn progress(msg: &str) {
    eprintln!("leasehold-bench: {msg}");
}

/// Median, p90 and max of some milliseconds.
#[derive(Clone, Debug)]
pub struct Stats {
    pub trials: Vec<f64>,
}

impl Stats {
    fn pick(&self, q: f64) -> f64 {
        let mut v = self.trials.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    }
    fn p50(&self) -> f64 {
        self.pick(0.5)
    }
    fn p90(&self) -> f64 {
        self.pick(0.9)
    }
    fn max(&self) -> f64 {
        self.pick(1.0)
    }
    fn json(&self) -> Value {
        let r = |x: f64| (x * 10.0).round() / 10.0;
        json!({"p50": r(self.p50()), "p90": r(self.p90()), "max": r(self.max()), "n": self.trials.len(),
               "trials": self.trials.iter().map(|&x| r(x)).collect::<Vec<_>>()})
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: &RunArgs) -> Result<(), String> {
    let started = Instant::now();
    let bench = std::env::current_exe().map_err(|e| e.to_string())?;
    let leasehold = args.leasehold.clone().unwrap_or_else(|| bench.with_file_name("leasehold"));
    if !leasehold.exists() {
        return Err(format!("{} not found: cargo build --release --features etcd", leasehold.display()));
    }
    let scratch = Scratch(std::env::temp_dir().join(format!("leasehold-bench-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(|e| e.to_string())?;
    let dir = scratch.0.as_path();
    let trials = args.trials();
    let mut out = Map::new();
    out.insert("trials_per_figure".into(), json!(trials));
    out.insert("quick".into(), json!(args.quick));

    progress("fsync on this disk");
    let fsync_us = fsync_median_us(dir)?;
    out.insert("fsync_us_p50".into(), json!(fsync_us));

    // --- etcd -------------------------------------------------------------
    let empty = || Stats { trials: Vec::new() };
    let (mut etcd_failover, mut etcd_resign, mut on_etcd_failover, mut on_etcd_sigterm) =
        (empty(), empty(), empty(), empty());
    let (mut etcd_idle, mut on_etcd_idle) = (Vec::new(), Vec::new());
    let mut etcd_query = Load { rps: f64::NAN, p50: 0, p99: 0, p999: 0 };
    let ttl = if args.skip_etcd {
        Duration::from_secs(2)
    } else {
        progress("starting a 3-member etcd on loopback (etcd's default timing)");
        let etcd = Etcd::start(&args.etcd, dir, 3)?;
        let endpoints = etcd.endpoints();
        let min_etcd_ttl = etcd_min_ttl_secs(&endpoints)?;
        let ttl = Duration::from_secs(min_etcd_ttl);
        progress(&format!("etcd's minimum lease TTL is {min_etcd_ttl}s: the common TTL"));

        progress(&format!("plain etcd election clients: {trials} failovers (kill -9) and {trials} resigns"));
        (etcd_failover, etcd_resign) = plain_etcd(&bench, &endpoints, min_etcd_ttl, trials)?;

        progress(&format!("leasehold on etcd: {trials} failovers, {trials} SIGTERM hand-overs"));
        let mut on_etcd = Sidecars::etcd(&leasehold, &dir.join("on-etcd"), 3, ttl, &endpoints, "bench-sidecars");
        on_etcd_failover = trials_of(&mut on_etcd, trials, Event::Kill9)?;
        on_etcd_sigterm = trials_of(&mut on_etcd, trials, Event::Sigterm)?;
        progress(&format!("idle: etcd members and leasehold on etcd, {}s", args.idle().as_secs()));
        let mut pids = etcd.pids();
        pids.extend(on_etcd.pids());
        let idle = idle_cost(&pids, args.idle());
        let (e, o) = idle.split_at(etcd.pids().len().min(idle.len()));
        (etcd_idle, on_etcd_idle) = (e.to_vec(), o.to_vec());

        progress(&format!("etcd's leader query through its gateway: {}s of load", args.load().as_secs()));
        let electors = Electors::start(&bench, &endpoints, "bench-query", min_etcd_ttl, 1);
        let name_b64 = base64("bench-query");
        etcd_query = {
            // Wait for the single client to lead, so that the query has an answer.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !http(
                &etcd.clients[0],
                "POST",
                "/v3/election/leader",
                &format!("{{\"name\":\"{name_b64}\"}}"),
                Duration::from_secs(1),
            )
            .is_some_and(|(s, b)| s == 200 && b.contains("\"kv\""))
            {
                if Instant::now() > deadline {
                    return Err("etcd's election has no leader for the query".into());
                }
                thread::sleep(Duration::from_millis(20));
            }
            let url = format!("http://{}/v3/election/leader", etcd.clients[0]);
            wrk(&args.wrk, dir, &url, CONNS, args.load(), Some(&format!("{{\"name\":\"{name_b64}\"}}")))?
        };
        drop(electors);
        drop(on_etcd);
        drop(etcd);
        ttl
    };
    out.insert("lease_ttl_ms".into(), json!(ttl.as_millis() as u64));

    // --- leasehold's built-in group -------------------------------------------
    progress(&format!("leasehold (3 sidecars), lease {}ms: {trials} failovers", ttl.as_millis()));
    let mut group = Sidecars::raft(&leasehold, &dir.join("raft"), 3, ttl);
    let failover = trials_of(&mut group, trials, Event::Kill9)?;
    progress(&format!("leasehold: {trials} SIGTERM hand-overs, {trials} step-downs"));
    let sigterm = trials_of(&mut group, trials, Event::Sigterm)?;
    let step_down = trials_of(&mut group, trials, Event::StepDown)?;
    progress(&format!("idle: leasehold sidecars at default settings, {}s", args.idle().as_secs()));
    drop(group);
    let idle_group = Sidecars::raft(&leasehold, &dir.join("idle"), 3, Duration::from_secs(2));
    idle_group.leader(Duration::from_secs(10)).ok_or("no leader in the idle group")?;
    thread::sleep(Duration::from_secs(1));
    let leasehold_idle = idle_cost(&idle_group.pids(), args.idle());

    progress(&format!(
        "leader query: {}s of load on /v1/leader while step-downs run, then the ceiling",
        args.load().as_secs()
    ));
    let (api, elections) = query_under_elections(&idle_group, args, dir)?;
    drop(idle_group);
    let hello = Hello::start(&bench)?;
    let ceiling = wrk(&args.wrk, dir, &format!("http://{}/v1/leader", hello.addr), CONNS, args.load(), None)?;
    drop(hello);

    progress(&format!("leasehold, lease 1000ms: {trials} failovers"));
    let mut g1 = Sidecars::raft(&leasehold, &dir.join("raft-1s"), 3, Duration::from_secs(1));
    let failover_1s = trials_of(&mut g1, trials, Event::Kill9)?;
    drop(g1);
    progress(&format!("leasehold, lease {}ms: {trials} failovers", MIN_TTL.as_millis()));
    let mut g2 = Sidecars::raft(&leasehold, &dir.join("raft-min"), 3, MIN_TTL);
    let failover_min = trials_of(&mut g2, trials, Event::Kill9)?;
    drop(g2);

    // --- the figures ---------------------------------------------------------
    let rss_kib = median_u64(leasehold_idle.iter().map(|x| x.0).collect());
    let cpu_pct = median_f64(leasehold_idle.iter().map(|x| x.1).collect());
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let etcd_bin = which(&args.etcd);
    out.insert("failover_ms_p50".into(), json!(r1(failover.p50())));
    out.insert("failover_etcd_ms_p50".into(), json!(r1(etcd_failover.p50())));
    out.insert("failover_on_etcd_ms_p50".into(), json!(r1(on_etcd_failover.p50())));
    out.insert("handover_ms_p50".into(), json!(r2(sigterm.p50())));
    out.insert("stepdown_ms_p50".into(), json!(r2(step_down.p50())));
    out.insert("handover_etcd_ms_p50".into(), json!(r2(etcd_resign.p50())));
    out.insert("handover_on_etcd_ms_p50".into(), json!(r2(on_etcd_sigterm.p50())));
    out.insert("failover_1s_ms_p50".into(), json!(r1(failover_1s.p50())));
    out.insert("failover_min_ttl_ms_p50".into(), json!(r1(failover_min.p50())));
    out.insert("min_ttl_ms".into(), json!(MIN_TTL.as_millis() as u64));
    out.insert("api_rps".into(), json!(api.rps.round()));
    out.insert("api_p50_us".into(), json!(api.p50));
    out.insert("api_p99_us".into(), json!(api.p99));
    out.insert("api_p999_us".into(), json!(api.p999));
    out.insert("api_elections_during_load".into(), json!(elections));
    out.insert("api_ceiling_rps".into(), json!(ceiling.rps.round()));
    out.insert("api_ceiling_p99_us".into(), json!(ceiling.p99));
    out.insert("etcd_query_rps".into(), json!(etcd_query.rps.round()));
    out.insert("etcd_query_p50_us".into(), json!(etcd_query.p50));
    out.insert("etcd_query_p99_us".into(), json!(etcd_query.p99));
    out.insert("etcd_query_p999_us".into(), json!(etcd_query.p999));
    out.insert("rss_kib".into(), json!(rss_kib));
    out.insert("idle_cpu_pct".into(), json!(r2(cpu_pct)));
    out.insert("etcd_rss_kib".into(), json!(median_u64(etcd_idle.iter().map(|x| x.0).collect())));
    out.insert("etcd_idle_cpu_pct".into(), json!(r2(median_f64(etcd_idle.iter().map(|x| x.1).collect()))));
    out.insert("on_etcd_rss_kib".into(), json!(median_u64(on_etcd_idle.iter().map(|x| x.0).collect())));
    out.insert("on_etcd_idle_cpu_pct".into(), json!(r2(median_f64(on_etcd_idle.iter().map(|x| x.1).collect()))));
    out.insert("binary_bytes".into(), json!(size(&leasehold)));
    out.insert("binary_stripped_bytes".into(), json!(stripped_size(&leasehold, dir)));
    out.insert("etcd_binary_bytes".into(), json!(etcd_bin.as_deref().map_or(0, size)));
    out.insert(
        "distributions_ms".into(),
        json!({
            "failover": failover.json(), "failover_etcd": etcd_failover.json(), "failover_on_etcd": on_etcd_failover.json(),
            "failover_1s": failover_1s.json(), "failover_min_ttl": failover_min.json(),
            "handover_sigterm": sigterm.json(), "handover_stepdown": step_down.json(),
            "handover_etcd_resign": etcd_resign.json(), "handover_on_etcd_sigterm": on_etcd_sigterm.json(),
        }),
    );
    out.insert("seconds".into(), json!(started.elapsed().as_secs()));

    print_table(&out);
    let line = Value::Object(out).to_string();
    if let Some(d) = &args.out {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        std::fs::write(d.join("bench.json"), format!("{line}\n")).map_err(|e| e.to_string())?;
    }
    if args.json {
        println!("{line}");
    }
    Ok(())
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The binary's size without symbols (as the Dockerfile ships it), if
/// `strip` is at hand; 0 otherwise.
fn stripped_size(bin: &Path, dir: &Path) -> u64 {
    let copy = dir.join("stripped");
    let ok = std::process::Command::new("strip").arg("-o").arg(&copy).arg(bin).status().is_ok_and(|s| s.success());
    if ok {
        std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0)
    } else {
        0
    }
}

fn which(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return Some(p.to_path_buf());
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(p)).find(|c| c.exists())
}

/// Median time of write + fsync of a small file, in µs (the floor of a
/// hand-over is two of these on two nodes, plus two round trips).
fn fsync_median_us(dir: &Path) -> Result<u64, String> {
    use std::io::{Seek, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let mut v = Vec::new();
    for _ in 0..200 {
        f.seek(std::io::SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        f.write_all(&[7u8; 64]).map_err(|e| e.to_string())?;
        let t = Instant::now();
        f.sync_all().map_err(|e| e.to_string())?;
        v.push(t.elapsed().as_micros() as u64);
    }
    Ok(median_u64(v))
}

/// etcd raises a lease below its minimum: ask for 1s and read what it gave.
fn etcd_min_ttl_secs(endpoints: &str) -> Result<u64, String> {
    let first = endpoints.split(',').next().unwrap_or("").trim_start_matches("http://").to_string();
    let (code, body) = http(&first, "POST", "/v3/lease/grant", r#"{"TTL":1}"#, Duration::from_secs(5))
        .ok_or("etcd did not answer a lease grant")?;
    if code != 200 {
        return Err(format!("etcd lease grant: {code} {body}"));
    }
    let ttl = body
        .split("\"TTL\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| format!("etcd lease grant: {body}"))?;
    Ok(ttl.max(1))
}

fn base64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What is done to the leader in a trial.
#[derive(Clone, Copy)]
enum Event {
    /// kill -9 (an unplanned failover); the node is restarted after.
    Kill9,
    /// SIGTERM (a planned hand-over); the node is restarted after.
    Sigterm,
    /// POST /v1/step-down (a planned hand-over).
    StepDown,
}

/// `trials` times: does `event` to the leader and times until another
/// sidecar's API answers 200 (it holds the lease).
fn trials_of(g: &mut Sidecars, trials: usize, event: Event) -> Result<Stats, String> {
    let limit = g.ttl * 5 + Duration::from_secs(5);
    let mut v = Vec::new();
    for _ in 0..trials {
        let Some((leader, token)) = g.leader(limit) else {
            return Err(format!("no leader:{}", g.describe()));
        };
        let succ = g.watch_for_successor(leader, token, limit);
        let t0 = Instant::now();
        match event {
            Event::Kill9 => g.kill9(leader),
            Event::Sigterm => {
                crate::procs::signal(g.nodes[leader].child.as_ref().ok_or("leader not running")?, libc::SIGTERM)
            }
            Event::StepDown => {
                let api = g.nodes[leader].api.clone();
                thread::spawn(move || http(&api, "POST", "/v1/step-down", "", Duration::from_secs(5)));
            }
        }
        let Some((_, t1, _)) = succ.wait() else {
            return Err(format!("no successor of node {leader} (token {token}):{}", g.describe()));
        };
        v.push(ms(t1 - t0));
        match event {
            Event::Kill9 => g.restart_and_settle(leader)?,
            Event::Sigterm => {
                g.sigterm(leader);
                g.restart_and_settle(leader)?;
            }
            // The old leader may not lead again in that term; let the
            // group settle before the next one.
            Event::StepDown => thread::sleep(g.ttl + g.ttl / 5),
        }
    }
    Ok(Stats { trials: v })
}

/// Plain etcd clients: kill -9 of the holder and SIGTERM (resign) of the
/// holder; time until the next client's campaign returns.
fn plain_etcd(bench: &Path, endpoints: &str, ttl_secs: u64, trials: usize) -> Result<(Stats, Stats), String> {
    let limit = Duration::from_secs(ttl_secs * 5 + 5);
    let mut e = Electors::start(bench, endpoints, "bench-plain", ttl_secs, 3);
    e.next_elected(limit).ok_or("no plain etcd client was elected")?;
    // One trial: act on the holder, time until the next client leads.
    let mut measure = |act: fn(&mut Electors, usize), what: &str| -> Result<Vec<f64>, String> {
        let mut v = Vec::new();
        for _ in 0..trials {
            let holder = e.holder.ok_or("no holder")?;
            let t0 = Instant::now();
            act(&mut e, holder);
            let (_, t1) = e.next_elected(limit).ok_or(format!("no plain etcd client took over after {what}"))?;
            v.push(ms(t1 - t0));
            e.reap_and_restart(holder);
        }
        Ok(v)
    };
    let failover = measure(Electors::kill9, "a kill -9")?;
    let resign = measure(Electors::sigterm, "a resign")?;
    Ok((Stats { trials: failover }, Stats { trials: resign }))
}

/// `wrk` on one sidecar's /v1/leader while a thread asks the leader to
/// step down every 500ms. Returns the wrk figures and the elections seen.
fn query_under_elections(g: &Sidecars, args: &RunArgs, dir: &Path) -> Result<(Load, u64), String> {
    let apis: Vec<String> = g.nodes.iter().map(|n| n.api.clone()).collect();
    let target = apis[0].clone();
    let load = args.load();
    let stepper = thread::spawn(move || {
        let end = Instant::now() + load;
        let mut done = 0u64;
        while Instant::now() < end {
            for api in &apis {
                if let Some((200, _)) = http(api, "POST", "/v1/step-down", "", Duration::from_secs(1)) {
                    done += 1;
                }
            }
            thread::sleep(Duration::from_millis(500));
        }
        done
    });
    let r = wrk(&args.wrk, dir, &format!("http://{target}/v1/leader"), CONNS, load, None);
    let elections = stepper.join().unwrap_or(0);
    Ok((r?, elections))
}

fn print_table(o: &Map<String, Value>) {
    let f = |k: &str| o.get(k).cloned().unwrap_or(Value::Null);
    let d = &o["distributions_ms"];
    let row = |name: &str, key: &str| {
        let s = &d[key];
        println!("| {name} | {} | {} | {} | {} |", s["p50"], s["p90"], s["max"], s["n"]);
    };
    println!("fsync (write + fsync, 64 bytes): median {} µs", f("fsync_us_p50"));
    println!("common lease TTL (etcd's minimum): {} ms", f("lease_ttl_ms"));
    println!();
    println!("| figure (ms) | median | p90 | max | trials |");
    println!("|---|---|---|---|---|");
    row("failover, leasehold (kill -9)", "failover");
    row("failover, plain etcd election (kill -9)", "failover_etcd");
    row("failover, leasehold on etcd (kill -9)", "failover_on_etcd");
    row("failover, leasehold at 1s", "failover_1s");
    row(&format!("failover, leasehold at {}ms", f("min_ttl_ms")), "failover_min_ttl");
    row("hand-over, leasehold (SIGTERM)", "handover_sigterm");
    row("hand-over, leasehold (POST /v1/step-down)", "handover_stepdown");
    row("hand-over, plain etcd (resign)", "handover_etcd_resign");
    row("hand-over, leasehold on etcd (SIGTERM)", "handover_on_etcd_sigterm");
    println!();
    println!("| leader query, {CONNS} connections | requests/s | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|");
    println!(
        "| leasehold GET /v1/leader ({} step-downs during the load) | {} | {} | {} | {} |",
        f("api_elections_during_load"),
        f("api_rps"),
        f("api_p50_us"),
        f("api_p99_us"),
        f("api_p999_us")
    );
    println!("| minimal hyper server (ceiling) | {} | | {} | |", f("api_ceiling_rps"), f("api_ceiling_p99_us"));
    println!(
        "| etcd POST /v3/election/leader (gateway) | {} | {} | {} | {} |",
        f("etcd_query_rps"),
        f("etcd_query_p50_us"),
        f("etcd_query_p99_us"),
        f("etcd_query_p999_us")
    );
    println!();
    println!("| idle cost, per process | RSS KiB | CPU % of a core |");
    println!("|---|---|---|");
    println!("| leasehold sidecar (built-in group, defaults) | {} | {} |", f("rss_kib"), f("idle_cpu_pct"));
    println!("| leasehold sidecar on etcd | {} | {} |", f("on_etcd_rss_kib"), f("on_etcd_idle_cpu_pct"));
    println!("| etcd member | {} | {} |", f("etcd_rss_kib"), f("etcd_idle_cpu_pct"));
    println!();
    println!(
        "binary: leasehold {} bytes ({} stripped), etcd {} bytes; run took {} s",
        f("binary_bytes"),
        f("binary_stripped_bytes"),
        f("etcd_binary_bytes"),
        f("seconds")
    );
}
