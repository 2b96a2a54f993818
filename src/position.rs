//! The local database's replication position (docs/safety.md, "Replication
//! positions"), for position-aware votes: read by `--position-exec` every
//! `--position-interval`, or set by the application with `PUT
//! /v1/position`, and fed to the driver with the instant the read started.
//!
//! The command is also the fence. Before it reads, it must make the
//! database take writes from exactly the upstream it is told
//! (`LEASEHOLD_UPSTREAM`, the leader this node is promised to) or from none,
//! and stop confirming writes as a primary unless `LEASEHOLD_ROLE` is
//! `leader`: a vote counts only a read taken after the database stopped
//! taking the writes of a leader whose lease may have ended.
//!
//! Owns: running the command (one at a time, with a timeout), parsing what
//! it prints. Must not: block the consensus loop, or stamp a read later than
//! the instant it started.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::clock::boottime_now;
use crate::core::{Nanos, Position, Term};

/// One read of the local database's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// None: the read failed (the node then grants no vote).
    pub position: Option<Position>,
    /// When the read started, on CLOCK_BOOTTIME.
    pub read_at: Nanos,
}

/// What `--position-exec` is told about the database it reads: its role
/// now, and the only upstream it may take writes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstream {
    /// `leader` (it holds the lease: the primary), `follower` (promised to
    /// `leader_id`: replicate from `address`), or `none` (fenced: no
    /// upstream, no writes confirmed).
    pub role: &'static str,
    pub leader_id: Option<String>,
    /// The leader's `--advertise` (its database endpoint).
    pub address: Option<String>,
    /// The fencing token of that leadership.
    pub token: Option<u64>,
}

/// What the command printed: `N` or PostgreSQL's `X/Y`, optionally after
/// the branch (the token of the leadership whose write ends the
/// database's history): `BRANCH N` or `BRANCH X/Y`. A missing branch is 0.
pub fn parse(text: &str) -> Result<Position, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (branch, at) = match words.as_slice() {
        [at] => (0, *at),
        [branch, at] => {
            let b = branch
                .parse::<u64>()
                .ok()
                .filter(|_| branch.bytes().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| format!("branch {branch:?} is not a token (an integer)"))?;
            (b, *at)
        }
        [] => return Err("printed nothing".to_string()),
        _ => return Err(format!("printed {:?}, not [BRANCH] POSITION", truncate(text))),
    };
    Ok(Position { branch: Term(branch), at: parse_lsn(at)? })
}

/// An integer, or a PostgreSQL LSN `X/Y` (two hexadecimal halves of up to
/// 32 bits each).
pub fn parse_lsn(s: &str) -> Result<u64, String> {
    if let Some((hi, lo)) = s.split_once('/') {
        let half = |h: &str| {
            (!h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(h, 16).ok())
                .flatten()
                .ok_or_else(|| format!("{s:?} is not an LSN (X/Y, hexadecimal)"))
        };
        return Ok((u64::from(half(hi)?) << 32) | u64::from(half(lo)?));
    }
    s.parse::<u64>()
        .ok()
        .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("{:?} is not a position (an integer or an LSN X/Y)", truncate(s)))
}

/// A position as PostgreSQL writes an LSN.
pub fn format_lsn(at: u64) -> String {
    format!("{:X}/{:X}", at >> 32, at & 0xFFFF_FFFF)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Runs `sh -c cmd` with `env`; its standard output, or why not. Killed
/// after `limit`.
fn run(cmd: &str, env: &[(&str, String)], limit: Duration) -> Result<String, String> {
    match crate::hooks::run_capturing(cmd, env, limit)? {
        (true, out) => String::from_utf8(out).map_err(|_| "printed bytes that are not UTF-8".to_string()),
        (false, _) => Err("exited with a failure".to_string()),
    }
}

/// Runs `cmd` every `interval`, and at once when the upstream changes (a
/// promise ended: the fence must not wait), and sends each reading.
pub async fn watch_exec(
    cmd: String,
    interval: Duration,
    mut upstream: watch::Receiver<Upstream>,
    tx: mpsc::Sender<Reading>,
) {
    let limit = interval.max(Duration::from_secs(1));
    let mut failing = false;
    loop {
        let up = upstream.borrow_and_update().clone();
        let env = vec![
            ("LEASEHOLD_ROLE", up.role.to_string()),
            ("LEASEHOLD_UPSTREAM", up.address.clone().unwrap_or_default()),
            ("LEASEHOLD_UPSTREAM_ID", up.leader_id.clone().unwrap_or_default()),
            ("LEASEHOLD_TOKEN", up.token.map_or(String::new(), |t| t.to_string())),
        ];
        // Stamped before the command starts: everything the database
        // confirmed before this instant is in what it prints.
        let read_at = boottime_now();
        let c = cmd.clone();
        let outcome = tokio::task::spawn_blocking(move || run(&c, &env, limit).and_then(|out| parse(&out)))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match &outcome {
            Ok(_) => {
                if failing {
                    tracing::info!("--position-exec reads the position again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        error = %e,
                        "--position-exec failed: this node grants no vote until a read succeeds"
                    );
                }
                failing = true;
            }
        }
        if tx.send(Reading { position: outcome.ok(), read_at }).await.is_err() {
            return; // the driver stopped
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            changed = upstream.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_integers_or_lsns_after_an_optional_branch() {
        assert_eq!(parse("42\n"), Ok(Position { branch: Term(0), at: 42 }));
        assert_eq!(parse("0/3000060"), Ok(Position { branch: Term(0), at: 0x300_0060 }));
        assert_eq!(parse(" 7 16/B374D848 "), Ok(Position { branch: Term(7), at: 0x16_B374_D848 }));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        for bad in ["", "x", "1 2 3", "-1", "1/", "/1", "123456789/0", "0/G", "t 0/1", "+5", "+1/+2", "+7 1"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_command_output_is_read_and_a_slow_command_is_killed() {
        let env = [("LEASEHOLD_UPSTREAM", "db-b:5432".to_string())];
        let printed = run("echo \"3 0/10 $LEASEHOLD_UPSTREAM\"", &env, Duration::from_secs(5));
        assert_eq!(printed.as_deref(), Ok("3 0/10 db-b:5432\n"));
        assert!(run("exit 1", &[], Duration::from_secs(5)).is_err());
        assert!(run("sleep 5", &[], Duration::from_millis(200)).is_err_and(|e| e.starts_with("killed")));
    }
}
