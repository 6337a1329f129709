//! Proves the simulator's invariant checker can fail: fabricated histories that break each
//! invariant (two controllers in one term, a term going down, an epoch published twice by a
//! node, two maps for one epoch, a map published before a majority stored it, a leader outside
//! its replicas) are each reported, and a legal history is not.

use coregrid_cluster::election::{Persisted, Role, Status};
use coregrid_cluster::map::{LeadershipMap, PartitionAssignment};
use coregrid_cluster::sim::{Checker, Violation};
use coregrid_cluster::types::{Epoch, MapVersion, NodeId, Term};

fn voters() -> Vec<NodeId> {
    (1..=3).map(NodeId).collect()
}

fn status(term: u64, role: Role) -> Status {
    Status {
        term: Term(term),
        role,
        controller: None,
        controller_committed_epoch: None,
        published_epoch: Epoch(0),
        persisted_term: Term(term),
        stored_version: MapVersion::default(),
    }
}

fn map(term: u64, epoch: u64, leader: u64) -> LeadershipMap {
    LeadershipMap {
        epoch: Epoch(epoch),
        term: Term(term),
        partitions: vec![PartitionAssignment {
            leader: Some(NodeId(leader)),
            replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
        }],
    }
}

fn stored_by(checker: &mut Checker, map: &LeadershipMap, nodes: &[u64]) {
    for node in nodes {
        let persisted = Persisted {
            term: map.term,
            voted_for: None,
            stored_map: Some(map.clone()),
            published_map: None,
        };
        checker.observe_persist(NodeId(*node), &persisted).unwrap();
    }
}

#[test]
fn two_controllers_in_one_term_are_reported() {
    let mut checker = Checker::new(&voters());
    checker
        .observe_status(NodeId(1), &status(4, Role::Controller))
        .unwrap();
    // Much later, another node claims the same term.
    checker
        .observe_status(NodeId(1), &status(5, Role::Follower))
        .unwrap();
    let second = checker.observe_status(NodeId(2), &status(4, Role::Controller));
    assert_eq!(
        second,
        Err(Violation::TwoControllers {
            term: Term(4),
            first: NodeId(1),
            second: NodeId(2)
        })
    );
}

#[test]
fn a_term_going_down_is_reported_also_across_a_restart() {
    let mut checker = Checker::new(&voters());
    checker
        .observe_status(NodeId(3), &status(7, Role::Follower))
        .unwrap();
    let persisted = Persisted {
        term: Term(6),
        ..Persisted::default()
    };
    assert!(matches!(
        checker.observe_persist(NodeId(3), &persisted),
        Err(Violation::TermDecreased { .. })
    ));
}

#[test]
fn publishing_an_epoch_not_above_the_last_is_reported() {
    let mut checker = Checker::new(&voters());
    let first = map(1, 2, 1);
    stored_by(&mut checker, &first, &[1, 2]);
    checker.observe_publish(NodeId(1), &first).unwrap();
    assert!(matches!(
        checker.observe_publish(NodeId(1), &first),
        Err(Violation::EpochNotIncreasing { .. })
    ));
}

#[test]
fn two_maps_with_one_epoch_are_reported() {
    let mut checker = Checker::new(&voters());
    let first = map(1, 2, 1);
    let second = map(2, 2, 2);
    stored_by(&mut checker, &first, &[1, 2]);
    stored_by(&mut checker, &second, &[2, 3]);
    checker.observe_publish(NodeId(1), &first).unwrap();
    assert_eq!(
        checker.observe_publish(NodeId(3), &second),
        Err(Violation::EpochMapMismatch {
            epoch: Epoch(2),
            node: NodeId(3)
        })
    );
}

#[test]
fn a_map_stored_by_a_minority_cannot_be_published() {
    let mut checker = Checker::new(&voters());
    let proposal = map(1, 1, 1);
    stored_by(&mut checker, &proposal, &[1]);
    assert!(matches!(
        checker.observe_publish(NodeId(1), &proposal),
        Err(Violation::PublishedUncommitted { stored_by: 1, .. })
    ));
}

#[test]
fn a_leader_outside_its_replicas_is_reported() {
    let mut checker = Checker::new(&voters());
    let bad = map(1, 1, 9);
    stored_by(&mut checker, &bad, &[1, 2, 3]);
    assert!(matches!(
        checker.observe_publish(NodeId(1), &bad),
        Err(Violation::BadAssignment { .. })
    ));
}

#[test]
fn a_legal_history_passes() {
    let mut checker = Checker::new(&voters());
    checker
        .observe_status(NodeId(1), &status(1, Role::Controller))
        .unwrap();
    let first = map(1, 1, 1);
    stored_by(&mut checker, &first, &[1, 2]);
    checker
        .observe_status(NodeId(2), &status(2, Role::Controller))
        .unwrap();
    let second = map(2, 2, 2);
    stored_by(&mut checker, &second, &[2, 3]);
    for node in 1..=3 {
        checker.observe_publish(NodeId(node), &first).unwrap();
        checker.observe_publish(NodeId(node), &second).unwrap();
    }
}
