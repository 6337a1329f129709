//! Proves that a 5-node cluster split 2|3, with the controller on the minority side, elects a
//! controller only on the majority side: the minority's old controller steps down
//! (check-quorum) and no minority node publishes a new epoch while the split lasts. After the
//! heal, the minority adopts the majority's term and epoch without a new election (pre-vote),
//! and every node follows the majority's controller; for every strategy.

use coregrid_cluster::election::{Role, Strategy};
use coregrid_cluster::sim::{SimConfig, Simulation};
use coregrid_cluster::types::{NodeId, Time};
use std::time::Duration;

fn split_and_heal(seed: u64, strategy: Strategy) {
    let config = SimConfig::new(seed, 5, strategy);
    let bound = config.stable_bound();
    let mut simulation = Simulation::new(config);
    let context = format!("seed={seed} strategy={strategy} nodes=5");
    let (old, _, _) = simulation
        .run_until_stable(Time::from_secs(10))
        .unwrap_or_else(|failure| panic!("{failure}"))
        .unwrap_or_else(|| panic!("{context}: no first controller"));
    let settle = simulation.now() + Duration::from_millis(500);
    simulation.run_until(settle).unwrap();

    let other = simulation
        .node_ids()
        .into_iter()
        .find(|node| *node != old)
        .unwrap();
    let minority = [old, other];
    let majority: Vec<NodeId> = simulation
        .node_ids()
        .into_iter()
        .filter(|node| !minority.contains(node))
        .collect();
    let published_before: Vec<usize> = minority
        .iter()
        .map(|node| simulation.published(*node).len())
        .collect();
    simulation.partition(&[&minority, &majority]);
    let until = simulation.now() + bound * 2;
    simulation
        .run_until(until)
        .unwrap_or_else(|failure| panic!("{failure}"));

    // Only the majority elected: one of its nodes is controller, all of it follows it.
    let controller = majority
        .iter()
        .copied()
        .find(|node| simulation.status(*node).unwrap().role == Role::Controller)
        .unwrap_or_else(|| panic!("{context}: the majority side elected no controller"));
    let majority_status = simulation.status(controller).unwrap();
    for node in &majority {
        let status = simulation.status(*node).unwrap();
        assert_eq!(status.controller, Some(controller), "{context}");
        assert_eq!(status.term, majority_status.term, "{context}");
    }
    for (node, before) in minority.iter().zip(published_before) {
        let status = simulation.status(*node).unwrap();
        assert_ne!(
            status.role,
            Role::Controller,
            "{context}: {node} still controller"
        );
        assert_eq!(
            simulation.published(*node).len(),
            before,
            "{context}: minority node {node} published a new epoch"
        );
    }

    simulation.heal();
    let healed_at = simulation.now();
    let (after, term, _) = simulation
        .run_until_stable(healed_at + bound)
        .unwrap_or_else(|failure| panic!("{failure}"))
        .unwrap_or_else(|| panic!("{context}: no controller after the heal"));
    for node in minority {
        let status = simulation.status(node).unwrap();
        assert!(status.term >= majority_status.term, "{context}");
        assert_eq!(status.controller, Some(after), "{context}");
    }
    // Pre-vote (every strategy runs one before it claims): the minority's failed rounds
    // never raised a term, so it simply joins the majority's controller, term and epoch.
    assert_eq!(after, controller, "{context}");
    assert_eq!(term, majority_status.term, "{context}");
    let epoch = simulation.status(controller).unwrap().published_epoch;
    for node in minority {
        let status = simulation.status(node).unwrap();
        assert_eq!(status.term, term, "{context}");
        assert_eq!(status.published_epoch, epoch, "{context}");
    }
}

#[test]
fn only_the_majority_elects_and_the_minority_adopts_it_after_the_heal() {
    for strategy in Strategy::ALL {
        for seed in 0..200 {
            split_and_heal(seed, strategy);
        }
    }
}
