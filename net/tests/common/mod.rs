//! Strategies for every message type, and a sample of each kind, shared by the integration
//! tests. `round_trip.rs` uses all of it; the other files use part and say so where they
//! declare the module.

use coregrid_net::message::{
    BatchOperation, BatchRequest, ClusterStatusRequest, ClusterStatusResponse,
    CompareAndSetRequest, ControlRole, CreateCollectionRequest, DeleteRequest, DeleteResponse,
    DropCollectionRequest, ErrorResponse, GetRequest, GetResponse, Hello, HelloAccepted,
    HelloReply, MemberState, MemberStatus, PartitionStatus, Peer, PutRequest, ReadConsistency,
    Refusal, ShardTopology, TopologyRequest, TopologyResponse, WriteConsistency, WriteResponse,
};
use coregrid_net::message::{
    EpochStart, SnapshotOutcome, SnapshotRequest, SnapshotResponse, SyncOutcome, SyncRequest,
    SyncResponse,
};
use coregrid_net::{
    encode, encode_frame_raw, ChannelKind, ClientId, ClientRequestId, ClusterId, EncodeError,
    Epoch, FrameMeta, Limit, Lsn, MessageKind, NodeId, PartitionId, ShardId, Term,
};
use proptest::prelude::*;

/// Any message of the wire, to mix kinds in one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnyMessage {
    Hello(Hello),
    HelloReply(HelloReply),
    Put(PutRequest),
    Get(GetRequest),
    Delete(DeleteRequest),
    CompareAndSet(CompareAndSetRequest),
    CreateCollection(CreateCollectionRequest),
    DropCollection(DropCollectionRequest),
    Batch(BatchRequest),
    Topology(TopologyRequest),
    ClusterStatus(ClusterStatusRequest),
    WriteResponse(WriteResponse),
    GetResponse(GetResponse),
    DeleteResponse(DeleteResponse),
    TopologyResponse(TopologyResponse),
    ClusterStatusResponse(ClusterStatusResponse),
    ErrorResponse(ErrorResponse),
    SyncRequest(SyncRequest),
    SyncResponse(SyncResponse),
    SnapshotRequest(SnapshotRequest),
    SnapshotResponse(SnapshotResponse),
    /// A control datagram's body: bytes net does not interpret (the cluster crate's).
    Control(Vec<u8>),
}

/// Calls `$body` with `$message` bound to the inner message, whatever its type.
macro_rules! with_message {
    ($any:expr, |$message:ident| $body:expr) => {
        match $any {
            AnyMessage::Hello($message) => $body,
            AnyMessage::HelloReply($message) => $body,
            AnyMessage::Put($message) => $body,
            AnyMessage::Get($message) => $body,
            AnyMessage::Delete($message) => $body,
            AnyMessage::CompareAndSet($message) => $body,
            AnyMessage::CreateCollection($message) => $body,
            AnyMessage::DropCollection($message) => $body,
            AnyMessage::Batch($message) => $body,
            AnyMessage::Topology($message) => $body,
            AnyMessage::ClusterStatus($message) => $body,
            AnyMessage::WriteResponse($message) => $body,
            AnyMessage::GetResponse($message) => $body,
            AnyMessage::DeleteResponse($message) => $body,
            AnyMessage::TopologyResponse($message) => $body,
            AnyMessage::ClusterStatusResponse($message) => $body,
            AnyMessage::ErrorResponse($message) => $body,
            AnyMessage::SyncRequest($message) => $body,
            AnyMessage::SyncResponse($message) => $body,
            AnyMessage::SnapshotRequest($message) => $body,
            AnyMessage::SnapshotResponse($message) => $body,
            AnyMessage::Control(_) => unreachable!("control bodies are not messages of net"),
        }
    };
}

impl AnyMessage {
    pub fn encode(&self, out: &mut Vec<u8>, meta: FrameMeta) -> Result<usize, EncodeError> {
        if let AnyMessage::Control(body) = self {
            return encode_frame_raw(out, MessageKind::Control, meta, body);
        }
        with_message!(self, |message| encode(out, meta, message))
    }

