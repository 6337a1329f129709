//! Proves that answers which wait for durability (creating a collection that exists, reads of
//! staged state) do so while other writes are staged and flushed, without holding the WAL
//! borrowed across the wait (which would panic the writer task) and with the right answer.

mod common;

use bytes::Bytes;
use common::{open, value};
use coregrid_engine::rt;
use coregrid_engine::sim::SimDisk;
use coregrid_engine::EngineError;

#[test]
fn waiting_answers_run_alongside_writes() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let partition = open(&disk, common::config(0)).await.unwrap();
        partition.create_collection("c").await.unwrap();
        for round in 0..20u64 {
            // Puts staged first, then answers that must wait for them.
            let puts: Vec<_> = (0..3)
                .map(|index| {
                    let partition = partition.clone();
                    rt::spawn_local(async move {
                        partition
                            .put(
                                "c",
                                Bytes::from(format!("k{index}")),
                                value(&format!("r{round}")),
                            )
                            .await
                    })
                })
                .collect();
            let exists = rt::spawn_local({
                let partition = partition.clone();
                async move { partition.create_collection("c").await }
            });
            let read = rt::spawn_local({
                let partition = partition.clone();
                async move { partition.get("c", b"k0").await }
            });
            for put in puts {
                put.await.unwrap();
            }
            assert!(matches!(
                exists.await,
                Err(EngineError::CollectionExists(_))
            ));
            let found = read.await.unwrap().expect("k0 was staged before the read");
            assert_eq!(found.value, value(&format!("r{round}")));
            assert!(
                found.revision <= partition.durable_lsn(),
                "a read answered with undurable state"
            );
        }
        partition.close().await.unwrap();
    });
}
