//! Proves that two flushes of a partition in flight at once lose no acknowledged write at a
//! power cut, and expose nothing unacknowledged as half-done (design.md section 5, promise 2;
//! docs/storage.md, "Two flushes in flight").
//!
//! Enough writers that the group-commit writer splits them into two flushes and writes each
//! beside the other (a later flush starts on a fresh block, so the two writes share none). The
//! simulated disk keeps each write in flight for a few turns of the other tasks, so a later
//! flush's write may land before an earlier one's. For every sync point of a clean run, a
//! fresh disk loses power there, and recovery runs on what it holds with unsynced sectors lost,
//! kept, or kept by a seeded coin flip each (a later flush kept, an earlier one lost: the shape
//! two flushes in flight add). After each: every acknowledged write is present at its exact
//! revision; every key holds nothing or the one value ever written to it; the log takes new
//! writes after the recovered end, and a clean restart finds the same state. The clean run's
//! log is also read back raw, as replication reads it: every position found, every record
//! handed out whole, dense and in order, with the gaps between flushes left out.

mod common;

use bytes::Bytes;
use common::{open, shard};
use coregrid_engine::partition::PartitionConfig;
use coregrid_engine::record::RecordRef;
use coregrid_engine::rt;
use coregrid_engine::sim::SimDisk;
use coregrid_engine::{EngineError, Partition};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// More than the writer splits into two flushes (`SPLIT_WRITERS_MIN` in partition.rs).
const WRITERS: usize = 80;
const PUTS_PER_WRITER: usize = 12;

fn key(writer: usize, put: usize) -> String {
    format!("w{writer:02}-{put}")
}

/// Each key is written once, with a value that names it.
fn value(key: &str) -> Bytes {
    Bytes::from(format!("value of {key} ").repeat(3))
}

#[derive(Default)]
struct Run {
    /// Key -> LSN of its acknowledged put.
    acked: BTreeMap<String, u64>,
    flushes_beside: u64,
    flushes: u64,
}

/// Runs the writers on `disk` until they end or the disk loses power.
async fn workload(disk: &SimDisk) -> Run {
    let run = Rc::new(RefCell::new(Run::default()));
    let Ok(partition) = open(disk, common::config(0)).await else {
        return Run::default();
    };
    if partition.create_collection("c").await.is_err() {
        return Run::default();
    }
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let partition = partition.clone();
            let run = run.clone();
            rt::spawn_local(async move {
                for put in 0..PUTS_PER_WRITER {
                    let key = key(writer, put);
                    let lsn = partition
                        .put("c", Bytes::from(key.clone()), value(&key))
                        .await?;
                    run.borrow_mut().acked.insert(key, lsn);
                }
                Ok::<(), EngineError>(())
            })
        })
        .collect();
    for task in tasks {
        let _outcome_is_in_the_run = task.await;
    }
    let stats = partition.stats();
    run.borrow_mut().flushes_beside = stats.flushes_beside;
    run.borrow_mut().flushes = stats.flushes;
    let _ = partition.close().await;
    Rc::try_unwrap(run)
        .ok()
        .expect("tasks are done")
        .into_inner()
}

/// Recovers from `disk` and checks it against `run`; then writes, restarts and checks again.
async fn recover_and_check(disk: &SimDisk, run: &Run, what: &str) {
    let partition = Partition::open(common::PARTITION, disk.clone(), common::config(0), shard())
        .await
        .unwrap_or_else(|error| panic!("{what}: recovery failed: {error}"));
    let state = read_state(&partition, run, what).await;
    let Some(state) = state else {
        return;
    };
    let durable_lsn = partition.durable_lsn();
    for (key, lsn) in &run.acked {
        assert_eq!(
            state.get(key),
            Some(&(value(key), *lsn)),
            "{what}: {key}, acknowledged at LSN {lsn}"
        );
    }
    for (key, (found, revision)) in &state {
        assert_eq!(
            found,
            &value(key),
            "{what}: {key} holds a value never written"
        );
        assert!(
            *revision <= durable_lsn,
            "{what}: {key} at revision {revision} past the durable LSN {durable_lsn}"
        );
    }
    let after = partition
        .put("c", Bytes::from("after"), Bytes::from("restart"))
        .await
        .unwrap_or_else(|error| panic!("{what}: a write after recovery: {error}"));
    assert!(after > durable_lsn, "{what}: LSN {after} reused");
    partition.close().await.unwrap();
    drop(partition);
    let partition = open(disk, common::config(0))
        .await
        .unwrap_or_else(|error| panic!("{what}: second recovery: {error}"));
    let again = read_state(&partition, run, what).await.expect("collection");
    assert_eq!(again, state, "{what}: state changed across a clean restart");
    assert_eq!(
        partition
            .get("c", b"after")
            .await
            .unwrap()
            .map(|v| v.revision),
        Some(after),
        "{what}: the write after recovery"
    );
    partition.close().await.unwrap();
}

