//! The engine's errors. Each variant says what the failed call did to stored state
//! (style.md rule 8).

use std::path::PathBuf;

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The request was malformed (key, value or name too large, empty key, bad collection
    /// name, too many operations). Nothing was written.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// Records copied from a partition's leader failed verification (a bad record, a record
    /// that no log holds, a gap in LSNs, an epoch going back). None of them was written: the
    /// stream they came on should be dropped.
    #[error("invalid replicated records: {0}")]
    InvalidReplication(String),

    /// The collection does not exist. Nothing was written.
    #[error("no such collection: {0:?}")]
    NoSuchCollection(String),

    /// A retried write whose request id is older than the client's window of remembered
    /// requests: whether its first attempt applied is no longer known, so nothing was written
    /// and the outcome of the first attempt is unknown.
    #[error(
        "request {sequence} of client {client} is too old to tell whether it was applied; \
         its outcome is unknown"
    )]
    RequestTooOld {
        /// The client.
        client: u64,
        /// The request's sequence number.
        sequence: u64,
    },

    /// The collection already exists. Nothing was written.
    #[error("collection already exists: {0:?}")]
    CollectionExists(String),

    /// A write or sync of this shard's WAL failed earlier; the shard takes no more writes until
    /// it is restarted (a failed fsync is never retried). Writes in flight at the time have an
    /// unknown outcome: they may or may not be found after restart.
    #[error("shard {shard} is poisoned and takes no writes: {reason}")]
    Poisoned {
        /// The shard that stopped.
        shard: usize,
        /// What failed first.
        reason: String,
    },

    /// A WAL record before the tail failed its checks: the partition refuses to open. Nothing
    /// was changed on disk.
    #[error("corrupt WAL in {file}: at offset {offset}, expected LSN {lsn}: {reason}")]
    Corruption {
        /// The segment or snapshot file.
        file: PathBuf,
        /// Byte offset of the bad record in that file.
        offset: u64,
        /// The LSN the bad record should have had.
        lsn: u64,
        /// What check failed.
        reason: String,
    },

    /// The data directory was made with a different, incompatible configuration (partition
    /// count) or format. Nothing was changed.
    #[error("data directory {dir}: {reason}")]
    IncompatibleDataDir {
        /// The data directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },

    /// The configuration is invalid. Nothing was opened.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The runtime could not start (io_uring unavailable, memlock limit too low, too many cores
    /// asked for). The message says how to fix it. Nothing was opened.
    #[error("cannot start the shard runtime: {0}")]
    Runtime(String),

    /// An I/O error outside the write path (open, read, directory listing). Whether state
    /// changed depends on `context`; writes never end here, they poison the shard.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The engine is shutting down or the shard has stopped; the request was not executed.
    #[error("the engine is shutting down")]
    ShuttingDown,

    /// The partition takes no writes for now ([`crate::Partition::refuse_writes`]: its
    /// leadership is being handed to another replica); nothing was written.
    #[error("the partition takes no writes: {0}")]
    WritesRefused(String),

    /// A truncation was asked below what the partition's latest snapshot reflects; nothing
    /// changed.
    #[error(
        "cannot truncate to LSN {lsn}: the snapshot reflects records up to LSN {snapshot_lsn}"
    )]
    TruncateBelowSnapshot {
        /// The LSN asked for.
        lsn: u64,
        /// The last LSN the snapshot may reflect (its LSN, or later for records staged while
        /// it was taken).
        snapshot_lsn: u64,
    },
}

impl EngineError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
