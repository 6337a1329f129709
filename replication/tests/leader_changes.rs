//! Proves that pull replication with leader-epoch truncation keeps promises 2 and 4 of
//! design.md section 5 through any sequence of writes, partial syncs, leader changes and power
//! cuts, on real partitions over simulated disks:
//! - a write acknowledged at `Quorum` (a majority of the replica set, leader included, held
//!   it durably, counted by its leader's `Progress`) is in every later leader's log, at its
//!   LSN, with its value;
//! - any two replicas' logs hold the same records up to the point their epoch histories say
//!   they diverge (log matching), so a follower's truncation never cuts a record the leader
//!   has;
//! - a deposed leader's unreplicated tail is cut when it syncs with the new leader, and after a
//!   final round of syncs every replica holds exactly the leader's log and state.
//!
//! Leaders change as design.md section 6a says: a majority of the replicas is asked, and the
//! one whose last record is the most recent (epoch, then LSN) leads the next epoch, beginning
//! it with an `EpochStart` record. Between changes the leader takes writes and random
//! followers sync in chunks of random size; random replicas lose power (unsynced sectors torn
//! or lost) and recover from their disk.
//!
//! Each seed is printed; `COREGRID_SEED` replays one, `COREGRID_SEEDS` sets how many run.

use bytes::Bytes;
use coregrid_engine::constants::SEGMENT_BYTES_MIN;
use coregrid_engine::hlc::{Hlc, SystemTime};
use coregrid_engine::partition::{PartitionConfig, ShardState};
use coregrid_engine::record::{Operation, RecordRef};
use coregrid_engine::rt;
use coregrid_engine::sim::{CrashMode, SimDisk};
use coregrid_engine::Partition;
use coregrid_replication::follower::{apply_answer, sync_position, Applied};
use coregrid_replication::history::divergence;
use coregrid_replication::leader::{serve_sync, SyncAnswer, SyncCursor, SyncRequest};
use coregrid_replication::progress::{follower_acks_needed, Progress};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

const STEPS: usize = 260;
const KEYS: u32 = 12;
const SEEDS_DEFAULT: u64 = 40;
const PARTITION: u32 = 3;

fn config() -> PartitionConfig {
    PartitionConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        snapshot_wal_bytes: 0,
        commit_batch_fill_limit: None,
    }
}

async fn open(disk: &SimDisk) -> Rc<Partition<SimDisk>> {
    let shard = Rc::new(ShardState::new(0, Hlc::new(Arc::new(SystemTime))));
    Partition::open(PARTITION, disk.clone(), config(), shard)
        .await
        .expect("a replica recovers from its disk")
}

struct Replica {
    disk: SimDisk,
    partition: Rc<Partition<SimDisk>>,
    /// The leader's cursor for this follower's session.
    cursor: SyncCursor,
}

/// A write the leader made: `(lsn, key, value)`.
type Write = (u64, u32, Vec<u8>);

struct Cluster {
    rng: StdRng,
    replicas: Vec<Replica>,
    /// `None` after the leader lost power, until the next leader change.
    leader: Option<usize>,
    epoch: u64,
    progress: Progress,
    /// The current leader's writes not yet acknowledged at `Quorum`.
    pending: Vec<Write>,
    /// Writes acknowledged at `Quorum`.
    committed: Vec<Write>,
    writes: u64,
    truncations: u64,
    power_cuts: u64,
    leader_changes: u64,
}

impl Cluster {
    fn quorum_acks(&self) -> usize {
        follower_acks_needed(true, self.replicas.len())
    }

    async fn write(&mut self) {
        let Some(leader) = self.leader else { return };
        let key = self.rng.gen_range(0..KEYS);
        self.writes += 1;
        let value = format!("e{}-w{}", self.epoch, self.writes).into_bytes();
        let lsn = self.replicas[leader]
            .partition
            .put(
                "c",
                Bytes::from(key.to_le_bytes().to_vec()),
                Bytes::from(value.clone()),
            )
            .await
            .expect("the leader takes writes");
        self.pending.push((lsn, key, value));
    }

