//! Recovery's decisions about a partition's WAL, as a pure function over segment images
//! (style.md rules 1 and 10): which records are the log, where it ends, what is a torn tail to
//! cut off and what is corruption to refuse.
//!
//! The rule. Scanning stops at the first position that is not the next valid record (zero
//! header, failed crc, wrong LSN, epoch going backwards, no room left in the segment). Then:
//! - if the next segment starts at the expected LSN, the log continues there (a segment roll:
//!   what follows this segment's data is zeros, never-written space, or in a recycled file
//!   the previous life's records);
//! - otherwise, if any valid record *after* that position has `durable_lsn` at or past the LSN
//!   expected there, the missing record had been made durable before that later record was
//!   staged: this is **corruption**, reported with file, offset and LSN, and the partition
//!   refuses to open;
//! - otherwise this is the **end of the log**: everything after it was never acknowledged (no
//!   sync covered it), so it is cut off: later segments are removed and the rest of this
//!   segment is zeroed.
//!
//!
//! One shape is not a stop: zeros from the position to the end of its block, then the expected
//! LSN at the next block. The writer leaves such a gap when a flush ends mid-block and the next
//! flush starts on a fresh block, so that two flushes in flight never write the same block
//! (docs/storage.md, "Two flushes in flight"). Nothing of the log can be in the gap: the record
//! expected there is the one at the block boundary.
//!
//! What this cannot tell apart: a bit flip inside the last groups written while no later record
//! was staged (no later record vouches for them: the last flush, or the last two when two were
//! in flight) looks like a torn write and is cut off. Every WAL that commits a group with one
//! write and one sync has this window; docs/storage.md says so.

use crate::constants::{ALIGNMENT_BYTES_MAX, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::record::{RecordError, RecordRef, RECORD_MAGIC};
use crate::segment::SegmentHeader;

/// One segment file's bytes, as read at recovery.
pub struct SegmentImage<'a> {
    /// Base LSN from the file name.
    pub base_lsn: u64,
    /// The whole file.
    pub bytes: &'a [u8],
}

/// A segment that is part of the recovered log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedSegment {
    /// Index into the input.
    pub index: usize,
    /// LSN of the first record.
    pub base_lsn: u64,
    /// Offset just past the last valid record.
    pub end_offset: u64,
    /// LSN of the last record, or `base_lsn - 1` if it holds none.
    pub last_lsn: u64,
    /// Sparse `(lsn, offset)` samples for seeking.
    pub samples: Vec<(u64, u64)>,
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Segments that hold the log, in order.
    pub segments: Vec<ScannedSegment>,
    /// Input indexes of segments past the end of the log, to remove.
    pub remove: Vec<usize>,
    /// `(input index, from, to)`: bytes of the last kept segment to zero (a torn tail).
    pub zero: Option<(usize, u64, u64)>,
    /// The LSN the next append gets.
    pub next_lsn: u64,
}

/// A bad record before the tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCorruption {
    /// Input index of the segment.
    pub index: usize,
    /// Offset of the bad record in it.
    pub offset: u64,
    /// The LSN expected there.
    pub lsn: u64,
    /// What was wrong, and the evidence that it had been durable.
    pub reason: String,
}

