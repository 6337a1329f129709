//! Collection changes in a cluster: the sans-IO part both drivers share.
//!
//! A node writes a collection change into the partitions it leads, and followers get it from
//! their leaders' logs (docs/cluster.md). So a change reaches every partition only if it is
//! sent to every partition's leader. The drivers do that in **rounds**:
//! 1. ask any node for the cluster status, and make a [`CollectionRound`] from its map: the
//!    data address of every partition's leader, and the map's epoch (no round while a partition
//!    has no leader: a failover is under way);
//! 2. for each leader: check that it holds that epoch, send it the change, check the epoch
//!    again. A node holding epoch `E` before and after held it throughout (epochs only grow),
//!    so it wrote the change into every partition it leads in `E`;
//! 3. if every leader held `E` throughout, every partition has the change; otherwise the map
//!    moved meanwhile, and the next round starts over from a fresh status. Nodes that already
//!    hold the change answer "exists" (or "not found" for a drop), which counts as done.
//!
//! [`CollectionAnswers`] merges the answers: the change succeeds if any node changed something,
//! and is refused with "exists" ("not found") only if every node said so in every round.

use super::{ClientConfig, ClientError};
use crate::ids::Epoch;
use crate::message::{ClusterStatusResponse, WriteResponse};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Rounds a collection change takes at most before it gives up with `Unavailable`.
pub const COLLECTION_ROUNDS_MAX: u32 = 10;

/// The wait before round `round` (1-based; none before the first): 50 ms doubled per round,
/// at most 1.6 s, so ten rounds span about 8 s, longer than a failover takes.
pub fn collection_backoff(round: u32) -> Duration {
    Duration::from_millis(50u64 << round.saturating_sub(1).min(5))
}

/// One round of a collection change: every partition leader of one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionRound {
    /// The map's epoch; each leader must hold it before and after the change.
    pub epoch: Epoch,
    /// The leaders' data addresses (shard 0), each once.
    pub targets: Vec<SocketAddr>,
}

