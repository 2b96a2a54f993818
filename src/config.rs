//! Flags and `LEASEHOLD_*` variables ([`crate::cli::RunArgs`]) turned into a
//! checked [`Config`]. Every refusal is one line that names the flag; the
//! binary prints it and exits with code 2.
//!
//! Owns: defaults that depend on other flags, and every check that can be
//! made before start-up. Must not: touch the network or the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cli::{Backend, LogFormat, RunArgs};
use crate::core::{self, NodeId};

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
    /// Every voter's peer address (HOST:PORT), this node included.
    pub peers: BTreeMap<NodeId, String>,
    pub listen_peer: Option<String>,
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
}

impl Config {
    pub fn from_args(a: &RunArgs) -> Result<Config, ConfigError> {
        let peers = parse_peers(&a.peers)?;
        let node_id = match (&a.node_id, peers.is_empty()) {
            (Some(id), _) => NodeId::new(id.trim()),
            (None, true) => NodeId::new(DEFAULT_SINGLE_NODE_ID),
            (None, false) => return Err(invalid("--node-id", "is required with --peers")),
        };
        if node_id.as_str().is_empty() {
            return Err(invalid("--node-id", "must not be empty"));
        }
        if !peers.is_empty() && !peers.contains_key(&node_id) {
            return Err(invalid("--node-id", format!("{node_id} is not one of the ids in --peers")));
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
        };
        node.validate()?;
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
        if a.backend == Backend::Etcd {
            if a.etcd_endpoints.is_empty() {
                return Err(invalid("--etcd-endpoints", "is required with --backend etcd"));
            }
            if a.election.as_deref().is_none_or(str::is_empty) {
                return Err(invalid("--election", "is required with --backend etcd"));
            }
            return Err(invalid("--backend", "etcd is not available in this build; use the built-in group (raft)"));
        }
        Ok(Config {
            node,
            peers,
            listen_peer,
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
        })
    }
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
            return Err(invalid("--peers", format!("id {id} appears twice")));
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
            (&["--backend", "etcd"], "--etcd-endpoints: is required"),
            (&["--backend", "etcd", "--etcd-endpoints", "http://e:2379"], "--election: is required"),
            (
                &["--backend", "etcd", "--etcd-endpoints", "http://e:2379", "--election", "pg"],
                "--backend: etcd is not available",
            ),
            (&["--health-check-url", "https://127.0.0.1/health"], "--health-check-url"),
            (&["--cluster-id", ""], "--cluster-id"),
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
