//! Controller elections (design.md sections 6 "Control" and 6a), as a sans-IO state machine.
//!
//! One [`Controller`] runs on each node's control shard. The driver feeds it messages
//! ([`Controller::handle_message`]), the membership view ([`Controller::handle_members`]) and
//! the time ([`Controller::tick`] at [`Controller::next_deadline`]), and drains
//! [`Controller::poll_output`] **in order**: an [`Output::Persist`] must be durable before any
//! later output is acted on, because the term, the vote and the stored map are persisted
//! before any message of that term leaves the node.
//!
//! Three strategies choose *who* stands ([`Strategy`]): majority vote with pre-vote (the
//! default), Bully and Ring. All three share one acceptance rule, which is what makes them
//! safe: the controller of term `T` needs a majority of voters to accept `T` (each persists
//! `T` first and reports its latest stored map); the new controller adopts the most recent
//! stored map among them (Paxos phase 1), proposes a new map with a higher epoch, and
//! publishes it only once a majority of voters stored it. So two different maps never carry
//! the same epoch, whichever strategy picked the controller. See `docs/elections.md` for the
//! protocol and its safety argument.

pub mod constants;
mod controller;
mod message;

pub use controller::Controller;
pub use message::{ArchivedControlMessage, ControlMessage};

use crate::constants::{MEMBERS_MAX, PARTITIONS_MAX, REPLICATION_FACTOR_MAX, VOTERS_DEFAULT_MAX};
use crate::map::{compute_leadership_map, LeadershipMap, MapInput};
use crate::types::{Epoch, MapVersion, NodeId, Term};
use std::fmt;
use std::time::Duration;

/// How a node decides to stand. All three then need the same majority acceptance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// Raft-style majority vote over terms with randomized timeouts and pre-vote: the
    /// default, because it never disrupts a working controller.
    Vote,
    /// Bully: the highest-id live voter stands; lower ones defer when a higher one answers.
    Bully,
    /// Ring: an election message circulates the voters in id order collecting live ids; the
    /// highest collected id stands.
    Ring,
}

impl Strategy {
    /// Every strategy, for tests and figures.
    pub const ALL: [Strategy; 3] = [Strategy::Vote, Strategy::Bully, Strategy::Ring];
}

impl fmt::Display for Strategy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Strategy::Vote => "vote",
            Strategy::Bully => "bully",
            Strategy::Ring => "ring",
        })
    }
}

/// The function that computes a leadership map; [`compute_leadership_map`] unless a test
/// substitutes another (the election does not depend on how leaders are scored).
pub type MapFunction = fn(&MapInput<'_>, Term, Epoch) -> LeadershipMap;

/// What an election needs to know; the same on every node of a cluster except
/// `bootstrap_voter`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The voters, sorted by id, without duplicates: only they stand, accept and store
    /// proposals. See [`Config::default_voters`].
    pub voters: Vec<NodeId>,
    /// Whether this node may stand in the bootstrap election (the very first one, when no
    /// node has any state). Nodes added later set it to false, so they never start a second
    /// cluster of their own.
    pub bootstrap_voter: bool,
    /// How a node decides to stand.
    pub strategy: Strategy,
    /// The base election timeout `T`: timers are drawn from `[T, 2T)` (more after failed
    /// elections), a controller steps down when a majority has been silent for `T`, and a
    /// voter that heard its controller within `T` refuses other candidates.
    pub election_timeout: Duration,
    /// How often the controller sends heartbeats.
    pub heartbeat_interval: Duration,
    /// The cap of the random extra wait after repeated failed elections.
    pub election_backoff_cap: Duration,
    /// Partitions in the cluster (input to map computation).
    pub partitions: u32,
    /// Replicas per partition, leader included (input to map computation).
    pub replication_factor: usize,
    /// How maps are computed.
    pub map_function: MapFunction,
}

impl Config {
    /// A configuration with the default timings for `voters` (sorted and deduplicated here).
    pub fn new(
        voters: Vec<NodeId>,
        strategy: Strategy,
        partitions: u32,
        replication_factor: usize,
    ) -> Config {
        let mut voters = voters;
        voters.sort_unstable();
        voters.dedup();
        Config {
            voters,
            bootstrap_voter: true,
            strategy,
            election_timeout: constants::ELECTION_TIMEOUT_DEFAULT,
            heartbeat_interval: constants::HEARTBEAT_INTERVAL_DEFAULT,
            election_backoff_cap: constants::ELECTION_BACKOFF_CAP_DEFAULT,
            partitions,
            replication_factor,
            map_function: compute_leadership_map,
        }
    }

    /// The default voters among `members`: the first five by id, or all when fewer
    /// (design.md section 4: all nodes in a small cluster, five in a large one).
    pub fn default_voters(members: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let mut members: Vec<NodeId> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        members.truncate(VOTERS_DEFAULT_MAX);
        members
    }

