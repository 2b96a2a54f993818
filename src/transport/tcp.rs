//! TCP between peers (tokio). Each node dials every peer once and only sends
//! on that connection; it receives on the connections its peers dial to it.
//! Both sides open with a [`Hello`]; anything that is not a valid hello and
//! then valid frames from that very peer closes the connection and is counted.
//! The acceptor answers in the hello version it was greeted in; the dialer
//! greets in version 2 (with this node's incarnation) and, if the peer
//! closes without answering, as a node of an earlier version does, in
//! version 1 on its next attempt (see [`super::frame`]).
//!
//! With peer TLS ([`super::tls`]) every connection, in both directions, is a
//! mutually authenticated TLS 1.3 session before the hello; a failed
//! handshake is counted as `tls` by the side that refused, and logged.
//!
//! Sending never blocks the caller: each peer has a bounded queue, and a full
//! queue drops the message, as the network may (the protocol tolerates loss).
//! A write that stalls (a stopped peer's full socket) times out and the
//! connection is redialled with capped, jittered backoff.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Certificate = CertificateDer<'static>;
use tracing::warn;

use super::frame::{self, check_hello, FrameError, FrameReader, Hello, Standing};
use super::tls::{self, PeerTls};
use crate::clock::boottime_now;
use crate::core::rng::SplitMix64;
use crate::core::{Envelope, Incarnation, NodeId, PeerKind};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const QUEUE_PER_PEER: usize = 256;
const BACKOFF_BASE: Duration = Duration::from_millis(20);
const BACKOFF_CAP: Duration = Duration::from_millis(1000);
const STABLE_CONNECTION: Duration = Duration::from_secs(2);
/// Inbound connections at once; beyond, new ones are closed at once.
const MAX_INBOUND: usize = 64;

/// What the transport reports: rejected input (by reason label) and peers
/// connecting or disconnecting.
pub trait Events: Send + Sync + 'static {
    fn rejected(&self, reason: &'static str);
    fn peer_up(&self, peer: &NodeId, up: bool);
    /// A valid message from `peer` arrived.
    fn received(&self, _peer: &NodeId) {}
    /// The peer TLS files changed: now in use (true), or refused (false).
    fn tls_reloaded(&self, _ok: bool) {}
    /// A connection with `peer` opened: its hello named this incarnation
    /// (None: a hello of version 1, from a node of an earlier version).
    fn peer_hello(&self, _peer: &NodeId, _incarnation: Option<Incarnation>) {}
}

/// The `reason` under which refused TLS handshakes are counted.
pub const TLS_REJECTED: &str = crate::labels::reason::TLS;

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Every voter's address, this node included.
    pub peers: BTreeMap<NodeId, String>,
    /// Mutual TLS on every connection; None: plain TCP.
    pub tls: Option<Arc<PeerTls>>,
    /// This node's incarnation, for hellos of version 2 and 3; None:
    /// version 1 only.
    pub incarnation: Option<Incarnation>,
    /// What this node's version-3 hellos say it is (membership rule 11).
    pub standing: Standing,
    /// Where each peer's hello is reported, as the core's `Input::Peer`
    /// wants it (membership rule 11), in the order they arrived.
    pub hellos: Option<mpsc::UnboundedSender<(NodeId, PeerKind)>>,
}

struct Ctx {
    cfg: TransportConfig,
    events: Arc<dyn Events>,
    /// The address book: `cfg.peers` at start, and in a managed group
    /// every address the desired set named since (a name is never
    /// forgotten while the process runs; its address may change).
    peers: RwLock<BTreeMap<NodeId, String>>,
    /// This node's incarnation now: a managed node may draw a new one
    /// while running (membership rule 8).
    incarnation: RwLock<Option<Incarnation>>,
    /// This node's standing now: it changes when it converts or receives
    /// its first configuration.
    standing: RwLock<Standing>,
}

impl Ctx {
    fn is_peer(&self, id: &NodeId) -> bool {
        *id != self.cfg.node_id && self.peers.read().is_ok_and(|p| p.contains_key(id))
    }

    fn address_of(&self, id: &NodeId) -> Option<String> {
        self.peers.read().ok().and_then(|p| p.get(id).cloned())
    }

    fn incarnation(&self) -> Option<Incarnation> {
        self.incarnation.read().ok().and_then(|i| *i)
    }

