//! # slipway-scheduler
//!
//! The raft-replicated control plane: it records apps, builds and releases, places
//! builds on agents, and deploys each release to Swarm pinned by digest.
//!
//! ## Layout
//!
//! In layers: each module uses only the layers above it in this list, never one below
//! (no module imports another in a circle).
//!
//! 1. **Pure core** (no IO):
//!    - [`state`]: the replicated state machine: apps, builds, releases, nodes, and the
//!      [`state::Command`]s that change them (pure, deterministic).
//!    - [`placement`]: which node builds what, and why the others were rejected.
//!    - [`config`]: `scheduler.toml`, with a default for every field.
//!    - [`convert`]: domain ⇄ wire types; [`error`]: the API error, mapped once to gRPC.
//! 2. **The raft store**: [`raft`]: openraft over sled (log store, state machine,
//!    transport, membership) and [`raft::Store`], what everything above reads and
//!    writes through (read, read current, write, leadership).
//! 3. **Leader soft state, security, events** (memory, never replicated, except the
//!    join secrets):
//!    - [`fleet`]: agent sessions' reports and node liveness.
//!    - [`dispatch_state`]: why builds wait, deploys in flight, placement counters.
//!    - [`security`]: the CA ([`security::pki`]), join tokens, the registry token signer
//!      ([`security::registry_auth`]) and its realm proxy, the HTTP side's token and
//!      certificate ([`security::http_access`]), and the scheduler's own reads of the
//!      registry ([`security::registry_client`]).
//!    - [`events`]: live build logs and deploy progress, by topic.
//! 4. **The context**: [`context::Context`], what the parts below share.
//! 5. **The leader's work**: [`dispatch`] (place builds, check what agents report
//!    before a release is recorded, deploy releases, renew
//!    registry grants, follow leadership) and [`deploy`] (the Swarm side of a deploy:
//!    the service spec, engine calls, convergence) and [`router`] (the Caddy service
//!    every app is reached through by host name, and the routes each agent loads into
//!    its node's router).
//! 6. **The API**: [`api`]: the gRPC services: operator control, agent sessions,
//!    enrollment.
//! 7. **The HTTP side**: [`http`]: the fleet page and `/metrics` (behind
//!    `http.require_auth`), `/healthz`, `/readyz`, the registry's `/v2/token`, served
//!    with optional TLS, timeouts and size limits ([`http::serve`]).
//! 8. **Wiring**: [`server`]: [`server::start`] builds the context and starts every
//!    part; its handle stops them ([`server::Running::stop`]). The `slipway-scheduler`
//!    binary parses flags and calls [`server::run`].
#![forbid(unsafe_code)]

pub mod api;
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
pub mod router;
pub mod security;
pub mod server;
pub mod state;
