//! How each [`Command`] changes the [`State`]: [`State::apply`], run on every member in
//! log order.

use std::collections::BTreeMap;

use super::{
    App, ApplyError, Build, BuildState, Command, DeployState, JoinSecret, NodeRecord, PhaseTimings, Release,
    RequestOutcome, Response, Revocation, State,
};

/// How many client request ids are remembered for deduplicating retried writes.
pub(super) const REMEMBERED_REQUESTS: usize = 10_000;

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

    pub(super) fn build_mut(&mut self, id: &str) -> Result<&mut Build, ApplyError> {
        self.builds.get_mut(id).ok_or_else(|| ApplyError::NoSuchBuild(id.to_string()))
    }

    pub(super) fn remember(&mut self, request_id: &Option<String>, outcome: RequestOutcome) {
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
