//! The command line (DESIGN §4): clap definitions only. Every flag also reads
//! `LEASEHOLD_<FLAG>`. Turning these into a checked configuration is
//! `config.rs`'s job.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Lease-based leader election sidecar with fencing tokens.
#[derive(Parser, Debug)]
#[command(name = "leasehold", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run` is the default subcommand: its flags may be given directly.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the sidecar (the default).
    Run(Box<RunArgs>),
    /// Run N sidecars on loopback as child processes and print every
    /// leadership change.
    Local(LocalArgs),
    /// Show a running sidecar's status.
    Status(ClientArgs),
    /// Show who leads, with which token, for how much longer.
    Leader(ClientArgs),
    /// Show a managed group's membership: voters, learners, a pending
    /// change, the desired set.
    Members(ClientArgs),
    /// Print one line per leadership change, until killed.
    Watch(ClientArgs),
    /// Ask the leader to hand over to its best peer.
    StepDown(StepDownArgs),
    /// Ask the leader to hand over to a given peer.
    Transfer(TransferArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The built-in consensus group of the sidecars.
    Raft,
    /// etcd's election API.
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The sidecar waits at most 60s for a hand-over (the API's longest wait).
fn hand_over_wait(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d > Duration::from_secs(60) {
        return Err(format!("{s} is longer than the 60s a sidecar waits"));
    }
    Ok(d)
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 2s, 500ms, 1m)"))
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// This node's id; must be one of the ids in --peers.
    #[arg(long, env = "LEASEHOLD_NODE_ID")]
    pub node_id: Option<String>,
    /// Every voter of the group as ID=HOST:PORT, comma-separated, this node
    /// included. Without it the node is a single-node group.
    #[arg(long, env = "LEASEHOLD_PEERS", value_delimiter = ',', conflicts_with = "peers_file")]
    pub peers: Vec<String>,
    /// A managed group (DESIGN §2b): the desired voters in a file, one
    /// ID=HOST:PORT a line (or comma-separated), with an optional line
    /// `generation N`; re-read when it changes, so that voters are added
    /// and removed online, one at a time, without a restart.
    #[arg(long, env = "LEASEHOLD_PEERS_FILE")]
    pub peers_file: Option<PathBuf>,
    /// Where to accept peer connections (default: 0.0.0.0 and this node's
    /// port in --peers).
    #[arg(long, env = "LEASEHOLD_LISTEN_PEER")]
    pub listen_peer: Option<String>,
    /// Mutual TLS between peers: this node's certificate chain (PEM), used
    /// as server and as client. Its SAN must name this node's host in
    /// --peers. With --peer-tls-key and --peer-tls-ca; reloaded on change.
    #[arg(long, env = "LEASEHOLD_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --peer-tls-cert.
    #[arg(long, env = "LEASEHOLD_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) a peer's certificate must chain to.
    #[arg(long, env = "LEASEHOLD_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// The local HTTP API.
    #[arg(long, env = "LEASEHOLD_LISTEN_API", default_value = "127.0.0.1:4040")]
    pub listen_api: String,
    /// Prometheus metrics, /healthz and /readyz.
    #[arg(long, env = "LEASEHOLD_LISTEN_METRICS", default_value = "0.0.0.0:4042")]
    pub listen_metrics: String,
    /// What others report as leader_address while this node leads (e.g. its
    /// database endpoint). Default: this node's address in --peers.
    #[arg(long, env = "LEASEHOLD_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory of the durable state file.
    #[arg(long, env = "LEASEHOLD_DATA_DIR", default_value = "leasehold-data")]
    pub data_dir: PathBuf,
    /// Names the group; peers of another cluster are refused.
    #[arg(long, env = "LEASEHOLD_CLUSTER_ID", default_value = "leasehold")]
    pub cluster_id: String,
    /// Lease length (100ms at least).
    #[arg(long, env = "LEASEHOLD_LEASE_TTL", default_value = "2s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// Heartbeat interval (default: lease-ttl / 5).
    #[arg(long, env = "LEASEHOLD_HEARTBEAT_INTERVAL", value_parser = duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Bound on clock rate drift (0.01 = 1%).
    #[arg(long, env = "LEASEHOLD_MAX_CLOCK_DRIFT", default_value_t = 0.01)]
    pub max_clock_drift: f64,
    /// 0 = votes but never leads; higher = preferred leader.
    #[arg(long, env = "LEASEHOLD_PRIORITY", default_value_t = 1)]
    pub priority: u32,
    /// Health check of the local application: an HTTP URL that must answer 2xx.
    #[arg(long, env = "LEASEHOLD_HEALTH_CHECK_URL", conflicts_with = "health_check_exec")]
    pub health_check_url: Option<String>,
    /// Health check of the local application: a command that must exit 0.
    #[arg(long, env = "LEASEHOLD_HEALTH_CHECK_EXEC")]
    pub health_check_exec: Option<String>,
    #[arg(long, env = "LEASEHOLD_BACKEND", value_enum, default_value = "raft")]
    pub backend: Backend,
    /// etcd endpoints, comma-separated (with --backend etcd).
    #[arg(long, env = "LEASEHOLD_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// etcd election name (with --backend etcd): the sidecars of one
    /// replica set share it.
    #[arg(long, env = "LEASEHOLD_ELECTION")]
    pub election: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificates; needed
    /// for https:// endpoints.
    #[arg(long, env = "LEASEHOLD_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-cert-auth (with --etcd-key).
    #[arg(long, env = "LEASEHOLD_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long, env = "LEASEHOLD_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name (etcd auth); the password comes from
    /// --etcd-password-file or LEASEHOLD_ETCD_PASSWORD.
    #[arg(long, env = "LEASEHOLD_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, env = "LEASEHOLD_ETCD_PASSWORD_FILE", conflicts_with = "etcd_password")]
    pub etcd_password_file: Option<PathBuf>,
    /// The etcd user's password. Prefer the variable or the file: a flag's
    /// value is visible to every local user in the process list.
    #[arg(long, env = "LEASEHOLD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    #[arg(long, env = "LEASEHOLD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// File holding the bearer token required by the mutating API endpoints.
    #[arg(long, env = "LEASEHOLD_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Command run when this node becomes leader.
    #[arg(long, env = "LEASEHOLD_ON_ELECTED")]
    pub on_elected: Option<String>,
    /// Command run when this node stops being leader.
    #[arg(long, env = "LEASEHOLD_ON_DEMOTED")]
    pub on_demoted: Option<String>,
    /// Disaster recovery of a managed group that lost a majority of its
    /// voters for good (docs/operations.md): this node leaves group GROUP
    /// (32 hex digits, as `leasehold members` shows it) as a new identity
    /// and takes part in creating a new group with every desired member.
    /// Unsafe by nature: the lost members' group must never run again.
    /// Inert on a node that holds another group.
    #[arg(long, env = "LEASEHOLD_FORCE_NEW_GROUP", value_name = "GROUP")]
    pub force_new_group: Option<String>,
    /// Start even though --peers differs from the voters in the state file
    /// (see docs/operations.md first).
    #[arg(long, env = "LEASEHOLD_ACCEPT_NEW_MEMBERSHIP")]
    pub accept_new_membership: bool,
    /// Position-aware votes (docs/positions.md): a command that fences the
    /// local database to the upstream in LEASEHOLD_UPSTREAM (or none), then
    /// prints its replication position: N or X/Y (an LSN), optionally after
    /// the branch token. Run every --position-interval. Needs --peers-file.
    #[arg(long, env = "LEASEHOLD_POSITION_EXEC", conflicts_with = "position_from_api")]
    pub position_exec: Option<String>,
    /// Position-aware votes, with the position set by the application with
    /// PUT /v1/position instead of a command. Needs --peers-file.
    #[arg(long, env = "LEASEHOLD_POSITION_FROM_API")]
    pub position_from_api: bool,
    /// How often --position-exec runs (default: lease-ttl / 4; at most
    /// lease-ttl / 2).
    #[arg(long, env = "LEASEHOLD_POSITION_INTERVAL", value_parser = duration)]
    pub position_interval: Option<Duration>,
}

#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// How many sidecars.
    #[arg(long, env = "LEASEHOLD_NODES", default_value_t = 3)]
    pub nodes: u32,
    #[arg(long, env = "LEASEHOLD_LEASE_TTL", default_value = "2s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// A managed group: the sidecars read their peers from a file
    /// (--peers-file), start blank and create their group together; see
    /// it with `leasehold members`.
    #[arg(long)]
    pub managed: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The sidecar's API.
    #[arg(long, env = "LEASEHOLD_API", default_value = "http://127.0.0.1:4040")]
    pub api: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// A file holding the bearer token the sidecar was started with
    /// (its --api-token-file); sent with step-down and transfer.
    #[arg(long, env = "LEASEHOLD_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// How a hand-over request waits for its outcome.
#[derive(Args, Debug, Clone)]
pub struct HandOverArgs {
    /// Wait up to this long (at most 60s) until another node leads with a
    /// new token; exit 1 if none does in time. Without it, return once the
    /// leader has accepted the request.
    #[arg(long, value_parser = hand_over_wait)]
    pub wait: Option<Duration>,
    /// Succeed when this node does not lead (nothing to hand over), as a
    /// preStop hook on every replica wants.
    #[arg(long)]
    pub if_leader: bool,
}

#[derive(Args, Debug, Clone)]
pub struct StepDownArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub hand_over: HandOverArgs,
}

#[derive(Args, Debug, Clone)]
pub struct TransferArgs {
    /// The peer to hand leadership to.
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub hand_over: HandOverArgs,
}
