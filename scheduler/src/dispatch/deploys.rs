//! Deploys: for each app, its newest pending release goes to Swarm ([`crate::deploy`]),
//! older pending ones are marked superseded, and the outcome is recorded and announced
//! on the release's topic. One deploy (or grant renewal) per app at a time: the app's
//! deploy slot ([`crate::dispatch_state::DispatchState::hold`]).
//!
//! Fenced: a deploy starts only once a quorum confirmed this member leads
//! ([`crate::raft::Store::confirm_leading`]) and confirms it again every
//! [`LEADERSHIP_RECHECK`] while it runs: a member that cannot prove it still leads
//! (cut off from its peers, which openraft 0.9 does not make step down) aborts the
//! deploy, leaving the release pending for whoever leads. Swarm refuses nothing on its
//! own, so the update itself also refuses to move a service below the release its label
//! names ([`crate::deploy::fence`]); such a deploy is recorded as failed (when this
//! member can still write), never as deployed.

use std::sync::Arc;
use std::time::Duration;

use slipway_proto::deploy_event::Event;
use tracing::Instrument;

use super::grants::pull_auth;
use crate::config::RegistryConfig;
use crate::context::Context;
use crate::convert;
use crate::deploy::secrets::SecretMount;
use crate::deploy::{self, PersistBackend, PublishMode, ServiceDeploy};
use crate::events::release_topic;
use crate::router;
use crate::state::{Command, DeployState, Release, Response};

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

pub(super) async fn start_pending_deploys(ctx: &Arc<Context>) {
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
        // Boxed: a deploy's future (the service spec, the converge loop) is large.
        hold_app(
            ctx,
            "deploy",
            &app,
            span,
            async move { Box::pin(deploy_release(&task_ctx, &release)).await },
        );
    }
}

/// Runs `work` for `app` in a task holding the app's deploy slot (see
/// [`crate::dispatch_state::DispatchState::hold`]), unless something else holds it; the
/// slot is freed however the task ends, a stand-down aborts the task, and a panic in it
/// ends the process ([`slipway_common::supervise::spawn_fatal_on_panic`]).
pub(super) fn hold_app(
    ctx: &Arc<Context>,
    task: &'static str,
    app: &str,
    span: tracing::Span,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (task_ctx, task_app) = (ctx.clone(), app.to_string());
    ctx.dispatch.hold(app, move || {
        // Made only once the slot is taken: dropping it frees the slot.
        let guard = DeployingGuard { ctx: task_ctx, app: task_app };
        // A panic here ends the process like one in the dispatcher (the slot alone
        // would be freed, the member left leading with its Swarm side effects unknown).
        slipway_common::supervise::spawn_fatal_on_panic(
            task,
            async move {
                let _guard = guard;
                work.await;
            }
            .instrument(span),
        )
    });
}

/// Maps a release to the Swarm service that runs it.
pub fn service_for(ctx: &Context, release: &Release) -> ServiceDeploy {
    let deploy = &ctx.config.deploy;
    ServiceDeploy {
        stack: deploy.stack.clone(),
        app: release.app.clone(),
        image: release.image(),
        release: release.number,
        // `slipway scale` wins over the manifest's replicas.
        replicas: release.effective_replicas(),
        port: release.run.port,
        publish: release.run.publish,
        constraints: release.run.constraints.clone(),
        env: {
            // The manifest's env, the app's config over it; Heroku's convention: the app
            // learns its port from $PORT.
            let mut env = release.env();
            if let Some(port) = release.run.port {
                env.entry("PORT".into()).or_insert_with(|| port.to_string());
            }
            env
        },
        persist: release.run.persist.clone(),
        secrets: release
            .secrets
            .iter()
            .map(|(name, s)| SecretMount {
                name: name.clone(),
                swarm_id: s.swarm_id.clone(),
                swarm_name: s.swarm_name.clone(),
            })
            .collect(),
        healthcheck: release.run.healthcheck.clone(),
        publish_mode: PublishMode::from(deploy.publish_mode),
        persist_backend: match &deploy.nfs {
            None => PersistBackend::Local,
            Some(nfs) => PersistBackend::Nfs { addr: nfs.addr.clone(), export_root: nfs.export_root.clone() },
        },
        converge_timeout: Duration::from_secs(deploy.converge_timeout_secs),
    }
}

