//! Proves that recovery tells a torn tail from corruption and never accepts a damaged record
//! (design.md section 5, promise 5; style.md rule 10):
//! - a last record torn at *every* byte offset (the rest zeros) ends the log exactly at the
//!   previous record, and the torn bytes are physically cut (they never resurface);
//! - a zeroed 512-byte sector inside the acknowledged log is reported as corruption naming the
//!   offset and LSN of the first damaged record, or, when no later record vouches that it was
//!   durable (the final unsynced group), cut off with everything after it;
//! - every single flipped bit of a middle record is corruption, of the last record a cut tail.
//!
//! Each case runs on the pure `scan::scan` over hand-built segment images (records carrying the
//! `durable_lsn` a group-committing writer would give them), both as one flush at a time
//! leaves them and as two flushes in flight do (each group ends its block, zeros fill the rest,
//! and a group's records were staged while the two before it were in flight); the latter adds
//! a later flush that landed without the one before it (cut, never accepted) and a damaged gap
//! (never skipped). And end to end through
//! `Partition::open` on a `SimDisk`, checking which keys survive and that the reopened
//! partition takes new writes that a second reopen finds.

mod common;

use bytes::Bytes;
use common::{open, record_spans, segment_names, value, PARTITION};
use coregrid_engine::constants::{ALIGNMENT_BYTES_MAX, SEGMENT_HEADER_BYTES};
use coregrid_engine::partition::PartitionConfig;
use coregrid_engine::record::{encode_record, Operation, RecordMeta, RecordRef};
use coregrid_engine::rt;
use coregrid_engine::scan::{scan, ScanCorruption, ScanOutcome, SegmentImage};
use coregrid_engine::segment::SegmentHeader;
use coregrid_engine::sim::{CrashMode, SimDisk, SIM_SECTOR_BYTES};
use coregrid_engine::EngineError;

/// Bytes of each hand-built segment image (scan does not care about the configured size).
const IMAGE_BYTES: usize = 64 * 1024;
/// Records per hand-built segment.
const RECORDS_PER_SEGMENT: u64 = 24;
/// Records per group commit of the simulated writer.
const GROUP_RECORDS: u64 = 4;

/// Both shapes, for every scan test.
const SHAPES: [Flushes; 2] = [Flushes::OneAtATime, Flushes::TwoInFlight];

/// One record of a hand-built log.
#[derive(Clone, Copy, Debug)]
struct Span {
    segment: usize,
    offset: usize,
    len: usize,
    lsn: u64,
    durable_lsn: u64,
}

/// A hand-built two-segment log, as a group-committing writer leaves it: groups of
/// `GROUP_RECORDS`; a group's records were staged while the group before it was in flight, so
/// they carry the durable LSN of the group before that, except the group's last record, staged
/// after the previous flush completed.
struct Log {
    images: Vec<Vec<u8>>,
    bases: Vec<u64>,
    spans: Vec<Span>,
}

/// The two shapes a writer leaves.
#[derive(Clone, Copy, Debug)]
enum Flushes {
    /// One at a time: groups follow each other byte for byte; a group's records carry the
    /// durable LSN of the group before the previous one (the last record: of the previous).
    OneAtATime,
    /// Two in flight: each group ends its block (zeros to the boundary), and its records were
    /// staged while the two groups before it were in flight (the last record: one of them
    /// had completed).
    TwoInFlight,
}

