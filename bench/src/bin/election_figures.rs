//! Controller failover figures from the deterministic simulator (virtual time, so the numbers
//! depend on the simulated network and timers, not on this machine's load).
//!
//! For each election strategy and 3, 5 and 9 nodes, over many seeds: start a cluster from
//! empty state, wait until a controller is acknowledged by every node, let it settle, kill
//! the controller, and measure the virtual time until a new controller has published a map
//! of its own term and every live node follows it ("stable"), and the messages sent in
//! between (election messages alone, and all control messages including heartbeats and
//! maps). Prints a Markdown table for `docs/elections.md`.
//!
//!   election_figures [--seeds N]   (default 1000 seeds per row)

use coregrid_cluster::election::Strategy;
use coregrid_cluster::sim::{SimConfig, Simulation};
use coregrid_cluster::types::Time;
use std::process::ExitCode;
use std::time::Duration;

/// One row's samples.
struct Samples {
    failover_ms: Vec<f64>,
    election_messages: Vec<f64>,
    all_messages: Vec<f64>,
    unstable: usize,
}

fn percentile(samples: &mut [f64], fraction: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (fraction * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

fn measure(strategy: Strategy, nodes: usize, seeds: u64) -> Samples {
    let mut samples = Samples {
        failover_ms: Vec::new(),
        election_messages: Vec::new(),
        all_messages: Vec::new(),
        unstable: 0,
    };
    for seed in 0..seeds {
        let config = SimConfig::new(seed, nodes, strategy);
        let mut simulation = Simulation::new(config);
        let first = match simulation.run_until_stable(Time::from_secs(10)) {
            Ok(Some((controller, _, _))) => controller,
            Ok(None) => {
                samples.unstable += 1;
                continue;
            }
            Err(failure) => panic!("{failure}"),
        };
        let settle = simulation.now() + Duration::from_millis(500);
        simulation
            .run_until(settle)
            .unwrap_or_else(|failure| panic!("{failure}"));
        let killed_at = simulation.now();
        let election_before = simulation.election_messages_sent();
        let all_before = simulation.messages_sent();
        simulation.crash(first);
        match simulation.run_until_stable(killed_at + Duration::from_secs(10)) {
            Ok(Some((_, _, at))) => {
                samples
                    .failover_ms
                    .push((at - killed_at).as_secs_f64() * 1000.0);
                samples
                    .election_messages
                    .push((simulation.election_messages_sent() - election_before) as f64);
                samples
                    .all_messages
                    .push((simulation.messages_sent() - all_before) as f64);
            }
            Ok(None) => samples.unstable += 1,
            Err(failure) => panic!("{failure}"),
        }
    }
    samples
}

/// Controller failover figures from the deterministic simulator, as a Markdown table.
#[derive(clap::Parser)]
#[command(name = "election_figures")]
struct Options {
    /// Seeds (simulated clusters) per row.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
}

fn main() -> ExitCode {
    let Options { seeds } = <Options as clap::Parser>::parse();
    let config = SimConfig::new(0, 3, Strategy::Vote);
    println!(
        "Simulated timings: election timeout T = {:?} (timers drawn from [T, 2T), backoff cap {:?}), heartbeat {:?}, one-way delay uniform in [1 ms, 10 ms], no loss; {seeds} seeds per row.",
        config.election_timeout, config.election_backoff_cap, config.heartbeat_interval
    );
    println!();
    println!("| strategy | nodes | failover p50 (ms) | failover p99 (ms) | failover max (ms) | election msgs p50 | election msgs p99 | all msgs p50 | no controller in 10 s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for strategy in Strategy::ALL {
        for nodes in [3, 5, 9] {
            let mut samples = measure(strategy, nodes, seeds);
            let max = samples.failover_ms.iter().copied().fold(0.0f64, f64::max);
            println!(
                "| {strategy} | {nodes} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                percentile(&mut samples.failover_ms, 0.5),
                percentile(&mut samples.failover_ms, 0.99),
                max,
                percentile(&mut samples.election_messages, 0.5),
                percentile(&mut samples.election_messages, 0.99),
                percentile(&mut samples.all_messages, 0.5),
                samples.unstable
            );
        }
    }
    ExitCode::SUCCESS
}
