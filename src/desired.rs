//! The desired set of a managed group (DESIGN §2b): the names and peer
//! addresses the operator wants as voters, and the generation of that
//! wish, read from `--peers-file` at start and again whenever the file
//! changes (a ConfigMap mounted as a directory changes under the running
//! process; nothing restarts).
//!
//! The file holds the entries of `--peers`, `ID=HOST:PORT`, separated by
//! newlines or commas, and at most one line `generation N`. A `#` starts a
//! comment that runs to the end of its line. A file that does not parse is
//! refused whole: at start with one line and exit code 2, while running
//! with one logged line, keeping the set read before.
//!
//! Owns: the file's syntax and the watch loop. Must not: decide anything
//! about membership (the core reconciles toward the set it is given).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::NodeId;

/// The largest peers file read: a desired set is a few lines.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// How often the watch loop looks at the file.
pub const POLL: Duration = Duration::from_millis(500);

/// What the operator wants: every desired voter's address, this node's
/// included, and the generation of that wish (0 when the file names none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub peers: BTreeMap<NodeId, String>,
    pub generation: u64,
}

/// Parses a peers file's text. `Err` is one line saying what is wrong and
/// where.
pub fn parse(text: &str) -> Result<Desired, String> {
    let mut peers = BTreeMap::new();
    let mut generation = None;
    // A byte-order mark some editors write is not part of the first id.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (n, line) in text.lines().enumerate() {
        let at = n + 1;
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(rest) = line.strip_prefix("generation").filter(|_| !line.contains('=')) {
            if !rest.starts_with(char::is_whitespace) {
                return Err(format!("line {at}: {line:?} is not ID=HOST:PORT or `generation N`"));
            }
            let g = rest
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("line {at}: generation {:?} is not a number", rest.trim()))?;
            if generation.replace(g).is_some() {
                return Err(format!("line {at}: a second generation line"));
            }
            continue;
        }
        for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, addr) =
                entry.split_once('=').ok_or_else(|| format!("line {at}: {entry:?} is not ID=HOST:PORT"))?;
            let (id, addr) = (id.trim(), addr.trim());
            if id.is_empty() || id.contains(char::is_whitespace) {
                return Err(format!("line {at}: {entry:?} has no valid id"));
            }
            check_host_port(addr).map_err(|e| format!("line {at}: {e}"))?;
            if peers.insert(NodeId::new(id), addr.to_string()).is_some() {
                return Err(format!("line {at}: id {} appears twice", id.escape_debug()));
            }
        }
    }
    if peers.is_empty() {
        return Err("names no peer (expected lines of ID=HOST:PORT)".into());
    }
    Ok(Desired { peers, generation: generation.unwrap_or(0) })
}

/// HOST:PORT with a non-empty host and a port in 1..=65535.
fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{s:?} is not HOST:PORT"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{s:?} has no valid port")),
    }
}

/// A desired set that keeps fewer than a majority of `config`'s voters
/// (by name) would take the group below a majority in one step: `Err`
/// says so in one line. Shrink by fewer than half at a time.
pub fn check_against(d: &Desired, config: &crate::core::Configuration) -> Result<(), String> {
    let voters: Vec<&str> = config.voters.iter().map(|v| v.name.as_str()).collect();
    let kept = voters.iter().filter(|v| d.peers.contains_key(&NodeId::new(**v))).count();
    if kept >= crate::core::lease::quorum(voters.len()) {
        return Ok(());
    }
    Err(format!(
        "names {kept} of the {} voters of group {} ({}): fewer than a majority, which no single step may drop \
         to; remove fewer than half of the voters at a time",
        voters.len(),
        config.group,
        voters.join(", ")
    ))
}

/// Reads and parses the file. `Err` names the file.
pub fn read(path: &Path) -> Result<Desired, String> {
    use std::io::Read;
    let mut text = String::new();
    // A regular file only (a ConfigMap's symlink to one is fine): a FIFO
    // or a device would block or never end.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(format!("--peers-file {path:?}: not a regular file")),
        Err(e) => return Err(format!("--peers-file {path:?}: {e}")),
        Ok(_) => {}
    }
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("--peers-file {path:?}: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("--peers-file {path:?}: larger than {MAX_FILE_BYTES} bytes"));
    }
    parse(&text).map_err(|e| format!("--peers-file {path:?}: {e}"))
}

