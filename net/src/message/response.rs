//! Answers to client requests. Each carries its request's request id in the frame header; a
//! failed request of any kind is answered with an [`ErrorResponse`].

use crate::constants::{REASON_BYTES_MAX, REPLICAS_PER_PARTITION_MAX};
use crate::error::DecodeError;
use crate::ids::{Epoch, Lsn, NodeId, PartitionId, ShardId, Term};
use crate::message::request::validate_both;
use crate::validate::{
    check_collection_name, check_gossip_address, check_members, check_partition_count,
    check_partition_list_len, check_partitions, check_reason, check_replicas, check_shard_count,
    check_value, Limit, Validate, Violation,
};
use rkyv::{Archive, Deserialize, Serialize};
use std::fmt;

/// A write was applied: a put, a compare-and-set whose expectation held, a batch, or a
/// collection created or dropped. Sent once the write is as durable as its consistency asked.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WriteResponse {
    /// The write's revision: the LSN of its WAL record in the partition.
    pub revision: Lsn,
    /// The write's HLC timestamp.
    pub hlc: u64,
}

/// The answer to a get.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum GetResponse {
    /// The key's latest value.
    Found {
        /// The value.
        value: Vec<u8>,
        /// The key's revision (LSN of the write that set it).
        revision: Lsn,
        /// That write's HLC timestamp.
        hlc: u64,
    },
    /// The key is absent (never written, or deleted).
    NotFound,
}

/// The answer to a delete.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum DeleteResponse {
    /// The key was there and is removed.
    Deleted {
        /// The revision the key had.
        previous_revision: Lsn,
        /// The delete's own revision (LSN of its WAL record).
        revision: Lsn,
        /// The delete's HLC timestamp.
        hlc: u64,
    },
    /// The key was absent; nothing was written.
    Absent,
}

/// One data shard of a node, as a topology answer lists it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ShardTopology {
    /// The shard.
    pub shard: ShardId,
    /// The TCP port it listens on, on the node's address.
    pub port: u16,
    /// The partitions pinned to it, strictly increasing.
    pub partitions: Vec<PartitionId>,
}

/// A node's topology: which shard (port) serves which partitions, so a client sends each
/// request straight to the shard that owns its key's partition (design.md section 6).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TopologyResponse {
    /// The node that answered.
    pub node: NodeId,
    /// The leadership-map epoch the answer is from.
    pub epoch: Epoch,
    /// How many partitions the key space is split into.
    pub partition_count: u32,
    /// The node's data shards.
    pub shards: Vec<ShardTopology>,
}

/// A node's part in the control plane's election (design.md section 6, "Control"), as a
/// cluster status reports it. Mirrors the cluster crate's `Role`; net does not depend on that
/// crate, so the node converts.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
#[repr(u8)]
pub enum ControlRole {
    /// Follows the known controller, if any.
    Follower,
    /// Trying to become the controller (an election round is under way).
    Candidate,
    /// The controller of the current term: proposes and publishes leadership maps.
    Controller,
}

impl fmt::Display for ControlRole {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ControlRole::Follower => "follower",
            ControlRole::Candidate => "candidate",
            ControlRole::Controller => "controller",
        })
    }
}

/// A member's node state (design.md section 3), as a cluster status reports it. Mirrors the
/// cluster crate's `NodeState`, in the same order, with the same lowercase names.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
#[repr(u8)]
pub enum MemberState {
    /// Known but not yet a full member.
    Joining,
    /// A member, catching up on the partitions it replicates; may hold "paper" leadership
    /// but takes no writes.
    JoinedSyncing,
    /// A full member, caught up.
    Joined,
    /// Leaving the cluster on purpose; takes no new leadership.
    Leaving,
    /// Declared dead by the failure detector.
    Dead,
}

impl fmt::Display for MemberState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            MemberState::Joining => "joining",
            MemberState::JoinedSyncing => "joined-syncing",
            MemberState::Joined => "joined",
            MemberState::Leaving => "leaving",
            MemberState::Dead => "dead",
        })
    }
}

