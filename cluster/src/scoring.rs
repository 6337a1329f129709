//! Leader scoring and replica assignment (design.md section 4): the pure function the elected
//! controller runs to turn what it knows (members and their states, the previous map, which
//! replicas lag) into the next leadership map. It reads no clock and keeps no state, so the
//! same input always gives the same map, under the simulator as in production.
//!
//! # The rules
//!
//! **The ring.** Members are ordered by id (`BTreeMap` order) and numbered `0..n`, where `n`
//! counts every member in any state: a dead member keeps its slot, so the ideal indices of all
//! other partitions do not shift while it is away, and leadership can return to exactly where
//! it was when it comes back. Partition `p`'s ideal index is `p % n`.
//!
//! **Replicas.** Moving a replica means moving data, so a partition keeps its previous replica
//! set while that set is still valid: every replica is a current member, none is `Leaving`, no
//! node appears twice, and the set has the size a fresh assignment would have (see below).
//! The size check is a refinement of design.md section 4: without it a set assigned while
//! the cluster was smaller (or empty) would stay under-replicated forever. Otherwise the
//! partition gets a fresh set of `min(replication_factor, eligible)` replicas, `eligible`
//! being the number of members that are not `Leaving`: members taken circularly from the
//! ideal index onward, skipping `Leaving` members. `Dead` (and `Joining`) members are *not*
//! skipped: a dead node usually comes back with its data, and replacing it at once would
//! move a whole replica's data on every restart; a partition with a dead replica runs with
//! one replica fewer until it returns.
//!
//! **Candidates.** A replica may lead partition `p` when its state has a
//! [`NodeState::leader_rank`] (`Joined` or `JoinedSyncing`) and `(p, replica)` is not in
//! `lagging`. A lagging replica is never a candidate at all, so it is never chosen over one
//! that is caught up (that would lose acknowledged writes); when no replica is a candidate,
//! the partition has no leader (`None`) and takes no writes until a later map names one.
//!
//! **Score.** A candidate's score is `(state_rank, forward_distance)`, lower is better, where
//! `forward_distance` is how many steps forward around the ring of `n` members the candidate's
//! index lies from the ideal index (`(index - ideal) mod n`). Forward distance rather than the
//! shorter of both directions, for two reasons. Fresh replicas are placed forward from the
//! ideal index, so the score ranks them in placement order: the ideal member first, then the
//! next one, as a failover order. And distinct members always have distinct forward
//! distances, so two candidates never tie: with "shorter direction" the members just before
//! and just after the ideal index would tie, the sticky one would win, and who leads would
//! depend on history. Ties are still broken by node id, as design.md asks, but that can only
//! matter between equal scores, which distinct members never have.
//!
//! **Stickiness.** The previous map's leader of `p` keeps leadership while it is still a
//! candidate, *unless* a `Joined` candidate has a strictly better score. That one exception is
//! preferred-leader rebalancing: when the node a partition prefers (distance 0) comes back
//! `Joined` and in sync, leadership moves back to it, so a restart does not leave leadership
//! piled onto the survivors; and a `JoinedSyncing` leader (which holds only "paper"
//! leadership, refusing writes) gives way to any `Joined` candidate. A `JoinedSyncing`
//! candidate never takes leadership from a current leader. When the previous leader is not a
//! candidate, the best-scored candidate leads.
//!
//! **What follows** (each is a test in `cluster/tests/scoring_*.rs`):
//! - With every member `Joined` and nothing lagging, each partition is led by its replica
//!   nearest forward from the ideal index, whatever led before: leadership never stays piled
//!   where a failure put it. In a fresh cluster that replica is the ideal member itself, so
//!   member `i` leads the partitions `p` with `p % n == i`: `floor(P / n)` or `ceil(P / n)`
//!   each.
//! - A node that dies and returns `Joined` and in sync gets back exactly the map from before:
//!   its replica sets were kept while it was away, and it scores best where it scored best.
//! - A map fed back as its own previous map comes out unchanged: a controller recomputing
//!   without news proposes nothing new.
//! - A member that joins gets replicas only where partitions are placed afresh; kept replica
//!   sets do not move to it (moving replicas is later work, and needs the joint majorities of
//!   design.md section 6a). It does change `n`, so every ideal index, and leaders are re-scored
//!   within the kept sets.
//! - `Joining` members are placed as replicas (they are on their way in and will sync) but
//!   cannot lead until `JoinedSyncing`.
//!
//! **What this does not do.** It trusts `lagging`: choosing, after fencing, the replica with
//! the highest (epoch, LSN) among a majority (design.md section 6a) is the caller's job, which
//! it expresses by marking every other replica of the partition as lagging. Likewise a replica
//! this function places afresh (a set replaced because a member is `Leaving` or the set had
//! the wrong size) may hold none of the partition's data; it is scored like any other unless
//! the caller marks it lagging until replication reports it caught up.
//!
//! **Totality.** The function never panics: no members, a replication factor of 0 or larger
//! than the cluster, 0 partitions, or a previous map with another partition count or unknown
//! nodes all give a well-formed map (`partitions.len() == input.partitions`, leaders `None`
//! where nothing can lead). Inputs beyond the limits of [`crate::constants`] are computed as
//! given and only reported through `tracing`, since refusing them would leave the cluster with
//! no map at all. Cost: `O(n log n + P * rf * log n)`, with no walk over `Leaving` members per
//! partition.

