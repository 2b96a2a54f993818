//! Flags and `LEASEHOLD_*` variables ([`crate::cli::RunArgs`]) turned into a
//! checked [`Config`]. Every refusal is one line that names the flag; the
//! binary prints it and exits with code 2.
//!
//! Owns: defaults that depend on other flags, and every check that can be
//! made before start-up. Must not: touch the network, or the disk beyond
//! reading `--peers-file`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::{Backend, LogFormat, RunArgs};
use crate::core::{self, NodeId};
use crate::transport::tls::{self, TlsFiles};

/// The node id of a single-node group started without --node-id.
pub const DEFAULT_SINGLE_NODE_ID: &str = "leasehold";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
    #[error(transparent)]
    Core(#[from] core::ConfigError),
}

fn invalid(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { flag, message: message.into() }
}

/// Where the local database's replication position comes from
/// (position-aware votes, docs/positions.md).
#[derive(Clone, Debug, PartialEq)]
pub enum Positions {
    /// `--position-exec CMD`, run every `interval`.
    Exec { command: String, interval: std::time::Duration },
    /// `--position-from-api`: `PUT /v1/position`.
    Api,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HealthCheck {
    None,
    Url(String),
    Exec(String),
}

/// A checked configuration of one sidecar.
#[derive(Clone, Debug)]
pub struct Config {
    /// The consensus core's part.
    pub node: core::Config,
    /// Every voter's peer address (HOST:PORT), this node included; in a
    /// managed group, the desired set read at start.
    pub peers: BTreeMap<NodeId, String>,
    /// Managed groups: the peers file, and the generation read from it at
    /// start (DESIGN §2b).
    pub peers_file: Option<(PathBuf, u64)>,
    pub listen_peer: Option<String>,
    /// Mutual TLS between peers (`--peer-tls-*`); the files are read at
    /// start-up, not here.
    pub peer_tls: Option<TlsFiles>,
    pub listen_api: SocketAddr,
    pub listen_metrics: SocketAddr,
    pub data_dir: PathBuf,
    pub health_check: HealthCheck,
    pub backend: Backend,
    pub log_format: LogFormat,
    pub api_token_file: Option<PathBuf>,
    pub on_elected: Option<String>,
    pub on_demoted: Option<String>,
    pub accept_new_membership: bool,
    /// `--force-new-group GROUP` (managed groups, rule 10).
    pub force_new_group: Option<core::GroupUid>,
    /// Set with `--backend etcd`.
    pub etcd: Option<EtcdConfig>,
    /// Position-aware votes: where the position comes from.
    pub positions: Option<Positions>,
}

/// How to reach etcd and which election to run (`--backend etcd`).
#[derive(Clone, Debug, PartialEq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub election: String,
    /// `--lease-ttl` rounded up to whole seconds: etcd's leases have
    /// whole-second TTLs.
    pub lease_ttl_secs: i64,
    pub ca: Option<PathBuf>,
    /// Client certificate and key, both or neither.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub user: Option<String>,
    pub password: Option<Secret>,
}

/// Where the etcd password comes from (read at start-up, never logged).
#[derive(Clone, PartialEq)]
pub enum Secret {
    File(PathBuf),
    Value(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::File(p) => write!(f, "File({})", p.display()),
            Secret::Value(_) => f.write_str("Value(..)"),
        }
    }
}