impl Log {
    fn build(flushes: Flushes) -> Log {
        let group_end = |group: u64| group * GROUP_RECORDS; // last LSN of group `group` (1-based)
        let back = match flushes {
            Flushes::OneAtATime => 1,
            Flushes::TwoInFlight => 2,
        };
        let mut images = Vec::new();
        let mut bases = Vec::new();
        let mut spans = Vec::new();
        let mut lsn = 1u64;
        for segment in 0..2 {
            let mut image = vec![0u8; SEGMENT_HEADER_BYTES];
            SegmentHeader::write(&mut image, PARTITION, lsn, IMAGE_BYTES as u64);
            bases.push(lsn);
            for _ in 0..RECORDS_PER_SEGMENT {
                let group = (lsn - 1) / GROUP_RECORDS + 1;
                let last_of_group = lsn == group_end(group);
                let durable_lsn = if last_of_group {
                    group_end(group.saturating_sub(back))
                } else {
                    group_end(group.saturating_sub(back + 1))
                };
                let key = format!("key-{lsn}");
                let body: Vec<u8> = (0..(lsn * 7 % 61) as u8).map(|byte| byte ^ 0xa5).collect();
                let offset = image.len();
                let len = encode_record(
                    &mut image,
                    RecordMeta {
                        lsn,
                        epoch: 1,
                        hlc: 1000 + lsn,
                        durable_lsn,
                    },
                    &Operation::Put {
                        collection: "c",
                        key: key.as_bytes(),
                        value: &body,
                    },
                );
                spans.push(Span {
                    segment,
                    offset,
                    len,
                    lsn,
                    durable_lsn,
                });
                if last_of_group && matches!(flushes, Flushes::TwoInFlight) {
                    image.resize(image.len().next_multiple_of(ALIGNMENT_BYTES_MAX), 0);
                }
                lsn += 1;
            }
            image.resize(IMAGE_BYTES, 0);
            images.push(image);
        }
        Log {
            images,
            bases,
            spans,
        }
    }

    fn scan(&self, images: &[Vec<u8>]) -> (Result<ScanOutcome, ScanCorruption>, Vec<u64>) {
        let segments: Vec<SegmentImage<'_>> = self
            .bases
            .iter()
            .zip(images)
            .map(|(base_lsn, bytes)| SegmentImage {
                base_lsn: *base_lsn,
                bytes,
            })
            .collect();
        let mut visited = Vec::new();
        let result = scan(&segments, PARTITION, 1, 4096, |record| {
            visited.push(record.header.lsn())
        });
        (result, visited)
    }

    /// What recovery must decide when the records in `damaged` (sorted LSNs) no longer
    /// validate: corruption at the first one if a later intact record vouches for it, else the
    /// end of the log just before it.
    fn expected(&self, damaged: &[u64]) -> Expected {
        let first = damaged[0];
        let span = self.spans[first as usize - 1];
        let vouched = self.spans.iter().any(|later| {
            later.lsn > first && !damaged.contains(&later.lsn) && later.durable_lsn >= first
        });
        if vouched {
            Expected::Corruption {
                index: span.segment,
                offset: span.offset as u64,
                lsn: first,
            }
        } else {
            Expected::EndsBefore(first)
        }
    }
}

/// How many damaged logs a test found to be corruption, and how many a cut tail.
#[derive(Default)]
struct Tally {
    corruptions: usize,
    cuts: usize,
}

impl Log {
    /// LSNs of the records whose bytes in `images` differ from the intact log's.
    fn damaged(&self, images: &[Vec<u8>]) -> Vec<u64> {
        self.spans
            .iter()
            .filter(|span| {
                let range = span.offset..span.offset + span.len;
                images[span.segment][range.clone()] != self.images[span.segment][range]
            })
            .map(|span| span.lsn)
            .collect()
    }

