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

/// Five members 1..=5, RF 3, five partitions: partition `p` has replicas `p+1, p+2, p+3`
/// (ids, wrapping) and ideal leader `p+1`.
fn five_members(overrides: &[(u64, NodeState)]) -> BTreeMap<NodeId, NodeState> {
    let mut members = members(&[
        (1, NodeState::Joined),
        (2, NodeState::Joined),
        (3, NodeState::Joined),
        (4, NodeState::Joined),
        (5, NodeState::Joined),
    ]);
    for (id, state) in overrides {
        members.insert(NodeId(*id), *state);
    }
    members
}

#[test]
fn a_dead_preferred_leader_keeps_its_replica_and_the_next_replica_leads() {
    let nothing_lags = BTreeSet::new();
    let before = compute(&five_members(&[]), 5, 3, None, &nothing_lags);
    let away = compute(
        &five_members(&[(1, NodeState::Dead)]),
        5,
        3,
        Some(&before),
        &nothing_lags,
    );
    assert_eq!(
        replicas(&away, 0),
        [1, 2, 3],
        "the dead replica is not replaced"
    );
    assert_eq!(
        leaders(&away),
        [Some(2), Some(2), Some(3), Some(4), Some(5)],
        "partition 0 moves to the next replica forward; no other partition moves"
    );
}

#[test]
fn a_returning_node_takes_leadership_back_only_when_joined_and_in_sync() {
    let nothing_lags = BTreeSet::new();
    let before = compute(&five_members(&[]), 5, 3, None, &nothing_lags);
    let away = compute(
        &five_members(&[(1, NodeState::Dead)]),
        5,
        3,
        Some(&before),
        &nothing_lags,
    );

    let syncing = compute(
        &five_members(&[(1, NodeState::JoinedSyncing)]),
        5,
        3,
        Some(&away),
        &nothing_lags,
    );
    assert_eq!(syncing.leader(PartitionId(0)), Some(NodeId(2)));

    let node_1_lags_on_0: BTreeSet<_> = [(PartitionId(0), NodeId(1))].into();
    let joined_lagging = compute(&five_members(&[]), 5, 3, Some(&syncing), &node_1_lags_on_0);
    assert_eq!(
        joined_lagging.leader(PartitionId(0)),
        Some(NodeId(2)),
        "Joined but not caught up on partition 0: never chosen over node 2"
    );

    let back = compute(
        &five_members(&[]),
        5,
        3,
        Some(&joined_lagging),
        &nothing_lags,
    );
    assert_eq!(leaders(&back), leaders(&before));
}

#[test]
fn a_joined_syncing_node_holds_paper_leadership_until_a_joined_replica_can_lead() {
    let nothing_lags = BTreeSet::new();
    let all_syncing = five_members(&[
        (1, NodeState::JoinedSyncing),
        (2, NodeState::JoinedSyncing),
        (3, NodeState::JoinedSyncing),
    ]);
    let paper = compute(&all_syncing, 5, 3, None, &nothing_lags);
    assert_eq!(
        paper.leader(PartitionId(0)),
        Some(NodeId(1)),
        "best-scored syncing replica"
    );

    let node_2_closer_but_syncing = five_members(&[
        (1, NodeState::JoinedSyncing),
        (2, NodeState::JoinedSyncing),
        (3, NodeState::Joined),
    ]);
    let mut previous = paper.clone();
    previous.partitions[0].leader = Some(NodeId(2));
    let kept = compute(
        &node_2_closer_but_syncing,
        5,
        3,
        Some(&previous),
        &nothing_lags,
    );
    assert_eq!(
        kept.leader(PartitionId(0)),
        Some(NodeId(3)),
        "a Joined replica beats a syncing leader even from farther away"
    );

    let none_joined = five_members(&[
        (1, NodeState::JoinedSyncing),
        (2, NodeState::JoinedSyncing),
        (3, NodeState::Dead),
    ]);
    let sticky = compute(&none_joined, 5, 3, Some(&previous), &nothing_lags);
    assert_eq!(
        sticky.leader(PartitionId(0)),
        Some(NodeId(2)),
        "a closer syncing replica does not take leadership from a syncing leader"
    );
}

