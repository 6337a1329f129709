//! The embedding API: [`Engine::open`] starts one glommio shard per configured core, opens
//! each shard's partitions, and returns a handle usable from any thread.
//!
//! Two ways in:
//! - [`Engine`] methods (async, runtime-agnostic, `Send`): each request goes to the shard that
//!   owns the key's partition over a bounded channel and the answer comes back on a oneshot.
//!   A cross-thread hop costs tens of microseconds; fine for most servers.
//! - [`Engine::run_on_shard`] runs your closure *on* a shard with a [`LocalShard`], whose
//!   partitions you call directly, with no hop: the way for code that already runs on glommio
//!   or that wants the lowest latency (the benchmark uses it).
//!
//! Placement: partition `p` lives on shard `p % shards`; a key's partition is
//! `crc32c(key) % partitions`. The partition count is fixed when the data directory is created;
//! the shard count may change between runs.

use crate::checksum;
use crate::constants::JOURNAL_FILE_BYTES;
use crate::constants::{
    IDLE_SPIN_DEFAULT, IDLE_SPIN_MAX, PARTITIONS_DEFAULT, PARTITIONS_MAX, SEGMENT_BYTES_DEFAULT,
    SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, SHARD_QUEUE_DEPTH_DEFAULT, SHARD_TICK_MS,
    SNAPSHOT_WAL_BYTES_DEFAULT, WAL_RECYCLE_BYTES_DEFAULT,
};
use crate::error::{EngineError, Result};
use crate::hlc::{Hlc, SystemTime, TimeSource};
use crate::journal::{self, Journal};
use crate::partition::{
    replay_journal_entries, BatchWrite, CasMismatch, Partition, PartitionConfig, PartitionId,
    PartitionStats, ShardState, Versioned,
};
use crate::rt::{self, DmaStorage, ShardThread};
use crate::shared_sync::{SharedSync, SharedSyncStats};
use crate::snapshot::SnapshotInfo;
use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The time source handed to every shard's HLC.
#[derive(Clone)]
pub struct Clock(pub Arc<dyn TimeSource>);

impl Default for Clock {
    fn default() -> Self {
        Self(Arc::new(SystemTime))
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Clock")
    }
}

mod duration_micros {
    //! `Duration` as integer microseconds in TOML.
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(deserializer)?))
    }
}

mod duration_millis {
    //! `Duration` as integer milliseconds in TOML.
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

/// Engine configuration; every field has a default, and it reads from TOML.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
    /// Data shards (one glommio executor each); 0 means one per available core.
    pub shards: usize,
    /// Partitions; fixed when the data directory is created.
    pub partitions: u32,
    /// WAL segment file size in bytes.
    pub segment_bytes: u64,
    /// WAL bytes written since the last snapshot that trigger the next, or the last snapshot's
    /// size if that is larger (so snapshots never cost more than the WAL; 0: never).
    pub snapshot_wal_bytes: u64,
    /// Bytes of pruned WAL segment files each shard keeps for its partitions' new segments to
    /// reuse (0: none; see [`crate::wal::RecycleBudget`]).
    pub wal_recycle_bytes: u64,
    /// Whether a shard's partitions share one device flush per round of WAL flushes where
    /// their writes allow it ([`crate::shared_sync`]); false: each partition syncs its own
    /// log.
    pub shared_sync: bool,
    /// Whether a shard's partitions write small rounds of records through one shard journal
    /// (one durable write per round for all of them) and their own logs later, in larger
    /// flushes ([`crate::journal`]); false: each partition writes its own log every round.
    pub journal: bool,
    /// Pin shard `i` to CPU `i` (only when there are at least as many CPUs as shards).
    pub pin_shards: bool,
    /// Requests queued and in flight per shard from other threads.
    pub shard_queue_depth: usize,
    /// How long `Engine::open` waits for the data directory's lock held by another process
    /// (a process killed a moment ago keeps it until its in-flight I/O ends).
    #[serde(with = "duration_millis")]
    pub lock_wait: Duration,
    /// How long a data shard with nothing to run polls for completions before it sleeps
    /// (TOML: `idle_spin_us`, microseconds; 0: sleep at once). Polling trades idle CPU for a
    /// faster turn between two WAL flushes; see [`IDLE_SPIN_DEFAULT`].
    #[serde(rename = "idle_spin_us", with = "duration_micros")]
    pub idle_spin: Duration,
    /// Time source for the HLCs (not from TOML).
    #[serde(skip)]
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("coregrid-data"),
            shards: 0,
            partitions: PARTITIONS_DEFAULT,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            snapshot_wal_bytes: SNAPSHOT_WAL_BYTES_DEFAULT,
            wal_recycle_bytes: WAL_RECYCLE_BYTES_DEFAULT,
            shared_sync: true,
            journal: true,
            pin_shards: true,
            shard_queue_depth: SHARD_QUEUE_DEPTH_DEFAULT,
            lock_wait: Duration::from_secs(10),
            idle_spin: IDLE_SPIN_DEFAULT,
            clock: Clock::default(),
        }
    }
}

