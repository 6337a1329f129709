//! The control plane's limits, in one place (style.md rule 5).

/// Most voters a cluster has by default: the first five members by id (design.md section 4),
/// as etcd voters or Kafka's controller quorum.
pub const VOTERS_DEFAULT_MAX: usize = 5;

/// Most members a cluster may have: bounds every per-member table.
pub const MEMBERS_MAX: usize = 1024;

/// Most partitions a leadership map may hold: bounds a map's size on the wire.
pub const PARTITIONS_MAX: u32 = 65_536;

/// Most replicas of one partition.
pub const REPLICATION_FACTOR_MAX: usize = 7;

const _: () = assert!(
    VOTERS_DEFAULT_MAX % 2 == 1,
    "an odd voter count wastes no vote"
);
const _: () = assert!(REPLICATION_FACTOR_MAX <= MEMBERS_MAX);
