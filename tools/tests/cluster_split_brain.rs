//! Proves with five real `coregrid node` processes on loopback, cut 2|3 by the test-only fault
//! layer (`--fault-file`, no root needed), that only the majority elects a controller, that the
//! minority refuses writes (the write lease), and that after the heal the minority adopts the
//! majority's term and epoch without a new election (the scenario is in
//! `common/split_brain.rs`; `cluster_split_brain_nftables.rs` runs it with nftables).

#[path = "common/cluster.rs"]
#[expect(dead_code, reason = "no namespace, no restarts here")]
mod cluster;
#[path = "common/node_process.rs"]
#[expect(dead_code, reason = "a cluster's nodes are spawned, then waited for")]
mod node_process;
#[path = "common/split_brain.rs"]
mod split_brain;

#[test]
fn a_two_three_split_elects_only_on_the_majority_side_and_heals_into_its_term_and_epoch() {
    let mut cluster = cluster::TestCluster::start(5, "vote");
    split_brain::two_three_split(&mut cluster);
}
