//! Client requests. Every write carries a [`ClientRequestId`] (so a retry is recognised and
//! never applied twice) and a [`WriteConsistency`]; every read a [`ReadConsistency`]. Keys and
//! values are bytes, collections are named by UTF-8 strings; on the receiving side all of them
//! are read in place from the frame's body.

use crate::ids::{ClientRequestId, Lsn};
use crate::validate::{
    check_batch_len, check_collection_name, check_key, check_value, BatchBytes, Validate, Violation,
};
use rkyv::{Archive, Deserialize, Serialize};

/// How many replicas must hold a write durably before it is acknowledged (design.md section 6).
/// A level that cannot be met right now is refused up front (`NotEnoughReplicas`), never
/// silently downgraded.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
#[repr(u8)]
pub enum WriteConsistency {
    /// The leader's WAL holds it durably. Survives a leader restart; may be lost if the leader
    /// dies before a follower pulled it.
    One,
    /// A majority of the partition's replicas, leader included, hold it durably.
    #[default]
    Quorum,
    /// Every replica of the partition holds it durably.
    All,
}

/// Who may answer a read (design.md section 6).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
#[repr(u8)]
pub enum ReadConsistency {
    /// Linearizable: only the partition's leader, while it holds a lease or after a read-index
    /// round.
    #[default]
    Leader,
    /// Any replica that is `Joined` for the partition (at most one sync round behind).
    Any,
}

/// Sets a key's value.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PutRequest {
    /// Names this write for retries.
    pub id: ClientRequestId,
    /// How durable before the answer.
    pub consistency: WriteConsistency,
    /// The collection.
    pub collection: String,
    /// The key (1..=`KEY_BYTES_MAX` bytes).
    pub key: Vec<u8>,
    /// The value (at most `VALUE_BYTES_MAX` bytes).
    pub value: Vec<u8>,
}

/// Reads a key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GetRequest {
    /// Who may answer.
    pub consistency: ReadConsistency,
    /// The collection.
    pub collection: String,
    /// The key.
    pub key: Vec<u8>,
}

/// Removes a key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteRequest {
    /// Names this write for retries.
    pub id: ClientRequestId,
    /// How durable before the answer.
    pub consistency: WriteConsistency,
    /// The collection.
    pub collection: String,
    /// The key.
    pub key: Vec<u8>,
}

/// Writes (or deletes) a key only if its revision is `expected_revision`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CompareAndSetRequest {
    /// Names this write for retries.
    pub id: ClientRequestId,
    /// How durable before the answer.
    pub consistency: WriteConsistency,
    /// The collection.
    pub collection: String,
    /// The key.
    pub key: Vec<u8>,
    /// The revision the key must have; `Lsn(0)`: the key must be absent.
    pub expected_revision: Lsn,
    /// The new value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// Creates a collection (a named key space).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CreateCollectionRequest {
    /// Names this write for retries.
    pub id: ClientRequestId,
    /// How durable before the answer.
    pub consistency: WriteConsistency,
    /// The collection's name.
    pub name: String,
}

/// Drops a collection and every key in it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DropCollectionRequest {
    /// Names this write for retries.
    pub id: ClientRequestId,
    /// How durable before the answer.
    pub consistency: WriteConsistency,
    /// The collection's name.
    pub name: String,
}

/// One write of a batch.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum BatchOperation {
    /// Set a key.
    Put {
        /// The collection.
        collection: String,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// The collection.
        collection: String,
        /// The key.
        key: Vec<u8>,
    },
}

impl BatchOperation {
    /// Collection, key and value (`None` for a delete).
    pub fn parts(&self) -> (&str, &[u8], Option<&[u8]>) {
        match self {
            BatchOperation::Put {
                collection,
                key,
                value,
            } => (collection.as_str(), key.as_slice(), Some(value.as_slice())),
            BatchOperation::Delete { collection, key } => {
                (collection.as_str(), key.as_slice(), None)
            }
        }
    }
}

