//! # slipway-scheduler
//!
//! The raft-replicated control plane: it records apps, builds and releases, places
//! builds on agents, and deploys each release to Swarm pinned by digest.
//!
//! ## Layout
//! - [`state`]: the replicated state machine: apps, builds, releases, nodes, and the
//!   [`state::Command`]s that change them (pure, deterministic).
//! - [`raft`]: openraft over sled: log store, state machine store, tonic transport.
//! - [`placement`]: which node builds what, and why the others were rejected (pure).
//! - [`dispatcher`]: the leader's loop that places queued builds and hands them to agents.
//! - [`agents`]: the agent session service and node liveness (leader memory).
//! - [`deploy`]: creates or updates the Swarm service for a release.
//! - [`control`]: the operator gRPC API; [`convert`] maps domain ⇄ wire types.
//! - [`events`]: live build logs and deploy progress, fanned out to watchers.
//! - [`http`]: `/` (the [`fleet_page`]), `/healthz`, `/readyz`, `/metrics` ([`metrics`]).
//! - [`server`]: wires everything together: [`server::run`].
//! - [`cli`]: the `slipway` command-line client.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod context;
pub mod convert;
pub mod deploy;
pub mod dispatch;
pub mod dispatch_state;
pub mod error;
pub mod events;
pub mod fleet;
pub mod http;
pub mod placement;
pub mod raft;
pub mod security;
pub mod server;
pub mod state;

/// Milliseconds since the Unix epoch, for timestamps carried inside commands.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
