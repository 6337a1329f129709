//! Segment files: naming and the fixed segment header.
//!
//! A partition's WAL is a sequence of preallocated segment files named by the LSN of their
//! first record (`00000000000000000001.wal`). The first [`SEGMENT_HEADER_BYTES`] hold a zerocopy
//! header (magic, crc, partition, base LSN, size); records follow, packed, never spanning two
//! segments. The rest of a segment is zeros until written.

use crate::checksum;
use crate::constants::SEGMENT_HEADER_BYTES;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// "CGSG" as a little-endian u32.
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"CGSG");
/// Segment format version.
pub const SEGMENT_FORMAT_VERSION: u16 = 1;
/// File name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".wal";

/// The header at offset 0 of every segment.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct SegmentHeader {
    magic: U32,
    header_crc: U32,
    format_version: U16,
    reserved: U16,
    partition: U32,
    base_lsn: U64,
    segment_bytes: U64,
}

/// Bytes of [`SegmentHeader`].
pub const SEGMENT_HEADER_STRUCT_BYTES: usize = 32;
const _: () = assert!(std::mem::size_of::<SegmentHeader>() == SEGMENT_HEADER_STRUCT_BYTES);
const _: () = assert!(SEGMENT_HEADER_STRUCT_BYTES <= SEGMENT_HEADER_BYTES);

impl SegmentHeader {
    /// Encodes a header into the start of `block` (the rest is left as is).
    pub fn write(block: &mut [u8], partition: u32, base_lsn: u64, segment_bytes: u64) {
        let mut header = SegmentHeader {
            magic: SEGMENT_MAGIC.into(),
            header_crc: 0.into(),
            format_version: SEGMENT_FORMAT_VERSION.into(),
            reserved: 0.into(),
            partition: partition.into(),
            base_lsn: base_lsn.into(),
            segment_bytes: segment_bytes.into(),
        };
        header.header_crc = checksum::crc32c(&header.as_bytes()[8..]).into();
        block[..SEGMENT_HEADER_STRUCT_BYTES].copy_from_slice(header.as_bytes());
    }

    /// Reads and checks a header; `None` if it is missing, zero or corrupt.
    pub fn read(bytes: &[u8]) -> Option<SegmentHeader> {
        let header = SegmentHeader::read_from_prefix(bytes).ok()?.0;
        if header.magic.get() != SEGMENT_MAGIC
            || header.format_version.get() != SEGMENT_FORMAT_VERSION
            || checksum::crc32c(&header.as_bytes()[8..]) != header.header_crc.get()
        {
            return None;
        }
        Some(header)
    }

    /// LSN of the segment's first record.
    pub fn base_lsn(&self) -> u64 {
        self.base_lsn.get()
    }
    /// Partition the segment belongs to.
    pub fn partition(&self) -> u32 {
        self.partition.get()
    }
    /// Size the segment was created with.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.get()
    }
}

/// File name of the segment whose first record has `base_lsn`.
pub fn segment_name(base_lsn: u64) -> String {
    format!("{base_lsn:020}{SEGMENT_SUFFIX}")
}

/// Suffix of a pruned segment file kept for reuse (see `docs/storage.md`, recycled segments).
pub const RECYCLED_SUFFIX: &str = ".recycle";

/// The name a pruned segment (of base LSN `base_lsn`) is kept under until a new segment reuses
/// it: not a segment name, so recovery never reads it as part of the log.
pub fn recycled_name(base_lsn: u64) -> String {
    format!("{base_lsn:020}{RECYCLED_SUFFIX}")
}

/// Whether `name` is a pruned segment kept for reuse.
pub fn is_recycled_name(name: &str) -> bool {
    name.strip_suffix(RECYCLED_SUFFIX).is_some_and(|digits| {
        digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit())
    })
}

/// Base LSN of a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_flips() {
        let mut block = vec![0u8; SEGMENT_HEADER_BYTES];
        SegmentHeader::write(&mut block, 3, 77, 1 << 20);
        let header = SegmentHeader::read(&block).unwrap();
        assert_eq!(
            (
                header.partition(),
                header.base_lsn(),
                header.segment_bytes()
            ),
            (3, 77, 1 << 20)
        );
        for bit in 0..SEGMENT_HEADER_STRUCT_BYTES * 8 {
            let mut bad = block.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(SegmentHeader::read(&bad).is_none(), "bit {bit}");
        }
        assert!(SegmentHeader::read(&vec![0u8; SEGMENT_HEADER_BYTES]).is_none());
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(42), "00000000000000000042.wal");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
    }
}
