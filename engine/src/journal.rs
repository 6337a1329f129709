//! The shard journal: one log in front of a shard's partition logs, so that small writes to
//! many partitions become durable with one write per round instead of one per partition
//! (docs/storage.md, "The shard journal").
//!
//! A partition in journal mode copies records it staged into the journal's open chunk instead
//! of writing its own tail block; the journal writes each chunk with one durable (`O_DSYNC`)
//! write, and the records are acknowledged then. The partition writes its own log later, in
//! larger flushes (when it has [`JOURNAL_FILE_FLUSH_BYTES`] staged, or when the journal needs a
//! file back), and replication, snapshots and truncation read and change only partition logs,
//! as before.
//!
//! **Files.** [`JOURNAL_FILES`] slot files of [`JOURNAL_FILE_BYTES`], written with zeros and
//! synced when the journal is created, so a durable write into them converts no extent. A slot
//! holds one *life* of the journal, numbered by `file_no`; the next life goes into the oldest
//! slot once every record it holds is durable in its partition's own log (the slot is
//! *retired*).
//!
//! **Chunks.** Each write is one chunk, starting on a block: a [`CHUNK_HEADER_BYTES`] header
//! (magic, header checksum, `file_no`, `seq`, payload length and checksum) and a payload of
//! entries. `seq` counts chunks across slots. An entry is a run of whole records of one
//! partition (exactly as its log holds them, with their own checksums) or a *barrier*: the
//! partition's log was made durable and then cut or replaced, so its entries before the barrier
//! must never be replayed.
//!
//! **Recovery** ([`recover`]): the slots are read in `file_no` order and chunks taken while
//! each is whole and continues the sequence; the first that does not ends the journal. Chunks
//! are acknowledged in order, so nothing after a torn chunk was acknowledged. What the
//! partition logs lack is replayed into them, they are synced, and only then is the journal
//! emptied (each slot's first block zeroed, durably) and started again.

use crate::checksum::crc32c;
use crate::constants::{
    JOURNAL_CHUNK_BYTES_MAX, JOURNAL_FILES, JOURNAL_FILE_BYTES, JOURNAL_WRITES_IN_FLIGHT_MAX,
};
use crate::io::{Storage, StorageFile};
use crate::rt::{self, Doorbell};
use futures::stream::{FuturesOrdered, StreamExt};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Every chunk starts on a block of this size (the O_DIRECT alignment of the slot files).
pub const JOURNAL_BLOCK_BYTES: usize = 4096;

/// Bytes of a chunk header.
pub const CHUNK_HEADER_BYTES: usize = 32;

/// Bytes of an entry header.
const ENTRY_HEADER_BYTES: usize = 24;

const CHUNK_MAGIC: u32 = u32::from_le_bytes(*b"CGJ1");

const ENTRY_RECORDS: u8 = 1;
const ENTRY_BARRIER: u8 = 2;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ChunkHeader {
    magic: U32,
    /// crc32c of the header's bytes after this field.
    header_crc: U32,
    file_no: U64,
    seq: U64,
    payload_len: U32,
    payload_crc: U32,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct EntryHeader {
    kind: u8,
    _pad: [u8; 3],
    partition: U32,
    first_lsn: U64,
    len: U32,
    _pad2: [u8; 4],
}

const _: () = assert!(std::mem::size_of::<ChunkHeader>() == CHUNK_HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<EntryHeader>() == ENTRY_HEADER_BYTES);

/// What an entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// Whole records of the partition, from `first_lsn` on, as its log holds them.
    Records {
        /// LSN of the first record.
        first_lsn: u64,
        /// The records' bytes.
        bytes: Vec<u8>,
    },
    /// The partition's entries before this one must not be replayed.
    Barrier,
}

/// One entry found by [`recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The partition it belongs to.
    pub partition: u32,
    /// What it says.
    pub kind: EntryKind,
}

/// Why bytes are not a chunk (recovery stops there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// Fewer bytes than a header, or than the header says.
    Short,
    /// Wrong magic: zeros, or not a chunk.
    Magic,
    /// The header's checksum does not match.
    HeaderChecksum,
    /// Another life of the slot (`file_no` differs).
    OtherFile,
    /// A payload length past the slot's end.
    Length,
    /// The payload's checksum does not match.
    PayloadChecksum,
    /// An entry that does not decode.
    Entry(String),
    /// A life or sequence number no journal reaches (above [`NUMBER_MAX`]).
    Number,
}

/// The largest life and sequence number a chunk may carry: far above any a journal reaches
/// (one a microsecond takes 8 years), and far enough below `u64::MAX` that no count can wrap,
/// whatever bytes the slots hold (a user's value may hold a forged header on a block).
pub const NUMBER_MAX: u64 = 1 << 48;

