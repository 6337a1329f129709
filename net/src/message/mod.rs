//! Every wire message, and the codec between messages and frames.
//!
//! The types live in four private files (`handshake`, `request`, `response`, `replication`) and are all
//! re-exported here; rkyv's resolver types stay private (nothing outside needs them).
//!
//! Each message type has its own [`MessageKind`], except [`MessageKind::Control`]: a control
//! datagram's body belongs to the cluster crate, so [`decode`] hands it out as bytes
//! ([`MessageRef::Control`]) for that crate to validate. [`encode`] checks the message against the
//! protocol's rules ([`Validate`]), archives it with rkyv straight into the caller's buffer
//! behind a frame header, and seals the frame. [`decode`] (or [`access`] for one expected type)
//! reads a validated [`Frame`]'s body in place: rkyv's validating access first (no pointer,
//! length, tag or UTF-8 is trusted), then the same rules on the archived form, so a key over
//! its limit or a batch of too many operations is refused before anything is allocated or
//! applied. What comes back borrows the frame's body: keys and values are `&[u8]` into it.

mod handshake;
mod replication;
mod request;
mod response;

pub use handshake::{
    answer_hello, ArchivedHello, ArchivedHelloAccepted, ArchivedHelloReply, ArchivedPeer,
    ArchivedRefusal, Hello, HelloAccepted, HelloReply, LocalIdentity, Peer, Refusal,
};
pub use replication::{
    ArchivedEpochStart, ArchivedSnapshotOutcome, ArchivedSnapshotRequest, ArchivedSnapshotResponse,
    ArchivedSyncOutcome, ArchivedSyncRequest, ArchivedSyncResponse, EpochStart, SnapshotOutcome,
    SnapshotRequest, SnapshotResponse, SyncOutcome, SyncRequest, SyncResponse,
};
pub use request::{
    ArchivedBatchOperation, ArchivedBatchRequest, ArchivedClusterStatusRequest,
    ArchivedCompareAndSetRequest, ArchivedCreateCollectionRequest, ArchivedDeleteRequest,
    ArchivedDropCollectionRequest, ArchivedGetRequest, ArchivedPutRequest, ArchivedReadConsistency,
    ArchivedTopologyRequest, ArchivedWriteConsistency, BatchOperation, BatchRequest,
    ClusterStatusRequest, CompareAndSetRequest, CreateCollectionRequest, DeleteRequest,
    DropCollectionRequest, GetRequest, PutRequest, ReadConsistency, TopologyRequest,
    WriteConsistency,
};
pub use response::{
    truncate_reason, ArchivedClusterStatusResponse, ArchivedControlRole, ArchivedDeleteResponse,
    ArchivedErrorResponse, ArchivedGetResponse, ArchivedMemberState, ArchivedMemberStatus,
    ArchivedPartitionStatus, ArchivedShardTopology, ArchivedTopologyResponse,
    ArchivedWriteResponse, ClusterStatusResponse, ControlRole, DeleteResponse, ErrorResponse,
    GetResponse, MemberState, MemberStatus, PartitionStatus, ShardTopology, TopologyResponse,
    WriteResponse,
};

use crate::constants::{FRAME_ALIGNMENT_BYTES, FRAME_HEADER_BYTES};
use crate::error::{DecodeError, EncodeError};
use crate::frame::{begin_frame, finish_frame, Frame, FrameMeta};
use crate::kind::MessageKind;
use crate::validate::Validate;
use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Positional, Writer};
use std::fmt::Debug;

/// The rkyv writer [`encode`] archives a body through: it appends to the caller's buffer and
/// reports positions relative to the body's start. rkyv aligns each archived value by its
/// position, so body-relative positions make the body's internal alignment independent of where
/// the frame lies in the caller's buffer; the receiver reads it at a 16-aligned address.
#[derive(Debug)]
pub struct BodyWriter<'a> {
    out: &'a mut Vec<u8>,
    body_start: usize,
}

impl Positional for BodyWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.body_start
    }
}

