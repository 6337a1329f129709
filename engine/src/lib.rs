//! coregrid's storage engine: one node's partitions, each with a crash-safe O_DIRECT WAL, an
//! in-memory index and snapshots, pinned to thread-per-core glommio shards.
//!
//! # Model
//! - **Who owns what.** [`Engine::open`] starts one data shard (a glommio executor on its own
//!   thread, pinned to a core when there are enough) per configured core. Partition `p` lives on
//!   shard `p % shards` and is owned by it outright: its WAL segment files, its index, its writer
//!   task. Nothing on the write path is shared between threads; everything in
//!   [`partition`], [`wal`] and [`snapshot`] is `!Send` and runs on its shard.
//! - **How requests arrive.** [`Engine`] is a `Send + Sync` handle: its async methods send each
//!   request to the owning shard over a bounded channel. Code already on a shard
//!   ([`Engine::run_on_shard`], [`LocalShard`]) calls [`Partition`] methods directly.
//! - **What is durable when.** A write is staged (LSN assigned, record encoded, index updated)
//!   in one synchronous step, then acknowledged only after the group-commit writer's
//!   `fdatasync` covers its LSN. Reads answer only with durable state. A failed write or sync
//!   poisons the shard: no retry, no more writes until restart.
//! - **What recovery does.** Load the newest snapshot, replay the WAL after it, cut a torn tail
//!   off, refuse a partition whose log is corrupt before its tail ([`scan`] explains how the two
//!   are told apart).
//!
//! Every glommio call is in [`rt`]; the WAL and snapshots are written against the small
//! [`io::Storage`] trait, which [`sim::SimDisk`] implements for crash tests. Limits are in
//! [`constants`]. `docs/storage.md` describes the on-disk format and the recovery rules.

#![warn(missing_docs)]

pub mod budget;
pub mod checksum;
pub mod constants;
pub mod engine;
pub mod error;
pub mod hlc;
pub mod index;
pub mod io;
pub mod journal;
pub mod partition;
pub mod record;
pub mod requests;
pub mod rt;
pub mod scan;
pub mod segment;
pub mod shared_sync;
pub mod sim;
pub mod snapshot;
pub mod wal;

pub use engine::{Engine, EngineConfig, LocalShard};
pub use error::{EngineError, Result};
pub use partition::{BatchWrite, CasMismatch, Partition, PartitionId, Versioned, WriteOutcome};
pub use requests::RequestId;
