//! App secrets on the control API (`SetSecret`, `ListSecrets`, `UnsetSecret`).
//!
//! A secret's value goes from the request straight into a Swarm secret and nowhere else:
//! not into a raft command, not into a log line. Hence `SetSecret` runs on the leader
//! only: a follower refuses with the leader's address (the CLI then retries there) instead
//! of forwarding, because the follower's only way to the leader is `ForwardWrite`, which
//! carries a raft command. The leader creates the versioned Swarm secret, then writes
//! [`Command::SetSecret`] (name, version, Swarm id and time), which records a release of
//! the running image mounting it, and streams its rollout like a config change. If that
//! write fails, the Swarm secret just made is removed: nothing half-applied.
//!
//! The Swarm secrets a release no longer needs go once a later release is deployed
//! (`dispatch/deploys.rs`); a failed rollout keeps the previous release serving with the
//! version it mounts.

use std::sync::Arc;

use slipway_proto::{self as pb, validate};
use tonic::Status;

use super::app_config::{announce, ready_to_change};
use super::control::{bounded_id, EventStream};
use crate::context::Context;
use crate::deploy::secrets;
use crate::error::Error;
use crate::state::{Command, SecretRecord};

/// Every field of a `SetSecret` request, checked before anything else: app and secret
/// names, the value's size (never its content in a message), the request id.
pub(super) fn check_set_secret(req: &pb::SetSecretRequest) -> Result<(), Error> {
    validate::app_name(&req.app)?;
    validate::secret_name(&req.name)?;
    validate::secret_value(&req.name, &req.value)?;
    bounded_id("request id", &req.request_id)?;
    Ok(())
}

pub(super) async fn set_secret(ctx: &Arc<Context>, req: pb::SetSecretRequest) -> Result<EventStream, Status> {
    check_set_secret(&req)?;
    // The value must not reach a ForwardWrite: only the leader takes it.
    ctx.store.require_leader()?;
    let stack = ctx.config.deploy.stack.clone();
    let request_id = ready_to_change(ctx, &req.app, req.request_id).await?;
    let (seen, version) = ctx
        .store
        .read_current(|s| {
            s.app(&req.app)?;
            Ok::<_, crate::state::ApplyError>((
                s.requests.contains_key(&request_id),
                s.next_secret_version(&req.app, &req.name),
            ))
        })
        .await?
        .map_err(Error::from)?;
    if seen {
        // A retry of a set that went through: its first outcome, no second Swarm secret.
        let secret =
            SecretRecord { version: 0, swarm_name: String::new(), swarm_id: String::new(), set_at_ms: 0 };
        let cmd = Command::SetSecret { app: req.app, name: req.name, secret, request_id: Some(request_id) };
        return announce(ctx, ctx.store.write(cmd).await?);
    }
    let swarm_name =
        validate::swarm_secret_name(&stack, &req.app, &req.name, version).map_err(Error::from)?;
    let docker = ctx.docker().await?;
    let swarm_id = secrets::create(&docker, &stack, &req.app, &req.name, version, &swarm_name, &req.value)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot store secret {} of {}: {e}", req.name, req.app)))?;
    drop(req.value);
    let secret = SecretRecord {
        version,
        swarm_name: swarm_name.clone(),
        swarm_id: swarm_id.clone(),
        set_at_ms: slipway_common::now_ms(),
    };
    let (app, name) = (req.app.clone(), req.name.clone());
    let cmd = Command::SetSecret { app: req.app, name: req.name, secret, request_id: Some(request_id) };
    match ctx.store.write(cmd).await {
        Ok(applied) => {
            tracing::info!(%app, secret = %name, version, swarm_secret = %swarm_name, "secret version recorded");
            announce(ctx, applied)
        }
        Err(err) => {
            // Not recorded: the Swarm secret made for it goes, so nothing is left behind.
            if let Err(e) = secrets::remove(&docker, &swarm_id).await {
                tracing::warn!(%app, secret = %name, swarm_secret = %swarm_name, error = %e, "cannot remove the Swarm secret of a refused set");
            }
            Err(err.into())
        }
    }
}

pub(super) async fn unset_secret(
    ctx: &Arc<Context>,
    req: pb::UnsetSecretRequest,
) -> Result<EventStream, Status> {
    validate::app_name(&req.app).map_err(Error::from)?;
    validate::secret_name(&req.name).map_err(Error::from)?;
    bounded_id("request id", &req.request_id)?;
    let request_id = ready_to_change(ctx, &req.app, req.request_id).await?;
    let cmd = Command::UnsetSecret {
        app: req.app,
        name: req.name,
        request_id: Some(request_id),
        at_ms: slipway_common::now_ms(),
    };
    // The Swarm secret goes once the release without its mount is deployed.
    announce(ctx, ctx.store.write(cmd).await?)
}

pub(super) async fn list_secrets(ctx: &Context, app: &str) -> Result<pb::ListSecretsResponse, Status> {
    validate::app_name(app).map_err(Error::from)?;
    let listed = ctx
        .store
        .read_current(|s| {
            let a = s.app(app)?;
            let releases = s.releases.get(app).map(Vec::as_slice).unwrap_or_default();
            let secrets = a
                .secrets
                .iter()
                .map(|(name, r)| pb::SecretInfo {
                    name: name.clone(),
                    version: r.version,
                    set_at_ms: r.set_at_ms,
                    swarm_name: r.swarm_name.clone(),
                    swarm_id: r.swarm_id.clone(),
                    release: releases
                        .iter()
                        .rev()
                        .find(|rel| rel.secrets.get(name).is_some_and(|m| m.version == r.version))
                        .map_or(0, |rel| rel.number),
                })
                .collect();
            Ok::<_, crate::state::ApplyError>(pb::ListSecretsResponse { app: app.to_string(), secrets })
        })
        .await?
        .map_err(Error::from)?;
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_set_is_refused_naming_the_field_and_never_the_value() {
        let req = |app: &str, name: &str, value: Vec<u8>| pb::SetSecretRequest {
            app: app.into(),
            name: name.into(),
            value,
            request_id: String::new(),
        };
        assert!(check_set_secret(&req("shop", "DB_PASSWORD", b"hunter2".to_vec())).is_ok());
        let big = vec![b's'; validate::MAX_SECRET_BYTES + 1];
        for (r, why) in [
            (req("Shop", "A", b"v".to_vec()), "invalid app name"),
            (
                req("shop", "../etc/passwd", b"v".to_vec()),
                "invalid secret name: \"../etc/passwd\" is not allowed",
            ),
            (
                req("shop", "A", big),
                "invalid secret value: the value of A is 512001 bytes long; a secret is at most 512000",
            ),
            (req("shop", "A", vec![]), "invalid secret value: the value of A is empty"),
        ] {
            let status = Status::from(check_set_secret(&r).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().starts_with(why), "{why}: {}", status.message());
            assert!(!status.message().contains("sss"), "the value is never echoed");
        }
    }
}
