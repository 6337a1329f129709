//! The worked cases of design.md section 4, one per test, on small clusters whose expected map
//! can be read off by hand: fresh placement, a dead preferred leader, its return (preferred-
//! leader rebalancing), "paper" leadership by a `JoinedSyncing` node, lagging replicas, and
//! `Leaving` members.

use coregrid_cluster::map::{compute_leadership_map, LeadershipMap, MapInput};
use coregrid_cluster::types::{Epoch, NodeId, NodeState, PartitionId, Term};
use std::collections::{BTreeMap, BTreeSet};

fn members(states: &[(u64, NodeState)]) -> BTreeMap<NodeId, NodeState> {
    states
        .iter()
        .map(|(id, state)| (NodeId(*id), *state))
        .collect()
}

fn compute(
    members: &BTreeMap<NodeId, NodeState>,
    partitions: u32,
    replication_factor: usize,
    previous: Option<&LeadershipMap>,
    lagging: &BTreeSet<(PartitionId, NodeId)>,
) -> LeadershipMap {
    let input = MapInput {
        members,
        partitions,
        replication_factor,
        previous,
        lagging,
    };
    compute_leadership_map(&input, Term(3), Epoch(7))
}

fn leaders(map: &LeadershipMap) -> Vec<Option<u64>> {
    map.partitions
        .iter()
        .map(|assignment| assignment.leader.map(NodeId::get))
        .collect()
}

fn replicas(map: &LeadershipMap, partition: usize) -> Vec<u64> {
    map.partitions[partition]
        .replicas
        .iter()
        .map(|node| node.get())
        .collect()
}

#[test]
fn fresh_cluster_places_replicas_forward_from_the_ideal_index_and_leads_there() {
    let joined = members(&[
        (10, NodeState::Joined),
        (20, NodeState::Joined),
        (30, NodeState::Joined),
    ]);
    let map = compute(&joined, 4, 2, None, &BTreeSet::new());
    assert_eq!(map.term, Term(3));
    assert_eq!(map.epoch, Epoch(7));
    assert_eq!(replicas(&map, 0), [10, 20]);
    assert_eq!(replicas(&map, 1), [20, 30]);
    assert_eq!(replicas(&map, 2), [30, 10]);
    assert_eq!(replicas(&map, 3), [10, 20]);
    assert_eq!(leaders(&map), [Some(10), Some(20), Some(30), Some(10)]);
}
