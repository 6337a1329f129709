//! What a shard does with one request: [`parse_request`] turns a decoded message into an owned
//! [`Request`] (routing it first: a key of a partition this shard does not own is answered
//! `WrongShard` before anything else), [`execute`] runs it against the shard's partitions,
//! [`map_engine_error`] turns an engine error into the wire's answer, and [`encode_answer`]
//! writes the answer as a frame. Only `execute` touches the engine; the rest is plain data, and
//! tested as such.
//!
//! **Where a request runs.** Keyed requests run on the shard that received them, on its own
//! partitions, with no cross-core hop (design.md section 6). Collection changes must reach
//! every partition of every shard; they are rare and not on the hot path, so the receiving
//! shard hands them to the engine's handle (`Engine::create_collection`), which sends one job
//! to each shard and waits for all: the one place a request crosses cores. Any shard may
//! receive them.

use bytes::Bytes;
use coregrid_engine::engine::partition_for_key;
use coregrid_engine::{
    BatchWrite, Engine, EngineError, LocalShard, RequestId as EngineRequestId, WriteOutcome,
};
use coregrid_net::message::{
    ArchivedBatchOperation, ArchivedReadConsistency, ArchivedWriteConsistency,
    ClusterStatusResponse, DeleteResponse, ErrorResponse, GetResponse, HelloReply, MessageRef,
    SnapshotOutcome, SnapshotResponse, SyncOutcome, SyncResponse, TopologyResponse,
    WriteConsistency, WriteResponse,
};
use coregrid_net::{encode, ClientRequestId, EncodeError, FrameMeta, Lsn, PartitionId, ShardId};
use std::sync::Arc;

/// Where partitions live on this node: what a shard needs to route a key and to redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    /// This shard.
    pub shard: usize,
    /// Shards of the node.
    pub shard_count: usize,
    /// Partitions of the node.
    pub partition_count: u32,
    /// Each shard's port, by shard.
    pub ports: Vec<u16>,
}

impl Routing {
    /// The shard that owns `partition` (the engine's placement: `partition % shards`).
    pub fn owner(&self, partition: u32) -> usize {
        partition as usize % self.shard_count
    }

    /// `partition` if this shard owns it, else the `WrongShard` redirect.
    pub fn route_partition(&self, partition: u32) -> Result<u32, ErrorResponse> {
        let owner = self.owner(partition);
        if owner == self.shard {
            return Ok(partition);
        }
        Err(ErrorResponse::WrongShard {
            partition: PartitionId(partition),
            shard: u16::try_from(owner).ok().map(ShardId),
            port: self.ports.get(owner).copied(),
        })
    }

    /// The key's partition if this shard owns it, else the `WrongShard` redirect.
    pub fn route(&self, key: &[u8]) -> Result<u32, ErrorResponse> {
        self.route_partition(partition_for_key(key, self.partition_count))
    }
}

/// A write's identity for retries, carried from the frame to [`execute`]'s one write path
/// ([`apply_write`]), which hands it to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteId(pub ClientRequestId);

/// A request, owned (its keys and values copied out of the frame once, into the `Bytes` the
/// engine keeps), routed to a partition of this shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read a key.
    Get {
        /// Its partition (on this shard).
        partition: u32,
        /// Collection.
        collection: String,
        /// Key.
        key: Bytes,
        /// Any replica may answer (`ReadConsistency::Any`), not only the leader.
        any_replica: bool,
    },
    /// A write to one partition.
    Write {
        /// The client's id for it.
        id: WriteId,
        /// Its partition (on this shard).
        partition: u32,
        /// How many replicas must hold it before the answer.
        consistency: WriteConsistency,
        /// What to write.
        write: Write,
    },
    /// Create or drop a collection on every partition of the node.
    Collection {
        /// The client's id for it.
        id: WriteId,
        /// The collection.
        name: String,
        /// Create (true) or drop.
        create: bool,
        /// How many replicas of each changed partition must hold it before the answer.
        consistency: WriteConsistency,
    },
    /// The node's topology.
    Topology,
    /// The node's view of the cluster.
    ClusterStatus,
}