impl EngineConfig {
    /// The default configuration over `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    /// The shard count in effect.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            rt::available_cores()
        } else {
            self.shards
        }
    }

    fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(EngineError::Config(message));
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return fail(format!(
                "partitions must be 1..={PARTITIONS_MAX}, got {}",
                self.partitions
            ));
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes)
            || !self.segment_bytes.is_multiple_of(4096)
        {
            return fail(format!(
                "segment_bytes must be a multiple of 4096 in {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}, got {}",
                self.segment_bytes
            ));
        }
        let shards = self.shard_count();
        if shards == 0 || shards > 1024 {
            return fail(format!("shards must be 1..=1024, got {shards}"));
        }
        if self.shard_queue_depth == 0 {
            return fail("shard_queue_depth must be at least 1".into());
        }
        if self.idle_spin > IDLE_SPIN_MAX {
            return fail(format!(
                "idle_spin_us must be at most {}, got {}",
                IDLE_SPIN_MAX.as_micros(),
                self.idle_spin.as_micros()
            ));
        }
        Ok(())
    }
}

const META_FILE: &str = "coregrid.meta";
/// How often `Engine::open` tries again for a held data-directory lock.
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(20);
const LOCK_FILE: &str = "LOCK";
const DATA_FORMAT: u32 = 1;

/// Creates or checks the data directory's metadata, and takes its lock.
fn prepare_data_dir(config: &EngineConfig) -> Result<std::fs::File> {
    let dir = &config.data_dir;
    let io = |what: &str, error| EngineError::io(format!("{what} {dir:?}"), error);
    std::fs::create_dir_all(dir.join("partitions")).map_err(|error| io("create", error))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|error| io("open lock in", error))?;
    // A process that just died (kill -9) may hold the lock a little longer: its io_uring worker
    // threads keep its files open until their last request ends. Wait for that, up to a limit.
    let deadline = std::time::Instant::now() + config.lock_wait;
    loop {
        // SAFETY: flock on a descriptor we own.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if locked == 0 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(EngineError::IncompatibleDataDir {
                dir: dir.clone(),
                reason: format!(
                    "another process has it open (its LOCK file stayed held for {:?})",
                    config.lock_wait
                ),
            });
        }
        std::thread::sleep(LOCK_RETRY_INTERVAL);
    }
    let meta_path = dir.join(META_FILE);
    let expected = format!(
        "format = {DATA_FORMAT}\npartitions = {}\n",
        config.partitions
    );
    match std::fs::read_to_string(&meta_path) {
        Ok(found) if found == expected => Ok(lock),
        Ok(found) => Err(EngineError::IncompatibleDataDir {
            dir: dir.clone(),
            reason: format!(
                "it was created as {:?}; this configuration asks for {:?}",
                found.trim().replace('\n', ", "),
                expected.trim().replace('\n', ", ")
            ),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join("coregrid.meta.tmp");
            std::fs::write(&tmp, &expected).map_err(|error| io("write meta in", error))?;
            std::fs::File::open(&tmp)
                .and_then(|file| file.sync_all())
                .map_err(|error| io("sync meta in", error))?;
            std::fs::rename(&tmp, &meta_path).map_err(|error| io("rename meta in", error))?;
            std::fs::File::open(dir)
                .and_then(|file| file.sync_all())
                .map_err(|error| io("sync", error))?;
            Ok(lock)
        }
        Err(error) => Err(io("read meta in", error)),
    }
}

/// Directory of a partition.
pub fn partition_dir(data_dir: &Path, partition: PartitionId) -> PathBuf {
    data_dir.join("partitions").join(format!("{partition:05}"))
}

