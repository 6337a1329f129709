//! Proves that every decoder of on-disk bytes survives arbitrary input (design.md section 5,
//! promise 6; style.md rule 14): `RecordRef::validate`, `Operation::decode` for every kind,
//! `SegmentHeader::read`, the recovery `scan` over arbitrary and mutated segment images, and
//! snapshot loading, never panic; a crc-valid record with an undecodable body makes recovery
//! refuse the partition (corruption), never panic.
//!
//! Seeded: prints its seed; `COREGRID_SEED=<seed>` replays, `PROPTEST_CASES` scales.

mod common;

use common::PARTITION;
use coregrid_engine::constants::SEGMENT_HEADER_BYTES;
use coregrid_engine::index::Index;
use coregrid_engine::io::{Storage, StorageFile};
use coregrid_engine::record::{encode_record, Operation, OperationKind, RecordMeta, RecordRef};
use coregrid_engine::rt;
use coregrid_engine::scan::{scan, SegmentImage};
use coregrid_engine::segment::{segment_name, SegmentHeader};
use coregrid_engine::sim::SimDisk;
use coregrid_engine::snapshot::{load_latest, snapshot_name};
use coregrid_engine::EngineError;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const KINDS: [OperationKind; 8] = [
    OperationKind::Put,
    OperationKind::Delete,
    OperationKind::CreateCollection,
    OperationKind::DropCollection,
    OperationKind::Batch,
    OperationKind::EpochStart,
    OperationKind::SnapshotBegin,
    OperationKind::SnapshotEnd,
];

fn runner(test: &str, cases: u32) -> TestRunner {
    let seed = common::seed(test);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var("PROPTEST_CASES").is_err() {
        config.cases = cases;
    }
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    )
}

