//! Proves that the WAL's positional reads (`position_of`, `read_raw`), which replication serves
//! from, work on the real disk (O_DIRECT files through io_uring), not only on the simulated
//! one: a partition's records written through the engine come back whole and in LSN order,
//! from the first to the last durable one, while the partition stays open.

use coregrid_engine::record::RecordRef;
use coregrid_engine::{Engine, EngineConfig};

#[test]
fn raw_reads_return_every_durable_record_on_the_real_disk() {
    let root = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(root.path());
    config.shards = 1;
    config.partitions = 1;
    config.pin_shards = false;
    let engine = Engine::open(config).unwrap();
    let lsns = futures::executor::block_on(async {
        engine.create_collection("c").await.unwrap();
        for index in 0..300u32 {
            engine
                .put("c", format!("key-{index}"), "v".repeat(index as usize * 7))
                .await
                .unwrap();
        }
        engine
            .run_on_shard(0, |local| async move {
                let partition = local.partition(0).unwrap().clone();
                let mut position = partition.position_of(1).await?.expect("LSN 1 is held");
                let mut lsns = Vec::new();
                loop {
                    let chunk = partition.read_raw(position, 4096).await?;
                    if chunk.bytes.is_empty() {
                        break;
                    }
                    let mut used = 0;
                    while used < chunk.bytes.len() {
                        let record = RecordRef::validate(&chunk.bytes[used..]).unwrap();
                        lsns.push(record.header.lsn());
                        used += record.len();
                    }
                    position = chunk.next;
                }
                // A seek to a record in the middle finds it too.
                let middle = partition.position_of(150).await?.expect("LSN 150 is held");
                let chunk = partition.read_raw(middle, 1).await?;
                assert_eq!(chunk.first_lsn, 150);
                Ok::<_, coregrid_engine::EngineError>((lsns, partition.durable_lsn()))
            })
            .await
            .unwrap()
            .unwrap()
    });
    let (lsns, durable) = lsns;
    assert_eq!(lsns, (1..=durable).collect::<Vec<_>>());
    assert_eq!(durable, 301);
    engine.shutdown();
}
