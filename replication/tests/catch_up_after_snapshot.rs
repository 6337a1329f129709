//! Proves that a leader's snapshots do not strand a follower that was away (design.md section
//! 6: "WAL segments are pruned only once every replica has acknowledged them and a snapshot
//! covers them"), within a bound:
//! - with the leader holding its WAL for the lowest LSN its followers acknowledged, a
//!   snapshot taken while a follower was away prunes only what the follower already has, and
//!   the follower, back, catches up from the log to the leader's exact state;
//! - a follower further behind than the hold's byte bound is let go: the snapshot prunes the
//!   oldest held segments, and the follower is told it needs a snapshot (bounded disk); it
//!   fetches the leader's snapshot in chunks, installs it, and catches up from the log after it
//!   to the leader's exact state, also when the leader replaces its snapshot mid-fetch;
//! - without a hold, a snapshot prunes everything it covers.

use bytes::Bytes;
use coregrid_engine::constants::SEGMENT_BYTES_MIN;
use coregrid_engine::hlc::{Hlc, SystemTime};
use coregrid_engine::partition::{PartitionConfig, ShardState};
use coregrid_engine::rt;
use coregrid_engine::sim::SimDisk;
use coregrid_engine::Partition;
use coregrid_replication::follower::{apply_answer, sync_position, Applied};
use coregrid_replication::leader::{serve_sync, SyncAnswer, SyncCursor, SyncRequest};
use coregrid_replication::progress::Progress;
use coregrid_replication::snapshot::{serve_snapshot, Fetched, SnapshotFetch};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

const FOLLOWER: u64 = 2;
/// ~8 of these fill a segment of `SEGMENT_BYTES_MIN`.
const VALUE_BYTES: usize = 1024 * 1024;

async fn open() -> Rc<Partition<SimDisk>> {
    let shard = Rc::new(ShardState::new(0, Hlc::new(Arc::new(SystemTime))));
    let config = PartitionConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        snapshot_wal_bytes: 0,
        commit_batch_fill_limit: None,
    };
    Partition::open(4, SimDisk::new(), config, shard)
        .await
        .unwrap()
}

async fn write(leader: &Partition<SimDisk>, from: u32, count: u32) {
    for index in from..from + count {
        leader
            .put(
                "c",
                Bytes::from(format!("key-{}", index % 50)),
                Bytes::from(vec![index as u8; VALUE_BYTES]),
            )
            .await
            .unwrap();
    }
}

/// Syncs until the follower is up to date or needs a snapshot; the leader notes each ack in
/// `progress` and holds its WAL for it (`bytes_max`, or no hold).
async fn sync_until_done(
    leader: &Partition<SimDisk>,
    follower: &Rc<Partition<SimDisk>>,
    progress: &mut Progress,
    hold_bytes: Option<u64>,
) -> Applied {
    let mut cursor = SyncCursor::default();
    loop {
        let request = SyncRequest {
            last: sync_position(follower),
            max_bytes: 4 << 20,
        };
        let answer = serve_sync(leader, &request, &mut cursor, Duration::ZERO)
            .await
            .unwrap();
        if let SyncAnswer::Records { .. } = answer {
            progress.note_ack(FOLLOWER, request.last.lsn);
            leader.hold_for_replicas(
                hold_bytes.map(|_| progress.acked_by_all()),
                hold_bytes.unwrap_or(0),
            );
        }
        match apply_answer(follower, answer).await.unwrap() {
            Applied::Appended(_) | Applied::Truncated(_) | Applied::Retry => {}
            done => return done,
        }
    }
}

async fn leader_and_follower(
    hold_bytes: Option<u64>,
) -> (Rc<Partition<SimDisk>>, Rc<Partition<SimDisk>>, Progress) {
    let leader = open().await;
    leader.begin_epoch(1).await.unwrap();
    leader.create_collection("c").await.unwrap();
    write(&leader, 0, 4).await;
    let follower = open().await;
    let mut progress = Progress::new([FOLLOWER], 0);
    assert_eq!(
        sync_until_done(&leader, &follower, &mut progress, hold_bytes).await,
        Applied::UpToDate
    );
    // The follower goes away; the leader writes ~5 segments and snapshots.
    write(&leader, 4, 40).await;
    assert!(leader.stats().segments >= 5, "{:?}", leader.stats());
    leader.snapshot().await.unwrap().expect("a snapshot");
    (leader, follower, progress)
}

async fn same_state(leader: &Partition<SimDisk>, follower: &Partition<SimDisk>) {
    assert_eq!(follower.durable_lsn(), leader.durable_lsn());
    for key in 0..50 {
        let key = format!("key-{key}");
        assert_eq!(
            follower.get("c", key.as_bytes()).await.unwrap(),
            leader.get("c", key.as_bytes()).await.unwrap(),
            "{key}"
        );
    }
}

