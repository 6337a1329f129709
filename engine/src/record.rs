//! The record format: a fixed 56-byte zerocopy header followed by the body.
//!
//! Every record in a WAL segment, in a snapshot and (later) on the replication wire has this
//! shape, so the leader can ship WAL bytes exactly as they lie on disk. The header carries its
//! own crc32c (over every byte after the crc field) and the body's crc32c; the header is
//! validated before its length is trusted. An all-zero header never validates: the magic is
//! non-zero and `crc32c` of zeros is not zero.
//!
//! Layout (little-endian):
//! ```text
//!  0  magic          u32  "CGR1"
//!  4  header_crc     u32  crc32c of bytes 8..56
//!  8  format_version u16
//! 10  kind           u8   operation kind
//! 11  flags          u8   0, or FLAG_REQUEST_ID: the body starts with a client request id
//! 12  body_len       u32
//! 16  body_crc       u32  crc32c of the body
//! 20  reserved       u32  0
//! 24  lsn            u64
//! 32  epoch          u64
//! 40  hlc            u64  hybrid logical clock timestamp
//! 48  durable_lsn    u64  the partition's durable LSN when this record was staged
//! ```
//! With [`FLAG_REQUEST_ID`] (puts, deletes and batches only), the body begins with the client
//! request id that the write carried (client u64, sequence u64), then the operation's body: the
//! partition rebuilds its table of applied requests from these at recovery ([`crate::requests`]).
//!
//! `durable_lsn` lets recovery tell a torn tail from corruption: a valid record whose
//! `durable_lsn` is at or past a bad record's LSN proves the bad record had been synced, so the
//! bad record is corruption, not the tail of a write interrupted by a crash.

use crate::checksum;
use crate::constants::{
    BATCH_OPERATIONS_MAX, COLLECTION_NAME_BYTES_MAX, KEY_BYTES_MAX, RECORD_BODY_BYTES_MAX,
    RECORD_HEADER_BYTES, VALUE_BYTES_MAX,
};
use crate::requests::{ClientWindow, RequestId};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// "CGR1" read as a little-endian u32.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"CGR1");
/// The record format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Header flag: the body starts with a [`RequestId`] ([`REQUEST_ID_BYTES`]).
pub const FLAG_REQUEST_ID: u8 = 1;
/// Bytes of a request id at the start of a body.
pub const REQUEST_ID_BYTES: usize = 16;

/// The fixed header of every record.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RecordHeader {
    magic: U32,
    header_crc: U32,
    format_version: U16,
    kind: u8,
    flags: u8,
    body_len: U32,
    body_crc: U32,
    reserved: U32,
    lsn: U64,
    epoch: U64,
    hlc: U64,
    durable_lsn: U64,
}

const _: () = assert!(std::mem::size_of::<RecordHeader>() == RECORD_HEADER_BYTES);
const _: () = assert!(std::mem::align_of::<RecordHeader>() == 1);

/// Byte offset of the first header byte covered by the header crc.
const HEADER_CRC_COVERS_FROM: usize = 8;

/// What a record does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OperationKind {
    /// Set a key's value.
    Put = 1,
    /// Remove a key.
    Delete = 2,
    /// Create a named key space.
    CreateCollection = 3,
    /// Drop a named key space and every key in it.
    DropCollection = 4,
    /// Several puts and deletes applied atomically.
    Batch = 5,
    /// Marks the first LSN of a leadership epoch; changes no key.
    EpochStart = 6,
    /// First record of a snapshot file: the snapshot's LSN and epoch history.
    SnapshotBegin = 7,
    /// Last record of a snapshot file: the count of records before it.
    SnapshotEnd = 8,
    /// In a snapshot: clients' applied request ids ([`crate::requests`]).
    ClientRequests = 9,
}

impl OperationKind {
    /// The kind for a header byte, if any.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Put,
            2 => Self::Delete,
            3 => Self::CreateCollection,
            4 => Self::DropCollection,
            5 => Self::Batch,
            6 => Self::EpochStart,
            7 => Self::SnapshotBegin,
            8 => Self::SnapshotEnd,
            9 => Self::ClientRequests,
            _ => return None,
        })
    }
}

