//! Recovery reads a partition's log one segment at a time, so that its memory is bounded by a
//! segment, not by the log (`Wal::open` with `scan::Scanner`). These check, end to end through
//! `Partition::open` on the simulated disk, the decisions that span segments:
//! - a damaged record at the very end of an early segment is vouched for only by the first
//!   record of the next segment (written after it was durable): recovery must read on into
//!   that segment to find the evidence, and refuse to open, naming the damaged segment's file,
//!   offset and LSN, without changing a byte on disk;
//! - a last segment created but never written (its header claims another partition, its
//!   records are zeros: a roll that crashed while creating it) is removed, and the log ends in
//!   the segment before it: its tail block, taken from the previous segment's image, is what
//!   the next write continues, and a second reopen finds everything;
//! - recycled segments (pruned files reused for new segments, their previous life's records
//!   still after the new ones): a clean reopen finds every latest value; a torn last record at
//!   many offsets ends the log at the record before, the previous life's records are never
//!   replayed, and the cut zeroes them along with the torn bytes;
//! - a sealed segment whose data is followed by a previous life's bytes (valid old records, or
//!   pieces of them, right after the data or after part of a block of zero padding), then a
//!   segment that starts at the next LSN: a roll, not corruption; the log opens whole.

mod common;

use bytes::Bytes;
use common::{open, record_spans, segment_names, PARTITION};
use coregrid_engine::constants::{SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES};
use coregrid_engine::partition::PartitionConfig;
use coregrid_engine::record::RecordRef;
use coregrid_engine::rt;
use coregrid_engine::segment::{parse_segment_name, SegmentHeader};
use coregrid_engine::sim::{CrashMode, SimDisk};
use coregrid_engine::EngineError;

/// Values large enough for a few records to fill a segment.
const VALUE_BYTES: usize = 200 * 1024;
const SEGMENTS_MIN: usize = 4;

fn config() -> PartitionConfig {
    common::config(0)
}

fn key(index: u64) -> Bytes {
    Bytes::from(format!("segment-key-{index:03}"))
}

fn big_value(index: u64) -> Bytes {
    Bytes::from(vec![b'a' + (index % 26) as u8; VALUE_BYTES])
}

/// Puts one after another (each its own flush, so every record vouches for the one before it)
/// until the log spans [`SEGMENTS_MIN`] segments; key `i` is LSN `i + 2`. Returns the disk
/// and the number of puts.
fn write_segments() -> (SimDisk, u64) {
    let disk = SimDisk::new();
    let written = rt::run_local(|| {
        let disk = disk.clone();
        async move {
            let partition = open(&disk, config()).await.unwrap();
            assert_eq!(partition.create_collection("c").await.unwrap(), 1);
            let mut index = 0;
            while segment_names(&disk).len() < SEGMENTS_MIN {
                let lsn = partition
                    .put("c", key(index), big_value(index))
                    .await
                    .unwrap();
                assert_eq!(lsn, index + 2);
                index += 1;
            }
            partition.close().await.unwrap();
            index
        }
    });
    (disk, written)
}

#[test]
fn damage_at_the_end_of_a_segment_is_found_by_reading_the_next_one() {
    let (disk, _) = write_segments();
    let names = segment_names(&disk);
    let name = &names[1];
    let image = disk.file_bytes(name).unwrap();
    let (offset, lsn, len) = *record_spans(&image).last().expect("records in segment 1");
    // The next segment's first record was written after `lsn` was durable.
    let next = disk.file_bytes(&names[2]).unwrap();
    let (first_of_next, _, _) = record_spans(&next)[0];
    let vouching = RecordRef::validate(&next[first_of_next..]).unwrap();
    assert!(vouching.header.meta().durable_lsn >= lsn);

    let mut damaged = image.clone();
    damaged[offset + len / 2] ^= 0x10;
    let copy = disk.crash(CrashMode::LoseUnsynced);
    copy.set_file_bytes(name, damaged.clone());
    let before: Vec<(String, Vec<u8>)> = segment_names(&copy)
        .into_iter()
        .map(|name| {
            let bytes = copy.file_bytes(&name).unwrap();
            (name, bytes)
        })
        .collect();
    rt::run_local(|| async move {
        match open(&copy, config()).await {
            Err(EngineError::Corruption {
                file,
                offset: at,
                lsn: missing,
                ..
            }) => {
                assert!(file.to_string_lossy().ends_with(name.as_str()), "{file:?}");
                assert_eq!((at, missing), (offset as u64, lsn));
            }
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("a damaged acknowledged record was accepted"),
        }
        for (name, bytes) in before {
            assert_eq!(
                copy.file_bytes(&name).as_ref(),
                Some(&bytes),
                "a refused open changed {name}"
            );
        }
    });
}

