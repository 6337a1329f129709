//! A fresh cluster whose members are all `Joined` spreads leadership evenly: partition `p` is
//! led by the member at index `p % n` (its ideal member, which a fresh assignment always makes
//! a replica), so each member leads `floor(P / n)` or `ceil(P / n)` partitions, and any two
//! members' counts differ by at most one. This is exactly what the rule guarantees, nothing
//! looser: with dead or leaving members the spread is not even, and these tests do not claim
//! it is.

use coregrid_cluster::map::{compute_leadership_map, LeadershipMap, MapInput};
use coregrid_cluster::types::{Epoch, NodeId, NodeState, Term};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn fresh_map(
    members: &BTreeMap<NodeId, NodeState>,
    partitions: u32,
    replication_factor: usize,
) -> LeadershipMap {
    let lagging = BTreeSet::new();
    let input = MapInput {
        members,
        partitions,
        replication_factor,
        previous: None,
        lagging: &lagging,
    };
    compute_leadership_map(&input, Term(1), Epoch(1))
}

fn joined_members() -> impl Strategy<Value = BTreeMap<NodeId, NodeState>> {
    proptest::collection::btree_set(any::<u64>(), 1..=16).prop_map(|ids| {
        ids.into_iter()
            .map(|id| (NodeId(id), NodeState::Joined))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn each_partition_is_led_by_its_ideal_member(
        members in joined_members(),
        partitions in 0u32..=300,
        replication_factor in 1usize..=7,
    ) {
        let map = fresh_map(&members, partitions, replication_factor);
        let ordered: Vec<NodeId> = members.keys().copied().collect();
        for (partition, assignment) in map.partitions.iter().enumerate() {
            prop_assert_eq!(assignment.leader, Some(ordered[partition % ordered.len()]));
        }
    }

    #[test]
    fn every_member_leads_the_floor_or_ceiling_of_its_share(
        members in joined_members(),
        partitions in 0u32..=300,
        replication_factor in 1usize..=7,
    ) {
        let map = fresh_map(&members, partitions, replication_factor);
        let mut led_by: BTreeMap<NodeId, usize> = members.keys().map(|node| (*node, 0)).collect();
        for assignment in &map.partitions {
            *led_by.get_mut(&assignment.leader.expect("a Joined replica leads")).expect("a member") += 1;
        }
        let member_count = members.len();
        let floor = partitions as usize / member_count;
        let ceiling = (partitions as usize).div_ceil(member_count);
        for count in led_by.values() {
            prop_assert!((floor..=ceiling).contains(count), "{count} not in {floor}..={ceiling}");
        }
        let most = led_by.values().max().copied().unwrap_or(0);
        let least = led_by.values().min().copied().unwrap_or(0);
        prop_assert!(most - least <= 1);
    }
}

#[test]
fn four_members_and_ten_partitions_lead_three_three_two_two() {
    let members: BTreeMap<NodeId, NodeState> = [4, 1, 3, 2]
        .into_iter()
        .map(|id| (NodeId(id), NodeState::Joined))
        .collect();
    let map = fresh_map(&members, 10, 3);
    let leaders: Vec<u64> = map
        .partitions
        .iter()
        .map(|assignment| assignment.leader.expect("a leader").get())
        .collect();
    assert_eq!(leaders, [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]);
}
