//! The failover of a partition whose leader is gone (design.md section 6a), on maps computed
//! exactly as the controller computes them (`Controller::compute_next_map`):
//! [`plan_failover`], the scoring, then [`apply_failover`]. A model of replication runs under
//! the maps: a partition's leader writes in its map's epoch, some live replicas copy its log,
//! and a write counts as acknowledged at `Quorum` once a majority of the replica set holds it.
//! Replicas of a partition that has no leader in the latest map report their last record (the
//! fenced positions), as data shards do.
//!
//! Handoffs run too: the controller's wishes (`wanted_handoffs`) that a leader made ready (the
//! target holds its whole log) move a partition to its preferred replica.
//!
//! After every map: a leader is one of its replicas; a partition's leader changes only
//! through a map in which it had none (the fence) or a ready handoff; and a new leader holds
//! every write acknowledged at `Quorum` before it (promise 2). This fails when the new leader is picked
//! without a majority's reports, or not the most recent of them.
//!
//! Members walk through random states (`Joining`, `JoinedSyncing`, `Joined`, `Leaving`,
//! `Dead`), with nodes added on the way; the pinned case is a leader stopped with SIGTERM
//! (`Leaving`) and back.

use coregrid_cluster::map::{
    apply_failover, compute_leadership_map, plan_failover, wanted_handoffs, FencedPosition,
    HandoffsReady, LeadershipMap, MapInput, Positions,
};
use coregrid_cluster::types::{Epoch, NodeId, NodeState, PartitionId, Term};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A replica's last record: `(epoch, lsn)`.
type LogEnd = (u64, u64);

/// The model: every replica's log end per partition, and what was acknowledged at `Quorum`.
#[derive(Default)]
struct Model {
    logs: BTreeMap<(u32, NodeId), LogEnd>,
    acknowledged: BTreeMap<u32, LogEnd>,
}

impl Model {
    fn end(&self, partition: u32, node: NodeId) -> LogEnd {
        self.logs.get(&(partition, node)).copied().unwrap_or((0, 0))
    }

    /// The fenced positions the live replicas of leaderless partitions report, those whose
    /// bit of `heard` is set (the others' reports are lost or late).
    fn positions(
        &self,
        map: &LeadershipMap,
        members: &BTreeMap<NodeId, NodeState>,
        heard: u64,
    ) -> Positions {
        let mut positions = Positions::new();
        for (index, assignment) in map.partitions.iter().enumerate() {
            if assignment.leader.is_some() {
                continue;
            }
            let partition = index as u32;
            for &node in &assignment.replicas {
                if matches!(members.get(&node), None | Some(NodeState::Dead))
                    || heard >> (node.get() % 64) & 1 == 0
                {
                    continue;
                }
                let (last_epoch, last_lsn) = self.end(partition, node);
                positions.entry(node).or_default().push(FencedPosition {
                    partition: PartitionId(partition),
                    map_epoch: map.epoch,
                    last_epoch: Epoch(last_epoch),
                    last_lsn,
                    usable: true,
                });
            }
        }
        positions
    }

    /// The handoffs the controller wishes in `map` that their leaders made ready: the target
    /// holds the leader's whole log (a leader stops writing while it waits for that).
    fn ready(
        &self,
        map: &LeadershipMap,
        members: &BTreeMap<NodeId, NodeState>,
        replication_factor: usize,
    ) -> HandoffsReady {
        let mut ready = HandoffsReady::new();
        for handoff in wanted_handoffs(map, members, replication_factor) {
            let partition = handoff.partition.get();
            let Some(leader) = map.leader(handoff.partition) else {
                continue;
            };
            if self.end(partition, handoff.to) == self.end(partition, leader) {
                ready.entry(leader).or_default().push(handoff);
            }
        }
        ready
    }

    /// The leader of every led partition writes `count` records in the map's epoch; the
    /// replicas picked by `copy` (live ones) take its log; a majority acknowledges.
    fn write(
        &mut self,
        map: &LeadershipMap,
        members: &BTreeMap<NodeId, NodeState>,
        count: u64,
        copy: u64,
    ) {
        if count == 0 {
            return;
        }
        for (index, assignment) in map.partitions.iter().enumerate() {
            let Some(leader) = assignment.leader else {
                continue;
            };
            let partition = index as u32;
            let (_, lsn) = self.end(partition, leader);
            let end = (map.epoch.get(), lsn + count);
            self.logs.insert((partition, leader), end);
            let mut holders = 1;
            for (position, &node) in assignment.replicas.iter().enumerate() {
                let alive = !matches!(members.get(&node), None | Some(NodeState::Dead));
                if node != leader && alive && copy >> (position % 64) & 1 == 1 {
                    self.logs.insert((partition, node), end);
                    holders += 1;
                }
            }
            if holders > assignment.replicas.len() / 2 {
                self.acknowledged.insert(partition, end);
            }
        }
    }
}

