//! Mutual TLS between peers (`--peer-tls-cert`, `--peer-tls-key`,
//! `--peer-tls-ca`): the three PEM files turned into rustls configurations,
//! and replaced when the files change.
//!
//! One certificate serves both directions: a node presents it as a server to
//! the peers that dial it and as a client when it dials them. Both sides
//! require the other's certificate to chain to a CA of the CA file; the
//! dialer also requires the peer's certificate to name the host it dialled
//! (the HOST of `ID=HOST:PORT` in `--peers`, a DNS name or an IP address).
//! TLS 1.3 only, the ring provider chosen explicitly (never the process-wide
//! default, which panics when a build enables two providers), and no session
//! resumption, so that every connection is checked against the current
//! certificates.
//!
//! Owns: reading and checking the files, the current configurations, and the
//! reload poll. Must not: know about frames or hellos (tcp.rs runs them
//! inside the session), or read the files on the consensus loop's thread.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// How often the files are read to see whether they changed. Reading three
/// small files is cheap. A change is used once two looks in a row found
/// the same contents, so a rotated certificate is in use within two to
/// three polls, and files rewritten one after the other (the certificate,
/// then its key) are not tried half-written.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// The three files of `--peer-tls-*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key of the leaf certificate.
    pub key: PathBuf,
    /// The CA certificates a peer's certificate must chain to.
    pub ca: PathBuf,
}

/// Why the TLS files cannot be used. Each message names the flag and file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: {message}", path.display())]
    File { flag: &'static str, path: PathBuf, message: String },
    #[error("--peer-tls-cert {}: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
}

fn file_error(flag: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File { flag, path: path.to_path_buf(), message: message.into() }
}

/// The TLS name of a `HOST:PORT` peer address: a DNS name or an IP address
/// (IPv6 in brackets). A peer's certificate must carry it in its SAN.
pub fn server_name(host_port: &str) -> Result<ServerName<'static>, String> {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|_| format!("{host:?} is neither a DNS name nor an IP address"))
}

/// Checks that `cert` names the host of `host_port` (a DNS name, wildcards
/// included, or an IP address), as a dialer checks the node it reached.
pub fn certificate_names(cert: &CertificateDer<'_>, host_port: &str) -> Result<(), String> {
    let name = server_name(host_port)?;
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("its certificate does not name {}, its host in --peers", name.to_str()))
}

/// The configurations built from one version of the files.
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// The outcome of one look at the files.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// Same contents as last tried (whether they worked or not).
    Unchanged,
    /// New contents, seen for the first time: tried at the next look if
    /// they are still the same.
    Settling,
    /// New contents, checked and in use for new connections.
    Reloaded,
    /// New contents that cannot be used: the previous configurations stay.
    Failed(TlsError),
}

/// The current peer TLS configurations, replaceable while connections use
/// older ones: a connection keeps the configuration it started with.
pub struct PeerTls {
    files: TlsFiles,
    /// The name this node's certificate must carry (its host in --peers),
    /// checked before a certificate is used; None for a single-node group.
    own_name: Option<ServerName<'static>>,
    current: RwLock<Arc<Configs>>,
    /// Digests of the file contents last tried, good or bad (a bad version
    /// is reported once, not at every poll), and of new contents waiting to
    /// be seen again before they are tried.
    digests: Mutex<Digests>,
}

#[derive(Clone, Copy)]
struct Digests {
    tried: u64,
    settling: Option<u64>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads and checks the files: start-up fails on any error.
    pub fn load(files: TlsFiles, own_name: Option<ServerName<'static>>) -> Result<PeerTls, TlsError> {
        let (digest, contents) = read_files(&files);
        let configs = build(&files, own_name.as_ref(), contents?)?;
        let digests = Mutex::new(Digests { tried: digest, settling: None });
        Ok(PeerTls { files, own_name, current: RwLock::new(Arc::new(configs)), digests })
    }

    /// For a connection accepted now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).server.clone()
    }

    /// For a connection dialled now.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).client.clone()
    }

    /// Reads the files; if they changed since the last attempt, stayed the
    /// same since the previous look, and can be used, new connections use
    /// them from now on. Blocking file IO: call it off the runtime's thread
    /// ([`watch`] does).
    pub fn reload_if_changed(&self) -> Reload {
        let (digest, contents) = read_files(&self.files);
        {
            let mut d = self.digests.lock().unwrap_or_else(PoisonError::into_inner);
            if d.tried == digest {
                d.settling = None;
                return Reload::Unchanged;
            }
            if d.settling != Some(digest) {
                d.settling = Some(digest);
                return Reload::Settling;
            }
            *d = Digests { tried: digest, settling: None };
        }
        match contents.and_then(|c| build(&self.files, self.own_name.as_ref(), c)) {
            Ok(configs) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(configs);
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }
}