fn align_up(len: usize) -> usize {
    len.div_ceil(JOURNAL_BLOCK_BYTES) * JOURNAL_BLOCK_BYTES
}

/// Appends an entry of whole records to `payload`.
pub fn encode_records(payload: &mut Vec<u8>, partition: u32, first_lsn: u64, records: &[u8]) {
    encode_entry(payload, ENTRY_RECORDS, partition, first_lsn, records);
}

/// Appends a barrier entry to `payload`.
pub fn encode_barrier(payload: &mut Vec<u8>, partition: u32) {
    encode_entry(payload, ENTRY_BARRIER, partition, 0, &[]);
}

fn encode_entry(payload: &mut Vec<u8>, kind: u8, partition: u32, first_lsn: u64, bytes: &[u8]) {
    let header = entry_header(kind, partition, first_lsn, bytes.len());
    payload.extend_from_slice(header.as_bytes());
    payload.extend_from_slice(bytes);
}

fn entry_header(kind: u8, partition: u32, first_lsn: u64, len: usize) -> EntryHeader {
    EntryHeader {
        kind,
        _pad: [0; 3],
        partition: partition.into(),
        first_lsn: first_lsn.into(),
        len: u32::try_from(len)
            .expect("an entry is smaller than a slot")
            .into(),
        _pad2: [0; 4],
    }
}

/// Bytes a chunk of `payload_len` takes in its slot (whole blocks).
pub fn chunk_len(payload_len: usize) -> usize {
    align_up(CHUNK_HEADER_BYTES + payload_len)
}

/// Writes the chunk `(file_no, seq, payload)` into `out` (at least [`chunk_len`] bytes; the
/// rest of its last block is zeroed).
pub fn encode_chunk(out: &mut [u8], file_no: u64, seq: u64, payload: &[u8]) {
    let len = chunk_len(payload.len());
    let mut header = ChunkHeader {
        magic: CHUNK_MAGIC.into(),
        header_crc: 0.into(),
        file_no: file_no.into(),
        seq: seq.into(),
        payload_len: u32::try_from(payload.len())
            .expect("a chunk is smaller than a slot")
            .into(),
        payload_crc: crc32c(payload).into(),
    };
    header.header_crc = crc32c(&header.as_bytes()[8..]).into();
    out[..CHUNK_HEADER_BYTES].copy_from_slice(header.as_bytes());
    out[CHUNK_HEADER_BYTES..CHUNK_HEADER_BYTES + payload.len()].copy_from_slice(payload);
    out[CHUNK_HEADER_BYTES + payload.len()..len].fill(0);
}

/// A chunk read back: its sequence number, its entries and the bytes it takes in the slot.
#[derive(Debug)]
pub struct DecodedChunk {
    /// Its sequence number.
    pub seq: u64,
    /// Its entries, in order.
    pub entries: Vec<JournalEntry>,
    /// Bytes it takes (whole blocks).
    pub len: usize,
}

/// Reads the chunk at the start of `bytes`, which must belong to life `file_no` (`None`: any
/// life, as for a slot's first chunk, which says which life the slot holds). Never panics.
pub fn decode_chunk(bytes: &[u8], file_no: Option<u64>) -> Result<DecodedChunk, ChunkError> {
    let (header, _) = ChunkHeader::ref_from_prefix(bytes).map_err(|_| ChunkError::Short)?;
    if header.magic.get() != CHUNK_MAGIC {
        return Err(ChunkError::Magic);
    }
    if crc32c(&header.as_bytes()[8..]) != header.header_crc.get() {
        return Err(ChunkError::HeaderChecksum);
    }
    if header.file_no.get() > NUMBER_MAX || header.seq.get() > NUMBER_MAX {
        return Err(ChunkError::Number);
    }
    if file_no.is_some_and(|file_no| file_no != header.file_no.get()) {
        return Err(ChunkError::OtherFile);
    }
    let payload_len = header.payload_len.get() as usize;
    if payload_len > JOURNAL_FILE_BYTES as usize {
        return Err(ChunkError::Length);
    }
    let payload = bytes
        .get(CHUNK_HEADER_BYTES..CHUNK_HEADER_BYTES + payload_len)
        .ok_or(ChunkError::Short)?;
    if crc32c(payload) != header.payload_crc.get() {
        return Err(ChunkError::PayloadChecksum);
    }
    Ok(DecodedChunk {
        seq: header.seq.get(),
        entries: decode_entries(payload)?,
        len: chunk_len(payload_len),
    })
}

