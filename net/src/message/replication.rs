//! Replication messages (design.md section 6): a follower shard's [`SyncRequest`] for one
//! partition and the leader shard's [`SyncResponse`], on a connection opened with a `Hello` for
//! [`crate::ChannelKind::Replication`] by another node ([`crate::message::Peer::Node`]).
//!
//! A request names the follower's last durable record (its epoch and LSN: also its ack of
//! every record up to it) and the leadership-map epoch it holds; the answer carries WAL
//! records exactly as they lie in the leader's segment files, read in place on arrival
//! (`records` is a byte slice into the frame) and verified record by record by the
//! follower's engine before any is written. Many requests may be in flight on one
//! connection (one per partition the follower follows on that shard), answered by request id.
//!
//! A follower the leader's log no longer reaches fetches the partition's newest snapshot file
//! in chunks on the same connection ([`SnapshotRequest`], [`SnapshotResponse`]): a request
//! names the snapshot (its LSN) and the offset reached; a leader that replaced that snapshot
//! answers with the newer one from offset 0. The bytes are the file's, interpreted by no one
//! on the way; the follower loads the whole file before it installs it.

use crate::constants::{
    EPOCH_HISTORY_ENTRIES_MAX, PARTITIONS_MAX, SYNC_RECORD_BYTES_MAX, SYNC_WAIT_MS_MAX,
};
use crate::ids::{Epoch, Lsn, PartitionId};
use crate::message::ErrorResponse;
use crate::validate::{Limit, Validate, Violation};
use rkyv::{Archive, Deserialize, Serialize};

/// A follower's request for the records of one partition after its last one.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SyncRequest {
    /// The partition.
    pub partition: PartitionId,
    /// The epoch of the leadership map the follower holds. A leader that holds another epoch
    /// refuses (fencing both ways: a deposed leader serves no one, a follower behind the map
    /// pulls from no one).
    pub map_epoch: Epoch,
    /// Epoch of the follower's last durable record (0 if it has none).
    pub last_epoch: Epoch,
    /// LSN of the follower's last durable record (0 if none): every record up to it is on
    /// the follower's disk, so this is also its ack.
    pub last_lsn: Lsn,
    /// Most record bytes wanted, at most [`SYNC_RECORD_BYTES_MAX`]; one whole record is sent
    /// even if it is larger.
    pub max_bytes: u32,
    /// How long the leader may hold the request when it has no new record (a long poll), in
    /// milliseconds, at most [`SYNC_WAIT_MS_MAX`]; 0 answers at once.
    pub wait_ms: u32,
}

/// One entry of an epoch history: the first LSN of a leadership epoch in a log.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct EpochStart {
    /// The epoch.
    pub epoch: Epoch,
    /// Its first record's LSN.
    pub first_lsn: Lsn,
}

/// What the leader answers.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum SyncOutcome {
    /// Whole records after the follower's last one, exactly as in the leader's WAL; empty if
    /// none became durable before the long poll's deadline.
    Records {
        /// LSN of the last record sent (the follower's last one if none).
        last_lsn: Lsn,
        /// Epoch of the leader's last durable record.
        leader_end_epoch: Epoch,
        /// LSN of the leader's last durable record.
        leader_end_lsn: Lsn,
        /// The records.
        records: Vec<u8>,
    },
    /// The follower's last record is not on the leader's log: the leader's epoch history and
    /// durable end, from which the follower finds where to cut its log.
    Diverged {
        /// Every epoch of the leader's log, ascending.
        history: Vec<EpochStart>,
        /// The leader's last durable LSN.
        end_lsn: Lsn,
    },
    /// The leader no longer holds the records after the follower's last one: the follower
    /// needs the partition's snapshot first.
    SnapshotNeeded {
        /// The leader's last durable LSN.
        end_lsn: Lsn,
    },
    /// The leader refused (not the leader in this epoch, unavailable, shutting down, a bad
    /// request). Nothing was changed.
    Refused(ErrorResponse),
}

/// The leader's answer to a [`SyncRequest`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SyncResponse {
    /// The partition.
    pub partition: PartitionId,
    /// The epoch of the leadership map the leader holds.
    pub map_epoch: Epoch,
    /// What it answers.
    pub outcome: SyncOutcome,
}

fn check_partition(partition: u32) -> Result<(), Violation> {
    if partition >= PARTITIONS_MAX {
        return Err(Violation::Invalid(format!(
            "partition {partition} is past the largest ({})",
            PARTITIONS_MAX - 1
        )));
    }
    Ok(())
}

fn too_large(what: Limit, size: usize, limit: usize) -> Violation {
    Violation::TooLarge {
        what,
        size: size as u64,
        limit: limit as u64,
    }
}

