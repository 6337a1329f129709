//! Proves that flushes sharing a device flush ([`coregrid_engine::shared_sync`]) lose no
//! acknowledged write at a power cut: several partitions of one shard, on one simulated disk,
//! take small puts from concurrent writers, so that most of their flushes write plainly and
//! wait for a round's device flush through another partition's file. For every sync point of
//! the clean run (a file's own sync, a durable write, a device flush), the workload runs again
//! on a disk that loses power there; after the crash (unsynced sectors lost, kept, or torn by a
//! seed) every partition recovers and must hold every acknowledged put with its value and its
//! revision.
//!
//! What it relies on in the simulated disk: a device flush makes durable only overwrites of
//! sectors that their own file's sync committed before, as ext4 does for an O_DIRECT write into
//! a written extent; a write into blocks never synced (a fresh segment, zeros ahead) is lost
//! unless its own file is synced. A shared flush that wrote such blocks fails this test:
//! partition 0 takes puts larger than the zeros written ahead (groups that large write none),
//! so its later puts land past what its syncs committed while the other partitions flush.

mod common;

use bytes::Bytes;
use common::shard;
use coregrid_engine::constants::{SEGMENT_BYTES_MIN, VALUE_BYTES_MAX};
use coregrid_engine::io::{Storage, StorageFile};
use coregrid_engine::partition::{PartitionConfig, ShardState};
use coregrid_engine::record::Operation;
use coregrid_engine::rt;
use coregrid_engine::shared_sync::SharedSyncStats;
use coregrid_engine::sim::{CrashMode, SimDisk, SIM_SECTOR_BYTES};
use coregrid_engine::wal::{write_flush, Wal, WalShard};
use coregrid_engine::{EngineError, Partition};
use std::cell::RefCell;
use std::rc::Rc;

const PARTITIONS: u32 = 9;
const WRITERS_PER_PARTITION: usize = 3;
const PUTS_PER_WRITER: usize = 8;
/// Partition 0's puts, one writer: the largest value, so that each record is past
/// `ZERO_AHEAD_GROUP_BYTES_MAX` (no zeros ahead), and after eight of them past the zeros its
/// first flush wrote.
const BIG_VALUE_BYTES: usize = VALUE_BYTES_MAX;
const BIG_PUTS: usize = 12;

fn config(id: u32) -> PartitionConfig {
    PartitionConfig {
        // Partition 0's big puts fit one segment: no segment creation syncs them.
        segment_bytes: if id == 0 {
            16 * 1024 * 1024
        } else {
            SEGMENT_BYTES_MIN
        },
        // No snapshots: every acknowledged put must come back from the logs.
        snapshot_wal_bytes: 0,
        commit_batch_fill_limit: None,
    }
}

/// Each partition in a directory of its own on the one disk.
fn partition_disk(disk: &SimDisk, id: u32) -> SimDisk {
    disk.subdir(&format!("p{id}"))
}

/// `(partition, key, value, revision)` of every acknowledged put.
type Acked = Rc<RefCell<Vec<(u32, String, Bytes, u64)>>>;

struct Run {
    acked: Vec<(u32, String, Bytes, u64)>,
    flushes_shared: u64,
    rounds: SharedSyncStats,
}

async fn open_all(
    disk: &SimDisk,
    shard: &Rc<ShardState>,
) -> Result<Vec<Rc<Partition<SimDisk>>>, EngineError> {
    let mut partitions = Vec::new();
    for id in 0..PARTITIONS {
        partitions
            .push(Partition::open(id, partition_disk(disk, id), config(id), shard.clone()).await?);
    }
    Ok(partitions)
}

