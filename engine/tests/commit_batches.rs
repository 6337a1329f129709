//! Pipelined group commit (`Wal::set_batch_fill_limit`): once a commit batch has been filling
//! for longer than the limit, it closes and later records form the next batch; a flush takes
//! only the oldest batch. These tests check, on the simulated disk, that
//! - batches close at the limit (here zero: every `BATCH_RECORDS_MIN` = 32 records) and flushes
//!   take them in order, each making exactly its records durable;
//! - records staged while a flush is in flight join the open batch, never the one on the disk;
//! - without a limit one flush takes everything staged;
//! - a crash at every sync point of a batched log loses no record a completed flush covered,
//!   and the log reopens with dense LSNs;
//! - at the partition level, with 96 concurrent writers, batches closing every 32 records and
//!   each flush submitted before the previous flush's writers wake, a power cut at every sync
//!   point loses no acknowledged put (each comes back at its acknowledged LSN).

mod common;

use bytes::Bytes;
use coregrid_engine::partition::PartitionConfig;
use coregrid_engine::record::Operation;
use coregrid_engine::rt;
use coregrid_engine::sim::{CrashMode, SimDisk};
use coregrid_engine::wal::{write_flush, Wal, WalShard};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

async fn open(disk: &SimDisk) -> (Wal<SimDisk>, Vec<u64>) {
    let mut lsns = Vec::new();
    let wal = Wal::open(
        disk.clone(),
        0,
        SEGMENT_BYTES,
        WalShard::default(),
        0,
        Vec::new(),
        |record| lsns.push(record.header.meta().lsn),
    )
    .await
    .expect("open");
    (wal, lsns)
}

fn stage(wal: &RefCell<Wal<SimDisk>>, index: u64) -> u64 {
    let key = format!("k{index}");
    wal.borrow_mut()
        .stage(
            1,
            index,
            None,
            &Operation::Put {
                collection: "c",
                key: key.as_bytes(),
                value: &[7u8; 100],
            },
        )
        .expect("room")
}

/// Flushes the oldest batch; returns the durable LSN after it.
async fn flush(wal: &RefCell<Wal<SimDisk>>) -> Option<u64> {
    let plan = wal.borrow_mut().take_flush()?;
    Some(write_flush(wal, plan).await.expect("flush"))
}

#[test]
fn batches_close_at_the_limit_and_flush_in_order() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk).await;
        let wal = RefCell::new(wal);
        wal.borrow_mut().set_batch_fill_limit(Some(Duration::ZERO));
        for index in 1..=100 {
            assert_eq!(stage(&wal, index), index);
        }
        // Batches of 32, 32, 32 and the open one with 4.
        for durable in [32, 64, 96, 100] {
            assert_eq!(flush(&wal).await, Some(durable));
            assert_eq!(wal.borrow().durable_lsn(), durable);
        }
        assert_eq!(flush(&wal).await, None, "nothing left");

        // Records staged while a flush is on the disk join the open batch.
        for index in 101..=140 {
            stage(&wal, index);
        }
        let plan = wal.borrow_mut().take_flush().expect("a batch");
        for index in 141..=150 {
            stage(&wal, index);
        }
        assert_eq!(write_flush(&wal, plan).await.expect("flush"), 132);
        assert_eq!(flush(&wal).await, Some(150));

        // No limit: one flush takes every staged record.
        wal.borrow_mut().set_batch_fill_limit(None);
        for index in 151..=300 {
            stage(&wal, index);
        }
        assert_eq!(flush(&wal).await, Some(300));
        drop(wal);

        let (_, lsns) = open(&disk).await;
        assert_eq!(lsns, (1..=300).collect::<Vec<_>>(), "dense and in order");
    });
}

