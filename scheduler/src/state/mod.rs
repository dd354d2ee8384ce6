//! The replicated state machine: apps, builds, releases and nodes, and the
//! [`Command`]s that change them.
//!
//! Every change to what the scheduler knows goes through raft as a [`Command`] and is
//! applied here by [`State::apply`], on every member, in log order. `apply` is pure and
//! deterministic: it reads no clock (times travel inside the command), draws no random
//! numbers, and refuses bad commands with an [`ApplyError`] instead of half-applying
//! them. Builds and releases get their ids here, so every member agrees on them.
//!
//! Where things are: the commands in `command.rs`, how each one applies in `apply.rs`,
//! the records they create in `records.rs`, and one file per larger concern (config,
//! secrets, push builds, retention, revocations, the cache doctor).
//!
//! ```text
//! QueueBuild ─► Queued ─AssignBuild─► Assigned ─StartBuild─► Running ─FinishBuild(ok)──► Pushed + Release N
//!                 ▲                      │                      │    └FinishBuild(err)─► Failed
//!                 └──────── RequeueBuild (node lost: next attempt) ◄┘
//! Rollback ─► Release N+1 (an earlier release's image)      RecordDeploy ─► release deployed / failed
//! SetConfig / Scale ─► App record changed + Release N+1 (the serving image, new config or replicas)
//! ```

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

mod app_config;
mod apply;
mod build_retention;
pub mod cache_doctor;
mod claims;
mod command;
mod outcome;
mod push_builds;
mod records;
pub mod retention;
mod revocations;
mod secrets;

pub use app_config::{check_replicas, config_bytes};
pub use build_retention::DEFAULT_KEEP_FINISHED_BUILDS;
pub use claims::Claims;
pub use command::Command;
pub use outcome::{ApplyError, Response};
pub use records::{
    sha256_hex, App, Build, BuildOutput, BuildState, BuildStep, ChangedPaths, DeployState, Healthcheck,
    JoinSecret, NodeRecord, PhaseTimings, Release, ReleaseChange, RequestOutcome, RunSpec, SecretRecord,
};
pub use revocations::{holder_key, Revocation};

/// Release numbers count from 1 per app.
pub type ReleaseNumber = u64;

/// Everything the scheduler replicates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Apps by name.
    pub apps: BTreeMap<String, App>,
    /// Builds by id.
    pub builds: BTreeMap<String, Build>,
    /// Releases per app, in number order.
    pub releases: BTreeMap<String, Vec<Release>>,
    /// Registered nodes by id.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Sequence behind build ids (`b-<n>`).
    pub next_build: u64,
    /// Request id → build or release it created, for deduplicating client retries.
    pub requests: BTreeMap<String, RequestOutcome>,
    /// Request ids in arrival order, oldest first, to forget the oldest.
    pub request_order: VecDeque<String>,
    /// How each role's join token secret is kept, by role ("agent", "scheduler"): the
    /// nonce it is derived from, or the hash of one from an earlier version; never the
    /// secret. Earlier versions stored clear secrets here: they are read as their hash.
    #[serde(default, deserialize_with = "records::join_secrets_of_any_version")]
    pub join_secrets: BTreeMap<String, JoinSecret>,
    /// The deny list: certificates no member accepts, by holder (`role/name`; see
    /// [`Revocation`]).
    #[serde(default)]
    pub revocations: BTreeMap<String, Revocation>,
    /// Finished builds kept per app (`build_retention.rs`; 0: the default, in a state from an
    /// earlier version). Replicated, so every member prunes the same builds.
    #[serde(default)]
    pub keep_finished_builds: u64,
    /// Finished builds the retention removed so far, all apps.
    #[serde(default)]
    pub pruned_builds: u64,
}

impl State {
    /// The app `name`, or why not.
    pub fn app(&self, name: &str) -> Result<&App, ApplyError> {
        self.apps.get(name).ok_or_else(|| ApplyError::NoSuchApp(name.to_string()))
    }

    /// Why the app cannot be deleted now, if it cannot: it does not exist, a build of it
    /// is unfinished, or a release of it still waits for its deploy outcome.
    pub fn check_deletable(&self, name: &str) -> Result<(), ApplyError> {
        self.app(name)?;
        if let Some(b) = self.builds.values().find(|b| b.app == name && !b.state.is_terminal()) {
            return Err(ApplyError::AppBusy { app: name.to_string(), build: b.id.clone() });
        }
        if let Some(r) =
            self.releases.get(name).into_iter().flatten().find(|r| r.deploy == DeployState::Pending)
        {
            return Err(ApplyError::AppBusy {
                app: name.to_string(),
                build: format!("release {} is being deployed", r.number),
            });
        }
        Ok(())
    }

    /// Release `number` of `app`, if it exists.
    pub fn release(&self, app: &str, number: ReleaseNumber) -> Option<&Release> {
        self.releases.get(app)?.iter().find(|r| r.number == number)
    }

    /// The release a rollback of `app` runs again: `to`, or (None) the release deployed
    /// before the current one with another image.
    pub fn rollback_target(&self, app: &str, to: Option<ReleaseNumber>) -> Result<&Release, ApplyError> {
        let current = self.app(app)?.current_release;
        let releases = self.releases.get(app).map(Vec::as_slice).unwrap_or_default();
        match to {
            Some(n) => releases
                .iter()
                .find(|r| r.number == n)
                .ok_or_else(|| ApplyError::NoSuchRelease { app: app.to_string(), number: n }),
            None => releases
                .iter()
                .rev()
                .find(|r| {
                    r.number < current
                        && r.deploy == DeployState::Deployed
                        && r.digest != self.current_digest(app)
                })
                .ok_or_else(|| ApplyError::NothingToRollBack(app.to_string())),
        }
    }

    /// Digest the app's service runs now ("" if never deployed).
    pub fn current_digest(&self, app: &str) -> String {
        let current = self.apps.get(app).map_or(0, |a| a.current_release);
        self.release(app, current).map(|r| r.digest.clone()).unwrap_or_default()
    }

    /// Queued builds, oldest first.
    pub fn queued_builds(&self) -> impl Iterator<Item = &Build> {
        let mut queued: Vec<&Build> =
            self.builds.values().filter(|b| b.state == BuildState::Queued).collect();
        queued.sort_by_key(|b| (b.created_at_ms, build_seq(&b.id)));
        queued.into_iter()
    }

    /// The node that last built `app` successfully (its layers are cached there).
    pub fn last_build_node(&self, app: &str) -> Option<&str> {
        self.releases.get(app)?.iter().rev().find(|r| r.rollback_of.is_none()).map(|r| r.node_id.as_str())
    }
}

/// Numeric part of a build id, for ordering `b-9` before `b-10`.
pub fn build_seq(id: &str) -> u64 {
    id.strip_prefix("b-").and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
