//! Proves with three real `coregrid node` processes on loopback that terms and epochs strictly
//! increase across successive elections (design.md section 3: both only ever grow): the
//! controller is killed with SIGKILL three times in a row, each time the two others elect a
//! new one, and the killed node is restarted on its directory and rejoins. After every
//! election the term and epoch are read from `coregrid status --json`; each is above every
//! earlier one, no node's epoch ever goes down (restarts included), and every rejoin happens
//! without a new election. Times are printed, not asserted.

#[path = "common/cluster.rs"]
#[expect(dead_code, reason = "no namespace, no faults, no writes here")]
mod cluster;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;

use cluster::{wait_until, Seen, TestCluster};
use std::collections::BTreeMap;
use std::time::Instant;

const KILLS: usize = 3;

/// The highest epoch each node ever reported: none may go down.
#[derive(Default)]
struct EpochsSeen(BTreeMap<u64, u64>);

impl EpochsSeen {
    fn note(&mut self, seen: &[Seen]) {
        for status in seen {
            let highest = self.0.entry(status.node).or_default();
            assert!(
                status.epoch >= *highest,
                "node {} went from epoch {} down to {}",
                status.node,
                *highest,
                status.epoch
            );
            *highest = status.epoch;
        }
    }
}

#[test]
fn terms_and_epochs_strictly_increase_across_three_controller_kills() {
    let mut cluster = TestCluster::start(3, "vote");
    let everyone: Vec<usize> = (0..cluster.len()).collect();
    let mut epochs = EpochsSeen::default();
    let mut current = wait_until("one controller and one map on all three nodes", || {
        cluster.agreement(&everyone)
    });
    epochs.note(&current);
    let mut history: Vec<(u64, u64)> = vec![(current[0].term, current[0].epoch)];
    for kill in 1..=KILLS {
        let controller = cluster.index_of(current[0].controller.expect("a controller"));
        let survivors: Vec<usize> = everyone
            .iter()
            .copied()
            .filter(|&index| index != controller)
            .collect();
        let (last_term, last_epoch) = *history.last().expect("a first election");
        let killed_at = Instant::now();
        cluster.kill(controller);
        let elected = wait_until(
            &format!("kill {kill}: a new controller among {survivors:?} above term {last_term}, epoch {last_epoch}"),
            || {
                let agreed = cluster.agreement(&survivors)?;
                epochs.note(&agreed);
                if agreed[0].term > last_term && agreed[0].epoch > last_epoch {
                    Ok(agreed)
                } else {
                    Err(format!("no new term and epoch yet: {agreed:?}"))
                }
            },
        );
        let (term, epoch) = (elected[0].term, elected[0].epoch);
        println!(
            "kill {kill} of node {controller}: node {} controller of term {term} with epoch {epoch} after {:?}",
            cluster.index_of(elected[0].controller.unwrap()),
            killed_at.elapsed()
        );
        history.push((term, epoch));
        cluster.restart(controller);
        current = wait_until(
            &format!("kill {kill}: node {controller} restarted and rejoined term {term}"),
            || {
                let agreed = cluster.agreement(&everyone)?;
                epochs.note(&agreed);
                if agreed[0].term >= term && agreed[0].epoch >= epoch {
                    Ok(agreed)
                } else {
                    Err(format!("not rejoined yet: {agreed:?}"))
                }
            },
        );
        assert_eq!(
            current[0].term, term,
            "the restarted node rejoined without an election"
        );
        assert_eq!(current[0].controller, elected[0].controller);
        println!(
            "kill {kill}: node {controller} rejoined, term {term} epoch {}, after {:?}",
            current[0].epoch,
            killed_at.elapsed()
        );
    }
    println!("(term, epoch) after each election: {history:?}");
    for pair in history.windows(2) {
        assert!(
            pair[1].0 > pair[0].0,
            "terms strictly increase: {history:?}"
        );
        assert!(
            pair[1].1 > pair[0].1,
            "epochs strictly increase: {history:?}"
        );
    }
}
