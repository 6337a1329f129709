//! Replays one simulation run from its seed, printing every step, so that a failure printed
//! by `election_simulation` can be studied: `COREGRID_SIM_SEED=<n> COREGRID_SIM_STRATEGY=<s>
//! COREGRID_SIM_NODES=<n> cargo test -p coregrid-cluster --test election_replay --
//! --nocapture`. Without the variables it replays a fixed seed quietly, so it still proves
//! that a run is reproducible: the same seed gives the same run twice.

use coregrid_cluster::election::Strategy;
use coregrid_cluster::sim::{run_random, Faults, SimConfig};

#[test]
fn replay_seed_from_environment() {
    let seed = std::env::var("COREGRID_SIM_SEED")
        .ok()
        .and_then(|value| value.parse().ok());
    let strategy = match std::env::var("COREGRID_SIM_STRATEGY").as_deref() {
        Ok("bully") => Strategy::Bully,
        Ok("ring") => Strategy::Ring,
        _ => Strategy::Vote,
    };
    let nodes = std::env::var("COREGRID_SIM_NODES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(5);
    let mut config = SimConfig::new(seed.unwrap_or(42), nodes, strategy);
    config.faults = Faults::all();
    config.trace = seed.is_some();
    println!(
        "replaying seed={} strategy={strategy} nodes={nodes}",
        config.seed
    );
    let first = run_random(config.clone());
    config.trace = false;
    let second = run_random(config);
    match (&first, &second) {
        (Ok(first), Ok(second)) => {
            assert_eq!(first.steps, second.steps, "a seed must replay exactly");
            assert_eq!(
                first.messages, second.messages,
                "a seed must replay exactly"
            );
            println!("ok: {first:?}");
        }
        (Err(failure), _) => panic!("{failure}"),
        (Ok(_), Err(failure)) => panic!("the replay diverged: {failure}"),
    }
}
