//! Proves catch-up by snapshot on the follower's side (`Partition::install_snapshot`,
//! `docs/replication.md`): a follower whose log diverged from its leader's, or fell too far
//! behind, receives the leader's newest snapshot file in chunks and installs it in place of
//! its whole log.
//! - Afterwards it holds the leader's state at the snapshot, the leader's epoch history up to
//!   it, and nothing of its old log (a deposed leader's records past the snapshot's LSN must
//!   not come back); pulling the leader's WAL after the snapshot ends at the leader's state;
//!   a restart keeps all of it.
//! - A snapshot that does not load (a flipped byte, a cut, another partition's) is refused
//!   and changes nothing.
//! - A power cut at any sync point of the download and install recovers to exactly the old
//!   state (every record the follower had stays) or exactly the new one, never a mix; also
//!   when the follower's writes were acknowledged from a shard journal, whose records of the
//!   replaced log the install's journal barrier keeps from being replayed over the snapshot
//!   (without the barrier, recovery replays them and fails in 4 of 6 random seeds tried, and
//!   always with the pinned one).

mod common;

use bytes::Bytes;
use common::{open, seed, shard, PARTITION};
use coregrid_engine::journal::{self, Journal, JOURNAL_BLOCK_BYTES};
use coregrid_engine::partition::{replay_journal_entries, PartitionConfig};
use coregrid_engine::rt;
use coregrid_engine::sim::{CrashMode, SimDisk};
use coregrid_engine::{EngineError, Partition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::rc::Rc;

const KEYS: usize = 40;

/// A journaled follower's journal slots: large enough that its log lags until the install.
const JOURNAL_SLOT_BYTES: u64 = 64 * JOURNAL_BLOCK_BYTES as u64;

fn key(index: usize) -> Bytes {
    Bytes::from(format!("key-{index}"))
}

fn config() -> PartitionConfig {
    // Snapshots only when the test takes them.
    common::config(0)
}

/// The leader: collection "c" in epoch 3, many keys (some values large enough to roll
/// segments), a snapshot, then more writes after it. Returns its state at the snapshot.
async fn write_leader(leader: &Partition<SimDisk>, rng: &mut StdRng) -> Vec<String> {
    leader.begin_epoch(3).await.unwrap();
    leader.create_collection("c").await.unwrap();
    for step in 0..200 {
        let len = if step % 20 == 0 {
            300_000
        } else {
            rng.gen_range(1..500)
        };
        let index = rng.gen_range(0..KEYS);
        if rng.gen_range(0..8) == 0 {
            leader.delete("c", &key(index)).await.unwrap();
        } else {
            leader
                .put(
                    "c",
                    key(index),
                    Bytes::from(vec![b'a' + (step % 26) as u8; len]),
                )
                .await
                .unwrap();
        }
    }
    let info = leader
        .snapshot()
        .await
        .unwrap()
        .expect("no snapshot was running");
    assert_eq!(info.snapshot_lsn, leader.durable_lsn());
    let at_snapshot = state(leader).await;
    leader.begin_epoch(4).await.unwrap();
    for step in 0..30 {
        leader
            .put("c", key(step % KEYS), Bytes::from(format!("after-{step}")))
            .await
            .unwrap();
    }
    at_snapshot
}

/// The follower's own log: a deposed leader's, in epoch 2, with keys the leader never had,
/// running past the leader's snapshot LSN.
async fn write_follower(follower: &Partition<SimDisk>, past_lsn: u64) {
    follower.begin_epoch(2).await.unwrap();
    follower.create_collection("c").await.unwrap();
    follower.create_collection("stale").await.unwrap();
    let mut step = 0;
    while follower.durable_lsn() <= past_lsn + 5 {
        follower
            .put(
                "stale",
                key(step % KEYS),
                Bytes::from(format!("stale-{step}")),
            )
            .await
            .unwrap();
        follower
            .put(
                "c",
                key(step % KEYS),
                Bytes::from(format!("deposed-{step}")),
            )
            .await
            .unwrap();
        step += 1;
    }
}

/// What a partition answers for every key, in every collection either log has.
async fn state(partition: &Partition<SimDisk>) -> Vec<String> {
    let mut answers = Vec::new();
    for collection in ["c", "stale"] {
        for index in 0..KEYS {
            let found = partition.get(collection, &key(index)).await;
            let found = match found {
                Ok(found) => format!("{:?}", found.map(|found| (found.value, found.revision))),
                Err(EngineError::NoSuchCollection(_)) => "no collection".to_string(),
                Err(error) => panic!("{collection}/{index}: {error}"),
            };
            answers.push(format!("{collection}/{index}: {found}"));
        }
    }
    answers
}

/// Hands the leader's newest snapshot to the follower in chunks of `chunk` bytes, as the
/// replication channel does, then installs it; `corrupt` may change a chunk on the way.
async fn transfer(
    leader: &Partition<SimDisk>,
    follower: &std::rc::Rc<Partition<SimDisk>>,
    chunk: usize,
    mut corrupt: impl FnMut(u64, &mut Vec<u8>),
) -> Result<(), EngineError> {
    let file = leader.newest_snapshot().expect("the leader has a snapshot");
    let mut download = follower.begin_snapshot_download(file.lsn).await?;
    let mut offset = 0;
    loop {
        let (mut bytes, size) = leader
            .read_snapshot(file, offset, chunk)
            .await?
            .expect("the snapshot stays while nothing replaces it");
        corrupt(offset, &mut bytes);
        download.append(&bytes).await?;
        offset += bytes.len() as u64;
        if bytes.is_empty() || offset >= size {
            break;
        }
    }
    follower.install_snapshot(download).await.map(|_| ())
}

/// Pulls the leader's WAL after the follower's last record, as a follower does after an
/// install.
async fn pull(leader: &Partition<SimDisk>, follower: &Partition<SimDisk>) {
    let Some(mut position) = leader
        .position_of(follower.durable_lsn() + 1)
        .await
        .unwrap()
    else {
        return;
    };
    loop {
        let chunk = leader.read_raw(position, 1 << 20).await.unwrap();
        if chunk.bytes.is_empty() {
            return;
        }
        follower.append_replicated(&chunk.bytes).await.unwrap();
        position = chunk.next;
    }
}

#[test]
fn an_installed_snapshot_replaces_a_diverged_log() {
    let seed = seed("an_installed_snapshot_replaces_a_diverged_log");
    rt::run_local(|| async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let leader = open(&SimDisk::new(), config()).await.unwrap();
        let at_snapshot = write_leader(&leader, &mut rng).await;
        let snapshot_lsn = leader.newest_snapshot().unwrap().lsn;
        let history_at_snapshot: Vec<(u64, u64)> = leader
            .epoch_history()
            .into_iter()
            .filter(|(_, first)| *first <= snapshot_lsn)
            .collect();

        let disk = SimDisk::new();
        let follower = open(&disk, config()).await.unwrap();
        write_follower(&follower, snapshot_lsn).await;
        assert!(follower.durable_lsn() > snapshot_lsn);

        transfer(&leader, &follower, rng.gen_range(1000..70_000), |_, _| {})
            .await
            .unwrap();
        assert_eq!(follower.durable_lsn(), snapshot_lsn);
        assert_eq!(follower.epoch_history(), history_at_snapshot);
        assert_eq!(state(&follower).await, at_snapshot);
        assert_eq!(follower.stats().segments, 0, "the old log is gone");

        // A restart before pulling anything: the same.
        follower.close().await.unwrap();
        drop(follower);
        let follower = open(&disk, config()).await.unwrap();
        assert_eq!(follower.durable_lsn(), snapshot_lsn);
        assert_eq!(follower.epoch_history(), history_at_snapshot);
        assert_eq!(state(&follower).await, at_snapshot);

        // Pulling the log after the snapshot reaches the leader, and survives a restart.
        pull(&leader, &follower).await;
        assert_eq!(follower.durable_lsn(), leader.durable_lsn());
        assert_eq!(follower.epoch_history(), leader.epoch_history());
        assert_eq!(state(&follower).await, state(&leader).await);
        follower.close().await.unwrap();
        drop(follower);
        let follower = open(&disk, config()).await.unwrap();
        assert_eq!(state(&follower).await, state(&leader).await);

        // A snapshot taken here later replaces the installed one.
        follower.snapshot().await.unwrap().unwrap();
        follower.close().await.unwrap();
        drop(follower);
        let snapshots: Vec<String> = coregrid_engine::io::Storage::list(&disk)
            .unwrap()
            .into_iter()
            .filter(|name| name.contains(".snap"))
            .collect();
        assert_eq!(snapshots.len(), 1, "{snapshots:?}");
        assert!(snapshots[0].ends_with(".snap"), "{snapshots:?}");
        let follower = open(&disk, config()).await.unwrap();
        assert_eq!(state(&follower).await, state(&leader).await);
    });
}

