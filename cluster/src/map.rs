//! Leadership maps (design.md sections 1 and 4): for every partition, its replicas and the one
//! that leads, stamped with an epoch. The elected controller computes a map with
//! [`compute_leadership_map`], has a majority of voters store it, and only then publishes it;
//! every node's control shard hands published maps to its data shards, which accept writes
//! for a partition only if the map of the current epoch names them its leader.

use crate::types::{Epoch, MapVersion, NodeId, NodeState, PartitionId, Term};
use coregrid_net::rkyv::{self, Archive, Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One partition's place in a map.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[rkyv(crate = rkyv, derive(Debug))]
pub struct PartitionAssignment {
    /// The node that leads the partition in this epoch; `None` when no replica may lead (all
    /// dead or out of sync): the partition takes no writes until a later map names one.
    pub leader: Option<NodeId>,
    /// The nodes holding a replica, the leader among them: `min(replication_factor, members
    /// not Leaving)` of them, except for a partition that waits for its leader to come back
    /// (see [`keep_waited_for_leaders`]), which keeps the set it had.
    pub replicas: Vec<NodeId>,
}

/// An epoch-stamped leadership map. Two maps with the same epoch are equal (design.md
/// section 5, promise 1: at most one leader per partition per epoch).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[rkyv(crate = rkyv, derive(Debug))]
pub struct LeadershipMap {
    /// The map's generation; only ever grows.
    pub epoch: Epoch,
    /// The term of the controller that proposed it.
    pub term: Term,
    /// Indexed by partition id: `partitions[p]` is partition `p`'s assignment.
    pub partitions: Vec<PartitionAssignment>,
}

impl LeadershipMap {
    /// This map's version (term, then epoch).
    pub fn version(&self) -> MapVersion {
        MapVersion {
            term: self.term,
            epoch: self.epoch,
        }
    }

    /// The assignment of `partition`, if the map has it.
    pub fn assignment(&self, partition: PartitionId) -> Option<&PartitionAssignment> {
        self.partitions.get(usize::try_from(partition.get()).ok()?)
    }

    /// The leader of `partition` in this map.
    pub fn leader(&self, partition: PartitionId) -> Option<NodeId> {
        self.assignment(partition)?.leader
    }
}

/// What a controller knows when it computes a map.
#[derive(Clone, Debug)]
pub struct MapInput<'a> {
    /// Every member the controller knows, in any state, with its current state. Members are
    /// ordered by id for the scoring (`BTreeMap` order); dead members stay in the list (their
    /// slots keep the ideal indices stable while they are away).
    pub members: &'a BTreeMap<NodeId, NodeState>,
    /// Partitions in the cluster (fixed when the cluster is created).
    pub partitions: u32,
    /// Replicas per partition, leader included.
    pub replication_factor: usize,
    /// The latest map, if any: its replica sets and leaders are kept where still valid
    /// (stability).
    pub previous: Option<&'a LeadershipMap>,
    /// Replicas known not to be caught up to their partition's commit LSN: never chosen to
    /// lead over one that is (design.md section 4). Empty until replication reports progress.
    pub lagging: &'a BTreeSet<(PartitionId, NodeId)>,
}

pub use crate::scoring::compute_leadership_map;

/// The nodes that lag while partitions are not replicated: for every partition that had a
/// leader, every member but that leader. Until replication reports which replicas are caught
/// up (design.md section 6), a partition's writes live only on the node that led it, so no
/// other node may take over, whether it was a replica in the previous map or is placed in a
/// fresh replica set now (a set is redrawn when one of its members is `Leaving`): that would
/// serve the partition without its acknowledged writes. A partition with no previous leader
/// (a new cluster) has nothing to lose and lags nowhere.
pub fn lagging_without_replication(
    previous: Option<&LeadershipMap>,
    members: &BTreeMap<NodeId, NodeState>,
) -> BTreeSet<(PartitionId, NodeId)> {
    let Some(previous) = previous else {
        return BTreeSet::new();
    };
    let mut lagging = BTreeSet::new();
    for (index, assignment) in previous.partitions.iter().enumerate() {
        let (Some(leader), Ok(partition)) = (assignment.leader, u32::try_from(index)) else {
            continue;
        };
        let others = members
            .keys()
            .chain(&assignment.replicas)
            .filter(|&&node| node != leader);
        lagging.extend(others.map(|&node| (PartitionId(partition), node)));
    }
    lagging
}

/// Keeps, in `map`, the previous leader of every partition that nothing could lead, with the
/// previous replica set if the new one left it out: while that node is away (dead, or gone
/// with a graceful `Leaving`) the partition is unavailable, since its writes live only there,
/// and the map says whom it waits for, so that leadership returns to that node, not to an
/// empty replica, when it is back. Used with [`lagging_without_replication`].
///
/// Why the replica set too: scoring redraws a set that holds a `Leaving` member, so a leader
/// stopped with SIGTERM would otherwise drop out of its partition's set, the next map would
/// have no leader to wait for, and any node could then take the partition without its data.
pub fn keep_waited_for_leaders(map: &mut LeadershipMap, previous: Option<&LeadershipMap>) {
    let Some(previous) = previous else {
        return;
    };
    for (assignment, before) in map.partitions.iter_mut().zip(&previous.partitions) {
        if assignment.leader.is_some() {
            continue;
        }
        if let Some(leader) = before.leader {
            if !assignment.replicas.contains(&leader) {
                assignment.replicas.clone_from(&before.replicas);
            }
            assignment.leader = Some(leader);
        }
    }
}
