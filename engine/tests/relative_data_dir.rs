//! Proves that an engine opened on a relative data directory works: writes become durable
//! (segment creation syncs the directory) and are found after a reopen. glommio 0.9 fails to
//! open a relative directory, which once poisoned the shard at the first write.

use coregrid_engine::{Engine, EngineConfig};

#[test]
fn a_relative_data_dir_takes_durable_writes() {
    let root = tempfile::tempdir().unwrap();
    std::env::set_current_dir(root.path()).unwrap();
    let config = || {
        let mut config = EngineConfig::new("relative/data");
        config.shards = 1;
        config.partitions = 2;
        config.pin_shards = false;
        config
    };
    let engine = Engine::open(config()).unwrap();
    futures::executor::block_on(async {
        engine.create_collection("c").await.unwrap();
        engine.put("c", "key", "value").await.unwrap();
    });
    engine.shutdown();
    let engine = Engine::open(config()).unwrap();
    let found = futures::executor::block_on(engine.get("c", "key")).unwrap();
    assert_eq!(found.map(|found| found.value), Some("value".into()));
}
