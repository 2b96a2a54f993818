//! Peer transport: TCP connections between the sidecars of a group.
//!
//! Owns: framing, the handshake, and (in the tokio part) connections,
//! reconnection, backoff, and mutual TLS with certificate reloads. Must not:
//! interpret messages beyond their envelope; the core validates and decides.

pub mod frame;
pub mod tcp;
pub mod tls;
