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
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Certificate = CertificateDer<'static>;
use tracing::warn;

use super::frame::{self, check_hello, FrameError, FrameReader, Hello};
use super::tls::{self, PeerTls};
use crate::clock::boottime_now;
use crate::core::rng::SplitMix64;
use crate::core::{Envelope, Incarnation, NodeId};

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
    /// This node's incarnation, for hellos of version 2; None: version 1
    /// only.
    pub incarnation: Option<Incarnation>,
}

struct Ctx {
    cfg: TransportConfig,
    events: Arc<dyn Events>,
}

impl Ctx {
    fn is_peer(&self, id: &NodeId) -> bool {
        *id != self.cfg.node_id && self.cfg.peers.contains_key(id)
    }

    /// This node's hello in `version` (1 if it has no incarnation).
    fn hello(&self, version: u32) -> Hello {
        match self.cfg.incarnation {
            Some(inc) if version >= 2 => Hello::with_incarnation(&self.cfg.cluster_id, &self.cfg.node_id, inc),
            _ => Hello::new(&self.cfg.cluster_id, &self.cfg.node_id),
        }
    }

    /// The hello version this node dials in first.
    fn newest_hello(&self) -> u32 {
        if self.cfg.incarnation.is_some() {
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
        let ctx = Arc::new(Ctx { cfg, events });
        if let Some(tls) = &ctx.cfg.tls {
            let events = ctx.events.clone();
            tokio::spawn(tls::watch(tls.clone(), move |ok| events.tls_reloaded(ok)));
        }
        tokio::spawn(accept_loop(listener, ctx.clone(), inbound));
        let mut queues = BTreeMap::new();
        for (peer, addr) in ctx.cfg.peers.iter().filter(|(p, _)| **p != ctx.cfg.node_id) {
            let (tx, rx) = mpsc::channel(QUEUE_PER_PEER);
            queues.insert(peer.clone(), tx);
            tokio::spawn(dial_loop(peer.clone(), addr.clone(), ctx.clone(), rx));
        }
        Ok(Transport { queues, local_addr })
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
    if let (Some(cert), Some(addr)) = (&client_cert, ctx.cfg.peers.get(&hello.node_id)) {
        tls::certificate_names(cert, addr).map_err(|e| Closed::Tls(format!("hello as {}: {e}", hello.node_id)))?;
    }
    ctx.events.peer_hello(&hello.node_id, hello.incarnation);
    let mine = frame::encode(&ctx.hello(hello.version))?;
    timeout(WRITE_TIMEOUT, stream.write_all(&mine)).await.map_err(|_| Closed::Io)??;
    loop {
        let payload = read_frame(&mut stream, &mut reader, &mut buf).await?;
        let msg = frame::decode_envelope(&payload)?;
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

async fn dial_loop(peer: NodeId, addr: String, ctx: Arc<Ctx>, mut queue: mpsc::Receiver<Envelope>) {
    let mut rng = SplitMix64::new(boottime_now().0 ^ fnv(peer.as_str()));
    let mut backoff = BACKOFF_BASE;
    // The last TLS failure logged: a peer that keeps failing the same way is
    // logged once per streak, not at every redial (each is still counted).
    let mut logged: Option<String> = None;
    // The hello version of the next attempt: the newest first; version 1
    // after a peer closed on it; the newest again after any connection.
    let mut version = ctx.newest_hello();
    loop {
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
                // version 1 at once, without a backoff.
                version = 1;
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
    ctx.events.peer_hello(peer, hello.incarnation);
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
mod tests {
    use super::*;
    use crate::core::{Body, Term, PROTOCOL_VERSION};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorded {
        rejected: Mutex<Vec<&'static str>>,
        up: Mutex<Vec<(NodeId, bool)>>,
        hellos: Mutex<Vec<(NodeId, Option<Incarnation>)>>,
    }
    impl Events for Recorded {
        fn peer_hello(&self, peer: &NodeId, incarnation: Option<Incarnation>) {
            self.hellos.lock().expect("lock").push((peer.clone(), incarnation));
        }
        fn rejected(&self, reason: &'static str) {
            self.rejected.lock().expect("lock").push(reason);
        }
        fn peer_up(&self, peer: &NodeId, up: bool) {
            self.up.lock().expect("lock").push((peer.clone(), up));
        }
    }

    fn envelope(from: &str, to: &str, round: u64) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            cluster_id: "pg".into(),
            from: NodeId::new(from),
            to: NodeId::new(to),
            term: Term(3),
            body: Body::Heartbeat { round, leader_address: "x".into() },
        }
    }

    /// Waits (bounded) for `cond`, polling every 10ms.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Listeners for peers a and b, and the peer table naming them.
    async fn two_listeners() -> (TcpListener, TcpListener, BTreeMap<NodeId, String>) {
        let la = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let lb = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peers: BTreeMap<NodeId, String> = [
            (NodeId::new("a"), la.local_addr().expect("addr").to_string()),
            (NodeId::new("b"), lb.local_addr().expect("addr").to_string()),
        ]
        .into();
        (la, lb, peers)
    }

    type Pair = (Transport, mpsc::Receiver<Envelope>, Transport, mpsc::Receiver<Envelope>, Arc<Recorded>);

    /// Node `me`'s incarnation in these tests.
    fn incarnation(me: &str) -> Incarnation {
        Incarnation(0x1000 + u128::from(me.as_bytes()[0]))
    }

    async fn pair() -> Pair {
        pair_with(None, None).await
    }

    /// Peers a and b, each with its own TLS (or none).
    async fn pair_with(tls_a: Option<Arc<PeerTls>>, tls_b: Option<Arc<PeerTls>>) -> Pair {
        let (la, lb, peers) = two_listeners().await;
        let events = Arc::new(Recorded::default());
        let cfg = |me: &str, tls| TransportConfig {
            cluster_id: "pg".into(),
            node_id: NodeId::new(me),
            peers: peers.clone(),
            tls,
            incarnation: Some(incarnation(me)),
        };
        let (ta, ra) = mpsc::channel(16);
        let (tb, rb) = mpsc::channel(16);
        let a = Transport::start(cfg("a", tls_a), la, ta, events.clone()).expect("start a");
        let b = Transport::start(cfg("b", tls_b), lb, tb, events.clone()).expect("start b");
        (a, ra, b, rb, events)
    }

    /// The first frame on `s`, and the reader holding what came after it.
    async fn read_hello(s: &mut TcpStream) -> (Vec<u8>, FrameReader) {
        let mut reader = FrameReader::default();
        let mut buf = vec![0u8; 1024];
        let read = timeout(Duration::from_secs(5), read_frame(s, &mut reader, &mut buf)).await;
        (read.expect("in time").ok().expect("a hello"), reader)
    }

    /// Two nodes of this version greet each other in version 2 and learn
    /// each other's incarnation, on the connections of both directions.
    #[tokio::test]
    async fn nodes_of_this_version_greet_in_version_2_and_learn_each_others_incarnation() {
        let (_a, _ra, _b, _rb, events) = pair().await;
        let seen = |peer: &str| (NodeId::new(peer), Some(incarnation(peer)));
        eventually("four hellos", || events.hellos.lock().expect("lock").len() >= 4).await;
        let hellos = events.hellos.lock().expect("lock").clone();
        assert_eq!(hellos.iter().filter(|h| **h == seen("a")).count(), 2, "{hellos:?}");
        assert_eq!(hellos.iter().filter(|h| **h == seen("b")).count(), 2, "{hellos:?}");
    }

    /// b is a node of protocol 1: it refuses any hello but version 1 by
    /// closing the connection. a greets it in version 2, then in version 1,
    /// with exactly protocol 1's bytes, and its messages get through.
    #[tokio::test]
    async fn a_node_of_an_earlier_version_is_greeted_in_version_1_after_it_closes() {
        let (la, lb, peers) = two_listeners().await;
        let events = Arc::new(Recorded::default());
        let cfg = TransportConfig {
            cluster_id: "pg".into(),
            node_id: NodeId::new("a"),
            peers,
            tls: None,
            incarnation: Some(incarnation("a")),
        };
        let (ta, _ra) = mpsc::channel(16);
        let a = Transport::start(cfg, la, ta, events.clone()).expect("start a");
        let (mut s, _) = timeout(Duration::from_secs(5), lb.accept()).await.expect("dialled").expect("accept");
        let (hello, _) = read_hello(&mut s).await;
        assert_eq!(check_hello(&hello, "pg", |_| true).expect("hello").version, 2);
        drop(s); // what a node of protocol 1 does with it
        let (mut s, _) = timeout(Duration::from_secs(5), lb.accept()).await.expect("redialled").expect("accept");
        let (hello, mut reader) = read_hello(&mut s).await;
        let v1 = frame::encode(&Hello::new("pg", &NodeId::new("a"))).expect("encode");
        assert_eq!(hello, v1[4..].to_vec(), "protocol 1's hello, byte for byte");
        s.write_all(&frame::encode(&Hello::new("pg", &NodeId::new("b"))).expect("encode")).await.expect("answer");
        a.send(envelope("a", "b", 7));
        let mut buf = vec![0u8; 1024];
        let got = timeout(Duration::from_secs(5), read_frame(&mut s, &mut reader, &mut buf)).await;
        let msg = frame::decode_envelope(&got.expect("in time").ok().expect("a frame")).expect("an envelope");
        assert_eq!(msg, envelope("a", "b", 7));
        assert!(events.hellos.lock().expect("lock").contains(&(NodeId::new("b"), None)));
    }

    /// A node of protocol 1 dials in version 1 and is answered in version 1,
    /// byte for byte, and its messages are delivered.
    #[tokio::test]
    async fn a_dialer_of_an_earlier_version_is_answered_in_version_1() {
        let (a, mut ra, _b, _rb, events) = pair().await;
        let mut s = TcpStream::connect(a.local_addr()).await.expect("connect");
        s.write_all(&frame::encode(&Hello::new("pg", &NodeId::new("b"))).expect("encode")).await.expect("hello");
        let mut reader = FrameReader::default();
        let mut buf = vec![0u8; 1024];
        let answer = timeout(Duration::from_secs(5), read_frame(&mut s, &mut reader, &mut buf)).await;
        let v1 = frame::encode(&Hello::new("pg", &NodeId::new("a"))).expect("encode");
        assert_eq!(answer.expect("in time").ok().expect("an answer"), v1[4..].to_vec());
        s.write_all(&frame::encode(&envelope("b", "a", 9)).expect("encode")).await.expect("send");
        loop {
            let got = timeout(Duration::from_secs(5), ra.recv()).await.expect("delivered").expect("open");
            if got == envelope("b", "a", 9) {
                break;
            }
        }
        assert!(events.hellos.lock().expect("lock").contains(&(NodeId::new("b"), None)));
    }

    #[tokio::test]
    async fn peers_exchange_messages_in_order() {
        let (a, mut ra, b, mut rb, events) = pair().await;
        eventually("both peers connected", || events.up.lock().expect("lock").len() >= 2).await;
        for round in 1..=20 {
            a.send(envelope("a", "b", round));
        }
        b.send(envelope("b", "a", 99));
        for round in 1..=20 {
            let m = timeout(Duration::from_secs(5), rb.recv()).await.expect("in time").expect("open");
            assert_eq!(m, envelope("a", "b", round));
        }
        let m = timeout(Duration::from_secs(5), ra.recv()).await.expect("in time").expect("open");
        assert_eq!(m, envelope("b", "a", 99));
        assert!(events.rejected.lock().expect("lock").is_empty());
    }

    async fn raw_client(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let mut got = Vec::new();
        let _ = timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("closed in time");
        got
    }

    #[tokio::test]
    async fn a_peer_that_dies_is_noticed_without_a_write_and_the_next_message_arrives() {
        // b is a hand-made peer: it accepts a's dial, answers the hello, and
        // then its process "dies" (the socket closes). a must notice at once,
        // redial, and deliver the next message on the new connection instead
        // of writing it into the dead one.
        let (la, lb, peers) = two_listeners().await;
        let events = Arc::new(Recorded::default());
        let cfg =
            TransportConfig { cluster_id: "pg".into(), node_id: NodeId::new("a"), peers, tls: None, incarnation: None };
        let (ta, _ra) = mpsc::channel(16);
        let a = Transport::start(cfg, la, ta, events.clone()).expect("start a");
        let accept_hello = || async {
            let (mut s, _) = timeout(Duration::from_secs(5), lb.accept()).await.expect("dialled").expect("accept");
            let mut reader = FrameReader::default();
            let mut buf = vec![0u8; 1024];
            assert!(read_frame(&mut s, &mut reader, &mut buf).await.is_ok(), "a hello");
            s.write_all(&frame::encode(&Hello::new("pg", &NodeId::new("b"))).expect("encode")).await.expect("hi");
            (s, reader, buf)
        };
        let (first, _, _) = accept_hello().await;
        eventually("a up", || events.up.lock().expect("lock").contains(&(NodeId::new("b"), true))).await;
        drop(first);
        eventually("the death noticed without a write", || {
            events.up.lock().expect("lock").contains(&(NodeId::new("b"), false))
        })
        .await;
        let (mut second, mut reader, mut buf) = accept_hello().await;
        a.send(envelope("a", "b", 7));
        let payload =
            timeout(Duration::from_secs(5), read_frame(&mut second, &mut reader, &mut buf)).await.expect("in time");
        let Ok(payload) = payload else { panic!("no frame on the new connection") };
        assert_eq!(frame::decode_envelope(&payload).expect("envelope"), envelope("a", "b", 7));
    }

    #[tokio::test]
    async fn strangers_oversize_frames_and_forged_senders_are_closed_and_counted() {
        let (_a, _ra, b, mut rb, events) = pair().await;
        let addr = b.local_addr();
        let count = |label: &'static str| events.rejected.lock().expect("lock").iter().filter(|r| **r == label).count();

        raw_client(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        eventually("not_a_peer counted", || count("not_a_peer") == 1).await;

        let wrong = frame::encode(&Hello::new("mysql", &NodeId::new("a"))).expect("encode");
        raw_client(addr, &wrong).await;
        eventually("cluster_id counted", || count("cluster_id") == 1).await;

        let stranger = frame::encode(&Hello::new("pg", &NodeId::new("z"))).expect("encode");
        raw_client(addr, &stranger).await;
        eventually("unknown_peer counted", || count("unknown_peer") == 1).await;

        let mut big = frame::encode(&Hello::new("pg", &NodeId::new("a"))).expect("encode");
        big.extend_from_slice(&(10u32 << 20).to_be_bytes());
        raw_client(addr, &big).await;
        eventually("oversize counted", || count("oversize") == 1).await;

        // A hello as a, then a message claiming to come from b.
        let mut forged = frame::encode(&Hello::new("pg", &NodeId::new("a"))).expect("encode");
        forged.extend(frame::encode(&envelope("b", "b", 1)).expect("encode"));
        raw_client(addr, &forged).await;
        eventually("malformed counted", || count("malformed") == 1).await;
        assert!(rb.try_recv().is_err(), "nothing forged reached the driver");
    }

    mod over_tls {
        use super::*;
        use crate::transport::tls::certs::{bundle, replace, self_signed, Ca, Issued};
        use crate::transport::tls::{Reload, TlsFiles};
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use rustls::{ClientConfig, RootCertStore, ServerConfig};
        use std::path::{Path, PathBuf};

        fn temp_dir(name: &str) -> PathBuf {
            let d = std::env::temp_dir().join(format!("leasehold-tcp-tls-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            d
        }

        fn load(node: &Issued, ca: &Path) -> Arc<PeerTls> {
            let files = TlsFiles { cert: node.cert.clone(), key: node.key.clone(), ca: ca.to_path_buf() };
            let own = Some(ServerName::try_from("127.0.0.1").expect("ip"));
            Arc::new(PeerTls::load(files, own).expect("usable certificates"))
        }

        fn chain(pem: &Path) -> Vec<CertificateDer<'static>> {
            CertificateDer::pem_file_iter(pem).expect("open").collect::<Result<_, _>>().expect("pem")
        }

        fn provider() -> Arc<rustls::crypto::CryptoProvider> {
            Arc::new(rustls::crypto::ring::default_provider())
        }

        /// A TLS client of this test's own making: trusts `ca`, presents
        /// `identity` if any.
        fn client_config(ca: &Path, identity: Option<&Issued>) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(chain(ca));
            let builder = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls 1.3")
                .with_root_certificates(roots);
            Arc::new(match identity {
                None => builder.with_no_client_auth(),
                Some(i) => builder
                    .with_client_auth_cert(chain(&i.cert), PrivateKeyDer::from_pem_file(&i.key).expect("key"))
                    .expect("client cert"),
            })
        }

        /// Connects over TLS, sends a hello as `a`, and returns the hello
        /// payload the node answers with, if it answers with one.
        async fn tls_client(addr: SocketAddr, config: Arc<ClientConfig>) -> Option<Vec<u8>> {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::try_from("127.0.0.1").expect("ip");
            let mut s = timeout(Duration::from_secs(5), TlsConnector::from(config).connect(name, tcp))
                .await
                .expect("handshake in time")
                .ok()?;
            s.write_all(&frame::encode(&Hello::new("pg", &NodeId::new("a"))).expect("encode")).await.ok()?;
            let (mut reader, mut buf) = (FrameReader::default(), vec![0u8; 1024]);
            timeout(Duration::from_secs(5), read_frame(&mut s, &mut reader, &mut buf)).await.expect("in time").ok()
        }

        #[tokio::test]
        async fn peers_exchange_messages_over_mutual_tls_and_clients_without_a_valid_certificate_are_refused() {
            let dir = temp_dir("mutual");
            let ca = Ca::new(&dir, "ca");
            let other = Ca::new(&dir, "other-ca");
            let (na, nb) = (ca.issue("a", "IP:127.0.0.1", 1, 2), ca.issue("b", "IP:127.0.0.1", 2, 2));
            let b_ca = dir.join("b-ca.pem");
            replace(&b_ca, &bundle(&[&ca.cert]));
            let tls_b = load(&nb, &b_ca);
            let (a, mut ra, b, mut rb, events) = pair_with(Some(load(&na, &ca.cert)), Some(tls_b.clone())).await;
            eventually("both peers connected", || events.up.lock().expect("lock").len() >= 2).await;
            a.send(envelope("a", "b", 1));
            b.send(envelope("b", "a", 2));
            let m = timeout(Duration::from_secs(5), rb.recv()).await.expect("in time").expect("open");
            assert_eq!(m, envelope("a", "b", 1));
            let m = timeout(Duration::from_secs(5), ra.recv()).await.expect("in time").expect("open");
            assert_eq!(m, envelope("b", "a", 2));
            assert!(events.rejected.lock().expect("lock").is_empty());

            let addr = b.local_addr();
            let tls_count = || events.rejected.lock().expect("lock").iter().filter(|r| **r == TLS_REJECTED).count();
            let intruder = other.issue("intruder", "IP:127.0.0.1", 3, 2);
            let clients = [
                ("no", client_config(&ca.cert, None)),
                ("another CA's", client_config(&ca.cert, Some(&intruder))),
                ("a self-signed", client_config(&ca.cert, Some(&self_signed(&dir, "selfie", "IP:127.0.0.1")))),
                ("an expired", client_config(&ca.cert, Some(&ca.issue("late", "IP:127.0.0.1", 4, -1)))),
                // The group's CA, but for another host than a's in --peers:
                // it may not say hello as a.
                (
                    "another host's",
                    client_config(&ca.cert, Some(&ca.issue("a-elsewhere", "DNS:a.example,IP:10.9.9.9", 5, 2))),
                ),
            ];
            for (n, (what, config)) in clients.into_iter().enumerate() {
                assert_eq!(tls_client(addr, config).await, None, "a client with {what} certificate got a hello");
                eventually(&format!("{what} certificate counted"), || tls_count() == n + 1).await;
            }
            // A plain-TCP peer, even with a valid hello, is not let in.
            raw_client(addr, &frame::encode(&Hello::new("pg", &NodeId::new("a"))).expect("encode")).await;
            eventually("plain TCP counted", || tls_count() == 6).await;
            assert!(rb.try_recv().is_err(), "nothing from a refused client reached the driver");

            // The CA file now also holds the other CA: after the reload, new
            // connections accept the intruder's certificate.
            replace(&b_ca, &bundle(&[&ca.cert, &other.cert]));
            assert_eq!(tls_b.reload_if_changed(), Reload::Settling);
            assert_eq!(tls_b.reload_if_changed(), Reload::Reloaded);
            let hello =
                tls_client(addr, client_config(&ca.cert, Some(&intruder))).await.expect("accepted after reload");
            assert_eq!(
                check_hello(&hello, "pg", |id| id.as_str() == "b").expect("b's hello").node_id,
                NodeId::new("b")
            );
            let _ = std::fs::remove_dir_all(&dir);
        }

        #[tokio::test]
        async fn a_dialer_refuses_a_peer_whose_certificate_is_from_another_ca_or_names_another_host() {
            let dir = temp_dir("dialer");
            let ca = Ca::new(&dir, "ca");
            let other = Ca::new(&dir, "other-ca");
            let na = ca.issue("a", "IP:127.0.0.1", 1, 2);
            let cases = [
                ("another CA", other.issue("b-other", "IP:127.0.0.1", 2, 2)),
                ("another host", ca.issue("b-elsewhere", "DNS:b.example,IP:10.9.9.9", 3, 2)),
            ];
            for (what, identity) in cases {
                // Peer b is an impostor: a TLS server that accepts anyone.
                let lb = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let server = ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("tls 1.3")
                    .with_no_client_auth()
                    .with_single_cert(chain(&identity.cert), PrivateKeyDer::from_pem_file(&identity.key).expect("key"))
                    .expect("server config");
                let la = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let peers: BTreeMap<NodeId, String> = [
                    (NodeId::new("a"), la.local_addr().expect("addr").to_string()),
                    (NodeId::new("b"), lb.local_addr().expect("addr").to_string()),
                ]
                .into();
                let events = Arc::new(Recorded::default());
                let cfg = TransportConfig {
                    cluster_id: "pg".into(),
                    node_id: NodeId::new("a"),
                    peers,
                    tls: Some(load(&na, &ca.cert)),
                    incarnation: None,
                };
                let (ta, _ra) = mpsc::channel(16);
                let _a = Transport::start(cfg, la, ta, events.clone()).expect("start a");
                let (tcp, _) = timeout(Duration::from_secs(5), lb.accept()).await.expect("dialled").expect("accept");
                // The dialer aborts the handshake; what the impostor sees does not matter.
                let _ = timeout(Duration::from_secs(5), TlsAcceptor::from(Arc::new(server)).accept(tcp)).await;
                eventually(what, || events.rejected.lock().expect("lock").contains(&TLS_REJECTED)).await;
                assert!(events.up.lock().expect("lock").is_empty(), "{what}: a connected to the impostor");
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
