//! The invariants the simulator checks after every step, kept apart from the simulator so a
//! test can feed it a fabricated history and see it fail (a checker that cannot fail proves
//! nothing).

use crate::election::{Persisted, Role, Status};
use crate::map::LeadershipMap;
use crate::types::{Epoch, MapVersion, NodeId, Term, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A broken invariant, with what is needed to understand it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// Two nodes were controller of the same term (at any times).
    TwoControllers {
        /// The term.
        term: Term,
        /// The first controller seen.
        first: NodeId,
        /// The second.
        second: NodeId,
    },
    /// A node's term went down (restarts included).
    TermDecreased {
        /// The node.
        node: NodeId,
        /// The term seen before.
        before: Term,
        /// The lower term seen now.
        after: Term,
    },
    /// A node published an epoch at or below one it published before (restarts included).
    EpochNotIncreasing {
        /// The node.
        node: NodeId,
        /// The highest epoch it published before.
        before: Epoch,
        /// The epoch it published now.
        after: Epoch,
    },
    /// Two nodes published different maps with the same epoch.
    EpochMapMismatch {
        /// The epoch.
        epoch: Epoch,
        /// The node that published the second, different map.
        node: NodeId,
    },
    /// A published map names a leader outside the partition's replicas, or a replica twice.
    BadAssignment {
        /// The map's epoch.
        epoch: Epoch,
        /// The partition.
        partition: usize,
    },
    /// A node published a map that a majority of voters had not stored durably.
    PublishedUncommitted {
        /// The node.
        node: NodeId,
        /// The map's version.
        version: MapVersion,
        /// How many voters had stored it.
        stored_by: usize,
    },
    /// In the fault-free tail, no controller was acknowledged by every live node in time.
    NoStableController {
        /// When the tail started.
        tail_start: Time,
        /// The bound that passed.
        deadline: Time,
    },
    /// A node that is not a voter stood or became controller.
    NonVoterStood {
        /// The node.
        node: NodeId,
    },
    /// The run exceeded its step limit (a livelock, or a timer that never moves).
    StepLimit {
        /// Steps taken.
        steps: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, formatter)
    }
}

/// The global record the invariants are checked against: every controller of every term,
/// every published epoch's map, every node's highest term and published epoch, and which
/// voters stored which map version durably.
#[derive(Debug)]
pub struct Checker {
    quorum: usize,
    voters: BTreeSet<NodeId>,
    controllers_by_term: BTreeMap<Term, NodeId>,
    maps_by_epoch: BTreeMap<Epoch, LeadershipMap>,
    term_by_node: BTreeMap<NodeId, Term>,
    published_by_node: BTreeMap<NodeId, Epoch>,
    stored_by_version: BTreeMap<MapVersion, BTreeSet<NodeId>>,
}

impl Checker {
    /// A checker for a cluster with these voters.
    pub fn new(voters: &[NodeId]) -> Checker {
        Checker {
            quorum: voters.len() / 2 + 1,
            voters: voters.iter().copied().collect(),
            controllers_by_term: BTreeMap::new(),
            maps_by_epoch: BTreeMap::new(),
            term_by_node: BTreeMap::new(),
            published_by_node: BTreeMap::new(),
            stored_by_version: BTreeMap::new(),
        }
    }

    /// Checks a node's status after a step: one controller per term over all time, terms
    /// never decreasing, only voters standing.
    pub fn observe_status(&mut self, node: NodeId, status: &Status) -> Result<(), Violation> {
        let before = self.term_by_node.entry(node).or_insert(status.term);
        if status.term < *before || status.persisted_term > status.term {
            return Err(Violation::TermDecreased {
                node,
                before: *before,
                after: status.term,
            });
        }
        *before = status.term;
        if status.role != Role::Follower && !self.voters.contains(&node) {
            return Err(Violation::NonVoterStood { node });
        }
        if status.role == Role::Controller {
            let first = *self.controllers_by_term.entry(status.term).or_insert(node);
            if first != node {
                return Err(Violation::TwoControllers {
                    term: status.term,
                    first,
                    second: node,
                });
            }
        }
        Ok(())
    }

    /// Records what a node made durable: its term (which must not go down) and the map it
    /// stored (which counts toward that map's majority).
    pub fn observe_persist(
        &mut self,
        node: NodeId,
        persisted: &Persisted,
    ) -> Result<(), Violation> {
        let before = self.term_by_node.entry(node).or_insert(persisted.term);
        if persisted.term < *before {
            return Err(Violation::TermDecreased {
                node,
                before: *before,
                after: persisted.term,
            });
        }
        *before = persisted.term;
        if let Some(map) = &persisted.stored_map {
            if self.voters.contains(&node) {
                self.stored_by_version
                    .entry(map.version())
                    .or_default()
                    .insert(node);
            }
        }
        Ok(())
    }

    /// Checks a publish: epochs strictly increase per node, one map per epoch across the
    /// cluster, the map was stored by a majority of voters, and every partition has at most
    /// one leader, one of its replicas.
    pub fn observe_publish(&mut self, node: NodeId, map: &LeadershipMap) -> Result<(), Violation> {
        let before = self.published_by_node.get(&node).copied();
        if let Some(before) = before {
            if map.epoch <= before {
                return Err(Violation::EpochNotIncreasing {
                    node,
                    before,
                    after: map.epoch,
                });
            }
        }
        self.published_by_node.insert(node, map.epoch);
        let stored_by = self
            .stored_by_version
            .get(&map.version())
            .map_or(0, BTreeSet::len);
        if stored_by < self.quorum {
            return Err(Violation::PublishedUncommitted {
                node,
                version: map.version(),
                stored_by,
            });
        }
        match self.maps_by_epoch.get(&map.epoch) {
            Some(known) if known != map => {
                return Err(Violation::EpochMapMismatch {
                    epoch: map.epoch,
                    node,
                })
            }
            Some(_) => {}
            None => {
                for (partition, assignment) in map.partitions.iter().enumerate() {
                    let unique: BTreeSet<&NodeId> = assignment.replicas.iter().collect();
                    let leader_ok = assignment
                        .leader
                        .is_none_or(|leader| assignment.replicas.contains(&leader));
                    if unique.len() != assignment.replicas.len() || !leader_ok {
                        return Err(Violation::BadAssignment {
                            epoch: map.epoch,
                            partition,
                        });
                    }
                }
                self.maps_by_epoch.insert(map.epoch, map.clone());
            }
        }
        Ok(())
    }

    /// The controller of every term seen so far.
    pub fn controllers_by_term(&self) -> &BTreeMap<Term, NodeId> {
        &self.controllers_by_term
    }

    /// Every published epoch's map.
    pub fn maps_by_epoch(&self) -> &BTreeMap<Epoch, LeadershipMap> {
        &self.maps_by_epoch
    }
}
