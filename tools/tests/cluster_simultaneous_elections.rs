//! Proves with five real `coregrid node` processes on loopback that candidates standing at the
//! same time end with exactly one controller, one term and one epoch everywhere, for each
//! election strategy (vote, bully, ring):
//! - every node is cut off from every other by the test-only fault layer (`--fault-file`)
//!   until all five stand at once (each reports `candidate`); none can win alone, and none
//!   raises its term (pre-vote);
//! - then three of them (not the old controller) are joined again in one step: three
//!   candidates, each already standing, now reach a majority (3 of 5) at once. Exactly one
//!   becomes controller, in one new term, and the three hold one new epoch; no poll ever sees
//!   two controllers of one term;
//! - after the full heal the two others adopt that term and epoch without a new election.
//!
//! Nodes run one after another (five processes at a time). Times are printed, not asserted.

#[path = "common/cluster.rs"]
#[expect(dead_code, reason = "no namespace, no writes, no restarts here")]
mod cluster;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;

use cluster::{wait_until, Seen, TestCluster};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Every (term -> nodes that said they were its controller) seen by any poll.
#[derive(Default)]
struct ControllersSeen(BTreeMap<u64, BTreeSet<u64>>);

impl ControllersSeen {
    fn note(&mut self, seen: &[Seen]) {
        for status in seen.iter().filter(|status| status.is_controller()) {
            let controllers = self.0.entry(status.term).or_default();
            controllers.insert(status.node);
            assert!(
                controllers.len() == 1,
                "two controllers in term {}: {controllers:?} (last poll: {seen:?})",
                status.term
            );
        }
    }
}

fn three_simultaneous_candidates(election: &str) {
    let started = Instant::now();
    let cluster = TestCluster::start(5, election);
    let everyone: Vec<usize> = (0..cluster.len()).collect();
    let mut controllers = ControllersSeen::default();
    let before = wait_until("one controller and one map on all five nodes", || {
        cluster.agreement(&everyone)
    });
    controllers.note(&before);
    let (term_before, epoch_before) = (before[0].term, before[0].epoch);
    let old_controller = cluster.index_of(before[0].controller.expect("a controller"));

    // Everyone alone: each stands, none wins, no term goes up.
    cluster.split(&[]);
    wait_until(
        &format!("all five nodes standing at once ({election})"),
        || {
            let seen = cluster.statuses(&everyone)?;
            controllers.note(&seen);
            for status in &seen {
                assert_eq!(
                    status.term, term_before,
                    "a node alone raised its term: {seen:?}"
                );
            }
            if seen.iter().all(|status| status.role == "candidate") {
                Ok(())
            } else {
                Err(format!("not all candidates: {seen:?}"))
            }
        },
    );

    // Three candidates reach each other at once.
    let trio: Vec<usize> = everyone
        .iter()
        .copied()
        .filter(|&index| index != old_controller)
        .take(3)
        .collect();
    cluster.split(&[&trio]);
    let joined_at = Instant::now();
    let elected = wait_until(
        &format!("one controller among nodes {trio:?}, in a new term, with a new epoch"),
        || {
            let seen = cluster.statuses(&everyone)?;
            controllers.note(&seen);
            // Partitions with two of their three replicas on the other two nodes cannot fail
            // over among the trio (no majority of their replicas can report): no leader there.
            let agreed = cluster.agreement_on_maps(&trio, false)?;
            if agreed[0].term > term_before && agreed[0].epoch > epoch_before {
                Ok(agreed)
            } else {
                Err(format!("no new term and epoch yet: {agreed:?}"))
            }
        },
    );
    println!(
        "{election}: three candidates joined -> node {} controller of term {} with epoch {}: {:?}",
        cluster.index_of(elected[0].controller.unwrap()),
        elected[0].term,
        elected[0].epoch,
        joined_at.elapsed()
    );
    assert_eq!(
        elected
            .iter()
            .filter(|status| status.is_controller())
            .count(),
        1,
        "exactly one controller: {elected:?}"
    );

    cluster.heal();
    let healed = wait_until("all five in the elected term, with one epoch", || {
        let seen = cluster.statuses(&everyone)?;
        controllers.note(&seen);
        let agreed = cluster.agreement(&everyone)?;
        if agreed[0].term >= elected[0].term && agreed[0].epoch >= elected[0].epoch {
            Ok(agreed)
        } else {
            Err(format!("not the elected term and epoch yet: {agreed:?}"))
        }
    });
    assert_eq!(
        healed[0].term, elected[0].term,
        "no election after the heal"
    );
    assert_eq!(healed[0].controller, elected[0].controller);
    println!(
        "{election}: all five in term {} epoch {}; run {:?}",
        healed[0].term,
        healed[0].epoch,
        started.elapsed()
    );
}

#[test]
fn three_simultaneous_candidates_end_with_one_controller_and_one_epoch_everywhere() {
    for election in ["vote", "bully", "ring"] {
        three_simultaneous_candidates(election);
    }
}
