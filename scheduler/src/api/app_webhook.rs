//! `AppWebhook` on the control API (`slipway apps webhook APP [--rotate]`): the URL git
//! hosts post pushes to and the app's secret, derived on this member from the CA key
//! and the app's webhook generation (`security::webhooks`); `rotate` bumps the
//! generation through raft (`Command::RotateWebhook`), so the old secret is refused on
//! every member from then on.

use std::sync::Arc;

use slipway_proto::{self as pb, validate};
use tonic::Status;

use crate::context::Context;
use crate::error::Error;
use crate::security::webhooks;
use crate::state::{Command, Response as Applied};

/// The app's webhook URL and secret, after a rotation if asked.
pub(super) async fn app_webhook(
    ctx: &Arc<Context>,
    req: pb::AppWebhookRequest,
) -> Result<pb::AppWebhookResponse, Status> {
    validate::app_name(&req.app).map_err(Error::from)?;
    let Some(ca) = ctx.ca.as_deref() else {
        return Err(Status::failed_precondition(
            "this scheduler runs without TLS (tls.insecure): webhook secrets are derived from the cluster CA, \
             which it does not have",
        ));
    };
    let app = if req.rotate {
        match ctx.store.write(Command::RotateWebhook { app: req.app.clone() }).await? {
            Applied::App(app) => {
                tracing::info!(app = %app.name, generation = app.webhook_generation, "webhook secret rotated");
                app
            }
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    } else {
        ctx.store.read_current(|s| s.app(&req.app).cloned()).await?.map_err(Error::from)?
    };
    Ok(pb::AppWebhookResponse { url: ctx.config.webhook_url(&app.name), secret: webhooks::secret(ca, &app) })
}
