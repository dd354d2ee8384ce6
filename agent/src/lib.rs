//! # slipway-agent
//!
//! One agent runs on every Swarm node. It reports the node's build headroom to the
//! scheduler and runs the builds the scheduler assigns to it, on local disk.
//!
//! ## Layout
//! - [`config`]: `agent.toml`, flags and `SLIPWAY_*` overrides.
//! - [`session`]: the long-lived gRPC session with the scheduler (hello, reports,
//!   assignments, build events), reconnecting with backoff.
//! - [`report`]: measures build filesystem, CPU, memory and engine health.
//! - [`pipeline`]: one build: clone → context → docker build → push.
//! - [`manifest`]: parses and validates the app's `slipway.toml`.
//! - [`reclaim`]: frees build disk by removing only slipway's own leftovers.
//! - [`metrics`]: the agent's own `/metrics` (last report, process RSS and CPU).
#![forbid(unsafe_code)]

pub mod config;
pub mod enroll;
pub mod error;
pub mod manifest;
pub mod metrics;
pub mod pipeline;
pub mod reclaim;
pub mod report;
pub mod session;
