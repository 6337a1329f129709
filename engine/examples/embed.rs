//! Embedding coregrid: open an engine, write and read from an ordinary thread, then run code
//! directly on a shard with no cross-thread hop.
//!
//! Run with `cargo run --release -p coregrid-engine --example embed`.

use bytes::Bytes;
use coregrid_engine::{Engine, EngineConfig};

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = EngineConfig::new(dir.path());
    config.shards = 1;
    config.partitions = 8;
    let engine = Engine::open(config)?;

    futures::executor::block_on(async {
        engine.create_collection("users").await?;
        let revision = engine.put("users", "alice", "engineer").await?;
        let found = engine.get("users", "alice").await?.expect("just written");
        println!("alice = {:?} at revision {}", found.value, found.revision);
        assert_eq!(found.revision, revision);

        // Compare-and-set on the revision we read.
        let swapped = engine
            .compare_and_set("users", "alice", revision, Some(Bytes::from("manager")))
            .await?;
        println!("cas: {swapped:?}");

        // In-shard API: no channel hop; partitions are called directly.
        let shard = engine.shard_of(engine.partition_of(b"bob"));
        let written = engine
            .run_on_shard(shard, |local| async move {
                let partition = local.partition_for_key(b"bob").expect("owned here").clone();
                partition
                    .put("users", Bytes::from("bob"), Bytes::from("designer"))
                    .await
            })
            .await??;
        println!("bob written in-shard at revision {written}");
        anyhow::Ok(())
    })?;
    engine.shutdown();
    Ok(())
}
