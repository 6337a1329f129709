//! A crashed node is first suspected, then declared `Dead`, by every survivor, and never
//! sooner than the configured suspicion timeout after it was first suspected: the failure
//! detector does not jump from alive to dead, and it does detect the crash. Fails if any
//! survivor sees the crashed node dead without a suspicion first, too early, or not at all.

mod membership_support;

use coregrid_cluster::membership::MembershipOutput;
use coregrid_cluster::types::NodeState;
use membership_support::joined_cluster;
use std::time::Duration;

const CRASHED: u64 = 5;
const SURVIVORS: [u64; 4] = [1, 2, 3, 4];

#[test]
fn a_crashed_node_is_suspected_then_declared_dead_by_every_survivor() {
    for seed in [11, 12, 13, 0xfeed] {
        let mut network = joined_cluster(seed, 5, 0);
        let crash_at = network.now;
        network.crash(CRASHED);
        let suspect_to_down_after = network.config.suspect_to_down_after;
        let limit = crash_at + Duration::from_secs(60);
        let detected = network.run_until_condition(limit, |network| {
            network.all_running_see(&[CRASHED], NodeState::Dead)
        });
        assert!(
            detected.is_some(),
            "seed {seed}: the survivors do not all see node {CRASHED} dead a minute after its crash"
        );

        let mut first_suspected = None;
        for observer in SURVIVORS {
            let seen: Vec<_> = network
                .observed(observer, CRASHED)
                .into_iter()
                .filter(|(at, _)| *at >= crash_at)
                .collect();
            let suspected_at = seen.iter().find_map(|(at, output)| {
                matches!(
                    output,
                    MembershipOutput::SuspicionChanged {
                        suspected: true,
                        ..
                    }
                )
                .then_some(*at)
            });
            let dead_at = seen.iter().find_map(|(at, output)| {
                matches!(
                    output,
                    MembershipOutput::StateChanged {
                        to: NodeState::Dead,
                        ..
                    }
                )
                .then_some(*at)
            });
            println!(
                "seed {seed}: node {observer} suspected at {suspected_at:?}, dead at {dead_at:?}"
            );
            let (Some(suspected_at), Some(dead_at)) = (suspected_at, dead_at) else {
                panic!("seed {seed}: node {observer} saw {seen:?}");
            };
            assert!(
                suspected_at < dead_at,
                "seed {seed}: node {observer} saw the crash as dead before suspect: {seen:?}"
            );
            first_suspected = Some(
                first_suspected.map_or(suspected_at, |first: Duration| first.min(suspected_at)),
            );
        }
        let first_suspected = first_suspected.expect("four survivors");
        for observer in SURVIVORS {
            let dead_at = network
                .observed(observer, CRASHED)
                .into_iter()
                .find_map(|(at, output)| {
                    matches!(
                        output,
                        MembershipOutput::StateChanged {
                            to: NodeState::Dead,
                            ..
                        }
                    )
                    .then_some(at)
                })
                .expect("checked above");
            assert!(
                dead_at >= first_suspected + suspect_to_down_after,
                "seed {seed}: node {observer} declared the crash dead at {dead_at:?}, before the \
                 suspicion of {first_suspected:?} could time out ({suspect_to_down_after:?})"
            );
        }
    }
}
