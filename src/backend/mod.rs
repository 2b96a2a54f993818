//! How a [`crate::core::LeaderView`] is produced, behind one interface.
//!
//! The built-in group ([`raft`]) is [`crate::driver`] with [`crate::core`],
//! [`crate::transport`] and [`crate::storage`]; the etcd backend ([`etcd`],
//! cargo feature `etcd`) runs etcd's election API instead. Both start as a
//! [`Running`] backend: a view on a `watch` channel, an admin channel, and a
//! task that ends only when told to, after handing over ([`Running::stop`]).
//! The API, metrics and hooks do not know which one runs. A group uses one
//! backend, chosen at start: switching authority while running would make
//! two of them (docs/etcd.md).
//!
//! Owns: the shutdown of either backend, with its hand-over. Must not: make a
//! protocol decision of its own.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod raft;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::clock::boottime_now;
use crate::config::Config;
use crate::core::{AdminRequest, Incarnation, LeaderView, NodeId};
use crate::driver::AdminCall;
use crate::report::{PeerTable, Reporter};

/// A backend whose files were read and checked, not yet started.
pub enum Prepared {
    Raft(Box<raft::Prepared>),
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd::Prepared>),
}

/// Reads and checks what the configured backend needs before it starts
/// (state or token file, TLS files); a refusal is one line naming the flag
/// or the file. Opens no socket.
pub fn prepare(config: &Config, reporter: &Arc<Reporter>) -> Result<Prepared, String> {
    #[cfg(feature = "etcd")]
    if config.etcd.is_some() {
        return etcd::prepare(config, reporter.clone()).map(|p| Prepared::Etcd(Box::new(p)));
    }
    let _ = reporter;
    raft::prepare(config).map(|p| Prepared::Raft(Box::new(p)))
}

/// Starts a prepared backend. `health` carries the local health check's
/// results, if one is configured.
pub async fn start(
    config: &Config,
    prepared: Prepared,
    reporter: Arc<Reporter>,
    health: Option<mpsc::Receiver<bool>>,
) -> Result<Running, String> {
    match prepared {
        Prepared::Raft(p) => raft::start(config, *p, reporter, health).await,
        #[cfg(feature = "etcd")]
        Prepared::Etcd(p) => Ok(etcd::start(config, *p, health)),
    }
}

/// How a backend hands over when the process is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOver {
    /// The built-in group: a leader steps down through the admin channel,
    /// and the process waits (at most a lease) until another node leads.
    StepDown,
    /// etcd: the backend's task resigns and revokes its lease itself once
    /// told to stop; the process waits for it at most this long.
    ByTheTask(Duration),
}

/// A started backend.
pub struct Running {
    /// `raft` or `etcd`, as `/v1/status` names it.
    pub kind: &'static str,
    pub view: watch::Receiver<LeaderView>,
    pub admin: mpsc::Sender<AdminCall>,
    /// The peers of the built-in group, for the API; None on etcd.
    pub peers: Option<Arc<PeerTable>>,
    pub node_id: NodeId,
    /// This life of the node (built-in backend; None on etcd).
    pub incarnation: Option<Incarnation>,
    /// A managed group's membership (`--peers-file`); None otherwise.
    pub membership: Option<watch::Receiver<Option<crate::core::MembershipView>>>,
    /// Position-aware votes: where `PUT /v1/position` sends its readings
    /// (`--position-from-api`), and the upstream the database may take
    /// writes from, for `/v1/status`.
    pub positions: Option<mpsc::Sender<crate::position::Reading>>,
    pub upstream: Option<watch::Receiver<crate::position::Upstream>>,
    pub lease_ttl: Duration,
    pub hand_over: HandOver,
    pub task: JoinHandle<Result<(), String>>,
    pub stop: watch::Sender<bool>,
}

/// How a backend's task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Told to stop, and it did.
    Stopped,
    /// It found a misconfiguration while running (exit code 2).
    Refused(String),
    /// It ended by itself or panicked (exit code 1: let a supervisor
    /// restart the process).
    Failed(String),
}

impl Running {
    /// Waits until the task ends by itself, which it must never do.
    pub async fn ended(&mut self) -> Ended {
        let outcome = (&mut self.task).await;
        match outcome {
            Ok(Err(e)) => Ended::Refused(e),
            Ok(Ok(())) => Ended::Failed("the backend's loop stopped by itself".into()),
            Err(e) => Ended::Failed(format!("the backend's loop failed: {e}")),
        }
    }

    /// Stops the backend. On SIGTERM (`hand_over`) a leader hands over
    /// first; on SIGINT the built-in group just stops.
    pub async fn stop(mut self, hand_over: bool) -> Ended {
        if hand_over && self.hand_over == HandOver::StepDown && self.view.borrow().is_leader(boottime_now()) {
            step_down_and_wait(&self.admin, self.view.clone(), &self.node_id, self.lease_ttl).await;
        }
        self.stop.send_replace(true);
        let wait = match self.hand_over {
            HandOver::ByTheTask(limit) => limit,
            // The driver stops at its next turn of the loop.
            HandOver::StepDown => Duration::from_secs(5),
        };
        match tokio::time::timeout(wait, &mut self.task).await {
            Ok(Ok(Ok(()))) | Err(_) => Ended::Stopped,
            Ok(Ok(Err(e))) => Ended::Refused(e),
            Ok(Err(e)) => Ended::Failed(format!("the backend's loop failed: {e}")),
        }
    }
}

/// A leader's hand-over on SIGTERM: end the lease, hand over to the best
/// peer, and wait (at most a lease) until another node is known to lead.
async fn step_down_and_wait(
    admin: &mpsc::Sender<AdminCall>,
    mut view: watch::Receiver<LeaderView>,
    me: &NodeId,
    lease_ttl: Duration,
) {
    let (reply_tx, reply_rx) = oneshot::channel();
    if admin.send((AdminRequest::StepDown, reply_tx)).await.is_err() {
        return;
    }
    if let Ok(Err(e)) = reply_rx.await {
        warn!(error = %e, "step-down on SIGTERM refused");
        return;
    }
    let wait = async {
        loop {
            let other = view.borrow_and_update().leader_id.as_ref().is_some_and(|l| l != me);
            if other || view.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(lease_ttl, wait).await;
}
