//! Start-up refusals of the real binary: one line on stderr naming the flag
//! or the file, exit code 2, and a damaged state file left untouched.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::certs::Ca;

/// Runs `leasehold` until it exits. One still running after 30s started
/// when it should have refused: it is killed by its pid and the test fails.
fn leasehold(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Isolate from any LEASEHOLD_* in the caller's environment.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LEASEHOLD_")) {
        if !env.iter().any(|(e, _)| *e == k) {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run leasehold");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("leasehold {args:?} still runs after 30s instead of stopping");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("leasehold-startup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_wrong_flag_stops_start_up_with_one_line_and_exit_code_2() {
    let dir = temp_dir("flags");
    let dir_s = dir.to_string_lossy().into_owned();
    let cases: &[(&[&str], &str)] = &[
        (&["--node-id", "z", "--peers", "a=h:1,b=h:2"], "--node-id"),
        (&["--node-id", "a", "--peers", "a=h:1,a=h:2"], "--peers"),
        (&["--lease-ttl", "1s", "--heartbeat-interval", "900ms"], "--heartbeat-interval"),
    ];
    for (args, flag) in cases {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", &dir_s]);
        let o = leasehold(&all, &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, got {err:?}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn peer_tls_needs_all_three_files_and_stops_start_up_on_one_it_cannot_use() {
    let dir = temp_dir("peer-tls");
    let ca = Ca::new(&dir, "ca");
    let node = ca.issue("node", "IP:127.0.0.1", 1, 2);
    let elsewhere = ca.issue("elsewhere", "DNS:db.example", 2, 2);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").expect("write");
    let missing = dir.join("missing-ca.pem");
    let s = |p: &PathBuf| p.to_string_lossy().into_owned();
    let (cert, key, ca_file, garbage_s, missing_s) =
        (s(&node.cert), s(&node.key), s(&ca.cert), s(&garbage), s(&missing));
    let (elsewhere_cert, elsewhere_key) = (s(&elsewhere.cert), s(&elsewhere.key));
    let data = s(&dir.join("data"));
    let peers = "a=127.0.0.1:7101,b=127.0.0.1:7102";
    // Flags, LEASEHOLD_* variables, and what the one line must contain.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (&["--peer-tls-cert", &cert, "--peer-tls-key", &key], &[], &["--peer-tls-ca: is missing"]),
        (&["--peer-tls-key", &key], &[("LEASEHOLD_PEER_TLS_CA", &ca_file)], &["--peer-tls-cert: is missing"]),
        (
            &["--peer-tls-cert", &garbage_s, "--peer-tls-key", &key, "--peer-tls-ca", &ca_file],
            &[],
            &["--peer-tls-cert", &garbage_s, "not a valid PEM certificate"],
        ),
        (
            &["--peer-tls-cert", &cert, "--peer-tls-key", &key, "--peer-tls-ca", &missing_s],
            &[],
            &["--peer-tls-ca", &missing_s, "No such file"],
        ),
        (
            &["--node-id", "a", "--peers", peers, "--peer-tls-cert", &elsewhere_cert, "--peer-tls-key", &elsewhere_key],
            &[("LEASEHOLD_PEER_TLS_CA", &ca_file)],
            &["--peer-tls-cert", "peers dialling 127.0.0.1 would refuse it"],
        ),
    ];
    for (args, env, expected) in cases {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--data-dir", &data]);
        let o = leasehold(&all, env);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, got {err:?}");
        for e in *expected {
            assert!(err.contains(e), "{args:?}: {err:?} does not contain {e:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flags_are_read_from_leasehold_environment_variables() {
    let o = leasehold(&[], &[("LEASEHOLD_LEASE_TTL", "50ms")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--lease-ttl"), "{}", stderr(&o));
    let o = leasehold(&[], &[("LEASEHOLD_PEERS", "a=h:1,b=h:2"), ("LEASEHOLD_NODE_ID", "c")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--node-id: c is not one of the ids in --peers"), "{}", stderr(&o));
}

#[test]
fn a_corrupt_state_file_stops_start_up_and_is_left_untouched() {
    let dir = temp_dir("corrupt");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let state = dir.join("state");
    let garbage = b"leasehold-state 1\n{\"term\": 7\ncrc32 00000000\n".to_vec();
    std::fs::write(&state, &garbage).expect("write");
    let o = leasehold(&["--data-dir", &dir.to_string_lossy()], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is corrupt") && err.contains("left untouched"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert_eq!(std::fs::read(&state).expect("read"), garbage);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_single_node_group_leads_at_once_and_exits_cleanly_on_sigterm() {
    let dir = temp_dir("single");
    let port = leasehold::local::free_port().expect("a free loopback port");
    let api = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["--data-dir", &dir.to_string_lossy(), "--listen-api", &api])
        .args(["--listen-metrics", "127.0.0.1:0"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut answer = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(&api) {
            use std::io::{Read, Write};
            let _ = write!(s, "GET /v1/leader HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            answer.clear();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("no exit within 10s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "no leader within 10s: {answer:?}");
    assert!(answer.contains("\"is_leader\":true") && answer.contains("\"fencing_token\":1"), "{answer}");
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts a single node on `dir`, reads its incarnation from /v1/status and
/// from its log, stops it with SIGTERM; returns both readings.
fn incarnation_of_one_run(dir: &std::path::Path) -> (String, String) {
    let port = leasehold::local::free_port().expect("a free loopback port");
    let api = format!("127.0.0.1:{port}");
    let log = dir.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["--data-dir", &dir.to_string_lossy(), "--listen-api", &api])
        .args(["--listen-metrics", "127.0.0.1:0"])
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some((200, body)) = common::get(&api, "/v1/status") {
            break body;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("no /v1/status within 10s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: kill(2) on the pid of the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("no exit within 10s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let at = status.find("\"incarnation\":\"").expect("an incarnation in /v1/status") + 15;
    let shown = status[at..at + 32].to_string();
    (shown, std::fs::read_to_string(&log).expect("log"))
}

/// The incarnation (DESIGN §2b) is drawn and written with the first state
/// file, kept across restarts, and drawn anew when the data dir is lost.
#[test]
fn a_node_keeps_its_incarnation_across_restarts_and_a_lost_data_dir_draws_another() {
    let dir = temp_dir("incarnation");
    let (first, log) = incarnation_of_one_run(&dir);
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    assert!(log.contains("no state file: a new identity of this node") && log.contains(&first), "{log}");
    let state = std::fs::read_to_string(dir.join("state")).expect("state file");
    assert!(state.contains(&format!("\"incarnation\":\"{first}\"")), "{state}");
    let (again, log) = incarnation_of_one_run(&dir);
    assert_eq!(again, first, "a restart is the same identity");
    assert!(!log.contains("a new identity"), "{log}");
    std::fs::remove_dir_all(&dir).expect("lose the data dir");
    let (lost, _) = incarnation_of_one_run(&dir);
    assert_ne!(lost, first, "a lost data dir is a new identity");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.with_extension("log"));
}

#[test]
fn a_configured_bearer_token_guards_the_mutating_endpoints() {
    use std::io::{Read, Write};
    let dir = temp_dir("token");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").expect("write");
    let port = leasehold::local::free_port().expect("a free loopback port");
    let api = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["--data-dir", &dir.join("data").to_string_lossy(), "--listen-api", &api])
        .args(["--listen-metrics", "127.0.0.1:0"])
        .args(["--api-token-file", &token_file.to_string_lossy()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let post = |auth: &str| -> String {
        // Generous: a node on a loaded machine takes its boot promise and
        // an election before a step-down answers anything but 409.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(&api) {
                let _ = write!(
                    s,
                    "POST /v1/step-down HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
                );
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                // Until the single node leads, a step-down is a 409.
                if !text.starts_with("HTTP/1.1 409") {
                    return text;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        String::new()
    };
    let without = post("");
    let wrong = post("Authorization: Bearer nope\r\n");
    let right = post("Authorization: Bearer s3cret\r\n");
    // The CLI sends the token from --token-file; without it, the 401 says why.
    let cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(["step-down", "--api", &format!("http://{api}")])
            .args(extra)
            .env_remove("LEASEHOLD_API_TOKEN_FILE")
            .output()
            .expect("run the CLI")
    };
    let refused = cli(&[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let accepted = loop {
        // Right after a step-down the single node leads again within a lease.
        let out = cli(&["--token-file", &token_file.to_string_lossy()]);
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // SAFETY: kill(2) on the pid of the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    assert!(accepted.status.success(), "{accepted:?}");
    assert!(without.starts_with("HTTP/1.1 401"), "{without}");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    assert!(right.starts_with("HTTP/1.1 200"), "{right}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_logs_are_one_object_per_line_with_fields() {
    let dir = temp_dir("json-logs");
    let port = leasehold::local::free_port().expect("a free loopback port");
    let api = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["--data-dir", &dir.to_string_lossy(), "--listen-api", &api, "--log-format", "json"])
        .args(["--listen-metrics", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(&api) {
            use std::io::{Read, Write};
            let _ = write!(s, "GET /v1/leader HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            let mut t = String::new();
            let _ = s.read_to_string(&mut t);
            if t.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let elected = lines.iter().find(|l| l["fields"]["message"] == "became leader").expect("a 'became leader' line");
    assert_eq!(elected["level"], "INFO");
    assert_eq!(elected["fields"]["token"], 1, "{elected}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flood_of_api_connections_is_capped_and_the_node_keeps_serving() {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let dir = temp_dir("api-cap");
    let port = leasehold::local::free_port().expect("a free loopback port");
    let metrics_port = leasehold::local::free_port().expect("a free loopback port");
    let (api, metrics) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{metrics_port}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["--data-dir", &dir.to_string_lossy(), "--listen-api", &api, "--listen-metrics", &metrics])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let get = |addr: &str, path: &str| -> Option<String> {
        let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        std::io::Write::write_all(
            &mut s,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .ok()?;
        let mut t = String::new();
        s.read_to_string(&mut t).ok()?;
        t.starts_with("HTTP/1.1 200").then_some(t)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&api, "/v1/leader").is_none() {
        assert!(Instant::now() < deadline, "the single node never led");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 600 idle connections, 88 over the cap of 512. The checks run well
    // within the 5s header timeout that ends idle connections on its own.
    let held: Vec<TcpStream> = (0..600).filter_map(|_| TcpStream::connect(&api).ok()).collect();
    assert_eq!(held.len(), 600, "the kernel accepts every connection");
    let served_while_full = get(&api, "/v1/leader").is_some();
    for s in &held {
        let _ = s.set_nonblocking(true);
    }
    // Those over the cap are closed on accept: count them until all 88 are
    // seen, for at most 2s (a read of an open idle connection would block).
    let count_closed = || held.iter().filter(|s| matches!((&mut &**s).read(&mut [0u8; 1]), Ok(0))).count();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut closed = count_closed();
    while closed < 88 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        closed = count_closed();
    }
    let refused_metric = get(&metrics, "/metrics").unwrap_or_default();
    drop(held);
    // Once the flood is gone the API answers again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut back = false;
    while !back && Instant::now() < deadline {
        back = get(&api, "/v1/leader").is_some();
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(closed >= 80, "connections over the cap are closed at once; {closed} of 600 were");
    assert!(!served_while_full, "a new connection is refused while 512 are held");
    assert!(
        refused_metric
            .lines()
            .any(|l| l.starts_with("leasehold_http_connections_refused_total{listener=\"api\"}") && !l.ends_with(" 0")),
        "the refusals are counted"
    );
    assert!(back, "the API serves again once the flood is gone");
}

#[test]
fn a_slowloris_on_the_api_is_cut_off_and_the_lease_never_lapses() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let dir = temp_dir("slowloris");
    let port = leasehold::local::free_port().expect("a free loopback port");
    let api = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["--data-dir", &dir.to_string_lossy(), "--listen-api", &api, "--listen-metrics", "127.0.0.1:0"])
        .args(["--lease-ttl", "300ms"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let leader = |api: &str| -> Option<u64> {
        let mut s = TcpStream::connect_timeout(&api.parse().ok()?, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(b"GET /v1/leader HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
        let mut t = String::new();
        s.read_to_string(&mut t).ok()?;
        if !t.starts_with("HTTP/1.1 200") {
            return None;
        }
        let at = t.find("\"fencing_token\":")? + 16;
        t[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let token = loop {
        if let Some(t) = leader(&api) {
            break t;
        }
        assert!(Instant::now() < deadline, "the single node never led");
        std::thread::sleep(Duration::from_millis(20));
    };
    // 300 connections that start a request and then send one byte a second,
    // never finishing their headers.
    let mut slow: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(&api).ok()).collect();
    for s in &mut slow {
        let _ = s.write_all(b"GET /v1/leader HTTP/1.1\r\nX-Slow: ");
    }
    // For 7 seconds (past the 5s header timeout): the lease is renewed all
    // along (every answer is 200 with the same token), and the slow
    // connections are cut.
    let start = Instant::now();
    let mut lapses = 0;
    let mut answers = 0;
    while start.elapsed() < Duration::from_secs(7) {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        match leader(&api) {
            Some(t) if t == token => answers += 1,
            _ => lapses += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Cut: anything but "nothing to read yet" (end of file, an answer, a reset).
    let cut = slow
        .iter()
        .filter(|s| {
            let _ = s.set_nonblocking(true);
            let mut buf = [0u8; 512];
            !matches!((&mut &**s).read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    // SAFETY: kill(2) on the pid of the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(lapses, 0, "the lease lapsed or a request failed during the slowloris ({answers} answered)");
    assert!(answers > 30, "{answers} answers");
    assert!(cut >= 290, "the 5s header timeout cut {cut} of 300 slow connections");
}

#[test]
fn a_replayed_message_of_an_old_term_changes_nothing_and_is_counted() {
    use leasehold::core::{Body, Envelope, NodeId, Term, PROTOCOL_VERSION};
    use leasehold::transport::frame::{encode, Hello};
    use std::io::Write;
    use std::net::TcpStream;
    let dir = temp_dir("replay");
    let (peer, api, metrics) = (common::free_port(), common::free_port(), common::free_port());
    let peers = format!("n1=127.0.0.1:{peer},n2=127.0.0.1:{}", common::free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(["--node-id", "n1", "--peers", &peers, "--data-dir", &dir.to_string_lossy()])
        .args(["--listen-api", &format!("127.0.0.1:{api}"), "--listen-metrics", &format!("127.0.0.1:{metrics}")])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Ended by its pid however the test ends, a failed assertion included.
    struct Ended(std::process::Child);
    impl Drop for Ended {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the pid of the child this test spawned.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
    let child = Ended(child);
    let api = format!("127.0.0.1:{api}");
    let metrics = format!("127.0.0.1:{metrics}");
    let term = || common::get(&api, "/v1/leader").and_then(|(_, b)| common::field(&b, "term"));
    let stale = || {
        let (_, text) = common::get(&metrics, "/metrics")?;
        let line = text.lines().find(|l| l.starts_with("leasehold_rejected_messages_total{reason=\"stale_term\"}"))?;
        line.rsplit(' ').next()?.parse::<u64>().ok()
    };
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "{what} within 10s");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("the node answers", &|| term().is_some());
    // Every start takes the boot promise: no vote, and no term adopted from
    // a vote request, until it is over.
    let promise = || common::get(&api, "/v1/status").and_then(|(_, b)| common::field(&b, "promise_remaining_ms"));
    wait("the boot promise over", &|| promise() == Some(0));
    // Pose as n2 (no peer TLS here: the peer port must be fenced off, see
    // docs/security.md) and ask for a vote in term 5.
    let mut s = TcpStream::connect(format!("127.0.0.1:{peer}")).expect("connect to the peer port");
    let vote = |t: u64| Envelope {
        version: PROTOCOL_VERSION,
        cluster_id: "leasehold".into(),
        from: NodeId::new("n2"),
        to: NodeId::new("n1"),
        term: Term(t),
        body: Body::VoteRequest { transfer_from: None },
        from_incarnation: None,
        to_incarnation: None,
        group: None,
        config: None,
        position: None,
    };
    s.write_all(&encode(&Hello::new("leasehold", &NodeId::new("n2"))).expect("hello")).expect("send");
    s.write_all(&encode(&vote(5)).expect("frame")).expect("send");
    wait("term 5 adopted", &|| term() == Some(5));
    assert_eq!(stale().unwrap_or(0), 0);
    // The same request replayed, and one recorded in term 3: nothing moves,
    // the old one is counted.
    s.write_all(&encode(&vote(5)).expect("frame")).expect("send");
    s.write_all(&encode(&vote(3)).expect("frame")).expect("send");
    wait("the replay counted as stale_term", &|| stale() == Some(1));
    assert_eq!(term(), Some(5), "a replayed message moved the term");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