    async fn sync(&mut self, follower: usize) -> Applied {
        let leader = self.leader.expect("a leader");
        assert_ne!(follower, leader);
        let request = SyncRequest {
            last: sync_position(&self.replicas[follower].partition),
            max_bytes: if self.rng.gen_bool(0.5) {
                self.rng.gen_range(1..2048)
            } else {
                1 << 20
            },
        };
        let leader_partition = self.replicas[leader].partition.clone();
        let answer = serve_sync(
            &leader_partition,
            &request,
            &mut self.replicas[follower].cursor,
            Duration::ZERO,
        )
        .await
        .expect("the leader answers");
        if let SyncAnswer::Records { .. } = answer {
            // The follower's last record is on the leader's log: its LSN is an ack.
            self.progress.note_ack(follower as u64, request.last.lsn);
            let acked = self.progress.acked_by(self.quorum_acks());
            let (done, waiting): (Vec<Write>, Vec<Write>) = self
                .pending
                .drain(..)
                .partition(|(lsn, _, _)| *lsn <= acked);
            self.committed.extend(done);
            self.pending = waiting;
        }
        let applied = apply_answer(&self.replicas[follower].partition, answer)
            .await
            .expect("a follower applies what its leader sends");
        if let Applied::Truncated(_) = applied {
            self.truncations += 1;
        }
        assert_ne!(applied, Applied::NeedsSnapshot, "no snapshots are taken");
        applied
    }

    /// Design.md section 6a: a majority answers with its last records; the most recent one
    /// leads the next epoch. The old leader's unacknowledged writes have an unknown outcome.
    async fn change_leader(&mut self) {
        let mut asked: Vec<usize> = (0..self.replicas.len()).collect();
        asked.shuffle(&mut self.rng);
        asked.truncate(self.replicas.len() / 2 + 1);
        let chosen = *asked
            .iter()
            .max_by_key(|&&index| (sync_position(&self.replicas[index].partition), index))
            .expect("a majority");
        self.epoch += 1;
        self.replicas[chosen]
            .partition
            .begin_epoch(self.epoch)
            .await
            .expect("the new leader begins its epoch");
        self.leader = Some(chosen);
        self.progress = Progress::new(
            (0..self.replicas.len())
                .filter(|&index| index != chosen)
                .map(|index| index as u64),
            0,
        );
        self.pending.clear();
        for replica in &mut self.replicas {
            replica.cursor = SyncCursor::default();
        }
        self.leader_changes += 1;
    }

    async fn power_cut(&mut self, index: usize) {
        let mode = match self.rng.gen_range(0..3) {
            0 => CrashMode::LoseUnsynced,
            1 => CrashMode::KeepUnsynced,
            _ => CrashMode::Torn(self.rng.gen()),
        };
        let disk = self.replicas[index].disk.crash(mode);
        self.replicas[index].partition = open(&disk).await;
        self.replicas[index].disk = disk;
        self.replicas[index].cursor = SyncCursor::default();
        if self.leader == Some(index) {
            self.leader = None;
            self.pending.clear();
        }
        self.power_cuts += 1;
    }

    /// Every write acknowledged at `Quorum` is on the leader, at its LSN, with its value.
    async fn check(&mut self, what: &str) {
        let Some(leader) = self.leader else { return };
        let leader = &self.replicas[leader].partition;
        for (lsn, key, value) in &self.committed {
            let record = record_at(leader, *lsn).await.unwrap_or_else(|| {
                panic!("{what}: the leader's log lost LSN {lsn}, acknowledged at Quorum")
            });
            let operation = RecordRef::validate(&record)
                .and_then(|record| record.operation().map(|operation| format!("{operation:?}")))
                .unwrap();
            let expected = Operation::Put {
                collection: "c",
                key: &key.to_le_bytes(),
                value,
            };
            assert_eq!(
                operation,
                format!("{expected:?}"),
                "{what}: LSN {lsn} on the leader is not the write acknowledged at Quorum"
            );
        }
    }
}

/// The raw record at `lsn`, if the log holds it.
async fn record_at(partition: &Partition<SimDisk>, lsn: u64) -> Option<Vec<u8>> {
    if lsn > partition.durable_lsn() {
        return None;
    }
    let position = partition.position_of(lsn).await.unwrap()?;
    let chunk = partition.read_raw(position, 1).await.unwrap();
    assert_eq!(chunk.first_lsn, lsn);
    let len = RecordRef::validate(&chunk.bytes).unwrap().len();
    Some(chunk.bytes[..len].to_vec())
}

/// `(epoch, kind, body)` of every record of the log, in LSN order from 1.
async fn log_records(partition: &Partition<SimDisk>) -> Vec<(u64, u8, Vec<u8>)> {
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
            assert_eq!(record.header.lsn(), out.len() as u64 + 1, "dense LSNs");
            out.push((
                record.header.meta().epoch,
                record.header.kind() as u8,
                record.body.to_vec(),
            ));
            used += record.len();
        }
        position = chunk.next;
    }
}

