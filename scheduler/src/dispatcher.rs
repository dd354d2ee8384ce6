//! The leader's work loop: place queued builds, take builds back from lost nodes,
//! deploy every release that is not deployed yet, and keep the registry grants stored
//! with the apps' services from expiring ([`renew_pull_grants`]).
//!
//! The loop is driven by the replicated state, not by in-memory queues: whatever the
//! state says is queued gets placed, whatever release is pending gets deployed. So a new
//! leader simply picks up where the old one stopped, and a crash mid-deploy is retried
//! by whoever leads next.
//!
//! ```text
//! Queued ──place()──► AssignBuild ──► agent ── BuildEvent ──► finish_build ──► Release N (pending)
//!                                                                                  │
//!                     RecordDeploy ◄── deploy::deploy (Swarm) ◄── deploy_release ◄─┘
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use slipway_proto::deploy_event::Event;
use slipway_proto::scheduler_message::Msg as SchedMsg;
use tokio::sync::watch;
use tracing::Instrument;

use crate::convert;
use crate::deploy::{self, HealthcheckSpec, PersistBackend, PublishMode, PullAuth, ServiceDeploy};
use crate::events::release_topic;
use crate::placement::{self, BuildNeeds, Liveness, NodeView};
use crate::security::registry_auth;
use crate::server::Shared;
use crate::state::{BuildOutput, BuildState, Command, DeployState, Release, Response};

/// Removes an app from `deploying` however its deploy task ends (panics included).
struct DeployingGuard {
    shared: Arc<Shared>,
    app: String,
}

impl Drop for DeployingGuard {
    fn drop(&mut self) {
        self.shared.dispatch.release(&self.app);
        self.shared.dispatcher_wake();
    }
}

/// Runs until shutdown. Does nothing while this member is not the leader.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut applied = shared.store.applied();
    let mut last_tick = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = applied.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        // A burst of writes applies thousands of entries a second: one tick covers
        // all that arrived within MIN_TICK, instead of a queue scan per entry.
        tokio::time::sleep_until(last_tick + MIN_TICK).await;
        applied.borrow_and_update();
        last_tick = tokio::time::Instant::now();
        if !shared.fleet.is_leading() || !shared.store.is_leader() {
            continue;
        }
        place_queued(&shared).await;
        requeue_lost(&shared).await;
        start_pending_deploys(&shared).await;
        renew_pull_grants(&shared);
    }
}

/// The dispatcher ticks at most this often (placement waits at most this long).
const MIN_TICK: Duration = Duration::from_millis(20);

/// What placement needs of one registered node, taken once per dispatcher tick.
struct NodeSnapshot {
    id: String,
    name: String,
    draining: bool,
    soft: crate::fleet::NodeSoftState,
    /// Builds assigned to the node and not finished; raised as this tick assigns more.
    assigned: u32,
}

impl NodeSnapshot {
    fn view(&self) -> NodeView<'_> {
        NodeView {
            id: &self.id,
            name: &self.name,
            liveness: self.soft.liveness,
            draining: self.draining,
            report: self.soft.report.as_ref(),
            assigned_builds: self.assigned,
            refusal: self.soft.refusal.as_deref(),
        }
    }
}

/// Every registered node with its soft state and unfinished assignments.
fn node_snapshots(shared: &Shared) -> Vec<NodeSnapshot> {
    let down_after = shared.config.down_after();
    shared.store.read(|s| {
        let mut assigned: HashMap<&str, u32> = HashMap::new();
        for b in s.builds.values().filter(|b| matches!(b.state, BuildState::Assigned | BuildState::Running)) {
            if let Some(node) = b.node_id.as_deref() {
                *assigned.entry(node).or_default() += 1;
            }
        }
        s.nodes
            .values()
            .map(|n| NodeSnapshot {
                id: n.id.clone(),
                name: n.name.clone(),
                draining: n.draining,
                soft: shared.fleet.soft_state(&n.id, down_after),
                assigned: assigned.get(n.id.as_str()).copied().unwrap_or_default(),
            })
            .collect()
    })
}

