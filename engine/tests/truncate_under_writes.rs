//! Proves that writes arriving while `truncate_after` rewrites the log neither panic nor slip in
//! between: they wait, then land after the cut with the next LSNs, and the cut tail never comes
//! back (in memory or after a reopen).

mod common;

use bytes::Bytes;
use coregrid_engine::rt;

#[test]
fn writes_during_a_truncation_wait_and_land_after_the_cut() {
    rt::run_local(|| async {
        let disk = coregrid_engine::sim::SimDisk::new();
        let partition = common::open(&disk, common::config(0)).await.unwrap();
        partition.create_collection("c").await.unwrap();
        let mut last = 0;
        for index in 0..50u32 {
            last = partition
                .put("c", Bytes::from(format!("old-{index}")), Bytes::from("v"))
                .await
                .unwrap();
        }
        let cut = last - 20; // drops old-30..old-49
                             // Writers start first and keep going while the truncation runs.
        let writers: Vec<_> = (0..8u32)
            .map(|writer| {
                let partition = partition.clone();
                rt::spawn_local(async move {
                    let mut revisions = Vec::new();
                    for index in 0..10u32 {
                        let key = Bytes::from(format!("new-{writer}-{index}"));
                        revisions.push(partition.put("c", key, Bytes::from("n")).await.unwrap());
                    }
                    revisions
                })
            })
            .collect();
        let truncating = partition.clone();
        let truncation = rt::spawn_local(async move { truncating.truncate_after(cut).await });
        let mut revisions: Vec<u64> = Vec::new();
        for writer in writers {
            revisions.extend(writer.await);
        }
        truncation.await.unwrap();
        // Writes staged before the pause are durable and were cut if above `cut`; writes after it
        // continue from `cut + 1`. Either way every acknowledged write that survived is readable
        // and no cut key reappears.
        let check = |partition: std::rc::Rc<coregrid_engine::Partition<_>>| async move {
            for index in 30..50u32 {
                let key = format!("old-{index}");
                assert_eq!(
                    partition.get("c", key.as_bytes()).await.unwrap(),
                    None,
                    "{key} came back"
                );
            }
            let mut found = 0;
            for writer in 0..8u32 {
                for index in 0..10u32 {
                    let key = format!("new-{writer}-{index}");
                    if let Some(value) = partition.get("c", key.as_bytes()).await.unwrap() {
                        assert!(value.revision > cut);
                        found += 1;
                    }
                }
            }
            found
        };
        let found_live = check(partition.clone()).await;
        // Some writes (those staged before the pause) may have been cut with the tail; those that
        // waited for the pause all landed after it.
        assert!(found_live > 0, "no write landed after the truncation");
        assert!(revisions.iter().all(|revision| *revision > 0));
        partition.close().await.unwrap();
        let reopened = common::open(&disk, common::config(0)).await.unwrap();
        assert_eq!(
            check(reopened.clone()).await,
            found_live,
            "state changed across reopen"
        );
        assert_eq!(
            reopened.durable_lsn(),
            partition.durable_lsn(),
            "the log's end changed across reopen"
        );
    });
}

/// A truncation that cuts off a delete must not leave reads of absent keys waiting for that
/// delete's LSN to become durable again (it is reused by later writes, maybe never): they answer
/// at once from durable state.
#[test]
fn absent_keys_answer_at_once_after_a_removal_was_cut() {
    use futures::FutureExt;
    rt::run_local(|| async {
        let disk = coregrid_engine::sim::SimDisk::new();
        let partition = common::open(&disk, common::config(0)).await.unwrap();
        partition.create_collection("c").await.unwrap();
        let kept = partition
            .put("c", Bytes::from("kept"), Bytes::from("v"))
            .await
            .unwrap();
        partition
            .put("c", Bytes::from("gone"), Bytes::from("v"))
            .await
            .unwrap();
        partition
            .delete("c", b"gone")
            .await
            .unwrap()
            .expect("was there");
        partition.truncate_after(kept).await.unwrap();
        // Nothing is staged or in flight: every answer is already durable, so one poll is enough.
        let absent = partition.get("c", b"never-written").now_or_never();
        assert!(
            matches!(absent, Some(Ok(None))),
            "a read of an absent key waits on a removal that was cut off"
        );
        let deleted = partition.delete("c", b"never-written").now_or_never();
        assert!(matches!(deleted, Some(Ok(None))), "a no-op delete waits");
    });
}

/// A snapshot and a truncation started together never interleave: the truncation either runs
/// after the snapshot (and is refused if the snapshot now covers the cut) or before it, and a
/// cut tail never comes back from a snapshot after a reopen. Several interleavings are tried by
/// letting the snapshot run a few steps before the truncation starts.
#[test]
fn a_snapshot_racing_a_truncation_never_revives_the_cut_tail() {
    for head_start in 0..6u32 {
        rt::run_local(|| async move {
            let disk = coregrid_engine::sim::SimDisk::new();
            let partition = common::open(&disk, common::config(0)).await.unwrap();
            partition.create_collection("c").await.unwrap();
            let mut cut = 0;
            for index in 0..40u32 {
                let revision = partition
                    .put("c", Bytes::from(format!("k-{index}")), Bytes::from("v"))
                    .await
                    .unwrap();
                if index == 19 {
                    cut = revision;
                }
            }
            let snapshotting = partition.clone();
            let snapshot = rt::spawn_local(async move { snapshotting.snapshot().await });
            for _ in 0..head_start {
                coregrid_engine::sim::yield_now().await;
            }
            let truncated = partition.truncate_after(cut).await;
            snapshot.await.unwrap();
            let expect_cut = match truncated {
                Ok(()) => true,
                Err(coregrid_engine::EngineError::TruncateBelowSnapshot { .. }) => false,
                Err(other) => panic!("head start {head_start}: {other}"),
            };
            partition.close().await.unwrap();
            let reopened = common::open(&disk, common::config(0)).await.unwrap();
            for index in 20..40u32 {
                let found = reopened
                    .get("c", format!("k-{index}").as_bytes())
                    .await
                    .unwrap();
                assert_eq!(
                    found.is_none(),
                    expect_cut,
                    "head start {head_start}: k-{index} after a truncation that {}",
                    if expect_cut {
                        "succeeded"
                    } else {
                        "was refused"
                    }
                );
            }
        });
    }
}
