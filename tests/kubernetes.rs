//! The rendered configuration runs. Renders the Helm chart's example
//! StatefulSet (and the kustomize manifests) with the real helm and kubectl,
//! takes the leasehold container's command, args and env exactly as
//! rendered, maps the pods' stable DNS names to free loopback ports, and
//! starts one real process per replica. Then: the probes answer on the
//! metrics port, one leader emerges (under the observer check), the
//! database container's preStop, run as rendered, hands over, the stand-in
//! database's command follows the leader, and the chart's `helm test`
//! script passes. A renamed flag or a wrong probe path fails here, not in a
//! production rollout.
//!
//! The tools come from scripts/k8s-tools.sh (the test command runs it and
//! sets LEASEHOLD_K8S_TOOLS).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::certs::Ca;
use common::{free_port, get, wait_for_one_leader, Observer};

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");
/// The path of the binary in the image (Dockerfile).
const IMAGE_BIN: &str = "/usr/local/bin/leasehold";

fn tools() -> PathBuf {
    // Where scripts/k8s-tools.sh puts them (it prints this folder).
    let dir = std::env::var_os("LEASEHOLD_K8S_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("LEASEHOLD_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"))
                .join("leasehold-tools")
        });
        cache.join("bin")
    });
    assert!(
        dir.join("helm").exists() && dir.join("python3-yaml").exists(),
        "helm and python3-yaml not found in {}: run `bash scripts/k8s-tools.sh` (the test command does)",
        dir.display()
    );
    dir
}

