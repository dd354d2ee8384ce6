//! Engine: the Docker engine calls a deploy makes, and what their errors mean. bollard errors
//! are sorted into [`DeployError`]s a caller can act on; the stack's overlay network is created
//! when missing; [`apply`] creates the service or replaces its spec with the version index it
//! read, retrying while Swarm answers "update out of sequence" (another change came first) and
//! turning a concurrent creation into an update; [`roll_back`] asks Swarm to go back to the
//! service's previous spec. The tests are in `engine_tests.rs`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{NetworkCreateRequest, ServiceSpec, ServiceUpdateStatusStateEnum, Task};
use bollard::query_parameters::{ListTasksOptions, UpdateServiceOptions};
use bollard::Docker;
use slipway_common::Backoff;

use super::{
    network_name, DeployError, PullAuth, LABEL_PULL_GRANT_EXPIRES, LABEL_RELEASE, LABEL_STACK_NAMESPACE,
};

/// How many times an update is retried when Swarm answers "update out of sequence".
const UPDATE_ATTEMPTS: u32 = 5;

/// The address `docker` talks to, for error messages. bollard keeps it private but prints it
/// in its `Debug` output (`client_addr`); `DOCKER_HOST` or the default socket otherwise.
fn engine_socket(docker: &Docker) -> String {
    let debug = format!("{docker:?}");
    debug
        .split_once("client_addr: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(addr, _)| addr.to_owned())
        .filter(|addr| !addr.is_empty())
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned())
}

/// Sorts a bollard error into what the caller can act on.
pub(crate) fn engine_error(docker: &Docker, action: impl Into<String>, err: BollardError) -> DeployError {
    match err {
        BollardError::DockerResponseServerError { status_code, message } => {
            if status_code == 503 && message.contains("not a swarm manager") {
                DeployError::NotAManager(message)
            } else {
                DeployError::Api { action: action.into(), message: format!("{message} (HTTP {status_code})") }
            }
        }
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => DeployError::Api {
            action: action.into(),
            message: format!("unreadable answer from the engine: {err}"),
        },
        other => DeployError::Engine { socket: engine_socket(docker), source: other },
    }
}

pub(crate) fn has_status(err: &BollardError, status: u16) -> bool {
    matches!(err, BollardError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

pub(crate) fn is_out_of_sequence(err: &BollardError) -> bool {
    matches!(err, BollardError::DockerResponseServerError { message, .. } if message.contains("update out of sequence"))
}

/// A concurrent creation won: Docker says 409, or swarmkit's "name conflicts with an existing
/// object" (HTTP 500 on Docker 20.10).
fn is_already_exists(err: &BollardError) -> bool {
    has_status(err, 409)
        || matches!(err, BollardError::DockerResponseServerError { message, .. }
            if message.contains("already exists") || message.contains("name conflicts with an existing object"))
}

/// Creates the stack's overlay network if it is missing; a concurrent creation is fine.
pub(crate) async fn ensure_network(docker: &Docker, stack: &str) -> Result<(), DeployError> {
    let name = network_name(stack);
    match docker.inspect_network(&name, None).await {
        Ok(network) if network.scope.as_deref() == Some("swarm") => return Ok(()),
        Ok(network) => {
            let (driver, scope) = (network.driver.unwrap_or_default(), network.scope.unwrap_or_default());
            return Err(DeployError::Api {
                action: format!("use network {name}"),
                message: format!("a {driver} network of scope {scope} holds that name; remove it"),
            });
        }
        Err(e) if has_status(&e, 404) => {}
        Err(e) => return Err(engine_error(docker, format!("inspect network {name}"), e)),
    }
    let request = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("overlay".to_owned()),
        attachable: Some(true),
        labels: Some(HashMap::from([(LABEL_STACK_NAMESPACE.to_owned(), stack.to_owned())])),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => Ok(()),
        Err(e) if is_already_exists(&e) => Ok(()),
        Err(e) => Err(engine_error(docker, format!("create network {name}"), e)),
    }
}

/// IDs of the tasks a service has now, so failures from earlier deploys are not counted.
pub(super) async fn task_ids(docker: &Docker, service_id: &str) -> Result<HashSet<String>, DeployError> {
    Ok(list_tasks(docker, service_id).await?.into_iter().filter_map(|t| t.id).collect())
}

pub(super) async fn list_tasks(docker: &Docker, service_id: &str) -> Result<Vec<Task>, DeployError> {
    let filters = HashMap::from([("service".to_owned(), vec![service_id.to_owned()])]);
    docker
        .list_tasks(Some(ListTasksOptions { filters: Some(filters) }))
        .await
        .map_err(|e| engine_error(docker, format!("list the tasks of service {service_id}"), e))
}

/// The service as it exists after [`apply`].
pub(super) struct Applied {
    pub(super) id: String,
    pub(super) created: bool,
    /// Tasks that existed before this deploy.
    pub(super) earlier_tasks: HashSet<String>,
    /// The spec an update replaced, which Swarm keeps as the service's previous spec (what a
    /// rollback returns to; bollard's `Service` does not read `PreviousSpec`). `None` when
    /// the service was created.
    pub(super) replaced: Option<Replaced>,
}

/// Which release a service spec ran: its image and its [`LABEL_RELEASE`] (empty without).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Replaced {
    pub(super) image: String,
    pub(super) release: String,
}