#[test]
fn a_lagging_replica_never_leads_and_all_lagging_means_no_leader() {
    let node_1_lags: BTreeSet<_> = [(PartitionId(0), NodeId(1))].into();
    let map = compute(&five_members(&[]), 5, 3, None, &node_1_lags);
    assert_eq!(map.leader(PartitionId(0)), Some(NodeId(2)));
    assert_eq!(
        map.leader(PartitionId(1)),
        Some(NodeId(2)),
        "lagging is per partition"
    );

    let all_lag: BTreeSet<_> = [1, 2, 3]
        .into_iter()
        .map(|id| (PartitionId(0), NodeId(id)))
        .collect();
    let map = compute(&five_members(&[]), 5, 3, None, &all_lag);
    assert_eq!(map.leader(PartitionId(0)), None);
    assert_eq!(replicas(&map, 0), [1, 2, 3], "lagging changes no placement");
}

#[test]
fn a_lagging_previous_leader_loses_leadership_even_to_a_syncing_replica() {
    let nothing_lags = BTreeSet::new();
    let states = five_members(&[(2, NodeState::JoinedSyncing), (3, NodeState::Dead)]);
    let before = compute(&states, 5, 3, None, &nothing_lags);
    assert_eq!(before.leader(PartitionId(0)), Some(NodeId(1)));
    let node_1_lags: BTreeSet<_> = [(PartitionId(0), NodeId(1))].into();
    let after = compute(&states, 5, 3, Some(&before), &node_1_lags);
    assert_eq!(after.leader(PartitionId(0)), Some(NodeId(2)));
}

#[test]
fn a_leaving_member_loses_its_replicas_and_leads_nothing() {
    let nothing_lags = BTreeSet::new();
    let before = compute(&five_members(&[]), 5, 3, None, &nothing_lags);
    let leaving = five_members(&[(2, NodeState::Leaving)]);
    let after = compute(&leaving, 5, 3, Some(&before), &nothing_lags);
    for partition in 0..5 {
        assert!(!replicas(&after, partition).contains(&2));
        assert_ne!(after.partitions[partition].leader, Some(NodeId(2)));
    }
    assert_eq!(
        replicas(&after, 0),
        [1, 3, 4],
        "placed afresh, skipping node 2"
    );
    assert_eq!(
        replicas(&after, 1),
        [3, 4, 5],
        "ideal member leaving: start at the next"
    );
    assert_eq!(
        replicas(&after, 2),
        [3, 4, 5],
        "kept: node 2 was not a replica"
    );
    assert_eq!(after.partitions[2], before.partitions[2]);
}

#[test]
fn joining_members_receive_replicas_but_never_lead() {
    let nothing_lags = BTreeSet::new();
    let states = five_members(&[(1, NodeState::Joining)]);
    let map = compute(&states, 5, 3, None, &nothing_lags);
    assert_eq!(replicas(&map, 0), [1, 2, 3]);
    assert_eq!(map.leader(PartitionId(0)), Some(NodeId(2)));
}

#[test]
fn a_new_member_keeps_existing_replica_sets_and_rebalances_leaders_within_them() {
    let nothing_lags = BTreeSet::new();
    let before = compute(&five_members(&[]), 5, 3, None, &nothing_lags);
    let mut six = five_members(&[]);
    six.insert(NodeId(6), NodeState::Joined);
    let after = compute(&six, 6, 3, Some(&before), &nothing_lags);
    for partition in 0..5 {
        assert_eq!(
            replicas(&after, partition),
            replicas(&before, partition),
            "no data moves"
        );
    }
    assert_eq!(
        replicas(&after, 5),
        [6, 1, 2],
        "a partition the previous map lacks is placed afresh"
    );
    assert_eq!(after.leader(PartitionId(5)), Some(NodeId(6)));
}
