//! The etcd backend (DESIGN §3, `--backend etcd`): the same view, API and
//! fencing tokens, with etcd's election API as the consensus group.
//!
//! How a node leads:
//! 1. It grants itself an etcd lease of `--lease-ttl` rounded up to whole
//!    seconds, keeps it alive every TTL/3, and campaigns with it in the
//!    election `--election`. The campaign puts the key `<election>/<lease>`
//!    and returns once every key created before it is gone.
//! 2. When the campaign returns, it reads its key back: a campaign can return
//!    after its lease expired and its key vanished (etcd-io/etcd#19597).
//! 3. The fencing token is the key's create revision. etcd's revisions only
//!    grow, except when etcd is restored from an older snapshot; so the node
//!    keeps the highest token it has seen in `<data-dir>/etcd-state` and
//!    refuses, loudly, to lead with one that is not higher. It writes the new
//!    token there before it reports itself leader.
//! 4. Its lease ends at `sent + ttl * (1 - rho) / (1 + rho)`, where `sent` is
//!    when the newest answered keep-alive (or the grant) was sent and `ttl`
//!    the TTL etcd's answer granted. etcd counts the TTL from a later
//!    instant (when it handles the request) and only ever extends leases, so
//!    the node stops reporting itself leader before etcd can expire its key
//!    and let another candidate's campaign return, even if the two clocks
//!    drift apart by rho. A keep-alive that is not answered within TTL/3 is
//!    given up with its stream, so that a late answer is never credited to a
//!    later send.
//! 5. If etcd does not answer, the local lease lapses: the node reports
//!    not-leader and keeps retrying. If etcd then renews the same lease, the
//!    key never expired and nobody else could have won: the node reads its
//!    key back and leads again with the same token. If the lease is gone it
//!    starts over with a new lease, a new key and a higher token.
//!
//! Every node, candidate or not, observes the election (and asks for the
//! leader every TTL/3, because an observation never says "no leader") to
//! know the current leader's id, address and token.
//!
//! The rooms: [`machine`] makes every decision above as a pure state
//! machine; [`rpc`] holds the requests and the keep-alive and observation
//! tasks; [`tokens`] the token file. This module is the shell between them:
//! one `select!` loop that feeds the machine what happens and carries out
//! the effects it returns.
//!
//! Owns: the etcd client, this node's campaign task, key and keep-alive
//! task. Must not: report itself leader for any instant at which etcd could
//! have let another candidate win (the machine decides; the shell publishes
//! its view before any request that hands over).

pub mod machine;
pub mod rpc;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, LeaderKey};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use self::machine::{check_transfer, Effects, Known, Machine, Note, Phase, Renewal, Tick};
use self::rpc::{Candidate, Won, RESIGN_TIMEOUT, RPC_TIMEOUT};
use self::tokens::TokenFile;
pub use self::tokens::TOKEN_FILE;
use crate::backend::{HandOver, Running};
use crate::clock::boottime_now;
use crate::config::{Config, EtcdConfig};
use crate::core::{lease, AdminError, AdminRequest, LeaderView, Nanos, NodeId};
use crate::driver::{AdminCall, Observer};
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "--lease-ttl: etcd granted a {granted}s lease when asked for {asked}s: {asked}s is below this etcd's \
         minimum lease TTL (1.5 x its election timeout, rounded up); use --lease-ttl {granted}s or more"
    )]
    TtlBelowMinimum { asked: i64, granted: i64 },
    #[error("{flag} {path}: {source}")]
    ReadFile { flag: &'static str, path: String, source: std::io::Error },
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// A backend whose token file and TLS files were read, and its view.
pub struct Prepared {
    backend: Backend,
    view: watch::Receiver<LeaderView>,
}

/// Reads the token file (refusing a damaged or foreign one) and the TLS
/// files. Connects to nothing yet.
pub fn prepare(config: &Config, observer: Arc<dyn Observer>) -> Result<Prepared, String> {
    let Some(etcd) = config.etcd.clone() else { return Err("--backend etcd: no etcd settings".into()) };
    let settings = Settings {
        etcd,
        cluster_id: config.node.cluster_id.clone(),
        node_id: config.node.node_id.clone(),
        advertise: config.node.advertise.clone(),
        priority: config.node.priority,
        max_clock_drift: config.node.max_clock_drift,
        data_dir: config.data_dir.clone(),
    };
    let seed = boottime_now().0 ^ u64::from(std::process::id());
    let (backend, view) = Backend::new(settings, observer, seed).map_err(|e| e.to_string())?;
    Ok(Prepared { backend, view })
}

/// Starts the election loop. On stop it resigns and revokes its lease, so
/// that the next candidate wins at once.
pub fn start(config: &Config, p: Prepared, health: Option<mpsc::Receiver<bool>>) -> Running {
    let (admin, admin_rx) = mpsc::channel(16);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move { p.backend.run(admin_rx, health, stop_rx).await.map_err(|e| e.to_string()) });
    Running {
        kind: "etcd",
        view: p.view,
        admin,
        peers: None,
        node_id: config.node.node_id.clone(),
        incarnation: None,
        membership: None,
        positions: None,
        upstream: None,
        lease_ttl: config.node.lease_ttl,
        hand_over: HandOver::ByTheTask(RESIGN_TIMEOUT * 2 + Duration::from_secs(1)),
        task,
        stop,
    }
}

