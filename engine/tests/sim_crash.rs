//! Proves that a power cut at any sync loses no acknowledged write and exposes no half-done
//! one (design.md section 5, promise 2 for one node; section 7).
//!
//! A workload of concurrent writer tasks (puts, compare-and-set puts and deletes, batches,
//! values large enough to roll WAL segments, explicit and automatic snapshots whose pruning
//! lets a later segment reuse a pruned segment's file) runs on a
//! `SimDisk`. For every sync point `k` the clean run performs, it runs again on a fresh disk
//! that loses power at sync `k`, recording which writes returned `Ok` (acknowledged) and at
//! which LSN. Then, for each crash mode (unsynced sectors lost, kept, or torn by a seed), the
//! partition recovers from what the disk holds and must show:
//! - every acknowledged write, or a later write to the same key;
//! - no value that was never written to its key, and for an acknowledged write its exact
//!   revision; no revision past the recovered durable LSN (nothing undurable in snapshots);
//! - batches all-or-nothing (all batch keys hold the same batch);
//! - the same state after new writes and a clean restart.

mod common;

use bytes::Bytes;
use common::{open, shard};
use coregrid_engine::io::Storage;
use coregrid_engine::partition::PartitionConfig;
use coregrid_engine::rt;
use coregrid_engine::sim::SimDisk;
use coregrid_engine::{BatchWrite, EngineError, Partition};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

const WRITERS: usize = 3;
const OPS_PER_WRITER: usize = 30;
/// Every fifth op of a writer puts a value this large: ~18 MiB in all, two segment rolls.
const BIG_VALUE_BYTES: usize = 1024 * 1024;
const BATCH_KEYS: [&str; 4] = ["batch-0", "batch-1", "batch-2", "batch-3"];
const PLAIN_KEYS: usize = 6;

fn config() -> PartitionConfig {
    // Automatic snapshots every ~6 MiB of WAL, on top of the explicit ones.
    common::config(6 * 1024 * 1024)
}

/// One attempted write to one key.
#[derive(Clone, Debug)]
struct Attempt {
    key: String,
    /// `None`: a delete.
    value: Option<Bytes>,
    /// The LSN it was acknowledged at, if it was.
    acked_lsn: Option<u64>,
}

#[derive(Default)]
struct History {
    attempts: Vec<Attempt>,
    collection_acked: bool,
    /// New segments that reused a pruned segment's file (recycling is exercised).
    segments_reused: u64,
}

type Shared = Rc<RefCell<History>>;

fn record(history: &Shared, writes: &[(String, Option<Bytes>)], acked_lsn: Option<u64>) {
    let mut history = history.borrow_mut();
    for (key, value) in writes {
        history.attempts.push(Attempt {
            key: key.clone(),
            value: value.clone(),
            acked_lsn,
        });
    }
}

fn tagged(tag: &str, len: usize) -> Bytes {
    let mut bytes = tag.as_bytes().to_vec();
    bytes.resize(len.max(tag.len()), b'.');
    Bytes::from(bytes)
}