/// etcd leases have whole-second TTLs: `ttl` rounded up, 1s at least.
pub fn whole_seconds(ttl: std::time::Duration) -> i64 {
    let secs = ttl.as_nanos().div_ceil(1_000_000_000).max(1);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl Config {
    pub fn from_args(a: &RunArgs) -> Result<Config, ConfigError> {
        let (peers, peers_file) = match &a.peers_file {
            Some(path) => {
                if a.backend == Backend::Etcd {
                    return Err(invalid(
                        "--peers-file",
                        "is for the built-in group; with --backend etcd the sidecars meet in etcd",
                    ));
                }
                let d = crate::desired::read(path)
                    .map_err(|e| invalid("--peers-file", e.trim_start_matches("--peers-file ").to_string()))?;
                (d.peers, Some((path.clone(), d.generation)))
            }
            None => (parse_peers(&a.peers)?, None),
        };
        let flag = if peers_file.is_some() { "--peers-file" } else { "--peers" };
        let node_id = match (&a.node_id, peers.is_empty()) {
            (Some(id), _) => NodeId::new(id.trim()),
            (None, true) => NodeId::new(DEFAULT_SINGLE_NODE_ID),
            (None, false) => return Err(invalid("--node-id", format!("is required with {flag}"))),
        };
        if node_id.as_str().is_empty() {
            return Err(invalid("--node-id", "must not be empty"));
        }
        if !peers.is_empty() && !peers.contains_key(&node_id) {
            let id = node_id.as_str().escape_debug();
            return Err(invalid("--node-id", format!("{id} is not one of the ids in {flag}")));
        }
        let force_new_group = match &a.force_new_group {
            None => None,
            Some(_) if peers_file.is_none() => {
                return Err(invalid("--force-new-group", "is for a managed group (--peers-file)"));
            }
            Some(g) => Some(
                g.trim()
                    .parse::<core::Incarnation>()
                    .map(|i| core::GroupUid(i.0))
                    .map_err(|_| invalid("--force-new-group", format!("{g:?} is not a group uid (32 hex digits)")))?,
            ),
        };
        if peers_file.is_some() && a.accept_new_membership {
            return Err(invalid(
                "--accept-new-membership",
                "is for a static group (--peers); a managed group changes membership online",
            ));
        }
        let voters: BTreeSet<NodeId> =
            if peers.is_empty() { [node_id.clone()].into() } else { peers.keys().cloned().collect() };
        let listen_peer = match &a.listen_peer {
            Some(l) => Some(check_host_port("--listen-peer", l)?),
            None => peers.get(&node_id).map(|addr| format!("0.0.0.0:{}", port_of(addr))),
        };
        let advertise = a.advertise.clone().or_else(|| peers.get(&node_id).cloned()).unwrap_or(node_id.to_string());
        let heartbeat_interval = a.heartbeat_interval.unwrap_or(a.lease_ttl / 5);
        if !(a.max_clock_drift.is_finite()) {
            return Err(invalid("--max-clock-drift", "must be a number in [0, 0.5)"));
        }
        let node = core::Config {
            cluster_id: a.cluster_id.clone(),
            node_id,
            voters,
            lease_ttl: a.lease_ttl,
            heartbeat_interval,
            max_clock_drift: a.max_clock_drift,
            priority: a.priority,
            advertise,
            mode: core::Mode::Static,
            force_new_group,
            upgrading: None,
            positions: false,
            broken: core::Broken::default(),
        };
        node.validate()?;
        let positions = positions(a, peers_file.is_some())?;
        let node = core::Config { positions: positions.is_some(), ..node };
        let health_check = match (&a.health_check_url, &a.health_check_exec) {
            (Some(u), _) if !u.starts_with("http://") => {
                return Err(invalid(
                    "--health-check-url",
                    format!(
                        "{u:?} is not an http:// URL (the check targets the local application; https is not supported)"
                    ),
                ));
            }
            (Some(u), _) => HealthCheck::Url(u.clone()),
            (None, Some(c)) if c.trim().is_empty() => return Err(invalid("--health-check-exec", "is empty")),
            (None, Some(c)) => HealthCheck::Exec(c.clone()),
            (None, None) => HealthCheck::None,
        };
        let peer_tls = peer_tls(a, &peers)?;
        let etcd = if a.backend == Backend::Etcd { Some(etcd_config(a)?) } else { None };
        Ok(Config {
            node,
            peers,
            peers_file,
            listen_peer,
            peer_tls,
            listen_api: socket_addr("--listen-api", &a.listen_api)?,
            listen_metrics: socket_addr("--listen-metrics", &a.listen_metrics)?,
            data_dir: a.data_dir.clone(),
            health_check,
            backend: a.backend,
            log_format: a.log_format,
            api_token_file: a.api_token_file.clone(),
            on_elected: a.on_elected.clone(),
            on_demoted: a.on_demoted.clone(),
            accept_new_membership: a.accept_new_membership,
            force_new_group,
            etcd,
            positions,
        })
    }
}

/// `--position-exec`, `--position-from-api` and `--position-interval`:
/// positions travel in the managed protocol only, and a read must settle
/// well within a lease.
fn positions(a: &RunArgs, managed: bool) -> Result<Option<Positions>, ConfigError> {
    let flag = if a.position_exec.is_some() { "--position-exec" } else { "--position-from-api" };
    let source = match &a.position_exec {
        Some(c) if c.trim().is_empty() => return Err(invalid("--position-exec", "is empty")),
        Some(c) => {
            let interval = a.position_interval.unwrap_or(a.lease_ttl / 4);
            if interval.is_zero() || interval > a.lease_ttl / 2 {
                return Err(invalid(
                    "--position-interval",
                    format!(
                        "{} must be above 0 and at most half the lease ({}): a voter waits for a read taken after a \
                         lease ended",
                        humantime::format_duration(interval),
                        humantime::format_duration(a.lease_ttl)
                    ),
                ));
            }
            Positions::Exec { command: c.clone(), interval }
        }
        None if a.position_from_api => Positions::Api,
        None if a.position_interval.is_some() => {
            return Err(invalid("--position-interval", "goes with --position-exec"));
        }
        None => return Ok(None),
    };
    if a.backend == Backend::Etcd {
        return Err(invalid(flag, "is for the built-in group; etcd's election knows no replication position"));
    }
    if !managed {
        return Err(invalid(
            flag,
            "needs --peers-file: positions travel in the managed group's protocol (the static one is frozen)",
        ));
    }
    Ok(Some(source))
}

/// The etcd flags, checked; refused in a build without the `etcd` feature.
fn etcd_config(a: &RunArgs) -> Result<EtcdConfig, ConfigError> {
    if !a.peers.is_empty() {
        return Err(invalid("--peers", "is for the built-in group; with --backend etcd the sidecars meet in etcd"));
    }
    if a.node_id.as_deref().is_none_or(|id| id.trim().is_empty()) {
        return Err(invalid("--node-id", "is required with --backend etcd (each sidecar needs its own)"));
    }
    let endpoints: Vec<String> =
        a.etcd_endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    if endpoints.is_empty() {
        return Err(invalid("--etcd-endpoints", "is required with --backend etcd"));
    }
    let election = a.election.clone().unwrap_or_default();
    if election.trim().is_empty() {
        return Err(invalid("--election", "is required with --backend etcd"));
    }
    let https = endpoints.iter().filter(|e| e.starts_with("https://")).count();
    for e in &endpoints {
        let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
        match rest {
            Some(host_port) if check_host_port("--etcd-endpoints", host_port.trim_end_matches('/')).is_ok() => {}
            _ => {
                return Err(invalid("--etcd-endpoints", format!("{e:?} is not http://HOST:PORT or https://HOST:PORT")))
            }
        }
    }
    if https != 0 && https != endpoints.len() {
        return Err(invalid("--etcd-endpoints", "mixes http:// and https:// endpoints"));
    }
    let tls_flags = a.etcd_ca.is_some() || a.etcd_cert.is_some();
    if https > 0 && a.etcd_ca.is_none() {
        return Err(invalid(
            "--etcd-ca",
            "is required with https:// endpoints (the CA that signed etcd's certificates)",
        ));
    }
    if https == 0 && tls_flags {
        return Err(invalid("--etcd-endpoints", "must be https:// URLs when --etcd-ca or --etcd-cert is given"));
    }
    let password = match (&a.etcd_password_file, &a.etcd_password) {
        (Some(f), _) => Some(Secret::File(f.clone())),
        (None, Some(p)) => Some(Secret::Value(p.clone())),
        (None, None) => None,
    };
    if a.etcd_user.is_some() != password.is_some() {
        return Err(invalid(
            "--etcd-user",
            "and a password (--etcd-password-file or LEASEHOLD_ETCD_PASSWORD) go together",
        ));
    }
    if !cfg!(feature = "etcd") {
        return Err(invalid(
            "--backend",
            "etcd is not available in this build; build with `cargo build --release --features etcd`",
        ));
    }
    Ok(EtcdConfig {
        endpoints,
        election,
        lease_ttl_secs: whole_seconds(a.lease_ttl),
        ca: a.etcd_ca.clone(),
        identity: a.etcd_cert.clone().zip(a.etcd_key.clone()),
        user: a.etcd_user.clone(),
        password,
    })
}

/// The three `--peer-tls-*` files, all or none. Every peer's host must be a
/// name a certificate can carry, since the dialer checks it.
fn peer_tls(a: &RunArgs, peers: &BTreeMap<NodeId, String>) -> Result<Option<TlsFiles>, ConfigError> {
    let files = match (&a.peer_tls_cert, &a.peer_tls_key, &a.peer_tls_ca) {
        (None, None, None) => return Ok(None),
        (Some(cert), Some(key), Some(ca)) => TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() },
        (cert, key, _) => {
            let missing = if cert.is_none() {
                "--peer-tls-cert"
            } else if key.is_none() {
                "--peer-tls-key"
            } else {
                "--peer-tls-ca"
            };
            return Err(invalid(
                missing,
                "is missing: peer TLS needs --peer-tls-cert, --peer-tls-key and --peer-tls-ca",
            ));
        }
    };
    if a.backend == Backend::Etcd {
        return Err(invalid(
            "--peer-tls-cert",
            "is for the built-in group's peers; etcd's TLS is --etcd-ca, --etcd-cert and --etcd-key",
        ));
    }
    for (id, addr) in peers {
        if let Err(e) = tls::server_name(addr) {
            return Err(invalid("--peers", format!("peer {id}: {e}, so no certificate can name it for --peer-tls-*")));
        }
    }
    Ok(Some(files))
}