    /// Checks the scan of `images`, whose `damaged` records no longer validate, against what
    /// recovery must decide ([`Log::expected`]), and counts the outcome in `tally`.
    fn check_damaged(&self, images: &[Vec<u8>], damaged: &[u64], what: &str, tally: &mut Tally) {
        let expected = self.expected(damaged);
        match expected {
            Expected::Corruption { .. } => tally.corruptions += 1,
            Expected::EndsBefore(_) => tally.cuts += 1,
        }
        check_scan(self, images, &expected, what).ok();
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Corruption { index: usize, offset: u64, lsn: u64 },
    EndsBefore(u64),
}

fn check_scan(
    log: &Log,
    images: &[Vec<u8>],
    expected: &Expected,
    what: &str,
) -> Result<ScanOutcome, ScanCorruption> {
    let (result, visited) = log.scan(images);
    match (expected, &result) {
        (Expected::Corruption { index, offset, lsn }, Err(corruption)) => {
            assert_eq!(
                (corruption.index, corruption.offset, corruption.lsn),
                (*index, *offset, *lsn),
                "{what}: corruption reported at the wrong place: {corruption:?}"
            );
        }
        (Expected::EndsBefore(lsn), Ok(outcome)) => {
            assert_eq!(outcome.next_lsn, *lsn, "{what}: log ends at the wrong LSN");
            assert_eq!(
                visited,
                (1..*lsn).collect::<Vec<_>>(),
                "{what}: visited records are not exactly the intact prefix"
            );
            let kept = outcome.segments.last().expect("a kept segment");
            assert_eq!(kept.last_lsn, lsn - 1, "{what}");
        }
        _ => panic!("{what}: expected {expected:?}, scan returned {result:?}"),
    }
    result
}

#[test]
fn scan_ends_a_torn_last_record_at_every_byte_offset() {
    for flushes in SHAPES {
        let log = Log::build(flushes);
        let last = *log.spans.last().unwrap();
        // The intact log first: everything is the log, nothing to cut.
        let (whole, visited) = log.scan(&log.images);
        let whole = whole.expect("intact log");
        assert_eq!(whole.next_lsn, last.lsn + 1);
        assert_eq!(visited, (1..=last.lsn).collect::<Vec<_>>());
        assert_eq!((whole.zero, whole.remove.len()), (None, 0));
        for cut in 0..last.len {
            let mut images = log.images.clone();
            images[last.segment][last.offset + cut..last.offset + last.len].fill(0);
            let outcome = check_scan(
                &log,
                &images,
                &Expected::EndsBefore(last.lsn),
                &format!("cut at {cut}"),
            )
            .expect("torn tail is not corruption");
            let kept = outcome.segments.last().unwrap();
            assert_eq!(kept.end_offset, last.offset as u64, "cut at {cut}");
            if cut == 0 {
                assert_eq!(outcome.zero, None, "nothing left to zero");
            } else {
                let (index, from, to) = outcome.zero.expect("torn bytes must be zeroed");
                assert_eq!(
                    (index, from),
                    (last.segment, last.offset as u64),
                    "cut at {cut}"
                );
                assert!(
                    to > from && to <= (last.offset + cut) as u64,
                    "cut at {cut}: zero to {to}"
                );
            }
        }
    }
}

#[test]
fn scan_ends_a_torn_last_record_with_garbage_after_it() {
    for flushes in SHAPES {
        // A torn write may leave non-zero garbage (an older file's blocks) after the cut.
        let log = Log::build(flushes);
        let last = *log.spans.last().unwrap();
        for cut in (0..last.len).step_by(3) {
            let mut images = log.images.clone();
            let garbage =
                &mut images[last.segment][last.offset + cut..last.offset + last.len + 700];
            for (index, byte) in garbage.iter_mut().enumerate() {
                *byte = (index as u8).wrapping_mul(31).wrapping_add(7);
            }
            let outcome = check_scan(
                &log,
                &images,
                &Expected::EndsBefore(last.lsn),
                &format!("garbage at {cut}"),
            )
            .expect("torn tail");
            let (_, from, to) = outcome.zero.expect("garbage is zeroed");
            assert_eq!(from, last.offset as u64);
            assert_eq!(to, (last.offset + last.len + 700) as u64);
        }
    }
}

#[test]
fn scan_reports_or_cuts_a_zeroed_sector_never_accepts_it() {
    for flushes in SHAPES {
        let log = Log::build(flushes);
        let mut tally = Tally::default();
        for segment in 0..log.images.len() {
            let records_end = log
                .spans
                .iter()
                .filter(|span| span.segment == segment)
                .map(|span| span.offset + span.len)
                .max()
                .unwrap();
            for sector_start in (SEGMENT_HEADER_BYTES..records_end).step_by(SIM_SECTOR_BYTES) {
                let mut images = log.images.clone();
                images[segment][sector_start..sector_start + SIM_SECTOR_BYTES].fill(0);
                let damaged = log.damaged(&images);
                if damaged.is_empty() {
                    // The sector lies wholly in a gap between two groups: nothing to find.
                    continue;
                }
                let what = format!("segment {segment} sector at {sector_start}");
                log.check_damaged(&images, &damaged, &what, &mut tally);
            }
        }
        // Both outcomes must have been exercised, or the test proves less than it says.
        assert!(
            tally.corruptions > 0 && tally.cuts > 0,
            "corruptions {}, cuts {}",
            tally.corruptions,
            tally.cuts
        );
    }
}

#[test]
fn scan_never_accepts_a_flipped_bit() {
    for flushes in SHAPES {
        let log = Log::build(flushes);
        let middle = log.spans[9];
        let end_of_first_segment = log.spans[RECORDS_PER_SEGMENT as usize - 1];
        let last = *log.spans.last().unwrap();
        for span in [middle, end_of_first_segment, last] {
            let expected = log.expected(&[span.lsn]);
            if span.lsn != last.lsn {
                assert!(
                    matches!(expected, Expected::Corruption { .. }),
                    "LSN {} is vouched for",
                    span.lsn
                );
            } else {
                assert_eq!(expected, Expected::EndsBefore(last.lsn));
            }
            for bit in 0..span.len * 8 {
                let mut images = log.images.clone();
                images[span.segment][span.offset + bit / 8] ^= 1 << (bit % 8);
                check_scan(
                    &log,
                    &images,
                    &expected,
                    &format!("LSN {} bit {bit}", span.lsn),
                )
                .ok();
            }
        }
    }
}

/// Two flushes in flight land in any order: a crash may keep a later group and lose the one
/// before it (its blocks never written, or torn). Recovery must cut there when nothing vouches
/// for the lost group (it was never acknowledged, and neither was the later one), and report
/// corruption when a later record says it had been durable; it never accepts the later group.
#[test]
fn scan_cuts_a_later_flush_that_landed_without_the_one_before() {
    let log = Log::build(Flushes::TwoInFlight);
    let groups = log.spans.len() as u64 / GROUP_RECORDS;
    let mut tally = Tally::default();
    for group in 1..=groups {
        let first = (group - 1) * GROUP_RECORDS + 1;
        let spans: Vec<Span> =
            log.spans[first as usize - 1..(first + GROUP_RECORDS) as usize - 1].to_vec();
        // Lost entirely (zeros, as never-written blocks read back), or only its first block.
        for whole in [true, false] {
            let mut images = log.images.clone();
            let start = spans[0].offset;
            let end = if whole {
                let last = spans[spans.len() - 1];
                last.offset + last.len
            } else {
                (start / ALIGNMENT_BYTES_MAX + 1) * ALIGNMENT_BYTES_MAX
            };
            images[spans[0].segment][start..end].fill(0);
            let damaged = log.damaged(&images);
            let what = format!("group {group} lost (whole: {whole})");
            log.check_damaged(&images, &damaged, &what, &mut tally);
        }
    }
    assert!(
        tally.corruptions > 0 && tally.cuts > 2,
        "corruptions {}, cuts {}",
        tally.corruptions,
        tally.cuts
    );
}

/// The gap a group leaves before the next block is skipped only if it is all zeros and the
/// next LSN starts the next block: a stray byte in it stops the scan there, whatever follows.
#[test]
fn scan_never_skips_a_damaged_gap() {
    let log = Log::build(Flushes::TwoInFlight);
    let mut gaps = 0;
    for pair in log.spans.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        let end = before.offset + before.len;
        if before.segment != after.segment || after.offset == end {
            continue;
        }
        gaps += 1;
        assert_eq!(
            after.offset % ALIGNMENT_BYTES_MAX,
            0,
            "a group ends its block"
        );
        for at in [end, (end + after.offset) / 2, after.offset - 1] {
            let mut images = log.images.clone();
            images[before.segment][at] = 0x5a;
            let (result, visited) = log.scan(&images);
            assert_eq!(
                visited,
                (1..=before.lsn).collect::<Vec<_>>(),
                "byte at {at}: the scan went past a damaged gap"
            );
            match result {
                Ok(outcome) => assert_eq!(outcome.next_lsn, after.lsn, "byte at {at}"),
                Err(corruption) => assert_eq!(
                    (corruption.offset, corruption.lsn),
                    (end as u64, after.lsn),
                    "byte at {at}"
                ),
            }
        }
    }
    assert!(gaps > 4, "the log must have gaps: {gaps}");
}

