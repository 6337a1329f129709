//! The rules of leader scoring (design.md section 4, as `cluster/src/scoring.rs` documents
//! them) hold on random inputs: random member sets in every state, replication factors from 0
//! to far beyond the cluster, random partition counts, previous maps both realistic (computed
//! from an earlier cluster) and malformed (unknown nodes, duplicates, another partition
//! count), and random lagging sets. Each test states one rule and checks it against a naive
//! restatement written here, independently of the implementation.

use coregrid_cluster::map::{compute_leadership_map, LeadershipMap, MapInput, PartitionAssignment};
use coregrid_cluster::types::{Epoch, NodeId, NodeState, PartitionId, Term};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// Node ids are drawn from a small range so that previous maps, lagging sets and member sets
/// overlap often.
const NODE_IDS_MAX: u64 = 12;
const PARTITIONS_GENERATED_MAX: u32 = 24;

/// One random call of `compute_leadership_map`, owning what `MapInput` borrows.
#[derive(Clone, Debug)]
struct Case {
    members: BTreeMap<NodeId, NodeState>,
    partitions: u32,
    replication_factor: usize,
    previous: Option<LeadershipMap>,
    lagging: BTreeSet<(PartitionId, NodeId)>,
}

impl Case {
    fn input(&self) -> MapInput<'_> {
        MapInput {
            members: &self.members,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            previous: self.previous.as_ref(),
            lagging: &self.lagging,
        }
    }

    fn compute(&self) -> LeadershipMap {
        compute_leadership_map(&self.input(), Term(5), Epoch(9))
    }

    fn ordered_members(&self) -> Vec<(NodeId, NodeState)> {
        self.members
            .iter()
            .map(|(node, state)| (*node, *state))
            .collect()
    }

    fn index_of(&self, node: NodeId) -> Option<usize> {
        self.members.keys().position(|member| *member == node)
    }

    /// What a fresh assignment must give: `min(rf, non-leaving)` members walked circularly
    /// from `p % n`, `Leaving` ones skipped.
    fn fresh_replicas(&self, partition: u32) -> Vec<NodeId> {
        let ordered = self.ordered_members();
        let member_count = ordered.len();
        if member_count == 0 {
            return Vec::new();
        }
        let ideal = partition as usize % member_count;
        let non_leaving = ordered
            .iter()
            .filter(|(_, state)| *state != NodeState::Leaving)
            .count();
        let wanted = self.replication_factor.min(non_leaving);
        let mut replicas = Vec::new();
        for step in 0..member_count {
            if replicas.len() == wanted {
                break;
            }
            let (node, state) = ordered[(ideal + step) % member_count];
            if state != NodeState::Leaving {
                replicas.push(node);
            }
        }
        replicas
    }

    /// Whether the previous map's set for `partition` must be kept.
    fn previous_set_valid(&self, previous: &PartitionAssignment, partition: u32) -> bool {
        let distinct: BTreeSet<NodeId> = previous.replicas.iter().copied().collect();
        distinct.len() == previous.replicas.len()
            && previous.replicas.len() == self.fresh_replicas(partition).len()
            && previous.replicas.iter().all(|replica| {
                self.members
                    .get(replica)
                    .is_some_and(|state| *state != NodeState::Leaving)
            })
    }

    fn previous_assignment(&self, partition: u32) -> Option<&PartitionAssignment> {
        self.previous.as_ref()?.partitions.get(partition as usize)
    }

    /// `(state_rank, forward distance)` of `node` for `partition` if it may lead it.
    fn score(&self, partition: u32, node: NodeId) -> Option<(u8, usize)> {
        let rank = self.members.get(&node)?.leader_rank()?;
        if self.lagging.contains(&(PartitionId(partition), node)) {
            return None;
        }
        let member_count = self.members.len();
        let ideal = partition as usize % member_count;
        let index = self.index_of(node)?;
        Some((rank, (index + member_count - ideal) % member_count))
    }

    fn candidates(&self, partition: u32, replicas: &[NodeId]) -> Vec<(NodeId, (u8, usize))> {
        replicas
            .iter()
            .filter_map(|replica| Some((*replica, self.score(partition, *replica)?)))
            .collect()
    }
}

fn node_state() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        3 => Just(NodeState::Joined),
        1 => Just(NodeState::JoinedSyncing),
        1 => Just(NodeState::Joining),
        1 => Just(NodeState::Leaving),
        1 => Just(NodeState::Dead),
    ]
}

