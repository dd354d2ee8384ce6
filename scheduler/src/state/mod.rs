//! The replicated state machine: apps, builds, releases and nodes, and the
//! [`Command`]s that change them.
//!
//! Every change to what the scheduler knows goes through raft as a [`Command`] and is
//! applied here by [`State::apply`], on every member, in log order. `apply` is pure and
//! deterministic: it reads no clock (times travel inside the command), draws no random
//! numbers, and refuses bad commands with an [`ApplyError`] instead of half-applying
//! them. Builds and releases get their ids here, so every member agrees on them.
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
mod build_retention;
pub mod cache_doctor;
mod claims;
mod outcome;
mod push_builds;
mod records;
pub mod retention;
mod revocations;
mod secrets;

pub use app_config::{check_replicas, config_bytes};
pub use build_retention::DEFAULT_KEEP_FINISHED_BUILDS;
pub use claims::Claims;
pub use outcome::{ApplyError, Response};
pub use records::{
    sha256_hex, App, Build, BuildOutput, BuildState, BuildStep, ChangedPaths, DeployState, Healthcheck,
    JoinSecret, NodeRecord, PhaseTimings, Release, ReleaseChange, RequestOutcome, RunSpec, SecretRecord,
};
pub use revocations::{holder_key, Revocation};

/// Release numbers count from 1 per app.
pub type ReleaseNumber = u64;

/// How many client request ids are remembered for deduplicating retried writes.
const REMEMBERED_REQUESTS: usize = 10_000;

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

