//! The protocol's rules on message content (sizes, counts, names), checked on the archived
//! form by the receiver before anything is allocated or applied, and on the native form by the
//! sender before anything is written (style.md rule 6: check where produced and where
//! consumed). Both forms go through the same small checks below, written once.

use crate::constants::{
    BATCH_BYTES_MAX, BATCH_DELETE_ENGINE_OVERHEAD_BYTES, BATCH_ENGINE_OVERHEAD_BYTES,
    BATCH_OPERATIONS_MAX, BATCH_PUT_ENGINE_OVERHEAD_BYTES, CLUSTER_MEMBERS_MAX,
    COLLECTION_NAME_BYTES_MAX, GOSSIP_ADDRESS_BYTES_MAX, KEY_BYTES_MAX, PARTITIONS_MAX,
    REASON_BYTES_MAX, REPLICAS_PER_PARTITION_MAX, SHARDS_PER_NODE_MAX, VALUE_BYTES_MAX,
};
use crate::ids::NodeId;
use rkyv::{Archive, Deserialize, Serialize};
use std::fmt;

/// Which limit a message broke; carried in [`crate::message::ErrorResponse::TooLarge`].
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
#[repr(u8)]
pub enum Limit {
    /// [`crate::constants::KEY_BYTES_MAX`].
    KeyBytes,
    /// [`crate::constants::VALUE_BYTES_MAX`].
    ValueBytes,
    /// [`crate::constants::COLLECTION_NAME_BYTES_MAX`].
    CollectionNameBytes,
    /// [`crate::constants::BATCH_OPERATIONS_MAX`].
    BatchOperations,
    /// [`crate::constants::BATCH_BYTES_MAX`].
    BatchBytes,
    /// [`crate::constants::REASON_BYTES_MAX`].
    ReasonBytes,
    /// [`crate::constants::SHARDS_PER_NODE_MAX`].
    Shards,
    /// [`crate::constants::PARTITIONS_MAX`].
    Partitions,
    /// A channel's frame body limit.
    FrameBodyBytes,
    /// [`crate::constants::CLUSTER_MEMBERS_MAX`].
    Members,
    /// [`crate::constants::REPLICAS_PER_PARTITION_MAX`].
    Replicas,
    /// [`crate::constants::GOSSIP_ADDRESS_BYTES_MAX`].
    AddressBytes,
    /// [`crate::constants::SYNC_RECORD_BYTES_MAX`].
    SyncBytes,
    /// [`crate::constants::SYNC_WAIT_MS_MAX`].
    SyncWaitMs,
    /// [`crate::constants::EPOCH_HISTORY_ENTRIES_MAX`].
    EpochHistoryEntries,
}

impl Limit {
    /// What the limit bounds, for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            Limit::KeyBytes => "key bytes",
            Limit::ValueBytes => "value bytes",
            Limit::CollectionNameBytes => "collection name bytes",
            Limit::BatchOperations => "batch operations",
            Limit::BatchBytes => "batch bytes",
            Limit::ReasonBytes => "reason bytes",
            Limit::Shards => "shards",
            Limit::Partitions => "partitions",
            Limit::FrameBodyBytes => "frame body bytes",
            Limit::Members => "cluster members",
            Limit::Replicas => "replicas of a partition",
            Limit::AddressBytes => "address bytes",
            Limit::SyncBytes => "bytes of records in one sync",
            Limit::SyncWaitMs => "milliseconds of a sync's long poll",
            Limit::EpochHistoryEntries => "epochs in an epoch history",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.describe())
    }
}

/// A rule of the protocol a message broke. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A field or count is over its limit.
    #[error("{size} {what} is over the limit of {limit}")]
    TooLarge {
        /// Which limit.
        what: Limit,
        /// The size or count found.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Anything else: an empty key, an empty batch, a control character in a name, partitions
    /// out of order. The text says which.
    #[error("{0}")]
    Invalid(String),
}

fn too_large(what: Limit, size: usize, limit: usize) -> Violation {
    Violation::TooLarge {
        what,
        size: size as u64,
        limit: limit as u64,
    }
}

/// A key: 1..=[`KEY_BYTES_MAX`] bytes.
pub fn check_key(key: &[u8]) -> Result<(), Violation> {
    if key.is_empty() {
        return Err(Violation::Invalid("the key is empty".into()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(too_large(Limit::KeyBytes, key.len(), KEY_BYTES_MAX));
    }
    Ok(())
}

/// A value: at most [`VALUE_BYTES_MAX`] bytes (empty is allowed).
pub fn check_value(value: &[u8]) -> Result<(), Violation> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(too_large(Limit::ValueBytes, value.len(), VALUE_BYTES_MAX));
    }
    Ok(())
}

