//! Datagrams of another cluster (here a neighbour cluster misconfigured onto the same
//! addresses: its hellos, probes, announces and state announcements) are refused as foreign
//! before they reach the failure detector: the receiving node answers nothing, its view does
//! not change, and none of the neighbour's nodes ever appears in it. Fails if a single foreign
//! datagram is accepted or answered.

mod membership_support;

use coregrid_cluster::membership::{MembershipOutput, RefusalReason};
use coregrid_cluster::types::{ClusterId, NodeState};
use membership_support::{joined_cluster, SimNetwork};
use std::time::Duration;

const NEIGHBOUR: ClusterId = ClusterId(*b"the-other-one...");

#[test]
fn datagrams_of_another_cluster_are_refused_and_change_nothing() {
    let seed = 51;
    let mut network = joined_cluster(seed, 5, 0);

    // The neighbour: nodes 1 and 2 of another cluster, on our nodes' addresses.
    let mut neighbour = SimNetwork::new(seed + 1, 0, (1, 5));
    neighbour.cluster_id = NEIGHBOUR;
    neighbour.start_cluster(2, Duration::from_millis(100));
    neighbour.set_state_everywhere(NodeState::Joined);
    neighbour.run_until(Duration::from_secs(5));
    assert!(
        neighbour.all_running_see(&[1, 2], NodeState::Joined),
        "the neighbour cluster forms"
    );
    let foreign = neighbour.sent.clone();
    assert!(foreign.len() > 10, "the neighbour gossips");

    let view_before = network.membership(1).members().clone();
    let since = network.observations.len();
    for (_, from, _, bytes) in &foreign {
        let now = network.now;
        let membership = network.membership(1);
        membership.handle_datagram(now, *from, bytes);
        let output = membership.poll_output();
        assert_eq!(
            output,
            Some(MembershipOutput::Refused {
                from: *from,
                reason: RefusalReason::ForeignCluster {
                    cluster_id: NEIGHBOUR
                }
            })
        );
        assert_eq!(membership.poll_output(), None, "nothing but the refusal");
        assert_eq!(membership.members(), &view_before);
    }
    assert_eq!(network.observations.len(), since);

    // Our cluster carries on unchanged, without the neighbour's nodes.
    let until = network.now + Duration::from_secs(30);
    network.run_until(until);
    for observer in 1..=5 {
        assert_eq!(
            network.membership(observer).members().len(),
            5,
            "node {observer}"
        );
    }
    assert!(network.all_running_see(&[1, 2, 3, 4, 5], NodeState::Joined));
}
