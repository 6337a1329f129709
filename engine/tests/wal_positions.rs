//! Proves the WAL's positional API, which replication builds on:
//! - `read_raw` returns whole records exactly as they lie on disk, across segment rolls: each
//!   validates, LSNs are dense and in order, and `position_of` finds each one where it lies;
//! - `truncate_after(lsn)` removes the tail (inside a segment and at a segment boundary): the
//!   state, the epoch history and a reopen agree, and the next write gets `lsn + 1`;
//! - the epoch history (`begin_epoch`) survives reopen and truncation;
//! - truncating below the snapshot LSN is refused and changes nothing.

mod common;

use bytes::Bytes;
use common::{open, segment_names};
use coregrid_engine::constants::SEGMENT_HEADER_BYTES;
use coregrid_engine::record::RecordRef;
use coregrid_engine::rt;
use coregrid_engine::segment::segment_name;
use coregrid_engine::sim::SimDisk;
use coregrid_engine::wal::WalPosition;
use coregrid_engine::{EngineError, Partition};
use std::collections::BTreeMap;
use std::rc::Rc;

/// ~12 of these fill a segment of `SEGMENT_BYTES_MIN`.
const VALUE_BYTES: usize = 700 * 1024;
const PUTS: u64 = 30;

fn big(index: u64) -> Bytes {
    let mut bytes = vec![index as u8; VALUE_BYTES];
    bytes[..8].copy_from_slice(&index.to_le_bytes());
    Bytes::from(bytes)
}

/// Writes the log: collection, epoch 3, half the puts, epoch 5, the rest. Returns the LSN of
/// each put by key index.
async fn write_log(partition: &Partition<SimDisk>) -> BTreeMap<u64, u64> {
    assert_eq!(partition.create_collection("c").await.unwrap(), 1);
    assert_eq!(partition.begin_epoch(3).await.unwrap(), 2);
    let mut lsns = BTreeMap::new();
    for index in 0..PUTS {
        if index == PUTS / 2 {
            partition.begin_epoch(5).await.unwrap();
        }
        lsns.insert(
            index,
            partition
                .put("c", Bytes::from(format!("k{index}")), big(index))
                .await
                .unwrap(),
        );
    }
    lsns
}

async fn check_keys(
    partition: &Partition<SimDisk>,
    lsns: &BTreeMap<u64, u64>,
    through: u64,
    what: &str,
) {
    for (index, lsn) in lsns {
        let found = partition
            .get("c", format!("k{index}").as_bytes())
            .await
            .unwrap();
        if *lsn <= through {
            let found = found.unwrap_or_else(|| panic!("{what}: k{index} (LSN {lsn}) lost"));
            assert_eq!(
                (found.revision, found.value == big(*index)),
                (*lsn, true),
                "{what}: k{index}"
            );
        } else {
            assert_eq!(
                found, None,
                "{what}: k{index} (LSN {lsn}) survived truncation after {through}"
            );
        }
    }
}

#[test]
fn raw_reads_return_whole_records_as_on_disk_across_rolls() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let partition = open(&disk, common::config(0)).await.unwrap();
        write_log(&partition).await;
        let durable_lsn = partition.durable_lsn();
        assert!(
            segment_names(&disk).len() >= 3,
            "the log must span several segments"
        );
        let first = partition.position_of(1).await.unwrap().expect("LSN 1");
        assert_eq!(
            first,
            WalPosition {
                segment_base_lsn: 1,
                offset: SEGMENT_HEADER_BYTES as u64
            }
        );
        let mut position = first;
        let mut next_lsn = 1;
        let mut segments_seen = Vec::new();
        loop {
            let chunk = partition.read_raw(position, 1024 * 1024).await.unwrap();
            if chunk.bytes.is_empty() {
                break;
            }
            // A chunk comes from one segment: the one `chunk.next` names.
            let segment = chunk.next.segment_base_lsn;
            let start = chunk.next.offset as usize - chunk.bytes.len();
            let image = disk.file_bytes(&segment_name(segment)).unwrap();
            assert_eq!(
                &image[start..start + chunk.bytes.len()],
                &chunk.bytes[..],
                "raw bytes differ from the disk"
            );
            if segments_seen.last() != Some(&segment) {
                segments_seen.push(segment);
            }
            let mut used = 0;
            assert_eq!(chunk.first_lsn, next_lsn);
            while used < chunk.bytes.len() {
                let record =
                    RecordRef::validate(&chunk.bytes[used..]).expect("whole, valid records");
                assert_eq!(record.header.lsn(), next_lsn, "LSNs are dense");
                let at = WalPosition {
                    segment_base_lsn: segment,
                    offset: (start + used) as u64,
                };
                assert_eq!(
                    partition.position_of(next_lsn).await.unwrap(),
                    Some(at),
                    "position of LSN {next_lsn}"
                );
                used += record.len();
                next_lsn += 1;
            }
            assert_eq!(chunk.last_lsn, next_lsn - 1);
            position = chunk.next;
        }
        assert_eq!(
            next_lsn - 1,
            durable_lsn,
            "raw reads end at the durable LSN"
        );
        assert!(
            segments_seen.len() >= 3,
            "raw reads crossed the rolls: {segments_seen:?}"
        );
        assert_eq!(partition.position_of(durable_lsn + 1).await.unwrap(), None);
        partition.close().await.unwrap();
    });
}

