//! The tokio task that owns a [`core::Node`]: one `select!` loop that feeds it
//! messages, admin calls and ticks, and carries out its [`Outputs`] exactly as
//! their contract says: persist, then send what depended on it.
//!
//! Owns: the node, the state file, the sending half of the transport, and the
//! `watch` channel the API and metrics read the [`LeaderView`] from. Must not:
//! make a protocol decision, or let a `send_after_persist` message out before
//! its write is durable. Reads of the view never wait for this loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::clock::boottime_now;
use crate::core::outbox::{Held, Outbox};
use crate::core::{
    self, AdminError, AdminRequest, Envelope, Event, HardState, Input, LeaderView, MembershipView, Nanos, Node, NodeId,
    Outputs, PeerKind,
};
use crate::desired::Desired;
use crate::position::{Reading, Upstream};
use crate::storage::{Identity, StateFile};
use crate::transport::frame::Standing;
use crate::transport::tcp::Transport;

/// An admin request and where to send its answer.
pub type AdminCall = (AdminRequest, oneshot::Sender<Result<(), AdminError>>);

/// How long to wait before writing the state again after a failed write.
const PERSIST_RETRY: Duration = Duration::from_millis(250);

/// What the driver reports besides the view (metrics, logs).
pub trait Observer: Send + Sync + 'static {
    fn fsync(&self, seconds: f64);
    fn event(&self, event: &Event);
    fn rejected(&self, reason: &'static str);
    /// A desired set was refused (managed groups).
    fn desired_refused(&self) {}
    /// A replication position: this node's own as read (`own`), or a
    /// peer's as its message carried it.
    fn position(&self, _node: &NodeId, _p: core::Position, _own: bool) {}
    /// A read of this node's position succeeded or failed.
    fn position_read(&self, _ok: bool) {}
}

pub struct Driver {
    node: Node,
    /// Which messages may leave, and when (the persist-then-send contract).
    outbox: Outbox,
    state: Arc<StateFile>,
    identity: Identity,
    transport: Option<Transport>,
    inbound: mpsc::Receiver<Envelope>,
    admin: mpsc::Receiver<AdminCall>,
    view: watch::Sender<LeaderView>,
    observer: Arc<dyn Observer>,
    wake_at: Nanos,
    /// Set after a failed write: when to try again.
    retry_persist_at: Option<Instant>,
    /// Results of the local health check, if one is configured.
    health: Option<mpsc::Receiver<bool>>,
    /// Managed groups: the desired sets read from `--peers-file`, the
    /// first of them fed at start, and where the membership is published.
    desired: Option<(mpsc::Receiver<Desired>, Desired)>,
    membership: Option<watch::Sender<Option<MembershipView>>>,
    /// The newest desired set read and not yet fed: it keeps fewer than a
    /// majority of the voters of the configuration this node holds. It is
    /// checked again whenever that configuration changes (the node's own
    /// may be older than the group's), and refused at most once per
    /// (generation, configuration) in the log.
    wanted: Option<Desired>,
    refused: Option<(u64, Option<(core::Term, u64)>)>,
    /// The incarnation the transport's hellos name.
    announced: Option<core::Incarnation>,
    /// What each peer's hello said it is (membership rule 11), and what
    /// this node's hellos say it is.
    hellos: Option<mpsc::UnboundedReceiver<(NodeId, PeerKind)>>,
    standing: Standing,
    /// Replication positions: the reads of the local database's position,
    /// and where the upstream it may take writes from is published.
    readings: Option<mpsc::Receiver<Reading>>,
    upstream: Option<watch::Sender<Upstream>>,
}

