//! Durable state: the node's `(term, voted_for)` with its identity (cluster,
//! node, voters, incarnation), in one versioned, checksummed file under
//! `--data-dir`.
//!
//! Owns: the file format, atomic replacement (write a temporary file, fsync
//! it, rename it over the state file, fsync the directory) and the checks at
//! start-up. Must not: decide anything about the protocol, or ever replace or
//! delete a file it could not read: a corrupt or foreign state file stops
//! start-up and is left exactly as it was, because silently starting from
//! term 0 could let this node vote twice in a term.
//!
//! Format (text, so that an operator can read it):
//!
//! ```text
//! leasehold-state 1
//! {"cluster_id":"pg","node_id":"a","incarnation":"5f0c…(32 hex digits)","voters":["a","b","c"],"term":7,"voted_for":"b"}
//! crc32 8c1a5b2e
//! ```
//!
//! The CRC-32 covers the JSON line's bytes exactly. The incarnation is
//! optional: files of earlier versions have none (a node upgraded from one
//! draws its incarnation and rewrites the file before it talks to anyone),
//! nor has the etcd backend's token file. Earlier versions read a file with
//! one and ignore it, so a rollback works; the magic line changes only when
//! a field appears that an earlier version must not ignore. That is the
//! membership state of a managed node (DESIGN §2b, `storage/members.rs`):
//! a file that holds it is `leasehold-state 2`, which earlier versions
//! refuse.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::core::{HardState, Incarnation, NodeId, Term};

mod members;

use members::MembersBody;

const MAGIC: &str = "leasehold-state 1";
/// A file with a managed node's membership state.
const MAGIC_MANAGED: &str = "leasehold-state 2";
const FILE_NAME: &str = "state";
/// A state file is a few hundred bytes; anything much larger is not ours.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Who this state belongs to. A file written for another cluster, another
/// node or another set of voters must not be used. The incarnation is which
/// life of the node wrote it (None in a file of an earlier version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub voters: BTreeSet<NodeId>,
    pub incarnation: Option<Incarnation>,
}

/// What [`StateFile::claim`] found and made durable at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// This node's identity, its incarnation always set.
    pub identity: Identity,
    /// The hard state the file held; None for a node that had no state
    /// file (a blank node, which the core treats as such).
    pub initial: Option<HardState>,
    pub how: Claim,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The file already held this node's incarnation.
    Kept,
    /// There was no state file: a new node, or one whose state was lost.
    New,
    /// A file of an earlier version: same node, same votes, now with an
    /// incarnation.
    Upgraded,
    /// A static group's file, with `--peers-file`: the node is upgrading
    /// (membership rule 11).
    Upgrading,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("--data-dir {path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "state file {path} is corrupt ({reason}); it was left untouched. Restore it from a backup; \
         removing it is safe only if this node's vote may be forgotten (see docs/operations.md)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("state file {path} belongs to cluster {found:?}, not --cluster-id {expected:?}; it was left untouched")]
    WrongCluster { path: PathBuf, found: String, expected: String },
    #[error("state file {path} belongs to node {found:?}, not --node-id {expected:?}; it was left untouched")]
    WrongNode { path: PathBuf, found: String, expected: String },
    #[error(
        "state file {path} was written for voters {found}, but --peers names {expected}; changing membership \
         by restarting nodes can elect two leaders: read docs/operations.md, then pass --accept-new-membership"
    )]
    MembershipChanged { path: PathBuf, found: String, expected: String },
    #[error(
        "state file {path} belongs to a managed group (--peers-file): start this node with --peers-file; \
         it was left untouched"
    )]
    ManagedGroup { path: PathBuf },
}

#[derive(Serialize, Deserialize)]
struct Body {
    cluster_id: String,
    node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    incarnation: Option<String>,
    voters: Vec<String>,
    term: u64,
    voted_for: Option<String>,
    /// Version 2 only (managed groups): which incarnation of `voted_for`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    voted_incarnation: Option<String>,
    /// Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    members: Option<MembersBody>,
}

/// The state file of one node.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
}

