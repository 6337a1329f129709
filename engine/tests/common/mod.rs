//! Helpers shared by the engine's integration tests: seeds, partitions on a simulated disk,
//! a yield point for interleaving tasks, and hand-built segment images.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers; `expect` would fire \
              in the binaries that do use them"
)]

use bytes::Bytes;
use coregrid_engine::constants::{SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES};
use coregrid_engine::hlc::{Hlc, SystemTime};
use coregrid_engine::io::Storage;
use coregrid_engine::partition::{PartitionConfig, ShardState};
use coregrid_engine::record::RecordRef;
use coregrid_engine::segment::parse_segment_name;
use coregrid_engine::sim::{CrashMode, SimDisk};
use coregrid_engine::{Partition, Result};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

/// The partition id every single-partition test uses.
pub const PARTITION: u32 = 7;

/// The seed of a randomized test: `COREGRID_SEED` if set (to replay a failure), else a fresh
/// one. Printed either way, so every failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("COREGRID_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("COREGRID_SEED={text:?} is not a u64")),
        Err(_) => rand::random(),
    };
    println!("{test}: seed {seed} (replay with COREGRID_SEED={seed})");
    seed
}

/// A fresh healthy shard with the system clock.
pub fn shard() -> Rc<ShardState> {
    Rc::new(ShardState::new(0, Hlc::new(Arc::new(SystemTime))))
}

/// Smallest legal segments (so rolls come early) and the given snapshot trigger.
pub fn config(snapshot_wal_bytes: u64) -> PartitionConfig {
    PartitionConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        snapshot_wal_bytes,
        commit_batch_fill_limit: None,
    }
}

/// Opens the test partition on `disk` with a fresh shard.
pub async fn open(disk: &SimDisk, config: PartitionConfig) -> Result<Rc<Partition<SimDisk>>> {
    Partition::open(PARTITION, disk.clone(), config, shard()).await
}

/// Names of the segment files on `disk`, oldest first.
pub fn segment_names(disk: &SimDisk) -> Vec<String> {
    let mut names: Vec<(u64, String)> = disk
        .list()
        .expect("list")
        .into_iter()
        .filter_map(|name| parse_segment_name(&name).map(|base| (base, name)))
        .collect();
    names.sort();
    names.into_iter().map(|(_, name)| name).collect()
}

/// `(offset, lsn, len)` of every valid record of a segment image, from the first until the
/// first position that does not validate.
pub fn record_spans(image: &[u8]) -> Vec<(usize, u64, usize)> {
    let mut spans = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while let Ok(record) = RecordRef::validate(&image[offset..]) {
        spans.push((offset, record.header.lsn(), record.len()));
        offset += record.len();
    }
    spans
}

/// A value that says which write made it.
pub fn value(tag: &str) -> Bytes {
    Bytes::from(tag.to_string())
}

/// The ways every crash point is recovered: unsynced sectors lost, kept, and kept by a coin
/// flip each under two seeds derived from `seed`.
pub fn crash_modes(seed: u64) -> [CrashMode; 4] {
    [
        CrashMode::LoseUnsynced,
        CrashMode::KeepUnsynced,
        CrashMode::Torn(seed),
        CrashMode::Torn(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1)),
    ]
}

/// The whole crash check of a workload: `check` first gets the clean run's disk after a power
/// cut (unsynced sectors lost), then every crashed disk of [`crash_at_every_sync`]; the crash
/// points reached must be at least `covered_min` of the clean run's `syncs`.
pub async fn check_every_crash<R, W, C>(
    clean: &SimDisk,
    clean_run: R,
    syncs: u64,
    covered_min: u64,
    seed: u64,
    workload: impl Fn(SimDisk) -> W,
    check: impl Fn(SimDisk, Rc<R>, String) -> C,
) where
    W: Future<Output = R>,
    C: Future<Output = ()>,
{
    check(
        clean.crash(CrashMode::LoseUnsynced),
        Rc::new(clean_run),
        "clean run".to_string(),
    )
    .await;
    let crash_at = crash_at_every_sync(syncs, seed, workload, check).await;
    assert!(
        crash_at >= covered_min,
        "only {crash_at} of ~{syncs} sync points were reached"
    );
}

/// Runs `workload` on fresh disks that lose power at sync 1, 2, ... and hands each crashed
/// disk, under every one of [`crash_modes`], to `check` with the run's outcome and a
/// description. Scheduling is not fully deterministic (time slices, automatic snapshots), so
/// the sync count may differ by a few from the clean run's `syncs`: it goes on until a run
/// ends without reaching its crash point, which means every sync point of that run was
/// covered. Returns that last crash point.
pub async fn crash_at_every_sync<R, W, C>(
    syncs: u64,
    seed: u64,
    workload: impl Fn(SimDisk) -> W,
    check: impl Fn(SimDisk, Rc<R>, String) -> C,
) -> u64
where
    W: Future<Output = R>,
    C: Future<Output = ()>,
{
    let mut crash_at = 1;
    loop {
        let disk = SimDisk::new();
        disk.crash_at_sync(crash_at);
        let run = Rc::new(workload(disk.clone()).await);
        for mode in crash_modes(seed) {
            let what = format!("crash at sync {crash_at} (clean run: {syncs}), {mode:?}");
            check(disk.crash(mode), run.clone(), what).await;
        }
        if !disk.is_frozen() {
            return crash_at;
        }
        crash_at += 1;
        assert!(crash_at <= 2 * syncs, "the workload never ends");
    }
}
