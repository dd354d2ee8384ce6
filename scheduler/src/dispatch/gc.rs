//! Registry garbage collection: the leader deletes the images retention lets go
//! (`state::retention` decides which) and has the registry reclaim their blobs.
//!
//! ```text
//! plan (state + each service's image) ─► pause builds ─► wait: no build assigned/running
//!   ─► fence (quorum read) ─► plan again from state read after it ─► GET kept + doomed manifests
//!   ─► DELETE doomed manifests ─► MarkCollected (raft) ─► garbage-collect (registry's own) ─► resume
//! ```
//!
//! **Pushes vs garbage-collect.** The registry's `garbage-collect` marks the blobs that
//! manifests reference, then sweeps the rest: a push that uploads a blob between mark
//! and sweep, and whose manifest lands after, loses that blob. Only slipway agents push,
//! and only builds the leader assigned: so the leader stops assigning (queued builds
//! wait in the queue, they never fail or expire for it), waits up to
//! `registry.gc.quiet_timeout_secs` for builds already assigned or running to end, and if
//! they do not, skips this round and says so. How long the queue was held is reported
//! as the registry pause time. A push by anyone else (a person with a grant) is not
//! fenced; see the README.
//!
//! **Fence.** Right before the deletes the leader confirms its leadership with a quorum
//! ([`crate::raft::Store::confirm_leading`]) and takes the releases to keep from state
//! read after that, so a deposed leader deletes nothing a newer leader's release needs.
//!
//! **Halfway.** Deletes only touch manifests outside the policy, and garbage-collect only
//! removes blobs no manifest references: a GC killed at any point leaves every kept
//! release pullable. Releases are marked collected after their manifests went; one
//! killed in between stays unmarked until the next GC deletes it again (a 404 counts as
//! deleted) and marks it; a rollback to it is refused by the policy check meanwhile.
//!
//! **Bytes reclaimed** are computed from the manifests: the sizes of the blobs that
//! deleted manifests reference and no kept manifest (of any app) does. Blobs that
//! manifests slipway does not know (pushed by hand) also reference are counted too,
//! so it is an upper bound; garbage-collect's actual result is in its output.
//!
//! **Blob descriptor cache.** A registry with `storage.cache.blobdescriptor: inmemory`
//! keeps answering that a swept blob exists, so a later push skips uploading it and
//! the image is broken. Our registry configs (`packaging/registry.sh`, the test kit)
//! set no cache; a registry that has one must be restarted after each garbage-collect.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::context::Context;
use crate::deploy::service_name;
use crate::error::Error;
use crate::security::registry_client::RegistryAdmin;
use crate::state::retention::{self, AppGc, DeletedImage, GcReport, Pinned, Plan, Policy};
use crate::state::{BuildState, Command, Release, ReleaseNumber};

/// Runs a GC now (see the module doc). Only the leader; one at a time.
pub async fn run_gc(ctx: &Arc<Context>, dry_run: bool) -> Result<GcReport, Error> {
    let _one = ctx.dispatch.gc_running.try_lock().map_err(|_| {
        Error::Unavailable(
            "a registry GC is already running on this scheduler; try again when it ends".into(),
        )
    })?;
    if dry_run {
        let plans = plans(ctx).await?;
        return Ok(report(ctx, &plans, true));
    }
    let started = Instant::now();
    ctx.dispatch.pause_builds(true);
    tracing::info!("registry GC: builds held in the queue");
    let result = collect(ctx, started).await;
    ctx.dispatch.pause_builds(false);
    ctx.dispatcher_wake();
    let mut report = result?;
    report.pause = started.elapsed();
    tracing::info!(
        deleted = report.apps.iter().map(|a| a.deleted.len()).sum::<usize>(),
        bytes = report.bytes_reclaimed,
        pause_ms = report.pause.as_millis() as u64,
        "registry GC done"
    );
    Ok(report)
}

