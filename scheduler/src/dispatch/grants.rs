//! Registry grants stored with the apps' services: the pull-only credentials a service
//! pulls its image with ([`pull_auth`]), renewed before they expire
//! ([`renew_pull_grants`]) so a task Swarm starts later can still pull.

use std::sync::Arc;
use std::time::Duration;

use bollard::auth::DockerCredentials;

use super::deploys::{hold_app, service_for};
use crate::context::Context;
use crate::deploy::{self, PullAuth};
use crate::security::registry_auth;
use crate::state::DeployState;

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
pub(super) fn renew_pull_grants(ctx: &Arc<Context>) {
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
        hold_app(ctx, "grant renewal", &app, span, async move {
            let (ctx, app) = (&task_ctx, &task_app);
            let Some(auth) = pull_auth(ctx, app) else { return };
            // Fenced: only a member a quorum confirms as leader touches the service.
            if let Err(err) = ctx.store.confirm_leading().await {
                return tracing::warn!(%err, "not renewing the service's registry grant: this member cannot prove it still leads");
            }
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
