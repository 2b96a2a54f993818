//! Peer transport: TCP connections between the sidecars of a group.
//!
//! Owns: framing, the handshake, and (in the tokio part) connections,
//! reconnection and backoff. Must not: interpret messages beyond their
//! envelope; the core validates and decides.

pub mod frame;
pub mod tcp;
