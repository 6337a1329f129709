//! Every node learns, through gossip, the data address of every other member (the address of
//! its data shard 0, which a follower dials to pull from a partition's leader), IPv4 and IPv6
//! alike, and that a node without data shards has none. On a lossy, delaying network, at every
//! step of the run, a node never shows another node's data address wrongly (a wrong address,
//! or none once that node's announced state is known), and once every node sees every node
//! `Joined`, every view holds every member's data address. Nodes that stay `Joining` (never
//! change their state) spread their addresses too. Fails if the address is dropped, mangled or
//! mixed up between nodes anywhere on its way from `Membership::new` to `MemberView`.

mod membership_support;

use coregrid_cluster::types::NodeState;
use membership_support::{data_address_of, SimNetwork};
use std::net::SocketAddr;
use std::time::Duration;

const NODES: [u64; 5] = [1, 2, 3, 4, 5];

/// Node 5 runs without data shards; the others announce [`data_address_of`].
fn data_addr_of(node: u64, generation: u64) -> Option<SocketAddr> {
    if node == 5 {
        None
    } else {
        data_address_of(node, generation)
    }
}

/// Whether every running node's view holds the right data address of every node of `NODES`.
fn all_data_addresses_known(network: &SimNetwork) -> bool {
    network.running().into_iter().all(|observer| {
        NODES
            .iter()
            .all(|&node| network.data_addr_seen(observer, node) == Some(data_addr_of(node, 1)))
    })
}

/// Panics if some node shows a data address that is not the node's, or shows none for a node
/// whose announced state (hence the announcement that carries the address) it already holds.
fn check_no_wrong_data_address(network: &SimNetwork, seed: u64) {
    for observer in network.running() {
        for node in NODES {
            let Some(seen) = network.data_addr_seen(observer, node) else {
                continue;
            };
            let expected = data_addr_of(node, 1);
            let state = network.state_seen(observer, node);
            let announced = matches!(
                state,
                Some(NodeState::JoinedSyncing | NodeState::Joined | NodeState::Leaving)
            );
            assert!(
                seen == expected || (seen.is_none() && !announced),
                "seed {seed} at {:?}: node {observer} shows node {node} ({state:?}) at {seen:?}, \
                 expected {expected:?}",
                network.now
            );
        }
    }
}

#[test]
fn every_node_learns_every_members_data_address() {
    for seed in [71, 72, 73, 0xda7a_add5] {
        let mut network = SimNetwork::new(seed, 5, (1, 30));
        network.data_addr_of = data_addr_of;
        network.start_cluster(5, Duration::from_millis(300));
        let limit = network.now + Duration::from_secs(30);
        network
            .run_until_condition(limit, |network| {
                check_no_wrong_data_address(network, seed);
                network.all_running_see(&NODES, NodeState::Joining)
            })
            .unwrap_or_else(|| panic!("seed {seed}: the nodes did not find each other"));
        network.set_state_everywhere(NodeState::JoinedSyncing);
        network.set_state_everywhere(NodeState::Joined);
        let limit = network.now + Duration::from_secs(30);
        let joined_at = network
            .run_until_condition(limit, |network| {
                check_no_wrong_data_address(network, seed);
                network.all_running_see(&NODES, NodeState::Joined)
            })
            .unwrap_or_else(|| panic!("seed {seed}: not every node sees every node joined"));
        // The address rides in the announcement that carried `Joined`: no wait beyond it.
        assert!(
            all_data_addresses_known(&network),
            "seed {seed}: every node is seen joined at {joined_at:?} but some data address is \
             missing"
        );
        for observer in NODES {
            let own = network.membership(observer).data_addr();
            assert_eq!(own, data_addr_of(observer, 1), "seed {seed}");
            let view = network.membership(observer).members();
            println!(
                "seed {seed}: node {observer} sees data addresses {:?}",
                view.values()
                    .map(|member| member.data_addr)
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn nodes_that_stay_joining_spread_their_data_addresses_too() {
    for seed in [81, 82] {
        let mut network = SimNetwork::new(seed, 5, (1, 30));
        network.data_addr_of = data_addr_of;
        network.start_cluster(5, Duration::from_millis(300));
        let limit = network.now + Duration::from_secs(30);
        let known_at = network
            .run_until_condition(limit, |network| {
                check_no_wrong_data_address(network, seed);
                all_data_addresses_known(network)
            })
            .unwrap_or_else(|| {
                panic!("seed {seed}: joining nodes' data addresses did not spread in 30 s")
            });
        println!("seed {seed}: every data address known at {known_at:?}");
        assert!(network.all_running_see(&NODES, NodeState::Joining));
    }
}
