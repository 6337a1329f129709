//! Record format hot path: encoding a put record (body copy, body crc32c, header crc32c) and
//! validating one (header checks and both crcs), for 100-byte and 4 KiB values.

use coregrid_engine::record::{encode_record, Operation, RecordMeta, RecordRef};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

const VALUE_SIZES_BYTES: [usize; 2] = [100, 4096];

fn meta(lsn: u64) -> RecordMeta {
    RecordMeta {
        lsn,
        epoch: 1,
        hlc: lsn << 12,
        durable_lsn: lsn.saturating_sub(1),
    }
}

fn record(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("record");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    let key = *b"k000000000012345";
    for value_bytes in VALUE_SIZES_BYTES {
        let value = vec![0x5a_u8; value_bytes];
        let operation = Operation::Put {
            collection: "bench",
            key: &key,
            value: &value,
        };
        let mut encoded = Vec::new();
        let len = encode_record(&mut encoded, meta(1), &operation);
        group.throughput(Throughput::Bytes(len as u64));
        let mut out = Vec::with_capacity(len);
        group.bench_with_input(
            BenchmarkId::new("encode", value_bytes),
            &operation,
            |bencher, operation| {
                let mut lsn = 0;
                bencher.iter(|| {
                    lsn += 1;
                    out.clear();
                    black_box(encode_record(&mut out, meta(lsn), black_box(operation)))
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("validate", value_bytes),
            &encoded,
            |bencher, encoded| {
                bencher.iter(|| {
                    let record = RecordRef::validate(black_box(encoded)).expect("valid record");
                    black_box(record.operation().expect("decodes"));
                });
            },
        );
    }
    group.finish();
}

/// The crc32c the engine uses (`engine::checksum`, crc-fast) next to the `crc32c` crate it
/// replaced, at a key's, a small record's and a 64 KiB value's size.
fn checksum(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("crc32c");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    for bytes in [16usize, 100, 65536] {
        let data: Vec<u8> = (0..bytes).map(|at| (at * 7 + 3) as u8).collect();
        assert_eq!(
            coregrid_engine::checksum::crc32c(&data),
            crc32c::crc32c(&data)
        );
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::new("engine", bytes), &data, |bencher, data| {
            bencher.iter(|| coregrid_engine::checksum::crc32c(black_box(data)))
        });
        group.bench_with_input(
            BenchmarkId::new("crc32c-crate", bytes),
            &data,
            |bencher, data| bencher.iter(|| crc32c::crc32c(black_box(data))),
        );
    }
    group.finish();
}

criterion_group!(benches, record, checksum);
criterion_main!(benches);