/// A write to one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Set a key.
    Put {
        /// Collection.
        collection: String,
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// Remove a key.
    Delete {
        /// Collection.
        collection: String,
        /// Key.
        key: Bytes,
    },
    /// Set or remove a key if its revision is `expected_revision`.
    CompareAndSet {
        /// Collection.
        collection: String,
        /// Key.
        key: Bytes,
        /// The revision it must have (0: absent).
        expected_revision: u64,
        /// The new value; `None` removes.
        value: Option<Bytes>,
    },
    /// Several puts and deletes, atomically.
    Batch(Vec<BatchWrite>),
}

/// An answer, owned, waiting for the connection's writer to encode it. Values found by a get
/// are the index's own `Bytes` (shared, not copied) until then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The handshake's answer.
    Hello(HelloReply),
    /// A write applied.
    Write(WriteResponse),
    /// A get found the key.
    Found {
        /// The value.
        value: Bytes,
        /// Its revision.
        revision: u64,
        /// Its HLC timestamp.
        hlc: u64,
    },
    /// A get found nothing.
    NotFound,
    /// A delete's answer.
    Delete(DeleteResponse),
    /// The topology.
    Topology(Arc<TopologyResponse>),
    /// The node's view of the cluster.
    ClusterStatus(Arc<ClusterStatusResponse>),
    /// Any failure.
    Error(ErrorResponse),
    /// A leader's answer to a follower's sync request (on a replication connection).
    Sync(SyncResponse),
    /// A leader's answer to a follower's snapshot request (on a replication connection).
    Snapshot(SnapshotResponse),
}

impl Answer {
    /// The LSN of the record a write's answer reports (the one its replicas must hold), if
    /// it wrote one.
    pub fn written_lsn(&self) -> Option<u64> {
        match self {
            // A collection change is answered with revision 0: it names no one record.
            Answer::Write(written) if written.revision.0 > 0 => Some(written.revision.0),
            Answer::Delete(DeleteResponse::Deleted { revision, .. }) => Some(revision.0),
            _ => None,
        }
    }
}

/// Turns a decoded request into an owned, routed [`Request`], or the answer that refuses it.
/// Copies each key and value once; nothing else is allocated for a refused request.
pub fn parse_request(message: MessageRef<'_>, routing: &Routing) -> Result<Request, ErrorResponse> {
    let bytes = Bytes::copy_from_slice;
    Ok(match message {
        MessageRef::Get(get) => Request::Get {
            partition: routing.route(get.key.as_slice())?,
            collection: get.collection.as_str().to_string(),
            key: bytes(get.key.as_slice()),
            any_replica: get.consistency == ArchivedReadConsistency::Any,
        },
        MessageRef::Put(put) => Request::Write {
            id: WriteId(put.id.get()),
            partition: routing.route(put.key.as_slice())?,
            consistency: write_consistency(put.consistency),
            write: Write::Put {
                collection: put.collection.as_str().to_string(),
                key: bytes(put.key.as_slice()),
                value: bytes(put.value.as_slice()),
            },
        },
        MessageRef::Delete(delete) => Request::Write {
            id: WriteId(delete.id.get()),
            partition: routing.route(delete.key.as_slice())?,
            consistency: write_consistency(delete.consistency),
            write: Write::Delete {
                collection: delete.collection.as_str().to_string(),
                key: bytes(delete.key.as_slice()),
            },
        },
        MessageRef::CompareAndSet(cas) => Request::Write {
            id: WriteId(cas.id.get()),
            partition: routing.route(cas.key.as_slice())?,
            consistency: write_consistency(cas.consistency),
            write: Write::CompareAndSet {
                collection: cas.collection.as_str().to_string(),
                key: bytes(cas.key.as_slice()),
                expected_revision: cas.expected_revision.get().get(),
                value: cas.value.as_ref().map(|value| bytes(value.as_slice())),
            },
        },
        MessageRef::Batch(batch) => {
            let mut partition = None;
            for (index, operation) in batch.operations.iter().enumerate() {
                let (_, key, _) = operation.parts();
                let found = partition_for_key(key, routing.partition_count);
                match partition {
                    None => partition = Some((found, index)),
                    Some((first, first_index)) if first != found => {
                        return Err(ErrorResponse::invalid_request(format!(
                            "a batch must stay in one partition: operation {first_index} is in \
                             partition {first}, operation {index} in partition {found}"
                        )))
                    }
                    Some(_) => {}
                }
            }
            // The wire refuses an empty batch; route by its first key.
            let first_key = batch
                .operations
                .iter()
                .next()
                .map(|operation| operation.parts().1)
                .ok_or_else(|| ErrorResponse::invalid_request("an empty batch"))?;
            let partition = routing.route(first_key)?;
            let writes = batch
                .operations
                .iter()
                .map(|operation| match operation {
                    ArchivedBatchOperation::Put {
                        collection,
                        key,
                        value,
                    } => BatchWrite::Put {
                        collection: collection.as_str().to_string(),
                        key: bytes(key.as_slice()),
                        value: bytes(value.as_slice()),
                    },
                    ArchivedBatchOperation::Delete { collection, key } => BatchWrite::Delete {
                        collection: collection.as_str().to_string(),
                        key: bytes(key.as_slice()),
                    },
                })
                .collect();
            Request::Write {
                id: WriteId(batch.id.get()),
                partition,
                consistency: write_consistency(batch.consistency),
                write: Write::Batch(writes),
            }
        }
        MessageRef::CreateCollection(create) => Request::Collection {
            id: WriteId(create.id.get()),
            name: create.name.as_str().to_string(),
            create: true,
            consistency: write_consistency(create.consistency),
        },
        MessageRef::DropCollection(drop) => Request::Collection {
            id: WriteId(drop.id.get()),
            name: drop.name.as_str().to_string(),
            create: false,
            consistency: write_consistency(drop.consistency),
        },
        MessageRef::Topology(_) => Request::Topology,
        MessageRef::ClusterStatus(_) => Request::ClusterStatus,
        other => {
            return Err(ErrorResponse::invalid_request(format!(
                "{} is not a request a client may send on an open connection",
                other.kind()
            )))
        }
    })
}