use crate::constants::{MEMBERS_MAX, PARTITIONS_MAX, REPLICATION_FACTOR_MAX};
use crate::map::{LeadershipMap, MapInput, PartitionAssignment};
use crate::types::{Epoch, NodeId, NodeState, PartitionId, Term};
use std::collections::BTreeMap;

/// Computes the map the controller of `term` proposes as `epoch` from `input`, by the rules of
/// this module's documentation. Deterministic and total: the same input gives the same map,
/// and no input panics.
pub fn compute_leadership_map(input: &MapInput<'_>, term: Term, epoch: Epoch) -> LeadershipMap {
    report_out_of_limits(input);
    let ring = Ring::new(input.members);
    let replicas_per_partition = input.replication_factor.min(ring.eligible_indices.len());
    let partitions = (0..input.partitions)
        .map(|partition_index| {
            let partition = PartitionId(partition_index);
            let previous = input
                .previous
                .and_then(|previous_map| previous_map.assignment(partition));
            let replicas = match previous {
                Some(previous_assignment)
                    if ring.replicas_still_valid(
                        &previous_assignment.replicas,
                        replicas_per_partition,
                    ) =>
                {
                    previous_assignment.replicas.clone()
                }
                _ => ring.fresh_replicas(partition, replicas_per_partition),
            };
            let previous_leader =
                previous.and_then(|previous_assignment| previous_assignment.leader);
            let leader = ring.choose_leader(input, partition, &replicas, previous_leader);
            PartitionAssignment { leader, replicas }
        })
        .collect();
    LeadershipMap {
        epoch,
        term,
        partitions,
    }
}

/// Logs inputs beyond the limits of [`crate::constants`]. The map is still computed: a
/// controller that refused would leave the cluster without leaders, which is worse than a
/// large map.
fn report_out_of_limits(input: &MapInput<'_>) {
    if input.members.len() > MEMBERS_MAX {
        tracing::warn!(
            members = input.members.len(),
            MEMBERS_MAX,
            "more members than the limit"
        );
    }
    if input.partitions > PARTITIONS_MAX {
        tracing::warn!(
            partitions = input.partitions,
            PARTITIONS_MAX,
            "more partitions than the limit"
        );
    }
    if input.replication_factor > REPLICATION_FACTOR_MAX {
        tracing::warn!(
            replication_factor = input.replication_factor,
            REPLICATION_FACTOR_MAX,
            "replication factor above the limit"
        );
    }
}

/// A candidate's score: lower is better. Field order is comparison order (derived `Ord`):
/// state rank, then forward distance, then node id as the final tie-break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Score {
    /// [`NodeState::leader_rank`]: 0 for `Joined`, 1 for `JoinedSyncing`.
    state_rank: u8,
    /// Steps forward around the ring from the partition's ideal index.
    distance_members: usize,
    /// Breaks ties; never decides between distinct members, whose distances differ.
    node: NodeId,
}

