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
//! 2. `percent_decode` inverts %-encoding and fails exactly on a broken
//!    `%` or bytes that are not UTF-8; `Query::parse` accepts a query
//!    exactly when every pair decodes and no name repeats, and then holds
//!    each decoded value; a wait is accepted exactly in its plain form
//!    (digits, then `ms`, `s` or `m`) and means what humantime reads, an
//!    `after_token` only as digits, with or without a wait;
//!    `wait_param`, `leader_query` and `admin_request` agree with it,
//!    every accepted wait is at most `MAX_WAIT`, a transfer target is never
//!    empty.
//! 3. The path label is one of a fixed set, the path itself when known; a
//!    path the API serves has methods to list in a 405's `Allow`, only the
//!    mutating paths answer `POST` or `PUT`, and only Patroni's `OPTIONS`.
//! 4. The guard refuses with an Origin header (403), then a Host that is
//!    not loopback or the configured name (403), then a token mismatch
//!    (401), and accepts otherwise. A Host it accepts is, once an optional
//!    `:port` and brackets are removed, `localhost`, a loopback IP literal
//!    or the configured name: never a name a page could make resolve to
//!    this host (DNS rebinding). Every loopback form with any port is
//!    accepted.
//! 5. The token comparison is the scheme `bearer ` in any case, then the
//!    token byte for byte.
#![no_main]
// The clippy bans guard src/core; fuzz_target! reads files (its RUST_LIBFUZZER_DEBUG_PATH).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, HOST, ORIGIN};
use hyper::StatusCode;
use leasehold::api::{
    admin_guard, admin_request, allowed_methods, bearer_matches, host_allowed, leader_query, path_label,
    percent_decode, wait_param, Query, MAX_WAIT, PATRONI_PATHS,
};
use leasehold::core::AdminRequest;
use leasehold::labels::{API_PATHS, OTHER_PATH};
use libfuzzer_sys::fuzz_target;

/// The API's form of a wait: 1 to 9 digits, then `ms`, `s` or `m`.
fn plain_wait(w: &str) -> bool {
    let unit = w.trim_start_matches(|c: char| c.is_ascii_digit());
    let digits = w.len() - unit.len();
    (1..=9).contains(&digits) && ["ms", "s", "m"].contains(&unit)
}

/// A query's raw `name=value` pairs, as [`Query::parse`] splits them.
fn raw_pairs(query: &str) -> Vec<(&str, &str)> {
    query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect()
}

/// Whether `s` decodes, judged apart from `percent_decode`: every `%` is
/// followed by two hex digits, and the bytes it stands for are UTF-8.
fn decodes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return false,
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).is_ok()
}

fn check_query(query: &str) {
    // Decoding inverts %-encoding of every byte, and fails exactly when a
    // `%` is broken or the bytes are not UTF-8.
    let encoded: String = query.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(percent_decode(&encoded).as_deref(), Ok(query));
    for part in query.split(['&', '=']) {
        assert_eq!(percent_decode(part).is_ok(), decodes(part), "{part:?}");
    }
    let decoded: Result<Vec<(String, String)>, String> =
        raw_pairs(query).into_iter().map(|(n, v)| Ok((percent_decode(n)?, percent_decode(v)?))).collect();
    let q = match Query::parse(query) {
        Ok(q) => {
            let decoded = decoded.expect("a parsed query decodes");
            for (name, value) in &decoded {
                assert_eq!(q.get(name), Some(value.as_str()), "{name} in {query:?}");
            }
            let mut names: Vec<&String> = decoded.iter().map(|(n, _)| n).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), decoded.len(), "a name given twice was accepted: {query:?}");
            q
        }
        Err(_) => {
            if let Ok(decoded) = decoded {
                let mut names: Vec<&String> = decoded.iter().map(|(n, _)| n).collect();
                names.sort();
                names.dedup();
                assert!(names.len() < decoded.len(), "{query:?} refused, but it decodes and no name repeats");
            }
            return;
        }
    };
    let wait = wait_param(&q);
    match &wait {
        Ok(None) => assert!(q.get("wait").is_none()),
        Ok(Some(d)) => {
            let w = q.get("wait").expect("a wait was given");
            let given = humantime::parse_duration(w).expect("an accepted wait is a duration");
            assert_eq!(*d, given.min(MAX_WAIT));
            assert!(plain_wait(w), "{w:?} accepted");
        }
        Err(msg) => {
            assert!(msg.starts_with("wait="), "{msg}");
            assert!(!plain_wait(q.get("wait").expect("a wait was given")));
        }
    }
    let after =
        q.get("after_token").map(|t| t.parse::<u64>().ok().filter(|_| t.bytes().all(|b| b.is_ascii_digit())).ok_or(()));
    match leader_query(&q) {
        Ok(None) => {
            assert_eq!(wait, Ok(None));
            assert!(!matches!(after, Some(Err(_))), "a malformed after_token passed without wait");
        }
        Ok(Some((d, token))) => {
            assert_eq!(wait, Ok(Some(d)));
            assert_eq!(token, after.map(|t| t.expect("a number")));
        }
        Err(msg) => assert!(wait.is_err() || matches!(after, Some(Err(_))), "{msg}"),
    }
    match admin_request("/v1/step-down", &q) {
        Some(Ok((AdminRequest::StepDown, w))) => assert_eq!(Ok(w), wait),
        Some(Err(msg)) => assert_eq!(Err(msg), wait),
        other => panic!("step-down parsed as {other:?}"),
    }
    match admin_request("/v1/transfer", &q) {
        Some(Ok((AdminRequest::TransferTo(to), w))) => {
            assert_eq!(Ok(w), wait);
            assert!(!to.as_str().is_empty());
            assert_eq!(q.get("to"), Some(to.as_str()));
        }
        Some(Err(msg)) => {
            assert!(wait.is_err() || q.get("to").is_none_or(str::is_empty), "{msg}");
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
    let mutating = ["/v1/step-down", "/v1/transfer", "/v1/position"].contains(&path);
    if admin_request(path, &Query::parse("to=b").expect("valid")).is_some() {
        assert!(mutating && path != "/v1/position");
    }
    match allowed_methods(path) {
        Some(allow) => {
            assert!(API_PATHS.contains(&path), "{path} is served but has no label");
            assert_eq!(allow.contains("OPTIONS"), PATRONI_PATHS.contains(&path), "{path}: {allow}");
            assert_eq!(mutating, allow.contains("POST") || allow.contains("PUT"), "{path}: {allow}");
        }
        None => assert!(!API_PATHS.contains(&path) || path == "/metrics", "{path} has a label but is not served"),
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
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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

    let given = headers.get(AUTHORIZATION).map(|h| h.as_bytes()).unwrap_or(b"");
    // The scheme in any case and one space, then the token byte for byte.
    let token_ok = |t: &str| {
        given.len() == 7 + t.len() && given[..7].eq_ignore_ascii_case(b"bearer ") && &given[7..] == t.as_bytes()
    };
    if let Some(t) = &token {
        assert_eq!(bearer_matches(given, t), token_ok(t));
    }
    let verdict = admin_guard(&headers, host_name.as_deref(), token.as_deref());
    let want = if headers.contains_key(ORIGIN) || !host_allowed(host_text, host_name.as_deref()) {
        Err(StatusCode::FORBIDDEN)
    } else if token.as_deref().is_some_and(|t| !token_ok(t)) {
        Err(StatusCode::UNAUTHORIZED)
    } else {
        Ok(())
    };
    assert_eq!(verdict.map_err(|(status, _)| status), want);
});
