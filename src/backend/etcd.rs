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
//! Owns: the etcd client, this node's lease, campaign and key, the token
//! file. Must not: report itself leader for any instant at which etcd could
//! have let another candidate win.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity as TlsIdentity, KeyValue, LeaderKey, ResignOptions,
    SortOrder, SortTarget, TlsOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::clock::boottime_now;
use crate::config::{EtcdConfig, Secret};
use crate::core::rng::SplitMix64;
use crate::core::{
    lease, AdminError, AdminRequest, Event, HardState, LeaderView, Nanos, NodeId, Role, StepDownReason, Term,
};
use crate::driver::{AdminCall, Observer};
use crate::storage::{Identity, StateFile, StorageError};

/// The file under `--data-dir` that keeps the highest token seen.
pub const TOKEN_FILE: &str = "etcd-state";
/// The longest any single etcd request other than a campaign may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a shutting-down node waits for etcd to resign its key.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

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

/// What a candidate's key holds, so that every node can name the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub node_id: String,
    pub address: String,
}

/// The current leader of the election, as observed.
#[derive(Clone, Debug, PartialEq)]
struct Known {
    node_id: NodeId,
    address: Option<String>,
    token: u64,
    lease: i64,
}

impl Known {
    fn from_kv(kv: &KeyValue) -> Option<Known> {
        let token = u64::try_from(kv.create_revision()).ok().filter(|t| *t > 0)?;
        let (node_id, address) = match serde_json::from_slice::<Candidate>(kv.value()) {
            Ok(c) => (NodeId::new(c.node_id), Some(c.address)),
            // Not a leasehold value: name the leader by what its key holds.
            Err(_) => (NodeId::new(String::from_utf8_lossy(kv.value()).into_owned()), None),
        };
        Some(Known { node_id, address, token, lease: kv.lease() })
    }
}

/// Reads the TLS files and the password and builds the client options.
/// Fails on an unreadable file: a start-up refusal.
pub fn connect_options(cfg: &EtcdConfig) -> Result<ConnectOptions, EtcdError> {
    let read = |flag, path: &Path| {
        std::fs::read(path).map_err(|source| EtcdError::ReadFile { flag, path: path.display().to_string(), source })
    };
    let mut opts = ConnectOptions::new().with_connect_timeout(RPC_TIMEOUT);
    if let Some(ca) = &cfg.ca {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("--etcd-ca", ca)?));
        if let Some((cert, key)) = &cfg.identity {
            tls = tls.identity(TlsIdentity::from_pem(read("--etcd-cert", cert)?, read("--etcd-key", key)?));
        }
        opts = opts.with_tls(tls);
    }
    if let Some(user) = &cfg.user {
        let password = match &cfg.password {
            Some(Secret::File(path)) => {
                let bytes = read("--etcd-password-file", path)?;
                String::from_utf8_lossy(&bytes).trim_end_matches(['\r', '\n']).to_string()
            }
            Some(Secret::Value(v)) => v.clone(),
            None => String::new(),
        };
        opts = opts.with_user(user.clone(), password);
    }
    Ok(opts)
}

