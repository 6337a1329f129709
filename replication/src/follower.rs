//! The follower's side of a sync: what to ask for, and what to do with the answer.

use crate::history::{divergence, log_end, LogEnd};
use crate::leader::SyncAnswer;
use coregrid_engine::io::Storage;
use coregrid_engine::{EngineError, Partition, Result};
use std::rc::Rc;

/// The follower's last durable record: what its next request names (and acknowledges).
pub fn sync_position<S: Storage>(partition: &Partition<S>) -> LogEnd {
    log_end(&partition.epoch_history(), partition.durable_lsn())
}

/// What applying an answer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Records were appended and are durable, up to this LSN.
    Appended(u64),
    /// The follower has every record the leader has.
    UpToDate,
    /// The follower's log was cut after this LSN (its records after it were not on the
    /// leader's log); ask again.
    Truncated(u64),
    /// The leader's log changed between its check and its answer; ask again.
    Retry,
    /// The follower cannot go on from its log: the leader pruned what it needs, or the point
    /// of divergence lies below the follower's own snapshot. Needs the leader's snapshot.
    NeedsSnapshot,
}

/// Applies the leader's answer to the follower's partition. The records of an answer are
/// verified before anything is written (`Partition::append_replicated`); a bad answer is an
/// error and changes nothing, and the caller drops the session.
pub async fn apply_answer<S: Storage>(
    partition: &Rc<Partition<S>>,
    answer: SyncAnswer,
) -> Result<Applied> {
    match answer {
        SyncAnswer::Records { records, .. } if records.is_empty() => Ok(Applied::UpToDate),
        SyncAnswer::Records { records, .. } => Ok(Applied::Appended(
            partition.append_replicated(&records).await?,
        )),
        SyncAnswer::Diverged { history, end_lsn } => {
            let own_end = partition.durable_lsn();
            let keep = divergence(&history, end_lsn, &partition.epoch_history(), own_end);
            if keep >= own_end {
                return Ok(Applied::Retry);
            }
            if keep < partition.stats().snapshot_lsn {
                return Ok(Applied::NeedsSnapshot);
            }
            match partition.truncate_after(keep).await {
                Ok(()) => Ok(Applied::Truncated(keep)),
                // The snapshot reflects records past the cut (it was taken while they were
                // written): only the leader's snapshot can replace it.
                Err(EngineError::TruncateBelowSnapshot { .. }) => Ok(Applied::NeedsSnapshot),
                Err(error) => Err(error),
            }
        }
        SyncAnswer::SnapshotNeeded { .. } => Ok(Applied::NeedsSnapshot),
    }
}
