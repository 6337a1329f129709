//! Proves that the shard journal ([`coregrid_engine::journal`]) loses no acknowledged write at
//! a power cut and never brings back what a truncation cut.
//!
//! Several partitions of one shard, on one simulated disk, take small puts from concurrent
//! writers through a journal with small slots, so that the run acknowledges most puts from
//! journal chunks, writes the partitions' own logs later, and retires and reuses slots. For
//! every sync point of the clean run (a file's sync, a durable write, a device flush), the
//! workload runs again on a disk that loses power there; after the crash (unsynced sectors
//! lost, kept, or torn by a seed) the partitions reopen, the journal is read and replayed into
//! them, and every acknowledged put must be there with its value and its revision.
//!
//! The workload ends as the engine's shutdown does: partitions closed, then the journal.
//!
//! Partition 1 is cut back mid-run (`truncate_after`, as a deposed leader is): its records
//! after the cut were journaled and must never come back, so its cut keys must be absent
//! after recovery unless written again after the cut.

mod common;

use bytes::Bytes;
use common::shard;
use coregrid_engine::constants::SEGMENT_BYTES_MIN;
use coregrid_engine::journal::{self, Journal, JOURNAL_BLOCK_BYTES};
use coregrid_engine::partition::{replay_journal_entries, PartitionConfig, ShardState};
use coregrid_engine::rt;
use coregrid_engine::sim::SimDisk;
use coregrid_engine::{EngineError, Partition};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

const PARTITIONS: u32 = 6;
const WRITERS_PER_PARTITION: usize = 3;
const PUTS_PER_WRITER: usize = 20;
/// Small slots: the run fills and retires them.
const SLOT_BYTES: u64 = 4 * JOURNAL_BLOCK_BYTES as u64;
/// The partition cut back mid-run, and the keys its cut removes.
const CUT_PARTITION: u32 = 1;
const CUT_KEYS: usize = 4;
/// The cut key written again after the cut.
const REWRITTEN: &str = "w8-0";

fn config() -> PartitionConfig {
    PartitionConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        // No snapshots: every acknowledged put must come back from the logs and the journal.
        snapshot_wal_bytes: 0,
        commit_batch_fill_limit: None,
    }
}

/// `(partition, key, value, revision)` of every acknowledged put.
type Acked = Vec<(u32, String, Bytes, u64)>;

#[derive(Default)]
struct Run {
    acked: Acked,
    /// Keys of the cut partition that the truncation removed (acknowledged before it).
    cut: Vec<String>,
    /// Acknowledged puts the truncation removed (the cut writer's and concurrent ones).
    removed: usize,
    journal_writes: u64,
}

type Partitions = BTreeMap<u32, Rc<Partition<SimDisk>>>;

/// Opens every partition, replays the journal into them, and starts a journal on top.
async fn open_all(
    disk: &SimDisk,
    shard: &Rc<ShardState>,
) -> Result<(Partitions, Rc<Journal<SimDisk>>), EngineError> {
    let mut partitions = BTreeMap::new();
    for id in 0..PARTITIONS {
        let partition =
            Partition::open(id, disk.subdir(&format!("p{id}")), config(), shard.clone()).await?;
        partitions.insert(id, partition);
    }
    let journal_disk = disk.subdir("journal");
    let recovered = journal::recover(&journal_disk)
        .await
        .map_err(|error| EngineError::Runtime(format!("recover the journal: {error}")))?;
    replay_journal_entries(&recovered.entries, &partitions).await?;
    let journal = Journal::create(journal_disk, recovered.last_file_no, SLOT_BYTES)
        .await
        .map_err(|error| EngineError::Runtime(format!("create the journal: {error}")))?;
    for partition in partitions.values() {
        partition.attach_journal(journal.clone());
    }
    Ok((partitions, journal))
}

async fn put_all(
    partition: &Rc<Partition<SimDisk>>,
    writer: usize,
    puts: std::ops::Range<usize>,
    acked: &RefCell<Acked>,
) -> bool {
    for put in puts {
        let key = format!("w{writer}-{put}");
        let value = Bytes::from(format!("{} {key} {}", partition.id(), put * 37));
        match partition
            .put("c", Bytes::from(key.clone()), value.clone())
            .await
        {
            Ok(revision) => acked
                .borrow_mut()
                .push((partition.id(), key, value, revision)),
            Err(_) => return false,
        }
    }
    true
}