#[test]
fn a_crash_at_every_sync_point_keeps_every_flushed_batch() {
    // Count the sync points of the workload first, then crash at each.
    let run = |crash_at: Option<u64>| {
        rt::run_local(move || async move {
            let disk = SimDisk::new();
            if let Some(at) = crash_at {
                disk.crash_at_sync(at);
            }
            let (wal, _) = open(&disk).await;
            let wal = RefCell::new(wal);
            wal.borrow_mut().set_batch_fill_limit(Some(Duration::ZERO));
            let mut acknowledged = 0;
            'work: for round in 0..6u64 {
                for index in 1..=45 {
                    stage(&wal, round * 45 + index);
                }
                loop {
                    let Some(plan) = wal.borrow_mut().take_flush() else {
                        break;
                    };
                    match write_flush(&wal, plan).await {
                        Ok(durable) => acknowledged = durable,
                        Err(_) => break 'work,
                    }
                }
            }
            drop(wal);
            let (_, lsns) = open(&disk.crash(CrashMode::Torn(crash_at.unwrap_or(0) + 1))).await;
            assert!(
                lsns.len() as u64 >= acknowledged,
                "crash at sync {crash_at:?}: {} records back, {acknowledged} acknowledged",
                lsns.len()
            );
            assert_eq!(
                lsns,
                (1..=lsns.len() as u64).collect::<Vec<_>>(),
                "crash at sync {crash_at:?}: LSNs dense"
            );
            disk.syncs()
        })
    };
    let syncs = run(None);
    assert!(syncs >= 6, "the workload syncs ({syncs})");
    for at in 1..=syncs {
        run(Some(at));
    }
}

const WRITERS: usize = 96;
const PUTS_PER_WRITER: usize = 3;

fn pipelined() -> PartitionConfig {
    PartitionConfig {
        commit_batch_fill_limit: Some(Duration::ZERO),
        ..common::config(0)
    }
}

/// Runs the writers on a fresh disk (power cut at sync `crash_at`, if given); returns the disk,
/// the acknowledged puts (key, LSN), the syncs done and the flushes done.
async fn pipelined_workload(crash_at: Option<u64>) -> (SimDisk, Vec<(String, u64)>, u64, u64) {
    let disk = SimDisk::new();
    if let Some(at) = crash_at {
        disk.crash_at_sync(at);
    }
    let Ok(partition) = common::open(&disk, pipelined()).await else {
        return (disk.clone(), Vec::new(), disk.syncs(), 0);
    };
    if partition.create_collection("c").await.is_err() {
        return (disk.clone(), Vec::new(), disk.syncs(), 0);
    }
    let acknowledged: Rc<RefCell<Vec<(String, u64)>>> = Rc::default();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (partition, acknowledged) = (partition.clone(), acknowledged.clone());
            rt::spawn_local(async move {
                for put in 0..PUTS_PER_WRITER {
                    let key = format!("w{writer}-{put}");
                    match partition
                        .put(
                            "c",
                            Bytes::from(key.clone()),
                            Bytes::from(format!("v-{key}")),
                        )
                        .await
                    {
                        Ok(lsn) => acknowledged.borrow_mut().push((key, lsn)),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let flushes = partition.stats().flushes;
    let acknowledged = acknowledged.take();
    (disk.clone(), acknowledged, disk.syncs(), flushes)
}

#[test]
fn a_pipelined_partition_loses_no_acknowledged_put_at_any_sync() {
    let seed = common::seed("commit_batches");
    let (_, acknowledged, syncs, flushes) = rt::run_local(|| pipelined_workload(None));
    assert_eq!(acknowledged.len(), WRITERS * PUTS_PER_WRITER);
    assert!(
        flushes as usize >= WRITERS * PUTS_PER_WRITER / 32,
        "batches of at most ~32 records: {flushes} flushes"
    );
    for at in 1..=syncs + 1 {
        rt::run_local(move || async move {
            let (disk, acknowledged, _, _) = pipelined_workload(Some(at)).await;
            for mode in [
                CrashMode::LoseUnsynced,
                CrashMode::KeepUnsynced,
                CrashMode::Torn(seed ^ at),
            ] {
                let what = format!("power cut at sync {at}, {mode:?}");
                let partition = common::open(&disk.crash(mode), pipelined())
                    .await
                    .unwrap_or_else(|error| panic!("{what}: recovery failed: {error}"));
                for (key, lsn) in &acknowledged {
                    let found = partition
                        .get("c", key.as_bytes())
                        .await
                        .unwrap_or_else(|error| panic!("{what}: get {key}: {error}"))
                        .unwrap_or_else(|| panic!("{what}: acknowledged {key} (LSN {lsn}) lost"));
                    assert_eq!(found.revision, *lsn, "{what}: {key}");
                    assert_eq!(
                        found.value,
                        Bytes::from(format!("v-{key}")),
                        "{what}: {key}"
                    );
                }
                partition.close().await.expect("close");
            }
        });
    }
}
