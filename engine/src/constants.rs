//! Every limit of the engine, named in one place, with the relations between them proven at
//! compile time (style.md rule 5). A limit that is not here is a bug.

/// Bytes of the fixed record header (see [`crate::record::RecordHeader`]).
pub const RECORD_HEADER_BYTES: usize = 56;

/// Largest key, in bytes. Checked on every write before anything is staged.
pub const KEY_BYTES_MAX: usize = 4 * 1024;

/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Longest collection name, in bytes (UTF-8).
pub const COLLECTION_NAME_BYTES_MAX: usize = 128;

/// Most operations in one batch record.
pub const BATCH_OPERATIONS_MAX: usize = 4096;

/// Largest record body. A batch must fit in it too.
pub const RECORD_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest whole record (header and body).
pub const RECORD_BYTES_MAX: usize = RECORD_HEADER_BYTES + RECORD_BODY_BYTES_MAX;

/// Largest O_DIRECT alignment the WAL accepts from a file system (`DmaFile::alignment()` is
/// used at run time; this only bounds it).
pub const ALIGNMENT_BYTES_MAX: usize = 4096;

/// Bytes at the start of every segment file that hold the segment header; records begin right
/// after. A whole aligned block, so the header is never rewritten by record writes.
pub const SEGMENT_HEADER_BYTES: usize = 4096;

/// Smallest segment size accepted from configuration: the header plus two of the largest
/// records, so that every record fits in a fresh segment, rounded up to the alignment (the
/// configuration must be a multiple of it).
pub const SEGMENT_BYTES_MIN: u64 = ((SEGMENT_HEADER_BYTES + 2 * RECORD_BYTES_MAX) as u64)
    .div_ceil(ALIGNMENT_BYTES_MAX as u64)
    * ALIGNMENT_BYTES_MAX as u64;

/// Largest segment size accepted from configuration.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// Default segment size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Most bytes of records staged or being flushed per partition (appended, not yet durable). A
/// write that would go past it waits, first come first served, until a flush is durable:
/// memory per partition stays bounded. Room for 256 writes of 64 KiB in flight at once, so
/// such a load forms one group per flush.
pub const STAGED_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Largest single write the group-commit writer issues: as large as the staging area, so a
/// group is one write (a flush of 128 × 64 KiB puts had been an 8 MiB write plus a 0.4 MiB
/// one, each waiting for its own device flush: 1,024–1,323 → 1,224–1,439 MiB/s in alternating
/// A/B runs). The blocks of a group's write may land in any order on a crash; recovery does
/// not depend on that order (docs/storage.md, "Recovery").
pub const GROUP_WRITE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Most flushes of one partition in flight at once. Two: while one flush's write waits for the
/// device, the next one's is on its way (fio here, 24 KiB `O_DSYNC` writes to one file:
/// 7,945/s at queue depth 1, 15,037/s at 2). A flush goes beside another only if it starts on
/// a fresh block and writes nothing the other writes (docs/storage.md, "Two flushes in
/// flight").
pub const FLUSHES_IN_FLIGHT_MAX: usize = 2;

/// Largest flush (record bytes) another may go beside. Two flushes in flight pay off while a
/// flush's time is the device's round trip (100 B puts: a ~40 KB flush); a flush of megabytes
/// is bound by the transfer, and a second one beside it only slows both: sustained 64 KiB puts
/// (9.5 MB flushes, 44% of them beside another) made 2,217-2,246 MiB/s with flushes beside and
/// 2,800-2,938 with this limit, in alternating runs (session 16; docs/storage.md, "Two flushes
/// in flight").
pub const BESIDE_IN_FLIGHT_BYTES_MAX: usize = 1024 * 1024;

/// Most device flushes a shard's shared sync runs at once ([`crate::shared_sync`]). Two, as
/// for a partition's own flushes: the virtio disk here takes two flushes in parallel (fio,
/// `O_DSYNC` writes to one file: 7,945/s at queue depth 1, 15,037/s at 2), so a second round
/// need not wait for the first to end.
pub const SYNC_ROUNDS_IN_FLIGHT_MAX: usize = 2;

