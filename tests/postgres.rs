//! examples/postgres against real PostgreSQL (Debian's, 15 or newer): three
//! instances on loopback with synchronous replication, a sidecar each with
//! position-aware votes, and the example's writer, through kill -9 of the
//! primary, SIGSTOP of its sidecar, a planned switchover and a held-back
//! standby. After each fault exactly one instance takes writes, every write
//! the writer saw acknowledged is on it, and the tokens in the data never go
//! back (`demo.py faults`, which this runs and whose verdict it checks).
//! PostgreSQL and psycopg are installed by scripts/pg-tools.sh when missing.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

#[test]
fn the_postgres_example_loses_no_acknowledged_write_through_every_fault() {
    let python = match std::env::var("LEASEHOLD_PG_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let out = Command::new("bash").arg("scripts/pg-tools.sh").output().expect("scripts/pg-tools.sh");
            assert!(out.status.success(), "pg-tools.sh: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).lines().last().expect("a python").trim().to_string()
        }
    };
    let dir = std::env::temp_dir().join(format!("leasehold-pg-{}", std::process::id()));
    let ports: Vec<String> = (0..12).map(|_| common::free_port().to_string()).collect();
    let mut child = Command::new(&python)
        .arg("examples/postgres/demo.py")
        .arg("faults")
        .args(["--dir", &dir.to_string_lossy(), "--leasehold", env!("CARGO_BIN_EXE_leasehold")])
        .args(["--ports", &ports.join(",")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run demo.py");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    // Bounded: SIGTERM at the deadline (demo.py then stops what it
    // started), SIGKILL a minute later.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut termed = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline && !termed {
            // SAFETY: kill(2) on the pid of the child this test spawned.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            termed = true;
        }
        if Instant::now() >= deadline + Duration::from_secs(60) {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().expect("reader");
    println!("{out}");
    assert!(status.success() && out.contains("faults: every check passed"), "demo.py faults: {status}\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