impl Driver {
    /// `initial` is what the state file held (None for a new node).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: core::Config,
        initial: Option<HardState>,
        identity: Identity,
        state: StateFile,
        transport: Option<Transport>,
        inbound: mpsc::Receiver<Envelope>,
        admin: mpsc::Receiver<AdminCall>,
        observer: Arc<dyn Observer>,
        rng_seed: u64,
    ) -> Result<(Driver, watch::Receiver<LeaderView>), core::ConfigError> {
        let node = Node::new(cfg, initial, boottime_now(), rng_seed)?;
        let announced = node.incarnation();
        let (view, view_rx) = watch::channel(node.view());
        let driver = Driver {
            node,
            outbox: Outbox::new(),
            state: Arc::new(state),
            identity,
            transport,
            inbound,
            admin,
            view,
            observer,
            wake_at: Nanos::ZERO,
            retry_persist_at: None,
            health: None,
            desired: None,
            membership: None,
            wanted: None,
            refused: None,
            announced,
            hellos: None,
            standing: Standing::Static,
            readings: None,
            upstream: None,
        };
        Ok((driver, view_rx))
    }

    /// A managed group: feeds the desired set read at start, then each one
    /// `updates` carries, and publishes the membership after every step.
    pub fn with_desired(
        mut self,
        first: Desired,
        updates: mpsc::Receiver<Desired>,
    ) -> (Self, watch::Receiver<Option<MembershipView>>) {
        let (tx, rx) = watch::channel(self.node.membership(boottime_now()));
        self.desired = Some((updates, first));
        self.membership = Some(tx);
        (self, rx)
    }

    /// Feeds what each peer's hello said it is to the node, and keeps
    /// this node's own standing, `standing` at start, in its hellos.
    pub fn with_hellos(mut self, hellos: mpsc::UnboundedReceiver<(NodeId, PeerKind)>, standing: Standing) -> Self {
        self.hellos = Some(hellos);
        self.standing = standing;
        self
    }

    /// Replication positions: feeds each reading to the node, and publishes
    /// after every step which upstream the local database may take writes
    /// from (the fence, `Node::replication_source`).
    pub fn with_positions(mut self, readings: mpsc::Receiver<Reading>) -> (Self, watch::Receiver<Upstream>) {
        let (tx, rx) = watch::channel(Upstream { role: "none", ..Upstream::default() });
        self.readings = Some(readings);
        self.upstream = Some(tx);
        (self, rx)
    }

    /// Feeds the results of a health check. Until the first result the
    /// node counts as unhealthy: it must not win an election at boot with
    /// a local application that is down.
    pub fn with_health(mut self, health: mpsc::Receiver<bool>) -> Self {
        self.health = Some(health);
        self
    }

    /// Runs until `shutdown` fires or every input channel closes.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut health = self.health.take();
        if health.is_some() {
            self.step(Input::Health(false)).await;
        }
        let mut desired = match self.desired.take() {
            Some((updates, first)) => {
                self.desire(first).await;
                if self.wanted.is_some() {
                    // Refused at start: until a set passes, the group is
                    // wanted as it is (the held configuration's names, at
                    // its generation), never as the configured names.
                    if let Some(c) = self.node.configuration() {
                        let names = c.voters.iter().map(|v| v.name.clone()).collect();
                        let generation = c.generation;
                        self.step(Input::Desired { names, generation }).await;
                    }
                }
                Some(updates)
            }
            None => None,
        };
        self.step(Input::Tick).await;
        let (mut inbound_open, mut admin_open) = (true, true);
        let mut hellos = self.hellos.take();
        let mut readings = self.readings.take();
        loop {
            let wake = self.wake_instant();
            tokio::select! {
                m = self.inbound.recv(), if inbound_open => match m {
                    Some(m) => {
                        if let Some(p) = m.position {
                            self.observer.position(&m.from, p, false);
                        }
                        self.step(Input::Message(m)).await;
                    }
                    None => inbound_open = false,
                },
                call = self.admin.recv(), if admin_open => match call {
                    // The caller gave up (the API's deadline passed): do not
                    // act on a request nobody waits for any more.
                    Some((_, reply)) if reply.is_closed() => {}
                    Some((req, reply)) => {
                        let answer = self.step(Input::Admin(req)).await;
                        let _ = reply.send(answer.unwrap_or(Err(AdminError::NotLeader(None))));
                    }
                    None => admin_open = false,
                },
                h = next_health(&mut health), if health.is_some() => match h {
                    Some(h) => { self.step(Input::Health(h)).await; }
                    None => health = None,
                },
                p = next_hello(&mut hellos), if hellos.is_some() => match p {
                    Some((name, kind)) => { self.step(Input::Peer { name, kind }).await; }
                    None => hellos = None,
                },
                r = next_reading(&mut readings), if readings.is_some() => match r {
                    Some(r) => self.read(r).await,
                    None => readings = None,
                },
                d = next_desired(&mut desired), if desired.is_some() => match d {
                    Some(d) => self.desire(d).await,
                    None => desired = None,
                },
                _ = tokio::time::sleep_until(wake) => self.on_timer().await,
                _ = shutdown.changed() => break,
            }
        }
    }

    async fn on_timer(&mut self) {
        if self.retry_persist_at.is_some_and(|at| at <= Instant::now()) {
            self.retry_persist_at = None;
            if let Some(hs) = self.outbox.start_retry() {
                self.write(hs).await;
            }
        } else {
            self.step(Input::Tick).await;
        }
    }

    /// The tokio instant of the next timer: the node's wake-up or a retry.
    fn wake_instant(&self) -> Instant {
        let now = boottime_now();
        let until_wake = if self.wake_at == Nanos::NEVER { Duration::from_secs(3600) } else { self.wake_at.since(now) };
        let wake = Instant::now() + until_wake;
        self.retry_persist_at.map_or(wake, |r| r.min(wake))
    }

    /// A desired set read: its addresses join the transport's book, and
    /// the node reconciles toward its names once it passes the majority
    /// check ([`Driver::offer`]).
    async fn desire(&mut self, d: Desired) {
        if let Some(t) = &mut self.transport {
            t.add_peers(&d.peers);
        }
        self.wanted = Some(d);
        self.refused = None;
        self.offer().await;
    }

    /// Feeds the wanted desired set if it keeps a majority of the voters of
    /// the configuration this node holds; otherwise logs and counts the
    /// refusal once for this configuration, and keeps it for later.
    async fn offer(&mut self) {
        let Some(d) = self.wanted.clone() else { return };
        let stamp = self.node.configuration().map(|c| c.stamp());
        if let Some(Err(e)) = self.node.configuration().map(|c| crate::desired::check_against(&d, c)) {
            if self.refused != Some((d.generation, stamp)) {
                self.refused = Some((d.generation, stamp));
                tracing::error!(
                    generation = d.generation,
                    "refused a desired set: it {e}; keeping the one read before until this node's configuration \
                     allows it"
                );
                self.observer.desired_refused();
            }
            return;
        }
        self.wanted = None;
        let names = d.peers.into_keys().collect();
        self.step(Input::Desired { names, generation: d.generation }).await;
    }

    /// A reading of the local database's position.
    async fn read(&mut self, r: Reading) {
        self.observer.position_read(r.position.is_some());
        if let Some(p) = r.position {
            let me = self.identity.node_id.clone();
            self.observer.position(&me, p, true);
        }
        self.step(Input::Position { position: r.position, read_at: r.read_at }).await;
    }

    /// Which database the local one may take writes from now: its own
    /// writes while this node holds the lease, the leader's while this node
    /// is promised to it, none otherwise.
    fn publish_upstream(&self) {
        let Some(tx) = &self.upstream else { return };
        let now = boottime_now();
        let v = self.view.borrow();
        let next = if v.is_leader(now) {
            Upstream {
                role: "leader",
                leader_id: Some(v.node_id.to_string()),
                address: v.leader_address.clone(),
                token: v.fencing_token.map(|t| t.0),
            }
        } else {
            match self.node.replication_source(now) {
                Some((id, _)) if v.leader_id.as_ref() == Some(&id) => Upstream {
                    role: "follower",
                    leader_id: Some(id.to_string()),
                    address: v.leader_address.clone(),
                    token: v.fencing_token.map(|t| t.0),
                },
                _ => Upstream { role: "none", ..Upstream::default() },
            }
        };
        tx.send_if_modified(|old| {
            let changed = *old != next;
            *old = next;
            changed
        });
    }

    /// Feeds one input and carries out everything that follows from it.
    async fn step(&mut self, input: Input) -> Option<Result<(), AdminError>> {
        if self.membership.is_some() {
            // Genesis reads the wall clock (its floor); the core reads none.
            let micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
            self.node.observe_wall_clock(micros);
        }
        let out = self.node.step(boottime_now(), input);
        let answer = out.admin.clone();
        self.carry_out(out).await;
        answer
    }

    /// The driver contract of `core::Outputs`, in its order; the outbox
    /// decides which messages leave now and which wait for a write.
    async fn carry_out(&mut self, mut out: Outputs) {
        for r in &out.rejected {
            self.observer.rejected(r.reason.as_str());
        }
        for e in &out.events {
            self.observer.event(e);
        }
        if let Some(m) = &self.membership {
            let now = self.node.membership(boottime_now());
            m.send_if_modified(|old| {
                let changed = *old != now;
                *old = now;
                changed
            });
        }
        if let Some(view) = out.view.take() {
            self.view.send_replace(view);
        }
        let dispatch = self.outbox.take(boottime_now(), &mut out);
        if dispatch.orphaned > 0 {
            tracing::error!(messages = dispatch.orphaned, "dropped messages that waited for no write (a core bug)");
        }
        for Held { msg, .. } in dispatch.send {
            self.send(msg);
        }
        self.wake_at = out.wake_at;
        if self.upstream.is_some() {
            self.publish_upstream();
            // The fence must follow the end of a promise or a lease at once,
            // not at the node's next timer.
            let now = boottime_now();
            let v = self.view.borrow();
            let ends = [Some(v.promise_until), v.lease_until].into_iter().flatten().filter(|t| *t > now).min();
            if let Some(end) = ends {
                self.wake_at = self.wake_at.min(end);
            }
        }
        if let Some(hs) = dispatch.write {
            Box::pin(self.write(hs)).await;
        }
    }

    /// Writes `hs` durably, then sends what waited for it and tells the node.
    /// Writes run one at a time: the loop waits for each.
    async fn write(&mut self, hs: HardState) {
        let (state, identity) = (self.state.clone(), self.identity.clone());
        let written = tokio::task::spawn_blocking(move || state.store(&identity, &hs)).await;
        match written {
            Ok(Ok(fsync)) => {
                // Read before the held messages leave (the core's contract:
                // a vote round's lease may count from this instant).
                let persisted_at = boottime_now();
                self.observer.fsync(fsync.as_secs_f64());
                let Some(done) = self.outbox.written() else { return };
                for Held { msg, .. } in done.send {
                    self.send(msg);
                }
                let out = self.node.step(persisted_at, Input::Persisted(done.state));
                // A renewed incarnation is the node's once it is durable:
                // new connections' hellos name it from then on.
                let now = self.node.incarnation();
                if now != self.announced {
                    if let (Some(t), Some(inc)) = (&self.transport, now) {
                        t.set_incarnation(inc);
                    }
                    self.announced = now;
                }
                // A node that converted (rule 11) or holds its first
                // configuration says so in its hellos from now on.
                let standing = match (now, self.node.configuration()) {
                    (Some(_), Some(_)) => Standing::Holding,
                    (Some(_), None) => Standing::Blank,
                    (None, _) => self.standing,
                };
                if standing != self.standing {
                    if let Some(t) = &self.transport {
                        t.set_standing(standing);
                    }
                    self.standing = standing;
                }
                Box::pin(self.carry_out(out)).await;
                // A newer configuration may allow a desired set refused
                // against the older one.
                if self.wanted.is_some()
                    && self.refused.map(|(_, s)| s) != Some(self.node.configuration().map(|c| c.stamp()))
                {
                    Box::pin(self.offer()).await;
                }
            }
            _ => {
                if self.outbox.failed().is_some_and(|f| f.retry) {
                    self.retry_persist_at = Some(Instant::now() + PERSIST_RETRY);
                }
                let out = self.node.step(boottime_now(), Input::PersistFailed);
                Box::pin(self.carry_out(out)).await;
            }
        }
    }

    fn send(&self, m: Envelope) {
        if let Some(t) = &self.transport {
            t.send(m);
        }
    }
}