impl StateFile {
    /// Uses (and creates if needed) `data_dir`. Fails if it cannot be created
    /// or is not a directory.
    pub fn open(data_dir: &Path) -> Result<Self, StorageError> {
        Self::open_named(data_dir, FILE_NAME)
    }

    /// Like [`StateFile::open`], for a file of another name in the same
    /// format (the etcd backend keeps its highest token in `etcd-state`).
    pub fn open_named(data_dir: &Path, name: &str) -> Result<Self, StorageError> {
        let io = |op, source| StorageError::Io { path: data_dir.to_path_buf(), op, source };
        fs::create_dir_all(data_dir).map_err(|e| io("create directory", e))?;
        let meta = fs::metadata(data_dir).map_err(|e| io("stat", e))?;
        if !meta.is_dir() {
            return Err(io("open", io::Error::other("not a directory")));
        }
        let (path, tmp) = (data_dir.join(name), data_dir.join(format!("{name}.tmp")));
        Ok(StateFile { dir: data_dir.to_path_buf(), path, tmp })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state. `None` if there is no state file (a new node).
    /// A file for another cluster or node, or a different set of voters
    /// (unless `accept_new_membership`), is refused and left untouched.
    pub fn load(&self, expect: &Identity, accept_new_membership: bool) -> Result<Option<HardState>, StorageError> {
        Ok(self.load_with_incarnation(expect, accept_new_membership)?.map(|(_, hs)| hs))
    }

    /// Start-up of the built-in backend: reads the state like [`load`], and
    /// makes this node's incarnation durable before anything else happens.
    /// A node with no state file draws a new one (it is a new identity:
    /// DESIGN §2b); a file of an earlier version keeps its votes and gains
    /// one. Either way the file is written before this returns.
    ///
    /// [`load`]: StateFile::load
    pub fn claim(&self, expect: &Identity, accept_new_membership: bool) -> Result<Claimed, StorageError> {
        let found = self.load_with_incarnation(expect, accept_new_membership)?;
        let (incarnation, initial, how) = match found {
            Some((Identity { incarnation: Some(inc), .. }, hs)) => (inc, Some(hs), Claim::Kept),
            Some((_, hs)) => (self.draw()?, Some(hs), Claim::Upgraded),
            None => (self.draw()?, None, Claim::New),
        };
        let identity = Identity { incarnation: Some(incarnation), ..expect.clone() };
        if how != Claim::Kept {
            self.store(&identity, initial.as_ref().unwrap_or(&HardState::default()))?;
        }
        Ok(Claimed { identity, initial, how })
    }

    /// Start-up of a node of a managed group (`--peers-file`, DESIGN §2b):
    /// like [`claim`], but a managed file does not pin the voters (they
    /// change online), and a node with no state file starts blank, with a
    /// new incarnation written before this returns. A static group's file
    /// is kept as it is, voters included (gaining an incarnation if it has
    /// none): the node is upgrading (membership rule 11) until its group
    /// converts, and the returned identity names the static voters.
    ///
    /// [`claim`]: StateFile::claim
    pub fn claim_managed(&self, cluster_id: &str, node_id: &NodeId) -> Result<Claimed, StorageError> {
        let expect = Identity {
            cluster_id: cluster_id.into(),
            node_id: node_id.clone(),
            voters: BTreeSet::new(),
            incarnation: None,
        };
        match self.load_with_incarnation(&expect, true)? {
            Some((Identity { incarnation: Some(inc), .. }, hs)) if hs.members.is_some() => {
                let identity = Identity { incarnation: Some(inc), ..expect };
                Ok(Claimed { identity, initial: Some(hs), how: Claim::Kept })
            }
            Some((found, hs)) => {
                let identity =
                    Identity { incarnation: Some(found.incarnation.map_or_else(|| self.draw(), Ok)?), ..found };
                if found.incarnation.is_none() {
                    self.store(&identity, &hs)?;
                }
                Ok(Claimed { identity, initial: Some(hs), how: Claim::Upgrading })
            }
            None => {
                let identity = Identity { incarnation: Some(self.draw()?), ..expect };
                let blank = HardState { members: Some(Box::default()), ..HardState::default() };
                self.store(&identity, &blank)?;
                Ok(Claimed { identity, initial: Some(blank), how: Claim::New })
            }
        }
    }

    fn draw(&self) -> Result<Incarnation, StorageError> {
        draw_incarnation().map_err(|e| StorageError::Io { path: PathBuf::from("/dev/urandom"), op: "read", source: e })
    }

    fn load_with_incarnation(
        &self,
        expect: &Identity,
        accept_new_membership: bool,
    ) -> Result<Option<(Identity, HardState)>, StorageError> {
        let bytes = match read_limited(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::Io { path: self.path.clone(), op: "read", source: e }),
        };
        let (found, hs) = parse(&bytes).map_err(|reason| StorageError::Corrupt { path: self.path.clone(), reason })?;
        if found.cluster_id != expect.cluster_id {
            return Err(StorageError::WrongCluster {
                path: self.path.clone(),
                found: found.cluster_id,
                expected: expect.cluster_id.clone(),
            });
        }
        if found.node_id != expect.node_id {
            return Err(StorageError::WrongNode {
                path: self.path.clone(),
                found: found.node_id.to_string(),
                expected: expect.node_id.to_string(),
            });
        }
        if hs.members.is_some() && !expect.voters.is_empty() {
            return Err(StorageError::ManagedGroup { path: self.path.clone() });
        }
        if found.voters != expect.voters && !accept_new_membership {
            return Err(StorageError::MembershipChanged {
                path: self.path.clone(),
                found: join(&found.voters),
                expected: join(&expect.voters),
            });
        }
        Ok(Some((found, hs)))
    }