impl State {
    /// Applies one command. Refusals change nothing.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match self.try_apply(cmd) {
            Ok(resp) => {
                if let (
                    Command::FinishBuild { .. } | Command::CancelBuild { .. } | Command::ExpireBuild { .. },
                    Response::Build(Build { app, .. }) | Response::Release(Release { app, .. }),
                ) = (cmd, &resp)
                {
                    // Finished builds beyond the retention leave the state (`build_retention.rs`).
                    let app = app.clone();
                    self.prune_finished_builds(&app);
                }
                resp
            }
            Err(err) => Response::Refused(err),
        }
    }

    fn try_apply(&mut self, cmd: &Command) -> Result<Response, ApplyError> {
        match cmd {
            Command::CreateApp { name, repo, branch, at_ms } => {
                if self.apps.contains_key(name) {
                    return Err(ApplyError::AppExists(name.clone()));
                }
                let app = App {
                    name: name.clone(),
                    repo: repo.clone(),
                    branch: branch.clone(),
                    created_at_ms: *at_ms,
                    current_release: 0,
                    config: BTreeMap::new(),
                    replicas: None,
                    secrets: BTreeMap::new(),
                    webhook_generation: 0,
                };
                self.apps.insert(name.clone(), app.clone());
                Ok(Response::App(app))
            }
            Command::DeleteApp { name } => {
                self.check_deletable(name)?;
                self.apps.remove(name);
                self.releases.remove(name);
                self.builds.retain(|_, b| b.app != *name);
                Ok(Response::Done)
            }
            Command::QueueBuild { app, git_ref, no_cache, request_id, at_ms } => {
                if let Some(RequestOutcome::Build(id)) =
                    request_id.as_ref().and_then(|r| self.requests.get(r))
                {
                    if let Some(build) = self.builds.get(id) {
                        return Ok(Response::Build(build.clone()));
                    }
                }
                self.app(app)?;
                self.next_build += 1;
                let build = Build {
                    id: format!("b-{}", self.next_build),
                    app: app.clone(),
                    git_ref: git_ref.clone(),
                    no_cache: *no_cache,
                    state: BuildState::Queued,
                    node_id: None,
                    attempt: 0,
                    created_at_ms: *at_ms,
                    queued_at_ms: *at_ms,
                    finished_at_ms: None,
                    error: None,
                    output: None,
                    release: None,
                    pushes: 0,
                };
                self.builds.insert(build.id.clone(), build.clone());
                self.remember(request_id, RequestOutcome::Build(build.id.clone()));
                Ok(Response::Build(build))
            }
            Command::AssignBuild { build_id, node_id, attempt } => {
                if !self.nodes.contains_key(node_id) {
                    return Err(ApplyError::NoSuchNode(node_id.clone()));
                }
                let build = self.build_mut(build_id)?;
                if build.state != BuildState::Queued || *attempt != build.attempt + 1 {
                    return Ok(Response::Stale);
                }
                build.state = BuildState::Assigned;
                build.attempt = *attempt;
                build.node_id = Some(node_id.clone());
                Ok(Response::Build(build.clone()))
            }
            Command::StartBuild { build_id, attempt } => {
                let build = self.build_mut(build_id)?;
                if build.attempt != *attempt || build.state != BuildState::Assigned {
                    return Ok(Response::Stale);
                }
                build.state = BuildState::Running;
                Ok(Response::Build(build.clone()))
            }
            Command::RequeueBuild { build_id, attempt, reason, at_ms } => {
                let build = self.build_mut(build_id)?;
                let current = matches!(build.state, BuildState::Assigned | BuildState::Running);
                if !current || build.attempt != *attempt {
                    return Ok(Response::Stale);
                }
                build.state = BuildState::Queued;
                build.queued_at_ms = *at_ms;
                build.node_id = None;
                build.error = Some(format!("attempt {attempt} lost: {reason}"));
                Ok(Response::Build(build.clone()))
            }
            Command::FinishBuild { build_id, attempt, result, at_ms } => {
                let build = self.build_mut(build_id)?;
                let current = matches!(build.state, BuildState::Assigned | BuildState::Running);
                if !current || build.attempt != *attempt {
                    return Ok(Response::Stale);
                }
                let output = match result {
                    Err(reason) => {
                        build.state = BuildState::Failed;
                        build.error = Some(reason.clone());
                        build.finished_at_ms = Some(*at_ms);
                        return Ok(Response::Build(build.clone()));
                    }
                    Ok(output) => output.clone(),
                };
                let app = build.app.clone();
                let node_id = build.node_id.clone().unwrap_or_default();
                if let Err(refused) = self.check_claims(&app, &output.run) {
                    let build = self.builds.get_mut(build_id).expect("checked above");
                    build.state = BuildState::Failed;
                    build.error = Some(format!("the image was pushed but cannot be released: {refused}"));
                    build.finished_at_ms = Some(*at_ms);
                    return Ok(Response::Build(build.clone()));
                }
                let (config, replicas, secrets) = self
                    .apps
                    .get(&app)
                    .map(|a| (a.config.clone(), a.replicas, a.secrets.clone()))
                    .unwrap_or_default();
                let releases = self.releases.entry(app.clone()).or_default();
                let number = releases.last().map_or(1, |r| r.number + 1);
                let release = Release {
                    app: app.clone(),
                    number,
                    digest: output.digest.clone(),
                    repository: output.repository.clone(),
                    git_sha: output.git_sha.clone(),
                    build_id: build_id.clone(),
                    node_id,
                    created_at_ms: *at_ms,
                    rollback_of: None,
                    deploy: DeployState::Pending,
                    deploy_error: None,
                    run: output.run.clone(),
                    bytes_pushed: output.bytes_pushed,
                    timings: output.timings,
                    config,
                    replicas,
                    change: None,
                    secrets,
                    collected: false,
                };
                releases.push(release.clone());
                let build = self.builds.get_mut(build_id).expect("checked above");
                build.state = BuildState::Pushed;
                build.error = None;
                build.output = Some(output);
                build.release = Some(number);
                build.finished_at_ms = Some(*at_ms);
                Ok(Response::Release(release))
            }
            Command::CancelBuild { build_id, reason, at_ms } => {
                let build = self.build_mut(build_id)?;
                if build.state.is_terminal() {
                    return Err(ApplyError::WrongBuildState {
                        build: build_id.clone(),
                        state: build.state,
                        expected: "queued, assigned or running".into(),
                    });
                }
                build.state = BuildState::Cancelled;
                build.error = Some(reason.clone());
                build.finished_at_ms = Some(*at_ms);
                Ok(Response::Build(build.clone()))
            }
            Command::ExpireBuild { build_id, reason, at_ms } => {
                let build = self.build_mut(build_id)?;
                if build.state != BuildState::Queued {
                    return Ok(Response::Stale);
                }
                build.state = BuildState::Failed;
                build.error = Some(reason.clone());
                build.finished_at_ms = Some(*at_ms);
                Ok(Response::Build(build.clone()))
            }
            Command::Rollback { app, to, request_id, at_ms } => {
                if let Some(RequestOutcome::Release { app, number }) =
                    request_id.as_ref().and_then(|r| self.requests.get(r))
                {
                    if let Some(release) = self.release(app, *number) {
                        return Ok(Response::Release(release.clone()));
                    }
                }
                let target = self.rollback_target(app, *to)?;
                let releases = self.releases.get(app).map(Vec::as_slice).unwrap_or_default();
                if target.collected {
                    return Err(ApplyError::ReleaseCollected { app: app.clone(), number: target.number });
                }
                let number = releases.last().map_or(1, |r| r.number + 1);
                let release = Release {
                    number,
                    created_at_ms: *at_ms,
                    rollback_of: Some(target.number),
                    deploy: DeployState::Pending,
                    deploy_error: None,
                    bytes_pushed: 0,
                    timings: PhaseTimings::default(),
                    // The app's scale is not rolled back (it is not the code's); its
                    // config is, as Heroku does: the app's config becomes the target's.
                    replicas: self.app(app)?.replicas,
                    change: None,
                    // Nor are its secrets: the versions set now stay mounted (the
                    // earlier ones may be gone from Swarm).
                    secrets: self.app(app)?.secrets.clone(),
                    collected: false,
                    ..target.clone()
                };
                self.check_claims(app, &release.run)?;
                if let Some(a) = self.apps.get_mut(app) {
                    a.config = release.config.clone();
                }
                self.releases.entry(app.clone()).or_default().push(release.clone());
                self.remember(request_id, RequestOutcome::Release { app: app.clone(), number });
                Ok(Response::Release(release))
            }
            Command::MarkCollected { app, digests } => {
                let current = self.app(app)?.current_release;
                let releases = self.releases.get_mut(app).map(Vec::as_mut_slice).unwrap_or_default();
                if let Some(r) = releases.iter().find(|r| {
                    digests.contains(&r.digest) && (r.number == current || r.deploy == DeployState::Pending)
                }) {
                    return Err(ApplyError::ImageInUse {
                        app: app.clone(),
                        number: r.number,
                        digest: r.digest.clone(),
                    });
                }
                for r in releases.iter_mut().filter(|r| digests.contains(&r.digest)) {
                    r.collected = true;
                }
                Ok(Response::Done)
            }
            Command::RecordDeploy { app, release, result } => {
                let number = *release;
                let rel = self
                    .releases
                    .get_mut(app)
                    .and_then(|rs| rs.iter_mut().find(|r| r.number == number))
                    .ok_or_else(|| ApplyError::NoSuchRelease { app: app.clone(), number })?;
                // Only a pending release takes an outcome: a late result from a deposed
                // leader's deploy, or a repeat, changes nothing.
                if rel.deploy != DeployState::Pending {
                    return Ok(Response::Stale);
                }
                match result {
                    Ok(()) => {
                        rel.deploy = DeployState::Deployed;
                        rel.deploy_error = None;
                        let rel = rel.clone();
                        if let Some(a) = self.apps.get_mut(app).filter(|a| a.current_release < number) {
                            a.current_release = number;
                        }
                        Ok(Response::Release(rel))
                    }
                    Err(reason) => {
                        rel.deploy = DeployState::Failed;
                        rel.deploy_error = Some(reason.clone());
                        Ok(Response::Release(rel.clone()))
                    }
                }
            }
            Command::RegisterNode { id, name, labels, at_ms } => {
                self.check_node_name(id, name)?;
                let node = self.nodes.entry(id.clone()).or_insert_with(|| NodeRecord {
                    id: id.clone(),
                    name: name.clone(),
                    labels: labels.clone(),
                    draining: false,
                    registered_at_ms: *at_ms,
                });
                node.name = name.clone();
                node.labels = labels.clone();
                Ok(Response::Node(node.clone()))
            }
            Command::SetDrain { node_id, draining } => {
                let node =
                    self.nodes.get_mut(node_id).ok_or_else(|| ApplyError::NoSuchNode(node_id.clone()))?;
                node.draining = *draining;
                Ok(Response::Node(node.clone()))
            }
            Command::RemoveNode { node_id, at_ms, certs_expire_by_ms } => {
                self.remove_node(node_id, *at_ms, *certs_expire_by_ms)
            }
            Command::RevokeCertificates { role, name, reason, at_ms, certs_expire_by_ms } => {
                self.revoke(Revocation {
                    role: role.clone(),
                    name: name.clone(),
                    issued_until_ms: *at_ms,
                    expires_at_ms: *certs_expire_by_ms,
                    reason: reason.clone(),
                });
                Ok(Response::Done)
            }
            Command::PruneRevocations { now_ms } => Ok(self.prune_revocations(*now_ms)),
            Command::SetJoinSecret { role, secret } => {
                self.join_secrets.insert(role.clone(), JoinSecret::from_clear(secret));
                Ok(Response::Done)
            }
            Command::SetJoinNonce { role, nonce, replace } => {
                if *replace || !self.join_secrets.contains_key(role) {
                    self.join_secrets.insert(role.clone(), JoinSecret::Derived { nonce: nonce.clone() });
                }
                Ok(Response::Done)
            }
            Command::SetConfig { app, set, unset, request_id, at_ms } => {
                self.set_config(app, set, unset, request_id, *at_ms)
            }
            Command::Scale { app, replicas, request_id, at_ms } => {
                self.scale(app, *replicas, request_id, *at_ms)
            }
            Command::SetSecret { app, name, secret, request_id } => {
                self.set_secret(app, name, secret, request_id)
            }
            Command::UnsetSecret { app, name, request_id, at_ms } => {
                self.unset_secret(app, name, request_id, *at_ms)
            }
            Command::QueuePushBuild { app, commit, delivery, at_ms } => {
                self.queue_push_build(app, commit, delivery, *at_ms)
            }
            Command::RotateWebhook { app } => {
                let record = self.apps.get_mut(app).ok_or_else(|| ApplyError::NoSuchApp(app.clone()))?;
                record.webhook_generation += 1;
                Ok(Response::App(record.clone()))
            }
            Command::SetBuildRetention { keep_finished_builds_per_app } => {
                self.keep_finished_builds = (*keep_finished_builds_per_app).max(1);
                self.prune_all_finished_builds();
                Ok(Response::Done)
            }
        }
    }

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

    fn build_mut(&mut self, id: &str) -> Result<&mut Build, ApplyError> {
        self.builds.get_mut(id).ok_or_else(|| ApplyError::NoSuchBuild(id.to_string()))
    }

    fn remember(&mut self, request_id: &Option<String>, outcome: RequestOutcome) {
        let Some(id) = request_id else { return };
        if self.requests.insert(id.clone(), outcome).is_none() {
            self.request_order.push_back(id.clone());
        }
        while self.request_order.len() > REMEMBERED_REQUESTS {
            if let Some(old) = self.request_order.pop_front() {
                self.requests.remove(&old);
            }
        }
    }
}