    pub fn kind(&self) -> MessageKind {
        if let AnyMessage::Control(_) = self {
            return MessageKind::Control;
        }
        use coregrid_net::Message;
        fn kind_of<M: Message>(_: &M) -> MessageKind {
            M::KIND
        }
        with_message!(self, |message| kind_of(message))
    }
}

pub fn client_request_id() -> impl Strategy<Value = ClientRequestId> {
    (any::<u64>(), any::<u64>()).prop_map(|(client, sequence)| ClientRequestId {
        client: ClientId(client),
        sequence,
    })
}

pub fn write_consistency() -> impl Strategy<Value = WriteConsistency> {
    prop_oneof![
        Just(WriteConsistency::One),
        Just(WriteConsistency::Quorum),
        Just(WriteConsistency::All)
    ]
}

pub fn read_consistency() -> impl Strategy<Value = ReadConsistency> {
    prop_oneof![Just(ReadConsistency::Leader), Just(ReadConsistency::Any)]
}

/// Names of 1..=32 characters without control characters (at most 128 bytes of UTF-8).
pub fn collection() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,32}"
}

pub fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..48)
}

pub fn value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..200)
}

pub fn reason() -> impl Strategy<Value = String> {
    ".{0,64}"
}

pub fn node() -> impl Strategy<Value = NodeId> {
    any::<u64>().prop_map(NodeId)
}

pub fn shard() -> impl Strategy<Value = ShardId> {
    any::<u16>().prop_map(ShardId)
}

pub fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

pub fn epoch() -> impl Strategy<Value = Epoch> {
    any::<u64>().prop_map(Epoch)
}

pub fn cluster() -> impl Strategy<Value = ClusterId> {
    any::<[u8; 16]>().prop_map(ClusterId)
}

pub fn channel() -> impl Strategy<Value = ChannelKind> {
    prop_oneof![
        Just(ChannelKind::Client),
        Just(ChannelKind::Replication),
        Just(ChannelKind::Control)
    ]
}

pub fn limit() -> impl Strategy<Value = Limit> {
    prop_oneof![
        Just(Limit::KeyBytes),
        Just(Limit::ValueBytes),
        Just(Limit::CollectionNameBytes),
        Just(Limit::BatchOperations),
        Just(Limit::BatchBytes),
        Just(Limit::ReasonBytes),
        Just(Limit::Shards),
        Just(Limit::Partitions),
        Just(Limit::FrameBodyBytes),
        Just(Limit::Members),
        Just(Limit::Replicas),
        Just(Limit::AddressBytes),
    ]
}

pub fn hello() -> impl Strategy<Value = Hello> {
    (
        cluster(),
        any::<u16>(),
        channel(),
        prop_oneof![
            any::<u64>().prop_map(|id| Peer::Client(ClientId(id))),
            node().prop_map(Peer::Node)
        ],
        proptest::option::of(node()),
        proptest::option::of(shard()),
    )
        .prop_map(
            |(cluster_id, protocol_version, channel, sender, node, shard)| Hello {
                cluster_id,
                protocol_version,
                channel,
                sender,
                node,
                shard,
            },
        )
}

pub fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        (cluster(), cluster())
            .prop_map(|(expected, actual)| Refusal::WrongCluster { expected, actual }),
        (any::<u16>(), any::<u16>(), any::<u16>())
            .prop_map(|(min, max, actual)| Refusal::UnsupportedProtocol { min, max, actual }),
        (node(), node()).prop_map(|(expected, actual)| Refusal::WrongNode { expected, actual }),
        (shard(), shard()).prop_map(|(expected, actual)| Refusal::WrongShard { expected, actual }),
        (
            prop_oneof![
                Just(ChannelKind::Handshake),
                Just(ChannelKind::Client),
                Just(ChannelKind::Replication),
                Just(ChannelKind::Control)
            ],
            reason()
        )
            .prop_map(|(channel, reason)| Refusal::ChannelRefused { channel, reason }),
        Just(Refusal::ShuttingDown),
    ]
}

