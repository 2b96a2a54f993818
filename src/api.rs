//! The local HTTP API (DESIGN §5), on `--listen-api`.
//!
//! Owns: HTTP parsing, the JSON answers, the guards on mutating endpoints.
//! Must not: make a read wait for the consensus loop, the disk or the
//! network. Every read is a copy of the latest view from the driver's watch
//! channel; a long-poll or a watch stream waits for that channel only.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::boottime_now;
use crate::core::{AdminError, AdminRequest, LeaderView, Nanos, NodeId, Role};
use crate::driver::AdminCall;
use crate::position::{Reading, Upstream};

mod request;
pub use request::{
    admin_guard, admin_request, bearer_matches, constant_time_eq, host_allowed, leader_query, percent_decode,
    wait_param, Query, MAX_WAIT,
};

type HttpBody = UnsyncBoxBody<Bytes, Infallible>;

/// What the API reads and where it sends admin requests.
pub struct ApiState {
    pub view: watch::Receiver<LeaderView>,
    pub backend: &'static str,
    pub admin: mpsc::Sender<AdminCall>,
    /// Required as `Authorization: Bearer <token>` on mutating endpoints.
    pub token: Option<String>,
    /// A Host name accepted on mutating endpoints besides loopback ones.
    pub host_name: Option<String>,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    pub peers: Option<Arc<crate::report::PeerTable>>,
    /// This life of the node (built-in backend), shown in `/v1/status`.
    pub incarnation: Option<crate::core::Incarnation>,
    /// A managed group's membership (`--peers-file`), shown in `/v1/status`.
    pub membership: Option<watch::Receiver<Option<crate::core::MembershipView>>>,
    /// `--position-from-api`: where `PUT /v1/position` sends its readings.
    pub positions: Option<mpsc::Sender<Reading>>,
    /// Position-aware votes: the upstream the local database may take
    /// writes from now, shown in `/v1/status`.
    pub upstream: Option<watch::Receiver<Upstream>>,
}

/// The most API connections served at once. Long polls and watch streams
/// stay open, so this is generous; it bounds the file descriptors a flood
/// of clients can take, which the peer transport needs too.
pub const MAX_API_CONNECTIONS: usize = 512;

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<ApiState>) {
    let metrics = state.metrics.clone();
    let refused = move || {
        if let Some(m) = &metrics {
            m.connection_refused("api");
        }
    };
    crate::http::serve(listener, MAX_API_CONNECTIONS, refused, move |req: Request<Incoming>| {
        let state = state.clone();
        async move {
            let path = path_label(req.uri().path());
            let response = handle(req, &state).await;
            if let Some(m) = &state.metrics {
                m.api_request(path, response.status().as_u16());
            }
            response
        }
    })
    .await
}

/// Patroni's health-check paths (GET, HEAD and OPTIONS, which HAProxy's
/// `option httpchk` sends): `/`, `/primary`, `/master`, `/leader` and
/// `/read-write` answer 200 on the node that holds the lease, `/replica` on
/// a healthy node that follows a known leader, `/read-only` on either.
pub const PATRONI_PATHS: [&str; 7] = ["/", "/primary", "/master", "/leader", "/read-write", "/replica", "/read-only"];

/// The methods `path` answers (the `Allow` header of a 405); `None` for a
/// path the API does not serve.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/v1/step-down" | "/v1/transfer" => Some("POST"),
        "/v1/position" => Some("PUT"),
        "/v1/leader" | "/v1/watch" | "/v1/status" | "/healthz" | "/readyz" => Some("GET, HEAD"),
        p if PATRONI_PATHS.contains(&p) => Some("GET, HEAD, OPTIONS"),
        _ => None,
    }
}

