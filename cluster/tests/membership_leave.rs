//! A node that leaves gracefully is seen `Leaving` by every other node, straight from
//! `Joined` and never as `Dead` (it did not crash), and stays `Leaving` after it has gone;
//! the leaving node itself reports `Left` and has nothing left to do. Fails if the cluster
//! takes the departure for a crash or never learns of it.

mod membership_support;

use coregrid_cluster::membership::MembershipOutput;
use coregrid_cluster::types::NodeState;
use membership_support::joined_cluster;
use std::time::Duration;

const LEAVING: u64 = 3;
const STAYING: [u64; 4] = [1, 2, 4, 5];

#[test]
fn a_graceful_leave_is_seen_as_leaving_not_dead() {
    for seed in [41, 42, 43, 44] {
        let mut network = joined_cluster(seed, 5, 5);
        let leave_at = network.now;
        let since = network.observations.len();
        network.membership(LEAVING).leave(leave_at);
        assert_eq!(
            network.membership(LEAVING).local_state(),
            NodeState::Leaving
        );
        network.run_until(leave_at + Duration::from_secs(60));

        let membership = network.membership(LEAVING);
        assert!(membership.has_left(), "seed {seed}: the node has not left");
        assert_eq!(membership.next_deadline(), None, "seed {seed}");
        assert!(
            network.observations.iter().any(|(_, observation)| {
                observation.observer.get() == LEAVING
                    && matches!(observation.output, MembershipOutput::Left { .. })
            }),
            "seed {seed}: no Left output"
        );
        for observer in STAYING {
            let seen: Vec<NodeState> = network
                .observed_since(since, observer, LEAVING)
                .into_iter()
                .filter_map(|(_, output)| match output {
                    MembershipOutput::StateChanged { to, .. } => Some(to),
                    _ => None,
                })
                .collect();
            assert_eq!(
                seen,
                [NodeState::Leaving],
                "seed {seed}: node {observer} saw the leaving node go {seen:?}"
            );
            assert_eq!(
                network.state_seen(observer, LEAVING),
                Some(NodeState::Leaving),
                "seed {seed}: node {observer}"
            );
        }
        // The others carry on among themselves.
        assert!(
            network.all_running_see(&STAYING, NodeState::Joined),
            "seed {seed}"
        );
    }
}
