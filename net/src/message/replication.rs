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
