//! Catch-up by snapshot: a follower that the leader's log no longer reaches (the leader pruned
//! the records after the follower's last one, or the two logs diverge below the follower's own
//! snapshot) fetches the leader's newest snapshot file in chunks and installs it in place of
//! its whole log (`Partition::install_snapshot`, crash-safe; `engine/src/snapshot.rs`), then
//! pulls the log after it as usual.
//!
//! A snapshot is named by its LSN. A request names the snapshot being fetched and the offset
//! reached; if the leader has replaced that snapshot by a newer one since, it answers with the
//! newer one from offset 0 and the follower starts over. The offset comes from the wire, which
//! is safe here (unlike a WAL position): the leader hands out raw file bytes and interprets
//! nothing, and the follower checks the whole file before it installs it.

use coregrid_engine::io::Storage;
use coregrid_engine::snapshot::{SnapshotDownload, SnapshotInfo};
use coregrid_engine::{EngineError, Partition, Result};
use std::rc::Rc;

/// A follower's request for the next chunk of the leader's snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The snapshot being fetched (its LSN), 0 for the newest.
    pub lsn: u64,
    /// The offset reached in it.
    pub offset: u64,
    /// At most this many bytes.
    pub max_bytes: usize,
}

/// The leader's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotAnswer {
    /// Bytes of snapshot `lsn` from `offset` (the request's, or 0 for a newer snapshot).
    Chunk {
        /// The snapshot's LSN.
        lsn: u64,
        /// The file's size.
        size: u64,
        /// Where `bytes` start.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The leader has no snapshot (its log starts at LSN 1: the follower syncs from the log).
    NoSnapshot,
    /// The leader's snapshots were replaced while it read them: ask again.
    Retry,
}

/// Answers `request` from `partition`'s newest snapshot.
pub async fn serve_snapshot<S: Storage>(
    partition: &Partition<S>,
    request: &SnapshotRequest,
) -> Result<SnapshotAnswer> {
    // A snapshot can be replaced between finding it and reading it: then the newer one.
    for _ in 0..3 {
        let Some(file) = partition.newest_snapshot() else {
            return Ok(SnapshotAnswer::NoSnapshot);
        };
        let offset = if file.lsn == request.lsn {
            request.offset
        } else {
            0
        };
        if let Some((bytes, size)) = partition
            .read_snapshot(file, offset, request.max_bytes)
            .await?
        {
            return Ok(SnapshotAnswer::Chunk {
                lsn: file.lsn,
                size,
                offset,
                bytes,
            });
        }
    }
    Ok(SnapshotAnswer::Retry)
}

/// What applying a chunk did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// More to fetch: send [`SnapshotFetch::next_request`].
    More,
    /// The snapshot is installed: sync from the log again.
    Installed(SnapshotInfo),
    /// The leader has no snapshot: sync from the log again.
    NoSnapshot,
}

/// A follower's fetch of its leader's snapshot, chunk by chunk.
pub struct SnapshotFetch<S: Storage> {
    download: Option<SnapshotDownload<S::File>>,
    max_bytes: usize,
}

impl<S: Storage> SnapshotFetch<S> {
    /// A fetch that asks for `max_bytes` per chunk.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            download: None,
            max_bytes,
        }
    }

    /// The next request to send.
    pub fn next_request(&self) -> SnapshotRequest {
        SnapshotRequest {
            lsn: self.download.as_ref().map_or(0, SnapshotDownload::lsn),
            offset: self.download.as_ref().map_or(0, SnapshotDownload::received),
            max_bytes: self.max_bytes,
        }
    }

    /// Writes a chunk down, and installs the snapshot once it is whole. A chunk that does not
    /// continue the download (another snapshot from its start begins a new download) or a
    /// snapshot that does not load is an error (`InvalidReplication`); the partition is then
    /// unchanged and the caller drops the session.
    pub async fn apply(
        &mut self,
        partition: &Rc<Partition<S>>,
        answer: SnapshotAnswer,
    ) -> Result<Fetched> {
        let (lsn, size, offset, bytes) = match answer {
            SnapshotAnswer::Chunk {
                lsn,
                size,
                offset,
                bytes,
            } => (lsn, size, offset, bytes),
            SnapshotAnswer::Retry => return Ok(Fetched::More),
            SnapshotAnswer::NoSnapshot => {
                self.download = None;
                return Ok(Fetched::NoSnapshot);
            }
        };
        let continues = self
            .download
            .as_ref()
            .is_some_and(|download| download.lsn() == lsn && download.received() == offset);
        if !continues {
            if offset != 0 {
                return Err(EngineError::InvalidReplication(format!(
                    "a chunk of snapshot {lsn} at offset {offset} continues no download"
                )));
            }
            self.download = Some(partition.begin_snapshot_download(lsn).await?);
        }
        let download = self.download.as_mut().expect("a download is open");
        if bytes.is_empty() && download.received() < size {
            return Err(EngineError::InvalidReplication(format!(
                "an empty chunk of snapshot {lsn} at offset {offset} of {size}"
            )));
        }
        download.append(&bytes).await?;
        if download.received() < size {
            return Ok(Fetched::More);
        }
        let download = self.download.take().expect("a download is open");
        Ok(Fetched::Installed(
            partition.install_snapshot(download).await?,
        ))
    }
}