/// One writer's ops. Stops at its first error (the disk is gone or the shard poisoned).
async fn writer(
    partition: Rc<Partition<SimDisk>>,
    history: Shared,
    writer: usize,
) -> Result<(), EngineError> {
    let mut snapshots = Vec::new();
    for op in 0..OPS_PER_WRITER {
        let tag = format!("w{writer}-op{op}");
        let key = format!("key-{}", (writer * 5 + op) % PLAIN_KEYS);
        match op % 5 {
            0 => {
                let value = tagged(&tag, 16);
                let writes = [(key.clone(), Some(value.clone()))];
                record(&history, &writes, None);
                let lsn = partition.put("c", Bytes::from(key), value).await?;
                record(&history, &writes, Some(lsn));
            }
            1 => {
                // A delete by compare-and-set, so that its LSN is known.
                let Some(current) = partition.get("c", key.as_bytes()).await? else {
                    continue;
                };
                let writes = [(key.clone(), None)];
                record(&history, &writes, None);
                if let Ok(lsn) = partition
                    .compare_and_set("c", Bytes::from(key), current.revision, None)
                    .await?
                {
                    record(&history, &writes, Some(lsn));
                }
            }
            2 => {
                let value = tagged(&tag, 24);
                let writes: Vec<(String, Option<Bytes>)> = BATCH_KEYS
                    .iter()
                    .map(|key| (key.to_string(), Some(value.clone())))
                    .collect();
                let batch: Vec<BatchWrite> = BATCH_KEYS
                    .iter()
                    .map(|key| BatchWrite::Put {
                        collection: "c".into(),
                        key: Bytes::from(*key),
                        value: value.clone(),
                    })
                    .collect();
                record(&history, &writes, None);
                let lsn = partition.batch(&batch).await?;
                record(&history, &writes, Some(lsn));
            }
            3 => {
                let cas_key = format!("cas-{}", writer % 2);
                let expected = partition
                    .get("c", cas_key.as_bytes())
                    .await?
                    .map_or(0, |found| found.revision);
                let value = tagged(&tag, 8);
                let writes = [(cas_key.clone(), Some(value.clone()))];
                record(&history, &writes, None);
                if let Ok(lsn) = partition
                    .compare_and_set("c", Bytes::from(cas_key), expected, Some(value))
                    .await?
                {
                    record(&history, &writes, Some(lsn));
                }
            }
            _ => {
                let big_key = format!("big-{writer}");
                let value = tagged(&tag, BIG_VALUE_BYTES);
                let writes = [(big_key.clone(), Some(value.clone()))];
                record(&history, &writes, None);
                let lsn = partition.put("c", Bytes::from(big_key), value).await?;
                record(&history, &writes, Some(lsn));
            }
        }
        if writer == 0 && (op == 7 || op == 18) {
            // In a task of its own, so that it runs while other writers' records are staged
            // and not yet durable.
            let partition = partition.clone();
            snapshots.push(rt::spawn_local(async move { partition.snapshot().await }));
        }
    }
    for snapshot in snapshots {
        snapshot.await?;
    }
    Ok(())
}

/// Runs the workload on `disk` until it ends or the disk loses power.
async fn workload(disk: &SimDisk) -> History {
    let history: Shared = Rc::default();
    let Ok(partition) = open(disk, config()).await else {
        return History::default();
    };
    if partition.create_collection("c").await.is_err() {
        return History::default();
    }
    history.borrow_mut().collection_acked = true;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|index| rt::spawn_local(writer(partition.clone(), history.clone(), index)))
        .collect();
    for task in tasks {
        let _outcome_is_in_the_history = task.await;
    }
    history.borrow_mut().segments_reused = partition.stats().segments_reused;
    let _ = partition.close().await;
    Rc::try_unwrap(history)
        .ok()
        .expect("tasks are done")
        .into_inner()
}

fn universe() -> Vec<String> {
    let mut keys: Vec<String> = (0..PLAIN_KEYS)
        .map(|index| format!("key-{index}"))
        .collect();
    keys.extend(BATCH_KEYS.iter().map(|key| key.to_string()));
    keys.extend((0..2).map(|index| format!("cas-{index}")));
    keys.extend((0..WRITERS).map(|index| format!("big-{index}")));
    keys
}

type State = BTreeMap<String, Option<(Bytes, u64)>>;

async fn read_state(
    partition: &Partition<SimDisk>,
    history: &History,
    what: &str,
) -> Option<State> {
    let mut state = State::new();
    for key in universe() {
        match partition.get("c", key.as_bytes()).await {
            Ok(found) => {
                state.insert(key, found.map(|found| (found.value, found.revision)));
            }
            Err(EngineError::NoSuchCollection(_)) => {
                assert!(
                    !history.collection_acked,
                    "{what}: the acknowledged collection is gone"
                );
                return None;
            }
            Err(error) => panic!("{what}: get {key}: {error}"),
        }
    }
    Some(state)
}