    /// Writes `hs` durably and atomically. Returns the time spent in fsync
    /// (file and directory), for `leasehold_fsync_seconds`. On error the
    /// previous state file is intact.
    pub fn store(&self, identity: &Identity, hs: &HardState) -> Result<Duration, StorageError> {
        let bytes = encode(identity, hs);
        let io = |path: &Path, op, source| StorageError::Io { path: path.to_path_buf(), op, source };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)
            .map_err(|e| io(&self.tmp, "create", e))?;
        f.write_all(&bytes).map_err(|e| io(&self.tmp, "write", e))?;
        failpoint_state_write();
        let started = Instant::now();
        f.sync_all().map_err(|e| io(&self.tmp, "fsync", e))?;
        let mut synced = started.elapsed();
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(|e| io(&self.path, "rename", e))?;
        let dir = File::open(&self.dir).map_err(|e| io(&self.dir, "open directory", e))?;
        let started = Instant::now();
        dir.sync_all().map_err(|e| io(&self.dir, "fsync directory", e))?;
        synced += started.elapsed();
        Ok(synced)
    }
}

/// Fault injection for the fault harness (`leasehold-chaos`), compiled into
/// debug builds only. While the file named by
/// `LEASEHOLD_FAILPOINT_STATE_WRITE` holds a duration ("200ms"), each state
/// write takes that much longer before its fsync, as on a stalled disk
/// (this kernel has no device mapper for a real slow device); while it
/// holds `panic`, a write panics between writing the temporary file and
/// its fsync, as a crash in the middle of a write.
#[cfg(debug_assertions)]
fn failpoint_state_write() {
    let Some(path) = std::env::var_os("LEASEHOLD_FAILPOINT_STATE_WRITE") else {
        return;
    };
    let what = fs::read_to_string(path).unwrap_or_default();
    if what.trim() == "panic" {
        panic!("failpoint: crash in the middle of a state write");
    }
    if let Ok(d) = humantime::parse_duration(what.trim()) {
        std::thread::sleep(d.min(Duration::from_secs(10)));
    }
}

#[cfg(not(debug_assertions))]
fn failpoint_state_write() {}

fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} bytes is too large", meta.len())));
    }
    fs::read(path)
}

