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
    /// not Leaving)` of them, except for a partition whose leader changes (see
    /// [`plan_failover`]), which keeps the set it had.
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

/// A replica's last record for a partition, reported once it stopped following the
/// partition: the reporter holds map `map_epoch`, in which the partition has no leader, and has
/// sent its last ack to any leader before taking the position (design.md section 6a, the
/// fencing round).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(crate = rkyv, derive(Debug))]
pub struct FencedPosition {
    /// The partition.
    pub partition: PartitionId,
    /// The map the reporter holds (the partition has no leader in it).
    pub map_epoch: Epoch,
    /// Epoch of the reporter's last durable record of the partition (0: none).
    pub last_epoch: Epoch,
    /// LSN of that record (0: none).
    pub last_lsn: u64,
    /// Whether the reporter may lead: `false` when its state reflects records its log lacks
    /// (a leader's snapshot installed, whose cover lies past the reporter's WAL end).
    pub usable: bool,
}

/// The latest fenced positions each node reported, by node.
pub type Positions = BTreeMap<NodeId, Vec<FencedPosition>>;

/// A controlled handoff of a partition's leadership (issue: a returning preferred leader gets
/// its partitions back): the controller wishes it, the leader carries it out.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(crate = rkyv, derive(Debug))]
pub struct Handoff {
    /// The partition.
    pub partition: PartitionId,
    /// The replica that should lead it.
    pub to: NodeId,
    /// The map the wish, or the readiness, is about.
    pub map_epoch: Epoch,
}

/// The handoffs each leader reported ready, by leader: it stopped taking writes for the
/// partition and the target acknowledged its whole log.
pub type HandoffsReady = BTreeMap<NodeId, Vec<Handoff>>;

/// How the next map treats partitions whose leader changes (design.md section 6a): computed
/// from the latest map, the members' states and the fenced positions reported, before the
/// scoring; [`apply_failover`] then holds the scoring to it.
///
/// - A partition whose leader may still lead keeps it: every other node lags (leadership does
///   not move to a live leader's follower: a controlled handoff is not built).
/// - A partition whose leader may not (`Dead`, `Leaving`, gone) is **fenced**: the next map
///   gives it no leader and keeps its replica set. Its replicas stop following it, so the old
///   leader, if it still runs, gets no more acks, and report their last records.
/// - A fenced partition (no leader in the latest map, a replica set) gets a new leader once a
///   majority of its replica set reported positions at the latest map's epoch or later: among
///   the usable reports, those with the highest `(epoch, LSN)` may lead (the scoring picks
///   among them), every other node lags. A write acknowledged at `Quorum` is on a majority of
///   the set, so on one of the reporters, so on the most recent (log matching). Until then it
///   stays fenced.
/// - A partition that never had a replica set (a new cluster) has nothing to lose: no one lags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failover {
    /// Replicas that may not lead a partition (the scoring's `lagging`).
    pub lagging: BTreeSet<(PartitionId, NodeId)>,
    /// Partitions the next map leaves without a leader, their replica sets kept.
    pub fenced: BTreeSet<PartitionId>,
    /// Partitions taking a new leader from the fenced positions: the most recent reporters.
    pub chosen: BTreeMap<PartitionId, Vec<NodeId>>,
}

/// The [`Failover`] of the next map.
pub fn plan_failover(
    previous: Option<&LeadershipMap>,
    members: &BTreeMap<NodeId, NodeState>,
    positions: &Positions,
    ready: &HandoffsReady,
) -> Failover {
    let mut failover = Failover::default();
    let Some(previous) = previous else {
        return failover;
    };
    let can_lead = |node: NodeId| {
        members
            .get(&node)
            .and_then(|state| state.leader_rank())
            .is_some()
    };
    for (index, assignment) in previous.partitions.iter().enumerate() {
        let Ok(partition) = u32::try_from(index).map(PartitionId) else {
            continue;
        };
        let lag_all_but = |failover: &mut Failover, keep: &[NodeId]| {
            let others = members
                .keys()
                .chain(&assignment.replicas)
                .filter(|node| !keep.contains(node));
            failover
                .lagging
                .extend(others.map(|&node| (partition, node)));
        };
        match assignment.leader {
            Some(leader) if can_lead(leader) => {
                // A handoff the leader made ready: it takes no writes for the partition, and
                // the target holds its whole log, so every acknowledged write.
                let handoff = ready.get(&leader).and_then(|handoffs| {
                    handoffs.iter().find(|handoff| {
                        handoff.partition == partition
                            && handoff.map_epoch == previous.epoch
                            && handoff.to != leader
                            && assignment.replicas.contains(&handoff.to)
                            && can_lead(handoff.to)
                    })
                });
                match handoff {
                    Some(handoff) => {
                        lag_all_but(&mut failover, &[handoff.to]);
                        failover.chosen.insert(partition, vec![handoff.to]);
                    }
                    None => lag_all_but(&mut failover, &[leader]),
                }
            }
            Some(_) => {
                failover.fenced.insert(partition);
                lag_all_but(&mut failover, &[]);
            }
            None if assignment.replicas.is_empty() => {}
            None => match most_recent(partition, previous.epoch, &assignment.replicas, positions) {
                Some(best) => {
                    lag_all_but(&mut failover, &best);
                    failover.chosen.insert(partition, best);
                }
                None => {
                    failover.fenced.insert(partition);
                    lag_all_but(&mut failover, &[]);
                }
            },
        }
    }
    failover
}