/// Why a header or record failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer bytes than a header.
    #[error("truncated header")]
    TruncatedHeader,
    /// Every header byte is zero: the end of a preallocated segment or a zeroed sector.
    #[error("zero header")]
    ZeroHeader,
    /// The magic is wrong.
    #[error("bad magic")]
    BadMagic,
    /// The header crc does not match.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// A format version this build does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    /// Unknown operation kind, non-zero flags or reserved bytes.
    #[error("invalid header field")]
    InvalidHeaderField,
    /// The body length exceeds the limit.
    #[error("body length {0} over the limit")]
    BodyTooLarge(u32),
    /// Fewer body bytes than the header says.
    #[error("truncated body")]
    TruncatedBody,
    /// The body crc does not match.
    #[error("body checksum mismatch")]
    BodyChecksum,
    /// The body does not decode as its kind says.
    #[error("malformed body")]
    MalformedBody,
}

/// The fields a writer chooses for a record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// Log sequence number.
    pub lsn: u64,
    /// Leadership epoch the record was written in.
    pub epoch: u64,
    /// HLC timestamp.
    pub hlc: u64,
    /// The partition's durable LSN when the record was staged.
    pub durable_lsn: u64,
}

impl RecordHeader {
    /// Validates a header at the start of `bytes`: magic, crc, version, kind, flags, reserved
    /// and the body limit, in that order, before anything trusts its length.
    pub fn validate(bytes: &[u8]) -> Result<&RecordHeader, RecordError> {
        let Some(head) = bytes.get(..RECORD_HEADER_BYTES) else {
            return Err(RecordError::TruncatedHeader);
        };
        let header = RecordHeader::ref_from_bytes(head).expect("sized and unaligned");
        if header.magic.get() != RECORD_MAGIC {
            if head.iter().all(|&byte| byte == 0) {
                return Err(RecordError::ZeroHeader);
            }
            return Err(RecordError::BadMagic);
        }
        if checksum::crc32c(&head[HEADER_CRC_COVERS_FROM..]) != header.header_crc.get() {
            return Err(RecordError::HeaderChecksum);
        }
        if header.format_version.get() != FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion(header.format_version.get()));
        }
        let Some(kind) = OperationKind::from_u8(header.kind) else {
            return Err(RecordError::InvalidHeaderField);
        };
        let flags_ok = match header.flags {
            0 => true,
            FLAG_REQUEST_ID => {
                matches!(
                    kind,
                    OperationKind::Put | OperationKind::Delete | OperationKind::Batch
                ) && header.body_len.get() as usize >= REQUEST_ID_BYTES
            }
            _ => false,
        };
        if !flags_ok || header.reserved.get() != 0 {
            return Err(RecordError::InvalidHeaderField);
        }
        if header.body_len.get() as usize > RECORD_BODY_BYTES_MAX {
            return Err(RecordError::BodyTooLarge(header.body_len.get()));
        }
        Ok(header)
    }

    /// The operation kind (valid after [`RecordHeader::validate`]).
    pub fn kind(&self) -> OperationKind {
        OperationKind::from_u8(self.kind).expect("validated header")
    }
    /// Body length in bytes.
    pub fn body_len(&self) -> usize {
        self.body_len.get() as usize
    }
    /// Whole record length in bytes.
    pub fn record_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.body_len()
    }
    /// The crc32c the body must have.
    pub fn body_crc(&self) -> u32 {
        self.body_crc.get()
    }
    /// The header's metadata.
    pub fn meta(&self) -> RecordMeta {
        RecordMeta {
            lsn: self.lsn.get(),
            epoch: self.epoch.get(),
            hlc: self.hlc.get(),
            durable_lsn: self.durable_lsn.get(),
        }
    }
    /// LSN of the record.
    pub fn lsn(&self) -> u64 {
        self.lsn.get()
    }
    /// Whether the body starts with a client request id.
    pub fn has_request_id(&self) -> bool {
        self.flags == FLAG_REQUEST_ID
    }
}