// ---- end to end through Partition::open on a SimDisk ----

fn partition_config() -> PartitionConfig {
    common::config(0)
}

fn key(index: u64) -> Bytes {
    Bytes::from(format!("key-{index:03}"))
}

/// Writes `count` puts one after another (each its own group commit, so every record vouches
/// for the one before it) and closes. Key `i` gets `value-i` at LSN `i + 2` (LSN 1 creates
/// the collection).
fn write_log(count: u64) -> SimDisk {
    let disk = SimDisk::new();
    rt::run_local(|| {
        let disk = disk.clone();
        async move {
            let partition = open(&disk, partition_config()).await.unwrap();
            assert_eq!(partition.create_collection("c").await.unwrap(), 1);
            for index in 0..count {
                let lsn = partition
                    .put("c", key(index), value(&format!("value-{index}")))
                    .await
                    .unwrap();
                assert_eq!(lsn, index + 2);
            }
            partition.close().await.unwrap();
        }
    });
    disk
}

/// A deep copy of `disk` with one segment's bytes replaced.
fn corrupted_copy(disk: &SimDisk, name: &str, bytes: Vec<u8>) -> SimDisk {
    let copy = disk.crash(CrashMode::LoseUnsynced);
    copy.set_file_bytes(name, bytes);
    copy
}

