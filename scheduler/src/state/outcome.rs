//! What applying a [`super::Command`] returns: a [`Response`], or the [`ApplyError`]
//! that refused it (deterministic: every member refuses a command the same way).

use serde::{Deserialize, Serialize};

use super::{App, Build, BuildState, NodeRecord, Release, ReleaseNumber};

/// What applying a command returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Applied; nothing to return.
    Done,
    /// The app created.
    App(App),
    /// The build queued or changed.
    Build(Build),
    /// The release recorded.
    Release(Release),
    /// The node registered or changed.
    Node(NodeRecord),
    /// The node removed, and the builds that ran there and were queued again.
    NodeRemoved {
        /// Its record as it was.
        node: NodeRecord,
        /// Ids of the builds queued again.
        requeued: Vec<String>,
    },
    /// The command referred to an attempt that is no longer current (a late result
    /// from a lost node, or a repeat): nothing changed.
    Stale,
    /// The command was refused; nothing changed.
    Refused(ApplyError),
    /// A config change or scale applied: the app as it is now, and the release that rolls
    /// it out (`None`: the app has no image yet, or nothing changed).
    Configured {
        /// The app record after the change.
        app: App,
        /// The release made, if any.
        release: Option<Release>,
        /// False when the change set what was already there: nothing was recorded.
        changed: bool,
    },
}

/// Why a command was refused. Deterministic: every member refuses it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("app {0:?} already exists")]
    /// An app of that name exists.
    AppExists(String),
    #[error("app {0:?} not found; `slipway apps list` shows the apps")]
    /// No app of that name.
    NoSuchApp(String),
    #[error("build {0:?} not found")]
    /// No build of that id.
    NoSuchBuild(String),
    #[error("node {0:?} not found; `slipway nodes` shows the nodes")]
    /// No node of that name or id.
    NoSuchNode(String),
    #[error("app {app:?} has no release {number}; `slipway releases {app}` lists them")]
    /// The app has no such release.
    NoSuchRelease {
        /// The app.
        app: String,
        /// The release asked for.
        number: ReleaseNumber,
    },
    #[error("app {0:?} has no earlier deployed release to roll back to")]
    /// The app has no earlier deployed release.
    NothingToRollBack(String),
    #[error("build {build:?} is {state:?}, not {expected}")]
    /// The build is not in the state the command needs.
    WrongBuildState {
        /// The build.
        build: String,
        /// Its state.
        state: BuildState,
        /// The state(s) the command needs.
        expected: String,
    },
    #[error("{field}: {value} is held by app {holder:?}; remove it from this app's slipway.toml, or from {holder}'s and deploy {holder} first")]
    /// The release claims a host name or host port another app holds.
    Claimed {
        /// The manifest field, e.g. `run.domains`.
        field: String,
        /// What is claimed, e.g. `host name "shop.example.com"`.
        value: String,
        /// The app that holds it.
        holder: String,
    },
    #[error("invalid [run] table: {0}")]
    /// The release's run spec is not valid (it came from an agent).
    InvalidRun(String),
    #[error("node name {name:?} is held by node {holder:?}; give this agent another `name` in its agent.toml, or remove the other node first with `slipway nodes remove {holder}`")]
    /// Another node holds the name a node registers with.
    NodeNameTaken {
        /// The name.
        name: String,
        /// The id of the node that holds it.
        holder: String,
    },
    #[error("{0}")]
    /// A config change is not valid (the message names the key and the fix).
    InvalidConfig(String),
    #[error("app {app:?} has no config key {key}; {hint}")]
    /// `config unset` of a key the app's config does not hold.
    NotConfigured {
        /// The app.
        app: String,
        /// The key.
        key: String,
        /// Where the key comes from instead, and what to do.
        hint: String,
    },
    #[error("replicas must be 1 to {max} (the manifest's bounds), got {got}; use `slipway scale APP --reset` for the manifest's value")]
    /// A scale out of bounds.
    InvalidReplicas {
        /// What was asked for.
        got: u64,
        /// The most allowed.
        max: u32,
    },
    #[error("app {app:?} has no secret {name}; `slipway secrets list {app}` lists its secrets")]
    /// `secrets unset` of a name the app does not have.
    NoSuchSecret {
        /// The app.
        app: String,
        /// The name.
        name: String,
    },
    #[error(
        "secret {name} of app {app:?} is at version {current} already (set again meanwhile?); try again"
    )]
    /// A secret version not newer than the one recorded (two sets raced).
    StaleSecretVersion {
        /// The app.
        app: String,
        /// The name.
        name: String,
        /// The version recorded.
        current: u32,
    },
    #[error("invalid secret: {0}")]
    /// A secret command that is not valid (bad name).
    InvalidSecret(String),
    #[error("release {number} of {app:?} was garbage-collected from the registry; `slipway releases {app}` marks the releases that can still be rolled back to")]
    /// The release's image left the registry (retention policy).
    ReleaseCollected {
        /// The app.
        app: String,
        /// The release asked for.
        number: ReleaseNumber,
    },
    #[error("release {number} of {app:?} is current or waits for its deploy: its image {digest} cannot be collected")]
    /// A GC tried to mark an image still in use as collected.
    ImageInUse {
        /// The app.
        app: String,
        /// The release that runs it.
        number: ReleaseNumber,
        /// The digest.
        digest: String,
    },
    #[error("app {app:?} has builds in progress ({build}); wait for them or cancel them first")]
    /// The app has a build in progress.
    AppBusy {
        /// The app.
        app: String,
        /// The build in progress.
        build: String,
    },
}
