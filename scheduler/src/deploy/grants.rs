//! Grants: keeping the registry credentials stored with a running service valid. Swarm keeps
//! the pull credentials with the service and hands them to whichever node starts one of its
//! tasks; once they expire, nodes cannot pull the app's image. The dispatcher calls
//! [`renew_pull_grant`] for each deployed app in turn: it swaps the credentials without
//! restarting a task, and leaves a service Swarm is busy with for a later round.

use std::collections::HashMap;

use bollard::models::ServiceUpdateStatusStateEnum;
use bollard::query_parameters::UpdateServiceOptions;
use bollard::Docker;

use super::engine::{engine_error, has_status, is_out_of_sequence};
use super::spec::health_config;
use super::{service_name, DeployError, PullAuth, ServiceDeploy, LABEL_PULL_GRANT_EXPIRES, LABEL_RELEASE};

/// What [`renew_pull_grant`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The service now holds the new credentials.
    Renewed,
    /// Its grant is still good past the renewal point: nothing to do.
    Fresh,
    /// The app has no service.
    NoService,
    /// Due, but not renewed this round, and why (Swarm is updating, rolling back or
    /// paused; the service runs a release slipway does not know; another change came
    /// first).
    Postponed(String),
}

/// Replaces the registry credentials stored with `app`'s service by `auth` if the ones
/// it has expire before `renew_before` (seconds since the epoch). The rest of the spec
/// is sent back as the engine has it, and Swarm does not count pull options as a task
/// change, so no task restarts (`docker service update --with-registry-auth` does the
/// same). A service Swarm is updating, rolling back or has paused is left for a later
/// round: the update would become the spec its rollback returns to, or resume it.
///
/// bollard reads the container's `Healthcheck` under another name (`HealthCheck`) and
/// loses it, which would make the task dirty: the healthcheck of the release the
/// service runs (its [`LABEL_RELEASE`], looked up with `release`) is put back.
pub async fn renew_pull_grant(
    docker: &Docker,
    stack: &str,
    app: &str,
    release: impl Fn(u64) -> Option<ServiceDeploy>,
    auth: &PullAuth,
    renew_before: u64,
) -> Result<Renewal, DeployError> {
    let name = service_name(stack, app);
    let current = match docker.inspect_service(&name, None).await {
        Ok(current) => current,
        Err(e) if has_status(&e, 404) => return Ok(Renewal::NoService),
        Err(e) => return Err(engine_error(docker, format!("inspect service {name}"), e)),
    };
    let Some(mut spec) = current.spec.clone() else { return Ok(Renewal::NoService) };
    let labels = spec.labels.get_or_insert_with(HashMap::new);
    let expires = labels.get(LABEL_PULL_GRANT_EXPIRES).and_then(|v| v.parse::<u64>().ok());
    if expires.is_some_and(|e| e >= renew_before) {
        return Ok(Renewal::Fresh);
    }
    let state = current.update_status.as_ref().and_then(|u| u.state);
    if let Some(
        state @ (ServiceUpdateStatusStateEnum::UPDATING
        | ServiceUpdateStatusStateEnum::ROLLBACK_STARTED
        | ServiceUpdateStatusStateEnum::PAUSED
        | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED),
    ) = state
    {
        return Ok(Renewal::Postponed(format!("Swarm's update state is {state}")));
    }
    let running = labels.get(LABEL_RELEASE).and_then(|v| v.parse::<u64>().ok());
    let Some(release) = running.and_then(&release) else {
        return Ok(Renewal::Postponed(format!(
            "the service runs release {:?}, which slipway does not know",
            labels.get(LABEL_RELEASE)
        )));
    };
    labels.insert(LABEL_PULL_GRANT_EXPIRES.to_owned(), auth.expires.to_string());
    if let Some(container) = spec.task_template.as_mut().and_then(|t| t.container_spec.as_mut()) {
        container.health_check = release.healthcheck.as_ref().map(health_config);
    }
    let id = current.id.clone().unwrap_or(name.clone());
    let index = current.version.as_ref().and_then(|v| v.index).unwrap_or_default();
    let version = i32::try_from(index).map_err(|_| DeployError::Api {
        action: format!("update service {name}"),
        message: format!("its version index {index} does not fit the API client's 32-bit field"),
    })?;
    let options = UpdateServiceOptions { version, ..Default::default() };
    match docker.update_service(&id, spec, options, Some(auth.credentials.clone())).await {
        Ok(_) => Ok(Renewal::Renewed),
        Err(e) if is_out_of_sequence(&e) => Ok(Renewal::Postponed("another change came first".into())),
        Err(e) => Err(engine_error(docker, format!("update service {name}"), e)),
    }
}