fn decode_entries(mut payload: &[u8]) -> Result<Vec<JournalEntry>, ChunkError> {
    let mut entries = Vec::new();
    while !payload.is_empty() {
        let (header, rest) = EntryHeader::ref_from_prefix(payload)
            .map_err(|_| ChunkError::Entry("an entry header past the payload".into()))?;
        let len = header.len.get() as usize;
        let bytes = rest.get(..len).ok_or_else(|| {
            ChunkError::Entry(format!("an entry of {len} bytes past the payload"))
        })?;
        let kind = match header.kind {
            ENTRY_RECORDS if len > 0 => EntryKind::Records {
                first_lsn: header.first_lsn.get(),
                bytes: bytes.to_vec(),
            },
            ENTRY_BARRIER if len == 0 => EntryKind::Barrier,
            kind => {
                return Err(ChunkError::Entry(format!(
                    "entry kind {kind} with {len} bytes"
                )))
            }
        };
        entries.push(JournalEntry {
            partition: header.partition.get(),
            kind,
        });
        payload = &rest[len..];
    }
    Ok(entries)
}

/// Name of slot `slot`'s file.
pub fn slot_name(slot: usize) -> String {
    format!("journal-{slot}.jnl")
}

/// The first life number of every slot in `images` (`None`: no valid first chunk).
fn life_of(image: &[u8]) -> Option<u64> {
    let (header, _) = ChunkHeader::ref_from_prefix(image).ok()?;
    decode_chunk(image, None).ok()?;
    Some(header.file_no.get())
}

/// What [`recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every entry of the journal, in order.
    pub entries: Vec<JournalEntry>,
    /// The highest life number seen (the next journal starts above it).
    pub last_file_no: u64,
}

/// Reads the journal in `storage` (no files: empty). Stops at the first chunk that is not
/// whole, valid and next in sequence: nothing after it was acknowledged.
pub async fn recover<S: Storage>(storage: &S) -> io::Result<Recovered> {
    let mut images = Vec::new();
    for slot in 0..JOURNAL_FILES {
        let name = slot_name(slot);
        if !storage.list()?.contains(&name) {
            continue;
        }
        let file = storage.open(&name).await?;
        let size = file.size().await?;
        let image = file.read_at(0, size as usize).await?.to_vec();
        file.close().await?;
        images.push(image);
    }
    Ok(scan(&images))
}

/// The entries of slot images (see [`recover`]).
pub fn scan(images: &[Vec<u8>]) -> Recovered {
    let mut lives: Vec<(u64, &[u8])> = images
        .iter()
        .filter_map(|image| life_of(image).map(|file_no| (file_no, image.as_slice())))
        .collect();
    lives.sort_by_key(|(file_no, _)| *file_no);
    // Every life ever written in these slots, found at any block (an emptied slot keeps
    // chunks of older lives past its first block): new lives are numbered above them all.
    let last_file_no = images
        .iter()
        .flat_map(|image| image.chunks(JOURNAL_BLOCK_BYTES))
        .filter_map(|block| {
            let (header, _) = ChunkHeader::ref_from_prefix(block).ok()?;
            (header.magic.get() == CHUNK_MAGIC
                && crc32c(&header.as_bytes()[8..]) == header.header_crc.get()
                && header.file_no.get() <= NUMBER_MAX)
                .then(|| header.file_no.get())
        })
        .max()
        .unwrap_or(0);
    let mut recovered = Recovered {
        entries: Vec::new(),
        last_file_no,
    };
    let mut next_seq = None;
    let mut previous_file_no = None;
    for (file_no, image) in lives {
        if previous_file_no.is_some_and(|previous| file_no != previous + 1) {
            break;
        }
        previous_file_no = Some(file_no);
        let mut offset = 0;
        // A life ends where its slot's chunks end (the next chunk did not fit, or the slot
        // was never filled); the next life must continue the sequence.
        while offset < image.len() {
            let Ok(chunk) = decode_chunk(&image[offset..], Some(file_no)) else {
                break;
            };
            if next_seq.is_some_and(|next| chunk.seq != next) {
                return recovered;
            }
            next_seq = Some(chunk.seq + 1);
            recovered.entries.extend(chunk.entries);
            offset += chunk.len;
        }
    }
    recovered
}