async fn place_queued(shared: &Arc<Shared>) {
    let queued: Vec<_> = shared.store.read(|s| {
        s.queued_builds()
            .map(|b| {
                let last_image = s
                    .releases
                    .get(&b.app)
                    .and_then(|rs| rs.iter().rev().find_map(|r| s.builds.get(&r.build_id)))
                    .and_then(|b| b.output.as_ref())
                    .map_or(0, |o| o.image_size_bytes);
                (b.clone(), s.last_build_node(&b.app).map(str::to_string), last_image)
            })
            .collect()
    });
    if queued.is_empty() {
        return;
    }
    let mut nodes = node_snapshots(shared);
    for (build, last_node, last_image_bytes) in queued {
        let views: Vec<NodeView<'_>> = nodes.iter().map(NodeSnapshot::view).collect();
        let needs = BuildNeeds {
            app: &build.app,
            min_free_bytes: shared.config.placement.min_free_bytes.saturating_add(last_image_bytes),
            last_built_on: last_node.as_deref(),
        };
        let decision = placement::place(&needs, &views);
        let Some(node_id) = decision.chosen.clone() else {
            shared.dispatch.placements.no_node();
            let queue_timeout = shared.config.placement.queue_timeout_secs;
            let queued_at = if build.queued_at_ms == 0 { build.created_at_ms } else { build.queued_at_ms };
            if crate::now_ms().saturating_sub(queued_at) > queue_timeout * 1000 {
                let reason =
                    format!("no node could take the build within {queue_timeout} s: {}", decision.explain());
                expire(shared, &build.id, reason).await;
                continue;
            }
            let mut waiting = shared.dispatch.waiting.lock().expect("dispatch lock poisoned");
            if waiting.get(&build.id) != Some(&decision.rejected) {
                tracing::info!(build = %build.id, why = %decision.explain(), "build waits for a node");
                shared.events.publish(
                    &build.id,
                    Event::Placement(slipway_proto::Placement {
                        node_id: String::new(),
                        node_name: String::new(),
                        rejected: convert::rejections(&decision.rejected),
                    }),
                );
                waiting.insert(build.id.clone(), decision.rejected);
            }
            continue;
        };
        let attempt = build.attempt + 1;
        let cmd = Command::AssignBuild { build_id: build.id.clone(), node_id: node_id.clone(), attempt };
        match shared.store.write(cmd).await {
            Ok(Response::Build(b)) => {
                shared.dispatch.placements.placed();
                shared.dispatch.waiting.lock().expect("dispatch lock poisoned").remove(&b.id);
                let mut node_name = String::new();
                if let Some(n) = nodes.iter_mut().find(|n| n.id == node_id) {
                    // The next build of this tick sees the slot taken.
                    n.assigned += 1;
                    node_name = n.name.clone();
                }
                tracing::info!(build = %b.id, attempt, node = %node_name, "build placed");
                shared.events.publish(
                    &b.id,
                    Event::Placement(slipway_proto::Placement {
                        node_id: node_id.clone(),
                        node_name,
                        rejected: convert::rejections(&decision.rejected),
                    }),
                );
                let assignment =
                    shared.store.read(|s| s.apps.get(&b.app).map(|app| shared.assignment(&b, app)));
                if let Some(a) = assignment {
                    if !shared.fleet.send(&node_id, SchedMsg::Assign(a)) {
                        tracing::warn!(build = %b.id, "node's session is gone; the build returns to the queue when the node is down");
                    }
                }
            }
            Ok(other) => tracing::debug!(?other, build = %build.id, "assignment not applied"),
            Err(err) => tracing::warn!(build = %build.id, %err, "cannot record assignment"),
        }
    }
}