/// Seeds that failed once, run every time (style: a failing seed becomes a pinned
/// regression). 13690084302841590360 flipped a byte of the zero padding after the last record,
/// which no reader looks at: the test now flips only bytes of records.
const PINNED_BAD_SNAPSHOT_SEEDS: [u64; 1] = [13_690_084_302_841_590_360];

#[test]
fn a_bad_snapshot_is_refused_and_changes_nothing() {
    let fresh = seed("a_bad_snapshot_is_refused_and_changes_nothing");
    for seed in PINNED_BAD_SNAPSHOT_SEEDS.into_iter().chain([fresh]) {
        bad_snapshots_are_refused(seed);
    }
}

fn bad_snapshots_are_refused(seed: u64) {
    rt::run_local(move || async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let leader = open(&SimDisk::new(), config()).await.unwrap();
        write_leader(&leader, &mut rng).await;
        let file = leader.newest_snapshot().unwrap();
        let (_, file_size) = leader.read_snapshot(file, 0, 0).await.unwrap().unwrap();
        // The records; the file is padded with zeros to a whole block after them.
        let (whole, _) = leader
            .read_snapshot(file, 0, file_size as usize)
            .await
            .unwrap()
            .unwrap();
        let size = whole.iter().rposition(|byte| *byte != 0).unwrap() as u64 + 1;

        let disk = SimDisk::new();
        let follower = open(&disk, config()).await.unwrap();
        write_follower(&follower, 10).await;
        let (old_state, old_lsn, old_history) = (
            state(&follower).await,
            follower.durable_lsn(),
            follower.epoch_history(),
        );

        // A flipped byte anywhere in the records (sampled), and a cut.
        for _ in 0..40 {
            let at = rng.gen_range(0..size);
            let bit = 1u8 << rng.gen_range(0..8);
            let result = transfer(&leader, &follower, 8192, |offset, bytes| {
                if (offset..offset + bytes.len() as u64).contains(&at) {
                    bytes[(at - offset) as usize] ^= bit;
                }
            })
            .await;
            match result {
                Ok(()) => panic!("a snapshot with byte {at} flipped (of {size}) was installed"),
                Err(EngineError::InvalidReplication(_)) => {}
                Err(error) => panic!("byte {at}: {error}"),
            }
            assert_eq!(follower.durable_lsn(), old_lsn);
        }
        let cut = rng.gen_range(1..size / 2);
        let result = transfer(&leader, &follower, 8192, |offset, bytes| {
            bytes.truncate(cut.saturating_sub(offset).min(bytes.len() as u64) as usize);
        })
        .await;
        assert!(
            matches!(result, Err(EngineError::InvalidReplication(_))),
            "{result:?}"
        );

        assert_eq!(state(&follower).await, old_state);
        assert_eq!(follower.epoch_history(), old_history);
        follower.close().await.unwrap();
        drop(follower);
        let follower = open(&disk, config()).await.unwrap();
        assert_eq!(follower.durable_lsn(), old_lsn);
        assert_eq!(state(&follower).await, old_state);
    });
}

