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
#[path = "common/split_brain.rs"]
mod split_brain;

/// Says why the test did not run: on stdout (seen with `--nocapture`) and in
/// `target/tmp/skipped-tests.txt`, which `.ci/run` prints after the tests, so that a machine
/// that cannot run it is seen in CI's output rather than passing quietly.
fn skipped(reason: &str) {
    println!("skipped: {reason}");
    let path = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write;
        let _ = writeln!(file, "cluster_split_brain_nftables: {reason}");
    }
}

#[test]
fn a_two_three_split_by_nftables_in_a_network_namespace_elects_only_on_the_majority_side() {
    let namespace = match cluster::NetNamespace::create() {
        Ok(namespace) => namespace,
        Err(reason) => {
            skipped(&reason);
            return;
        }
    };
    let mut cluster =
        cluster::TestCluster::start_on(5, "vote", cluster::Network::Namespace(namespace));
    split_brain::two_three_split(&mut cluster);
}