    /// This node's hello in `version` (1 if it has no incarnation).
    fn hello(&self, version: u32) -> Hello {
        let (cluster, node) = (&self.cfg.cluster_id, &self.cfg.node_id);
        match self.incarnation() {
            Some(inc) if version >= 3 => {
                let standing = self.standing.read().map(|s| *s).unwrap_or_default();
                Hello::with_standing(cluster, node, inc, standing)
            }
            Some(inc) if version == 2 => Hello::with_incarnation(cluster, node, inc),
            _ => Hello::new(cluster, node),
        }
    }

    /// A peer's hello was accepted: the events, and the driver's report.
    fn heard(&self, hello: &Hello) {
        self.events.peer_hello(&hello.node_id, hello.incarnation);
        if let Some(tx) = &self.cfg.hellos {
            let _ = tx.send((hello.node_id.clone(), hello.peer_kind()));
        }
    }

    /// The hello version this node dials in first.
    fn newest_hello(&self) -> u32 {
        if self.incarnation().is_some() {
            frame::HELLO_VERSION
        } else {
            1
        }
    }
}

/// The sending half, owned by the driver.
pub struct Transport {
    queues: BTreeMap<NodeId, mpsc::Sender<Envelope>>,
    local_addr: SocketAddr,
    ctx: Arc<Ctx>,
}

impl Transport {
    /// Starts accepting on `listener` (delivering valid messages to
    /// `inbound`) and dialling every peer.
    pub fn start(
        cfg: TransportConfig,
        listener: TcpListener,
        inbound: mpsc::Sender<Envelope>,
        events: Arc<dyn Events>,
    ) -> io::Result<Transport> {
        let local_addr = listener.local_addr()?;
        let peers = RwLock::new(cfg.peers.clone());
        let incarnation = RwLock::new(cfg.incarnation);
        let standing = RwLock::new(cfg.standing);
        let ctx = Arc::new(Ctx { cfg, events, peers, incarnation, standing });
        if let Some(tls) = &ctx.cfg.tls {
            let events = ctx.events.clone();
            tokio::spawn(tls::watch(tls.clone(), move |ok| events.tls_reloaded(ok)));
        }
        tokio::spawn(accept_loop(listener, ctx.clone(), inbound));
        let mut t = Transport { queues: BTreeMap::new(), local_addr, ctx };
        t.add_peers(&t.ctx.cfg.peers.clone());
        Ok(t)
    }

    /// Adds the addresses of a managed group's desired set to the address
    /// book: a new name is dialled from now on, a known name at its new
    /// address from its next connection.
    pub fn add_peers(&mut self, peers: &BTreeMap<NodeId, String>) {
        if let Ok(mut book) = self.ctx.peers.write() {
            book.extend(peers.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for peer in peers.keys().filter(|p| **p != self.ctx.cfg.node_id) {
            if !self.queues.contains_key(peer) {
                let (tx, rx) = mpsc::channel(QUEUE_PER_PEER);
                self.queues.insert(peer.clone(), tx);
                tokio::spawn(dial_loop(peer.clone(), self.ctx.clone(), rx));
            }
        }
    }

    /// This node's incarnation from now on, in the hellos of new
    /// connections (messages name it in their envelopes).
    pub fn set_incarnation(&self, incarnation: Incarnation) {
        if let Ok(mut i) = self.ctx.incarnation.write() {
            *i = Some(incarnation);
        }
    }

    /// What this node's hellos of new connections say it is from now on.
    pub fn set_standing(&self, standing: Standing) {
        if let Ok(mut s) = self.ctx.standing.write() {
            *s = standing;
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues `msg` for its addressee; drops it if the queue is full or the
    /// addressee unknown.
    pub fn send(&self, msg: Envelope) {
        if let Some(q) = self.queues.get(&msg.to) {
            let _ = q.try_send(msg);
        }
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, inbound: mpsc::Sender<Envelope>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            // Out of file descriptors and the like: back off briefly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.events.rejected(crate::labels::reason::TOO_MANY_CONNECTIONS);
            drop(stream);
            continue;
        };
        let (ctx, inbound) = (ctx.clone(), inbound.clone());
        tokio::spawn(async move {
            match serve_inbound(stream, &ctx, inbound).await {
                Err(Closed::Rejected(e)) => ctx.events.rejected(e.label()),
                Err(Closed::Tls(e)) => {
                    warn!(address = %addr, error = %e, "refused a peer connection: TLS failed");
                    ctx.events.rejected(TLS_REJECTED);
                }
                Err(Closed::TlsAlert(e)) => {
                    warn!(address = %addr, error = %e, "a peer refused this node's certificate")
                }
                Ok(()) | Err(Closed::Io | Closed::NoHello) => {}
            }
            drop(slot);
        });
    }
}

enum Closed {
    Rejected(FrameError),
    /// This node refused the other side's TLS: its certificate, or bytes
    /// that are not TLS at all (a plain-TCP client).
    Tls(String),
    /// The other side ended the TLS session with an alert: it refused this
    /// node (counted there, not here).
    TlsAlert(String),
    Io,
    /// The peer closed the connection after this node's hello without
    /// answering: a node of an earlier version refusing a newer hello (or
    /// one that stopped just then).
    NoHello,
}

impl From<FrameError> for Closed {
    fn from(e: FrameError) -> Self {
        Closed::Rejected(e)
    }
}

impl From<io::Error> for Closed {
    fn from(e: io::Error) -> Self {
        // tokio-rustls reports TLS failures as io errors that wrap a rustls one.
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(alert)) => Closed::TlsAlert(format!("received fatal alert: {alert:?}")),
            Some(tls) => Closed::Tls(tls.to_string()),
            None => Closed::Io,
        }
    }
}

/// A peer connection: plain TCP, or TLS over it.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Accepts the TLS session of a connection this node accepted; the client's
/// certificate comes with it.
async fn accept_tls(tls: &PeerTls, stream: TcpStream) -> Result<(Box<dyn Conn>, Option<Certificate>), Closed> {
    let handshake = TlsAcceptor::from(tls.server_config()).accept(stream);
    match timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(s)) => {
            let cert = s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
            Ok((Box::new(s), cert))
        }
        Ok(Err(e)) => Err(e.into()),
        // A client that connects and says nothing (or plain TCP waiting
        // for a hello) is refused as any other failed handshake.
        Err(_) => Err(Closed::Tls("no TLS handshake within 5s".into())),
    }
}

