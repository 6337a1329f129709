//! The in-memory index on 100,000 keys: get of a present key, put over a present key, and
//! delete of a present key (re-inserted outside the timed part).

use bytes::Bytes;
use coregrid_engine::index::{Entry, Index};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::time::{Duration, Instant};

const KEYS: u64 = 100_000;
const COLLECTION: &str = "bench";

fn key(n: u64) -> Bytes {
    Bytes::from(format!("k{n:015}"))
}

fn entry(revision: u64) -> Entry {
    Entry {
        value: Bytes::from_static(&[0x5a; 100]).into(),
        revision,
        hlc: revision << 12,
    }
}

fn filled() -> (Index, Vec<Bytes>) {
    let mut index = Index::default();
    index.create_collection(COLLECTION);
    let keys: Vec<Bytes> = (0..KEYS).map(key).collect();
    for (revision, key) in keys.iter().enumerate() {
        index.put(COLLECTION, key.clone(), entry(revision as u64 + 1), false);
    }
    (index, keys)
}

/// A fixed pseudo-random walk over the keys, so that lookups do not stream through memory.
fn order() -> Vec<usize> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..KEYS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % KEYS) as usize
        })
        .collect()
}

fn index(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("index_100k");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    let (mut index, keys) = filled();
    let order = order();
    group.bench_function("get", |bencher| {
        let mut at = 0;
        bencher.iter(|| {
            at = (at + 1) % order.len();
            black_box(index.get(COLLECTION, &keys[order[at]]).expect("present"));
        });
    });
    group.bench_function("put_overwrite", |bencher| {
        let mut at = 0;
        bencher.iter(|| {
            at = (at + 1) % order.len();
            index.put(COLLECTION, keys[order[at]].clone(), entry(at as u64), false);
        });
    });
    group.bench_function("delete", |bencher| {
        bencher.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                // Delete up to all keys, timed; put them back, untimed.
                let round = (iters - done).min(KEYS) as usize;
                let begun = Instant::now();
                for key in &keys[..round] {
                    black_box(index.delete(COLLECTION, key));
                }
                timed += begun.elapsed();
                for (at, key) in keys[..round].iter().enumerate() {
                    index.put(COLLECTION, key.clone(), entry(at as u64), false);
                }
                done += round as u64;
            }
            timed
        });
    });
    group.finish();
}

criterion_group!(benches, index);
criterion_main!(benches);