impl Score {
    /// Whether this score beats `other` on the rank and distance alone: the "strictly better"
    /// of stickiness ignores the id tie-break, so a leader is never moved for its id.
    fn strictly_better_than(self, other: Score) -> bool {
        (self.state_rank, self.distance_members) < (other.state_rank, other.distance_members)
    }
}

/// The members as a ring ordered by id, with what scoring needs to look up.
struct Ring {
    /// Every member's index on the ring and state.
    index_and_state_by_node: BTreeMap<NodeId, (usize, NodeState)>,
    /// The members by index.
    nodes_by_index: Vec<NodeId>,
    /// Indices of members that may hold a replica (not `Leaving`), ascending.
    eligible_indices: Vec<usize>,
    /// For every index `i`, the position in `eligible_indices` of the first eligible index at
    /// or circularly after `i`; empty when no member is eligible.
    first_eligible_position_by_index: Vec<usize>,
}

impl Ring {
    /// Numbers `members` by id.
    fn new(members: &BTreeMap<NodeId, NodeState>) -> Ring {
        let nodes_by_index: Vec<NodeId> = members.keys().copied().collect();
        let index_and_state_by_node = members
            .iter()
            .enumerate()
            .map(|(index, (node, state))| (*node, (index, *state)))
            .collect();
        let eligible_indices: Vec<usize> = members
            .values()
            .enumerate()
            .filter(|(_, state)| **state != NodeState::Leaving)
            .map(|(index, _)| index)
            .collect();
        let first_eligible_position_by_index = if eligible_indices.is_empty() {
            Vec::new()
        } else {
            (0..nodes_by_index.len())
                .map(|index| {
                    // The first eligible index >= `index`, wrapping to the first one overall.
                    let position = eligible_indices.partition_point(|eligible| *eligible < index);
                    if position == eligible_indices.len() {
                        0
                    } else {
                        position
                    }
                })
                .collect()
        };
        Ring {
            index_and_state_by_node,
            nodes_by_index,
            eligible_indices,
            first_eligible_position_by_index,
        }
    }

    /// The number of members, `n`.
    fn member_count(&self) -> usize {
        self.nodes_by_index.len()
    }

    /// Partition `partition`'s ideal index, `p % n`; `None` with no members.
    fn ideal_index(&self, partition: PartitionId) -> Option<usize> {
        let partition_index = usize::try_from(partition.get()).ok()?;
        partition_index.checked_rem(self.member_count())
    }

    /// Whether a previous replica set may be kept: `replicas_per_partition` distinct current
    /// members, none `Leaving`.
    fn replicas_still_valid(&self, replicas: &[NodeId], replicas_per_partition: usize) -> bool {
        if replicas.len() != replicas_per_partition {
            return false;
        }
        let all_members_not_leaving = replicas.iter().all(|replica| {
            self.index_and_state_by_node
                .get(replica)
                .is_some_and(|(_, state)| *state != NodeState::Leaving)
        });
        let distinct = replicas
            .iter()
            .enumerate()
            .all(|(position, replica)| !replicas[..position].contains(replica));
        all_members_not_leaving && distinct
    }

    /// A fresh replica set: `replicas_per_partition` members not `Leaving`, taken circularly
    /// from the ideal index onward, in that order.
    fn fresh_replicas(&self, partition: PartitionId, replicas_per_partition: usize) -> Vec<NodeId> {
        let Some(ideal_index) = self.ideal_index(partition) else {
            return Vec::new();
        };
        let Some(first_position) = self.first_eligible_position_by_index.get(ideal_index) else {
            return Vec::new();
        };
        let eligible_count = self.eligible_indices.len();
        (0..replicas_per_partition.min(eligible_count))
            .map(|offset| {
                let index = self.eligible_indices[(first_position + offset) % eligible_count];
                self.nodes_by_index[index]
            })
            .collect()
    }