/// Opens the TLS session of a connection this node dialled to `addr`.
async fn connect_tls(tls: &PeerTls, addr: &str, stream: TcpStream) -> Result<Box<dyn Conn>, Closed> {
    let name = tls::server_name(addr).map_err(Closed::Tls)?;
    let handshake = TlsConnector::from(tls.client_config()).connect(name, stream);
    match timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Closed::Io),
    }
}

async fn read_frame<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    reader: &mut FrameReader,
    buf: &mut [u8],
) -> Result<Vec<u8>, Closed> {
    loop {
        if let Some(f) = reader.next_frame()? {
            return Ok(f);
        }
        let n = stream.read(buf).await?;
        if n == 0 {
            return Err(Closed::Io);
        }
        reader.push(&buf[..n]);
    }
}

async fn serve_inbound(stream: TcpStream, ctx: &Ctx, inbound: mpsc::Sender<Envelope>) -> Result<(), Closed> {
    let _ = stream.set_nodelay(true);
    let (mut stream, client_cert): (Box<dyn Conn>, _) = match &ctx.cfg.tls {
        Some(tls) => accept_tls(tls, stream).await?,
        None => (Box::new(stream), None),
    };
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 8192];
    // Before a valid hello, any framing error (an HTTP request's first bytes
    // read as a huge length) means the caller is not a leasehold peer.
    let payload = match timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream, &mut reader, &mut buf)).await {
        Ok(Ok(p)) => p,
        Ok(Err(Closed::Rejected(_))) | Err(_) => return Err(Closed::Rejected(FrameError::NotAPeer)),
        Ok(Err(other)) => return Err(other),
    };
    let hello = check_hello(&payload, &ctx.cfg.cluster_id, |id| ctx.is_peer(id))?;
    // With TLS, the certificate must name the host that --peers gives for
    // the node the hello claims to be: a certificate of the CA does not let
    // its holder pose as another member.
    if let (Some(cert), Some(addr)) = (&client_cert, ctx.address_of(&hello.node_id)) {
        tls::certificate_names(cert, &addr).map_err(|e| Closed::Tls(format!("hello as {}: {e}", hello.node_id)))?;
    }
    ctx.heard(&hello);
    let mine = frame::encode(&ctx.hello(hello.version))?;
    timeout(WRITE_TIMEOUT, stream.write_all(&mine)).await.map_err(|_| Closed::Io)??;
    loop {
        let payload = read_frame(&mut stream, &mut reader, &mut buf).await?;
        let msg = frame::decode_envelope(&payload, hello.version)?;
        if msg.from != hello.node_id {
            return Err(Closed::Rejected(FrameError::Malformed(format!(
                "message from {} on {}'s connection",
                msg.from, hello.node_id
            ))));
        }
        ctx.events.received(&hello.node_id);
        if inbound.send(msg).await.is_err() {
            return Ok(()); // the driver stopped
        }
    }
}

