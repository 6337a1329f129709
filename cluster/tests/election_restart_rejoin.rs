//! Proves that a follower that restarts, or that was cut off from everyone for several
//! election timeouts, rejoins without forcing a new election (pre-vote, which every strategy
//! runs before it claims): the term does not change and the controller stays in place.

use coregrid_cluster::election::{Role, Strategy};
use coregrid_cluster::sim::{SimConfig, Simulation};
use coregrid_cluster::types::{NodeId, Time};
use std::time::Duration;

fn stable_cluster(seed: u64, strategy: Strategy) -> (Simulation, NodeId, NodeId) {
    let mut simulation = Simulation::new(SimConfig::new(seed, 5, strategy));
    let (controller, _, _) = simulation
        .run_until_stable(Time::from_secs(10))
        .unwrap_or_else(|failure| panic!("{failure}"))
        .unwrap_or_else(|| panic!("seed={seed}: no controller"));
    let settle = simulation.now() + Duration::from_millis(500);
    simulation.run_until(settle).unwrap();
    let follower = simulation
        .node_ids()
        .into_iter()
        .find(|node| *node != controller)
        .unwrap();
    (simulation, controller, follower)
}

fn assert_undisturbed(simulation: &mut Simulation, controller: NodeId, seed: &str) {
    let term = simulation.status(controller).unwrap().term;
    let until = simulation.now() + Duration::from_secs(3);
    simulation
        .run_until(until)
        .unwrap_or_else(|failure| panic!("{failure}"));
    let status = simulation.status(controller).unwrap();
    assert_eq!(status.role, Role::Controller, "seed={seed}");
    assert_eq!(status.term, term, "seed={seed}: a new election happened");
    assert_eq!(
        simulation.checker().controllers_by_term().len(),
        1,
        "seed={seed}"
    );
    for node in simulation.node_ids() {
        let other = simulation.status(node).unwrap();
        assert_eq!(other.term, term, "seed={seed} node={node}");
        assert_eq!(
            other.controller,
            Some(controller),
            "seed={seed} node={node}"
        );
    }
}

#[test]
fn a_restarted_follower_rejoins_without_an_election() {
    for (strategy, seed) in Strategy::ALL
        .into_iter()
        .flat_map(|strategy| (0..100).map(move |seed| (strategy, seed)))
    {
        let (mut simulation, controller, follower) = stable_cluster(seed, strategy);
        let seed = format!("{seed} strategy={strategy}");
        simulation.crash(follower);
        let until = simulation.now() + Duration::from_secs(2);
        simulation.run_until(until).unwrap();
        simulation.restart(follower);
        assert_undisturbed(&mut simulation, controller, &seed);
    }
}

#[test]
fn a_follower_cut_off_for_several_timeouts_rejoins_without_an_election() {
    for (strategy, seed) in Strategy::ALL
        .into_iter()
        .flat_map(|strategy| (0..100).map(move |seed| (strategy, seed)))
    {
        let (mut simulation, controller, follower) = stable_cluster(seed, strategy);
        let seed = format!("{seed} strategy={strategy}");
        let others: Vec<NodeId> = simulation
            .node_ids()
            .into_iter()
            .filter(|node| *node != follower)
            .collect();
        simulation.partition(&[&[follower], &others]);
        let until = simulation.now() + Duration::from_secs(3);
        simulation.run_until(until).unwrap();
        // While cut off it tried (pre-vote) but never raised its term.
        let term = simulation.status(controller).unwrap().term;
        assert_eq!(
            simulation.status(follower).unwrap().term,
            term,
            "seed={seed}"
        );
        simulation.heal();
        assert_undisturbed(&mut simulation, controller, &seed);
    }
}
