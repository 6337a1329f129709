//! A node that restarts with the same `NodeId` and a new generation is seen alive again by
//! every other node, with the new generation and the state it announces after the restart
//! (`Joining`, then `Joined`): both after the others declared it dead, and when it comes back
//! before they even noticed the crash, and every node shows the data address the new life
//! announces (not the former life's). Fails if the old life's dead (or joined) entry shadows
//! the new one, or if the new announcements are taken for stale ones.

mod membership_support;

use coregrid_cluster::membership::MembershipOutput;
use coregrid_cluster::types::{NodeId, NodeState};
use membership_support::{address_of, data_address_of, joined_cluster, SimNetwork};
use std::net::SocketAddr;
use std::time::Duration;

const NODES: [u64; 5] = [1, 2, 3, 4, 5];
const RESTARTED: u64 = 5;

fn restart_and_rejoin(network: &mut SimNetwork, seed: u64) {
    let peers: Vec<SocketAddr> = NODES.iter().copied().map(address_of).collect();
    let restart_at = network.now;
    let since = network.observations.len();
    network.start(RESTARTED, 2, &peers);
    let limit = restart_at + Duration::from_secs(30);
    network
        .run_until_condition(limit, |network| {
            network.all_running_see(&[RESTARTED], NodeState::Joining)
                && network.all_running_see(&[1, 2, 3, 4], NodeState::Joined)
        })
        .unwrap_or_else(|| panic!("seed {seed}: the restarted node is not seen joining again"));
    network.set_state(RESTARTED, NodeState::JoinedSyncing);
    network.set_state(RESTARTED, NodeState::Joined);
    let limit = network.now + Duration::from_secs(30);
    network
        .run_until_condition(limit, |network| {
            network.all_running_see(&NODES, NodeState::Joined)
        })
        .unwrap_or_else(|| panic!("seed {seed}: the restarted node is not seen joined again"));
    for observer in NODES {
        let member = network.membership(observer).members()[&NodeId(RESTARTED)];
        assert_eq!(
            member.generation, 2,
            "seed {seed}: node {observer} sees {member:?}"
        );
        // The port differs between lives: the former life's address would fail this.
        assert_eq!(
            member.data_addr,
            data_address_of(RESTARTED, 2),
            "seed {seed}: node {observer} sees {member:?}"
        );
    }
    for observer in [1, 2, 3, 4] {
        let after_restart: Vec<_> = network
            .observed_since(since, observer, RESTARTED)
            .into_iter()
            .filter_map(|(_, output)| match output {
                MembershipOutput::StateChanged { to, .. } => Some(to),
                _ => None,
            })
            .collect();
        println!("seed {seed}: node {observer} saw node {RESTARTED} go {after_restart:?}");
        assert_eq!(
            after_restart.last(),
            Some(&NodeState::Joined),
            "seed {seed}: node {observer}"
        );
    }
}

#[test]
fn a_node_declared_dead_comes_back_with_a_new_generation() {
    for seed in [21, 22, 23] {
        let mut network = joined_cluster(seed, 5, 2);
        network.crash(RESTARTED);
        let limit = network.now + Duration::from_secs(60);
        network
            .run_until_condition(limit, |network| {
                network.all_running_see(&[RESTARTED], NodeState::Dead)
            })
            .unwrap_or_else(|| panic!("seed {seed}: the crash is not detected"));
        restart_and_rejoin(&mut network, seed);
    }
}

#[test]
fn a_node_that_restarts_before_its_crash_is_noticed_replaces_its_former_self() {
    for seed in [31, 32, 33] {
        let mut network = joined_cluster(seed, 5, 2);
        network.crash(RESTARTED);
        let until = network.now + Duration::from_millis(200);
        network.run_until(until);
        assert!(
            network.all_running_see(&[RESTARTED], NodeState::Joined),
            "seed {seed}: a 200 ms outage is not noticed yet"
        );
        restart_and_rejoin(&mut network, seed);
    }
}
