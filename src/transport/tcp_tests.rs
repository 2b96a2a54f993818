//! Tests of the peer transport ([`super`]): real loopback sockets, hand-made
//! peers of this and earlier versions, TLS impostors.

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
        from_incarnation: None,
        to_incarnation: None,
        group: None,
        config: None,
        position: None,
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
        standing: Default::default(),
        hellos: None,
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

/// Two nodes of this version greet each other in version 3 and learn
/// each other's incarnation, on the connections of both directions.
#[tokio::test]
async fn nodes_of_this_version_greet_in_version_3_and_learn_each_others_incarnation() {
    let (_a, _ra, _b, _rb, events) = pair().await;
    let seen = |peer: &str| (NodeId::new(peer), Some(incarnation(peer)));
    eventually("four hellos", || events.hellos.lock().expect("lock").len() >= 4).await;
    let hellos = events.hellos.lock().expect("lock").clone();
    assert_eq!(hellos.iter().filter(|h| **h == seen("a")).count(), 2, "{hellos:?}");
    assert_eq!(hellos.iter().filter(|h| **h == seen("b")).count(), 2, "{hellos:?}");
}

/// b is a node of protocol 1: it refuses any hello but version 1 by
/// closing the connection. a greets it in version 3, then 2, then 1, with
/// exactly protocol 1's bytes, and its messages get through.
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
        standing: Default::default(),
        hellos: None,
    };
    let (ta, _ra) = mpsc::channel(16);
    let a = Transport::start(cfg, la, ta, events.clone()).expect("start a");
    let (mut s, _) = timeout(Duration::from_secs(5), lb.accept()).await.expect("dialled").expect("accept");
    let (hello, _) = read_hello(&mut s).await;
    assert_eq!(check_hello(&hello, "pg", |_| true).expect("hello").version, 3);
    drop(s); // what a node of protocol 1 does with it
    let (mut s, _) = timeout(Duration::from_secs(5), lb.accept()).await.expect("redialled").expect("accept");
    let (hello, _) = read_hello(&mut s).await;
    assert_eq!(check_hello(&hello, "pg", |_| true).expect("hello").version, 2);
    drop(s);
    let (mut s, _) = timeout(Duration::from_secs(5), lb.accept()).await.expect("redialled").expect("accept");
    let (hello, mut reader) = read_hello(&mut s).await;
    let v1 = frame::encode(&Hello::new("pg", &NodeId::new("a"))).expect("encode");
    assert_eq!(hello, v1[4..].to_vec(), "protocol 1's hello, byte for byte");
    s.write_all(&frame::encode(&Hello::new("pg", &NodeId::new("b"))).expect("encode")).await.expect("answer");
    a.send(envelope("a", "b", 7));
    let mut buf = vec![0u8; 1024];
    let got = timeout(Duration::from_secs(5), read_frame(&mut s, &mut reader, &mut buf)).await;
    let msg = frame::decode_envelope(&got.expect("in time").ok().expect("a frame"), 2).expect("an envelope");
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
    let cfg = TransportConfig {
        cluster_id: "pg".into(),
        node_id: NodeId::new("a"),
        peers,
        tls: None,
        incarnation: None,
        standing: Default::default(),
        hellos: None,
    };
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
    assert_eq!(frame::decode_envelope(&payload, 2).expect("envelope"), envelope("a", "b", 7));
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
        let hello = tls_client(addr, client_config(&ca.cert, Some(&intruder))).await.expect("accepted after reload");
        assert_eq!(check_hello(&hello, "pg", |id| id.as_str() == "b").expect("b's hello").node_id, NodeId::new("b"));
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
                standing: Default::default(),
                hellos: None,
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
