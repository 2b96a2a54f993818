//! The scenarios: each sets a group up, then runs rounds of one kind of
//! fault, each round injecting it, holding it, healing it, and checking that
//! a leader is back within the bound. The checks over the whole run (the
//! observer, the fencing store, the logs) are in main.rs.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use leasehold::core::rng::SplitMix64;
use leasehold::http;
use leasehold::observe::Handover;

use crate::cluster::{self, Cluster};
use crate::proxy::Faults;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kill,
    Pause,
    Partition,
    Asymmetric,
    Bridge,
    Network,
    ClockSkew,
    ClockSkewBeyond,
    DiskFull,
    DiskReadOnly,
    SlowFsync,
    RollingRestart,
    Wipe,
}

pub const ALL: [Kind; 13] = [
    Kind::Kill,
    Kind::Pause,
    Kind::Partition,
    Kind::Asymmetric,
    Kind::Bridge,
    Kind::Network,
    Kind::ClockSkew,
    Kind::ClockSkewBeyond,
    Kind::DiskFull,
    Kind::DiskReadOnly,
    Kind::SlowFsync,
    Kind::RollingRestart,
    Kind::Wipe,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Asymmetric => "asymmetric",
            Kind::Bridge => "bridge",
            Kind::Network => "network",
            Kind::ClockSkew => "clock-skew",
            Kind::ClockSkewBeyond => "clock-skew-beyond",
            Kind::DiskFull => "disk-full",
            Kind::DiskReadOnly => "disk-ro",
            Kind::SlowFsync => "slow-fsync",
            Kind::RollingRestart => "rolling-restart",
            Kind::Wipe => "wipe",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        ALL.into_iter().find(|k| k.name() == s)
    }

    /// Faults within the model of DESIGN §2 must cause no violation; the
    /// others are reported, not gated.
    pub fn in_model(self) -> bool {
        self != Kind::ClockSkewBeyond
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Kill => "kill -9 of the leader, restarted after a successor is seen",
            Kind::Pause => "SIGSTOP of the leader for 0.5-2 leases, then SIGCONT",
            Kind::Partition => "the leader cut off (on 5 nodes, with one follower half the time), both ways, 3 leases",
            Kind::Asymmetric => "one-way loss: into the leader, out of the leader, or into a follower, 3 leases",
            Kind::Bridge => "two halves that only one node hears both of, 3 leases",
            Kind::Network => {
                "every link: delay, jitter, 10% loss, 10% duplicates, 10% reordering, 1% cuts; leader killed"
            }
            Kind::ClockSkew => "one node's clock rate off by rho/2 (libfaketime), made leader, then cut off",
            Kind::ClockSkewBeyond => "one node's clock at half speed (50x rho), made leader, then cut off",
            Kind::DiskFull => "a follower's 256 KiB tmpfs data dir filled, then the leader killed",
            Kind::DiskReadOnly => "a follower's data dir remounted read-only, then the leader killed",
            Kind::SlowFsync => "every state write slowed by 0.8 lease (failpoint), then the leader killed",
            Kind::RollingRestart => "each node in turn: SIGTERM, restart, rejoin",
            Kind::Wipe => {
                "the leader cut off from all but a bare majority; once the others' promises ran out, one of \
                 that majority cut off too, killed, its data dir removed and restarted at once, 3 leases"
            }
        }
    }
}

/// What rounds leave for the checks.
pub struct Ctx<'a> {
    pub c: &'a mut Cluster,
    pub rng: SplitMix64,
    pub bound: Duration,
    pub handovers: Vec<Handover>,
    pub failovers: Vec<Duration>,
    pub liveness: Vec<String>,
    /// The node whose clock, disk or data dir the scenario faults.
    pub target: usize,
}

