//! `api_query`: what the local API decides from a request line and headers
//! alone (src/api.rs): query parameters, `?wait=`, `GET /v1/leader`'s long
//! poll, `POST /v1/step-down` and `/v1/transfer?to=`, the metrics path
//! label, and the guard of the mutating endpoints (Origin, Host, bearer
//! token).
//!
//! The input, split at NUL bytes, is up to seven fields: path, query, Host
//! header, the configured host name, the configured token, Authorization
//! header, Origin header. A missing field is an absent header or setting; a
//! header value HTTP does not allow is an absent header.
//!
//! Properties:
//! 1. Nothing panics.
//! 2. `query_param` finds the first `name=value` pair and only that;
//!    `wait_param`, `leader_query` and `admin_request` agree with it, every
//!    accepted wait is at most `MAX_WAIT`, a transfer target is never empty.
//! 3. The path label is one of a fixed set, the path itself when known.
//! 4. The guard refuses with an Origin header (403), then a Host that is
//!    not loopback or the configured name (403), then a token mismatch
//!    (401), and accepts otherwise. A Host it accepts is, once an optional
//!    `:port` and brackets are removed, `localhost`, a loopback IP literal
//!    or the configured name: never a name a page could make resolve to
//!    this host (DNS rebinding). Every loopback form with any port is
//!    accepted.
//! 5. The token comparison is equality.
#![no_main]
// The clippy bans guard src/core; fuzz_target! reads files (its RUST_LIBFUZZER_DEBUG_PATH).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, HOST, ORIGIN};
use hyper::StatusCode;
use leasehold::api::{
    admin_guard, admin_request, constant_time_eq, host_allowed, leader_query, path_label, query_param, wait_param,
    MAX_WAIT,
};
use leasehold::core::AdminRequest;
use leasehold::labels::{API_PATHS, OTHER_PATH};
use libfuzzer_sys::fuzz_target;

fn check_query(query: &str) {
    for name in ["wait", "after_token", "to"] {
        let first = query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name);
        match query_param(query, name) {
            Some(v) => {
                assert_eq!(first.map(|(_, v)| v), Some(v));
                assert!(!v.contains('&'));
            }
            None => assert!(first.is_none(), "{name} is in {query:?}"),
        }
    }
    let wait_value = query_param(query, "wait");
    let wait = wait_param(query);
    match &wait {
        Ok(None) => assert!(wait_value.is_none()),
        Ok(Some(d)) => {
            let given = humantime::parse_duration(wait_value.expect("a wait was given")).expect("it parses");
            assert_eq!(*d, given.min(MAX_WAIT));
        }
        Err(msg) => {
            assert!(msg.starts_with("wait="), "{msg}");
            assert!(humantime::parse_duration(wait_value.expect("a wait was given")).is_err());
        }
    }
    match leader_query(query) {
        Ok(None) => assert_eq!(wait, Ok(None)),
        Ok(Some((d, after))) => {
            assert_eq!(wait, Ok(Some(d)));
            assert_eq!(
                after.map(|n| n.to_string()),
                query_param(query, "after_token").map(|t| t.parse::<u64>().expect("a number").to_string())
            );
        }
        Err(msg) => {
            let bad_token = query_param(query, "after_token").is_some_and(|t| t.parse::<u64>().is_err());
            assert!(wait.is_err() || (matches!(wait, Ok(Some(_))) && bad_token), "{msg}");
        }
    }
    match admin_request("/v1/step-down", query) {
        Some(Ok((AdminRequest::StepDown, w))) => assert_eq!(Ok(w), wait),
        Some(Err(msg)) => assert_eq!(Err(msg), wait),
        other => panic!("step-down parsed as {other:?}"),
    }
    match admin_request("/v1/transfer", query) {
        Some(Ok((AdminRequest::TransferTo(to), w))) => {
            assert_eq!(Ok(w), wait);
            assert!(!to.as_str().is_empty());
            assert_eq!(query_param(query, "to"), Some(to.as_str()));
        }
        Some(Err(msg)) => {
            assert!(wait.is_err() || query_param(query, "to").is_none_or(str::is_empty), "{msg}");
        }
        other => panic!("transfer parsed as {other:?}"),
    }
}

fn check_path(path: &str) {
    let label = path_label(path);
    if API_PATHS.contains(&path) {
        assert_eq!(label, path);
    } else {
        assert_eq!(label, OTHER_PATH);
    }
    if admin_request(path, "to=b").is_some() {
        assert!(["/v1/step-down", "/v1/transfer"].contains(&path));
    }
}

/// What a Host names once an optional `:port` and `[...]` are taken off:
/// every reading of it.
fn bare_hosts(host: &str) -> Vec<&str> {
    let mut readings = vec![host];
    if let Some((h, port)) = host.rsplit_once(':') {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            readings.push(h);
        }
    }
    readings.into_iter().map(|h| h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h)).collect()
}

fn is_loopback_name(bare: &str) -> bool {
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn check_host(host: &str, name: Option<&str>, port: u16) {
    let allowed = host_allowed(host, name);
    if allowed {
        let readings = bare_hosts(host);
        assert!(
            readings.iter().any(|b| is_loopback_name(b) || Some(*b) == name),
            "{host:?} accepted (name {name:?}), but it names no loopback address"
        );
    }
    if host_allowed(host, None) {
        assert!(allowed, "a configured name takes nothing away");
    }
    for loopback in ["localhost".to_string(), "127.0.0.1".to_string(), "127.3.2.1".to_string(), "[::1]".to_string()] {
        assert!(host_allowed(&loopback, name), "{loopback}");
        assert!(host_allowed(&format!("{loopback}:{port}"), name), "{loopback}:{port}");
    }
}

fn header(bytes: Option<&[u8]>) -> Option<HeaderValue> {
    bytes.and_then(|b| HeaderValue::from_bytes(b).ok())
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|b| *b == 0);
    let mut field = || fields.next();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (path, query) = (field().map(text).unwrap_or_default(), field().map(text).unwrap_or_default());
    let (host, host_name, token) = (field(), field().map(text), field().map(text));
    let (authorization, origin) = (field(), field());

    check_query(&query);
    check_path(&path);

    let mut headers = HeaderMap::new();
    for (name, value) in [(HOST, host), (AUTHORIZATION, authorization), (ORIGIN, origin)] {
        if let Some(v) = header(value) {
            headers.insert(name, v);
        }
    }
    let host_text = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let port = data.iter().fold(0u16, |p, b| p.wrapping_mul(7).wrapping_add(u16::from(*b)));
    check_host(host_text, host_name.as_deref(), port);

    let given = headers.get(AUTHORIZATION).and_then(|h| h.to_str().ok()).unwrap_or("");
    let expected = token.as_ref().map(|t| format!("Bearer {t}"));
    if let Some(expected) = &expected {
        assert_eq!(constant_time_eq(given.as_bytes(), expected.as_bytes()), given == expected);
    }
    let verdict = admin_guard(&headers, host_name.as_deref(), token.as_deref());
    let want = if headers.contains_key(ORIGIN) || !host_allowed(host_text, host_name.as_deref()) {
        Err(StatusCode::FORBIDDEN)
    } else if expected.is_some_and(|e| e != given) {
        Err(StatusCode::UNAUTHORIZED)
    } else {
        Ok(())
    };
    assert_eq!(verdict.map_err(|(status, _)| status), want);
});