pub fn hello_reply() -> impl Strategy<Value = HelloReply> {
    prop_oneof![
        (node(), shard(), any::<u16>(), epoch()).prop_map(
            |(node, shard, protocol_version, epoch)| HelloReply::Accepted(HelloAccepted {
                node,
                shard,
                protocol_version,
                epoch,
            })
        ),
        refusal().prop_map(HelloReply::Refused),
    ]
}

pub fn put() -> impl Strategy<Value = PutRequest> {
    (
        client_request_id(),
        write_consistency(),
        collection(),
        key(),
        value(),
    )
        .prop_map(|(id, consistency, collection, key, value)| PutRequest {
            id,
            consistency,
            collection,
            key,
            value,
        })
}

pub fn get() -> impl Strategy<Value = GetRequest> {
    (read_consistency(), collection(), key()).prop_map(|(consistency, collection, key)| {
        GetRequest {
            consistency,
            collection,
            key,
        }
    })
}

pub fn delete() -> impl Strategy<Value = DeleteRequest> {
    (
        client_request_id(),
        write_consistency(),
        collection(),
        key(),
    )
        .prop_map(|(id, consistency, collection, key)| DeleteRequest {
            id,
            consistency,
            collection,
            key,
        })
}

pub fn compare_and_set() -> impl Strategy<Value = CompareAndSetRequest> {
    (
        client_request_id(),
        write_consistency(),
        collection(),
        key(),
        lsn(),
        proptest::option::of(value()),
    )
        .prop_map(
            |(id, consistency, collection, key, expected_revision, value)| CompareAndSetRequest {
                id,
                consistency,
                collection,
                key,
                expected_revision,
                value,
            },
        )
}

pub fn create_collection() -> impl Strategy<Value = CreateCollectionRequest> {
    (client_request_id(), write_consistency(), collection()).prop_map(|(id, consistency, name)| {
        CreateCollectionRequest {
            id,
            consistency,
            name,
        }
    })
}

pub fn drop_collection() -> impl Strategy<Value = DropCollectionRequest> {
    (client_request_id(), write_consistency(), collection()).prop_map(|(id, consistency, name)| {
        DropCollectionRequest {
            id,
            consistency,
            name,
        }
    })
}

pub fn batch_operation() -> impl Strategy<Value = BatchOperation> {
    prop_oneof![
        (collection(), key(), value()).prop_map(|(collection, key, value)| BatchOperation::Put {
            collection,
            key,
            value
        }),
        (collection(), key())
            .prop_map(|(collection, key)| BatchOperation::Delete { collection, key }),
    ]
}

pub fn batch() -> impl Strategy<Value = BatchRequest> {
    (
        client_request_id(),
        write_consistency(),
        proptest::collection::vec(batch_operation(), 1..12),
    )
        .prop_map(|(id, consistency, operations)| BatchRequest {
            id,
            consistency,
            operations,
        })
}

pub fn write_response() -> impl Strategy<Value = WriteResponse> {
    (lsn(), any::<u64>()).prop_map(|(revision, hlc)| WriteResponse { revision, hlc })
}

pub fn get_response() -> impl Strategy<Value = GetResponse> {
    prop_oneof![
        (value(), lsn(), any::<u64>()).prop_map(|(value, revision, hlc)| GetResponse::Found {
            value,
            revision,
            hlc
        }),
        Just(GetResponse::NotFound),
    ]
}

pub fn delete_response() -> impl Strategy<Value = DeleteResponse> {
    prop_oneof![
        (lsn(), lsn(), any::<u64>()).prop_map(|(previous_revision, revision, hlc)| {
            DeleteResponse::Deleted {
                previous_revision,
                revision,
                hlc,
            }
        }),
        Just(DeleteResponse::Absent),
    ]
}

pub fn topology_response() -> impl Strategy<Value = TopologyResponse> {
    (node(), epoch(), 1u32..512, 1usize..8).prop_flat_map(|(node, epoch, partitions, shards)| {
        proptest::collection::vec(any::<u16>(), shards).prop_map(move |ports| {
            // Partition p on shard p % shards, as the engine pins them.
            let shards = ports
                .iter()
                .enumerate()
                .map(|(index, &port)| ShardTopology {
                    shard: ShardId(index as u16),
                    port,
                    partitions: (index as u32..partitions)
                        .step_by(ports.len())
                        .map(PartitionId)
                        .collect(),
                })
                .collect();
            TopologyResponse {
                node,
                epoch,
                partition_count: partitions,
                shards,
            }
        })
    })
}

