//! Pins every simulation seed that ever failed, by name, so a fixed bug stays fixed. Each
//! failed before the fix named in its comment and must now run clean (all invariants, and a
//! controller acknowledged by all live nodes within the tail bound).

use coregrid_cluster::election::Strategy;
use coregrid_cluster::sim::{run_random, Faults, SimConfig};

fn replay(seed: u64, strategy: Strategy, nodes: usize) {
    let mut config = SimConfig::new(seed, nodes, strategy);
    config.faults = Faults::all();
    if let Err(failure) = run_random(config) {
        panic!("{failure}");
    }
}

// A proposal whose acks were all lost was never committed: voters reported the proposal as
// stored in their heartbeat replies, but the controller only resent proposals to voters that
// had *not* stored it, and never counted the replies. Heartbeat replies now count.
#[test]
fn seed_1000291_vote_3_lost_proposal_acks() {
    replay(1_000_291, Strategy::Vote, 3);
}

#[test]
fn seed_1001808_vote_3_lost_proposal_acks() {
    replay(1_001_808, Strategy::Vote, 3);
}

#[test]
fn seed_5000876_ring_3_lost_proposal_acks() {
    replay(5_000_876, Strategy::Ring, 3);
}

#[test]
fn seed_5001875_ring_3_lost_proposal_acks() {
    replay(5_001_875, Strategy::Ring, 3);
}

#[test]
fn seed_6000794_ring_5_lost_proposal_acks() {
    replay(6_000_794, Strategy::Ring, 5);
}
