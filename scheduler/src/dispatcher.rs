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

use crate::context::Context;
use crate::convert;
use crate::deploy::{self, HealthcheckSpec, PersistBackend, PublishMode, PullAuth, ServiceDeploy};
use crate::events::release_topic;
use crate::placement::{self, BuildNeeds, Liveness, NodeView};
use crate::security::registry_auth;
use crate::state::{App, Build, BuildOutput, BuildState, Command, DeployState, Release, Response};

/// Removes an app from `deploying` however its deploy task ends (panics included).
struct DeployingGuard {
    ctx: Arc<Context>,
    app: String,
}

impl Drop for DeployingGuard {
    fn drop(&mut self) {
        self.ctx.dispatch.release(&self.app);
        self.ctx.dispatcher_wake();
    }
}

/// Runs until shutdown. Does nothing while this member is not the leader.
pub async fn run(ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let mut applied = ctx.store.applied();
    let mut last_tick = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ctx.wake.notified() => {}
            _ = applied.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        // A burst of writes applies thousands of entries a second: one tick covers
        // all that arrived within MIN_TICK, instead of a queue scan per entry.
        tokio::time::sleep_until(last_tick + MIN_TICK).await;
        applied.borrow_and_update();
        last_tick = tokio::time::Instant::now();
        if !ctx.fleet.is_leading() || !ctx.store.is_leader() {
            continue;
        }
        place_queued(&ctx).await;
        requeue_lost(&ctx).await;
        start_pending_deploys(&ctx).await;
        renew_pull_grants(&ctx);
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
fn node_snapshots(ctx: &Context) -> Vec<NodeSnapshot> {
    let down_after = ctx.config.down_after();
    ctx.store.read(|s| {
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
                soft: ctx.fleet.soft_state(&n.id, down_after),
                assigned: assigned.get(n.id.as_str()).copied().unwrap_or_default(),
            })
            .collect()
    })
}

