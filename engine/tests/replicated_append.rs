//! Proves the follower's side of pull replication, `Partition::append_replicated` (design.md
//! section 6): a follower that copies its leader's raw WAL bytes (`read_raw`) chunk by chunk
//! - ends with the leader's state: every key's value, revision and HLC timestamp, the epoch
//!   history, the client requests applied (a retry sent to the follower after a failover is
//!   answered as a duplicate), across segment rolls and after a restart;
//! - holds the leader's records (LSN, epoch, HLC, kind, body) and can go on as leader;
//! - refuses, changing nothing, every chunk with a flipped byte, cut inside a record, with a
//!   gap in LSNs, an epoch going back, a snapshot's record or a body that does not decode
//!   under valid crcs;
//! - after a power cut at any sync point of the copy, recovers (never reporting corruption)
//!   to a prefix of the leader's log that holds every record `append_replicated` acknowledged.
//!   The leader wrote one record at a time, so its records claim every earlier LSN durable;
//!   a follower that kept that claim would report corruption after a torn write of a chunk.

mod common;

use bytes::Bytes;
use common::{open, seed};
use coregrid_engine::constants::RECORD_HEADER_BYTES;
use coregrid_engine::partition::PartitionConfig;
use coregrid_engine::record::{encode_record, Operation, OperationKind, RecordMeta, RecordRef};
use coregrid_engine::requests::RequestId;
use coregrid_engine::rt;
use coregrid_engine::sim::{CrashMode, SimDisk};
use coregrid_engine::{BatchWrite, EngineError, Partition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every 6th step's value is this large, so the leader's log rolls segments.
const BIG_VALUE_BYTES: usize = 1024 * 1024;
const KEYS: usize = 24;
const CLIENT: u64 = 77;

fn key(index: usize) -> Bytes {
    Bytes::from(format!("key-{index}"))
}

fn value(step: usize, rng: &mut StdRng) -> Bytes {
    let len = if step.is_multiple_of(6) {
        BIG_VALUE_BYTES
    } else {
        rng.gen_range(1..200)
    };
    let mut bytes = vec![(step % 251) as u8; len];
    bytes[0] = b'v';
    Bytes::from(bytes)
}

/// A leader's log of every record kind a log holds: collections created and dropped, puts
/// (some with request ids), deletes, compare-and-sets, batches, two epochs; one record at a
/// time, each durable before the next.
async fn write_leader(leader: &Partition<SimDisk>, rng: &mut StdRng) {
    leader.create_collection("c").await.unwrap();
    leader.create_collection("gone").await.unwrap();
    leader.begin_epoch(3).await.unwrap();
    leader.put("gone", key(0), value(1, rng)).await.unwrap();
    for step in 0..120 {
        if step == 60 {
            leader.begin_epoch(5).await.unwrap();
            leader.drop_collection("gone").await.unwrap();
        }
        let index = rng.gen_range(0..KEYS);
        match rng.gen_range(0..10) {
            0 => {
                leader.delete("c", &key(index)).await.unwrap();
            }
            1 => {
                let revision = leader
                    .get("c", &key(index))
                    .await
                    .unwrap()
                    .map_or(0, |found| found.revision);
                leader
                    .compare_and_set("c", key(index), revision, Some(value(step, rng)))
                    .await
                    .unwrap()
                    .unwrap();
            }
            2 => {
                let other = (index + 1) % KEYS;
                leader
                    .batch(&[
                        BatchWrite::Put {
                            collection: "c".into(),
                            key: key(index),
                            value: value(step, rng),
                        },
                        BatchWrite::Delete {
                            collection: "c".into(),
                            key: key(other),
                        },
                    ])
                    .await
                    .unwrap();
            }
            3 => {
                let request = RequestId {
                    client: CLIENT,
                    sequence: step as u64,
                };
                let outcome = leader
                    .put_with("c", key(index), value(step, rng), Some(request))
                    .await
                    .unwrap();
                assert!(!outcome.duplicate);
            }
            _ => {
                leader.put("c", key(index), value(step, rng)).await.unwrap();
            }
        }
    }
    // How many big values the steps above wrote depends on the seed (deletes write none):
    // top the log up so that it spans several segments whatever the seed (a seed once left
    // it at two).
    let mut step = 120;
    while leader.stats().segments < 3 {
        step += 6;
        let index = rng.gen_range(0..KEYS);
        leader.put("c", key(index), value(step, rng)).await.unwrap();
    }
}

/// Copies the leader's log into the follower from the follower's next LSN on: raw chunks
/// (`read_raw` hands out at least a record's maximum size, 4 MiB), each split at record
/// boundaries into pieces of 1 to 8 records for `append_replicated`. Notes the LSN each call
/// acknowledged, in order; stops at the first error.
async fn copy_log(
    leader: &Partition<SimDisk>,
    follower: &Partition<SimDisk>,
    rng: &mut StdRng,
    acknowledged: &mut Vec<u64>,
) -> Result<(), EngineError> {
    let Some(mut position) = leader.position_of(follower.durable_lsn() + 1).await? else {
        return Ok(());
    };
    loop {
        let chunk = leader.read_raw(position, 1 << 20).await?;
        if chunk.bytes.is_empty() {
            return Ok(());
        }
        let mut rest = &chunk.bytes[..];
        while !rest.is_empty() {
            let (mut len, mut last) = (0, 0);
            for _ in 0..rng.gen_range(1..=8) {
                let Ok(record) = RecordRef::validate(&rest[len..]) else {
                    break;
                };
                last = record.header.lsn();
                len += record.len();
            }
            let lsn = follower.append_replicated(&rest[..len]).await?;
            assert_eq!(lsn, last);
            acknowledged.push(lsn);
            rest = &rest[len..];
        }
        position = chunk.next;
    }
}

/// What a partition answers for every key the workload touches, in both collections.
async fn state(partition: &Partition<SimDisk>) -> Vec<String> {
    let mut answers = Vec::new();
    for collection in ["c", "gone"] {
        for index in 0..KEYS {
            let found = partition.get(collection, &key(index)).await;
            answers.push(format!("{collection}/{index}: {found:?}"));
        }
    }
    answers
}

/// `(lsn, epoch, hlc, kind, body)` of every record of the log, read raw.
async fn records(partition: &Partition<SimDisk>) -> Vec<(u64, u64, u64, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let Some(mut position) = partition.position_of(1).await.unwrap() else {
        return out;
    };
    loop {
        let chunk = partition.read_raw(position, 1 << 20).await.unwrap();
        if chunk.bytes.is_empty() {
            return out;
        }
        let mut used = 0;
        while used < chunk.bytes.len() {
            let record = RecordRef::validate(&chunk.bytes[used..]).unwrap();
            let meta = record.header.meta();
            out.push((
                meta.lsn,
                meta.epoch,
                meta.hlc,
                record.header.kind() as u8,
                record.body.to_vec(),
            ));
            used += record.len();
        }
        position = chunk.next;
    }
}

fn config() -> PartitionConfig {
    // No automatic snapshots: the leader keeps its whole log to hand out.
    common::config(0)
}

#[test]
fn a_follower_copies_the_leader_log_and_state() {
    let seed = seed("a_follower_copies_the_leader_log_and_state");
    rt::run_local(|| async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let leader_disk = SimDisk::new();
        let leader = open(&leader_disk, config()).await.unwrap();
        write_leader(&leader, &mut rng).await;
        assert!(
            leader.stats().segments >= 3,
            "the log must span several segments"
        );

        let follower_disk = SimDisk::new();
        let follower = open(&follower_disk, config()).await.unwrap();
        let mut acknowledged = Vec::new();
        copy_log(&leader, &follower, &mut rng, &mut acknowledged)
            .await
            .unwrap();
        assert_eq!(acknowledged.last(), Some(&leader.durable_lsn()));
        assert!(acknowledged.len() > 20, "many pieces");
        // Copying again finds nothing new.
        let mut again = Vec::new();
        copy_log(&leader, &follower, &mut rng, &mut again)
            .await
            .unwrap();
        assert!(again.is_empty());
        assert_eq!(follower.durable_lsn(), leader.durable_lsn());
        assert_eq!(follower.epoch(), 5);
        assert_eq!(follower.epoch_history(), leader.epoch_history());
        assert_eq!(state(&follower).await, state(&leader).await);
        assert_eq!(records(&follower).await, records(&leader).await);

        // After a restart, the same.
        follower.close().await.unwrap();
        drop(follower);
        let follower = open(&follower_disk, config()).await.unwrap();
        assert_eq!(follower.durable_lsn(), leader.durable_lsn());
        assert_eq!(follower.epoch_history(), leader.epoch_history());
        assert_eq!(state(&follower).await, state(&leader).await);

        // The follower takes over: a retry of a write the old leader applied is a duplicate,
        // and its own writes continue the log in its epoch.
        let mut retried = false;
        for sequence in 0..120 {
            let request = RequestId {
                client: CLIENT,
                sequence,
            };
            let on_leader = leader
                .put_with("c", key(0), Bytes::from_static(b"retry"), Some(request))
                .await
                .unwrap();
            if !on_leader.duplicate {
                continue; // not a sequence the workload used: it applied now on the old leader
            }
            let on_follower = follower
                .put_with("c", key(0), Bytes::from_static(b"retry"), Some(request))
                .await
                .unwrap();
            assert!(on_follower.duplicate, "request {sequence} applied twice");
            assert_eq!(on_follower.revision, on_leader.revision);
            retried = true;
        }
        assert!(retried, "the workload wrote with request ids");
        let next = follower.durable_lsn() + 1;
        assert_eq!(follower.begin_epoch(7).await.unwrap(), next);
        assert_eq!(
            follower
                .put("c", key(1), Bytes::from_static(b"new"))
                .await
                .unwrap(),
            next + 1
        );
        assert_eq!(follower.epoch_history().last(), Some(&(7, next)));
    });
}