pub fn control_role() -> impl Strategy<Value = ControlRole> {
    prop_oneof![
        Just(ControlRole::Follower),
        Just(ControlRole::Candidate),
        Just(ControlRole::Controller)
    ]
}

pub fn member_state() -> impl Strategy<Value = MemberState> {
    prop_oneof![
        Just(MemberState::Joining),
        Just(MemberState::JoinedSyncing),
        Just(MemberState::Joined),
        Just(MemberState::Leaving),
        Just(MemberState::Dead),
    ]
}

/// Empty (unknown) or an `ip:port` of either family.
pub fn gossip_address() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| std::net::SocketAddr::from((ip, port)).to_string()),
        (any::<[u16; 8]>(), any::<u16>())
            .prop_map(|(ip, port)| std::net::SocketAddr::from((ip, port)).to_string()),
    ]
}

/// A cluster status within every rule: members sorted by distinct node ids, each partition's
/// replicas distinct with the leader (if any) among them.
pub fn cluster_status_response() -> impl Strategy<Value = ClusterStatusResponse> {
    let members = proptest::collection::btree_map(
        any::<u64>(),
        (
            member_state(),
            any::<bool>(),
            any::<bool>(),
            (gossip_address(), gossip_address()),
        ),
        0..12,
    )
    .prop_map(|members| {
        members
            .into_iter()
            .map(
                |(node, (state, suspected, voter, (gossip_address, data_address)))| MemberStatus {
                    node: NodeId(node),
                    state,
                    suspected,
                    voter,
                    gossip_address,
                    data_address,
                },
            )
            .collect::<Vec<_>>()
    });
    let partition = (
        proptest::collection::btree_set(any::<u64>(), 0..=7),
        any::<proptest::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(replicas, leader_index, has_leader)| {
            let replicas: Vec<NodeId> = replicas.into_iter().map(NodeId).collect();
            let leader = (has_leader && !replicas.is_empty())
                .then(|| replicas[leader_index.index(replicas.len())]);
            PartitionStatus { leader, replicas }
        });
    (
        node(),
        any::<u64>(),
        control_role(),
        proptest::option::of(node()),
        (epoch(), any::<bool>()),
        members,
        proptest::collection::vec(partition, 0..40),
    )
        .prop_map(
            |(node, term, role, controller, (epoch, lease), members, partitions)| {
                ClusterStatusResponse {
                    node,
                    term: Term(term),
                    role,
                    controller,
                    epoch,
                    lease,
                    members,
                    partitions,
                }
            },
        )
}

pub fn error_response() -> impl Strategy<Value = ErrorResponse> {
    prop_oneof![
        (proptest::option::of(node()), epoch())
            .prop_map(|(leader, epoch)| ErrorResponse::NotLeader { leader, epoch }),
        (
            any::<u32>(),
            proptest::option::of(shard()),
            proptest::option::of(any::<u16>())
        )
            .prop_map(|(partition, shard, port)| ErrorResponse::WrongShard {
                partition: PartitionId(partition),
                shard,
                port,
            }),
        (any::<u32>(), any::<u32>()).prop_map(|(needed, available)| {
            ErrorResponse::NotEnoughReplicas { needed, available }
        }),
        reason().prop_map(|reason| ErrorResponse::Unknown { reason }),
        reason().prop_map(|reason| ErrorResponse::InvalidRequest { reason }),
        (limit(), any::<u64>(), any::<u64>())
            .prop_map(|(what, size, limit)| ErrorResponse::TooLarge { what, size, limit }),
        Just(ErrorResponse::ShuttingDown),
        lsn().prop_map(|current_revision| ErrorResponse::CasMismatch { current_revision }),
        collection().prop_map(|name| ErrorResponse::CollectionNotFound { name }),
        collection().prop_map(|name| ErrorResponse::CollectionExists { name }),
        reason().prop_map(|reason| ErrorResponse::Unavailable { reason }),
    ]
}

