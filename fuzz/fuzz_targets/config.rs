//! `config`: the command line (src/cli.rs) and its checks (src/config.rs).
//!
//! The input, split at NUL bytes, is the argument list after `leasehold`
//! (so `run`, its flags given directly, and the client subcommands are all
//! reachable; arguments need not be UTF-8). `LEASEHOLD_*` variables are
//! removed first, so that an input always parses the same way.
//!
//! Properties:
//! 1. Neither clap nor `Config::from_args` panics.
//! 2. A refusal by `Config::from_args` is one line that starts with the flag
//!    it names (`--...`), as a start-up refusal must be.
//! 3. An accepted configuration holds what the checks claim: the core's own
//!    validation passes; a non-empty cluster id; a non-empty node id that is
//!    one of the voters, which are the ids of `--peers` (or the node alone);
//!    a lease of at least 100ms; a heartbeat above zero, below the lease, at
//!    most a third of the leader's lease; a clock drift bound in [0, 0.5);
//!    every peer address and the peer listener are HOST:PORT with a port in
//!    1..=65535; a URL health check is http://, a command one is not blank;
//!    the etcd settings exist exactly with `--backend etcd` (never, in a
//!    build without the `etcd` feature, like this one).
//! 4. A hand-over's `--wait` is at most 60s.
#![no_main]
// The clippy bans guard src/core; fuzz_target! reads files (its RUST_LIBFUZZER_DEBUG_PATH).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::cell::RefCell;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use leasehold::cli::{Backend, Cli, Command, RunArgs};
use leasehold::config::{Config, HealthCheck};
use leasehold::core::{lease, MIN_LEASE_TTL};
use libfuzzer_sys::fuzz_target;

thread_local! {
    /// The command line's definition, built once and reused, as clap
    /// allows. `Cli::try_parse_from` builds it for every input, and a build
    /// checks the whole definition when debug assertions are on (as in a
    /// fuzz build), which made this target many times slower; parsing is
    /// otherwise the same. `LEASEHOLD_*` variables are removed first.
    static COMMAND: RefCell<clap::Command> = RefCell::new({
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LEASEHOLD_") {
                std::env::remove_var(name);
            }
        }
        let mut command = Cli::command();
        command.build();
        command
    });
}

/// HOST:PORT as the checks define it: a non-empty host without whitespace,
/// a port in 1..=65535.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

fn check_accepted(c: &Config, args: &RunArgs) {
    let node = &c.node;
    assert_eq!(node.validate(), Ok(()));
    assert!(!node.cluster_id.is_empty());
    let id = node.node_id.as_str();
    assert!(!id.is_empty() && id.trim() == id, "node id {id:?}");
    assert!(node.voters.contains(&node.node_id));
    if c.peers.is_empty() {
        assert_eq!(node.voters.len(), 1);
    } else {
        assert!(node.voters.iter().eq(c.peers.keys()), "the voters are the ids of --peers");
    }
    for (peer, addr) in &c.peers {
        assert!(!peer.as_str().is_empty() && peer.as_str().trim() == peer.as_str(), "peer id {peer:?}");
        assert!(is_host_port(addr), "peer address {addr:?}");
    }
    match &c.listen_peer {
        Some(l) => assert!(is_host_port(l), "--listen-peer {l:?}"),
        None => assert!(c.peers.is_empty() && args.listen_peer.is_none()),
    }

    assert!(node.lease_ttl >= MIN_LEASE_TTL);
    assert!(node.heartbeat_interval > Duration::ZERO);
    assert!(node.heartbeat_interval < node.lease_ttl, "heartbeat below the lease");
    assert!((0.0..0.5).contains(&node.max_clock_drift), "drift {}", node.max_clock_drift);
    let leader_lease = lease::leader_lease(node.lease_ttl, lease::drift_ppm(node.max_clock_drift));
    assert!(node.heartbeat_interval.checked_mul(3).is_some_and(|h| h <= leader_lease), "three heartbeats per lease");
    if args.heartbeat_interval.is_none() {
        assert_eq!(node.heartbeat_interval, node.lease_ttl / 5);
    }

    match &c.health_check {
        HealthCheck::Url(u) => assert!(u.starts_with("http://")),
        HealthCheck::Exec(cmd) => assert!(!cmd.trim().is_empty()),
        HealthCheck::None => assert!(args.health_check_url.is_none() && args.health_check_exec.is_none()),
    }
    assert_eq!(c.backend == Backend::Etcd, c.etcd.is_some());
    assert_eq!(c.backend, Backend::Raft, "this build has no etcd backend");
}

fn check_run(args: &RunArgs) {
    match Config::from_args(args) {
        Ok(c) => check_accepted(&c, args),
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("--"), "a refusal names its flag first: {message:?}");
            assert!(!message.contains('\n'), "a refusal is one line: {message:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let args = data.split(|b| *b == 0).map(|a| OsString::from_vec(a.to_vec()));
    let argv = std::iter::once(OsString::from("leasehold")).chain(args);
    let Ok(mut matches) = COMMAND.with_borrow_mut(|command| command.try_get_matches_from_mut(argv)) else { return };
    let Ok(cli) = Cli::from_arg_matches_mut(&mut matches) else { return };
    let at_most_a_minute = |wait: Option<Duration>| assert!(wait.is_none_or(|w| w <= Duration::from_secs(60)));
    match cli.command {
        None => check_run(&cli.run),
        Some(Command::Run(args)) => check_run(&args),
        Some(Command::StepDown(a)) => at_most_a_minute(a.hand_over.wait),
        Some(Command::Transfer(a)) => at_most_a_minute(a.hand_over.wait),
        Some(Command::Local(_) | Command::Status(_) | Command::Leader(_) | Command::Members(_) | Command::Watch(_)) => {
        }
    }
});
