//! Writes seed corpora of valid frames of every message kind (the crcs and rkyv's validation
//! would stop a blind fuzzer at the door): `cargo run --bin seeds` from net/fuzz.

use coregrid_net::message::{
    EpochStart, SnapshotOutcome, SnapshotRequest, SnapshotResponse, SyncOutcome, SyncRequest,
    SyncResponse,
};
use coregrid_net::message::{
    BatchOperation, BatchRequest, ClusterStatusRequest, ClusterStatusResponse,
    CompareAndSetRequest, ControlRole, CreateCollectionRequest, DeleteRequest, DeleteResponse,
    DropCollectionRequest, ErrorResponse, GetRequest, GetResponse, Hello, HelloAccepted,
    HelloReply, MemberState, MemberStatus, PartitionStatus, PutRequest, ReadConsistency, Refusal,
    ShardTopology, TopologyRequest, TopologyResponse, WriteConsistency, WriteResponse,
};
use coregrid_net::{
    encode, encode_frame_raw, ChannelKind, ClientId, ClientRequestId, ClusterId, EncodeError,
    Epoch, FrameMeta, Limit, Lsn, Message, MessageKind, NodeId, PartitionId, RequestId, ShardId,
    Term,
};

#[path = "kinds.rs"]
mod kinds;

type Encoder = Box<dyn Fn(&mut Vec<u8>, FrameMeta) -> Result<usize, EncodeError>>;

fn boxed<M: Message + 'static>(message: M) -> (MessageKind, Encoder) {
    (
        M::KIND,
        Box::new(move |out, meta| encode(out, meta, &message)),
    )
}