/// Any message of any kind.
pub fn any_message() -> impl Strategy<Value = AnyMessage> {
    prop_oneof![
        hello().prop_map(AnyMessage::Hello),
        hello_reply().prop_map(AnyMessage::HelloReply),
        put().prop_map(AnyMessage::Put),
        get().prop_map(AnyMessage::Get),
        delete().prop_map(AnyMessage::Delete),
        compare_and_set().prop_map(AnyMessage::CompareAndSet),
        create_collection().prop_map(AnyMessage::CreateCollection),
        drop_collection().prop_map(AnyMessage::DropCollection),
        batch().prop_map(AnyMessage::Batch),
        Just(AnyMessage::Topology(TopologyRequest {})),
        Just(AnyMessage::ClusterStatus(ClusterStatusRequest {})),
        write_response().prop_map(AnyMessage::WriteResponse),
        get_response().prop_map(AnyMessage::GetResponse),
        delete_response().prop_map(AnyMessage::DeleteResponse),
        topology_response().prop_map(AnyMessage::TopologyResponse),
        cluster_status_response().prop_map(AnyMessage::ClusterStatusResponse),
        error_response().prop_map(AnyMessage::ErrorResponse),
        sync_request().prop_map(AnyMessage::SyncRequest),
        sync_response().prop_map(AnyMessage::SyncResponse),
        snapshot_request().prop_map(AnyMessage::SnapshotRequest),
        snapshot_response().prop_map(AnyMessage::SnapshotResponse),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(AnyMessage::Control),
    ]
}

/// A follower's sync request: an empty log, or a last record in some epoch.
pub fn sync_request() -> impl Strategy<Value = SyncRequest> {
    (
        0u32..coregrid_net::constants::PARTITIONS_MAX,
        any::<u64>(),
        prop_oneof![Just((0u64, 0u64)), (1u64.., 1u64..)],
        0..=coregrid_net::constants::SYNC_RECORD_BYTES_MAX as u32,
        0..=coregrid_net::constants::SYNC_WAIT_MS_MAX,
    )
        .prop_map(
            |(partition, map_epoch, (last_epoch, last_lsn), max_bytes, wait_ms)| SyncRequest {
                partition: PartitionId(partition),
                map_epoch: Epoch(map_epoch),
                last_epoch: Epoch(last_epoch),
                last_lsn: Lsn(last_lsn),
                max_bytes,
                wait_ms,
            },
        )
}

/// An epoch history that follows the rules: epochs ascending, first LSNs from 1, never
/// descending, within the log's end (returned with it).
pub fn epoch_history() -> impl Strategy<Value = (Vec<EpochStart>, Lsn)> {
    proptest::collection::vec((1u64..5, 0u64..5), 0..20).prop_map(|steps| {
        let (mut epoch, mut lsn) = (0u64, 1u64);
        let history: Vec<EpochStart> = steps
            .into_iter()
            .map(|(epoch_step, lsn_step)| {
                epoch += epoch_step;
                lsn += lsn_step;
                EpochStart {
                    epoch: Epoch(epoch),
                    first_lsn: Lsn(lsn),
                }
            })
            .collect();
        (history, Lsn(lsn + 3))
    })
}

/// A leader's sync answer of every outcome.
pub fn sync_response() -> impl Strategy<Value = SyncResponse> {
    let outcome = prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(last_lsn, extra, records)| SyncOutcome::Records {
                last_lsn: Lsn(last_lsn),
                leader_end_epoch: Epoch(extra % 7),
                leader_end_lsn: Lsn(last_lsn.saturating_add(extra % 1000)),
                records,
            }),
        epoch_history().prop_map(|(history, end_lsn)| SyncOutcome::Diverged { history, end_lsn }),
        lsn().prop_map(|end_lsn| SyncOutcome::SnapshotNeeded { end_lsn }),
        error_response().prop_map(SyncOutcome::Refused),
    ];
    (
        0u32..coregrid_net::constants::PARTITIONS_MAX,
        epoch(),
        outcome,
    )
        .prop_map(|(partition, map_epoch, outcome)| SyncResponse {
            partition: PartitionId(partition),
            map_epoch,
            outcome,
        })
}

