//! Snapshots: a partition's whole state at an LSN, so restart replays only the WAL after it and
//! older segments can be deleted.
//!
//! A snapshot is *fuzzy*: it is taken while writes go on. It records `snapshot_lsn` (every
//! record up to it is reflected), then copies the index in key order a chunk at a time,
//! yielding between chunks. Entries copied later may already carry newer writes; because
//! applying records is absolute and idempotent (see [`crate::index`]), replaying the WAL from
//! `snapshot_lsn + 1` over it yields exactly the state at the end of the log.
//!
//! File format: the record format of the WAL, in a file `<snapshot_lsn>.snap`: a `SnapshotBegin`
//! record (partition, LSN, epoch history), a `CreateCollection` record per collection, a `Put`
//! record per key (its LSN field is the key's revision), and a `SnapshotEnd` record with the
//! count. It is written to `.snap.tmp`, synced, renamed and the directory synced: a `.snap`
//! file is always whole, so a bad one is corruption, never a torn write.
//!
//! Being fuzzy, a snapshot may also reflect records staged after `snapshot_lsn` while it was
//! copied, up to its `covers_lsn` (the last LSN staged when copying ended; stored as the LSN
//! field of the `SnapshotEnd` record). Two rules follow: a snapshot is published (renamed into
//! place) only once `covers_lsn` is durable, or a crash would let it show writes the WAL never
//! got; and the WAL is never truncated below `covers_lsn`, or the snapshot would bring back
//! writes from the truncated tail.
//!
//! **Installed snapshots** (catch-up by snapshot, `docs/replication.md`). A follower too far
//! behind its leader receives the leader's newest snapshot file byte for byte
//! ([`SnapshotDownload`]) and installs it in place of its whole log. The install moves through
//! three names, each switch a rename followed by a directory sync, so a crash anywhere leaves
//! either the old state or the new one, never a mix:
//! 1. `<lsn>.snap.tmp` while it arrives; synced, then verified by loading it. A crash: recovery
//!    removes it, the old log and snapshot stand (every record the follower acknowledged stays).
//! 2. `<lsn>.snap.install`: the commit point. Recovery that finds it finishes the install:
//!    removes every WAL segment and every other snapshot (the old log must never be replayed
//!    over the new snapshot: its records after the snapshot's LSN may be a deposed leader's),
//!    then renames it to
//! 3. `<lsn>.snap.installed`, loaded like a `.snap`. The WAL after it holds only records the
//!    follower appended since, from `lsn + 1`. Its `covers_lsn` may be ahead of them (the
//!    leader's snapshot was fuzzy): the leader had those records durable, and the follower
//!    pulls them again from `lsn + 1`, so the publication rule's check at open does not apply.

use crate::constants::{READ_CHUNK_BYTES, RECORD_HEADER_BYTES, SNAPSHOT_CHUNK_ENTRIES};
use crate::error::{EngineError, Result};
use crate::index::{Index, ReplaySource};
use crate::io::{Storage, StorageFile};
use crate::record::{encode_record, Operation, RecordHeader, RecordMeta, RecordRef};
use crate::rt;
use std::cell::RefCell;
use std::io;

/// File name suffix of snapshots.
pub const SNAPSHOT_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";
/// An installed snapshot whose install is committed but not finished (see the module doc).
const INSTALL_SUFFIX: &str = ".snap.install";
/// An installed snapshot.
const INSTALLED_SUFFIX: &str = ".snap.installed";
/// Bytes buffered before a snapshot write is issued.
const SNAPSHOT_WRITE_BYTES: usize = 1024 * 1024;

/// Client windows per `ClientRequests` record: 64 windows of at most 128 requests stay far
/// below the record body limit.
const CLIENT_REQUEST_WINDOWS_PER_RECORD: usize = 64;
const _: () = assert!(
    CLIENT_REQUEST_WINDOWS_PER_RECORD * (29 + 24 * crate::constants::REQUEST_WINDOW_PER_CLIENT)
        < crate::constants::RECORD_BODY_BYTES_MAX
);
const BLOCK: usize = crate::constants::ALIGNMENT_BYTES_MAX;

