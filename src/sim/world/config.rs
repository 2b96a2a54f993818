//! What a simulated world is made of: its nodes' parameters, its network,
//! and the rules it breaks on purpose.

use std::time::Duration;

use crate::core::Broken;

/// Deliberate violations of the driver contract, to show the checker bites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Breakage {
    /// The disk acknowledges writes it then loses (as if fsync lied).
    pub fsync_lies: bool,
    /// The driver sends messages before the persist they depend on completed,
    /// and the node then often crashes before the persist completes.
    pub send_before_persist: bool,
    /// A node that starts with no state file takes no boot promise (rule 7),
    /// as if it could not have promised anything: the driver hands it a boot
    /// instant one `lease_ttl` in the past, which ends the promise at once.
    /// With wipes, such a node may vote while a lease still rests on an ack
    /// it gave before its state was lost.
    pub blank_boot_without_promise: bool,
    /// A node that lost its state file draws no new incarnation: it comes
    /// back as its old identity with its memory gone (managed groups).
    pub wiped_keeps_incarnation: bool,
    /// `--force-new-group` leaves the old group under the node's old
    /// identity instead of a new one (rule 10).
    pub forced_keeps_identity: bool,
    /// With positions: a database confirms a primary's writes whatever
    /// its sidecar promised (no fence: replication outlives the promise).
    pub unfenced_replication: bool,
    /// Rules of the core broken on purpose (managed groups).
    pub core: Broken,
}

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub loss: f64,
    pub duplicate: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub nodes: usize,
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// The bound the nodes are configured with (rho).
    pub max_clock_drift: f64,
    /// Each node's clock rate, as a difference from true time in ppm.
    pub clock_drift_ppm: Vec<i64>,
    pub clock_offset_ns: Vec<u64>,
    pub priorities: Vec<u32>,
    pub net: NetConfig,
    pub fsync_min: Duration,
    pub fsync_max: Duration,
    pub breakage: Breakage,
    /// Managed groups (DESIGN §2b): every node starts blank, with an
    /// incarnation, and the group forms by genesis; a wipe makes a new
    /// identity. Off: a static group of names.
    pub membership: bool,
    /// Rule 11: a static group whose nodes are restarted one by one with
    /// `--peers-file` (a rolling upgrade), which converts it to a managed
    /// group online. A node wiped during it comes back managed and blank.
    pub upgrade: bool,
    /// Each node runs a database that the lease holder's application
    /// writes to, replicated synchronously to a majority; the checker
    /// holds every new leader to the writes acknowledged before it.
    pub positions: bool,
    /// Each node's wall clock, as an offset from true time in
    /// microseconds (NTP-grade: a few milliseconds).
    pub wall_skew_us: Vec<i64>,
    pub seed: u64,
}

impl WorldConfig {
    /// A calm world: perfect clocks, 1ms links, 1ms fsync.
    pub fn calm(nodes: usize, lease_ttl: Duration, heartbeat_interval: Duration, seed: u64) -> Self {
        WorldConfig {
            nodes,
            lease_ttl,
            heartbeat_interval,
            max_clock_drift: 0.01,
            clock_drift_ppm: vec![0; nodes],
            clock_offset_ns: vec![0; nodes],
            priorities: vec![1; nodes],
            net: NetConfig::default(),
            fsync_min: Duration::from_millis(1),
            fsync_max: Duration::from_millis(1),
            breakage: Breakage::default(),
            membership: false,
            upgrade: false,
            positions: false,
            wall_skew_us: vec![0; nodes],
            seed,
        }
    }
}