/// The partition a key belongs to.
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    checksum::crc32c(key) % partitions
}

/// A shard's view of itself, for code running on it ([`Engine::run_on_shard`]).
#[derive(Clone)]
pub struct LocalShard {
    state: Rc<ShardState>,
    partitions: Rc<BTreeMap<PartitionId, Rc<Partition<DmaStorage>>>>,
    partition_count: u32,
    shard_count: usize,
    /// This shard's journal directory and the highest journal life found in it at open.
    journal_dir: Rc<PathBuf>,
    journal_file_no: Rc<std::cell::Cell<u64>>,
    /// The shard's journal once started.
    journal: Rc<std::cell::RefCell<Option<Rc<Journal<DmaStorage>>>>>,
}

impl LocalShard {
    /// Creates this shard's journal (emptying what an earlier run left, which open replayed)
    /// and lets its partitions write through it.
    async fn start_journal(&self) -> Result<()> {
        let dir = self.journal_dir.as_path();
        let io = |error| EngineError::io(format!("create the journal in {dir:?}"), error);
        let storage = DmaStorage::open(dir).map_err(io)?;
        let journal = Journal::create(storage, self.journal_file_no.get(), JOURNAL_FILE_BYTES)
            .await
            .map_err(io)?;
        for partition in self.partitions.values() {
            partition.attach_journal(journal.clone());
        }
        *self.journal.borrow_mut() = Some(journal);
        Ok(())
    }

    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.state.shard
    }
    /// Partitions in the engine.
    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }
    /// Shards in the engine.
    pub fn shard_count(&self) -> usize {
        self.shard_count
    }
    /// A partition this shard owns.
    pub fn partition(&self, id: PartitionId) -> Option<&Rc<Partition<DmaStorage>>> {
        self.partitions.get(&id)
    }
    /// The partition owning `key`, if this shard owns it.
    pub fn partition_for_key(&self, key: &[u8]) -> Option<&Rc<Partition<DmaStorage>>> {
        self.partition(partition_for_key(key, self.partition_count))
    }
    /// Every partition this shard owns.
    pub fn partitions(&self) -> impl Iterator<Item = &Rc<Partition<DmaStorage>>> {
        self.partitions.values()
    }
    /// Why this shard stopped taking writes, if it did.
    pub fn poisoned(&self) -> Option<String> {
        self.state.poisoned()
    }
    /// Its partitions' shared device flushes since it started.
    pub fn shared_sync(&self) -> SharedSyncStats {
        self.state.wal.shared_sync.stats()
    }
}

type ShardJob = Box<dyn FnOnce(LocalShard) -> LocalBoxFuture<'static, ()> + Send>;

enum ShardMessage {
    Run(ShardJob),
    Shutdown(oneshot::Sender<Result<()>>),
}

struct Inner {
    config: EngineConfig,
    shard_count: usize,
    senders: Vec<flume::Sender<ShardMessage>>,
    threads: Mutex<Vec<ShardThread<()>>>,
    /// Each shard's thread, by shard (kept when `threads` is taken to join them).
    thread_ids: Vec<std::thread::ThreadId>,
    _lock: std::fs::File,
}