/// Which snapshot file: its LSN, and whether it was installed from a leader or taken here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotFile {
    /// Records up to this LSN are reflected (0: none).
    pub lsn: u64,
    /// Installed from a leader's snapshot (see the module doc).
    pub installed: bool,
}

impl SnapshotFile {
    /// The file's name.
    pub fn name(self) -> String {
        if self.installed {
            format!("{:020}{INSTALLED_SUFFIX}", self.lsn)
        } else {
            snapshot_name(self.lsn)
        }
    }
}

/// File name of the snapshot at `lsn` taken here.
pub fn snapshot_name(lsn: u64) -> String {
    format!("{lsn:020}{SNAPSHOT_SUFFIX}")
}

fn parse_lsn_with_suffix(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn parse_snapshot_file(name: &str) -> Option<SnapshotFile> {
    if let Some(lsn) = parse_lsn_with_suffix(name, SNAPSHOT_SUFFIX) {
        return Some(SnapshotFile {
            lsn,
            installed: false,
        });
    }
    parse_lsn_with_suffix(name, INSTALLED_SUFFIX).map(|lsn| SnapshotFile {
        lsn,
        installed: true,
    })
}

/// What a written snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Records up to this LSN are reflected.
    pub snapshot_lsn: u64,
    /// Records after this LSN are not reflected (records between the two may be).
    pub covers_lsn: u64,
    /// Entries (keys) written.
    pub entries: u64,
    /// File size in bytes.
    pub bytes: u64,
}

/// A snapshot written and synced under its temporary name, not yet the one recovery loads.
#[derive(Debug)]
#[must_use = "an unpublished snapshot is never loaded"]
pub struct UnpublishedSnapshot {
    tmp: String,
    /// What it holds.
    pub info: SnapshotInfo,
}

impl UnpublishedSnapshot {
    /// Renames the snapshot into place and syncs the directory: from then on recovery loads
    /// it. Call only once `info.covers_lsn` is durable in the WAL.
    pub async fn publish<S: Storage>(self, storage: &S) -> io::Result<SnapshotInfo> {
        storage
            .rename(&self.tmp, &snapshot_name(self.info.snapshot_lsn))
            .await?;
        storage.sync_dir().await?;
        Ok(self.info)
    }
}

