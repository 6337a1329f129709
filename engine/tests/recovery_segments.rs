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
//!   the next write continues, and a second reopen finds everything.

mod common;

use bytes::Bytes;
use common::{open, record_spans, segment_names, PARTITION};
use coregrid_engine::constants::SEGMENT_BYTES_MIN;
use coregrid_engine::partition::PartitionConfig;
use coregrid_engine::record::RecordRef;
use coregrid_engine::rt;
use coregrid_engine::segment::SegmentHeader;
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