/// A record whose header and body both passed their checks; borrowed from the buffer.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// The validated header.
    pub header: &'a RecordHeader,
    /// The body, crc-checked.
    pub body: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// Validates the record at the start of `bytes` (header, then body crc).
    pub fn validate(bytes: &'a [u8]) -> Result<RecordRef<'a>, RecordError> {
        let header = RecordHeader::validate(bytes)?;
        let body = bytes
            .get(RECORD_HEADER_BYTES..header.record_len())
            .ok_or(RecordError::TruncatedBody)?;
        if checksum::crc32c(body) != header.body_crc() {
            return Err(RecordError::BodyChecksum);
        }
        Ok(RecordRef { header, body })
    }

    /// Decodes the body as an operation.
    pub fn operation(&self) -> Result<Operation<'a>, RecordError> {
        let body = if self.header.has_request_id() {
            self.body
                .get(REQUEST_ID_BYTES..)
                .ok_or(RecordError::MalformedBody)?
        } else {
            self.body
        };
        Operation::decode(self.header.kind(), body)
    }

    /// The client request id the write carried, if any.
    pub fn request_id(&self) -> Option<RequestId> {
        if !self.header.has_request_id() {
            return None;
        }
        let bytes = self.body.get(..REQUEST_ID_BYTES)?;
        Some(RequestId {
            client: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            sequence: u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes")),
        })
    }

    /// Length of the record in bytes.
    pub fn len(&self) -> usize {
        self.header.record_len()
    }

    /// Always false: a record has at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One put or delete inside a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOperation<'a> {
    /// Set `key` in `collection` to `value`.
    Put {
        /// Collection name.
        collection: &'a str,
        /// Key bytes.
        key: &'a [u8],
        /// Value bytes.
        value: &'a [u8],
    },
    /// Remove `key` from `collection`.
    Delete {
        /// Collection name.
        collection: &'a str,
        /// Key bytes.
        key: &'a [u8],
    },
}

/// What a record body says, borrowed from the body bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation<'a> {
    /// Set a key.
    Put {
        /// Collection name.
        collection: &'a str,
        /// Key bytes.
        key: &'a [u8],
        /// Value bytes.
        value: &'a [u8],
    },
    /// Remove a key.
    Delete {
        /// Collection name.
        collection: &'a str,
        /// Key bytes.
        key: &'a [u8],
    },
    /// Create a collection.
    CreateCollection {
        /// Collection name.
        name: &'a str,
    },
    /// Drop a collection.
    DropCollection {
        /// Collection name.
        name: &'a str,
    },
    /// Apply all of these atomically.
    Batch(Vec<BatchOperation<'a>>),
    /// First record of an epoch.
    EpochStart,
    /// Snapshot preamble: the snapshot covers every record up to `snapshot_lsn`; `epochs` is
    /// the partition's epoch history `(epoch, first_lsn)` at that point.
    SnapshotBegin {
        /// Partition the snapshot belongs to.
        partition: u32,
        /// Records up to this LSN are reflected in the snapshot.
        snapshot_lsn: u64,
        /// Epoch history.
        epochs: Vec<(u64, u64)>,
    },
    /// Snapshot trailer.
    SnapshotEnd {
        /// Records written between the begin and end records.
        records: u64,
    },
    /// In a snapshot: some clients' applied request ids.
    ClientRequests(Vec<(u64, ClientWindow)>),
}

/// A bounds-checked reader over a body.
struct BodyReader<'a> {
    bytes: &'a [u8],
}

impl<'a> BodyReader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], RecordError> {
        if self.bytes.len() < len {
            return Err(RecordError::MalformedBody);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn name(&mut self) -> Result<&'a str, RecordError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        let name = std::str::from_utf8(bytes).map_err(|_| RecordError::MalformedBody)?;
        if validate_collection_name(name).is_err() {
            return Err(RecordError::MalformedBody);
        }
        Ok(name)
    }
    fn key(&mut self) -> Result<&'a [u8], RecordError> {
        let len = self.u16()? as usize;
        if len == 0 || len > KEY_BYTES_MAX {
            return Err(RecordError::MalformedBody);
        }
        self.take(len)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
    fn finish(&self) -> Result<(), RecordError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(RecordError::MalformedBody)
        }
    }
}

/// Checks a collection name: 1..=128 bytes of UTF-8 without control characters.
pub fn validate_collection_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > COLLECTION_NAME_BYTES_MAX {
        return Err(format!(
            "collection name must be 1..={COLLECTION_NAME_BYTES_MAX} bytes, got {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("collection name has a control character".into());
    }
    Ok(())
}

/// Checks a key and a value against the limits.
pub fn validate_key_value(key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(format!(
            "key must be 1..={KEY_BYTES_MAX} bytes, got {}",
            key.len()
        ));
    }
    if let Some(value) = value {
        if value.len() > VALUE_BYTES_MAX {
            return Err(format!(
                "value must be at most {VALUE_BYTES_MAX} bytes, got {}",
                value.len()
            ));
        }
    }
    Ok(())
}

/// Where records are encoded: a `Vec`, or the WAL's staging buffer in write-ready memory (so
/// that a record's bytes are copied once, from the caller's value into the write).
pub trait RecordSink {
    /// Bytes written so far.
    fn written_len(&self) -> usize;
    /// Appends `bytes`.
    fn extend_from_slice(&mut self, bytes: &[u8]);
    /// Appends one byte.
    fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }
    /// The bytes written, from `start` on.
    fn written_from(&mut self, start: usize) -> &mut [u8];
}

