//! coregrid engine
pub mod constants;
pub mod engine;
pub mod error;
pub mod hlc;
pub mod index;
pub mod io;
pub mod partition;
pub mod record;
pub mod rt;
pub mod scan;
pub mod segment;
pub mod sim;
pub mod snapshot;
pub mod wal;

pub use engine::{Engine, EngineConfig, LocalShard};
pub use error::{EngineError, Result};
pub use partition::{BatchWrite, CasMismatch, Partition, PartitionId, Versioned};