/// This node's lease at etcd and what it proves.
struct Session {
    id: i64,
    /// The TTL etcd granted.
    ttl: Duration,
    /// The local lease: this node may report itself leader until then.
    valid_until: Nanos,
    renewals: mpsc::Receiver<Renewal>,
    keeper: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// What the keep-alive task reports.
#[derive(Debug)]
enum Renewal {
    /// etcd answered the keep-alive sent at `sent_at` with this TTL; and
    /// whether this lease's election key existed just after.
    Extended { sent_at: Nanos, ttl: Duration, key_present: bool },
    /// etcd says the lease no longer exists.
    Gone,
    /// No answer or an error; the task keeps trying.
    Failing(String),
    /// etcd answered, but the answer could not be shown to come from its
    /// real leader: not credited.
    Unconfirmed(String),
}

/// A campaign that returned and was read back.
struct Won {
    key: LeaderKey,
    token: u64,
}

enum Phase {
    /// Not in the election (priority 0, unhealthy, or waiting to retry).
    Idle,
    /// Campaigning, or reading back a key before leading with it.
    Campaigning(JoinHandle<Result<Won, String>>),
    Leading {
        key: LeaderKey,
        token: u64,
    },
    /// The local lease ran out while leading; the key may still be alive.
    Lapsed {
        key: LeaderKey,
        token: u64,
    },
}

/// The highest token seen, durably.
struct Tokens {
    file: Arc<StateFile>,
    identity: Identity,
    highest: u64,
    ok: bool,
}

impl Tokens {
    /// Writes `token` if it is higher than any seen; returns the fsync time.
    async fn record(&mut self, token: u64) -> Result<Option<Duration>, String> {
        if token <= self.highest {
            return Ok(None);
        }
        let (file, identity) = (self.file.clone(), self.identity.clone());
        let hs = HardState { term: Term(token), voted_for: None };
        let written = tokio::task::spawn_blocking(move || file.store(&identity, &hs)).await;
        match written {
            Ok(Ok(fsync)) => {
                self.highest = token;
                self.ok = true;
                Ok(Some(fsync))
            }
            Ok(Err(e)) => {
                self.ok = false;
                Err(e.to_string())
            }
            Err(e) => {
                self.ok = false;
                Err(e.to_string())
            }
        }
    }
}

/// A backend whose token file and TLS files were read, and its view.
pub struct Prepared {
    backend: Backend,
    view: watch::Receiver<LeaderView>,
}

/// Reads the token file (refusing a damaged or foreign one) and the TLS
/// files. Connects to nothing yet.
pub fn prepare(config: &crate::config::Config, observer: Arc<dyn Observer>) -> Result<Prepared, String> {
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
pub fn start(
    config: &crate::config::Config,
    p: Prepared,
    health: Option<mpsc::Receiver<bool>>,
) -> crate::backend::Running {
    let (admin, admin_rx) = mpsc::channel(16);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move { p.backend.run(admin_rx, health, stop_rx).await.map_err(|e| e.to_string()) });
    crate::backend::Running {
        kind: "etcd",
        view: p.view,
        admin,
        peers: None,
        node_id: config.node.node_id.clone(),
        lease_ttl: config.node.lease_ttl,
        hand_over: crate::backend::HandOver::ByTheTask(RESIGN_TIMEOUT * 2 + Duration::from_secs(1)),
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

pub struct Backend {
    s: Settings,
    value: Vec<u8>,
    drift_ppm: u64,
    options: ConnectOptions,
    tokens: Tokens,
    view: watch::Sender<LeaderView>,
    observer: Arc<dyn Observer>,
    rng: SplitMix64,
    // What changes as it runs:
    session: Option<Session>,
    phase: Phase,
    /// The token this node last led with (it may lead with it again after a
    /// lapse, if its lease never expired at etcd).
    last_led: Option<u64>,
    known: Option<Known>,
    healthy: bool,
    /// When to try to join the election again, after a failure.
    retry_at: Instant,
    failures: u32,
    /// etcd's answers are failing; logged once per outage.
    failing: bool,
}

impl Backend {
    /// Reads the token file (refusing a damaged or foreign one) and the TLS
    /// files. Connects to nothing yet.
    pub fn new(
        s: Settings,
        observer: Arc<dyn Observer>,
        seed: u64,
    ) -> Result<(Backend, watch::Receiver<LeaderView>), EtcdError> {
        let options = connect_options(&s.etcd)?;
        let file = StateFile::open_named(&s.data_dir, TOKEN_FILE)?;
        let identity = Identity {
            cluster_id: s.cluster_id.clone(),
            node_id: s.node_id.clone(),
            voters: [s.node_id.clone()].into(),
        };
        let highest = file.load(&identity, false)?.map_or(0, |hs| hs.term.0);
        let value = serde_json::to_vec(&Candidate { node_id: s.node_id.to_string(), address: s.advertise.clone() })
            .unwrap_or_default();
        let drift_ppm = lease::drift_ppm(s.max_clock_drift);
        let tokens = Tokens { file: Arc::new(file), identity, highest, ok: true };
        let (view, view_rx) = watch::channel(follower_view(&s.node_id, highest, true, true));
        let backend = Backend {
            s,
            value,
            drift_ppm,
            options,
            tokens,
            view,
            observer,
            rng: SplitMix64::new(seed),
            session: None,
            phase: Phase::Idle,
            last_led: None,
            known: None,
            healthy: true,
            retry_at: Instant::now(),
            failures: 0,
            failing: false,
        };
        Ok((backend, view_rx))
    }

    fn ttl_secs(&self) -> i64 {
        self.s.etcd.lease_ttl_secs
    }

    /// Replaces the phase; a campaign under way is abandoned (etcd deletes
    /// the key of a campaign whose call is cancelled; a key that got through
    /// anyway goes with its lease, which the caller revokes or keeps).
    fn set_phase(&mut self, next: Phase) -> Phase {
        let old = std::mem::replace(&mut self.phase, next);
        if let Phase::Campaigning(task) = &old {
            task.abort();
        }
        old
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
        self.healthy = health.is_none();
        let local = lease::leader_lease(Duration::from_secs(self.ttl_secs() as u64), self.drift_ppm);
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
        let watcher = tokio::spawn(observe(client.clone(), self.s.etcd.election.clone(), poll, known_tx));
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
                    Ok(Err(e)) => self.note_failure(&format!("connecting to etcd: {e}")),
                    Err(_) => self.note_failure("connecting to etcd: no answer"),
                },
                _ = shutdown.changed() => return None,
            }
            let wait = tokio::time::sleep_until(self.retry_at);
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
            let timer = self.next_timer();
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
                    Some(h) => self.on_health(client, h).await,
                    None => *health = None,
                },
                r = next_renewal(&mut self.session) => self.on_renewal(client, r),
                won = campaign_result(&mut self.phase) => self.on_campaign(client, won).await,
                changed = known_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let known = known_rx.borrow_and_update().clone();
                    self.on_known(client, known).await;
                }
                _ = sleep_until(timer) => self.on_timer(client).await?,
            }
        }
    }

    /// The next instant something must happen without an outside event:
    /// the local lease's end while leading, or the next attempt to join.
    fn next_timer(&self) -> Option<Instant> {
        match (&self.phase, &self.session) {
            (Phase::Leading { .. }, Some(s)) => Some(to_instant(s.valid_until)),
            (Phase::Idle, _) if self.wants_to_lead() => Some(self.retry_at),
            _ => None,
        }
    }

    fn wants_to_lead(&self) -> bool {
        self.s.priority > 0 && self.healthy
    }

    async fn on_timer(&mut self, client: &Client) -> Result<(), EtcdError> {
        if let (Phase::Leading { .. }, Some(s)) = (&self.phase, &self.session) {
            if boottime_now() >= s.valid_until {
                if let Phase::Leading { key, token } = self.set_phase(Phase::Idle) {
                    debug!(token, "etcd did not answer a keep-alive in time; not leading until it does");
                    self.observer.event(&Event::SteppedDown { term: Term(token), reason: StepDownReason::LeaseLapsed });
                    self.phase = Phase::Lapsed { key, token };
                }
                self.publish();
            }
            return Ok(());
        }
        if !matches!(self.phase, Phase::Idle) || !self.wants_to_lead() || Instant::now() < self.retry_at {
            return Ok(());
        }
        if self.session.is_none() {
            self.session = match self.grant(client).await? {
                Some(s) => Some(s),
                None => return Ok(()),
            };
        }
        self.campaign(client, None);
        Ok(())
    }

    /// Grants a lease and starts keeping it alive. `None` after a failure
    /// (retried later).
    async fn grant(&mut self, client: &Client) -> Result<Option<Session>, EtcdError> {
        let asked = self.ttl_secs();
        let sent_at = boottime_now();
        let mut c = client.clone();
        let granted = match tokio::time::timeout(RPC_TIMEOUT, c.lease_grant(asked, None)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.note_error(client, &e);
                self.note_failure(&format!("granting a lease: {e}"));
                return Ok(None);
            }
            Err(_) => {
                self.note_failure("granting a lease: no answer");
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
            self.note_failure("granting a lease: etcd granted no TTL");
            return Ok(None);
        }
        let ttl = Duration::from_secs(granted.ttl() as u64);
        let (tx, renewals) = mpsc::channel(8);
        let check_key = format!("{}/{:x}", self.s.etcd.election, granted.id());
        let keeper = tokio::spawn(keep_alive(client.clone(), granted.id(), check_key, ttl / 3, tx));
        let valid_until = sent_at.plus(lease::leader_lease(ttl, self.drift_ppm));
        debug!(lease = granted.id(), ttl_secs = granted.ttl(), "granted an etcd lease");
        Ok(Some(Session { id: granted.id(), ttl, valid_until, renewals, keeper }))
    }

    /// Campaigns with the session's lease (or reads back `resume`, the key
    /// this node led with before its local lease lapsed).
    fn campaign(&mut self, client: &Client, resume: Option<LeaderKey>) {
        let Some(session) = &self.session else { return };
        if resume.is_none() {
            self.observer.event(&Event::ElectionStarted { term: Term(self.tokens.highest), transfer: false });
        }
        let task =
            tokio::spawn(win(client.clone(), self.s.etcd.election.clone(), self.value.clone(), session.id, resume));
        self.set_phase(Phase::Campaigning(task));
        self.publish();
    }

    async fn on_campaign(&mut self, client: &Client, won: Result<Won, String>) {
        self.phase = Phase::Idle;
        let won = match won {
            Ok(w) => w,
            Err(e) => {
                self.note_failure(&format!("campaign: {e}"));
                self.publish();
                return;
            }
        };
        let token = won.token;
        if token <= self.tokens.highest && self.last_led != Some(token) {
            error!(
                token,
                highest_seen = self.tokens.highest,
                "etcd gave this node a fencing token that is not above one seen before: etcd's revisions went \
                 back (restored from an older snapshot?). Refusing to lead; see docs/etcd.md"
            );
            self.observer.rejected(crate::labels::reason::TOKEN_REGRESSED);
            self.resign(client, &won.key).await;
            self.backoff();
            self.publish();
            return;
        }
        match self.tokens.record(token).await {
            Ok(Some(fsync)) => self.observer.fsync(fsync.as_secs_f64()),
            Ok(None) => {}
            Err(e) => {
                error!(error = %e, "cannot write the token file; not leading until a write succeeds");
                self.observer.event(&Event::StorageFault);
                self.resign(client, &won.key).await;
                self.backoff();
                self.publish();
                return;
            }
        }
        self.failures = 0;
        let valid = self.session.as_ref().is_some_and(|s| boottime_now() < s.valid_until);
        if !valid {
            // The lease lapsed while the campaign returned: wait for etcd
            // to renew it (or to say it is gone).
            self.phase = Phase::Lapsed { key: won.key, token };
            self.publish();
            return;
        }
        if self.last_led == Some(token) {
            debug!(token, "etcd renewed the lease: leading again with the same token");
        }
        self.observer.event(&Event::ElectionWon { term: Term(token) });
        self.last_led = Some(token);
        self.phase = Phase::Leading { key: won.key, token };
        self.publish();
    }

    fn on_renewal(&mut self, client: &Client, r: Option<Renewal>) {
        let Some(session) = &mut self.session else { return };
        match r {
            Some(Renewal::Extended { key_present: false, .. }) if matches!(self.phase, Phase::Leading { .. }) => {
                // The lease lives but the key is gone: deleted by hand, or
                // its lease revoked and re-granted (an etcd fault). Another
                // candidate may already lead: stop now.
                if let Phase::Leading { token, .. } = self.set_phase(Phase::Idle) {
                    debug!(token, "this node's election key is gone from etcd");
                    self.observer.event(&Event::SteppedDown { term: Term(token), reason: StepDownReason::HigherTerm });
                }
                if let Some(s) = self.session.take() {
                    revoke_later(client, s.id);
                }
                self.retry_at = Instant::now();
                self.publish();
            }
            Some(Renewal::Extended { sent_at, ttl, .. }) => {
                session.ttl = ttl;
                session.valid_until = session.valid_until.max(sent_at.plus(lease::leader_lease(ttl, self.drift_ppm)));
                if self.failing {
                    info!("etcd answers again");
                    self.failing = false;
                }
                if let Phase::Lapsed { key, .. } = &self.phase {
                    let key = key.clone();
                    self.campaign(client, Some(key));
                } else if matches!(self.phase, Phase::Leading { .. }) {
                    self.publish();
                }
            }
            Some(Renewal::Failing(e)) => self.note_failure(&format!("keep-alive: {e}")),
            Some(Renewal::Unconfirmed(e)) => {
                warn!(error = %e, "not crediting an etcd keep-alive answer");
            }
            Some(Renewal::Gone) | None => {
                let id = session.id;
                self.session = None;
                let was = self.set_phase(Phase::Idle);
                if let Phase::Leading { token, .. } = was {
                    debug!(token, lease = id, "etcd says this node's lease is gone");
                    self.observer.event(&Event::SteppedDown { term: Term(token), reason: StepDownReason::LeaseLapsed });
                } else {
                    info!(lease = id, "etcd lease expired; starting over with a new one");
                }
                self.retry_at = Instant::now();
                self.publish();
            }
        }
    }

    async fn on_known(&mut self, client: &Client, known: Option<Known>) {
        if let Some(k) = &known {
            let ours = self.session.as_ref().is_some_and(|s| s.id == k.lease);
            if !ours {
                match self.tokens.record(k.token).await {
                    Ok(Some(fsync)) => self.observer.fsync(fsync.as_secs_f64()),
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "cannot write the token file"),
                }
            }
            // A newer key leads: this node's key is gone (deleted by hand,
            // or its lease revoked) whatever its local lease says.
            if let Phase::Leading { token, .. } | Phase::Lapsed { token, .. } = self.phase {
                if k.token > token && !ours {
                    debug!(token, newer = k.token, leader = %k.node_id, "another key leads the election");
                    self.observer.event(&Event::SteppedDown { term: Term(token), reason: StepDownReason::HigherTerm });
                    self.set_phase(Phase::Idle);
                    if let Some(s) = self.session.take() {
                        revoke_later(client, s.id);
                    }
                    self.retry_at = Instant::now();
                }
            }
        }
        self.known = known;
        self.publish();
    }

    async fn on_health(&mut self, client: &Client, healthy: bool) {
        self.healthy = healthy;
        if healthy {
            self.retry_at = Instant::now();
        } else if !matches!(self.phase, Phase::Idle) || self.session.is_some() {
            info!("health check fails: leaving the etcd election");
            self.withdraw(client).await;
        }
        self.publish();
    }

    /// Leaves the election: stops claiming, resigns, revokes the lease.
    async fn withdraw(&mut self, client: &Client) {
        let was = self.set_phase(Phase::Idle);
        self.publish();
        if let Phase::Leading { key, token } = &was {
            self.observer.event(&Event::SteppedDown { term: Term(*token), reason: StepDownReason::Transferred });
            self.resign(client, key).await;
        }
        if let Some(s) = self.session.take() {
            revoke_later(client, s.id);
        }
    }

    async fn on_admin(&mut self, client: &Client, req: AdminRequest) -> Result<(), AdminError> {
        let Phase::Leading { key, token } = &self.phase else {
            return Err(AdminError::NotLeader(self.known.as_ref().map(|k| k.node_id.clone())));
        };
        if self.session.as_ref().is_none_or(|s| boottime_now() >= s.valid_until) {
            return Err(AdminError::NotLeader(None));
        }
        let (key, token) = (key.clone(), *token);
        if let AdminRequest::TransferTo(target) = &req {
            if *target == self.s.node_id {
                return Err(AdminError::SelfTarget(target.clone()));
            }
            let others: Vec<NodeId> = self
                .candidates(client)
                .await?
                .into_iter()
                .filter(|c| c.node_id != self.s.node_id.as_str())
                .map(|c| NodeId::new(c.node_id))
                .collect();
            check_transfer(target, &others, &self.s.etcd.election)?;
        }
        // Stop claiming first, then resign: the next candidate's campaign
        // returns as soon as the key is deleted.
        self.set_phase(Phase::Idle);
        self.publish();
        debug!(token, "resigning from the etcd election to hand over");
        self.observer.event(&Event::SteppedDown { term: Term(token), reason: StepDownReason::Transferred });
        let mut c = client.clone();
        let resigned =
            tokio::time::timeout(RESIGN_TIMEOUT, c.resign(Some(ResignOptions::new().with_leader(key)))).await;
        match resigned {
            Ok(Ok(_)) => {
                // Back in line, behind every candidate already waiting.
                self.campaign(client, None);
                Ok(())
            }
            _ => {
                // The key stays until the lease expires: stop keeping it.
                if let Some(s) = self.session.take() {
                    revoke_later(client, s.id);
                }
                self.retry_at = Instant::now() + Duration::from_secs(self.ttl_secs() as u64);
                Err(AdminError::Unavailable(format!(
                    "stopped leading, but etcd did not confirm the resignation; the key expires with this node's \
                     lease within {}s",
                    self.ttl_secs()
                )))
            }
        }
    }

    /// The candidates of the election in the order etcd will serve them.
    async fn candidates(&self, client: &Client) -> Result<Vec<Candidate>, AdminError> {
        let prefix = format!("{}/", self.s.etcd.election);
        let opts = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend);
        let mut c = client.clone();
        let got = match tokio::time::timeout(RPC_TIMEOUT, c.get(prefix.clone(), Some(opts))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(AdminError::Unavailable(format!("listing the candidates: {e}"))),
            Err(_) => return Err(AdminError::Unavailable("listing the candidates: etcd did not answer".into())),
        };
        Ok(got
            .kvs()
            .iter()
            // Keys of an election whose name starts with this one's.
            .filter(|kv| kv.key().get(prefix.len()..).is_some_and(|rest| !rest.contains(&b'/')))
            .filter_map(|kv| serde_json::from_slice::<Candidate>(kv.value()).ok())
            .collect())
    }

    async fn resign(&self, client: &Client, key: &LeaderKey) {
        let mut c = client.clone();
        let opts = ResignOptions::new().with_leader(key.clone());
        match tokio::time::timeout(RESIGN_TIMEOUT, c.resign(Some(opts))).await {
            Ok(Ok(_)) => debug!("resigned from the etcd election"),
            Ok(Err(e)) => warn!(error = %e, "resigning from the etcd election failed"),
            Err(_) => warn!("resigning from the etcd election: no answer"),
        }
    }

    /// On shutdown: stop claiming, resign, revoke (bounded waits).
    async fn leave(&mut self, client: &Client) {
        let was = self.set_phase(Phase::Idle);
        self.publish();
        if let Phase::Leading { key, token } | Phase::Lapsed { key, token } = &was {
            info!(token, "shutting down: resigning from the etcd election");
            self.resign(client, key).await;
        }
        if let Some(s) = self.session.take() {
            let mut c = client.clone();
            let _ = tokio::time::timeout(RESIGN_TIMEOUT, c.lease_revoke(s.id)).await;
        }
    }

    fn backoff(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let base = BACKOFF_MIN.saturating_mul(1 << self.failures.min(5)).min(BACKOFF_MAX);
        let jitter = Duration::from_millis(self.rng.below(base.as_millis() as u64 / 2 + 1));
        self.retry_at = Instant::now() + base + jitter;
    }

    fn note_failure(&mut self, what: &str) {
        if !self.failing {
            warn!(error = what, "etcd request failed; retrying with backoff");
            self.failing = true;
        } else {
            debug!(error = what, "etcd request failed");
        }
        self.backoff();
    }

    /// An expired auth token is refreshed in the background.
    fn note_error(&self, client: &Client, e: &etcd_client::Error) {
        if let etcd_client::Error::GRpcStatus(s) = e {
            // gRPC's UNAUTHENTICATED: the token expired (etcd-io/etcd#17623).
            if s.code() as i32 == 16 {
                let c = client.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(RPC_TIMEOUT, c.refresh_token()).await;
                });
            }
        }
    }

    fn current_view(&self) -> LeaderView {
        let highest = self.tokens.highest.max(self.known.as_ref().map_or(0, |k| k.token));
        let base = follower_view(&self.s.node_id, highest, self.healthy, self.tokens.ok);
        match (&self.phase, &self.session) {
            (Phase::Leading { token, .. }, Some(s)) => LeaderView {
                role: Role::Leader,
                term: Term(highest.max(*token)),
                leader_id: Some(self.s.node_id.clone()),
                leader_address: Some(self.s.advertise.clone()),
                fencing_token: Some(Term(*token)),
                lease_until: Some(s.valid_until),
                ..base
            },
            (phase, _) => {
                let role = if matches!(phase, Phase::Idle) { Role::Follower } else { Role::Candidate };
                let known = self.known.as_ref();
                LeaderView {
                    role,
                    leader_id: known.map(|k| k.node_id.clone()),
                    leader_address: known.and_then(|k| k.address.clone()),
                    fencing_token: known.map(|k| Term(k.token)),
                    ..base
                }
            }
        }
    }

    fn publish(&self) {
        let view = self.current_view();
        self.view.send_if_modified(|v| {
            let changed = *v != view;
            *v = view;
            changed
        });
    }
}

