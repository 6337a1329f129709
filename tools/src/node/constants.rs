//! Every limit and default of the node server, named with its unit (style.md rule 5), and the
//! relations between them checked at compile time.

use coregrid_net::constants::{frame_bytes, CLIENT_FRAME_BODY_BYTES_MAX, VALUE_BYTES_MAX};

/// Port of shard 0 by default; shard `i` listens on `BASE_PORT_DEFAULT + i`.
pub const BASE_PORT_DEFAULT: u16 = 7400;

/// Connections one shard serves at once by default; more are refused at accept.
pub const CONNECTIONS_PER_SHARD_DEFAULT: usize = 1024;

/// Requests in flight (admitted, not yet answered on the socket) per connection by default.
/// At the limit the connection stops reading: backpressure through TCP.
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_DEFAULT: usize = 256;

/// The most requests in flight per connection a configuration may ask for.
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 4096;

/// Bytes of request frames admitted and not yet executed, per connection. Past it the
/// connection stops reading (one frame is always admitted, so the bound is this plus one
/// frame). Each admitted request owns a copy of its keys and values until the engine has
/// taken them.
pub const REQUEST_BYTES_IN_FLIGHT_PER_CONNECTION_MAX: usize = 8 * 1024 * 1024;

/// Bytes of encoded answers a connection's writer gathers into one socket write. Answers wait
/// unencoded (holding shared references to the index's values, not copies) until the writer
/// takes them, so a connection holds at most this plus one answer in encoded form.
pub const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Refusals (connection cap reached, shutting down) being sent at once per shard; past it a
/// connection over the cap is closed without a word.
pub const REFUSALS_IN_PROGRESS_MAX: usize = 64;

/// How long a refusal may take to send, in milliseconds.
pub const REFUSAL_WRITE_TIMEOUT_MS: u64 = 1000;

/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin, in
/// milliseconds.
pub const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

/// How often a draining shard checks whether its requests are done, in milliseconds.
pub const DRAIN_POLL_MS: u64 = 10;

/// Default handshake timeout, in milliseconds: the whole handshake, not each read.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Default idle timeout, in milliseconds: no byte received and no request in flight.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;

/// Default write progress timeout, in milliseconds.
pub const WRITE_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Default drain timeout at shutdown, in milliseconds.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 10_000;

// A whole client frame may be admitted when the budget is empty, and a batch is at least a
// frame large, so the budget admits at least one largest request.
const _: () =
    assert!(REQUEST_BYTES_IN_FLIGHT_PER_CONNECTION_MAX >= frame_bytes(CLIENT_FRAME_BODY_BYTES_MAX));
// The writer's batch is smaller than the largest answer; one answer over it goes out alone.
const _: () = assert!(WRITE_BATCH_BYTES < VALUE_BYTES_MAX);
const _: () =
    assert!(REQUESTS_IN_FLIGHT_PER_CONNECTION_DEFAULT <= REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX);

/// Default control port (gossip and election datagrams, UDP) when `base_port` is set; with
/// `base_port = 0` the control port defaults to 0 (any free port) too.
pub const CONTROL_PORT_DEFAULT: u16 = 7300;

/// Default election timeout: see `coregrid_cluster::election::Config::election_timeout`.
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1_000;

/// Default controller heartbeat interval.
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 100;

/// Default replicas per partition, leader included.
pub const REPLICATION_FACTOR_DEFAULT: usize = 3;

/// How long a leader may hold a follower's sync request when it has no new record (the long
/// poll), in milliseconds: replicated latency is then close to push, and an idle follower
/// sends two requests a second per partition.
pub const SYNC_WAIT_MS: u32 = 500;

/// Most record bytes a follower asks for in one sync request.
pub const SYNC_REQUEST_BYTES: u32 = 4 * 1024 * 1024;

/// A sync answer later than the long poll by this much (milliseconds) means the leader or the
/// network is stuck: the follower drops the connection and reconnects.
pub const SYNC_ANSWER_GRACE_MS: u64 = 10_000;

/// How long a follower waits for a connection to its leader, in milliseconds.
pub const SYNC_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// First pause before a follower session retries after a failure, in milliseconds; doubled
/// per failure up to [`SYNC_RETRY_MS_MAX`], reset by a sync that worked.
pub const SYNC_RETRY_MS_MIN: u64 = 50;

/// Longest pause between a follower session's retries, in milliseconds.
pub const SYNC_RETRY_MS_MAX: u64 = 2_000;

/// Bytes of a leader's snapshot a follower asks for in one request when it catches up by
/// snapshot.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

const _: () = assert!(SNAPSHOT_CHUNK_BYTES <= coregrid_net::constants::SYNC_RECORD_BYTES_MAX);

/// Default for the most bytes of WAL segments a leader keeps, per partition, past its snapshot
/// for followers that have not acknowledged them (a follower that was down, or is slow); a
/// follower further behind needs a snapshot. Bounds the disk a follower that never comes back
/// can hold.
pub const REPLICA_HOLD_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Default for how long a follower may go without catching up to its leader and still count
/// as in sync, in milliseconds (Kafka's `replica.lag.time.max.ms`): a `Quorum` or `All` write
/// is refused up front (`NotEnoughReplicas`) when too few followers are in sync. Several long
/// polls ([`SYNC_WAIT_MS`]), so an idle follower never drops out.
pub const REPLICA_LAG_MS_DEFAULT: u64 = 10_000;

/// Default for how long a `Quorum` or `All` write waits for its followers' acks, in
/// milliseconds, before it is answered `Unknown` (it is on the leader's disk, and maybe on
/// some followers').
pub const REPLICA_ACK_TIMEOUT_MS_DEFAULT: u64 = 5_000;

const _: () = assert!(REPLICA_LAG_MS_DEFAULT >= 4 * SYNC_WAIT_MS as u64);

const _: () = assert!(SYNC_WAIT_MS <= coregrid_net::constants::SYNC_WAIT_MS_MAX);
const _: () =
    assert!(SYNC_REQUEST_BYTES as usize <= coregrid_net::constants::SYNC_RECORD_BYTES_MAX);
const _: () = assert!(SYNC_RETRY_MS_MIN <= SYNC_RETRY_MS_MAX);

/// How long a leader handing a partition over waits for the target to acknowledge its whole
/// log (writes refused meanwhile), in milliseconds, before it gives up and takes writes again.
pub const HANDOFF_DRAIN_MS: u64 = 2_000;

/// How long after an abandoned handoff the leader does not try it again, in milliseconds.
pub const HANDOFF_BACKOFF_MS: u64 = 10_000;

/// How often a leader handing a partition over checks the target's ack, in milliseconds.
pub const HANDOFF_POLL_MS: u64 = 5;

/// Longest a write to a partition being handed over is held on its leader, waiting for the
/// handoff to end, in milliseconds: the drain and the next map's arrival. Past it the write is
/// answered `Unavailable`, as an abandoned handoff's would be.
pub const HANDOFF_WRITE_HOLD_MS: u64 = HANDOFF_DRAIN_MS + 1_000;
