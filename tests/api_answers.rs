//! What schemathesis found against docs/openapi.yaml (tests/api_contract.rs),
//! each pinned by a request to a live sidecar: methods a path does not
//! serve (405 with `Allow`), paths it does not serve (404 for any method),
//! Patroni's `OPTIONS` checks and aliases, percent-decoded and checked
//! query strings, the plain form of a wait, the guard before the query, the
//! 401's `WWW-Authenticate`, and the metrics listener's methods. Other
//! paths than `/v1/leader` and the hand-overs do not read their query.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;
use common::group::Group;

/// One raw request over a fresh connection: the status, the header block
/// (lower-cased) and the body.
fn raw(addr: &str, request_line: &str, headers: &[&str]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let host = if headers.iter().any(|h| h.starts_with("Host:")) { "" } else { "Host: 127.0.0.1\r\n" };
    let mut req = format!("{request_line} HTTP/1.1\r\n{host}Connection: close\r\n");
    for h in headers {
        req += &format!("{h}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A single node started with `--api-token-file` (token `s3cret`); `name`
/// keeps each test's files apart.
fn token_node(name: &str) -> Group {
    let token = Group::dir_for(name).join("token");
    Group::start(name, 1, Duration::from_secs(1), move |_, mut a| {
        std::fs::write(&token, "s3cret\n").expect("token");
        a.extend(["--api-token-file".to_string(), token.to_string_lossy().into_owned()]);
        a
    })
}

#[test]
fn a_method_a_path_does_not_serve_gets_405_with_allow_and_an_unknown_path_404() {
    let g = token_node("api-answers-405");
    let api = &g.apis[0];
    for (line, allow) in [
        ("TRACE /v1/status", "get, head"),
        ("DELETE /v1/leader", "get, head"),
        ("GET /v1/step-down", "post"),
        ("PUT /v1/transfer?to=n2", "post"),
        ("POST /v1/position", "put"),
        ("PATCH /primary", "get, head, options"),
        ("OPTIONS /v1/step-down", "post"),
        ("OPTIONS /v1/status", "get, head"),
    ] {
        let (status, head, _) = raw(api, line, &[]);
        assert_eq!(status, 405, "{line}");
        assert!(head.contains(&format!("\r\nallow: {allow}\r\n")), "{line}: {head}");
    }
    for line in ["POST /nope", "GET /nope", "DELETE /v1", "OPTIONS /v1/leader/x"] {
        assert_eq!(raw(api, line, &[]).0, 404, "{line}");
    }
    let metrics = &g.metrics[0];
    for line in ["POST /metrics", "PUT /healthz", "OPTIONS /readyz"] {
        let (status, head, _) = raw(metrics, line, &[]);
        assert_eq!(status, 405, "the metrics listener answers GET and HEAD only: {line}");
        assert!(head.contains("\r\nallow: get, head\r\n"), "{line}: {head}");
    }
    assert_eq!(raw(metrics, "DELETE /nope", &[]).0, 404);
}

#[test]
fn patroni_checks_answer_options_and_its_aliases() {
    let mut g = token_node("api-answers-patroni");
    let api = g.apis[0].clone();
    // Each check on the leader, asked again (at most 5 times) if the lease
    // lapsed in between.
    let on_the_leader = |line: &str| {
        for _ in 0..5 {
            g.leader(Duration::from_secs(10), None);
            let answer = raw(&api, line, &[]);
            if answer.0 == 200 {
                return answer;
            }
        }
        panic!("{line}: never 200 on the leader");
    };
    for path in ["/", "/primary", "/master", "/leader", "/read-write", "/read-only"] {
        let (_, head, body) = on_the_leader(&format!("OPTIONS {path}"));
        assert_eq!(body, "", "OPTIONS {path}: the status alone");
        assert!(!head.contains("content-type"), "OPTIONS {path}: {head}");
        let (_, _, body) = on_the_leader(&format!("HEAD {path}"));
        assert_eq!(body, "", "HEAD {path}");
        let (_, _, body) = on_the_leader(&format!("GET {path}"));
        assert!(body.contains("\"is_leader\":true"), "GET {path}: {body}");
    }
    assert_eq!(raw(&api, "OPTIONS /replica", &[]).0, 503, "the leader is no replica");
    g.check();
}

#[test]
fn query_strings_are_decoded_and_checked_and_a_wait_has_one_form() {
    let g = token_node("api-answers-query");
    let api = &g.apis[0];
    let status = |q: &str| raw(api, &format!("GET /v1/leader?{q}"), &[]).0;
    let ok = |s: u16| s == 200 || s == 503;
    assert!(ok(status("wait=1%30ms")), "a %-escaped wait is decoded");
    assert!(ok(status("wait=0s&after_token=0")));
    // A path that takes no query does not read it.
    assert_eq!(raw(api, "GET /v1/status?%ZZ&a&a", &[]).0, 200);
    assert_eq!(raw(api, "GET /healthz?%", &[]).0, 200);
    for bad in ["wait=0", "wait=1h", "wait=1m30s", "wait=%ZZ", "wait=1s&wait=2s", "after_token=x", "after_token=%2B7"] {
        let (s, _, body) = raw(api, &format!("GET /v1/leader?{bad}"), &[]);
        assert_eq!(s, 400, "{bad}: {body}");
        assert!(body.contains("\"error\""), "{bad}: {body}");
    }
}

#[test]
fn the_guard_comes_before_the_query_and_a_401_names_its_scheme() {
    let g = token_node("api-answers-guard");
    let api = &g.apis[0];
    // Without the token, a malformed query is not looked at.
    let (status, head, _) = raw(api, "POST /v1/step-down?wait=bogus", &[]);
    assert_eq!(status, 401);
    assert!(head.contains("\r\nwww-authenticate: bearer realm=\"leasehold\"\r\n"), "{head}");
    let (status, head, _) = raw(api, "POST /v1/transfer", &["Origin: http://evil.example"]);
    assert_eq!(status, 403);
    assert!(!head.contains("www-authenticate"), "a 403 asks for no credentials: {head}");
    let (status, _, body) = raw(api, "POST /v1/step-down?wait=bogus", &["Host: evil.example:4040"]);
    assert_eq!(status, 403, "the Host guard comes before the query too: {body}");
    // The scheme in any case.
    let (status, _, body) = raw(api, "POST /v1/step-down?wait=bogus", &["Authorization: bearer s3cret"]);
    assert_eq!(status, 400, "past the guard, the query is checked: {body}");
    assert_eq!(raw(api, "POST /v1/step-down?wait=bogus", &["Authorization: Bearer s3cre"]).0, 401);
}