impl RecordSink for Vec<u8> {
    fn written_len(&self) -> usize {
        self.len()
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }
    fn written_from(&mut self, start: usize) -> &mut [u8] {
        &mut self[start..]
    }
}

fn put_name(out: &mut impl RecordSink, name: &str) {
    assert!(name.len() <= COLLECTION_NAME_BYTES_MAX);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn put_key(out: &mut impl RecordSink, key: &[u8]) {
    assert!(!key.is_empty() && key.len() <= KEY_BYTES_MAX);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
}

impl<'a> Operation<'a> {
    /// The header kind of this operation.
    pub fn kind(&self) -> OperationKind {
        match self {
            Self::Put { .. } => OperationKind::Put,
            Self::Delete { .. } => OperationKind::Delete,
            Self::CreateCollection { .. } => OperationKind::CreateCollection,
            Self::DropCollection { .. } => OperationKind::DropCollection,
            Self::Batch(_) => OperationKind::Batch,
            Self::EpochStart => OperationKind::EpochStart,
            Self::SnapshotBegin { .. } => OperationKind::SnapshotBegin,
            Self::SnapshotEnd { .. } => OperationKind::SnapshotEnd,
            Self::ClientRequests(_) => OperationKind::ClientRequests,
        }
    }

    /// Appends the body encoding to `out`.
    pub fn encode_body(&self, out: &mut impl RecordSink) {
        match self {
            Self::Put {
                collection,
                key,
                value,
            } => {
                put_name(out, collection);
                put_key(out, key);
                out.extend_from_slice(value);
            }
            Self::Delete { collection, key } => {
                put_name(out, collection);
                put_key(out, key);
            }
            Self::CreateCollection { name } | Self::DropCollection { name } => put_name(out, name),
            Self::Batch(operations) => {
                assert!(operations.len() <= BATCH_OPERATIONS_MAX);
                out.extend_from_slice(&(operations.len() as u16).to_le_bytes());
                for operation in operations {
                    match operation {
                        BatchOperation::Put {
                            collection,
                            key,
                            value,
                        } => {
                            out.push(OperationKind::Put as u8);
                            put_name(out, collection);
                            put_key(out, key);
                            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                            out.extend_from_slice(value);
                        }
                        BatchOperation::Delete { collection, key } => {
                            out.push(OperationKind::Delete as u8);
                            put_name(out, collection);
                            put_key(out, key);
                        }
                    }
                }
            }
            Self::EpochStart => {}
            Self::SnapshotBegin {
                partition,
                snapshot_lsn,
                epochs,
            } => {
                out.extend_from_slice(&partition.to_le_bytes());
                out.extend_from_slice(&snapshot_lsn.to_le_bytes());
                out.extend_from_slice(&(epochs.len() as u32).to_le_bytes());
                for (epoch, first_lsn) in epochs {
                    out.extend_from_slice(&epoch.to_le_bytes());
                    out.extend_from_slice(&first_lsn.to_le_bytes());
                }
            }
            Self::SnapshotEnd { records } => out.extend_from_slice(&records.to_le_bytes()),
            Self::ClientRequests(clients) => {
                out.extend_from_slice(&(clients.len() as u32).to_le_bytes());
                for (client, window) in clients {
                    out.extend_from_slice(&client.to_le_bytes());
                    out.push(u8::from(window.forgotten_up_to.is_some()));
                    out.extend_from_slice(&window.forgotten_up_to.unwrap_or(0).to_le_bytes());
                    out.extend_from_slice(&window.last_lsn.to_le_bytes());
                    out.extend_from_slice(&(window.applied.len() as u32).to_le_bytes());
                    for (sequence, (lsn, hlc)) in window.applied.iter() {
                        out.extend_from_slice(&sequence.to_le_bytes());
                        out.extend_from_slice(&lsn.to_le_bytes());
                        out.extend_from_slice(&hlc.to_le_bytes());
                    }
                }
            }
        }
    }

    /// Decodes a body of the given kind. Never panics, whatever the bytes.
    pub fn decode(kind: OperationKind, body: &'a [u8]) -> Result<Self, RecordError> {
        let mut reader = BodyReader { bytes: body };
        let operation = match kind {
            OperationKind::Put => {
                let collection = reader.name()?;
                let key = reader.key()?;
                let value = reader.rest();
                if value.len() > VALUE_BYTES_MAX {
                    return Err(RecordError::MalformedBody);
                }
                Self::Put {
                    collection,
                    key,
                    value,
                }
            }
            OperationKind::Delete => Self::Delete {
                collection: reader.name()?,
                key: reader.key()?,
            },
            OperationKind::CreateCollection => Self::CreateCollection {
                name: reader.name()?,
            },
            OperationKind::DropCollection => Self::DropCollection {
                name: reader.name()?,
            },
            OperationKind::Batch => {
                let count = reader.u16()? as usize;
                if count > BATCH_OPERATIONS_MAX {
                    return Err(RecordError::MalformedBody);
                }
                let mut operations = Vec::with_capacity(count);
                for _ in 0..count {
                    let kind = reader.u8()?;
                    let collection = reader.name()?;
                    let key = reader.key()?;
                    operations.push(match OperationKind::from_u8(kind) {
                        Some(OperationKind::Put) => {
                            let len = reader.u32()? as usize;
                            if len > VALUE_BYTES_MAX {
                                return Err(RecordError::MalformedBody);
                            }
                            BatchOperation::Put {
                                collection,
                                key,
                                value: reader.take(len)?,
                            }
                        }
                        Some(OperationKind::Delete) => BatchOperation::Delete { collection, key },
                        _ => return Err(RecordError::MalformedBody),
                    });
                }
                Self::Batch(operations)
            }
            OperationKind::EpochStart => Self::EpochStart,
            OperationKind::SnapshotBegin => {
                let partition = reader.u32()?;
                let snapshot_lsn = reader.u64()?;
                let count = reader.u32()? as usize;
                if count > reader.bytes.len() / 16 {
                    return Err(RecordError::MalformedBody);
                }
                let mut epochs = Vec::with_capacity(count);
                for _ in 0..count {
                    epochs.push((reader.u64()?, reader.u64()?));
                }
                Self::SnapshotBegin {
                    partition,
                    snapshot_lsn,
                    epochs,
                }
            }
            OperationKind::SnapshotEnd => Self::SnapshotEnd {
                records: reader.u64()?,
            },
            OperationKind::ClientRequests => {
                // Each client takes at least 29 bytes: bound the allocation by the body.
                let count = reader.u32()? as usize;
                if count > reader.bytes.len() / 29 {
                    return Err(RecordError::MalformedBody);
                }
                let mut clients = Vec::with_capacity(count);
                for _ in 0..count {
                    let client = reader.u64()?;
                    let forgotten = match (reader.u8()?, reader.u64()?) {
                        (0, 0) => None,
                        (1, forgotten) => Some(forgotten),
                        _ => return Err(RecordError::MalformedBody),
                    };
                    let last_lsn = reader.u64()?;
                    let applied = reader.u32()? as usize;
                    if applied > reader.bytes.len() / 24 {
                        return Err(RecordError::MalformedBody);
                    }
                    let mut window = ClientWindow {
                        applied: Default::default(),
                        forgotten_up_to: forgotten,
                        last_lsn,
                    };
                    for _ in 0..applied {
                        let sequence = reader.u64()?;
                        let lsn = reader.u64()?;
                        let hlc = reader.u64()?;
                        // Written in ascending order; anything else was not written by us.
                        if window
                            .applied
                            .last()
                            .is_some_and(|(last, _)| last >= sequence)
                        {
                            return Err(RecordError::MalformedBody);
                        }
                        window.applied.insert(sequence, (lsn, hlc));
                    }
                    clients.push((client, window));
                }
                Self::ClientRequests(clients)
            }
        };
        reader.finish()?;
        Ok(operation)
    }
}

/// Appends a record validated elsewhere (a leader's, on the replication path) to `out` and
/// returns its length: byte for byte, except the header's `durable_lsn`, which is set to
/// `durable_lsn` (and the header crc with it).
///
/// Why: `durable_lsn` is the writer's evidence for recovery (a valid record claiming LSN `d`
/// durable makes a bad record at or below `d` corruption, not a torn tail; see `scan`). It
/// must be true of the log the record is written into; the leader's value is true of the
/// leader's log, and a follower that wrote it could report corruption after a torn write of
/// records it had not yet made durable. The body and its crc are the leader's.
pub fn copy_record_restamped(
    out: &mut impl RecordSink,
    record: &RecordRef<'_>,
    durable_lsn: u64,
) -> usize {
    let mut header = *record.header;
    header.durable_lsn = durable_lsn.into();
    header.header_crc = 0.into();
    let crc = checksum::crc32c(&header.as_bytes()[HEADER_CRC_COVERS_FROM..]);
    header.header_crc = crc.into();
    let start = out.written_len();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(record.body);
    debug_assert!(RecordRef::validate(out.written_from(start)).is_ok());
    record.len()
}

/// A sink that computes the crc32c of the bytes written through it: long slices (values) from
/// the caller's bytes as they are copied, short ones (lengths, names, keys) in one pass over
/// the written bytes when a long slice or the end comes.
///
/// Why: the crc of a 64 KiB value read back from the staging buffer after the copy ran at
/// ~10 GB/s (26% of a shard's time in 64 KiB puts); the caller's value, just read by the copy,
/// is in cache, and its crc runs at the checksum's full speed.
struct BodyCrc<'a, S: RecordSink> {
    out: &'a mut S,
    crc: u32,
    /// `out`'s length up to which `crc` covers.
    covered: usize,
}

