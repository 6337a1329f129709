//! Every wire message, and the codec between messages and frames.
//!
//! The types live in three private files (`handshake`, `request`, `response`) and are all
//! re-exported here; rkyv's resolver types stay private (nothing outside needs them).
//!
//! Each message type has its own [`MessageKind`]. [`encode`] checks the message against the
//! protocol's rules ([`Validate`]), archives it with rkyv straight into the caller's buffer
//! behind a frame header, and seals the frame. [`decode`] (or [`access`] for one expected type)
//! reads a validated [`Frame`]'s body in place: rkyv's validating access first (no pointer,
//! length, tag or UTF-8 is trusted), then the same rules on the archived form, so a key over
//! its limit or a batch of too many operations is refused before anything is allocated or
//! applied. What comes back borrows the frame's body: keys and values are `&[u8]` into it.

mod handshake;
mod request;
mod response;

pub use handshake::{
    answer_hello, ArchivedHello, ArchivedHelloAccepted, ArchivedHelloReply, ArchivedPeer,
    ArchivedRefusal, Hello, HelloAccepted, HelloReply, LocalIdentity, Peer, Refusal,
};
pub use request::{
    ArchivedBatchOperation, ArchivedBatchRequest, ArchivedCompareAndSetRequest,
    ArchivedCreateCollectionRequest, ArchivedDeleteRequest, ArchivedDropCollectionRequest,
    ArchivedGetRequest, ArchivedPutRequest, ArchivedReadConsistency, ArchivedTopologyRequest,
    ArchivedWriteConsistency, BatchOperation, BatchRequest, CompareAndSetRequest,
    CreateCollectionRequest, DeleteRequest, DropCollectionRequest, GetRequest, PutRequest,
    ReadConsistency, TopologyRequest, WriteConsistency,
};
pub use response::{
    truncate_reason, ArchivedDeleteResponse, ArchivedErrorResponse, ArchivedGetResponse,
    ArchivedShardTopology, ArchivedTopologyResponse, ArchivedWriteResponse, DeleteResponse,
    ErrorResponse, GetResponse, ShardTopology, TopologyResponse, WriteResponse,
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
        }

        impl MessageRef<'_> {
            /// The message's kind.
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(MessageRef::$kind(_) => MessageKind::$kind,)*
                }
            }
        }

        /// Reads an intact frame's body as the message its kind names: rkyv's validated
        /// access, then the protocol's rules on the archived form. Nothing is copied or
        /// allocated on success.
        pub fn decode<'a>(frame: &Frame<'a>) -> Result<MessageRef<'a>, DecodeError> {
            Ok(match frame.kind() {
                $(MessageKind::$kind => MessageRef::$kind(access_body::<$native>(frame.body())?),)*
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
    WriteResponse / ArchivedWriteResponse => WriteResponse,
    GetResponse / ArchivedGetResponse => GetResponse,
    DeleteResponse / ArchivedDeleteResponse => DeleteResponse,
    TopologyResponse / ArchivedTopologyResponse => TopologyResponse,
    ErrorResponse / ArchivedErrorResponse => ErrorResponse,
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
        BATCH_OPERATION_ARCHIVE_OVERHEAD_BYTES_MAX, COLLECTION_NAME_BYTES_MAX, KEY_BYTES_MAX,
        MESSAGE_FIXED_BYTES_MAX, PARTITIONS_MAX, REASON_BYTES_MAX, SHARDS_PER_NODE_MAX,
        VALUE_BYTES_MAX,
    };
    use crate::frame::{encode_frame_raw, parse_frame};
    use crate::ids::{
        ClientId, ClientRequestId, Epoch, Lsn, NodeId, PartitionId, RequestId, ShardId,
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
