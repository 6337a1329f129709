//! Proves the election's configuration rules: the default voters are the first five members
//! by id (all of them in a smaller cluster), a majority is `N/2 + 1`, and a configuration the
//! election cannot run with (no voters, unsorted voters, a heartbeat that does not fit twice
//! in the election timeout, a backoff cap below it, partitions or replication factor out of
//! range) is refused by `Controller::new` instead of misbehaving later.

use coregrid_cluster::election::{Config, ConfigError, Controller, Strategy};
use coregrid_cluster::types::{NodeId, Time};
use std::time::Duration;

fn ids(range: std::ops::RangeInclusive<u64>) -> Vec<NodeId> {
    range.map(NodeId).collect()
}

#[test]
fn default_voters_are_the_first_five_by_id() {
    let members = [9, 3, 7, 1, 5, 2, 8].map(NodeId);
    assert_eq!(
        Config::default_voters(members),
        [1, 2, 3, 5, 7].map(NodeId).to_vec()
    );
    assert_eq!(Config::default_voters(ids(1..=3)), ids(1..=3));
}

#[test]
fn a_majority_is_half_plus_one() {
    for (voters, quorum) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
        let config = Config::new(ids(1..=voters), Strategy::Vote, 8, 3);
        assert_eq!(config.quorum(), quorum);
    }
}

#[test]
fn unusable_configurations_are_refused() {
    let good = Config::new(ids(1..=3), Strategy::Vote, 8, 3);
    let start = |config: Config| Controller::new(config, NodeId(1), None, Time::ZERO, 1).err();
    assert_eq!(start(good.clone()), None);

    let mut config = good.clone();
    config.voters.clear();
    assert_eq!(start(config), Some(ConfigError::Voters(0)));

    let mut config = good.clone();
    config.voters = [3, 1, 2].map(NodeId).to_vec();
    assert_eq!(start(config), Some(ConfigError::VotersUnsorted));

    let mut config = good.clone();
    config.heartbeat_interval = config.election_timeout;
    assert_eq!(start(config), Some(ConfigError::Timing));

    let mut config = good.clone();
    config.election_backoff_cap = config.election_timeout - Duration::from_millis(1);
    assert_eq!(start(config), Some(ConfigError::Timing));

    let mut config = good.clone();
    config.partitions = 0;
    assert_eq!(start(config), Some(ConfigError::Partitions(0)));

    let mut config = good;
    config.replication_factor = 0;
    assert_eq!(start(config), Some(ConfigError::ReplicationFactor(0)));
}
