//! The sidecar's dealings with its local application: the health check that
//! decides whether this node may lead (DESIGN §2 rule 9), and the
//! `--on-elected` / `--on-demoted` hooks.
//!
//! Owns: running those commands and URLs with timeouts. Must not: block the
//! consensus loop. Health results reach the driver through a channel; hooks
//! run one at a time on their own task, never waited for by the loop.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::clock::boottime_now;
use crate::config::HealthCheck;
use crate::core::LeaderView;
use crate::http;

/// A hook that has not finished after this long is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `sh -c cmd` with `env`, killing it after `limit`. Ok(true) if it
/// exited 0.
fn run_command(cmd: &str, env: &[(&str, String)], limit: Duration) -> Result<bool, String> {
    run_capturing(cmd, env, limit).map(|(ok, _)| ok)
}

/// Runs `sh -c cmd` with `env`, killing it after `limit`: whether it exited
/// 0, and the first 4 KiB of its standard output (the rest is read and
/// dropped, so that a command that prints much is not stopped by a full
/// pipe).
pub fn run_capturing(cmd: &str, env: &[(&str, String)], limit: Duration) -> Result<(bool, Vec<u8>), String> {
    let mut child = Command::new("sh")
        .args(["-c", cmd])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let Some(mut stdout) = child.stdout.take() else { return Err("no standard output".to_string()) };
    // Read on its own thread, so that a command that never exits still
    // ends at the deadline.
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let (mut kept, mut chunk) = (Vec::new(), [0u8; 4096]);
        while let Ok(n @ 1..) = stdout.read(&mut chunk) {
            let room = 4096usize.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..n.min(room)]);
        }
        kept
    });
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok((status.success(), reader.join().unwrap_or_default())),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// One health check: the URL answers 2xx, or the command exits 0.
fn check_once(check: &HealthCheck, limit: Duration) -> bool {
    match check {
        HealthCheck::None => true,
        HealthCheck::Exec(cmd) => run_command(cmd, &[], limit).unwrap_or(false),
        HealthCheck::Url(url) => {
            let rest = url.strip_prefix("http://").unwrap_or(url);
            let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
            http::request(authority, "GET", &path, &[], "", limit).is_ok_and(|a| (200..300).contains(&a.status))
        }
    }
}

/// Checks health every `interval` and reports each change to the driver.
pub async fn watch_health(check: HealthCheck, interval: Duration, tx: mpsc::Sender<bool>) {
    if check == HealthCheck::None {
        return;
    }
    let mut last = None;
    loop {
        let c = check.clone();
        let healthy = tokio::task::spawn_blocking(move || check_once(&c, interval.max(Duration::from_secs(1))))
            .await
            .unwrap_or(false);
        if last != Some(healthy) {
            if healthy && last.is_some() {
                tracing::info!("health check passes");
            } else if !healthy {
                tracing::warn!("health check fails: this node will not lead");
            }
            if tx.send(healthy).await.is_err() {
                return;
            }
            last = Some(healthy);
        }
        tokio::time::sleep(interval).await;
    }
}

/// Counts hook outcomes: (hook, result) with result ok, failed, or timeout.
pub type HookCounter = Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

/// Runs `--on-elected` when this node starts holding a lease and
/// `--on-demoted` when it stops, in order, one at a time.
pub async fn run_hooks(
    on_elected: Option<String>,
    on_demoted: Option<String>,
    mut view: watch::Receiver<LeaderView>,
    count: HookCounter,
) {
    if on_elected.is_none() && on_demoted.is_none() {
        return;
    }
    // (leading, token): a new leadership after a lost one is a new election
    // even if both happened while a hook ran.
    let mut state: (bool, Option<u64>) = (false, None);
    loop {
        // A lease can lapse without a new view: look at least every 50ms.
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(50), view.changed()).await {
            return; // the driver stopped
        }
        let v = view.borrow_and_update().clone();
        let leading = v.is_leader(boottime_now());
        let now = (leading, if leading { v.fencing_token.map(|t| t.0) } else { None });
        if now == state {
            continue;
        }
        let was_leading = state.0;
        state = now;
        let mut runs = Vec::new();
        if was_leading {
            runs.push(("on_demoted", on_demoted.clone()));
        }
        if leading {
            runs.push(("on_elected", on_elected.clone()));
        }
        for (name, cmd) in runs {
            let Some(cmd) = cmd else { continue };
            run_hook(name, cmd, &v, &count).await;
        }
    }
}

async fn run_hook(name: &'static str, cmd: String, v: &LeaderView, count: &HookCounter) {
    let env = vec![
        ("LEASEHOLD_TOKEN", v.fencing_token.map_or(String::new(), |t| t.0.to_string())),
        ("LEASEHOLD_TERM", v.term.0.to_string()),
        ("LEASEHOLD_LEADER_ID", v.leader_id.as_ref().map_or(String::new(), |l| l.to_string())),
    ];
    let outcome = tokio::task::spawn_blocking(move || run_command(&cmd, &env, HOOK_TIMEOUT)).await;
    let result = match outcome {
        Ok(Ok(true)) => "ok",
        Ok(Ok(false)) => "failed",
        Ok(Err(e)) if e.starts_with("killed") => "timeout",
        _ => "failed",
    };
    if result == "ok" {
        tracing::info!(hook = name, result, "hook ran");
    } else {
        tracing::warn!(hook = name, result, "hook did not succeed");
    }
    count(name, result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_succeed_fail_and_time_out() {
        assert_eq!(run_command("exit 0", &[], Duration::from_secs(5)), Ok(true));
        assert_eq!(run_command("exit 3", &[], Duration::from_secs(5)), Ok(false));
        assert_eq!(run_command("test \"$X\" = y", &[("X", "y".into())], Duration::from_secs(5)), Ok(true));
        let slow = run_command("sleep 5", &[], Duration::from_millis(100));
        assert!(slow.is_err_and(|e| e.starts_with("killed")));
    }

    #[test]
    fn an_unreachable_health_url_is_unhealthy() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let check = HealthCheck::Url(format!("http://127.0.0.1:{port}/health"));
        assert!(!check_once(&check, Duration::from_secs(1)));
        assert!(check_once(&HealthCheck::None, Duration::from_secs(1)));
    }
}
