//! The election's limits and default timings, in one place (style.md rule 5).

use std::time::Duration;

/// How often a controller sends heartbeats by default. A few heartbeats fit in one election
/// timeout, so one lost heartbeat does not start an election.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);

/// The base election timeout `T` by default: a follower that hears no controller for a time
/// drawn from `[T, 2T)` stands (if it is a voter). Also the controller's check-quorum window
/// and the lease a voter grants its controller against disruptive candidates.
pub const ELECTION_TIMEOUT_DEFAULT: Duration = Duration::from_millis(1000);

/// The cap of the random extra wait after repeated failed elections, by default: the timer
/// after `k` failures is `T + uniform[0, min(T * 2^k, cap))`, so the longest timer any node
/// draws is `T + cap`.
pub const ELECTION_BACKOFF_CAP_DEFAULT: Duration = Duration::from_millis(2000);

/// Most failed elections counted for the backoff: `2^k` stays far from overflow.
pub const ELECTION_FAILURES_COUNTED_MAX: u32 = 16;

/// Most ring messages (election or coordinator) a node forwards at once while it waits for
/// the successor's ack; the oldest is dropped beyond this (its initiator retries).
pub const RING_PENDING_HOPS_MAX: usize = 16;

/// Most outputs one input may queue: every input sends at most one message to each member
/// plus a few persists and one publish. Checked, so a bug that loops shows up as a failed
/// assertion rather than as memory growth.
pub const OUTPUTS_QUEUED_MAX: usize = 4 * crate::constants::MEMBERS_MAX + 64;

const _: () = assert!(
    HEARTBEAT_INTERVAL_DEFAULT.as_millis() * 3 <= ELECTION_TIMEOUT_DEFAULT.as_millis(),
    "several heartbeats must fit in one election timeout"
);
const _: () = assert!(
    ELECTION_BACKOFF_CAP_DEFAULT.as_millis() >= ELECTION_TIMEOUT_DEFAULT.as_millis(),
    "the first timer's jitter [0, T) must fit under the cap"
);