/// The rules of a sync request, on its fields as numbers.
fn check_request(
    partition: u32,
    last_epoch: u64,
    last_lsn: u64,
    max_bytes: u32,
    wait_ms: u32,
) -> Result<(), Violation> {
    check_partition(partition)?;
    if max_bytes as usize > SYNC_RECORD_BYTES_MAX {
        return Err(too_large(
            Limit::SyncBytes,
            max_bytes as usize,
            SYNC_RECORD_BYTES_MAX,
        ));
    }
    if wait_ms > SYNC_WAIT_MS_MAX {
        return Err(too_large(
            Limit::SyncWaitMs,
            wait_ms as usize,
            SYNC_WAIT_MS_MAX as usize,
        ));
    }
    if last_lsn == 0 && last_epoch != 0 {
        return Err(Violation::Invalid(format!(
            "an empty log (LSN 0) has no last epoch, got epoch {last_epoch}"
        )));
    }
    Ok(())
}

impl Validate for SyncRequest {
    fn validate(&self) -> Result<(), Violation> {
        check_request(
            self.partition.0,
            self.last_epoch.0,
            self.last_lsn.0,
            self.max_bytes,
            self.wait_ms,
        )
    }
}

impl Validate for ArchivedSyncRequest {
    fn validate(&self) -> Result<(), Violation> {
        check_request(
            self.partition.get().get(),
            self.last_epoch.get().get(),
            self.last_lsn.get().get(),
            self.max_bytes.to_native(),
            self.wait_ms.to_native(),
        )
    }
}

/// The rules of an epoch history, on `(epoch, first_lsn)` pairs: at most
/// [`EPOCH_HISTORY_ENTRIES_MAX`] entries, epochs strictly ascending, first LSNs from 1 and
/// never descending, none past the log's end.
fn check_history(
    entries: usize,
    mut pairs: impl Iterator<Item = (u64, u64)>,
    end_lsn: u64,
) -> Result<(), Violation> {
    if entries > EPOCH_HISTORY_ENTRIES_MAX {
        return Err(too_large(
            Limit::EpochHistoryEntries,
            entries,
            EPOCH_HISTORY_ENTRIES_MAX,
        ));
    }
    let mut previous: Option<(u64, u64)> = None;
    pairs.try_for_each(|(epoch, first_lsn)| {
        if first_lsn == 0 || first_lsn > end_lsn.saturating_add(1) {
            return Err(Violation::Invalid(format!(
                "epoch {epoch} starts at LSN {first_lsn}, outside the log (1..={end_lsn})"
            )));
        }
        if let Some((last_epoch, last_lsn)) = previous {
            if epoch <= last_epoch || first_lsn < last_lsn {
                return Err(Violation::Invalid(format!(
                    "epoch history out of order: ({last_epoch}, {last_lsn}) then \
                     ({epoch}, {first_lsn})"
                )));
            }
        }
        previous = Some((epoch, first_lsn));
        Ok(())
    })
}

impl Validate for SyncResponse {
    fn validate(&self) -> Result<(), Violation> {
        check_partition(self.partition.0)?;
        match &self.outcome {
            SyncOutcome::Records {
                last_lsn,
                leader_end_lsn,
                records,
                ..
            } => check_records(records.len(), last_lsn.0, leader_end_lsn.0),
            SyncOutcome::Diverged { history, end_lsn } => check_history(
                history.len(),
                history
                    .iter()
                    .map(|entry| (entry.epoch.0, entry.first_lsn.0)),
                end_lsn.0,
            ),
            SyncOutcome::SnapshotNeeded { .. } => Ok(()),
            SyncOutcome::Refused(error) => error.validate(),
        }
    }
}

impl Validate for ArchivedSyncResponse {
    fn validate(&self) -> Result<(), Violation> {
        check_partition(self.partition.get().get())?;
        match &self.outcome {
            ArchivedSyncOutcome::Records {
                last_lsn,
                leader_end_lsn,
                records,
                ..
            } => check_records(
                records.len(),
                last_lsn.get().get(),
                leader_end_lsn.get().get(),
            ),
            ArchivedSyncOutcome::Diverged { history, end_lsn } => check_history(
                history.len(),
                history
                    .iter()
                    .map(|entry| (entry.epoch.get().get(), entry.first_lsn.get().get())),
                end_lsn.get().get(),
            ),
            ArchivedSyncOutcome::SnapshotNeeded { .. } => Ok(()),
            ArchivedSyncOutcome::Refused(error) => error.validate(),
        }
    }
}