fn samples() -> Vec<(MessageKind, Encoder)> {
    let id = ClientRequestId {
        client: ClientId(42),
        sequence: 7,
    };
    vec![
        boxed(Hello {
            node: Some(NodeId(1)),
            shard: Some(ShardId(0)),
            ..Hello::client(ClusterId([3; 16]), ClientId(42))
        }),
        boxed(HelloReply::Accepted(HelloAccepted {
            node: NodeId(1),
            shard: ShardId(0),
            protocol_version: 1,
            epoch: Epoch(5),
        })),
        boxed(HelloReply::Refused(Refusal::ChannelRefused {
            channel: ChannelKind::Replication,
            reason: "only nodes of the cluster may replicate".into(),
        })),
        boxed(PutRequest {
            id,
            consistency: WriteConsistency::Quorum,
            collection: "users".into(),
            key: b"alice".to_vec(),
            value: b"{\"age\":3}".to_vec(),
        }),
        boxed(GetRequest {
            consistency: ReadConsistency::Leader,
            collection: "users".into(),
            key: b"alice".to_vec(),
        }),
        boxed(DeleteRequest {
            id,
            consistency: WriteConsistency::One,
            collection: "users".into(),
            key: b"bob".to_vec(),
        }),
        boxed(CompareAndSetRequest {
            id,
            consistency: WriteConsistency::All,
            collection: "users".into(),
            key: b"carol".to_vec(),
            expected_revision: Lsn(12),
            value: Some(b"new".to_vec()),
        }),
        boxed(CompareAndSetRequest {
            id,
            consistency: WriteConsistency::All,
            collection: "users".into(),
            key: b"carol".to_vec(),
            expected_revision: Lsn(13),
            value: None,
        }),
        boxed(CreateCollectionRequest {
            id,
            consistency: WriteConsistency::Quorum,
            name: "orders".into(),
        }),
        boxed(DropCollectionRequest {
            id,
            consistency: WriteConsistency::Quorum,
            name: "orders".into(),
        }),
        boxed(BatchRequest {
            id,
            consistency: WriteConsistency::Quorum,
            operations: vec![
                BatchOperation::Put {
                    collection: "a".into(),
                    key: b"1".to_vec(),
                    value: b"one".to_vec(),
                },
                BatchOperation::Delete {
                    collection: "a longer collection name".into(),
                    key: b"2".to_vec(),
                },
            ],
        }),
        boxed(TopologyRequest {}),
        boxed(WriteResponse {
            revision: Lsn(13),
            hlc: 0x0102_0304,
        }),
        boxed(GetResponse::Found {
            value: b"{\"age\":3}".to_vec(),
            revision: Lsn(13),
            hlc: 0x0102_0304,
        }),
        boxed(GetResponse::NotFound),
        boxed(DeleteResponse::Deleted {
            previous_revision: Lsn(13),
            revision: Lsn(14),
            hlc: 0x0102_0305,
        }),
        boxed(DeleteResponse::Absent),
        boxed(TopologyResponse {
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
        boxed(ErrorResponse::NotLeader {
            leader: Some(NodeId(2)),
            epoch: Epoch(5),
        }),
        boxed(ErrorResponse::WrongShard {
            partition: PartitionId(3),
            shard: Some(ShardId(1)),
            port: Some(7002),
        }),
        boxed(ErrorResponse::TooLarge {
            what: Limit::KeyBytes,
            size: 5000,
            limit: 4096,
        }),
        boxed(ErrorResponse::Unknown {
            reason: "replica acks timed out".into(),
        }),
        boxed(ErrorResponse::CollectionNotFound {
            name: "users".into(),
        }),
        // Appended (the seeds above keep their file names and bytes): the cluster status and
        // a control datagram.
        boxed(ClusterStatusRequest {}),
        boxed(ClusterStatusResponse {
            node: NodeId(1),
            term: Term(3),
            role: ControlRole::Controller,
            controller: Some(NodeId(1)),
            epoch: Epoch(5),
            lease: true,
            members: vec![
                MemberStatus {
                    node: NodeId(1),
                    state: MemberState::Joined,
                    suspected: false,
                    voter: true,
                    gossip_address: "10.0.0.1:7946".into(),
                    data_address: "10.0.0.1:7400".into(),
                },
                MemberStatus {
                    node: NodeId(2),
                    state: MemberState::JoinedSyncing,
                    suspected: true,
                    voter: true,
                    gossip_address: "[fe80::2%3]:7946".into(),
                    data_address: "[fe80::2%3]:7400".into(),
                },
                MemberStatus {
                    node: NodeId(3),
                    state: MemberState::Dead,
                    suspected: false,
                    voter: false,
                    gossip_address: String::new(),
                    data_address: String::new(),
                },
            ],
            partitions: vec![
                PartitionStatus {
                    leader: Some(NodeId(1)),
                    replicas: vec![NodeId(1), NodeId(2)],
                },
                PartitionStatus {
                    leader: None,
                    replicas: vec![NodeId(2), NodeId(3)],
                },
            ],
        }),
        boxed(ClusterStatusResponse {
            node: NodeId(4),
            term: Term(0),
            role: ControlRole::Candidate,
            controller: None,
            epoch: Epoch(0),
            lease: false,
            members: vec![],
            partitions: vec![],
        }),
        boxed(SyncRequest {
            partition: PartitionId(3),
            map_epoch: Epoch(5),
            last_epoch: Epoch(4),
            last_lsn: Lsn(120),
            max_bytes: 1024 * 1024,
            wait_ms: 500,
        }),
        boxed(SyncResponse {
            partition: PartitionId(3),
            map_epoch: Epoch(5),
            outcome: SyncOutcome::Records {
                last_lsn: Lsn(122),
                leader_end_epoch: Epoch(4),
                leader_end_lsn: Lsn(130),
                records: vec![0x43, 0x47, 0x52, 0x31, 7, 7, 7, 7],
            },
        }),
        boxed(SyncResponse {
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
        boxed(SyncResponse {
            partition: PartitionId(0),
            map_epoch: Epoch(6),
            outcome: SyncOutcome::Refused(ErrorResponse::NotLeader {
                leader: Some(NodeId(2)),
                epoch: Epoch(6),
            }),
        }),
        boxed(SnapshotRequest {
            partition: PartitionId(3),
            map_epoch: Epoch(5),
            lsn: Lsn(4096),
            offset: 3 * 1024 * 1024,
            max_bytes: 3 * 1024 * 1024,
        }),
        boxed(SnapshotResponse {
            partition: PartitionId(3),
            map_epoch: Epoch(5),
            outcome: SnapshotOutcome::Chunk {
                lsn: Lsn(4096),
                size: 40,
                offset: 8,
                bytes: b"bytes of a snapshot file".to_vec(),
            },
        }),
        boxed(SnapshotResponse {
            partition: PartitionId(3),
            map_epoch: Epoch(5),
            outcome: SnapshotOutcome::NoSnapshot,
        }),
        (
            MessageKind::Control,
            Box::new(|out: &mut Vec<u8>, meta| {
                encode_frame_raw(out, MessageKind::Control, meta, b"gossip: ping from node 2")
            }),
        ),
    ]
}

fn main() -> std::io::Result<()> {
    for dir in ["frame_header", "decoder_stream", "message"] {
        std::fs::create_dir_all(format!("corpus/{dir}"))?;
    }
    let samples = samples();
    let mut covered: Vec<MessageKind> = samples.iter().map(|(kind, _)| *kind).collect();
    covered.sort();
    covered.dedup();
    assert_eq!(covered, MessageKind::ALL, "a seed of every kind");
    let mut fuzzed = kinds::FUZZ_KINDS.to_vec();
    fuzzed.sort();
    assert_eq!(fuzzed, MessageKind::ALL, "the message target reaches every kind");

    let mut handshake_stream = Vec::new();
    let mut client_stream = Vec::new();
    let mut replication_stream = Vec::new();
    let mut control_datagram = Vec::new();
    for (index, (kind, encoder)) in samples.iter().enumerate() {
        let meta = FrameMeta {
            request_id: RequestId(index as u64 + 1),
            epoch: Epoch(5),
        };
        let mut frame = Vec::new();
        encoder(&mut frame, meta).expect("samples are valid");
        std::fs::write(format!("corpus/frame_header/seed-{index}"), &frame)?;
        // The message target: the kind's index in MessageKind::ALL, then the body.
        let body_len = u32::from_le_bytes(frame[12..16].try_into().expect("4 bytes")) as usize;
        let selector = kinds::FUZZ_KINDS
            .iter()
            .position(|fuzzed| fuzzed == kind)
            .expect("every kind is in FUZZ_KINDS") as u8;
        let mut input = vec![selector];
        input.extend_from_slice(&frame[48..48 + body_len]);
        std::fs::write(format!("corpus/message/seed-{index}"), &input)?;
        match kind.channel() {
            ChannelKind::Handshake
                if handshake_stream.is_empty() && *kind == MessageKind::Hello =>
            {
                handshake_stream.extend_from_slice(&frame)
            }
            ChannelKind::Client => client_stream.extend_from_slice(&frame),
            ChannelKind::Replication => replication_stream.extend_from_slice(&frame),
            ChannelKind::Control if control_datagram.is_empty() => {
                control_datagram.extend_from_slice(&frame)
            }
            _ => {}
        }
    }
    // The decoder target: mode byte (channel = mode % 4), chunk size byte, stream. A client
    // connection from its hello (mode 0x80: handshake channel, then client), a client stream
    // alone (mode 1), a replication stream (mode 2) and a control datagram (mode 3).
    for (name, mode, chunk) in [
        ("hello-then-client", 0x80u8, 61u8),
        ("client", 1, 255),
        ("replication", 2, 97),
        ("control", 3, 200),
    ] {
        let mut input = vec![mode, chunk];
        match mode {
            0x80 => {
                input.extend_from_slice(&handshake_stream);
                input.extend_from_slice(&client_stream);
            }
            2 => input.extend_from_slice(&replication_stream),
            3 => input.extend_from_slice(&control_datagram),
            _ => input.extend_from_slice(&client_stream),
        }
        std::fs::write(format!("corpus/decoder_stream/seed-{name}"), &input)?;
    }
    Ok(())
}