/// Reads `path` every [`POLL`] and sends each desired set that differs
/// from the last one sent, starting after `first`. A file that cannot be
/// read or parsed is logged once per distinct error, reported to
/// `refused`, and skipped. Runs until the receiver is dropped.
pub async fn watch(path: PathBuf, first: Desired, tx: mpsc::Sender<Desired>, refused: impl Fn()) {
    let mut last = first;
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read(&path)).await
        };
        match read {
            Ok(Ok(desired)) => {
                last_error = None;
                if desired != last {
                    last = desired.clone();
                    if tx.send(desired).await.is_err() {
                        return;
                    }
                }
            }
            Ok(Err(e)) => {
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "refused a new desired set; keeping the one read before");
                    refused();
                    last_error = Some(e);
                }
            }
            Err(_) => return,
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_by_line_or_comma_with_comments_and_a_generation() {
        let d = parse("# the replica set\ngeneration 4\na=10.0.0.1:7000, b=pg-1.pg:7000\n\nc=[::1]:7000 # local\n")
            .expect("parses");
        assert_eq!(d.generation, 4);
        let names: Vec<&str> = d.peers.keys().map(NodeId::as_str).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(d.peers[&NodeId::new("c")], "[::1]:7000");
        assert_eq!(parse("a=h:1").expect("parses").generation, 0);
        assert!(parse("\u{feff}a=h:1").expect("parses").peers.contains_key(&NodeId::new("a")), "a BOM is no id");
        // A name may begin with "generation".
        assert!(parse("generation-0=h:1").expect("parses").peers.contains_key(&NodeId::new("generation-0")));
    }

    #[test]
    fn every_malformed_file_is_refused_with_its_line() {
        for (text, says) in [
            ("", "names no peer"),
            ("# nothing\n", "names no peer"),
            ("a=h:1\na=h:2", "line 2: id a appears twice"),
            ("a=h:1\nb", "line 2: \"b\" is not ID=HOST:PORT"),
            ("a=h", "line 1: \"h\" is not HOST:PORT"),
            ("a=h:0", "has no valid port"),
            ("=h:1", "has no valid id"),
            ("a=h:1\ngeneration x", "line 2: generation \"x\" is not a number"),
            ("generation 1\ngeneration 2\na=h:1", "line 2: a second generation line"),
            ("generationx", "not ID=HOST:PORT or `generation N`"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_set_that_keeps_fewer_than_a_majority_of_the_voters_is_refused() {
        use crate::core::{Configuration, GroupUid, Identity, Incarnation, Term};
        let voters = ["a", "b", "c", "d", "e"].map(|n| Identity::new(NodeId::new(n), Incarnation(1)));
        let config = Configuration {
            group: GroupUid(7),
            cterm: Term(1),
            epoch: 1,
            voters: voters.into_iter().collect(),
            removed: Default::default(),
            generation: 1,
            floor: Term(1),
        };
        assert!(check_against(&parse("a=h:1,b=h:1,c=h:1").expect("parses"), &config).is_ok());
        assert!(check_against(&parse("a=h:1,b=h:1,c=h:1,x=h:1,y=h:1,z=h:1").expect("parses"), &config).is_ok());
        let err = check_against(&parse("a=h:1,b=h:1,x=h:1").expect("parses"), &config).expect_err("two of five");
        assert!(err.starts_with("names 2 of the 5 voters of group"), "{err}");
    }

    #[test]
    fn a_missing_or_oversize_file_names_the_flag_and_the_path() {
        let dir = std::env::temp_dir().join(format!("leasehold-desired-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("peers");
        let err = read(&path).expect_err("missing");
        assert!(err.starts_with("--peers-file ") && err.contains("peers"), "{err}");
        std::fs::write(&path, "a=h:1\n".repeat(20_000)).expect("write");
        assert!(read(&path).expect_err("oversize").contains("larger than"));
        std::fs::write(&path, "generation 2\na=h:1\n").expect("write");
        assert_eq!(read(&path).expect("reads").generation, 2);
        assert!(read(&dir).expect_err("a directory").contains("not a regular file"));
        assert!(read(Path::new("/dev/zero")).expect_err("a device").contains("not a regular file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
