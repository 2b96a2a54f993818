//! Certificates made at test time with the `openssl` command: certificate
//! authorities, certificates they sign, and self-signed ones. P-256 keys,
//! because they are generated in milliseconds. Shared by the TLS tests of
//! the transport (src/transport/tls.rs includes this file) and tests/tls.rs.
#![allow(dead_code, clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority: a self-signed CA certificate and its key.
#[derive(Clone, Debug)]
pub struct Ca {
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("the openssl command is needed to make test certificates: {e}"));
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl Ca {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        std::fs::create_dir_all(dir).expect("mkdir");
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        let subject = format!("/CN={name}");
        let mut args = vec!["req", "-x509", "-new", "-nodes", "-days", "2", "-subj", &subject];
        args.extend(EC);
        let (c, k) = (s(&cert), s(&key));
        args.extend(["-keyout", &k, "-out", &c]);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&args);
        Ca { cert, key, dir: dir.to_path_buf() }
    }

    /// A certificate for `name`, valid as TLS server and client, with
    /// subject alternative names `san` (e.g. "IP:127.0.0.1"). `days` < 0
    /// makes one that has already expired.
    pub fn issue(&self, name: &str, san: &str, serial: u64, days: i32) -> Issued {
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={san}\n"
            ),
        )
        .expect("write extensions");
        let subject = format!("/CN={name}");
        let (c, k, r, e) = (s(&cert), s(&key), s(&csr), s(&ext));
        let mut args = vec!["req", "-new", "-nodes", "-subj", &subject, "-keyout", &k, "-out", &r];
        args.extend(EC);
        openssl(&args);
        let (serial, days) = (serial.to_string(), days.to_string());
        let (ca_cert, ca_key) = (s(&self.cert), s(&self.key));
        openssl(&[
            "x509",
            "-req",
            "-in",
            &r,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            &days,
            "-extfile",
            &e,
            "-out",
            &c,
        ]);
        Issued { cert, key }
    }
}

/// A self-signed certificate for `name` (no CA vouches for it).
pub fn self_signed(dir: &Path, name: &str, san: &str) -> Issued {
    std::fs::create_dir_all(dir).expect("mkdir");
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    let subject = format!("/CN={name}");
    let san = format!("subjectAltName={san}");
    let (c, k) = (s(&cert), s(&key));
    let mut args = vec!["req", "-x509", "-new", "-nodes", "-days", "2", "-subj", &subject, "-addext", &san];
    args.extend(EC);
    args.extend(["-keyout", &k, "-out", &c]);
    openssl(&args);
    Issued { cert, key }
}

/// Writes `contents` to `path` atomically (a temporary file, then a
/// rename), as a Kubernetes Secret update or a careful operator does.
pub fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The concatenation of several PEM files (a CA bundle).
pub fn bundle(files: &[&Path]) -> Vec<u8> {
    files.iter().flat_map(|f| std::fs::read(f).expect("read pem")).collect()
}
