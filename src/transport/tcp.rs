//! TCP between peers (tokio). Each node dials every peer once and only sends
//! on that connection; it receives on the connections its peers dial to it.
//! Both sides open with a [`Hello`]; anything that is not a valid hello and
//! then valid frames from that very peer closes the connection and is counted.
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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::frame::{self, check_hello, FrameError, FrameReader, Hello};
use crate::clock::boottime_now;
use crate::core::rng::SplitMix64;
use crate::core::{Envelope, NodeId};

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
}

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Every voter's address, this node included.
    pub peers: BTreeMap<NodeId, String>,
}

struct Ctx {
    cfg: TransportConfig,
    events: Arc<dyn Events>,
}

impl Ctx {
    fn is_peer(&self, id: &NodeId) -> bool {
        *id != self.cfg.node_id && self.cfg.peers.contains_key(id)
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
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: back off briefly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.events.rejected("too_many_connections");
            drop(stream);
            continue;
        };
        let (ctx, inbound) = (ctx.clone(), inbound.clone());
        tokio::spawn(async move {
            if let Err(Closed::Rejected(e)) = serve_inbound(stream, &ctx, inbound).await {
                ctx.events.rejected(e.label());
            }
            drop(slot);
        });
    }
}

enum Closed {
    Rejected(FrameError),
    Io,
}

impl From<FrameError> for Closed {
    fn from(e: FrameError) -> Self {
        Closed::Rejected(e)
    }
}

impl From<io::Error> for Closed {
    fn from(_: io::Error) -> Self {
        Closed::Io
    }
}

async fn read_frame(stream: &mut TcpStream, reader: &mut FrameReader, buf: &mut [u8]) -> Result<Vec<u8>, Closed> {
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

async fn serve_inbound(mut stream: TcpStream, ctx: &Ctx, inbound: mpsc::Sender<Envelope>) -> Result<(), Closed> {
    let _ = stream.set_nodelay(true);
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 8192];
    // Before a valid hello, any framing error (an HTTP request's first bytes
    // read as a huge length) means the caller is not a leasehold peer.
    let payload = match timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream, &mut reader, &mut buf)).await {
        Ok(Ok(p)) => p,
        Ok(Err(Closed::Io)) => return Err(Closed::Io),
        Ok(Err(Closed::Rejected(_))) | Err(_) => return Err(Closed::Rejected(FrameError::NotAPeer)),
    };
    let hello = check_hello(&payload, &ctx.cfg.cluster_id, |id| ctx.is_peer(id))?;
    let mine = frame::encode(&Hello::new(&ctx.cfg.cluster_id, &ctx.cfg.node_id))?;
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
    loop {
        match dial(&peer, &addr, &ctx).await {
            Ok(mut stream) => {
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
            }
            Err(Closed::Rejected(e)) => ctx.events.rejected(e.label()),
            Err(Closed::Io) => {}
        }
        let wait = backoff / 2 + Duration::from_nanos(rng.below(backoff.as_nanos() as u64 / 2 + 1));
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

async fn dial(peer: &NodeId, addr: &str, ctx: &Ctx) -> Result<TcpStream, Closed> {
    let mut stream = timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await.map_err(|_| Closed::Io)??;
    let _ = stream.set_nodelay(true);
    let mine = frame::encode(&Hello::new(&ctx.cfg.cluster_id, &ctx.cfg.node_id))?;
    timeout(WRITE_TIMEOUT, stream.write_all(&mine)).await.map_err(|_| Closed::Io)??;
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 1024];
    let payload =
        timeout(HANDSHAKE_TIMEOUT, read_frame(&mut stream, &mut reader, &mut buf)).await.map_err(|_| Closed::Io)??;
    // The node answering at this address must be the peer we meant.
    let hello = check_hello(&payload, &ctx.cfg.cluster_id, |id| id == peer)?;
    debug_assert_eq!(&hello.node_id, peer);
    Ok(stream)
}

/// Writes queued messages until the connection fails (false) or the driver
/// drops the queue (true). The peer never writes on this connection after
/// the handshake, so anything readable means it closed (or broke the
/// protocol): notice that at once. Otherwise a peer that died between two
/// messages is noticed only when a write fails, and the first message after
/// its death (a vote request, say) is lost in the dead socket while the
/// kernel still accepts it, which cost a failover a whole campaign round.
async fn pump(stream: &mut TcpStream, queue: &mut mpsc::Receiver<Envelope>) -> bool {
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
    }
    impl Events for Recorded {
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

    async fn pair() -> (Transport, mpsc::Receiver<Envelope>, Transport, mpsc::Receiver<Envelope>, Arc<Recorded>) {
        let (la, lb, peers) = two_listeners().await;
        let events = Arc::new(Recorded::default());
        let cfg =
            |me: &str| TransportConfig { cluster_id: "pg".into(), node_id: NodeId::new(me), peers: peers.clone() };
        let (ta, ra) = mpsc::channel(16);
        let (tb, rb) = mpsc::channel(16);
        let a = Transport::start(cfg("a"), la, ta, events.clone()).expect("start a");
        let b = Transport::start(cfg("b"), lb, tb, events.clone()).expect("start b");
        (a, ra, b, rb, events)
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
        let cfg = TransportConfig { cluster_id: "pg".into(), node_id: NodeId::new("a"), peers };
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
}

/// What the API reports about each peer: is this node's connection to it
/// up, and when did a message from it last arrive.
#[derive(Default)]
pub struct PeerTable {
    peers: std::sync::Mutex<BTreeMap<NodeId, (bool, Option<std::time::Instant>)>>,
}

impl PeerTable {
    pub fn new(peers: impl IntoIterator<Item = NodeId>) -> Self {
        PeerTable { peers: std::sync::Mutex::new(peers.into_iter().map(|p| (p, (false, None))).collect()) }
    }

    pub fn set_up(&self, peer: &NodeId, up: bool) {
        if let Ok(mut m) = self.peers.lock() {
            m.entry(peer.clone()).or_default().0 = up;
        }
    }

    pub fn received(&self, peer: &NodeId) {
        if let Ok(mut m) = self.peers.lock() {
            m.entry(peer.clone()).or_default().1 = Some(std::time::Instant::now());
        }
    }

    /// (peer, connected, milliseconds since its last message).
    pub fn snapshot(&self) -> Vec<(NodeId, bool, Option<u64>)> {
        let Ok(m) = self.peers.lock() else { return Vec::new() };
        m.iter().map(|(p, (up, last))| (p.clone(), *up, last.map(|t| t.elapsed().as_millis() as u64))).collect()
    }
}
