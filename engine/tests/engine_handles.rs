//! Proves how the engine stops when handles to it are held in several places:
//! - `Engine::shutdown` stops every shard and waits for their threads even while other handles
//!   live (a server's tasks hold clones); those handles then get `ShuttingDown`, and the data
//!   directory is free to open again;
//! - the last handle dropped by a task running on a shard (the node's error path: its server
//!   tasks outlive the main thread's handle) stops the engine without the shard trying to wait
//!   for its own thread, which panicked with "failed to join thread: Resource deadlock avoided".

use coregrid_engine::{rt, Engine, EngineConfig, EngineError};
use std::path::Path;
use std::time::Duration;

/// How long a shard may take to hand back a signal or stop (normally milliseconds); only a
/// bound for a hang.
const WAIT_MAX: Duration = Duration::from_secs(30);

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shards = 2;
    config.partitions = 4;
    config.pin_shards = false;
    config.lock_wait = WAIT_MAX;
    config
}

fn write_keys(engine: &Engine) {
    futures::executor::block_on(async {
        engine.create_collection("c").await.unwrap();
        for index in 0..20u32 {
            engine
                .put("c", format!("key-{index}"), format!("value-{index}"))
                .await
                .unwrap();
        }
    });
}

fn assert_keys(dir: &Path) {
    let engine = Engine::open(config(dir)).expect("the data directory opens again");
    futures::executor::block_on(async {
        for index in 0..20u32 {
            let found = engine.get("c", format!("key-{index}")).await.unwrap();
            assert_eq!(
                found.map(|found| found.value),
                Some(format!("value-{index}").into_bytes().into()),
                "key-{index}"
            );
        }
    });
    engine.shutdown();
}

#[test]
fn shutdown_stops_every_shard_while_other_handles_live() {
    let root = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(root.path())).unwrap();
    write_keys(&engine);
    let other = engine.clone();
    engine.shutdown();
    let after = futures::executor::block_on(other.get("c", "key-1"));
    assert!(
        matches!(after, Err(EngineError::ShuttingDown)),
        "a handle used after shutdown got {after:?}"
    );
    drop(other);
    assert_keys(root.path());
}

#[test]
fn the_last_handle_dropped_on_a_shard_stops_the_engine() {
    let root = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(root.path())).unwrap();
    write_keys(&engine);
    let (release, released) = flume::bounded::<()>(1);
    let (dropped, dropped_answer) = std::sync::mpsc::channel::<()>();
    let held = engine.clone();
    futures::executor::block_on(engine.run_on_shard(0, move |_local| {
        rt::spawn_detached(async move {
            let _ = released.recv_async().await;
            // The main thread's handle is gone: this drop is the last and runs on shard 0.
            drop(held);
            let _ = dropped.send(());
        });
        async {}
    }))
    .unwrap();
    drop(engine);
    release.send(()).unwrap();
    dropped_answer
        .recv_timeout(WAIT_MAX)
        .expect("the last handle's drop on shard 0 returned (it panicked or hung before)");
    // The shard stops on its own once it runs the shutdown queued to it; opening waits for the
    // directory's lock.
    assert_keys(root.path());
}
