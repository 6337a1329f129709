//! coregrid engine
pub mod constants;
pub mod error;
pub mod record;