/// `ID=HOST:PORT` entries; ids unique, addresses well-formed.
fn parse_peers(entries: &[String]) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let Some((id, addr)) = entry.split_once('=') else {
            return Err(invalid("--peers", format!("{entry:?} is not ID=HOST:PORT")));
        };
        let (id, addr) = (id.trim(), addr.trim());
        if id.is_empty() {
            return Err(invalid("--peers", format!("{entry:?} has an empty id")));
        }
        let addr = check_host_port("--peers", addr)?;
        if peers.insert(NodeId::new(id), addr).is_some() {
            return Err(invalid("--peers", format!("id {} appears twice", id.escape_debug())));
        }
    }
    Ok(peers)
}

/// HOST:PORT with a non-empty host and a port in 1..=65535 (IPv6 as [::1]:P).
fn check_host_port(flag: &'static str, s: &str) -> Result<String, ConfigError> {
    let bad = || invalid(flag, format!("{s:?} is not HOST:PORT"));
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(invalid(flag, format!("{s:?} has no valid port"))),
    }
}

fn port_of(host_port: &str) -> &str {
    host_port.rsplit_once(':').map_or("", |(_, p)| p)
}

fn socket_addr(flag: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| invalid(flag, format!("{s:?} is not IP:PORT (for example 127.0.0.1:4040)")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("leasehold").chain(args.iter().copied()))
            .map_err(|e| invalid("usage", e.to_string()))?;
        let run = match cli.command {
            Some(Command::Run(r)) => *r,
            None => cli.run,
            Some(other) => panic!("not a run command: {other:?}"),
        };
        Config::from_args(&run)
    }

    fn message(r: Result<Config, ConfigError>) -> String {
        r.expect_err("must be refused").to_string()
    }

    const PEERS: &str = "a=10.0.0.1:7000,b=10.0.0.2:7000,c=pg-2.pg:7000";

    #[test]
    fn no_peers_is_a_single_node_group_with_defaults() {
        let c = parse(&[]).expect("valid");
        assert_eq!(c.node.node_id, NodeId::new(DEFAULT_SINGLE_NODE_ID));
        assert_eq!(c.node.voters.len(), 1);
        assert_eq!(c.node.lease_ttl, Duration::from_secs(2));
        assert_eq!(c.node.heartbeat_interval, Duration::from_millis(400));
        assert_eq!(c.listen_api, "127.0.0.1:4040".parse().expect("addr"));
        assert_eq!(c.listen_metrics, "0.0.0.0:4042".parse().expect("addr"));
        assert_eq!(c.listen_peer, None);
        assert_eq!(c.backend, Backend::Raft);
    }

    #[test]
    fn run_is_the_default_subcommand_and_peers_set_the_defaults() {
        for args in [
            vec!["--node-id", "b", "--peers", PEERS, "--lease-ttl", "1s"],
            vec!["run", "--node-id", "b", "--peers", PEERS, "--lease-ttl", "1s"],
        ] {
            let c = parse(&args).expect("valid");
            assert_eq!(c.node.node_id, NodeId::new("b"));
            assert_eq!(c.node.voters.len(), 3);
            assert_eq!(c.peers[&NodeId::new("c")], "pg-2.pg:7000");
            assert_eq!(c.listen_peer.as_deref(), Some("0.0.0.0:7000"));
            assert_eq!(c.node.advertise, "10.0.0.2:7000");
            assert_eq!(c.node.heartbeat_interval, Duration::from_millis(200));
        }
    }

    #[test]
    fn every_refusal_is_one_line_naming_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--peers", PEERS], "--node-id: is required"),
            (&["--node-id", "z", "--peers", PEERS], "--node-id: z is not one of the ids"),
            (&["--node-id", "a", "--peers", "a=h:1,a=h:2"], "--peers: id a appears twice"),
            (&["--node-id", "a", "--peers", "a=h"], "--peers: \"h\" is not HOST:PORT"),
            (&["--node-id", "a", "--peers", "a:h:1"], "--peers: \"a:h:1\" is not ID=HOST:PORT"),
            (&["--node-id", "a", "--peers", "a=h:99999"], "--peers: \"h:99999\" has no valid port"),
            (&["--lease-ttl", "50ms"], "--lease-ttl"),
            (&["--lease-ttl", "1s", "--heartbeat-interval", "500ms"], "--heartbeat-interval"),
            (&["--max-clock-drift", "0.6"], "--max-clock-drift"),
            (&["--listen-api", "localhost"], "--listen-api"),
            (&["--health-check-url", "ftp://x"], "--health-check-url"),
            (&["--backend", "etcd"], "--node-id: is required with --backend etcd"),
            (&["--backend", "etcd", "--node-id", "a"], "--etcd-endpoints: is required"),
            (&["--backend", "etcd", "--node-id", "a", "--etcd-endpoints", "http://e:2379"], "--election: is required"),
            (&["--backend", "etcd", "--node-id", "a", "--peers", PEERS], "--peers: is for the built-in group"),
            (
                &["--backend", "etcd", "--node-id", "a", "--election", "pg", "--etcd-endpoints", "e:2379"],
                "--etcd-endpoints",
            ),
            (
                &["--backend", "etcd", "--node-id", "a", "--election", "pg", "--etcd-endpoints", "https://e:2379"],
                "--etcd-ca: is required",
            ),
            (
                &[
                    "--backend",
                    "etcd",
                    "--node-id",
                    "a",
                    "--election",
                    "pg",
                    "--etcd-endpoints",
                    "http://e:2379",
                    "--etcd-ca",
                    "ca.pem",
                ],
                "--etcd-endpoints: must be https://",
            ),
            (
                &[
                    "--backend",
                    "etcd",
                    "--node-id",
                    "a",
                    "--election",
                    "pg",
                    "--etcd-endpoints",
                    "http://e:2379",
                    "--etcd-user",
                    "u",
                ],
                "--etcd-user: and a password",
            ),
            (&["--health-check-url", "https://127.0.0.1/health"], "--health-check-url"),
            (&["--cluster-id", ""], "--cluster-id"),
            (&["--peer-tls-cert", "c.pem", "--peer-tls-key", "k.pem"], "--peer-tls-ca: is missing"),
            (&["--peer-tls-cert", "c.pem", "--peer-tls-ca", "ca.pem"], "--peer-tls-key: is missing"),
            (&["--peer-tls-key", "k.pem"], "--peer-tls-cert: is missing"),
            (
                &[
                    "--peers",
                    "a=bad!host:1",
                    "--node-id",
                    "a",
                    "--peer-tls-cert",
                    "c",
                    "--peer-tls-key",
                    "k",
                    "--peer-tls-ca",
                    "ca",
                ],
                "--peers: peer a: \"bad!host\" is neither",
            ),
            (
                &["--backend", "etcd", "--peer-tls-cert", "c", "--peer-tls-key", "k", "--peer-tls-ca", "ca"],
                "--peer-tls-cert: is for the built-in group",
            ),
        ];
        for (args, expected) in cases {
            let m = message(parse(args));
            assert!(m.contains(expected), "{args:?}: {m:?} does not contain {expected:?}");
            assert!(!m.contains('\n'), "{args:?}: one line, got {m:?}");
        }
        let usage = message(parse(&["--lease-ttl", "soon"]));
        assert!(usage.contains("--lease-ttl"), "{usage}");
    }

    #[test]
    fn peer_tls_takes_all_three_files() {
        let tls = ["--peer-tls-cert", "n.pem", "--peer-tls-key", "n.key", "--peer-tls-ca", "ca.pem"];
        let c = parse(&[&["--node-id", "b", "--peers", PEERS][..], &tls].concat()).expect("valid");
        let files = c.peer_tls.expect("peer tls");
        assert_eq!(files.cert, PathBuf::from("n.pem"));
        assert_eq!(files.key, PathBuf::from("n.key"));
        assert_eq!(files.ca, PathBuf::from("ca.pem"));
        assert_eq!(parse(&["--node-id", "b", "--peers", PEERS]).expect("valid").peer_tls, None);
    }

    #[test]
    fn a_heartbeat_too_long_to_triple_is_refused_not_a_panic() {
        // 3 x 6.2e18s overflows a Duration; the check used to multiply unchecked.
        for hb in ["300000000000y", "6200000000000000000s", "18446744073709551615s"] {
            let m = message(parse(&["--heartbeat-interval", hb]));
            assert!(m.starts_with("--heartbeat-interval"), "{hb}: {m}");
        }
    }

    #[test]
    fn a_refusal_quoting_an_id_with_a_line_break_is_still_one_line() {
        // Found by the `config` fuzz target (fuzz/corpus/config/regress-*).
        let m = message(parse(&["--node-id", "?\n.", "--peers", "\u{8}=q:7"]));
        assert_eq!(m, "--node-id: ?\\n. is not one of the ids in --peers");
        let m = message(parse(&["--node-id", "a", "--peers", "a=h:1,x\ny=h:2,x\ny=h:3"]));
        assert_eq!(m, "--peers: id x\\ny appears twice");
    }

    #[test]
    fn etcd_ttls_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(100)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2500)), 3);
    }

    #[test]
    fn the_etcd_backend_needs_the_etcd_feature() {
        let args = ["--backend", "etcd", "--node-id", "a", "--etcd-endpoints", "http://e:2379", "--election", "pg"];
        let parsed = parse(&args);
        if cfg!(feature = "etcd") {
            let etcd = parsed.expect("valid").etcd.expect("etcd settings");
            assert_eq!(etcd.endpoints, ["http://e:2379"]);
            assert_eq!(etcd.lease_ttl_secs, 2);
        } else {
            assert!(message(parsed).contains("--features etcd"));
        }
    }

    #[test]
    fn client_subcommands_parse() {
        let cli = Cli::try_parse_from(["leasehold", "transfer", "--to", "b", "--json"]).expect("parse");
        match cli.command {
            Some(Command::Transfer(t)) => {
                assert_eq!(t.to, "b");
                assert!(t.client.json);
                assert_eq!(t.client.api, "http://127.0.0.1:4040");
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["leasehold", "local", "--nodes", "5"]).expect("parse");
        assert!(matches!(cli.command, Some(Command::Local(l)) if l.nodes == 5));
    }
}
