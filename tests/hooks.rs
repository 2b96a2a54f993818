//! The local health check gates leadership, and the role-change hooks run
//! with the token in their environment: a real single-node sidecar.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn get(api: &str, path: &str) -> Option<(u16, String)> {
    leasehold::http::get(api, path, Duration::from_secs(2))
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_unhealthy_node_does_not_lead_and_on_elected_runs_with_the_token() {
    let dir = std::env::temp_dir().join(format!("leasehold-hooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let healthy = dir.join("healthy");
    let elected = dir.join("elected");
    let port = leasehold::local::free_port().expect("a free loopback port");
    let api = format!("127.0.0.1:{port}");
    let _node = Killed(
        Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(["--data-dir", &dir.join("data").to_string_lossy(), "--listen-api", &api])
            .args(["--listen-metrics", "127.0.0.1:0", "--lease-ttl", "500ms"])
            .args(["--health-check-exec", &format!("test -f {}", healthy.display())])
            .args(["--on-elected", &format!("echo \"$LEASEHOLD_TOKEN $LEASEHOLD_LEADER_ID\" > {}", elected.display())])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    // Unhealthy: for 1.5s (three leases) it answers, but never leads.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut answered = false;
    while Instant::now() < until {
        if let Some((code, body)) = get(&api, "/v1/leader") {
            answered = true;
            assert_eq!(code, 503, "an unhealthy node must not lead: {body}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(answered, "the node never answered");
    let (_, status) = get(&api, "/v1/status").expect("status");
    assert!(status.contains("\"healthy\":false"), "{status}");

    std::fs::write(&healthy, b"").expect("touch");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&api, "/v1/leader").is_none_or(|(c, _)| c != 200) {
        assert!(Instant::now() < deadline, "no leadership after the check passed");
        thread::sleep(Duration::from_millis(20));
    }
    while !elected.exists() || std::fs::read_to_string(&elected).expect("read").is_empty() {
        assert!(Instant::now() < deadline, "--on-elected did not run");
        thread::sleep(Duration::from_millis(20));
    }
    let content = std::fs::read_to_string(&elected).expect("read");
    assert_eq!(content.trim(), "1 leasehold", "token and leader id in the hook's environment");
    let _ = std::fs::remove_dir_all(&dir);
}
