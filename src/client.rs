//! The client subcommands (`status`, `leader`, `step-down`, `transfer`): one
//! HTTP request to a running sidecar's API, human output or `--json`.
//!
//! Owns: a minimal blocking HTTP/1.1 client for loopback use, and the
//! wording of the answers. Must not: change anything but through the API.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{ClientArgs, Command};

/// A request's outcome: HTTP status and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// `http://HOST:PORT` (or `HOST:PORT`) to `HOST:PORT`.
fn authority(api: &str) -> Result<&str, String> {
    let rest = api.strip_prefix("http://").unwrap_or(api);
    if rest.starts_with("https://") {
        return Err(format!("--api {api}: https is not supported for the local API"));
    }
    let auth = rest.split('/').next().unwrap_or("");
    if auth.is_empty() {
        return Err(format!("--api {api}: expected http://HOST:PORT"));
    }
    Ok(auth)
}

/// One request; the API is on this machine.
pub fn request(api: &str, method: &str, path: &str) -> Result<Answer, String> {
    request_within(api, method, path, Duration::from_secs(10))
}

/// The most of an answer that is read.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// One request that gives up after `limit` in all, however slowly the
/// other side trickles bytes.
pub fn request_within(api: &str, method: &str, path: &str, limit: Duration) -> Result<Answer, String> {
    let deadline = std::time::Instant::now() + limit;
    let auth = authority(api)?;
    let with_port = if auth.contains(':') { auth.to_string() } else { format!("{auth}:80") };
    let addr = with_port
        .as_str()
        .to_socket_addrs()
        .map_err(|e| format!("--api {api}: {e}"))?
        .next()
        .ok_or_else(|| format!("--api {api}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, limit.min(Duration::from_secs(2)))
        .map_err(|e| format!("cannot reach {api}: {e}"))?;
    let host = if addr.ip().is_loopback() { "127.0.0.1".to_string() } else { auth.to_string() };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .map_err(|e| format!("{api}: {e}"))?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || bytes.len() as u64 >= MAX_ANSWER_BYTES {
            return Err(format!("{api}: no complete answer within {limit:?}"));
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{api}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| format!("{api}: not an HTTP answer"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok(Answer { status, body })
}

/// Runs a client subcommand.
pub fn run(command: &Command) -> ExitCode {
    let (args, method, path): (&ClientArgs, &str, String) = match command {
        Command::Status(a) => (a, "GET", "/v1/status".into()),
        Command::Leader(a) => (a, "GET", "/v1/leader".into()),
        Command::StepDown(a) => (a, "POST", "/v1/step-down".into()),
        Command::Transfer(t) => (&t.client, "POST", format!("/v1/transfer?to={}", t.to)),
        Command::Run(_) | Command::Local(_) => return ExitCode::from(2),
    };
    let answer = match request(&args.api, method, &path) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("leasehold: {e}");
            return ExitCode::from(1);
        }
    };
    if args.json {
        print!("{}", answer.body);
        return if answer.status < 300 || (answer.status == 503 && method == "GET") {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let v: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    match command {
        Command::Status(_) => println!("{}", describe_status(&v)),
        Command::Leader(_) => println!("{}", describe_leader(&v)),
        _ if answer.status == 200 => println!("ok: leadership is being handed over"),
        _ => {
            eprintln!("leasehold: refused ({}): {}", answer.status, v["error"].as_str().unwrap_or(&answer.body));
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

/// "n2 leads (fencing token 7); this node n1 is a follower".
pub fn describe_leader(v: &Value) -> String {
    let me = v["node_id"].as_str().unwrap_or("?");
    match (v["leader_id"].as_str(), v["fencing_token"].as_u64()) {
        (Some(_), Some(t)) if v["is_leader"].as_bool() == Some(true) => {
            format!("{me} leads with fencing token {t}, lease for {} ms more", v["lease_remaining_ms"])
        }
        (Some(leader), Some(t)) => format!("{leader} leads (fencing token {t}); {me} follows"),
        _ => format!("no leader known to {me} (term {})", v["term"]),
    }
}

fn describe_status(v: &Value) -> String {
    format!(
        "{}\nrole {}, term {}, promise {} ms, healthy {}, storage ok {}",
        describe_leader(&v["leader"]),
        v["role"].as_str().unwrap_or("?"),
        v["leader"]["term"],
        v["promise_remaining_ms"],
        v["healthy"],
        v["storage_ok"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_urls_parse_and_https_is_refused() {
        assert_eq!(authority("http://127.0.0.1:4040").expect("ok"), "127.0.0.1:4040");
        assert_eq!(authority("127.0.0.1:4040").expect("ok"), "127.0.0.1:4040");
        assert!(authority("https://x:1").is_err());
        assert_eq!(authority("http://localhost/health").expect("ok"), "localhost");
        assert!(authority("http:///x").is_err());
    }

    #[test]
    fn leader_answers_read_like_sentences() {
        let leader =
            json!({"node_id":"n1","leader_id":"n1","is_leader":true,"fencing_token":7,"lease_remaining_ms":900});
        assert_eq!(describe_leader(&leader), "n1 leads with fencing token 7, lease for 900 ms more");
        let follower = json!({"node_id":"n2","leader_id":"n1","is_leader":false,"fencing_token":7});
        assert_eq!(describe_leader(&follower), "n1 leads (fencing token 7); n2 follows");
        let none = json!({"node_id":"n2","leader_id":null,"fencing_token":null,"term":3});
        assert_eq!(describe_leader(&none), "no leader known to n2 (term 3)");
    }
}
