//! The client subcommands (`status`, `leader`, `step-down`, `transfer`): one
//! HTTP request to a running sidecar's API, human output or `--json`.
//!
//! Owns: the wording of the answers (the requests go through
//! [`crate::http::request`]). Must not: change anything but through the API.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{ClientArgs, Command, HandOverArgs};
use crate::http::{self, Answer};

/// One request of a subcommand: ten seconds at most.
fn request(api: &str, method: &str, path: &str) -> Result<Answer, String> {
    http::request(api, method, path, &[], "", Duration::from_secs(10))
}

/// Runs a client subcommand.
pub fn run(command: &Command) -> ExitCode {
    match command {
        Command::Status(a) => read(a, "/v1/status", describe_status),
        Command::Leader(a) => read(a, "/v1/leader", describe_leader),
        Command::Members(a) => members(a),
        Command::StepDown(s) => hand_over(&s.client, &s.hand_over, "/v1/step-down".into()),
        Command::Transfer(t) => hand_over(&t.client, &t.hand_over, format!("/v1/transfer?to={}", t.to)),
        Command::Watch(a) => watch(a),
        Command::Run(_) | Command::Local(_) => ExitCode::from(2),
    }
}

/// `watch`: who leads now, then one line per leadership change, until
/// killed. Each wait is a long poll for a token other than the last one
/// seen, so a change between two polls is not missed; an unreachable
/// sidecar (restarting, say) is retried each second.
fn watch(args: &ClientArgs) -> ExitCode {
    let mut last = String::new();
    let mut token: Option<u64> = None;
    let mut first = true;
    loop {
        let path = match (first, token) {
            (true, _) => "/v1/leader".to_string(),
            (false, Some(t)) => format!("/v1/leader?wait=60s&after_token={t}"),
            (false, None) => "/v1/leader?wait=60s".to_string(),
        };
        let line = match http::request(&args.api, "GET", &path, &[], "", Duration::from_secs(70)) {
            Ok(a) if serde_json::from_str::<Value>(&a.body).is_err() => {
                // Not a leasehold API (a wrong --api?): do not spin on it.
                std::thread::sleep(Duration::from_secs(1));
                format!("leasehold: {}: answered {} without JSON", args.api, a.status)
            }
            Ok(a) => {
                first = false;
                let v: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
                token = v["fencing_token"].as_u64().or(token);
                if args.json {
                    a.body.trim().to_string()
                } else {
                    describe_leader(&v)
                }
            }
            Err(e) => {
                std::thread::sleep(Duration::from_secs(1));
                format!("leasehold: {e}")
            }
        };
        // Only the lease countdown differs between two answers of one
        // leadership: print who leads, not every renewal.
        let key = line.split(", lease for").next().unwrap_or(&line).to_string();
        if key != last || args.json {
            println!("{line}");
            last = key;
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("leasehold: {message}");
    ExitCode::from(1)
}

/// `status` and `leader`: a 503 from /v1/leader is an answer, not a failure.
fn read(args: &ClientArgs, path: &str, describe: fn(&Value) -> String) -> ExitCode {
    let answer = match request(&args.api, "GET", path) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    if args.json {
        print!("{}", answer.body);
    } else {
        println!("{}", describe(&serde_json::from_str(&answer.body).unwrap_or(Value::Null)));
    }
    if answer.status < 300 || answer.status == 503 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `members`: the `membership` of `/v1/status` (with `--json`, that
/// object alone); a node of a static group or of etcd has none.
fn members(args: &ClientArgs) -> ExitCode {
    let answer = match request(&args.api, "GET", "/v1/status") {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let status: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    let membership = &status["membership"];
    if membership.is_null() {
        return fail(
            "this node runs no managed group: a static one, or one converting (it becomes managed once every voter \
             runs with --peers-file); see docs/operations.md",
        );
    }
    if args.json {
        println!("{membership}");
    } else {
        println!("{}", describe_members(membership));
    }
    ExitCode::SUCCESS
}

/// One line for the configuration, one per voter, learner and pending
/// change, one for the desired set.
pub fn describe_members(m: &Value) -> String {
    let who = |id: &Value, inc: &Value| {
        let inc = inc.as_str().unwrap_or("?");
        format!("{} (incarnation {})", id.as_str().unwrap_or("?"), inc.chars().take(8).collect::<String>())
    };
    let mut lines = vec![match m["role"].as_str() {
        Some("blank") => match m["genesis_pending"].as_str() {
            Some(g) => format!("blank: accepted the creation of group {g}, waiting for every desired member"),
            None => "blank: no configuration yet (waiting for every desired member to be blank, or for a member to \
                     add it)"
                .to_string(),
        },
        role => format!(
            "group {}, epoch {}, stamped in term {}; this node is a {}",
            m["group"].as_str().unwrap_or("?"),
            m["epoch"],
            m["cterm"],
            role.unwrap_or("?")
        ),
    }];
    for v in m["voters"].as_array().into_iter().flatten() {
        let reach = if v["reachable"].as_bool() == Some(true) { "reachable" } else { "not reachable" };
        lines.push(format!("voter {}: {reach}", who(&v["id"], &v["incarnation"])));
    }
    for l in m["learners"].as_array().into_iter().flatten() {
        lines.push(format!("learner {}", who(&l["id"], &l["incarnation"])));
    }
    // Indexed as a `Value` (a missing key reads as null), never as a map.
    let p = &m["pending"];
    if p.is_object() {
        let (what, id) = if p["add"].is_null() { ("removing", &p["remove"]) } else { ("adding", &p["add"]) };
        lines.push(format!("pending: {what} {} for {} ms", who(id, &p["incarnation"]), p["since_ms"]));
    }
    let desired: Vec<&str> = m["desired"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    lines.push(format!("desired: {} (generation {})", desired.join(", "), m["desired_generation"]));
    lines.join("\n")
}

/// `step-down` and `transfer`: ask; with --wait, return only once another
/// node leads with a new token, as a preStop hook needs.
fn hand_over(args: &ClientArgs, how: &HandOverArgs, path: String) -> ExitCode {
    let token = match &args.token_file {
        None => None,
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            Ok(_) => return fail(&format!("--token-file {}: the file is empty", f.display())),
            Err(e) => return fail(&format!("--token-file {}: {e}", f.display())),
        },
    };
    let before = match request(&args.api, "GET", "/v1/leader") {
        Ok(a) => serde_json::from_str::<Value>(&a.body).unwrap_or(Value::Null),
        Err(e) => return fail(&e),
    };
    let leads = before["is_leader"].as_bool() == Some(true);
    let nothing_to_do = |v: &Value| {
        if args.json {
            println!("{v}");
        } else {
            println!("ok: {}; nothing to hand over", describe_leader(v));
        }
        ExitCode::SUCCESS
    };
    if how.if_leader && !leads {
        return nothing_to_do(&before);
    }
    // With --wait the sidecar answers once another node leads with a new
    // token (200) or after the wait (504).
    let (path, limit) = match how.wait {
        None => (path, Duration::from_secs(10)),
        Some(w) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            (format!("{path}{sep}wait={}ms", w.as_millis()), w + Duration::from_secs(10))
        }
    };
    let bearer = token.map(|t| format!("Authorization: Bearer {t}"));
    let headers: Vec<&str> = bearer.as_deref().into_iter().collect();
    let answer = match http::request(&args.api, "POST", &path, &headers, "", limit) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let v: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    if args.json && !(how.if_leader && answer.status == 409) {
        print!("{}", answer.body);
    }
    let reason = v["error"].as_str().unwrap_or(&answer.body);
    match answer.status {
        200 => {}
        504 => return fail(reason),
        // The lease lapsed between the look and the request: still nothing
        // to hand over.
        409 if how.if_leader => {
            if let Ok(now) = request(&args.api, "GET", "/v1/leader") {
                let now: Value = serde_json::from_str(&now.body).unwrap_or(Value::Null);
                if now["is_leader"].as_bool() != Some(true) {
                    return nothing_to_do(&now);
                }
            }
            return fail(&format!("refused (409): {reason}"));
        }
        s => return fail(&format!("refused ({s}): {reason}")),
    }
    if !args.json {
        match how.wait {
            None => println!("ok: leadership is being handed over"),
            Some(_) => println!("ok: {}", describe_leader(&v)),
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
    let mut out = format!(
        "{}\nrole {}, term {}, promise {} ms, healthy {}, storage ok {}",
        describe_leader(&v["leader"]),
        v["role"].as_str().unwrap_or("?"),
        v["leader"]["term"],
        v["promise_remaining_ms"],
        v["healthy"],
        v["storage_ok"]
    );
    if let Some(inc) = v["incarnation"].as_str() {
        out += &format!("\nincarnation {inc}");
    }
    for p in v["peers"].as_array().into_iter().flatten() {
        let contact = match p["last_contact_ms_ago"].as_u64() {
            Some(ms) => format!("last message {ms} ms ago"),
            None => "never heard since start".into(),
        };
        let incarnation = match p["incarnation"].as_str() {
            Some(i) => format!("incarnation {i}"),
            None => "incarnation unknown".into(),
        };
        out += &format!(
            "\npeer {}: {}, {contact}, {incarnation}",
            p["id"].as_str().unwrap_or("?"),
            if p["connected"].as_bool() == Some(true) { "connected" } else { "not connected" },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn members_lists_voters_learners_and_the_pending_change() {
        let id = |n: &str, i: &str| json!({"id": n, "incarnation": i});
        let mut a = id("a", "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
        a["reachable"] = json!(true);
        let mut b = id("b", "5f0c1d2e3b4a5968778899aabbccddee");
        b["reachable"] = json!(false);
        let m = json!({
            "group": "61bb2ab02ed71f09788ec23434d9c6c2", "epoch": 4, "cterm": 9, "role": "voter",
            "voters": [a, b], "learners": [id("c", "8282d4223f1f3cbc94a73922a1f0f3ac")],
            "pending": {"add": "c", "incarnation": "8282d4223f1f3cbc94a73922a1f0f3ac", "since_ms": 120},
            "desired": ["a", "b", "c"], "desired_generation": 2
        });
        assert_eq!(
            describe_members(&m),
            "group 61bb2ab02ed71f09788ec23434d9c6c2, epoch 4, stamped in term 9; this node is a voter\n\
             voter a (incarnation 0f1e2d3c): reachable\n\
             voter b (incarnation 5f0c1d2e): not reachable\n\
             learner c (incarnation 8282d422)\n\
             pending: adding c (incarnation 8282d422) for 120 ms\n\
             desired: a, b, c (generation 2)"
        );
        // Whatever another server answers, nothing panics.
        let odd = json!({"voters": [{"id": "ä", "incarnation": "äöüäöüäöüä"}], "pending": {"remove": 7}});
        assert!(describe_members(&odd).contains("voter ä (incarnation äöüäöüäö)"));
        let blank = json!({"role": "blank", "genesis_pending": null, "voters": [], "learners": [], "desired": ["a"], "desired_generation": 0});
        assert!(describe_members(&blank).starts_with("blank: no configuration yet"));
    }

    #[test]
    fn status_names_this_node_and_each_peer_with_its_incarnation() {
        let status = json!({
            "leader": {"node_id":"n2","leader_id":"n1","is_leader":false,"fencing_token":7,"term":7},
            "role": "follower", "promise_remaining_ms": 900, "healthy": true, "storage_ok": true,
            "incarnation": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "peers": [
                {"id":"n1","connected":true,"last_contact_ms_ago":12,"incarnation":"5f0c1d2e3b4a5968778899aabbccddee"},
                {"id":"n3","connected":false,"last_contact_ms_ago":null,"incarnation":null}
            ]
        });
        assert_eq!(
            describe_status(&status),
            "n1 leads (fencing token 7); n2 follows\n\
             role follower, term 7, promise 900 ms, healthy true, storage ok true\n\
             incarnation 0f1e2d3c4b5a69788796a5b4c3d2e1f0\n\
             peer n1: connected, last message 12 ms ago, incarnation 5f0c1d2e3b4a5968778899aabbccddee\n\
             peer n3: not connected, never heard since start, incarnation unknown"
        );
    }
}