/// How far past a small group commit the writer zero-fills a segment. An O_DIRECT write into
/// never-written (fallocated) blocks makes `fdatasync` commit the file system's journal to record
/// the extent conversion, which costs ~3.5x a plain write + sync on ext4 here; zeroing ahead pays
/// that once per this many bytes instead of once per group.
pub const ZERO_AHEAD_BYTES: u64 = 4 * 1024 * 1024;

/// Groups larger than this do not zero ahead: their own size amortizes the journal commit, and
/// zeroing would double their bytes.
pub const ZERO_AHEAD_GROUP_BYTES_MAX: usize = 1024 * 1024;

/// How far apart (in bytes of WAL) the sparse LSN -> offset index keeps samples.
pub const LSN_INDEX_STRIDE_BYTES: u64 = 64 * 1024;

/// Bytes read from a segment at a time during recovery and raw reads.
pub const READ_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Default bytes of pruned WAL segment files a shard keeps for its partitions' new segments
/// to reuse (64 segments of the default size). Reused files have written extents, so syncs
/// commit no extent conversion: sustained 64 KiB puts with snapshots pruning, 1,310-1,361
/// MiB/s keeping 2 segments, 1,858-1,949 MiB/s keeping 64 (docs/storage.md). The disk they
/// hold is what the log held before the prune that freed them; after a burst the shard keeps
/// this much instead of shrinking.
pub const WAL_RECYCLE_BYTES_DEFAULT: u64 = 4 * 1024 * 1024 * 1024;

/// Default amount of WAL written since the last snapshot that triggers a new one.
pub const SNAPSHOT_WAL_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// A snapshot is taken only once the WAL written since the last one is at least this many
/// times that snapshot's size (and at least the configured `snapshot_wal_bytes`). A fixed
/// trigger alone rewrites the whole state every `snapshot_wal_bytes`: with 655 MB of live
/// 64 KiB values and the 256 MiB default, snapshots wrote 2.5 bytes per byte of WAL and
/// took the disk from the writes (235 MiB/s against 650 without snapshots). At 1, snapshots
/// cost at most one byte per WAL byte, as Redis' `auto-aof-rewrite-percentage 100` does, and
/// the WAL kept on disk stays under twice the live data plus the configured trigger.
pub const SNAPSHOT_WAL_TO_SNAPSHOT_RATIO: u64 = 1;

/// Entries a snapshot writer copies out of the index before it yields to other tasks, so that
/// writes keep flowing while a snapshot is taken.
pub const SNAPSHOT_CHUNK_ENTRIES: usize = 1024;

/// Newest client requests remembered per client and partition, so that a retry is answered
/// instead of applied again (see [`crate::requests`]); an older retry is refused as too old.
/// Above the requests one client keeps in flight to one partition.
pub const REQUEST_WINDOW_PER_CLIENT: usize = 128;

/// Clients whose requests a partition remembers; beyond it the least recent is forgotten.
/// With the window: at most 32,768 remembered requests (about 1.5 MB) per partition.
pub const REQUEST_CLIENTS_MAX: usize = 256;

/// Most partitions an engine may have.
pub const PARTITIONS_MAX: u32 = 65_536;

/// Default number of partitions.
pub const PARTITIONS_DEFAULT: u32 = 64;

/// Most requests queued to one shard from other threads before senders wait.
pub const SHARD_QUEUE_DEPTH_DEFAULT: usize = 4096;

/// How long a data shard that ran out of work polls its rings before it sleeps, by default.
///
/// Why poll at all: a shard waiting on its disk sleeps in `io_uring_enter`, and on a virtual
/// machine its idle vCPU halts; the flush's completion then waits for the host to wake the vCPU
/// before the next flush can be submitted, and the disk idles meanwhile. Polling through the
/// gap between two flushes (about 20 µs with 256 puts in flight) keeps the vCPU running.
/// Measured (docs/perf.md, session 11): durable 100 B puts +9-12% at 100 µs, +2-8% at 30 µs,
/// and 100 µs ahead of 50 µs in each of three pairs. The cost is CPU: a shard that gets work more often than
/// this interval never sleeps; 0 turns polling off.
pub const IDLE_SPIN_DEFAULT: std::time::Duration = std::time::Duration::from_micros(100);