/// A follower's snapshot request: the newest snapshot, or a fetch under way.
pub fn snapshot_request() -> impl Strategy<Value = SnapshotRequest> {
    (
        0u32..coregrid_net::constants::PARTITIONS_MAX,
        epoch(),
        any::<u64>(),
        any::<u64>(),
        1..=coregrid_net::constants::SYNC_RECORD_BYTES_MAX as u32,
    )
        .prop_map(
            |(partition, map_epoch, lsn, offset, max_bytes)| SnapshotRequest {
                partition: PartitionId(partition),
                map_epoch,
                lsn: Lsn(lsn),
                offset,
                max_bytes,
            },
        )
}

/// A leader's snapshot answer of every outcome; chunks lie inside their file.
pub fn snapshot_response() -> impl Strategy<Value = SnapshotResponse> {
    let outcome = prop_oneof![
        (
            1u64..,
            0u64..1 << 40,
            0u64..1 << 20,
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(lsn, offset, extra, bytes)| SnapshotOutcome::Chunk {
                lsn: Lsn(lsn),
                size: offset + bytes.len() as u64 + extra,
                offset,
                bytes,
            }),
        Just(SnapshotOutcome::NoSnapshot),
        Just(SnapshotOutcome::Retry),
        error_response().prop_map(SnapshotOutcome::Refused),
    ];
    (
        0u32..coregrid_net::constants::PARTITIONS_MAX,
        epoch(),
        outcome,
    )
        .prop_map(|(partition, map_epoch, outcome)| SnapshotResponse {
            partition: PartitionId(partition),
            map_epoch,
            outcome,
        })
}

/// A three-node cluster's status, as node 1 (the controller) sees it.
pub fn sample_cluster_status() -> ClusterStatusResponse {
    let member = |node: u64, state, suspected| MemberStatus {
        node: NodeId(node),
        state,
        suspected,
        voter: true,
        gossip_address: format!("10.0.0.{node}:7946"),
        data_address: format!("10.0.0.{node}:7400"),
    };
    ClusterStatusResponse {
        node: NodeId(1),
        term: Term(3),
        role: ControlRole::Controller,
        controller: Some(NodeId(1)),
        epoch: Epoch(5),
        lease: true,
        members: vec![
            member(1, MemberState::Joined, false),
            member(2, MemberState::JoinedSyncing, false),
            member(3, MemberState::Joined, true),
        ],
        partitions: (0..4u64)
            .map(|partition| PartitionStatus {
                leader: Some(NodeId(partition % 3 + 1)),
                replicas: (0..3)
                    .map(|offset| NodeId((partition + offset) % 3 + 1))
                    .collect(),
            })
            .collect(),
    }
}