impl Inner {
    /// Asks every shard to flush and stop, then waits for the threads themselves (a reply could
    /// never come from a shard that already died, but its thread always ends). Idempotent. A
    /// shard thread that runs this itself (the last handle dropped by a task on a shard) is not
    /// waited for: it cannot wait for itself, and it stops once it runs the `Shutdown` queued to
    /// it here.
    fn stop_shards(&self) {
        let current = std::thread::current().id();
        for (sender, thread) in self.senders.iter().zip(&self.thread_ids) {
            let (reply, _answer) = oneshot::channel();
            let shutdown = ShardMessage::Shutdown(reply);
            // A shard's own thread cannot wait for room in its own queue; any other shard's
            // thread drains its queue. Either fails at once if the shard has stopped already.
            let _stopped_already = if *thread == current {
                sender.try_send(shutdown).map_err(|_| ())
            } else {
                sender.send(shutdown).map_err(|_| ())
            };
        }
        let threads = self
            .threads
            .lock()
            .map(|mut threads| std::mem::take(&mut *threads))
            .unwrap_or_default();
        for thread in threads {
            if thread.is_current() {
                continue;
            }
            if let Err(error) = thread.join() {
                tracing::error!(%error, "a shard thread ended abnormally");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_shards();
    }
}

/// Health of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHealth {
    /// Shard index.
    pub shard: usize,
    /// Why it stopped taking writes, if it did.
    pub poisoned: Option<String>,
    /// Its partitions' shared device flushes since it started.
    pub shared_sync: SharedSyncStats,
}

/// A handle to a running engine; cheap to clone, usable from any thread. The engine stops when
/// the last handle is dropped (after flushing what was staged).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Opens the engine: checks the runtime, takes the data directory's lock, starts the
    /// shards and recovers every partition. Blocks until all are open or one fails.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        config.validate()?;
        let shard_count = config.shard_count();
        rt::check_runtime(shard_count)?;
        let lock = prepare_data_dir(&config)?;
        let pin = config.pin_shards && shard_count <= rt::available_cores();
        let partition_config = PartitionConfig {
            segment_bytes: config.segment_bytes,
            snapshot_wal_bytes: config.snapshot_wal_bytes,
            commit_batch_fill_limit: None,
        };
        let mut senders = Vec::with_capacity(shard_count);
        let mut threads = Vec::with_capacity(shard_count);
        let mut readies = Vec::with_capacity(shard_count);
        for shard in 0..shard_count {
            let (sender, receiver) = flume::bounded(config.shard_queue_depth);
            let (ready, ready_answer) = oneshot::channel();
            let owned: Vec<PartitionId> = (0..config.partitions)
                .filter(|partition| *partition as usize % shard_count == shard)
                .collect();
            let data_dir = config.data_dir.clone();
            let clock = config.clock.clone();
            let depth = config.shard_queue_depth;
            let partition_count = config.partitions;
            let recycle_bytes = config.wal_recycle_bytes;
            let shared_sync = config.shared_sync;
            let idle_spin = config.idle_spin;
            let thread = rt::spawn_shard(shard, pin.then_some(shard), idle_spin, move || {
                shard_main(ShardSetup {
                    shard,
                    recycle_bytes,
                    shared_sync,
                    shard_count,
                    partition_count,
                    owned,
                    data_dir,
                    clock,
                    partition_config,
                    depth,
                    receiver,
                    ready,
                })
            })?;
            senders.push(sender);
            threads.push(thread);
            readies.push(ready_answer);
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                shard_count,
                senders,
                thread_ids: threads.iter().map(ShardThread::id).collect(),
                threads: Mutex::new(threads),
                _lock: lock,
            }),
        };
        for ready in readies {
            match futures::executor::block_on(ready) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(oneshot::Canceled) => {
                    return Err(EngineError::Runtime("a shard died while opening".into()))
                }
            }
        }
        // Every shard replayed every journal and made it durable in the logs: journals no
        // shard writes go, and each shard starts its own afresh.
        let journal = engine.inner.config.journal;
        remove_old_journals(
            &engine.inner.config.data_dir,
            journal.then_some(shard_count),
        )?;
        if journal {
            for shard in 0..shard_count {
                futures::executor::block_on(
                    engine.run_on_shard(shard, |local| async move { local.start_journal().await }),
                )??;
            }
        }
        Ok(engine)
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }
    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.inner.shard_count
    }
    /// Number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.inner.config.partitions
    }
    /// The partition owning `key`.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_for_key(key, self.partition_count())
    }
    /// The shard owning `partition`.
    pub fn shard_of(&self, partition: PartitionId) -> usize {
        partition as usize % self.inner.shard_count
    }

    /// Runs `job` on shard `shard` with its [`LocalShard`] and returns what it returns.
    pub async fn run_on_shard<F, Fut, T>(&self, shard: usize, job: F) -> Result<T>
    where
        F: FnOnce(LocalShard) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let sender = self
            .inner
            .senders
            .get(shard)
            .ok_or_else(|| EngineError::InvalidRequest(format!("no shard {shard}")))?;
        let (reply, answer) = oneshot::channel();
        let job: ShardJob = Box::new(move |local| {
            Box::pin(async move {
                let _gone = reply.send(job(local).await);
            })
        });
        sender
            .send_async(ShardMessage::Run(job))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        answer.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Runs `job` on `partition` on the shard that owns it and returns its result (a
    /// cross-core hop: for rare operations, never the hot path).
    pub async fn on_partition<F, Fut, T>(&self, partition: PartitionId, job: F) -> Result<T>
    where
        F: FnOnce(Rc<Partition<DmaStorage>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + 'static,
        T: Send + 'static,
    {
        self.run_on_shard(self.shard_of(partition), move |local| {
            let partition = local.partition(partition).cloned();
            async move {
                match partition {
                    Some(partition) => job(partition).await,
                    None => Err(EngineError::InvalidRequest(
                        "partition not on this shard".into(),
                    )),
                }
            }
        })
        .await?
    }

    /// Sets `key` in `collection`; returns the new revision once durable.
    pub async fn put(
        &self,
        collection: &str,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<u64> {
        let (collection, key, value) = (collection.to_string(), key.into(), value.into());
        self.on_partition(self.partition_of(&key), move |partition| async move {
            partition.put(&collection, key, value).await
        })
        .await
    }

    /// Reads `key`: its value, revision and timestamp, or `None`.
    pub async fn get(&self, collection: &str, key: impl Into<Bytes>) -> Result<Option<Versioned>> {
        let (collection, key) = (collection.to_string(), key.into());
        self.on_partition(self.partition_of(&key), move |partition| async move {
            partition.get(&collection, &key).await
        })
        .await
    }

    /// Removes `key`; returns the revision it had, or `None` if it was absent.
    pub async fn delete(&self, collection: &str, key: impl Into<Bytes>) -> Result<Option<u64>> {
        let (collection, key) = (collection.to_string(), key.into());
        self.on_partition(self.partition_of(&key), move |partition| async move {
            partition.delete(&collection, &key).await
        })
        .await
    }

    /// Sets (or, with `None`, deletes) `key` only if its revision is `expected_revision` (0:
    /// absent). Returns the new revision or the mismatch.
    pub async fn compare_and_set(
        &self,
        collection: &str,
        key: impl Into<Bytes>,
        expected_revision: u64,
        value: Option<Bytes>,
    ) -> Result<Result<u64, CasMismatch>> {
        let (collection, key) = (collection.to_string(), key.into());
        self.on_partition(self.partition_of(&key), move |partition| async move {
            partition
                .compare_and_set(&collection, key, expected_revision, value)
                .await
        })
        .await
    }

    /// Applies `writes`: atomically within each partition (one record per partition), in
    /// parallel across partitions. Returns once all are durable; on error some partitions'
    /// parts may have been applied.
    pub async fn batch(&self, writes: Vec<BatchWrite>) -> Result<()> {
        let mut by_partition: BTreeMap<PartitionId, Vec<BatchWrite>> = BTreeMap::new();
        for write in writes {
            by_partition
                .entry(self.partition_of(write.key()))
                .or_default()
                .push(write);
        }
        let parts = by_partition.into_iter().map(|(partition, writes)| {
            self.on_partition(partition, move |partition| async move {
                partition.batch(&writes).await.map(|_| ())
            })
        });
        futures::future::try_join_all(parts).await.map(|_| ())
    }

    /// Creates a collection in every partition. `CollectionExists` if it existed everywhere.
    pub async fn create_collection(&self, name: &str) -> Result<()> {
        let changed = self
            .on_every_partition(name, |partition, name| async move {
                match partition.create_collection(&name).await {
                    Ok(_) => Ok(true),
                    Err(EngineError::CollectionExists(_)) => Ok(false),
                    Err(error) => Err(error),
                }
            })
            .await?;
        changed
            .then_some(())
            .ok_or_else(|| EngineError::CollectionExists(name.to_string()))
    }

    /// Drops a collection (and its keys) in every partition.
    pub async fn drop_collection(&self, name: &str) -> Result<()> {
        let changed = self
            .on_every_partition(name, |partition, name| async move {
                match partition.drop_collection(&name).await {
                    Ok(_) => Ok(true),
                    Err(EngineError::NoSuchCollection(_)) => Ok(false),
                    Err(error) => Err(error),
                }
            })
            .await?;
        changed
            .then_some(())
            .ok_or_else(|| EngineError::NoSuchCollection(name.to_string()))
    }

    /// Runs a collection change on every partition at once; true if any partition changed.
    async fn on_every_partition<F, Fut>(&self, name: &str, change: F) -> Result<bool>
    where
        F: Fn(Rc<Partition<DmaStorage>>, String) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<bool>> + 'static,
    {
        let parts = (0..self.partition_count()).map(|partition| {
            let (name, change) = (name.to_string(), change.clone());
            self.on_partition(partition, move |partition| change(partition, name))
        });
        let changed = futures::future::try_join_all(parts).await?;
        Ok(changed.into_iter().any(|changed| changed))
    }

    /// Snapshots every partition now; returns what each wrote (`None` where one was running).
    pub async fn snapshot_all(&self) -> Result<Vec<Option<SnapshotInfo>>> {
        let parts = (0..self.partition_count()).map(|partition| {
            self.on_partition(
                partition,
                |partition| async move { partition.snapshot().await },
            )
        });
        futures::future::try_join_all(parts).await
    }

    /// Counters of every partition, by partition id.
    pub async fn stats(&self) -> Result<Vec<PartitionStats>> {
        let parts = (0..self.partition_count()).map(|partition| {
            self.on_partition(partition, |partition| async move { Ok(partition.stats()) })
        });
        futures::future::try_join_all(parts).await
    }

    /// Health of every shard.
    pub async fn health(&self) -> Result<Vec<ShardHealth>> {
        let shards = (0..self.shard_count()).map(|shard| {
            self.run_on_shard(shard, |local| async move {
                ShardHealth {
                    shard: local.shard(),
                    poisoned: local.poisoned(),
                    shared_sync: local.shared_sync(),
                }
            })
        });
        futures::future::try_join_all(shards).await
    }

    /// Flushes what is staged and stops every shard, and returns once their threads have
    /// ended. Other handles to the engine stay valid but get [`EngineError::ShuttingDown`].
    /// Dropping the last handle does the same.
    pub fn shutdown(self) {
        self.inner.stop_shards();
    }
}

struct ShardSetup {
    shard: usize,
    recycle_bytes: u64,
    shared_sync: bool,
    shard_count: usize,
    partition_count: u32,
    owned: Vec<PartitionId>,
    data_dir: PathBuf,
    clock: Clock,
    partition_config: PartitionConfig,
    depth: usize,
    receiver: flume::Receiver<ShardMessage>,
    ready: oneshot::Sender<Result<()>>,
}

/// Empties a shard's queue when the shard ends, however it ends (error, shutdown, panic):
/// dropping each queued job drops its reply sender, so its caller gets `ShuttingDown` instead of
/// waiting forever.
struct DrainOnExit(flume::Receiver<ShardMessage>);

impl Drop for DrainOnExit {
    fn drop(&mut self) {
        for message in self.0.drain() {
            drop(message);
        }
    }
}

/// Where the shards' journals live.
fn journal_root(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

/// Shard `shard`'s journal directory.
fn journal_dir(data_dir: &Path, shard: usize) -> PathBuf {
    journal_root(data_dir).join(format!("shard-{shard:03}"))
}

/// Replays what every shard journal in the data directory holds for this shard's partitions
/// (journals of any shard: the shard count may have changed since they were written) and
/// makes it durable in their logs. Returns the highest journal life found in `own`, this
/// shard's journal directory.
async fn replay_journals(
    data_dir: &Path,
    own: &Path,
    partitions: &BTreeMap<PartitionId, Rc<Partition<DmaStorage>>>,
) -> Result<u64> {
    let root = journal_root(data_dir);
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.is_dir())
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(EngineError::io(format!("list {root:?}"), error)),
    };
    dirs.sort();
    let mut own_file_no = 0;
    for dir in dirs {
        let storage = DmaStorage::open(&dir)
            .map_err(|error| EngineError::io(format!("open {dir:?}"), error))?;
        let recovered = journal::recover(&storage)
            .await
            .map_err(|error| EngineError::io(format!("read the journal in {dir:?}"), error))?;
        if dir.file_name() == own.file_name() {
            own_file_no = recovered.last_file_no;
        }
        replay_journal_entries(&recovered.entries, partitions).await?;
    }
    Ok(own_file_no)
}

/// Removes the journals no shard writes any more (every shard replayed them at open): all of
/// them without `keep`, else those of shards `keep..`.
fn remove_old_journals(data_dir: &Path, keep: Option<usize>) -> Result<()> {
    let root = journal_root(data_dir);
    let io = |what: &str, error| EngineError::io(format!("{what} {root:?}"), error);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io("list", error)),
    };
    let kept: Vec<PathBuf> = keep
        .map(|shards| {
            (0..shards)
                .map(|shard| journal_dir(data_dir, shard))
                .collect()
        })
        .unwrap_or_default();
    let mut removed = false;
    for entry in entries {
        let path = entry.map_err(|error| io("list", error))?.path();
        if !kept.contains(&path) {
            std::fs::remove_dir_all(&path).map_err(|error| io("clean", error))?;
            removed = true;
        }
    }
    if removed {
        std::fs::File::open(&root)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| io("sync", error))?;
    }
    Ok(())
}

