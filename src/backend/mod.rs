//! How a [`crate::core::LeaderView`] is produced. The built-in group is
//! [`crate::driver`] with [`crate::core`], [`crate::transport`] and
//! [`crate::storage`]; the etcd backend (cargo feature `etcd`) runs etcd's
//! election API instead. Both publish the same view on a `watch` channel and
//! take the same admin calls, so the API, metrics and hooks do not know
//! which one runs. A group uses one backend, chosen at start: switching
//! authority while running would make two of them (docs/etcd.md).

#[cfg(feature = "etcd")]
pub mod etcd;
