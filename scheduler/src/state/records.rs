//! The records the replicated state holds: apps, builds and their outputs, releases,
//! nodes, and the client requests remembered for deduplication. Plain data, serialized
//! into the raft log and snapshots: a field added later needs `#[serde(default)]`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ReleaseNumber;

/// An app: a git repository slipway builds and deploys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    /// The app's name (a DNS label).
    pub name: String,
    /// The git repository it is built from.
    pub repo: String,
    /// The branch deployed by default.
    pub branch: String,
    /// When it was created (ms since the epoch).
    pub created_at_ms: u64,
    /// Release the service runs now (0: never deployed successfully).
    pub current_release: ReleaseNumber,
    /// Environment set with `slipway config set`: wins over the manifest's `[run] env` for
    /// the same key. Every release made from now on runs with it.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Replicas set with `slipway scale`: wins over the manifest's `replicas` until reset.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Generation of the app's webhook secret, bumped by `slipway apps webhook --rotate`:
    /// the secret is derived from the CA key, the app and this (see
    /// `security::webhooks`), never stored.
    #[serde(default)]
    pub webhook_generation: u64,
    /// Secrets set with `slipway secrets set`, by name: which version of each, kept in
    /// which Swarm secret. Never the value (Swarm keeps it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRecord>,
}

/// One version of an app secret, as slipway records it: the value lives only in Swarm's
/// own encrypted store, in the Swarm secret named here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Counts from 1 per name; each `secrets set` makes the next.
    pub version: u32,
    /// The Swarm secret's name, `<stack>_<app>_<name>_v<version>`.
    pub swarm_name: String,
    /// The Swarm secret's id.
    pub swarm_id: String,
    /// When it was set (ms since the epoch).
    pub set_at_ms: u64,
}

/// Where a build is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildState {
    /// Waiting for a node.
    Queued,
    /// Handed to a node's agent.
    Assigned,
    /// The agent started it.
    Running,
    /// The image is in the registry.
    Pushed,
    /// It failed (or, for a deploy, the deploy failed).
    Failed,
    /// An operator or a newer deploy cancelled it.
    Cancelled,
}

impl BuildState {
    /// Finished builds never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Pushed | Self::Failed | Self::Cancelled)
    }
}

/// One build of an app at a ref, with its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    /// `b-<n>`.
    pub id: String,
    /// The app built.
    pub app: String,
    /// The branch, tag or commit asked for.
    pub git_ref: String,
    /// Build without the layer cache.
    pub no_cache: bool,
    /// Where the build is in its life.
    pub state: BuildState,
    /// Node of the current attempt.
    pub node_id: Option<String>,
    /// 0 while never assigned; each placement starts a new attempt.
    pub attempt: u32,
    /// When it was created (ms since the epoch).
    pub created_at_ms: u64,
    /// When the build last entered the queue (created, or its node was lost): queue
    /// timeouts count from here.
    #[serde(default)]
    pub queued_at_ms: u64,
    /// When it ended (ms since the epoch).
    pub finished_at_ms: Option<u64>,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
    /// What a successful build pushed.
    pub output: Option<BuildOutput>,
    /// The release it made.
    pub release: Option<ReleaseNumber>,
    /// Pushes (`POST /hooks/APP`) behind it: 0 for a build an operator asked for, 1 for
    /// one push, more when later pushes replaced its commit while it was queued.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pushes: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a successful build produced (see `BuildOutput` in types.proto).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildOutput {
    /// The commit built.
    pub git_sha: String,
    /// The image digest, `sha256:…`.
    pub digest: String,
    /// The registry repository the image was pushed to.
    pub repository: String,
    /// Size of the image.
    pub image_size_bytes: u64,
    /// Layers the push sent.
    pub layers_pushed: u32,
    /// Layers the registry already had.
    pub layers_reused: u32,
    /// Bytes the push actually sent (layers the registry lacked).
    pub bytes_pushed: u64,
    /// Build steps answered from the layer cache.
    pub cache_hits: u32,
    /// Build steps in all.
    pub steps: u32,
    /// How long each phase took.
    pub timings: PhaseTimings,
    /// How the image runs (replicas, port, env, persist, healthcheck), from the manifest.
    pub run: RunSpec,
    /// The Dockerfile steps BuildKit ran or took from its cache (bounded by
    /// `convert::build_output_from`; none from the classic builder or older agents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_steps: Vec<BuildStep>,
    /// Context paths changed since the app's previous build, as the agent found them
    /// (bounded by `convert::build_output_from`; none for a first or `--no-cache` build,
    /// or from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_paths: Option<ChangedPaths>,
}