#[test]
fn an_unwritten_last_segment_is_removed_and_the_log_ends_in_the_one_before() {
    let (disk, written) = write_segments();
    let names = segment_names(&disk);
    let last = names.last().unwrap().clone();
    let image = disk.file_bytes(&last).unwrap();
    let header = SegmentHeader::read(&image).expect("a valid header");
    let lost = record_spans(&image).len() as u64;
    // A header for another partition, at the right base LSN (so the segment before rolls on
    // into it), and nothing after it.
    let mut unwritten = vec![0u8; image.len()];
    SegmentHeader::write(
        &mut unwritten,
        PARTITION + 1,
        header.base_lsn(),
        SEGMENT_BYTES_MIN,
    );
    let copy = disk.crash(CrashMode::LoseUnsynced);
    copy.set_file_bytes(&last, unwritten);
    let intact = written - lost;
    rt::run_local(|| async move {
        let partition = open(&copy, config()).await.expect("recovery succeeds");
        assert_eq!(partition.durable_lsn(), intact + 1);
        assert!(
            !segment_names(&copy).contains(&last),
            "the unwritten segment is removed"
        );
        let fresh = partition
            .put("c", key(intact), Bytes::from_static(b"fresh"))
            .await
            .unwrap();
        assert_eq!(fresh, intact + 2, "writes go on after the intact prefix");
        partition.close().await.unwrap();
        drop(partition);
        let partition = open(&copy, config()).await.expect("second recovery");
        assert_eq!(partition.durable_lsn(), intact + 2);
        for index in 0..intact {
            let found = partition.get("c", &key(index)).await.unwrap();
            assert_eq!(
                found.map(|found| found.value),
                Some(big_value(index)),
                "key {index}"
            );
        }
        let found = partition.get("c", &key(intact)).await.unwrap().unwrap();
        assert_eq!(found.value, Bytes::from_static(b"fresh"));
        partition.close().await.unwrap();
    });
}

/// Keys the recycling workload overwrites (few, so that snapshots stay small and prune).
const RECYCLING_KEYS: u64 = 4;

/// Puts of big values over [`RECYCLING_KEYS`] keys with a snapshot every ten: old segments are
/// pruned into the pool and new ones reuse them. Returns the disk, the LSN and value of each
/// key's last put, and how many new segments reused a file.
fn write_recycling() -> (SimDisk, Vec<(u64, Bytes)>, u64) {
    let disk = SimDisk::new();
    let (latest, reused) = rt::run_local(|| {
        let disk = disk.clone();
        async move {
            let partition = open(&disk, config()).await.unwrap();
            partition.create_collection("c").await.unwrap();
            let mut latest = vec![(0, Bytes::new()); RECYCLING_KEYS as usize];
            // Three segments of ~40 records: the third reuses the first and ends with 15, below
            // where zero-ahead begins in a reused file, so that the previous life's records
            // follow its own; the last five puts come after the last snapshot, so that only
            // the WAL holds them.
            for index in 0..95u64 {
                let value = big_value(index);
                let slot = index % RECYCLING_KEYS;
                let lsn = partition.put("c", key(slot), value.clone()).await.unwrap();
                latest[slot as usize] = (lsn, value);
                if index % 10 == 9 {
                    partition.snapshot().await.unwrap();
                }
            }
            let reused = partition.stats().segments_reused;
            partition.close().await.unwrap();
            (latest, reused)
        }
    });
    (disk, latest, reused)
}

/// `(offset, lsn, len)` of this life's records in a segment image: from the header on, while
/// records validate with the next LSN (a recycled file's previous life follows them).
fn this_life(image: &[u8]) -> Vec<(usize, u64, usize)> {
    let base = SegmentHeader::read(image)
        .expect("a valid header")
        .base_lsn();
    record_spans(image)
        .into_iter()
        .enumerate()
        .take_while(|(at, (_, lsn, _))| *lsn == base + *at as u64)
        .map(|(_, span)| span)
        .collect()
}