/// Refuses to deploy a release whose image is outside its app's repository of the fleet
/// registry. Releases recorded since builds are checked (`verify.rs`) always name it; one
/// recorded before (from an agent's word), or before `registry.addr` changed, may not.
fn in_fleet_registry(registry: &RegistryConfig, release: &Release) -> Result<(), String> {
    let repository = registry.repository(&release.app);
    if release.repository == repository {
        return Ok(());
    }
    Err(format!(
        "release {} runs {}, outside this app's repository of the fleet registry ({repository}); \
         deploy the app again to build a release there",
        release.number,
        release.image()
    ))
}

/// How long a deploy waits for every node's router to serve the current routes before
/// it reports where they are not live yet.
const ROUTES_WAIT: Duration = Duration::from_secs(10);

/// Once a release is live: waits until every node's router serves the routes and says
/// where the app answers (or which routers lag, and why). Returns the app's URLs.
async fn announce_routes(ctx: &Context, topic: &str, app: &str) -> Vec<String> {
    let urls = router::app_urls(ctx, app);
    if urls.is_empty() {
        return urls;
    }
    let line = match router::wait_served(ctx, ROUTES_WAIT).await {
        Ok(nodes) => {
            format!("router: {app} answers at {} (the routers of {nodes} node(s) serve it)", urls.join(" "))
        }
        Err(lagging) => format!("router: the routes are not live on every node yet: {}", lagging.join("; ")),
    };
    ctx.events.publish(topic, Event::DeployProgress(line));
    urls
}

/// How long a member that could not confirm its leadership keeps an app's deploy slot
/// before its dispatcher may try that app again (no retry loop on a deposed leader).
const UNCONFIRMED_BACKOFF: Duration = Duration::from_secs(5);

/// How often a running deploy has a quorum confirm that this member still leads.
pub const LEADERSHIP_RECHECK: Duration = Duration::from_secs(1);

/// What a deploy says when it stops because this member lost its proof of leadership.
pub const ABORTED: &str = "deploy aborted: this member cannot prove it still leads";

async fn deploy_release(ctx: &Arc<Context>, release: &Release) {
    // Fenced side effect, first half: a quorum confirms this member still leads right
    // before it touches Swarm, and again every LEADERSHIP_RECHECK while the deploy runs
    // (the second half is the release label, `deploy::fence`).
    if let Err(err) = ctx.store.confirm_leading().await {
        tracing::warn!(%err, "not deploying: this member cannot prove it still leads");
        tokio::time::sleep(UNCONFIRMED_BACKOFF).await;
        return;
    }
    let topic = release_topic(release);
    tokio::select! {
        () = run_deploy(ctx, release, &topic) => {}
        err = lost_leadership(ctx) => {
            // The release stays pending: whoever leads deploys it (or a newer one).
            tracing::warn!(%err, "{ABORTED}");
            let line = format!("{ABORTED} ({err}); whoever leads deploys the release");
            ctx.events.publish(&topic, Event::DeployProgress(line));
            tokio::time::sleep(UNCONFIRMED_BACKOFF).await;
        }
    }
}

/// Returns the error once a quorum no longer confirms, within its bound, that this member
/// leads; checks every [`LEADERSHIP_RECHECK`].
async fn lost_leadership(ctx: &Context) -> crate::error::Error {
    loop {
        tokio::time::sleep(LEADERSHIP_RECHECK).await;
        if let Err(err) = ctx.store.confirm_leading().await {
            return err;
        }
    }
}

