//! The node's identity, persisted in its data directory (design.md section 3: a `NodeId` is
//! stable across restarts). `node.toml` is written once, at the first start, atomically
//! (temporary file, fsync, rename, fsync of the directory); later starts read it. It also
//! records the cluster the directory belongs to, so a node restarted with another cluster name
//! refuses to start instead of serving one cluster's data to another.
//!
//! Called after `Engine::open`, which holds the directory's lock: two processes never race
//! to create it.

use coregrid_net::NodeId;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// The identity file's name in the data directory.
pub const IDENTITY_FILE: &str = "node.toml";

/// What `node.toml` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    /// This node, chosen at random at the first start (never 0; at most `i64::MAX`, the
    /// largest TOML integer).
    pub node_id: u64,
    /// The cluster name the directory was created for.
    pub cluster: String,
}

/// Why the identity could not be loaded or created. Nothing was changed, except that a failed
/// first start may leave a temporary file, which the next start overwrites.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data directory belongs to another cluster: a configuration mistake.
    #[error(
        "the data directory {dir:?} belongs to cluster {found:?}, not {configured:?}: \
         use --cluster {found} or another data directory"
    )]
    WrongCluster {
        /// The data directory.
        dir: String,
        /// The cluster in node.toml.
        found: String,
        /// The configured cluster.
        configured: String,
    },
    /// node.toml is unreadable or not valid.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl NodeIdentity {
    /// The node id as the wire names it.
    pub fn node(&self) -> NodeId {
        NodeId(self.node_id)
    }
}

/// Reads `node.toml` from `data_dir`, or creates it with a fresh random node id for `cluster`.
pub fn load_or_create(data_dir: &Path, cluster: &str) -> Result<NodeIdentity, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    let invalid = |reason: String| IdentityError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let identity: NodeIdentity =
                toml::from_str(&text).map_err(|error| invalid(error.to_string()))?;
            if identity.node_id == 0 {
                return Err(invalid("node_id must not be 0".into()));
            }
            if identity.cluster != cluster {
                return Err(IdentityError::WrongCluster {
                    dir: data_dir.display().to_string(),
                    found: identity.cluster,
                    configured: cluster.to_string(),
                });
            }
            Ok(identity)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let identity = NodeIdentity {
                node_id: random_node_id().map_err(|error| invalid(error.to_string()))?,
                cluster: cluster.to_string(),
            };
            let text = toml::to_string(&identity).map_err(|error| invalid(error.to_string()))?;
            write_durably(data_dir, &text).map_err(|error| invalid(error.to_string()))?;
            Ok(identity)
        }
        Err(error) => Err(invalid(error.to_string())),
    }
}

fn write_durably(data_dir: &Path, text: &str) -> std::io::Result<()> {
    let temporary = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
    std::fs::write(&temporary, text)?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, data_dir.join(IDENTITY_FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// A random node id from the kernel, in `1..=i64::MAX` (TOML integers are signed 64-bit).
fn random_node_id() -> std::io::Result<u64> {
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    loop {
        let mut bytes = [0u8; 8];
        urandom.read_exact(&mut bytes)?;
        let id = u64::from_le_bytes(bytes) >> 1;
        if id != 0 {
            return Ok(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back_and_cluster_checked() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "alpha").unwrap();
        assert_ne!(first.node_id, 0);
        assert_eq!(load_or_create(dir.path(), "alpha").unwrap(), first);
        let error = load_or_create(dir.path(), "beta").unwrap_err();
        assert!(
            matches!(error, IdentityError::WrongCluster { .. }),
            "{error}"
        );
        std::fs::write(dir.path().join(IDENTITY_FILE), "node_id = \"x\"").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), "alpha"),
            Err(IdentityError::Invalid { .. })
        ));
    }
}