/// The ids comma-separated, escaped so that the refusal stays one line.
fn join(ids: &BTreeSet<NodeId>) -> String {
    ids.iter().map(|i| i.as_str().escape_debug().to_string()).collect::<Vec<_>>().join(",")
}

/// The bytes of a state file that holds `hs` for `identity`.
pub fn encode(identity: &Identity, hs: &HardState) -> Vec<u8> {
    let body = Body {
        cluster_id: identity.cluster_id.clone(),
        node_id: identity.node_id.to_string(),
        incarnation: identity.incarnation.map(|i| i.to_string()),
        voters: identity.voters.iter().map(|v| v.to_string()).collect(),
        term: hs.term.0,
        voted_for: hs.voted_for.as_ref().map(|v| v.to_string()),
        voted_incarnation: hs.voted_incarnation.map(|i| i.to_string()),
        members: hs.members.as_deref().map(MembersBody::from_state),
    };
    let magic = if body.members.is_some() || body.voted_incarnation.is_some() { MAGIC_MANAGED } else { MAGIC };
    // Serialising plain strings and numbers cannot fail.
    let json = serde_json::to_string(&body).unwrap_or_default();
    format!("{magic}\n{json}\ncrc32 {:08x}\n", crc32(json.as_bytes())).into_bytes()
}

/// What a state file's bytes hold: the identity it was written for and the
/// hard state, once the magic line, the checksum and the state line are
/// checked; not yet compared with this node's identity (that is
/// [`StateFile::load`]'s job). `Err` is the reason the file is corrupt.
/// Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<(Identity, HardState), String> {
    let body = decode(bytes)?;
    let incarnation = body.incarnation.map(|text| text.parse::<Incarnation>()).transpose()?;
    let identity = Identity {
        cluster_id: body.cluster_id,
        node_id: NodeId::new(body.node_id),
        voters: body.voters.iter().map(NodeId::new).collect(),
        incarnation,
    };
    let mut hs = HardState::new(Term(body.term), body.voted_for.map(NodeId::new));
    hs.voted_incarnation = body.voted_incarnation.as_deref().map(str::parse::<Incarnation>).transpose()?;
    hs.members = body.members.as_ref().map(MembersBody::to_state).transpose()?.map(Box::new);
    Ok((identity, hs))
}

/// Parses a state file's framing and state line. Never panics, whatever the bytes.
fn decode(bytes: &[u8]) -> Result<Body, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let mut lines = text.split('\n');
    let magic = lines.next().unwrap_or_default();
    if magic != MAGIC && magic != MAGIC_MANAGED {
        return Err(format!("first line is {magic:?}, expected {MAGIC:?} or {MAGIC_MANAGED:?}"));
    }
    let json = lines.next().ok_or("truncated: no state line")?;
    let sum_line = lines.next().ok_or("truncated: no checksum line")?;
    let sum_hex = sum_line.strip_prefix("crc32 ").ok_or("truncated or malformed checksum line")?;
    let sum = u32::from_str_radix(sum_hex, 16).map_err(|_| format!("malformed checksum {sum_hex:?}"))?;
    if lines.next() != Some("") || lines.next().is_some() {
        return Err("unexpected data after the checksum line".into());
    }
    let actual = crc32(json.as_bytes());
    if actual != sum {
        return Err(format!("checksum mismatch: file says {sum:08x}, content has {actual:08x}"));
    }
    let body: Body = serde_json::from_str(json).map_err(|e| format!("bad state line: {e}"))?;
    let managed = body.members.is_some() || body.voted_incarnation.is_some();
    if managed != (magic == MAGIC_MANAGED) {
        return Err(format!("{magic:?} does not match its state line (membership state {managed})"));
    }
    Ok(body)
}