async fn handle(req: Request<Incoming>, state: &ApiState) -> Response<HttpBody> {
    let path = req.uri().path().to_string();
    let Some(allow) = allowed_methods(&path) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    if !allow.split(", ").any(|m| m == req.method().as_str()) {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("{path} answers {allow} only"));
        r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        return r;
    }
    if req.method() == Method::PUT {
        return put_position(req, state).await;
    }
    if req.method() == Method::POST {
        // The guard comes first: a caller it refuses learns nothing of the query.
        if let Err(refused) = admin_guard(req.headers(), state.host_name.as_deref(), state.token.as_deref()) {
            return refusal(refused);
        }
        return match Query::parse(req.uri().query().unwrap_or("")).map(|q| admin_request(&path, &q)) {
            Ok(Some(Ok((request, wait)))) => admin(state, request, wait).await,
            Ok(Some(Err(msg))) | Err(msg) => error(StatusCode::BAD_REQUEST, &msg),
            // Not a hand-over path: the Allow table lets no other POST through.
            Ok(None) => error(StatusCode::NOT_FOUND, "not found"),
        };
    }
    let answer = read(&path, req.uri().query().unwrap_or(""), state).await;
    if req.method() == Method::OPTIONS {
        // Patroni answers OPTIONS with the status of a GET alone.
        let (mut parts, _) = answer.into_parts();
        parts.headers.remove(CONTENT_TYPE);
        return Response::from_parts(parts, Full::new(Bytes::new()).boxed_unsync());
    }
    answer
}

/// A refusal of [`admin_guard`]; a 401 says which scheme it wants.
fn refusal((status, message): (StatusCode, &str)) -> Response<HttpBody> {
    let mut r = error(status, message);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"leasehold\""));
    }
    r
}

/// The largest `PUT /v1/position` body read.
const MAX_POSITION_BODY: usize = 1024;

/// `PUT /v1/position` (`--position-from-api`): `{"position": N or "X/Y",
/// "branch": T, "read_at_boottime_ns": NS}`, the last two optional. The
/// read counts from `read_at_boottime_ns` if given (it must not be in the
/// future), else from the request's arrival. Guarded as the mutating
/// endpoints are.
async fn put_position(req: Request<Incoming>, state: &ApiState) -> Response<HttpBody> {
    if let Err(refused) = admin_guard(req.headers(), state.host_name.as_deref(), state.token.as_deref()) {
        return refusal(refused);
    }
    let arrived = boottime_now();
    let Some(tx) = &state.positions else {
        return error(
            StatusCode::CONFLICT,
            "this node takes no position from the API: start it with --position-from-api (and --peers-file)",
        );
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_POSITION_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 1 KiB, or was cut off"),
    };
    let reading = match position_body(&body, arrived) {
        Ok(r) => r,
        Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
    };
    if tx.send(reading).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
    }
    let p = reading.position.unwrap_or_default();
    let read_ms_ago = arrived.since(reading.read_at).as_millis() as u64;
    json_response(StatusCode::OK, json!({"ok": true, "position": position_json(p, read_ms_ago)}))
}

/// The reading a `PUT /v1/position` body names; `Err` is the message of a 400.
pub fn position_body(body: &[u8], arrived: Nanos) -> Result<Reading, String> {
    const SHAPE: &str = r#"the body must be {"position": N or "X/Y", "branch": T, "read_at_boottime_ns": NS}"#;
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("{SHAPE}: {e}"))?;
    let Some(obj) = v.as_object() else { return Err(SHAPE.to_string()) };
    if let Some(k) = obj.keys().find(|k| !["position", "branch", "read_at_boottime_ns"].contains(&k.as_str())) {
        return Err(format!("unknown field {k:?}: {SHAPE}"));
    }
    let at = match obj.get("position") {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| format!("position {n} is not an unsigned integer"))?,
        Some(Value::String(s)) => crate::position::parse_lsn(s)?,
        _ => return Err(SHAPE.to_string()),
    };
    let branch = match obj.get("branch") {
        None | Some(Value::Null) => 0,
        Some(b) => b.as_u64().ok_or_else(|| format!("branch {b} is not an unsigned integer"))?,
    };
    let read_at = match obj.get("read_at_boottime_ns") {
        None | Some(Value::Null) => arrived,
        Some(t) => match t.as_u64() {
            Some(t) if t <= arrived.0 => Nanos(t),
            Some(t) => return Err(format!("read_at_boottime_ns {t} is in the future (now {})", arrived.0)),
            None => return Err(format!("read_at_boottime_ns {t} is not an unsigned integer")),
        },
    };
    Ok(Reading { position: Some(crate::core::Position { branch: crate::core::Term(branch), at }), read_at })
}

