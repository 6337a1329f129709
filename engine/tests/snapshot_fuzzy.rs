//! Proves that a snapshot taken while writes are staged but not yet durable never makes those
//! writes outlive the WAL (design.md section 7; section 5, promise 4):
//! - after a crash that loses the staged writes, recovery from the snapshot shows none of
//!   them and no key's revision is past the durable LSN (LSNs are never reused);
//! - truncating the WAL back to the snapshot's LSN never resurrects writes the snapshot copied
//!   from the truncated tail: it is refused, or they are gone.

mod common;

use bytes::Bytes;
use common::{open, value};
use coregrid_engine::rt;
use coregrid_engine::sim::{CrashMode, SimDisk};
use coregrid_engine::snapshot::SnapshotInfo;
use coregrid_engine::{EngineError, Partition};
use std::rc::Rc;

const STAGED: usize = 3;

type Snapshot = rt::Task<Result<Option<SnapshotInfo>, EngineError>>;

/// Opens a partition with collection `c` and one durable key, then spawns `STAGED` puts and a
/// snapshot task right behind them: local tasks run in spawn order and the writer task is
/// woken by the first put, so the snapshot starts while the puts are staged (in the index,
/// LSNs assigned) and not yet flushed.
///
/// With `crash_after_snapshot`, the power goes out at the first sync after the snapshot's file
/// sync: the WAL flush of the staged puts (or, if the snapshot waits for them before it is
/// published, that wait's flush).
async fn staged_puts(
    disk: &SimDisk,
    crash_after_snapshot: bool,
) -> (
    Rc<Partition<SimDisk>>,
    Vec<rt::Task<Result<u64, EngineError>>>,
    Snapshot,
) {
    let partition = open(disk, common::config(0)).await.unwrap();
    partition.create_collection("c").await.unwrap();
    partition
        .put("c", Bytes::from("durable"), value("before"))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..STAGED)
        .map(|index| {
            let partition = partition.clone();
            rt::spawn_local(async move {
                partition
                    .put("c", Bytes::from(format!("staged-{index}")), value("staged"))
                    .await
            })
        })
        .collect();
    let snapshot = rt::spawn_local({
        let partition = partition.clone();
        let disk = disk.clone();
        async move {
            if crash_after_snapshot {
                disk.crash_at_sync(disk.syncs() + 2);
            }
            assert_eq!(
                partition.durable_lsn(),
                2,
                "the staged puts must not be durable yet"
            );
            assert_eq!(
                partition.stats().keys,
                1 + STAGED as u64,
                "the puts must be staged"
            );
            partition.snapshot().await
        }
    });
    (partition, tasks, snapshot)
}

#[test]
fn a_crash_after_a_snapshot_never_shows_undurable_writes() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let (partition, tasks, snapshot) = staged_puts(&disk, true).await;
        let _ = snapshot.await;
        let acked: Vec<bool> = futures::future::join_all(tasks)
            .await
            .iter()
            .map(Result::is_ok)
            .collect();
        drop(partition);
        for mode in [CrashMode::LoseUnsynced, CrashMode::KeepUnsynced] {
            let recovered = disk.crash(mode);
            let partition = open(&recovered, common::config(0)).await.unwrap();
            let durable_lsn = partition.durable_lsn();
            assert!(partition.get("c", b"durable").await.unwrap().is_some());
            for (index, acked) in acked.iter().enumerate() {
                let found = partition
                    .get("c", format!("staged-{index}").as_bytes())
                    .await
                    .unwrap();
                if let Some(found) = &found {
                    assert!(
                        found.revision <= durable_lsn,
                        "{mode:?}: staged-{index} has revision {} but the log ends at LSN {durable_lsn}",
                        found.revision
                    );
                } else {
                    assert!(!acked, "{mode:?}: acknowledged staged-{index} lost");
                }
            }
            let next = partition
                .put("c", Bytes::from("next"), value("next"))
                .await
                .unwrap();
            assert_eq!(next, durable_lsn + 1);
            partition.close().await.unwrap();
        }
    });
}

#[test]
fn truncation_never_resurrects_writes_a_snapshot_copied() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let (partition, tasks, snapshot) = staged_puts(&disk, false).await;
        let snapshot = snapshot.await.unwrap().expect("no other snapshot runs");
        assert_eq!(snapshot.snapshot_lsn, 2);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(partition.durable_lsn(), 2 + STAGED as u64);
        match partition.truncate_after(snapshot.snapshot_lsn).await {
            Err(EngineError::TruncateBelowSnapshot { .. }) => {
                // Refused: every staged write must still be there.
                for index in 0..STAGED {
                    assert!(partition
                        .get("c", format!("staged-{index}").as_bytes())
                        .await
                        .unwrap()
                        .is_some());
                }
            }
            Err(other) => panic!("truncate failed: {other}"),
            Ok(()) => {
                for index in 0..STAGED {
                    assert_eq!(
                        partition
                            .get("c", format!("staged-{index}").as_bytes())
                            .await
                            .unwrap(),
                        None,
                        "staged-{index} (after the truncation point) came back from the snapshot"
                    );
                }
                partition.close().await.unwrap();
                drop(partition);
                let partition = open(&disk, common::config(0)).await.unwrap();
                for index in 0..STAGED {
                    assert_eq!(
                        partition
                            .get("c", format!("staged-{index}").as_bytes())
                            .await
                            .unwrap(),
                        None
                    );
                }
            }
        }
    });
}
