//! # slipway-common
//!
//! The small pieces both daemons (`slipway-scheduler`, `slipway-agent`) and the `slipway`
//! CLI share, so each is written once:
//! - [`telemetry`]: logging to stderr (journald under systemd), filtered by `RUST_LOG`;
//! - [`shutdown`]: the signal that starts a daemon's two-phase shutdown;
//! - [`config`]: TOML files read into typed configs, errors naming the file and the field;
//! - [`manifest`]: the app's `slipway.toml`, parsed and validated: the agent reads it to
//!   build, and the scheduler parses the same text again to derive the release's run
//!   spec itself rather than take the agent's word for it;
//! - [`build_logs`]: build logs on local disk bounded by age and bytes, and never
//!   written into a filesystem below its floor (scheduler and agent);
//! - [`backoff`]: exponential backoff with jitter for every retry loop;
//! - [`supervise`]: long-lived tasks whose death takes the daemon down, to be restarted;
//! - [`now_ms`]: the wall clock as carried in records and on the wire.

pub mod backoff;
pub mod build_logs;
pub mod config;
pub mod manifest;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;

pub use backoff::Backoff;

/// Milliseconds since the Unix epoch (0 if the clock is before it), for timestamps
/// carried in replicated records and wire messages.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
