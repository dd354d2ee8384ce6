//! Secrets: the Swarm secrets that hold app secrets' values, and their mounts.
//!
//! Swarm keeps a secret's value encrypted in its own raft and hands it, as a file under
//! `/run/secrets/<target>`, only to the tasks of services that reference it. Swarm secrets
//! are immutable, so each `slipway secrets set` makes a new one, `<stack>_<app>_<name>_v<N>`,
//! labelled with the stack and app (`docker secret ls --filter label=io.slipway.app=shop`
//! shows what owns it). A release mounts the version it records; once a release is
//! deployed, [`prune`] removes the app's Swarm secrets no release still pending or
//! running mounts.
//!
//! Nothing here logs a value: [`create`] takes the bytes and passes them straight to the
//! engine.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use bollard::models::{SecretSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets};
use bollard::query_parameters::ListSecretsOptions;
use bollard::Docker;

use super::engine::engine_error;
use super::{has_status, DeployError, LABEL_APP, LABEL_STACK_NAMESPACE};

/// Label on a Swarm secret: the app secret's name (the file under /run/secrets).
pub const LABEL_SECRET: &str = "io.slipway.secret";
/// Label on a Swarm secret: the version it holds.
pub const LABEL_SECRET_VERSION: &str = "io.slipway.secret-version";

/// One secret a service mounts: `/run/secrets/<name>` from the Swarm secret `swarm_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    /// The file name under /run/secrets.
    pub name: String,
    /// The Swarm secret's id.
    pub swarm_id: String,
    /// The Swarm secret's name (for display; Swarm resolves the id).
    pub swarm_name: String,
}

/// The container spec's secret references: read-only files owned by root, readable by
/// the app whatever user it runs as (Swarm's default mode, 0444).
pub(super) fn secret_refs(mounts: &[SecretMount]) -> Vec<TaskSpecContainerSpecSecrets> {
    mounts
        .iter()
        .map(|m| TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some(m.name.clone()),
                uid: Some("0".into()),
                gid: Some("0".into()),
                mode: Some(0o444),
            }),
            secret_id: Some(m.swarm_id.clone()),
            secret_name: Some(m.swarm_name.clone()),
        })
        .collect()
}

/// Stores `value` as the Swarm secret `swarm_name`, labelled as the app's; returns its id.
/// A name already taken (a set racing another) is refused by Swarm with 409.
pub async fn create(
    docker: &Docker,
    stack: &str,
    app: &str,
    name: &str,
    version: u32,
    swarm_name: &str,
    value: &[u8],
) -> Result<String, DeployError> {
    let labels = HashMap::from([
        (LABEL_STACK_NAMESPACE.to_owned(), stack.to_owned()),
        (LABEL_APP.to_owned(), app.to_owned()),
        (LABEL_SECRET.to_owned(), name.to_owned()),
        (LABEL_SECRET_VERSION.to_owned(), version.to_string()),
    ]);
    let spec = SecretSpec {
        name: Some(swarm_name.to_owned()),
        labels: Some(labels),
        data: Some(base64::engine::general_purpose::STANDARD.encode(value)),
        ..Default::default()
    };
    let created = docker
        .create_secret(spec)
        .await
        .map_err(|e| engine_error(docker, format!("create the Swarm secret {swarm_name}"), e))?;
    Ok(created.id)
}

/// Removes a Swarm secret; one already gone is fine.
pub async fn remove(docker: &Docker, swarm_id: &str) -> Result<(), DeployError> {
    match docker.delete_secret(swarm_id).await {
        Ok(()) => Ok(()),
        Err(e) if has_status(&e, 404) => Ok(()),
        Err(e) => Err(engine_error(docker, format!("remove the Swarm secret {swarm_id}"), e)),
    }
}

/// The app's Swarm secrets (id, name), by their stack and app labels.
pub async fn list(docker: &Docker, stack: &str, app: &str) -> Result<Vec<(String, String)>, DeployError> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_STACK_NAMESPACE}={stack}"), format!("{LABEL_APP}={app}")],
    )]);
    let secrets = docker
        .list_secrets(Some(ListSecretsOptions { filters: Some(filters) }))
        .await
        .map_err(|e| engine_error(docker, format!("list the Swarm secrets of {app}"), e))?;
    Ok(secrets
        .into_iter()
        .filter_map(|s| Some((s.id?, s.spec.and_then(|spec| spec.name).unwrap_or_default())))
        .collect())
}

/// Removes the app's Swarm secrets whose ids are not in `keep` (what the app's records and
/// its releases still pending or running mount). Returns the names removed; a secret Swarm
/// refuses to remove (still used by a service) stays, for the next prune.
pub async fn prune(
    docker: &Docker,
    stack: &str,
    app: &str,
    keep: &HashSet<String>,
) -> Result<Vec<String>, DeployError> {
    let mut removed = Vec::new();
    for (id, name) in list(docker, stack, app).await? {
        if keep.contains(&id) {
            continue;
        }
        match remove(docker, &id).await {
            Ok(()) => removed.push(name),
            Err(err) => tracing::warn!(secret = %name, %err, "cannot remove an unused Swarm secret yet"),
        }
    }
    Ok(removed)
}