#[test]
fn a_follower_away_during_a_snapshot_catches_up_from_the_held_log() {
    rt::run_local(|| async {
        let hold = Some(1 << 30);
        let (leader, follower, mut progress) = leader_and_follower(hold).await;
        let segments = leader.stats().segments;
        assert!(segments >= 5, "the held segments stay: {segments}");
        assert_eq!(
            sync_until_done(&leader, &follower, &mut progress, hold).await,
            Applied::UpToDate
        );
        same_state(&leader, &follower).await;
        // Once the follower has acknowledged everything, the next snapshot prunes.
        sync_until_done(&leader, &follower, &mut progress, hold).await;
        leader.snapshot().await.unwrap().expect("a snapshot");
        assert!(
            leader.stats().segments < segments,
            "nothing is held any more: {:?}",
            leader.stats()
        );
    });
}

#[test]
fn a_follower_behind_the_bound_is_let_go_and_needs_a_snapshot() {
    rt::run_local(|| async {
        // Room for one held segment: the follower is ~5 behind.
        let hold = Some(SEGMENT_BYTES_MIN);
        let (leader, follower, mut progress) = leader_and_follower(hold).await;
        assert!(
            leader.stats().segments <= 3,
            "one held segment and the active one (and at most one sealed after the snapshot): \
             {:?}",
            leader.stats()
        );
        assert_eq!(
            sync_until_done(&leader, &follower, &mut progress, hold).await,
            Applied::NeedsSnapshot
        );
    });
}

/// Fetches and installs the leader's snapshot, `chunk` bytes at a time; `between` runs after
/// each chunk (the leader may write and snapshot meanwhile). Returns the chunks fetched.
async fn fetch_snapshot(
    leader: &Rc<Partition<SimDisk>>,
    follower: &Rc<Partition<SimDisk>>,
    chunk: usize,
    mut between: impl AsyncFnMut(usize),
) -> usize {
    let mut fetch = SnapshotFetch::new(chunk);
    let mut chunks = 0;
    loop {
        let answer = serve_snapshot(leader, &fetch.next_request()).await.unwrap();
        chunks += 1;
        match fetch.apply(follower, answer).await.unwrap() {
            Fetched::More => between(chunks).await,
            Fetched::Installed(info) => {
                assert_eq!(follower.durable_lsn(), info.snapshot_lsn);
                return chunks;
            }
            Fetched::NoSnapshot => panic!("the leader has a snapshot"),
        }
    }
}

#[test]
fn a_follower_behind_the_bound_installs_the_snapshot_and_catches_up() {
    rt::run_local(|| async {
        let hold = Some(SEGMENT_BYTES_MIN);
        let (leader, follower, mut progress) = leader_and_follower(hold).await;
        assert_eq!(
            sync_until_done(&leader, &follower, &mut progress, hold).await,
            Applied::NeedsSnapshot
        );
        let chunks = fetch_snapshot(&leader, &follower, 3 << 20, async |_| {}).await;
        assert!(chunks > 3, "{chunks} chunks");
        assert_eq!(
            sync_until_done(&leader, &follower, &mut progress, hold).await,
            Applied::UpToDate
        );
        same_state(&leader, &follower).await;
    });
}

#[test]
fn a_snapshot_replaced_mid_fetch_starts_the_fetch_over() {
    rt::run_local(|| async {
        let hold = Some(SEGMENT_BYTES_MIN);
        let (leader, follower, mut progress) = leader_and_follower(hold).await;
        assert_eq!(
            sync_until_done(&leader, &follower, &mut progress, hold).await,
            Applied::NeedsSnapshot
        );
        let first = leader.newest_snapshot().unwrap().lsn;
        let writer = leader.clone();
        fetch_snapshot(&leader, &follower, 3 << 20, async move |chunk| {
            if chunk == 2 {
                write(&writer, 100, 12).await;
                writer.snapshot().await.unwrap().expect("a snapshot");
            }
        })
        .await;
        assert!(
            follower.durable_lsn() > first,
            "the newer snapshot was installed"
        );
        assert_eq!(
            sync_until_done(&leader, &follower, &mut progress, hold).await,
            Applied::UpToDate
        );
        same_state(&leader, &follower).await;
    });
}

#[test]
fn without_a_hold_a_snapshot_prunes_all_it_covers() {
    rt::run_local(|| async {
        let (leader, follower, mut progress) = leader_and_follower(None).await;
        assert!(leader.stats().segments <= 2, "{:?}", leader.stats());
        assert_eq!(
            sync_until_done(&leader, &follower, &mut progress, None).await,
            Applied::NeedsSnapshot
        );
    });
}
