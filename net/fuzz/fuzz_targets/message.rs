//! Any bytes as the body of an intact frame of every message kind (the input's first byte picks
//! the kind, through `src/kinds.rs`): rkyv's validation and the protocol's rules may refuse it,
//! never panic. A body they accept copies out to a native message that encodes again (the
//! sender's checks agree with the receiver's) and decodes to the same message. A control
//! datagram's body is not net's to read: it must come back from `decode` as the same bytes.
#![no_main]

use coregrid_net::message::{
    BatchRequest, ClusterStatusRequest, ClusterStatusResponse, CompareAndSetRequest,
    CreateCollectionRequest, DeleteRequest, DeleteResponse, DropCollectionRequest, ErrorResponse,
    GetRequest, GetResponse, Hello, HelloReply, PutRequest, SnapshotRequest, SnapshotResponse,
    SyncRequest, SyncResponse, TopologyRequest, TopologyResponse, WriteResponse,
};
use coregrid_net::rkyv::util::AlignedVec;
use coregrid_net::{
    access, decode, encode, encode_frame_raw, parse_frame, FrameMeta, Message, MessageKind,
    MessageRef,
};
use libfuzzer_sys::fuzz_target;
use std::fmt::Debug;

#[path = "../src/kinds.rs"]
mod kinds;

/// Wraps `body` in a frame of `kind` and parses it from an aligned buffer.
fn framed(kind: MessageKind, body: &[u8]) -> Option<AlignedVec<16>> {
    let mut out = Vec::new();
    encode_frame_raw(&mut out, kind, FrameMeta::default(), body).ok()?;
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(&out);
    Some(aligned)
}

fn check<M: Message + PartialEq + Debug>(body: &[u8]) {
    let Some(bytes) = framed(M::KIND, body) else {
        return;
    };
    let (frame, _) = parse_frame(&bytes, M::KIND.channel())
        .expect("a frame just encoded parses")
        .expect("whole");
    let decoded = decode(&frame);
    let Ok(view) = access::<M>(&frame) else {
        assert!(decoded.is_err(), "decode and access disagree");
        return;
    };
    assert_eq!(decoded.expect("access accepted it").kind(), M::KIND);
    let native = M::to_native(view).expect("a validated archive deserializes");
    let mut again = Vec::new();
    encode(&mut again, FrameMeta::default(), &native)
        .expect("what a receiver accepts, a sender may send");
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(&again);
    let (frame, _) = parse_frame(&aligned, M::KIND.channel()).unwrap().unwrap();
    let back = M::to_native(access::<M>(&frame).unwrap()).unwrap();
    assert_eq!(back, native);
}

/// A control body is handed out as it came, whatever it holds.
fn check_control(body: &[u8]) {
    let Some(bytes) = framed(MessageKind::Control, body) else {
        return;
    };
    let (frame, _) = parse_frame(&bytes, MessageKind::Control.channel())
        .expect("a frame just encoded parses")
        .expect("whole");
    match decode(&frame) {
        Ok(MessageRef::Control(received)) => assert_eq!(received, body),
        other => panic!("a control frame decodes to its body, not {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = kinds::FUZZ_KINDS[usize::from(selector) % kinds::FUZZ_KINDS.len()];
    match kind {
        MessageKind::Hello => check::<Hello>(body),
        MessageKind::HelloReply => check::<HelloReply>(body),
        MessageKind::Put => check::<PutRequest>(body),
        MessageKind::Get => check::<GetRequest>(body),
        MessageKind::Delete => check::<DeleteRequest>(body),
        MessageKind::CompareAndSet => check::<CompareAndSetRequest>(body),
        MessageKind::CreateCollection => check::<CreateCollectionRequest>(body),
        MessageKind::DropCollection => check::<DropCollectionRequest>(body),
        MessageKind::Batch => check::<BatchRequest>(body),
        MessageKind::Topology => check::<TopologyRequest>(body),
        MessageKind::WriteResponse => check::<WriteResponse>(body),
        MessageKind::GetResponse => check::<GetResponse>(body),
        MessageKind::DeleteResponse => check::<DeleteResponse>(body),
        MessageKind::TopologyResponse => check::<TopologyResponse>(body),
        MessageKind::ErrorResponse => check::<ErrorResponse>(body),
        MessageKind::ClusterStatus => check::<ClusterStatusRequest>(body),
        MessageKind::ClusterStatusResponse => check::<ClusterStatusResponse>(body),
        MessageKind::Control => check_control(body),
        MessageKind::SyncRequest => check::<SyncRequest>(body),
        MessageKind::SyncResponse => check::<SyncResponse>(body),
        MessageKind::SnapshotRequest => check::<SnapshotRequest>(body),
        MessageKind::SnapshotResponse => check::<SnapshotResponse>(body),
    }
});