impl Replaced {
    fn of(spec: Option<&ServiceSpec>) -> Replaced {
        let container = spec.and_then(|s| s.task_template.as_ref()).and_then(|t| t.container_spec.as_ref());
        let label = container.and_then(|c| c.labels.as_ref()).and_then(|l| l.get(LABEL_RELEASE));
        Replaced {
            image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
            release: label.cloned().unwrap_or_default(),
        }
    }
}

/// Creates the service, or replaces the spec of the existing one (with its version index,
/// retrying when Swarm answers "update out of sequence").
pub(super) async fn apply(
    docker: &Docker,
    spec: &ServiceSpec,
    auth: Option<&PullAuth>,
    name: &str,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Applied, DeployError> {
    let mut spec = spec.clone();
    if let (Some(auth), Some(labels)) = (auth, spec.labels.as_mut()) {
        labels.insert(LABEL_PULL_GRANT_EXPIRES.to_owned(), auth.expires.to_string());
    }
    let credentials = auth.map(|a| a.credentials.clone());
    let mut last_error = String::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
    for _ in 0..UPDATE_ATTEMPTS {
        let current = match docker.inspect_service(name, None).await {
            Ok(current) => current,
            Err(e) if has_status(&e, 404) => {
                match docker.create_service(spec.clone(), credentials.clone()).await {
                    Ok(created) => {
                        for warning in created.warnings.unwrap_or_default() {
                            progress(format!("service {name}: engine warning: {warning}"));
                        }
                        let id = created.id.unwrap_or_else(|| name.to_owned());
                        return Ok(Applied {
                            id,
                            created: true,
                            earlier_tasks: HashSet::new(),
                            replaced: None,
                        });
                    }
                    // Created by a concurrent deploy in the meantime: update it instead.
                    Err(e) if is_already_exists(&e) => {
                        last_error = e.to_string();
                        continue;
                    }
                    Err(e) => return Err(engine_error(docker, format!("create service {name}"), e)),
                }
            }
            Err(e) => return Err(engine_error(docker, format!("inspect service {name}"), e)),
        };
        // The fence: checked against the spec this update replaces, and the update names
        // that spec's version index, so a newer release written meanwhile makes Swarm
        // answer "out of sequence" and this check runs again.
        let running =
            current.spec.as_ref().and_then(|s| s.labels.as_ref()).and_then(|l| l.get(LABEL_RELEASE));
        let applying = spec.labels.as_ref().and_then(|l| l.get(LABEL_RELEASE)).and_then(|r| r.parse().ok());
        if let Some(release) = applying {
            if let Err(running) = super::fence(running.map(String::as_str), release) {
                return Err(DeployError::Fenced { service: name.to_owned(), running, release });
            }
        }
        let id = current.id.clone().unwrap_or_else(|| name.to_owned());
        let earlier_tasks = task_ids(docker, &id).await?;
        let index = current.version.as_ref().and_then(|v| v.index).unwrap_or_default();
        let version = i32::try_from(index).map_err(|_| DeployError::Api {
            action: format!("update service {name}"),
            message: format!("its version index {index} does not fit the API client's 32-bit field"),
        })?;
        let mut next = spec.clone();
        // Like `docker stack deploy` (which has no --force): keep the existing ForceUpdate.
        if let (Some(task), Some(current_task)) =
            (next.task_template.as_mut(), current.spec.as_ref().and_then(|s| s.task_template.as_ref()))
        {
            task.force_update = current_task.force_update;
        }
        // Without credentials (an anonymous registry) the engine keeps any the service has.
        let options = UpdateServiceOptions { version, ..Default::default() };
        match docker.update_service(&id, next, options, credentials.clone()).await {
            Ok(updated) => {
                for warning in updated.warnings.unwrap_or_default() {
                    progress(format!("service {name}: engine warning: {warning}"));
                }
                let replaced = Some(Replaced::of(current.spec.as_ref()));
                return Ok(Applied { id, created: false, earlier_tasks, replaced });
            }
            Err(e) if is_out_of_sequence(&e) => {
                last_error = e.to_string();
                backoff.wait().await;
            }
            Err(e) => return Err(engine_error(docker, format!("update service {name}"), e)),
        }
    }
    Err(DeployError::Api {
        action: format!("update service {name}"),
        message: format!("gave up after {UPDATE_ATTEMPTS} attempts: {last_error}"),
    })
}

/// Asks Swarm to roll the service back to its previous spec, as `docker service rollback`
/// does: the current spec goes back with `rollback=previous` (Swarm checks it, then swaps in
/// the previous one) and the service's version index, retried while Swarm answers "update
/// out of sequence" (its updater writes the update status meanwhile). Swarm then reports
/// `rollback_started` with the message "manually requested rollback". Nothing is asked when
/// Swarm is rolling back already: asked again, it would swap the new spec back in.
pub(super) async fn roll_back(
    docker: &Docker,
    id: &str,
    name: &str,
    release: u64,
) -> Result<(), DeployError> {
    let action = || format!("roll back service {name}");
    let mut last_error = String::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
    for _ in 0..UPDATE_ATTEMPTS {
        let current =
            docker.inspect_service(id, None).await.map_err(|e| engine_error(docker, action(), e))?;
        let state = current.update_status.as_ref().and_then(|u| u.state);
        if let Some(
            ServiceUpdateStatusStateEnum::ROLLBACK_STARTED
            | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED
            | ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED,
        ) = state
        {
            return Ok(());
        }
        // Only the release this deploy applied is rolled back: once a newer one replaced
        // it (a newer leader's deploy), the previous spec is not ours to go back to.
        let running =
            current.spec.as_ref().and_then(|s| s.labels.as_ref()).and_then(|l| l.get(LABEL_RELEASE));
        if let Err(running) = super::fence(running.map(String::as_str), release) {
            return Err(DeployError::Fenced { service: name.to_owned(), running, release });
        }
        let index = current.version.as_ref().and_then(|v| v.index).unwrap_or_default();
        let version = i32::try_from(index).map_err(|_| DeployError::Api {
            action: action(),
            message: format!("its version index {index} does not fit the API client's 32-bit field"),
        })?;
        let options =
            UpdateServiceOptions { version, rollback: Some("previous".into()), ..Default::default() };
        match docker.update_service(id, current.spec.unwrap_or_default(), options, None).await {
            Ok(_) => return Ok(()),
            Err(e) if is_out_of_sequence(&e) => {
                last_error = e.to_string();
                backoff.wait().await;
            }
            Err(e) => return Err(engine_error(docker, action(), e)),
        }
    }
    Err(DeployError::Api {
        action: action(),
        message: format!("gave up after {UPDATE_ATTEMPTS} attempts: {last_error}"),
    })
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