/// Opens `disk` and checks that exactly keys `0..intact` are there, that the torn region
/// after the last intact record is zeros on disk, that a new write gets the next LSN and that
/// a second reopen finds it and nothing stale.
async fn check_recovered(disk: &SimDisk, name: &str, intact: u64, written: u64, cut_from: usize) {
    let partition = open(disk, partition_config())
        .await
        .expect("recovery must succeed");
    assert_eq!(partition.durable_lsn(), intact + 1);
    for index in 0..written {
        let found = partition.get("c", &key(index)).await.unwrap();
        if index < intact {
            let found = found.unwrap_or_else(|| panic!("key {index} lost"));
            assert_eq!(found.value, value(&format!("value-{index}")));
            assert_eq!(found.revision, index + 2);
        } else {
            assert_eq!(found, None, "key {index} was cut off but is visible");
        }
    }
    let image = disk.file_bytes(name).unwrap();
    assert!(
        image[cut_from..].iter().all(|&byte| byte == 0),
        "torn bytes after offset {cut_from} were not physically cut"
    );
    let fresh = partition
        .put("c", key(intact), value("fresh"))
        .await
        .unwrap();
    assert_eq!(
        fresh,
        intact + 2,
        "new writes continue right after the intact prefix"
    );
    partition.close().await.unwrap();
    drop(partition);
    let partition = open(disk, partition_config())
        .await
        .expect("second recovery");
    assert_eq!(partition.durable_lsn(), intact + 2);
    assert_eq!(
        partition
            .get("c", &key(intact))
            .await
            .unwrap()
            .unwrap()
            .value,
        value("fresh")
    );
    for index in intact + 1..written {
        assert_eq!(
            partition.get("c", &key(index)).await.unwrap(),
            None,
            "stale key {index} resurfaced"
        );
    }
    partition.close().await.unwrap();
}

#[test]
fn partition_cuts_a_torn_tail_at_every_byte_offset() {
    let written = 12;
    let disk = write_log(written);
    let name = &segment_names(&disk)[0];
    let image = disk.file_bytes(name).unwrap();
    let spans = record_spans(&image);
    let (offset, lsn, len) = *spans.last().unwrap();
    assert_eq!(lsn, written + 1);
    rt::run_local(|| async move {
        for cut in 0..len {
            let mut bytes = image.clone();
            bytes[offset + cut..offset + len].fill(0);
            let copy = corrupted_copy(&disk, name, bytes);
            check_recovered(&copy, name, written - 1, written, offset).await;
        }
    });
}