/// Static settings of the backend.
pub struct Settings {
    pub etcd: EtcdConfig,
    pub cluster_id: String,
    pub node_id: NodeId,
    pub advertise: String,
    pub priority: u32,
    pub max_clock_drift: f64,
    pub data_dir: std::path::PathBuf,
}

/// The keep-alive task of one lease, and what it reports.
struct Keeper {
    id: i64,
    renewals: mpsc::Receiver<Renewal>,
    task: JoinHandle<()>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Backend {
    s: Settings,
    value: Vec<u8>,
    options: ConnectOptions,
    tokens: TokenFile,
    machine: Machine,
    view: watch::Sender<LeaderView>,
    observer: Arc<dyn Observer>,
    keeper: Option<Keeper>,
    campaign: Option<JoinHandle<Result<Won, String>>>,
    /// The key this node leads with, kept through a lapse, or just won.
    key: Option<LeaderKey>,
}

impl Backend {
    /// Reads the token file (refusing a damaged or foreign one) and the TLS
    /// files. Connects to nothing yet.
    pub fn new(
        s: Settings,
        observer: Arc<dyn Observer>,
        seed: u64,
    ) -> Result<(Backend, watch::Receiver<LeaderView>), EtcdError> {
        let options = rpc::connect_options(&s.etcd)?;
        let (tokens, highest) = TokenFile::open(&s.data_dir, &s.cluster_id, &s.node_id)?;
        let value = serde_json::to_vec(&Candidate { node_id: s.node_id.to_string(), address: s.advertise.clone() })
            .unwrap_or_default();
        let machine =
            Machine::new(s.node_id.clone(), s.advertise.clone(), s.priority, s.max_clock_drift, highest, true, seed);
        let (view, view_rx) = watch::channel(machine.view());
        let backend =
            Backend { s, value, options, tokens, machine, view, observer, keeper: None, campaign: None, key: None };
        Ok((backend, view_rx))
    }

    fn ttl_secs(&self) -> i64 {
        self.s.etcd.lease_ttl_secs
    }

    /// Runs until `shutdown` fires; then resigns and revokes its lease so that
    /// the next candidate wins at once. An error is a misconfiguration found
    /// at run time (a TTL below etcd's minimum).
    pub async fn run(
        mut self,
        mut admin: mpsc::Receiver<AdminCall>,
        mut health: Option<mpsc::Receiver<bool>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), EtcdError> {
        // With a health check, not healthy until its first result.
        let _ = self.machine.health(boottime_now(), health.is_none());
        let local =
            lease::leader_lease(Duration::from_secs(self.ttl_secs() as u64), lease::drift_ppm(self.s.max_clock_drift));
        info!(
            election = %self.s.etcd.election,
            endpoints = %self.s.etcd.endpoints.join(","),
            lease_ttl_secs = self.ttl_secs(),
            local_lease_ms = local.as_millis() as u64,
            "etcd leases have whole-second TTLs: asking for {}s (--lease-ttl rounded up); this node reports itself \
             leader for at most {}ms after each answered keep-alive",
            self.ttl_secs(),
            local.as_millis()
        );
        self.publish();
        let Some(client) = self.connect(&mut admin, &mut shutdown).await else {
            return Ok(());
        };
        let (known_tx, mut known_rx) = watch::channel(None);
        let poll = Duration::from_secs(self.ttl_secs() as u64) / 3;
        let watcher = tokio::spawn(rpc::observe(client.clone(), self.s.etcd.election.clone(), poll, known_tx));
        let result = self.main_loop(&client, &mut admin, &mut health, &mut shutdown, &mut known_rx).await;
        watcher.abort();
        self.leave(&client).await;
        result
    }

