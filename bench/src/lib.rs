//! coregrid's load generator.