#[test]
fn partition_reports_a_zeroed_sector_or_cuts_it_never_accepts_it() {
    let written = 40;
    let disk = write_log(written);
    let name = &segment_names(&disk)[0];
    let image = disk.file_bytes(name).unwrap();
    let spans = record_spans(&image);
    let records_end = spans.last().map(|(offset, _, len)| offset + len).unwrap();
    let durable: Vec<u64> = spans
        .iter()
        .map(|(offset, _, _)| {
            RecordRef::validate(&image[*offset..])
                .unwrap()
                .header
                .meta()
                .durable_lsn
        })
        .collect();
    let (mut corruptions, mut cuts) = (0, 0);
    rt::run_local(|| async move {
        for sector_start in (SEGMENT_HEADER_BYTES..records_end).step_by(SIM_SECTOR_BYTES) {
            let mut bytes = image.clone();
            bytes[sector_start..sector_start + SIM_SECTOR_BYTES].fill(0);
            let damaged: Vec<usize> = (0..spans.len())
                .filter(|&at| {
                    let (offset, _, len) = spans[at];
                    bytes[offset..offset + len] != image[offset..offset + len]
                })
                .collect();
            let first = damaged[0];
            let (first_offset, first_lsn, _) = spans[first];
            let vouched = (first + 1..spans.len())
                .any(|at| !damaged.contains(&at) && durable[at] >= first_lsn);
            let copy = corrupted_copy(&disk, name, bytes.clone());
            let opened = open(&copy, partition_config()).await;
            if vouched {
                corruptions += 1;
                match opened {
                    Err(EngineError::Corruption { offset, lsn, .. }) => {
                        assert_eq!(
                            (offset, lsn),
                            (first_offset as u64, first_lsn),
                            "sector at {sector_start}"
                        );
                    }
                    Err(other) => {
                        panic!("sector at {sector_start}: expected corruption, got {other}")
                    }
                    Ok(_) => panic!(
                        "sector at {sector_start}: a damaged acknowledged record was accepted"
                    ),
                }
                assert_eq!(
                    copy.file_bytes(name).unwrap(),
                    bytes,
                    "a refused open must not change the disk"
                );
            } else {
                cuts += 1;
                drop(opened.expect("an unvouched damaged tail is cut"));
                // LSN 1 is the collection; key i is LSN i + 2.
                let intact = first_lsn - 2;
                check_recovered(&copy, name, intact, written, first_offset).await;
            }
        }
        assert!(
            corruptions > 0 && cuts > 0,
            "corruptions {corruptions}, cuts {cuts}"
        );
    });
}

#[test]
fn partition_never_accepts_a_flipped_bit() {
    let written = 10;
    let disk = write_log(written);
    let name = &segment_names(&disk)[0];
    let image = disk.file_bytes(name).unwrap();
    let spans = record_spans(&image);
    rt::run_local(|| async move {
        // Every bit is flipped by the pure-scan test; here a stride coprime to 8 reaches every
        // byte and every bit position while keeping the run short.
        // The last record: nothing vouches for it, so a flip anywhere makes it a torn tail.
        let (offset, _, len) = *spans.last().unwrap();
        for bit in (0..len * 8).step_by(9) {
            let mut bytes = image.clone();
            bytes[offset + bit / 8] ^= 1 << (bit % 8);
            let copy = corrupted_copy(&disk, name, bytes);
            check_recovered(&copy, name, written - 1, written, offset).await;
        }
        // A middle record: its successor vouches for it, so a flip is corruption.
        let (offset, lsn, len) = spans[4];
        for bit in (0..len * 8).step_by(3) {
            let mut bytes = image.clone();
            bytes[offset + bit / 8] ^= 1 << (bit % 8);
            let copy = corrupted_copy(&disk, name, bytes);
            match open(&copy, partition_config()).await {
                Err(EngineError::Corruption {
                    offset: at,
                    lsn: at_lsn,
                    ..
                }) => {
                    assert_eq!((at, at_lsn), (offset as u64, lsn), "bit {bit}")
                }
                Err(other) => panic!("bit {bit}: expected corruption, got {other}"),
                Ok(_) => panic!("bit {bit}: a flipped acknowledged record was accepted"),
            }
        }
    });
}
