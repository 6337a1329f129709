//! A node that dies and comes back does not leave leadership piled on the survivors (design.md
//! section 4, preferred-leader rebalancing). Walking one node through Dead, JoinedSyncing while
//! lagging, JoinedSyncing caught up, and Joined again, each map computed from the previous one:
//! while away it leads nothing and its partitions move to another replica; while syncing it
//! takes nothing from a `Joined` leader; once `Joined` and in sync, the map is exactly the map
//! from before the failure (same replicas, same leaders).

use coregrid_cluster::map::{compute_leadership_map, LeadershipMap, MapInput};
use coregrid_cluster::types::{Epoch, NodeId, NodeState, PartitionId, Term};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn next_map(
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
    let epoch = previous.map_or(Epoch(1), |map| Epoch(map.epoch.get() + 1));
    compute_leadership_map(&input, Term(1), epoch)
}

fn leaders(map: &LeadershipMap) -> Vec<Option<NodeId>> {
    map.partitions
        .iter()
        .map(|assignment| assignment.leader)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn a_node_that_returns_joined_gets_back_exactly_its_leadership(
        ids in proptest::collection::btree_set(any::<u64>(), 1..=9),
        partitions in 0u32..=64,
        replication_factor in 1usize..=5,
        victim_pick in any::<prop::sample::Index>(),
    ) {
        let mut members: BTreeMap<NodeId, NodeState> =
            ids.iter().map(|id| (NodeId(*id), NodeState::Joined)).collect();
        let victim = *victim_pick.get(&ids.iter().map(|id| NodeId(*id)).collect::<Vec<_>>());
        let nothing_lags = BTreeSet::new();
        let before = next_map(&members, partitions, replication_factor, None, &nothing_lags);

        members.insert(victim, NodeState::Dead);
        let away = next_map(&members, partitions, replication_factor, Some(&before), &nothing_lags);
        for (old, new) in before.partitions.iter().zip(&away.partitions) {
            prop_assert_eq!(&new.replicas, &old.replicas, "a dead replica keeps its place");
            prop_assert_ne!(new.leader, Some(victim));
            if old.leader != Some(victim) {
                prop_assert_eq!(new.leader, old.leader, "only the victim's partitions move");
            } else if old.replicas.len() > 1 {
                prop_assert!(new.leader.is_some(), "a Joined replica takes over");
            }
        }

        members.insert(victim, NodeState::JoinedSyncing);
        let victim_lags: BTreeSet<(PartitionId, NodeId)> =
            (0..partitions).map(|partition| (PartitionId(partition), victim)).collect();
        let syncing = next_map(&members, partitions, replication_factor, Some(&away), &victim_lags);
        prop_assert_eq!(leaders(&syncing), leaders(&away), "a lagging node takes nothing");

        let caught_up = next_map(&members, partitions, replication_factor, Some(&syncing), &nothing_lags);
        for (old, new) in syncing.partitions.iter().zip(&caught_up.partitions) {
            match old.leader {
                Some(leader) => prop_assert_eq!(new.leader, Some(leader), "a syncing node takes nothing from a leader"),
                None => prop_assert_eq!(new.leader, Some(victim), "paper leadership where nobody else can lead"),
            }
        }

        members.insert(victim, NodeState::Joined);
        let back = next_map(&members, partitions, replication_factor, Some(&caught_up), &nothing_lags);
        prop_assert_eq!(&back.partitions, &before.partitions);
    }
}