async fn check_log_matching(cluster: &Cluster, what: &str) {
    let mut logs = Vec::new();
    for replica in &cluster.replicas {
        let partition = &replica.partition;
        logs.push((
            partition.epoch_history(),
            partition.durable_lsn(),
            log_records(partition).await,
        ));
    }
    for a in 0..logs.len() {
        for b in a + 1..logs.len() {
            let (history_a, end_a, records_a) = &logs[a];
            let (history_b, end_b, records_b) = &logs[b];
            let common = divergence(history_a, *end_a, history_b, *end_b) as usize;
            assert_eq!(
                records_a[..common],
                records_b[..common],
                "{what}: replicas {a} and {b} differ before LSN {common}, where their epoch \
                 histories say they diverge"
            );
            if common < records_a.len() && common < records_b.len() {
                assert_ne!(
                    records_a[common].0, records_b[common].0,
                    "{what}: replicas {a} and {b} agree past their divergence point {common}"
                );
            }
        }
    }
}

async fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let count = if rng.gen_bool(0.5) { 3 } else { 5 };
    let mut replicas = Vec::new();
    for _ in 0..count {
        let disk = SimDisk::new();
        let partition = open(&disk).await;
        partition.create_collection("c").await.unwrap();
        replicas.push(Replica {
            disk,
            partition,
            cursor: SyncCursor::default(),
        });
    }
    // Every replica begins with the same collection record at LSN 1, in epoch 0, as a cluster
    // whose partitions are created on every node does.
    let mut cluster = Cluster {
        rng,
        replicas,
        leader: None,
        epoch: 0,
        progress: Progress::default(),
        pending: Vec::new(),
        committed: Vec::new(),
        writes: 0,
        truncations: 0,
        power_cuts: 0,
        leader_changes: 0,
    };
    cluster.change_leader().await;
    for step in 0..STEPS {
        let what = format!("seed {seed}, step {step}");
        let roll = cluster.rng.gen_range(0..100);
        match (roll, cluster.leader) {
            (_, None) | (0..=5, _) => {
                cluster.change_leader().await;
                check_log_matching(&cluster, &what).await;
            }
            (6..=8, _) => {
                let index = cluster.rng.gen_range(0..count);
                cluster.power_cut(index).await;
            }
            (9..=50, Some(_)) => {
                for _ in 0..cluster.rng.gen_range(1..4) {
                    cluster.write().await;
                }
            }
            (_, Some(leader)) => {
                let mut follower = cluster.rng.gen_range(0..count - 1);
                if follower >= leader {
                    follower += 1;
                }
                cluster.sync(follower).await;
            }
        }
        cluster.check(&what).await;
    }

    // Heal: every follower syncs until it has everything; then all logs are the leader's.
    if cluster.leader.is_none() {
        cluster.change_leader().await;
    }
    let leader = cluster.leader.unwrap();
    for follower in (0..count).filter(|&index| index != leader) {
        let mut rounds = 0;
        while cluster.sync(follower).await != Applied::UpToDate {
            rounds += 1;
            assert!(
                rounds < 10_000,
                "seed {seed}: follower {follower} never caught up"
            );
        }
        // One more round acknowledges the last records.
        cluster.sync(follower).await;
    }
    let what = format!("seed {seed}, healed");
    cluster.check(&what).await;
    check_log_matching(&cluster, &what).await;
    let leader_log = log_records(&cluster.replicas[leader].partition).await;
    for (index, replica) in cluster.replicas.iter().enumerate() {
        assert_eq!(
            log_records(&replica.partition).await,
            leader_log,
            "{what}: replica {index}"
        );
        for key in 0..KEYS {
            assert_eq!(
                replica
                    .partition
                    .get("c", &key.to_le_bytes())
                    .await
                    .unwrap(),
                cluster.replicas[leader]
                    .partition
                    .get("c", &key.to_le_bytes())
                    .await
                    .unwrap(),
                "{what}: replica {index}, key {key}"
            );
        }
    }
    assert!(
        cluster.pending.is_empty(),
        "{what}: every write of the last leader is acknowledged once all followers hold it"
    );
    println!(
        "seed {seed}: {count} replicas, {} writes, {} acknowledged at Quorum, {} leader \
         changes, {} truncations, {} power cuts",
        cluster.writes,
        cluster.committed.len(),
        cluster.leader_changes,
        cluster.truncations,
        cluster.power_cuts
    );
}

#[test]
fn quorum_writes_survive_leader_changes_and_power_cuts() {
    let seeds: Vec<u64> = match std::env::var("COREGRID_SEED") {
        Ok(seed) => vec![seed.parse().expect("COREGRID_SEED is a u64")],
        Err(_) => {
            let count = std::env::var("COREGRID_SEEDS")
                .ok()
                .and_then(|count| count.parse().ok())
                .unwrap_or(SEEDS_DEFAULT);
            let first: u64 = rand::random();
            (0..count)
                .map(|offset| first.wrapping_add(offset))
                .collect()
        }
    };
    for seed in seeds {
        println!("seed {seed} (replay with COREGRID_SEED={seed})");
        rt::run_local(move || run(seed));
    }
}