/// Slices at least this long are checksummed from the caller's bytes; shorter ones with their
/// neighbours, since each crc call costs a few nanoseconds.
const BODY_CRC_SOURCE_BYTES_MIN: usize = 256;

impl<'a, S: RecordSink> BodyCrc<'a, S> {
    fn new(out: &'a mut S) -> Self {
        let covered = out.written_len();
        Self {
            out,
            crc: 0,
            covered,
        }
    }

    fn catch_up(&mut self) {
        let covered = self.covered;
        self.crc = checksum::crc32c_append(self.crc, self.out.written_from(covered));
        self.covered = self.out.written_len();
    }

    /// The sink and the crc32c of everything written through this one.
    fn finish(mut self) -> (&'a mut S, u32) {
        self.catch_up();
        (self.out, self.crc)
    }
}

impl<S: RecordSink> RecordSink for BodyCrc<'_, S> {
    fn written_len(&self) -> usize {
        self.out.written_len()
    }
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        if bytes.len() < BODY_CRC_SOURCE_BYTES_MIN {
            self.out.extend_from_slice(bytes);
            return;
        }
        self.catch_up();
        self.out.extend_from_slice(bytes);
        self.crc = checksum::crc32c_append(self.crc, bytes);
        self.covered = self.out.written_len();
    }
    fn push(&mut self, byte: u8) {
        self.out.push(byte);
    }
    fn written_from(&mut self, start: usize) -> &mut [u8] {
        self.out.written_from(start)
    }
}

