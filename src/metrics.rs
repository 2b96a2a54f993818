//! Prometheus metrics (DESIGN §6) and the metrics listener, which also serves
//! `/healthz` and `/readyz` because kubelet probes reach the pod IP, never
//! its localhost. Nothing on this listener can change state.
//!
//! Owns: the registry and every metric. Gauges that describe the view are
//! computed from the latest view at scrape time; counters and histograms are
//! fed by the driver's and the transport's observer hooks. Must not: block
//! the consensus loop (every hook is a few atomic operations).

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::boottime_now;
use crate::core::{Event, LeaderView, MembershipView, NodeId, Term};
use crate::driver::Observer;
use crate::transport::tcp;

pub struct Metrics {
    registry: Registry,
    is_leader: IntGauge,
    storage_ok: IntGauge,
    term: IntGauge,
    fencing_token: IntGauge,
    lease_remaining: Gauge,
    leader_changes: IntCounter,
    elections: IntCounterVec,
    peer_up: IntGaugeVec,
    peer_rtt: HistogramVec,
    fsync: Histogram,
    api_requests: IntCounterVec,
    connections_refused: IntCounterVec,
    rejected: IntCounterVec,
    tls_reloads: IntCounterVec,
    hooks: IntCounterVec,
    config_epoch: IntGauge,
    voters: IntGauge,
    learners: IntGauge,
    membership_changes: IntCounterVec,
    position_reads: IntCounterVec,
    position_refusals: IntCounterVec,
    position: IntGaugeVec,
    position_branch: IntGaugeVec,
}

/// A change pending longer than this many leases is reported stuck.
pub const STUCK_AFTER_LEASES: u32 = 5;

