//! The same seed gives the same run: every transition every node reports, at the same virtual
//! times, and every datagram byte for byte, through joins, a crash, a restart and a leave on a
//! lossy network. All randomness comes from the seeds (foca's PRNG per node, the simulated
//! network's PRNG), nothing from a clock, the OS or hash-map order. Fails on any divergence;
//! also fails if the seed is ignored (two seeds giving the same datagrams).

mod membership_support;

use coregrid_cluster::types::NodeState;
use membership_support::{address_of, joined_cluster, SimNetwork};
use std::net::SocketAddr;
use std::time::Duration;

fn scenario(seed: u64) -> SimNetwork {
    let mut network = joined_cluster(seed, 5, 5);
    network.crash(4);
    let until = network.now + Duration::from_secs(15);
    network.run_until(until);
    let peers: Vec<SocketAddr> = (1..=5).map(address_of).collect();
    network.start(4, 2, &peers);
    network.set_state(4, NodeState::Joined);
    let until = network.now + Duration::from_secs(10);
    network.run_until(until);
    let now = network.now;
    network.membership(2).leave(now);
    let until = network.now + Duration::from_secs(10);
    network.run_until(until);
    network
}

#[test]
fn the_same_seed_gives_the_same_transitions_and_datagrams() {
    for seed in [71, 72] {
        let first = scenario(seed);
        let second = scenario(seed);
        println!(
            "seed {seed}: {} observations, {} datagrams",
            first.observations.len(),
            first.sent.len()
        );
        assert!(
            first.observations.len() > 50,
            "seed {seed}: the scenario ran"
        );
        assert_eq!(first.observations, second.observations, "seed {seed}");
        assert_eq!(first.sent, second.sent, "seed {seed}");
    }
    assert_ne!(scenario(71).sent, scenario(72).sent, "the seed matters");
}
