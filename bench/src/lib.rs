//! coregrid's load generator: drives an embedded [`Engine`] from inside its shards and reports
//! throughput, latency percentiles, group-commit statistics, recovery speed and index memory.
//!
//! Model: the caller's thread opens the engine and sends one job per shard with
//! [`Engine::run_on_shard`]. On its shard, a job spawns [`Workload::concurrency`] local tasks;
//! each loops over keys whose partitions that shard owns and calls the partition directly, so
//! no operation crosses a thread (design.md section 10: a cross-core hop costs ~50 µs, more than
//! the write itself). Each shard records latencies into its own hdrhistogram; the histograms
//! are merged when the shards are done. Progress crosses threads only as one relaxed atomic
//! counter per shard, which the caller's thread samples once a second.
//!
//! What "done" means: a write counts when `Partition::put` returns, i.e. after the
//! `fdatasync` covering it (the engine acknowledges nothing earlier). Reads answer from the
//! in-memory index, durable state only.

#![warn(missing_docs)]

pub mod network;

use bytes::Bytes;
use coregrid_engine::partition::PartitionStats;
use coregrid_engine::record::{encoded_len, Operation};
use coregrid_engine::rt::DmaStorage;
use coregrid_engine::{rt, BatchWrite, Engine, EngineConfig, LocalShard, Partition};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of every generated key: `k` and 15 zero-padded decimal digits.
pub const KEY_BYTES: usize = 16;

/// Largest latency the histograms hold (longer ones are clamped to it), in microseconds.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// Writes per batch record when the key space is filled before a run or in memory mode.
pub const FILL_BATCH_WRITES: usize = 1024;

/// Batch records in flight per shard while filling.
pub const FILL_BATCHES_IN_FLIGHT: usize = 8;

/// Longest run accepted, in seconds (a limit on everything, style.md rule 5).
pub const DURATION_SECS_MAX: f64 = 24.0 * 3600.0;

/// Most in-flight operations per shard.
pub const CONCURRENCY_MAX: usize = 65_536;

/// What to run. Every field has a default; it reads from and prints as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Operations in flight per shard (one task each).
    pub concurrency: usize,
    /// Bytes of every written value.
    pub value_bytes: usize,
    /// Fraction of operations that are reads, 0.0 (all writes) to 1.0 (all reads).
    pub read_ratio: f64,
    /// Distinct keys; each shard uses those whose partition it owns.
    pub key_space: u64,
    /// Run for this long (ignored when `ops` is set).
    pub duration_secs: f64,
    /// Run the workload this long before the measured `duration_secs`, unmeasured (0: no
    /// warm-up; not with `ops`, nor over the network). For figures of a steady state, such as
    /// sustained writes into recycled WAL segments, which a fresh directory has none of until
    /// its first snapshots prune the log.
    pub warmup_secs: f64,
    /// Run exactly this many operations in total, split evenly over the shards.
    pub ops: Option<u64>,
    /// Data shards (0: one per available core).
    pub shards: usize,
    /// Partitions of the data directory.
    pub partitions: u32,
    /// Collection written to.
    pub collection: String,
    /// Write every key once (in batches, untimed) before the run; on by default when reads are
    /// in the mix, so that reads find values.
    pub fill: Option<bool>,
    /// WAL bytes between automatic snapshots (`None`: the engine's default; 0: never).
    pub snapshot_wal_bytes: Option<u64>,
    /// WAL segment size (`None`: the engine's default).
    pub segment_bytes: Option<u64>,
    /// Whether a shard's partitions share device flushes (`None`: the engine's default).
    pub shared_sync: Option<bool>,
    /// Whether a shard's partitions write small rounds through a shard journal (`None`: the
    /// engine's default).
    pub journal: Option<bool>,
    /// Seed of the key and operation choices.
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            concurrency: 256,
            value_bytes: 100,
            read_ratio: 0.0,
            key_space: 100_000,
            duration_secs: 10.0,
            warmup_secs: 0.0,
            ops: None,
            shards: 0,
            partitions: coregrid_engine::constants::PARTITIONS_DEFAULT,
            collection: "bench".into(),
            fill: None,
            snapshot_wal_bytes: None,
            segment_bytes: None,
            shared_sync: None,
            journal: None,
            seed: 1,
        }
    }
}

/// A benchmark that could not run or failed midway.
#[derive(Debug)]
#[non_exhaustive]
pub enum BenchError {
    /// The workload is not runnable; nothing was opened.
    Config(String),
    /// The engine refused to open or failed; the data directory may hold a partial run.
    Engine(coregrid_engine::EngineError),
    /// Operations failed during the run (first message given); the run stopped.
    Operations {
        /// How many failed.
        failed: u64,
        /// The first failure.
        first: String,
    },
    /// Reading files or /proc failed.
    Io(std::io::Error),
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(message) => write!(formatter, "invalid workload: {message}"),
            Self::Engine(error) => write!(formatter, "engine: {error}"),
            Self::Operations { failed, first } => {
                write!(formatter, "{failed} operation(s) failed; first: {first}")
            }
            Self::Io(error) => write!(formatter, "i/o: {error}"),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<coregrid_engine::EngineError> for BenchError {
    fn from(error: coregrid_engine::EngineError) -> Self {
        Self::Engine(error)
    }
}

impl From<std::io::Error> for BenchError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, BenchError>;

impl Workload {
    /// How long the timed run lasts, for progress lines: "N ops" or "S s".
    pub fn length_text(&self) -> String {
        match self.ops {
            Some(ops) => format!("{ops} ops"),
            None => format!("{} s", self.duration_secs),
        }
    }