/// The level a write asked for, owned.
fn write_consistency(level: ArchivedWriteConsistency) -> WriteConsistency {
    match level {
        ArchivedWriteConsistency::One => WriteConsistency::One,
        ArchivedWriteConsistency::Quorum => WriteConsistency::Quorum,
        ArchivedWriteConsistency::All => WriteConsistency::All,
    }
}

/// Where a collection change is written: the partitions this node leads, in their leadership
/// epoch. A partition this node follows gets the change from its leader's log, as it gets every
/// other record: a follower's log holds only its leaders' records (design.md section 6), so
/// that the logs of a partition's replicas differ only by where their epochs diverge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectionScope {
    /// The partitions this node leads.
    pub partitions: Vec<u32>,
    /// The map's epoch: a partition begins it first if it has not yet.
    pub epoch: u64,
}

/// What a collection change did in the partitions of its scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectionChange {
    /// Per partition, the LSN its followers must hold for the change to be replicated: the
    /// change's record, or, where the collection already was as asked, the partition's last
    /// staged record (the earlier change that made it so is at or before it: a retry must not
    /// be answered before that one is replicated either).
    pub replicate_to: Vec<(u32, u64)>,
    /// Whether any partition changed.
    pub changed: bool,
}

/// Creates or drops `name` in every partition of `scope`, each beginning the scope's epoch
/// first. `CollectionExists` (`NoSuchCollection`) if no partition changed and there was one to
/// change; a node that leads no partition changes nothing and says so with `Ok`. The caller
/// waits for [`CollectionChange::replicate_to`] either way.
pub async fn change_collection(
    engine: &Engine,
    name: &str,
    create: bool,
    scope: &CollectionScope,
) -> Result<CollectionChange, EngineError> {
    let epoch = scope.epoch;
    let changes = scope.partitions.iter().map(|&partition| {
        let name = name.to_string();
        engine.on_partition(partition, move |partition| async move {
            if partition.epoch() < epoch {
                // A concurrent start of the same epoch (the shard's follower task) fails
                // harmlessly; the check below decides.
                let _ = partition.begin_epoch(epoch).await;
            }
            if partition.epoch() < epoch {
                return Err(EngineError::InvalidRequest(format!(
                    "partition {} cannot begin epoch {epoch}",
                    partition.id()
                )));
            }
            let changed = if create {
                partition.create_collection(&name).await
            } else {
                partition.drop_collection(&name).await
            };
            match changed {
                Ok(lsn) => Ok((partition.id(), lsn, true)),
                Err(EngineError::CollectionExists(_)) | Err(EngineError::NoSuchCollection(_)) => {
                    Ok((partition.id(), partition.staged_lsn(), false))
                }
                Err(error) => Err(error),
            }
        })
    });
    let outcomes = futures::future::try_join_all(changes).await?;
    let change = CollectionChange {
        changed: outcomes.is_empty() || outcomes.iter().any(|&(_, _, changed)| changed),
        replicate_to: outcomes
            .into_iter()
            .map(|(partition, lsn, _)| (partition, lsn))
            .collect(),
    };
    Ok(change)
}

