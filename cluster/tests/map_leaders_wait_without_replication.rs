//! Until replication exists a partition's acknowledged writes live only on the node that led
//! it, so once a partition has a leader, no later map may name another (design.md section 5,
//! promise 2: an acknowledged write survives a leader restart). The maps here are computed
//! exactly as the controller computes them (`Controller::compute_next_map`): the lagging set
//! from [`lagging_without_replication`], the scoring, then [`keep_waited_for_leaders`]. Each
//! case walks random members through random states: `Joining`, `JoinedSyncing`, `Joined`,
//! `Leaving` (a graceful stop, which makes scoring redraw every replica set holding that node)
//! and `Dead`, with nodes added on the way.
//!
//! The pinned case is the one a graceful restart used to lose writes on: three nodes, the
//! leader of partitions 0, 3 and 6 stopped with SIGTERM (`Leaving`), then back (`Joining`,
//! `Joined`): its partitions went to a node that never held their writes and stayed there.

use coregrid_cluster::map::{
    compute_leadership_map, keep_waited_for_leaders, lagging_without_replication, LeadershipMap,
    MapInput,
};
use coregrid_cluster::types::{Epoch, NodeId, NodeState, Term};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// The controller's next map from `members` and the latest map.
fn next_map(
    members: &BTreeMap<NodeId, NodeState>,
    partitions: u32,
    replication_factor: usize,
    previous: Option<&LeadershipMap>,
) -> LeadershipMap {
    let lagging = lagging_without_replication(previous, members);
    let input = MapInput {
        members,
        partitions,
        replication_factor,
        previous,
        lagging: &lagging,
    };
    let epoch = previous.map_or(Epoch(1), |map| Epoch(map.epoch.get() + 1));
    let mut map = compute_leadership_map(&input, Term(1), epoch);
    keep_waited_for_leaders(&mut map, previous);
    map
}

/// Checks `map` against the first leader each partition ever had: the same node, or none.
fn check_leaders_stay(
    first_leaders: &mut [Option<NodeId>],
    map: &LeadershipMap,
    step: &str,
) -> Result<(), TestCaseError> {
    for (partition, (first, assignment)) in
        first_leaders.iter_mut().zip(&map.partitions).enumerate()
    {
        if let Some(leader) = assignment.leader {
            prop_assert!(
                assignment.replicas.contains(&leader),
                "{step}: partition {partition}: leader {leader:?} outside its replicas {:?}",
                assignment.replicas
            );
        }
        match (*first, assignment.leader) {
            (None, leader) => *first = leader,
            (Some(first), Some(leader)) => prop_assert_eq!(
                leader,
                first,
                "{}: partition {} moved from {:?}, which holds its writes, to {:?}",
                step,
                partition,
                first,
                leader
            ),
            (Some(first), None) => {
                prop_assert!(
                    false,
                    "{step}: partition {partition} forgot it waits for {first:?}"
                )
            }
        }
    }
    Ok(())
}

fn state(pick: u8) -> NodeState {
    match pick % 5 {
        0 => NodeState::Joining,
        1 => NodeState::JoinedSyncing,
        2 => NodeState::Joined,
        3 => NodeState::Leaving,
        _ => NodeState::Dead,
    }
}

#[test]
fn a_leader_stopped_gracefully_gets_its_partitions_back_when_it_returns() {
    let mut members: BTreeMap<NodeId, NodeState> = [1, 2, 3]
        .into_iter()
        .map(|id| (NodeId(id), NodeState::Joined))
        .collect();
    let before = next_map(&members, 8, 3, None);
    let mut first_leaders = vec![None; 8];
    check_leaders_stay(&mut first_leaders, &before, "start").unwrap();
    let stopped = before.partitions[0].leader.expect("partition 0 is led");
    let mut previous = before.clone();
    for (step, state) in [
        ("leaving", NodeState::Leaving),
        ("dead", NodeState::Dead),
        ("joining", NodeState::Joining),
        ("joined", NodeState::Joined),
    ] {
        members.insert(stopped, state);
        let map = next_map(&members, 8, 3, Some(&previous));
        check_leaders_stay(&mut first_leaders, &map, step).unwrap();
        previous = map;
    }
    assert_eq!(
        previous.partitions, before.partitions,
        "back and Joined: the map from before the stop"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_partition_ever_moves_away_from_the_node_holding_its_writes(
        first_ids in proptest::collection::btree_set(1u64..=12, 1..=6),
        partitions in 1u32..=24,
        replication_factor in 1usize..=5,
        steps in proptest::collection::vec((1u64..=12, any::<u8>()), 1..=24),
    ) {
        let mut members: BTreeMap<NodeId, NodeState> =
            first_ids.iter().map(|&id| (NodeId(id), NodeState::Joined)).collect();
        let mut map = next_map(&members, partitions, replication_factor, None);
        let mut first_leaders = vec![None; partitions as usize];
        check_leaders_stay(&mut first_leaders, &map, "start")?;
        for (index, &(node, pick)) in steps.iter().enumerate() {
            members.insert(NodeId(node), state(pick));
            map = next_map(&members, partitions, replication_factor, Some(&map));
            check_leaders_stay(
                &mut first_leaders,
                &map,
                &format!("step {index}: node {node} {:?}", state(pick)),
            )?;
        }
    }
}
