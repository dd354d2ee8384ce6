//! Raft: openraft 0.9 over sled.
pub mod log_store;
pub mod network;
pub mod state_machine;