/// Numeric part of a build id, for ordering `b-9` before `b-10`.
pub fn build_seq(id: &str) -> u64 {
    id.strip_prefix("b-").and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn output(digest_char: char) -> BuildOutput {
        BuildOutput {
            git_sha: "abc".into(),
            digest: format!("sha256:{}", digest_char.to_string().repeat(64)),
            repository: "127.0.0.1:5000/shop".into(),
            run: RunSpec { replicas: 1, ..Default::default() },
            ..Default::default()
        }
    }

    fn state_with_app() -> State {
        let mut s = State::default();
        s.apply(&Command::CreateApp {
            name: "shop".into(),
            repo: "file:///r".into(),
            branch: "main".into(),
            at_ms: 1,
        });
        s.apply(&Command::RegisterNode {
            id: "n1".into(),
            name: "node-1".into(),
            labels: Default::default(),
            at_ms: 1,
        });
        s.apply(&Command::RegisterNode {
            id: "n2".into(),
            name: "node-2".into(),
            labels: Default::default(),
            at_ms: 1,
        });
        s
    }

    fn queue(s: &mut State, request_id: Option<&str>) -> Build {
        match s.apply(&Command::QueueBuild {
            app: "shop".into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: request_id.map(Into::into),
            at_ms: 2,
        }) {
            Response::Build(b) => b,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn finish(s: &mut State, id: &str, attempt: u32, c: char) -> Response {
        s.apply(&Command::FinishBuild { build_id: id.into(), attempt, result: Ok(output(c)), at_ms: 3 })
    }

    fn deploy_ok(s: &mut State, number: u64) {
        s.apply(&Command::RecordDeploy { app: "shop".into(), release: number, result: Ok(()) });
    }

    #[test]
    fn a_successful_build_records_exactly_one_release() {
        let mut s = state_with_app();
        let b = queue(&mut s, None);
        assert_eq!(b.id, "b-1");
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
        s.apply(&Command::StartBuild { build_id: b.id.clone(), attempt: 1 });
        let Response::Release(r) = finish(&mut s, &b.id, 1, 'a') else { panic!() };
        assert_eq!((r.number, r.node_id.as_str()), (1, "n1"));
        assert_eq!(r.image(), format!("127.0.0.1:5000/shop@sha256:{}", "a".repeat(64)));
        // A repeated result is stale and records nothing.
        assert_eq!(finish(&mut s, &b.id, 1, 'a'), Response::Stale);
        assert_eq!(s.releases["shop"].len(), 1);
        assert_eq!(s.builds[&b.id].state, BuildState::Pushed);
    }

    #[test]
    fn a_late_result_from_a_lost_attempt_is_ignored() {
        let mut s = state_with_app();
        let b = queue(&mut s, None);
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
        s.apply(&Command::RequeueBuild {
            build_id: b.id.clone(),
            attempt: 1,
            reason: "node-1 down".into(),
            at_ms: 5,
        });
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n2".into(), attempt: 2 });
        assert_eq!(finish(&mut s, &b.id, 1, 'a'), Response::Stale);
        assert!(matches!(finish(&mut s, &b.id, 2, 'b'), Response::Release(_)));
        assert_eq!(s.releases["shop"].len(), 1);
        assert_eq!(s.releases["shop"][0].node_id, "n2");
    }

    #[test]
    fn retried_requests_return_the_first_build() {
        let mut s = state_with_app();
        let a = queue(&mut s, Some("req-1"));
        let b = queue(&mut s, Some("req-1"));
        assert_eq!(a.id, b.id);
        assert_eq!(s.builds.len(), 1);
        assert_ne!(queue(&mut s, Some("req-2")).id, a.id);
    }

    #[test]
    fn failures_record_the_reason_and_no_release() {
        let mut s = state_with_app();
        let b = queue(&mut s, None);
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
        let resp = s.apply(&Command::FinishBuild {
            build_id: b.id.clone(),
            attempt: 1,
            result: Err("Step 2/3 : RUN false: exit 1".into()),
            at_ms: 3,
        });
        let Response::Build(b) = resp else { panic!("{resp:?}") };
        assert_eq!(b.state, BuildState::Failed);
        assert!(b.error.unwrap().contains("RUN false"));
        assert!(!s.releases.contains_key("shop"));
    }

    /// Builds, records and deploys releases 1 (digest of `a`s) and 2 (of `b`s) of shop.
    fn two_deployed_releases(s: &mut State) {
        for c in ['a', 'b'] {
            let b = queue(s, None);
            s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
            let Response::Release(r) = finish(s, &b.id, 1, c) else { panic!() };
            deploy_ok(s, r.number);
        }
    }

    #[test]
    fn collected_images_are_history_and_no_rollback_target() {
        let mut s = state_with_app();
        two_deployed_releases(&mut s);
        let (old, current) = (s.releases["shop"][0].digest.clone(), s.releases["shop"][1].digest.clone());
        // The current release's image is never collected.
        let in_use = s.apply(&Command::MarkCollected { app: "shop".into(), digests: vec![current.clone()] });
        assert!(matches!(in_use, Response::Refused(ApplyError::ImageInUse { number: 2, .. })), "{in_use:?}");
        assert!(!s.releases["shop"][1].collected);
        assert_eq!(
            s.apply(&Command::MarkCollected { app: "shop".into(), digests: vec![old] }),
            Response::Done
        );
        assert!(s.releases["shop"][0].collected && !s.releases["shop"][1].collected);
        for to in [Some(1), None] {
            let refused = s.apply(&Command::Rollback { app: "shop".into(), to, request_id: None, at_ms: 9 });
            assert_eq!(
                refused,
                Response::Refused(ApplyError::ReleaseCollected { app: "shop".into(), number: 1 })
            );
        }
        assert_eq!(s.releases["shop"].len(), 2, "nothing recorded");
    }

    #[test]
    fn rollback_records_a_new_release_with_an_earlier_digest() {
        let mut s = state_with_app();
        two_deployed_releases(&mut s);
        assert_eq!(s.apps["shop"].current_release, 2);
        let Response::Release(r3) = s.apply(&Command::Rollback {
            app: "shop".into(),
            to: None,
            request_id: Some("rb".into()),
            at_ms: 9,
        }) else {
            panic!()
        };
        assert_eq!((r3.number, r3.rollback_of), (3, Some(1)));
        assert_eq!(r3.digest, s.releases["shop"][0].digest);
        // The same request again returns release 3, not a release 4.
        let again = s.apply(&Command::Rollback {
            app: "shop".into(),
            to: None,
            request_id: Some("rb".into()),
            at_ms: 9,
        });
        assert_eq!(again, Response::Release(r3));
        let missing =
            s.apply(&Command::Rollback { app: "shop".into(), to: Some(42), request_id: None, at_ms: 9 });
        assert_eq!(missing, Response::Refused(ApplyError::NoSuchRelease { app: "shop".into(), number: 42 }));
    }

    #[test]
    fn a_failed_deploy_keeps_the_current_release() {
        let mut s = state_with_app();
        let b = queue(&mut s, None);
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
        finish(&mut s, &b.id, 1, 'a');
        s.apply(&Command::RecordDeploy { app: "shop".into(), release: 1, result: Err("rolled back".into()) });
        assert_eq!(s.apps["shop"].current_release, 0);
        assert_eq!(s.releases["shop"][0].deploy, DeployState::Failed);
    }

    #[test]
    fn a_late_deploy_result_changes_nothing() {
        let mut s = state_with_app();
        for (i, c) in ['a', 'b'].into_iter().enumerate() {
            let b = queue(&mut s, None);
            s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
            finish(&mut s, &b.id, 1, c);
            assert_eq!(s.releases["shop"][i].deploy, DeployState::Pending);
        }
        deploy_ok(&mut s, 2);
        // A deposed leader's deploy of release 1 reports late: release 2 stays current.
        s.apply(&Command::RecordDeploy { app: "shop".into(), release: 1, result: Ok(()) });
        assert_eq!(s.apps["shop"].current_release, 2);
        let again =
            s.apply(&Command::RecordDeploy { app: "shop".into(), release: 2, result: Err("x".into()) });
        assert_eq!(again, Response::Stale);
        assert_eq!(s.releases["shop"][1].deploy, DeployState::Deployed);
    }

    #[test]
    fn refusals_change_nothing() {
        let mut s = state_with_app();
        let before = s.clone();
        let resp = s.apply(&Command::QueueBuild {
            app: "nope".into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: None,
            at_ms: 1,
        });
        assert_eq!(resp, Response::Refused(ApplyError::NoSuchApp("nope".into())));
        assert_eq!(s, before);
        let resp = s.apply(&Command::CreateApp {
            name: "shop".into(),
            repo: "x".into(),
            branch: "b".into(),
            at_ms: 1,
        });
        assert_eq!(resp, Response::Refused(ApplyError::AppExists("shop".into())));
        assert_eq!(s, before);
    }

    #[test]
    fn healthcheck_keeps_its_stored_shape_in_milliseconds() {
        let old = r#"{"cmd":["CMD","/bin/check"],"interval_ms":5000,"timeout_ms":1500,"retries":3,"start_period_ms":10000}"#;
        let hc: Healthcheck = serde_json::from_str(old).unwrap();
        assert_eq!(
            hc,
            Healthcheck {
                cmd: vec!["CMD".into(), "/bin/check".into()],
                interval: Duration::from_secs(5),
                timeout: Duration::from_millis(1500),
                retries: 3,
                start_period: Duration::from_secs(10),
            }
        );
        assert_eq!(serde_json::to_string(&hc).unwrap(), old);
    }

    #[test]
    fn join_secrets_are_never_kept_in_clear() {
        let old = "ab".repeat(32);
        let mut s = State::default();
        // An entry an earlier version logged, replayed: kept as the secret's hash.
        let logged: Command =
            serde_json::from_str(&format!(r#"{{"SetJoinSecret":{{"role":"agent","secret":"{old}"}}}}"#))
                .unwrap();
        assert_eq!(s.apply(&logged), Response::Done);
        assert_eq!(s.join_secrets["agent"], JoinSecret::Sha256 { hash: sha256_hex(old.as_bytes()) });
        // Now: a nonce; a first use does not replace a token that exists, a rotation does.
        let nonce =
            |n: &str, replace| Command::SetJoinNonce { role: "scheduler".into(), nonce: n.into(), replace };
        s.apply(&nonce("n1", false));
        s.apply(&nonce("n2", false));
        assert_eq!(s.join_secrets["scheduler"], JoinSecret::Derived { nonce: "n1".into() });
        s.apply(&nonce("n3", true));
        assert_eq!(s.join_secrets["scheduler"], JoinSecret::Derived { nonce: "n3".into() });
        let snapshot = serde_json::to_string(&s).unwrap();
        assert!(!snapshot.contains(&old), "{snapshot}");
        assert_eq!(serde_json::from_str::<State>(&snapshot).unwrap(), s);
    }

    #[test]
    fn a_state_from_before_reads_its_clear_join_secrets_as_hashes() {
        let (agent, scheduler) = ("0a".repeat(32), "1b".repeat(32));
        let before = format!(
            r#"{{"apps":{{}},"builds":{{}},"releases":{{}},"nodes":{{}},"next_build":3,"requests":{{}},
            "request_order":[],"join_secrets":{{"agent":"{agent}","scheduler":"{scheduler}"}}}}"#
        );
        let s: State = serde_json::from_str(&before).unwrap();
        assert_eq!(s.next_build, 3);
        assert_eq!(s.join_secrets["agent"], JoinSecret::from_clear(&agent));
        assert_eq!(s.join_secrets["scheduler"], JoinSecret::from_clear(&scheduler));
        let again = serde_json::to_string(&s).unwrap();
        assert!(!again.contains(&agent) && !again.contains(&scheduler), "{again}");
        // Older still: no join secrets at all.
        let older = before.split(r#","join_secrets""#).next().unwrap().to_string() + "}";
        assert!(serde_json::from_str::<State>(&older).unwrap().join_secrets.is_empty());
    }

    fn push(s: &mut State, commit: char, delivery: &str) -> Build {
        let cmd = Command::QueuePushBuild {
            app: "shop".into(),
            commit: commit.to_string().repeat(40),
            delivery: format!("hook:github:{delivery}"),
            at_ms: 5,
        };
        match s.apply(&cmd) {
            Response::Build(b) => b,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_burst_of_pushes_builds_one_running_and_one_queued_with_the_newest_commit() {
        let mut s = state_with_app();
        let first = push(&mut s, 'a', "d1");
        assert_eq!((first.id.as_str(), first.pushes, first.git_ref.as_str()), ("b-1", 1, &*"a".repeat(40)));
        // Not placed yet: the next push joins it.
        let joined = push(&mut s, 'b', "d2");
        assert_eq!(
            (joined.id.as_str(), joined.pushes, joined.git_ref.as_str()),
            ("b-1", 2, &*"b".repeat(40))
        );
        s.apply(&Command::AssignBuild { build_id: "b-1".into(), node_id: "n1".into(), attempt: 1 });
        // Placed: the next push queues a second build, which waits for the first.
        let second = push(&mut s, 'c', "d3");
        assert_eq!(second.id, "b-2");
        assert!(s.push_build_waits(&s.builds["b-2"]));
        for (c, d) in [('d', "d4"), ('e', "d5")] {
            assert_eq!(push(&mut s, c, d).id, "b-2");
        }
        assert_eq!(s.builds.len(), 2);
        assert_eq!(s.builds["b-2"].git_ref, "e".repeat(40));
        assert_eq!(s.builds["b-2"].pushes, 3);
        // A redelivery of any of them changes nothing and names the build it made or joined.
        let before = s.clone();
        assert_eq!(push(&mut s, 'a', "d1").id, "b-1");
        assert_eq!(push(&mut s, 'c', "d3").id, "b-2");
        assert_eq!(s, before);
        // Once the first ends, the second may be placed.
        finish(&mut s, "b-1", 1, 'a');
        assert!(!s.push_build_waits(&s.builds["b-2"]));
    }

    #[test]
    fn a_push_never_joins_an_operators_build_or_one_placed_before() {
        let mut s = state_with_app();
        let deploy = queue(&mut s, None);
        let pushed = push(&mut s, 'a', "d1");
        assert_ne!(pushed.id, deploy.id, "an operator's deploy keeps its ref");
        assert_eq!(s.builds[&deploy.id].git_ref, "main");
        assert!(!s.push_build_waits(&s.builds[&deploy.id]), "only builds from pushes wait");
        // Placed, then its node lost: queued again, but no longer joined by pushes.
        s.apply(&Command::AssignBuild { build_id: pushed.id.clone(), node_id: "n1".into(), attempt: 1 });
        s.apply(&Command::RequeueBuild {
            build_id: pushed.id.clone(),
            attempt: 1,
            reason: "x".into(),
            at_ms: 6,
        });
        let next = push(&mut s, 'b', "d2");
        assert_ne!(next.id, pushed.id);
        assert_eq!(s.builds[&pushed.id].git_ref, "a".repeat(40));
        // An unknown app is refused, changing nothing.
        let before = s.clone();
        let cmd = Command::QueuePushBuild {
            app: "nope".into(),
            commit: "a".repeat(40),
            delivery: "hook:gitlab:x".into(),
            at_ms: 7,
        };
        assert_eq!(s.apply(&cmd), Response::Refused(ApplyError::NoSuchApp("nope".into())));
        assert_eq!(s, before);
    }

    #[test]
    fn rotating_the_webhook_bumps_its_generation() {
        let mut s = state_with_app();
        assert_eq!(s.apps["shop"].webhook_generation, 0);
        let Response::App(app) = s.apply(&Command::RotateWebhook { app: "shop".into() }) else { panic!() };
        assert_eq!(app.webhook_generation, 1);
        assert_eq!(
            s.apply(&Command::RotateWebhook { app: "nope".into() }),
            Response::Refused(ApplyError::NoSuchApp("nope".into()))
        );
        // A record from before the field reads as generation 0.
        let old = r#"{"name":"a","repo":"r","branch":"main","created_at_ms":1,"current_release":0}"#;
        assert_eq!(serde_json::from_str::<App>(old).unwrap().webhook_generation, 0);
    }

    #[test]
    fn request_memory_is_bounded() {
        let mut s = state_with_app();
        for i in 0..(REMEMBERED_REQUESTS + 5) {
            s.remember(&Some(format!("r{i}")), RequestOutcome::Build("b-1".into()));
        }
        assert_eq!(s.requests.len(), REMEMBERED_REQUESTS);
        assert!(!s.requests.contains_key("r0"));
    }
}