    /// Checks the workload before anything is opened.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(BenchError::Config(message));
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            return fail(format!(
                "concurrency must be 1..={CONCURRENCY_MAX}, got {}",
                self.concurrency
            ));
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return fail(format!(
                "read_ratio must be in 0.0..=1.0, got {}",
                self.read_ratio
            ));
        }
        if self.key_space == 0 || self.key_space > 10u64.pow(15) {
            return fail(format!(
                "key_space must be 1..=10^15, got {}",
                self.key_space
            ));
        }
        if self.value_bytes > coregrid_engine::constants::VALUE_BYTES_MAX {
            return fail(format!(
                "value_bytes must be at most {}, got {}",
                coregrid_engine::constants::VALUE_BYTES_MAX,
                self.value_bytes
            ));
        }
        if self.ops.is_none()
            && !(self.duration_secs > 0.0 && self.duration_secs <= DURATION_SECS_MAX)
        {
            return fail(format!(
                "duration_secs must be in (0, {DURATION_SECS_MAX}], got {}",
                self.duration_secs
            ));
        }
        if self.ops == Some(0) {
            return fail("ops must be at least 1".into());
        }
        if !(0.0..=DURATION_SECS_MAX).contains(&self.warmup_secs) {
            return fail(format!(
                "warmup_secs must be in [0, {DURATION_SECS_MAX}], got {}",
                self.warmup_secs
            ));
        }
        if self.warmup_secs > 0.0 && self.ops.is_some() {
            return fail("a warm-up runs for a time: give a duration, not ops".into());
        }
        Ok(())
    }

    /// The engine configuration this workload opens over `data_dir`.
    pub fn engine_config(&self, data_dir: &Path) -> EngineConfig {
        let mut config = EngineConfig::new(data_dir);
        config.shards = self.shards;
        config.partitions = self.partitions;
        if let Some(bytes) = self.snapshot_wal_bytes {
            config.snapshot_wal_bytes = bytes;
        }
        if let Some(bytes) = self.segment_bytes {
            config.segment_bytes = bytes;
        }
        if let Some(shared) = self.shared_sync {
            config.shared_sync = shared;
        }
        if let Some(journal) = self.journal {
            config.journal = journal;
        }
        config
    }

    fn fills(&self) -> bool {
        self.fill.unwrap_or(self.read_ratio > 0.0)
    }

    /// Bytes of WAL one generated put takes (header and body).
    pub fn record_bytes_per_put(&self) -> usize {
        let key = [0u8; KEY_BYTES];
        let value = vec![0u8; self.value_bytes];
        encoded_len(&Operation::Put {
            collection: &self.collection,
            key: &key,
            value: &value,
        })
    }
}

/// The generated key number `n` (below 10^15, as [`Workload::validate`] requires): `k` and
/// `n` in 15 decimal digits, the bytes of `format!("k{n:015}")`.
pub fn key_for(n: u64) -> Bytes {
    Bytes::copy_from_slice(&key_bytes(n))
}

/// [`key_for`] computed in registers, without allocating.
pub fn key_bytes(mut n: u64) -> [u8; KEY_BYTES] {
    debug_assert!(n < 10u64.pow(15), "key numbers have 15 digits");
    let mut key = [b'0'; KEY_BYTES];
    key[0] = b'k';
    for digit in key[1..].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    key
}