/// Writes a snapshot of `index` at `snapshot_lsn` to a temporary file, yielding between chunks
/// so the shard keeps serving, and syncs it. `staged_lsn` tells the last LSN staged (applied to
/// the index) so far; it is read when copying ends and becomes the snapshot's `covers_lsn`.
/// The caller publishes it once that LSN is durable.
pub async fn write_snapshot<S: Storage>(
    storage: &S,
    partition: u32,
    snapshot_lsn: u64,
    epochs: Vec<(u64, u64)>,
    index: &RefCell<Index>,
    staged_lsn: impl Fn() -> u64,
) -> io::Result<UnpublishedSnapshot> {
    let tmp = tmp_name(snapshot_lsn);
    let file = storage.create(&tmp, 0).await?;
    let mut writer = SnapshotWriter {
        file,
        buffer: Vec::with_capacity(2 * SNAPSHOT_WRITE_BYTES),
        written: 0,
        records: 0,
    };
    let meta = |lsn| RecordMeta {
        lsn,
        epoch: 0,
        hlc: 0,
        durable_lsn: 0,
    };
    writer.push(
        meta(snapshot_lsn),
        &Operation::SnapshotBegin {
            partition,
            snapshot_lsn,
            epochs,
        },
    );
    let collections = index.borrow().collection_names();
    for name in &collections {
        writer.push(meta(snapshot_lsn), &Operation::CreateCollection { name });
    }
    // The applied client requests, copied now (at most REQUEST_CLIENTS_MAX windows), in
    // records of at most CLIENT_REQUEST_WINDOWS_PER_RECORD clients.
    let windows: Vec<_> = index
        .borrow()
        .requests()
        .clients()
        .map(|(client, window)| (*client, window.clone()))
        .collect();
    for chunk in windows.chunks(CLIENT_REQUEST_WINDOWS_PER_RECORD) {
        writer.push(
            meta(snapshot_lsn),
            &Operation::ClientRequests(chunk.to_vec()),
        );
        writer.write_full_blocks().await?;
    }
    let mut entries = 0u64;
    let mut cursor = None;
    loop {
        let (chunk, next) = index
            .borrow()
            .entries_after(cursor.as_ref(), SNAPSHOT_CHUNK_ENTRIES);
        if chunk.is_empty() {
            break;
        }
        cursor = next;
        for (collection, key, entry) in &chunk {
            writer.push(
                RecordMeta {
                    lsn: entry.revision,
                    epoch: 0,
                    hlc: entry.hlc,
                    durable_lsn: 0,
                },
                &Operation::Put {
                    collection,
                    key,
                    value: entry.value.as_slice(),
                },
            );
            entries += 1;
            // Out in pieces of about SNAPSHOT_WRITE_BYTES: a chunk of large values can be tens of
            // MB, and one write (and copy) of it held the shard and the disk from the WAL's
            // writes for that long (p99 450 ms with 64 KiB values). Each write's wait lets
            // them run.
            writer.write_full_blocks().await?;
        }
        rt::yield_if_needed().await;
    }
    let records = writer.records;
    let covers_lsn = staged_lsn();
    assert!(covers_lsn >= snapshot_lsn, "the snapshot LSN was staged");
    writer.push(meta(covers_lsn), &Operation::SnapshotEnd { records });
    let bytes = writer.finish().await?;
    Ok(UnpublishedSnapshot {
        tmp,
        info: SnapshotInfo {
            snapshot_lsn,
            covers_lsn,
            entries,
            bytes,
        },
    })
}

struct SnapshotWriter<F: StorageFile> {
    file: F,
    buffer: Vec<u8>,
    written: u64,
    records: u64,
}

impl<F: StorageFile> SnapshotWriter<F> {
    fn push(&mut self, meta: RecordMeta, operation: &Operation<'_>) {
        encode_record(&mut self.buffer, meta, operation);
        self.records += 1;
    }

    async fn write_full_blocks(&mut self) -> io::Result<()> {
        if self.buffer.len() < SNAPSHOT_WRITE_BYTES {
            return Ok(());
        }
        let full = self.buffer.len() - self.buffer.len() % BLOCK;
        let mut out = self.file.alloc_buffer(full);
        out.copy_from_slice(&self.buffer[..full]);
        self.file.write_at(out, self.written).await?;
        self.written += full as u64;
        self.buffer.drain(..full);
        Ok(())
    }

    async fn finish(self) -> io::Result<u64> {
        let len = self.buffer.len().div_ceil(BLOCK) * BLOCK;
        if len > 0 {
            let mut out = self.file.alloc_buffer(len);
            out[..self.buffer.len()].copy_from_slice(&self.buffer);
            out[self.buffer.len()..].fill(0);
            self.file.write_at(out, self.written).await?;
        }
        let total = self.written + self.buffer.len() as u64;
        self.file.sync().await?;
        self.file.close().await?;
        Ok(total)
    }
}

/// The snapshot recovery loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedSnapshot {
    /// Records up to this LSN are reflected (0: no snapshot).
    pub snapshot_lsn: u64,
    /// Records after this LSN are not reflected.
    pub covers_lsn: u64,
    /// Epoch history at `snapshot_lsn`.
    pub epochs: Vec<(u64, u64)>,
    /// File size in bytes.
    pub bytes: u64,
    /// Installed from a leader's snapshot.
    pub installed: bool,
}

