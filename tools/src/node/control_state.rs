//! What the control shard keeps across restarts, in `<data-dir>/control.state`: the election's
//! persisted state (term, vote, stored and published maps; design.md section 3: "persisted
//! before use"), the voter set fixed at the cluster's first start, and the node's restart
//! counter (the gossip generation, which must grow across restarts).
//!
//! **Format.** `magic (8) | body length u32 LE | body crc32c u32 LE | body`, the body an rkyv
//! archive of [`ControlState`] read through rkyv's validating access. A file that fails any
//! check stops the node with a message naming the file: silently starting over would forget a
//! term or a vote and break the at-most-one-controller promise.
//!
//! **Durability.** [`store`] writes a temporary file, syncs it, renames it over the old one and
//! syncs the directory, so a crash leaves the old state or the new one, never a mix. It is a
//! blocking call on the control shard (a few per election, never on a data shard).

use coregrid_cluster::election::Persisted;
use coregrid_cluster::map::LeadershipMap;
use coregrid_cluster::types::{NodeId, Term};
use coregrid_net::rkyv::{self, rancor, util::AlignedVec, Archive, Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file's name in the data directory.
pub const CONTROL_STATE_FILE: &str = "control.state";
const CONTROL_STATE_TEMPORARY_FILE: &str = "control.state.tmp";
const MAGIC: [u8; 8] = *b"CGCTRL01";
const PREFIX_BYTES: usize = 16;
/// Largest state file accepted: two maps of the largest cluster and then some.
const CONTROL_STATE_BYTES_MAX: usize = 64 << 20;

/// The control shard's persisted state.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct ControlState {
    /// Starts of this node so far (this one included once stored): the gossip generation.
    pub restarts: u64,
    /// The voters, fixed at the cluster's first start (empty until then).
    pub voters: Vec<NodeId>,
    /// The election's term.
    pub term: Term,
    /// Whom this node accepted as controller in `term`.
    pub voted_for: Option<NodeId>,
    /// The latest map proposal this voter stored.
    pub stored_map: Option<LeadershipMap>,
    /// The latest committed map this node published.
    pub published_map: Option<LeadershipMap>,
}

impl ControlState {
    /// The election's part.
    pub fn election(&self) -> Persisted {
        Persisted {
            term: self.term,
            voted_for: self.voted_for,
            stored_map: self.stored_map.clone(),
            published_map: self.published_map.clone(),
        }
    }

    /// Replaces the election's part with `persisted`.
    pub fn set_election(&mut self, persisted: Persisted) {
        self.term = persisted.term;
        self.voted_for = persisted.voted_for;
        self.stored_map = persisted.stored_map;
        self.published_map = persisted.published_map;
    }
}

/// Why the state could not be read or stored. Reading changed nothing; a failed store left
/// the previous file in place (the node must stop: it cannot keep a promise it did not store).
#[derive(Debug, thiserror::Error)]
pub enum ControlStateError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a control state this version can read.
    #[error("{path}: not a valid control state ({reason}); refusing to start rather than forget a term or a vote (restore the file, or remove the node's data directory to rejoin as a new node)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
}

/// Reads the state stored in `data_dir`, `None` if there is none yet.
pub fn load(data_dir: &Path) -> Result<Option<ControlState>, ControlStateError> {
    let path = data_dir.join(CONTROL_STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ControlStateError::Io { path, source }),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| ControlStateError::Invalid { path, reason })
}

/// Stores `state` in `data_dir` durably, replacing what was there.
pub fn store(data_dir: &Path, state: &ControlState) -> Result<(), ControlStateError> {
    let bytes = encode(state).map_err(|reason| ControlStateError::Invalid {
        path: data_dir.join(CONTROL_STATE_FILE),
        reason,
    })?;
    let temporary = data_dir.join(CONTROL_STATE_TEMPORARY_FILE);
    let path = data_dir.join(CONTROL_STATE_FILE);
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ControlStateError::Io { path, source }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(io_error(&temporary))?;
    file.write_all(&bytes).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    drop(file);
    fs::rename(&temporary, &path).map_err(io_error(&path))?;
    File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(data_dir))
}

fn encode(state: &ControlState) -> Result<Vec<u8>, String> {
    let body = rkyv::to_bytes::<rancor::Error>(state).map_err(|error| error.to_string())?;
    if body.len() > CONTROL_STATE_BYTES_MAX - PREFIX_BYTES {
        return Err(format!("{} bytes is over the limit", body.len()));
    }
    let mut bytes = Vec::with_capacity(PREFIX_BYTES + body.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&coregrid_engine::checksum::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Result<ControlState, String> {
    if bytes.len() > CONTROL_STATE_BYTES_MAX {
        return Err(format!("{} bytes is over the limit", bytes.len()));
    }
    let Some((prefix, body)) = bytes.split_first_chunk::<PREFIX_BYTES>() else {
        return Err(format!("{} bytes is shorter than the header", bytes.len()));
    };
    if prefix[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let length = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize;
    let crc = u32::from_le_bytes([prefix[12], prefix[13], prefix[14], prefix[15]]);
    if body.len() != length {
        return Err(format!(
            "the header says {length} body bytes, the file has {}",
            body.len()
        ));
    }
    if coregrid_engine::checksum::crc32c(body) != crc {
        return Err("body checksum mismatch".into());
    }
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let archived = rkyv::access::<ArchivedControlState, rancor::Error>(&aligned)
        .map_err(|error| format!("body: {error}"))?;
    rkyv::deserialize::<ControlState, rancor::Error>(archived)
        .map_err(|error| format!("body: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coregrid_cluster::map::PartitionAssignment;
    use coregrid_cluster::types::Epoch;

    fn sample() -> ControlState {
        let map = LeadershipMap {
            epoch: Epoch(7),
            term: Term(3),
            partitions: vec![
                PartitionAssignment {
                    leader: Some(NodeId(2)),
                    replicas: vec![NodeId(2), NodeId(5)],
                },
                PartitionAssignment {
                    leader: None,
                    replicas: vec![NodeId(5)],
                },
            ],
        };
        ControlState {
            restarts: 4,
            voters: vec![NodeId(2), NodeId(5), NodeId(9)],
            term: Term(3),
            voted_for: Some(NodeId(5)),
            stored_map: Some(map.clone()),
            published_map: Some(map),
        }
    }

    #[test]
    fn a_stored_state_reads_back_and_replaces_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        store(dir.path(), &ControlState::default()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(ControlState::default()));
        store(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        assert!(!dir.path().join(CONTROL_STATE_TEMPORARY_FILE).exists());
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused_without_panic() {
        let bytes = encode(&sample()).unwrap();
        for length in 0..bytes.len() {
            assert!(decode(&bytes[..length]).is_err(), "truncated to {length}");
        }
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[index] ^= 1 << bit;
                assert!(decode(&flipped).is_err(), "bit {bit} of byte {index}");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CONTROL_STATE_FILE), b"garbage").unwrap();
        let error = load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("refusing to start"), "{error}");
    }
}
