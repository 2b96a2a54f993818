//! Mutual TLS between real sidecars: three `leasehold run` processes with
//! `--peer-tls-*`, certificates made by openssl at test time, files laid out
//! as kubelet mounts a Secret. The group elects over TLS; strangers at a
//! peer port are refused and counted; rotated certificates and a CA added
//! to the CA file are in use without a restart. The observer check of
//! DESIGN §7 runs throughout. Every process is ended by its pid; every wait
//! has a deadline.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::certs::{bundle, Ca, Issued};
use common::{free_port, get, wait_for_one_leader, Observer};
use leasehold::core::NodeId;
use leasehold::transport::frame::{self, check_hello, Hello, MAX_FRAME_BYTES};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

const CLUSTER: &str = "tls-test";

/// A directory laid out as kubelet mounts a Secret: `tls.crt`, `tls.key`
/// and `ca.crt` are symlinks into `..data`, a symlink to a versioned
/// directory; an update swaps `..data` with one rename, so a reader never
/// sees half of an update.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    const FILES: [&'static str; 3] = ["tls.crt", "tls.key", "ca.crt"];

    fn new(dir: PathBuf, node: &Issued, ca_bundle: &[u8]) -> SecretVolume {
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut v = SecretVolume { dir, version: 0 };
        v.update(node, ca_bundle);
        for name in Self::FILES {
            std::os::unix::fs::symlink(format!("..data/{name}"), v.path(name)).expect("symlink");
        }
        v
    }

    fn update(&mut self, node: &Issued, ca_bundle: &[u8]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let at = self.dir.join(&version);
        std::fs::create_dir_all(&at).expect("mkdir");
        std::fs::write(at.join("tls.crt"), std::fs::read(&node.cert).expect("cert")).expect("write");
        std::fs::write(at.join("tls.key"), std::fs::read(&node.key).expect("key")).expect("write");
        std::fs::write(at.join("ca.crt"), ca_bundle).expect("write");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct Node {
    peer: String,
    api: String,
    metrics: String,
    volume: SecretVolume,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn leaf(pem: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(pem).expect("a certificate")
}

/// The value of one series on a node's /metrics (`name{labels}`).
fn metric(addr: &str, series: &str) -> Option<f64> {
    let (_, body) = get(addr, "/metrics")?;
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits (at most `within`) until `series` on `addr` satisfies `ok`.
fn wait_for_metric(addr: &str, series: &str, within: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(addr, series);
        match value {
            Some(v) if ok(v) => return v,
            _ if Instant::now() >= deadline => panic!("{series} on {addr} is {value:?} after {within:?}"),
            _ => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Opens a TLS session to a peer port as a client presenting `identity`,
/// trusting the CAs in `roots`, and sends a hello as voter `as_id`. Returns
/// the node's hello and the certificate it presented, or why not.
fn tls_hello(
    addr: &str,
    roots: &Path,
    identity: &Issued,
    as_id: &str,
) -> Result<(Hello, CertificateDer<'static>), String> {
    let mut store = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(roots).expect("ca file") {
        store.add(ca.expect("pem")).expect("a CA");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(&identity.cert).expect("cert").map(|c| c.expect("pem")).collect();
    let key = PrivateKeyDer::from_pem_file(&identity.key).expect("key");
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(store)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    let name = ServerName::try_from("127.0.0.1").expect("ip");
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let payload = {
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        let hello = frame::encode(&Hello::new(CLUSTER, &NodeId::new(as_id))).expect("encode");
        tls.write_all(&hello).map_err(|e| format!("write: {e}"))?;
        let mut len = [0u8; 4];
        tls.read_exact(&mut len).map_err(|e| format!("read: {e}"))?;
        let len = (u32::from_be_bytes(len) as usize).min(MAX_FRAME_BYTES);
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).map_err(|e| format!("read: {e}"))?;
        payload
    };
    let hello = check_hello(&payload, CLUSTER, |_| true).map_err(|e| e.to_string())?;
    let presented = conn.peer_certificates().and_then(|c| c.first()).ok_or("no server certificate")?;
    Ok((hello, presented.clone().into_owned()))
}

/// A plain-TCP client that sends a valid hello; returns once the node has
/// closed the connection (or after 5s).
fn plain_hello(addr: &str) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = s.write_all(&frame::encode(&Hello::new(CLUSTER, &NodeId::new("n3"))).expect("encode"));
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn three_sidecars_elect_over_mutual_tls_refuse_strangers_and_take_rotated_certificates_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("leasehold-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = dir.join("certs");
    let ca = Ca::new(&certs, "ca");
    let other = Ca::new(&certs, "other-ca");
    let ids = ["n1", "n2", "n3"];
    let peer_ports: Vec<u16> = ids.iter().map(|_| free_port()).collect();
    let peers: Vec<String> = ids.iter().zip(&peer_ports).map(|(id, p)| format!("{id}=127.0.0.1:{p}")).collect();
    let peers = peers.join(",");
    let mut nodes: Vec<Node> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let issued = ca.issue(&format!("{id}-v1"), "IP:127.0.0.1", 10 + i as u64, 2);
        let volume = SecretVolume::new(dir.join(id).join("tls"), &issued, &bundle(&[&ca.cert]));
        let (api, metrics) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_leasehold"))
            .args(["run", "--node-id", id, "--peers", &peers, "--cluster-id", CLUSTER, "--lease-ttl", "1s"])
            .args(["--listen-api", &api, "--listen-metrics", &metrics])
            .args(["--data-dir", &dir.join(id).join("data").to_string_lossy()])
            .args(["--peer-tls-cert", &volume.path("tls.crt").to_string_lossy()])
            .args(["--peer-tls-key", &volume.path("tls.key").to_string_lossy()])
            .args(["--peer-tls-ca", &volume.path("ca.crt").to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn leasehold");
        let peer = format!("127.0.0.1:{}", peer_ports[i]);
        nodes.push(Node { peer, api, metrics, volume, child });
    }
    let api_list: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
    let observer = Observer::start(api_list.clone());
    let apis: Vec<Option<&str>> = api_list.iter().map(|a| Some(a.as_str())).collect();
    wait_for_one_leader(&apis, Duration::from_secs(20), None).expect("a leader elected over mutual TLS");

    // A client with a certificate from the group's CA is let in (so the
    // refusals below are the certificates', not the test client's).
    let (n1_peer, n1_metrics, n1_cert) =
        (nodes[0].peer.clone(), nodes[0].metrics.clone(), nodes[0].volume.path("tls.crt"));
    let visitor = ca.issue("visitor", "IP:127.0.0.1", 90, 2);
    let (hello, presented) = tls_hello(&n1_peer, &ca.cert, &visitor, "n3").expect("a certificate of the CA is let in");
    assert_eq!(hello.node_id, NodeId::new("n1"));
    assert_eq!(presented, leaf(&n1_cert));

    // Strangers: another CA's certificate, and plain TCP with a valid hello.
    let tls_rejected = "leasehold_rejected_messages_total{reason=\"tls\"}";
    let intruder = other.issue("intruder", "IP:127.0.0.1", 91, 2);
    let refused = tls_hello(&n1_peer, &ca.cert, &intruder, "n3");
    assert!(refused.is_err(), "another CA's certificate was let in by {:?}", refused.map(|(h, _)| h.node_id));
    plain_hello(&n1_peer);
    wait_for_metric(&n1_metrics, tls_rejected, Duration::from_secs(10), |v| v >= 2.0);

    // Rotation, as a Secret update: new certificates from the same CA (new
    // serials, new keys), and the other CA added to the CA file.
    let both = bundle(&[&ca.cert, &other.cert]);
    let mut rotated = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let issued = ca.issue(&format!("{}-v2", ids[i]), "IP:127.0.0.1", 20 + i as u64, 2);
        node.volume.update(&issued, &both);
        rotated.push(issued);
    }
    let reloads_ok = "leasehold_peer_tls_reloads_total{result=\"ok\"}";
    for node in &nodes {
        wait_for_metric(&node.metrics, reloads_ok, Duration::from_secs(20), |v| v >= 1.0);
        assert_eq!(metric(&node.metrics, "leasehold_peer_tls_reloads_total{result=\"error\"}"), Some(0.0));
    }
    // New connections use the new files: the intruder's CA is trusted now,
    // and n1 presents its new certificate.
    let (hello, presented) = tls_hello(&n1_peer, &ca.cert, &intruder, "n3").expect("let in after the reload");
    assert_eq!(hello.node_id, NodeId::new("n1"));
    assert_eq!(presented, leaf(&rotated[0].cert), "n1 still presents its old certificate");
    assert_eq!(metric(&n1_metrics, tls_rejected), Some(2.0), "only the two strangers were refused");

    // The group kept one leader throughout, and still has one.
    wait_for_one_leader(&apis, Duration::from_secs(10), None).expect("a leader after the rotation");
    assert!(observer.finish() > 0, "the observer saw a leader");
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}
