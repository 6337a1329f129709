//! Proves that the wire's limits are the engine's: a request the wire accepts is never refused
//! by the engine for its size, and nothing the engine stores is too large for the wire. `net`
//! does not depend on the engine; this test (a dev-dependency) fails when they drift apart.

use coregrid_engine::constants as engine;
use coregrid_engine::record::{encoded_len, BatchOperation, Operation};
use coregrid_net::constants as net;
use coregrid_net::validate::BatchBytes;

#[test]
fn key_value_name_and_batch_limits_match() {
    assert_eq!(net::KEY_BYTES_MAX, engine::KEY_BYTES_MAX);
    assert_eq!(net::VALUE_BYTES_MAX, engine::VALUE_BYTES_MAX);
    assert_eq!(
        net::COLLECTION_NAME_BYTES_MAX,
        engine::COLLECTION_NAME_BYTES_MAX
    );
    assert_eq!(net::BATCH_OPERATIONS_MAX, engine::BATCH_OPERATIONS_MAX);
    assert_eq!(net::BATCH_BYTES_MAX, engine::RECORD_BODY_BYTES_MAX);
    assert_eq!(net::PARTITIONS_MAX, engine::PARTITIONS_MAX);
    assert_eq!(net::WAL_RECORD_BYTES_MAX, engine::RECORD_BYTES_MAX);
}

#[test]
fn the_wire_counts_batch_bytes_as_the_engine_encodes_them() {
    let operations = [
        BatchOperation::Put {
            collection: "users",
            key: b"alice",
            value: b"value",
        },
        BatchOperation::Delete {
            collection: "orders",
            key: b"o-1",
        },
        BatchOperation::Put {
            collection: "c",
            key: b"k",
            value: b"",
        },
    ];
    let mut wire = BatchBytes::default();
    for operation in &operations {
        match operation {
            BatchOperation::Put {
                collection,
                key,
                value,
            } => wire.add(collection, key, Some(value)).unwrap(),
            BatchOperation::Delete { collection, key } => wire.add(collection, key, None).unwrap(),
        }
    }
    let engine_body_bytes = encoded_len(&Operation::Batch(operations.into_iter().collect()))
        - engine::RECORD_HEADER_BYTES;
    assert_eq!(wire.total_bytes(), engine_body_bytes);
}