/// Operations done so far, sampled once a second while a run goes on.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Progress {
    /// Seconds since the timed run started.
    pub elapsed_secs: f64,
    /// Operations done by all shards.
    pub ops: u64,
    /// Operations per second over the last interval.
    pub interval_ops_per_sec: f64,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LatencyUs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl LatencyUs {
    pub(crate) fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        // Recorded in nanoseconds; reported in microseconds.
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50: us(histogram.value_at_quantile(0.50)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

/// Group-commit figures from the partitions' counters over the timed run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct GroupCommit {
    /// Flushes (one aligned write and one `fdatasync` each) over the run, all partitions.
    pub flushes: u64,
    /// Flushes per second.
    pub flushes_per_sec: f64,
    /// Write operations per flush (the average group size).
    pub records_per_flush: f64,
    /// WAL record bytes per flush.
    pub wal_bytes_per_flush: f64,
    /// Bytes each flush writes to the device on average: the record bytes plus the rewritten
    /// partial tail block, rounded up to 4 KiB blocks (an estimate: record bytes per flush
    /// rounded up, plus one block when the tail block is partial).
    pub device_bytes_per_flush_estimate: u64,
    /// Snapshots taken during the run.
    pub snapshots: u64,
    /// New WAL segments that reused a pruned segment's file during the run.
    pub segments_reused: u64,
    /// Flushes written while an earlier flush of their partition was in flight.
    pub flushes_beside: u64,
    /// Flushes made durable by a device flush shared with other flushes of the shard.
    pub flushes_shared: u64,
    /// The device flushes those shared flushes waited for, all shards.
    pub shared_sync_rounds: u64,
}

/// The outcome of [`run`].
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The workload as run.
    pub workload: Workload,
    /// Shards actually used.
    pub shards: usize,
    /// Operations done (reads and writes).
    pub ops: u64,
    /// Writes done.
    pub writes: u64,
    /// Reads done.
    pub reads: u64,
    /// Timed run length.
    pub elapsed_secs: f64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Value bytes written (writes × value_bytes).
    pub bytes_written: u64,
    /// Value bytes written per second, in MiB.
    pub mib_per_sec: f64,
    /// WAL record bytes written (headers, keys, values).
    pub wal_bytes_written: u64,
    /// WAL record bytes per second, in MiB.
    pub wal_mib_per_sec: f64,
    /// Latency of every operation, from the call to its durable answer.
    pub latency_us: LatencyUs,
    /// Latency of writes only.
    pub write_latency_us: LatencyUs,
    /// Latency of reads only.
    pub read_latency_us: LatencyUs,
    /// Group commit over the run.
    pub group_commit: GroupCommit,
    /// Seconds spent filling the key space before the run (0 if not filled).
    pub fill_secs: f64,
}

/// What reopening the engine after a run cost.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveryReport {
    /// Seconds `Engine::open` took (all shards, all partitions).
    pub open_secs: f64,
    /// WAL segment files recovery read.
    pub wal_segments: u64,
    /// Bytes of those files: recovery reads each whole file after the latest snapshot,
    /// preallocated zero tail included.
    pub wal_file_bytes: u64,
    /// `wal_file_bytes` per second of `open_secs`, in MiB.
    pub wal_file_mib_per_sec: f64,
    /// Snapshot file bytes present (also read, if any).
    pub snapshot_file_bytes: u64,
    /// Keys found after recovery.
    pub keys: u64,
}

/// What inserting many small keys cost in resident memory.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// Keys inserted.
    pub keys: u64,
    /// Bytes of each key.
    pub key_bytes: usize,
    /// Bytes of each value.
    pub value_bytes: usize,
    /// Shards and partitions used.
    pub shards: usize,
    /// Partitions used.
    pub partitions: u32,
    /// Resident set size after opening the engine and creating the collection.
    pub rss_before_bytes: u64,
    /// Resident set size once every insert is durable.
    pub rss_after_bytes: u64,
    /// `(after - before) / keys`: everything the process holds per key.
    pub rss_bytes_per_key: f64,
    /// `rss_bytes_per_key - key_bytes - value_bytes`: the index's overhead beyond the payload.
    pub overhead_bytes_per_key: f64,
    /// Seconds the inserts took.
    pub insert_secs: f64,
    /// Resident set size delta per key after closing and reopening (index rebuilt by WAL
    /// replay), measured against the same `rss_before_bytes`; `None` if not measured.
    pub rss_bytes_per_key_after_recovery: Option<f64>,
}

/// Per-shard outcome, sent back from the shard thread.
/// What one load-generating job (a shard's tasks, or a network client thread) measured.
pub(crate) struct JobOutcome {
    pub(crate) latency_writes: Histogram<u64>,
    pub(crate) latency_reads: Histogram<u64>,
    pub(crate) started: Instant,
    pub(crate) finished: Instant,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
}

/// Every job's measurements together.
pub(crate) struct Merged {
    pub(crate) latency_writes: Histogram<u64>,
    pub(crate) latency_reads: Histogram<u64>,
    pub(crate) latency_all: Histogram<u64>,
    /// From the first job's start to the last job's end.
    pub(crate) elapsed_secs: f64,
}

impl Merged {
    pub(crate) fn writes(&self) -> u64 {
        self.latency_writes.len()
    }
    pub(crate) fn reads(&self) -> u64 {
        self.latency_reads.len()
    }
}

/// Merges the jobs' histograms and time windows; an error if any operation failed.
pub(crate) fn merge_outcomes(outcomes: Vec<JobOutcome>) -> Result<Merged> {
    let mut latency_writes = new_histogram();
    let mut latency_reads = new_histogram();
    let mut failed = 0;
    let mut first_error = None;
    let mut window: Option<(Instant, Instant)> = None;
    for outcome in outcomes {
        latency_writes
            .add(&outcome.latency_writes)
            .expect("same bounds");
        latency_reads
            .add(&outcome.latency_reads)
            .expect("same bounds");
        failed += outcome.failed;
        first_error = first_error.or(outcome.first_error);
        window = Some(match window {
            None => (outcome.started, outcome.finished),
            Some((from, to)) => (from.min(outcome.started), to.max(outcome.finished)),
        });
    }
    if failed > 0 {
        return Err(BenchError::Operations {
            failed,
            first: first_error.unwrap_or_default(),
        });
    }
    let elapsed_secs = window
        .map_or(0.0, |(from, to)| to.duration_since(from).as_secs_f64())
        .max(1e-9);
    let mut latency_all = latency_writes.clone();
    latency_all.add(&latency_reads).expect("same bounds");
    Ok(Merged {
        latency_writes,
        latency_reads,
        latency_all,
        elapsed_secs,
    })
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX * 1000, 3).expect("valid histogram bounds")
}