/// Runs the workload until it ends or the disk loses power.
async fn workload(disk: &SimDisk) -> Run {
    let shard = shard();
    let mut run = Run::default();
    let Ok((partitions, journal)) = open_all(disk, &shard).await else {
        return run;
    };
    for partition in partitions.values() {
        if partition.create_collection("c").await.is_err() {
            return run;
        }
    }
    let acked: Rc<RefCell<Acked>> = Rc::default();
    // The cut partition: one writer puts a few keys, remembers where it stood, puts more,
    // and cuts them off again; then it writes on.
    let cut = {
        let (partition, acked) = (partitions[&CUT_PARTITION].clone(), acked.clone());
        rt::spawn_local(async move {
            if !put_all(&partition, 9, 0..3, &acked).await {
                return None;
            }
            let keep = partition.staged_lsn();
            if !put_all(&partition, 8, 0..CUT_KEYS, &acked).await {
                return None;
            }
            // From here the puts after `keep` are in doubt: a power cut during the cut may
            // or may not have removed them. Once it returns, they must be gone.
            let cut: Vec<String> = {
                let mut acked = acked.borrow_mut();
                let cut = acked
                    .iter()
                    .filter(|(id, _, _, revision)| *id == CUT_PARTITION && *revision > keep)
                    .map(|(_, key, _, _)| key.clone())
                    .collect();
                acked.retain(|(id, _, _, revision)| *id != CUT_PARTITION || *revision <= keep);
                cut
            };
            let removed = cut.len();
            if partition.truncate_after(keep).await.is_err() {
                return Some((Vec::new(), removed));
            }
            // One of the cut keys is written again: it must come back with its new value.
            put_all(&partition, 8, 0..1, &acked).await;
            Some((cut, removed))
        })
    };
    let mut tasks = Vec::new();
    // The cut partition has no other writers: what the cut removes is exactly its writer's.
    for partition in partitions.values().filter(|p| p.id() != CUT_PARTITION) {
        for writer in 0..WRITERS_PER_PARTITION {
            let (partition, acked) = (partition.clone(), acked.clone());
            tasks.push(rt::spawn_local(async move {
                put_all(&partition, writer, 0..PUTS_PER_WRITER, &acked).await;
            }));
        }
    }
    for task in tasks {
        task.await;
    }
    let cut = cut.await;
    run.journal_writes = journal.stats().writes;
    // As the engine shuts a shard down: its partitions first (their logs made durable), then
    // the journal (its writes in flight waited for, its slot files closed). The clean run's
    // check then recovers a journal closed this way; the close makes no sync of its own, so
    // it adds no crash point.
    for partition in partitions.values() {
        let _ = partition.close().await;
    }
    let _ = journal.close().await;
    run.acked = acked.take();
    let (cut, removed) = cut.unwrap_or_default();
    run.removed = removed;
    // The key written again after the cut is checked as an acknowledged put if its write
    // was acknowledged, and not at all otherwise (a write in flight at a crash may be there).
    run.cut = cut.into_iter().filter(|key| key != REWRITTEN).collect();
    run
}

async fn recover_and_check(disk: &SimDisk, run: &Run, what: &str) {
    let (partitions, _journal) = open_all(disk, &shard())
        .await
        .unwrap_or_else(|error| panic!("{what}: recovery failed: {error}"));
    for (id, key, value, revision) in &run.acked {
        let found = partitions[id]
            .get("c", key.as_bytes())
            .await
            .unwrap_or_else(|error| panic!("{what}: partition {id}: get {key}: {error}"));
        let found = found.map(|found| (found.value, found.revision));
        assert_eq!(
            found,
            Some((value.clone(), *revision)),
            "{what}: partition {id} lost {key}, acknowledged at LSN {revision}"
        );
    }
    for key in &run.cut {
        let found = partitions[&CUT_PARTITION]
            .get("c", key.as_bytes())
            .await
            .unwrap_or_else(|error| panic!("{what}: get {key}: {error}"));
        assert!(
            found.is_none(),
            "{what}: {key}, cut by the truncation, came back: {found:?}"
        );
    }
    for partition in partitions.values() {
        partition.close().await.unwrap();
    }
}

#[test]
fn the_journal_loses_no_acknowledged_put_and_revives_no_cut_one_at_any_sync() {
    let seed = common::seed("journal_crash");
    rt::run_local(|| async move {
        let clean = SimDisk::new();
        let run = workload(&clean).await;
        let sync_points = clean.syncs();
        let expected =
            (PARTITIONS as usize - 1) * WRITERS_PER_PARTITION * PUTS_PER_WRITER + 3 + CUT_KEYS + 1;
        assert_eq!(
            run.acked.len() + run.removed,
            expected,
            "the clean run acknowledges all"
        );
        assert_eq!(run.removed, CUT_KEYS, "the cut removed its writer's puts");
        assert_eq!(run.cut.len(), CUT_KEYS - 1, "one cut key is written again");
        println!(
            "clean run: {sync_points} sync points, {} journal chunks for {expected} puts",
            run.journal_writes
        );
        // The path under test is taken: puts went through journal chunks, and enough of them
        // to fill and retire slots.
        let slots_filled = run.journal_writes * JOURNAL_BLOCK_BYTES as u64 / SLOT_BYTES;
        assert!(
            slots_filled >= 5,
            "too few journal chunks to retire slots: {}",
            run.journal_writes
        );
        common::check_every_crash(
            &clean,
            run,
            sync_points,
            sync_points - 2,
            seed,
            |disk| async move { workload(&disk).await },
            |disk, run, what| async move { recover_and_check(&disk, &run, &what).await },
        )
        .await;
    });
}
