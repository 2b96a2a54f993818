//! The etcd backend's requests to etcd: the client options, the campaign
//! and its read-back, the keep-alive and the observation tasks, listing the
//! candidates, resigning and revoking. Each request is bounded in time.
//!
//! Owns: what is sent to etcd and how its answers are read. Must not: decide
//! what an answer means for leadership (the machine does).

use std::path::Path;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity as TlsIdentity, KeyValue, LeaderKey, ResignOptions,
    SortOrder, SortTarget, TlsOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::machine::{Known, Renewal};
use super::EtcdError;
use crate::clock::boottime_now;
use crate::config::{EtcdConfig, Secret};
use crate::core::{AdminError, NodeId};

/// The longest any single etcd request other than a campaign may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a shutting-down node waits for etcd to resign its key.
pub const RESIGN_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a candidate's key holds, so that every node can name the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub node_id: String,
    pub address: String,
}

/// The leader named by an election key's value and create revision.
fn known_from_kv(kv: &KeyValue) -> Option<Known> {
    let token = u64::try_from(kv.create_revision()).ok().filter(|t| *t > 0)?;
    let (node_id, address) = match serde_json::from_slice::<Candidate>(kv.value()) {
        Ok(c) => (NodeId::new(c.node_id), Some(c.address)),
        // Not a leasehold value: name the leader by what its key holds.
        Err(_) => (NodeId::new(String::from_utf8_lossy(kv.value()).into_owned()), None),
    };
    Some(Known { node_id, address, token, lease: kv.lease() })
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

/// A campaign that returned and was read back.
pub struct Won {
    pub key: LeaderKey,
    pub token: u64,
}

/// Revokes a lease without waiting for the answer.
pub fn revoke_later(client: &Client, id: i64) {
    let mut c = client.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(RPC_TIMEOUT, c.lease_revoke(id)).await;
    });
}

/// Campaigns (or takes `resume`), then reads the key back.
pub async fn win(
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
pub async fn keep_alive(mut client: Client, id: i64, check_key: String, every: Duration, tx: mpsc::Sender<Renewal>) {
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
                tokio::time::sleep(every.min(RETRY_MAX)).await;
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
pub async fn observe(mut client: Client, election: String, poll: Duration, tx: watch::Sender<Option<Known>>) {
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
                        set(known_from_kv(&kv));
                    }
                    Some(None) => {}
                    None => stream = None,
                },
                _ = ticks.tick() => {
                    match tokio::time::timeout(poll, client.leader(election.clone())).await {
                        Ok(Ok(r)) => {
                            last_answer = Instant::now();
                            set(r.kv().and_then(known_from_kv));
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

/// The candidates of `election` in the order etcd will serve them.
pub async fn candidates(client: &Client, election: &str) -> Result<Vec<NodeId>, AdminError> {
    let prefix = format!("{election}/");
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
        .map(|c| NodeId::new(c.node_id))
        .collect())
}

/// Resigns `key` (bounded); true if etcd confirmed it.
pub async fn resign(client: &Client, key: &LeaderKey) -> bool {
    let mut c = client.clone();
    let opts = ResignOptions::new().with_leader(key.clone());
    match tokio::time::timeout(RESIGN_TIMEOUT, c.resign(Some(opts))).await {
        Ok(Ok(_)) => {
            debug!("resigned from the etcd election");
            true
        }
        Ok(Err(e)) => {
            warn!(error = %e, "resigning from the etcd election failed");
            false
        }
        Err(_) => {
            warn!("resigning from the etcd election: no answer");
            false
        }
    }
}

/// An expired auth token is refreshed in the background.
pub fn note_error(client: &Client, e: &etcd_client::Error) {
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