/// Looks at the files every [`RELOAD_POLL`], on the blocking pool, and
/// reports each reload (true: in use; false: refused, the old one stays).
/// Runs until the runtime stops.
pub async fn watch(tls: Arc<PeerTls>, on_reload: impl Fn(bool) + Send + 'static) {
    loop {
        tokio::time::sleep(RELOAD_POLL).await;
        let t = tls.clone();
        let Ok(outcome) = tokio::task::spawn_blocking(move || t.reload_if_changed()).await else { continue };
        match outcome {
            Reload::Unchanged | Reload::Settling => {}
            Reload::Reloaded => {
                tracing::info!("peer TLS files changed: new connections use the new certificates");
                on_reload(true);
            }
            Reload::Failed(e) => {
                tracing::error!(error = %e, "peer TLS files changed but cannot be used; keeping the previous ones");
                on_reload(false);
            }
        }
    }
}

/// The contents of the three PEM files.
struct Pems {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

/// Reads the three files once (parsing what was read, not the files again,
/// so a digest and a configuration always describe the same contents).
/// The digest covers the contents, or the read error of a missing file.
fn read_files(files: &TlsFiles) -> (u64, Result<Pems, TlsError>) {
    let read = |flag, path: &Path| std::fs::read(path).map_err(|e| file_error(flag, path, e.to_string()));
    let parts =
        [read("--peer-tls-cert", &files.cert), read("--peer-tls-key", &files.key), read("--peer-tls-ca", &files.ca)];
    let mut h = DefaultHasher::new();
    for part in &parts {
        match part {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.to_string().hash(&mut h),
        }
    }
    let [cert, key, ca] = parts;
    (h.finish(), cert.and_then(|cert| Ok(Pems { cert, key: key?, ca: ca? })))
}

fn pem_error(e: pem::Error, what: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no {what} found (expected PEM)"),
        e => format!("not a valid PEM {what}: {e}"),
    }
}