/// A valid chunk of the first records of a fresh leader's log, and the record boundaries in it.
async fn small_chunk() -> (Vec<u8>, Vec<usize>) {
    let leader = open(&SimDisk::new(), config()).await.unwrap();
    leader.create_collection("c").await.unwrap();
    leader.begin_epoch(2).await.unwrap();
    leader
        .put("c", Bytes::from_static(b"k"), Bytes::from_static(b"v1"))
        .await
        .unwrap();
    leader.delete("c", b"k").await.unwrap();
    let position = leader.position_of(1).await.unwrap().unwrap();
    let chunk = leader.read_raw(position, 1 << 20).await.unwrap();
    let mut boundaries = vec![0];
    let mut used = 0;
    while used < chunk.bytes.len() {
        used += RecordRef::validate(&chunk.bytes[used..]).unwrap().len();
        boundaries.push(used);
    }
    assert_eq!(boundaries.len(), 5, "4 records");
    (chunk.bytes, boundaries)
}

/// Sets the body and both crcs of a record encoded by `encode_record` (header layout pinned by
/// the record format's golden-bytes tests: body length at 12, body crc at 16, header crc at 4
/// covering bytes 8 on).
fn reseal(mut record: Vec<u8>, body: &[u8]) -> Vec<u8> {
    record.truncate(RECORD_HEADER_BYTES);
    record.extend_from_slice(body);
    record[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
    record[16..20].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let crc = crc32c::crc32c(&record[8..RECORD_HEADER_BYTES]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    record
}

fn encoded(lsn: u64, epoch: u64, operation: &Operation<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let meta = RecordMeta {
        lsn,
        epoch,
        hlc: 1,
        durable_lsn: 0,
    };
    encode_record(&mut out, meta, operation);
    out
}

async fn assert_refused(follower: &Partition<SimDisk>, bytes: &[u8], what: &str) {
    match follower.append_replicated(bytes).await {
        Err(EngineError::InvalidReplication(reason)) => {
            assert!(reason.contains("partition"), "{what}: {reason}");
        }
        other => panic!("{what}: accepted or wrong error: {other:?}"),
    }
}

#[test]
fn bad_chunks_are_refused_and_change_nothing() {
    rt::run_local(|| async {
        let (chunk, boundaries) = small_chunk().await;
        let follower_disk = SimDisk::new();
        let follower = open(&follower_disk, config()).await.unwrap();
        let empty = state(&follower).await;
        let writes_before = follower_disk.writes();

        for at in 0..chunk.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = chunk.clone();
                bad[at] ^= bit;
                assert_refused(
                    &follower,
                    &bad,
                    &format!("bit {bit:#x} of byte {at} flipped"),
                )
                .await;
            }
        }
        for cut in 1..chunk.len() {
            if !boundaries.contains(&cut) {
                assert_refused(&follower, &chunk[..cut], &format!("cut at {cut}")).await;
            }
        }
        // Records 2.. without record 1: a gap.
        assert_refused(&follower, &chunk[boundaries[1]..], "gap").await;
        // A snapshot's record where a log record belongs.
        let snapshot_record = encoded(1, 0, &Operation::SnapshotEnd { records: 0 });
        assert_refused(&follower, &snapshot_record, "snapshot record").await;
        // Valid crcs around a body that does not decode (a put whose key length runs past
        // the body).
        let put = encoded(
            1,
            0,
            &Operation::Put {
                collection: "c",
                key: b"k",
                value: b"v",
            },
        );
        let mut body = put[RECORD_HEADER_BYTES..].to_vec();
        body.truncate(3);
        let undecodable = reseal(put, &body);
        assert!(RecordRef::validate(&undecodable).is_ok(), "crcs are valid");
        assert_eq!(
            RecordRef::validate(&undecodable).unwrap().header.kind(),
            OperationKind::Put
        );
        assert_refused(&follower, &undecodable, "undecodable body").await;
        // An epoch going back inside a chunk.
        let mut backwards = chunk[..boundaries[2]].to_vec(); // LSN 1 (epoch 0), 2 (epoch 2)
        backwards.extend(encoded(3, 1, &Operation::CreateCollection { name: "d" }));
        assert_refused(&follower, &backwards, "epoch going back").await;

        assert_eq!(follower.durable_lsn(), 0, "nothing was appended");
        assert_eq!(state(&follower).await, empty);
        assert_eq!(follower_disk.writes(), writes_before, "nothing was written");

        // The valid chunk is then taken whole, and after it an epoch going back is refused
        // across calls too.
        assert_eq!(follower.append_replicated(&chunk).await.unwrap(), 4);
        let behind = encoded(5, 1, &Operation::CreateCollection { name: "d" });
        assert_refused(&follower, &behind, "epoch below the log's").await;
        assert_eq!(follower.durable_lsn(), 4);
        assert_eq!(follower.epoch_history(), vec![(0, 1), (2, 2)]);
    });
}