/// The controller's next map.
fn next_map(
    members: &BTreeMap<NodeId, NodeState>,
    partitions: u32,
    replication_factor: usize,
    previous: Option<&LeadershipMap>,
    positions: &Positions,
    ready: &HandoffsReady,
) -> LeadershipMap {
    let failover = plan_failover(previous, members, positions, ready);
    let input = MapInput {
        members,
        partitions,
        replication_factor,
        previous,
        lagging: &failover.lagging,
    };
    let epoch = previous.map_or(Epoch(1), |map| Epoch(map.epoch.get() + 1));
    let mut map = compute_leadership_map(&input, Term(1), epoch);
    apply_failover(&mut map, previous, members, &failover);
    map
}

/// The rules of a new map against the one before it and the model.
fn check(
    previous: &LeadershipMap,
    map: &LeadershipMap,
    model: &Model,
    ready: &HandoffsReady,
    step: &str,
) -> Result<(), TestCaseError> {
    let handed: Vec<(u32, NodeId)> = ready
        .values()
        .flatten()
        .map(|handoff| (handoff.partition.get(), handoff.to))
        .collect();
    for (index, (before, after)) in previous.partitions.iter().zip(&map.partitions).enumerate() {
        let partition = index as u32;
        let Some(leader) = after.leader else {
            continue;
        };
        prop_assert!(
            after.replicas.contains(&leader),
            "{step}: partition {partition}: leader {leader:?} outside its replicas {:?}",
            after.replicas
        );
        if before.leader == Some(leader) {
            continue;
        }
        prop_assert!(
            before.leader.is_none()
                || before.replicas.is_empty()
                || handed.contains(&(partition, leader)),
            "{step}: partition {partition} moved from {:?} to {leader:?} without a fence or a \
             ready handoff",
            before.leader
        );
        let acknowledged = model
            .acknowledged
            .get(&partition)
            .copied()
            .unwrap_or((0, 0));
        prop_assert!(
            model.end(partition, leader) >= acknowledged,
            "{step}: partition {partition}: new leader {leader:?} ends at {:?}, before the \
             write acknowledged at {acknowledged:?}",
            model.end(partition, leader)
        );
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

/// Runs `steps` of (node, its new state, records written, which replicas copy them, whose
/// reports are heard).
fn run(
    first: &[u64],
    partitions: u32,
    replication_factor: usize,
    steps: &[(u64, u8, u64, u64, u64)],
) -> Result<LeadershipMap, TestCaseError> {
    let mut members: BTreeMap<NodeId, NodeState> = first
        .iter()
        .map(|&id| (NodeId(id), NodeState::Joined))
        .collect();
    let mut model = Model::default();
    let mut map = next_map(
        &members,
        partitions,
        replication_factor,
        None,
        &Positions::new(),
        &HandoffsReady::new(),
    );
    for (index, &(node, pick, count, copy, heard)) in steps.iter().enumerate() {
        model.write(&map, &members, count, copy);
        members.insert(NodeId(node), state(pick));
        // Two rounds per step: the fence, then the failover on the positions it brings.
        for round in 0..2 {
            let positions = model.positions(&map, &members, heard.rotate_left(round * 7));
            let ready = model.ready(&map, &members, replication_factor);
            let next = next_map(
                &members,
                partitions,
                replication_factor,
                Some(&map),
                &positions,
                &ready,
            );
            check(
                &map,
                &next,
                &model,
                &ready,
                &format!("step {index} round {round}: node {node} {:?}", state(pick)),
            )?;
            map = next;
        }
    }
    Ok(map)
}

#[test]
fn a_leader_stopped_gracefully_is_replaced_by_the_most_recent_replica() {
    // Three nodes; the leader of partition 0 leaves (SIGTERM), is dead, comes back.
    let steps = [
        (0, 2, 5, u64::MAX), // everyone copies
        (0, 3, 3, 0b010),    // one follower copies, then the leader leaves
        (0, 4, 0, 0),
        (0, 0, 2, u64::MAX),
        (0, 2, 1, u64::MAX),
    ];
    let members: BTreeMap<NodeId, NodeState> = [1, 2, 3]
        .into_iter()
        .map(|id| (NodeId(id), NodeState::Joined))
        .collect();
    let first = next_map(
        &members,
        8,
        3,
        None,
        &Positions::new(),
        &HandoffsReady::new(),
    );
    let leader = first.partitions[0].leader.expect("partition 0 is led");
    let steps: Vec<(u64, u8, u64, u64, u64)> = steps
        .iter()
        .map(|&(_, pick, count, copy)| (leader.get(), pick, count, copy, u64::MAX))
        .collect();
    let last = run(&[1, 2, 3], 8, 3, &steps).unwrap();
    let now = last.partitions[0].leader.expect("partition 0 is led again");
    assert!(
        last.partitions[0].replicas.contains(&now),
        "led from its replica set"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn a_new_leader_always_holds_every_write_acknowledged_at_quorum(
        first in proptest::collection::btree_set(1u64..=12, 1..=6),
        partitions in 1u32..=24,
        replication_factor in 1usize..=5,
        steps in proptest::collection::vec(
            (1u64..=12, any::<u8>(), 0u64..4, any::<u64>(), any::<u64>()),
            1..=24,
        ),
    ) {
        let first: Vec<u64> = first.into_iter().collect();
        run(&first, partitions, replication_factor, &steps)?;
    }
}
