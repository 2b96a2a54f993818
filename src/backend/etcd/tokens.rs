//! The token file: `<data-dir>/etcd-state` keeps the highest fencing token
//! this node has seen, so that an etcd restored from an older snapshot (its
//! revisions rewound) cannot make it lead with a token it saw before.
//!
//! Owns: the file, written with the state file's atomic replacement and
//! fsync, and refused at start if foreign or damaged. Must not: decide
//! whether a token may be used (the machine does).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::core::{HardState, NodeId, Term};
use crate::storage::{Identity, StateFile, StorageError};

/// The file under `--data-dir` that keeps the highest token seen.
pub const TOKEN_FILE: &str = "etcd-state";

pub struct TokenFile {
    file: Arc<StateFile>,
    identity: Identity,
}

impl TokenFile {
    /// Opens the file under `data_dir` and reads the highest token it holds
    /// (0 for a new node).
    pub fn open(data_dir: &Path, cluster_id: &str, node_id: &NodeId) -> Result<(TokenFile, u64), StorageError> {
        let file = StateFile::open_named(data_dir, TOKEN_FILE)?;
        let identity = Identity {
            cluster_id: cluster_id.to_string(),
            node_id: node_id.clone(),
            voters: [node_id.clone()].into(),
            incarnation: None,
        };
        let highest = file.load(&identity, false)?.map_or(0, |hs| hs.term.0);
        Ok((TokenFile { file: Arc::new(file), identity }, highest))
    }

    /// Writes `token` durably, off the async threads; returns the fsync time.
    pub async fn store(&self, token: u64) -> Result<Duration, String> {
        let (file, identity) = (self.file.clone(), self.identity.clone());
        let hs = HardState::new(Term(token), None);
        match tokio::task::spawn_blocking(move || file.store(&identity, &hs)).await {
            Ok(Ok(fsync)) => Ok(fsync),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_highest_token_survives_a_reopen_and_a_foreign_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("leasehold-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let me = NodeId::new("a");
        let (file, highest) = TokenFile::open(&dir, "pg", &me).expect("open");
        assert_eq!(highest, 0);
        file.store(41).await.expect("store");
        let (_, highest) = TokenFile::open(&dir, "pg", &me).expect("reopen");
        assert_eq!(highest, 41);
        assert!(TokenFile::open(&dir, "other-cluster", &me).is_err(), "another cluster's file is refused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