async fn dial_loop(peer: NodeId, ctx: Arc<Ctx>, mut queue: mpsc::Receiver<Envelope>) {
    let mut rng = SplitMix64::new(boottime_now().0 ^ fnv(peer.as_str()));
    let mut backoff = BACKOFF_BASE;
    // The last TLS failure logged: a peer that keeps failing the same way is
    // logged once per streak, not at every redial (each is still counted).
    let mut logged: Option<String> = None;
    // The hello version of the next attempt: the newest first; version 1
    // after a peer closed on it; the newest again after any connection.
    let mut version = ctx.newest_hello();
    loop {
        let addr = ctx.address_of(&peer).unwrap_or_default();
        let failure = match dial(&peer, &addr, &ctx, version).await {
            Ok(mut stream) => {
                logged = None;
                version = ctx.newest_hello();
                let up_at = tokio::time::Instant::now();
                ctx.events.peer_up(&peer, true);
                let done = pump(&mut stream, &mut queue).await;
                ctx.events.peer_up(&peer, false);
                // Only a connection that stayed up resets the backoff: a peer
                // that accepts and drops at once is not redialled in a loop.
                if up_at.elapsed() >= STABLE_CONNECTION {
                    backoff = BACKOFF_BASE;
                }
                if done {
                    return; // the driver stopped
                }
                None
            }
            Err(Closed::Rejected(e)) => {
                ctx.events.rejected(e.label());
                None
            }
            Err(Closed::Tls(e)) => {
                ctx.events.rejected(TLS_REJECTED);
                Some(("refused to connect to a peer: TLS failed", e))
            }
            Err(Closed::TlsAlert(e)) => Some(("a peer refused this node's certificate", e)),
            Err(Closed::Io) => None,
            Err(Closed::NoHello) if version > 1 => {
                // Most likely a node of an earlier version: greet it in
                // the version below at once, without a backoff.
                version -= 1;
                continue;
            }
            Err(Closed::NoHello) => {
                version = ctx.newest_hello();
                None
            }
        };
        if let Some((what, e)) = failure {
            if logged.as_deref() != Some(e.as_str()) {
                warn!(peer = %peer, address = %addr, error = %e, "{what}");
                logged = Some(e);
            }
        }
        let wait = backoff / 2 + Duration::from_nanos(rng.below(backoff.as_nanos() as u64 / 2 + 1));
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

async fn dial(peer: &NodeId, addr: &str, ctx: &Ctx, version: u32) -> Result<Box<dyn Conn>, Closed> {
    let stream = timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await.map_err(|_| Closed::Io)??;
    let _ = stream.set_nodelay(true);
    let mut stream: Box<dyn Conn> = match &ctx.cfg.tls {
        Some(tls) => connect_tls(tls, addr, stream).await?,
        None => Box::new(stream),
    };
    let mine = frame::encode(&ctx.hello(version))?;
    timeout(WRITE_TIMEOUT, stream.write_all(&mine)).await.map_err(|_| Closed::Io)??;
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 1024];
    let payload = match timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream, &mut reader, &mut buf)).await {
        Ok(Ok(p)) => p,
        Ok(Err(Closed::Io)) => return Err(Closed::NoHello),
        Ok(Err(other)) => return Err(other),
        Err(_) => return Err(Closed::Io),
    };
    // The node answering at this address must be the peer we meant.
    let hello = check_hello(&payload, &ctx.cfg.cluster_id, |id| id == peer)?;
    debug_assert_eq!(&hello.node_id, peer);
    ctx.heard(&hello);
    Ok(stream)
}

/// Writes queued messages until the connection fails (false) or the driver
/// drops the queue (true). The peer never writes on this connection after
/// the handshake, so anything readable means it closed (or broke the
/// protocol): notice that at once. Otherwise a peer that died between two
/// messages is noticed only when a write fails, and the first message after
/// its death (a vote request, say) is lost in the dead socket while the
/// kernel still accepts it, which cost a failover a whole campaign round.
async fn pump(stream: &mut dyn Conn, queue: &mut mpsc::Receiver<Envelope>) -> bool {
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            msg = queue.recv() => {
                let Some(msg) = msg else { return true };
                let Ok(bytes) = frame::encode(&msg) else { continue };
                match timeout(WRITE_TIMEOUT, stream.write_all(&bytes)).await {
                    Ok(Ok(())) => {}
                    _ => return false,
                }
            }
            // `read` is cancel-safe: losing this select loses no byte.
            _ = stream.read(&mut probe) => return false,
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