/// What a partition in journal mode lets the journal do.
pub trait JournalClient {
    /// The records of these LSN ranges (`first..=last`, ascending) are durable in the journal.
    /// Called in the order they were appended. The records between two ranges, or before the
    /// first, may have gone to the partition's own log instead, by a flush not yet complete:
    /// a range makes its records acknowledgeable only once everything before it is durable.
    fn journaled(&self, ranges: &[(u64, u64)]);
    /// The highest LSN durable in the partition's own log.
    fn file_durable_lsn(&self) -> u64;
    /// The journal needs records through `lsn` durable in the partition's own log.
    fn want_file_flush(&self, lsn: u64);
    /// The journal failed: its waiters learn it from the shard.
    fn journal_failed(&self, reason: String);
}

/// One slot: its file and what the life it holds needs before it may be retired.
struct Slot<F> {
    file: Rc<F>,
    file_no: u64,
    /// The highest LSN of every partition with records in this life.
    last_lsns: HashMap<u32, u64>,
}

struct State<F> {
    slots: Vec<Slot<F>>,
    active: usize,
    /// Where the next chunk goes in the active slot.
    offset: u64,
    next_seq: u64,
    next_file_no: u64,
    /// The open chunk's payload and the last LSN of every partition in it.
    payload: Vec<u8>,
    payload_lsns: BTreeMap<u32, Vec<(u64, u64)>>,
    /// Chunks durable through this sequence number (every earlier one too).
    durable_seq: u64,
    seq_waiters: Vec<(u64, Waker)>,
    failed: Option<String>,
    writes: u64,
    writes_in_flight: usize,
    /// Tasks waiting for no write to be in flight ([`Journal::close`]).
    idle_waiters: Vec<Waker>,
    slot_bytes: u64,
}

/// A shard's journal (see the module docs). Lives on its shard.
pub struct Journal<S: Storage> {
    storage: S,
    state: RefCell<State<S::File>>,
    clients: RefCell<HashMap<u32, Weak<dyn JournalClient>>>,
    /// Rung when the open chunk gains an entry or a partition's own log becomes durable
    /// further (a retirement may go on).
    bell: Doorbell,
    closed: Cell<bool>,
}

/// Counters of a journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Chunks written.
    pub writes: u64,
    /// Chunks durable.
    pub durable_seq: u64,
}

impl<S: Storage> Journal<S> {
    /// Creates an empty journal in `storage` with slots of `slot_bytes` (a multiple of
    /// [`JOURNAL_BLOCK_BYTES`]; the engine's is [`JOURNAL_FILE_BYTES`]): its slot files written
    /// with zeros and synced (a slot that exists with that size is reused, its first block
    /// zeroed durably), lives numbered above `last_file_no` (from [`recover`]), and starts its
    /// writer.
    pub async fn create(storage: S, last_file_no: u64, slot_bytes: u64) -> io::Result<Rc<Self>> {
        assert!(
            slot_bytes.is_multiple_of(JOURNAL_BLOCK_BYTES as u64)
                && slot_bytes > 0
                && slot_bytes <= JOURNAL_FILE_BYTES,
            "slots of whole blocks"
        );
        let existing = storage.list()?;
        let mut slots = Vec::with_capacity(JOURNAL_FILES);
        let mut created = false;
        for slot in 0..JOURNAL_FILES {
            let name = slot_name(slot);
            let reusable = if existing.contains(&name) {
                let file = storage.open(&name).await?;
                let size = file.size().await;
                if size.ok() == Some(slot_bytes) {
                    Some(file)
                } else {
                    file.close().await?;
                    storage.remove(&name).await?;
                    None
                }
            } else {
                None
            };
            let file = match reusable {
                Some(file) => {
                    // Written and synced in an earlier life: emptied by zeroing its first
                    // chunk, durably, before anything new is written anywhere.
                    let mut zeros = file.alloc_buffer(JOURNAL_BLOCK_BYTES);
                    zeros[..].fill(0);
                    file.write_durable_at(zeros, 0).await?;
                    file
                }
                None => {
                    let file = storage.create(&name, slot_bytes).await?;
                    // Written once with zeros and synced: later durable writes convert no
                    // extent.
                    let step = 1 << 20;
                    let mut at = 0u64;
                    while at < slot_bytes {
                        let len = step.min((slot_bytes - at) as usize);
                        let mut zeros = file.alloc_buffer(len);
                        zeros[..].fill(0);
                        file.write_at(zeros, at).await?;
                        at += len as u64;
                    }
                    file.sync().await?;
                    created = true;
                    file
                }
            };
            slots.push(Slot {
                file: Rc::new(file),
                file_no: 0,
                last_lsns: HashMap::new(),
            });
        }
        if created {
            storage.sync_dir().await?;
        }
        slots[0].file_no = last_file_no + 1;
        let journal = Rc::new(Self {
            storage,
            state: RefCell::new(State {
                slots,
                active: 0,
                offset: 0,
                next_seq: 1,
                next_file_no: last_file_no + 2,
                payload: Vec::new(),
                payload_lsns: BTreeMap::new(),
                durable_seq: 0,
                seq_waiters: Vec::new(),
                failed: None,
                writes: 0,
                writes_in_flight: 0,
                idle_waiters: Vec::new(),
                slot_bytes,
            }),
            clients: RefCell::new(HashMap::new()),
            bell: Doorbell::default(),
            closed: Cell::new(false),
        });
        rt::spawn_detached(Self::writer(Rc::downgrade(&journal)));
        Ok(journal)
    }

