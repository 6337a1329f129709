//! A full partition is detected and heals by itself: while nodes {1, 2} and {3, 4, 5} cannot
//! talk, each side declares the other dead; once the network is whole again, the hellos to
//! static peers and foca's rejoin (a node that learns it was declared dead comes back with a
//! higher generation) bring every node to see every node `Joined` again, with no operator
//! action. Fails if a side never notices the partition or the cluster stays split after it.

mod membership_support;

use coregrid_cluster::types::NodeState;
use membership_support::joined_cluster;
use std::time::Duration;

#[test]
fn a_full_partition_is_detected_and_heals() {
    for seed in [81, 82, 83] {
        let mut network = joined_cluster(seed, 5, 2);
        network.partition = Some(vec![vec![1, 2], vec![3, 4, 5]]);
        let limit = network.now + Duration::from_secs(60);
        let split = network.run_until_condition(limit, |network| {
            [1, 2].iter().all(|&observer| {
                [3, 4, 5]
                    .iter()
                    .all(|&node| network.state_seen(observer, node) == Some(NodeState::Dead))
            }) && [3, 4, 5].iter().all(|&observer| {
                [1, 2]
                    .iter()
                    .all(|&node| network.state_seen(observer, node) == Some(NodeState::Dead))
            })
        });
        assert!(
            split.is_some(),
            "seed {seed}: the partition is not detected"
        );

        let healed_at = network.now;
        network.partition = None;
        let limit = healed_at + Duration::from_secs(120);
        let whole = network.run_until_condition(limit, |network| {
            network.all_running_see(&[1, 2, 3, 4, 5], NodeState::Joined)
        });
        println!(
            "seed {seed}: split seen at {split:?}, healed at {healed_at:?}, whole at {whole:?}"
        );
        assert!(
            whole.is_some(),
            "seed {seed}: the cluster is still split two minutes after the partition healed"
        );
    }
}
