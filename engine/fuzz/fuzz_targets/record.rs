//! Any bytes into the record decoders: header validation, body crc, operation decoding and the
//! segment header. None may panic; a record that validates must re-encode to the same bytes.
#![no_main]

use coregrid_engine::record::{encode_record_with_request, OperationKind, RecordRef};
use coregrid_engine::segment::SegmentHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = SegmentHeader::read(data);
    if let Ok(record) = RecordRef::validate(data) {
        if let Ok(operation) = record.operation() {
            let mut again = Vec::new();
            encode_record_with_request(
                &mut again,
                record.header.meta(),
                record.request_id(),
                &operation,
            );
            assert_eq!(
                &again[..],
                &data[..record.len()],
                "decode/encode is not the identity"
            );
        }
    }
    if let Some((&kind, body)) = data.split_first() {
        if let Some(kind) = OperationKind::from_u8(kind % 10) {
            let _ = coregrid_engine::record::Operation::decode(kind, body);
        }
    }
});
