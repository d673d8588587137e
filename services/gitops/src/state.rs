//! The reconciler's memory on the node (the DATA partition): which revision is
//! applied, which one was last healthy, which ones failed. With the inventory it
//! lets a restart resume where it stopped.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Replaces a file durably (temporary file, fsync, rename, fsync of the directory).
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    cairn_machine_config::write_durable(path, bytes)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The revision whose objects are in the cluster.
    #[serde(default)]
    pub applied: Option<String>,
    /// The last revision that became healthy (the rollback target).
    #[serde(default)]
    pub last_healthy: Option<String>,
    /// Revisions that failed (health or apply); not retried until the ref moves.
    #[serde(default)]
    pub failed: Vec<String>,
}

/// Where the reconciler keeps its files.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn mirror(&self) -> PathBuf {
        self.0.join("mirror.git")
    }
    pub fn inventory(&self) -> PathBuf {
        self.0.join("inventory.json")
    }
    fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }

    pub fn load(&self) -> Result<NodeState, String> {
        match std::fs::read(self.state()) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", self.state().display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeState::default()),
            Err(e) => Err(format!("reading {}: {e}", self.state().display())),
        }
    }

    pub fn save(&self, s: &NodeState) -> Result<(), String> {
        write_durable(
            &self.state(),
            &serde_json::to_vec_pretty(s).map_err(|e| e.to_string())?,
        )
    }
}
