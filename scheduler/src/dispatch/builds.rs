//! Builds: place queued builds on nodes ([`crate::placement`] decides, this records and
//! announces it), expire builds no node could take in time, take builds back from nodes
//! that went Down, and record what agents report at the end of an attempt.

use std::collections::HashMap;
use std::sync::Arc;

use slipway_proto::deploy_event::Event;
use slipway_proto::scheduler_message::Msg as SchedMsg;

use crate::context::Context;
use crate::convert;
use crate::placement::{self, BuildNeeds, Liveness, NodeView};
use crate::security::registry_auth;
use crate::state::{App, Build, BuildOutput, BuildState, Command, Response};

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

pub(super) async fn place_queued(ctx: &Arc<Context>) {
    // A registry GC runs: builds wait in the queue (they neither start nor expire).
    if ctx.dispatch.builds_paused() {
        return;
    }
    let queued: Vec<_> = ctx.store.read(|s| {
        s.queued_builds()
            // A push's build waits for the app's build in progress (coalescing, see
            // `State::push_build_waits`).
            .filter(|b| !s.push_build_waits(b))
            .map(|b| {
                let last_image = s
                    .releases
                    .get(&b.app)
                    .and_then(|rs| rs.iter().rev().find_map(|r| s.builds.get(&r.build_id)))
                    .and_then(|b| b.output.as_ref())
                    .map_or(0, |o| o.image_size_bytes);
                let mut b = b.clone();
                if b.pushes > 0 {
                    // Its queue timeout counts from when it stopped waiting: the end of
                    // the app's build it waited for.
                    let waited_until = s
                        .builds
                        .values()
                        .filter(|other| other.app == b.app && other.id != b.id)
                        .filter_map(|other| other.finished_at_ms)
                        .max()
                        .unwrap_or_default();
                    b.queued_at_ms = b.queued_at_ms.max(waited_until);
                }
                let last_node = s.last_build_node(&b.app).map(str::to_string);
                (b, last_node, last_image)
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
            if slipway_common::now_ms().saturating_sub(queued_at) > queue_timeout * 1000 {
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
        at_ms: slipway_common::now_ms(),
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
pub(super) async fn requeue_lost(ctx: &Arc<Context>) {
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
                at_ms: slipway_common::now_ms(),
            })
            .await
        {
            tracing::warn!(build = %build_id, %err, "cannot requeue build");
        }
    }
}

/// The assignment an agent gets for a build's current attempt, with (TLS on) a fresh
/// grant to push and pull the app's repository only, and what other apps hold (their
/// router names and `run.domains`, their published ports) so a manifest claiming one
/// fails before the image is built, and the commit of the build the cache doctor will
/// compare this one with (the agent reports the context paths changed since).
pub fn assignment(ctx: &Context, b: &Build, app: &App) -> slipway_proto::BuildAssignment {
    let domain = &ctx.config.router.domain;
    let (held_hosts, held_ports, previous_git_sha) = ctx.store.read(|s| {
        let claims = s.claims(Some(&app.name));
        let mut hosts: std::collections::HashMap<String, String> = claims.hosts.into_iter().collect();
        for other in s.apps.keys().filter(|other| **other != app.name) {
            hosts.insert(crate::router::routes::app_host(other, domain), other.clone());
        }
        let previous = crate::state::cache_doctor::previous_output(s, &app.name, &b.id)
            .map(|o| o.git_sha.clone())
            .unwrap_or_default();
        (hosts, claims.ports.into_iter().map(|(port, holder)| (u32::from(port), holder)).collect(), previous)
    });
    slipway_proto::BuildAssignment {
        held_hosts,
        held_ports,
        previous_git_sha,
        build_id: b.id.clone(),
        attempt: b.attempt,
        app: app.name.clone(),
        repo: app.repo.clone(),
        git_ref: b.git_ref.clone(),
        no_cache: b.no_cache,
        repository: ctx.config.registry.repository(&app.name),
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
        at_ms: slipway_common::now_ms(),
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
