//! A partition whose leadership is being handed over refuses every kind of write
//! (`Partition::refuse_writes`), collection changes included, and changes nothing: the
//! handoff's guarantee that the target holds every record the old leader ever acknowledged
//! rests on it. Reads go on, and writes are taken again once the refusal is lifted.

mod common;

use common::{config, open, value};
use coregrid_engine::rt;
use coregrid_engine::sim::SimDisk;
use coregrid_engine::{BatchWrite, EngineError};

#[test]
fn a_partition_handing_over_refuses_every_write_and_changes_nothing() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let partition = open(&disk, config(0)).await.unwrap();
        partition.create_collection("c").await.unwrap();
        partition
            .put("c", "k".into(), value("before"))
            .await
            .unwrap();
        let end = partition.durable_lsn();

        partition.refuse_writes(Some("handing over to node 2".into()));
        let refused = |result: Result<(), EngineError>, what: &str| match result {
            Err(EngineError::WritesRefused(reason)) => {
                assert!(reason.contains("node 2"), "{what}: {reason}")
            }
            other => panic!("{what}: {other:?}"),
        };
        refused(
            partition
                .put("c", "k".into(), value("during"))
                .await
                .map(drop),
            "put",
        );
        refused(partition.delete("c", b"k").await.map(drop), "delete");
        refused(
            partition
                .compare_and_set("c", "k".into(), 1, None)
                .await
                .map(drop),
            "compare-and-set",
        );
        refused(
            partition
                .batch(&[BatchWrite::Put {
                    collection: "c".into(),
                    key: "b".into(),
                    value: value("during"),
                }])
                .await
                .map(drop),
            "batch",
        );
        refused(partition.create_collection("d").await.map(drop), "create");
        refused(partition.drop_collection("c").await.map(drop), "drop");
        assert_eq!(partition.durable_lsn(), end, "nothing was written");
        assert_eq!(partition.staged_lsn(), end, "nothing was staged");
        let found = partition
            .get("c", b"k")
            .await
            .unwrap()
            .expect("still there");
        assert_eq!(found.value, value("before"), "reads go on");

        partition.refuse_writes(None);
        partition
            .put("c", "k".into(), value("after"))
            .await
            .unwrap();
        let found = partition.get("c", b"k").await.unwrap().expect("written");
        assert_eq!(found.value, value("after"));
        partition.close().await.unwrap();
    });
}