/// One fixed message of every kind, in [`MessageKind::ALL`] order.
pub fn samples() -> Vec<AnyMessage> {
    let id = ClientRequestId {
        client: ClientId(42),
        sequence: 7,
    };
    let samples = vec![
        AnyMessage::Hello(Hello {
            cluster_id: ClusterId([3; 16]),
            protocol_version: 1,
            channel: ChannelKind::Client,
            sender: Peer::Client(ClientId(42)),
            node: Some(NodeId(1)),
            shard: Some(ShardId(0)),
        }),
        AnyMessage::HelloReply(HelloReply::Refused(Refusal::ChannelRefused {
            channel: ChannelKind::Replication,
            reason: "only nodes of the cluster may replicate".into(),
        })),
        AnyMessage::Put(PutRequest {
            id,
            consistency: WriteConsistency::Quorum,
            collection: "users".into(),
            key: b"alice".to_vec(),
            value: b"{\"age\":3}".to_vec(),
        }),
        AnyMessage::Get(GetRequest {
            consistency: ReadConsistency::Leader,
            collection: "users".into(),
            key: b"alice".to_vec(),
        }),
        AnyMessage::Delete(DeleteRequest {
            id,
            consistency: WriteConsistency::One,
            collection: "users".into(),
            key: b"bob".to_vec(),
        }),
        AnyMessage::CompareAndSet(CompareAndSetRequest {
            id,
            consistency: WriteConsistency::All,
            collection: "users".into(),
            key: b"carol".to_vec(),
            expected_revision: Lsn(12),
            value: Some(b"new".to_vec()),
        }),
        AnyMessage::CreateCollection(CreateCollectionRequest {
            id,
            consistency: WriteConsistency::Quorum,
            name: "orders".into(),
        }),
        AnyMessage::DropCollection(DropCollectionRequest {
            id,
            consistency: WriteConsistency::Quorum,
            name: "orders".into(),
        }),
        AnyMessage::Batch(BatchRequest {
            id,
            consistency: WriteConsistency::Quorum,
            operations: vec![
                BatchOperation::Put {
                    collection: "a".into(),
                    key: b"1".to_vec(),
                    value: b"one".to_vec(),
                },
                BatchOperation::Delete {
                    collection: "b".into(),
                    key: b"2".to_vec(),
                },
            ],
        }),
        AnyMessage::Topology(TopologyRequest {}),
        AnyMessage::ClusterStatus(ClusterStatusRequest {}),
        AnyMessage::WriteResponse(WriteResponse {
            revision: Lsn(13),
            hlc: 0x0102_0304,
        }),
        AnyMessage::GetResponse(GetResponse::Found {
            value: b"{\"age\":3}".to_vec(),
            revision: Lsn(13),
            hlc: 0x0102_0304,
        }),
        AnyMessage::DeleteResponse(DeleteResponse::Deleted {
            previous_revision: Lsn(13),
            revision: Lsn(14),
            hlc: 0x0102_0305,
        }),
        AnyMessage::TopologyResponse(TopologyResponse {
            node: NodeId(1),
            epoch: Epoch(5),
            partition_count: 4,
            shards: vec![
                ShardTopology {
                    shard: ShardId(0),
                    port: 7001,
                    partitions: vec![PartitionId(0), PartitionId(2)],
                },
                ShardTopology {
                    shard: ShardId(1),
                    port: 7002,
                    partitions: vec![PartitionId(1), PartitionId(3)],
                },
            ],
        }),
        AnyMessage::ClusterStatusResponse(sample_cluster_status()),
        AnyMessage::ErrorResponse(ErrorResponse::NotLeader {
            leader: Some(NodeId(2)),
            epoch: Epoch(5),
        }),
        AnyMessage::SyncRequest(SyncRequest {
            partition: PartitionId(3),
            map_epoch: Epoch(5),
            last_epoch: Epoch(4),
            last_lsn: Lsn(120),
            max_bytes: 1024 * 1024,
            wait_ms: 500,
        }),
        AnyMessage::SnapshotRequest(SnapshotRequest {
            partition: PartitionId(3),
            map_epoch: Epoch(5),
            lsn: Lsn(4096),
            offset: 3 * 1024 * 1024,
            max_bytes: 3 * 1024 * 1024,
        }),
        AnyMessage::SyncResponse(SyncResponse {
            partition: PartitionId(3),
            map_epoch: Epoch(5),
            outcome: SyncOutcome::Diverged {
                history: vec![
                    EpochStart {
                        epoch: Epoch(0),
                        first_lsn: Lsn(1),
                    },
                    EpochStart {
                        epoch: Epoch(5),
                        first_lsn: Lsn(100),
                    },
                ],
                end_lsn: Lsn(130),
            },
        }),
        AnyMessage::SnapshotResponse(SnapshotResponse {
            partition: PartitionId(3),
            map_epoch: Epoch(5),
            outcome: SnapshotOutcome::Chunk {
                lsn: Lsn(4096),
                size: 40,
                offset: 8,
                bytes: b"bytes of a snapshot file".to_vec(),
            },
        }),
        AnyMessage::Control(b"a control datagram's body".to_vec()),
    ];
    let kinds: Vec<MessageKind> = samples.iter().map(AnyMessage::kind).collect();
    assert_eq!(
        kinds,
        MessageKind::ALL,
        "one sample of every kind, in order"
    );
    samples
}