/// A view with no leader known, before the backend fills in what it knows.
fn follower_view(node_id: &NodeId, highest: u64, healthy: bool, storage_ok: bool) -> LeaderView {
    LeaderView {
        node_id: node_id.clone(),
        role: Role::Follower,
        term: Term(highest),
        leader_id: None,
        leader_address: None,
        fencing_token: None,
        lease_until: None,
        promise_until: Nanos::ZERO,
        healthy,
        storage_ok,
    }
}

/// etcd serves candidates in the order they campaigned: a leader can hand
/// over only to the one next in line (`others`, in etcd's order).
fn check_transfer(target: &NodeId, others: &[NodeId], election: &str) -> Result<(), AdminError> {
    match others.first() {
        Some(next) if next == target => Ok(()),
        Some(next) if others.contains(target) => Err(AdminError::Refused(format!(
            "etcd's election serves candidates in the order they joined: the next leader is {next}, not {target}; \
             hand over to {next} with step-down, or see docs/etcd.md"
        ))),
        _ => Err(AdminError::Refused(format!(
            "{target} is not a candidate in etcd election {election:?} (stopped, unhealthy or priority 0)"
        ))),
    }
}

/// Revokes a lease without waiting for the answer.
fn revoke_later(client: &Client, id: i64) {
    let mut c = client.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(RPC_TIMEOUT, c.lease_revoke(id)).await;
    });
}

