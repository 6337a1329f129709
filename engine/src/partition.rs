//! A partition on its shard: the WAL, the index, the group-commit writer task and the LSN
//! waiters.
//!
//! Everything here runs on the partition's shard and is `!Send`. A write validates, stages its
//! record (which assigns the LSN) and applies it to the index in one synchronous step, so
//! writes are serialized in LSN order and compare-and-set sees every earlier write. It is
//! acknowledged only after the writer task's `fdatasync` covers its LSN. Reads never answer with
//! state that is not durable: a read that sees an entry (or an absence) newer than the durable
//! LSN waits for that LSN first.

use crate::budget::Budget;
use crate::constants::{
    BATCH_OPERATIONS_MAX, FLUSHES_IN_FLIGHT_MAX, JOURNAL_ENTRY_BYTES_MAX, JOURNAL_FILE_FLUSH_BYTES,
    RECORD_BYTES_MAX, SNAPSHOT_WAL_TO_SNAPSHOT_RATIO, STAGED_BYTES_MAX, WAL_RECYCLE_BYTES_DEFAULT,
};
use crate::error::{EngineError, Result};
use crate::hlc::Hlc;
use crate::index::{Index, ReplaySource};
use crate::io::Storage;
use crate::journal::{Journal, JournalClient};
use crate::record::{
    encoded_len_with_request, validate_collection_name, validate_key_value, BatchOperation,
    Operation, OperationKind, RecordRef,
};
use crate::requests::{Lookup, RequestId};
use crate::rt::{self, Doorbell};
use crate::shared_sync::SharedSync;
use crate::snapshot::{self, SnapshotDownload, SnapshotFile, SnapshotInfo};
use crate::wal::{self, RawChunk, RecycleBudget, Wal, WalPosition, WalShard};
use bytes::Bytes;
use futures::channel::oneshot;
use futures::stream::{FuturesOrdered, StreamExt};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// A flush's outcome, as the writer task receives it: the plan, the I/O's result and the
/// bytes staged.
type FlushOutcome<F> = (wal::FlushPlan<F>, std::io::Result<wal::FlushDone<F>>, usize);

/// The writer task's flushes in flight, completing in the order they were taken.
type FlushesInFlight<F> = FuturesOrdered<Pin<Box<dyn Future<Output = FlushOutcome<F>>>>>;

/// Writers completed at once are woken in two halves (two flushes) from this many on, when no
/// other flush is in flight ([`Partition::wake_in_two_flushes`]).
const SPLIT_WRITERS_MIN: usize = 64;

/// Identifies a partition.
pub type PartitionId = u32;

/// State shared by the partitions of one shard: its clock and its health.
pub struct ShardState {
    /// The shard's index.
    pub shard: usize,
    /// The shard's hybrid logical clock.
    pub hlc: Hlc,
    /// What the logs of the shard's partitions share: pruned segment files kept for reuse,
    /// device flushes.
    pub wal: WalShard,
    poisoned: RefCell<Option<String>>,
}

impl ShardState {
    /// A healthy shard, keeping up to [`WAL_RECYCLE_BYTES_DEFAULT`] of pruned segment files
    /// for reuse.
    pub fn new(shard: usize, hlc: Hlc) -> Self {
        Self::with_recycle_bytes(shard, hlc, WAL_RECYCLE_BYTES_DEFAULT)
    }

    /// A healthy shard keeping up to `recycle_bytes` of pruned segment files for reuse.
    pub fn with_recycle_bytes(shard: usize, hlc: Hlc, recycle_bytes: u64) -> Self {
        Self {
            shard,
            hlc,
            wal: WalShard {
                recycle_budget: RecycleBudget::new(recycle_bytes),
                shared_sync: SharedSync::default(),
            },
            poisoned: RefCell::new(None),
        }
    }

