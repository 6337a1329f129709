//! Proves the leader's long poll (`serve_sync` with a wait): a follower that has every durable
//! record gets the next one as soon as it is durable, without asking again; with nothing
//! written, the poll ends empty at its deadline; and a follower whose last record is not on
//! the leader's log gets `Diverged` even after waiting, never records it could not append.
//! No test here asserts on time: the deadline is long and the write is what ends the wait.

use bytes::Bytes;
use coregrid_engine::constants::SEGMENT_BYTES_MIN;
use coregrid_engine::hlc::{Hlc, SystemTime};
use coregrid_engine::partition::{PartitionConfig, ShardState};
use coregrid_engine::rt;
use coregrid_engine::sim::SimDisk;
use coregrid_engine::Partition;
use coregrid_replication::follower::sync_position;
use coregrid_replication::history::LogEnd;
use coregrid_replication::leader::{serve_sync, SyncAnswer, SyncCursor, SyncRequest};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

async fn leader() -> Rc<Partition<SimDisk>> {
    let shard = Rc::new(ShardState::new(0, Hlc::new(Arc::new(SystemTime))));
    let config = PartitionConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        snapshot_wal_bytes: 0,
        commit_batch_fill_limit: None,
    };
    let partition = Partition::open(1, SimDisk::new(), config, shard)
        .await
        .unwrap();
    partition.begin_epoch(2).await.unwrap();
    partition.create_collection("c").await.unwrap();
    partition
}

#[test]
fn a_waiting_follower_gets_the_next_record_once_it_is_durable() {
    rt::run_local(|| async {
        let leader = leader().await;
        let caught_up = sync_position(&leader);
        let request = SyncRequest {
            last: caught_up,
            max_bytes: 1 << 20,
        };
        let polling = {
            let leader = leader.clone();
            rt::spawn_local(async move {
                let mut cursor = SyncCursor::default();
                // Far longer than the test takes: only the write can end it.
                serve_sync(&leader, &request, &mut cursor, Duration::from_secs(600)).await
            })
        };
        for _ in 0..3 {
            coregrid_engine::sim::yield_now().await;
        }
        let lsn = leader
            .put("c", Bytes::from_static(b"k"), Bytes::from_static(b"v"))
            .await
            .unwrap();
        match polling.await.unwrap() {
            SyncAnswer::Records {
                records, last_lsn, ..
            } => {
                assert_eq!(last_lsn, lsn);
                assert!(!records.is_empty());
            }
            other => panic!("expected the new record, got {other:?}"),
        }
    });
}

#[test]
fn a_poll_with_nothing_new_ends_empty_at_its_deadline() {
    rt::run_local(|| async {
        let leader = leader().await;
        let request = SyncRequest {
            last: sync_position(&leader),
            max_bytes: 1 << 20,
        };
        let answer = serve_sync(
            &leader,
            &request,
            &mut SyncCursor::default(),
            Duration::from_millis(20),
        )
        .await
        .unwrap();
        assert_eq!(
            answer,
            SyncAnswer::Records {
                records: Vec::new(),
                last_lsn: leader.durable_lsn(),
                leader_end: sync_position(&leader),
            }
        );
        // Many abandoned polls of the same LSN leave the partition working: a write after
        // them is durable and served.
        for _ in 0..50 {
            serve_sync(
                &leader,
                &request,
                &mut SyncCursor::default(),
                Duration::from_millis(1),
            )
            .await
            .unwrap();
        }
        leader
            .put("c", Bytes::from_static(b"k"), Bytes::from_static(b"v"))
            .await
            .unwrap();
        let answer = serve_sync(
            &leader,
            &request,
            &mut SyncCursor::default(),
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert!(matches!(answer, SyncAnswer::Records { records, .. } if !records.is_empty()));
    });
}

#[test]
fn a_diverged_follower_gets_the_history_not_records() {
    rt::run_local(|| async {
        let leader = leader().await;
        // A last record of an epoch the leader's log does not have at that LSN.
        let request = SyncRequest {
            last: LogEnd {
                epoch: 1,
                lsn: leader.durable_lsn(),
            },
            max_bytes: 1 << 20,
        };
        let answer = serve_sync(
            &leader,
            &request,
            &mut SyncCursor::default(),
            Duration::from_millis(5),
        )
        .await
        .unwrap();
        assert_eq!(
            answer,
            SyncAnswer::Diverged {
                history: leader.epoch_history(),
                end_lsn: leader.durable_lsn(),
            }
        );
        // A follower claiming a record past the leader's end diverged too.
        let ahead = SyncRequest {
            last: LogEnd {
                epoch: 2,
                lsn: leader.durable_lsn() + 5,
            },
            max_bytes: 1 << 20,
        };
        assert!(matches!(
            serve_sync(&leader, &ahead, &mut SyncCursor::default(), Duration::ZERO)
                .await
                .unwrap(),
            SyncAnswer::Diverged { .. }
        ));
    });
}