async fn expire(shared: &Arc<Shared>, build_id: &str, reason: String) {
    tracing::warn!(build = %build_id, %reason, "build expired in the queue");
    let cmd = Command::ExpireBuild {
        build_id: build_id.to_string(),
        reason: reason.clone(),
        at_ms: crate::now_ms(),
    };
    match shared.store.write(cmd).await {
        Ok(Response::Build(_)) => {
            shared.dispatch.waiting.lock().expect("dispatch lock poisoned").remove(build_id);
            shared.events.publish(build_id, Event::Failed(format!("build {build_id} failed: {reason}")));
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(build = %build_id, %err, "cannot expire build"),
    }
}

/// Builds whose node went Down go back to the queue for a new attempt.
async fn requeue_lost(shared: &Arc<Shared>) {
    let down_after = shared.config.down_after();
    let lost: Vec<(String, u32, String)> = shared.store.read(|s| {
        s.builds
            .values()
            .filter(|b| matches!(b.state, BuildState::Assigned | BuildState::Running))
            .filter_map(|b| {
                let node = b.node_id.as_deref()?;
                (shared.fleet.soft_state(node, down_after).liveness == Liveness::Down).then(|| {
                    let name = s.nodes.get(node).map_or(node, |n| n.name.as_str());
                    (b.id.clone(), b.attempt, name.to_string())
                })
            })
            .collect()
    });
    for (build_id, attempt, node) in lost {
        let reason = format!("node {node} is down");
        tracing::warn!(build = %build_id, attempt, %node, "node lost; queueing the build again");
        shared.events.log(&build_id, format!("==> {reason}; placing the build again"));
        if let Err(err) = shared
            .store
            .write(Command::RequeueBuild {
                build_id: build_id.clone(),
                attempt,
                reason,
                at_ms: crate::now_ms(),
            })
            .await
        {
            tracing::warn!(build = %build_id, %err, "cannot requeue build");
        }
    }
}

/// Records an attempt's outcome; a success records the release and wakes the deployer.
pub async fn finish_build(
    shared: &Arc<Shared>,
    build_id: &str,
    attempt: u32,
    result: Result<BuildOutput, String>,
) {
    let cmd = Command::FinishBuild {
        build_id: build_id.to_string(),
        attempt,
        result: result.clone(),
        at_ms: crate::now_ms(),
    };
    match shared.store.write(cmd).await {
        Ok(Response::Release(release)) => {
            // The deployer announces the release on the build's topic before deploying it.
            tracing::info!(build = %build_id, release = release.number, digest = %release.digest, "release recorded");
            shared.dispatcher_wake();
        }
        Ok(Response::Build(b)) if b.state == BuildState::Failed => {
            let reason = b.error.unwrap_or_default();
            tracing::info!(build = %build_id, %reason, "build failed");
            shared.events.publish(build_id, Event::Failed(format!("build {build_id} failed: {reason}")));
        }
        Ok(Response::Stale) => {
            tracing::info!(build = %build_id, attempt, "ignoring a result from a stale attempt")
        }
        Ok(other) => tracing::warn!(build = %build_id, ?other, "unexpected answer to FinishBuild"),
        Err(err) => tracing::error!(build = %build_id, %err, "cannot record the build result"),
    }
}

async fn start_pending_deploys(shared: &Arc<Shared>) {
    // For each app only its newest release is deployed; older pending ones are superseded.
    let (latest, superseded): (Vec<Release>, Vec<(String, u64, u64)>) = shared.store.read(|s| {
        let mut latest = Vec::new();
        let mut superseded = Vec::new();
        for (app, releases) in &s.releases {
            // A deploy in flight finishes first; its release is judged after it.
            if shared.dispatch.is_deploying(app) {
                continue;
            }
            let Some(newest) = releases.last() else { continue };
            if newest.deploy == DeployState::Pending {
                latest.push(newest.clone());
            }
            for r in releases.iter().filter(|r| r.deploy == DeployState::Pending && r.number != newest.number)
            {
                superseded.push((r.app.clone(), r.number, newest.number));
            }
        }
        (latest, superseded)
    });
    for (app, number, newest) in superseded {
        let result = Err(format!("superseded by release {newest}"));
        if let Err(err) = shared.store.write(Command::RecordDeploy { app, release: number, result }).await {
            tracing::warn!(%err, "cannot mark a release superseded");
        }
    }
    for release in latest {
        let span = tracing::info_span!("deploy", app = %release.app, release = release.number);
        let task_shared = shared.clone();
        let app = release.app.clone();
        hold_app(shared, &app, span, async move { deploy_release(&task_shared, &release).await });
    }
}

/// Runs `work` for `app` in a task holding the app's deploy slot (see
/// [`crate::dispatch_state::DispatchState::hold`]), unless something else holds it; the
/// slot is freed however the task ends, and a stand-down aborts the task.
fn hold_app(
    shared: &Arc<Shared>,
    app: &str,
    span: tracing::Span,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (task_shared, task_app) = (shared.clone(), app.to_string());
    shared.dispatch.hold(app, move || {
        // Made only once the slot is taken: dropping it frees the slot.
        let guard = DeployingGuard { shared: task_shared, app: task_app };
        let task = tokio::spawn(
            async move {
                let _guard = guard;
                work.await;
            }
            .instrument(span),
        );
        task.abort_handle()
    });
}

/// The registry credentials an app's service pulls with (TLS on): a pull-only grant for
/// its repository, valid `registry.pull_grant_validity_secs`.
pub fn pull_auth(shared: &Shared, app: &str) -> Option<PullAuth> {
    let ca = shared.ca.as_ref()?;
    let validity = Duration::from_secs(shared.config.registry.pull_grant_validity_secs);
    let login = registry_auth::login(ca, app, &["pull"], validity);
    Some(PullAuth {
        credentials: DockerCredentials {
            username: Some(login.username),
            password: Some(login.password),
            serveraddress: Some(shared.config.registry.addr.clone()),
            ..Default::default()
        },
        expires: login.expires,
    })
}

/// Keeps the pull grants stored with the apps' services valid: every sixth of their
/// validity (at most every 5 minutes) each deployed app whose service's grant has less
/// than a third left gets a fresh one ([`deploy::renew_pull_grant`]). A renewal holds
/// the app's deploy slot, so a deploy of the same app waits for it and the other way
/// round.
fn renew_pull_grants(shared: &Arc<Shared>) {
    if shared.ca.is_none() {
        return;
    }
    let validity = shared.config.registry.pull_grant_validity_secs;
    let period = Duration::from_secs(validity / 6).clamp(Duration::from_secs(1), RENEWAL_CHECK_MAX);
    if !shared.dispatch.renewal_due(tokio::time::Instant::now(), period) {
        return;
    }
    let apps: Vec<String> = shared.store.read(|s| {
        s.releases
            .iter()
            .filter(|(_, releases)| releases.iter().any(|r| r.deploy == DeployState::Deployed))
            .map(|(app, _)| app.clone())
            .collect()
    });
    let renew_before = registry_auth::now_secs().saturating_add(validity / 3);
    for app in apps {
        let span = tracing::info_span!("renew_pull_grant", app = %app);
        let task_shared = shared.clone();
        let task_app = app.clone();
        hold_app(shared, &app, span, async move {
            let (shared, app) = (&task_shared, &task_app);
            let Some(auth) = pull_auth(shared, app) else { return };
            let docker = match shared.docker().await {
                Ok(docker) => docker,
                Err(err) => return tracing::warn!(%err, "cannot renew the service's registry grant"),
            };
            // The spec of the release the service runs, by its number.
            let release = |number: u64| {
                shared
                    .store
                    .read(|s| s.releases.get(app)?.iter().find(|r| r.number == number).cloned())
                    .map(|r| service_for(shared, &r))
            };
            let stack = &shared.config.deploy.stack;
            match deploy::renew_pull_grant(&docker, stack, app, release, &auth, renew_before).await {
                Ok(deploy::Renewal::Renewed) => {
                    tracing::info!(expires = auth.expires, "renewed the service's registry grant")
                }
                Ok(deploy::Renewal::Postponed(why)) => tracing::warn!(
                    %why,
                    "the service's registry grant is due for renewal but was left for the next round; \
                     once it expires, nodes cannot pull the app's image"
                ),
                Ok(deploy::Renewal::Fresh | deploy::Renewal::NoService) => {}
                Err(err) => tracing::warn!(%err, "cannot renew the service's registry grant"),
            }
        });
    }
}

/// Longest time between two looks at the services' pull grants.
const RENEWAL_CHECK_MAX: Duration = Duration::from_secs(300);

/// Maps a release to the Swarm service that runs it.
pub fn service_for(shared: &Shared, release: &Release) -> ServiceDeploy {
    let deploy = &shared.config.deploy;
    ServiceDeploy {
        stack: deploy.stack.clone(),
        app: release.app.clone(),
        image: release.image(),
        release: release.number,
        replicas: release.run.replicas.max(1),
        port: release.run.port,
        env: {
            // Heroku's convention: the app learns its port from $PORT.
            let mut env = release.run.env.clone();
            if let Some(port) = release.run.port {
                env.entry("PORT".into()).or_insert_with(|| port.to_string());
            }
            env
        },
        persist: release.run.persist.clone(),
        healthcheck: release.run.healthcheck.as_ref().map(|h| HealthcheckSpec {
            cmd: h.cmd.clone(),
            interval: Duration::from_millis(h.interval_ms),
            timeout: Duration::from_millis(h.timeout_ms),
            start_period: Duration::from_millis(h.start_period_ms),
            retries: h.retries,
        }),
        publish_mode: match deploy.publish_mode {
            crate::config::PublishModeConfig::Ingress => PublishMode::Ingress,
            crate::config::PublishModeConfig::Host => PublishMode::Host,
        },
        persist_backend: match &deploy.nfs {
            None => PersistBackend::Local,
            Some(nfs) => PersistBackend::Nfs { addr: nfs.addr.clone(), export_root: nfs.export_root.clone() },
        },
        converge_timeout: Duration::from_secs(deploy.converge_timeout_secs),
    }
}

async fn deploy_release(shared: &Arc<Shared>, release: &Release) {
    let topic = release_topic(release);
    let spec = service_for(shared, release);
    let service = format!("{}_{}", spec.stack, spec.app);
    if release.rollback_of.is_none() {
        // Rollbacks announced their release when they were recorded (control.rs).
        shared.events.publish(&topic, Event::Release(convert::release(release)));
    }
    shared.events.publish(
        &topic,
        Event::DeployProgress(format!(
            "deploying release {} ({}) to service {service}",
            release.number, spec.image
        )),
    );
    let outcome = match shared.docker().await {
        Ok(docker) => {
            let progress_topic = topic.clone();
            let events = shared.events.clone();
            let progress = move |line: String| events.publish(&progress_topic, Event::DeployProgress(line));
            let auth = pull_auth(shared, &release.app);
            deploy::deploy(&docker, &spec, auth.as_ref(), &progress).await.map_err(|e| e.to_string())
        }
        Err(err) => Err(err.to_string()),
    };
    let result = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
    let cmd = Command::RecordDeploy { app: release.app.clone(), release: release.number, result };
    let recorded = shared.store.write(cmd).await;
    match (outcome, recorded) {
        (Ok(done), Ok(Response::Release(r))) => {
            tracing::info!(service = %service, running = done.running, "release deployed");
            shared.events.publish(
                &topic,
                Event::Done(slipway_proto::DeployDone {
                    release: Some(convert::release(&r)),
                    service,
                    running: done.running,
                    published_port: done.published_port.map(u32::from).unwrap_or_default(),
                }),
            );
        }
        (Err(reason), _) => {
            tracing::warn!(%reason, "deploy failed");
            shared.events.publish(
                &topic,
                Event::Failed(format!("deploy of release {} failed: {reason}", release.number)),
            );
        }
        (Ok(_), Ok(other)) => {
            shared.events.publish(
                &topic,
                Event::Failed(format!("deploy succeeded but recording it was refused: {other:?}")),
            );
        }
        (Ok(_), Err(err)) => {
            // Not recorded: whoever leads next finds the release pending and deploys it
            // again (an update to the same digest is a no-op for Swarm). Not terminal:
            // watchers end when the state says the release is deployed.
            tracing::warn!(%err, "deploy succeeded but could not be recorded");
            shared.events.publish(
                &topic,
                Event::DeployProgress(format!("deploy succeeded but could not be recorded yet: {err}")),
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}