/// The refusal of a collection change that changed nothing.
pub fn collection_unchanged(name: &str, create: bool) -> ErrorResponse {
    map_engine_error(
        if create {
            EngineError::CollectionExists(name.to_string())
        } else {
            EngineError::NoSuchCollection(name.to_string())
        },
        true,
    )
}

/// Runs `request` on this shard. `engine` is the node's engine handle, for collection changes
/// only (`None` once the node is shutting down), which `scope` confines to the partitions this
/// node leads.
pub async fn execute(
    request: Request,
    shard: &LocalShard,
    engine: Option<Engine>,
    topology: &Arc<TopologyResponse>,
    scope: &CollectionScope,
) -> Answer {
    match request {
        Request::Topology => Answer::Topology(topology.clone()),
        // Answered by the server from its cluster view, never run on partitions.
        Request::ClusterStatus => Answer::Error(ErrorResponse::unavailable(
            "cluster status is answered by the shard's server",
        )),
        Request::Get {
            partition,
            collection,
            key,
            ..
        } => {
            let Some(partition) = shard.partition(partition) else {
                return Answer::Error(not_on_shard(partition));
            };
            match partition.get(&collection, &key).await {
                Ok(Some(found)) => Answer::Found {
                    value: found.value,
                    revision: found.revision,
                    hlc: found.hlc,
                },
                Ok(None) => Answer::NotFound,
                Err(error) => Answer::Error(map_engine_error(error, false)),
            }
        }
        Request::Write {
            id,
            partition,
            write,
            ..
        } => apply_write(shard, id, partition, write)
            .await
            .unwrap_or_else(|error| Answer::Error(map_engine_error(error, true))),
        Request::Collection { name, create, .. } => {
            let Some(engine) = engine else {
                return Answer::Error(ErrorResponse::ShuttingDown);
            };
            match change_collection(&engine, &name, create, scope).await {
                Ok(change) if change.changed => collection_changed(),
                Ok(_) => Answer::Error(collection_unchanged(&name, create)),
                Err(error) => Answer::Error(map_engine_error(error, true)),
            }
        }
    }
}

/// The answer to a collection change: applied in every partition, each at its own LSN, so no
/// one revision names it.
pub fn collection_changed() -> Answer {
    Answer::Write(WriteResponse {
        revision: Lsn(0),
        hlc: 0,
    })
}

/// The one path of every keyed write: where its [`WriteId`] meets the partition. The engine
/// remembers the ids it applied, so a retry of an applied write is answered with the first
/// attempt's outcome and applied nothing (`RequestTooOld` past the client's window).
async fn apply_write(
    shard: &LocalShard,
    id: WriteId,
    partition_id: u32,
    write: Write,
) -> Result<Answer, EngineError> {
    let WriteId(client_request_id) = id;
    let request = Some(EngineRequestId {
        client: client_request_id.client.get(),
        sequence: client_request_id.sequence,
    });
    let Some(partition) = shard.partition(partition_id) else {
        return Ok(Answer::Error(not_on_shard(partition_id)));
    };
    let written = |outcome: WriteOutcome| {
        Answer::Write(WriteResponse {
            revision: Lsn(outcome.revision),
            hlc: outcome.hlc,
        })
    };
    Ok(match write {
        Write::Put {
            collection,
            key,
            value,
        } => written(partition.put_with(&collection, key, value, request).await?),
        Write::CompareAndSet {
            collection,
            key,
            expected_revision,
            value,
        } => match partition
            .compare_and_set_with(&collection, key, expected_revision, value, request)
            .await?
        {
            Ok(outcome) => written(outcome),
            Err(mismatch) => Answer::Error(ErrorResponse::CasMismatch {
                current_revision: Lsn(mismatch.current_revision),
            }),
        },
        Write::Batch(writes) => written(partition.batch_with(&writes, request).await?),
        Write::Delete { collection, key } => {
            match partition.delete_with(&collection, &key, request).await? {
                None => Answer::Delete(DeleteResponse::Absent),
                // A retry of an applied delete: the engine keeps its outcome, not the prior
                // revision, which is then reported as 0.
                Some(outcome) => Answer::Delete(DeleteResponse::Deleted {
                    previous_revision: Lsn(outcome.previous_revision.unwrap_or(0)),
                    revision: Lsn(outcome.revision),
                    hlc: outcome.hlc,
                }),
            }
        }
    })
}

