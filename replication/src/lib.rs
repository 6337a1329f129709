//! coregrid's pull replication (design.md sections 6 and 6a).
//!
//! **Model.** A partition's leader owns its log; each follower pulls. A follower names its
//! log's last record (`(epoch, LSN)`: [`LogEnd`]); the leader ([`leader::serve_sync`]) checks
//! that record is on its own log and answers with the durable records after it, exactly as
//! they lie in its WAL segments (nothing decoded or re-encoded), or, when there is nothing
//! new, waits for the next durable record up to a deadline (a long poll); if the follower's
//! last record is not on its log, it answers with its epoch history instead, and the follower
//! cuts its log back to where the two diverge ([`history::divergence`]; leader-epoch
//! truncation, as Kafka does since KIP-101) and asks again. The follower
//! ([`follower::apply_answer`]) verifies and appends the records through
//! `Partition::append_replicated`, which returns once they are durable; its next request names
//! its new last record, which is also its ack. The leader tracks acks per follower in
//! [`progress::Progress`], where writes that need `Quorum` or `All` wait (LSN waiters).
//!
//! **Who runs it.** Everything here runs on the data shard that owns the partition, on both
//! sides: the serving and applying functions are async over the engine's `Partition` (which
//! never leaves its shard); the bookkeeping ([`history`], [`progress`]) is plain state with no
//! clock and no runtime, so the simulation tests drive the same code. Fencing by epoch (only
//! the current leader serves, only its followers pull) is the caller's: the node checks the
//! leadership map before it calls in.
//!
//! **What is durable when.** A record a follower acknowledged is on its disk. A record the
//! leader hands out is durable on the leader. A follower never holds a record its leader's
//! log does not, past the first sync after a leadership change: the leader's answer makes it
//! truncate first.
//!
//! **Catch-up by snapshot** ([`snapshot`]): a follower the leader's log no longer reaches
//! fetches the leader's newest snapshot in chunks and installs it in place of its log, then
//! syncs from the log after it.
//!
//! Not here yet: anti-entropy.
#![warn(missing_docs)]

pub mod follower;
pub mod history;
pub mod leader;
pub mod progress;
pub mod snapshot;

pub use history::LogEnd;
