//! Five nodes started one after another from the same static peer list (each list holding the
//! node's own address too) find each other through hellos on a lossy, delaying network, and
//! once each announces `JoinedSyncing` then `Joined`, every node sees all five as `Joined`.
//! Fails if a node is missing from a view, if an announced state does not spread, or if a node
//! is ever seen `Dead` on the way.

mod membership_support;

use coregrid_cluster::membership::MembershipOutput;
use coregrid_cluster::types::NodeState;
use membership_support::SimNetwork;
use std::time::Duration;

const NODES: [u64; 5] = [1, 2, 3, 4, 5];

#[test]
fn five_nodes_join_from_static_peers_and_all_see_all_joined() {
    for seed in [1, 2, 3, 0x5eed_cafe, 0xdead_beef] {
        let mut network = SimNetwork::new(seed, 5, (1, 30));
        network.start_cluster(5, Duration::from_millis(300));

        let all_joining = network.run_until_condition(Duration::from_secs(20), |network| {
            network.all_running_see(&NODES, NodeState::Joining)
        });
        assert!(
            all_joining.is_some(),
            "seed {seed}: not every node sees all five after 20 s"
        );

        network.set_state_everywhere(NodeState::JoinedSyncing);
        let until = network.now + Duration::from_secs(1);
        network.run_until(until);
        network.set_state_everywhere(NodeState::Joined);
        let deadline = network.now + Duration::from_secs(30);
        let all_joined = network.run_until_condition(deadline, |network| {
            network.all_running_see(&NODES, NodeState::Joined)
        });
        assert!(
            all_joined.is_some(),
            "seed {seed}: not every node sees all five joined within 30 s of the announcement"
        );
        println!(
            "seed {seed}: all five seen joining at {all_joining:?}, joined at {all_joined:?}, {} datagrams",
            network.sent.len()
        );

        for (at, observation) in &network.observations {
            assert!(
                !matches!(
                    observation.output,
                    MembershipOutput::StateChanged {
                        to: NodeState::Dead,
                        ..
                    }
                ),
                "seed {seed}: {observation:?} at {at:?}: nobody crashed"
            );
        }
        for observer in NODES {
            let view = network.membership(observer).members();
            assert_eq!(view.len(), 5, "seed {seed}: node {observer} view {view:?}");
        }
    }
}
