//! The 2|3 split of `cluster_split_brain.rs` made by the kernel instead of the node: five real
//! `coregrid node` processes in a network namespace of this test's own (`ip netns add`, its own
//! loopback), the split an nftables rule on that loopback dropping UDP between the two groups'
//! control ports, every check made with the CLI run in the namespace (`ip netns exec`). The
//! namespace is removed at the end, failure included. Needs root, `ip` (iproute2) and `nft`
//! (nftables): without them the test says why and passes (CI runs as root and installs both).

#[path = "common/cluster.rs"]
#[expect(dead_code, reason = "no restarts here")]
mod cluster;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;
#[path = "../../engine/tests/common/skipped.rs"]
mod skipped;
#[path = "common/split_brain.rs"]
mod split_brain;
use skipped::skipped;

/// This file's name in the list of skipped tests.
const TEST: &str = "cluster_split_brain_nftables";

#[test]
fn a_two_three_split_by_nftables_in_a_network_namespace_elects_only_on_the_majority_side() {
    let namespace = match cluster::NetNamespace::create() {
        Ok(namespace) => namespace,
        Err(reason) => {
            skipped(TEST, &reason);
            return;
        }
    };
    let mut cluster =
        cluster::TestCluster::start_on(5, "vote", cluster::Network::Namespace(namespace));
    split_brain::two_three_split(&mut cluster);
}