fn members() -> impl Strategy<Value = BTreeMap<NodeId, NodeState>> {
    proptest::collection::btree_map((0..NODE_IDS_MAX).prop_map(NodeId), node_state(), 0..=9)
}

fn lagging() -> impl Strategy<Value = BTreeSet<(PartitionId, NodeId)>> {
    proptest::collection::btree_set(
        (
            (0..PARTITIONS_GENERATED_MAX).prop_map(PartitionId),
            (0..NODE_IDS_MAX).prop_map(NodeId),
        ),
        0..30,
    )
}

fn replication_factor() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0usize..=6, 1 => Just(usize::MAX)]
}

/// A malformed previous map: any nodes, duplicates, non-members, any partition count.
fn arbitrary_previous() -> impl Strategy<Value = LeadershipMap> {
    let assignment = (
        proptest::collection::vec((0..NODE_IDS_MAX).prop_map(NodeId), 0..=5),
        proptest::option::of(0..NODE_IDS_MAX),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(replicas, leader_id, pick, leader_from_replicas)| {
            let leader = if leader_from_replicas && !replicas.is_empty() {
                Some(replicas[pick.index(replicas.len())])
            } else {
                leader_id.map(NodeId)
            };
            PartitionAssignment { leader, replicas }
        });
    proptest::collection::vec(assignment, 0..=(PARTITIONS_GENERATED_MAX as usize + 4)).prop_map(
        |partitions| LeadershipMap {
            epoch: Epoch(8),
            term: Term(5),
            partitions,
        },
    )
}

/// A realistic previous map: computed from an earlier cluster (same id space, its own states
/// and lagging set), possibly itself from an earlier map.
fn computed_previous(
    partitions: u32,
    replication_factor: usize,
) -> impl Strategy<Value = LeadershipMap> {
    (
        members(),
        lagging(),
        proptest::option::of(arbitrary_previous()),
    )
        .prop_map(move |(members, lagging, earlier)| {
            let input = MapInput {
                members: &members,
                partitions,
                replication_factor,
                previous: earlier.as_ref(),
                lagging: &lagging,
            };
            compute_leadership_map(&input, Term(4), Epoch(8))
        })
}

