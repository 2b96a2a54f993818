//! What the local API decides from a request line and headers alone: the
//! query string, `?wait=`, the long poll's `after_token`, the hand-over a
//! `POST` asks for, and the guard of the mutating endpoints.
//!
//! Owns: parsing and the guard's verdict. Must not: look at the node's
//! state (the handlers in [`super`] do).

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::header::{HeaderMap, AUTHORIZATION, HOST, ORIGIN};
use hyper::StatusCode;

use crate::core::{AdminRequest, NodeId};

/// The longest `?wait=` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A query string's `name=value` pairs, percent-decoded (`+` is a space,
/// as in a form). A name given twice is refused: which one counts would be
/// a guess.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query(BTreeMap<String, String>);

impl Query {
    /// Parses `query` (without the `?`); `Err` is the message of a 400.
    pub fn parse(query: &str) -> Result<Query, String> {
        let mut pairs = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name)?;
            let value = percent_decode(value)?;
            if pairs.contains_key(&name) {
                return Err(format!("query parameter {name:?} is given more than once"));
            }
            pairs.insert(name, value);
        }
        Ok(Query(pairs))
    }

    /// The decoded value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// `%XX` escapes and `+` decoded; `Err` for a broken escape or bytes that
/// are not UTF-8.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                let byte = byte.and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(byte.ok_or_else(|| format!("{s:?} has a broken %-escape"))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// `?wait=D`, capped at [`MAX_WAIT`]; `Err` is the message of a 400.
pub fn wait_param(query: &Query) -> Result<Option<Duration>, String> {
    query.get("wait").map(|w| parse_wait(w).map(|d| d.min(MAX_WAIT))).transpose()
}

/// A wait as the API takes it: 1 to 9 digits and `ms`, `s` or `m`
/// (`500ms`, `30s`, `1m`). One plain form that every client can write.
pub fn parse_wait(w: &str) -> Result<Duration, String> {
    let digits = w.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = match w[..digits].parse() {
        Ok(n) if digits <= 9 => n,
        _ => return Err(format!("wait={w}: not 1 to 9 digits then ms, s or m (examples: 30s, 500ms)")),
    };
    match &w[digits..] {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("wait={w}: not 1 to 9 digits then ms, s or m (examples: 30s, 500ms)")),
    }
}

/// `GET /v1/leader`'s query: `None` answers at once; `Some((D, N))` is a
/// long poll (`?wait=D[&after_token=N]`); `Err` is the message of a 400.
/// `after_token` is checked always and used only with `wait`.
pub fn leader_query(query: &Query) -> Result<Option<(Duration, Option<u64>)>, String> {
    let after = match query.get("after_token") {
        None => None,
        Some(t) => Some(
            t.parse::<u64>()
                .ok()
                .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("after_token={t}: not an unsigned integer"))?,
        ),
    };
    Ok(wait_param(query)?.map(|wait| (wait, after)))
}

/// The hand-over a `POST` to `path` asks for, with its `?wait=`; `None` if
/// `path` is not a mutating endpoint, `Some(Err)` with the message of a 400.
pub fn admin_request(path: &str, query: &Query) -> Option<Result<(AdminRequest, Option<Duration>), String>> {
    match path {
        "/v1/step-down" => Some(wait_param(query).map(|wait| (AdminRequest::StepDown, wait))),
        "/v1/transfer" => Some(match (query.get("to"), wait_param(query)) {
            (_, Err(msg)) => Err(msg),
            (Some(to), Ok(wait)) if !to.is_empty() => Ok((AdminRequest::TransferTo(NodeId::new(to)), wait)),
            _ => Err("POST /v1/transfer needs ?to=NODE_ID".to_string()),
        }),
        _ => None,
    }
}

/// The guard of the mutating endpoints, on the request's headers alone: no
/// `Origin`, a `Host` that [`host_allowed`], and `Authorization: Bearer
/// <token>` if a token is configured (the scheme's case does not matter).
/// `Err` is the status and message of the refusal.
pub fn admin_guard(
    headers: &HeaderMap,
    host_name: Option<&str>,
    token: Option<&str>,
) -> Result<(), (StatusCode, &'static str)> {
    if headers.contains_key(ORIGIN) {
        return Err((StatusCode::FORBIDDEN, "requests with an Origin header are refused (browsers may not call this)"));
    }
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !host_allowed(host, host_name) {
        return Err((StatusCode::FORBIDDEN, "the Host header must name a loopback address"));
    }
    if let Some(token) = token {
        let given = headers.get(AUTHORIZATION).map(|h| h.as_bytes()).unwrap_or(b"");
        if !bearer_matches(given, token) {
            return Err((StatusCode::UNAUTHORIZED, "missing or wrong bearer token"));
        }
    }
    Ok(())
}