/// Campaigns (or takes `resume`), then reads the key back.
async fn win(
    mut client: Client,
    election: String,
    value: Vec<u8>,
    lease: i64,
    resume: Option<LeaderKey>,
) -> Result<Won, String> {
    let key = match resume {
        Some(k) => k,
        None => {
            let mut r = client.campaign(election, value, lease).await.map_err(|e| e.to_string())?;
            r.take_leader().ok_or("etcd answered the campaign without a key")?
        }
    };
    let got = tokio::time::timeout(RPC_TIMEOUT, client.get(key.key(), None))
        .await
        .map_err(|_| "reading the election key back: no answer".to_string())?
        .map_err(|e| format!("reading the election key back: {e}"))?;
    match got.kvs().first() {
        Some(kv) if kv.create_revision() == key.rev() && kv.lease() == lease => match u64::try_from(key.rev()) {
            Ok(token) if token > 0 => Ok(Won { key, token }),
            _ => Err(format!("etcd gave the election key revision {}", key.rev())),
        },
        _ => Err("the campaign returned, but the election key is gone (its lease expired meanwhile)".into()),
    }
}

/// Keeps lease `id` alive: one keep-alive every `every`, each answer
/// awaited at most until the next is due. A stream that misses an answer is
/// dropped and reopened, so that an answer is only ever credited to the
/// request it answers.
///
/// An answer is credited only once a linearizable read (of `check_key`),
/// sent after it, comes back in the same raft term. An etcd leader that lost
/// its leadership without noticing yet (paused, or stuck on its disk) still
/// renews leases in its own lessor and answers keep-alives with a full TTL,
/// while the new leader lets the same lease expire (etcd-io/etcd#15247; etcd
/// releases before the fix do this). A read in term T succeeds only while
/// term T's leader still leads a quorum, so a renewal in term T followed by
/// such a read was made by the real leader.
async fn keep_alive(mut client: Client, id: i64, check_key: String, every: Duration, tx: mpsc::Sender<Renewal>) {
    loop {
        let opened = tokio::time::timeout(every, client.lease_keep_alive(id)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) if lease_gone(&e) => {
                let _ = tx.send(Renewal::Gone).await;
                return;
            }
            Ok(Err(e)) => {
                if tx.send(Renewal::Failing(e.to_string())).await.is_err() {
                    return;
                }
                tokio::time::sleep(every.min(BACKOFF_MAX)).await;
                continue;
            }
            Err(_) => {
                if tx.send(Renewal::Failing("no answer opening the keep-alive stream".into())).await.is_err() {
                    return;
                }
                continue;
            }
        };
        loop {
            let next = Instant::now() + every;
            let sent_at = boottime_now();
            if keeper.keep_alive().await.is_err() {
                break;
            }
            let report = match tokio::time::timeout_at(next, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    let term = r.header().map_or(0, |h| h.raft_term());
                    let ttl = Duration::from_secs(r.ttl() as u64);
                    let read = client.get(check_key.clone(), Some(GetOptions::new().with_count_only()));
                    match tokio::time::timeout_at(next, read).await {
                        Ok(Ok(g)) if g.header().is_some_and(|h| h.raft_term() == term) && term > 0 => {
                            debug!(
                                lease = id,
                                term,
                                renewed_by = r.header().map_or(0, |h| h.member_id()),
                                read_by = g.header().map_or(0, |h| h.member_id()),
                                key_present = g.count() > 0,
                                "keep-alive confirmed"
                            );
                            Renewal::Extended { sent_at, ttl, key_present: g.count() > 0 }
                        }
                        Ok(Ok(g)) => Renewal::Unconfirmed(format!(
                            "etcd's raft term moved from {term} to {} between the keep-alive and the check",
                            g.header().map_or(0, |h| h.raft_term())
                        )),
                        Ok(Err(e)) => Renewal::Unconfirmed(format!("checking the keep-alive: {e}")),
                        Err(_) => Renewal::Unconfirmed("checking the keep-alive: no answer in time".into()),
                    }
                }
                Ok(Ok(Some(_))) => {
                    let _ = tx.send(Renewal::Gone).await;
                    return;
                }
                Ok(Ok(None)) => Renewal::Failing("the keep-alive stream ended".into()),
                Ok(Err(e)) if lease_gone(&e) => {
                    let _ = tx.send(Renewal::Gone).await;
                    return;
                }
                Ok(Err(e)) => Renewal::Failing(e.to_string()),
                Err(_) => Renewal::Failing(format!("no keep-alive answer within {}ms", every.as_millis())),
            };
            let broken = matches!(report, Renewal::Failing(_));
            if tx.send(report).await.is_err() {
                return;
            }
            if broken {
                tokio::time::sleep_until(next).await;
                break;
            }
            tokio::time::sleep_until(next).await;
        }
    }
}

