//! Proves that every election strategy keeps its safety invariants (one controller per term,
//! terms and published epochs never going down, one map per epoch, only majority-stored maps
//! published) under crashes, restarts between outputs, partitions, loss, duplication and
//! reordering, and elects a controller every live node acknowledges within twice the longest
//! election timer once the faults stop: thousands of seeds per run, 3- and 5-node clusters,
//! all three strategies. A failing seed is printed for `election_replay`.

use coregrid_cluster::election::Strategy;
use coregrid_cluster::sim::{run_random, Faults, SimConfig};

/// Seeds per (strategy, cluster size): 7 combinations, so 14,000 seeds per run.
const SEEDS_PER_CASE: u64 = 2000;

fn run_seeds(strategy: Strategy, nodes: usize, first_seed: u64) {
    // COREGRID_SIM_SEEDS overrides the count, for a quick local run or a long soak.
    let count = std::env::var("COREGRID_SIM_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(SEEDS_PER_CASE);
    let seeds = first_seed..first_seed + count;
    println!(
        "strategy={strategy} nodes={nodes} seeds={}..{}",
        seeds.start, seeds.end
    );
    let mut steps = 0u64;
    let mut terms = 0usize;
    let mut slowest_tail = std::time::Duration::ZERO;
    let mut failures = Vec::new();
    for seed in seeds {
        let mut config = SimConfig::new(seed, nodes, strategy);
        config.faults = Faults::all();
        match run_random(config) {
            Ok(summary) => {
                steps += summary.steps;
                terms += summary.terms_with_controller;
                slowest_tail = slowest_tail.max(summary.tail_to_stable);
            }
            Err(failure) => {
                println!("FAILED {failure}");
                failures.push(failure.seed);
            }
        }
    }
    println!(
        "strategy={strategy} nodes={nodes}: {steps} steps, {terms} terms with a controller, slowest fault-free tail to a stable controller {slowest_tail:?}"
    );
    assert!(
        failures.is_empty(),
        "failing seeds for strategy={strategy} nodes={nodes}: {failures:?}"
    );
}

#[test]
fn vote_3_nodes() {
    run_seeds(Strategy::Vote, 3, 1_000_000);
}

#[test]
fn vote_5_nodes() {
    run_seeds(Strategy::Vote, 5, 2_000_000);
}

#[test]
fn bully_3_nodes() {
    run_seeds(Strategy::Bully, 3, 3_000_000);
}

#[test]
fn bully_5_nodes() {
    run_seeds(Strategy::Bully, 5, 4_000_000);
}

/// Nine nodes: five voters, four non-voters that must follow but never stand (fewer seeds:
/// each run is twice as long).
#[test]
fn vote_9_nodes_with_non_voters() {
    run_seeds(Strategy::Vote, 9, 7_000_000);
}

#[test]
fn ring_3_nodes() {
    run_seeds(Strategy::Ring, 3, 5_000_000);
}

#[test]
fn ring_5_nodes() {
    run_seeds(Strategy::Ring, 5, 6_000_000);
}