/// Longest idle polling a configuration may ask for: beyond a few milliseconds it only burns
/// CPU, since the shard's own tick wakes it every [`SHARD_TICK_MS`] anyway.
pub const IDLE_SPIN_MAX: std::time::Duration = std::time::Duration::from_millis(10);

/// Period of every shard's tick timer (design.md section 10: an executor can park with runnable
/// work; the tick wakes it).
pub const SHARD_TICK_MS: u64 = 50;

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(ALIGNMENT_BYTES_MAX));
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(ALIGNMENT_BYTES_MAX as u64));
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_BYTES_MIN);
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(ALIGNMENT_BYTES_MAX as u64));
const _: () = assert!(SEGMENT_BYTES_MAX >= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(
    KEY_BYTES_MAX + VALUE_BYTES_MAX + COLLECTION_NAME_BYTES_MAX + 64 <= RECORD_BODY_BYTES_MAX
);
const _: () = assert!(GROUP_WRITE_BYTES_MAX >= RECORD_BYTES_MAX + ALIGNMENT_BYTES_MAX);
const _: () = assert!(STAGED_BYTES_MAX >= RECORD_BYTES_MAX);
const _: () = assert!(GROUP_WRITE_BYTES_MAX.is_multiple_of(ALIGNMENT_BYTES_MAX));
const _: () = assert!(ZERO_AHEAD_BYTES.is_multiple_of(ALIGNMENT_BYTES_MAX as u64));
const _: () = assert!(ZERO_AHEAD_GROUP_BYTES_MAX as u64 <= ZERO_AHEAD_BYTES);
const _: () = assert!(READ_CHUNK_BYTES >= RECORD_BYTES_MAX);
const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(COLLECTION_NAME_BYTES_MAX <= u8::MAX as usize);

/// Slot files of a shard journal (engine/src/journal.rs): one takes the chunks while the
/// others wait to be retired, so a partition slow to write its own log does not stop the rest.
pub const JOURNAL_FILES: usize = 4;

/// Bytes of one journal slot file. At 64 partitions and ~70k puts/s of 100 B (chunks of one
/// block, ~5k a second) a slot fills in about 0.4 s, and a partition writes its own log every
/// [`JOURNAL_FILE_FLUSH_BYTES`], about every 0.5 s there, so the journal rarely has to ask;
/// four slots take 32 MiB per shard.
pub const JOURNAL_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Journal chunks written at once: the next round gathers while one is on the disk.
pub const JOURNAL_WRITES_IN_FLIGHT_MAX: usize = 2;

/// A partition in journal mode writes its own log once this many bytes are staged: its
/// flushes then carry many records each instead of one.
pub const JOURNAL_FILE_FLUSH_BYTES: usize = 64 * 1024;

/// Records staged since the last copy go to the journal only up to this many bytes; more go
/// straight to the partition's own log (large writes would otherwise be written twice).
pub const JOURNAL_ENTRY_BYTES_MAX: usize = 16 * 1024;

/// Records go to a journal chunk only while it stays under this many bytes (or half a slot,
/// if less; the rest is left for barriers): a chunk never outgrows a slot, however many
/// partitions copy into it while the disk stalls. Past it, partitions write their own logs.
pub const JOURNAL_CHUNK_BYTES_MAX: usize = 1024 * 1024;

const _: () = assert!(JOURNAL_ENTRY_BYTES_MAX <= JOURNAL_CHUNK_BYTES_MAX);
const _: () = assert!(JOURNAL_CHUNK_BYTES_MAX as u64 <= JOURNAL_FILE_BYTES / 2);
