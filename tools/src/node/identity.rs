//! The node's identity, persisted in its data directory (design.md section 3: a `NodeId` is
//! stable across restarts). `node.toml` is written once, at the first start, atomically
//! (temporary file, fsync, rename, fsync of the directory); later starts read it. It also
//! records the cluster the directory belongs to, so a node restarted with another cluster name
//! refuses to start instead of serving one cluster's data to another.
//!
//! **The cluster id** is created with the identity, at the first start, and kept: every
//! gossip and control datagram carries it, and a datagram with another id is refused. It is
//! derived, as etcd derives its cluster id from `--initial-cluster` and its token, from the
//! cluster name and the initial members (the `--peers` addresses and this node's own control
//! address): every node of a new cluster computes the same id without talking to the others,
//! and two clusters created apart (on the default name, say) have different ids and never
//! take each other's members. Later starts read it, so changing `--peers` later does not
//! change the cluster. Clients name the cluster by its name (their handshake carries
//! [`ClusterId::from_name`]); they never need the derived id.
//!
//! Called after `Engine::open`, which holds the directory's lock: two processes never race
//! to create it.

use coregrid_net::{ClusterId, NodeId};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::net::SocketAddr;
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
    /// The cluster id, 32 hex digits, created at the first start ([`derive_cluster_id`]).
    /// Missing in a directory an older build created: derived and written at its next start.
    #[serde(default)]
    pub cluster_id: Option<String>,
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

    /// The cluster id peers' datagrams must carry (checked by [`load_or_create`]).
    pub fn cluster_id(&self) -> ClusterId {
        self.cluster_id
            .as_deref()
            .and_then(parse_cluster_id)
            .unwrap_or_default()
    }
}

/// The id of a cluster named `name` first started with `initial_members` (control addresses,
/// in any order, repeats ignored): 128 bits of two CRC-64s (NVMe and XZ polynomials) over a
/// canonical text of both. It tells clusters apart; it is no secret and no authentication.
pub fn derive_cluster_id(name: &str, initial_members: &[SocketAddr]) -> ClusterId {
    let mut members: Vec<String> = initial_members.iter().map(ToString::to_string).collect();
    members.sort();
    members.dedup();
    let text = format!("coregrid cluster id v1\n{name}\n{}", members.join("\n"));
    let mut id = [0u8; 16];
    let nvme = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, text.as_bytes());
    let xz = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Xz, text.as_bytes());
    id[..8].copy_from_slice(&nvme.to_le_bytes());
    id[8..].copy_from_slice(&xz.to_le_bytes());
    ClusterId(id)
}

fn format_cluster_id(id: ClusterId) -> String {
    id.0.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_cluster_id(text: &str) -> Option<ClusterId> {
    if text.len() != 32 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (index, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(ClusterId(id))
}

/// Reads `node.toml` from `data_dir`, or creates it with a fresh random node id for `cluster`
/// and the cluster id of `cluster` with `initial_members` ([`derive_cluster_id`]).
pub fn load_or_create(
    data_dir: &Path,
    cluster: &str,
    initial_members: &[SocketAddr],
) -> Result<NodeIdentity, IdentityError> {
    let path = data_dir.join(IDENTITY_FILE);
    let invalid = |reason: String| IdentityError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let derived = || {
        Some(format_cluster_id(derive_cluster_id(
            cluster,
            initial_members,
        )))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut identity: NodeIdentity =
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
            match identity.cluster_id.as_deref() {
                Some(id) if parse_cluster_id(id).is_none() => {
                    return Err(invalid(format!(
                        "cluster_id must be 32 hex digits, got {id:?}"
                    )));
                }
                Some(_) => {}
                None => {
                    identity.cluster_id = derived();
                    let text =
                        toml::to_string(&identity).map_err(|error| invalid(error.to_string()))?;
                    write_durably(data_dir, &text).map_err(|error| invalid(error.to_string()))?;
                }
            }
            Ok(identity)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let identity = NodeIdentity {
                node_id: random_node_id().map_err(|error| invalid(error.to_string()))?,
                cluster: cluster.to_string(),
                cluster_id: derived(),
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

    fn members(ports: &[u16]) -> Vec<SocketAddr> {
        ports
            .iter()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
            .collect()
    }

    #[test]
    fn created_once_then_read_back_and_cluster_checked() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "alpha", &members(&[7300, 7301])).unwrap();
        assert_ne!(first.node_id, 0);
        assert_eq!(
            first.cluster_id(),
            derive_cluster_id("alpha", &members(&[7301, 7300]))
        );
        // Kept: other peers later do not change the cluster.
        assert_eq!(
            load_or_create(dir.path(), "alpha", &members(&[7300, 7302])).unwrap(),
            first
        );
        let error = load_or_create(dir.path(), "beta", &[]).unwrap_err();
        assert!(
            matches!(error, IdentityError::WrongCluster { .. }),
            "{error}"
        );
        let text = std::fs::read_to_string(dir.path().join(IDENTITY_FILE)).unwrap();
        let bad_id = text.replace(first.cluster_id.as_deref().unwrap(), "not-hex");
        std::fs::write(dir.path().join(IDENTITY_FILE), bad_id).unwrap();
        assert!(matches!(
            load_or_create(dir.path(), "alpha", &[]),
            Err(IdentityError::Invalid { .. })
        ));
        std::fs::write(dir.path().join(IDENTITY_FILE), "node_id = \"x\"").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), "alpha", &[]),
            Err(IdentityError::Invalid { .. })
        ));
    }

    #[test]
    fn an_older_directory_gets_its_cluster_id_at_its_next_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(IDENTITY_FILE),
            "node_id = 42\ncluster = \"alpha\"\n",
        )
        .unwrap();
        let identity = load_or_create(dir.path(), "alpha", &members(&[7300])).unwrap();
        assert_eq!(identity.node_id, 42);
        assert_eq!(
            identity.cluster_id(),
            derive_cluster_id("alpha", &members(&[7300]))
        );
        assert_eq!(
            load_or_create(dir.path(), "alpha", &[]).unwrap(),
            identity,
            "written at that start"
        );
    }

    #[test]
    fn clusters_created_apart_have_different_ids() {
        let one = derive_cluster_id("coregrid", &members(&[7300, 7301, 7302]));
        assert_eq!(
            one,
            derive_cluster_id("coregrid", &members(&[7302, 7300, 7301, 7300])),
            "order and repeats do not matter"
        );
        assert_ne!(one, derive_cluster_id("coregrid", &members(&[7300, 7301])));
        assert_ne!(
            one,
            derive_cluster_id("other", &members(&[7300, 7301, 7302]))
        );
        assert_ne!(one, ClusterId::from_name("coregrid").unwrap());
        assert_eq!(
            parse_cluster_id(&format_cluster_id(one)),
            Some(one),
            "round trip"
        );
    }
}