/// Appends one whole record (header and body) to `out` and returns its length.
///
/// The body is encoded in place after a reserved header, then the header is filled in and
/// checksummed, so a record costs one pass over its bytes plus the two crcs (the body's taken
/// from the caller's values, see [`BodyCrc`]).
pub fn encode_record(
    out: &mut impl RecordSink,
    meta: RecordMeta,
    operation: &Operation<'_>,
) -> usize {
    encode_record_with_request(out, meta, None, operation)
}

/// [`encode_record`] for a write that carries a client request id (puts, deletes, batches).
pub fn encode_record_with_request(
    out: &mut impl RecordSink,
    meta: RecordMeta,
    request: Option<RequestId>,
    operation: &Operation<'_>,
) -> usize {
    let start = out.written_len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    let mut out = BodyCrc::new(out);
    if let Some(request) = request {
        assert!(
            matches!(
                operation.kind(),
                OperationKind::Put | OperationKind::Delete | OperationKind::Batch
            ),
            "only puts, deletes and batches carry request ids"
        );
        out.extend_from_slice(&request.client.to_le_bytes());
        out.extend_from_slice(&request.sequence.to_le_bytes());
    }
    operation.encode_body(&mut out);
    let (out, body_crc) = out.finish();
    let body_len = out.written_len() - start - RECORD_HEADER_BYTES;
    assert!(body_len <= RECORD_BODY_BYTES_MAX, "body over the limit");
    let head = &mut out.written_from(start)[..RECORD_HEADER_BYTES];
    let header = RecordHeader {
        magic: RECORD_MAGIC.into(),
        header_crc: 0.into(),
        format_version: FORMAT_VERSION.into(),
        kind: operation.kind() as u8,
        flags: if request.is_some() {
            FLAG_REQUEST_ID
        } else {
            0
        },
        body_len: (body_len as u32).into(),
        body_crc: body_crc.into(),
        reserved: 0.into(),
        lsn: meta.lsn.into(),
        epoch: meta.epoch.into(),
        hlc: meta.hlc.into(),
        durable_lsn: meta.durable_lsn.into(),
    };
    head.copy_from_slice(header.as_bytes());
    let header_crc = checksum::crc32c(&head[HEADER_CRC_COVERS_FROM..]);
    head[4..8].copy_from_slice(&header_crc.to_le_bytes());
    // Paired check (style.md rule 6): what we produce must validate as what we meant.
    debug_assert!(RecordRef::validate(out.written_from(start)).is_ok());
    out.written_len() - start
}

