//! Proves that when the controller crashes, a new controller is elected and acknowledged by
//! every live node within twice the election timeout, for every strategy, in 3- and 5-node
//! clusters, over many seeds (virtual time, so the bound is exact and the test is not flaky).

use coregrid_cluster::election::Strategy;
use coregrid_cluster::sim::{SimConfig, Simulation};
use coregrid_cluster::types::Time;
use std::time::Duration;

#[test]
fn new_controller_within_twice_the_election_timeout() {
    for strategy in Strategy::ALL {
        for nodes in [3, 5] {
            let mut slowest = Duration::ZERO;
            for seed in 0..300 {
                let config = SimConfig::new(seed, nodes, strategy);
                let bound = config.election_config().election_timeout_max() * 2;
                let mut simulation = Simulation::new(config);
                let context = format!("seed={seed} strategy={strategy} nodes={nodes}");
                let (old, old_term, _) = simulation
                    .run_until_stable(Time::from_secs(10))
                    .unwrap_or_else(|failure| panic!("{failure}"))
                    .unwrap_or_else(|| panic!("{context}: no first controller"));
                let settle = simulation.now() + Duration::from_millis(500);
                simulation.run_until(settle).unwrap();
                let killed_at = simulation.now();
                simulation.crash(old);
                let (new, new_term, at) = simulation
                    .run_until_stable(killed_at + bound)
                    .unwrap_or_else(|failure| panic!("{failure}"))
                    .unwrap_or_else(|| panic!("{context}: no new controller within {bound:?}"));
                assert_ne!(new, old, "{context}");
                assert!(new_term > old_term, "{context}");
                slowest = slowest.max(at - killed_at);
            }
            println!("strategy={strategy} nodes={nodes}: slowest failover {slowest:?}");
        }
    }
}
