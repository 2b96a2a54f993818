//! leasehold: a lease-based leader election sidecar with fencing tokens.
//!
//! Modules, what each owns, and what it must not touch:
//! - [`core`]: the consensus state machine (election, leases, promises,
//!   transfer), and [`core::outbox`], the persist-then-send contract that the
//!   driver and the simulator both carry out through it. Pure and
//!   deterministic: no clocks, sockets, files, processes, threads or
//!   unseeded randomness; time is an argument. Enforced by clippy
//!   (`scripts/boundary-probe.sh` shows the rule bites).
//! - [`api`]: the local HTTP API. Reads are copies of the latest view from
//!   the driver's watch channel: never waits on the loop, disk or network.
//! - [`backend`]: either backend started behind one interface (a view, an
//!   admin channel, a stop with its SIGTERM hand-over): [`backend::raft`]
//!   wires the built-in group; [`backend::etcd`] (feature `etcd`) runs
//!   etcd's election API, its decisions a pure machine
//!   ([`backend::etcd::machine`]) beside its requests and its token file.
//! - [`client`]: the client subcommands (`status`, `leader`, `step-down`,
//!   `transfer`): one request to a running sidecar's API.
//! - [`http`]: the HTTP layer under the API, the metrics listener and every
//!   client: the capped accept loop, the probes, one small client.
//! - [`labels`]: every label value of the metrics (rejection reasons, API
//!   paths), written once.
//! - [`local`]: `leasehold local`, N sidecars on loopback as child processes.
//! - [`clock`]: CLOCK_BOOTTIME, the only clock the protocol reads.
//! - [`cli`]: the clap definitions of the command line (DESIGN §4).
//! - [`config`]: flags and `LEASEHOLD_*` variables turned into a checked
//!   configuration; one-line refusals naming the flag. No IO.
//! - [`driver`]: the tokio task that owns a `core::Node`: feeds it inputs,
//!   persists before sending what depends on it, publishes the view on a
//!   watch channel. Makes no protocol decision.
//! - [`hooks`]: the local health check (may this node lead?) and the
//!   `--on-elected`/`--on-demoted` commands, with timeouts, off the loop.
//! - [`metrics`]: the Prometheus registry and the metrics listener (with
//!   `/healthz` and `/readyz` for kubelet). Changes no state.
//! - [`report`]: the reaction to events of either backend and of the
//!   transport: log lines, metrics, the peer table.
//! - [`storage`]: the durable state file (term, vote, identity): atomic
//!   replacement with fsync, checksums, refusal of foreign or damaged files.
//!   Must not decide protocol matters, and never rewrites a file it could not
//!   read.
//! - [`transport`]: the peer wire format (frames, size cap, handshake), the
//!   TCP connections between peers, and mutual TLS on them with certificate
//!   reloads. Interprets nothing beyond the envelope.
//! - [`observe`]: the observer check of DESIGN §7 over real processes: polls
//!   every node's `/v1/leader` and finds provably overlapping leases. Used by
//!   the integration tests and the fault harness (`chaos/`).
//! - [`sim`]: the deterministic simulator that drives many `core::Node`s over a
//!   simulated network, disk and clocks, and checks the safety invariants
//!   against true simulated time. Test tooling; uses no real IO either.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod api;
pub mod backend;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod core;
pub mod desired;
pub mod driver;
pub mod hooks;
pub mod http;
pub mod labels;
pub mod local;
pub mod metrics;
pub mod observe;
pub mod position;
pub mod report;
pub mod sim;
pub mod storage;
pub mod transport;