    /// The storage the journal lives in.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Registers partition `partition`'s callbacks.
    pub fn register(&self, partition: u32, client: Weak<dyn JournalClient>) {
        self.clients.borrow_mut().insert(partition, client);
    }

    /// Whether the journal stopped (a write failed).
    pub fn is_failed(&self) -> bool {
        self.state.borrow().failed.is_some()
    }

    /// Whether the open chunk takes `bytes` more of records (see
    /// [`JOURNAL_CHUNK_BYTES_MAX`]).
    pub fn has_room(&self, bytes: usize) -> bool {
        let state = self.state.borrow();
        let max = JOURNAL_CHUNK_BYTES_MAX.min(state.slot_bytes as usize / 2);
        CHUNK_HEADER_BYTES + state.payload.len() + ENTRY_HEADER_BYTES + bytes <= max
    }

    /// Whether other partitions use the journal now: a chunk is open or being written.
    pub fn busy(&self) -> bool {
        let state = self.state.borrow();
        !state.payload.is_empty() || state.writes_in_flight > 0
    }

    /// Why the journal stopped, if it did.
    pub fn failed(&self) -> Option<String> {
        self.state.borrow().failed.clone()
    }

    /// Counters.
    pub fn stats(&self) -> JournalStats {
        let state = self.state.borrow();
        JournalStats {
            writes: state.writes,
            durable_seq: state.durable_seq,
        }
    }

    /// Adds records `first_lsn..=last_lsn` of `partition` (their bytes) to the open chunk;
    /// the partition learns through [`JournalClient::journaled`] when they are durable.
    pub fn append_records(&self, partition: u32, first_lsn: u64, last_lsn: u64, bytes: &[u8]) {
        self.append_records_from(partition, |payload| {
            payload.extend_from_slice(bytes);
            Some((first_lsn, last_lsn))
        });
    }

    /// Adds records of `partition` that `copy` appends straight to the open chunk's payload
    /// (no copy in between), returning their first and last LSN; `None`: there were none.
    pub fn append_records_from(
        &self,
        partition: u32,
        copy: impl FnOnce(&mut Vec<u8>) -> Option<(u64, u64)>,
    ) {
        let mut state = self.state.borrow_mut();
        let at = state.payload.len();
        // The header's LSN and length are known once the records are in.
        state.payload.resize(at + ENTRY_HEADER_BYTES, 0);
        let Some((first_lsn, last_lsn)) = copy(&mut state.payload) else {
            state.payload.truncate(at);
            return;
        };
        let len = state.payload.len() - at - ENTRY_HEADER_BYTES;
        let header = entry_header(ENTRY_RECORDS, partition, first_lsn, len);
        state.payload[at..at + ENTRY_HEADER_BYTES].copy_from_slice(header.as_bytes());
        state
            .payload_lsns
            .entry(partition)
            .or_default()
            .push((first_lsn, last_lsn));
        drop(state);
        self.bell.ring();
    }

    /// Adds a barrier of `partition` and waits until it is durable.
    pub async fn barrier(&self, partition: u32) -> io::Result<()> {
        let seq = {
            let mut state = self.state.borrow_mut();
            encode_barrier(&mut state.payload, partition);
            // The partition's records before it are void: no slot waits for them any more.
            for slot in &mut state.slots {
                slot.last_lsns.remove(&partition);
            }
            state.payload_lsns.remove(&partition);
            // The open chunk is sealed with the next sequence number.
            state.next_seq
        };
        self.bell.ring();
        self.wait_seq(seq).await
    }