/// 128 bits from the kernel's random source, never zero: a new incarnation.
pub fn draw_incarnation() -> io::Result<Incarnation> {
    use std::io::Read;
    let mut f = File::open("/dev/urandom")?;
    loop {
        let mut bytes = [0u8; 16];
        f.read_exact(&mut bytes)?;
        let n = u128::from_le_bytes(bytes);
        if n != 0 {
            return Ok(Incarnation(n));
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected), as used by zlib and gzip.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "leasehold-storage-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn identity() -> Identity {
        Identity {
            cluster_id: "pg".into(),
            node_id: NodeId::new("a"),
            voters: ["a", "b", "c"].into_iter().map(NodeId::new).collect(),
            incarnation: Some(Incarnation(0x5f0c_1d2e_3b4a_5968_7788_99aa_bbcc_ddee)),
        }
    }

    fn hs(term: u64, vote: Option<&str>) -> HardState {
        HardState::new(Term(term), vote.map(NodeId::new))
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_missing_file_is_a_new_node_and_a_stored_state_reads_back() {
        let d = TempDir::new();
        let f = StateFile::open(&d.0.join("nested/dir")).expect("open");
        assert_eq!(f.load(&identity(), false).expect("load"), None);
        f.store(&identity(), &hs(7, Some("b"))).expect("store");
        assert_eq!(f.load(&identity(), false).expect("load"), Some(hs(7, Some("b"))));
        f.store(&identity(), &hs(8, None)).expect("store again");
        assert_eq!(f.load(&identity(), false).expect("load"), Some(hs(8, None)));
        assert!(!d.0.join("nested/dir/state.tmp").exists(), "the temporary file was renamed away");
    }

    /// A node with no state file draws an incarnation and writes it before
    /// anything else; a restart keeps it; a file of an earlier version
    /// keeps its votes and gains one; a lost file means a new one.
    /// A managed node starts blank with a new incarnation, written first;
    /// keeps it across restarts whatever the voters; a static node refuses
    /// a managed file; a static file claimed with --peers-file is kept as
    /// it is, an upgrading node's (membership rule 11).
    #[test]
    fn a_managed_claim_starts_blank_and_a_static_file_is_upgrading() {
        let d = TempDir::new();
        let f = StateFile::open(&d.0).expect("open");
        let first = f.claim_managed("pg", &NodeId::new("a")).expect("claim");
        assert_eq!(first.how, Claim::New);
        let blank = first.initial.clone().expect("a blank state");
        assert!(blank.members.as_deref().is_some_and(crate::core::MemberState::is_blank));
        assert!(fs::read_to_string(f.path()).expect("written").starts_with(MAGIC_MANAGED));
        let again = f.claim_managed("pg", &NodeId::new("a")).expect("claim again");
        assert_eq!((again.how, again.identity.incarnation), (Claim::Kept, first.identity.incarnation));
        let err = f.claim(&identity(), false).expect_err("a static node refuses a managed file");
        assert!(matches!(err, StorageError::ManagedGroup { .. }), "{err}");
        assert!(matches!(f.claim_managed("other", &NodeId::new("a")), Err(StorageError::WrongCluster { .. })));
        let d2 = TempDir::new();
        let f2 = StateFile::open(&d2.0).expect("open");
        f2.store(&identity(), &HardState::new(Term(4), Some(NodeId::new("b")))).expect("a static file");
        let up = f2.claim_managed("pg", &NodeId::new("a")).expect("a static file with --peers-file: upgrading");
        assert_eq!(up.how, Claim::Upgrading);
        assert_eq!(up.identity.voters, identity().voters, "the static voters, from the file");
        assert_eq!(up.initial, Some(HardState::new(Term(4), Some(NodeId::new("b")))), "term and vote kept");
        assert!(up.identity.incarnation.is_some(), "an incarnation, drawn if the file had none");
        let kept = f2.claim_managed("pg", &NodeId::new("a")).expect("again");
        assert_eq!(kept.identity.incarnation, up.identity.incarnation);
        assert!(fs::read_to_string(f2.path()).expect("read").starts_with(MAGIC), "still a static file");
    }

    #[test]
    fn claim_makes_the_incarnation_durable_first_and_upgrades_older_files() {
        let d = TempDir::new();
        let f = StateFile::open(&d.0).expect("open");
        let expect = Identity { incarnation: None, ..identity() };
        let first = f.claim(&expect, false).expect("claim");
        assert_eq!((first.how, first.initial.clone()), (Claim::New, None));
        let inc = first.identity.incarnation.expect("drawn");
        let text = fs::read_to_string(f.path()).expect("written at once");
        assert!(text.contains(&format!("\"incarnation\":\"{inc}\"")), "{text}");
        f.store(&first.identity, &hs(4, Some("c"))).expect("store");
        let again = f.claim(&expect, false).expect("claim after a restart");
        assert_eq!(
            (again.how, again.initial, again.identity.incarnation),
            (Claim::Kept, Some(hs(4, Some("c"))), Some(inc))
        );
        fs::write(f.path(), encode(&expect, &hs(9, Some("b")))).expect("a file of an earlier version");
        assert!(!fs::read_to_string(f.path()).expect("read").contains("incarnation"));
        let upgraded = f.claim(&expect, false).expect("claim of an older file");
        assert_eq!((upgraded.how, upgraded.initial), (Claim::Upgraded, Some(hs(9, Some("b")))));
        let (on_disk, state) = parse(&fs::read(f.path()).expect("read")).expect("parses");
        assert_eq!((on_disk, state), (upgraded.identity.clone(), hs(9, Some("b"))), "rewritten with it");
        fs::remove_file(f.path()).expect("lose the volume");
        let lost = f.claim(&expect, false).expect("claim after a loss");
        assert_eq!(lost.how, Claim::New);
        assert_ne!(lost.identity.incarnation, upgraded.identity.incarnation, "a lost state file is a new identity");
    }

    #[test]
    fn incarnations_are_32_hex_digits_and_never_zero() {
        let i: Incarnation = "0123456789abcdef0123456789abcdef".parse().expect("parses");
        assert_eq!(i.to_string(), "0123456789abcdef0123456789abcdef");
        for bad in [
            "",
            "0",
            "0123456789ABCDEF0123456789ABCDEF",
            "00000000000000000000000000000000",
            "+123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef0",
        ] {
            assert!(bad.parse::<Incarnation>().is_err(), "{bad:?}");
        }
        let file = String::from_utf8(encode(&identity(), &hs(1, None))).expect("utf-8");
        let json = file.lines().nth(1).expect("state line");
        for bad in ["5f0c", "00000000000000000000000000000000", "5F0C1D2E3B4A5968778899AABBCCDDEE"] {
            let line = json.replace("5f0c1d2e3b4a5968778899aabbccddee", bad);
            let bytes = format!("leasehold-state 1\n{line}\ncrc32 {:08x}\n", crc32(line.as_bytes()));
            let refused = parse(bytes.as_bytes()).expect_err(bad);
            assert!(refused.contains("incarnation"), "{refused}");
        }
    }

    #[test]
    fn every_damaged_file_is_refused_and_left_untouched() {
        let d = TempDir::new();
        let f = StateFile::open(&d.0).expect("open");
        f.store(&identity(), &hs(7, Some("b"))).expect("store");
        let good = fs::read(f.path()).expect("read");
        let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
        for cut in [0, 5, good.len() / 2, good.len() - 3, good.len() - 1] {
            damaged.push((format!("truncated at {cut}"), good[..cut].to_vec()));
        }
        for i in [0, 20, 40, good.len() - 4] {
            let mut b = good.clone();
            b[i] ^= 0x01;
            damaged.push((format!("bit flipped at {i}"), b));
        }
        let mut extra = good.clone();
        extra.extend_from_slice(b"garbage");
        damaged.push(("trailing garbage".into(), extra));
        damaged.push(("not utf-8".into(), vec![0xff, 0xfe, 0x00]));
        damaged.push(("too large".into(), vec![b'x'; 100_000]));
        for (what, bytes) in damaged {
            fs::write(f.path(), &bytes).expect("write damaged file");
            match f.load(&identity(), false) {
                Err(StorageError::Corrupt { .. }) | Err(StorageError::Io { .. }) => {}
                other => panic!("{what}: expected a refusal, got {other:?}"),
            }
            assert_eq!(fs::read(f.path()).expect("read"), bytes, "{what}: file must be left untouched");
        }
    }

    #[test]
    fn a_file_of_another_cluster_node_or_membership_is_refused() {
        let d = TempDir::new();
        let f = StateFile::open(&d.0).expect("open");
        f.store(&identity(), &hs(3, None)).expect("store");
        let mut other = identity();
        other.cluster_id = "mysql".into();
        assert!(matches!(f.load(&other, false), Err(StorageError::WrongCluster { .. })));
        let mut other = identity();
        other.node_id = NodeId::new("b");
        assert!(matches!(f.load(&other, false), Err(StorageError::WrongNode { .. })));
        let mut other = identity();
        other.voters.insert(NodeId::new("d"));
        let err = f.load(&other, false).expect_err("membership changed");
        assert!(err.to_string().contains("--accept-new-membership"), "{err}");
        assert_eq!(f.load(&other, true).expect("accepted"), Some(hs(3, None)));
        // An id with a line break is escaped: the refusal stays one line.
        other.voters.insert(NodeId::new("x\ny"));
        let err = f.load(&other, false).expect_err("membership changed");
        assert!(err.to_string().contains("--peers names a,b,c,d,x\\ny;"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn a_data_dir_that_is_a_file_is_refused() {
        let d = TempDir::new();
        fs::create_dir_all(&d.0).expect("mkdir");
        let file = d.0.join("plain-file");
        fs::write(&file, b"x").expect("write");
        let err = StateFile::open(&file).expect_err("not a directory");
        assert!(err.to_string().starts_with("--data-dir"), "{err}");
    }

    #[test]
    fn a_failed_write_leaves_the_previous_state_intact() {
        let d = TempDir::new();
        let f = StateFile::open(&d.0).expect("open");
        f.store(&identity(), &hs(4, Some("a"))).expect("store");
        // Make the temporary file's path a directory: the write fails.
        fs::create_dir_all(d.0.join("state.tmp")).expect("mkdir");
        assert!(matches!(f.store(&identity(), &hs(5, None)), Err(StorageError::Io { .. })));
        assert_eq!(f.load(&identity(), false).expect("load"), Some(hs(4, Some("a"))));
    }

    /// A managed node's state file, as `tests/fuzz_seeds.rs` makes it for
    /// the fuzzer: a configuration, an open acceptance, a withdrawn group,
    /// a renewed incarnation and a vote by identity.
    const MANAGED: &[u8] = include_bytes!("../fuzz/corpus/state_file/seed-managed");

    #[test]
    fn a_managed_nodes_state_is_version_2_and_reads_back() {
        assert!(MANAGED.starts_with(b"leasehold-state 2\n"));
        let (identity, read) = parse(MANAGED).expect("parses");
        let members = read.members.as_deref().expect("membership state");
        assert!(members.config.is_some() && members.accepted.is_some() && members.renewed.is_some());
        assert!(!members.withdrawn.is_empty() && read.voted_incarnation.is_some());
        assert_eq!(encode(&identity, &read), MANAGED, "written back byte for byte");
        // A static node's state stays version 1.
        let text = String::from_utf8(encode(&identity, &hs(7, Some("b")))).expect("text");
        assert!(text.starts_with("leasehold-state 1\n") && !text.contains("members"), "{text}");
    }

    #[test]
    fn a_version_line_that_does_not_match_the_state_is_corrupt() {
        let v2 = String::from_utf8(MANAGED.to_vec()).expect("text");
        let as_v1 = v2.replacen("leasehold-state 2", "leasehold-state 1", 1);
        let err = parse(as_v1.as_bytes()).expect_err("version 1 with membership");
        assert!(err.contains("does not match"), "{err}");
        let v1 = String::from_utf8(encode(&identity(), &hs(7, None))).expect("text");
        let as_v2 = v1.replacen("leasehold-state 1", "leasehold-state 2", 1);
        assert!(parse(as_v2.as_bytes()).expect_err("version 2 without").contains("does not match"));
    }
}
