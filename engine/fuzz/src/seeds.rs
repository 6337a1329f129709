//! Writes seed corpora of valid records and WAL segments (the crcs would stop a blind fuzzer at
//! the door): `cargo run --bin seeds` from engine/fuzz.

use coregrid_engine::constants::SEGMENT_HEADER_BYTES;
use coregrid_engine::journal;
use coregrid_engine::record::{
    encode_record, encode_record_with_request, BatchOperation, Operation, RecordMeta,
};
use coregrid_engine::requests::{ClientWindow, RequestId};
use coregrid_engine::segment::SegmentHeader;

fn main() -> std::io::Result<()> {
    let operations = [
        Operation::Put {
            collection: "c",
            key: b"key",
            value: b"value",
        },
        Operation::Delete {
            collection: "c",
            key: b"key",
        },
        Operation::CreateCollection { name: "users" },
        Operation::DropCollection { name: "users" },
        Operation::Batch(vec![
            BatchOperation::Put {
                collection: "a",
                key: b"1",
                value: b"one",
            },
            BatchOperation::Delete {
                collection: "b",
                key: b"2",
            },
        ]),
        Operation::EpochStart,
        Operation::SnapshotBegin {
            partition: 0,
            snapshot_lsn: 9,
            epochs: vec![(1, 1), (2, 5)],
        },
        Operation::SnapshotEnd { records: 3 },
        Operation::ClientRequests(vec![(
            1,
            ClientWindow {
                applied: [(1, (2, 3)), (2, (4, 5))].into_iter().collect(),
                forgotten_up_to: Some(0),
                last_lsn: 4,
            },
        )]),
    ];
    std::fs::create_dir_all("corpus/record")?;
    std::fs::create_dir_all("corpus/scan")?;
    for (index, operation) in operations.iter().enumerate() {
        let mut bytes = Vec::new();
        let meta = RecordMeta {
            lsn: index as u64 + 1,
            epoch: 1,
            hlc: 7,
            durable_lsn: index as u64,
        };
        encode_record(&mut bytes, meta, operation);
        std::fs::write(format!("corpus/record/seed-{index}"), &bytes)?;
    }
    // A put that carries a client request id.
    let mut bytes = Vec::new();
    encode_record_with_request(
        &mut bytes,
        RecordMeta {
            lsn: 1,
            epoch: 1,
            hlc: 7,
            durable_lsn: 0,
        },
        Some(RequestId {
            client: 3,
            sequence: 4,
        }),
        &Operation::Put {
            collection: "c",
            key: b"k",
            value: b"v",
        },
    );
    std::fs::write(format!("corpus/record/seed-{}", operations.len()), &bytes)?;
    // One segment image of a few records, as a scan input (count byte 0 = one segment).
    // Kept small: the header block is shortened to what the scanner reads.
    let mut segment = vec![0u8; SEGMENT_HEADER_BYTES];
    SegmentHeader::write(&mut segment, 0, 1, 1 << 20);
    for lsn in 1..=4u64 {
        let meta = RecordMeta {
            lsn,
            epoch: 1,
            hlc: lsn,
            durable_lsn: lsn - 1,
        };
        encode_record(
            &mut segment,
            meta,
            &Operation::Put {
                collection: "c",
                key: b"k",
                value: b"v",
            },
        );
    }
    segment.extend_from_slice(&[0u8; 64]);
    let mut input = vec![0u8];
    input.extend_from_slice(&segment);
    std::fs::write("corpus/scan/seed-0", &input)?;
    // One journal slot holding one chunk of two entries (records and a barrier), as a journal
    // scan input (count byte 0 = one slot); cut after the chunk's payload.
    std::fs::create_dir_all("corpus/journal")?;
    let mut payload = Vec::new();
    journal::encode_records(&mut payload, 3, 1, &segment[SEGMENT_HEADER_BYTES..]);
    journal::encode_barrier(&mut payload, 4);
    let mut chunk = vec![0u8; journal::chunk_len(payload.len())];
    journal::encode_chunk(&mut chunk, 1, 1, &payload);
    chunk.truncate(journal::CHUNK_HEADER_BYTES + payload.len());
    let mut input = vec![0u8];
    input.extend_from_slice(&chunk);
    std::fs::write("corpus/journal/seed-0", &input)?;
    // A built journal (top bit of the first byte; two slots): three proper chunks of one
    // records entry each, the last spilling into the second slot's life.
    let mut input = vec![0x81u8];
    for first_lsn in [1u8, 2, 3] {
        input.extend_from_slice(&[0, 1, 0, 31, first_lsn]);
    }
    std::fs::write("corpus/journal/built-0", &input)?;
    Ok(())
}