async fn shard_main(setup: ShardSetup) {
    let receiver = DrainOnExit(setup.receiver.clone());
    let mut state = ShardState::with_recycle_bytes(
        setup.shard,
        Hlc::new(setup.clock.0.clone()),
        setup.recycle_bytes,
    );
    if !setup.shared_sync {
        state.wal.shared_sync = SharedSync::disabled();
    }
    let state = Rc::new(state);
    if let Err(error) = rt::settle_iopoll_support(&setup.data_dir, setup.shard).await {
        let _gone = setup.ready.send(Err(error));
        return;
    }
    let mut partitions = BTreeMap::new();
    for id in setup.owned {
        let dir = partition_dir(&setup.data_dir, id);
        let opened = match DmaStorage::open(&dir) {
            Ok(storage) => {
                Partition::open(id, storage, setup.partition_config, state.clone()).await
            }
            Err(error) => Err(EngineError::io(format!("create {dir:?}"), error)),
        };
        match opened {
            Ok(partition) => {
                partitions.insert(id, partition);
            }
            Err(error) => {
                let _gone = setup.ready.send(Err(error));
                return;
            }
        }
    }
    let journal_dir = journal_dir(&setup.data_dir, setup.shard);
    let journal_file_no = match replay_journals(&setup.data_dir, &journal_dir, &partitions).await {
        Ok(file_no) => file_no,
        Err(error) => {
            let _gone = setup.ready.send(Err(error));
            return;
        }
    };
    let local = LocalShard {
        state,
        partitions: Rc::new(partitions),
        partition_count: setup.partition_count,
        shard_count: setup.shard_count,
        journal_dir: Rc::new(journal_dir),
        journal_file_no: Rc::new(std::cell::Cell::new(journal_file_no)),
        journal: Rc::default(),
    };
    let _gone = setup.ready.send(Ok(()));
    let running = Rc::new(std::cell::Cell::new(true));
    let ticking = running.clone();
    rt::spawn_detached(async move {
        // design.md section 10: a periodic tick keeps the executor from parking with work.
        while ticking.get() {
            rt::sleep(Duration::from_millis(SHARD_TICK_MS)).await;
        }
    });
    let in_flight = Rc::new(rt::Semaphore::new(setup.depth as u64));
    while let Ok(message) = receiver.0.recv_async().await {
        match message {
            ShardMessage::Run(job) => {
                let permit = in_flight.acquire().await;
                let future = job(local.clone());
                rt::spawn_detached(async move {
                    future.await;
                    drop(permit);
                });
            }
            ShardMessage::Shutdown(reply) => {
                let mut result = Ok(());
                for partition in local.partitions() {
                    if let Err(error) = partition.close().await {
                        result = Err(error);
                    }
                }
                let journal = local.journal.borrow_mut().take();
                if let Some(journal) = journal {
                    if let Err(error) = journal.close().await {
                        result = result.and(Err(EngineError::io("close the shard journal", error)));
                    }
                }
                running.set(false);
                let _gone = reply.send(result);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_sets_idle_spin_in_microseconds_and_validation_bounds_it() {
        let config: EngineConfig = toml::from_str("idle_spin_us = 250\nshards = 1\n").unwrap();
        assert_eq!(config.idle_spin, Duration::from_micros(250));
        config.validate().unwrap();
        let zero: EngineConfig = toml::from_str("idle_spin_us = 0\nshards = 1\n").unwrap();
        assert_eq!(zero.idle_spin, Duration::ZERO);
        zero.validate().unwrap();
        let default: EngineConfig = toml::from_str("").unwrap();
        assert_eq!(default.idle_spin, IDLE_SPIN_DEFAULT);
        let too_long: EngineConfig = toml::from_str("idle_spin_us = 10001\nshards = 1\n").unwrap();
        match too_long.validate() {
            Err(EngineError::Config(message)) => {
                assert!(message.contains("idle_spin_us"), "{message}");
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}
