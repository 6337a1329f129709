//! The leader's side of a sync: answer one follower's request for one partition.

use crate::history::{holds, LogEnd};
use coregrid_engine::io::Storage;
use coregrid_engine::wal::WalPosition;
use coregrid_engine::{rt, Partition, Result};
use futures::future::{select, Either};
use std::time::Duration;

/// A follower's request for one partition: the records after its last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    /// The follower's last durable record (its ack of everything up to it).
    pub last: LogEnd,
    /// At most this many bytes of records (at least one whole record is always sent).
    pub max_bytes: usize,
}

/// The leader's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncAnswer {
    /// Whole records after the follower's last one, as they lie in the leader's WAL; empty if
    /// none became durable before the deadline.
    Records {
        /// The records' bytes.
        records: Vec<u8>,
        /// LSN of the last record sent (the follower's last one if none).
        last_lsn: u64,
        /// The leader's last durable record.
        leader_end: LogEnd,
    },
    /// The follower's last record is not on the leader's log: the leader's epoch history and
    /// durable end, from which the follower finds where to cut its log
    /// ([`crate::history::divergence`]).
    Diverged {
        /// `(epoch, first_lsn)` of every epoch of the leader's log.
        history: Vec<(u64, u64)>,
        /// The leader's durable end.
        end_lsn: u64,
    },
    /// The leader has pruned the records after the follower's last one (a snapshot covers
    /// them): the follower needs the partition's snapshot first.
    SnapshotNeeded {
        /// The leader's durable end.
        end_lsn: u64,
    },
}

/// Where the last answer of one sync session ended on the leader's WAL, so that the next
/// request that continues from there needs no seek. Kept by the leader per session (never
/// taken from the follower: a position from the network could point inside a value that
/// holds a well-formed record).
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncCursor {
    next: Option<(u64, WalPosition)>,
}

/// Whether a follower whose last durable record is `last` holds a prefix of `partition`'s log
/// as it is now: then `last.lsn` is its ack of every record up to it. Checked when a request
/// arrives, before its long poll, so that an ack counts as soon as it is sent (a `Quorum` write
/// waits for it).
pub fn acknowledges<S: Storage>(partition: &Partition<S>, last: LogEnd) -> bool {
    holds(&partition.epoch_history(), partition.durable_lsn(), last)
}

/// Answers `request` from `partition`'s log. When the follower has every durable record,
/// waits up to `wait` for the next one (a long poll; `Duration::ZERO` answers at once).
///
/// Only reads: nothing on the leader changes. The caller has checked that this node leads the
/// partition in the current epoch and that the requester is one of its followers.
pub async fn serve_sync<S: Storage>(
    partition: &Partition<S>,
    request: &SyncRequest,
    cursor: &mut SyncCursor,
    wait: Duration,
) -> Result<SyncAnswer> {
    let last = request.last;
    if partition.durable_lsn() == last.lsn && !wait.is_zero() {
        // Wait before checking, so that the check sees the log as it is when answering.
        let durable = std::pin::pin!(partition.wait_durable_polling(last.lsn + 1));
        let deadline = std::pin::pin!(rt::sleep(wait));
        if let Either::Left((result, _)) = select(durable, deadline).await {
            result?;
        }
    }
    let history = partition.epoch_history();
    let end_lsn = partition.durable_lsn();
    if !holds(&history, end_lsn, last) {
        return Ok(SyncAnswer::Diverged { history, end_lsn });
    }
    let leader_end = crate::history::log_end(&history, end_lsn);
    if end_lsn == last.lsn {
        return Ok(SyncAnswer::Records {
            records: Vec::new(),
            last_lsn: last.lsn,
            leader_end,
        });
    }
    let position = match cursor.next {
        Some((lsn, position)) if lsn == last.lsn + 1 => Some(position),
        _ => partition.position_of(last.lsn + 1).await?,
    };
    let Some(position) = position else {
        return Ok(SyncAnswer::SnapshotNeeded { end_lsn });
    };
    let chunk = partition.read_raw(position, request.max_bytes).await?;
    assert!(
        chunk.bytes.is_empty() || chunk.first_lsn == last.lsn + 1,
        "a raw read at the position of LSN {} began at LSN {}",
        last.lsn + 1,
        chunk.first_lsn
    );
    let last_lsn = if chunk.bytes.is_empty() {
        last.lsn
    } else {
        chunk.last_lsn
    };
    cursor.next = Some((last_lsn + 1, chunk.next));
    // More records may have become durable during the reads: the end reported is taken after
    // them, so that it is never below the last record sent (an answer whose records pass the
    // leader's end is refused by the wire's rules, and was, at startups busy with writes).
    let leader_end = if last_lsn > leader_end.lsn {
        crate::history::log_end(&partition.epoch_history(), partition.durable_lsn())
    } else {
        leader_end
    };
    debug_assert!(last_lsn <= leader_end.lsn);
    Ok(SyncAnswer::Records {
        records: chunk.bytes,
        last_lsn,
        leader_end,
    })
}
