//! [`Command`]: every change to the replicated state, the payload of every raft log
//! entry, and which of them a member short of disk refuses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BuildOutput, ReleaseNumber, SecretRecord};

/// A change to the replicated state: the payload of every raft log entry.
// Commands live briefly (one per write) and travel serialized: boxing the large
// variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Register an app.
    CreateApp {
        /// The app's name.
        name: String,
        /// Its git repository.
        repo: String,
        /// The branch deployed by default.
        branch: String,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// Remove an app and its records.
    DeleteApp {
        /// The app.
        name: String,
    },
    /// Queue a build; a repeated `request_id` returns the first build instead.
    QueueBuild {
        /// The app to build.
        app: String,
        /// The branch, tag or commit asked for.
        git_ref: String,
        /// Build without the layer cache.
        no_cache: bool,
        /// The client's request id: a retry with the same id gets the first outcome.
        request_id: Option<String>,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// Place the build's next attempt on a node.
    AssignBuild {
        /// The build.
        build_id: String,
        /// The node chosen.
        node_id: String,
        /// The attempt this concerns; a stale attempt changes nothing.
        attempt: u32,
    },
    /// The agent started the attempt.
    StartBuild {
        /// The build.
        build_id: String,
        /// The attempt this concerns; a stale attempt changes nothing.
        attempt: u32,
    },
    /// The node of this attempt was lost: queue the build again for a new attempt.
    RequeueBuild {
        /// The build.
        build_id: String,
        /// The attempt this concerns; a stale attempt changes nothing.
        attempt: u32,
        /// Why, for the operator.
        reason: String,
        #[serde(default)]
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// An attempt ended. Success records the next release of the app atomically.
    FinishBuild {
        /// The build.
        build_id: String,
        /// The attempt this concerns; a stale attempt changes nothing.
        attempt: u32,
        /// What it pushed, or why it failed.
        result: Result<BuildOutput, String>,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// Cancel a build that has not finished.
    CancelBuild {
        /// The build.
        build_id: String,
        /// Why, for the operator.
        reason: String,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// A queued build no node could take within the queue timeout fails, saying why.
    ExpireBuild {
        /// The build.
        build_id: String,
        /// Why, for the operator.
        reason: String,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// Record a release that runs an earlier release's image (`to`: None = the release
    /// deployed before the current one).
    Rollback {
        /// The app.
        app: String,
        /// The release to run again.
        to: Option<ReleaseNumber>,
        /// The client's request id: a retry with the same id gets the first outcome.
        request_id: Option<String>,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// Record how a release's deploy ended.
    RecordDeploy {
        /// The app.
        app: String,
        /// The release deployed.
        release: ReleaseNumber,
        /// Success, or why the deploy failed.
        result: Result<(), String>,
    },
    /// Register a node (or update its name and labels).
    RegisterNode {
        /// The node's id.
        id: String,
        /// Its name.
        name: String,
        /// Its labels.
        labels: BTreeMap<String, String>,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// Drain or activate a node.
    SetDrain {
        /// The node.
        node_id: String,
        /// Drain (true) or activate (false).
        draining: bool,
    },
    /// Remove a node from the fleet: its record goes (its name is free again), its
    /// unfinished builds are queued again, and its certificates are denied.
    RemoveNode {
        /// The node's id.
        node_id: String,
        /// When the leader proposed it (ms since the epoch): certificates of the node
        /// valid from this time or earlier are denied.
        at_ms: u64,
        /// When every certificate the node can hold has expired (ms since the epoch):
        /// the deny list entry may go then.
        certs_expire_by_ms: u64,
    },
    /// Deny the certificates of a holder (a removed scheduler) valid from `at_ms` or earlier.
    RevokeCertificates {
        /// `agent`, `scheduler` or `admin`.
        role: String,
        /// The name its certificates carry.
        name: String,
        /// Why, for the refused caller and the log.
        reason: String,
        /// When the leader proposed it (ms since the epoch).
        at_ms: u64,
        /// When every certificate the holder can hold has expired (ms since the epoch).
        certs_expire_by_ms: u64,
    },
    /// Drop the deny list entries whose certificates have all expired by `now_ms`.
    PruneRevocations {
        /// The leader's clock when it proposed it (ms since the epoch).
        now_ms: u64,
    },
    /// A join token secret in clear, as earlier versions wrote it: kept so their log
    /// entries still apply, as the secret's hash. Nothing writes it any more.
    SetJoinSecret {
        /// `agent` or `scheduler`.
        role: String,
        /// The secret (hex).
        secret: String,
    },
    /// Make (first use) or rotate the join token of a role: its secret is derived from
    /// the CA key and `nonce` (see `security::join_tokens`).
    SetJoinNonce {
        /// `agent` or `scheduler`.
        role: String,
        /// Random hex, drawn by the member that proposed it.
        nonce: String,
        /// Replace the current token (a rotation). False keeps a token that exists, so
        /// two first uses racing on two members agree on the first.
        replace: bool,
    },
    /// Set and remove config keys of an app, all or nothing (see `app_config.rs`); if the
    /// app has an image, records the release that runs it with the new config.
    SetConfig {
        /// The app.
        app: String,
        /// Keys to set, with their values.
        set: BTreeMap<String, String>,
        /// Keys to remove.
        unset: Vec<String>,
        /// The client's request id: a retry with the same id gets the first outcome.
        request_id: Option<String>,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// Scale an app (`None`: back to the manifest's replicas); if the app has an image,
    /// records the release that runs it with the new replicas.
    Scale {
        /// The app.
        app: String,
        /// The scaled replicas, or `None` to reset.
        replicas: Option<u32>,
        /// The client's request id: a retry with the same id gets the first outcome.
        request_id: Option<String>,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// Record a new version of an app secret the leader has stored as a Swarm secret (the
    /// command carries its name, version and Swarm id, never the value); if the app has an
    /// image, records the release that mounts it (see `secrets.rs`).
    SetSecret {
        /// The app.
        app: String,
        /// The secret's name (the file under /run/secrets).
        name: String,
        /// The version, which must be newer than any the app has recorded for the name;
        /// `set_at_ms` is when the leader proposed it.
        secret: SecretRecord,
        /// The client's request id: a retry with the same id gets the first outcome.
        request_id: Option<String>,
    },
    /// Remove an app secret; if the app has an image, records the release without it.
    UnsetSecret {
        /// The app.
        app: String,
        /// The secret's name.
        name: String,
        /// The client's request id: a retry with the same id gets the first outcome.
        request_id: Option<String>,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// A push to the app's branch (`POST /hooks/APP`) asks for a build of `commit`.
    /// Coalesced: if the app has a build from a push still queued and never placed, its
    /// commit becomes this one (a burst builds its newest commit once, not each in
    /// turn); otherwise a build is queued. A repeated `delivery` (the provider's
    /// delivery id, as a request id) returns the build it made or joined.
    QueuePushBuild {
        /// The app.
        app: String,
        /// The full commit id pushed (40 hex digits, checked before the write).
        commit: String,
        /// `hook:<provider>:<delivery id>`: a redelivery changes nothing.
        delivery: String,
        /// When the leader proposed it (ms since the epoch): every member applies the same time.
        at_ms: u64,
    },
    /// Replace the app's webhook secret (`slipway apps webhook APP --rotate`): its
    /// generation goes up by one, so the secret derived from it is new everywhere.
    RotateWebhook {
        /// The app.
        app: String,
    },
    /// The registry garbage collector deleted these images of an app: every release
    /// running one of them is marked collected (history, no longer a rollback target).
    /// A digest the app's current release or a pending release runs is refused.
    MarkCollected {
        /// The app.
        app: String,
        /// The manifest digests deleted from its repository.
        digests: Vec<String>,
    },
    /// Keep this many finished builds per app (the leader's `retention` config); older
    /// ones leave the state now and whenever a build finishes (`build_retention.rs`).
    SetBuildRetention {
        /// At least 1.
        keep_finished_builds_per_app: u64,
    },
}

impl Command {
    /// Whether this is new work a client asks for (an app, a build, a release, config,
    /// a secret): the writes a member short of disk refuses (`raft::space`). Everything
    /// else is let through: bookkeeping of work already accepted (placing, starting,
    /// finishing, requeueing and expiring builds, recording deploys, agents registering,
    /// drains), security (revocations, join tokens, webhook rotation) and what frees
    /// space (deleting apps and secrets, removing nodes, pruning, retention, GC marks).
    /// Refusing those would strand accepted work or keep an operator from making room.
    pub fn needs_headroom(&self) -> bool {
        matches!(
            self,
            Command::CreateApp { .. }
                | Command::QueueBuild { .. }
                | Command::QueuePushBuild { .. }
                | Command::Rollback { .. }
                | Command::SetConfig { .. }
                | Command::Scale { .. }
                | Command::SetSecret { .. }
        )
    }
}