/// A position as `/v1/status` and `PUT /v1/position` show it.
fn position_json(p: crate::core::Position, read_ms_ago: u64) -> Value {
    json!({
        "branch": p.branch.0,
        "position": p.at,
        "lsn": crate::position::format_lsn(p.at),
        "read_ms_ago": read_ms_ago,
    })
}

/// A `GET`, `HEAD` or `OPTIONS`; only `/v1/leader` reads its query.
async fn read(path: &str, query: &str, state: &ApiState) -> Response<HttpBody> {
    let now = boottime_now();
    let view = state.view.borrow().clone();
    let leading = view.is_leader(now);
    let ok_if = |cond: bool| if cond { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    match path {
        "/v1/leader" => match Query::parse(query).and_then(|q| leader_query(&q)) {
            Ok(None) => json_response(ok_if(leading), leader_json(&view, now, state.backend)),
            Ok(Some((wait, after_token))) => long_poll(state, wait, after_token).await,
            Err(msg) => error(StatusCode::BAD_REQUEST, &msg),
        },
        "/v1/watch" => sse(state),
        "/v1/status" => {
            let mut body = status_json(&view, now, state.backend);
            let peers: Vec<Value> = state.peers.as_ref().map_or(Vec::new(), |t| {
                t.snapshot()
                    .into_iter()
                    .map(|p| {
                        json!({
                            "id": p.id.as_str(),
                            "connected": p.connected,
                            "last_contact_ms_ago": p.last_contact_ms_ago,
                            "incarnation": p.incarnation.map(|i| i.to_string()),
                            "position": p.position.map(|(pos, ago)| position_json(pos, ago)),
                        })
                    })
                    .collect()
            });
            body["peers"] = Value::Array(peers);
            body["incarnation"] = json!(state.incarnation.map(|i| i.to_string()));
            if let Some(up) = &state.upstream {
                let own = state.peers.as_ref().and_then(|t| t.own());
                let up = up.borrow().clone();
                body["position"] = json!({
                    "own": own.map(|(p, ago)| position_json(p, ago)),
                    "role": up.role,
                    "upstream_id": up.leader_id,
                    "upstream": up.address,
                });
            }
            if let Some(m) = &state.membership {
                let view = m.borrow().clone();
                // A node that runs its static group until it converts has
                // no membership yet, and keeps its static incarnation.
                if let Some(v) = &view {
                    body["incarnation"] = json!(v.me.incarnation.to_string());
                }
                body["membership"] = membership_json(view.as_ref(), state.peers.as_deref(), now);
            }
            json_response(StatusCode::OK, body)
        }
        "/healthz" | "/readyz" => match crate::http::probe(path, &view) {
            Some((status, body)) => text(status, body),
            None => error(StatusCode::NOT_FOUND, "not found"),
        },
        // Patroni-compatible health checks for HAProxy and pgbouncer.
        "/" | "/primary" | "/master" | "/leader" | "/read-write" => {
            json_response(ok_if(leading), leader_json(&view, now, state.backend))
        }
        "/replica" | "/read-only" => {
            let replica = !leading && view.role != Role::Leader && view.leader_id.is_some() && view.healthy;
            let ok = replica || (path == "/read-only" && leading);
            json_response(ok_if(ok), leader_json(&view, now, state.backend))
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The `path` label of `leasehold_api_requests_total`: known paths only, so
/// that a scanner cannot create unbounded label values.
pub fn path_label(path: &str) -> &'static str {
    use crate::labels::{API_PATHS, OTHER_PATH};
    API_PATHS.iter().find(|k| **k == path).copied().unwrap_or(OTHER_PATH)
}

/// What a waiting client cares about: who leads, with which token, and
/// whether this node holds the lease. Lease extensions are not changes.
fn leadership(view: &LeaderView, now: Nanos) -> (Option<NodeId>, Option<u64>, bool) {
    (view.leader_id.clone(), view.fencing_token.map(|t| t.0), view.is_leader(now))
}

/// `?wait=D[&after_token=N]`: with `after_token`, answers as soon as a
/// leadership with another token than N is known (at once if it already
/// is); without it, as soon as who leads or this node's lease changes;
/// else after D.
async fn long_poll(state: &ApiState, wait: Duration, after: Option<u64>) -> Response<HttpBody> {
    let start = leadership(&state.view.borrow(), boottime_now());
    let view = wait_until(state, wait, |now_view| {
        let now = leadership(now_view, boottime_now());
        match after {
            // A new leadership is known (not merely "the old one ended").
            Some(n) => now.1.is_some_and(|t| t != n),
            None => now != start,
        }
    })
    .await;
    let now = boottime_now();
    let status = if view.is_leader(now) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_response(status, leader_json(&view, now, state.backend))
}

/// Waits for the view to satisfy `done`, at most `wait`; returns the view
/// as it then is. Waits on the view channel only.
async fn wait_until(state: &ApiState, wait: Duration, done: impl Fn(&LeaderView) -> bool) -> LeaderView {
    let mut rx = state.view.clone();
    rx.borrow_and_update();
    let deadline = tokio::time::Instant::now() + wait;
    // A lease can lapse without a new view: look at least every 100ms.
    while !done(&rx.borrow()) && tokio::time::Instant::now() < deadline {
        let step = deadline.min(tokio::time::Instant::now() + Duration::from_millis(100));
        if let Ok(Err(_)) = tokio::time::timeout_at(step, rx.changed()).await {
            break; // the driver stopped: answer with what is known
        }
    }
    let view = rx.borrow().clone();
    view
}

/// `GET /v1/watch`: a server-sent event with the leader JSON now and at every
/// change of leadership, and a comment every 15s to keep proxies open.
fn sse(state: &ApiState) -> Response<HttpBody> {
    let body = WatchBody { rx: Some(state.view.clone()), backend: state.backend, last: None, pending: None };
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `Some(true)`: timed out; `Some(false)`: the view changed; `None`: closed.
type Wait = Pin<Box<dyn Future<Output = (watch::Receiver<LeaderView>, Option<bool>)> + Send>>;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

struct WatchBody {
    rx: Option<watch::Receiver<LeaderView>>,
    backend: &'static str,
    last: Option<(Option<NodeId>, Option<u64>, bool)>,
    pending: Option<Wait>,
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            if let Some(rx) = self.rx.take() {
                let now = boottime_now();
                let view = rx.borrow().clone();
                let key = leadership(&view, now);
                if self.last.as_ref() != Some(&key) {
                    self.last = Some(key);
                    self.rx = Some(rx);
                    let line = format!("event: leader\ndata: {}\n\n", leader_json(&view, now, self.backend));
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))));
                }
                // Wake at the next view change, at lease expiry (which changes
                // no view), or after 15s for a keep-alive.
                let lease_left = view.lease_until.filter(|_| key.2).map(|u| u.since(now) + Duration::from_millis(1));
                let wait = lease_left.map_or(KEEP_ALIVE, |l| l.min(KEEP_ALIVE));
                self.pending = Some(Box::pin(async move {
                    let mut rx = rx;
                    let waited = tokio::time::timeout(wait, rx.changed()).await;
                    (rx, waited.map_or(Some(true), |r| r.ok().map(|_| false)))
                }));
            }
            let Some(fut) = self.pending.as_mut() else { return Poll::Ready(None) };
            match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready((rx, outcome)) => {
                    self.pending = None;
                    let Some(timed_out) = outcome else { return Poll::Ready(None) };
                    let key = leadership(&rx.borrow(), boottime_now());
                    let unchanged = self.last.as_ref() == Some(&key);
                    self.rx = Some(rx);
                    // A quiet stretch gets a keep-alive; a view change that
                    // changed nothing a watcher cares about gets nothing.
                    if unchanged && timed_out {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": keep-alive\n\n")))));
                    }
                }
            }
        }
    }
}