/// Sets the group up for `kind` before it starts.
pub fn prepare(kind: Kind, c: &mut Cluster, target: usize, rho: f64) -> Result<(), String> {
    if matches!(kind, Kind::ClockSkew | Kind::ClockSkewBeyond) && !std::path::Path::new(cluster::LIBFAKETIME).exists() {
        return Err(format!("{} is missing (Debian package faketime)", cluster::LIBFAKETIME));
    }
    match kind {
        Kind::ClockSkew => c.nodes[target].rate = Some(if target % 2 == 0 { 1.0 - rho / 2.0 } else { 1.0 + rho / 2.0 }),
        Kind::ClockSkewBeyond => c.nodes[target].rate = Some(0.5),
        Kind::DiskFull | Kind::DiskReadOnly => {
            let dir = c.nodes[target].data_dir.clone();
            cluster::mount_tmpfs(&dir)?;
            c.mounts.push(dir);
        }
        _ => {}
    }
    Ok(())
}

impl Ctx<'_> {
    fn n(&self) -> usize {
        self.c.nodes.len()
    }

    fn ttl(&self) -> Duration {
        self.c.ttl
    }

    /// The current leader; a liveness finding if there is none within the
    /// bound.
    fn leader(&mut self, round: usize) -> Option<(usize, u64)> {
        match self.c.wait_leader(0, self.bound) {
            Some((l, t, _)) => Some((l, t)),
            None => {
                self.liveness.push(format!("round {round}: no leader within {:?} before the fault", self.bound));
                None
            }
        }
    }

    /// Holds a fault for `hold`, noting when a leader of a token above
    /// `token` first shows.
    fn hold(&mut self, token: u64, since: Instant, hold: Duration) {
        let end = since + hold;
        if let Some((_, _, at)) = self.c.wait_leader(token, end.saturating_duration_since(Instant::now())) {
            self.failovers.push(at - since);
        }
        let left = end.saturating_duration_since(Instant::now());
        thread::sleep(left);
    }

    /// After a heal: every node running again and a leader within the
    /// bound.
    fn recover(&mut self, round: usize) {
        self.c.heal();
        for i in 0..self.n() {
            if self.c.nodes[i].child.is_none() {
                if let Err(e) = self.c.spawn(i) {
                    self.liveness.push(format!("round {round}: restart of n{}: {e}", i + 1));
                }
            }
        }
        if self.c.wait_leader(0, self.bound).is_none() {
            self.liveness.push(format!("round {round}: no leader within {:?} after the heal", self.bound));
        }
        for i in 0..self.n() {
            if !self.c.wait_joined(i, self.bound) {
                self.liveness.push(format!("round {round}: n{} did not rejoin within {:?}", i + 1, self.bound));
            }
        }
    }

    /// Kill -9 of the leader: a successor within the bound, then the old
    /// leader restarts.
    fn kill_leader(&mut self, round: usize) {
        let Some((l, t)) = self.leader(round) else { return };
        let since = Instant::now();
        self.c.kill(l);
        match self.c.wait_leader(t, self.bound) {
            Some((_, _, at)) => self.failovers.push(at - since),
            None => self.liveness.push(format!("round {round}: no successor within {:?} of a kill", self.bound)),
        }
    }

    /// A lost volume under a live lease: the leader's lease comes to rest
    /// on the acks of a bare majority; the followers outside it wait out
    /// their promises; then one follower of that majority is cut off from
    /// the leader, killed, loses its data dir and restarts at once. Blank,
    /// it must not vote for one of the others before its old promise (and
    /// so the leader's lease) is over: every start takes the boot promise.
    fn wipe(&mut self, round: usize) {
        let Some((l, t)) = self.leader(round) else { return };
        let n = self.n();
        let mut followers: Vec<usize> = (0..n).filter(|&i| i != l).collect();
        for i in (1..followers.len()).rev() {
            followers.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        // The leader keeps just enough followers for its lease.
        let keep: Vec<usize> = followers[..n / 2].to_vec();
        let cut_off = |i: usize| i != l && !keep.contains(&i);
        let blackhole = || Faults { blackhole: true, ..Faults::default() };
        let since = Instant::now();
        self.c.faults(|a, b| ((a == l && cut_off(b)) || (b == l && cut_off(a))).then(blackhole));
        // Past the promises of the followers cut off (a lease_ttl, with the
        // drift margin and a poll's slack).
        thread::sleep(self.ttl().mul_f64(1.2));
        let w = keep[0];
        self.c.faults(|a, b| {
            let cut = |x: usize| cut_off(x) || x == w;
            ((a == l && cut(b)) || (b == l && cut(a))).then(blackhole)
        });
        self.c.kill(w);
        let dir = self.c.nodes[w].data_dir.clone();
        let wiped = fs::remove_dir_all(&dir).and_then(|()| fs::create_dir_all(&dir));
        self.c.note(&format!("n{} data dir {} removed: {wiped:?}", w + 1, dir.display()));
        if let Err(e) = self.c.spawn(w) {
            self.liveness.push(format!("round {round}: restart of n{} after the wipe: {e}", w + 1));
        }
        self.hold(t, since, self.ttl() * 4);
    }

    pub fn round(&mut self, kind: Kind, round: usize) {
        self.c.note(&format!("round {round}"));
        let ttl = self.ttl();
        match kind {
            Kind::Kill => self.kill_leader(round),
            Kind::Pause => {
                let Some((l, t)) = self.leader(round) else { return };
                let pause = ttl.mul_f64(0.5 + self.rng.below(1500) as f64 / 1000.0);
                let since = Instant::now();
                self.c.signal(l, libc::SIGSTOP);
                self.hold(t, since, pause);
                self.c.signal(l, libc::SIGCONT);
            }
            Kind::Partition => {
                let Some((l, t)) = self.leader(round) else { return };
                let buddy = (self.n() == 5 && self.rng.chance(0.5)).then(|| (l + 1 + self.rng.below(4) as usize) % 5);
                let since = Instant::now();
                self.c.partition(|i| usize::from(i == l || Some(i) == buddy));
                self.hold(t, since, ttl * 3);
            }
            Kind::Asymmetric => {
                let Some((l, t)) = self.leader(round) else { return };
                let follower = (l + 1 + self.rng.below(self.n() as u64 - 1) as usize) % self.n();
                let case = self.rng.below(3);
                let drop = || Some(Faults { blackhole: true, ..Faults::default() });
                let since = Instant::now();
                match case {
                    0 => self.c.faults(|_, to| if to == l { drop() } else { None }),
                    1 => self.c.faults(|from, _| if from == l { drop() } else { None }),
                    _ => self.c.faults(|_, to| if to == follower { drop() } else { None }),
                }
                self.hold(t, since, ttl * 3);
            }
            Kind::Bridge => {
                let Some((l, t)) = self.leader(round) else { return };
                // A random order with the leader first: the first half and
                // the last half cannot talk; the middle node hears both.
                let mut order: Vec<usize> = (0..self.n()).filter(|&i| i != l).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, self.rng.below(i as u64 + 1) as usize);
                }
                order.insert(0, l);
                let half = self.n() / 2;
                let side = |i: usize| order.iter().position(|&x| x == i).map_or(0, |p| p.cmp(&half) as i32);
                let since = Instant::now();
                self.c
                    .faults(|a, b| (side(a) * side(b) == -1).then(|| Faults { blackhole: true, ..Faults::default() }));
                self.hold(t, since, ttl * 3);
            }
            Kind::Network => {
                let Some((l, t)) = self.leader(round) else { return };
                let noise = Faults {
                    delay: ttl / 20,
                    jitter: ttl / 10,
                    drop: 0.1,
                    duplicate: 0.1,
                    reorder: 0.1,
                    cut: 0.01,
                    ..Faults::default()
                };
                let since = Instant::now();
                self.c.faults(|_, _| Some(noise.clone()));
                self.c.kill(l);
                // Six leases: under this noise a successor takes one to four
                // (lost vote rounds are retried), and a round counts its
                // failover only if the successor shows while the noise holds.
                self.hold(t, since, ttl * 6);
            }
            Kind::ClockSkew | Kind::ClockSkewBeyond => {
                let Some((l, t)) = self.leader(round) else { return };
                let s = self.target;
                let mut token = t;
                if l != s {
                    let asked = Instant::now();
                    let path = format!("/v1/transfer?to={}&wait=2s", self.c.nodes[s].id);
                    let answer = http::request(&self.c.nodes[l].api, "POST", &path, &[], "", Duration::from_secs(3));
                    let done = answer.as_ref().is_ok_and(|a| a.status == 200);
                    let what = answer.map_or_else(|e| e, |a| format!("{} {}", a.status, a.body.trim()));
                    self.c.note(&format!("transfer from n{} to {}: {what}", l + 1, self.c.nodes[s].id));
                    // A transfer that began (done, or timed out after the
                    // leader abdicated) ends the old lease early (rule 8).
                    if done || what.starts_with("504") {
                        self.handovers.push((l, asked, Instant::now()));
                    }
                    // A refused transfer (the target not heard from
                    // recently enough) leaves the leader in place.
                    if done {
                        match self.c.wait_leader(t, self.bound) {
                            Some((_, t2, _)) => token = t2,
                            None => self.liveness.push(format!("round {round}: no leader after a transfer")),
                        }
                    }
                }
                let cut = self.c.leader().map_or(s, |(i, _)| i);
                let since = Instant::now();
                self.c.partition(|i| usize::from(i == cut));
                self.hold(token, since, ttl * 3);
            }
            Kind::DiskFull | Kind::DiskReadOnly => {
                let Some((l, t)) = self.leader(round) else { return };
                let dir = self.c.nodes[self.target].data_dir.clone();
                if kind == Kind::DiskFull {
                    cluster::fill(&dir);
                } else if !cluster::remount(&dir, "ro") {
                    self.liveness.push(format!("round {round}: remount read-only failed"));
                }
                let since = Instant::now();
                self.c.kill(l);
                // With 3 nodes the survivors cannot elect without the
                // faulted node's vote: no successor until the heal.
                self.hold(t, since, ttl * 3);
                if kind == Kind::DiskFull {
                    let _ = fs::remove_file(dir.join("filler"));
                } else {
                    cluster::remount(&dir, "rw");
                }
            }
            Kind::SlowFsync => {
                let slow = format!("{}ms", (ttl * 4 / 5).as_millis());
                for n in &self.c.nodes {
                    let _ = fs::write(&n.failpoint, &slow);
                }
                self.kill_leader(round);
                for n in &self.c.nodes {
                    let _ = fs::remove_file(&n.failpoint);
                }
            }
            Kind::Wipe => self.wipe(round),
            Kind::RollingRestart => {
                for i in 0..self.n() {
                    let led = self.c.leader();
                    let asked = Instant::now();
                    if !self.c.terminate(i, Duration::from_secs(5)) {
                        self.liveness.push(format!("round {round}: n{} did not exit within 5s of SIGTERM", i + 1));
                    }
                    if let Some((l, t)) = led.filter(|&(l, _)| l == i) {
                        match self.c.wait_leader(t, self.bound) {
                            Some((_, _, at)) => {
                                self.failovers.push(at - asked);
                                self.handovers.push((l, asked, at));
                            }
                            None => self.liveness.push(format!("round {round}: no successor after SIGTERM")),
                        }
                    }
                    if let Err(e) = self.c.spawn(i) {
                        self.liveness.push(format!("round {round}: restart of n{}: {e}", i + 1));
                    }
                    if !self.c.wait_joined(i, self.bound) {
                        self.liveness.push(format!("round {round}: n{} did not rejoin", i + 1));
                    }
                }
            }
        }
        self.recover(round);
    }
}
