//! The benchmark program runs end to end (one trial a figure, one-second
//! loads) against real etcd members, sidecars and wrk, and its JSON carries
//! every figure BENCHMARKS.md reports. It asserts no timing: performance is
//! for BENCHMARKS.md, not for tests on a noisy machine.
#![cfg(feature = "etcd")]
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_benchmark_runs_end_to_end_and_reports_every_figure() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold-bench"))
        .args(["--quick", "--trials", "1", "--load-seconds", "1", "--json"])
        .args(["--leasehold", env!("CARGO_BIN_EXE_leasehold")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that the watchdog can end it together
        // with every process it started.
        .process_group(0)
        .spawn()
        .expect("run leasehold-bench");
    // Bounded: one trial a figure takes well under a minute; after five,
    // kill the group this test created (the program and its children).
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(300)).is_err() {
            // SAFETY: kill(2) on the process group of the child this test
            // spawned as its leader, not yet reaped (the main thread waits).
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
    });
    let out = {
        let mut stdout = String::new();
        let mut stderr = String::new();
        let mut o = child.stdout.take().expect("stdout");
        let mut e = child.stderr.take().expect("stderr");
        let err_reader = std::thread::spawn(move || {
            let _ = e.read_to_string(&mut stderr);
            stderr
        });
        let _ = o.read_to_string(&mut stdout);
        let status = child.wait().expect("wait");
        let _ = done_tx.send(());
        (status, stdout, err_reader.join().expect("stderr reader"))
    };
    let _ = watchdog.join();
    let (status, stdout, stderr) = out;
    struct Out {
        status: std::process::ExitStatus,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    }
    let out = Out { status, stdout: stdout.into_bytes(), stderr: stderr.into_bytes() };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "leasehold-bench failed:\n{stderr}");
    assert!(stderr.contains("leasehold-bench: "), "progress lines on stderr");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("output");
    let v: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    for key in [
        "failover_ms_p50",
        "failover_etcd_ms_p50",
        "handover_ms_p50",
        "handover_etcd_ms_p50",
        "api_rps",
        "api_ceiling_rps",
        "api_p99_us",
        "rss_kib",
        "lease_ttl_ms",
        "failover_min_ttl_ms_p50",
        "min_ttl_ms",
        "failover_on_etcd_ms_p50",
        "stepdown_ms_p50",
        "etcd_query_rps",
        "etcd_rss_kib",
        "idle_cpu_pct",
    ] {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number: {last}"));
        assert!(x.is_finite() && x >= 0.0, "{key} = {x}");
    }
    for key in ["failover_ms_p50", "failover_etcd_ms_p50", "api_rps", "api_ceiling_rps", "rss_kib", "etcd_query_rps"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} was not measured: {last}");
    }
    assert!(v["lease_ttl_ms"].as_u64().is_some_and(|t| t >= 1000), "etcd's minimum TTL is whole seconds");
    assert!(stdout.contains("| failover, plain etcd election (kill -9) |"), "the table: {stdout}");
}