async fn next_hello(rx: &mut Option<mpsc::UnboundedReceiver<(NodeId, PeerKind)>>) -> Option<(NodeId, PeerKind)> {
    match rx {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

async fn next_reading(rx: &mut Option<mpsc::Receiver<Reading>>) -> Option<Reading> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_desired(rx: &mut Option<mpsc::Receiver<Desired>>) -> Option<Desired> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_health(rx: &mut Option<mpsc::Receiver<bool>>) -> Option<bool> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{NodeId, Term};
    use std::collections::BTreeSet;
    use std::path::Path;

    struct Quiet;
    impl Observer for Quiet {
        fn fsync(&self, _: f64) {}
        fn event(&self, _: &Event) {}
        fn rejected(&self, _: &'static str) {}
    }

    fn config() -> core::Config {
        core::Config {
            cluster_id: "t".into(),
            node_id: NodeId::new("solo"),
            voters: BTreeSet::from([NodeId::new("solo")]),
            lease_ttl: Duration::from_millis(300),
            heartbeat_interval: Duration::from_millis(60),
            max_clock_drift: 0.01,
            priority: 1,
            advertise: "solo:5432".into(),
            mode: core::Mode::Static,
            force_new_group: None,
            upgrading: None,
            positions: false,
            broken: core::Broken::default(),
        }
    }

    /// Starts a single-node driver on `dir`, waits until it leads, stops it,
    /// and returns the token it led with.
    async fn lead_once(dir: &Path) -> Term {
        let state = StateFile::open(dir).expect("open");
        let identity = Identity {
            cluster_id: "t".into(),
            node_id: NodeId::new("solo"),
            voters: config().voters.clone(),
            incarnation: None,
        };
        let claimed = state.claim(&identity, false).expect("claim");
        let (_in_tx, in_rx) = mpsc::channel(1);
        let (_admin_tx, admin_rx) = mpsc::channel(1);
        let (driver, mut view) =
            Driver::new(config(), claimed.initial, claimed.identity, state, None, in_rx, admin_rx, Arc::new(Quiet), 7)
                .expect("driver");
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(driver.run(stop_rx));
        let deadline = Instant::now() + Duration::from_secs(5);
        let token = loop {
            let v = view.borrow_and_update().clone();
            if v.is_leader(boottime_now()) {
                break v.fencing_token.expect("a leader has a token");
            }
            assert!(Instant::now() < deadline, "no leader in 5s: {v:?}");
            let _ = tokio::time::timeout(Duration::from_millis(100), view.changed()).await;
        };
        stop_tx.send_replace(true);
        task.await.expect("driver stopped");
        token
    }

    #[tokio::test]
    async fn a_single_node_group_leads_and_its_token_grows_across_restarts() {
        let dir = std::env::temp_dir().join(format!("leasehold-driver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = lead_once(&dir).await;
        let second = lead_once(&dir).await;
        let third = lead_once(&dir).await;
        assert!(first < second && second < third, "{first:?} {second:?} {third:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