/// A follower, and with a journal what shares it.
struct Follower {
    partition: Rc<Partition<SimDisk>>,
    journal: Option<Rc<Journal<SimDisk>>>,
    /// Another partition of the shard, whose writes keep the journal busy (a partition copies
    /// its records into the journal only while a write of the shard is in flight).
    neighbour: Option<Rc<Partition<SimDisk>>>,
}

/// Opens the follower on `disk`: with `journaled`, in a subdirectory beside a neighbour
/// partition and their shard journal (replayed into them first, then attached), as a data
/// shard opens its partitions.
async fn open_follower(disk: &SimDisk, journaled: bool) -> Result<Follower, EngineError> {
    if !journaled {
        return Ok(Follower {
            partition: open(disk, config()).await?,
            journal: None,
            neighbour: None,
        });
    }
    let shard = shard();
    let partition = Partition::open(PARTITION, disk.subdir("p"), config(), shard.clone()).await?;
    let neighbour = Partition::open(PARTITION + 1, disk.subdir("n"), config(), shard).await?;
    let journal_disk = disk.subdir("journal");
    let recovered = journal::recover(&journal_disk)
        .await
        .map_err(|error| EngineError::Runtime(format!("recover the journal: {error}")))?;
    let partitions = BTreeMap::from([
        (PARTITION, partition.clone()),
        (PARTITION + 1, neighbour.clone()),
    ]);
    replay_journal_entries(&recovered.entries, &partitions).await?;
    let journal = Journal::create(journal_disk, recovered.last_file_no, JOURNAL_SLOT_BYTES)
        .await
        .map_err(|error| EngineError::Runtime(format!("create the journal: {error}")))?;
    partition.attach_journal(journal.clone());
    neighbour.attach_journal(journal.clone());
    Ok(Follower {
        partition,
        journal: Some(journal),
        neighbour: Some(neighbour),
    })
}