    /// `node`'s score as a candidate for `partition`, or `None` if it may not lead it: not a
    /// member, in a state that cannot lead, or lagging.
    fn candidate_score(
        &self,
        input: &MapInput<'_>,
        partition: PartitionId,
        node: NodeId,
    ) -> Option<Score> {
        let (index, state) = *self.index_and_state_by_node.get(&node)?;
        let state_rank = state.leader_rank()?;
        if input.lagging.contains(&(partition, node)) {
            return None;
        }
        let ideal_index = self.ideal_index(partition)?;
        Some(Score {
            state_rank,
            distance_members: forward_distance_members(ideal_index, index, self.member_count()),
            node,
        })
    }

    /// The leader of `partition` among `replicas` (module docs: candidates, score,
    /// stickiness).
    fn choose_leader(
        &self,
        input: &MapInput<'_>,
        partition: PartitionId,
        replicas: &[NodeId],
        previous_leader: Option<NodeId>,
    ) -> Option<NodeId> {
        let best = replicas
            .iter()
            .filter_map(|replica| self.candidate_score(input, partition, *replica))
            .min()?;
        let previous_score = previous_leader
            .filter(|previous| replicas.contains(previous))
            .and_then(|previous| self.candidate_score(input, partition, previous));
        match previous_score {
            Some(previous) => {
                let joined_beats_previous =
                    best.state_rank == 0 && best.strictly_better_than(previous);
                if joined_beats_previous {
                    Some(best.node)
                } else {
                    Some(previous.node)
                }
            }
            None => Some(best.node),
        }
    }
}

/// How many steps forward around a ring of `member_count` members `index` lies from `ideal`:
/// `(index - ideal) mod member_count`. Both indices are below `member_count`.
fn forward_distance_members(ideal: usize, index: usize, member_count: usize) -> usize {
    if index >= ideal {
        index - ideal
    } else {
        member_count - ideal + index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(states: &[NodeState]) -> Ring {
        let members: BTreeMap<NodeId, NodeState> = (10..)
            .step_by(10)
            .map(NodeId)
            .zip(states.iter().copied())
            .collect();
        Ring::new(&members)
    }

    #[test]
    fn forward_distance_counts_steps_forward_and_wraps() {
        assert_eq!(forward_distance_members(2, 2, 5), 0);
        assert_eq!(forward_distance_members(2, 4, 5), 2);
        assert_eq!(forward_distance_members(2, 0, 5), 3);
        assert_eq!(forward_distance_members(4, 3, 5), 4);
        assert_eq!(forward_distance_members(0, 0, 1), 0);
    }

    #[test]
    fn first_eligible_position_skips_leaving_members_and_wraps() {
        use NodeState::{Dead, Joined, Leaving};
        let ring = ring_of(&[Leaving, Joined, Leaving, Dead, Leaving]);
        assert_eq!(ring.eligible_indices, [1, 3]);
        assert_eq!(ring.first_eligible_position_by_index, [0, 0, 1, 1, 0]);
        assert_eq!(
            ring.fresh_replicas(PartitionId(4), 2),
            [NodeId(20), NodeId(40)],
            "ideal index 4 is leaving and last: wrap to index 1"
        );
        assert_eq!(
            ring.fresh_replicas(PartitionId(7), 2),
            [NodeId(40), NodeId(20)]
        );
    }

    #[test]
    fn no_eligible_member_gives_no_replicas() {
        let ring = ring_of(&[NodeState::Leaving, NodeState::Leaving]);
        assert!(ring.first_eligible_position_by_index.is_empty());
        assert!(ring.fresh_replicas(PartitionId(1), 2).is_empty());
        assert!(ring_of(&[]).fresh_replicas(PartitionId(0), 3).is_empty());
    }

    #[test]
    fn strictly_better_ignores_the_id_tie_break() {
        let score = |state_rank, distance_members, node| Score {
            state_rank,
            distance_members,
            node: NodeId(node),
        };
        assert!(!score(0, 1, 1).strictly_better_than(score(0, 1, 2)));
        assert!(score(0, 3, 9).strictly_better_than(score(1, 0, 1)));
        assert!(score(0, 0, 9).strictly_better_than(score(0, 1, 1)));
        assert!(
            score(0, 1, 1) < score(0, 1, 2),
            "the id still orders equal scores"
        );
    }
}