/// The round `status` allows, or why none can run now.
pub fn collection_round(status: &ClusterStatusResponse) -> Result<CollectionRound, String> {
    if status.partitions.is_empty() {
        return Err(format!(
            "node {} holds no leadership map yet (epoch {})",
            status.node, status.epoch
        ));
    }
    let mut leaders = BTreeSet::new();
    for (partition, state) in status.partitions.iter().enumerate() {
        let leader = state.leader.ok_or_else(|| {
            format!(
                "partition {partition} has no leader in epoch {} (a failover is under way)",
                status.epoch
            )
        })?;
        leaders.insert(leader);
    }
    let targets = leaders
        .into_iter()
        .map(|leader| {
            status
                .members
                .iter()
                .find(|member| member.node == leader)
                .and_then(|member| member.data_address.parse::<SocketAddr>().ok())
                .ok_or_else(|| format!("the data address of leader {leader} is not known yet"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CollectionRound {
        epoch: status.epoch,
        targets,
    })
}

/// The configuration for sending to the node at `address` alone, with a client id of its own
/// (a configured id's sequence numbers belong to the client that configured it).
pub fn config_for_node(config: &ClientConfig, address: SocketAddr) -> ClientConfig {
    ClientConfig {
        seeds: vec![address],
        client_id: None,
        ..config.clone()
    }
}

/// Whether `error` from one leader only ends the round (the node may be failing over or gone;
/// the next round asks the cluster again) rather than the whole change.
pub fn ends_only_the_round(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. }
            | ClientError::Unavailable { .. }
            | ClientError::OutcomeUnknown { .. }
    )
}

/// What one leader of a round said: its status before, its answer to the change, and its
/// status after; or the error that ended the exchange.
pub type LeaderOutcome = Result<
    (
        ClusterStatusResponse,
        Result<WriteResponse, ClientError>,
        ClusterStatusResponse,
    ),
    ClientError,
>;

/// Takes one leader's `outcome` into `answers`: `None` to go on with the round's next leader,
/// why the round must be repeated (the leader's epoch moved, or it could not be reached), or
/// the error that ends the change.
pub fn settle_leader(
    plan: &CollectionRound,
    outcome: LeaderOutcome,
    answers: &mut CollectionAnswers,
) -> Result<Option<String>, ClientError> {
    match outcome {
        Ok((before, answer, after)) => {
            answers.add(answer)?;
            Ok(
                (before.epoch != plan.epoch || after.epoch != plan.epoch).then(|| {
                    format!(
                        "node {} moved from epoch {} to {} meanwhile",
                        after.node, plan.epoch, after.epoch
                    )
                }),
            )
        }
        Err(error) if ends_only_the_round(&error) => Ok(Some(error.to_string())),
        Err(error) => Err(error),
    }
}

/// The error of a change whose rounds all had to be repeated; `why` the last one.
pub fn gave_up(why: &str) -> ClientError {
    ClientError::Unavailable {
        reason: format!(
            "a collection change needs one map's partition leaders for a moment; after \
             {COLLECTION_ROUNDS_MAX} rounds: {why}"
        ),
    }
}

/// The nodes' answers to one collection change, over every round.
#[derive(Debug, Default)]
pub struct CollectionAnswers {
    changed: Option<WriteResponse>,
    unchanged: Option<ClientError>,
}

impl CollectionAnswers {
    /// Notes one node's answer. An error that means nothing about the collection (a refused
    /// request, too few replicas) is handed back: it ends the change.
    pub fn add(&mut self, answer: Result<WriteResponse, ClientError>) -> Result<(), ClientError> {
        match answer {
            Ok(written) => {
                self.changed = Some(written);
                Ok(())
            }
            Err(
                error @ (ClientError::CollectionExists { .. }
                | ClientError::CollectionNotFound { .. }),
            ) => {
                self.unchanged.get_or_insert(error);
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// The change's outcome once a round reached every leader.
    pub fn finish(self) -> Result<WriteResponse, ClientError> {
        match (self.changed, self.unchanged) {
            (Some(written), _) => Ok(written),
            (None, Some(error)) => Err(error),
            // No leader at all cannot happen (a round has one per partition); say so plainly.
            (None, None) => Err(ClientError::Unavailable {
                reason: "no node took the collection change".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Lsn, NodeId, Term};
    use crate::message::{ControlRole, MemberStatus, PartitionStatus};

    fn status(leaders: &[Option<u64>], members: &[(u64, &str)]) -> ClusterStatusResponse {
        ClusterStatusResponse {
            node: NodeId(1),
            term: Term(1),
            role: ControlRole::Follower,
            controller: Some(NodeId(1)),
            epoch: Epoch(7),
            lease: true,
            members: members
                .iter()
                .map(|&(node, address)| MemberStatus::joined(node, address))
                .collect(),
            partitions: leaders
                .iter()
                .map(|leader| PartitionStatus {
                    leader: leader.map(NodeId),
                    replicas: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn a_round_goes_to_every_leader_once() {
        let members = [(1, "127.0.0.1:7400"), (2, "127.0.0.1:7410"), (3, "x")];
        let round = collection_round(&status(&[Some(2), Some(1), Some(2)], &members)).unwrap();
        assert_eq!(round.epoch, Epoch(7));
        assert_eq!(
            round.targets,
            vec![
                "127.0.0.1:7400".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:7410".parse().unwrap()
            ]
        );
    }

    #[test]
    fn no_round_while_a_partition_has_no_leader_or_a_leader_no_address() {
        let members = [(1, "127.0.0.1:7400"), (3, "not an address")];
        let error = collection_round(&status(&[Some(1), None], &members)).unwrap_err();
        assert!(error.contains("partition 1 has no leader"), "{error}");
        let error = collection_round(&status(&[Some(1), Some(2)], &members)).unwrap_err();
        assert!(error.contains("leader 2"), "{error}");
        let error = collection_round(&status(&[Some(3)], &members)).unwrap_err();
        assert!(error.contains("leader 3"), "{error}");
        assert!(collection_round(&status(&[], &members)).is_err());
    }

    #[test]
    fn answers_merge_across_nodes_and_rounds() {
        let written = WriteResponse {
            revision: Lsn(0),
            hlc: 0,
        };
        let exists = || ClientError::CollectionExists { name: "c".into() };
        // Every node already had it: "exists".
        let mut answers = CollectionAnswers::default();
        answers.add(Err(exists())).unwrap();
        answers.add(Err(exists())).unwrap();
        assert!(matches!(
            answers.finish(),
            Err(ClientError::CollectionExists { .. })
        ));
        // One node changed something (in any round): done.
        let mut answers = CollectionAnswers::default();
        answers.add(Err(exists())).unwrap();
        answers.add(Ok(written)).unwrap();
        answers.add(Err(exists())).unwrap();
        assert_eq!(answers.finish().unwrap(), written);
        // Anything else ends the change.
        let mut answers = CollectionAnswers::default();
        let refused = ClientError::NotEnoughReplicas {
            needed: 2,
            available: 1,
        };
        assert!(answers.add(Err(refused)).is_err());
        assert!(ends_only_the_round(&ClientError::Unavailable {
            reason: "x".into()
        }));
        assert!(!ends_only_the_round(&exists()));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(collection_backoff(1), Duration::from_millis(50));
        assert_eq!(collection_backoff(2), Duration::from_millis(100));
        assert_eq!(collection_backoff(6), Duration::from_millis(1600));
        assert_eq!(collection_backoff(60), Duration::from_millis(1600));
    }
}