/// The follower's own writes before the install; with a neighbour, that one writes beside it
/// all along, so that the follower's records go through the journal.
async fn write_as_follower(follower: &Follower, past_lsn: u64) {
    let Some(neighbour) = follower.neighbour.clone() else {
        return write_follower(&follower.partition, past_lsn).await;
    };
    neighbour.create_collection("n").await.unwrap();
    let done = Rc::new(std::cell::Cell::new(false));
    let beside = rt::spawn_local({
        let done = done.clone();
        async move {
            let mut step = 0;
            while !done.get() {
                let value = Bytes::from(format!("beside-{step}"));
                neighbour.put("n", key(step % KEYS), value).await.unwrap();
                step += 1;
            }
        }
    });
    write_follower(&follower.partition, past_lsn).await;
    done.set(true);
    beside.await;
}

#[test]
fn a_power_cut_during_an_install_leaves_the_old_state_or_the_new() {
    power_cut_during_an_install(
        seed("a_power_cut_during_an_install_leaves_the_old_state_or_the_new"),
        false,
    );
}

/// The same with the follower's writes acknowledged from a shard journal, so that its log
/// lags what it acknowledged: the install makes the log durable and writes a barrier, and no
/// crash may replay the journal's records of the replaced log on top of the installed
/// snapshot.
#[test]
fn a_power_cut_during_an_install_under_a_journal_leaves_the_old_state_or_the_new() {
    let name = "a_power_cut_during_an_install_under_a_journal_leaves_the_old_state_or_the_new";
    power_cut_during_an_install(seed(name), true);
    // Pinned: a seed whose run fails without the barrier (a random one does 4 times in 6).
    power_cut_during_an_install(14301633657852195903, true);
}

fn power_cut_during_an_install(seed: u64, journaled: bool) {
    rt::run_local(|| async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let leader = open(&SimDisk::new(), config()).await.unwrap();
        let at_snapshot = write_leader(&leader, &mut rng).await;
        let snapshot_lsn = leader.newest_snapshot().unwrap().lsn;
        let chunk = rng.gen_range(4096..40_000);

        // A clean install counts the follower's sync points.
        let clean = SimDisk::new();
        let opened = open_follower(&clean, journaled).await.unwrap();
        write_as_follower(&opened, snapshot_lsn).await;
        let follower = opened.partition.clone();
        if let Some(journal) = &opened.journal {
            assert!(
                journal.stats().writes > 0,
                "the follower's writes went through the journal"
            );
        }
        let (old_state, old_lsn) = (state(&follower).await, follower.durable_lsn());
        let syncs_before = clean.syncs();
        transfer(&leader, &follower, chunk, |_, _| {})
            .await
            .unwrap();
        let syncs = clean.syncs();
        assert!(syncs > syncs_before + 3, "the install syncs several times");

        let (mut old, mut new) = (0, 0);
        for crash_at in syncs_before + 1..=syncs {
            let disk = SimDisk::new();
            let opened = open_follower(&disk, journaled).await.unwrap();
            write_as_follower(&opened, snapshot_lsn).await;
            let follower = opened.partition.clone();
            assert_eq!(
                disk.syncs(),
                syncs_before,
                "the follower's history is deterministic"
            );
            disk.crash_at_sync(crash_at);
            let _ = transfer(&leader, &follower, chunk, |_, _| {}).await;
            drop(follower);
            for mode in [
                CrashMode::LoseUnsynced,
                CrashMode::KeepUnsynced,
                CrashMode::Torn(seed ^ crash_at),
            ] {
                let what = format!("crash at sync {crash_at}, {mode:?}");
                let reopened = open_follower(&disk.crash(mode), journaled)
                    .await
                    .unwrap_or_else(|error| panic!("{what}: recovery failed: {error}"));
                let recovered = reopened.partition.clone();
                let found = state(&recovered).await;
                if recovered.durable_lsn() == old_lsn && found == old_state {
                    old += 1;
                } else {
                    assert_eq!(
                        recovered.durable_lsn(),
                        snapshot_lsn,
                        "{what}: neither state"
                    );
                    assert_eq!(found, at_snapshot, "{what}: a mix of the old and new state");
                    new += 1;
                    pull(&leader, &recovered).await;
                    assert_eq!(state(&recovered).await, state(&leader).await, "{what}");
                }
            }
        }
        println!("{old} recoveries to the old state, {new} to the installed snapshot");
        assert!(
            old > 0 && new > 0,
            "crashes on both sides of the commit point"
        );
    });
}