    /// Waits until chunk `seq` is durable.
    async fn wait_seq(&self, seq: u64) -> io::Result<()> {
        std::future::poll_fn(|context| {
            let mut state = self.state.borrow_mut();
            if let Some(reason) = &state.failed {
                return Poll::Ready(Err(io::Error::other(reason.clone())));
            }
            if state.durable_seq >= seq {
                return Poll::Ready(Ok(()));
            }
            state.seq_waiters.push((seq, context.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// A partition's own log became durable further: a retirement may go on.
    pub fn file_flushed(&self) {
        self.bell.ring();
    }

    /// Stops the writer once its writes in flight have ended and closes the slot files (a
    /// file only dropped is closed at the executor's next turn, which may never come). Call
    /// once every partition writing through the journal is closed: what the journal holds is
    /// then durable in their logs, so an open chunk not yet written is not needed.
    pub async fn close(&self) -> io::Result<()> {
        self.closed.set(true);
        self.bell.ring();
        std::future::poll_fn(|context| {
            let mut state = self.state.borrow_mut();
            if state.writes_in_flight == 0 {
                return Poll::Ready(());
            }
            state.idle_waiters.push(context.waker().clone());
            Poll::Pending
        })
        .await;
        let slots = std::mem::take(&mut self.state.borrow_mut().slots);
        let mut result = Ok(());
        for slot in slots {
            // Nothing else holds a slot's file once no write is in flight.
            if let Ok(file) = Rc::try_unwrap(slot.file) {
                if let Err(error) = file.close().await {
                    result = Err(error);
                }
            }
        }
        result
    }

    /// Counts a write of the writer's as ended.
    fn write_ended(&self) {
        let waiters = {
            let mut state = self.state.borrow_mut();
            state.writes_in_flight -= 1;
            if state.writes_in_flight > 0 {
                return;
            }
            std::mem::take(&mut state.idle_waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }

    /// Stops the journal: nothing more is written, and every waiter and partition learns
    /// `reason` (the shard is poisoned).
    pub fn stop(&self, reason: String) {
        self.fail(reason);
    }

    fn fail(&self, reason: String) {
        let waiters = {
            let mut state = self.state.borrow_mut();
            if state.failed.is_some() {
                return;
            }
            state.failed = Some(reason.clone());
            std::mem::take(&mut state.seq_waiters)
        };
        for (_, waker) in waiters {
            waker.wake();
        }
        let clients: Vec<_> = self.clients.borrow().values().cloned().collect();
        for client in clients.into_iter().filter_map(|client| client.upgrade()) {
            client.journal_failed(reason.clone());
        }
    }

    /// Whether the slot after the active one may take the next life; if not, asks the
    /// partitions whose records it still holds to write their own logs.
    fn next_slot_retired(&self) -> bool {
        let state = self.state.borrow();
        let next = (state.active + 1) % state.slots.len();
        let clients = self.clients.borrow();
        let mut retired = true;
        for (partition, lsn) in &state.slots[next].last_lsns {
            let Some(client) = clients.get(partition).and_then(Weak::upgrade) else {
                // A partition gone (closed) wrote its log when it closed.
                continue;
            };
            if client.file_durable_lsn() < *lsn {
                client.want_file_flush(*lsn);
                retired = false;
            }
        }
        retired
    }

    /// The writer task: seals the open chunk whenever one may be written, writes it durably,
    /// and reports chunks durable in order.
    async fn writer(journal: Weak<Self>) {
        type Ranges = BTreeMap<u32, Vec<(u64, u64)>>;
        type Write = Pin<Box<dyn Future<Output = (u64, Ranges, io::Result<()>)>>>;
        let mut in_flight: FuturesOrdered<Write> = FuturesOrdered::new();
        loop {
            let Some(this) = journal.upgrade() else {
                return;
            };
            // Seal and write while there is room.
            while in_flight.len() < JOURNAL_WRITES_IN_FLIGHT_MAX && !this.closed.get() {
                let mut state = this.state.borrow_mut();
                if state.payload.is_empty() || state.failed.is_some() {
                    break;
                }
                let len = chunk_len(state.payload.len()) as u64;
                if len > state.slot_bytes {
                    // Records stop at half a slot (`has_room`): only barriers of thousands
                    // of partitions at once could fill the rest.
                    let reason = format!(
                        "journal: a chunk of {len} bytes outgrew its slot of {} bytes",
                        state.slot_bytes
                    );
                    drop(state);
                    this.fail(reason);
                    break;
                }
                if state.offset + len > state.slot_bytes {
                    drop(state);
                    if !this.next_slot_retired() {
                        break;
                    }
                    let mut state = this.state.borrow_mut();
                    let next = (state.active + 1) % state.slots.len();
                    let file_no = state.next_file_no;
                    state.next_file_no += 1;
                    let slot = &mut state.slots[next];
                    slot.file_no = file_no;
                    slot.last_lsns.clear();
                    state.active = next;
                    state.offset = 0;
                    continue;
                }
                let payload = std::mem::take(&mut state.payload);
                let lsns = std::mem::take(&mut state.payload_lsns);
                let seq = state.next_seq;
                state.next_seq += 1;
                let active = state.active;
                let offset = state.offset;
                state.offset += len;
                state.writes += 1;
                state.writes_in_flight += 1;
                let slot = &mut state.slots[active];
                for (partition, ranges) in &lsns {
                    let last = slot.last_lsns.entry(*partition).or_insert(0);
                    *last = ranges.iter().fold(*last, |last, (_, lsn)| last.max(*lsn));
                }
                let (file, file_no) = (slot.file.clone(), slot.file_no);
                drop(state);
                let mut buffer = file.alloc_buffer(len as usize);
                encode_chunk(&mut buffer[..], file_no, seq, &payload);
                in_flight.push_back(Box::pin(async move {
                    let result = file.write_durable_at(buffer, offset).await;
                    (seq, lsns, result)
                }));
            }
            let closed = this.closed.get() && in_flight.is_empty();
            if closed {
                return;
            }
            let bell = this.bell.clone();
            drop(this);
            let completed = if in_flight.is_empty() {
                bell.wait().await;
                continue;
            } else {
                let wait = std::pin::pin!(bell.wait());
                match futures::future::select(in_flight.next(), wait).await {
                    futures::future::Either::Left((completed, _)) => completed,
                    futures::future::Either::Right(((), _)) => continue,
                }
            };
            let Some(this) = journal.upgrade() else {
                return;
            };
            let (seq, lsns, result) = completed.expect("a write is in flight");
            this.write_ended();
            if let Err(error) = result {
                this.fail(format!("journal write failed: {error}"));
                while in_flight.next().await.is_some() {
                    this.write_ended();
                }
                return;
            }
            let waiters = {
                let mut state = this.state.borrow_mut();
                state.durable_seq = seq;
                let mut woken = Vec::new();
                state.seq_waiters.retain(|(at, waker)| {
                    if *at <= seq {
                        woken.push(waker.clone());
                        false
                    } else {
                        true
                    }
                });
                woken
            };
            for waker in waiters {
                waker.wake();
            }
            let clients: Vec<_> = {
                let clients = this.clients.borrow();
                lsns.into_iter()
                    .filter_map(|(partition, ranges)| {
                        clients
                            .get(&partition)
                            .and_then(Weak::upgrade)
                            .map(|client| (client, ranges))
                    })
                    .collect()
            };
            for (client, ranges) in clients {
                client.journaled(&ranges);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry to encode: partition, and records `(first_lsn, bytes)` or `None` (a barrier).
    type Entry<'a> = (u32, Option<(u64, &'a [u8])>);

    fn chunk(file_no: u64, seq: u64, entries: &[Entry<'_>]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (partition, records) in entries {
            match records {
                Some((first, bytes)) => encode_records(&mut payload, *partition, *first, bytes),
                None => encode_barrier(&mut payload, *partition),
            }
        }
        let mut out = vec![0u8; chunk_len(payload.len())];
        encode_chunk(&mut out, file_no, seq, &payload);
        out
    }

    fn slot(chunks: &[Vec<u8>], len: usize) -> Vec<u8> {
        let mut image: Vec<u8> = chunks.concat();
        image.resize(len, 0);
        image
    }

    #[test]
    fn a_chunk_round_trips() {
        let bytes = chunk(7, 3, &[(1, Some((10, b"abc"))), (2, None)]);
        let decoded = decode_chunk(&bytes, Some(7)).expect("valid");
        assert_eq!(decoded.seq, 3);
        assert_eq!(decoded.len, JOURNAL_BLOCK_BYTES);
        assert_eq!(
            decoded.entries,
            vec![
                JournalEntry {
                    partition: 1,
                    kind: EntryKind::Records {
                        first_lsn: 10,
                        bytes: b"abc".to_vec()
                    }
                },
                JournalEntry {
                    partition: 2,
                    kind: EntryKind::Barrier
                }
            ]
        );
        assert_eq!(
            decode_chunk(&bytes, Some(8)).unwrap_err(),
            ChunkError::OtherFile
        );
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let bytes = chunk(1, 1, &[(4, Some((1, &[9u8; 100])))]);
        let used = CHUNK_HEADER_BYTES + ENTRY_HEADER_BYTES + 100;
        for at in 0..used {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            assert!(decode_chunk(&flipped, Some(1)).is_err(), "flip at {at}");
        }
        for cut in 0..used {
            assert!(
                decode_chunk(&bytes[..cut], Some(1)).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_scan_follows_lives_and_stops_at_the_first_bad_chunk() {
        let a = slot(
            &[
                chunk(5, 1, &[(1, Some((1, b"r1")))]),
                chunk(5, 2, &[(1, Some((2, b"r2")))]),
            ],
            4 * JOURNAL_BLOCK_BYTES,
        );
        let b_chunks = [
            chunk(6, 3, &[(2, Some((1, b"s1")))]),
            chunk(6, 4, &[(2, Some((2, b"s2")))]),
            chunk(6, 5, &[(2, Some((3, b"s3")))]),
        ];
        // Slot b's second chunk torn: its third was written but never acknowledged.
        let mut torn = b_chunks.to_vec();
        torn[1][CHUNK_HEADER_BYTES + 3] ^= 1;
        let b = slot(&torn, 4 * JOURNAL_BLOCK_BYTES);
        // An older life (4), retired, in a third slot: read first, harmless.
        let c = slot(&[chunk(4, 0, &[(9, Some((1, b"x")))])], JOURNAL_BLOCK_BYTES);
        let recovered = scan(&[b, a.clone(), c]);
        let partitions: Vec<u32> = recovered.entries.iter().map(|e| e.partition).collect();
        assert_eq!(partitions, vec![9, 1, 1, 2]);
        assert_eq!(recovered.last_file_no, 6);
        // A life that does not follow the previous one (a gap in lives) ends the journal.
        let d = slot(&[chunk(8, 3, &[(3, Some((1, b"t")))])], JOURNAL_BLOCK_BYTES);
        let recovered = scan(&[a.clone(), d]);
        assert_eq!(recovered.entries.len(), 2);
        // Stale chunks of an older life after the current life's chunks end the slot.
        let reused = {
            let mut image = slot(&b_chunks, 4 * JOURNAL_BLOCK_BYTES);
            image[..JOURNAL_BLOCK_BYTES].copy_from_slice(&chunk(7, 3, &[(5, None)]));
            image
        };
        let recovered = scan(&[reused]);
        assert_eq!(
            recovered.entries,
            vec![JournalEntry {
                partition: 5,
                kind: EntryKind::Barrier
            }]
        );
    }

    #[test]
    fn numbers_no_journal_reaches_are_refused_and_never_wrap() {
        let forged = chunk(u64::MAX, 1, &[(1, Some((1, b"f")))]);
        assert_eq!(decode_chunk(&forged, None).unwrap_err(), ChunkError::Number);
        let forged_seq = chunk(2, u64::MAX, &[(1, Some((1, b"f")))]);
        assert_eq!(
            decode_chunk(&forged_seq, None).unwrap_err(),
            ChunkError::Number
        );
        // A forged header on a block inside a real life (a user's value may hold one) neither
        // raises the next life past the bound nor stops the real chunks being read.
        let image = slot(
            &[chunk(3, 1, &[(1, Some((1, b"r1")))]), forged, forged_seq],
            4 * JOURNAL_BLOCK_BYTES,
        );
        let recovered = scan(&[image]);
        assert_eq!(recovered.last_file_no, 3);
        assert_eq!(recovered.entries.len(), 1);
        // The largest numbers allowed still leave room to count on.
        let last = chunk(NUMBER_MAX, NUMBER_MAX, &[(1, Some((1, b"r")))]);
        let recovered = scan(&[slot(&[last], JOURNAL_BLOCK_BYTES)]);
        assert_eq!(recovered.last_file_no, NUMBER_MAX);
        assert_eq!(recovered.entries.len(), 1);
    }

    #[test]
    fn records_stop_at_half_a_slot_and_a_chunk_past_its_slot_fails_the_journal() {
        crate::rt::run_local(|| async {
            let slot_bytes = 4 * JOURNAL_BLOCK_BYTES as u64;
            let journal = Journal::create(crate::sim::SimDisk::new(), 0, slot_bytes)
                .await
                .expect("create");
            let records = vec![7u8; 6000];
            assert!(journal.has_room(records.len()));
            journal.append_records(1, 1, 1, &records);
            // Half a slot is 8 KiB: another 6000 bytes would not fit, a few more would.
            assert!(!journal.has_room(records.len()));
            assert!(journal.has_room(100));
            journal
                .barrier(1)
                .await
                .expect("a chunk of half a slot is written");
            assert!(journal.has_room(records.len()));
            // Appended regardless of `has_room` (a caller's bug): the writer refuses the chunk
            // with a clear reason instead of looking for a slot it fits forever.
            for lsn in 2..5 {
                journal.append_records(1, lsn, lsn, &records);
            }
            let error = journal
                .barrier(1)
                .await
                .expect_err("the chunk outgrew its slot");
            assert!(error.to_string().contains("outgrew its slot"), "{error}");
            assert!(journal.is_failed());
        });
    }
}
