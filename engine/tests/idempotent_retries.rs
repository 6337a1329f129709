//! Proves that a write retried with the same client request id is never applied twice: the
//! retry gets the first attempt's outcome (revision, timestamp) and changes nothing, for puts,
//! compare-and-sets, deletes and batches; after a clean or crashed restart (the table is rebuilt
//! from the WAL); after a snapshot pruned the segment that held the first attempt (the table is
//! in the snapshot); while a truncation that cut the first attempt makes its retry apply anew;
//! and a retry older than the client's window is refused, not applied.

mod common;

use bytes::Bytes;
use common::{open, segment_names, value};
use coregrid_engine::constants::{REQUEST_WINDOW_PER_CLIENT, SEGMENT_BYTES_MIN};
use coregrid_engine::partition::PartitionConfig;
use coregrid_engine::rt;
use coregrid_engine::sim::{CrashMode, SimDisk};
use coregrid_engine::{BatchWrite, EngineError, Partition, RequestId, WriteOutcome};
use std::rc::Rc;

fn request(client: u64, sequence: u64) -> RequestId {
    RequestId { client, sequence }
}

fn config() -> PartitionConfig {
    PartitionConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        snapshot_wal_bytes: 0,
        commit_batch_fill_limit: None,
    }
}

/// A fresh partition with collection "c".
async fn fresh() -> (SimDisk, Rc<Partition<SimDisk>>) {
    let disk = SimDisk::new();
    let partition = open(&disk, config()).await.unwrap();
    partition.create_collection("c").await.unwrap();
    (disk, partition)
}

/// Puts `key` = `tag` in "c" with `request`.
async fn put(
    partition: &Partition<SimDisk>,
    key: &'static str,
    tag: &str,
    request: RequestId,
) -> WriteOutcome {
    partition
        .put_with("c", Bytes::from(key), value(tag), Some(request))
        .await
        .unwrap()
}

/// The value of `key` in "c".
async fn value_of(partition: &Partition<SimDisk>, key: &str) -> Bytes {
    partition
        .get("c", key.as_bytes())
        .await
        .unwrap()
        .expect("present")
        .value
}

#[test]
fn a_retried_put_is_answered_not_applied_and_loses_no_later_write() {
    rt::run_local(|| async {
        let (_disk, partition) = fresh().await;
        let first = put(&partition, "k", "a1", request(1, 1)).await;
        assert!(!first.duplicate);
        // Another client writes the key after the first attempt.
        partition
            .put("c", Bytes::from("k"), value("b"))
            .await
            .unwrap();
        let durable = partition.durable_lsn();
        // The first client's retry (its answer was lost) must not bring "a1" back.
        let retry = put(&partition, "k", "a1", request(1, 1)).await;
        assert!(retry.duplicate);
        assert_eq!((retry.revision, retry.hlc), (first.revision, first.hlc));
        assert_eq!(partition.durable_lsn(), durable, "the retry wrote a record");
        let found = partition.get("c", b"k").await.unwrap().unwrap();
        assert_eq!(found.value, value("b"), "the retry overwrote a later write");
        partition.close().await.unwrap();
    });
}

#[test]
fn retried_cas_delete_and_batch_are_answered_not_applied() {
    rt::run_local(|| async {
        let (_disk, partition) = fresh().await;
        let set = partition
            .put("c", Bytes::from("k"), value("v1"))
            .await
            .unwrap();
        let cas = partition
            .compare_and_set_with(
                "c",
                Bytes::from("k"),
                set,
                Some(value("v2")),
                Some(request(2, 1)),
            )
            .await
            .unwrap()
            .expect("the expectation held");
        // The retry expects a revision that is gone: without the table it would fail (or, with
        // a stale expectation that happened to hold, apply twice).
        let retry = partition
            .compare_and_set_with(
                "c",
                Bytes::from("k"),
                set,
                Some(value("v2")),
                Some(request(2, 1)),
            )
            .await
            .unwrap()
            .expect("a retry is answered with the first outcome, not a mismatch");
        assert!(retry.duplicate);
        assert_eq!(retry.revision, cas.revision);

        let deleted = partition
            .delete_with("c", b"k", Some(request(2, 2)))
            .await
            .unwrap()
            .expect("k was there");
        assert_eq!(deleted.previous_revision, Some(cas.revision));
        partition
            .put("c", Bytes::from("k"), value("v3"))
            .await
            .unwrap();
        let retry = partition
            .delete_with("c", b"k", Some(request(2, 2)))
            .await
            .unwrap()
            .expect("a duplicate answers the first outcome");
        assert!(retry.duplicate);
        assert_eq!(retry.revision, deleted.revision);
        assert_eq!(
            value_of(&partition, "k").await,
            value("v3"),
            "the retried delete removed a later write"
        );

        let writes = vec![
            BatchWrite::Put {
                collection: "c".into(),
                key: Bytes::from("x"),
                value: value("x1"),
            },
            BatchWrite::Delete {
                collection: "c".into(),
                key: Bytes::from("k"),
            },
        ];
        let batch = partition
            .batch_with(&writes, Some(request(2, 3)))
            .await
            .unwrap();
        partition
            .put("c", Bytes::from("k"), value("v4"))
            .await
            .unwrap();
        let retry = partition
            .batch_with(&writes, Some(request(2, 3)))
            .await
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.revision, batch.revision);
        assert_eq!(value_of(&partition, "k").await, value("v4"));
        partition.close().await.unwrap();
    });
}