/// Runs a tool and returns its stdout; panics with its stderr on failure.
fn output(program: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("leasehold-k8s-test-helm"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("leasehold-k8s-test-helm"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("leasehold-k8s-test-helm"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let mut pipe = child.stdin.take().expect("stdin");
    let input = stdin.unwrap_or("").to_string();
    let writer = thread::spawn(move || pipe.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    assert!(out.status.success(), "{} {args:?}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// YAML documents as JSON values, through PyYAML.
fn documents(yaml: &str) -> Vec<Value> {
    let script = "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)";
    let json = output(&tools().join("python3-yaml"), &["-c", script], Some(yaml));
    serde_json::from_str(&json).expect("json")
}

fn helm_template(sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "lh", "charts/leasehold", "--namespace", "databases"];
    for s in sets {
        args.extend(["--set", s]);
    }
    documents(&output(&tools().join("helm"), &args, None))
}

fn kustomize(dir: &str) -> Vec<Value> {
    documents(&output(&tools().join("kubectl"), &["kustomize", dir], None))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map_or(Vec::new(), |a| a.iter().map(|s| s.as_str().expect("a string").to_string()).collect())
}

/// A StatefulSet as rendered, and what the test needs of it.
struct Rendered {
    name: String,
    replicas: usize,
    sidecar: Value,
    database: Value,
    helm_test_script: Option<String>,
    /// The files of the pod's ConfigMap volumes: (volume, key, content).
    config_files: Vec<(String, String, String)>,
}

impl Rendered {
    fn from(docs: &[Value], statefulset: &str) -> Rendered {
        let sts = docs
            .iter()
            .find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == statefulset)
            .unwrap_or_else(|| panic!("no StatefulSet {statefulset} rendered"));
        let spec = &sts["spec"]["template"]["spec"];
        let all: Vec<&Value> = spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(spec["containers"].as_array().into_iter().flatten())
            .collect();
        let sidecar = all.iter().find(|c| c["name"] == "leasehold").expect("a leasehold container");
        let database = all.iter().find(|c| c["name"] != "leasehold").expect("a database container");
        let helm_test_script = docs
            .iter()
            .find(|d| d["kind"] == "Pod" && d["metadata"]["annotations"]["helm.sh/hook"] == "test")
            .map(|p| strings(&p["spec"]["containers"][0]["command"])[2].clone());
        let mut config_files = Vec::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let Some(cm) = v["configMap"]["name"].as_str() else { continue };
            let doc = docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm)
                .unwrap_or_else(|| panic!("the pods mount ConfigMap {cm}, which is not rendered"));
            for (key, content) in doc["data"].as_object().into_iter().flatten() {
                let volume = v["name"].as_str().expect("volume name").to_string();
                config_files.push((volume, key.clone(), content.as_str().expect("data").to_string()));
            }
        }
        Rendered {
            config_files,
            name: statefulset.to_string(),
            replicas: sts["spec"]["replicas"].as_u64().expect("replicas") as usize,
            sidecar: (*sidecar).clone(),
            database: (*database).clone(),
            helm_test_script,
        }
    }

    fn pod(&self, i: usize) -> String {
        format!("{}-{i}", self.name)
    }
}

/// Where each pod's ports are on loopback: (pod, port in the pod) → a free
/// loopback port, given out on first sight.
#[derive(Default)]
struct PortMap(HashMap<(usize, u16), u16>);

impl PortMap {
    fn get(&mut self, pod: usize, port: u16) -> u16 {
        *self.0.entry((pod, port)).or_insert_with(free_port)
    }

    /// Rewrites every HOST:PORT in `s` to a loopback address: the pod's own
    /// wildcard and loopback addresses (as seen from pod `me`), and every
    /// name of pod j (NAME-j.SERVICE..., the stable DNS names).
    fn map(&mut self, s: &str, me: usize, r: &Rendered) -> String {
        let host_char = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
        let mut out = String::new();
        let mut rest = s;
        while let Some(colon) = rest.find(':') {
            let host_start = rest[..colon].rfind(|c: char| !host_char(c)).map_or(0, |p| p + 1);
            let host = &rest[host_start..colon];
            let digits: String = rest[colon + 1..].chars().take_while(|c| c.is_ascii_digit()).collect();
            let pod = if host == "0.0.0.0" || host == "127.0.0.1" {
                Some(me)
            } else {
                (0..r.replicas).find(|&j| host.starts_with(&format!("{}.", r.pod(j))))
            };
            match (pod, digits.parse::<u16>()) {
                (Some(j), Ok(port)) if !host.is_empty() => {
                    out.push_str(&rest[..host_start]);
                    out.push_str(&format!("127.0.0.1:{}", self.get(j, port)));
                    rest = &rest[colon + 1 + digits.len()..];
                }
                _ => {
                    out.push_str(&rest[..=colon]);
                    rest = &rest[colon + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Kubernetes' $(VAR) expansion in env values, command and args.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut s = s.to_string();
    for (k, v) in env {
        s = s.replace(&format!("$({k})"), v);
    }
    s
}

/// A child process killed (by its pid) and reaped when dropped, also when a
/// test assertion fails first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One replica run as its pod would run it.
struct Pod {
    child: Child,
    api: String,
}

struct Group {
    rendered: Rendered,
    ports: PortMap,
    dir: PathBuf,
    pods: Vec<Pod>,
}

impl Group {
    fn start(rendered: Rendered, name: &str) -> Group {
        Group::start_with(rendered, name, |_| {})
    }

    /// Starts the pods after `prepare` has filled each pod's folder (where
    /// a volume named V is mounted from `folder/V`), as Secrets would be.
    fn start_with(rendered: Rendered, name: &str, prepare: impl Fn(&Path)) -> Group {
        let dir = std::env::temp_dir().join(format!("leasehold-k8s-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut g = Group { rendered, ports: PortMap::default(), dir, pods: Vec::new() };
        for i in 0..g.rendered.replicas {
            prepare(&g.dir.join(g.rendered.pod(i)));
            let pod = g.spawn(i);
            g.pods.push(pod);
        }
        g
    }

    /// The sidecar's environment in pod `i`, as the kubelet would give it.
    fn env(&mut self, i: usize) -> Vec<(String, String)> {
        let sidecar = self.rendered.sidecar.clone();
        self.env_of(&sidecar, i)
    }

    /// A container's environment in pod `i`, as the kubelet would give it.
    fn env_of(&mut self, container: &Value, i: usize) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let rendered_env = container["env"].clone();
        for e in rendered_env.as_array().into_iter().flatten() {
            let name = e["name"].as_str().expect("env name").to_string();
            let value = match (&e["value"], e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
                (Value::String(v), _) => expand(v, &env),
                (_, Some("metadata.name")) => self.rendered.pod(i),
                (_, Some("metadata.namespace")) => "databases".to_string(),
                _ => panic!("env {name}: {e} is not supported by this test"),
            };
            let value = self.local(&value, i);
            env.push((name, value));
        }
        env
    }

    /// A rendered string as seen on this machine: addresses on loopback,
    /// volume mount paths under the test's folder, the binary built here.
    fn local(&mut self, s: &str, i: usize) -> String {
        let mut s = self.ports.map(s, i, &self.rendered);
        for m in self.rendered.sidecar["volumeMounts"].as_array().into_iter().flatten() {
            let (path, volume) = (m["mountPath"].as_str().expect("path"), m["name"].as_str().expect("name"));
            let here = self.dir.join(self.rendered.pod(i)).join(volume);
            std::fs::create_dir_all(&here).expect("mkdir");
            s = s.replace(path, here.to_str().expect("utf-8 path"));
        }
        if s == IMAGE_BIN {
            s = BIN.to_string();
        }
        s
    }

    /// A container's command and args, with $(VAR)s expanded, made local.
    fn argv(&mut self, container: &Value, i: usize, env: &[(String, String)]) -> Vec<String> {
        let mut argv = strings(&container["command"]);
        argv.extend(strings(&container["args"]));
        assert_eq!(argv.first().map(String::as_str), Some(IMAGE_BIN), "the image's binary runs");
        argv.iter().map(|a| self.local(&expand(a, env), i)).collect()
    }

    /// Writes pod `i`'s ConfigMap volumes as the kubelet does: each file
    /// replaced at once (the kubelet swaps a symlink), with the pods' DNS
    /// names mapped to loopback.
    fn project(&mut self, i: usize) {
        for (volume, key, content) in self.rendered.config_files.clone() {
            let folder = self.dir.join(self.rendered.pod(i)).join(&volume);
            std::fs::create_dir_all(&folder).expect("mkdir");
            let content = self.ports.map(&content, i, &self.rendered);
            let tmp = folder.join(format!("..{key}.tmp"));
            std::fs::write(&tmp, content).expect("write a ConfigMap file");
            std::fs::rename(&tmp, folder.join(&key)).expect("swap a ConfigMap file");
        }
    }

    fn spawn(&mut self, i: usize) -> Pod {
        self.project(i);
        let env = self.env(i);
        let sidecar = self.rendered.sidecar.clone();
        let argv = self.argv(&sidecar, i, &env);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.rendered.pod(i)))).expect("log");
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leasehold as rendered");
        // The API's port: the one --listen-api (or its env) names.
        let api_port = argv
            .iter()
            .chain(env.iter().map(|(_, v)| v))
            .find_map(|a| a.split_once("--listen-api=").map(|(_, v)| v.to_string()))
            .or_else(|| env.iter().find(|(k, _)| k == "LEASEHOLD_LISTEN_API").map(|(_, v)| v.clone()))
            .expect("the API address is rendered");
        Pod { child, api: api_port }
    }

    fn container_port(&self, c: &Value, name: &str) -> u16 {
        c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}")) as u16
    }

    fn apis(&self) -> Vec<Option<&str>> {
        self.pods.iter().map(|p| Some(p.api.as_str())).collect()
    }

    /// Runs the database container's preStop exec hook in pod `i`, with
    /// that container's environment.
    fn pre_stop(&mut self, i: usize, limit: Duration) -> (Option<i32>, String) {
        let database = self.rendered.database.clone();
        let env = self.env_of(&database, i);
        let hook = strings(&self.rendered.database["lifecycle"]["preStop"]["exec"]["command"]);
        assert!(!hook.is_empty(), "the database container has a preStop exec hook");
        let argv: Vec<String> = hook.iter().map(|a| self.local(a, i)).collect();
        run(&argv, &env, limit)
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.rendered.pod(i)))).unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for p in &mut self.pods {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

/// Runs a program until it exits (killed after `limit`); exit code and
/// stdout followed by stderr.
fn run(argv: &[String], env: &[(String, String)], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(out).lines().chain(BufReader::new(err).lines()).map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(limit).ok();
    if text.is_none() {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    (if text.is_some() { status.code() } else { None }, text.unwrap_or_default())
}

/// Waits (at most `within`) for a GET on the metrics port to answer `code`.
fn wait_for_status(addr: &str, path: &str, code: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if get(addr, path).is_some_and(|(c, _)| c == code) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The whole life of a rendered group: probes, election, preStop hand-over
/// (leader and follower), the stand-in database, the helm test script.
fn exercise(mut g: Group) {
    let n = g.pods.len();
    // Startup and liveness probes answer as soon as the process is up,
    // before any quorum; readiness once a leader is known.
    for i in 0..n {
        let sidecar = g.rendered.sidecar.clone();
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let get_ = &sidecar[probe]["httpGet"];
            let port = match &get_["port"] {
                Value::String(name) => g.container_port(&sidecar, name),
                p => p.as_u64().expect("port") as u16,
            };
            let addr = format!("127.0.0.1:{}", g.ports.get(i, port));
            let path = get_["path"].as_str().expect("probe path");
            assert!(
                wait_for_status(&addr, path, 200, Duration::from_secs(15)),
                "{probe} {path} on pod {i} never answered 200; log:\n{}",
                g.log(i)
            );
        }
    }

    let mut observer = Observer::start(g.pods.iter().map(|p| p.api.clone()).collect());
    let (leader, token, _) = wait_for_one_leader(&g.apis(), Duration::from_secs(15), None)
        .unwrap_or_else(|| panic!("no leader among the rendered pods; log of pod 0:\n{}", g.log(0)));

    // The stand-in database (when it is the leasehold image) follows its
    // sidecar.
    let db = g.rendered.database.clone();
    let stand_in = strings(&db["command"]).first().map(String::as_str) == Some(IMAGE_BIN);
    let mut watch = stand_in.then(|| {
        let db_env = g.env_of(&db, leader);
        let db_argv = g.argv(&db, leader, &db_env);
        let mut child = Command::new(&db_argv[0])
            .args(&db_argv[1..])
            .env_clear()
            .envs(db_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the stand-in database");
        let (lines_tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let child = KillOnDrop(child);
        let first = lines.recv_timeout(Duration::from_secs(5)).expect("the stand-in database prints who leads");
        assert!(first.contains("leads with fencing token"), "{first}");
        (child, lines)
    });
    let cli_hook =
        strings(&db["lifecycle"]["preStop"]["exec"]["command"]).first().map(String::as_str) == Some(IMAGE_BIN);

    // A follower's preStop returns at once and changes nothing.
    let follower = (leader + 1) % n;
    let (code, out) = g.pre_stop(follower, Duration::from_secs(10));
    assert_eq!(code, Some(0), "a follower's preStop failed: {out}");
    if cli_hook {
        assert!(out.contains("nothing to hand over"), "{out}");
    }
    assert_eq!(wait_for_one_leader(&g.apis(), Duration::from_secs(2), None).map(|l| l.0), Some(leader));

    // The leader's preStop hands over and returns once another pod leads.
    let asked = Instant::now();
    let (code, out) = g.pre_stop(leader, Duration::from_secs(30));
    observer.handovers.push((leader, asked, Instant::now()));
    assert_eq!(code, Some(0), "the leader's preStop failed: {out}");
    // At once, no waiting: the hook returned only when another pod led.
    let now: Vec<(usize, u64)> = (0..n)
        .filter_map(|i| match get(&g.pods[i].api, "/v1/leader") {
            Some((200, body)) => Some((i, common::field(&body, "fencing_token").expect("token"))),
            _ => None,
        })
        .collect();
    let &[(next, next_token)] = now.as_slice() else {
        panic!("right after the preStop returned, the pods leading were {now:?}: {out}");
    };
    assert_ne!(next, leader, "the preStop returned before another pod led: {out}");
    assert!(next_token > token, "token {next_token} after {token}");
    if let Some((_child, lines)) = &mut watch {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while !seen.iter().any(|l: &String| l.starts_with(&g.rendered.pod(next))) {
            let left = deadline.saturating_duration_since(Instant::now());
            seen.push(lines.recv_timeout(left).unwrap_or_else(|_| panic!("the stand-in database saw {seen:?}")));
        }
    }
    drop(watch);

    // The chart's helm test script, run against the pods' metrics ports.
    if let Some(script) = g.rendered.helm_test_script.clone() {
        let script = g.ports.map(&script, 0, &g.rendered);
        let argv = vec!["sh".to_string(), "-c".to_string(), script];
        let (code, out) = run(&argv, &[], Duration::from_secs(90));
        assert_eq!(code, Some(0), "helm test script failed:\n{out}");
        assert!(out.contains("ok: one leader, one fencing token"), "{out}");
    }
    let proofs = observer.finish();
    assert!(proofs > 0, "the observer saw no leader");
}

#[test]
fn the_charts_rendered_statefulset_elects_and_hands_over() {
    let docs = helm_template(&[]);
    let rendered = Rendered::from(&docs, "lh-leasehold");
    assert_eq!(rendered.replicas, 3);
    assert_eq!(rendered.sidecar["restartPolicy"], "Always", "a native sidecar by default");
    exercise(Group::start(rendered, "chart"));
}

#[test]
fn the_chart_with_peer_tls_elects_over_mutual_tls_as_rendered() {
    let docs = helm_template(&["sidecar.peerTLS.enabled=true", "sidecar.peerTLS.secretName=lh-peer-tls"]);
    let rendered = Rendered::from(&docs, "lh-leasehold");
    // One Secret for every replica, as cert-manager writes it. Its SAN names
    // every pod's peer address by the headless Service's wildcard, and the
    // loopback address this test maps those names to.
    let dir = std::env::temp_dir().join(format!("leasehold-k8s-{}-peer-tls-certs", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = Ca::new(&dir, "ca");
    let san = "DNS:*.lh-leasehold-peers.databases.svc.cluster.local,IP:127.0.0.1";
    let peers = ca.issue("peers", san, 1, 2);
    let secret = [("tls.crt", &peers.cert), ("tls.key", &peers.key), ("ca.crt", &ca.cert)];
    let mut g = Group::start_with(rendered, "peer-tls", |pod| {
        let volume = pod.join("leasehold-peer-tls");
        std::fs::create_dir_all(&volume).expect("mkdir");
        for (name, from) in secret {
            std::fs::copy(from, volume.join(name)).expect("copy");
        }
    });
    // TLS is on: a plain-TCP client at a peer port is refused and counted.
    let sidecar = g.rendered.sidecar.clone();
    let (peer_port, metrics_port) = (g.container_port(&sidecar, "lh-peer"), g.container_port(&sidecar, "lh-metrics"));
    let (peer, metrics) = (g.ports.get(0, peer_port), g.ports.get(0, metrics_port));
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", peer)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"not TLS");
            let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
        }
        let body = get(&format!("127.0.0.1:{metrics}"), "/metrics").map(|(_, b)| b).unwrap_or_default();
        if body.contains("leasehold_rejected_messages_total{reason=\"tls\"} 1") || Instant::now() > deadline {
            break body;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(refused.contains("{reason=\"tls\"} 1"), "no TLS refusal counted; log of pod 0:\n{}", g.log(0));
    exercise(g);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_classic_sidecar_with_five_replicas_runs_as_rendered() {
    let docs = helm_template(&["sidecar.native=false", "example.replicas=5", "sidecar.leaseTtl=1s"]);
    let rendered = Rendered::from(&docs, "lh-leasehold");
    assert_eq!(rendered.replicas, 5);
    assert!(rendered.sidecar.get("restartPolicy").is_none());
    exercise(Group::start(rendered, "classic"));
}

#[test]
fn the_kustomize_overlay_runs_as_rendered() {
    let docs = kustomize("manifests/overlays/example");
    let rendered = Rendered::from(&docs, "db");
    assert_eq!(rendered.replicas, 5, "the overlay's five replicas");
    exercise(Group::start(rendered, "kustomize"));
}

#[test]
fn the_component_injected_into_a_database_statefulset_runs_as_rendered() {
    // The database's own preStop: one curl POST /v1/step-down?wait=20s.
    let docs = kustomize("manifests/examples/inject");
    let rendered = Rendered::from(&docs, "orders");
    assert_eq!(rendered.sidecar["restartPolicy"], "Always");
    exercise(Group::start(rendered, "inject"));
}

#[test]
fn a_chart_value_the_binary_refuses_fails_here() {
    // The check bites: a rendered flag the binary does not accept stops the
    // pod at start, and the test sees it.
    let docs = helm_template(&["sidecar.extraArgs[0]=--no-such-flag"]);
    let mut g = Group::start(Rendered::from(&docs, "lh-leasehold"), "refused");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = g.pods[0].child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.and_then(|s| s.code()), Some(2), "a wrong flag exits 2");
    assert!(g.log(0).contains("--no-such-flag"), "{}", g.log(0));
}

/// `helm upgrade --set example.replicas=5`, then back to 3, replayed: the
/// ConfigMap changes under the running pods (no restart), the new pods
/// start blank with the new file, and on the way down the highest
/// ordinals are killed. The configuration ends as the rendered replicas,
/// under the observer check, and no gap without a leader is longer than
/// one failover.
#[test]
fn the_chart_scales_from_three_to_five_and_back_online() {
    // The chart's default: no generation, so that a rollback works too.
    let render = |replicas: usize| {
        let r = format!("example.replicas={replicas}");
        Rendered::from(&helm_template(&[&r, "sidecar.leaseTtl=1s"]), "lh-leasehold")
    };
    let mut g = Group::start(render(3), "scale");
    let listen_api = strings(&g.rendered.sidecar["args"])
        .into_iter()
        .find_map(|a| a.strip_prefix("--listen-api=").map(str::to_string))
        .expect("--listen-api is rendered");
    let rendered5 = render(5);
    let apis: Vec<String> = (0..5).map(|i| g.ports.map(&listen_api, i, &rendered5)).collect();
    let observer = Observer::start(apis.clone());
    let voters = |api: &str| -> Option<(Vec<String>, bool)> {
        let (_, body) = get(api, "/v1/status")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let m = &v["membership"];
        let names = m["voters"].as_array()?.iter().filter_map(|x| x["id"].as_str().map(str::to_string)).collect();
        Some((names, m["pending"].is_null()))
    };
    let wait_voters = |g: &Group, want: usize| {
        let names: Vec<String> = (0..want).map(|i| g.rendered.pod(i)).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let leader = wait_for_one_leader(&g.apis(), Duration::from_secs(2), None);
            if let Some((l, _, _)) = leader {
                if voters(&g.pods[l].api) == Some((names.clone(), true)) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the voters never became {names:?}; log of pod 0:\n{}", g.log(0));
            thread::sleep(Duration::from_millis(50));
        }
    };
    wait_voters(&g, 3);
    // Up: the file changes in the running pods, then two new pods start.
    g.rendered = rendered5;
    for i in 0..3 {
        g.project(i);
    }
    let started = Instant::now();
    for i in 3..5 {
        let pod = g.spawn(i);
        g.pods.push(pod);
    }
    wait_voters(&g, 5);
    eprintln!("measured: 3 -> 5 as rendered, five voters {:?} after the new pods started", started.elapsed());
    // Down: the file changes in the pods that stay; the highest ordinals die.
    g.rendered = render(3);
    for i in 0..3 {
        g.project(i);
    }
    for i in [4, 3] {
        let _ = g.pods[i].child.kill();
        let _ = g.pods[i].child.wait();
    }
    let shrunk = Instant::now();
    wait_voters(&g, 3);
    eprintln!("measured: 5 -> 3 as rendered, three voters {:?} after the scale-down", shrunk.elapsed());
    // The longest time without a proven lease: one failover at most.
    let mut proofs = observer.proofs();
    proofs.sort_by_key(|p| p.sent);
    let mut covered = proofs.first().map(|p| p.sent + p.remaining).expect("a leader was seen");
    let mut longest = Duration::ZERO;
    for p in &proofs {
        longest = longest.max(p.sent.saturating_duration_since(covered));
        covered = covered.max(p.sent + p.remaining);
    }
    eprintln!("measured: the longest time without a proven lease was {longest:?}");
    assert!(longest <= Duration::from_secs(3), "a gap without a leader of {longest:?}: more than one failover");
    assert!(observer.finish() > 0);
}

/// Membership rule 11 through the chart: a release that runs static
/// (`sidecar.membership=static`, `--peers`) upgraded with
/// `sidecar.membership=managed` at the same replica count, replayed as the
/// StatefulSet's rolling update does it: highest ordinal first, each pod
/// stopped with SIGTERM and started as newly rendered (the ConfigMap's
/// file instead of `--peers`) once a leader is back. The group elects
/// throughout and ends converted, three voters listed, under the observer
/// check (each SIGTERM a planned hand-over).
#[test]
fn the_chart_converts_a_static_release_by_its_rolling_update() {
    let render = |membership: &str| {
        let m = format!("sidecar.membership={membership}");
        Rendered::from(&helm_template(&[&m, "sidecar.leaseTtl=1s"]), "lh-leasehold")
    };
    let static_render = render("static");
    assert!(strings(&static_render.sidecar["args"]).iter().any(|a| a.starts_with("--peers=")), "static: --peers");
    let mut g = Group::start(static_render, "convert");
    let mut observer = Observer::start(g.apis().iter().map(|a| a.unwrap_or_default().to_string()).collect());
    assert!(wait_for_one_leader(&g.apis(), Duration::from_secs(20), None).is_some(), "a static leader");
    g.rendered = render("managed");
    for i in (0..3).rev() {
        let asked = Instant::now();
        // SAFETY: kill(2) on the pid of a child this test spawned.
        unsafe { libc::kill(g.pods[i].child.id() as i32, libc::SIGTERM) };
        let _ = g.pods[i].child.wait();
        observer.handovers.push((i, asked, Instant::now()));
        g.pods[i] = g.spawn(i);
        let back = wait_for_one_leader(&g.apis(), Duration::from_secs(20), None);
        assert!(back.is_some(), "no leader after restarting pod {i}; its log:\n{}", g.log(i));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let converted = loop {
        let statuses: Vec<Value> = g
            .apis()
            .iter()
            .filter_map(|a| get(a.unwrap_or_default(), "/v1/status"))
            .filter_map(|(_, body)| serde_json::from_str(&body).ok())
            .collect();
        let listed = |v: &Value| v["membership"]["voters"].as_array().map_or(0, Vec::len);
        if statuses.len() == 3 && statuses.iter().all(|v| listed(v) == 3) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(converted, "the group never converted; log of pod 0:\n{}", g.log(0));
    assert!(wait_for_one_leader(&g.apis(), Duration::from_secs(10), None).is_some(), "a managed leader");
    assert!(observer.finish() > 0);
}
