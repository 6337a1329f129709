//! Proves that epochs strictly increase across successive elections: each new controller's
//! first published map has an epoch above every epoch published before it, and every node's
//! published epochs strictly increase, through repeated controller crashes and restarts.

use coregrid_cluster::election::Strategy;
use coregrid_cluster::sim::{SimConfig, Simulation};
use coregrid_cluster::types::Epoch;
use std::time::Duration;

#[test]
fn epochs_strictly_increase_across_successive_elections() {
    for strategy in Strategy::ALL {
        for seed in 0..100 {
            let config = SimConfig::new(seed, 5, strategy);
            let bound = config.stable_bound();
            let mut simulation = Simulation::new(config);
            let context = format!("seed={seed} strategy={strategy} nodes=5");
            let mut highest = Epoch(0);
            let mut last_term = None;
            for round in 0..6 {
                let limit = simulation.now() + bound.max(Duration::from_secs(10));
                let (controller, term, _) = simulation
                    .run_until_stable(limit)
                    .unwrap_or_else(|failure| panic!("{failure}"))
                    .unwrap_or_else(|| panic!("{context}: no controller in round {round}"));
                assert!(last_term < Some(term), "{context}: term did not grow");
                last_term = Some(term);
                let epoch = simulation.status(controller).unwrap().published_epoch;
                assert!(epoch > highest, "{context}: epoch {epoch} after {highest}");
                highest = epoch;
                let settle = simulation.now() + Duration::from_millis(400);
                simulation.run_until(settle).unwrap();
                simulation.crash(controller);
                let down = simulation.now() + Duration::from_millis(700);
                simulation.run_until(down).unwrap();
                simulation.restart(controller);
            }
            for node in simulation.node_ids() {
                let published = simulation.published(node);
                assert!(
                    published.windows(2).all(|pair| pair[0] < pair[1]),
                    "{context}: node {node} published {published:?}"
                );
            }
        }
    }
}
