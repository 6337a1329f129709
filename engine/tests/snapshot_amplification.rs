//! Proves that snapshots cost at most about one byte per byte of WAL, however large the live
//! state is next to the configured trigger: with 8 MiB of live values and a snapshot trigger
//! of 1 MiB, a fixed trigger would rewrite the whole state after every 1 MiB of WAL (8 bytes of
//! snapshot per byte of WAL); the trigger grows to the last snapshot's size instead.

mod common;

use bytes::Bytes;
use coregrid_engine::constants::SNAPSHOT_WAL_TO_SNAPSHOT_RATIO;
use coregrid_engine::partition::PartitionConfig;
use coregrid_engine::rt;
use coregrid_engine::sim::SimDisk;

const KEYS: usize = 128;
const VALUE_BYTES: usize = 64 * 1024;
const OVERWRITES: usize = 8;

#[test]
fn snapshots_write_at_most_about_one_byte_per_wal_byte() {
    rt::run_local(|| async {
        let disk = SimDisk::new();
        let config = PartitionConfig {
            segment_bytes: 64 * 1024 * 1024,
            snapshot_wal_bytes: 1024 * 1024,
            commit_batch_fill_limit: None,
        };
        let partition = common::open(&disk, config).await.unwrap();
        partition.create_collection("c").await.unwrap();
        for round in 0..OVERWRITES {
            for key in 0..KEYS {
                let value = Bytes::from(vec![(round + key) as u8; VALUE_BYTES]);
                partition
                    .put("c", Bytes::from(format!("key-{key}")), value)
                    .await
                    .unwrap();
            }
        }
        // Let a snapshot that was started finish.
        while partition.stats().snapshots == 0 {
            coregrid_engine::sim::yield_now().await;
        }
        let stats = partition.stats();
        let live = (KEYS * VALUE_BYTES) as u64;
        let wal = (KEYS * VALUE_BYTES * OVERWRITES) as u64;
        println!(
            "{} snapshots of up to {live} bytes for {wal} bytes of WAL",
            stats.snapshots
        );
        // Each snapshot waits for WAL of its predecessor's size. While the state grows from
        // nothing in round 0, the first ones come at the trigger and then at doubling sizes
        // (1, 2, 4 MiB): log2(8 MiB / 1 MiB) = 3 of them, plus one in flight at the end.
        let allowed = wal / (live * SNAPSHOT_WAL_TO_SNAPSHOT_RATIO) + 3 + 2;
        assert!(
            stats.snapshots <= allowed,
            "{} snapshots of the whole state for {wal} bytes of WAL (at most {allowed} expected)",
            stats.snapshots
        );
        partition.close().await.unwrap();
    });
}