/// Bytes an operation's record will take, without encoding it.
pub fn encoded_len(operation: &Operation<'_>) -> usize {
    let body = match operation {
        Operation::Put {
            collection,
            key,
            value,
        } => 1 + collection.len() + 2 + key.len() + value.len(),
        Operation::Delete { collection, key } => 1 + collection.len() + 2 + key.len(),
        Operation::CreateCollection { name } | Operation::DropCollection { name } => 1 + name.len(),
        Operation::Batch(operations) => {
            2 + operations
                .iter()
                .map(|operation| match operation {
                    BatchOperation::Put {
                        collection,
                        key,
                        value,
                    } => 1 + 1 + collection.len() + 2 + key.len() + 4 + value.len(),
                    BatchOperation::Delete { collection, key } => {
                        1 + 1 + collection.len() + 2 + key.len()
                    }
                })
                .sum::<usize>()
        }
        Operation::EpochStart => 0,
        Operation::SnapshotBegin { epochs, .. } => 4 + 8 + 4 + 16 * epochs.len(),
        Operation::SnapshotEnd { .. } => 8,
        Operation::ClientRequests(clients) => {
            4 + clients
                .iter()
                .map(|(_, window)| 8 + 1 + 8 + 8 + 4 + 24 * window.applied.len())
                .sum::<usize>()
        }
    };
    RECORD_HEADER_BYTES + body
}