/// Loads the newest snapshot into `index`. Returns its LSNs and epoch history, or the default
/// (all zero) if there is none. Leftover temporary files are removed; a bad `.snap` is
/// corruption.
pub async fn load_latest<S: Storage>(
    storage: &S,
    partition: u32,
    index: &mut Index,
) -> Result<LoadedSnapshot> {
    let names = storage
        .list()
        .map_err(|error| EngineError::io(format!("list {:?}", storage.path("")), error))?;
    for name in names.iter().filter(|name| name.ends_with(TMP_SUFFIX)) {
        storage
            .remove(name)
            .await
            .map_err(|error| EngineError::io(format!("remove {:?}", storage.path(name)), error))?;
    }
    // The newest; at the same LSN, the one taken here (it was taken after the install).
    let Some(newest) = names
        .iter()
        .filter_map(|name| parse_snapshot_file(name))
        .max_by_key(|file| (file.lsn, !file.installed))
    else {
        return Ok(LoadedSnapshot::default());
    };
    let loaded = load(storage, partition, newest, index).await?;
    // Older snapshots left by a crash between publishing and removing; only once the newest
    // loaded, so a bad newest one leaves the older ones for a repair.
    for older in names
        .iter()
        .filter(|name| parse_snapshot_file(name).is_some_and(|file| file != newest))
    {
        storage
            .remove(older)
            .await
            .map_err(|error| EngineError::io(format!("remove {:?}", storage.path(older)), error))?;
    }
    Ok(loaded)
}

/// Loads the snapshot `file` into `index` (nothing for LSN 0). Used at open through
/// [`load_latest`], and when a truncation rebuilds the state from the snapshot it knows, without
/// listing the directory.
pub async fn load<S: Storage>(
    storage: &S,
    partition: u32,
    file: SnapshotFile,
    index: &mut Index,
) -> Result<LoadedSnapshot> {
    if file.lsn == 0 {
        return Ok(LoadedSnapshot::default());
    }
    let mut loaded = load_named(storage, partition, file.lsn, &file.name(), index).await?;
    loaded.installed = file.installed;
    Ok(loaded)
}