/// One member of the cluster as the answering node sees it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MemberStatus {
    /// The member.
    pub node: NodeId,
    /// Its node state.
    pub state: MemberState,
    /// Whether the failure detector suspects it now (it missed probes but is not yet
    /// declared dead): a suspected member may be about to go `Dead`.
    pub suspected: bool,
    /// Whether it is one of the configured voters that elect the controller.
    pub voter: bool,
    /// Where it receives gossip datagrams, `ip:port` (at most `GOSSIP_ADDRESS_BYTES_MAX`
    /// bytes); empty if not known.
    pub gossip_address: String,
    /// Where its data shard 0 serves clients and replicas (the address it gossips), `ip:port`
    /// (the same limit); empty if not known.
    pub data_address: String,
}

/// One partition of the leadership map the answering node holds.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PartitionStatus {
    /// The partition's leader in the map's epoch; `None` when no replica may lead (the
    /// partition takes no writes until a later map names one).
    pub leader: Option<NodeId>,
    /// The nodes holding a replica, the leader among them (at most
    /// `REPLICAS_PER_PARTITION_MAX`).
    pub replicas: Vec<NodeId>,
}

/// What the answering node knows of the control plane: its election state, the members it
/// sees, and the leadership map its data shards hold. A snapshot of one node's view, not the
/// cluster's agreed truth: two nodes may answer differently while gossip or a new map spreads.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ClusterStatusResponse {
    /// The node that answered.
    pub node: NodeId,
    /// Its current control-plane term.
    pub term: Term,
    /// Its role in that term.
    pub role: ControlRole,
    /// The controller it knows of in that term, if any.
    pub controller: Option<NodeId>,
    /// Epoch of the leadership map its data shards hold (0: none yet).
    pub epoch: Epoch,
    /// Whether it holds the write lease: it has heard a majority of voters within the election
    /// timeout. Without it, the partitions it leads refuse writes (it may be cut off on a
    /// minority side).
    pub lease: bool,
    /// Every member it knows, sorted by node id, itself included (at most
    /// `CLUSTER_MEMBERS_MAX`).
    pub members: Vec<MemberStatus>,
    /// The map's partitions: index = partition id (at most `PARTITIONS_MAX`); empty before
    /// the first map.
    pub partitions: Vec<PartitionStatus>,
}

/// Why a request failed. Each variant says whether the request may have been applied: only
/// [`ErrorResponse::Unknown`] leaves that open; every other one means nothing was changed.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[rkyv(derive(Debug))]
pub enum ErrorResponse {
    /// This node does not lead the key's partition in its current epoch (or is not `Joined`).
    /// Nothing was changed; retry on `leader` (refresh the topology first if `epoch` is newer
    /// than the client's).
    #[error("not the leader (epoch {epoch}); leader: {}", display_option(leader))]
    NotLeader {
        /// The leader, if this node knows it.
        leader: Option<NodeId>,
        /// This node's epoch.
        epoch: Epoch,
    },
    /// The key's partition is not served by this shard. Nothing was changed; resend to the
    /// shard (port) named, if known, else refresh the topology.
    #[error(
        "partition {partition} is not served here; shard: {}, port: {}",
        display_option(shard),
        display_option(port)
    )]
    WrongShard {
        /// The key's partition.
        partition: PartitionId,
        /// The shard of this node that serves it, if any.
        shard: Option<ShardId>,
        /// That shard's port, if any.
        port: Option<u16>,
    },
    /// Too few replicas are in sync to meet the requested write consistency; the write was
    /// refused up front, not downgraded. Nothing was changed.
    #[error("not enough replicas in sync: {needed} needed, {available} available")]
    NotEnoughReplicas {
        /// Replicas the consistency level needs.
        needed: u32,
        /// Replicas in sync now.
        available: u32,
    },
    /// The outcome is unknown: the write may or may not have been applied (its wait for
    /// replicas timed out, or its leader lost the epoch meanwhile). Retry with the same client
    /// request id: it is never applied twice.
    #[error("outcome unknown: {reason}")]
    Unknown {
        /// What happened.
        reason: String,
    },
    /// The request is malformed or breaks a rule. Nothing was changed.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// A field or count is over its limit. Nothing was changed.
    #[error("too large: {size} {what} over the limit of {limit}")]
    TooLarge {
        /// Which limit.
        what: Limit,
        /// The size or count found.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The node or shard is shutting down; the request was not executed. Nothing was changed.
    #[error("shutting down")]
    ShuttingDown,
    /// A compare-and-set's expected revision did not hold. Nothing was changed.
    #[error("compare-and-set mismatch: the key's revision is {current_revision}")]
    CasMismatch {
        /// The key's current revision (0: absent).
        current_revision: Lsn,
    },
    /// The collection does not exist. Nothing was changed.
    #[error("no such collection: {name:?}")]
    CollectionNotFound {
        /// The collection's name.
        name: String,
    },
    /// The collection already exists. Nothing was changed.
    #[error("collection already exists: {name:?}")]
    CollectionExists {
        /// The collection's name.
        name: String,
    },
    /// The shard cannot serve the request now (its WAL failed and it is poisoned, the replica
    /// is still catching up, the node is overloaded). Nothing was changed; retry elsewhere or
    /// later.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

fn display_option<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "unknown".to_string(), ToString::to_string)
}