async fn place_queued(ctx: &Arc<Context>) {
    let queued: Vec<_> = ctx.store.read(|s| {
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
    let mut nodes = node_snapshots(ctx);
    for (build, last_node, last_image_bytes) in queued {
        let views: Vec<NodeView<'_>> = nodes.iter().map(NodeSnapshot::view).collect();
        let needs = BuildNeeds {
            app: &build.app,
            min_free_bytes: ctx.config.placement.min_free_bytes.saturating_add(last_image_bytes),
            last_built_on: last_node.as_deref(),
        };
        let decision = placement::place(&needs, &views);
        let Some(node_id) = decision.chosen.clone() else {
            ctx.dispatch.placements.no_node();
            let queue_timeout = ctx.config.placement.queue_timeout_secs;
            let queued_at = if build.queued_at_ms == 0 { build.created_at_ms } else { build.queued_at_ms };
            if crate::now_ms().saturating_sub(queued_at) > queue_timeout * 1000 {
                let reason =
                    format!("no node could take the build within {queue_timeout} s: {}", decision.explain());
                expire(ctx, &build.id, reason).await;
                continue;
            }
            let mut waiting = ctx.dispatch.waiting.lock().expect("dispatch lock poisoned");
            if waiting.get(&build.id) != Some(&decision.rejected) {
                tracing::info!(build = %build.id, why = %decision.explain(), "build waits for a node");
                ctx.events.publish(
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
        match ctx.store.write(cmd).await {
            Ok(Response::Build(b)) => {
                ctx.dispatch.placements.placed();
                ctx.dispatch.waiting.lock().expect("dispatch lock poisoned").remove(&b.id);
                let mut node_name = String::new();
                if let Some(n) = nodes.iter_mut().find(|n| n.id == node_id) {
                    // The next build of this tick sees the slot taken.
                    n.assigned += 1;
                    node_name = n.name.clone();
                }
                tracing::info!(build = %b.id, attempt, node = %node_name, "build placed");
                ctx.events.publish(
                    &b.id,
                    Event::Placement(slipway_proto::Placement {
                        node_id: node_id.clone(),
                        node_name,
                        rejected: convert::rejections(&decision.rejected),
                    }),
                );
                let assignment = ctx.store.read(|s| s.apps.get(&b.app).map(|app| assignment(ctx, &b, app)));
                if let Some(a) = assignment {
                    if !ctx.fleet.send(&node_id, SchedMsg::Assign(a)) {
                        tracing::warn!(build = %b.id, "node's session is gone; the build returns to the queue when the node is down");
                    }
                }
            }
            Ok(other) => tracing::debug!(?other, build = %build.id, "assignment not applied"),
            Err(err) => tracing::warn!(build = %build.id, %err, "cannot record assignment"),
        }
    }
}

async fn expire(ctx: &Arc<Context>, build_id: &str, reason: String) {
    tracing::warn!(build = %build_id, %reason, "build expired in the queue");
    let cmd = Command::ExpireBuild {
        build_id: build_id.to_string(),
        reason: reason.clone(),
        at_ms: crate::now_ms(),
    };
    match ctx.store.write(cmd).await {
        Ok(Response::Build(_)) => {
            ctx.dispatch.waiting.lock().expect("dispatch lock poisoned").remove(build_id);
            ctx.events.publish(build_id, Event::Failed(format!("build {build_id} failed: {reason}")));
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(build = %build_id, %err, "cannot expire build"),
    }
}

/// Builds whose node went Down go back to the queue for a new attempt.
async fn requeue_lost(ctx: &Arc<Context>) {
    let down_after = ctx.config.down_after();
    let lost: Vec<(String, u32, String)> = ctx.store.read(|s| {
        s.builds
            .values()
            .filter(|b| matches!(b.state, BuildState::Assigned | BuildState::Running))
            .filter_map(|b| {
                let node = b.node_id.as_deref()?;
                (ctx.fleet.soft_state(node, down_after).liveness == Liveness::Down).then(|| {
                    let name = s.nodes.get(node).map_or(node, |n| n.name.as_str());
                    (b.id.clone(), b.attempt, name.to_string())
                })
            })
            .collect()
    });
    for (build_id, attempt, node) in lost {
        let reason = format!("node {node} is down");
        tracing::warn!(build = %build_id, attempt, %node, "node lost; queueing the build again");
        ctx.events.log(&build_id, format!("==> {reason}; placing the build again"));
        if let Err(err) = ctx
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

/// The assignment an agent gets for a build's current attempt, with (TLS on) a fresh
/// grant to push and pull the app's repository only.
pub fn assignment(ctx: &Context, b: &Build, app: &App) -> slipway_proto::BuildAssignment {
    slipway_proto::BuildAssignment {
        build_id: b.id.clone(),
        attempt: b.attempt,
        app: app.name.clone(),
        repo: app.repo.clone(),
        git_ref: b.git_ref.clone(),
        no_cache: b.no_cache,
        repository: format!("{}/{}", ctx.config.registry.addr, app.name),
        registry_login: ctx.ca.as_ref().map(|ca| {
            let login =
                registry_auth::login(ca, &app.name, &["push", "pull"], registry_auth::BUILD_GRANT_TTL);
            slipway_proto::RegistryLogin { username: login.username, password: login.password }
        }),
    }
}

/// Records an attempt's outcome; a success records the release and wakes the deployer.
pub async fn finish_build(
    ctx: &Arc<Context>,
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
    match ctx.store.write(cmd).await {
        Ok(Response::Release(release)) => {
            // The deployer announces the release on the build's topic before deploying it.
            tracing::info!(build = %build_id, release = release.number, digest = %release.digest, "release recorded");
            ctx.dispatcher_wake();
        }
        Ok(Response::Build(b)) if b.state == BuildState::Failed => {
            let reason = b.error.unwrap_or_default();
            tracing::info!(build = %build_id, %reason, "build failed");
            ctx.events.publish(build_id, Event::Failed(format!("build {build_id} failed: {reason}")));
        }
        Ok(Response::Stale) => {
            tracing::info!(build = %build_id, attempt, "ignoring a result from a stale attempt")
        }
        Ok(other) => tracing::warn!(build = %build_id, ?other, "unexpected answer to FinishBuild"),
        Err(err) => tracing::error!(build = %build_id, %err, "cannot record the build result"),
    }
}

async fn start_pending_deploys(ctx: &Arc<Context>) {
    // For each app only its newest release is deployed; older pending ones are superseded.
    let (latest, superseded): (Vec<Release>, Vec<(String, u64, u64)>) = ctx.store.read(|s| {
        let mut latest = Vec::new();
        let mut superseded = Vec::new();
        for (app, releases) in &s.releases {
            // A deploy in flight finishes first; its release is judged after it.
            if ctx.dispatch.is_deploying(app) {
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
        if let Err(err) = ctx.store.write(Command::RecordDeploy { app, release: number, result }).await {
            tracing::warn!(%err, "cannot mark a release superseded");
        }
    }
    for release in latest {
        let span = tracing::info_span!("deploy", app = %release.app, release = release.number);
        let task_ctx = ctx.clone();
        let app = release.app.clone();
        hold_app(ctx, &app, span, async move { deploy_release(&task_ctx, &release).await });
    }
}

/// Runs `work` for `app` in a task holding the app's deploy slot (see
/// [`crate::dispatch_state::DispatchState::hold`]), unless something else holds it; the
/// slot is freed however the task ends, and a stand-down aborts the task.
fn hold_app(
    ctx: &Arc<Context>,
    app: &str,
    span: tracing::Span,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (task_ctx, task_app) = (ctx.clone(), app.to_string());
    ctx.dispatch.hold(app, move || {
        // Made only once the slot is taken: dropping it frees the slot.
        let guard = DeployingGuard { ctx: task_ctx, app: task_app };
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
pub fn pull_auth(ctx: &Context, app: &str) -> Option<PullAuth> {
    let ca = ctx.ca.as_ref()?;
    let validity = Duration::from_secs(ctx.config.registry.pull_grant_validity_secs);
    let login = registry_auth::login(ca, app, &["pull"], validity);
    Some(PullAuth {
        credentials: DockerCredentials {
            username: Some(login.username),
            password: Some(login.password),
            serveraddress: Some(ctx.config.registry.addr.clone()),
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
fn renew_pull_grants(ctx: &Arc<Context>) {
    if ctx.ca.is_none() {
        return;
    }
    let validity = ctx.config.registry.pull_grant_validity_secs;
    let period = Duration::from_secs(validity / 6).clamp(Duration::from_secs(1), RENEWAL_CHECK_MAX);
    if !ctx.dispatch.renewal_due(tokio::time::Instant::now(), period) {
        return;
    }
    let apps: Vec<String> = ctx.store.read(|s| {
        s.releases
            .iter()
            .filter(|(_, releases)| releases.iter().any(|r| r.deploy == DeployState::Deployed))
            .map(|(app, _)| app.clone())
            .collect()
    });
    let renew_before = registry_auth::now_secs().saturating_add(validity / 3);
    for app in apps {
        let span = tracing::info_span!("renew_pull_grant", app = %app);
        let task_ctx = ctx.clone();
        let task_app = app.clone();
        hold_app(ctx, &app, span, async move {
            let (ctx, app) = (&task_ctx, &task_app);
            let Some(auth) = pull_auth(ctx, app) else { return };
            let docker = match ctx.docker().await {
                Ok(docker) => docker,
                Err(err) => return tracing::warn!(%err, "cannot renew the service's registry grant"),
            };
            // The spec of the release the service runs, by its number.
            let release = |number: u64| {
                ctx.store
                    .read(|s| s.releases.get(app)?.iter().find(|r| r.number == number).cloned())
                    .map(|r| service_for(ctx, &r))
            };
            let stack = &ctx.config.deploy.stack;
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
pub fn service_for(ctx: &Context, release: &Release) -> ServiceDeploy {
    let deploy = &ctx.config.deploy;
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

async fn deploy_release(ctx: &Arc<Context>, release: &Release) {
    let topic = release_topic(release);
    let spec = service_for(ctx, release);
    let service = format!("{}_{}", spec.stack, spec.app);
    if release.rollback_of.is_none() {
        // Rollbacks announced their release when they were recorded (control.rs).
        ctx.events.publish(&topic, Event::Release(convert::release(release)));
    }
    ctx.events.publish(
        &topic,
        Event::DeployProgress(format!(
            "deploying release {} ({}) to service {service}",
            release.number, spec.image
        )),
    );
    let outcome = match ctx.docker().await {
        Ok(docker) => {
            let progress_topic = topic.clone();
            let events = ctx.events.clone();
            let progress = move |line: String| events.publish(&progress_topic, Event::DeployProgress(line));
            let auth = pull_auth(ctx, &release.app);
            deploy::deploy(&docker, &spec, auth.as_ref(), &progress).await.map_err(|e| e.to_string())
        }
        Err(err) => Err(err.to_string()),
    };
    let result = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
    let cmd = Command::RecordDeploy { app: release.app.clone(), release: release.number, result };
    let recorded = ctx.store.write(cmd).await;
    match (outcome, recorded) {
        (Ok(done), Ok(Response::Release(r))) => {
            tracing::info!(service = %service, running = done.running, "release deployed");
            ctx.events.publish(
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
            ctx.events.publish(
                &topic,
                Event::Failed(format!("deploy of release {} failed: {reason}", release.number)),
            );
        }
        (Ok(_), Ok(other)) => {
            ctx.events.publish(
                &topic,
                Event::Failed(format!("deploy succeeded but recording it was refused: {other:?}")),
            );
        }
        (Ok(_), Err(err)) => {
            // Not recorded: whoever leads next finds the release pending and deploys it
            // again (an update to the same digest is a no-op for Swarm). Not terminal:
            // watchers end when the state says the release is deployed.
            tracing::warn!(%err, "deploy succeeded but could not be recorded");
            ctx.events.publish(
                &topic,
                Event::DeployProgress(format!("deploy succeeded but could not be recorded yet: {err}")),
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}