/// `Bearer <token>` (the scheme in any case, one space), the token
/// compared in a time that depends on the lengths only.
pub fn bearer_matches(authorization: &[u8], token: &str) -> bool {
    match authorization.split_at_checked(7) {
        Some((scheme, given)) => scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(given, token.as_bytes()),
        None => false,
    }
}

/// A `Host` header that names a loopback address (`localhost` in any case,
/// an IPv4 or bracketed IPv6 loopback literal) or `name`, with or without
/// a port (digits, at least one).
pub fn host_allowed(host: &str, name: Option<&str>) -> bool {
    let port_ok = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    let bare = if let Some(rest) = host.strip_prefix('[') {
        // "[::1]" or "[::1]:4040", nothing else after the bracket.
        match rest.split_once(']') {
            Some((ip, "")) => ip,
            Some((ip, port)) if port.strip_prefix(':').is_some_and(port_ok) => ip,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if port_ok(p) => h,
            Some(_) => return false,
            None => host,
        }
    };
    let loopback =
        bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback || name.is_some_and(|n| n == bare)
}

/// `a == b`, in a time that depends on the lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_or_the_configured_name_may_mutate() {
        for ok in ["127.0.0.1", "127.0.0.1:4040", "localhost:4040", "LocalHost", "[::1]:4040", "[::1]"] {
            assert!(host_allowed(ok, None), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:4040",
            "10.0.0.1:4040",
            "127.0.0.1.evil.example",
            "[::1].evil.com",
            "[::1]x",
            "[::1]:",
            "127.0.0.1:",
            "127.0.0.1:x",
            "localhost.evil",
        ] {
            assert!(!host_allowed(bad, None), "{bad}");
        }
        assert!(host_allowed("pg-0:4040", Some("pg-0")));
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert!(bearer_matches(b"Bearer s3cret", "s3cret"));
        assert!(bearer_matches(b"bearer s3cret", "s3cret"));
        for bad in [&b"Bearer s3cre"[..], b"Bearer  s3cret", b"Basic s3cret", b"Bearer", b"", b"s3cret"] {
            assert!(!bearer_matches(bad, "s3cret"), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn query_parameters_are_decoded_and_checked() {
        let q = Query::parse("wait=30s&after_token=7&to=pg%2D1&x").expect("valid");
        assert_eq!(q.get("after_token"), Some("7"));
        assert_eq!(q.get("to"), Some("pg-1"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(Query::parse("to=a%20b").expect("valid").get("to"), Some("a b"));
        assert_eq!(Query::parse("wait=1+s").expect("valid").get("wait"), Some("1 s"));
        assert!(Query::parse("wait=1s&wait=2s").is_err(), "a name given twice");
        assert!(Query::parse("wait=%ZZ").is_err());
        assert!(Query::parse("wait=%C3").is_err(), "not UTF-8");
        assert!(Query::parse("wait=%4").is_err());
        let parse = |q: &str| Query::parse(q).expect("valid");
        assert_eq!(wait_param(&parse("wait=2m")), Ok(Some(MAX_WAIT)));
        assert_eq!(wait_param(&parse("wait=5%30ms")), Ok(Some(Duration::from_millis(50))));
        assert_eq!(wait_param(&parse("wait=0s")), Ok(Some(Duration::ZERO)));
        assert_eq!(wait_param(&parse("wait=999999999m")), Ok(Some(MAX_WAIT)));
        for bad in ["soon", "", "1", "1h", "1m30s", "1 s", "+1s", "-1s", "1000000000ms", "1S", "1.5s"] {
            assert!(wait_param(&parse(&format!("wait={bad}"))).is_err(), "{bad}");
        }
        assert_eq!(wait_param(&parse("")), Ok(None));
        assert_eq!(leader_query(&parse("after_token=3")), Ok(None));
        assert!(leader_query(&parse("after_token=x")).is_err(), "checked without wait too");
        assert!(leader_query(&parse("after_token=%2B7")).is_err(), "digits only");
        assert_eq!(leader_query(&parse("wait=1s&after_token=3")), Ok(Some((Duration::from_secs(1), Some(3)))));
    }
}