/// A partition routed here is not among the shard's: the routing and the engine disagree.
fn not_on_shard(partition: u32) -> ErrorResponse {
    ErrorResponse::unavailable(format!("partition {partition} is not open on this shard"))
}

/// The wire's answer for an engine error. `write`: the request was a write, for which a
/// poisoned shard leaves the outcome open (a write in flight when the WAL failed may or may
/// not be on disk).
pub fn map_engine_error(error: EngineError, write: bool) -> ErrorResponse {
    match error {
        EngineError::InvalidRequest(reason) => ErrorResponse::invalid_request(reason),
        EngineError::NoSuchCollection(name) => ErrorResponse::CollectionNotFound { name },
        EngineError::CollectionExists(name) => ErrorResponse::CollectionExists { name },
        EngineError::ShuttingDown => ErrorResponse::ShuttingDown,
        EngineError::WritesRefused(reason) => ErrorResponse::unavailable(reason),
        error @ EngineError::RequestTooOld { .. } => ErrorResponse::unknown(error.to_string()),
        error @ EngineError::Poisoned { .. } if write => ErrorResponse::unknown(format!(
            "{error}; the write may or may not have been applied"
        )),
        other => ErrorResponse::unavailable(other.to_string()),
    }
}

/// Appends `answer` as the frame answering `request_id`. An answer that cannot be encoded
/// (which the limits make impossible, but is never assumed) is replaced by an error saying so.
pub fn encode_answer(
    out: &mut Vec<u8>,
    meta: FrameMeta,
    answer: &Answer,
) -> Result<(), EncodeError> {
    let encoded = match answer {
        Answer::Hello(reply) => encode(out, meta, reply),
        Answer::Write(write) => encode(out, meta, write),
        Answer::Found {
            value,
            revision,
            hlc,
        } => encode(
            out,
            meta,
            &GetResponse::Found {
                value: value.to_vec(),
                revision: Lsn(*revision),
                hlc: *hlc,
            },
        ),
        Answer::NotFound => encode(out, meta, &GetResponse::NotFound),
        Answer::Delete(delete) => encode(out, meta, delete),
        Answer::Topology(topology) => encode(out, meta, topology.as_ref()),
        Answer::ClusterStatus(status) => encode(out, meta, status.as_ref()),
        Answer::Error(error) => encode(out, meta, error),
        Answer::Sync(response) => encode(out, meta, response),
        Answer::Snapshot(response) => encode(out, meta, response),
    };
    let Err(error) = encoded else {
        return Ok(());
    };
    tracing::warn!(%error, "an answer could not be encoded; answering with an error instead");
    let refusal = ErrorResponse::unavailable(format!("the answer could not be encoded: {error}"));
    // The error travels as the channel allows: a replication channel carries only sync and
    // snapshot answers.
    match answer {
        Answer::Sync(response) => encode(
            out,
            meta,
            &SyncResponse {
                outcome: SyncOutcome::Refused(refusal),
                ..response.clone()
            },
        ),
        Answer::Snapshot(response) => encode(
            out,
            meta,
            &SnapshotResponse {
                partition: response.partition,
                map_epoch: response.map_epoch,
                outcome: SnapshotOutcome::Refused(refusal),
            },
        ),
        _ => encode(out, meta, &refusal),
    }
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coregrid_net::message::{BatchOperation, BatchRequest, GetRequest, ReadConsistency};
    use coregrid_net::rkyv::util::AlignedVec;
    use coregrid_net::{decode, parse_frame, ChannelKind, ClientId};

    fn routing(shard: usize) -> Routing {
        Routing {
            shard,
            shard_count: 2,
            partition_count: 8,
            ports: vec![7400, 7401],
        }
    }

    /// Encodes `message` and parses it back as the server would (aligned buffer, decode).
    fn parsed<M: coregrid_net::Message>(
        message: &M,
        routing: &Routing,
    ) -> Result<Request, ErrorResponse> {
        let mut out = Vec::new();
        encode(&mut out, FrameMeta::default(), message).unwrap();
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&out);
        let (frame, _) = parse_frame(&aligned, ChannelKind::Client).unwrap().unwrap();
        parse_request(decode(&frame).unwrap(), routing)
    }

    /// A key whose partition (of 8) lives on `shard` (of 2).
    fn key_on(shard: usize) -> Vec<u8> {
        (0u32..)
            .map(|n| n.to_le_bytes().to_vec())
            .find(|key| partition_for_key(key, 8) as usize % 2 == shard)
            .unwrap()
    }

    #[test]
    fn engine_errors_map_to_the_wire_answers() {
        let map = map_engine_error;
        assert_eq!(
            map(EngineError::NoSuchCollection("c".into()), true),
            ErrorResponse::CollectionNotFound { name: "c".into() }
        );
        assert_eq!(
            map(EngineError::CollectionExists("c".into()), true),
            ErrorResponse::CollectionExists { name: "c".into() }
        );
        assert_eq!(
            map(EngineError::ShuttingDown, false),
            ErrorResponse::ShuttingDown
        );
        assert!(matches!(
            map(EngineError::InvalidRequest("bad".into()), true),
            ErrorResponse::InvalidRequest { reason } if reason.contains("bad")
        ));
        let poisoned = || EngineError::Poisoned {
            shard: 1,
            reason: "fdatasync failed".into(),
        };
        assert!(matches!(
            map(poisoned(), true),
            ErrorResponse::Unknown { .. }
        ));
        assert!(matches!(
            map(poisoned(), false),
            ErrorResponse::Unavailable { .. }
        ));
        assert!(matches!(
            map(EngineError::Config("x".repeat(5000)), false),
            ErrorResponse::Unavailable { reason } if reason.len() <= coregrid_net::constants::REASON_BYTES_MAX
        ));
    }

    #[test]
    fn keys_of_another_shard_are_redirected_with_its_port() {
        let get = |key: Vec<u8>| GetRequest {
            consistency: ReadConsistency::Leader,
            collection: "c".into(),
            key,
        };
        let here = key_on(0);
        assert!(matches!(
            parsed(&get(here.clone()), &routing(0)),
            Ok(Request::Get { partition, .. }) if partition == partition_for_key(&here, 8)
        ));
        let there = key_on(1);
        let partition = partition_for_key(&there, 8);
        assert_eq!(
            parsed(&get(there), &routing(0)),
            Err(ErrorResponse::WrongShard {
                partition: PartitionId(partition),
                shard: Some(ShardId(1)),
                port: Some(7401),
            })
        );
    }

    #[test]
    fn a_batch_across_partitions_is_refused() {
        let key_a = key_on(0);
        let partition_a = partition_for_key(&key_a, 8);
        let key_b = (0u32..)
            .map(|n| n.to_be_bytes().to_vec())
            .find(|key| partition_for_key(key, 8) != partition_a)
            .unwrap();
        let batch = |keys: Vec<Vec<u8>>| BatchRequest {
            id: ClientRequestId {
                client: ClientId(1),
                sequence: 1,
            },
            consistency: WriteConsistency::One,
            operations: keys
                .into_iter()
                .map(|key| BatchOperation::Delete {
                    collection: "c".into(),
                    key,
                })
                .collect(),
        };
        assert!(matches!(
            parsed(&batch(vec![key_a.clone(), key_b]), &routing(0)),
            Err(ErrorResponse::InvalidRequest { reason }) if reason.contains("one partition")
        ));
        assert!(matches!(
            parsed(&batch(vec![key_a.clone(), key_a]), &routing(0)),
            Ok(Request::Write { write: Write::Batch(writes), .. }) if writes.len() == 2
        ));
    }

    #[test]
    fn answers_a_response_kind_sent_as_a_request_with_an_error() {
        let answer = parsed(
            &WriteResponse {
                revision: Lsn(1),
                hlc: 0,
            },
            &routing(0),
        );
        assert!(matches!(answer, Err(ErrorResponse::InvalidRequest { .. })));
    }
}