/// Which context paths changed between two commits (see `ChangedPaths` in types.proto).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedPaths {
    /// The commit compared with.
    pub since: String,
    /// Relative to the context directory, in git's order.
    pub paths: Vec<String>,
    /// More changed than `paths` holds.
    pub truncated: bool,
    /// The agent could not tell: `paths` means nothing.
    pub unknown: bool,
}

/// One Dockerfile step of a build (see `BuildStep` in types.proto).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildStep {
    /// As the build log shows it: `[deps 2/3] RUN pip install …`.
    pub name: String,
    /// Answered from the build cache.
    pub cached: bool,
    /// From start to completion.
    pub duration_ms: u64,
}

/// How long each phase of a build took, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTimings {
    /// Fetching the ref.
    pub clone_ms: u64,
    /// Packing the build context.
    pub context_ms: u64,
    /// Building the image.
    pub build_ms: u64,
    /// Pushing it.
    pub push_ms: u64,
}

/// How an app runs: the manifest's `[run]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// How many tasks run.
    pub replicas: u32,
    /// The container port the app listens on (the router reaches it there).
    pub port: Option<u16>,
    /// Host port published to `port` on the nodes; unique across apps.
    #[serde(default)]
    pub publish: Option<u16>,
    /// Host names the router serves the app at, beside `<app>.<router domain>`; unique
    /// across apps.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Swarm placement constraints of the tasks.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Environment of the tasks.
    pub env: BTreeMap<String, String>,
    /// Directories kept on shared storage across tasks and releases.
    pub persist: Vec<String>,
    /// How Swarm tells a healthy task.
    pub healthcheck: Option<Healthcheck>,
}

/// A container healthcheck: the one domain type, replicated with the release and handed as
/// is to the deploy step (which builds Docker's `HealthConfig` from it). The wire has
/// `slipway_proto::Healthcheck`; the scheduler's `convert` module maps between the two. Zero durations and
/// zero retries mean Docker's defaults (30 s interval and timeout, no start period, 3 retries).
///
/// Raft logs and snapshots hold it in whole milliseconds under `interval_ms`, `timeout_ms`
/// and `start_period_ms`, the shape it has always had; what comes from the wire is whole
/// milliseconds, so nothing is lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", prog, args…]`, `["CMD-SHELL", "shell command"]` or `["NONE"]`.
    pub cmd: Vec<String>,
    /// Time between two probes.
    #[serde(rename = "interval_ms", with = "millis")]
    pub interval: Duration,
    /// Time after which one probe counts as failed.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// Consecutive failures that make the container unhealthy.
    pub retries: u32,
    /// Grace period after start during which failing probes do not count.
    #[serde(rename = "start_period_ms", with = "millis")]
    pub start_period: Duration,
}

/// A [`Duration`] stored as whole milliseconds (`u64`, saturating).
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Whether a release was deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployState {
    /// Not deployed yet.
    Pending,
    /// Swarm runs it.
    Deployed,
    /// It failed (or, for a deploy, the deploy failed).
    Failed,
}

/// Release N of an app: an image pinned by digest plus how it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    /// The app.
    pub app: String,
    /// Its number, counting from 1 per app.
    pub number: ReleaseNumber,
    /// The image digest, `sha256:…`.
    pub digest: String,
    /// The registry repository the image was pushed to.
    pub repository: String,
    /// The commit built.
    pub git_sha: String,
    /// The build that made it (for a rollback: the original's).
    pub build_id: String,
    /// The node that built it.
    pub node_id: String,
    /// When it was created (ms since the epoch).
    pub created_at_ms: u64,
    /// For a rollback: the release whose image this one runs again.
    pub rollback_of: Option<ReleaseNumber>,
    /// Whether it was deployed.
    pub deploy: DeployState,
    /// Why its deploy failed.
    pub deploy_error: Option<String>,
    /// How the image runs (replicas, port, env, persist, healthcheck), from the manifest.
    pub run: RunSpec,
    /// Bytes the push actually sent (layers the registry lacked).
    pub bytes_pushed: u64,
    /// How long each phase took.
    pub timings: PhaseTimings,
    /// The app's config when the release was made (see [`App::config`]).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The app's scaled replicas when the release was made (see [`App::replicas`]).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// For a release made by a config change or a scale, not a build: what changed.
    #[serde(default)]
    pub change: Option<ReleaseChange>,
    /// The secrets it mounts under `/run/secrets/<name>`: the app's secrets when it was
    /// made (see [`App::secrets`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRecord>,
    /// Its image left the registry under the retention policy (`slipway gc`): the
    /// record stays as history, but it cannot be rolled back to.
    #[serde(default)]
    pub collected: bool,
}