/// Scans `segments` (sorted by base LSN, the first one starting at or before `first_lsn`),
/// calling `visit` for each valid record with LSN `>= first_lsn`, in order.
///
/// `sample_stride_bytes` sets how often `(lsn, offset)` samples are taken. The same decisions
/// as a [`Scanner`] fed every segment (this is how tests and fuzzers drive it, with every image
/// in memory; recovery feeds the scanner one segment at a time).
pub fn scan(
    segments: &[SegmentImage<'_>],
    partition: u32,
    first_lsn: u64,
    sample_stride_bytes: u64,
    mut visit: impl FnMut(RecordRef<'_>),
) -> Result<ScanOutcome, ScanCorruption> {
    let bases = segments.iter().map(|segment| segment.base_lsn).collect();
    let mut scanner = Scanner::new(bases, partition, first_lsn, sample_stride_bytes)?;
    for (index, segment) in segments.iter().enumerate() {
        let next_header = segments.get(index + 1).map(|next| next.bytes);
        if let Fed::Stopped(stop) = scanner.feed(segment.bytes, next_header, &mut visit) {
            let mut evidence = None;
            for (at, later) in segments.iter().enumerate().skip(index) {
                evidence = stop.evidence_in(at, later.bytes);
                if evidence.is_some() {
                    break;
                }
            }
            return scanner.finish(stop, evidence, segment.bytes);
        }
    }
    Ok(scanner.finish_empty())
}

/// Recovery's scan, fed one segment at a time, in order, so that recovery holds one segment
/// in memory rather than the whole log (a log larger than memory must still open).
///
/// [`Scanner::feed`] goes on while each segment ran out and the next one starts at the LSN
/// expected (a roll). The first segment that does not stops the scan: then every later valid
/// record is looked at ([`ScanStop::evidence_in`], one segment at a time, from the stop on) for
/// one written after the missing LSN was durable, and [`Scanner::finish`] decides between the
/// end of the log and corruption.
pub struct Scanner {
    bases: Vec<u64>,
    partition: u32,
    first_lsn: u64,
    sample_stride_bytes: u64,
    /// The next segment to feed.
    index: usize,
    expected: u64,
    last_epoch: u64,
    outcome: ScanOutcome,
}

/// The result of feeding a segment.
pub enum Fed {
    /// The segment rolled on to the next one: feed it.
    Next,
    /// The scan stopped in this segment.
    Stopped(ScanStop),
}

/// Where and why a scan stopped.
pub struct ScanStop {
    index: usize,
    offset: u64,
    expected: u64,
    reason: String,
    header_ok: bool,
    scanned: Option<ScannedSegment>,
}

impl ScanStop {
    /// In segment `index` (the stopped one, or a later one), a valid record written after the
    /// LSN missing at the stop had been made durable: `(index, offset, durable_lsn)`.
    pub fn evidence_in(&self, index: usize, bytes: &[u8]) -> Option<(usize, u64, u64)> {
        let from = if index == self.index {
            self.offset as usize + 1
        } else {
            0
        };
        find_evidence(index, bytes, from, self.expected)
    }

    /// The segment the scan stopped in.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Scanner {
    /// A scan of the segments with these base LSNs (sorted); refuses a log that starts after
    /// `first_lsn`.
    pub fn new(
        bases: Vec<u64>,
        partition: u32,
        first_lsn: u64,
        sample_stride_bytes: u64,
    ) -> Result<Self, ScanCorruption> {
        if let Some(&first) = bases.first() {
            if first > first_lsn {
                return Err(ScanCorruption {
                    index: 0,
                    offset: 0,
                    lsn: first_lsn,
                    reason: format!(
                        "the WAL starts at LSN {first} but LSN {first_lsn} is the first one needed"
                    ),
                });
            }
        }
        Ok(Scanner {
            expected: bases.first().copied().unwrap_or(first_lsn),
            bases,
            partition,
            first_lsn,
            sample_stride_bytes,
            index: 0,
            last_epoch: 0,
            outcome: ScanOutcome {
                segments: Vec::new(),
                remove: Vec::new(),
                zero: None,
                next_lsn: first_lsn,
            },
        })
    }

    /// Scans the next segment's `bytes` (the whole file), with the first bytes of the segment
    /// after it (at least its header), if there is one.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        next_header: Option<&[u8]>,
        mut visit: impl FnMut(RecordRef<'_>),
    ) -> Fed {
        let index = self.index;
        assert!(index < self.bases.len(), "fed past the last segment");
        self.index += 1;
        let base_lsn = self.bases[index];
        let expected_base = self.expected;
        let header_ok = SegmentHeader::read(bytes)
            .filter(|header| {
                header.base_lsn() == base_lsn
                    && header.partition() == self.partition
                    && header.base_lsn() == expected_base
            })
            .is_some();
        let (stop_offset, reason, scanned) = if !header_ok {
            (0u64, "bad segment header".to_string(), None)
        } else {
            let mut scanned = ScannedSegment {
                index,
                base_lsn,
                end_offset: SEGMENT_HEADER_BYTES as u64,
                last_lsn: base_lsn - 1,
                samples: Vec::new(),
            };
            let mut offset = SEGMENT_HEADER_BYTES;
            let mut next_sample = 0u64;
            let reason = loop {
                if offset + RECORD_HEADER_BYTES > bytes.len() {
                    break "end of segment".to_string();
                }
                // A record whose crcs hold but whose body does not decode was never written by
                // this engine: it is as bad as a failed crc, and replay must not meet it.
                let validate = |offset: usize| {
                    RecordRef::validate(&bytes[offset..])
                        .and_then(|record| record.operation().map(|_| record))
                };
                let mut validated = validate(offset);
                if validated.is_err() {
                    // Zeros to the end of the block: a gap the writer left between two flushes,
                    // or zeros. What decides is the record at the next block (and a stop is
                    // reported there, where the record expected would start).
                    if let Some(boundary) = zero_gap_end(bytes, 0, offset)
                        .filter(|boundary| boundary + RECORD_HEADER_BYTES <= bytes.len())
                    {
                        offset = boundary;
                        validated = validate(offset);
                    }
                }
                match validated {
                    Ok(record) => {
                        let meta = record.header.meta();
                        if meta.lsn != self.expected {
                            break format!(
                                "record has LSN {} where {} belongs",
                                meta.lsn, self.expected
                            );
                        }
                        if meta.epoch < self.last_epoch {
                            break format!("epoch {} after epoch {}", meta.epoch, self.last_epoch);
                        }
                        if offset as u64 >= next_sample {
                            scanned.samples.push((meta.lsn, offset as u64));
                            next_sample = offset as u64 + self.sample_stride_bytes;
                        }
                        self.last_epoch = meta.epoch;
                        if meta.lsn >= self.first_lsn {
                            visit(record);
                        }
                        self.expected += 1;
                        offset += record.len();
                        scanned.end_offset = offset as u64;
                        scanned.last_lsn = meta.lsn;
                    }
                    Err(RecordError::ZeroHeader) => break "zero header".into(),
                    Err(error) => break error.to_string(),
                }
            };
            (offset as u64, reason, Some(scanned))
        };

        // A segment followed by one that starts at the expected LSN is a roll, whatever stopped
        // the scan: nothing is missing. The writer puts a record in the next segment only once
        // it did not fit in this one, and creates the next segment only after this one's last
        // write completed, so no record of that LSN was ever in this segment; what follows its
        // data is zeros, never-written space, or, in a recycled file, the previous life's
        // records. Only then may later records carry `durable_lsn`s at or past `expected`
        // without that being evidence of a lost record (they are its successors).
        let rolls_on = header_ok
            && next_header
                .and_then(SegmentHeader::read)
                .is_some_and(|next| next.base_lsn() == self.expected);
        if rolls_on {
            self.outcome
                .segments
                .push(scanned.expect("a segment that ran out had a valid header"));
            return Fed::Next;
        }
        Fed::Stopped(ScanStop {
            index,
            offset: stop_offset,
            expected: self.expected,
            reason,
            header_ok,
            scanned,
        })
    }

    /// Decides, once the scan stopped: corruption if `evidence` (from
    /// [`ScanStop::evidence_in`] over the stopped segment and every later one) was found, else
    /// the end of the log there. `bytes` is the stopped segment's.
    pub fn finish(
        mut self,
        stop: ScanStop,
        evidence: Option<(usize, u64, u64)>,
        bytes: &[u8],
    ) -> Result<ScanOutcome, ScanCorruption> {
        let index = stop.index;
        if let Some((at_index, at_offset, durable_lsn)) = evidence {
            return Err(ScanCorruption {
                index,
                offset: stop.offset,
                lsn: stop.expected,
                reason: format!(
                    "{}, yet the valid record at offset {at_offset} of segment {} \
                     was written after LSN {durable_lsn} was durable",
                    stop.reason, self.bases[at_index]
                ),
            });
        }
        if let Some(scanned) = stop.scanned {
            self.outcome.segments.push(scanned);
        }
        // The end of the log.
        if !stop.header_ok {
            self.outcome.remove.push(index);
        } else if let Some(last_nonzero) = last_nonzero(bytes) {
            if last_nonzero as u64 >= stop.offset {
                self.outcome.zero = Some((index, stop.offset, last_nonzero as u64 + 1));
            }
        }
        self.outcome.remove.extend(index + 1..self.bases.len());
        Ok(self.finish_empty())
    }

    /// The outcome of a scan that had no segment to feed, or that [`Scanner::finish`] ended.
    pub fn finish_empty(mut self) -> ScanOutcome {
        self.outcome.next_lsn = self.expected.max(self.first_lsn);
        self.outcome
    }
}

/// Where a gap a flush leaves before the next block ends, if one begins at `at` in `bytes`
/// (read from file offset `base`): the next block boundary, as an index into `bytes`, if the
/// bytes from `at` up to it (or up to their end) are zeros. `None` if `at` is a boundary or a
/// byte before the next one is not zero. Recovery and the readers of durable records share it.
pub(crate) fn zero_gap_end(bytes: &[u8], base: u64, at: usize) -> Option<usize> {
    let block = ALIGNMENT_BYTES_MAX as u64;
    let boundary = ((base + at as u64).next_multiple_of(block) - base) as usize;
    let checked = boundary.min(bytes.len());
    (boundary > at && bytes[at..checked].iter().all(|&byte| byte == 0)).then_some(boundary)
}

/// Looks past `from` in segment `index`'s `bytes` for a valid record whose `durable_lsn` is at
/// least `lsn`. Returns `(index, offset, durable_lsn)`.
fn find_evidence(index: usize, bytes: &[u8], from: usize, lsn: u64) -> Option<(usize, u64, u64)> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let haystack = bytes.get(from..)?;
    for hit in memchr::memmem::find_iter(haystack, &magic) {
        let offset = from + hit;
        if let Ok(record) = RecordRef::validate(&bytes[offset..]) {
            let durable_lsn = record.header.meta().durable_lsn;
            if durable_lsn >= lsn {
                return Some((index, offset as u64, durable_lsn));
            }
        }
    }
    None
}

/// Index of the last non-zero byte. Whole 64-byte blocks are tested at once (the compiler turns
/// that into vector compares), since a preallocated segment is mostly zeros.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 64;
    let whole = bytes.len() - bytes.len() % BLOCK;
    if let Some(at) = bytes[whole..].iter().rposition(|&byte| byte != 0) {
        return Some(whole + at);
    }
    let block = bytes[..whole]
        .chunks_exact(BLOCK)
        .rposition(|block| block.iter().fold(0u8, |any, &byte| any | byte) != 0)?;
    let start = block * BLOCK;
    bytes[start..start + BLOCK]
        .iter()
        .rposition(|&byte| byte != 0)
        .map(|at| start + at)
}

#[cfg(test)]
mod tests {
    use super::last_nonzero;

    #[test]
    fn last_nonzero_finds_the_last_set_byte_anywhere() {
        assert_eq!(last_nonzero(&[]), None);
        assert_eq!(last_nonzero(&[0; 200]), None);
        for len in [1, 63, 64, 65, 200] {
            for at in 0..len {
                let mut bytes = vec![0u8; len];
                bytes[at] = 1;
                if at > 0 {
                    bytes[0] = 7;
                }
                assert_eq!(last_nonzero(&bytes), Some(at), "len {len} at {at}");
            }
        }
    }
}