/// Cuts `reason` to at most [`REASON_BYTES_MAX`] bytes at a character boundary, so that an
/// error built from any text can always be sent.
pub fn truncate_reason(reason: impl Into<String>) -> String {
    let mut reason = reason.into();
    if reason.len() > REASON_BYTES_MAX {
        let mut end = REASON_BYTES_MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

impl ErrorResponse {
    /// `InvalidRequest` with `reason` cut to fit.
    pub fn invalid_request(reason: impl Into<String>) -> ErrorResponse {
        ErrorResponse::InvalidRequest {
            reason: truncate_reason(reason),
        }
    }

    /// `Unknown` with `reason` cut to fit.
    pub fn unknown(reason: impl Into<String>) -> ErrorResponse {
        ErrorResponse::Unknown {
            reason: truncate_reason(reason),
        }
    }

    /// `Unavailable` with `reason` cut to fit.
    pub fn unavailable(reason: impl Into<String>) -> ErrorResponse {
        ErrorResponse::Unavailable {
            reason: truncate_reason(reason),
        }
    }

    /// The answer a server sends for a request whose body it could not accept: `TooLarge` for
    /// a broken limit, `InvalidRequest` for anything else.
    pub fn from_decode_error(error: &DecodeError) -> ErrorResponse {
        match error {
            DecodeError::Invalid { violation, .. } => ErrorResponse::from(violation.clone()),
            other => ErrorResponse::invalid_request(other.to_string()),
        }
    }
}

impl From<Violation> for ErrorResponse {
    fn from(violation: Violation) -> ErrorResponse {
        match violation {
            Violation::TooLarge { what, size, limit } => {
                ErrorResponse::TooLarge { what, size, limit }
            }
            Violation::Invalid(reason) => ErrorResponse::invalid_request(reason),
        }
    }
}

impl TopologyResponse {
    fn partitions_total(&self) -> u32 {
        self.partition_count
    }
}

impl ArchivedTopologyResponse {
    fn partitions_total(&self) -> u32 {
        self.partition_count.to_native()
    }
}

impl ShardTopology {
    fn partition_iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.partitions.iter().map(|partition| partition.get())
    }
}

impl ArchivedShardTopology {
    fn partition_iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.partitions
            .iter()
            .map(|partition| partition.get().get())
    }
}

impl ErrorResponse {
    fn reason(&self) -> Option<&str> {
        match self {
            ErrorResponse::Unknown { reason }
            | ErrorResponse::InvalidRequest { reason }
            | ErrorResponse::Unavailable { reason } => Some(reason),
            _ => None,
        }
    }
    fn collection_name(&self) -> Option<&str> {
        match self {
            ErrorResponse::CollectionNotFound { name }
            | ErrorResponse::CollectionExists { name } => Some(name),
            _ => None,
        }
    }
}

impl ArchivedErrorResponse {
    fn reason(&self) -> Option<&str> {
        match self {
            ArchivedErrorResponse::Unknown { reason }
            | ArchivedErrorResponse::InvalidRequest { reason }
            | ArchivedErrorResponse::Unavailable { reason } => Some(reason.as_str()),
            _ => None,
        }
    }
    fn collection_name(&self) -> Option<&str> {
        match self {
            ArchivedErrorResponse::CollectionNotFound { name }
            | ArchivedErrorResponse::CollectionExists { name } => Some(name.as_str()),
            _ => None,
        }
    }
}

impl GetResponse {
    fn value(&self) -> Option<&[u8]> {
        match self {
            GetResponse::Found { value, .. } => Some(value),
            GetResponse::NotFound => None,
        }
    }
}