/// Records of a sync answer: at most [`SYNC_RECORD_BYTES_MAX`] bytes (or one record, which may
/// be larger: the engine's largest record is below the limit, proven in `constants`), up to
/// an LSN the leader holds.
fn check_records(len: usize, last_lsn: u64, leader_end_lsn: u64) -> Result<(), Violation> {
    if len > SYNC_RECORD_BYTES_MAX {
        return Err(too_large(Limit::SyncBytes, len, SYNC_RECORD_BYTES_MAX));
    }
    if last_lsn > leader_end_lsn {
        return Err(Violation::Invalid(format!(
            "records up to LSN {last_lsn} past the leader's end, LSN {leader_end_lsn}"
        )));
    }
    Ok(())
}

/// A follower's request for the next chunk of a partition's newest snapshot.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SnapshotRequest {
    /// The partition.
    pub partition: PartitionId,
    /// The epoch of the leadership map the follower holds (fenced as a [`SyncRequest`] is).
    pub map_epoch: Epoch,
    /// The snapshot being fetched (its LSN); 0 for the newest.
    pub lsn: Lsn,
    /// The offset reached in it.
    pub offset: u64,
    /// Most bytes wanted, 1..=[`SYNC_RECORD_BYTES_MAX`].
    pub max_bytes: u32,
}

/// What the leader answers to a [`SnapshotRequest`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum SnapshotOutcome {
    /// Bytes of snapshot `lsn` from `offset` (the request's, or 0 for a newer snapshot).
    Chunk {
        /// The snapshot's LSN.
        lsn: Lsn,
        /// The file's size.
        size: u64,
        /// Where `bytes` start in the file.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The leader has no snapshot: its log starts at LSN 1; sync from the log.
    NoSnapshot,
    /// The leader's snapshots were replaced while it read them: ask again.
    Retry,
    /// The leader refused (as for a [`SyncRequest`]). Nothing was changed.
    Refused(ErrorResponse),
}

/// The leader's answer to a [`SnapshotRequest`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SnapshotResponse {
    /// The partition.
    pub partition: PartitionId,
    /// The epoch of the leadership map the leader holds.
    pub map_epoch: Epoch,
    /// What it answers.
    pub outcome: SnapshotOutcome,
}

/// The rules of a snapshot request, on its fields as numbers.
fn check_snapshot_request(partition: u32, max_bytes: u32) -> Result<(), Violation> {
    check_partition(partition)?;
    if max_bytes == 0 {
        return Err(Violation::Invalid("a snapshot request for 0 bytes".into()));
    }
    if max_bytes as usize > SYNC_RECORD_BYTES_MAX {
        return Err(too_large(
            Limit::SyncBytes,
            max_bytes as usize,
            SYNC_RECORD_BYTES_MAX,
        ));
    }
    Ok(())
}

impl Validate for SnapshotRequest {
    fn validate(&self) -> Result<(), Violation> {
        check_snapshot_request(self.partition.0, self.max_bytes)
    }
}

impl Validate for ArchivedSnapshotRequest {
    fn validate(&self) -> Result<(), Violation> {
        check_snapshot_request(self.partition.get().get(), self.max_bytes.to_native())
    }
}

/// The rules of a chunk: of a snapshot (LSN at least 1), at most [`SYNC_RECORD_BYTES_MAX`]
/// bytes, inside the file.
fn check_chunk(lsn: u64, size: u64, offset: u64, len: usize) -> Result<(), Violation> {
    if lsn == 0 {
        return Err(Violation::Invalid("a chunk of snapshot LSN 0".into()));
    }
    if len > SYNC_RECORD_BYTES_MAX {
        return Err(too_large(Limit::SyncBytes, len, SYNC_RECORD_BYTES_MAX));
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Violation::Invalid(format!(
            "a chunk of {len} bytes at offset {offset} past the end of a {size}-byte snapshot"
        ))),
    }
}

impl Validate for SnapshotResponse {
    fn validate(&self) -> Result<(), Violation> {
        check_partition(self.partition.0)?;
        match &self.outcome {
            SnapshotOutcome::Chunk {
                lsn,
                size,
                offset,
                bytes,
            } => check_chunk(lsn.0, *size, *offset, bytes.len()),
            SnapshotOutcome::NoSnapshot | SnapshotOutcome::Retry => Ok(()),
            SnapshotOutcome::Refused(error) => error.validate(),
        }
    }
}

impl Validate for ArchivedSnapshotResponse {
    fn validate(&self) -> Result<(), Violation> {
        check_partition(self.partition.get().get())?;
        match &self.outcome {
            ArchivedSnapshotOutcome::Chunk {
                lsn,
                size,
                offset,
                bytes,
            } => check_chunk(
                lsn.get().get(),
                size.to_native(),
                offset.to_native(),
                bytes.len(),
            ),
            ArchivedSnapshotOutcome::NoSnapshot | ArchivedSnapshotOutcome::Retry => Ok(()),
            ArchivedSnapshotOutcome::Refused(error) => error.validate(),
        }
    }
}
