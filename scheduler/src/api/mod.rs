//! The scheduler's gRPC API, as the services `server.rs` mounts on its listener:
//!
//! - [`control`]: the operator API (`control.proto`, what `slipway` calls): apps,
//!   deploys, builds, logs, releases, rollbacks, nodes, cluster membership, join tokens,
//!   app config and scale (`app_config`), releases, rollbacks and the registry GC
//!   (`releases`), cluster membership (`cluster`), app secrets (`secrets`: leader only, the value
//!   goes to a Swarm secret and never into raft or a log). Input is validated here, before anything is
//!   written. [`app_status`] answers its `AppStatus` and `AppLogs` (an app's tasks and
//!   their output, read from Swarm); `app_webhook` its `AppWebhook` (the URL and
//!   secret of an app's deploy-on-push hook, served by `http::hooks`).
//! - [`agents`]: the agent sessions (`agent.proto`): one stream per agent carrying its
//!   reports and build events up and build assignments down.
//! - [`enroll`]: enrollment (`enroll.proto`): joining with a join token, renewing a
//!   certificate, operator certificates.
//!
//! Each service holds the [`crate::context::Context`]; none calls another. Domain ⇄
//! wire conversions are [`crate::convert`], errors map to gRPC statuses once in
//! [`crate::error`].

pub mod agents;
mod app_config;
pub mod app_status;
mod app_webhook;
mod cluster;
pub mod control;
pub mod enroll;
mod releases;
mod secrets;
