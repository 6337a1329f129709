//! Proves that three candidates standing at the same instant end with exactly one
//! controller, and one term and one epoch on every node, for every strategy over many seeds.

use coregrid_cluster::election::{Role, Strategy};
use coregrid_cluster::sim::{SimConfig, Simulation};
use coregrid_cluster::types::{NodeId, Time};

#[test]
fn three_simultaneous_candidates_make_one_controller() {
    for strategy in Strategy::ALL {
        for seed in 0..300 {
            let config = SimConfig::new(seed, 5, strategy);
            let bound = config.stable_bound();
            let timeout = config.election_timeout;
            let mut simulation = Simulation::new(config);
            let context = format!("seed={seed} strategy={strategy} nodes=5");
            simulation
                .run_until_stable(Time::from_secs(10))
                .unwrap_or_else(|failure| panic!("{failure}"))
                .unwrap_or_else(|| panic!("{context}: no first controller"));
            // Cut everyone off from everyone long enough for every lease to lapse and the
            // controller to step down, then heal and make three nodes stand at once.
            let ids = simulation.node_ids();
            let alone: Vec<[NodeId; 1]> = ids.iter().map(|node| [*node]).collect();
            let groups: Vec<&[NodeId]> = alone.iter().map(|group| group.as_slice()).collect();
            simulation.partition(&groups);
            let until = simulation.now() + timeout * 3;
            simulation.run_until(until).unwrap();
            simulation.heal();
            for node in [NodeId(1), NodeId(3), NodeId(5)] {
                simulation
                    .stand(node)
                    .unwrap_or_else(|failure| panic!("{failure}"));
            }
            let started = simulation.now();
            let (controller, term, _) = simulation
                .run_until_stable(started + bound)
                .unwrap_or_else(|failure| panic!("{failure}"))
                .unwrap_or_else(|| panic!("{context}: no controller"));
            let controllers = ids
                .iter()
                .filter(|node| simulation.status(**node).unwrap().role == Role::Controller)
                .count();
            assert_eq!(controllers, 1, "{context}");
            let epoch = simulation.status(controller).unwrap().published_epoch;
            for node in &ids {
                let status = simulation.status(*node).unwrap();
                assert_eq!(status.term, term, "{context}");
                assert_eq!(status.published_epoch, epoch, "{context}");
            }
        }
    }
}
