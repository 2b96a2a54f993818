//! The local HTTP API (DESIGN §5), on `--listen-api`.
//!
//! Owns: HTTP parsing and the JSON answers. Must not: wait for the consensus
//! loop, the disk or the network on a read. Every read is a copy of the
//! latest view from the driver's watch channel.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::boottime_now;
use crate::core::{LeaderView, Nanos, Role};

/// What the API reads.
pub struct ApiState {
    pub view: watch::Receiver<LeaderView>,
    pub backend: &'static str,
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<ApiState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&req, &state)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn handle(req: &Request<Incoming>, state: &ApiState) -> Response<Full<Bytes>> {
    let view = state.view.borrow().clone();
    let now = boottime_now();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD here\n");
    }
    let leading = view.is_leader(now);
    let ok_if = |cond: bool| if cond { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    match req.uri().path() {
        "/v1/leader" => json_response(ok_if(leading), leader_json(&view, now, state.backend)),
        "/v1/status" => json_response(StatusCode::OK, status_json(&view, now, state.backend)),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            text(ok_if(view.leader_id.is_some()), if view.leader_id.is_some() { "ok\n" } else { "no leader known\n" })
        }
        // Patroni-compatible health checks for HAProxy and pgbouncer.
        "/primary" | "/leader" => json_response(ok_if(leading), leader_json(&view, now, state.backend)),
        "/replica" => {
            let replica = !leading && view.role != Role::Leader && view.leader_id.is_some() && view.healthy;
            json_response(ok_if(replica), leader_json(&view, now, state.backend))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
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
        "promise_remaining_ms": view.promise_until.since(now).as_millis() as u64,
        "healthy": view.healthy,
        "storage_ok": view.storage_ok,
    })
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut bytes = body.to_string().into_bytes();
    bytes.push(b'\n');
    response(status, "application/json", bytes)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

fn response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    r
}
