//! `apps show` and `apps logs` for the control API: the app's record and current release
//! from raft, its tasks and their output from the Swarm manager
//! ([`crate::deploy::observe`]). Nothing here writes; an unknown app is refused before
//! Docker is asked, and an app without a service says so.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use slipway_proto::{self as pb, validate};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Status;

use crate::context::Context;
use crate::convert;
use crate::deploy::observe::{self, LogQuery};
use crate::error::Error;

/// The stream `AppLogs` answers with.
pub type AppLogStream = Pin<Box<dyn Stream<Item = Result<pb::AppLogLine, Status>> + Send>>;

/// The app's record, its current release (if any) and its URLs, or NotFound.
/// The app as the API shows it, its current release, and the names of its config keys
/// (never values) with its scale (0: not scaled).
async fn app_record(
    ctx: &Context,
    name: &str,
) -> Result<(pb::App, Option<pb::Release>, convert::AppSettings), Status> {
    validate::app_name(name).map_err(Error::from)?;
    let (stack, router) = (&ctx.config.deploy.stack, &ctx.config.router);
    let found = ctx
        .store
        .read_current(|s| {
            let app = s.app(name)?;
            let urls = crate::router::routes::app_urls(s, name, &router.domain, router.http_port);
            let current = s
                .releases
                .get(name)
                .and_then(|rs| rs.iter().find(|r| r.number == app.current_release))
                .map(convert::release);
            let settings = convert::AppSettings {
                config_keys: app.config.keys().cloned().collect(),
                scaled_replicas: app.replicas.unwrap_or(0),
                secret_names: app.secrets.keys().cloned().collect(),
            };
            Ok::<_, crate::state::ApplyError>((convert::app(app, stack, urls), current, settings))
        })
        .await?
        .map_err(Error::from)?;
    Ok(found)
}

fn swarm_error(app: &str, e: crate::deploy::DeployError) -> Status {
    Error::Unavailable(format!("cannot read the Swarm service of {app}: {e}")).into()
}

/// `AppStatus`: the app's tasks beside its current release and replicas.
pub async fn app_status(ctx: &Context, req: pb::AppStatusRequest) -> Result<pb::AppStatusResponse, Status> {
    let (app, current, settings) = app_record(ctx, &req.app).await?;
    let docker = ctx.docker().await?;
    let view = observe::service_view(&docker, &ctx.config.deploy.stack, &req.app)
        .await
        .map_err(|e| swarm_error(&req.app, e))?;
    Ok(convert::app_status(app, current, settings, view.as_ref()))
}

/// `AppLogs`: what the app's tasks print, as they print it with `follow`.
pub async fn app_logs(ctx: Arc<Context>, req: pb::AppLogsRequest) -> Result<AppLogStream, Status> {
    let (app, _, _) = app_record(&ctx, &req.app).await?;
    if let Some(tail) = req.tail {
        validate::log_tail(tail).map_err(Error::from)?;
    }
    let docker = ctx.docker().await?;
    let stack = ctx.config.deploy.stack.clone();
    let view =
        observe::service_view(&docker, &stack, &req.app).await.map_err(|e| swarm_error(&req.app, e))?;
    let Some(view) = view else {
        return Err(Status::failed_precondition(format!(
            "app {} has no service yet (never deployed, or its service was removed): \
             `slipway deploy {}` starts it",
            app.name, app.name
        )));
    };
    let now_secs = slipway_common::now_ms() / 1000;
    let since_unix_secs = match req.since_seconds {
        0 => 0,
        back => i32::try_from(now_secs.saturating_sub(back)).unwrap_or(0),
    };
    let query = LogQuery { follow: req.follow, tail: req.tail, since_unix_secs };
    let lines = observe::app_logs(docker, stack, req.app, view, query);
    Ok(Box::pin(ReceiverStream::new(lines).map(|l| Ok(convert::app_log_line(l)))))
}