impl Metrics {
    pub fn new(peers: &[NodeId]) -> Result<Arc<Metrics>, prometheus::Error> {
        let registry = Registry::new();
        let fast = vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
        let m = Metrics {
            is_leader: IntGauge::new("leasehold_is_leader", "1 if this node holds a valid lease, else 0")?,
            storage_ok: IntGauge::new(
                "leasehold_storage_ok",
                "1 while the state file can be written; 0 after a failed write (no voting or campaigning)",
            )?,
            term: IntGauge::new("leasehold_term", "This node's current durable term")?,
            fencing_token: IntGauge::new(
                "leasehold_fencing_token",
                "The fencing token of the leader this node knows (0 if none)",
            )?,
            lease_remaining: Gauge::new(
                "leasehold_lease_remaining_seconds",
                "How much longer this node's lease lasts (0 unless leader)",
            )?,
            leader_changes: IntCounter::new(
                "leasehold_leader_changes_total",
                "Changes of the leader or token this node has seen",
            )?,
            elections: IntCounterVec::new(
                Opts::new("leasehold_elections_total", "Elections this node took part in as a candidate, by result"),
                &["result"],
            )?,
            peer_up: IntGaugeVec::new(
                Opts::new("leasehold_peer_up", "1 while this node's connection to the peer is up"),
                &["peer"],
            )?,
            peer_rtt: HistogramVec::new(
                HistogramOpts::new("leasehold_peer_rtt_seconds", "Heartbeat round trip to each peer, on the leader")
                    .buckets(fast.clone()),
                &["peer"],
            )?,
            fsync: Histogram::with_opts(
                HistogramOpts::new("leasehold_fsync_seconds", "Time spent in fsync per state write").buckets(fast),
            )?,
            api_requests: IntCounterVec::new(
                Opts::new("leasehold_api_requests_total", "Requests to the local API, by path and status code"),
                &["path", "code"],
            )?,
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "leasehold_http_connections_refused_total",
                    "HTTP connections closed at once because the listener served its maximum",
                ),
                &["listener"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new("leasehold_rejected_messages_total", "Peer messages and connections refused, by reason"),
                &["reason"],
            )?,
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "leasehold_peer_tls_reloads_total",
                    "Changes of the --peer-tls-* files seen, by result: ok (in use for new connections) or error \
                     (refused; the previous certificates stay)",
                ),
                &["result"],
            )?,
            hooks: IntCounterVec::new(
                Opts::new("leasehold_hook_runs_total", "Runs of --on-elected and --on-demoted, by outcome"),
                &["hook", "result"],
            )?,
            config_epoch: IntGauge::new(
                "leasehold_config_epoch",
                "The epoch of the configuration this node holds (managed groups; 0 while blank)",
            )?,
            voters: IntGauge::new("leasehold_voters", "Voters of the configuration this node holds (managed groups)")?,
            learners: IntGauge::new(
                "leasehold_learners",
                "On the leader: identities that answer its rounds without being voters (managed groups)",
            )?,
            membership_changes: IntCounterVec::new(
                Opts::new(
                    "leasehold_membership_changes_total",
                    "Membership changes by result: added or removed (made by this node as leader), stuck (pending \
                     longer than 5 leases), refused (a desired set not read, or keeping fewer than a majority \
                     of the voters)",
                ),
                &["result"],
            )?,
            position_reads: IntCounterVec::new(
                Opts::new(
                    "leasehold_position_reads_total",
                    "Reads of the local database's replication position (--position-exec, PUT /v1/position), by \
                     result: ok or error (the node grants no vote until a read succeeds)",
                ),
                &["result"],
            )?,
            position_refusals: IntCounterVec::new(
                Opts::new(
                    "leasehold_position_refusals_total",
                    "Votes and pre-votes this node refused for replication positions alone, by reason: behind (the \
                     candidate's database is behind this node's), stale (no read since the last lease ended), \
                     unknown (no successful read)",
                ),
                &["reason"],
            )?,
            position: IntGaugeVec::new(
                Opts::new(
                    "leasehold_replication_position",
                    "The last known replication position (e.g. a PostgreSQL LSN as a number) of this node's \
                     database and of each peer's, as their messages carried it",
                ),
                &["node"],
            )?,
            position_branch: IntGaugeVec::new(
                Opts::new(
                    "leasehold_replication_branch",
                    "The branch of that position: the fencing token of the leadership whose write ends the \
                     database's history",
                ),
                &["node"],
            )?,
            registry,
        };
        let build_info =
            IntGaugeVec::new(Opts::new("leasehold_build_info", "Always 1; labels describe the build"), &["version"])?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let r = &m.registry;
        r.register(Box::new(m.is_leader.clone()))?;
        r.register(Box::new(m.storage_ok.clone()))?;
        r.register(Box::new(m.term.clone()))?;
        r.register(Box::new(m.fencing_token.clone()))?;
        r.register(Box::new(m.lease_remaining.clone()))?;
        r.register(Box::new(m.leader_changes.clone()))?;
        r.register(Box::new(m.elections.clone()))?;
        r.register(Box::new(m.peer_up.clone()))?;
        r.register(Box::new(m.peer_rtt.clone()))?;
        r.register(Box::new(m.fsync.clone()))?;
        r.register(Box::new(m.api_requests.clone()))?;
        r.register(Box::new(m.connections_refused.clone()))?;
        r.register(Box::new(m.rejected.clone()))?;
        r.register(Box::new(m.tls_reloads.clone()))?;
        r.register(Box::new(m.hooks.clone()))?;
        r.register(Box::new(m.config_epoch.clone()))?;
        r.register(Box::new(m.voters.clone()))?;
        r.register(Box::new(m.learners.clone()))?;
        r.register(Box::new(m.membership_changes.clone()))?;
        r.register(Box::new(m.position_reads.clone()))?;
        r.register(Box::new(m.position_refusals.clone()))?;
        r.register(Box::new(m.position.clone()))?;
        r.register(Box::new(m.position_branch.clone()))?;
        r.register(Box::new(build_info))?;
        // Every peer and result appears from the start, at 0.
        for p in peers {
            m.peer_up.with_label_values(&[p.as_str()]).set(0);
        }
        for result in ["won", "lost", "pre_vote_failed"] {
            m.elections.with_label_values(&[result]);
        }
        // Every rejection reason the transport, the core and the etcd
        // backend can report.
        for reason in crate::labels::reason::ALL {
            m.rejected.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            m.tls_reloads.with_label_values(&[result]);
        }
        for result in ["added", "removed", "stuck", "refused"] {
            m.membership_changes.with_label_values(&[result]);
        }
        for listener in ["api", "metrics"] {
            m.connections_refused.with_label_values(&[listener]);
        }
        Ok(Arc::new(m))
    }

    /// The text exposition format, with the view's gauges as of now.
    pub fn render(&self, view: &LeaderView) -> String {
        let now = boottime_now();
        self.is_leader.set(i64::from(view.is_leader(now)));
        self.storage_ok.set(i64::from(view.storage_ok));
        self.term.set(i64::try_from(view.term.0).unwrap_or(i64::MAX));
        self.fencing_token.set(view.fencing_token.map_or(0, |t| i64::try_from(t.0).unwrap_or(i64::MAX)));
        self.lease_remaining.set(view.lease_remaining(now).as_secs_f64());
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts a run of a role-change hook.
    pub fn hook(&self, hook: &str, result: &str) {
        self.hooks.with_label_values(&[hook, result]).inc();
    }

    /// Counts a request to the local API.
    pub fn connection_refused(&self, listener: &str) {
        self.connections_refused.with_label_values(&[listener]).inc();
    }

    pub fn api_request(&self, path: &str, code: u16) {
        self.api_requests.with_label_values(&[path, &code.to_string()]).inc();
    }

    /// Counts a read of the local database's position.
    pub fn position_read(&self, result: &str) {
        self.position_reads.with_label_values(&[result]).inc();
    }

    /// Positions are on: their counters appear from the start, at 0.
    pub fn positions_on(&self) {
        for result in ["ok", "error"] {
            self.position_reads.with_label_values(&[result]);
        }
        for reason in ["behind", "stale", "unknown"] {
            self.position_refusals.with_label_values(&[reason]);
        }
    }

    /// The last known position of `node`'s database.
    pub fn position(&self, node: &NodeId, p: crate::core::Position) {
        self.position.with_label_values(&[node.as_str()]).set(i64::try_from(p.at).unwrap_or(i64::MAX));
        self.position_branch.with_label_values(&[node.as_str()]).set(i64::try_from(p.branch.0).unwrap_or(i64::MAX));
    }

    /// A static group's voters: its `--peers`, fixed.
    pub fn static_voters(&self, n: usize) {
        self.voters.set(n as i64);
    }

    /// Counts a membership change by result.
    pub fn membership_change(&self, result: &str) {
        self.membership_changes.with_label_values(&[result]).inc();
    }

    /// Follows a managed group's membership: sets its gauges, and logs and
    /// counts a change pending longer than [`STUCK_AFTER_LEASES`] leases
    /// once. Runs until the driver stops.
    pub async fn follow_membership(
        self: Arc<Self>,
        mut rx: watch::Receiver<Option<MembershipView>>,
        lease_ttl: std::time::Duration,
    ) {
        let mut reported: Option<(Term, u64)> = None;
        let mut tick = tokio::time::interval(lease_ttl);
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
            let view = rx.borrow_and_update().clone();
            let Some(v) = view else { continue };
            let c = v.config.as_ref();
            self.config_epoch.set(c.map_or(0, |c| i64::try_from(c.epoch).unwrap_or(i64::MAX)));
            self.voters.set(c.map_or(0, |c| c.voters.len() as i64));
            self.learners.set(v.learners.len() as i64);
            let Some((who, add, since)) = &v.pending else { continue };
            let stamp = c.map(|c| c.stamp());
            let waited = boottime_now().since(*since);
            if waited >= lease_ttl * STUCK_AFTER_LEASES && stamp != reported {
                reported = stamp;
                self.membership_change("stuck");
                tracing::warn!(
                    who = %who,
                    change = if *add { "add" } else { "remove" },
                    waited_ms = waited.as_millis() as u64,
                    "a membership change is stuck: a majority of the new configuration has not acknowledged it"
                );
            }
        }
    }

    /// Counts changes of (leader, token) as the view changes; runs until the
    /// driver stops.
    pub async fn count_leader_changes(self: Arc<Self>, mut rx: watch::Receiver<LeaderView>) {
        let key = |v: &LeaderView| (v.leader_id.clone(), v.fencing_token);
        let mut last = key(&rx.borrow_and_update());
        while rx.changed().await.is_ok() {
            let now = key(&rx.borrow_and_update());
            if now != last && now.0.is_some() {
                self.leader_changes.inc();
            }
            last = now;
        }
    }
}