impl Release {
    /// `repository@digest`: what the Swarm service runs.
    pub fn image(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }

    /// The environment its tasks get: the manifest's `[run] env`, then the app's config
    /// over it (config wins for the same key).
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = self.run.env.clone();
        env.extend(self.config.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// How many tasks it runs: the scaled value if the app was scaled, else the manifest's.
    pub fn effective_replicas(&self) -> u32 {
        self.replicas.unwrap_or(self.run.replicas).max(1)
    }
}

/// What a release made without a build changed (the keys, never the values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseChange {
    /// `slipway config set` / `unset`.
    Config {
        /// Keys set (new or changed).
        set: Vec<String>,
        /// Keys removed.
        unset: Vec<String>,
    },
    /// `slipway scale`: the scaled replicas, or `None` for a reset to the manifest's.
    Scale {
        /// The new scaled value.
        replicas: Option<u32>,
    },
    /// `slipway secrets set` (`version` of `name`) or `secrets unset` (`version: None`).
    Secret {
        /// The secret's name.
        name: String,
        /// The version set, or `None` for an unset.
        version: Option<u32>,
    },
}

impl std::fmt::Display for ReleaseChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReleaseChange::Config { set, unset } => {
                let mut parts = Vec::new();
                if !set.is_empty() {
                    parts.push(format!("set {}", set.join(", ")));
                }
                if !unset.is_empty() {
                    parts.push(format!("unset {}", unset.join(", ")));
                }
                write!(f, "config: {}", parts.join("; "))
            }
            ReleaseChange::Scale { replicas: Some(n) } => write!(f, "scale to {n}"),
            ReleaseChange::Scale { replicas: None } => write!(f, "scale reset to the manifest's replicas"),
            ReleaseChange::Secret { name, version: Some(v) } => write!(f, "secret: set {name} (v{v})"),
            ReleaseChange::Secret { name, version: None } => write!(f, "secret: unset {name}"),
        }
    }
}

/// A registered agent's node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id (its certificate's name).
    pub id: String,
    /// Its name, shown to operators.
    pub name: String,
    /// Labels from its agent's config.
    pub labels: BTreeMap<String, String>,
    /// Drained: no new builds.
    pub draining: bool,
    /// When it first registered.
    pub registered_at_ms: u64,
}

/// What a remembered client request created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOutcome {
    /// A build, by id.
    Build(String),
    /// A release, by app and number.
    Release {
        /// The app.
        app: String,
        /// The release number.
        number: ReleaseNumber,
    },
    /// A config change or scale that made no release (nothing to roll out).
    Configured {
        /// The app.
        app: String,
    },
}

/// How the state keeps a role's join token secret: never the secret itself, so neither
/// the raft log nor a snapshot holds it (see `security::join_tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinSecret {
    /// The secret is derived from the CA key and this nonce: every member holding the
    /// CA recomputes it, nobody without the CA can.
    Derived {
        /// Random hex, drawn by the member that made or rotated the token.
        nonce: String,
    },
    /// A secret an earlier version kept in clear, now kept as its SHA-256: it still
    /// admits joins, but cannot be shown again.
    Sha256 {
        /// SHA-256 of the secret's text, hex.
        hash: String,
    },
}

impl JoinSecret {
    /// A clear secret from an earlier version, kept as its hash.
    pub fn from_clear(secret: &str) -> JoinSecret {
        JoinSecret::Sha256 { hash: sha256_hex(secret.as_bytes()) }
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `State::join_secrets` as any version wrote it: a clear secret (before secrets
/// were kept at rest as nonces) becomes its hash as it is read, so a loaded snapshot
/// never holds it again in memory, nor in the next snapshot.
pub(super) fn join_secrets_of_any_version<'de, D>(
    deserializer: D,
) -> Result<BTreeMap<String, JoinSecret>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Kept(JoinSecret),
        Clear(String),
    }
    let stored = BTreeMap::<String, Stored>::deserialize(deserializer)?;
    Ok(stored
        .into_iter()
        .map(|(role, s)| {
            let kept = match s {
                Stored::Kept(kept) => kept,
                Stored::Clear(secret) => JoinSecret::from_clear(&secret),
            };
            (role, kept)
        })
        .collect())
}
