//! Proves that every message type survives the whole wire path unchanged: encode into a frame,
//! stream it through a `FrameDecoder` (in arbitrary chunks, many frames pipelined), read the
//! body in place with rkyv's validated access, and copy it back out equal to what was sent,
//! with the frame's kind, request id and epoch intact.

mod common;

use common::*;
use coregrid_net::{
    access, decode, encode, ChannelKind, Epoch, FrameDecoder, FrameMeta, Message, MessageKind,
    RequestId,
};
use proptest::prelude::*;
use std::fmt::Debug;

fn meta(request_id: u64, epoch: u64) -> FrameMeta {
    FrameMeta {
        request_id: RequestId(request_id),
        epoch: Epoch(epoch),
    }
}

/// One message through encode, decoder, access and back to native.
fn round_trip<M: Message + PartialEq + Debug>(message: &M, frame_meta: FrameMeta) {
    // A prefix of odd length: the frame's position in the sender's buffer must not matter.
    let mut out = vec![0xAA; 3];
    let frame_len = encode(&mut out, frame_meta, message).unwrap();
    assert_eq!(frame_len, out.len() - 3);
    assert_eq!(frame_len % 16, 0);
    let mut decoder = FrameDecoder::new(M::KIND.channel());
    assert_eq!(decoder.feed(&out[3..]).unwrap(), frame_len);
    let frame = decoder.next_frame().unwrap().expect("a whole frame");
    assert_eq!(frame.kind(), M::KIND);
    assert_eq!(frame.request_id(), frame_meta.request_id);
    assert_eq!(frame.epoch(), frame_meta.epoch);
    let view = access::<M>(&frame).unwrap();
    assert_eq!(&M::to_native(view).unwrap(), message);
    assert_eq!(decode(&frame).unwrap().kind(), M::KIND);
    assert!(decoder.next_frame().unwrap().is_none());
    decoder.finish().unwrap();
}

proptest! {
    #[test]
    fn hello_round_trips(message in hello(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn hello_reply_round_trips(message in hello_reply(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn put_round_trips(message in put(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn get_round_trips(message in get(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn delete_round_trips(message in delete(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn compare_and_set_round_trips(message in compare_and_set(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn create_collection_round_trips(message in create_collection(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn drop_collection_round_trips(message in drop_collection(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn batch_round_trips(message in batch(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn topology_round_trips(id: u64, epoch: u64) {
        round_trip(&coregrid_net::message::TopologyRequest {}, meta(id, epoch));
    }

    #[test]
    fn write_response_round_trips(message in write_response(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn get_response_round_trips(message in get_response(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn delete_response_round_trips(message in delete_response(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn topology_response_round_trips(message in topology_response(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn cluster_status_round_trips(id: u64, epoch: u64) {
        round_trip(&coregrid_net::message::ClusterStatusRequest {}, meta(id, epoch));
    }

    #[test]
    fn cluster_status_response_round_trips(
        message in cluster_status_response(),
        id: u64,
        epoch: u64,
    ) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn error_response_round_trips(message in error_response(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn sync_request_round_trips(message in sync_request(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    #[test]
    fn sync_response_round_trips(message in sync_response(), id: u64, epoch: u64) {
        round_trip(&message, meta(id, epoch));
    }

    /// Many messages of every kind pipelined on one stream, fed in arbitrary chunks, come out
    /// in order, each with its own request id.
    #[test]
    fn pipelined_stream(
        messages in proptest::collection::vec(any_message(), 1..24),
        chunk_bytes in 1usize..300,
    ) {
        let mut stream = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            message.encode(&mut stream, meta(index as u64, 9)).unwrap();
        }
        // Kinds of every channel in one stream: a decoder with the client channel's limit,
        // switched per frame to the channel of the kind expected next (as a server switches
        // after the handshake).
        let mut decoder = FrameDecoder::new(ChannelKind::Client);
        let mut next = 0;
        for chunk in stream.chunks(chunk_bytes) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let fed = decoder.feed(rest).unwrap();
                rest = &rest[fed..];
                while let Some(expected) = messages.get(next) {
                    decoder.set_channel(expected.kind().channel());
                    let Some(frame) = decoder.next_frame().unwrap() else { break };
                    prop_assert_eq!(frame.request_id(), RequestId(next as u64));
                    prop_assert_eq!(frame.kind(), expected.kind());
                    prop_assert_eq!(decode(&frame).unwrap().kind(), expected.kind());
                    next += 1;
                }
            }
        }
        prop_assert_eq!(next, messages.len());
        decoder.finish().unwrap();
    }
}

/// One fixed sample of every kind round-trips, and the kinds cover `MessageKind::ALL`.
#[test]
fn every_kind_has_a_sample_that_round_trips() {
    let samples = samples();
    for (index, sample) in samples.iter().enumerate() {
        let mut out = Vec::new();
        sample.encode(&mut out, meta(index as u64, 1)).unwrap();
        let mut decoder = FrameDecoder::new(sample.kind().channel());
        decoder.feed(&out).unwrap();
        let frame = decoder.next_frame().unwrap().unwrap();
        assert_eq!(decode(&frame).unwrap().kind(), MessageKind::ALL[index]);
    }
}

/// Keys and values come back as slices of the frame's body, not copies.
#[test]
fn reads_are_zero_copy() {
    let put = coregrid_net::message::PutRequest {
        id: Default::default(),
        consistency: Default::default(),
        collection: "c".into(),
        key: b"a key".to_vec(),
        value: vec![9; 1000],
    };
    let mut out = Vec::new();
    encode(&mut out, FrameMeta::default(), &put).unwrap();
    let mut decoder = FrameDecoder::new(ChannelKind::Client);
    decoder.feed(&out).unwrap();
    let frame = decoder.next_frame().unwrap().unwrap();
    let body = frame.body().as_ptr_range();
    let view = access::<coregrid_net::message::PutRequest>(&frame).unwrap();
    for field in [view.key.as_slice(), view.value.as_slice()] {
        assert!(body.contains(&field.as_ptr()), "field lies inside the body");
    }
    assert_eq!(view.value.as_slice(), &[9; 1000][..]);
}