/// Loads the snapshot at `lsn` from the file `name`, checking everything in it.
async fn load_named<S: Storage>(
    storage: &S,
    partition: u32,
    lsn: u64,
    name: &str,
    index: &mut Index,
) -> Result<LoadedSnapshot> {
    let path = storage.path(name);
    let corrupt = |offset: u64, reason: String| EngineError::Corruption {
        file: path.clone(),
        offset,
        lsn,
        reason,
    };
    let file = storage
        .open(name)
        .await
        .map_err(|error| EngineError::io(format!("open {path:?}"), error))?;
    let size = file
        .size()
        .await
        .map_err(|error| EngineError::io(format!("stat {path:?}"), error))?;
    let mut buffer: Vec<u8> = Vec::new();
    let mut buffer_offset = 0u64; // file offset of buffer[0]
    let mut read_offset = 0u64;
    let mut begin: Option<Vec<(u64, u64)>> = None;
    let mut records = 0u64;
    loop {
        // Parse every whole record in the buffer.
        let mut used = 0usize;
        while buffer.len() - used >= RECORD_HEADER_BYTES {
            let at = buffer_offset + used as u64;
            let header = match RecordHeader::validate(&buffer[used..]) {
                Ok(header) => header,
                Err(error) => return Err(corrupt(at, error.to_string())),
            };
            if buffer.len() - used < header.record_len() {
                break;
            }
            let record = RecordRef::validate(&buffer[used..])
                .map_err(|error| corrupt(at, error.to_string()))?;
            let operation = record
                .operation()
                .map_err(|error| corrupt(at, error.to_string()))?;
            match (&begin, operation) {
                (
                    None,
                    Operation::SnapshotBegin {
                        partition: owner,
                        snapshot_lsn,
                        epochs,
                    },
                ) => {
                    if owner != partition || snapshot_lsn != lsn {
                        return Err(corrupt(
                            at,
                            format!("snapshot of partition {owner} at LSN {snapshot_lsn}"),
                        ));
                    }
                    begin = Some(epochs);
                }
                (None, _) => return Err(corrupt(at, "does not start with SnapshotBegin".into())),
                (Some(epochs), Operation::SnapshotEnd { records: count }) => {
                    if count != records {
                        return Err(corrupt(
                            at,
                            format!("SnapshotEnd counts {count} records, found {records}"),
                        ));
                    }
                    let covers_lsn = record.header.lsn();
                    if covers_lsn < lsn {
                        return Err(corrupt(
                            at,
                            format!("SnapshotEnd covers LSN {covers_lsn}, below the snapshot"),
                        ));
                    }
                    file.close()
                        .await
                        .map_err(|error| EngineError::io(format!("close {path:?}"), error))?;
                    return Ok(LoadedSnapshot {
                        snapshot_lsn: lsn,
                        covers_lsn,
                        epochs: epochs.clone(),
                        bytes: size,
                        installed: false,
                    });
                }
                (
                    Some(_),
                    Operation::Put { .. }
                    | Operation::CreateCollection { .. }
                    | Operation::ClientRequests(_),
                ) => {
                    index.apply_record(record, ReplaySource::Snapshot);
                }
                (Some(_), other) => {
                    return Err(corrupt(at, format!("unexpected {:?} record", other.kind())))
                }
            }
            records += 1;
            used += record.len();
        }
        buffer.drain(..used);
        buffer_offset += used as u64;
        if read_offset >= size {
            return Err(corrupt(buffer_offset, "ends without SnapshotEnd".into()));
        }
        let want = ((size - read_offset) as usize).min(READ_CHUNK_BYTES);
        let read = file
            .read_at(read_offset, want)
            .await
            .map_err(|error| EngineError::io(format!("read {path:?}"), error))?;
        if read.is_empty() {
            return Err(corrupt(buffer_offset, "ends without SnapshotEnd".into()));
        }
        read_offset += read.len() as u64;
        buffer.extend_from_slice(&read);
    }
}

/// Removes the snapshot `file` (superseded by a newer one; nothing for LSN 0). Named, not
/// listed: a data shard makes no blocking directory scans while it serves.
pub async fn remove<S: Storage>(storage: &S, file: SnapshotFile) -> io::Result<()> {
    if file.lsn == 0 {
        return Ok(());
    }
    storage.remove(&file.name()).await?;
    storage.sync_dir().await
}

/// Up to `max_bytes` of the snapshot file `file` from `offset`, as they lie on disk, and the
/// file's size; `None` if that snapshot is gone (a newer one replaced it). What a leader
/// serves to a follower that needs a snapshot.
pub async fn read_chunk<S: Storage>(
    storage: &S,
    file: SnapshotFile,
    offset: u64,
    max_bytes: usize,
) -> io::Result<Option<(Vec<u8>, u64)>> {
    let handle = match storage.open(&file.name()).await {
        Ok(handle) => handle,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let size = handle.size().await?;
    let want = (size.saturating_sub(offset) as usize).min(max_bytes);
    let bytes = if want == 0 {
        Vec::new()
    } else {
        handle.read_at(offset, want).await?.to_vec()
    };
    handle.close().await?;
    Ok(Some((bytes, size)))
}

/// A leader's snapshot arriving at a follower, written to `<lsn>.snap.tmp` as it comes.
pub struct SnapshotDownload<F: StorageFile> {
    lsn: u64,
    writer: SnapshotWriter<F>,
}

impl<F: StorageFile> SnapshotDownload<F> {
    /// Starts receiving the snapshot at `lsn` (a leftover file of an earlier attempt is
    /// replaced).
    pub async fn begin<S: Storage<File = F>>(storage: &S, lsn: u64) -> io::Result<Self> {
        let file = storage.create(&tmp_name(lsn), 0).await?;
        Ok(Self {
            lsn,
            writer: SnapshotWriter {
                file,
                buffer: Vec::with_capacity(2 * SNAPSHOT_WRITE_BYTES),
                written: 0,
                records: 0,
            },
        })
    }

    /// The snapshot's LSN.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.writer.written + self.writer.buffer.len() as u64
    }

    /// Appends the next bytes of the file.
    pub async fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.buffer.extend_from_slice(bytes);
        self.writer.write_full_blocks().await.map_err(|error| {
            EngineError::io(
                format!("write the snapshot download at LSN {}", self.lsn),
                error,
            )
        })
    }

    /// Writes what is buffered and syncs the file. Loading it checks it whole.
    async fn finish(self) -> io::Result<()> {
        self.writer.finish().await.map(|_| ())
    }
}

