//! The local API against its contract, docs/openapi.yaml: the document
//! validates as OpenAPI 3.1, and schemathesis (with tests/api/contract_hooks.py
//! and tests/api/schemathesis.toml) runs every operation, mutating ones
//! included, against live sidecars:
//!
//! - a group of three (static `--peers`): n1 with `--api-token-file`, sent
//!   the bearer token, and n2 without one, while schemathesis's step-downs
//!   and transfers move the lease between them;
//! - a single node of a managed group with `--position-from-api`, whose
//!   status shows its membership and position;
//! - the metrics listener of each.
//!
//! Every answer must conform to the document (status, headers, content type,
//! schema), no 5xx may come but the documented ones, and no answer may come
//! later than its wait. The observer check of DESIGN §7 runs throughout,
//! told of each hand-over schemathesis asked for. schemathesis's seed is
//! fixed (`LEASEHOLD_CONTRACT_SEED` overrides it), so a failure replays.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::group::Group;
use common::{get, wait_for_one_leader};

const TTL: Duration = Duration::from_secs(1);
/// One group at a time: the waits are checked to the second.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv scripts/api-tools.sh made (the test command exports it).
fn python() -> PathBuf {
    std::env::var_os("LEASEHOLD_API_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let out = Command::new("timeout")
            .args(["--signal=KILL", "900", "bash"])
            .arg(repo().join("scripts/api-tools.sh"))
            .output()
            .expect("scripts/api-tools.sh");
        assert!(out.status.success(), "scripts/api-tools.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().expect("the venv's python").trim())
    })
}

/// Runs schemathesis against `url` with `extra` arguments; panics with its
/// report unless every check passed.
fn schemathesis(work: &Path, url: &str, extra: &[&str], handovers: &Path) {
    let seed = std::env::var("LEASEHOLD_CONTRACT_SEED").unwrap_or_else(|_| "20261205".into());
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["--signal=KILL", "600"])
        .arg(python())
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(repo().join("tests/api/schemathesis.toml"))
        .arg("run")
        .arg(repo().join("docs/openapi.yaml"))
        .args(["--url", url, "--seed", &seed, "--generation-database", "none", "--no-color"])
        .args(extra)
        .current_dir(work)
        .env("PYTHONPATH", repo().join("tests/api"))
        .env("SCHEMATHESIS_HOOKS", "contract_hooks")
        .env("LEASEHOLD_HANDOVER_LOG", handovers)
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = report.lines().filter(|l| l.contains("generated") || l.contains("passed")).collect();
    eprintln!("schemathesis {url} {extra:?}: {} in {:?}", summary.join(" "), started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis against {url} failed (seed {seed}):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hand-overs contract_hooks.py logged (`URL START END`, CLOCK_MONOTONIC
/// ns), as the observer takes them: node index, asked, done.
fn handovers(log: &Path, apis: &[String]) -> Vec<(usize, Instant, Instant)> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) fills in the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let (now, now_ns) = (Instant::now(), ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
    let at = |ns: u64| now - Duration::from_nanos(now_ns.saturating_sub(ns));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let node = apis.iter().position(|a| f[0] == format!("http://{a}")).expect("a node's URL");
            (node, at(f[1].parse().expect("ns")), at(f[2].parse().expect("ns")))
        })
        .collect()
}

#[test]
fn the_contract_validates_as_openapi_3_1() {
    let out = Command::new(python())
        .args(["-m", "openapi_spec_validator"])
        .arg(repo().join("docs/openapi.yaml"))
        .output()
        .expect("openapi-spec-validator");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A scratch folder of this test process, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("leasehold-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_group_of_three_answers_as_its_contract_says() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let work = Scratch::new("api-contract-work");
    let token_file = Group::dir_for("api-contract").join("api-token");
    let mut g = Group::start("api-contract", 3, TTL, |i, mut a| {
        if i == 0 {
            std::fs::write(&token_file, "contract-s3cret\n").expect("token file");
            a.extend(["--api-token-file".to_string(), token_file.to_string_lossy().into_owned()]);
        }
        a
    });
    g.make_leader(0, Some("contract-s3cret"));
    let log = work.0.join("handovers");
    let n1 = format!("http://{}", g.apis[0]);
    let n2 = format!("http://{}", g.apis[1]);
    schemathesis(
        &work.0,
        &n1,
        &["--exclude-path", "/metrics", "--header", "Authorization: Bearer contract-s3cret"],
        &log,
    );
    schemathesis(&work.0, &n2, &["--exclude-path", "/metrics"], &log);
    for m in &g.metrics {
        let url = format!("http://{m}");
        schemathesis(&work.0, &url, &["--include-path-regex", "^/(metrics|healthz|readyz)$"], &log);
    }
    let planned = handovers(&log, &g.apis);
    eprintln!("{} hand-overs accepted during the runs", planned.len());
    g.observer.as_mut().expect("observer").handovers.extend(planned);
    // Still one group: a leader, known to all three (within 10 s).
    let (leader, _) = g.leader(Duration::from_secs(10), None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let knows = |api: &String| {
        get(api, "/v1/leader").is_some_and(|(_, b)| b.contains(&format!("\"leader_id\":\"n{}\"", leader + 1)))
    };
    while !g.apis.iter().all(knows) {
        assert!(Instant::now() < deadline, "not every node names n{} as leader\n{}", leader + 1, g.describe());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(g.check() > 0);
}

#[test]
fn a_managed_node_with_positions_answers_as_its_contract_says() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let work = Scratch::new("api-contract-single-work");
    let peers_file = work.0.join("peers");
    let mut g = Group::start("api-contract-single", 1, TTL, |_, a| {
        let mut args = Vec::new();
        let mut it = a.into_iter();
        while let Some(arg) = it.next() {
            if arg == "--peers" {
                let peers = it.next().expect("--peers value");
                std::fs::write(&peers_file, format!("{peers}\n")).expect("peers file");
                args.extend(["--peers-file".to_string(), peers_file.to_string_lossy().into_owned()]);
            } else {
                args.push(arg);
            }
        }
        args.push("--position-from-api".to_string());
        args
    });
    // Its application reports a position; the node then leads.
    let deadline = Instant::now() + Duration::from_secs(15);
    let apis = [Some(g.apis[0].as_str())];
    while wait_for_one_leader(&apis, Duration::from_millis(200), None).is_none() {
        let put = leasehold::http::request(&g.apis[0], "PUT", "/v1/position", &[], r#"{"position":"0/16B3748"}"#, TTL);
        assert!(Instant::now() < deadline, "the single node did not lead within 15 s: {put:?}\n{}", g.describe());
    }
    let (_, status) = get(&g.apis[0], "/v1/status").expect("status");
    assert!(status.contains("\"membership\":{") && status.contains("\"position\":{"), "{status}");
    let log = work.0.join("handovers");
    schemathesis(&work.0, &format!("http://{}", g.apis[0]), &["--exclude-path", "/metrics"], &log);
    schemathesis(
        &work.0,
        &format!("http://{}", g.metrics[0]),
        &["--include-path-regex", "^/(metrics|healthz|readyz)$"],
        &log,
    );
    let planned = handovers(&log, &g.apis);
    g.observer.as_mut().expect("observer").handovers.extend(planned);
    g.check();
}
