//! Releases, rollbacks and the registry GC of the control API (`ListReleases`,
//! `Rollback`, `Gc`): which releases can still be rolled back to under the registry's
//! retention policy (`state::retention`), a rollback refused before anything changes
//! when its image is or will be collected, and a GC run now on the leader
//! (`dispatch::gc`), with its report put on the wire here.

use std::sync::Arc;

use slipway_proto::deploy_event::Event;
use slipway_proto::{self as pb, validate};
use tonic::Status;

use super::control::{bounded_id, watch_deploy, EventStream, Topic};
use crate::context::Context;
use crate::convert;
use crate::dispatch::gc;
use crate::error::Error;
use crate::events::release_topic;
use crate::state::{retention, ApplyError, Command, Response as Applied};

/// The app's releases, each marked whether its image is kept (it can be rolled back to).
pub(super) async fn list_releases(ctx: &Context, app: String) -> Result<pb::ListReleasesResponse, Status> {
    validate::app_name(&app).map_err(Error::from)?;
    let policy = ctx.config.registry.retention.policy(&app);
    let now_ms = slipway_common::now_ms();
    let releases = ctx
        .store
        .read_current(|s| {
            let current = s.app(&app)?.current_release;
            let rs = s.releases.get(&app).map(Vec::as_slice).unwrap_or_default();
            let pinned = retention::Pinned { current, service_digest: None };
            let plan = retention::plan(rs, policy, &pinned, now_ms);
            Ok::<_, ApplyError>(
                rs.iter()
                    .map(|r| pb::Release {
                        rollbackable: !r.collected && plan.keeps(r),
                        ..convert::release(r)
                    })
                    .collect(),
            )
        })
        .await?
        .map_err(Error::from)?;
    Ok(pb::ListReleasesResponse { releases })
}

/// Records a release running an earlier release's image and streams its rollout.
pub(super) async fn rollback(ctx: &Arc<Context>, req: pb::RollbackRequest) -> Result<EventStream, Status> {
    validate::app_name(&req.app).map_err(Error::from)?;
    bounded_id("request id", &req.request_id)?;
    let target = ctx
        .store
        .read_current(|s| s.rollback_target(&req.app, (req.to != 0).then_some(req.to)).cloned())
        .await?
        .map_err(Error::from)?;
    // Refused before anything changes: the image is gone, or goes at the next GC.
    gc::check_rollback(ctx, &req.app, &target).map_err(Status::failed_precondition)?;
    ctx.docker().await?;
    let request_id =
        if req.request_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { req.request_id };
    let cmd = Command::Rollback {
        app: req.app,
        to: (req.to != 0).then_some(req.to),
        request_id: Some(request_id),
        at_ms: slipway_common::now_ms(),
    };
    let release = match ctx.store.write(cmd).await? {
        Applied::Release(r) => r,
        other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
    };
    tracing::info!(app = %release.app, release = release.number, of = ?release.rollback_of, "rollback recorded");
    ctx.dispatcher_wake();
    let topic = Topic::Release { app: release.app.clone(), number: release.number };
    let first = Event::Release(convert::release(&release));
    Ok(watch_deploy(ctx.clone(), Some(first), release_topic(&release), topic))
}

/// Runs a registry GC now (the leader only) and reports it.
pub(super) async fn gc(ctx: &Arc<Context>, dry_run: bool) -> Result<pb::GcResponse, Status> {
    if !ctx.store.is_leader() {
        return Err(Error::NotLeader { leader: ctx.store.leader_addr() }.into());
    }
    // A skipped round (builds did not get quiet) is an answer, not a fault to retry.
    let report = gc::run_gc(ctx, dry_run).await.map_err(|e| match e {
        Error::Unavailable(m) => Status::aborted(m),
        other => Status::from(other),
    })?;
    Ok(convert::gc_report(&report))
}