/// Every key's value and revision; `None` if the collection's creation did not survive (then
/// nothing was acknowledged).
async fn read_state(
    partition: &Partition<SimDisk>,
    run: &Run,
    what: &str,
) -> Option<BTreeMap<String, (Bytes, u64)>> {
    let mut state = BTreeMap::new();
    for writer in 0..WRITERS {
        for put in 0..PUTS_PER_WRITER {
            let key = key(writer, put);
            match partition.get("c", key.as_bytes()).await {
                Ok(Some(found)) => {
                    state.insert(key, (found.value, found.revision));
                }
                Ok(None) => {}
                Err(EngineError::NoSuchCollection(_)) => {
                    assert!(run.acked.is_empty(), "{what}: the collection is gone");
                    return None;
                }
                Err(error) => panic!("{what}: get {key}: {error}"),
            }
        }
    }
    Some(state)
}

/// Reads the whole log raw from LSN 1 and checks that it holds exactly LSNs 1..=durable, whole and in order; and that every LSN
/// is found by `position_of` where the raw read met it.
async fn check_raw_reads(disk: &SimDisk) {
    let partition = open(disk, common::config(0)).await.expect("reopen");
    let durable_lsn = partition.durable_lsn();
    let mut position = partition.position_of(1).await.unwrap().expect("LSN 1 held");
    let mut next_lsn = 1;
    while next_lsn <= durable_lsn {
        let chunk = partition.read_raw(position, 1).await.unwrap();
        assert!(!chunk.bytes.is_empty(), "no progress at LSN {next_lsn}");
        let mut used = 0;
        while used < chunk.bytes.len() {
            let record = RecordRef::validate(&chunk.bytes[used..])
                .unwrap_or_else(|error| panic!("LSN {next_lsn}: not a whole record: {error}"));
            assert_eq!(record.header.lsn(), next_lsn, "raw records are dense");
            used += record.len();
            next_lsn += 1;
        }
        position = chunk.next;
    }
    assert_eq!(next_lsn, durable_lsn + 1);
    for lsn in (1..=durable_lsn).step_by(7) {
        let at = partition.position_of(lsn).await.unwrap().expect("held");
        let chunk = partition.read_raw(at, 1).await.unwrap();
        assert_eq!(chunk.first_lsn, lsn, "position_of({lsn}) points at it");
    }
    partition.close().await.unwrap();
}

#[test]
fn two_flushes_in_flight_lose_no_acknowledged_write_at_any_sync() {
    let seed = common::seed("two_flushes");
    rt::run_local(|| async move {
        let clean = SimDisk::new();
        let run = workload(&clean).await;
        let syncs = clean.syncs();
        println!(
            "clean run: {syncs} syncs, {} flushes, {} of them beside another",
            run.flushes, run.flushes_beside
        );
        assert_eq!(run.acked.len(), WRITERS * PUTS_PER_WRITER);
        assert!(
            run.flushes_beside >= 2,
            "flushes must go beside another: {} of {}",
            run.flushes_beside,
            run.flushes
        );
        check_raw_reads(&clean).await;
        common::check_every_crash(
            &clean,
            run,
            syncs,
            syncs / 2 + 1,
            seed,
            |disk| async move { workload(&disk).await },
            |disk, run, what| async move { recover_and_check(&disk, &run, &what).await },
        )
        .await;
    });
}

/// A flush of megabytes has no flush beside it (`BESIDE_IN_FLIGHT_BYTES_MAX`): its time is the
/// transfer, and a second write beside it only slowed both on a real disk. The same writers
/// with small values do write beside each other (the test above), so what stops them here is
/// the flush's size.
#[test]
fn no_flush_goes_beside_a_flush_of_megabytes() {
    rt::run_local(|| async move {
        let disk = SimDisk::new();
        let config = PartitionConfig {
            segment_bytes: 64 * 1024 * 1024,
            ..common::config(0)
        };
        let partition = open(&disk, config).await.expect("open");
        partition.create_collection("c").await.expect("collection");
        let value = Bytes::from(vec![b'v'; 64 * 1024]);
        let tasks: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (partition, value) = (partition.clone(), value.clone());
                rt::spawn_local(async move {
                    for put in 0..4 {
                        let key = Bytes::from(key(writer, put));
                        partition.put("c", key, value.clone()).await?;
                    }
                    Ok::<(), EngineError>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a put");
        }
        let stats = partition.stats();
        println!(
            "{} flushes, {} of them beside another",
            stats.flushes, stats.flushes_beside
        );
        assert!(stats.flushes >= 2, "the writers made several flushes");
        assert_eq!(stats.flushes_beside, 0);
        partition.close().await.expect("close");
    });
}