impl<E> Writer<E> for BodyWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// A message type of the wire: its kind, and how its body is read.
pub trait Message:
    Validate
    + Sized
    + for<'w, 'a> rkyv::Serialize<HighSerializer<BodyWriter<'w>, ArenaHandle<'a>, rancor::Error>>
{
    /// The header's kind for this type.
    const KIND: MessageKind;
    /// The archived form, read in place from a body.
    type View: Validate + Debug;
    /// rkyv's validating access to a body of this type (structure only; [`access`] adds the
    /// alignment check and the protocol's rules).
    fn access_archive(body: &[u8]) -> Result<&Self::View, rancor::Error>;
    /// Copies the archived form out into a native value (for callers that must own it).
    fn to_native(view: &Self::View) -> Result<Self, rancor::Error>;
}

macro_rules! message {
    ($($native:ident / $archived:ident => $kind:ident,)*) => {
        $(
            impl Message for $native {
                const KIND: MessageKind = MessageKind::$kind;
                type View = $archived;
                fn access_archive(body: &[u8]) -> Result<&$archived, rancor::Error> {
                    rkyv::access::<$archived, rancor::Error>(body)
                }
                fn to_native(view: &$archived) -> Result<$native, rancor::Error> {
                    rkyv::deserialize::<$native, rancor::Error>(view)
                }
            }
        )*

        /// A decoded message: the archived form of the frame's kind, borrowed from its body.
        #[derive(Debug, Clone, Copy)]
        #[non_exhaustive]
        pub enum MessageRef<'a> {
            $(
                #[doc = concat!("A [`", stringify!($native), "`].")]
                $kind(&'a $archived),
            )*
            /// A control datagram's body, as bytes: its frame is intact (crcs, length,
            /// padding checked) but its content is the cluster crate's to validate, with rkyv's
            /// checked access, before anything is read from it. 16-aligned, like every body.
            Control(&'a [u8]),
        }

        impl MessageRef<'_> {
            /// The message's kind.
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(MessageRef::$kind(_) => MessageKind::$kind,)*
                    MessageRef::Control(_) => MessageKind::Control,
                }
            }
        }

        /// Reads an intact frame's body as the message its kind names: rkyv's validated
        /// access, then the protocol's rules on the archived form. Nothing is copied or
        /// allocated on success. A control datagram's body is handed out as bytes
        /// ([`MessageRef::Control`]), checked only for alignment: its rules are the cluster
        /// crate's.
        pub fn decode<'a>(frame: &Frame<'a>) -> Result<MessageRef<'a>, DecodeError> {
            Ok(match frame.kind() {
                $(MessageKind::$kind => MessageRef::$kind(access_body::<$native>(frame.body())?),)*
                MessageKind::Control => {
                    let body = frame.body();
                    if body.as_ptr().align_offset(FRAME_ALIGNMENT_BYTES) != 0 {
                        return Err(DecodeError::Misaligned { kind: MessageKind::Control });
                    }
                    MessageRef::Control(body)
                }
            })
        }
    };
}

message! {
    Hello / ArchivedHello => Hello,
    HelloReply / ArchivedHelloReply => HelloReply,
    PutRequest / ArchivedPutRequest => Put,
    GetRequest / ArchivedGetRequest => Get,
    DeleteRequest / ArchivedDeleteRequest => Delete,
    CompareAndSetRequest / ArchivedCompareAndSetRequest => CompareAndSet,
    CreateCollectionRequest / ArchivedCreateCollectionRequest => CreateCollection,
    DropCollectionRequest / ArchivedDropCollectionRequest => DropCollection,
    BatchRequest / ArchivedBatchRequest => Batch,
    TopologyRequest / ArchivedTopologyRequest => Topology,
    ClusterStatusRequest / ArchivedClusterStatusRequest => ClusterStatus,
    WriteResponse / ArchivedWriteResponse => WriteResponse,
    GetResponse / ArchivedGetResponse => GetResponse,
    DeleteResponse / ArchivedDeleteResponse => DeleteResponse,
    TopologyResponse / ArchivedTopologyResponse => TopologyResponse,
    ClusterStatusResponse / ArchivedClusterStatusResponse => ClusterStatusResponse,
    ErrorResponse / ArchivedErrorResponse => ErrorResponse,
    SyncRequest / ArchivedSyncRequest => SyncRequest,
    SyncResponse / ArchivedSyncResponse => SyncResponse,
    SnapshotRequest / ArchivedSnapshotRequest => SnapshotRequest,
    SnapshotResponse / ArchivedSnapshotResponse => SnapshotResponse,
}