impl Observer for Metrics {
    fn fsync(&self, seconds: f64) {
        self.fsync.observe(seconds);
    }
    fn event(&self, event: &Event) {
        match event {
            Event::ElectionWon { .. } => self.elections.with_label_values(&["won"]).inc(),
            Event::ElectionLost { .. } => self.elections.with_label_values(&["lost"]).inc(),
            Event::PreVoteFailed { .. } => self.elections.with_label_values(&["pre_vote_failed"]).inc(),
            Event::MembershipChange { add, .. } => self.membership_change(if *add { "added" } else { "removed" }),
            Event::PositionRefused { reason, .. } => self.position_refusals.with_label_values(&[reason.as_str()]).inc(),
            Event::AckRoundTrip { peer, rtt } => {
                self.peer_rtt.with_label_values(&[peer.as_str()]).observe(rtt.as_secs_f64())
            }
            _ => {}
        }
    }
    fn rejected(&self, reason: &'static str) {
        self.rejected.with_label_values(&[reason]).inc();
    }
}

impl tcp::Events for Metrics {
    fn rejected(&self, reason: &'static str) {
        self.rejected.with_label_values(&[reason]).inc();
    }
    fn peer_up(&self, peer: &NodeId, up: bool) {
        self.peer_up.with_label_values(&[peer.as_str()]).set(i64::from(up));
    }
    fn tls_reloaded(&self, ok: bool) {
        self.tls_reloads.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
    }
}

/// The most metrics connections served at once: scrapers and probes only.
pub const MAX_METRICS_CONNECTIONS: usize = 64;

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, view: watch::Receiver<LeaderView>) {
    let counter = metrics.clone();
    let refused = move || counter.connection_refused("metrics");
    crate::http::serve(listener, MAX_METRICS_CONNECTIONS, refused, move |req: hyper::Request<hyper::body::Incoming>| {
        let (metrics, view) = (metrics.clone(), view.borrow().clone());
        async move {
            let path = req.uri().path();
            let served = path == "/metrics" || crate::http::probe(path, &view).is_some();
            let read = req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD;
            let (status, ctype, body) = match crate::http::probe(path, &view) {
                _ if served && !read => {
                    (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "GET or HEAD only\n".to_string())
                }
                Some((status, body)) => (status, "text/plain; charset=utf-8", body.to_string()),
                None if path == "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", metrics.render(&view)),
                None => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".to_string()),
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
            r.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if status == StatusCode::METHOD_NOT_ALLOWED {
                r.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            r
        }
    })
    .await
}
