//! coregrid's control plane (design.md sections 1, 4, 6 and 6a), written as sans-IO state
//! machines (style.md rule 1): every type here takes the time and its inputs as arguments and
//! hands its outputs (messages to send, state to persist, maps to publish) back through a
//! queue. Nothing here reads a clock, opens a socket or spawns a task, so the same code runs
//! under the deterministic simulator of [`sim`] in tests and under the node's control shard
//! (a thin glommio driver in `tools/`) in production.
//!
//! - [`types`]: the control plane's vocabulary (node states, map versions, time).
//! - [`map`]: leadership maps and the leader scoring of design.md section 4.
//! - [`membership`]: gossip membership and failure detection (SWIM, by `foca`).
//! - [`election`]: controller elections (majority vote with pre-vote, Bully, Ring) with the
//!   same quorum rule and epoch fencing, and the controller's map proposals.
//! - [`wire`]: the election's messages as control datagrams.
//! - [`sim`]: the deterministic simulator: seeded PRNG, virtual clock, a network that loses,
//!   delays, reorders and partitions, crashes that keep only what was persisted.

#![warn(missing_docs)]

pub mod constants;
pub mod election;
pub mod map;
pub mod membership;
mod scoring;
pub mod sim;
pub mod types;
pub mod wire;