fn tmp_name(lsn: u64) -> String {
    format!("{lsn:020}{TMP_SUFFIX}")
}

fn install_name(lsn: u64) -> String {
    format!("{lsn:020}{INSTALL_SUFFIX}")
}

/// Finishes receiving `download` and checks it: the whole file must load as partition
/// `partition`'s snapshot at its LSN (into `index`). Then commits the install (see the module
/// doc, step 2). The caller must have stopped the partition's writes, and calls
/// [`finish_install`] next.
pub async fn commit_install<S: Storage>(
    storage: &S,
    partition: u32,
    download: SnapshotDownload<S::File>,
    index: &mut Index,
) -> Result<LoadedSnapshot> {
    let lsn = download.lsn;
    let tmp = tmp_name(lsn);
    let io_error =
        |what: &str, error| EngineError::io(format!("{what} {:?}", storage.path(&tmp)), error);
    download
        .finish()
        .await
        .map_err(|error| io_error("write", error))?;
    let loaded = match load_named(storage, partition, lsn, &tmp, index).await {
        Ok(loaded) => loaded,
        Err(error) => {
            let _removed = storage.remove(&tmp).await;
            return Err(EngineError::InvalidReplication(format!(
                "the leader's snapshot at LSN {lsn} does not load: {error}"
            )));
        }
    };
    storage
        .rename(&tmp, &install_name(lsn))
        .await
        .map_err(|error| io_error("rename", error))?;
    storage
        .sync_dir()
        .await
        .map_err(|error| io_error("sync the directory of", error))?;
    Ok(LoadedSnapshot {
        installed: true,
        ..loaded
    })
}

/// Finishes a committed install, if there is one (see the module doc, step 3): removes every
/// WAL segment and every other snapshot, then renames the installed snapshot into place. Run
/// at open before anything else reads the directory, and by the install itself. Idempotent.
pub async fn finish_install<S: Storage>(storage: &S) -> Result<()> {
    let list_error = |error| EngineError::io(format!("list {:?}", storage.path("")), error);
    let names = storage.list().map_err(list_error)?;
    let Some(lsn) = names
        .iter()
        .filter_map(|name| parse_lsn_with_suffix(name, INSTALL_SUFFIX))
        .max()
    else {
        return Ok(());
    };
    for name in &names {
        let old_log = crate::segment::parse_segment_name(name).is_some();
        let old_snapshot = parse_snapshot_file(name).is_some()
            || parse_lsn_with_suffix(name, INSTALL_SUFFIX).is_some_and(|other| other != lsn);
        if old_log || old_snapshot {
            storage.remove(name).await.map_err(|error| {
                EngineError::io(format!("remove {:?}", storage.path(name)), error)
            })?;
        }
    }
    let sync_error = |error| EngineError::io(format!("sync {:?}", storage.path("")), error);
    storage.sync_dir().await.map_err(sync_error)?;
    let installed = SnapshotFile {
        lsn,
        installed: true,
    };
    storage
        .rename(&install_name(lsn), &installed.name())
        .await
        .map_err(|error| {
            EngineError::io(
                format!("rename {:?}", storage.path(&install_name(lsn))),
                error,
            )
        })?;
    storage.sync_dir().await.map_err(sync_error)
}
