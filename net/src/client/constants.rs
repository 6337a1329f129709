//! The client's limits and defaults, named in one place with their units (style.md rule 5).
//! These are the client's own choices; the wire's limits are in [`crate::constants`].

use std::time::Duration;

/// Most requests one connection has in flight (sent, not yet answered). A request over it is
/// not sent ([`super::Failure::Saturated`]); the pending table never grows past it.
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 4096;

/// Most seed addresses a client is configured with.
pub const SEEDS_MAX: usize = 64;

/// Retries after failures (connection, timeout, unavailable, outcome unknown), by default.
pub const RETRIES_DEFAULT: u32 = 4;

/// Most retries a configuration may ask for.
pub const RETRIES_MAX: u32 = 64;

/// Redirects (`WrongShard`, `NotLeader`, a handshake that reached the wrong shard) a request
/// follows before it fails with [`super::ClientError::TooManyRedirects`], by default.
pub const REDIRECTS_DEFAULT: u32 = 8;

/// Most redirects a configuration may ask for.
pub const REDIRECTS_MAX: u32 = 64;

/// First backoff before a retry; doubled per retry up to [`BACKOFF_MAX_DEFAULT`].
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_millis(10);

/// Longest backoff before a retry, by default.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(1);

/// How long a TCP connect (and handshake) may take, by default.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);

/// How long one attempt of a request may wait for its answer, by default. A write that times
/// out after it was sent has an unknown outcome until a retry with the same client request id
/// answers.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The longest timeout a configuration may ask for.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(3600);

const _: () = assert!(RETRIES_DEFAULT <= RETRIES_MAX);
const _: () = assert!(REDIRECTS_DEFAULT <= REDIRECTS_MAX);
const _: () = assert!(REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX > 0);
const _: () = assert!(BACKOFF_INITIAL_DEFAULT.as_nanos() <= BACKOFF_MAX_DEFAULT.as_nanos());

/// Most members' data addresses a client learns from cluster statuses (to follow `NotLeader`
/// to a node that is not among its seeds), and most seeds it adds from them.
pub const ADDRESSES_LEARNED_MAX: usize = 256;