/// A hand-over, once [`admin_guard`] let it through (in [`handle`]): the
/// Host must be loopback, no Origin header (a browser page must not depose
/// the leader through DNS rebinding), and the bearer token if one is
/// configured. With `?wait=D`,
/// an accepted hand-over is answered once another node leads with a new
/// token (200, the leader JSON), or with 504 after D: a preStop hook can
/// block on one `curl -X POST` until the hand-over is done.
async fn admin(state: &ApiState, request: AdminRequest, wait: Option<Duration>) -> Response<HttpBody> {
    let (me, old_token) = {
        let v = state.view.borrow();
        (v.node_id.clone(), v.fencing_token)
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if state.admin.send((request, reply_tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(5), reply_rx).await {
        Ok(Ok(Ok(()))) => match wait {
            None => json_response(StatusCode::OK, json!({"ok": true})),
            Some(wait) => {
                let handed_over = |v: &LeaderView| {
                    v.fencing_token.is_some_and(|t| Some(t) != old_token)
                        && v.leader_id.as_ref() != Some(&me)
                        && v.leader_id.is_some()
                };
                let view = wait_until(state, wait, handed_over).await;
                let now = boottime_now();
                if handed_over(&view) {
                    json_response(StatusCode::OK, leader_json(&view, now, state.backend))
                } else {
                    let mut body = leader_json(&view, now, state.backend);
                    body["error"] = json!(format!("no other node leads after {}", humantime::format_duration(wait)));
                    json_response(StatusCode::GATEWAY_TIMEOUT, body)
                }
            }
        },
        Ok(Ok(Err(e))) => {
            let status = match e {
                AdminError::UnknownPeer(_) | AdminError::SelfTarget(_) => StatusCode::BAD_REQUEST,
                AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::CONFLICT,
            };
            error(status, &e.to_string())
        }
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "no answer from the consensus loop"),
    }
}

/// The answer to "am I the leader, with which token, for how much longer?"
pub fn leader_json(view: &LeaderView, now: Nanos, backend: &str) -> Value {
    let leading = view.is_leader(now);
    json!({
        "is_leader": leading,
        "node_id": view.node_id.as_str(),
        "leader_id": view.leader_id.as_ref().map(|l| l.as_str()),
        "leader_address": view.leader_address,
        "fencing_token": view.fencing_token.map(|t| t.0),
        "term": view.term.0,
        "lease_remaining_ms": if leading { view.lease_remaining(now).as_millis() as u64 } else { 0 },
        "lease_deadline_boottime_ns": if leading { view.lease_until.map(|u| u.0) } else { None },
        "backend": backend,
    })
}

fn status_json(view: &LeaderView, now: Nanos, backend: &str) -> Value {
    json!({
        "leader": leader_json(view, now, backend),
        "role": view.role.as_str(),
        // Rounded up: 0 only once the promise is over (a voter refuses
        // every candidate until then).
        "promise_remaining_ms": u64::try_from(view.promise_until.since(now).as_nanos().div_ceil(1_000_000))
            .unwrap_or(u64::MAX),
        "healthy": view.healthy,
        "storage_ok": view.storage_ok,
    })
}

/// The `membership` object of `/v1/status` (DESIGN §2b). A voter's
/// `reachable` is the leader's reading (acked its rounds recently) on the
/// leader, and elsewhere whether this node's connection to it is up.
pub fn membership_json(
    view: Option<&crate::core::MembershipView>,
    peers: Option<&crate::report::PeerTable>,
    now: Nanos,
) -> Value {
    let Some(v) = view else { return Value::Null };
    let connected: std::collections::BTreeMap<String, bool> =
        peers.map(|t| t.snapshot().into_iter().map(|p| (p.id.to_string(), p.connected)).collect()).unwrap_or_default();
    let identity =
        |who: &crate::core::Identity| json!({ "id": who.name.as_str(), "incarnation": who.incarnation.to_string() });
    let voters: Vec<Value> = v
        .reachable
        .iter()
        .map(|(who, reached)| {
            let reachable =
                reached.unwrap_or_else(|| who == &v.me || connected.get(who.name.as_str()).copied().unwrap_or(false));
            let mut j = identity(who);
            j["reachable"] = json!(reachable);
            j
        })
        .collect();
    let pending = v.pending.as_ref().map(|(who, add, since)| {
        json!({
            if *add { "add" } else { "remove" }: who.name.as_str(),
            "incarnation": who.incarnation.to_string(),
            "since_ms": now.since(*since).as_millis() as u64,
        })
    });
    let c = v.config.as_ref();
    json!({
        "group": c.map(|c| c.group.to_string()),
        "epoch": c.map_or(0, |c| c.epoch),
        "cterm": c.map_or(0, |c| c.cterm.0),
        "role": if c.is_none() { "blank" } else if v.is_voter() { "voter" } else { "learner" },
        "voters": voters,
        "learners": v.learners.iter().map(identity).collect::<Vec<_>>(),
        "removed": c.map_or(0, |c| c.removed.len()),
        "pending": pending,
        "genesis_pending": v.genesis.map(|g| g.to_string()),
        "desired": v.desired.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
        "desired_generation": v.desired_generation,
    })
}

fn json_response(status: StatusCode, body: Value) -> Response<HttpBody> {
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    response(status, "application/json", bytes)
}

fn error(status: StatusCode, message: &str) -> Response<HttpBody> {
    json_response(status, json!({ "error": message }))
}

fn text(status: StatusCode, body: &'static str) -> Response<HttpBody> {
    response(status, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

fn response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<HttpBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A promise that holds for less than a millisecond more is not over:
    /// a client that waits for 0 must find the node voting.
    #[test]
    fn the_promise_left_is_rounded_up() {
        let view = LeaderView {
            node_id: NodeId::new("a"),
            role: Role::Follower,
            term: crate::core::Term(3),
            leader_id: None,
            leader_address: None,
            fencing_token: None,
            lease_until: None,
            promise_until: Nanos(10_000_000),
            healthy: true,
            storage_ok: true,
        };
        assert_eq!(status_json(&view, Nanos(9_999_500), "raft")["promise_remaining_ms"], 1);
        assert_eq!(status_json(&view, Nanos(9_000_000), "raft")["promise_remaining_ms"], 1);
        assert_eq!(status_json(&view, Nanos(10_000_000), "raft")["promise_remaining_ms"], 0);
    }

    /// `PUT /v1/position` bodies: an integer or an LSN, an optional
    /// branch, a read instant that is not in the future, nothing else.
    #[test]
    fn position_bodies_are_checked() {
        let now = Nanos(5_000);
        let r = position_body(br#"{"position":"16/B374D848","branch":7,"read_at_boottime_ns":4000}"#, now);
        let r = r.expect("a valid body");
        assert_eq!(r.position, Some(crate::core::Position { branch: crate::core::Term(7), at: 0x16_B374_D848 }));
        assert_eq!(r.read_at, Nanos(4_000));
        assert_eq!(position_body(br#"{"position":12}"#, now).map(|r| r.read_at), Ok(now));
        for bad in [
            &br#"{"position":-1}"#[..],
            br#"{"position":"x"}"#,
            br#"{"branch":1}"#,
            br#"[1]"#,
            b"",
            br#"{"position":1,"read_at_boottime_ns":5001}"#,
            br#"{"position":1,"extra":true}"#,
        ] {
            assert!(position_body(bad, now).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// The `membership` object of DESIGN §2b: voters by identity with
    /// reachability, learners, and a pending change by id.
    #[test]
    fn membership_reads_as_design_gives_it() {
        use crate::core::{Configuration, GroupUid, Identity, Incarnation, MembershipView, NodeId, Term};
        let who = |n: &str, i: u128| Identity::new(NodeId::new(n), Incarnation(i));
        let config = Configuration {
            group: GroupUid(0x6a),
            cterm: Term(9),
            epoch: 4,
            voters: [who("a", 1), who("b", 2)].into_iter().collect(),
            removed: [who("c", 3)].into_iter().collect(),
            generation: 2,
            floor: Term(1),
        };
        let view = MembershipView {
            me: who("a", 1),
            config: Some(config),
            reachable: vec![(who("a", 1), Some(true)), (who("b", 2), Some(false))],
            learners: vec![who("d", 4)],
            pending: Some((who("d", 4), true, Nanos(1_000_000))),
            genesis: None,
            desired: ["a", "b", "d"].into_iter().map(NodeId::new).collect(),
            desired_generation: 2,
        };
        let j = membership_json(Some(&view), None, Nanos(121_000_000));
        assert_eq!(j["epoch"], 4);
        assert_eq!(j["cterm"], 9);
        assert_eq!(j["role"], "voter");
        assert_eq!(j["removed"], 1);
        assert_eq!(j["voters"][1], json!({"id": "b", "incarnation": format!("{:032x}", 2), "reachable": false}));
        assert_eq!(j["learners"][0]["id"], "d");
        assert_eq!(j["pending"], json!({"add": "d", "incarnation": format!("{:032x}", 4), "since_ms": 120}));
        assert_eq!(j["desired_generation"], 2);
        assert_eq!(membership_json(None, None, Nanos(0)), Value::Null);
    }
}
