//! The deterministic simulator (DESIGN §7): many [`crate::core::Node`]s on a
//! simulated network, disk and clocks, driven through a seeded fault phase
//! and a heal phase, with every safety invariant checked against true
//! simulated time at every event.
//!
//! Owns: simulated time, network, disks, clocks and the fault schedule.
//! Must not: use real time, sockets, files or unseeded randomness; one seed
//! decides everything, so a seed replays a run exactly. The clippy
//! configuration enforces this as it does for the core.
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

#[cfg(boundary_probe)]
mod boundary_probe;
pub mod check;
pub mod clock;
pub mod plan;
pub mod world;

pub use check::{Checker, Invariant, Violation};
pub use plan::{run_seed, SeedOptions, SeedReport};
pub use world::{Breakage, NetConfig, Verbosity, World, WorldConfig};