impl ArchivedGetResponse {
    fn value(&self) -> Option<&[u8]> {
        match self {
            ArchivedGetResponse::Found { value, .. } => Some(value.as_slice()),
            ArchivedGetResponse::NotFound => None,
        }
    }
}

validate_both!(WriteResponse, ArchivedWriteResponse, |_this| { Ok(()) });

validate_both!(DeleteResponse, ArchivedDeleteResponse, |_this| { Ok(()) });

validate_both!(GetResponse, ArchivedGetResponse, |this| {
    match this.value() {
        Some(value) => check_value(value),
        None => Ok(()),
    }
});

validate_both!(TopologyResponse, ArchivedTopologyResponse, |this| {
    let partition_count = this.partitions_total();
    check_partition_count(partition_count)?;
    check_shard_count(this.shards.len())?;
    for shard in this.shards.iter() {
        check_partitions(shard.partition_iter(), partition_count)?;
    }
    Ok(())
});

impl MemberStatus {
    fn node_id(&self) -> NodeId {
        self.node
    }
    fn addresses(&self) -> [&str; 2] {
        [&self.gossip_address, &self.data_address]
    }
}

#[cfg(test)]
impl MemberStatus {
    /// A joined, unsuspected voter serving clients at `data_address` (test fixtures).
    pub(crate) fn joined(node: u64, data_address: &str) -> MemberStatus {
        MemberStatus {
            node: NodeId(node),
            state: MemberState::Joined,
            suspected: false,
            voter: true,
            gossip_address: "127.0.0.1:7300".into(),
            data_address: data_address.into(),
        }
    }
}

impl ArchivedMemberStatus {
    fn node_id(&self) -> NodeId {
        self.node.get()
    }
    fn addresses(&self) -> [&str; 2] {
        [self.gossip_address.as_str(), self.data_address.as_str()]
    }
}

impl PartitionStatus {
    fn leader_id(&self) -> Option<NodeId> {
        self.leader
    }
    fn replica_ids(&self) -> impl ExactSizeIterator<Item = NodeId> + '_ {
        self.replicas.iter().copied()
    }
}

impl ArchivedPartitionStatus {
    fn leader_id(&self) -> Option<NodeId> {
        self.leader.as_ref().map(|leader| leader.get())
    }
    fn replica_ids(&self) -> impl ExactSizeIterator<Item = NodeId> + '_ {
        self.replicas.iter().map(|replica| replica.get())
    }
}

/// One partition's rules, on either form: the replica count before the replicas are looked
/// at, then copied to the stack (at most a handful) to check them without allocating.
fn check_partition_status(
    partition: usize,
    leader: Option<NodeId>,
    replicas: impl ExactSizeIterator<Item = NodeId>,
) -> Result<(), Violation> {
    let count = replicas.len();
    if count > REPLICAS_PER_PARTITION_MAX {
        return Err(Violation::TooLarge {
            what: Limit::Replicas,
            size: count as u64,
            limit: REPLICAS_PER_PARTITION_MAX as u64,
        });
    }
    let mut buffer = [NodeId(0); REPLICAS_PER_PARTITION_MAX];
    for (slot, replica) in buffer.iter_mut().zip(replicas) {
        *slot = replica;
    }
    check_replicas(partition, leader, &buffer[..count])
}

validate_both!(
    ClusterStatusResponse,
    ArchivedClusterStatusResponse,
    |this| {
        // Counts first: a list of a million is refused before one entry is looked at.
        check_partition_list_len(this.partitions.len())?;
        check_members(
            this.members.len(),
            this.members.iter().map(|member| member.node_id()),
        )?;
        for member in this.members.iter() {
            for address in member.addresses() {
                check_gossip_address(address)?;
            }
        }
        for (index, partition) in this.partitions.iter().enumerate() {
            check_partition_status(index, partition.leader_id(), partition.replica_ids())?;
        }
        Ok(())
    }
);

validate_both!(ErrorResponse, ArchivedErrorResponse, |this| {
    if let Some(reason) = this.reason() {
        check_reason(reason)?;
    }
    if let Some(name) = this.collection_name() {
        // The name echoes the request's, which met the same rule.
        check_collection_name(name)?;
    }
    Ok(())
});