async fn reopen(disk: &SimDisk, partition: Rc<Partition<SimDisk>>) -> Rc<Partition<SimDisk>> {
    partition.close().await.unwrap();
    drop(partition);
    open(disk, common::config(0)).await.unwrap()
}

#[test]
fn truncation_removes_the_tail_and_keeps_the_epoch_history() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let mut partition = open(&disk, common::config(0)).await.unwrap();
        let lsns = write_log(&partition).await;
        let history = partition.epoch_history();
        let epoch_5_lsn = lsns[&(PUTS / 2)] - 1;
        assert_eq!(history, vec![(0, 1), (3, 2), (5, epoch_5_lsn)]);
        partition = reopen(&disk, partition).await;
        assert_eq!(
            partition.epoch_history(),
            history,
            "epoch history after reopen"
        );
        assert_eq!(partition.epoch(), 5);

        // Inside a segment, after the epoch-5 record.
        let segments = segment_names(&disk);
        let cut = lsns[&(PUTS - 5)];
        partition.truncate_after(cut).await.unwrap();
        assert_eq!(partition.durable_lsn(), cut);
        assert_eq!(partition.position_of(cut + 1).await.unwrap(), None);
        assert!(partition.position_of(cut).await.unwrap().is_some());
        check_keys(&partition, &lsns, cut, "after truncation").await;
        assert_eq!(partition.epoch_history(), history);
        partition = reopen(&disk, partition).await;
        check_keys(&partition, &lsns, cut, "reopened after truncation").await;
        assert_eq!(partition.epoch_history(), history);
        assert_eq!(
            partition
                .put("c", Bytes::from("new"), Bytes::from("v"))
                .await
                .unwrap(),
            cut + 1
        );

        // At a segment boundary, before the epoch-5 record: the later segments go away and
        // epoch 5 leaves the history.
        let boundary_base: u64 = segments
            .iter()
            .filter_map(|name| coregrid_engine::segment::parse_segment_name(name))
            .find(|base| *base > 2 && *base < epoch_5_lsn)
            .expect("a segment starting before epoch 5");
        let cut = boundary_base - 1;
        partition.truncate_after(cut).await.unwrap();
        assert_eq!(partition.durable_lsn(), cut);
        assert!(
            segment_names(&disk)
                .iter()
                .all(
                    |name| coregrid_engine::segment::parse_segment_name(name).unwrap()
                        < boundary_base
                ),
            "segments past the cut remain: {:?}",
            segment_names(&disk)
        );
        check_keys(&partition, &lsns, cut, "truncated at a segment boundary").await;
        assert_eq!(partition.get("c", b"new").await.unwrap(), None);
        assert_eq!(partition.epoch_history(), vec![(0, 1), (3, 2)]);
        partition = reopen(&disk, partition).await;
        assert_eq!(partition.epoch_history(), vec![(0, 1), (3, 2)]);
        check_keys(
            &partition,
            &lsns,
            cut,
            "reopened after the boundary truncation",
        )
        .await;
        // A new leader's epoch starts right after the cut.
        assert_eq!(partition.begin_epoch(7).await.unwrap(), cut + 1);
        assert_eq!(
            partition
                .put("c", Bytes::from("new"), Bytes::from("v"))
                .await
                .unwrap(),
            cut + 2
        );
        partition = reopen(&disk, partition).await;
        assert_eq!(
            partition.epoch_history(),
            vec![(0, 1), (3, 2), (7, cut + 1)]
        );
        assert_eq!(
            partition
                .get("c", b"new")
                .await
                .unwrap()
                .map(|found| found.revision),
            Some(cut + 2)
        );
        partition.close().await.unwrap();
    });
}

#[test]
fn truncation_below_the_snapshot_is_refused() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let partition = open(&disk, common::config(0)).await.unwrap();
        let lsns = write_log(&partition).await;
        let info = partition.snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(info.snapshot_lsn, partition.durable_lsn());
        let below = info.snapshot_lsn - 3;
        match partition.truncate_after(below).await {
            Err(EngineError::TruncateBelowSnapshot { lsn, snapshot_lsn }) => {
                assert_eq!((lsn, snapshot_lsn), (below, info.snapshot_lsn))
            }
            other => panic!("expected TruncateBelowSnapshot, got {other:?}"),
        }
        let durable_lsn = partition.durable_lsn();
        check_keys(&partition, &lsns, durable_lsn, "after a refused truncation").await;
        let partition = reopen(&disk, partition).await;
        check_keys(
            &partition,
            &lsns,
            durable_lsn,
            "reopened after a refused truncation",
        )
        .await;
        assert!(matches!(
            partition.truncate_after(below).await,
            Err(EngineError::TruncateBelowSnapshot { .. })
        ));
        // At the snapshot LSN itself it is allowed (nothing to remove).
        partition.truncate_after(info.snapshot_lsn).await.unwrap();
        assert_eq!(partition.durable_lsn(), durable_lsn);
        partition.close().await.unwrap();
    });
}