#[test]
fn a_power_cut_during_the_copy_keeps_every_acknowledged_record() {
    let seed = seed("a_power_cut_during_the_copy_keeps_every_acknowledged_record");
    rt::run_local(|| async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let leader = open(&SimDisk::new(), config()).await.unwrap();
        write_leader(&leader, &mut rng).await;
        let leader_records = records(&leader).await;
        let leader_state = state(&leader).await;

        // A clean copy counts the follower's sync points.
        let chunk_seed: u64 = rng.gen();
        let clean = SimDisk::new();
        let follower = open(&clean, config()).await.unwrap();
        let syncs_at_open = clean.syncs();
        copy_log(
            &leader,
            &follower,
            &mut StdRng::seed_from_u64(chunk_seed),
            &mut Vec::new(),
        )
        .await
        .unwrap();
        let syncs = clean.syncs();
        assert!(syncs > syncs_at_open + 3, "the copy syncs several times");

        let mut checked = 0;
        for crash_at in syncs_at_open + 1..=syncs {
            let disk = SimDisk::new();
            let follower = open(&disk, config()).await.unwrap();
            disk.crash_at_sync(crash_at);
            // The copy ends at the crash with an error (the disk fails every operation).
            let mut chunks = StdRng::seed_from_u64(chunk_seed);
            let mut lsns = Vec::new();
            let _ = copy_log(&leader, &follower, &mut chunks, &mut lsns).await;
            let acknowledged = lsns.last().copied().unwrap_or(0);
            drop(follower);
            for mode in [
                CrashMode::LoseUnsynced,
                CrashMode::KeepUnsynced,
                CrashMode::Torn(seed ^ crash_at),
            ] {
                let what = format!("crash at sync {crash_at}, {mode:?}");
                let recovered = open(&disk.crash(mode), config())
                    .await
                    .unwrap_or_else(|error| panic!("{what}: recovery failed: {error}"));
                let durable = recovered.durable_lsn();
                assert!(
                    durable >= acknowledged,
                    "{what}: LSN {acknowledged} was acknowledged, the log ends at {durable}"
                );
                let copied = records(&recovered).await;
                assert_eq!(
                    copied[..],
                    leader_records[..copied.len()],
                    "{what}: not a prefix of the leader's log"
                );
                assert_eq!(copied.len() as u64, durable);
                // Copying on from where it ended reaches the leader's state.
                copy_log(&leader, &recovered, &mut rng, &mut Vec::new())
                    .await
                    .unwrap();
                assert_eq!(state(&recovered).await, leader_state, "{what}");
                checked += 1;
            }
        }
        println!("{checked} recoveries checked");
    });
}