async fn run_deploy(ctx: &Arc<Context>, release: &Release, topic: &str) {
    let topic = topic.to_owned();
    let spec = service_for(ctx, release);
    let service = format!("{}_{}", spec.stack, spec.app);
    if release.rollback_of.is_none() && release.change.is_none() {
        // Rollbacks, config changes and scales announced their release when they were
        // recorded (api/control.rs, api/app_config.rs).
        ctx.events.publish(&topic, Event::Release(convert::release(release)));
    }
    ctx.events.publish(
        &topic,
        Event::DeployProgress(format!(
            "deploying release {} ({}) to service {service}",
            release.number, spec.image
        )),
    );
    let outcome = match in_fleet_registry(&ctx.config.registry, release) {
        Err(reason) => Err(reason),
        Ok(()) => match ctx.docker().await {
            Ok(docker) => {
                let progress_topic = topic.clone();
                let events = ctx.events.clone();
                let progress =
                    move |line: String| events.publish(&progress_topic, Event::DeployProgress(line));
                let auth = pull_auth(ctx, &release.app);
                #[cfg(debug_assertions)]
                super::test_hooks::hold_deploy_if_asked(ctx.config.node_id).await;
                deploy::deploy(&docker, &spec, auth.as_ref(), &progress).await.map_err(|e| e.to_string())
            }
            Err(err) => Err(err.to_string()),
        },
    };
    let result = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
    let cmd = Command::RecordDeploy { app: release.app.clone(), release: release.number, result };
    let recorded = ctx.store.write(cmd).await;
    match (outcome, recorded) {
        (Ok(done), Ok(Response::Release(r))) => {
            tracing::info!(service = %service, running = done.running, "release deployed");
            // Boxed: its engine calls would make every deploy task's future larger.
            Box::pin(prune_secrets(ctx, &topic, &release.app)).await;
            let urls = announce_routes(ctx, &topic, &release.app).await;
            ctx.events.publish(
                &topic,
                Event::Done(slipway_proto::DeployDone {
                    release: Some(convert::release(&r)),
                    service,
                    running: done.running,
                    published_port: done.published_port.map(u32::from).unwrap_or_default(),
                    urls,
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

/// Once a release is live: removes the app's Swarm secrets that neither its records nor
/// its releases still pending or running mount (the versions a `secrets set` or `unset`
/// replaced). Best effort: what cannot go now goes after the next deploy.
async fn prune_secrets(ctx: &Context, topic: &str, app: &str) {
    let keep: std::collections::HashSet<String> = ctx.store.read(|s| {
        let Some(a) = s.apps.get(app) else { return Default::default() };
        let live = s
            .releases
            .get(app)
            .into_iter()
            .flatten()
            .filter(|r| r.deploy == DeployState::Pending || r.number == a.current_release);
        a.secrets.values().chain(live.flat_map(|r| r.secrets.values())).map(|s| s.swarm_id.clone()).collect()
    });
    let Ok(docker) = ctx.docker().await else { return };
    match deploy::secrets::prune(&docker, &ctx.config.deploy.stack, app, &keep).await {
        Ok(removed) if !removed.is_empty() => {
            let line = format!("removed the Swarm secrets no release uses any more: {}", removed.join(", "));
            tracing::info!(app, removed = ?removed, "unused Swarm secrets removed");
            ctx.events.publish(topic, Event::DeployProgress(line));
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(app, %err, "cannot list the app's Swarm secrets to prune them"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_releases_in_the_apps_repository_of_the_fleet_registry_deploy() {
        let registry = RegistryConfig { addr: "10.0.0.1:5000".into(), ..RegistryConfig::default() };
        let digest = format!("sha256:{}", "a".repeat(64));
        let release = |repository: &str| Release {
            secrets: Default::default(),
            app: "shop".into(),
            number: 3,
            digest: digest.clone(),
            repository: repository.into(),
            git_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            build_id: "b-3".into(),
            node_id: "node-a".into(),
            created_at_ms: 0,
            rollback_of: None,
            deploy: DeployState::Pending,
            deploy_error: None,
            run: Default::default(),
            bytes_pushed: 0,
            timings: Default::default(),
            config: Default::default(),
            replicas: None,
            change: None,
            collected: false,
        };
        assert_eq!(in_fleet_registry(&registry, &release("10.0.0.1:5000/shop")), Ok(()));
        for elsewhere in ["10.0.0.1:5000/other", "evil.example/shop", "127.0.0.1:5000/shop"] {
            let reason = in_fleet_registry(&registry, &release(elsewhere)).unwrap_err();
            assert!(
                reason.starts_with(&format!("release 3 runs {elsewhere}@{digest}, outside"))
                    && reason.contains("(10.0.0.1:5000/shop)"),
                "{reason}"
            );
        }
    }
}