    /// Builds the client; with etcd auth this already talks to etcd, so it
    /// retries (answering admin calls meanwhile) until it works.
    async fn connect(
        &mut self,
        admin: &mut mpsc::Receiver<AdminCall>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Client> {
        loop {
            let attempt = tokio::time::timeout(
                RPC_TIMEOUT,
                Client::connect(self.s.etcd.endpoints.clone(), Some(self.options.clone())),
            );
            tokio::select! {
                r = attempt => match r {
                    Ok(Ok(c)) => return Some(c),
                    Ok(Err(e)) => self.failed(&format!("connecting to etcd: {e}")),
                    Err(_) => self.failed("connecting to etcd: no answer"),
                },
                _ = shutdown.changed() => return None,
            }
            let wait = tokio::time::sleep_until(to_instant(self.machine.retry_at()));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    Some((_, reply)) = admin.recv() => {
                        let _ = reply.send(Err(AdminError::Unavailable("not connected to etcd yet".into())));
                    }
                    _ = shutdown.changed() => return None,
                }
            }
        }
    }

    async fn main_loop(
        &mut self,
        client: &Client,
        admin: &mut mpsc::Receiver<AdminCall>,
        health: &mut Option<mpsc::Receiver<bool>>,
        shutdown: &mut watch::Receiver<bool>,
        known_rx: &mut watch::Receiver<Option<Known>>,
    ) -> Result<(), EtcdError> {
        let mut admin_open = true;
        loop {
            let timer = self.machine.next_timer().map(to_instant);
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                call = admin.recv(), if admin_open => match call {
                    Some((_, reply)) if reply.is_closed() => {}
                    Some((req, reply)) => {
                        let answer = self.on_admin(client, req).await;
                        let _ = reply.send(answer);
                    }
                    None => admin_open = false,
                },
                h = next_health(health) => match h {
                    Some(h) => {
                        let e = self.machine.health(boottime_now(), h);
                        self.apply(client, e).await;
                    }
                    None => *health = None,
                },
                r = next_renewal(&mut self.keeper) => {
                    let now = boottime_now();
                    let e = match r {
                        Some(r) => self.machine.renewal(now, r),
                        None => self.machine.lease_gone(now),
                    };
                    self.apply(client, e).await;
                }
                won = campaign_result(&mut self.campaign) => {
                    self.campaign = None;
                    let now = boottime_now();
                    match won {
                        Ok(w) => {
                            self.key = Some(w.key);
                            let e = self.machine.won(now, w.token);
                            self.apply(client, e).await;
                        }
                        Err(e) => {
                            let first = self.machine.campaign_failed(now);
                            log_failure(&format!("campaign: {e}"), first);
                            self.publish();
                        }
                    }
                }
                changed = known_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let known = known_rx.borrow_and_update().clone();
                    let e = self.machine.observed(boottime_now(), known);
                    self.apply(client, e).await;
                }
                _ = sleep_until(timer) => self.on_timer(client).await?,
            }
        }
    }

    async fn on_timer(&mut self, client: &Client) -> Result<(), EtcdError> {
        match self.machine.on_timer(boottime_now()) {
            Tick::Nothing => {}
            Tick::Effects(e) => self.apply(client, e).await,
            Tick::Grant => {
                if let Some((sent_at, id, ttl)) = self.grant(client).await? {
                    let e = self.machine.granted(sent_at, id, ttl);
                    self.apply(client, e).await;
                }
            }
        }
        Ok(())
    }

    /// Grants a lease and starts keeping it alive: (sent at, id, TTL), or
    /// `None` after a failure (retried later).
    async fn grant(&mut self, client: &Client) -> Result<Option<(Nanos, i64, Duration)>, EtcdError> {
        let asked = self.ttl_secs();
        let sent_at = boottime_now();
        let mut c = client.clone();
        let granted = match tokio::time::timeout(RPC_TIMEOUT, c.lease_grant(asked, None)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                rpc::note_error(client, &e);
                self.failed(&format!("granting a lease: {e}"));
                return Ok(None);
            }
            Err(_) => {
                self.failed("granting a lease: no answer");
                return Ok(None);
            }
        };
        if granted.ttl() > asked {
            // etcd raised the TTL to its minimum: the lease would outlive
            // what the operator configured. Refuse rather than run slower.
            let mut c = client.clone();
            let _ = tokio::time::timeout(RPC_TIMEOUT, c.lease_revoke(granted.id())).await;
            return Err(EtcdError::TtlBelowMinimum { asked, granted: granted.ttl() });
        }
        if granted.ttl() <= 0 {
            self.failed("granting a lease: etcd granted no TTL");
            return Ok(None);
        }
        let ttl = Duration::from_secs(granted.ttl() as u64);
        let (tx, renewals) = mpsc::channel(8);
        let check_key = format!("{}/{:x}", self.s.etcd.election, granted.id());
        let task = tokio::spawn(rpc::keep_alive(client.clone(), granted.id(), check_key, ttl / 3, tx));
        self.keeper = Some(Keeper { id: granted.id(), renewals, task });
        debug!(lease = granted.id(), ttl_secs = granted.ttl(), "granted an etcd lease");
        Ok(Some((sent_at, granted.id(), ttl)))
    }

    /// Carries out what the machine decided, in order: log lines and events,
    /// then the new view, then the requests (so that a hand-over is never
    /// sent while the view still claims the lease).
    async fn apply(&mut self, client: &Client, e: Effects) {
        for note in &e.notes {
            self.log(note);
        }
        for event in &e.events {
            self.observer.event(event);
        }
        let key = if e.resign { self.key.take() } else { None };
        self.sync_tasks();
        self.publish();
        if let Some(key) = key {
            rpc::resign(client, &key).await;
        }
        if let Some(id) = e.revoke {
            rpc::revoke_later(client, id);
        }
        if let Some(r) = e.record {
            let written = match self.tokens.store(r.token).await {
                Ok(fsync) => {
                    self.observer.fsync(fsync.as_secs_f64());
                    true
                }
                Err(err) if r.then_lead => {
                    error!(error = %err, "cannot write the token file; not leading until a write succeeds");
                    false
                }
                Err(err) => {
                    warn!(error = %err, "cannot write the token file");
                    false
                }
            };
            let next = self.machine.recorded(boottime_now(), r, written);
            Box::pin(self.apply(client, next)).await;
        }
        if let Some(resume) = e.campaign {
            self.start_campaign(client, resume);
        }
        if e.backoff {
            self.machine.back_off(boottime_now());
        }
    }

    /// Campaigns with the lease (or reads back the key kept through a
    /// lapse); the result comes back to the main loop.
    fn start_campaign(&mut self, client: &Client, resume: bool) {
        let Some(lease) = self.machine.lease() else { return };
        let kept = if resume { self.key.take() } else { None };
        let (client, election, value) = (client.clone(), self.s.etcd.election.clone(), self.value.clone());
        self.campaign = Some(tokio::spawn(rpc::win(client, election, value, lease.id, kept)));
    }

    /// Ends the tasks the machine no longer needs: a campaign it left, the
    /// keep-alive of a lease it dropped, a key it no longer holds.
    fn sync_tasks(&mut self) {
        if self.machine.phase() != Phase::Campaigning {
            if let Some(task) = self.campaign.take() {
                // etcd deletes the key of a campaign whose call is
                // cancelled; a key that got through anyway goes with its
                // lease, which is revoked or kept.
                task.abort();
            }
        }
        if self.machine.phase() == Phase::Idle {
            self.key = None;
        }
        if self.keeper.as_ref().is_some_and(|k| self.machine.lease().is_none_or(|l| l.id != k.id)) {
            self.keeper = None;
        }
    }

    async fn on_admin(&mut self, client: &Client, req: AdminRequest) -> Result<(), AdminError> {
        let token = self.machine.may_hand_over(boottime_now(), &req)?;
        if let AdminRequest::TransferTo(target) = &req {
            let others: Vec<NodeId> = rpc::candidates(client, &self.s.etcd.election)
                .await?
                .into_iter()
                .filter(|c| *c != self.s.node_id)
                .collect();
            check_transfer(target, &others, &self.s.etcd.election)?;
            // The listing took a round trip: still leading?
            self.machine.may_hand_over(boottime_now(), &req)?;
        }
        debug!(token, "resigning from the etcd election to hand over");
        let key = self.key.take();
        let e = self.machine.hand_over(token);
        self.apply(client, Effects { resign: false, ..e }).await;
        let resigned = match key {
            Some(key) => rpc::resign(client, &key).await,
            None => false,
        };
        let e = self.machine.handed_over(boottime_now(), resigned);
        self.apply(client, e).await;
        if resigned {
            Ok(())
        } else {
            Err(AdminError::Unavailable(format!(
                "stopped leading, but etcd did not confirm the resignation; the key expires with this node's \
                 lease within {}s",
                self.ttl_secs()
            )))
        }
    }

    /// On shutdown: stop claiming, resign, revoke (bounded waits).
    async fn leave(&mut self, client: &Client) {
        let phase = self.machine.phase();
        let key = self.key.take();
        let e = self.machine.withdraw();
        for event in &e.events {
            self.observer.event(event);
        }
        self.sync_tasks();
        self.publish();
        if let (Phase::Leading { token } | Phase::Lapsed { token }, Some(key)) = (phase, key) {
            info!(token, "shutting down: resigning from the etcd election");
            rpc::resign(client, &key).await;
        }
        if let Some(id) = e.revoke {
            let mut c = client.clone();
            let _ = tokio::time::timeout(RESIGN_TIMEOUT, c.lease_revoke(id)).await;
        }
    }

    /// A request to etcd failed: back off, and say so once per outage.
    fn failed(&mut self, what: &str) {
        let first = self.machine.failed(boottime_now());
        log_failure(what, first);
    }

    fn log(&self, note: &Note) {
        match note {
            Note::TokenRegressed { token, highest } => {
                error!(
                    token,
                    highest_seen = highest,
                    "etcd gave this node a fencing token that is not above one seen before: etcd's revisions went \
                     back (restored from an older snapshot?). Refusing to lead; see docs/etcd.md"
                );
                self.observer.rejected(crate::labels::reason::TOKEN_REGRESSED);
            }
            Note::LeaseLapsed { token } => {
                debug!(token, "etcd did not answer a keep-alive in time; not leading until it does")
            }
            Note::LeadingAgain { token } => debug!(token, "etcd renewed the lease: leading again with the same token"),
            Note::KeyGone { token } => debug!(token, "this node's election key is gone from etcd"),
            Note::LeaseGone { id, token: Some(token) } => {
                debug!(token, lease = id, "etcd says this node's lease is gone")
            }
            Note::LeaseGone { id, token: None } => {
                info!(lease = id, "etcd lease expired; starting over with a new one")
            }
            Note::NewerKeyLeads { token, newer, leader } => {
                debug!(token, newer, leader = %leader, "another key leads the election")
            }
            Note::Answering => info!("etcd answers again"),
            Note::Unconfirmed(why) => warn!(error = %why, "not crediting an etcd keep-alive answer"),
            Note::Unhealthy => info!("health check fails: leaving the etcd election"),
            Note::Failed { what, first } => log_failure(what, *first),
        }
    }

    fn publish(&self) {
        let view = self.machine.view();
        self.view.send_if_modified(|v| {
            let changed = *v != view;
            *v = view;
            changed
        });
    }
}

fn log_failure(what: &str, first: bool) {
    if first {
        warn!(error = what, "etcd request failed; retrying with backoff");
    } else {
        debug!(error = what, "etcd request failed");
    }
}

async fn next_health(rx: &mut Option<mpsc::Receiver<bool>>) -> Option<bool> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_renewal(keeper: &mut Option<Keeper>) -> Option<Renewal> {
    match keeper {
        Some(k) => k.renewals.recv().await,
        None => std::future::pending().await,
    }
}

async fn campaign_result(task: &mut Option<JoinHandle<Result<Won, String>>>) -> Result<Won, String> {
    match task {
        Some(task) => match task.await {
            Ok(r) => r,
            Err(e) => Err(format!("campaign task: {e}")),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The tokio instant at which the boot clock reads `at`.
fn to_instant(at: Nanos) -> Instant {
    Instant::now() + at.since(boottime_now())
}