fn check_state(state: &State, history: &History, durable_lsn: u64, what: &str) {
    let short = |value: &Bytes| String::from_utf8_lossy(&value[..value.len().min(16)]).into_owned();
    for (key, found) in state {
        let attempts: Vec<&Attempt> = history
            .attempts
            .iter()
            .filter(|attempt| &attempt.key == key)
            .collect();
        // The last acknowledged write (each write is recorded once attempted, once acked).
        let latest_acked = attempts
            .iter()
            .filter_map(|attempt| attempt.acked_lsn.map(|lsn| (lsn, attempt)))
            .max_by_key(|(lsn, _)| *lsn);
        match found {
            Some((value, revision)) => {
                assert!(
                    *revision <= durable_lsn,
                    "{what}: {key} has revision {revision} past the durable LSN {durable_lsn}"
                );
                let origin: Vec<&&Attempt> = attempts
                    .iter()
                    .filter(|attempt| attempt.value.as_ref() == Some(value))
                    .collect();
                assert!(
                    !origin.is_empty(),
                    "{what}: {key} holds {:?}, never written to it",
                    short(value)
                );
                if let Some(acked) = origin.iter().find_map(|attempt| attempt.acked_lsn) {
                    assert_eq!(
                        *revision,
                        acked,
                        "{what}: {key} = {:?} at the wrong revision",
                        short(value)
                    );
                }
                if let Some((lsn, _)) = latest_acked {
                    assert!(*revision >= lsn, "{what}: {key} lost its write acknowledged at LSN {lsn} (found revision {revision})");
                }
            }
            None => {
                if let Some((lsn, acked)) = latest_acked {
                    let unknown_delete = attempts
                        .iter()
                        .any(|attempt| attempt.value.is_none() && attempt.acked_lsn.is_none());
                    assert!(
                        acked.value.is_none() || unknown_delete,
                        "{what}: {key} is absent but its write at LSN {lsn} was acknowledged"
                    );
                }
            }
        }
    }
    let batch: Vec<&Option<(Bytes, u64)>> = BATCH_KEYS.iter().map(|key| &state[*key]).collect();
    assert!(
        batch.windows(2).all(|pair| pair[0] == pair[1]),
        "{what}: a batch was applied in part: {batch:?}"
    );
}

/// Recovers from `disk`, checks, writes once more, restarts cleanly and checks again.
async fn recover_and_check(disk: &SimDisk, history: &History, what: &str) {
    let partition = Partition::open(common::PARTITION, disk.clone(), config(), shard())
        .await
        .unwrap_or_else(|error| panic!("{what}: recovery failed: {error}"));
    let Some(state) = read_state(&partition, history, what).await else {
        return;
    };
    check_state(&state, history, partition.durable_lsn(), what);
    let after = partition
        .put("c", Bytes::from("after"), Bytes::from("restart"))
        .await
        .unwrap();
    assert!(
        state
            .values()
            .flatten()
            .all(|(_, revision)| *revision < after),
        "{what}: LSN {after} reused"
    );
    partition.close().await.unwrap();
    drop(partition);
    let partition = open(disk, config())
        .await
        .unwrap_or_else(|error| panic!("{what}: second recovery: {error}"));
    let again = read_state(&partition, history, what)
        .await
        .expect("collection");
    assert_eq!(again, state, "{what}: state changed across a clean restart");
    assert_eq!(
        partition
            .get("c", b"after")
            .await
            .unwrap()
            .map(|found| found.revision),
        Some(after)
    );
    partition.close().await.unwrap();
}

#[test]
fn no_acknowledged_write_is_lost_at_any_sync() {
    let seed = common::seed("sim_crash");
    rt::run_local(|| async move {
        let clean = SimDisk::new();
        let history = workload(&clean).await;
        let syncs = clean.syncs();
        let acked = history
            .attempts
            .iter()
            .filter(|attempt| attempt.acked_lsn.is_some())
            .count();
        println!("clean run: {syncs} syncs, {acked} acknowledged key writes");
        assert!(syncs > 20, "the workload must sync many times");
        let segments = common::segment_names(&clean);
        let last_base =
            coregrid_engine::segment::parse_segment_name(segments.last().expect("a segment"));
        assert!(
            last_base > Some(1),
            "the workload must roll segments: {segments:?}"
        );
        assert!(
            clean
                .list()
                .unwrap()
                .iter()
                .any(|name| name.ends_with(".snap")),
            "the workload must leave a snapshot"
        );
        assert!(
            history.segments_reused > 0,
            "the workload must reuse a pruned segment's file"
        );
        common::check_every_crash(
            &clean,
            history,
            syncs,
            syncs - 2,
            seed,
            |disk| async move { workload(&disk).await },
            |disk, history, what| async move { recover_and_check(&disk, &history, &what).await },
        )
        .await;
    });
}
