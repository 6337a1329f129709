//! The record append path, without a real disk:
//! - `wal_stage`: `Wal::stage` encoding a 100-byte put into the staging buffer (the work done
//!   synchronously on every write before it waits for its group commit);
//! - `partition_put`: a whole `Partition::put` on the simulated disk (validate, stage, index
//!   update, group-commit flush into memory, wake-up), one at a time and 256 in flight.
//!
//! Everything runs on a glommio executor made with `rt::run_local` inside `iter_custom`, so
//! only the operations are timed, not executor or partition setup.

use bytes::Bytes;
use coregrid_engine::hlc::{Hlc, SystemTime};
use coregrid_engine::partition::{PartitionConfig, ShardState};
use coregrid_engine::record::Operation;
use coregrid_engine::sim::SimDisk;
use coregrid_engine::wal::{self, StageError, Wal, WalShard};
use coregrid_engine::{rt, Partition};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Small segments keep the simulated disk's memory low.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
const VALUE_BYTES: usize = 100;
const IN_FLIGHT: usize = 256;

fn key(n: u64) -> [u8; 16] {
    let mut key = *b"k000000000000000";
    key[1..].copy_from_slice(format!("{:015}", n % 100_000).as_bytes());
    key
}

fn stage(iters: u64) -> Duration {
    rt::run_local(|| async move {
        let disk = SimDisk::new();
        let wal = Wal::open(
            disk,
            0,
            SEGMENT_BYTES,
            WalShard::default(),
            0,
            Vec::new(),
            |_| {},
        )
        .await
        .expect("open WAL");
        let wal = RefCell::new(wal);
        let value = [0x5a_u8; VALUE_BYTES];
        let mut timed = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let begun = Instant::now();
            while done < iters {
                let key = key(done);
                let operation = Operation::Put {
                    collection: "bench",
                    key: &key,
                    value: &value,
                };
                match wal.borrow_mut().stage(1, done + 1, None, &operation) {
                    Ok(_) => done += 1,
                    Err(StageError::Full) => break,
                }
            }
            timed += begun.elapsed();
            // Staging area full: flush to the simulated disk, untimed.
            wal::flush(&wal).await.expect("flush");
        }
        timed
    })
}

fn partition_put(iters: u64, in_flight: usize) -> Duration {
    rt::run_local(|| async move {
        let shard = Rc::new(ShardState::new(0, Hlc::new(Arc::new(SystemTime))));
        let config = PartitionConfig {
            segment_bytes: SEGMENT_BYTES,
            snapshot_wal_bytes: 0,
            commit_batch_fill_limit: None,
        };
        let partition = Partition::open(0, SimDisk::new(), config, shard)
            .await
            .expect("open partition");
        partition
            .create_collection("bench")
            .await
            .expect("create collection");
        let value = Bytes::from(vec![0x5a_u8; VALUE_BYTES]);
        let remaining = Rc::new(std::cell::Cell::new(iters));
        let begun = Instant::now();
        let tasks: Vec<_> = (0..in_flight)
            .map(|task| {
                let (partition, value, remaining) =
                    (partition.clone(), value.clone(), remaining.clone());
                rt::spawn_local(async move {
                    let mut n = task as u64;
                    while remaining.get() > 0 {
                        remaining.set(remaining.get() - 1);
                        n += in_flight as u64;
                        let key = Bytes::copy_from_slice(&key(n));
                        partition
                            .put("bench", key, value.clone())
                            .await
                            .expect("put");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let timed = begun.elapsed();
        partition.close().await.expect("close");
        timed
    })
}

fn append(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("append");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .throughput(Throughput::Elements(1));
    group.bench_function("wal_stage_100b", |bencher| bencher.iter_custom(stage));
    group.bench_function("partition_put_100b_sim_1_in_flight", |bencher| {
        bencher.iter_custom(|iters| partition_put(iters, 1))
    });
    group.bench_function("partition_put_100b_sim_256_in_flight", |bencher| {
        bencher.iter_custom(|iters| partition_put(iters, IN_FLIGHT))
    });
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
