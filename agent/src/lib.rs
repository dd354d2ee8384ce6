//! The slipway agent: one runs on every Swarm node, reports the node's build headroom
//! to the scheduler and runs the builds the scheduler assigns to it, on local disk.
//! [`run`] is the whole agent; the `slipway-agent` binary only parses its config, installs
//! logging and the TLS provider, and calls it.
//!
//! # Layout
//!
//! Each layer uses only the ones above it in this list:
//!
//! - [`config`]: `agent.toml` and its defaults (the binary applies flags and
//!   `SLIPWAY_*` overrides). [`error`]: [`error::Failure`], why a build failed, by phase.
//!   The app's `slipway.toml` is parsed by `slipway_common::manifest`, the parser the
//!   scheduler checks each build's manifest with too. [`space`]: a build filesystem
//!   that ran out of space mid-build (the failure names it; the node's floor is raised
//!   in memory until it has room).
//! - [`pipeline`]: one build: clone → context → docker build → push, each step in a
//!   file of its own, secret build arguments in `pipeline::secrets`.
//! - [`metrics`]: the agent's own `/metrics` (last report, process RSS and CPU).
//!   [`report`]: measures build filesystem, CPU, memory and engine health, and records
//!   each report for `/metrics`. [`reclaim`]: frees build disk by removing
//!   slipway's own leftovers and pruning the engine's build cache ([`build_cache`]) above
//!   its high watermark. [`enroll`]: joins with a token, keeps and renews the
//!   agent's certificate. [`router`]: keeps this node's router (the Caddy task of
//!   `<stack>_router`) serving the routes the leader sent, through its admin socket.
//! - [`session`]: the long-lived gRPC session with the scheduler (hello, reports,
//!   assignments, build events), reconnecting with backoff; runs the builds.
//! - [`run`] (here): wires the `/metrics` listener and the session together.
#![forbid(unsafe_code)]

pub mod build_cache;
pub mod config;
pub mod enroll;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod reclaim;
pub mod report;
pub mod router;
pub mod session;
pub mod space;

use std::future::Future;

use config::AgentConfig;
use metrics::LastReport;
use session::AgentError;

/// Runs the agent until `shutdown` resolves: serves `/metrics` on `metrics_listen` (if
/// set) and holds the session with the scheduler ([`session::run`]). The listener is an
/// observer: a port it cannot bind is logged and the agent runs without it. It stops
/// when `run` returns.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let last_report = LastReport::default();
    // Dropped when `run` returns, which stops the listener.
    let (_stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if !config.metrics_listen.is_empty() {
        let stopped = async move {
            let _ = metrics_stopped.await;
        };
        match metrics::serve(&config.metrics_listen, last_report.clone(), stopped).await {
            Ok(addr) => tracing::info!(%addr, "serving /metrics on http://{addr}/metrics"),
            Err(err) => tracing::error!(
                addr = %config.metrics_listen,
                %err,
                "cannot serve /metrics (metrics_listen); the agent runs without it"
            ),
        }
    }
    session::run(config, last_report, shutdown).await
}