#[test]
fn the_table_survives_clean_and_crashed_restarts() {
    rt::run_local(|| async {
        let (disk, partition) = fresh().await;
        let first = put(&partition, "k", "a", request(3, 7)).await;
        partition.close().await.unwrap();
        drop(partition);

        let partition = open(&disk, config()).await.unwrap();
        let retry = put(&partition, "k", "a", request(3, 7)).await;
        assert!(retry.duplicate, "a clean restart forgot the request");
        assert_eq!(retry.revision, first.revision);
        let second = put(&partition, "k", "b", request(3, 8)).await;
        // Crash without a clean close: only what was synced survives, and that holds both.
        let crashed = disk.crash(CrashMode::LoseUnsynced);
        drop(partition);
        let partition = open(&crashed, config()).await.unwrap();
        for (sequence, revision) in [(7, first.revision), (8, second.revision)] {
            let retry = partition
                .put_with(
                    "c",
                    Bytes::from("k"),
                    value("z"),
                    Some(request(3, sequence)),
                )
                .await
                .unwrap();
            assert!(
                retry.duplicate,
                "request {sequence} forgotten after a crash"
            );
            assert_eq!(retry.revision, revision);
        }
        assert_eq!(value_of(&partition, "k").await, value("b"));
        partition.close().await.unwrap();
    });
}

#[test]
fn the_table_survives_a_snapshot_that_pruned_the_first_attempt() {
    rt::run_local(|| async {
        let (disk, partition) = fresh().await;
        let first = put(&partition, "k", "a", request(4, 1)).await;
        let first_segment = segment_names(&disk)[0].clone();
        // Fill past the first segment, then snapshot: the segment holding the first attempt
        // is pruned, so only the snapshot can remember it.
        let filler = Bytes::from(vec![7u8; 64 * 1024]);
        let mut index = 0u64;
        while segment_names(&disk).first() == Some(&first_segment) && segment_names(&disk).len() < 3
        {
            partition
                .put("c", Bytes::from(format!("f{index}")), filler.clone())
                .await
                .unwrap();
            index += 1;
        }
        partition.snapshot().await.unwrap().expect("a snapshot");
        assert!(
            !segment_names(&disk).contains(&first_segment),
            "the first attempt's segment was not pruned: the test would prove nothing"
        );
        partition.close().await.unwrap();
        drop(partition);

        let partition = open(&disk, config()).await.unwrap();
        let retry = put(&partition, "k", "z", request(4, 1)).await;
        assert!(retry.duplicate, "the snapshot did not keep the request");
        assert_eq!((retry.revision, retry.hlc), (first.revision, first.hlc));
        partition.close().await.unwrap();
    });
}

#[test]
fn a_truncated_write_is_applied_again_on_retry() {
    rt::run_local(|| async {
        let (_disk, partition) = fresh().await;
        let before = partition.durable_lsn();
        put(&partition, "k", "a", request(5, 1)).await;
        partition.truncate_after(before).await.unwrap();
        let retry = put(&partition, "k", "a", request(5, 1)).await;
        assert!(!retry.duplicate, "a cut write must be applied by its retry");
        assert_eq!(value_of(&partition, "k").await, value("a"));
        partition.close().await.unwrap();
    });
}

#[test]
fn a_retry_older_than_the_window_is_refused() {
    rt::run_local(|| async {
        let (_disk, partition) = fresh().await;
        for sequence in 0..=REQUEST_WINDOW_PER_CLIENT as u64 {
            partition
                .put_with(
                    "c",
                    Bytes::from(format!("k{sequence}")),
                    value("v"),
                    Some(request(6, sequence)),
                )
                .await
                .unwrap();
        }
        let durable = partition.durable_lsn();
        let error = partition
            .put_with("c", Bytes::from("k0"), value("again"), Some(request(6, 0)))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                EngineError::RequestTooOld {
                    client: 6,
                    sequence: 0
                }
            ),
            "{error}"
        );
        assert_eq!(partition.durable_lsn(), durable, "a too-old retry wrote");
        assert_eq!(value_of(&partition, "k0").await, value("v"));
        partition.close().await.unwrap();
    });
}
