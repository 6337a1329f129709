//! Proves that a frame whose crcs hold but whose body is not a valid archive of its kind (a
//! broken or hostile sender) is refused by rkyv's validation with a clear error and no panic,
//! for every kind, while the stream's framing survives: the next frame is still read.

use coregrid_net::message::ErrorResponse;
use coregrid_net::{
    decode, encode_frame_raw, ChannelKind, DecodeError, Epoch, FrameDecoder, FrameMeta,
    MessageKind, MessageRef, RequestId,
};
use proptest::prelude::*;

fn frame(kind: MessageKind, body: &[u8], id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let meta = FrameMeta {
        request_id: RequestId(id),
        epoch: Epoch(1),
    };
    encode_frame_raw(&mut out, kind, meta, body).unwrap();
    out
}

#[test]
fn garbage_bodies_are_malformed_and_the_stream_goes_on() {
    for kind in MessageKind::ALL {
        let channel = kind.channel();
        // 0xff: every relative pointer points far out of the body, every tag is invalid.
        let mut stream = frame(kind, &[0xff; 40], 1);
        stream.extend(frame(kind, &[0xff; 40], 2));
        let mut decoder = FrameDecoder::new(channel);
        decoder.feed(&stream).unwrap();
        for id in [1, 2] {
            let frame = decoder.next_frame().unwrap().unwrap();
            assert_eq!(frame.request_id(), RequestId(id));
            if kind == MessageKind::Control {
                // Not net's to judge: the bytes go to the cluster crate as they came.
                assert!(matches!(
                    decode(&frame),
                    Ok(MessageRef::Control(body)) if body == [0xff; 40]
                ));
                continue;
            }
            if kind == MessageKind::WriteResponse {
                // Two u64s: every bit pattern is one (the root is read from the body's end).
                assert!(decode(&frame).is_ok());
                continue;
            }
            let error = decode(&frame).unwrap_err();
            if matches!(
                kind,
                MessageKind::SyncRequest | MessageKind::SnapshotRequest
            ) {
                // Fixed fields only: every bit pattern is well-formed, and the protocol's
                // rules refuse this one (partition 2^32 - 1).
                assert!(
                    matches!(error, DecodeError::Invalid { kind: k, .. } if k == kind),
                    "{kind}: {error:?}"
                );
                continue;
            }
            assert!(
                matches!(error, DecodeError::Malformed { kind: k, .. } if k == kind),
                "{kind}: {error:?}"
            );
            // What a server would answer.
            assert!(matches!(
                ErrorResponse::from_decode_error(&error),
                ErrorResponse::InvalidRequest { .. }
            ));
        }
        decoder.finish().unwrap();
    }
}

proptest! {
    /// Any body under any kind: decode answers Ok or Err, never panics.
    #[test]
    fn arbitrary_bodies_never_panic(
        kind_index in 0..MessageKind::ALL.len(),
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let kind = MessageKind::ALL[kind_index];
        let bytes = frame(kind, &body, 5);
        let mut decoder = FrameDecoder::new(kind.channel());
        decoder.feed(&bytes).unwrap();
        let frame = decoder.next_frame().unwrap().unwrap();
        let _ = decode(&frame);
    }
}

#[test]
fn every_body_bit_flip_of_a_resealed_frame_is_safe() {
    // A sender that corrupts the body before computing its crc: the frame is intact, the body
    // is whatever it is. Every flip decodes to an error or to some valid message, never panics.
    let mut batch = Vec::new();
    coregrid_net::encode(
        &mut batch,
        FrameMeta::default(),
        &coregrid_net::message::BatchRequest {
            id: Default::default(),
            consistency: Default::default(),
            operations: vec![
                coregrid_net::message::BatchOperation::Put {
                    collection: "c".into(),
                    key: b"k".to_vec(),
                    value: b"value".to_vec(),
                },
                coregrid_net::message::BatchOperation::Delete {
                    collection: "d".into(),
                    key: b"key2".to_vec(),
                },
            ],
        },
    )
    .unwrap();
    let body_len = u32::from_le_bytes(batch[12..16].try_into().unwrap()) as usize;
    let body = &batch[48..48 + body_len];
    for bit in 0..body.len() * 8 {
        let mut flipped = body.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let bytes = frame(MessageKind::Batch, &flipped, 1);
        let mut decoder = FrameDecoder::new(ChannelKind::Client);
        decoder.feed(&bytes).unwrap();
        let frame = decoder.next_frame().unwrap().unwrap();
        let _ = decode(&frame);
    }
}
