//! The vocabulary of design.md section 3 as newtypes, so that a partition id is never passed
//! where a shard id is meant. Each is archived by rkyv as its little-endian integer;
//! `ArchivedX::get` turns the archived form back into the native one without allocating.

use rkyv::{Archive, Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty), $archived:ident) => {
        $(#[$doc])*
        #[derive(
            Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd,
            Ord, Default,
        )]
        #[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw number.
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, formatter)
            }
        }

        impl $archived {
            /// The native value.
            pub fn get(&self) -> $name {
                $name(self.0.to_native())
            }
        }
    };
}

id_newtype!(
    /// A node: one process, stable across restarts.
    NodeId(u64),
    ArchivedNodeId
);
id_newtype!(
    /// A data shard of a node: one core's executor, listening on its own port.
    ShardId(u16),
    ArchivedShardId
);
id_newtype!(
    /// A partition: the unit of placement of the key space.
    PartitionId(u32),
    ArchivedPartitionId
);
id_newtype!(
    /// A leadership-map generation. Only ever grows.
    Epoch(u64),
    ArchivedEpoch
);
id_newtype!(
    /// A control-plane election generation (design.md section 3). Only ever grows, and is
    /// persisted before any vote or claim made in it.
    Term(u64),
    ArchivedTerm
);
id_newtype!(
    /// A per-partition log sequence number (dense, starting at 1). A key's revision is the LSN
    /// of the write that set it; 0 means "absent" where a revision is expected.
    Lsn(u64),
    ArchivedLsn
);
id_newtype!(
    /// A client instance, chosen by the client (random or assigned) and kept for its lifetime.
    ClientId(u64),
    ArchivedClientId
);
id_newtype!(
    /// Names one request on one connection, chosen by the sender; the answer carries the same
    /// id. Lets many requests be in flight on a connection (pipelining).
    RequestId(u64),
    ArchivedRequestId
);

/// The cluster a node belongs to: 16 random bytes chosen when the cluster is created and
/// persisted by every node. A handshake with another cluster's id is refused.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
pub struct ClusterId(pub [u8; 16]);

impl ArchivedClusterId {
    /// The native value.
    pub fn get(&self) -> ClusterId {
        ClusterId(self.0)
    }
}

impl ClusterId {
    /// Longest cluster name, in bytes: a name is stored as the 16-byte id itself.
    pub const NAME_BYTES_MAX: usize = 16;

    /// The id of the cluster named `name` (a node's configured cluster name, default
    /// "coregrid"; a client's `--cluster-name`): the name's bytes, zero-padded to 16. A name is
    /// 1..=16 bytes of `[A-Za-z0-9._-]`, so different names always give different ids and an
    /// id reads back as its name. Nodes and clients must both use this function.
    pub fn from_name(name: &str) -> Result<ClusterId, String> {
        if name.is_empty() || name.len() > Self::NAME_BYTES_MAX {
            return Err(format!(
                "a cluster name is 1..={} bytes, got {:?} ({} bytes)",
                Self::NAME_BYTES_MAX,
                name,
                name.len()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "a cluster name holds only A-Z, a-z, 0-9, '.', '_' and '-'; {name:?} has {bad:?}"
            ));
        }
        let mut id = [0u8; 16];
        id[..name.len()].copy_from_slice(name.as_bytes());
        Ok(ClusterId(id))
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(formatter, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Names one write of one client, so that a retry of it is recognised and never applied twice.
/// `sequence` grows with each new write of `client`; a retry repeats the id it retries.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq, Hash), compare(PartialEq))]
pub struct ClientRequestId {
    /// The client.
    pub client: ClientId,
    /// The client's number for this write.
    pub sequence: u64,
}

impl ArchivedClientRequestId {
    /// The native value.
    pub fn get(&self) -> ClientRequestId {
        ClientRequestId {
            client: self.client.get(),
            sequence: self.sequence.to_native(),
        }
    }
}

impl fmt::Display for ClientRequestId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.client, self.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterId;

    #[test]
    fn cluster_ids_from_names_are_the_padded_names() {
        let id = ClusterId::from_name("coregrid").unwrap();
        assert_eq!(&id.0[..8], b"coregrid");
        assert!(id.0[8..].iter().all(|&byte| byte == 0));
        assert_ne!(id, ClusterId::from_name("coregrid2").unwrap());
        assert!(ClusterId::from_name(&"x".repeat(16)).is_ok());
        for bad in ["", "seventeen-bytes-x", "a b", "é"] {
            assert!(ClusterId::from_name(bad).is_err(), "{bad:?}");
        }
    }
}