/// A collection name: 1..=[`COLLECTION_NAME_BYTES_MAX`] bytes of UTF-8 without control
/// characters (the engine's rule).
pub fn check_collection_name(name: &str) -> Result<(), Violation> {
    if name.is_empty() {
        return Err(Violation::Invalid("the collection name is empty".into()));
    }
    if name.len() > COLLECTION_NAME_BYTES_MAX {
        return Err(too_large(
            Limit::CollectionNameBytes,
            name.len(),
            COLLECTION_NAME_BYTES_MAX,
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Violation::Invalid(
            "the collection name has a control character".into(),
        ));
    }
    Ok(())
}

/// A reason text: at most [`REASON_BYTES_MAX`] bytes.
pub fn check_reason(reason: &str) -> Result<(), Violation> {
    if reason.len() > REASON_BYTES_MAX {
        return Err(too_large(
            Limit::ReasonBytes,
            reason.len(),
            REASON_BYTES_MAX,
        ));
    }
    Ok(())
}

/// A batch's operation count: 1..=[`BATCH_OPERATIONS_MAX`]. Checked before the operations are
/// looked at.
pub fn check_batch_len(operations: usize) -> Result<(), Violation> {
    if operations == 0 {
        return Err(Violation::Invalid("the batch is empty".into()));
    }
    if operations > BATCH_OPERATIONS_MAX {
        return Err(too_large(
            Limit::BatchOperations,
            operations,
            BATCH_OPERATIONS_MAX,
        ));
    }
    Ok(())
}

/// Adds up a batch's size as the engine encodes it (see [`BATCH_BYTES_MAX`]) and refuses it
/// once it passes the limit.
#[derive(Debug)]
pub struct BatchBytes {
    total_bytes: usize,
}

impl Default for BatchBytes {
    fn default() -> Self {
        BatchBytes {
            total_bytes: BATCH_ENGINE_OVERHEAD_BYTES,
        }
    }
}

impl BatchBytes {
    /// The batch's size so far, as the engine encodes it.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Counts one operation (its fields already checked, so the sum cannot overflow).
    pub fn add(
        &mut self,
        collection: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), Violation> {
        self.total_bytes += collection.len()
            + key.len()
            + match value {
                Some(value) => BATCH_PUT_ENGINE_OVERHEAD_BYTES + value.len(),
                None => BATCH_DELETE_ENGINE_OVERHEAD_BYTES,
            };
        if self.total_bytes > BATCH_BYTES_MAX {
            return Err(too_large(
                Limit::BatchBytes,
                self.total_bytes,
                BATCH_BYTES_MAX,
            ));
        }
        Ok(())
    }
}

/// A topology's shard count: at most [`SHARDS_PER_NODE_MAX`].
pub fn check_shard_count(shards: usize) -> Result<(), Violation> {
    if shards > SHARDS_PER_NODE_MAX {
        return Err(too_large(Limit::Shards, shards, SHARDS_PER_NODE_MAX));
    }
    Ok(())
}

/// A partition count: 1..=[`PARTITIONS_MAX`].
pub fn check_partition_count(partitions: u32) -> Result<(), Violation> {
    if partitions == 0 {
        return Err(Violation::Invalid("the partition count is zero".into()));
    }
    if partitions > PARTITIONS_MAX {
        return Err(too_large(
            Limit::Partitions,
            partitions as usize,
            PARTITIONS_MAX as usize,
        ));
    }
    Ok(())
}

/// Partitions served by one shard: strictly increasing, each below `partition_count`.
pub fn check_partitions(
    partitions: impl Iterator<Item = u32>,
    partition_count: u32,
) -> Result<(), Violation> {
    let mut previous: Option<u32> = None;
    for partition in partitions {
        if partition >= partition_count {
            return Err(Violation::Invalid(format!(
                "partition {partition} is not below the partition count {partition_count}"
            )));
        }
        if previous.is_some_and(|previous| previous >= partition) {
            return Err(Violation::Invalid(format!(
                "partitions are not strictly increasing at {partition}"
            )));
        }
        previous = Some(partition);
    }
    Ok(())
}

/// The members of a cluster status: at most [`CLUSTER_MEMBERS_MAX`], strictly increasing by
/// node id (sorted, no node twice). The count is checked before any member is looked at.
pub fn check_members(count: usize, nodes: impl Iterator<Item = NodeId>) -> Result<(), Violation> {
    if count > CLUSTER_MEMBERS_MAX {
        return Err(too_large(Limit::Members, count, CLUSTER_MEMBERS_MAX));
    }
    let mut previous: Option<NodeId> = None;
    for node in nodes {
        if previous.is_some_and(|previous| previous >= node) {
            return Err(Violation::Invalid(format!(
                "members are not strictly increasing by node at node {node}"
            )));
        }
        previous = Some(node);
    }
    Ok(())
}

/// A member's gossip address: at most [`GOSSIP_ADDRESS_BYTES_MAX`] bytes, and either empty (not
/// known) or an `ip:port` that parses as a socket address, so that whoever shows or dials it
/// can trust it.
pub fn check_gossip_address(address: &str) -> Result<(), Violation> {
    if address.len() > GOSSIP_ADDRESS_BYTES_MAX {
        return Err(too_large(
            Limit::AddressBytes,
            address.len(),
            GOSSIP_ADDRESS_BYTES_MAX,
        ));
    }
    if !address.is_empty() && address.parse::<std::net::SocketAddr>().is_err() {
        return Err(Violation::Invalid(format!(
            "the gossip address {address:?} is not ip:port"
        )));
    }
    Ok(())
}

/// How many partitions a cluster status lists: at most [`PARTITIONS_MAX`] (0 before the first
/// leadership map).
pub fn check_partition_list_len(partitions: usize) -> Result<(), Violation> {
    if partitions > PARTITIONS_MAX as usize {
        return Err(too_large(
            Limit::Partitions,
            partitions,
            PARTITIONS_MAX as usize,
        ));
    }
    Ok(())
}

/// One partition of a cluster status: at most [`REPLICAS_PER_PARTITION_MAX`] replicas, no node
/// twice, and the leader (if any) one of them (a leadership map's rule).
pub fn check_replicas(
    partition: usize,
    leader: Option<NodeId>,
    replicas: &[NodeId],
) -> Result<(), Violation> {
    if replicas.len() > REPLICAS_PER_PARTITION_MAX {
        return Err(too_large(
            Limit::Replicas,
            replicas.len(),
            REPLICAS_PER_PARTITION_MAX,
        ));
    }
    for (index, replica) in replicas.iter().enumerate() {
        if replicas[..index].contains(replica) {
            return Err(Violation::Invalid(format!(
                "partition {partition} lists replica {replica} twice"
            )));
        }
    }
    if let Some(leader) = leader {
        if !replicas.contains(&leader) {
            return Err(Violation::Invalid(format!(
                "partition {partition}'s leader {leader} is not one of its replicas"
            )));
        }
    }
    Ok(())
}

/// A message whose content can be checked against the protocol's rules. Implemented for every
/// message type and for its archived form, with the same checks.
pub trait Validate {
    /// Checks every rule; the first one broken is returned.
    fn validate(&self) -> Result<(), Violation>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_inclusive() {
        assert!(check_key(&[1; KEY_BYTES_MAX]).is_ok());
        assert_eq!(
            check_key(&[1; KEY_BYTES_MAX + 1]).unwrap_err(),
            too_large(Limit::KeyBytes, KEY_BYTES_MAX + 1, KEY_BYTES_MAX)
        );
        assert!(check_key(b"").is_err());
        assert!(check_value(b"").is_ok());
        assert!(check_value(&vec![0; VALUE_BYTES_MAX]).is_ok());
        assert!(check_value(&vec![0; VALUE_BYTES_MAX + 1]).is_err());
        assert!(check_collection_name(&"n".repeat(COLLECTION_NAME_BYTES_MAX)).is_ok());
        assert!(check_collection_name(&"n".repeat(COLLECTION_NAME_BYTES_MAX + 1)).is_err());
        assert!(check_collection_name("").is_err());
        assert!(check_collection_name("a\nb").is_err());
        assert!(check_batch_len(0).is_err());
        assert!(check_batch_len(BATCH_OPERATIONS_MAX).is_ok());
        assert!(check_batch_len(BATCH_OPERATIONS_MAX + 1).is_err());
        assert!(check_reason(&"r".repeat(REASON_BYTES_MAX)).is_ok());
        assert!(check_reason(&"r".repeat(REASON_BYTES_MAX + 1)).is_err());
        assert!(check_partition_count(0).is_err());
        assert!(check_partition_count(PARTITIONS_MAX).is_ok());
        assert!(check_partition_count(PARTITIONS_MAX + 1).is_err());
        assert!(check_shard_count(SHARDS_PER_NODE_MAX + 1).is_err());
        assert!(check_members(CLUSTER_MEMBERS_MAX, std::iter::empty()).is_ok());
        assert_eq!(
            check_members(CLUSTER_MEMBERS_MAX + 1, std::iter::empty()).unwrap_err(),
            too_large(Limit::Members, CLUSTER_MEMBERS_MAX + 1, CLUSTER_MEMBERS_MAX)
        );
        assert!(check_partition_list_len(0).is_ok());
        assert!(check_partition_list_len(PARTITIONS_MAX as usize).is_ok());
        assert!(check_partition_list_len(PARTITIONS_MAX as usize + 1).is_err());
        let replicas: Vec<NodeId> = (1..=REPLICAS_PER_PARTITION_MAX as u64)
            .map(NodeId)
            .collect();
        assert!(check_replicas(0, Some(NodeId(1)), &replicas).is_ok());
        let mut over = replicas.clone();
        over.push(NodeId(100));
        assert_eq!(
            check_replicas(0, None, &over).unwrap_err(),
            too_large(
                Limit::Replicas,
                REPLICAS_PER_PARTITION_MAX + 1,
                REPLICAS_PER_PARTITION_MAX
            )
        );
        let longest = format!("[{}]:65535", "f".repeat(GOSSIP_ADDRESS_BYTES_MAX - 8));
        assert_eq!(longest.len(), GOSSIP_ADDRESS_BYTES_MAX);
        assert!(matches!(
            check_gossip_address(&format!("{longest}0")),
            Err(Violation::TooLarge {
                what: Limit::AddressBytes,
                ..
            })
        ));
    }

    #[test]
    fn cluster_status_rules() {
        let nodes = |ids: &[u64]| ids.iter().copied().map(NodeId).collect::<Vec<_>>();
        assert!(check_members(3, nodes(&[1, 2, 9]).into_iter()).is_ok());
        assert!(check_members(2, nodes(&[2, 1]).into_iter()).is_err());
        assert!(check_members(2, nodes(&[2, 2]).into_iter()).is_err());
        assert!(check_gossip_address("").is_ok());
        assert!(check_gossip_address("127.0.0.1:7946").is_ok());
        assert!(check_gossip_address("[::1]:7946").is_ok());
        assert!(check_gossip_address("[fe80::1%2]:7946").is_ok());
        for bad in ["localhost:7946", "127.0.0.1", "1.2.3.4:99999", "a\nb"] {
            assert!(check_gossip_address(bad).is_err(), "{bad:?}");
        }
        assert!(check_replicas(0, None, &[]).is_ok());
        assert!(check_replicas(0, None, &nodes(&[3, 1])).is_ok());
        assert!(check_replicas(0, Some(NodeId(2)), &nodes(&[3, 1])).is_err());
        assert!(check_replicas(0, Some(NodeId(1)), &[]).is_err());
        assert!(check_replicas(0, None, &nodes(&[3, 3])).is_err());
    }

    #[test]
    fn batch_bytes_counts_like_the_engine() {
        let mut bytes = BatchBytes::default();
        bytes.add("c", b"k", Some(b"v")).unwrap();
        assert_eq!(bytes.total_bytes, 2 + 8 + 3);
        bytes.add("c", b"k", None).unwrap();
        assert_eq!(bytes.total_bytes, 2 + 8 + 3 + 4 + 2);
        let value = vec![0u8; BATCH_BYTES_MAX];
        assert!(matches!(
            bytes.add("c", b"k", Some(&value)),
            Err(Violation::TooLarge {
                what: Limit::BatchBytes,
                ..
            })
        ));
    }

    #[test]
    fn partitions_must_increase_and_stay_in_range() {
        assert!(check_partitions([0, 2, 5].into_iter(), 6).is_ok());
        assert!(check_partitions([0, 2, 6].into_iter(), 6).is_err());
        assert!(check_partitions([2, 2].into_iter(), 6).is_err());
        assert!(check_partitions([3, 1].into_iter(), 6).is_err());
        assert!(check_partitions(std::iter::empty(), 6).is_ok());
    }
}
