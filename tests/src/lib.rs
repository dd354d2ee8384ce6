//! # slipway-tests: slipway's own fixtures and the integration tests
//!
//! The tests under `tests/tests/` are named by tier (`t00` fixtures, `t10` in-process
//! cluster, `t20` real Docker engine + registry + Swarm, `t30` fleet); see
//! `tests/README.md`. The machine-level fixtures (Docker engine, base image, registry,
//! git repository, ports, network namespaces) are in `slipway-testkit` (`testkit/`),
//! which the agent's and scheduler's unit tests use too; this crate builds slipway's
//! own fixtures on top of it, so each test reads like its scenario:
//!
//! - [`fleet`]: [`Fleet`], several `dockerd`s each in a
//!   [`NetLab`](slipway_testkit::NetLab) node, one Swarm, a registry on the lab's host
//!   address; kill and restart an engine (needs root).
//! - [`cluster`]: [`TestCluster`], the `slipway-scheduler` and `slipway-agent`
//!   binaries as child processes (so tests can `kill -9` them) on a registry (token
//!   auth, the cluster's own token server) and the local Swarm, or on a [`Fleet`] with
//!   an agent per engine, with a control-API client; [`DeployRun`] collects a deploy
//!   stream.
//! - [`fake_agent`]: [`FakeAgent`], an agent session the test drives with a valid agent
//!   certificate, reporting whatever build results the test makes up.
//! - [`engine_tap`]: [`EngineTap`], a socket in front of the engine keeping the service
//!   specs and registry credentials the scheduler hands Swarm.
//! - [`grants`]: [`cluster_token_auth`], the kit registry's token auth as a slipway
//!   cluster runs it (its CA, its service and issuer, pull grants minted from the CA).
//! - [`browser`]: headless Chromium, for pages an operator looks at.
//! - [`load`]: [`Load`], a steady stream of requests during a redeploy, counting failures.
//! - [`chaos`]: the chaos run (a replicated cluster, clients, a nemesis of kills,
//!   pauses and partitions) and [`linearizability`], the checker of its history.
//! - [`tls_client`]: a bare rustls client as tonic's, for tests that look at the
//!   handshake itself (the alert, the agreed version and suite).
//! - [`exposition`]: [`exposition::check`], which reads `/metrics` text as a scraper does.
//!
//! Fixtures panic with a message naming the fix when the machine lacks something:
//! they are for tests, where a panic is a failure with a reason; missing Docker pieces
//! skip loudly, or fail with `SLIPWAY_REQUIRE_DOCKER=1` ([`slipway_testkit::skip`]).

#![forbid(unsafe_code)]

pub mod browser;
pub mod chaos;
pub mod cluster;
pub mod engine_tap;
pub mod fake_agent;
pub mod fleet;
pub mod grants;
pub mod linearizability;
pub mod load;
pub mod tls_client;

pub use cluster::{DeployRun, TestCluster};
pub use engine_tap::EngineTap;
pub use fake_agent::FakeAgent;
pub use fleet::Fleet;
pub use grants::cluster_token_auth;
pub use load::{Load, LoadReport};
