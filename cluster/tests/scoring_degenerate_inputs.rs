//! Leader scoring is total: inputs a controller should never see (no members, replication
//! factor 0 or beyond the cluster, no partitions, more partitions than the limit, a previous
//! map of another size or naming strangers) still give a well-formed map and never a panic.

use coregrid_cluster::constants::PARTITIONS_MAX;
use coregrid_cluster::map::{compute_leadership_map, LeadershipMap, MapInput, PartitionAssignment};
use coregrid_cluster::types::{Epoch, NodeId, NodeState, PartitionId, Term};
use std::collections::{BTreeMap, BTreeSet};

fn compute(
    members: &BTreeMap<NodeId, NodeState>,
    partitions: u32,
    replication_factor: usize,
    previous: Option<&LeadershipMap>,
) -> LeadershipMap {
    let lagging = BTreeSet::new();
    let input = MapInput {
        members,
        partitions,
        replication_factor,
        previous,
        lagging: &lagging,
    };
    compute_leadership_map(&input, Term(2), Epoch(3))
}

fn three_joined() -> BTreeMap<NodeId, NodeState> {
    (1..=3).map(|id| (NodeId(id), NodeState::Joined)).collect()
}

#[test]
fn no_members_gives_leaderless_empty_assignments() {
    let map = compute(&BTreeMap::new(), 4, 3, None);
    assert_eq!((map.term, map.epoch), (Term(2), Epoch(3)));
    assert_eq!(map.partitions.len(), 4);
    for assignment in &map.partitions {
        assert_eq!(
            assignment,
            &PartitionAssignment {
                leader: None,
                replicas: Vec::new()
            }
        );
    }
}

#[test]
fn replication_factor_zero_gives_no_replicas_and_no_leaders() {
    let map = compute(&three_joined(), 4, 0, None);
    assert!(map
        .partitions
        .iter()
        .all(|assignment| assignment.replicas.is_empty() && assignment.leader.is_none()));
}

#[test]
fn replication_factor_beyond_the_cluster_uses_every_eligible_member() {
    for replication_factor in [4, 7, usize::MAX] {
        let map = compute(&three_joined(), 3, replication_factor, None);
        let replicas: Vec<Vec<u64>> = map
            .partitions
            .iter()
            .map(|assignment| assignment.replicas.iter().map(|node| node.get()).collect())
            .collect();
        assert_eq!(replicas, [vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]);
    }
}

#[test]
fn zero_partitions_gives_an_empty_map() {
    let map = compute(&three_joined(), 0, 3, None);
    assert!(map.partitions.is_empty());
}

#[test]
fn every_member_leaving_gives_no_replicas() {
    let leaving: BTreeMap<NodeId, NodeState> =
        (1..=3).map(|id| (NodeId(id), NodeState::Leaving)).collect();
    let map = compute(&leaving, 3, 2, None);
    assert!(map
        .partitions
        .iter()
        .all(|assignment| assignment.replicas.is_empty() && assignment.leader.is_none()));
}

#[test]
fn partitions_beyond_the_limit_are_still_all_assigned() {
    let map = compute(&three_joined(), PARTITIONS_MAX + 1, 3, None);
    assert_eq!(map.partitions.len(), PARTITIONS_MAX as usize + 1);
    assert_eq!(map.leader(PartitionId(PARTITIONS_MAX)), Some(NodeId(2)));
}

#[test]
fn a_previous_map_of_another_size_or_naming_strangers_is_ignored_where_invalid() {
    let stranger = PartitionAssignment {
        leader: Some(NodeId(99)),
        replicas: vec![NodeId(99), NodeId(1), NodeId(2)],
    };
    let duplicated = PartitionAssignment {
        leader: Some(NodeId(1)),
        replicas: vec![NodeId(1), NodeId(1), NodeId(2)],
    };
    let previous = LeadershipMap {
        epoch: Epoch(2),
        term: Term(2),
        partitions: vec![stranger, duplicated],
    };
    let map = compute(&three_joined(), 3, 3, Some(&previous));
    assert_eq!(map.partitions.len(), 3);
    assert_eq!(
        map.partitions[0].replicas,
        [NodeId(1), NodeId(2), NodeId(3)]
    );
    assert_eq!(
        map.partitions[1].replicas,
        [NodeId(2), NodeId(3), NodeId(1)]
    );
    assert_eq!(map.leader(PartitionId(0)), Some(NodeId(1)));
    assert_eq!(map.leader(PartitionId(1)), Some(NodeId(2)));
    assert_eq!(map.leader(PartitionId(2)), Some(NodeId(3)));
}

#[test]
fn an_undersized_previous_set_grows_when_members_join() {
    let alone: BTreeMap<NodeId, NodeState> = [(NodeId(1), NodeState::Joined)].into();
    let first = compute(&alone, 2, 3, None);
    assert_eq!(first.partitions[1].replicas, [NodeId(1)]);
    let map = compute(&three_joined(), 2, 3, Some(&first));
    assert_eq!(
        map.partitions[1].replicas,
        [NodeId(2), NodeId(3), NodeId(1)]
    );
    assert_eq!(
        map.leader(PartitionId(1)),
        Some(NodeId(2)),
        "node 1 still a candidate, but Joined node 2 scores strictly better"
    );
}