fn case() -> impl Strategy<Value = Case> {
    (0..=PARTITIONS_GENERATED_MAX, replication_factor()).prop_flat_map(
        |(partitions, replication_factor)| {
            let previous = prop_oneof![
                1 => Just(None),
                2 => computed_previous(partitions, replication_factor).prop_map(Some),
                1 => arbitrary_previous().prop_map(Some),
            ];
            (members(), previous, lagging()).prop_map(move |(members, previous, lagging)| Case {
                members,
                partitions,
                replication_factor,
                previous,
                lagging,
            })
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// One assignment per partition, the arguments' term and epoch, distinct member replicas,
    /// never more than the replication factor.
    #[test]
    fn the_map_is_well_formed(case in case()) {
        let map = case.compute();
        prop_assert_eq!(map.partitions.len(), case.partitions as usize);
        prop_assert_eq!(map.term, Term(5));
        prop_assert_eq!(map.epoch, Epoch(9));
        for assignment in &map.partitions {
            let distinct: BTreeSet<NodeId> = assignment.replicas.iter().copied().collect();
            prop_assert_eq!(distinct.len(), assignment.replicas.len());
            prop_assert!(assignment.replicas.len() <= case.replication_factor);
            for replica in &assignment.replicas {
                prop_assert!(case.members.contains_key(replica));
            }
        }
    }

    /// The leader is a replica, in a state that may lead, not lagging; and a partition is
    /// left without a leader only when no replica qualifies.
    #[test]
    fn the_leader_is_a_caught_up_replica_that_may_lead(case in case()) {
        let map = case.compute();
        for (partition, assignment) in (0..).zip(&map.partitions) {
            let candidates = case.candidates(partition, &assignment.replicas);
            match assignment.leader {
                Some(leader) => {
                    prop_assert!(assignment.replicas.contains(&leader));
                    prop_assert!(case.members[&leader].leader_rank().is_some());
                    prop_assert!(!case.lagging.contains(&(PartitionId(partition), leader)));
                }
                None => prop_assert!(candidates.is_empty(), "no leader but {:?}", candidates),
            }
        }
    }

    /// Without a previous map every partition gets exactly `min(rf, non-leaving members)`
    /// replicas, walked circularly from `p % n` skipping `Leaving` members.
    #[test]
    fn fresh_replicas_are_placed_forward_from_the_ideal_index(mut case in case()) {
        case.previous = None;
        let map = case.compute();
        for (partition, assignment) in (0..).zip(&map.partitions) {
            prop_assert_eq!(&assignment.replicas, &case.fresh_replicas(partition));
        }
    }

    /// A previous replica set is kept exactly when it is still valid (distinct current
    /// members, none `Leaving`, the fresh size); otherwise the partition is placed afresh.
    #[test]
    fn valid_previous_replica_sets_are_kept_and_others_placed_afresh(case in case()) {
        let map = case.compute();
        for (partition, assignment) in (0..).zip(&map.partitions) {
            let expected = match case.previous_assignment(partition) {
                Some(previous) if case.previous_set_valid(previous, partition) => {
                    previous.replicas.clone()
                }
                _ => case.fresh_replicas(partition),
            };
            prop_assert_eq!(&assignment.replicas, &expected);
        }
    }

    /// Stickiness: a previous leader that is still a candidate keeps leadership unless a
    /// `Joined` candidate has a strictly better (rank, distance); when it loses, it loses to
    /// such a candidate.
    #[test]
    fn a_still_eligible_previous_leader_is_kept_unless_a_joined_candidate_scores_better(
        case in case(),
    ) {
        let map = case.compute();
        for (partition, assignment) in (0..).zip(&map.partitions) {
            let Some(previous_leader) = case.previous_assignment(partition).and_then(|p| p.leader)
            else {
                continue;
            };
            if !assignment.replicas.contains(&previous_leader) {
                continue;
            }
            let Some(previous_score) = case.score(partition, previous_leader) else {
                continue;
            };
            let joined_better_exists = case
                .candidates(partition, &assignment.replicas)
                .iter()
                .any(|(_, score)| score.0 == 0 && *score < previous_score);
            if joined_better_exists {
                let leader = assignment.leader.expect("a candidate exists");
                let leader_score = case.score(partition, leader).expect("the leader qualifies");
                prop_assert_ne!(leader, previous_leader);
                prop_assert_eq!(leader_score.0, 0);
                prop_assert!(leader_score < previous_score);
            } else {
                prop_assert_eq!(assignment.leader, Some(previous_leader));
            }
        }
    }

    /// Without a sticky previous leader, the best-scored candidate leads: lowest
    /// (rank, forward distance), then lowest id.
    #[test]
    fn without_a_sticky_previous_leader_the_best_scored_candidate_leads(case in case()) {
        let map = case.compute();
        for (partition, assignment) in (0..).zip(&map.partitions) {
            let candidates = case.candidates(partition, &assignment.replicas);
            let previous_is_candidate = case
                .previous_assignment(partition)
                .and_then(|previous| previous.leader)
                .is_some_and(|leader| candidates.iter().any(|(node, _)| *node == leader));
            if previous_is_candidate {
                continue;
            }
            let best = candidates
                .iter()
                .min_by_key(|(node, score)| (*score, *node))
                .map(|(node, _)| *node);
            prop_assert_eq!(assignment.leader, best);
        }
    }

    /// Same input, same map; and a map fed back as its own previous map is a fixed point (a
    /// controller recomputing without news proposes nothing new).
    #[test]
    fn the_map_is_deterministic_and_a_fixed_point(case in case()) {
        let map = case.compute();
        prop_assert_eq!(&case.clone().compute(), &map);
        let mut again = case.clone();
        again.previous = Some(map.clone());
        prop_assert_eq!(again.compute().partitions, map.partitions);
    }

    /// When every member is `Joined` and nothing lags, the leaders depend only on the replica
    /// sets, not on who led before: leadership cannot stay piled where a failure put it.
    #[test]
    fn with_everyone_joined_and_in_sync_leaders_do_not_depend_on_history(
        mut case in case(),
        leader_picks in proptest::collection::vec(any::<Option<prop::sample::Index>>(), 32),
    ) {
        for state in case.members.values_mut() {
            *state = NodeState::Joined;
        }
        case.lagging.clear();
        let map = case.compute();
        let mut other_history = case.clone();
        let mut previous = map.clone();
        for (assignment, pick) in previous.partitions.iter_mut().zip(&leader_picks) {
            assignment.leader = match pick {
                Some(index) if !assignment.replicas.is_empty() => {
                    Some(assignment.replicas[index.index(assignment.replicas.len())])
                }
                _ => None,
            };
        }
        other_history.previous = Some(previous);
        prop_assert_eq!(other_history.compute().partitions, map.partitions);
    }
}