/// A record with a valid header and body crc around an arbitrary body of an arbitrary kind.
fn forged_record(kind: OperationKind, body: &[u8], lsn: u64) -> Vec<u8> {
    // Encode an EpochStart (empty body), then splice in the body and fix the header.
    let mut out = Vec::new();
    encode_record(
        &mut out,
        RecordMeta {
            lsn,
            epoch: 1,
            hlc: 0,
            durable_lsn: lsn - 1,
        },
        &Operation::EpochStart,
    );
    out[10] = kind as u8;
    out[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out[16..20].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let header_crc = crc32c::crc32c(&out[8..56]);
    out[4..8].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn record_and_body_decoders_never_panic() {
    let mut runner = runner("decoders/records", 2048);
    runner
        .run(
            &(prop::collection::vec(any::<u8>(), 0..400), 0..KINDS.len()),
            |(bytes, kind)| {
                let _ = RecordRef::validate(&bytes);
                for kind in KINDS {
                    let _ = Operation::decode(kind, &bytes);
                }
                // Through validate, with crcs that hold, so the body decoder really runs.
                let forged = forged_record(KINDS[kind], &bytes, 1);
                let record = RecordRef::validate(&forged).expect("forged crcs hold");
                if let Ok(operation) = record.operation() {
                    // Whatever decodes re-encodes to the same body.
                    let mut again = Vec::new();
                    operation.encode_body(&mut again);
                    prop_assert_eq!(&again, &bytes);
                }
                let _ = SegmentHeader::read(&bytes);
                Ok(())
            },
        )
        .unwrap();
}

fn valid_segment(base_lsn: u64, records: u64) -> Vec<u8> {
    let mut image = vec![0u8; SEGMENT_HEADER_BYTES];
    SegmentHeader::write(&mut image, PARTITION, base_lsn, 16 * 1024);
    for lsn in base_lsn..base_lsn + records {
        let key = format!("k{lsn}");
        encode_record(
            &mut image,
            RecordMeta {
                lsn,
                epoch: 1,
                hlc: lsn,
                durable_lsn: lsn - 1,
            },
            &Operation::Put {
                collection: "c",
                key: key.as_bytes(),
                value: b"value",
            },
        );
    }
    image.resize(16 * 1024, 0);
    image
}

#[test]
fn scan_never_panics_on_arbitrary_or_mutated_images() {
    let mutation = (0..16 * 1024usize, any::<u8>(), 1..64usize);
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..6000),
        prop::collection::vec(mutation, 0..8),
        0..2usize,
        0..20u64,
    );
    let mut runner = runner("decoders/scan", 512);
    runner
        .run(&strategy, |(arbitrary, mutations, segment, first_lsn)| {
            // Arbitrary bytes as a whole segment, and behind an arbitrary header.
            for bytes in [arbitrary.clone(), {
                let mut headed = vec![0u8; SEGMENT_HEADER_BYTES];
                SegmentHeader::write(&mut headed, PARTITION, 1, 8192);
                headed.extend_from_slice(&arbitrary);
                headed
            }] {
                let images = [SegmentImage {
                    base_lsn: 1,
                    bytes: &bytes,
                }];
                let _ = scan(&images, PARTITION, first_lsn.max(1), 1024, |record| {
                    let _ = record.operation();
                });
            }
            // Two valid segments with runs of bytes overwritten.
            let mut segments = [valid_segment(1, 40), valid_segment(41, 40)];
            for (offset, byte, len) in mutations {
                let end = (offset + len).min(segments[segment].len());
                segments[segment][offset..end].fill(byte);
            }
            let images = [
                SegmentImage {
                    base_lsn: 1,
                    bytes: &segments[0],
                },
                SegmentImage {
                    base_lsn: 41,
                    bytes: &segments[1],
                },
            ];
            let mut visited = Vec::new();
            if let Ok(outcome) = scan(&images, PARTITION, first_lsn.max(1), 1024, |record| {
                visited.push(record.header.lsn())
            }) {
                // Whatever is accepted is a dense prefix of intact records.
                let expected: Vec<u64> = (first_lsn.max(1)..outcome.next_lsn).collect();
                prop_assert_eq!(visited, expected);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn snapshot_loading_never_panics() {
    let mut runner = runner("decoders/snapshot", 256);
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..3000), |bytes| {
            rt::run_local(|| async {
                let disk = SimDisk::new();
                let name = snapshot_name(5);
                let file = disk.create(&name, 0).await.unwrap();
                let mut buffer = file.alloc_buffer(bytes.len().div_ceil(512) * 512);
                buffer[..bytes.len()].copy_from_slice(&bytes);
                file.write_at(buffer, 0).await.unwrap();
                let mut index = Index::default();
                match load_latest(&disk, PARTITION, &mut index).await {
                    Err(EngineError::Corruption { .. }) => {}
                    other => panic!("arbitrary bytes loaded as a snapshot: {other:?}"),
                }
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_crc_valid_undecodable_record_is_corruption_not_a_panic() {
    rt::run_local(|| async {
        let mut checked = 0;
        for kind in KINDS {
            let disk = SimDisk::new();
            let mut image = valid_segment(1, 3);
            // Replace record 2 with a forged one whose body does not decode as its kind.
            let spans = common::record_spans(&image);
            let (at, _, len) = spans[1];
            let mut tail = image[at + len..spans[2].0 + spans[2].2].to_vec();
            let forged = forged_record(kind, &[0xff; 3], 2);
            if RecordRef::validate(&forged).unwrap().operation().is_ok() {
                continue;
            }
            checked += 1;
            image.truncate(at);
            image.extend_from_slice(&forged);
            image.append(&mut tail);
            image.resize(16 * 1024, 0);
            let file = disk
                .create(&segment_name(1), image.len() as u64)
                .await
                .unwrap();
            let mut buffer = file.alloc_buffer(image.len());
            buffer.copy_from_slice(&image);
            file.write_at(buffer, 0).await.unwrap();
            file.sync().await.unwrap();
            disk.sync_dir().await.unwrap();
            match common::open(&disk, common::config(0)).await {
                Err(EngineError::Corruption { lsn, .. }) => assert_eq!(lsn, 2, "{kind:?}"),
                Err(other) => panic!("{kind:?}: expected corruption, got {other}"),
                Ok(_) => panic!("{kind:?}: an undecodable record was accepted"),
            }
        }
        assert!(checked >= 6, "only {checked} kinds were checked");
    });
}