/// Appends `message` as one frame to `out` (header, body, padding); returns the bytes
/// appended. The message is checked against the same rules a receiver applies, so nothing a
/// peer would refuse is sent. On error `out` is as it was.
pub fn encode<M: Message>(
    out: &mut Vec<u8>,
    meta: FrameMeta,
    message: &M,
) -> Result<usize, EncodeError> {
    message
        .validate()
        .map_err(|violation| EncodeError::Invalid {
            kind: M::KIND,
            violation,
        })?;
    let start = begin_frame(out);
    let writer = BodyWriter {
        out: &mut *out,
        body_start: start + FRAME_HEADER_BYTES,
    };
    if let Err(error) = rkyv::api::high::to_bytes_in::<_, rancor::Error>(message, writer) {
        out.truncate(start);
        return Err(EncodeError::Serialize {
            kind: M::KIND,
            reason: error.to_string(),
        });
    }
    finish_frame(out, start, M::KIND, meta)
}

/// Reads an intact frame's body as `M`, which the caller expects (an answer to a request it
/// sent, say). A frame of another kind is [`DecodeError::UnexpectedKind`]; use [`decode`] when
/// any kind may come (an `ErrorResponse` in place of the expected answer, for one).
pub fn access<'a, M: Message>(frame: &Frame<'a>) -> Result<&'a M::View, DecodeError> {
    if frame.kind() != M::KIND {
        return Err(DecodeError::UnexpectedKind {
            expected: M::KIND,
            actual: frame.kind(),
        });
    }
    access_body::<M>(frame.body())
}

