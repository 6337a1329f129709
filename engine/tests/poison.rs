//! Proves that a failed WAL write or sync is never retried (style.md rule 9, the "fsyncgate"
//! lesson): the write whose flush failed gets an error, every later write gets
//! `EngineError::Poisoned` with the first failure's reason without touching the disk again (no
//! write, no sync), reads of durable state keep working, and a restart from the disk finds
//! every write acknowledged before the failure. The simulated failed sync drops the dirty
//! data as Linux does, so a retried sync would have acknowledged writes that are not on disk.

mod common;

use bytes::Bytes;
use common::{open, value};
use coregrid_engine::rt;
use coregrid_engine::sim::{CrashMode, SimDisk};
use coregrid_engine::{BatchWrite, EngineError, Partition};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Clone, Copy, Debug)]
enum Failure {
    WritesAfter(u64),
    SyncsAfter(u64),
}

const WRITERS: usize = 3;
const PUTS_PER_WRITER: usize = 20;

fn assert_poisoned(result: Result<impl std::fmt::Debug, EngineError>, reason: &str, what: &str) {
    match result {
        Err(EngineError::Poisoned { reason: found, .. }) => {
            assert_eq!(found, reason, "{what}: a different reason")
        }
        other => panic!("{what}: expected Poisoned, got {other:?}"),
    }
}

/// Runs concurrent writers until the injected failure poisons the shard; returns the
/// acknowledged `(key, value)`s.
async fn run(disk: &SimDisk, failure: Failure) -> Vec<(String, Bytes)> {
    match failure {
        Failure::WritesAfter(n) => disk.fail_writes_after(n),
        Failure::SyncsAfter(n) => disk.fail_syncs_after(n),
    }
    let what = format!("{failure:?}");
    let partition = open(disk, common::config(0)).await.unwrap();
    let acked: Rc<RefCell<Vec<(String, Bytes)>>> = Rc::default();
    let first_errors: Rc<RefCell<Vec<EngineError>>> = Rc::default();
    match partition.create_collection("c").await {
        Ok(_) => {
            let tasks: Vec<_> = (0..WRITERS)
                .map(|writer| {
                    let (partition, acked, first_errors) =
                        (partition.clone(), acked.clone(), first_errors.clone());
                    rt::spawn_local(async move {
                        for index in 0..PUTS_PER_WRITER {
                            let key = format!("w{writer}-{index}");
                            let value = value(&format!("value of {key}"));
                            match partition
                                .put("c", Bytes::from(key.clone()), value.clone())
                                .await
                            {
                                Ok(_) => acked.borrow_mut().push((key, value)),
                                Err(error) => {
                                    first_errors.borrow_mut().push(error);
                                    return;
                                }
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        }
        Err(error) => first_errors.borrow_mut().push(error),
    }
    let errors = std::mem::take(&mut *first_errors.borrow_mut());
    assert!(!errors.is_empty(), "{what}: the failure was never hit");
    // The writes in flight at the failure get the waiter's error: Poisoned with the reason.
    let mut reason = None;
    for error in errors {
        match error {
            EngineError::Poisoned { reason: found, .. } => {
                assert!(
                    found.contains("WAL write or sync failed"),
                    "{what}: reason {found:?}"
                );
                assert!(
                    reason.as_ref().is_none_or(|reason| *reason == found),
                    "{what}: reasons differ"
                );
                reason = Some(found);
            }
            other => panic!("{what}: a failed write must report Poisoned, got {other}"),
        }
    }
    let reason = reason.expect("a reason");
    // Nothing touches the disk any more: no write, no sync, whatever is asked.
    let (writes, syncs) = (disk.writes(), disk.syncs());
    poisoned_calls(&partition, &reason, &what).await;
    assert_eq!(
        (disk.writes(), disk.syncs()),
        (writes, syncs),
        "{what}: the disk was touched after the failure"
    );
    // Durable state is still readable.
    let acked = Rc::try_unwrap(acked)
        .expect("writers are done")
        .into_inner();
    for (key, value) in &acked {
        let found = partition.get("c", key.as_bytes()).await.unwrap();
        assert_eq!(
            found.map(|found| found.value),
            Some(value.clone()),
            "{what}: {key} before restart"
        );
    }
    let _ = partition.close().await;
    acked
}

async fn poisoned_calls(partition: &Partition<SimDisk>, reason: &str, what: &str) {
    for attempt in 0..3 {
        let what = format!("{what}, call {attempt} after the failure");
        assert_poisoned(
            partition.put("c", Bytes::from("late"), value("late")).await,
            reason,
            &what,
        );
        assert_poisoned(
            partition
                .compare_and_set("c", Bytes::from("late"), 0, Some(value("late")))
                .await,
            reason,
            &what,
        );
        let batch = [BatchWrite::Put {
            collection: "c".into(),
            key: Bytes::from("late"),
            value: value("late"),
        }];
        assert_poisoned(partition.batch(&batch).await, reason, &what);
        assert_poisoned(partition.create_collection("late").await, reason, &what);
        assert_poisoned(partition.begin_epoch(1000 + attempt).await, reason, &what);
    }
}

async fn check_restart(disk: &SimDisk, acked: &[(String, Bytes)], what: &str) {
    for mode in [CrashMode::LoseUnsynced, CrashMode::KeepUnsynced] {
        let recovered = disk.crash(mode);
        let partition = open(&recovered, common::config(0)).await.unwrap();
        for (key, value) in acked {
            let found = partition
                .get("c", key.as_bytes())
                .await
                .unwrap_or_else(|error| panic!("{what}: {error}"));
            assert_eq!(
                found.map(|found| found.value),
                Some(value.clone()),
                "{what}, {mode:?}: {key} lost"
            );
        }
        assert_eq!(
            partition.get("c", b"late").await.ok().flatten(),
            None,
            "{what}: a refused write appeared"
        );
        // The restarted partition takes writes again.
        if partition.create_collection("c").await.is_ok() {
            assert!(
                acked.is_empty(),
                "{what}: collection c was acknowledged but is gone"
            );
        }
        partition
            .put("c", Bytes::from("after"), value("after"))
            .await
            .unwrap();
        partition.close().await.unwrap();
    }
}

/// Runs the workload with failures after 0..12 operations of one kind, and checks each disk.
fn fail_after_each_count(failure_after: fn(u64) -> Failure) {
    rt::run_local(|| async {
        let mut acked_somewhere = false;
        for n in 0..12 {
            let disk = SimDisk::new();
            let failure = failure_after(n);
            let acked = run(&disk, failure).await;
            acked_somewhere |= !acked.is_empty();
            check_restart(&disk, &acked, &format!("{failure:?}")).await;
        }
        assert!(
            acked_somewhere,
            "some writes must be acknowledged before the failure"
        );
    });
}

#[test]
fn a_failed_write_poisons_and_is_never_retried() {
    fail_after_each_count(Failure::WritesAfter);
}

#[test]
fn a_failed_sync_poisons_and_is_never_retried() {
    fail_after_each_count(Failure::SyncsAfter);
}
