//! Proves that a cluster starting from all-empty state (no term, no map anywhere) holds
//! exactly one bootstrap election: one controller, of term 1, publishing epoch 1 to every
//! node, for every strategy and 3, 5 and 9 nodes over many seeds; and that a node that is not
//! an initial voter never bootstraps a cluster of its own.

use coregrid_cluster::election::{Controller, Strategy};
use coregrid_cluster::sim::{SimConfig, Simulation};
use coregrid_cluster::types::{Epoch, NodeId, Term, Time};
use std::time::Duration;

#[test]
fn exactly_one_bootstrap_election() {
    for strategy in Strategy::ALL {
        for nodes in [3, 5, 9] {
            for seed in 0..200 {
                let config = SimConfig::new(seed, nodes, strategy);
                let mut simulation = Simulation::new(config);
                let limit = Time::from_secs(10);
                let stable = simulation
                    .run_until_stable(limit)
                    .unwrap_or_else(|failure| panic!("{failure}"));
                let context = format!("seed={seed} strategy={strategy} nodes={nodes}");
                let (controller, term, _) =
                    stable.unwrap_or_else(|| panic!("{context}: no controller"));
                // Run on: nothing else may happen once the bootstrap controller is in place.
                let until = simulation.now() + Duration::from_secs(3);
                simulation
                    .run_until(until)
                    .unwrap_or_else(|failure| panic!("{failure}"));
                let controllers = simulation.checker().controllers_by_term();
                assert_eq!(term, Term(1), "{context}");
                assert_eq!(controllers.len(), 1, "{context}: {controllers:?}");
                for node in simulation.node_ids() {
                    assert_eq!(
                        simulation.published(node),
                        &[Epoch(1)],
                        "{context} node {node}"
                    );
                    let status = simulation.status(node).unwrap();
                    assert_eq!(status.controller, Some(controller), "{context}");
                }
            }
        }
    }
}

#[test]
fn a_node_that_is_not_an_initial_voter_never_stands_alone() {
    let config = SimConfig::new(1, 3, Strategy::Vote);
    let mut election = config.election_config();
    election.bootstrap_voter = false;
    let mut node = Controller::new(election, NodeId(1), None, Time::ZERO, 1).unwrap();
    assert_eq!(node.next_deadline(), None);
    node.tick(Time::from_secs(3600));
    node.stand(Time::from_secs(3600));
    assert!(node.poll_output().is_none());
    assert_eq!(node.status().term, Term(0));
}