/// etcd answers a keep-alive of an expired lease with TTL 0 or, in some
/// versions, with gRPC's NOT_FOUND "lease not found".
fn lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() as i32 == 5 || s.message().contains("lease not found"),
        other => other.to_string().contains("lease not found"),
    }
}

/// Follows the election's leader: the observe stream for changes as they
/// happen, and a `leader` request every `poll`, which also tells when there
/// is no leader (an observation never does). Unanswered for a whole TTL
/// (3 polls), the leader counts as unknown.
async fn observe(mut client: Client, election: String, poll: Duration, tx: watch::Sender<Option<Known>>) {
    let mut last_answer = Instant::now();
    let set = |k: Option<Known>| {
        tx.send_if_modified(|v| {
            let changed = *v != k;
            *v = k;
            changed
        });
    };
    loop {
        let mut stream = match tokio::time::timeout(poll, client.observe(election.clone())).await {
            Ok(Ok(s)) => Some(s),
            _ => None,
        };
        let mut ticks = tokio::time::interval(poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = next_observed(&mut stream) => match m {
                    Some(Some(kv)) => {
                        last_answer = Instant::now();
                        set(Known::from_kv(&kv));
                    }
                    Some(None) => {}
                    None => stream = None,
                },
                _ = ticks.tick() => {
                    match tokio::time::timeout(poll, client.leader(election.clone())).await {
                        Ok(Ok(r)) => {
                            last_answer = Instant::now();
                            set(r.kv().and_then(Known::from_kv));
                        }
                        Ok(Err(e)) if e.to_string().contains("no leader") => {
                            last_answer = Instant::now();
                            set(None);
                        }
                        _ => {
                            if last_answer.elapsed() >= poll * 3 {
                                set(None);
                            }
                        }
                    }
                    if stream.is_none() {
                        break; // reopen the observation
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    }
}

/// The next observed leader; `None` when the stream broke.
async fn next_observed(stream: &mut Option<etcd_client::ObserveStream>) -> Option<Option<KeyValue>> {
    match stream {
        Some(s) => match s.message().await {
            Ok(Some(mut r)) => Some(r.take_kv()),
            _ => None,
        },
        None => std::future::pending().await,
    }
}

async fn next_health(rx: &mut Option<mpsc::Receiver<bool>>) -> Option<bool> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_renewal(session: &mut Option<Session>) -> Option<Renewal> {
    match session {
        Some(s) => s.renewals.recv().await,
        None => std::future::pending().await,
    }
}

async fn campaign_result(phase: &mut Phase) -> Result<Won, String> {
    match phase {
        Phase::Campaigning(task) => match task.await {
            Ok(r) => r,
            Err(e) => Err(format!("campaign task: {e}")),
        },
        _ => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<NodeId> {
        v.iter().map(|s| NodeId::new(*s)).collect()
    }

    #[test]
    fn a_transfer_goes_only_to_the_candidate_next_in_line() {
        let line = ids(&["b", "c"]);
        assert_eq!(check_transfer(&NodeId::new("b"), &line, "pg"), Ok(()));
        let not_next = check_transfer(&NodeId::new("c"), &line, "pg").expect_err("c is not next");
        assert!(not_next.to_string().contains("the next leader is b, not c"), "{not_next}");
        let absent = check_transfer(&NodeId::new("d"), &line, "pg").expect_err("d is not campaigning");
        assert!(absent.to_string().contains("d is not a candidate"), "{absent}");
        assert!(check_transfer(&NodeId::new("b"), &[], "pg").is_err());
    }

    #[test]
    fn the_local_lease_is_shorter_than_etcds_by_the_drift_margin() {
        // 2s granted at 1% drift: 2 * 0.99 / 1.01 = 1.9604s, rounded down.
        let local = lease::leader_lease(Duration::from_secs(2), lease::drift_ppm(0.01));
        assert!(local < Duration::from_millis(1961) && local > Duration::from_millis(1959), "{local:?}");
    }
}