/// The handoffs the controller wishes in `map`: each partition whose `Joined` leader is not the
/// one the scoring prefers when nothing lags (design.md section 4: a `Joined` replica with a
/// strictly better score, such as a preferred leader back after a restart) goes to that one.
pub fn wanted_handoffs(
    map: &LeadershipMap,
    members: &BTreeMap<NodeId, NodeState>,
    replication_factor: usize,
) -> Vec<Handoff> {
    let input = MapInput {
        members,
        partitions: u32::try_from(map.partitions.len()).unwrap_or(u32::MAX),
        replication_factor,
        previous: Some(map),
        lagging: &BTreeSet::new(),
    };
    let preferred = compute_leadership_map(&input, map.term, map.epoch);
    map.partitions
        .iter()
        .zip(&preferred.partitions)
        .enumerate()
        .filter_map(|(index, (now, best))| {
            let (leader, to) = (now.leader?, best.leader?);
            // Both `Joined`: a `JoinedSyncing` leader (a node still starting) is not moved away
            // from, or the first `Joined` nodes of a starting cluster would take every
            // partition and hand each back moments later.
            let joined = members.get(&to) == Some(&NodeState::Joined)
                && members.get(&leader) == Some(&NodeState::Joined);
            let partition = PartitionId(u32::try_from(index).ok()?);
            (leader != to && joined && now.replicas.contains(&to)).then_some(Handoff {
                partition,
                to,
                map_epoch: map.epoch,
            })
        })
        .collect()
}

/// The replicas of `partition` whose fenced position is the most recent among a majority of
/// `replicas` reporting at `epoch` or later; `None` until a majority has reported (or none of
/// the most recent may lead: a leader must hold every record its state reflects).
fn most_recent(
    partition: PartitionId,
    epoch: Epoch,
    replicas: &[NodeId],
    positions: &Positions,
) -> Option<Vec<NodeId>> {
    let reports: Vec<(NodeId, FencedPosition)> = replicas
        .iter()
        .filter_map(|node| {
            let report = positions
                .get(node)?
                .iter()
                .find(|report| report.partition == partition && report.map_epoch >= epoch)?;
            Some((*node, *report))
        })
        .collect();
    if reports.len() < replicas.len() / 2 + 1 {
        return None;
    }
    let newest = reports
        .iter()
        .map(|(_, report)| (report.last_epoch, report.last_lsn))
        .max()?;
    let best: Vec<NodeId> = reports
        .iter()
        .filter(|(_, report)| (report.last_epoch, report.last_lsn) == newest && report.usable)
        .map(|(node, _)| *node)
        .collect();
    // A most recent report that may not lead holds records no usable one may have: wait.
    (!best.is_empty()).then_some(best)
}

/// Holds a computed `map` to `failover` (see [`plan_failover`]): a fenced partition has no
/// leader and its previous replica set; a partition taking a new leader keeps its previous
/// replica set (the majority that holds its writes) and is led by a chosen replica; a
/// partition whose leader stays keeps it and its replica set. Only a partition that never had
/// a replica set gets the scoring's: once writes may have been acknowledged by a set, a new
/// member of it would count toward the majority that picks a next leader without holding them.
pub fn apply_failover(
    map: &mut LeadershipMap,
    previous: Option<&LeadershipMap>,
    members: &BTreeMap<NodeId, NodeState>,
    failover: &Failover,
) {
    let Some(previous) = previous else {
        return;
    };
    let rank = |node: &NodeId| members.get(node).and_then(|state| state.leader_rank());
    for (index, (assignment, before)) in map
        .partitions
        .iter_mut()
        .zip(&previous.partitions)
        .enumerate()
    {
        let Ok(partition) = u32::try_from(index).map(PartitionId) else {
            continue;
        };
        if failover.fenced.contains(&partition) {
            assignment.leader = None;
            assignment.replicas.clone_from(&before.replicas);
        } else if let Some(chosen) = failover.chosen.get(&partition) {
            assignment.replicas.clone_from(&before.replicas);
            if !assignment
                .leader
                .is_some_and(|leader| chosen.contains(&leader))
            {
                assignment.leader = chosen
                    .iter()
                    .filter(|node| rank(node).is_some())
                    .min_by_key(|node| rank(node))
                    .copied();
            }
        } else if let Some(leader) = before.leader.filter(|leader| rank(leader).is_some()) {
            // The set a leader's writes were acknowledged by stays as it is: a member added
            // now would hold none of them, yet count toward the majority that picks the next
            // leader (moving replicas must move data first: rebalancing, not built).
            assignment.leader = Some(leader);
            assignment.replicas.clone_from(&before.replicas);
        }
    }
}
