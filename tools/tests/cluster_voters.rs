//! Configured voters (`--voters`), with real `coregrid node` processes on loopback:
//! - three nodes list each other as peers and name two of them voters; the two voters,
//!   started alone, bootstrap a cluster without waiting for the third (with the default voters
//!   a first start waits for every peer, since the first five by id are not known before);
//! - the third, started later, joins as a full data node without a vote: every status names
//!   exactly the two configured voters, the controller is one of them, no new term begins,
//!   and the cluster takes writes through every node.

#[path = "common/cluster_client.rs"]
#[expect(dead_code, reason = "no agreement of a whole map is waited for here")]
mod cluster_client;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;

use cluster_client::{client, status, wait_until, Peers};
use coregrid_net::message::ClusterStatusResponse;
use coregrid_net::NodeId;
use node_process::NodeProcess;
use std::collections::BTreeSet;
use std::net::SocketAddr;

const COLLECTION: &str = "voters";

/// The voters a status names.
fn voters(status: &ClusterStatusResponse) -> BTreeSet<NodeId> {
    status
        .members
        .iter()
        .filter(|member| member.voter)
        .map(|member| member.node)
        .collect()
}

#[test]
fn two_configured_voters_bootstrap_alone_and_a_third_node_joins_without_a_vote() {
    let peers = Peers::new(3);
    let voter_list = format!(
        "127.0.0.1:{},127.0.0.1:{}",
        peers.control_port(0),
        peers.control_port(1)
    );
    let spawn = |index: usize| peers.spawn(index, 1, &["--voters", &voter_list]);
    // The voters alone: ready (Joined, holding a map) although the third peer never answered.
    let mut nodes: Vec<NodeProcess> = (0..2).map(spawn).collect();
    for node in &mut nodes {
        node.wait_ready();
    }
    let voter_ids: BTreeSet<NodeId> = nodes.iter().map(|node| NodeId(node.node_id)).collect();
    let before = wait_until("both voters agree on a controller", || {
        let statuses: Vec<_> = nodes.iter().map(status).collect::<Option<_>>()?;
        let first = statuses[0].clone();
        (first.controller.is_some()
            && statuses
                .iter()
                .all(|status| status.controller == first.controller && status.term == first.term))
        .then_some(first)
    });
    assert_eq!(voters(&before), voter_ids, "{before:?}");
    assert!(voter_ids.contains(&before.controller.unwrap()));

    // The third joins without a vote and without a new election.
    let mut third = spawn(2);
    third.wait_ready();
    let third_id = NodeId(third.node_id);
    nodes.push(third);
    let after = wait_until("all three agree, the third a member", || {
        let statuses: Vec<_> = nodes.iter().map(status).collect::<Option<_>>()?;
        let first = statuses[0].clone();
        let same = statuses.iter().all(|status| {
            status.controller == first.controller
                && status.epoch == first.epoch
                && status.members.len() == 3
        });
        same.then_some(statuses)
    });
    for status in &after {
        assert_eq!(voters(status), voter_ids, "only the configured voters vote");
        assert!(!voters(status).contains(&third_id));
        assert_eq!(status.controller, before.controller, "no new controller");
        assert_eq!(status.term, before.term, "no new term");
    }

    // The cluster takes writes through every node (the collection created once, through any).
    let seeds: Vec<SocketAddr> = nodes.iter().map(|node| node.addresses[0]).collect();
    cluster_client::create_collection(&seeds, COLLECTION);
    let mut writer = client(&seeds);
    for index in 0..32 {
        let key = format!("key-{index}");
        wait_until(&format!("a put of {key}"), || {
            writer.put(COLLECTION, key.as_bytes(), b"v").ok()
        });
    }
}