/// Bytes a write's record will take with a request id (`with_request`) or without.
pub fn encoded_len_with_request(operation: &Operation<'_>, with_request: bool) -> usize {
    encoded_len(operation) + if with_request { REQUEST_ID_BYTES } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RecordMeta {
        RecordMeta {
            lsn: 7,
            epoch: 3,
            hlc: 0x0102_0304_0506_0708,
            durable_lsn: 6,
        }
    }

    /// Golden bytes: the on-disk format of a put must never change by accident.
    #[test]
    fn golden_put_record() {
        let mut out = Vec::new();
        let operation = Operation::Put {
            collection: "c",
            key: b"k",
            value: b"v",
        };
        let len = encode_record(&mut out, meta(), &operation);
        assert_eq!(len, out.len());
        assert_eq!(len, encoded_len(&operation));
        let expected_body = [1u8, b'c', 1, 0, b'k', b'v'];
        assert_eq!(&out[RECORD_HEADER_BYTES..], &expected_body);
        let golden_header: [u8; RECORD_HEADER_BYTES] = [
            b'C', b'G', b'R', b'1', // magic
            0, 0, 0, 0, // header crc, checked below
            1, 0, // version
            1, // kind put
            0, // flags
            6, 0, 0, 0, // body len
            0, 0, 0, 0, // body crc, checked below
            0, 0, 0, 0, // reserved
            7, 0, 0, 0, 0, 0, 0, 0, // lsn
            3, 0, 0, 0, 0, 0, 0, 0, // epoch
            8, 7, 6, 5, 4, 3, 2, 1, // hlc
            6, 0, 0, 0, 0, 0, 0, 0, // durable lsn
        ];
        let mut header = out[..RECORD_HEADER_BYTES].to_vec();
        let body_crc = u32::from_le_bytes(header[16..20].try_into().unwrap());
        assert_eq!(body_crc, ::crc32c::crc32c(&expected_body));
        header[16..20].fill(0);
        let header_crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        header[4..8].fill(0);
        assert_eq!(header, golden_header);
        let mut check = out[..RECORD_HEADER_BYTES].to_vec();
        check[4..8].fill(0);
        assert_eq!(header_crc, ::crc32c::crc32c(&check[8..]));
        assert_eq!(format!("{header_crc:08x}/{body_crc:08x}"), GOLDEN_CRCS);
    }

    /// Header crc and body crc of the golden record, pinned.
    const GOLDEN_CRCS: &str = "c59e3913/7fc32fe4";

    #[test]
    fn all_zero_header_never_validates() {
        let zeros = [0u8; RECORD_HEADER_BYTES];
        assert_eq!(
            RecordHeader::validate(&zeros).unwrap_err(),
            RecordError::ZeroHeader
        );
        assert_ne!(::crc32c::crc32c(&zeros[HEADER_CRC_COVERS_FROM..]), 0);
    }

    #[test]
    fn every_operation_round_trips() {
        let operations = vec![
            Operation::Put {
                collection: "users",
                key: b"alice",
                value: b"{\"age\":3}",
            },
            Operation::Put {
                collection: "u",
                key: b"empty",
                value: b"",
            },
            Operation::Delete {
                collection: "users",
                key: b"bob",
            },
            Operation::CreateCollection { name: "users" },
            Operation::DropCollection { name: "users" },
            Operation::Batch(vec![
                BatchOperation::Put {
                    collection: "a",
                    key: b"1",
                    value: b"one",
                },
                BatchOperation::Delete {
                    collection: "b",
                    key: b"2",
                },
            ]),
            Operation::EpochStart,
            Operation::SnapshotBegin {
                partition: 9,
                snapshot_lsn: 100,
                epochs: vec![(1, 1), (4, 50)],
            },
            Operation::SnapshotEnd { records: 12 },
            Operation::ClientRequests(vec![
                (
                    5,
                    ClientWindow {
                        applied: [(3, (40, 400)), (4, (41, 401))].into_iter().collect(),
                        forgotten_up_to: Some(2),
                        last_lsn: 41,
                    },
                ),
                (6, ClientWindow::default()),
            ]),
        ];
        for operation in operations {
            let mut out = Vec::new();
            let len = encode_record(&mut out, meta(), &operation);
            assert_eq!(len, encoded_len(&operation), "{operation:?}");
            let record = RecordRef::validate(&out).unwrap();
            assert_eq!(record.header.meta(), meta());
            assert_eq!(record.operation().unwrap(), operation);
        }
    }

    #[test]
    fn writes_carry_request_ids_and_nothing_else_may() {
        let request = RequestId {
            client: 0xAB,
            sequence: 9,
        };
        let put = Operation::Put {
            collection: "c",
            key: b"k",
            value: b"v",
        };
        let mut out = Vec::new();
        let len = encode_record_with_request(&mut out, meta(), Some(request), &put);
        assert_eq!(len, encoded_len_with_request(&put, true));
        let record = RecordRef::validate(&out).unwrap();
        assert_eq!(record.request_id(), Some(request));
        assert_eq!(record.operation().unwrap(), put);
        // Without the flag, the same operation has no request id and the old layout.
        let mut plain = Vec::new();
        encode_record(&mut plain, meta(), &put);
        assert_eq!(RecordRef::validate(&plain).unwrap().request_id(), None);
        assert_eq!(plain.len() + REQUEST_ID_BYTES, out.len());

        // The flag on a kind that carries no request, an unknown flag, or a body too short
        // for the id: each refused at the header.
        let reseal = |mut bytes: Vec<u8>, flags: u8| {
            bytes[11] = flags;
            let crc = ::crc32c::crc32c(&bytes[HEADER_CRC_COVERS_FROM..RECORD_HEADER_BYTES]);
            bytes[4..8].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let mut create = Vec::new();
        encode_record(
            &mut create,
            meta(),
            &Operation::CreateCollection { name: "users" },
        );
        assert_eq!(
            RecordHeader::validate(&reseal(create.clone(), FLAG_REQUEST_ID)).err(),
            Some(RecordError::InvalidHeaderField)
        );
        assert_eq!(
            RecordHeader::validate(&reseal(out.clone(), 2)).err(),
            Some(RecordError::InvalidHeaderField)
        );
        let mut short = Vec::new();
        encode_record(
            &mut short,
            meta(),
            &Operation::Delete {
                collection: "c",
                key: b"k",
            },
        );
        assert!(short.len() - RECORD_HEADER_BYTES < REQUEST_ID_BYTES);
        assert_eq!(
            RecordHeader::validate(&reseal(short, FLAG_REQUEST_ID)).err(),
            Some(RecordError::InvalidHeaderField)
        );
    }

    #[test]
    fn a_flipped_bit_anywhere_is_caught() {
        let mut out = Vec::new();
        encode_record(
            &mut out,
            meta(),
            &Operation::Put {
                collection: "c",
                key: b"key",
                value: b"value",
            },
        );
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(RecordRef::validate(&bad).is_err(), "bit {bit} not caught");
        }
    }
}