/// Runs the workload until it ends or the disk loses power.
async fn workload(disk: &SimDisk) -> Run {
    let shard = shard();
    let acked: Acked = Rc::default();
    let mut run = Run {
        acked: Vec::new(),
        flushes_shared: 0,
        rounds: SharedSyncStats::default(),
    };
    let Ok(partitions) = open_all(disk, &shard).await else {
        return run;
    };
    for partition in &partitions {
        if partition.create_collection("c").await.is_err() {
            return run;
        }
    }
    let mut tasks = Vec::new();
    for partition in &partitions {
        let (writers, puts) = if partition.id() == 0 {
            (1, BIG_PUTS)
        } else {
            (WRITERS_PER_PARTITION, PUTS_PER_WRITER)
        };
        for writer in 0..writers {
            let (partition, acked) = (partition.clone(), acked.clone());
            tasks.push(rt::spawn_local(async move {
                for put in 0..puts {
                    let key = format!("w{writer}-{put}");
                    let mut value = format!("{} {key} {}", partition.id(), put * 37).into_bytes();
                    if partition.id() == 0 {
                        value.resize(BIG_VALUE_BYTES, b'.');
                    }
                    let value = Bytes::from(value);
                    match partition
                        .put("c", Bytes::from(key.clone()), value.clone())
                        .await
                    {
                        Ok(revision) => {
                            acked
                                .borrow_mut()
                                .push((partition.id(), key, value, revision))
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await;
    }
    run.flushes_shared = partitions
        .iter()
        .map(|partition| partition.stats().flushes_shared)
        .sum();
    run.rounds = shard.wal.shared_sync.stats();
    for partition in &partitions {
        let _ = partition.close().await;
    }
    run.acked = acked.take();
    run
}

async fn recover_and_check(disk: &SimDisk, run: &Run, what: &str) {
    let partitions = open_all(disk, &shard())
        .await
        .unwrap_or_else(|error| panic!("{what}: recovery failed: {error}"));
    for (id, key, value, revision) in &run.acked {
        let found = partitions[*id as usize]
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
    for partition in partitions {
        partition.close().await.unwrap();
    }
}

#[test]
fn shared_flushes_lose_no_acknowledged_put_at_any_sync() {
    let seed = common::seed("shared_sync_crash");
    rt::run_local(|| async move {
        let clean = SimDisk::new();
        let run = workload(&clean).await;
        let sync_points = clean.syncs();
        let expected =
            (PARTITIONS as usize - 1) * WRITERS_PER_PARTITION * PUTS_PER_WRITER + BIG_PUTS;
        assert_eq!(run.acked.len(), expected, "the clean run acknowledges all");
        // The path under test is taken: most flushes shared a device flush, and the disk saw
        // device flushes.
        println!(
            "clean run: {sync_points} sync points, {} device flushes; {} of {expected} puts' \
             flushes shared {} rounds",
            clean.device_syncs(),
            run.flushes_shared,
            run.rounds.rounds,
        );
        assert!(
            run.flushes_shared * 4 > expected as u64,
            "too few shared flushes to test them: {}",
            run.flushes_shared
        );
        // Rounds were shared: a flush waited for a device flush through another file.
        assert!(
            run.rounds.flushes >= run.rounds.rounds + 10,
            "too few rounds shared: {:?}",
            run.rounds
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

/// The decision itself, flush by flush: a flush shares a device flush only while other
/// partitions flush and only where every block it writes was committed by its own segment's
/// syncs (the zeros the first flush of a segment writes ahead); past them, a flush syncs its
/// own file, and after a flush that wrote zeros ahead and synced them, flushes share again.
#[test]
fn a_flush_past_the_committed_blocks_syncs_its_own_file() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let shard = WalShard::default();
        let wal = Wal::open(
            disk.clone(),
            0,
            16 * 1024 * 1024,
            shard.clone(),
            0,
            Vec::new(),
            |_| {},
        )
        .await
        .expect("open");
        let wal = RefCell::new(wal);
        let value = vec![0x5a_u8; VALUE_BYTES_MAX];
        let mut lsn = 0;
        // Flushes one record of `len` value bytes; returns whether it shared a device flush.
        let mut flush_one = async |len: usize| {
            lsn += 1;
            wal.borrow_mut()
                .stage(
                    1,
                    lsn,
                    None,
                    &Operation::Put {
                        collection: "c",
                        key: format!("k{lsn}").as_bytes(),
                        value: &value[..len],
                    },
                )
                .expect("room");
            let plan = wal.borrow_mut().take_flush().expect("staged");
            let shared = plan.shares_device_flush();
            write_flush(&wal, plan).await.expect("flush");
            shared
        };
        // Alone on the shard: never shared.
        assert!(
            !flush_one(100).await,
            "a flush alone on its shard syncs itself"
        );
        // Another partition flushes from now on.
        let _another = shard.shared_sync.count_flush();
        assert!(
            flush_one(100).await,
            "inside the zeros the first flush committed"
        );
        // Records past the zero-ahead group limit write no zeros: they walk past the
        // committed blocks (about 8 MiB written ahead by the first flush).
        let mut kinds = Vec::new();
        for _ in 0..10 {
            kinds.push(flush_one(VALUE_BYTES_MAX).await);
        }
        let first_own = kinds
            .iter()
            .position(|shared| !shared)
            .expect("some own sync");
        assert!(
            first_own >= 5,
            "shared while inside the committed blocks: {kinds:?}"
        );
        assert!(kinds[first_own..].iter().all(|shared| !shared), "{kinds:?}");
        // A small flush zeros ahead (its own sync); the one after it shares again.
        assert!(
            !flush_one(100).await,
            "a flush writing zeros ahead syncs itself"
        );
        assert!(flush_one(100).await, "inside the zeros just committed");
        // Everything acknowledged is durable without any other sync.
        let crashed = disk.crash(CrashMode::LoseUnsynced);
        let mut recovered = Vec::new();
        Wal::open(
            crashed,
            0,
            16 * 1024 * 1024,
            WalShard::default(),
            0,
            Vec::new(),
            |record| recovered.push(record.header.meta().lsn),
        )
        .await
        .expect("recover");
        assert_eq!(recovered, (1..=lsn).collect::<Vec<_>>());
    });
}

/// The byte filling each of the first two sectors of `name` after a power cut that loses
/// every unsynced sector (each sector must be filled with one byte).
fn first_sectors_after_power_cut(disk: &SimDisk, name: &str) -> [u8; 2] {
    let bytes = disk
        .crash(CrashMode::LoseUnsynced)
        .file_bytes(name)
        .expect("file");
    [0, 1].map(|sector| {
        let sector = &bytes[sector * SIM_SECTOR_BYTES..(sector + 1) * SIM_SECTOR_BYTES];
        assert!(
            sector.iter().all(|&byte| byte == sector[0]),
            "a mixed sector"
        );
        sector[0]
    })
}

/// The simulated disk's side of the contract the test above relies on: a device flush through
/// one file makes another file's overwrites of committed sectors durable, and not its writes
/// into sectors its own sync never committed.
#[test]
fn a_device_flush_covers_other_files_overwrites_only() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let sector = |byte: u8| {
            let mut buffer = disk.alloc_buffer(SIM_SECTOR_BYTES);
            buffer.fill(byte);
            buffer
        };
        let a = disk.create("a", 4096).await.unwrap();
        let b = disk.create("b", 4096).await.unwrap();
        disk.sync_dir().await.unwrap();
        b.write_at(sector(1), 0).await.unwrap();
        b.sync().await.unwrap();
        b.write_at(sector(2), 0).await.unwrap();
        b.write_at(sector(3), SIM_SECTOR_BYTES as u64)
            .await
            .unwrap();
        a.sync_device().await.unwrap();
        assert_eq!(first_sectors_after_power_cut(&disk, "b"), [2, 0]);
        // Its own sync commits it; then the next device flush covers its overwrite.
        b.sync().await.unwrap();
        b.write_at(sector(4), SIM_SECTOR_BYTES as u64)
            .await
            .unwrap();
        a.sync_device().await.unwrap();
        assert_eq!(first_sectors_after_power_cut(&disk, "b"), [2, 4]);
    });
}