fn access_body<M: Message>(body: &[u8]) -> Result<&M::View, DecodeError> {
    let kind = M::KIND;
    // rkyv would refuse a misaligned body too, but only for types whose alignment it breaks;
    // refusing every misaligned body makes the rule the same for every kind and every body.
    if body.as_ptr().align_offset(FRAME_ALIGNMENT_BYTES) != 0 {
        return Err(DecodeError::Misaligned { kind });
    }
    // rkyv reads a message without fields from no bytes and ignores any it is given; the
    // body of one must be empty, so that no byte of a frame goes unchecked.
    if std::mem::size_of::<M::View>() == 0 && !body.is_empty() {
        return Err(DecodeError::Malformed {
            kind,
            reason: format!("{} body bytes for a message without fields", body.len()),
        });
    }
    let view = M::access_archive(body).map_err(|error| DecodeError::Malformed {
        kind,
        reason: error.to_string(),
    })?;
    view.validate()
        .map_err(|violation| DecodeError::Invalid { kind, violation })?;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::{
        frame_bytes, BATCH_BYTES_MAX, BATCH_OPERATIONS_MAX,
        BATCH_OPERATION_ARCHIVE_OVERHEAD_BYTES_MAX, CLUSTER_MEMBERS_MAX, COLLECTION_NAME_BYTES_MAX,
        CONTROL_FRAME_BODY_BYTES_MAX, GOSSIP_ADDRESS_BYTES_MAX, KEY_BYTES_MAX,
        MEMBER_STATUS_ARCHIVE_BYTES_MAX, MESSAGE_FIXED_BYTES_MAX, PARTITIONS_MAX,
        PARTITION_STATUS_ARCHIVE_BYTES_MAX, REASON_BYTES_MAX, REPLICAS_PER_PARTITION_MAX,
        SHARDS_PER_NODE_MAX, VALUE_BYTES_MAX,
    };
    use crate::frame::{encode_frame_raw, parse_frame};
    use crate::ids::{
        ClientId, ClientRequestId, Epoch, Lsn, NodeId, PartitionId, RequestId, ShardId, Term,
    };
    use crate::kind::ChannelKind;
    use crate::validate::{Limit, Violation};
    use rkyv::util::AlignedVec;

    fn id() -> ClientRequestId {
        ClientRequestId {
            client: ClientId(7),
            sequence: 1,
        }
    }

    /// Encodes `message` and reads it back through an aligned copy of the frame.
    fn body_len<M: Message>(message: &M) -> usize {
        let mut out = Vec::new();
        let frame_len = encode(&mut out, FrameMeta::default(), message).unwrap();
        assert_eq!(frame_len, out.len());
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&out);
        let (frame, _) = parse_frame(&aligned, M::KIND.channel()).unwrap().unwrap();
        access::<M>(&frame).unwrap();
        frame.body().len()
    }

    #[test]
    fn batch_archive_overhead_is_bounded() {
        // Smallest fields: the per-operation overhead dominates.
        let operations = (0..BATCH_OPERATIONS_MAX)
            .map(|index| {
                let key = vec![(index % 251) as u8 + 1];
                if index % 2 == 0 {
                    BatchOperation::Put {
                        collection: "c".into(),
                        key,
                        value: vec![1],
                    }
                } else {
                    BatchOperation::Delete {
                        collection: "c".into(),
                        key,
                    }
                }
            })
            .collect::<Vec<_>>();
        let payload: usize = operations
            .iter()
            .map(|operation| {
                let (collection, key, value) = operation.parts();
                collection.len() + key.len() + value.map_or(0, <[u8]>::len)
            })
            .sum();
        let batch = BatchRequest {
            id: id(),
            consistency: WriteConsistency::All,
            operations,
        };
        let len = body_len(&batch);
        assert!(
            len <= payload
                + BATCH_OPERATIONS_MAX * BATCH_OPERATION_ARCHIVE_OVERHEAD_BYTES_MAX
                + MESSAGE_FIXED_BYTES_MAX,
            "{len} bytes for a payload of {payload}"
        );
    }

    #[test]
    fn largest_messages_fit_their_channel() {
        let put = PutRequest {
            id: id(),
            consistency: WriteConsistency::One,
            collection: "c".repeat(COLLECTION_NAME_BYTES_MAX),
            key: vec![1; KEY_BYTES_MAX],
            value: vec![2; VALUE_BYTES_MAX],
        };
        assert!(
            body_len(&put)
                <= COLLECTION_NAME_BYTES_MAX
                    + KEY_BYTES_MAX
                    + VALUE_BYTES_MAX
                    + MESSAGE_FIXED_BYTES_MAX
        );
        let found = GetResponse::Found {
            value: vec![3; VALUE_BYTES_MAX],
            revision: Lsn(u64::MAX),
            hlc: u64::MAX,
        };
        body_len(&found);
        // A batch of exactly the most bytes: largest puts, then one that fills the rest.
        let op_fixed_bytes = 8 + COLLECTION_NAME_BYTES_MAX + KEY_BYTES_MAX;
        let mut operations = Vec::new();
        let mut remaining = BATCH_BYTES_MAX - 2;
        while remaining > op_fixed_bytes {
            let value_bytes = (remaining - op_fixed_bytes).min(VALUE_BYTES_MAX);
            operations.push(BatchOperation::Put {
                collection: "b".repeat(COLLECTION_NAME_BYTES_MAX),
                key: vec![4; KEY_BYTES_MAX],
                value: vec![5; value_bytes],
            });
            remaining -= op_fixed_bytes + value_bytes;
        }
        assert_eq!(remaining, 0, "the loop fills the batch exactly");
        let batch = BatchRequest {
            id: id(),
            consistency: WriteConsistency::Quorum,
            operations: operations.clone(),
        };
        body_len(&batch);
        // One byte more is refused by the sender, before anything is written.
        if let Some(BatchOperation::Put { value, .. }) = operations.last_mut() {
            value.push(0);
        }
        let mut out = vec![9u8];
        let error = encode(
            &mut out,
            FrameMeta::default(),
            &BatchRequest {
                id: id(),
                consistency: WriteConsistency::Quorum,
                operations,
            },
        )
        .unwrap_err();
        assert!(matches!(
            error,
            EncodeError::Invalid {
                violation: Violation::TooLarge {
                    what: Limit::BatchBytes,
                    ..
                },
                ..
            }
        ));
        assert_eq!(out, vec![9u8]);
        // Every partition listed once, on the most shards.
        let shards = (0..SHARDS_PER_NODE_MAX as u32)
            .map(|shard| ShardTopology {
                shard: ShardId(shard as u16),
                port: 7000 + shard as u16,
                partitions: (shard..PARTITIONS_MAX)
                    .step_by(SHARDS_PER_NODE_MAX)
                    .map(PartitionId)
                    .collect(),
            })
            .collect();
        body_len(&TopologyResponse {
            node: NodeId(1),
            epoch: Epoch(2),
            partition_count: PARTITIONS_MAX,
            shards,
        });
        let refusal = HelloReply::Refused(Refusal::ChannelRefused {
            channel: ChannelKind::Replication,
            reason: "r".repeat(REASON_BYTES_MAX),
        });
        assert!(body_len(&refusal) <= REASON_BYTES_MAX + MESSAGE_FIXED_BYTES_MAX);
    }

    /// The largest cluster status the rules allow: every member with the longest address,
    /// every partition with the most replicas and a leader.
    fn largest_cluster_status() -> ClusterStatusResponse {
        let members = (0..CLUSTER_MEMBERS_MAX as u64)
            .map(|node| {
                // The longest socket address text there is: 64 bytes.
                let address = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535";
                assert_eq!(address.len(), GOSSIP_ADDRESS_BYTES_MAX);
                let address = address.to_string();
                MemberStatus {
                    node: NodeId(node),
                    state: MemberState::JoinedSyncing,
                    suspected: true,
                    voter: node < 5,
                    gossip_address: address.clone(),
                    data_address: address,
                }
            })
            .collect();
        let partitions = (0..PARTITIONS_MAX as u64)
            .map(|partition| PartitionStatus {
                leader: Some(NodeId(partition)),
                replicas: (partition..partition + REPLICAS_PER_PARTITION_MAX as u64)
                    .map(NodeId)
                    .collect(),
            })
            .collect();
        ClusterStatusResponse {
            node: NodeId(u64::MAX),
            term: Term(u64::MAX),
            role: ControlRole::Controller,
            controller: Some(NodeId(u64::MAX)),
            epoch: Epoch(u64::MAX),
            lease: true,
            members,
            partitions,
        }
    }

    #[test]
    fn largest_cluster_status_fits_a_client_frame_within_its_bounds() {
        let mut status = largest_cluster_status();
        assert!(status.members[0]
            .gossip_address
            .parse::<std::net::SocketAddr>()
            .is_ok());
        let address_bytes = 2 * GOSSIP_ADDRESS_BYTES_MAX;
        let replica_bytes = REPLICAS_PER_PARTITION_MAX * 8;
        let len = body_len(&status);
        assert!(
            len <= CLUSTER_MEMBERS_MAX * (MEMBER_STATUS_ARCHIVE_BYTES_MAX + address_bytes)
                + PARTITIONS_MAX as usize * (PARTITION_STATUS_ARCHIVE_BYTES_MAX + replica_bytes)
                + MESSAGE_FIXED_BYTES_MAX,
            "{len} bytes"
        );
        assert!(len <= ChannelKind::Client.frame_body_bytes_max());
        // Each per-entry bound on its own: members only, then partitions only.
        let partitions = std::mem::take(&mut status.partitions);
        let members_len = body_len(&status);
        assert!(
            members_len
                <= CLUSTER_MEMBERS_MAX * (MEMBER_STATUS_ARCHIVE_BYTES_MAX + address_bytes)
                    + MESSAGE_FIXED_BYTES_MAX,
            "{members_len} bytes for the members"
        );
        status.members.clear();
        status.partitions = partitions;
        let partitions_len = body_len(&status);
        assert!(
            partitions_len
                <= PARTITIONS_MAX as usize * (PARTITION_STATUS_ARCHIVE_BYTES_MAX + replica_bytes)
                    + MESSAGE_FIXED_BYTES_MAX,
            "{partitions_len} bytes for the partitions"
        );
        // Empty: before the first map, nothing but the fixed fields.
        status.partitions.clear();
        assert!(body_len(&status) <= MESSAGE_FIXED_BYTES_MAX);
    }

    #[test]
    fn cluster_status_over_its_limits_is_refused_by_sender_and_receiver() {
        let base = ClusterStatusResponse {
            node: NodeId(1),
            term: Term(3),
            role: ControlRole::Follower,
            controller: None,
            epoch: Epoch(0),
            lease: false,
            members: vec![],
            partitions: vec![],
        };
        let member = |node: u64| MemberStatus {
            node: NodeId(node),
            state: MemberState::Joined,
            suspected: false,
            voter: true,
            gossip_address: "127.0.0.1:7946".into(),
            data_address: "127.0.0.1:7400".into(),
        };
        let cases: Vec<(ClusterStatusResponse, Option<Limit>)> = vec![
            (
                ClusterStatusResponse {
                    members: (0..=CLUSTER_MEMBERS_MAX as u64).map(member).collect(),
                    ..base.clone()
                },
                Some(Limit::Members),
            ),
            (
                ClusterStatusResponse {
                    partitions: vec![
                        PartitionStatus {
                            leader: None,
                            replicas: vec![],
                        };
                        PARTITIONS_MAX as usize + 1
                    ],
                    ..base.clone()
                },
                Some(Limit::Partitions),
            ),
            (
                ClusterStatusResponse {
                    partitions: vec![PartitionStatus {
                        leader: None,
                        replicas: (0..=REPLICAS_PER_PARTITION_MAX as u64)
                            .map(NodeId)
                            .collect(),
                    }],
                    ..base.clone()
                },
                Some(Limit::Replicas),
            ),
            (
                ClusterStatusResponse {
                    members: vec![MemberStatus {
                        gossip_address: "1".repeat(GOSSIP_ADDRESS_BYTES_MAX + 1),
                        ..member(1)
                    }],
                    ..base.clone()
                },
                Some(Limit::AddressBytes),
            ),
            (
                ClusterStatusResponse {
                    members: vec![MemberStatus {
                        data_address: "1".repeat(GOSSIP_ADDRESS_BYTES_MAX + 1),
                        ..member(1)
                    }],
                    ..base.clone()
                },
                Some(Limit::AddressBytes),
            ),
            (
                ClusterStatusResponse {
                    members: vec![member(2), member(1)],
                    ..base.clone()
                },
                None,
            ),
            (
                ClusterStatusResponse {
                    partitions: vec![PartitionStatus {
                        leader: Some(NodeId(9)),
                        replicas: vec![NodeId(1)],
                    }],
                    ..base.clone()
                },
                None,
            ),
        ];
        for (status, limit) in cases {
            let matches_rule = |violation: &Violation| match (violation, limit) {
                (Violation::TooLarge { what, .. }, Some(limit)) => *what == limit,
                (Violation::Invalid(_), None) => true,
                _ => false,
            };
            // The sender refuses it and leaves its buffer as it was.
            let mut out = vec![7u8];
            match encode(&mut out, FrameMeta::default(), &status) {
                Err(EncodeError::Invalid { violation, .. }) => {
                    assert!(matches_rule(&violation), "{violation:?} for {limit:?}")
                }
                other => panic!("the sender must refuse it: {other:?}"),
            }
            assert_eq!(out, vec![7u8]);
            // A sender that skips the checks: the receiver refuses it from the archive.
            let body = rkyv::to_bytes::<rancor::Error>(&status).unwrap();
            let mut raw = Vec::new();
            encode_frame_raw(
                &mut raw,
                MessageKind::ClusterStatusResponse,
                FrameMeta::default(),
                &body,
            )
            .unwrap();
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(&raw);
            let (frame, _) = parse_frame(&aligned, ChannelKind::Client).unwrap().unwrap();
            match decode(&frame) {
                Err(DecodeError::Invalid { kind, violation }) => {
                    assert_eq!(kind, MessageKind::ClusterStatusResponse);
                    assert!(matches_rule(&violation), "{violation:?} for {limit:?}");
                }
                other => panic!("the receiver must refuse it: {other:?}"),
            }
        }
    }

    #[test]
    fn control_frames_decode_to_their_body_bytes() {
        let body: Vec<u8> = (0..100u8).collect();
        let mut raw = Vec::new();
        encode_frame_raw(&mut raw, MessageKind::Control, FrameMeta::default(), &body).unwrap();
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&raw);
        let (frame, len) = parse_frame(&aligned, ChannelKind::Control)
            .unwrap()
            .unwrap();
        assert_eq!(len, raw.len());
        let MessageRef::Control(bytes) = decode(&frame).unwrap() else {
            panic!("a control frame decodes as control bytes");
        };
        assert_eq!(bytes, &body[..]);
        assert_eq!(decode(&frame).unwrap().kind(), MessageKind::Control);
        // Not on a client connection, and never larger than one datagram.
        assert!(matches!(
            parse_frame(&aligned, ChannelKind::Client),
            Err(crate::error::FrameError::KindNotAllowed { .. })
        ));
        let largest = vec![0u8; CONTROL_FRAME_BODY_BYTES_MAX];
        let mut out = Vec::new();
        let frame_len = encode_frame_raw(
            &mut out,
            MessageKind::Control,
            FrameMeta::default(),
            &largest,
        )
        .unwrap();
        assert!(frame_len <= crate::constants::UDP_PAYLOAD_BYTES_MAX);
        assert!(encode_frame_raw(
            &mut Vec::new(),
            MessageKind::Control,
            FrameMeta::default(),
            &vec![0u8; CONTROL_FRAME_BODY_BYTES_MAX + 1]
        )
        .is_err());
    }

    #[test]
    fn receiver_checks_limits_on_the_archived_form() {
        // A sender that skips the checks (rkyv directly, then a raw frame).
        let put = PutRequest {
            id: id(),
            consistency: WriteConsistency::One,
            collection: "c".into(),
            key: vec![1; KEY_BYTES_MAX + 1],
            value: vec![],
        };
        let body = rkyv::to_bytes::<rancor::Error>(&put).unwrap();
        let mut out = AlignedVec::<16>::new();
        let mut frame_bytes_out = Vec::new();
        encode_frame_raw(
            &mut frame_bytes_out,
            MessageKind::Put,
            FrameMeta::default(),
            &body,
        )
        .unwrap();
        out.extend_from_slice(&frame_bytes_out);
        let (frame, _) = parse_frame(&out, ChannelKind::Client).unwrap().unwrap();
        let error = decode(&frame).unwrap_err();
        assert_eq!(
            error,
            DecodeError::Invalid {
                kind: MessageKind::Put,
                violation: Violation::TooLarge {
                    what: Limit::KeyBytes,
                    size: KEY_BYTES_MAX as u64 + 1,
                    limit: KEY_BYTES_MAX as u64,
                },
            }
        );
        assert_eq!(
            ErrorResponse::from_decode_error(&error),
            ErrorResponse::TooLarge {
                what: Limit::KeyBytes,
                size: KEY_BYTES_MAX as u64 + 1,
                limit: KEY_BYTES_MAX as u64,
            }
        );
        // And the sender's own encode refuses it.
        assert!(matches!(
            encode(&mut Vec::new(), FrameMeta::default(), &put),
            Err(EncodeError::Invalid { .. })
        ));
    }

    #[test]
    fn wrong_type_and_misaligned_bodies_are_refused() {
        let get = GetRequest {
            consistency: ReadConsistency::Any,
            collection: "c".into(),
            key: b"k".to_vec(),
        };
        let mut out = Vec::new();
        encode(
            &mut out,
            FrameMeta {
                request_id: RequestId(3),
                epoch: Epoch(4),
            },
            &get,
        )
        .unwrap();
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&out);
        let (frame, _) = parse_frame(&aligned, ChannelKind::Client).unwrap().unwrap();
        assert_eq!(
            access::<PutRequest>(&frame).unwrap_err(),
            DecodeError::UnexpectedKind {
                expected: MessageKind::Put,
                actual: MessageKind::Get
            }
        );
        let MessageRef::Get(view) = decode(&frame).unwrap() else {
            panic!("a get decodes as a get");
        };
        assert_eq!(view.key.as_slice(), b"k");
        // The same frame one byte off its alignment.
        let mut shifted = AlignedVec::<16>::new();
        shifted.push(0);
        shifted.extend_from_slice(&out);
        let (frame, _) = parse_frame(&shifted[1..], ChannelKind::Client)
            .unwrap()
            .unwrap();
        assert_eq!(
            decode(&frame).unwrap_err(),
            DecodeError::Misaligned {
                kind: MessageKind::Get
            }
        );
    }

    #[test]
    fn frame_lengths_are_aligned() {
        for body in 0..64 {
            assert_eq!(frame_bytes(body) % 16, 0);
            assert!(frame_bytes(body) - FRAME_HEADER_BYTES - body < 16);
        }
    }
}