fn certificates(flag: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, pem_error(e, "certificate")))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no certificate found (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// Checks the files and builds both configurations.
fn build(files: &TlsFiles, own_name: Option<&ServerName<'static>>, pems: Pems) -> Result<Configs, TlsError> {
    let chain = certificates("--peer-tls-cert", &files.cert, &pems.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&pems.key)
        .map_err(|e| file_error("--peer-tls-key", &files.key, pem_error(e, "private key")))?;
    let mut roots = RootCertStore::empty();
    for ca in certificates("--peer-tls-ca", &files.ca, &pems.ca)? {
        roots
            .add(ca)
            .map_err(|e| file_error("--peer-tls-ca", &files.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let ca_error = |e: rustls::server::VerifierBuilderError| file_error("--peer-tls-ca", &files.ca, e.to_string());
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().map_err(ca_error)?;
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().map_err(ca_error)?;
    let cert_error = |message: String| TlsError::Certificate { path: files.cert.clone(), message };
    // A certificate the peers would refuse is refused here, with a reason,
    // rather than seen later as connections that fail.
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| cert_error("no certificate".into()))?;
    let now = UnixTime::now();
    client_verifier
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| cert_error(format!("peers would refuse it as a client: {e}")))?;
    if let Some(name) = own_name {
        server_verifier
            .verify_server_cert(leaf, intermediates, name, &[], now)
            .map_err(|e| cert_error(format!("peers dialling {} would refuse it: {e}", name.to_str())))?;
    }
    let tls13 = [&rustls::version::TLS13];
    let key_error =
        |e: rustls::Error| file_error("--peer-tls-key", &files.key, format!("does not go with --peer-tls-cert: {e}"));
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&tls13)
        .map_err(|e| cert_error(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(key_error)?;
    // No resumption: a resumed session skips the certificate checks, and
    // would outlive a reload that removed a CA.
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(NoServerSessionStorage {});
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&tls13)
        .map_err(|e| cert_error(e.to_string()))?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(key_error)?;
    client.resumption = Resumption::disabled();
    Ok(Configs { server: Arc::new(server), client: Arc::new(client) })
}

#[cfg(test)]
#[path = "../../tests/common/certs.rs"]
pub(crate) mod certs;

#[cfg(test)]
mod tests {
    use super::certs::{bundle, replace, Ca};
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("leasehold-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn files(cert: &Path, key: &Path, ca: &Path) -> TlsFiles {
        TlsFiles { cert: cert.into(), key: key.into(), ca: ca.into() }
    }

    fn localhost() -> Option<ServerName<'static>> {
        Some(server_name("127.0.0.1:7000").expect("an IP address"))
    }

    #[test]
    fn peer_hosts_become_tls_names() {
        assert_eq!(server_name("10.0.0.1:7000").expect("ip").to_str(), "10.0.0.1");
        assert_eq!(server_name("[::1]:7000").expect("ipv6").to_str(), "::1");
        assert_eq!(server_name("pg-0.pg.default.svc:7000").expect("dns").to_str(), "pg-0.pg.default.svc");
        assert!(server_name("bad!host:7000").is_err());
    }

    #[test]
    fn unusable_files_are_refused_naming_the_flag_and_the_reason() {
        let dir = temp_dir("refused");
        let ca = Ca::new(&dir, "ca");
        let other = Ca::new(&dir, "other-ca");
        let node = ca.issue("node", "IP:127.0.0.1", 1, 2);
        let elsewhere = ca.issue("elsewhere", "DNS:db.example", 2, 2);
        let expired = ca.issue("expired", "IP:127.0.0.1", 3, -1);
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let missing = dir.join("missing.pem");
        let cases: [(TlsFiles, &str); 7] = [
            (files(&garbage, &node.key, &ca.cert), "--peer-tls-cert"),
            (files(&node.cert, &garbage, &ca.cert), "--peer-tls-key"),
            (files(&node.cert, &node.key, &missing), "--peer-tls-ca"),
            (files(&node.cert, &elsewhere.key, &ca.cert), "--peer-tls-key"),
            (files(&node.cert, &node.key, &other.cert), "--peer-tls-cert"),
            (files(&expired.cert, &expired.key, &ca.cert), "--peer-tls-cert"),
            (files(&elsewhere.cert, &elsewhere.key, &ca.cert), "would refuse it"),
        ];
        for (f, expected) in cases {
            let e = PeerTls::load(f.clone(), localhost()).expect_err("refused").to_string();
            assert!(e.contains(expected), "{f:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert!(PeerTls::load(files(&node.cert, &node.key, &ca.cert), localhost()).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn changed_files_are_tried_once_settled_and_bad_ones_keep_the_previous_configuration() {
        let dir = temp_dir("reload");
        let ca = Ca::new(&dir, "ca");
        let first = ca.issue("first", "IP:127.0.0.1", 1, 2);
        let live = files(&dir.join("node.pem"), &dir.join("node.key"), &dir.join("ca.bundle"));
        replace(&live.cert, &bundle(&[&first.cert]));
        replace(&live.key, &bundle(&[&first.key]));
        replace(&live.ca, &bundle(&[&ca.cert]));
        let tls = PeerTls::load(live.clone(), localhost()).expect("load");
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);
        let before = tls.server_config();

        replace(&live.cert, b"-----BEGIN CERTIFICATE-----\nbroken\n");
        assert_eq!(tls.reload_if_changed(), Reload::Settling);
        assert!(matches!(tls.reload_if_changed(), Reload::Failed(TlsError::File { flag: "--peer-tls-cert", .. })));
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged, "a bad version is reported once");
        assert!(Arc::ptr_eq(&before, &tls.server_config()), "the previous configuration stays");

        // The certificate, then its key, rewritten between two looks: the
        // new certificate with the old key is never tried.
        let second = ca.issue("second", "IP:127.0.0.1", 2, 2);
        replace(&live.cert, &bundle(&[&second.cert]));
        assert_eq!(tls.reload_if_changed(), Reload::Settling);
        replace(&live.key, &bundle(&[&second.key]));
        assert_eq!(tls.reload_if_changed(), Reload::Settling);
        assert_eq!(tls.reload_if_changed(), Reload::Reloaded);
        assert!(!Arc::ptr_eq(&before, &tls.server_config()), "new connections use the new files");
        assert_eq!(tls.reload_if_changed(), Reload::Unchanged);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