impl ArchivedBatchOperation {
    /// Collection, key and value (`None` for a delete), in place.
    pub fn parts(&self) -> (&str, &[u8], Option<&[u8]>) {
        match self {
            ArchivedBatchOperation::Put {
                collection,
                key,
                value,
            } => (collection.as_str(), key.as_slice(), Some(value.as_slice())),
            ArchivedBatchOperation::Delete { collection, key } => {
                (collection.as_str(), key.as_slice(), None)
            }
        }
    }
}

/// Several puts and deletes of one partition, applied atomically (one WAL record). The server
/// refuses a batch whose keys span partitions (`InvalidRequest`).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct BatchRequest {
    /// Names this write for retries.
    pub id: ClientRequestId,
    /// How durable before the answer.
    pub consistency: WriteConsistency,
    /// The writes (1..=`BATCH_OPERATIONS_MAX`, at most `BATCH_BYTES_MAX` as the engine
    /// encodes them).
    pub operations: Vec<BatchOperation>,
}

/// Asks the shard for its node's topology: which shard (port) serves which partitions.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct TopologyRequest {}

/// Asks the answering node what it knows of the control plane: its term and role, the
/// controller, its members and the leadership map its data shards hold
/// ([`crate::message::ClusterStatusResponse`]). Any shard port of any node answers; it is not
/// routed by partition, and it changes nothing.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ClusterStatusRequest {}

/// Implements [`Validate`] for a type and its archived form with one body: the archived
/// accessors used (`as_str`, `as_slice`, `as_ref`, `iter`, `len`) exist on both forms.
macro_rules! validate_both {
    ($native:ty, $archived:ty, |$this:ident| $body:block) => {
        impl Validate for $native {
            fn validate(&self) -> Result<(), Violation> {
                let $this = self;
                $body
            }
        }
        impl Validate for $archived {
            fn validate(&self) -> Result<(), Violation> {
                let $this = self;
                $body
            }
        }
    };
}
pub(crate) use validate_both;

validate_both!(PutRequest, ArchivedPutRequest, |this| {
    check_collection_name(this.collection.as_str())?;
    check_key(this.key.as_slice())?;
    check_value(this.value.as_slice())
});

validate_both!(GetRequest, ArchivedGetRequest, |this| {
    check_collection_name(this.collection.as_str())?;
    check_key(this.key.as_slice())
});

validate_both!(DeleteRequest, ArchivedDeleteRequest, |this| {
    check_collection_name(this.collection.as_str())?;
    check_key(this.key.as_slice())
});

validate_both!(CompareAndSetRequest, ArchivedCompareAndSetRequest, |this| {
    check_collection_name(this.collection.as_str())?;
    check_key(this.key.as_slice())?;
    match this.value.as_ref() {
        Some(value) => check_value(value.as_slice()),
        None => Ok(()),
    }
});

validate_both!(
    CreateCollectionRequest,
    ArchivedCreateCollectionRequest,
    |this| { check_collection_name(this.name.as_str()) }
);

validate_both!(
    DropCollectionRequest,
    ArchivedDropCollectionRequest,
    |this| { check_collection_name(this.name.as_str()) }
);

validate_both!(BatchRequest, ArchivedBatchRequest, |this| {
    // The count first: a batch of a million operations is refused before one is looked at.
    check_batch_len(this.operations.len())?;
    let mut bytes = BatchBytes::default();
    for operation in this.operations.iter() {
        let (collection, key, value) = operation.parts();
        check_collection_name(collection)?;
        check_key(key)?;
        if let Some(value) = value {
            check_value(value)?;
        }
        bytes.add(collection, key, value)?;
    }
    Ok(())
});

validate_both!(TopologyRequest, ArchivedTopologyRequest, |_this| { Ok(()) });

validate_both!(
    ClusterStatusRequest,
    ArchivedClusterStatusRequest,
    |_this| { Ok(()) }
);