#[test]
fn recycled_segments_recover_without_their_previous_life() {
    let (disk, latest, reused) = write_recycling();
    assert!(reused > 0, "the workload must reuse pruned segment files");
    let names = segment_names(&disk);
    let last = names.last().unwrap().clone();
    let base = parse_segment_name(&last).unwrap();
    let image = disk.file_bytes(&last).unwrap();
    let spans = this_life(&image);
    let (offset, lsn, len) = *spans.last().expect("records in the last segment");
    let end = offset + len;
    // Past the zero padding of this life's last block, the previous life's records.
    let leftover = (end..image.len())
        .find_map(|at| RecordRef::validate(&image[at..]).ok())
        .map(|record| record.header.meta().lsn)
        .expect("the last segment is a reused file: its previous life follows the data");
    assert!(
        leftover < base,
        "a leftover's LSN {leftover} is below the base {base}"
    );

    // A clean reopen: every key's last value, nothing of the previous lives.
    let reopened = disk.crash(CrashMode::LoseUnsynced);
    let check_latest = latest.clone();
    rt::run_local(|| async move {
        let partition = open(&reopened, config()).await.expect("recovery succeeds");
        assert_eq!(partition.durable_lsn(), lsn);
        for (slot, (revision, value)) in check_latest.iter().enumerate() {
            let found = partition
                .get("c", &key(slot as u64))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (found.revision, &found.value),
                (*revision, value),
                "key {slot}"
            );
        }
        partition.close().await.unwrap();
    });

    // The last record torn at many offsets: the log ends at the record before it.
    let cuts: Vec<usize> = (0..64).chain((64..len).step_by(4093)).collect();
    rt::run_local(|| async move {
        for cut in cuts {
            let mut bytes = image.clone();
            bytes[offset + cut..end].fill(0);
            let copy = disk.crash(CrashMode::LoseUnsynced);
            copy.set_file_bytes(&last, bytes);
            let partition = open(&copy, config())
                .await
                .unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
            assert_eq!(partition.durable_lsn(), lsn - 1, "cut at {cut}");
            let after = copy.file_bytes(&last).unwrap();
            assert!(
                after[offset..].iter().all(|&byte| byte == 0),
                "cut at {cut}: the torn record and the previous life after it are zeroed"
            );
            let fresh = partition
                .put("c", key(0), Bytes::from_static(b"fresh"))
                .await
                .unwrap();
            assert_eq!(fresh, lsn, "cut at {cut}: writing goes on at the torn LSN");
            partition.close().await.unwrap();
            drop(partition);
            let partition = open(&copy, config()).await.expect("second recovery");
            assert_eq!(partition.durable_lsn(), lsn);
            let found = partition.get("c", &key(0)).await.unwrap().unwrap();
            assert_eq!(found.value, Bytes::from_static(b"fresh"));
            partition.close().await.unwrap();
        }
    });
}

#[test]
fn a_sealed_segment_followed_by_a_previous_life_rolls_on() {
    let (disk, written) = write_segments();
    let names = segment_names(&disk);
    let first = names[0].clone();
    let image = disk.file_bytes(&first).unwrap();
    let spans = this_life(&image);
    let (offset, _, len) = *spans.last().unwrap();
    let end = offset + len;
    // What a previous life leaves: its own records (valid, lower LSNs), at some shift.
    let old_records = &image[SEGMENT_HEADER_BYTES..end];
    let block = SEGMENT_HEADER_BYTES;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for (what, from) in [
        ("right after the data", end),
        ("after 20 bytes of padding", end + 20),
        ("at the next block", end.next_multiple_of(block)),
        ("mid-record, at the next block", end.next_multiple_of(block)),
    ] {
        let mut bytes = image.clone();
        let skip = if what.starts_with("mid-record") {
            1000
        } else {
            0
        };
        let room = bytes.len() - from;
        let take = room.min(old_records.len() - skip);
        bytes[from..from + take].copy_from_slice(&old_records[skip..skip + take]);
        cases.push((what, bytes));
    }
    rt::run_local(|| async move {
        for (what, bytes) in cases {
            let copy = disk.crash(CrashMode::LoseUnsynced);
            copy.set_file_bytes(&first, bytes);
            let partition = open(&copy, config())
                .await
                .unwrap_or_else(|error| panic!("{what}: {error}"));
            assert_eq!(partition.durable_lsn(), written + 1, "{what}");
            for index in 0..written {
                let found = partition.get("c", &key(index)).await.unwrap();
                assert_eq!(
                    found.map(|found| found.value),
                    Some(big_value(index)),
                    "{what}: key {index}"
                );
            }
            partition.close().await.unwrap();
        }
    });
}