    /// Voters needed for a majority: `N/2 + 1`.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The longest election timer any node draws (`T` plus the backoff cap): the unit of the
    /// liveness bound the simulator checks.
    pub fn election_timeout_max(&self) -> Duration {
        self.election_timeout + self.election_backoff_cap
    }

    /// Whether `node` is a voter.
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.binary_search(&node).is_ok()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.voters.is_empty() || self.voters.len() > MEMBERS_MAX {
            return Err(ConfigError::Voters(self.voters.len()));
        }
        if self.voters.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(ConfigError::VotersUnsorted);
        }
        if self.heartbeat_interval.is_zero()
            || self.heartbeat_interval.saturating_mul(2) > self.election_timeout
        {
            return Err(ConfigError::Timing);
        }
        if self.election_backoff_cap < self.election_timeout {
            return Err(ConfigError::Timing);
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return Err(ConfigError::Partitions(self.partitions));
        }
        if self.replication_factor == 0 || self.replication_factor > REPLICATION_FACTOR_MAX {
            return Err(ConfigError::ReplicationFactor(self.replication_factor));
        }
        Ok(())
    }
}

/// A configuration the election cannot run with. Nothing was created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No voters, or more than `MEMBERS_MAX`.
    #[error("{0} voters: need 1..={max}", max = MEMBERS_MAX)]
    Voters(usize),
    /// Voters must be sorted by id without duplicates (use [`Config::new`]).
    #[error("voters are not sorted and unique")]
    VotersUnsorted,
    /// The heartbeat must be non-zero and fit twice in the election timeout; the backoff cap
    /// must be at least the election timeout.
    #[error("heartbeat interval, election timeout and backoff cap are inconsistent")]
    Timing,
    /// Partitions out of `1..=PARTITIONS_MAX`.
    #[error("{0} partitions: need 1..={max}", max = PARTITIONS_MAX)]
    Partitions(u32),
    /// Replication factor out of `1..=REPLICATION_FACTOR_MAX`.
    #[error("replication factor {0}: need 1..={max}", max = REPLICATION_FACTOR_MAX)]
    ReplicationFactor(usize),
}

/// What a node keeps across restarts (design.md section 3: the highest term and epoch it has
/// seen are persisted before use). The driver stores it whole each time it is output; on
/// restart it passes the last stored one to [`Controller::new`] and hands `published_map` to
/// its data shards (the controller does not publish it again: it publishes only newer maps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The highest term this node has seen.
    pub term: Term,
    /// Whom this node accepted as controller in `term` (a vote, an acknowledged
    /// coordinator): at most one per term.
    pub voted_for: Option<NodeId>,
    /// The most recent map proposal this voter stored (perhaps not yet committed): what it
    /// reports when it accepts a new term.
    pub stored_map: Option<LeadershipMap>,
    /// The most recent committed map this node published.
    pub published_map: Option<LeadershipMap>,
}

impl Persisted {
    /// The version of the stored map (zero when none).
    pub fn stored_version(&self) -> MapVersion {
        self.stored_map
            .as_ref()
            .map(LeadershipMap::version)
            .unwrap_or_default()
    }

    /// The epoch of the published map (zero when none).
    pub fn published_epoch(&self) -> Epoch {
        self.published_map
            .as_ref()
            .map_or(Epoch(0), |map| map.epoch)
    }
}

/// What the driver must do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Store this state durably (replacing the previous) before acting on any later output.
    Persist(Persisted),
    /// Send `message` to node `to` (best effort: the protocol tolerates loss).
    Send {
        /// The destination node.
        to: NodeId,
        /// The message.
        message: ControlMessage,
    },
    /// A committed map with an epoch higher than any this node published before: hand it to
    /// the data shards.
    Publish(LeadershipMap),
}

/// A node's part in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows the known controller, if any.
    Follower,
    /// Trying to become controller (pre-vote, vote, Bully or Ring rounds, a claim).
    Candidate,
    /// The controller of the current term: proposes and publishes maps.
    Controller,
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Controller => "controller",
        })
    }
}

/// A node's election state, for the driver's status endpoint and the simulator's checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The current term.
    pub term: Term,
    /// This node's role in `term`.
    pub role: Role,
    /// The controller this node follows in `term`, if known (itself when controller).
    pub controller: Option<NodeId>,
    /// The committed epoch the controller this node follows last announced (this node's own
    /// published epoch when it is the controller); `None` before the first heartbeat. A node
    /// whose `published_epoch` is below it lacks the current map.
    pub controller_committed_epoch: Option<Epoch>,
    /// The highest epoch this node published.
    pub published_epoch: Epoch,
    /// The term in the last [`Output::Persist`] this node emitted.
    pub persisted_term: Term,
    /// The version of the latest stored map.
    pub stored_version: MapVersion,
}