/// The paused part of [`run_gc`].
async fn collect(ctx: &Arc<Context>, started: Instant) -> Result<GcReport, Error> {
    let quiet = Duration::from_secs(ctx.config.registry.gc.quiet_timeout_secs);
    loop {
        let busy: Vec<String> = ctx.store.read(|s| {
            s.builds
                .values()
                .filter(|b| matches!(b.state, BuildState::Assigned | BuildState::Running))
                .map(|b| b.id.clone())
                .collect()
        });
        if busy.is_empty() {
            break;
        }
        if started.elapsed() >= quiet {
            return Err(Error::Unavailable(format!(
                "registry GC skipped: builds {} still run after registry.gc.quiet_timeout_secs = {} \
                 (pushes must not run during garbage-collect); nothing was deleted, the next round tries again",
                busy.join(", "),
                quiet.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ctx.store.confirm_leading().await?;
    let plans = plans(ctx).await?;
    let mut report = report(ctx, &plans, false);
    let registry = ctx.config.registry.addr.as_str();
    let admin = RegistryAdmin::new(registry, ctx.registry_signer.as_deref()).map_err(Error::Unavailable)?;
    // Blobs kept manifests reference (every app: base layers are shared), then doomed.
    let mut kept_blobs = BTreeSet::new();
    for (app, plan, _) in &plans {
        for digest in &plan.keep {
            if let Some(blobs) = admin.manifest_blobs(app, digest).await.map_err(Error::Unavailable)? {
                kept_blobs.extend(blobs.into_iter().map(|b| b.digest));
            }
        }
    }
    let mut doomed_blobs = BTreeMap::new();
    for (app_report, (app, plan, _)) in report.apps.iter_mut().zip(&plans) {
        let mut gone = Vec::new();
        for image in &mut app_report.deleted {
            if let Some(blobs) = admin.manifest_blobs(app, &image.digest).await.map_err(Error::Unavailable)? {
                doomed_blobs.extend(blobs.into_iter().map(|b| (b.digest, b.size)));
            }
            image.deleted = admin.delete_manifest(app, &image.digest).await.map_err(Error::Unavailable)?;
            gone.push(image.digest.clone());
        }
        if plan.delete.is_empty() {
            continue;
        }
        let cmd = Command::MarkCollected { app: app.clone(), digests: gone };
        ctx.store.write(cmd).await?;
    }
    report.bytes_reclaimed =
        doomed_blobs.iter().filter(|(d, _)| !kept_blobs.contains(*d)).map(|(_, size)| size).sum();
    (report.blob_gc_ok, report.blob_gc) = blob_gc(ctx).await;
    Ok(report)
}

/// Runs `registry.gc.command`, if set: (ok, what it did).
async fn blob_gc(ctx: &Context) -> (bool, String) {
    let gc = &ctx.config.registry.gc;
    let Some((program, args)) = gc.command.split_first() else {
        return (
            false,
            "registry.gc.command is not set: blob space is reclaimed when the operator runs \
             `docker-registry garbage-collect CONFIG` on the registry's host"
                .into(),
        );
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot run registry.gc.command {:?}: {e}", gc.command)),
    };
    let timeout = Duration::from_secs(gc.command_timeout_secs);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            (false, format!("registry.gc.command ran longer than {} s and was killed", timeout.as_secs()))
        }
        Ok(Err(e)) => (false, format!("registry.gc.command: {e}")),
        Ok(Ok(out)) => {
            let text =
                String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(3)..].join("\n");
            (out.status.success(), format!("{:?} {}: {tail}", gc.command, out.status))
        }
    }
}

/// Each app's plan: (app, plan, policy), from state read now and each service's image.
async fn plans(ctx: &Context) -> Result<Vec<(String, Plan, Policy)>, Error> {
    let apps: Vec<(String, Vec<Release>, ReleaseNumber)> = ctx.store.read(|s| {
        s.apps
            .values()
            .map(|a| {
                (a.name.clone(), s.releases.get(&a.name).cloned().unwrap_or_default(), a.current_release)
            })
            .collect()
    });
    let now_ms = slipway_common::now_ms();
    let mut out = Vec::new();
    for (app, releases, current) in apps {
        let policy = ctx.config.registry.retention.policy(&app);
        let service_digest = service_digest(ctx, &app).await?;
        let plan = retention::plan(&releases, policy, &Pinned { current, service_digest }, now_ms);
        out.push((app, plan, policy));
    }
    Ok(out)
}

/// The digest the app's Swarm service runs (`None`: no service). A Swarm that cannot be
/// asked stops the GC: it could be running an image the plan would delete.
async fn service_digest(ctx: &Context, app: &str) -> Result<Option<String>, Error> {
    let docker = ctx.docker().await?;
    let name = service_name(&ctx.config.deploy.stack, app);
    match docker.inspect_service(&name, None).await {
        Ok(service) => Ok(service
            .spec
            .and_then(|s| s.task_template)
            .and_then(|t| t.container_spec)
            .and_then(|c| c.image)
            .and_then(|image| image.split_once('@').map(|(_, d)| d.to_string()))),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
        Err(e) => Err(Error::Unavailable(format!(
            "registry GC cannot read service {name} from Swarm ({e}); nothing was deleted"
        ))),
    }
}

fn report(_ctx: &Context, plans: &[(String, Plan, Policy)], dry_run: bool) -> GcReport {
    let apps = plans
        .iter()
        .map(|(app, plan, policy)| AppGc {
            app: app.clone(),
            policy: policy.to_string(),
            oldest_kept: plan.oldest_kept,
            kept: plan.keep.iter().cloned().collect(),
            deleted: plan
                .delete
                .iter()
                .map(|(digest, releases)| DeletedImage {
                    digest: digest.clone(),
                    releases: releases.clone(),
                    deleted: false,
                })
                .collect(),
        })
        .collect();
    GcReport { dry_run, apps, ..GcReport::default() }
}

/// Runs a GC every `registry.gc.interval_secs` while this member leads (0: never; the
/// task then only waits for shutdown, as a supervised task must not end before it).
pub async fn run_scheduled(
    ctx: Arc<Context>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let every = ctx.config.registry.gc.interval_secs;
    if every == 0 {
        let _ = shutdown.changed().await;
        return Ok(());
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if !ctx.store.is_leader() {
            continue;
        }
        match run_gc(&ctx, false).await {
            Ok(r) => tracing::info!(bytes = r.bytes_reclaimed, blob_gc = %r.blob_gc, "scheduled registry GC"),
            Err(err) => tracing::warn!(%err, "scheduled registry GC did not run"),
        }
    }
}

/// The release `to` of `app` under the app's policy now: Err with the policy and the
/// oldest release still kept when its image is (or is about to be) collected.
pub fn check_rollback(ctx: &Context, app: &str, to: &Release) -> Result<(), String> {
    let policy = ctx.config.registry.retention.policy(app);
    let (releases, current) = ctx.store.read(|s| {
        (s.releases.get(app).cloned().unwrap_or_default(), s.apps.get(app).map_or(0, |a| a.current_release))
    });
    let plan = retention::plan(
        &releases,
        policy,
        &Pinned { current, service_digest: None },
        slipway_common::now_ms(),
    );
    if to.collected || !plan.keeps(to) {
        return Err(format!(
            "release {} of {app:?} is outside the registry retention policy ({policy}; \
             registry.retention in scheduler.toml): its image is or will be garbage-collected. \
             The oldest release still kept is {}; `slipway releases {app}` marks what can be rolled back to",
            to.number, plan.oldest_kept
        ));
    }
    Ok(())
}