    /// Why the shard stopped taking writes, if it did.
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.borrow().clone()
    }

    fn poison(&self, reason: String) {
        let mut poisoned = self.poisoned.borrow_mut();
        if poisoned.is_none() {
            tracing::error!(shard = self.shard, %reason, "shard poisoned: no more writes until restart");
            *poisoned = Some(reason);
        }
    }

    fn check(&self) -> Result<()> {
        match &*self.poisoned.borrow() {
            Some(reason) => Err(EngineError::Poisoned {
                shard: self.shard,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Settings of one partition.
#[derive(Clone, Copy, Debug)]
pub struct PartitionConfig {
    /// Size of each WAL segment file.
    pub segment_bytes: u64,
    /// WAL bytes since the last snapshot that trigger a new one, or the last snapshot's size if
    /// that is larger (0: never automatically).
    pub snapshot_wal_bytes: u64,
    /// When a commit batch closes ([`Wal::set_batch_fill_limit`]). `None`, the default: only
    /// when a flush takes it (the writer splits writers into two flushes itself, see
    /// `Partition::wake_in_two_flushes`). `Some(limit)` closes it once filling it took
    /// `limit`: tests drive batches on the simulated disk with `Duration::ZERO`, which closes
    /// a batch every 32 records.
    pub commit_batch_fill_limit: Option<Duration>,
}

/// A value with its revision and timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// The key's revision: LSN of the write that set it.
    pub revision: u64,
    /// HLC timestamp of that write.
    pub hlc: u64,
}

/// A compare-and-set whose expectation did not hold; nothing was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CasMismatch {
    /// The key's current revision (0: absent).
    pub current_revision: u64,
}

/// What a write did, answered once it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The write's revision: the LSN of the record that applied it.
    pub revision: u64,
    /// That record's HLC timestamp.
    pub hlc: u64,
    /// For a delete, the revision the key had; `None` otherwise, and for a duplicate (the
    /// engine remembers outcomes, not prior state).
    pub previous_revision: Option<u64>,
    /// The write's request id had been applied already: this is the first attempt's outcome
    /// and nothing was applied now.
    pub duplicate: bool,
}

/// What staging a record did.
struct Staged {
    lsn: u64,
    hlc: u64,
    /// The request was applied before by record `lsn`; nothing was staged now.
    duplicate: bool,
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchWrite {
    /// Set a key.
    Put {
        /// Collection.
        collection: String,
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// Remove a key.
    Delete {
        /// Collection.
        collection: String,
        /// Key.
        key: Bytes,
    },
}

impl BatchWrite {
    /// The key written.
    pub fn key(&self) -> &Bytes {
        match self {
            Self::Put { key, .. } | Self::Delete { key, .. } => key,
        }
    }
    fn collection(&self) -> &str {
        match self {
            Self::Put { collection, .. } | Self::Delete { collection, .. } => collection,
        }
    }
}

/// Counters of one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionStats {
    /// The LSN of the last durable record (in the log itself or in the shard journal).
    pub durable_lsn: u64,
    /// LSN of the newest snapshot (0: none).
    pub snapshot_lsn: u64,
    /// Keys stored.
    pub keys: u64,
    /// WAL segment files.
    pub segments: u64,
    /// Group commits (flushes) done since open.
    pub flushes: u64,
    /// Snapshots taken since open.
    pub snapshots: u64,
    /// New WAL segments that reused a pruned segment's file since open.
    pub segments_reused: u64,
    /// Flushes written while an earlier one was in flight, since open.
    pub flushes_beside: u64,
    /// Flushes made durable by a device flush shared with other partitions' flushes, since
    /// open.
    pub flushes_shared: u64,
}

/// A partition on its shard.
pub struct Partition<S: Storage> {
    id: PartitionId,
    config: PartitionConfig,
    storage: S,
    shard: Rc<ShardState>,
    wal: RefCell<Wal<S>>,
    index: RefCell<Index>,
    /// Waiters by the LSN whose durability they wait for.
    /// Tasks waiting for an LSN to be durable: `(lsn, waker)`, unordered. One entry and no
    /// allocation per waiting write (a oneshot channel and a map entry each cost more than the
    /// rest of a small put's wait).
    waiters: RefCell<Vec<(u64, Waker)>>,
    /// Wakes the writer task.
    writer_bell: Doorbell,
    /// Bytes that may be staged or being flushed; first come, first served. Taken before a
    /// record is staged, given back once the flush that wrote it is durable.
    staging_budget: Budget,
    /// LSN of the last write that removed keys (a delete or drop): an absent key is reported
    /// only once that is durable.
    last_removal_lsn: Cell<u64>,
    epoch: Cell<u64>,
    snapshot_lsn: Cell<u64>,
    /// The newest snapshot was installed from a leader (its file name says so).
    snapshot_installed: Cell<bool>,
    /// The last LSN the snapshot may reflect (a fuzzy snapshot copies records staged while it
    /// runs): the WAL is never truncated below it.
    snapshot_covers_lsn: Cell<u64>,
    /// Truncations done since open: a snapshot that overlapped one is abandoned.
    /// Held by a snapshot and by a truncation for their whole run, so that they never
    /// interleave: a snapshot must not publish records a truncation cut.
    maintenance: rt::Semaphore,
    snapshot_running: Cell<bool>,
    /// Records after this LSN stay in the WAL for replicas that have not acknowledged them,
    /// within a byte bound (see [`Partition::hold_for_replicas`]); `None`: no replica waits.
    replica_hold: Cell<Option<(u64, u64)>>,
    wal_bytes_at_snapshot: Cell<u64>,
    /// Size of the newest snapshot file (0: none).
    snapshot_bytes: Cell<u64>,
    closed: Cell<bool>,
    /// Set while `truncate_after` rewrites the log; writes wait on `resume_waiters`.
    writes_paused: Cell<bool>,
    /// Why new writes are refused, while they are ([`Partition::refuse_writes`]).
    writes_refused: RefCell<Option<String>>,
    resume_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    flushes: Cell<u64>,
    snapshots: Cell<u64>,
    /// The shard journal, once the partition writes through it (see [`crate::journal`]).
    journal: RefCell<Option<Rc<Journal<S>>>>,
    /// Every record through this LSN is durable, in the log itself or in the journal (0 after
    /// a truncation or an install, when everything is durable in the log itself).
    journaled_lsn: Cell<u64>,
    /// Ranges of records durable in the journal above [`Partition::journaled_lsn`], waiting
    /// for the records before them (taken by a flush of the log not yet complete).
    journaled_ranges: RefCell<std::collections::VecDeque<(u64, u64)>>,
    /// Records through this LSN must become durable in the log itself (the journal wants a
    /// slot back, a replica reads, a snapshot publishes, the log is cut or closed).
    file_flush_target: Cell<u64>,
    /// Tasks waiting for the log itself to be durable further.
    file_waiters: RefCell<Vec<Waker>>,
}

impl<S: Storage> Partition<S> {
    /// Opens (recovers) partition `id` from `storage` and starts its writer task on the current
    /// shard.
    pub async fn open(
        id: PartitionId,
        storage: S,
        config: PartitionConfig,
        shard: Rc<ShardState>,
    ) -> Result<Rc<Self>> {
        let mut index = Index::default();
        // A snapshot install that a crash interrupted after its commit point is finished
        // before anything reads the log.
        snapshot::finish_install(&storage).await?;
        let loaded = snapshot::load_latest(&storage, id, &mut index).await?;
        let (snapshot_lsn, epochs) = (loaded.snapshot_lsn, loaded.epochs);
        let mut max_hlc = 0u64;
        let mut last_removal_lsn = 0u64;
        let mut wal = Wal::open(
            storage.clone(),
            id,
            config.segment_bytes,
            shard.wal.clone(),
            snapshot_lsn,
            epochs,
            |record| {
                let meta = record.header.meta();
                max_hlc = max_hlc.max(meta.hlc);
                if matches!(
                    record.header.kind(),
                    OperationKind::Delete | OperationKind::DropCollection | OperationKind::Batch
                ) {
                    last_removal_lsn = meta.lsn;
                }
                index.apply_record(record, ReplaySource::Wal);
            },
        )
        .await?;
        // Paired with the publication rule of snapshots: everything a snapshot taken here
        // reflects is in the WAL. (An installed one reflects its leader's WAL, which the
        // follower pulls again after it.)
        if !loaded.installed && loaded.covers_lsn > wal.durable_lsn() {
            return Err(EngineError::Corruption {
                file: storage.path(&snapshot::snapshot_name(snapshot_lsn)),
                offset: 0,
                lsn: loaded.covers_lsn,
                reason: format!(
                    "the snapshot reflects records up to LSN {} but the WAL ends at LSN {}",
                    loaded.covers_lsn,
                    wal.durable_lsn()
                ),
            });
        }
        shard.hlc.observe(max_hlc);
        wal.set_batch_fill_limit(config.commit_batch_fill_limit);
        let epoch = wal.last_epoch();
        let partition = Rc::new(Partition {
            id,
            config,
            storage,
            shard,
            wal: RefCell::new(wal),
            index: RefCell::new(index),
            waiters: RefCell::new(Vec::new()),
            writer_bell: Doorbell::default(),
            staging_budget: Budget::new(STAGED_BYTES_MAX),
            last_removal_lsn: Cell::new(last_removal_lsn),
            epoch: Cell::new(epoch),
            snapshot_lsn: Cell::new(snapshot_lsn),
            snapshot_installed: Cell::new(loaded.installed),
            snapshot_covers_lsn: Cell::new(loaded.covers_lsn),
            maintenance: rt::Semaphore::new(1),
            snapshot_running: Cell::new(false),
            replica_hold: Cell::new(None),
            wal_bytes_at_snapshot: Cell::new(0),
            snapshot_bytes: Cell::new(loaded.bytes),
            closed: Cell::new(false),
            writes_paused: Cell::new(false),
            writes_refused: RefCell::new(None),
            resume_waiters: RefCell::new(Vec::new()),
            flushes: Cell::new(0),
            snapshots: Cell::new(0),
            journal: RefCell::new(None),
            journaled_lsn: Cell::new(0),
            journaled_ranges: RefCell::new(std::collections::VecDeque::new()),
            file_flush_target: Cell::new(0),
            file_waiters: RefCell::new(Vec::new()),
        });
        rt::spawn_detached(Self::writer_loop(partition.clone()));
        Ok(partition)
    }

    /// The partition's id.
    pub fn id(&self) -> PartitionId {
        self.id
    }

    /// The highest durable LSN: in the log itself or in the shard journal.
    pub fn durable_lsn(&self) -> u64 {
        self.wal
            .borrow()
            .durable_lsn()
            .max(self.journaled_lsn.get())
    }

    /// The highest LSN durable in the partition's own log.
    pub fn file_durable_lsn(&self) -> u64 {
        self.wal.borrow().durable_lsn()
    }

    /// Writes small rounds of records through the shard's journal from now on (see
    /// [`crate::journal`]). Call after any replay of the journal that preceded it.
    pub fn attach_journal(self: &Rc<Self>, journal: Rc<Journal<S>>) {
        let client: Rc<dyn JournalClient> = self.clone();
        journal.register(self.id, Rc::downgrade(&client));
        *self.journal.borrow_mut() = Some(journal);
        self.writer_bell.ring();
    }

    /// Replays journal entries of this partition (every one after its last barrier, in
    /// order) into its log and waits until they are durable there. Records the log holds
    /// already are skipped; replay ends at a gap between the log's end and the journal's next
    /// record (the records after it were never acknowledged). Call before
    /// [`Partition::attach_journal`].
    pub async fn replay_journal(&self, entries: &[(u64, &[u8])]) -> Result<()> {
        assert!(
            self.journal.borrow().is_none(),
            "a journal is replayed before partitions write through one"
        );
        for (first_lsn, bytes) in entries {
            let next = self.wal.borrow().next_lsn();
            let (mut lsn, mut rest) = (*first_lsn, *bytes);
            while lsn < next && !rest.is_empty() {
                let record = RecordRef::validate(rest).map_err(|error| {
                    self.journal_corruption(lsn, format!("a record does not validate: {error}"))
                })?;
                if record.header.lsn() != lsn {
                    return Err(self.journal_corruption(
                        lsn,
                        format!("the record in its place holds LSN {}", record.header.lsn()),
                    ));
                }
                rest = &rest[record.len()..];
                lsn += 1;
            }
            if rest.is_empty() {
                continue;
            }
            if lsn > next {
                // The records between went to the log by a flush that never completed, so
                // nothing from here on was acknowledged (a journaled record is acknowledged
                // only once every record before it is durable): the log ends here.
                tracing::warn!(
                    partition = self.id,
                    log_end = next - 1,
                    journal_resumes = lsn,
                    "the shard journal resumes past the log's end; its later records were never acknowledged"
                );
                return Ok(());
            }
            self.append_replicated(rest)
                .await
                .map_err(|error| match error {
                    EngineError::InvalidReplication(reason) => self.journal_corruption(lsn, reason),
                    other => other,
                })?;
        }
        Ok(())
    }

    fn journal_corruption(&self, lsn: u64, reason: String) -> EngineError {
        EngineError::Corruption {
            file: self.storage.path(""),
            offset: 0,
            lsn,
            reason: format!("shard journal: {reason}"),
        }
    }

    /// Waits until `lsn` is durable in the partition's own log (not only in the journal).
    async fn wait_file_durable(&self, lsn: u64) -> Result<()> {
        if self.file_durable_lsn() >= lsn {
            return Ok(());
        }
        self.file_flush_target
            .set(self.file_flush_target.get().max(lsn));
        self.writer_bell.ring();
        std::future::poll_fn(|context| {
            if self.file_durable_lsn() >= lsn {
                return Poll::Ready(Ok(()));
            }
            self.shard.check()?;
            self.file_waiters.borrow_mut().push(context.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Makes records of the journal's reach (a replica's read, a seek) durable in the log.
    async fn write_journaled(&self, through: u64) -> Result<()> {
        let journaled = self.journaled_lsn.get().min(through);
        if journaled > self.file_durable_lsn() {
            self.wait_file_durable(journaled).await?;
        }
        Ok(())
    }

    /// Whether the writer should take flushes of the log now: always without a journal; with
    /// one, once enough is staged or something needs the log itself durable.
    fn file_flush_due(&self) -> bool {
        let journal = self.journal.borrow();
        let Some(journal) = journal.as_ref() else {
            return true;
        };
        if journal.is_failed() || self.closed.get() || self.writes_paused.get() {
            return true;
        }
        let wal = self.wal.borrow();
        self.file_flush_target.get() > wal.durable_lsn()
            || wal.staged_bytes() >= JOURNAL_FILE_FLUSH_BYTES
    }

    /// Copies the records staged since the last copy to the journal's open chunk, if they are
    /// few and the journal is in use by others (a partition alone writes its own log durably:
    /// one write either way, and no second one later); large ones go to the log itself.
    fn journal_staged(&self) {
        let journal = self.journal.borrow();
        let Some(journal) = journal.as_ref() else {
            return;
        };
        if journal.is_failed() || self.closed.get() || self.writes_paused.get() {
            return;
        }
        let mut wal = self.wal.borrow_mut();
        let bytes = wal.unjournaled_bytes();
        if bytes == 0 {
            return;
        }
        let others = journal.busy() || self.shard.wal.shared_sync.flushes_in_flight() > 0;
        if bytes > JOURNAL_ENTRY_BYTES_MAX || !others || !journal.has_room(bytes) {
            let last = wal.next_lsn() - 1;
            self.file_flush_target
                .set(self.file_flush_target.get().max(last));
            return;
        }
        journal.append_records_from(self.id, |payload| wal.copy_unjournaled(payload));
    }

    /// Poisons the shard and stops its journal, which wakes the waiters of every partition
    /// that writes through it (each then learns the shard is poisoned).
    fn poison_shard(&self, reason: String) {
        self.shard.poison(reason.clone());
        let journal = self.journal.borrow().clone();
        if let Some(journal) = journal {
            journal.stop(reason);
        }
    }

    /// Moves [`Partition::journaled_lsn`] over the journaled ranges that now continue what is
    /// durable (in the log or the journal); returns the durable LSN.
    fn advance_journaled(&self) -> u64 {
        let mut durable = self.journaled_lsn.get().max(self.file_durable_lsn());
        let mut ranges = self.journaled_ranges.borrow_mut();
        while let Some(&(first, last)) = ranges.front() {
            if first > durable + 1 {
                break;
            }
            durable = durable.max(last);
            ranges.pop_front();
        }
        self.journaled_lsn.set(durable);
        durable
    }

    fn wake_file_waiters(&self) {
        for waker in self.file_waiters.take() {
            waker.wake();
        }
    }

    /// Refuses every new write of this partition with `reason` (`WritesRefused`), or takes
    /// them again (`None`): a leader handing the partition to another replica stops taking
    /// writes of every kind, collection changes included, until the map moves it. Records
    /// copied from a leader (`append_replicated`) are not writes of this replica and pass.
    pub fn refuse_writes(&self, reason: Option<String>) {
        *self.writes_refused.borrow_mut() = reason;
    }

    /// The highest LSN staged (durable or on its way): every record of the partition is
    /// durable when it equals [`Partition::durable_lsn`].
    pub fn staged_lsn(&self) -> u64 {
        self.wal.borrow().next_lsn() - 1
    }

    /// Whether this replica may lead the partition: `false` while its state reflects records
    /// its log lacks (a leader's snapshot installed whose cover lies past its WAL's end: a
    /// leader serving from it could hand followers a log without those records).
    pub fn may_lead(&self) -> bool {
        !(self.snapshot_installed.get() && self.snapshot_covers_lsn.get() > self.durable_lsn())
    }

    /// The epoch new records are written in.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Keeps the WAL records after `lsn` when snapshots prune, for replicas that have not
    /// acknowledged them yet (`lsn`: the lowest LSN every follower acknowledged), as long as
    /// the segments kept for them take at most `bytes_max`; past that, the oldest go and the
    /// replica furthest behind needs a snapshot. `None` lets snapshots prune everything they
    /// cover. A partition's leader sets it from its followers' acks (design.md section 6:
    /// "WAL segments are pruned only once every replica has acknowledged them and a snapshot
    /// covers them"); the bound keeps a replica that never comes back from filling the disk.
    pub fn hold_for_replicas(&self, lsn: Option<u64>, bytes_max: u64) {
        self.replica_hold.set(lsn.map(|lsn| (lsn, bytes_max)));
    }

    /// `(epoch, first_lsn)` for every epoch with records.
    pub fn epoch_history(&self) -> Vec<(u64, u64)> {
        self.wal.borrow().epochs().to_vec()
    }

    /// Counters.
    pub fn stats(&self) -> PartitionStats {
        let wal = self.wal.borrow();
        PartitionStats {
            durable_lsn: wal.durable_lsn().max(self.journaled_lsn.get()),
            snapshot_lsn: self.snapshot_lsn.get(),
            keys: self.index.borrow().len() as u64,
            segments: wal.segment_base_lsns().len() as u64,
            flushes: self.flushes.get(),
            snapshots: self.snapshots.get(),
            segments_reused: wal.segments_reused(),
            flushes_beside: wal.flushes_beside(),
            flushes_shared: wal.flushes_shared(),
        }
    }

    /// The group-commit writer: every record staged while the previous flush ran goes out in
    /// the next one (or the oldest commit batch of them, see [`Wal::set_batch_fill_limit`]).
    /// One task per partition. Up to [`FLUSHES_IN_FLIGHT_MAX`] flushes are in flight, the
    /// later ones only where [`Wal::take_flush`] lets them go beside the earlier (no shared
    /// block); they complete, and their writers are woken, in the order they were taken.
    ///
    /// When a flush completes and the next is staged already, the next one's I/O is handed to
    /// the kernel *before* the completed flush's writers are woken: the shard submits I/O only
    /// between runs of its tasks, so waking them first would keep the disk idle while they
    /// all run.
    async fn writer_loop(partition: Rc<Self>) {
        let mut in_flight: FlushesInFlight<S::File> = FuturesOrdered::new();
        // Durable LSN of a completed flush whose writers are woken once the next flush's I/O
        // has been submitted.
        let mut acknowledge_later: Option<u64> = None;
        loop {
            if partition.shard.check().is_err() {
                // A poisoned shard writes nothing more (its journal may have failed with
                // records staged here, and a close may have closed the files since): every
                // waiter learns it, and the writer ends once its I/O has.
                partition.fail_waiters();
                partition.staging_budget.close();
                while in_flight.next().await.is_some() {}
                return;
            }
            partition.journal_staged();
            let queued = partition.queue_flushes(&mut in_flight, false).await;
            if let Some(durable_lsn) = acknowledge_later.take() {
                if queued {
                    // This flush's I/O is queued: let the shard submit it, then wake the
                    // writers of the previous flush, whose work overlaps this one's I/O.
                    rt::submit_queued_io().await;
                }
                if in_flight.is_empty() {
                    partition
                        .wake_in_two_flushes(durable_lsn, &mut in_flight)
                        .await;
                } else {
                    partition.complete_waiters(durable_lsn);
                }
            }
            if in_flight.is_empty() {
                if partition.closed.get() {
                    return;
                }
                partition.writer_bell.wait().await;
                continue;
            }
            // The oldest flush's completion; or, while another may go beside it, a ring (a
            // record staged).
            let completed = if in_flight.len() < FLUSHES_IN_FLIGHT_MAX {
                let bell = std::pin::pin!(partition.writer_bell.wait());
                match futures::future::select(in_flight.next(), bell).await {
                    futures::future::Either::Left((completed, _)) => completed,
                    futures::future::Either::Right(((), _)) => continue,
                }
            } else {
                in_flight.next().await
            };
            let (plan, result, flushed_bytes) = completed.expect("a flush is in flight");
            match result {
                Ok(done) => {
                    let durable_lsn = partition.wal.borrow_mut().complete_flush(plan, done);
                    // Their bytes may be staged again. Given back only now, not when the flush
                    // took them: otherwise, under a load larger than the budget, the writes
                    // left waiting would form a small flush of their own while a big one ran,
                    // and flushes would alternate small and big.
                    partition.staging_budget.release(flushed_bytes);
                    partition.flushes.set(partition.flushes.get() + 1);
                    // Journaled records after the ones this flush wrote may now count too.
                    let durable_lsn = durable_lsn.max(partition.advance_journaled());
                    partition.wake_file_waiters();
                    if let Some(journal) = partition.journal.borrow().as_ref() {
                        journal.file_flushed();
                    }
                    acknowledge_later = Some(durable_lsn);
                    partition.maybe_snapshot();
                }
                Err(error) => {
                    partition.poison_shard(format!(
                        "partition {}: WAL write or sync failed: {error}",
                        partition.id
                    ));
                    partition.fail_waiters();
                    partition.staging_budget.close();
                    // A flush beside the failed one is never acknowledged; its I/O ends
                    // before the writer does, so nothing writes the files after it.
                    while in_flight.next().await.is_some() {}
                    return;
                }
            }
        }
    }

    /// Takes every flush that may go now and queues its I/O (each flush future is polled
    /// once, which hands its writes to the shard's ring); true if any I/O was queued.
    /// `end_block`: the last flush taken ends its block (see [`Wal::end_block`]).
    async fn queue_flushes(
        &self,
        in_flight: &mut FlushesInFlight<S::File>,
        end_block: bool,
    ) -> bool {
        let mut queued = false;
        while in_flight.len() < FLUSHES_IN_FLIGHT_MAX && self.file_flush_due() {
            let Some(plan) = self.wal.borrow_mut().take_flush() else {
                break;
            };
            if end_block {
                self.wal.borrow_mut().end_block();
            }
            let bytes = plan.staged_bytes();
            let mut io = Box::pin(wal::flush_io(&self.wal, plan));
            let flush: Pin<Box<dyn Future<Output = FlushOutcome<S::File>>>> =
                match futures::poll!(io.as_mut()) {
                    Poll::Ready((plan, result)) => {
                        Box::pin(std::future::ready((plan, result, bytes)))
                    }
                    Poll::Pending => {
                        queued = true;
                        Box::pin(async move {
                            let (plan, result) = io.await;
                            (plan, result, bytes)
                        })
                    }
                };
            in_flight.push_back(flush);
        }
        queued
    }

    /// Wakes the writers `durable_lsn` completed when no flush is in flight, in two halves
    /// if they are many: the first half stages, its records go out as a flush that ends its
    /// block, and only then is the second half woken, to stage beside that flush's I/O.
    ///
    /// Why: the shard hands I/O to the kernel only between runs of its tasks, so writers
    /// woken together all stage before any of their records is written, and form one flush
    /// again and again, with the disk idle while they stage. Split once, the two halves stay
    /// apart: each stages while the other's flush is in flight.
    async fn wake_in_two_flushes(
        &self,
        durable_lsn: u64,
        in_flight: &mut FlushesInFlight<S::File>,
    ) {
        let done = self
            .waiters
            .borrow()
            .iter()
            .filter(|(lsn, _)| *lsn <= durable_lsn)
            .count();
        if done < SPLIT_WRITERS_MIN {
            self.complete_waiters(durable_lsn);
            return;
        }
        self.complete_some_waiters(durable_lsn, done / 2);
        // Parks until the shard's next turn: the woken writers stage meanwhile.
        rt::submit_queued_io().await;
        if self.queue_flushes(in_flight, true).await {
            rt::submit_queued_io().await;
        }
        self.complete_waiters(durable_lsn);
    }

    fn complete_waiters(&self, durable_lsn: u64) {
        self.complete_some_waiters(durable_lsn, usize::MAX);
    }

    /// Wakes at most `most` of the waiters `durable_lsn` completes, the longest waiting first.
    fn complete_some_waiters(&self, durable_lsn: u64, most: usize) {
        let mut woken = 0;
        // Waking only schedules the tasks: none runs while the list is borrowed.
        self.waiters.borrow_mut().retain(|(lsn, waker)| {
            if *lsn > durable_lsn || woken == most {
                return true;
            }
            woken += 1;
            waker.wake_by_ref();
            false
        });
    }

    /// Wakes every waiter: the shard is poisoned, which each of them reports.
    fn fail_waiters(&self) {
        for (_, waker) in self.waiters.take() {
            waker.wake();
        }
        self.wake_file_waiters();
    }

    /// Waits until `lsn` is durable.
    pub async fn wait_durable(&self, lsn: u64) -> Result<()> {
        self.wait_durable_registering(lsn, false).await
    }

    /// Like [`Partition::wait_durable`], for a task that waits for the same LSN again and
    /// again and gives up at a deadline each time (a leader's long poll for a follower's next
    /// records, which may wait on an idle partition for hours): it registers its waker once
    /// per LSN, so abandoned waits do not pile up in the waiter list. Costs a scan of the
    /// waiter list per registration, so it is kept off the write path.
    pub async fn wait_durable_polling(&self, lsn: u64) -> Result<()> {
        self.wait_durable_registering(lsn, true).await
    }

    /// Waits until `lsn` is durable. A write's wait (`polling` false) registers its waker and
    /// rings the writer, which may hold `lsn` staged; a long poll registers only if the same
    /// task has no entry for `lsn` yet and leaves the writer alone (it waits for writes that
    /// ring it themselves).
    async fn wait_durable_registering(&self, lsn: u64, polling: bool) -> Result<()> {
        let mut registered = false;
        std::future::poll_fn(|context| {
            if self.durable_lsn() >= lsn {
                return Poll::Ready(Ok(()));
            }
            self.shard.check()?;
            if !registered {
                // Woken by `complete_waiters` once a flush covers `lsn` (the entry is then
                // gone), or by `fail_waiters`.
                let mut waiters = self.waiters.borrow_mut();
                let known = polling
                    && waiters
                        .iter()
                        .any(|(at, waker)| *at == lsn && waker.will_wake(context.waker()));
                if !known {
                    waiters.push((lsn, context.waker().clone()));
                }
                registered = true;
                if !polling {
                    self.writer_bell.ring();
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Stages `operation` once `check` passes against the current state, then lets `apply`
    /// change the index, all in one synchronous step. Waits (without holding anything) while
    /// the staging area is full. Returns the record's LSN and HLC timestamp.
    async fn stage(
        &self,
        request: Option<RequestId>,
        operation: &Operation<'_>,
        check: impl Fn(&Index) -> Result<()>,
        apply: impl FnOnce(&mut Index, u64, u64),
    ) -> Result<Staged> {
        let len = encoded_len_with_request(operation, request.is_some());
        let mut room = self.admit(len).await?;
        if let Some(reason) = self.writes_refused.borrow().as_ref() {
            return Err(EngineError::WritesRefused(reason.clone()));
        }
        // A retry is answered before any check: a compare-and-set that applied has changed
        // the revision its retry would check.
        if let Some(request) = request {
            match self.index.borrow().requests().lookup(request) {
                Lookup::New => {}
                Lookup::Duplicate { lsn, hlc } => {
                    return Ok(Staged {
                        lsn,
                        hlc,
                        duplicate: true,
                    })
                }
                Lookup::TooOld => {
                    return Err(EngineError::RequestTooOld {
                        client: request.client,
                        sequence: request.sequence,
                    })
                }
            }
        }
        check(&self.index.borrow())?;
        let hlc = self.shard.hlc.now();
        let lsn = self
            .wal
            .borrow_mut()
            .stage(self.epoch.get(), hlc, request, operation)
            .expect("the staging budget bounds what is staged");
        // The bytes are the WAL's now; the writer gives them back once they are durable.
        room.bytes = 0;
        {
            let mut index = self.index.borrow_mut();
            apply(&mut index, lsn, hlc);
            if let Some(request) = request {
                index.requests_mut().note_applied(request, lsn, hlc);
            }
        }
        self.writer_bell.ring();
        Ok(Staged {
            lsn,
            hlc,
            duplicate: false,
        })
    }

    /// Waits for staging room for a record of `len` bytes (in arrival order) and for any
    /// truncation to end; returns once the partition may stage it now, synchronously, against
    /// the state as it is after the wait.
    async fn admit(&self, len: usize) -> Result<BudgetTaken<'_>> {
        assert!(len <= RECORD_BYTES_MAX);
        if self.staging_budget.acquire(len).await.is_err() {
            self.shard.check()?;
            return Err(EngineError::ShuttingDown);
        }
        let room = BudgetTaken {
            budget: &self.staging_budget,
            bytes: len,
        };
        loop {
            if self.closed.get() {
                return Err(EngineError::ShuttingDown);
            }
            if self.writes_paused.get() {
                // A truncation is rewriting the log: wait for it, then look at the state anew.
                let (resume, resumed) = oneshot::channel();
                self.resume_waiters.borrow_mut().push(resume);
                let _ = resumed.await;
                continue;
            }
            self.shard.check()?;
            return Ok(room);
        }
    }

    /// Appends records copied from the partition's leader (whole records as
    /// [`Partition::read_raw`] hands them out there), applies them, and returns the last one's
    /// LSN once it is durable here: the follower's side of pull replication (design.md
    /// section 6). Every record keeps its LSN, epoch and HLC timestamp; the log's epoch history
    /// and the partition's epoch follow the records' epochs.
    ///
    /// The records are verified before any is staged: each must pass its header and body
    /// checks, decode, be a log record (not a snapshot's), continue the LSNs densely from this
    /// log's next LSN, and never go back in epoch. If any fails, nothing is written and the
    /// error is [`EngineError::InvalidReplication`] (the caller drops the stream, as for any
    /// bad input from the network). Writes of this partition's own (a leader's) must not run
    /// at the same time; one that did would be caught at its LSN, leaving the records before it
    /// applied.
    pub async fn append_replicated(&self, records: &[u8]) -> Result<u64> {
        let invalid = |reason: String| {
            EngineError::InvalidReplication(format!("partition {}: {reason}", self.id))
        };
        let verified = {
            let wal = self.wal.borrow();
            verify_replicated(records, wal.next_lsn(), wal.last_epoch()).map_err(invalid)?
        };
        let Some(last) = verified.last() else {
            return Ok(self.wal.borrow().next_lsn() - 1);
        };
        let last_lsn = last.header.lsn();
        for record in &verified {
            let mut room = self.admit(record.len()).await?;
            let meta = record.header.meta();
            self.wal
                .borrow_mut()
                .stage_copy(record)
                .map_err(|error| invalid(format!("at LSN {}: {error:?}", meta.lsn)))?;
            room.bytes = 0;
            self.index
                .borrow_mut()
                .apply_record(*record, ReplaySource::Wal);
            self.shard.hlc.observe(meta.hlc);
            if meta.epoch > self.epoch.get() {
                self.epoch.set(meta.epoch);
            }
            if matches!(
                record.header.kind(),
                OperationKind::Delete | OperationKind::DropCollection | OperationKind::Batch
            ) {
                self.last_removal_lsn.set(meta.lsn);
            }
            self.writer_bell.ring();
        }
        self.wait_durable(last_lsn).await?;
        Ok(last_lsn)
    }

    /// Waits until the staged record is durable and says what the write did.
    async fn outcome(
        &self,
        staged: Staged,
        previous_revision: Option<u64>,
    ) -> Result<WriteOutcome> {
        self.wait_durable(staged.lsn).await?;
        Ok(WriteOutcome {
            revision: staged.lsn,
            hlc: staged.hlc,
            previous_revision: if staged.duplicate {
                None
            } else {
                previous_revision
            },
            duplicate: staged.duplicate,
        })
    }

    fn require_collection(index: &Index, collection: &str) -> Result<()> {
        if index.has_collection(collection) {
            Ok(())
        } else {
            Err(EngineError::NoSuchCollection(collection.to_string()))
        }
    }

    /// Sets `key` in `collection`; returns the new revision once durable.
    pub async fn put(&self, collection: &str, key: Bytes, value: Bytes) -> Result<u64> {
        Ok(self.put_with(collection, key, value, None).await?.revision)
    }

    /// [`Partition::put`] carrying a client request id: a retry with the same id is answered
    /// with the first attempt's outcome and not applied again ([`crate::requests`]).
    pub async fn put_with(
        &self,
        collection: &str,
        key: Bytes,
        value: Bytes,
        request: Option<RequestId>,
    ) -> Result<WriteOutcome> {
        validate_key_value(&key, Some(&value)).map_err(EngineError::InvalidRequest)?;
        let operation = Operation::Put {
            collection,
            key: &key,
            value: &value,
        };
        self.index.borrow().prefetch(collection, &key);
        let staged = self
            .stage(
                request,
                &operation,
                |index| Self::require_collection(index, collection),
                |index, lsn, hlc| index.put_live(collection, &key, &value, lsn, hlc),
            )
            .await?;
        self.outcome(staged, None).await
    }

    /// Reads `key`; answers only with durable state.
    pub async fn get(&self, collection: &str, key: &[u8]) -> Result<Option<Versioned>> {
        validate_key_value(key, None).map_err(EngineError::InvalidRequest)?;
        loop {
            let (found, needs_lsn) = {
                let index = self.index.borrow();
                Self::require_collection(&index, collection)?;
                match index.get(collection, key) {
                    Some(entry) => (
                        Some(Versioned {
                            value: entry.value.to_bytes(),
                            revision: entry.revision,
                            hlc: entry.hlc,
                        }),
                        entry.revision,
                    ),
                    None => (None, self.last_removal_lsn.get()),
                }
            };
            if self.durable_lsn() >= needs_lsn {
                return Ok(found);
            }
            self.wait_durable(needs_lsn).await?;
        }
    }

    /// Removes `key`; returns the revision it had, or `None` if it was absent (then nothing is
    /// written).
    pub async fn delete(&self, collection: &str, key: &[u8]) -> Result<Option<u64>> {
        Ok(self
            .delete_with(collection, key, None)
            .await?
            .and_then(|outcome| outcome.previous_revision))
    }

    /// [`Partition::delete`] carrying a client request id (see [`Partition::put_with`]).
    /// `None` if the key was absent: nothing was written, and a retry looks again.
    pub async fn delete_with(
        &self,
        collection: &str,
        key: &[u8],
        request: Option<RequestId>,
    ) -> Result<Option<WriteOutcome>> {
        validate_key_value(key, None).map_err(EngineError::InvalidRequest)?;
        let (current, duplicate) = {
            let index = self.index.borrow();
            Self::require_collection(&index, collection)?;
            let duplicate = match request.map(|request| index.requests().lookup(request)) {
                Some(Lookup::Duplicate { lsn, hlc }) => Some(Staged {
                    lsn,
                    hlc,
                    duplicate: true,
                }),
                _ => None,
            };
            (
                index.get(collection, key).map(|entry| entry.revision),
                duplicate,
            )
        };
        if let Some(staged) = duplicate {
            return self.outcome(staged, None).await.map(Some);
        }
        let Some(current) = current else {
            self.wait_durable(self.last_removal_lsn.get()).await?;
            return Ok(None);
        };
        match self
            .compare_and_set_with(
                collection,
                Bytes::copy_from_slice(key),
                current,
                None,
                request,
            )
            .await?
        {
            Ok(outcome) => Ok(Some(WriteOutcome {
                previous_revision: (!outcome.duplicate).then_some(current),
                ..outcome
            })),
            // It changed meanwhile: delete whatever is there now.
            Err(_) => Box::pin(self.delete_with(collection, key, request)).await,
        }
    }

    /// Writes `value` (or deletes, if `None`) only if the key's revision is `expected_revision`
    /// (0: the key must be absent). Returns the new revision, or the mismatch.
    pub async fn compare_and_set(
        &self,
        collection: &str,
        key: Bytes,
        expected_revision: u64,
        value: Option<Bytes>,
    ) -> Result<Result<u64, CasMismatch>> {
        Ok(self
            .compare_and_set_with(collection, key, expected_revision, value, None)
            .await?
            .map(|outcome| outcome.revision))
    }

    /// [`Partition::compare_and_set`] carrying a client request id (see
    /// [`Partition::put_with`]): a retry of one that applied answers its outcome, even though
    /// the revision it expected is gone.
    pub async fn compare_and_set_with(
        &self,
        collection: &str,
        key: Bytes,
        expected_revision: u64,
        value: Option<Bytes>,
        request: Option<RequestId>,
    ) -> Result<Result<WriteOutcome, CasMismatch>> {
        validate_key_value(&key, value.as_deref()).map_err(EngineError::InvalidRequest)?;
        let operation = match &value {
            Some(value) => Operation::Put {
                collection,
                key: &key,
                value,
            },
            None => Operation::Delete {
                collection,
                key: &key,
            },
        };
        let mismatch = Cell::new(None);
        let staged = self
            .stage(
                request,
                &operation,
                |index| {
                    Self::require_collection(index, collection)?;
                    let current = index
                        .get(collection, &key)
                        .map_or(0, |entry| entry.revision);
                    if current != expected_revision {
                        mismatch.set(Some(current));
                        return Err(EngineError::InvalidRequest(String::new()));
                    }
                    Ok(())
                },
                |index, lsn, hlc| match &value {
                    Some(value) => index.put_live(collection, &key, value, lsn, hlc),
                    None => {
                        index.delete(collection, &key);
                    }
                },
            )
            .await;
        if let Some(current_revision) = mismatch.get() {
            // Answer only from durable state.
            let needs = if current_revision == 0 {
                self.last_removal_lsn.get()
            } else {
                current_revision
            };
            self.wait_durable(needs).await?;
            return Ok(Err(CasMismatch { current_revision }));
        }
        let staged = staged?;
        if value.is_none() && !staged.duplicate {
            self.last_removal_lsn.set(staged.lsn);
        }
        self.outcome(staged, None).await.map(Ok)
    }

    /// Applies every write of `writes` atomically (one record); returns its LSN.
    pub async fn batch(&self, writes: &[BatchWrite]) -> Result<u64> {
        Ok(self.batch_with(writes, None).await?.revision)
    }

    /// [`Partition::batch`] carrying a client request id (see [`Partition::put_with`]).
    pub async fn batch_with(
        &self,
        writes: &[BatchWrite],
        request: Option<RequestId>,
    ) -> Result<WriteOutcome> {
        if writes.is_empty() || writes.len() > BATCH_OPERATIONS_MAX {
            return Err(EngineError::InvalidRequest(format!(
                "a batch holds 1..={BATCH_OPERATIONS_MAX} writes, got {}",
                writes.len()
            )));
        }
        let mut operations = Vec::with_capacity(writes.len());
        for write in writes {
            match write {
                BatchWrite::Put {
                    collection,
                    key,
                    value,
                } => {
                    validate_key_value(key, Some(value)).map_err(EngineError::InvalidRequest)?;
                    operations.push(BatchOperation::Put {
                        collection,
                        key,
                        value,
                    });
                }
                BatchWrite::Delete { collection, key } => {
                    validate_key_value(key, None).map_err(EngineError::InvalidRequest)?;
                    operations.push(BatchOperation::Delete { collection, key });
                }
            }
        }
        let operation = Operation::Batch(operations);
        let len = encoded_len_with_request(&operation, request.is_some());
        if len > RECORD_BYTES_MAX {
            return Err(EngineError::InvalidRequest(format!(
                "batch encodes to {len} bytes, over the {RECORD_BYTES_MAX}-byte record limit"
            )));
        }
        let has_delete = writes
            .iter()
            .any(|write| matches!(write, BatchWrite::Delete { .. }));
        {
            // Every key's slot at once: the misses overlap each other and the staging
            // ([`Index::prefetch`]).
            let index = self.index.borrow();
            for write in writes {
                index.prefetch(write.collection(), write.key());
            }
        }
        let staged = self
            .stage(
                request,
                &operation,
                |index| {
                    writes
                        .iter()
                        .try_for_each(|write| Self::require_collection(index, write.collection()))
                },
                |index, lsn, hlc| {
                    for write in writes {
                        match write {
                            BatchWrite::Put {
                                collection,
                                key,
                                value,
                            } => index.put_live(collection, key, value, lsn, hlc),
                            BatchWrite::Delete { collection, key } => {
                                index.delete(collection, key);
                            }
                        }
                    }
                },
            )
            .await?;
        if has_delete && !staged.duplicate {
            self.last_removal_lsn.set(staged.lsn);
        }
        self.outcome(staged, None).await
    }

    /// Creates a collection in this partition; `CollectionExists` if it is there.
    pub async fn create_collection(&self, name: &str) -> Result<u64> {
        validate_collection_name(name).map_err(EngineError::InvalidRequest)?;
        let staged = self
            .stage(
                None,
                &Operation::CreateCollection { name },
                |index| {
                    if index.has_collection(name) {
                        Err(EngineError::CollectionExists(name.to_string()))
                    } else {
                        Ok(())
                    }
                },
                |index, _, _| {
                    index.create_collection(name);
                },
            )
            .await;
        let lsn = match staged {
            Ok(staged) => staged.lsn,
            Err(EngineError::CollectionExists(name)) => {
                // It exists: answer once its creation is durable. (The borrow must end before
                // the wait: the writer task borrows the WAL mutably meanwhile.)
                let staged_up_to = self.wal.borrow().next_lsn() - 1;
                self.wait_durable(staged_up_to).await?;
                return Err(EngineError::CollectionExists(name));
            }
            Err(error) => return Err(error),
        };
        self.wait_durable(lsn).await?;
        Ok(lsn)
    }

    /// Drops a collection and every key in it.
    pub async fn drop_collection(&self, name: &str) -> Result<u64> {
        validate_collection_name(name).map_err(EngineError::InvalidRequest)?;
        let lsn = self
            .stage(
                None,
                &Operation::DropCollection { name },
                |index| Self::require_collection(index, name),
                |index, _, _| {
                    index.drop_collection(name);
                },
            )
            .await?
            .lsn;
        self.last_removal_lsn.set(lsn);
        self.wait_durable(lsn).await?;
        Ok(lsn)
    }

    /// Starts leadership epoch `epoch` (it must be higher than the current one): writes an
    /// `EpochStart` record so the epoch history knows the LSN where it began.
    pub async fn begin_epoch(&self, epoch: u64) -> Result<u64> {
        if epoch <= self.epoch.get() {
            return Err(EngineError::InvalidRequest(format!(
                "epoch {epoch} is not above the current epoch {}",
                self.epoch.get()
            )));
        }
        self.epoch.set(epoch);
        let lsn = self
            .stage(None, &Operation::EpochStart, |_| Ok(()), |_, _, _| {})
            .await?
            .lsn;
        self.wait_durable(lsn).await?;
        Ok(lsn)
    }

    /// Reads up to `max_bytes` of whole durable records at `from`, as they lie on disk.
    pub async fn read_raw(&self, from: WalPosition, max_bytes: usize) -> Result<RawChunk> {
        self.write_journaled(u64::MAX).await?;
        wal::read_raw(&self.wal, from, max_bytes)
            .await
            .map_err(|error| EngineError::io(format!("partition {}: raw read", self.id), error))
    }

    /// Where durable record `lsn` lies, if the WAL still holds it.
    pub async fn position_of(&self, lsn: u64) -> Result<Option<WalPosition>> {
        self.write_journaled(lsn).await?;
        wal::position_of(&self.wal, lsn)
            .await
            .map_err(|error| EngineError::io(format!("partition {}: seek", self.id), error))
    }

    /// Takes a snapshot now (unless one is running) and prunes the WAL it covers. `None` if
    /// one was running, or if a truncation overlapped this one (it is then abandoned).
    pub async fn snapshot(&self) -> Result<Option<SnapshotInfo>> {
        if self.snapshot_running.replace(true) {
            return Ok(None);
        }
        let permit = self.maintenance.acquire().await;
        if self.closed.get() {
            drop(permit);
            self.snapshot_running.set(false);
            return Ok(None);
        }
        let result = self.snapshot_inner().await;
        drop(permit);
        self.snapshot_running.set(false);
        result
    }

    async fn snapshot_inner(&self) -> Result<Option<SnapshotInfo>> {
        // Everything up to the durable LSN is in the index; staged-but-not-durable writes may be
        // too. Replay from the snapshot LSN covers them, but only if they reach the WAL: the
        // snapshot is published only once every LSN staged while it was copied is durable.
        let (snapshot_lsn, epochs, bytes_now) = {
            let wal = self.wal.borrow();
            let lsn = wal.durable_lsn();
            let epochs: Vec<(u64, u64)> = wal
                .epochs()
                .iter()
                .copied()
                .filter(|(_, first)| *first <= lsn)
                .collect();
            (lsn, epochs, wal.durable_bytes_written())
        };
        let io_error = |error| EngineError::io(format!("partition {}: snapshot", self.id), error);
        let unpublished = snapshot::write_snapshot(
            &self.storage,
            self.id,
            snapshot_lsn,
            epochs,
            &self.index,
            || self.wal.borrow().next_lsn() - 1,
        )
        .await
        .map_err(io_error)?;
        self.wait_file_durable(unpublished.info.covers_lsn).await?;
        let info = unpublished.publish(&self.storage).await.map_err(io_error)?;
        let previous = SnapshotFile {
            lsn: self.snapshot_lsn.replace(snapshot_lsn),
            installed: self.snapshot_installed.replace(false),
        };
        self.snapshot_covers_lsn.set(info.covers_lsn);
        self.wal_bytes_at_snapshot.set(bytes_now);
        self.snapshot_bytes.set(info.bytes);
        self.snapshots.set(self.snapshots.get() + 1);
        // A snapshot taken here at the same LSN replaced the previous file under the same name.
        if previous.lsn < snapshot_lsn || previous.installed {
            snapshot::remove(&self.storage, previous)
                .await
                .map_err(io_error)?;
        }
        let prune_lsn = self
            .wal
            .borrow()
            .prune_point(snapshot_lsn, self.replica_hold.get());
        wal::prune_through(&self.wal, prune_lsn)
            .await
            .map_err(io_error)?;
        tracing::debug!(
            partition = self.id,
            snapshot_lsn,
            entries = info.entries,
            "snapshot taken"
        );
        Ok(Some(info))
    }

    fn maybe_snapshot(self: &Rc<Self>) {
        if self.config.snapshot_wal_bytes == 0 || self.snapshot_running.get() {
            return;
        }
        let threshold = self
            .config
            .snapshot_wal_bytes
            .max(self.snapshot_bytes.get() * SNAPSHOT_WAL_TO_SNAPSHOT_RATIO);
        let written = self.wal.borrow().durable_bytes_written() - self.wal_bytes_at_snapshot.get();
        if written < threshold {
            return;
        }
        let partition = self.clone();
        rt::spawn_detached(async move {
            if let Err(error) = partition.snapshot().await {
                tracing::warn!(partition = partition.id, %error, "snapshot failed; will retry");
            }
        });
    }

    /// Removes every record after `lsn` and rebuilds the state (a deposed leader's tail). Needs
    /// `lsn` at or above the snapshot LSN.
    pub async fn truncate_after(self: &Rc<Self>, lsn: u64) -> Result<()> {
        let refuse = |partition: &Self| {
            // The snapshot may reflect records up to its covers LSN: truncating below that
            // would bring them back from the snapshot.
            let covers_lsn = partition
                .snapshot_covers_lsn
                .get()
                .max(partition.snapshot_lsn.get());
            if lsn < covers_lsn {
                return Err(EngineError::TruncateBelowSnapshot {
                    lsn,
                    snapshot_lsn: covers_lsn,
                });
            }
            Ok(())
        };
        // A running snapshot finishes first (and may raise what truncation must refuse).
        let _permit = self.maintenance.acquire().await;
        refuse(self)?;
        let _resume = self.pause_writes_and_drain().await?;
        if let Err(error) = wal::truncate_after(&self.wal, lsn).await {
            // The log is half cut: take no more writes; restart recovers a consistent prefix.
            let reason = format!(
                "partition {}: truncating after LSN {lsn} failed: {error}",
                self.id
            );
            self.poison_shard(reason);
            self.fail_waiters();
            return Err(EngineError::io(
                format!("partition {}: truncate", self.id),
                error,
            ));
        }
        // Rebuild the index from the snapshot and the WAL that is left.
        let mut index = Index::default();
        snapshot::load(
            &self.storage,
            self.id,
            self.newest_snapshot_file(),
            &mut index,
        )
        .await?;
        let from = self.snapshot_lsn.get() + 1;
        let mut position = self.position_of(from).await?;
        while let Some(at) = position {
            let chunk = self.read_raw(at, 4 * 1024 * 1024).await?;
            if chunk.bytes.is_empty() {
                break;
            }
            let mut used = 0;
            while used < chunk.bytes.len() {
                let record =
                    crate::record::RecordRef::validate(&chunk.bytes[used..]).map_err(|error| {
                        EngineError::Corruption {
                            file: self.storage.path(""),
                            offset: at.offset + used as u64,
                            lsn: 0,
                            reason: error.to_string(),
                        }
                    })?;
                index.apply_record(record, ReplaySource::Wal);
                used += record.len();
            }
            position = Some(chunk.next);
        }
        *self.index.borrow_mut() = index;
        // A removal past the cut is gone; absent keys need wait for nothing above `lsn`, which is
        // durable (the LSNs above it will be reused by new writes).
        self.last_removal_lsn
            .set(self.last_removal_lsn.get().min(lsn));
        self.epoch
            .set(self.wal.borrow().last_epoch().max(self.epoch.get()));
        Ok(())
    }

    fn newest_snapshot_file(&self) -> SnapshotFile {
        SnapshotFile {
            lsn: self.snapshot_lsn.get(),
            installed: self.snapshot_installed.get(),
        }
    }

    /// The newest snapshot, if there is one: what a leader offers a follower that needs one.
    pub fn newest_snapshot(&self) -> Option<SnapshotFile> {
        let file = self.newest_snapshot_file();
        (file.lsn > 0).then_some(file)
    }

    /// Up to `max_bytes` of snapshot `file` from `offset`, raw, with the file's size; `None`
    /// once that snapshot is gone (a newer one replaced it: the follower starts over).
    pub async fn read_snapshot(
        &self,
        file: SnapshotFile,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Option<(Vec<u8>, u64)>> {
        snapshot::read_chunk(&self.storage, file, offset, max_bytes)
            .await
            .map_err(|error| {
                EngineError::io(format!("read {:?}", self.storage.path(&file.name())), error)
            })
    }

    /// Starts receiving a leader's snapshot at `lsn` for [`Partition::install_snapshot`].
    pub async fn begin_snapshot_download(&self, lsn: u64) -> Result<SnapshotDownload<S::File>> {
        self.shard.check()?;
        if lsn == 0 {
            return Err(EngineError::InvalidReplication(
                "a snapshot at LSN 0".to_string(),
            ));
        }
        SnapshotDownload::begin(&self.storage, lsn)
            .await
            .map_err(|error| {
                EngineError::io(format!("partition {}: snapshot download", self.id), error)
            })
    }

    /// Replaces this partition's whole state and log with a leader's snapshot, received whole
    /// in `download` (catch-up by snapshot, `docs/replication.md`). The snapshot is checked
    /// before anything changes; a bad one is refused (`InvalidReplication`) and changes
    /// nothing. Afterwards the log continues at the snapshot's LSN + 1 with the snapshot's
    /// epoch history, and the follower pulls from there. Crash-safe: see [`crate::snapshot`].
    ///
    /// Every record of the old log goes, acknowledged or not, so call it only for a snapshot
    /// at or past the follower's acknowledged records, from the leader of the current epoch.
    pub async fn install_snapshot(
        self: &Rc<Self>,
        download: SnapshotDownload<S::File>,
    ) -> Result<SnapshotInfo> {
        let _permit = self.maintenance.acquire().await;
        let _resume = self.pause_writes_and_drain().await?;
        let mut index = Index::default();
        let loaded = snapshot::commit_install(&self.storage, self.id, download, &mut index).await?;
        // Committed: a failure from here leaves the install for recovery to finish, and the
        // shard takes no more writes until then.
        let finished = async {
            wal::reset_after_install(&self.wal, loaded.snapshot_lsn, loaded.epochs.clone())
                .await
                .map_err(|error| {
                    EngineError::io(format!("partition {}: close the old log", self.id), error)
                })?;
            snapshot::finish_install(&self.storage).await
        }
        .await;
        if let Err(error) = finished {
            self.poison_shard(format!(
                "partition {}: installing the snapshot at LSN {} failed: {error}",
                self.id, loaded.snapshot_lsn
            ));
            self.fail_waiters();
            return Err(error);
        }
        *self.index.borrow_mut() = index;
        self.snapshot_lsn.set(loaded.snapshot_lsn);
        self.snapshot_installed.set(true);
        self.snapshot_covers_lsn.set(loaded.covers_lsn);
        self.snapshot_bytes.set(loaded.bytes);
        self.wal_bytes_at_snapshot
            .set(self.wal.borrow().durable_bytes_written());
        // Absent keys are reported only once everything the snapshot may reflect is durable
        // here again.
        self.last_removal_lsn.set(loaded.covers_lsn);
        self.epoch.set(
            loaded
                .epochs
                .last()
                .map_or(0, |(epoch, _)| *epoch)
                .max(self.epoch.get()),
        );
        tracing::info!(
            partition = self.id,
            snapshot_lsn = loaded.snapshot_lsn,
            covers_lsn = loaded.covers_lsn,
            bytes = loaded.bytes,
            "installed the leader's snapshot"
        );
        Ok(SnapshotInfo {
            snapshot_lsn: loaded.snapshot_lsn,
            covers_lsn: loaded.covers_lsn,
            entries: self.index.borrow().len() as u64,
            bytes: loaded.bytes,
        })
    }

    /// Makes new writes wait and lets every staged one become durable, so that nothing is in
    /// flight while a truncation or an install rewrites the log. Writes resume when the guard
    /// drops, whichever way the caller ends. Call with the maintenance permit held.
    async fn pause_writes_and_drain(&self) -> Result<ResumeWritesOnDrop<'_, S>> {
        assert!(
            !self.writes_paused.replace(true),
            "truncations and installs are serialized by the maintenance permit"
        );
        let resume = ResumeWritesOnDrop(self);
        loop {
            let staged_up_to = self.wal.borrow().next_lsn() - 1;
            self.wait_file_durable(staged_up_to).await?;
            if self.file_durable_lsn() == self.wal.borrow().next_lsn() - 1 {
                break;
            }
        }
        // The journal's entries of this partition so far must never be replayed over what
        // the caller does to the log next.
        let journal = self.journal.borrow().clone();
        if let Some(journal) = journal {
            journal.barrier(self.id).await.map_err(|error| {
                EngineError::io(format!("partition {}: journal barrier", self.id), error)
            })?;
        }
        self.journaled_lsn.set(0);
        self.journaled_ranges.borrow_mut().clear();
        // A target past what the caller leaves in the log would have every later round
        // written twice, to the journal and the log, until the log passes it again.
        self.file_flush_target.set(0);
        Ok(resume)
    }

    fn resume_writes(&self) {
        self.writes_paused.set(false);
        for resume in self.resume_waiters.take() {
            let _gone = resume.send(());
        }
    }

    /// Stops the writer task after it has flushed everything staged, and closes the WAL's
    /// files. Afterwards writes answer `ShuttingDown`; the partition must be reopened to be
    /// used again.
    pub async fn close(&self) -> Result<()> {
        if self.closed.get() {
            return Ok(());
        }
        // A snapshot, truncation or install under way finishes first (a snapshot needs the
        // writer to make its cover durable): one left running would go on renaming and
        // removing files in the directory after the partition is closed, under the feet of
        // the next open of it (the model test's seed 17541992645461606402: a background
        // snapshot's rename took the reopened partition's own snapshot file). Held to the
        // end, and a snapshot that waited for it finds the partition closed.
        let _maintenance = self.maintenance.acquire().await;
        // Other tasks may stage more while we wait: stop only once nothing is staged or in
        // flight (or the shard is poisoned), so no flush can still use the files.
        let flushed = loop {
            let staged_up_to = self.wal.borrow().next_lsn() - 1;
            let flushed = self.wait_file_durable(staged_up_to).await;
            if flushed.is_err() || self.file_durable_lsn() == self.wal.borrow().next_lsn() - 1 {
                break flushed;
            }
        };
        self.closed.set(true);
        self.staging_budget.close();
        self.writer_bell.ring();
        let closed = wal::close_files(&self.wal)
            .await
            .map_err(|error| EngineError::io(format!("partition {}: close", self.id), error));
        flushed.and(closed)
    }
}

/// Verifies records copied from a leader ([`Partition::append_replicated`]): whole, valid,
/// decodable log records whose LSNs continue densely from `next_lsn` in epochs never below
/// `last_epoch` or each other. Returns them, or what is wrong with the first bad one.
fn verify_replicated(
    mut bytes: &[u8],
    next_lsn: u64,
    last_epoch: u64,
) -> std::result::Result<Vec<RecordRef<'_>>, String> {
    let mut records = Vec::new();
    let (mut expected, mut epoch, mut offset) = (next_lsn, last_epoch, 0usize);
    while !bytes.is_empty() {
        let record = RecordRef::validate(bytes)
            .map_err(|error| format!("bad record at byte {offset} (LSN {expected}): {error}"))?;
        let meta = record.header.meta();
        let kind = record.header.kind();
        if !matches!(
            kind,
            OperationKind::Put
                | OperationKind::Delete
                | OperationKind::CreateCollection
                | OperationKind::DropCollection
                | OperationKind::Batch
                | OperationKind::EpochStart
        ) {
            return Err(format!(
                "record at byte {offset} (LSN {}) is a {kind:?} record, which no log holds",
                meta.lsn
            ));
        }
        if let Err(error) = record.operation() {
            return Err(format!(
                "record at byte {offset} (LSN {}) has a body that does not decode: {error}",
                meta.lsn
            ));
        }
        if meta.lsn != expected {
            return Err(format!(
                "record at byte {offset} has LSN {}, expected {expected}",
                meta.lsn
            ));
        }
        if meta.epoch < epoch {
            return Err(format!(
                "record at byte {offset} (LSN {}) has epoch {}, below epoch {epoch}",
                meta.lsn, meta.epoch
            ));
        }
        epoch = meta.epoch;
        expected += 1;
        offset += record.len();
        bytes = &bytes[record.len()..];
        records.push(record);
    }
    Ok(records)
}

/// Gives staging room back unless a record was staged in it (a check failed, the partition
/// closed, or the write was dropped while it waited).
struct BudgetTaken<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Drop for BudgetTaken<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

/// Lets paused writes go on when a truncation ends, whichever way it ends.
struct ResumeWritesOnDrop<'a, S: Storage>(&'a Partition<S>);

impl<S: Storage> Drop for ResumeWritesOnDrop<'_, S> {
    fn drop(&mut self) {
        self.0.resume_writes();
    }
}

impl<S: Storage> JournalClient for Partition<S> {
    fn journaled(&self, ranges: &[(u64, u64)]) {
        // Records a truncation or an install is cutting are not the log's any more; nothing of
        // theirs is waited for (the drain made them durable in the log first).
        if self.writes_paused.get() {
            return;
        }
        self.journaled_ranges
            .borrow_mut()
            .extend(ranges.iter().copied());
        let before = self.durable_lsn();
        let durable = self.advance_journaled();
        if durable > before {
            self.complete_waiters(durable);
        }
    }

    fn file_durable_lsn(&self) -> u64 {
        Partition::file_durable_lsn(self)
    }

    fn want_file_flush(&self, lsn: u64) {
        self.file_flush_target
            .set(self.file_flush_target.get().max(lsn));
        self.writer_bell.ring();
    }

    fn journal_failed(&self, reason: String) {
        self.shard.poison(reason);
        self.fail_waiters();
    }
}

/// Replays recovered journal entries into the partitions they belong to (entries of other
/// partitions are left alone): for each partition, the records after its last barrier, in
/// order ([`Partition::replay_journal`]).
pub async fn replay_journal_entries<S: Storage>(
    entries: &[crate::journal::JournalEntry],
    partitions: &std::collections::BTreeMap<PartitionId, Rc<Partition<S>>>,
) -> Result<()> {
    let mut by_partition: std::collections::BTreeMap<PartitionId, Vec<(u64, &[u8])>> =
        std::collections::BTreeMap::new();
    for entry in entries {
        if !partitions.contains_key(&entry.partition) {
            continue;
        }
        let list = by_partition.entry(entry.partition).or_default();
        match &entry.kind {
            crate::journal::EntryKind::Barrier => list.clear(),
            crate::journal::EntryKind::Records { first_lsn, bytes } => {
                list.push((*first_lsn, bytes.as_slice()))
            }
        }
    }
    for (id, list) in by_partition {
        partitions[&id].replay_journal(&list).await?;
    }
    Ok(())
}