/// The keys of `from..to` whose partition this shard owns, computed from their numbers.
///
/// Why computed and not looked up: a put picks a key at random among 100,000, and a table of
/// them (1.6 MB) cost a cache miss on the key's bytes per put, 11-12% of the 100 B put's CPU in
/// session 12's profile (a `Vec<Bytes>` of them cost one more miss for the handle, session 9).
/// That is the benchmark's own cost, not the engine's: a client has the key it writes in cache.
/// A key is 16 digits computed in registers; with several shards, numbers are drawn until one
/// falls in this shard (as many draws as shards, on average).
struct OwnedKeys {
    local: LocalShard,
    from: u64,
    to: u64,
    owns_any: bool,
}

impl OwnedKeys {
    fn new(local: &LocalShard, from: u64, to: u64) -> OwnedKeys {
        let owns_any = (from..to).any(|n| local.partition_for_key(&key_bytes(n)).is_some());
        OwnedKeys {
            local: local.clone(),
            from,
            to,
            owns_any,
        }
    }

    fn is_empty(&self) -> bool {
        !self.owns_any
    }

    /// A key of this shard drawn uniformly at random, and its partition.
    fn pick(&self, rng: &mut impl Rng) -> (Bytes, &Rc<Partition<DmaStorage>>) {
        debug_assert!(!self.is_empty(), "a shard with keys");
        loop {
            let key = key_bytes(rng.gen_range(self.from..self.to));
            if let Some(partition) = self.local.partition_for_key(&key) {
                return (Bytes::copy_from_slice(&key), partition);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = Bytes> + '_ {
        (self.from..self.to)
            .map(key_bytes)
            .filter(|key| self.local.partition_for_key(key).is_some())
            .map(|key| Bytes::copy_from_slice(&key))
    }
}

/// Writes every key in `keys` once, in batch records of [`FILL_BATCH_WRITES`] per partition.
async fn fill_keys(
    local: &LocalShard,
    collection: &str,
    keys: impl Iterator<Item = Bytes>,
    value: &Bytes,
) -> std::result::Result<(), String> {
    let mut by_partition: std::collections::BTreeMap<u32, Vec<BatchWrite>> = Default::default();
    let mut batches = Vec::new();
    for key in keys {
        let partition = local.partition_for_key(&key).expect("owned key").id();
        let writes = by_partition.entry(partition).or_default();
        writes.push(BatchWrite::Put {
            collection: collection.to_string(),
            key: key.clone(),
            value: value.clone(),
        });
        if writes.len() == FILL_BATCH_WRITES {
            batches.push((partition, std::mem::take(writes)));
        }
    }
    batches.extend(
        by_partition
            .into_iter()
            .filter(|(_, writes)| !writes.is_empty()),
    );
    let batches = Rc::new(RefCell::new(batches));
    let mut tasks: Vec<rt::Task<std::result::Result<(), String>>> = Vec::new();
    for _ in 0..FILL_BATCHES_IN_FLIGHT {
        let batches = batches.clone();
        let local = local.clone();
        tasks.push(rt::spawn_local(async move {
            loop {
                let next = batches.borrow_mut().pop();
                let Some((partition, writes)) = next else {
                    return Ok(());
                };
                let partition = local.partition(partition).expect("owned partition").clone();
                partition
                    .batch(&writes)
                    .await
                    .map_err(|error| error.to_string())?;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}

/// How a shard's tasks know when to stop.
#[derive(Clone, Copy)]
enum Stop {
    At(Instant),
    /// Operations left for this shard (shared by its tasks).
    Count,
}

async fn shard_job(
    local: LocalShard,
    workload: Workload,
    shard_ops: Option<u64>,
    warmup: Duration,
    deadline_after: Duration,
    done: Arc<AtomicU64>,
) -> JobOutcome {
    let keys = Rc::new(OwnedKeys::new(&local, 0, workload.key_space));
    let value = Bytes::from(vec![b'v'; workload.value_bytes]);
    let collection: Rc<str> = workload.collection.as_str().into();
    let latency_writes = Rc::new(RefCell::new(new_histogram()));
    let latency_reads = Rc::new(RefCell::new(new_histogram()));
    let failed = Rc::new(Cell::new(0u64));
    let first_error: Rc<RefCell<Option<String>>> = Rc::default();
    let remaining = Rc::new(Cell::new(shard_ops.unwrap_or(0)));
    // Operations that begin before `started` are the warm-up: done, not measured.
    let started = Instant::now() + warmup;
    if keys.is_empty() {
        return JobOutcome {
            latency_writes: new_histogram(),
            latency_reads: new_histogram(),
            started,
            finished: started,
            failed: 0,
            first_error: None,
        };
    }
    let stop = match shard_ops {
        Some(_) => Stop::Count,
        None => Stop::At(started + deadline_after),
    };
    let mut tasks = Vec::with_capacity(workload.concurrency);
    for task_index in 0..workload.concurrency {
        let (keys, value, collection, local) = (
            keys.clone(),
            value.clone(),
            collection.clone(),
            local.clone(),
        );
        let (latency_writes, latency_reads) = (latency_writes.clone(), latency_reads.clone());
        let (failed, first_error, remaining, done) = (
            failed.clone(),
            first_error.clone(),
            remaining.clone(),
            done.clone(),
        );
        let seed = workload.seed ^ ((local.shard() as u64) << 32) ^ task_index as u64;
        let read_ratio = workload.read_ratio;
        tasks.push(rt::spawn_local(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            // One clock read per operation: its end is the next one's start and deadline check
            // (three reads per put were 4% of a durable 100 B put's CPU in this VM, session 10).
            // A latency then also covers picking the key, tens of nanoseconds.
            let mut now = Instant::now();
            loop {
                match stop {
                    Stop::At(deadline) if now >= deadline => return,
                    Stop::Count if remaining.get() == 0 => return,
                    Stop::Count => remaining.set(remaining.get() - 1),
                    Stop::At(_) => {}
                }
                if failed.get() > 0 {
                    return;
                }
                let (key, partition) = keys.pick(&mut rng);
                let is_read = read_ratio > 0.0 && rng.gen_bool(read_ratio);
                let begun = now;
                let outcome = if is_read {
                    partition.get(&collection, &key).await.map(|_| ())
                } else {
                    partition
                        .put(&collection, key, value.clone())
                        .await
                        .map(|_| ())
                };
                now = Instant::now();
                let took_ns =
                    (now.duration_since(begun).as_nanos() as u64).clamp(1, LATENCY_US_MAX * 1000);
                match outcome {
                    Ok(()) => {
                        let histogram = if is_read {
                            &latency_reads
                        } else {
                            &latency_writes
                        };
                        if begun >= started {
                            histogram
                                .borrow_mut()
                                .record(took_ns)
                                .expect("clamped into bounds");
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        failed.set(failed.get() + 1);
                        first_error
                            .borrow_mut()
                            .get_or_insert_with(|| error.to_string());
                        return;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await;
    }
    let finished = Instant::now();
    let latency_writes = latency_writes.borrow().clone();
    let latency_reads = latency_reads.borrow().clone();
    let first_error = first_error.borrow_mut().take();
    JobOutcome {
        latency_writes,
        latency_reads,
        started,
        finished,
        failed: failed.get(),
        first_error,
    }
}

/// Flushes, snapshots, reused segments, flushes beside another and shared flushes, summed
/// over partitions.
fn sum_stats(stats: &[PartitionStats]) -> (u64, u64, u64, u64, u64) {
    stats.iter().fold(
        (0, 0, 0, 0, 0),
        |(flushes, snapshots, reused, beside, shared), stat| {
            (
                flushes + stat.flushes,
                snapshots + stat.snapshots,
                reused + stat.segments_reused,
                beside + stat.flushes_beside,
                shared + stat.flushes_shared,
            )
        },
    )
}

/// Shared device flushes so far, all shards.
fn sync_rounds(engine: &Engine) -> Result<u64> {
    Ok(futures::executor::block_on(engine.health())?
        .iter()
        .map(|shard| shard.shared_sync.rounds)
        .sum())
}

/// Runs the workload's timed phase on an open engine (the collection must exist), calling
/// `progress` about once a second from the calling thread.
pub fn run_on(
    engine: &Engine,
    workload: &Workload,
    mut progress: impl FnMut(Progress),
) -> Result<RunReport> {
    workload.validate()?;
    let shards = engine.shard_count();
    let fill_secs = if workload.fills() {
        let begun = Instant::now();
        let jobs = (0..shards).map(|shard| {
            let (collection, key_space, value_bytes) = (
                workload.collection.clone(),
                workload.key_space,
                workload.value_bytes,
            );
            engine.run_on_shard(shard, move |local| async move {
                let keys = OwnedKeys::new(&local, 0, key_space);
                fill_keys(
                    &local,
                    &collection,
                    keys.iter(),
                    &Bytes::from(vec![b'f'; value_bytes]),
                )
                .await
            })
        });
        for filled in futures::executor::block_on(futures::future::join_all(jobs)) {
            filled?.map_err(|first| BenchError::Operations { failed: 1, first })?;
        }
        begun.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let counters: Vec<Arc<AtomicU64>> = (0..shards).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let warmup = Duration::from_secs_f64(workload.warmup_secs);
    let deadline_after = Duration::from_secs_f64(workload.duration_secs);
    let (sender, receiver) = std::sync::mpsc::channel();
    let started = Instant::now();
    // The engine's counters over the measured run: read as the warm-up ends (they run on, so
    // a flush in flight then counts for the run).
    let mut before = if warmup.is_zero() {
        Some((
            futures::executor::block_on(engine.stats())?,
            sync_rounds(engine)?,
        ))
    } else {
        None
    };
    let driver = {
        let engine = engine.clone();
        let workload = workload.clone();
        let counters = counters.clone();
        std::thread::Builder::new()
            .name("coregrid-bench-driver".into())
            .spawn(move || {
                let jobs = (0..shards).map(|shard| {
                    let shard_ops = workload.ops.map(|ops| {
                        ops / shards as u64 + u64::from((shard as u64) < ops % shards as u64)
                    });
                    let (workload, done) = (workload.clone(), counters[shard].clone());
                    engine.run_on_shard(shard, move |local| {
                        shard_job(local, workload, shard_ops, warmup, deadline_after, done)
                    })
                });
                let outcomes = futures::executor::block_on(futures::future::join_all(jobs));
                let _gone = sender.send(outcomes);
            })?
    };
    let mut last = (0u64, Instant::now());
    let outcomes = loop {
        let wait = match before {
            None => (started + warmup)
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
            Some(_) => Duration::from_secs(1),
        };
        match receiver.recv_timeout(wait) {
            Ok(outcomes) => break outcomes,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                if before.is_none() && started.elapsed() >= warmup =>
            {
                before = Some((
                    futures::executor::block_on(engine.stats())?,
                    sync_rounds(engine)?,
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let ops: u64 = counters
                    .iter()
                    .map(|counter| counter.load(Ordering::Relaxed))
                    .sum();
                let now = Instant::now();
                let interval = now.duration_since(last.1).as_secs_f64();
                progress(Progress {
                    elapsed_secs: started.elapsed().as_secs_f64(),
                    ops,
                    interval_ops_per_sec: (ops - last.0) as f64 / interval.max(1e-9),
                });
                last = (ops, now);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(BenchError::Config(
                    "the benchmark driver thread died".into(),
                ));
            }
        }
    };
    let _joined = driver.join();
    let (stats_before, rounds_before) =
        before.ok_or_else(|| BenchError::Config("the run ended before its warm-up did".into()))?;
    let stats_after = futures::executor::block_on(engine.stats())?;
    let rounds_after = sync_rounds(engine)?;

    let merged = merge_outcomes(
        outcomes
            .into_iter()
            .collect::<std::result::Result<Vec<_>, _>>()?,
    )?;
    let (elapsed_secs, writes, reads) = (merged.elapsed_secs, merged.writes(), merged.reads());
    let (latency_all, latency_writes, latency_reads) = (
        &merged.latency_all,
        &merged.latency_writes,
        &merged.latency_reads,
    );
    let ops = writes + reads;
    let (flushes_before, snapshots_before, reused_before, beside_before, shared_before) =
        sum_stats(&stats_before);
    let (flushes_after, snapshots_after, reused_after, beside_after, shared_after) =
        sum_stats(&stats_after);
    let flushes = flushes_after - flushes_before;
    let record_bytes = workload.record_bytes_per_put() as u64;
    let wal_bytes_written = writes * record_bytes;
    let wal_bytes_per_flush = if flushes == 0 {
        0.0
    } else {
        wal_bytes_written as f64 / flushes as f64
    };
    let block = 4096u64;
    let bytes_written = writes * workload.value_bytes as u64;
    let mib = |bytes: u64| bytes as f64 / elapsed_secs / (1024.0 * 1024.0);
    Ok(RunReport {
        workload: workload.clone(),
        shards,
        ops,
        writes,
        reads,
        elapsed_secs,
        ops_per_sec: ops as f64 / elapsed_secs,
        bytes_written,
        mib_per_sec: mib(bytes_written),
        wal_bytes_written,
        wal_mib_per_sec: mib(wal_bytes_written),
        latency_us: LatencyUs::from_histogram(latency_all),
        write_latency_us: LatencyUs::from_histogram(latency_writes),
        read_latency_us: LatencyUs::from_histogram(latency_reads),
        group_commit: GroupCommit {
            flushes,
            flushes_per_sec: flushes as f64 / elapsed_secs,
            records_per_flush: if flushes == 0 {
                0.0
            } else {
                writes as f64 / flushes as f64
            },
            wal_bytes_per_flush,
            device_bytes_per_flush_estimate: if flushes == 0 {
                0
            } else {
                (wal_bytes_per_flush.ceil() as u64).div_ceil(block) * block + block
            },
            snapshots: snapshots_after - snapshots_before,
            segments_reused: reused_after - reused_before,
            flushes_beside: beside_after - beside_before,
            flushes_shared: shared_after - shared_before,
            shared_sync_rounds: rounds_after - rounds_before,
        },
        fill_secs,
    })
}

/// Opens an engine over `data_dir` with the workload's configuration and creates its
/// collection (an existing one is fine).
pub fn open_engine(workload: &Workload, data_dir: &Path) -> Result<Engine> {
    workload.validate()?;
    let engine = Engine::open(workload.engine_config(data_dir))?;
    match futures::executor::block_on(engine.create_collection(&workload.collection)) {
        Ok(()) | Err(coregrid_engine::EngineError::CollectionExists(_)) => Ok(engine),
        Err(error) => Err(error.into()),
    }
}

/// Opens the engine over `data_dir`, runs the workload and shuts the engine down.
pub fn run(
    workload: &Workload,
    data_dir: &Path,
    progress: impl FnMut(Progress),
) -> Result<RunReport> {
    let engine = open_engine(workload, data_dir)?;
    let report = run_on(&engine, workload, progress);
    engine.shutdown();
    report
}

/// Sizes of the files recovery reads: (`.wal` files, their bytes, snapshot bytes).
pub fn recovery_files(data_dir: &Path) -> Result<(u64, u64, u64)> {
    let mut segments = 0;
    let mut wal_bytes = 0;
    let mut other_bytes = 0;
    for partition in std::fs::read_dir(data_dir.join("partitions"))? {
        let partition = partition?;
        if !partition.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(partition.path())? {
            let file = file?;
            let size = file.metadata()?.len();
            if file
                .file_name()
                .to_string_lossy()
                .ends_with(coregrid_engine::segment::SEGMENT_SUFFIX)
            {
                segments += 1;
                wal_bytes += size;
            } else {
                other_bytes += size;
            }
        }
    }
    Ok((segments, wal_bytes, other_bytes))
}

/// Reopens the (closed) engine over `data_dir` and times recovery. Returns the open engine too.
pub fn measure_recovery(workload: &Workload, data_dir: &Path) -> Result<(RecoveryReport, Engine)> {
    let (wal_segments, wal_file_bytes, snapshot_file_bytes) = recovery_files(data_dir)?;
    let begun = Instant::now();
    let engine = Engine::open(workload.engine_config(data_dir))?;
    let open_secs = begun.elapsed().as_secs_f64();
    let keys = futures::executor::block_on(engine.stats())?
        .iter()
        .map(|stats| stats.keys)
        .sum();
    Ok((
        RecoveryReport {
            open_secs,
            wal_segments,
            wal_file_bytes,
            wal_file_mib_per_sec: wal_file_bytes as f64 / open_secs.max(1e-9) / (1024.0 * 1024.0),
            snapshot_file_bytes,
            keys,
        },
        engine,
    ))
}

/// This process's resident set size, from `/proc/self/statm`.
pub fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| BenchError::Config(format!("unexpected /proc/self/statm: {statm:?}")))?;
    // SAFETY: sysconf has no preconditions.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * u64::try_from(page_bytes).unwrap_or(4096))
}

/// Memory mode: inserts `keys` keys of [`KEY_BYTES`] bytes with `value_bytes`-byte values (in
/// durable batch records), and reports the resident-memory delta per key. With `recover`, also
/// closes, reopens and measures again after WAL replay rebuilt the index.
pub fn measure_memory(
    workload: &Workload,
    data_dir: &Path,
    keys: u64,
    recover: bool,
) -> Result<MemoryReport> {
    let mut workload = workload.clone();
    workload.key_space = keys;
    workload.validate()?;
    let engine = open_engine(&workload, data_dir)?;
    let rss_before_bytes = rss_bytes()?;
    let begun = Instant::now();
    let shards = engine.shard_count();
    let jobs = (0..shards).map(|shard| {
        let (collection, value_bytes) = (workload.collection.clone(), workload.value_bytes);
        engine.run_on_shard(shard, move |local| async move {
            // Filled in slices so the batches built from the keys never hold all at once.
            let value = Bytes::from(vec![b'm'; value_bytes]);
            let slice = 1u64 << 20;
            let mut from = 0;
            while from < keys {
                let to = (from + slice).min(keys);
                let owned = OwnedKeys::new(&local, from, to);
                fill_keys(&local, &collection, owned.iter(), &value).await?;
                from = to;
            }
            Ok::<(), String>(())
        })
    });
    for filled in futures::executor::block_on(futures::future::join_all(jobs)) {
        filled?.map_err(|first| BenchError::Operations { failed: 1, first })?;
    }
    let insert_secs = begun.elapsed().as_secs_f64();
    let rss_after_bytes = rss_bytes()?;
    let stored: u64 = futures::executor::block_on(engine.stats())?
        .iter()
        .map(|stats| stats.keys)
        .sum();
    if stored != keys {
        return Err(BenchError::Config(format!(
            "inserted {keys} keys but the engine holds {stored}"
        )));
    }
    let rss_bytes_per_key = rss_after_bytes.saturating_sub(rss_before_bytes) as f64 / keys as f64;
    let partitions = engine.partition_count();
    engine.shutdown();
    let rss_bytes_per_key_after_recovery = if recover {
        let engine = Engine::open(workload.engine_config(data_dir))?;
        let after = rss_bytes()?;
        engine.shutdown();
        Some(after.saturating_sub(rss_before_bytes) as f64 / keys as f64)
    } else {
        None
    };
    Ok(MemoryReport {
        keys,
        key_bytes: KEY_BYTES,
        value_bytes: workload.value_bytes,
        shards,
        partitions,
        rss_before_bytes,
        rss_after_bytes,
        rss_bytes_per_key,
        overhead_bytes_per_key: rss_bytes_per_key - (KEY_BYTES + workload.value_bytes) as f64,
        insert_secs,
        rss_bytes_per_key_after_recovery,
    })
}

/// A data directory for a run: the given one, or a fresh temporary one removed on drop unless
/// kept.
pub struct DataDir {
    path: PathBuf,
    temporary: Option<tempfile::TempDir>,
}

impl DataDir {
    /// `dir` if given (created if missing), else a fresh directory under `parent` (or the
    /// system temporary directory).
    pub fn new(dir: Option<&Path>, parent: Option<&Path>) -> Result<Self> {
        match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                Ok(Self {
                    path: dir.to_path_buf(),
                    temporary: None,
                })
            }
            None => {
                let temporary = match parent {
                    Some(parent) => tempfile::Builder::new()
                        .prefix("coregrid-bench-")
                        .tempdir_in(parent)?,
                    None => tempfile::Builder::new()
                        .prefix("coregrid-bench-")
                        .tempdir()?,
                };
                Ok(Self {
                    path: temporary.path().to_path_buf(),
                    temporary: Some(temporary),
                })
            }
        }
    }

    /// Where the data lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps a temporary directory after drop; returns its path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(temporary) = self.temporary.take() {
            let _kept = temporary.keep();
        }
        self.path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computed_keys_are_the_formatted_ones() {
        for n in [0, 1, 9, 10, 12_345, 99_999, 10u64.pow(15) - 1] {
            assert_eq!(&key_bytes(n)[..], format!("k{n:015}").as_bytes());
            assert_eq!(key_for(n), format!("k{n:015}").as_bytes());
        }
    }

    /// A small workload on two shards (pinned only where the machine has two cores).
    fn two_shards(key_space: u64, ops: u64) -> Workload {
        Workload {
            concurrency: 8,
            value_bytes: 10,
            key_space,
            ops: Some(ops),
            shards: 2,
            partitions: 4,
            ..Workload::default()
        }
    }

    /// A filled run writes every key of the key space once, each on the shard that owns it,
    /// then its counted puts draw keys among those (computed from their numbers, not looked
    /// up); reopened, the engine holds every key with the fill's or a put's value.
    #[test]
    fn a_filled_run_writes_every_key_on_its_shard() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let workload = Workload {
            fill: Some(true),
            ..two_shards(300, 600)
        };
        let report = run(&workload, dir.path(), |_| {}).expect("the run");
        assert_eq!(report.writes, 600);
        let engine = open_engine(&workload, dir.path()).expect("reopened");
        for n in 0..workload.key_space {
            let found = futures::executor::block_on(engine.get(&workload.collection, key_for(n)))
                .expect("a get");
            let value = found.map(|versioned| versioned.value);
            // Written by the fill or, later, by a counted put.
            assert!(
                [b'f', b'v']
                    .iter()
                    .any(|&byte| value.as_deref() == Some(&[byte; 10][..])),
                "key {n}: {value:?}"
            );
        }
        engine.shutdown();
    }

    /// A warm-up's puts are made but not measured: the partitions' logs hold more records
    /// beyond the measured writes than a run without a warm-up leaves (the collection's
    /// creation records), and the group-commit counters cover the measured run only.
    #[test]
    fn a_warm_up_is_done_but_not_measured() {
        // (records in the logs beyond the measured writes, flushes since open, the report)
        let run_with = |warmup_secs: f64| {
            let dir = tempfile::tempdir().expect("temporary directory");
            let workload = Workload {
                ops: None,
                warmup_secs,
                duration_secs: 0.3,
                ..two_shards(1000, 0)
            };
            let engine = open_engine(&workload, dir.path()).expect("opened");
            let report = run_on(&engine, &workload, |_| {}).expect("the run");
            let stats = futures::executor::block_on(engine.stats()).expect("stats");
            engine.shutdown();
            let records: u64 = stats.iter().map(|stat| stat.durable_lsn).sum();
            let flushes: u64 = stats.iter().map(|stat| stat.flushes).sum();
            assert!(report.writes > 0, "the measured run wrote");
            (records - report.writes, flushes, report)
        };
        let (unmeasured_without, flushes, report) = run_with(0.0);
        let unmeasured_flushes_without = flushes - report.group_commit.flushes;
        let (unmeasured_with, flushes, report) = run_with(0.3);
        assert!(
            unmeasured_with > unmeasured_without,
            "{unmeasured_with} records beyond the measured writes against \
             {unmeasured_without} without a warm-up: the warm-up wrote none"
        );
        assert!(flushes - report.group_commit.flushes > unmeasured_flushes_without);
    }

    #[test]
    fn a_warm_up_needs_a_duration() {
        let workload = Workload {
            warmup_secs: 1.0,
            ..two_shards(10, 10)
        };
        assert!(matches!(workload.validate(), Err(BenchError::Config(_))));
    }

    /// A shard that owns no key of the key space (one key, two shards) ends its part at once
    /// instead of drawing keys forever; the run is waited for with a deadline, so that a shard
    /// that spins fails the test instead of hanging it.
    #[test]
    fn a_shard_without_keys_does_not_spin() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let workload = two_shards(1, 40);
        let path = dir.path().to_path_buf();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(run(&workload, &path, |_| {}).map(|report| report.writes));
        });
        let writes = receiver
            .recv_timeout(Duration::from_secs(120))
            .expect("the run ends")
            .expect("the run");
        assert!(writes <= 40);
    }
}
