//! Deploy: create or update the Swarm service that runs one release of an app, then wait
//! until Swarm has converged on it, rolled it back, or given up.
//!
//! To operators the result looks exactly like `docker stack deploy`: the service is named
//! `<stack>_<app>` and labelled `com.docker.stack.namespace=<stack>` (so `docker stack ls` and
//! `docker stack services <stack>` list it), it is attached to the overlay network
//! `<stack>_default` with the alias `<app>`, and its named volumes are `<stack>_<app>_<path>`.
//!
//! ```text
//! ServiceDeploy ──validate + service_spec (pure)──► ServiceSpec
//!   ensure_swarm_manager ─► ensure network <stack>_default (overlay, attachable)
//!   inspect <stack>_<app> ─► create, or update with its version index
//!                            (whole spec replaced; retried on "update out of sequence")
//!   every 500 ms: service UpdateStatus + tasks ─► observe + judge (pure) ─► progress lines
//!   ─► Ok(DeployOutcome) | RolledBack | TasksFailed | Timeout
//! ```
//!
//! A task "belongs" to this deploy when its image is the release's digest and its container
//! carries `io.slipway.release=<release>`: a release number therefore names exactly one spec.
//!
//! What Swarm does on Docker 20.10 (API 1.41), as seen by this module's tests:
//! - With a healthcheck a task stays `starting` until its first healthy probe and only then
//!   becomes `running`: "running" means healthy. A task found unhealthy is stopped; if the app
//!   exits 0 on SIGTERM the task ends `complete` with *no error at all* (an app that ignores
//!   SIGTERM is killed and fails with `non-zero exit (137): dockerexec: unhealthy container`),
//!   so [`deploy`] adds the container's last healthcheck result when this engine runs it.
//! - An update with `failure_action=rollback` and `max_failure_ratio=0` rolls back on the first
//!   task that ends; UpdateStatus goes `updating` → `rollback_started` → `rollback_completed`.
//!   `completed` comes one monitor period after the last task runs, but `rollback_completed`
//!   comes as soon as the rollback's task is *started*: [`deploy`] waits until the previous
//!   release runs again before it reports [`DeployError::RolledBack`] (or, when Swarm still
//!   says `rollback_started`, until the previous release has run for one monitor period).
//! - With host-mode ports a failed task's restart races the rollback: the restarted task
//!   cannot get the port yet and stays `pending`; once the rollback marks it for shutdown it
//!   is never cleaned up (moby/moby#36699), and the rollback's own stop-first task waits
//!   Swarm's one-minute timeout for it before starting. So a host-mode rollback sometimes
//!   takes a minute longer (about one test run in three here); [`deploy`] says so in a
//!   progress line. Ingress mode (start-first) does not wait for old tasks.
//! - In host mode a stop-first update's new task waits a few seconds in `pending` ("no
//!   suitable node (host-mode port already in use on 1 node)") until the old task lets go.
//! - The engine does not resolve images itself for API ≥ 1.30 (that is a client-side option
//!   of the docker CLI), so the spec keeps exactly the `repo@sha256:…` we send.
//! - A task's spec as listed is not equal to the service's task template (the engine fills
//!   in defaults differently), hence the release label to tell tasks apart.
//! - A task whose image cannot be pulled is `rejected` with `No such image: …` and replaced
//!   after the restart delay; a first deploy has nothing to roll back to, so after
//!   [`FAILED_TASKS_LIMIT`] such failures [`deploy`] reports [`DeployError::TasksFailed`] and
//!   leaves the service in place for `docker service ps` (remove it with [`remove_app`]).
//! - `docker swarm init --advertise-addr 127.0.0.1` is accepted: a single-node swarm on
//!   loopback is enough for the tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{HealthStatusEnum, Service, ServiceUpdateStatusStateEnum, Task, TaskState};
use bollard::Docker;
use slipway_proto::validate::Invalid;

mod engine;
mod grants;
mod spec;

use engine::{apply, engine_error, ensure_network, has_status, list_tasks, Applied};
pub use grants::{renew_pull_grant, Renewal};
use spec::validate_names;
pub use spec::{
    monitor_period, network_name, sanitize_path, service_name, service_spec, validate, validate_image,
    volume_name,
};

/// Label `docker stack` uses to group services, networks and volumes into a stack.
pub const LABEL_STACK_NAMESPACE: &str = "com.docker.stack.namespace";
/// Label `docker stack deploy` sets on a service to the image it asked for.
pub const LABEL_STACK_IMAGE: &str = "com.docker.stack.image";
/// Label naming the slipway app a service, container or volume belongs to.
pub const LABEL_APP: &str = "io.slipway.app";
/// Label holding the release number a service (and each of its containers) runs.
pub const LABEL_RELEASE: &str = "io.slipway.release";
/// Service label: when the registry grant stored with the service expires (seconds since
/// the epoch); absent on a service that pulls anonymously.
pub const LABEL_PULL_GRANT_EXPIRES: &str = "io.slipway.pull-grant-expires";

/// How often [`deploy`] polls the service and its tasks while waiting for convergence.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Failed or rejected tasks of a new release after which a deploy that cannot roll back
/// (the first one) is declared failed.
pub const FAILED_TASKS_LIMIT: u32 = 3;
/// Delay before Swarm replaces a task that exited or failed (restart condition `any`).
pub const RESTART_DELAY: Duration = Duration::from_secs(3);
/// Update monitor period when the app has no healthcheck.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

/// The registry credentials a service's tasks pull with: Swarm keeps them with the
/// service (sent as `X-Registry-Auth`) and hands them to whichever node runs a task.
/// `Debug` leaves the secret out.
#[derive(Clone)]
pub struct PullAuth {
    pub credentials: DockerCredentials,
    /// When they stop working (seconds since the epoch), recorded as
    /// [`LABEL_PULL_GRANT_EXPIRES`].
    pub expires: u64,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullAuth")
            .field("username", &self.credentials.username)
            .field("registry", &self.credentials.serveraddress)
            .field("expires", &self.expires)
            .finish()
    }
}

/// One release of one app, as the Swarm service that should run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDeploy {
    /// Stack (namespace) the service belongs to, e.g. `slipway`.
    pub stack: String,
    /// App name; the service is `<stack>_<app>` and its network alias is `<app>`.
    pub app: String,
    /// Image pinned by digest: `registry/app@sha256:<64 hex>`; anything else is refused.
    pub image: String,
    /// Release number, recorded as label `io.slipway.release` on the service and containers.
    pub release: u64,
    /// Number of tasks (replicated mode).
    pub replicas: u32,
    /// Container port, published on the same port number of the host (tcp).
    pub port: Option<u16>,
    /// Environment, passed as `K=V`.
    pub env: BTreeMap<String, String>,
    /// Absolute container paths that become volume mounts (see [`PersistBackend`]).
    pub persist: Vec<String>,
    /// Container healthcheck; overrides the image's `HEALTHCHECK`.
    pub healthcheck: Option<HealthcheckSpec>,
    /// How the port is published.
    pub publish_mode: PublishMode,
    /// Where `persist` directories live.
    pub persist_backend: PersistBackend,
    /// How long [`deploy`] waits for Swarm to converge (or finish a rollback).
    pub converge_timeout: Duration,
}

/// A container healthcheck. Zero durations and zero retries mean Docker's defaults
/// (30 s interval and timeout, no start period, 3 retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckSpec {
    /// `["CMD", prog, args…]`, `["CMD-SHELL", "shell command"]` or `["NONE"]`.
    pub cmd: Vec<String>,
    /// Time between two probes.
    pub interval: Duration,
    /// Time after which one probe counts as failed.
    pub timeout: Duration,
    /// Grace period after start during which failing probes do not count.
    pub start_period: Duration,
    /// Consecutive failures that make the container unhealthy.
    pub retries: u32,
}

/// How a published port reaches the tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PublishMode {
    /// Swarm's routing mesh: the port answers on every node (IPVS). Updates start the new
    /// task before stopping the old one.
    #[default]
    Ingress,
    /// The port is bound on the node that runs the task (single node, tests, no IPVS).
    /// Two tasks cannot hold one host port on one node, so updates stop the old task first.
    Host,
}

/// Where the volumes for `persist` directories come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PersistBackend {
    /// Named local volumes `<stack>_<app>_<sanitized path>` on whichever node runs the task.
    #[default]
    Local,
    /// The same volume names, created by the `local` driver as NFSv4 mounts of
    /// `<addr>:<export_root>/<app>/<sanitized path>`. The directory must exist on the server.
    /// Docker creates a volume with these options on first use on each node and keeps
    /// using an existing volume of that name as it is.
    Nfs {
        /// NFS server address (host name or IP).
        addr: String,
        /// Exported directory that holds one directory per app.
        export_root: String,
    },
}

/// What a successful deploy left running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployOutcome {
    /// Swarm service ID.
    pub service_id: String,
    /// Tasks of this release in state `running` (healthy, when there is a healthcheck).
    pub running: u32,
    /// Replicas asked for.
    pub desired: u32,
    /// Port published on the hosts, if any.
    pub published_port: Option<u16>,
    /// True when the service was created, false when an existing one was updated.
    pub created: bool,
}

/// Why a deploy (or a removal) did not happen or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The [`ServiceDeploy`] was refused before anything reached Docker (bad name, image not
    /// pinned by digest, bad path…). Nothing was changed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The Docker engine did not answer (socket missing, daemon down, request timed out).
    #[error("cannot reach the Docker engine at {socket}: {source}; check that dockerd is running and that this process may use its socket")]
    Engine {
        /// The address the client talks to, e.g. `/var/run/docker.sock`.
        socket: String,
        /// What the client saw.
        #[source]
        source: BollardError,
    },
    /// The engine is not a manager of an active Swarm.
    #[error("this engine is not a Swarm manager: run `docker swarm init` (or point slipway at a manager node); the engine said: {0}")]
    NotAManager(String),
    /// The engine answered but refused an operation (or answered something unreadable).
    #[error("Docker refused to {action}: {message}")]
    Api {
        /// What slipway tried, e.g. `update service slipway_shop`.
        action: String,
        /// The engine's message and HTTP status.
        message: String,
    },
    /// The new release's tasks keep failing and there is nothing to roll back to (first
    /// deploy), or Swarm paused the update or the rollback. The reason is the task's error,
    /// e.g. `No such image: …`, `task: non-zero exit (1)`, or an unhealthy container.
    #[error("the release's tasks failed: {reason}")]
    TasksFailed {
        /// Swarm's last task error or update message.
        reason: String,
    },
    /// Swarm rolled the update back automatically: the previous release keeps running.
    #[error("Swarm rolled the update back, the previous release keeps running: {reason}")]
    RolledBack {
        /// Swarm's update message and the last task error of the new release.
        reason: String,
    },
    /// Swarm did not converge within `converge_timeout`.
    #[error(
        "the service did not converge within {waited:?}: {running}/{desired} tasks of the release running"
    )]
    Timeout {
        /// How long [`deploy`] waited.
        waited: Duration,
        /// Tasks of the release running when it gave up.
        running: u32,
        /// Replicas asked for.
        desired: u32,
    },
}

/// Fails with [`DeployError::NotAManager`] unless the engine manages an active Swarm.
pub async fn ensure_swarm_manager(docker: &Docker) -> Result<(), DeployError> {
    // GET /swarm answers only on managers (503 "not a swarm manager" otherwise).
    docker.inspect_swarm().await.map(drop).map_err(|e| engine_error(docker, "inspect the swarm", e))
}

/// Creates or updates the service `<stack>_<app>` to run `spec`'s release, then waits (up to
/// `spec.converge_timeout`) until `replicas` tasks of the release run, reporting each change
/// through `progress` as a human line.
///
/// `docker` should have negotiated its API version (`negotiate_version().await`): Debian's
/// engine speaks API 1.41.
pub async fn deploy(
    docker: &Docker,
    spec: &ServiceDeploy,
    auth: Option<&PullAuth>,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<DeployOutcome, DeployError> {
    let service_spec = service_spec(spec)?;
    let name = service_name(&spec.stack, &spec.app);
    ensure_swarm_manager(docker).await?;
    ensure_network(docker, &spec.stack).await?;
    let applied = apply(docker, &service_spec, auth, &name, progress).await?;
    progress(format!(
        "service {name}: {} for release {} ({})",
        if applied.created { "created" } else { "updated" },
        spec.release,
        spec.image
    ));
    converge(docker, spec, &name, applied, progress).await
}

/// Polls the service and its tasks until [`judge`] decides, or the timeout passes.
async fn converge(
    docker: &Docker,
    spec: &ServiceDeploy,
    name: &str,
    applied: Applied,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<DeployOutcome, DeployError> {
    let started = Instant::now();
    let deadline = started + spec.converge_timeout;
    // When Swarm has no update status to report (first create, or an update that changed no
    // task) or still says rollback_started while the previous release already runs, the
    // outcome must hold for one monitor period, as Swarm's updater would wait.
    let settle = monitor_period(spec.healthcheck.as_ref());
    let target = Target { image: &spec.image, release: spec.release.to_string(), desired: spec.replicas };
    let mut settled_since: Option<Instant> = None;
    let mut rollback_message: Option<String> = None;
    let mut described: HashMap<String, String> = HashMap::new();
    let mut reported_waits = HashSet::new();
    let mut last_line = String::new();
    loop {
        let service = docker
            .inspect_service(&applied.id, None)
            .await
            .map_err(|e| engine_error(docker, format!("inspect service {name}"), e))?;
        let tasks = list_tasks(docker, &applied.id).await?;
        let mut obs = observe(&service, &tasks, &target, &applied.earlier_tasks);

        for failure in &mut obs.new_failures {
            match described.get(&failure.task_id) {
                Some(description) => failure.error.clone_from(description),
                None => {
                    failure.error = describe_failure(docker, failure).await;
                    described.insert(failure.task_id.clone(), failure.error.clone());
                    progress(format!("service {name}: task {} ended: {}", failure.task_id, failure.error));
                }
            }
        }
        for (task_id, why) in &obs.waiting {
            if reported_waits.insert((task_id.clone(), why.clone())) {
                progress(format!("service {name}: task {task_id} is waiting: {why}"));
            }
        }
        if let (Some(State::ROLLBACK_STARTED), None) = (obs.update_state, &rollback_message) {
            let message = obs.update_message.clone();
            progress(format!(
                "service {name}: release {} failed, Swarm is rolling back: {message}",
                spec.release
            ));
            rollback_message = Some(message);
        }
        let line = progress_line(name, &obs, &target);
        if line != last_line {
            progress(line.clone());
            last_line = line;
        }

        let now = Instant::now();
        let verdict = judge(&obs, &target);
        let settled = match verdict {
            Verdict::Converged { swarm_done } | Verdict::RolledBack { swarm_done } => {
                let since = *settled_since.get_or_insert(now);
                swarm_done || now.duration_since(since) >= settle
            }
            _ => {
                settled_since = None;
                false
            }
        };
        match verdict {
            Verdict::Converged { .. } if settled => {
                progress(format!(
                    "service {name}: release {} converged: {}/{} tasks running",
                    spec.release, obs.running, target.desired
                ));
                return Ok(DeployOutcome {
                    service_id: applied.id,
                    running: obs.running,
                    desired: target.desired,
                    published_port: published_port(&service, spec.port),
                    created: applied.created,
                });
            }
            Verdict::RolledBack { swarm_done } if settled => {
                let mut reason = rollback_reason(rollback_message.as_deref(), &obs);
                if !swarm_done {
                    reason.push_str(" (Swarm still reports rollback_started, but the previous release runs)");
                }
                progress(format!("service {name}: rolled back to release {}: {reason}", obs.service_release));
                return Err(DeployError::RolledBack { reason });
            }
            Verdict::Failed(reason) => {
                progress(format!("service {name}: deploy failed: {reason}"));
                return Err(DeployError::TasksFailed { reason });
            }
            _ => {}
        }
        if now >= deadline {
            let waited = started.elapsed();
            if obs.update_state.is_some_and(is_rollback) {
                let reason = rollback_reason(rollback_message.as_deref(), &obs);
                let (running, desired) = (obs.current_running, target.desired);
                progress(format!(
                    "service {name}: gave up after {waited:?} waiting for release {} to run again: \
                     {running}/{desired} tasks running",
                    obs.service_release
                ));
                // Reporting RolledBack would promise that the previous release runs.
                return Err(if running > 0 {
                    DeployError::RolledBack {
                        reason: format!(
                            "{reason} (the previous release has {running}/{desired} tasks running)"
                        ),
                    }
                } else {
                    DeployError::TasksFailed {
                        reason: format!(
                            "{reason}; Swarm rolled back to release {}, which does not run either",
                            obs.service_release
                        ),
                    }
                });
            }
            progress(format!("service {name}: gave up after {waited:?}"));
            return Err(DeployError::Timeout { waited, running: obs.running, desired: target.desired });
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

fn progress_line(name: &str, obs: &Observation, target: &Target<'_>) -> String {
    let state = obs.update_state.map(|s| format!(" (update {s})")).unwrap_or_default();
    if obs.update_state.is_some_and(is_rollback) {
        format!(
            "service {name}: rolling back to release {}: {}/{} tasks running{state}",
            obs.service_release, obs.current_running, target.desired
        )
    } else {
        format!(
            "service {name}: {}/{} tasks running release {}{state}",
            obs.running, target.desired, target.release
        )
    }
}

fn rollback_reason(message: Option<&str>, obs: &Observation) -> String {
    let message = message.filter(|m| !m.is_empty()).unwrap_or(obs.update_message.as_str());
    match obs.new_failures.last() {
        Some(last) if message.is_empty() => format!("last task error: {}", last.error),
        Some(last) => format!("{message}; last task error: {}", last.error),
        None if message.is_empty() => "Swarm gave no reason".to_owned(),
        None => message.to_owned(),
    }
}

/// The task's error, plus its container's failing healthcheck when this engine runs it
/// (best effort: on another node the container is not visible from here). Needed because
/// a container that exits 0 when Swarm stops it for being unhealthy ends "complete", with
/// no error at all.
async fn describe_failure(docker: &Docker, failure: &Failure) -> String {
    let Some(container_id) = &failure.container_id else {
        return failure.error.clone();
    };
    let Ok(container) = docker.inspect_container(container_id, None).await else {
        return failure.error.clone();
    };
    let Some(health) = container.state.and_then(|s| s.health) else {
        return failure.error.clone();
    };
    if health.status != Some(HealthStatusEnum::UNHEALTHY) {
        return failure.error.clone();
    }
    let last = health.log.unwrap_or_default().pop();
    let probe = match last {
        Some(result) => {
            let output = result.output.unwrap_or_default();
            let output = output.trim();
            let code = result.exit_code.unwrap_or_default();
            if output.is_empty() {
                format!("exit code {code}")
            } else {
                format!("exit code {code}: {}", output.chars().take(200).collect::<String>())
            }
        }
        None => "no probe result".to_owned(),
    };
    format!("{}; the container was unhealthy (last healthcheck: {probe})", failure.error)
}

fn published_port(service: &Service, port: Option<u16>) -> Option<u16> {
    let port = port?;
    let from_endpoint = service
        .endpoint
        .as_ref()
        .and_then(|e| e.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.target_port == Some(i64::from(port))))
        .and_then(|p| p.published_port)
        .and_then(|p| u16::try_from(p).ok());
    from_endpoint.or(Some(port))
}

/// Removes the service `<stack>_<app>` if it exists (when an app is deleted). Its volumes
/// and the stack network stay: they may hold data or serve other apps.
pub async fn remove_app(docker: &Docker, stack: &str, app: &str) -> Result<(), DeployError> {
    validate_names(stack, app)?;
    let name = service_name(stack, app);
    match docker.delete_service(&name).await {
        Ok(()) => Ok(()),
        Err(e) if has_status(&e, 404) => Ok(()),
        Err(e) => Err(engine_error(docker, format!("remove service {name}"), e)),
    }
}

/// What a deploy waits for.
struct Target<'a> {
    image: &'a str,
    release: String,
    desired: u32,
}

/// A task of the new release that ended on its own (failed, rejected, or exited).
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    task_id: String,
    container_id: Option<String>,
    error: String,
}

/// One poll of the service and its tasks, reduced to what [`judge`] needs.
#[derive(Debug, Clone, Default, PartialEq)]
struct Observation {
    update_state: Option<State>,
    update_message: String,
    /// Image and release label of the service's current spec (a rollback puts the previous
    /// release's back).
    service_image: String,
    service_release: String,
    /// Tasks of the target release that should run and do.
    running: u32,
    /// Tasks of the service's current spec that should run and do.
    current_running: u32,
    /// Tasks of the target release created by this deploy that ended, most recent last.
    new_failures: Vec<Failure>,
    /// Tasks that should run but wait, with Swarm's reason (e.g. a host port in use).
    waiting: Vec<(String, String)>,
}

use ServiceUpdateStatusStateEnum as State;

fn is_rollback(state: State) -> bool {
    matches!(state, State::ROLLBACK_STARTED | State::ROLLBACK_PAUSED | State::ROLLBACK_COMPLETED)
}

/// True when the task runs `image` and, if given, carries `io.slipway.release=release`.
fn task_runs(task: &Task, image: &str, release: Option<&str>) -> bool {
    let Some(container) = task.spec.as_ref().and_then(|s| s.container_spec.as_ref()) else {
        return false;
    };
    let label = container.labels.as_ref().and_then(|l| l.get(LABEL_RELEASE)).map(String::as_str);
    container.image.as_deref() == Some(image) && release.is_none_or(|r| label == Some(r))
}

fn task_state(task: &Task) -> Option<TaskState> {
    task.status.as_ref().and_then(|s| s.state)
}

fn is_running(task: &Task) -> bool {
    task.desired_state == Some(TaskState::RUNNING) && task_state(task) == Some(TaskState::RUNNING)
}

fn task_error(task: &Task) -> String {
    let status = task.status.as_ref();
    let err = status.and_then(|s| s.err.as_deref()).filter(|e| !e.is_empty());
    let message = status.and_then(|s| s.message.as_deref()).filter(|m| !m.is_empty());
    match (task_state(task), err, message) {
        (_, Some(err), _) => err.to_owned(),
        (Some(TaskState::COMPLETE), None, _) => "the container exited with code 0".to_owned(),
        (state, None, Some(message)) => {
            format!("{}: {message}", state.map(|s| s.to_string()).unwrap_or_default())
        }
        (state, None, None) => state.map(|s| s.to_string()).unwrap_or_default(),
    }
}

/// Why a task that should start has not, or why a task that never started holds things up.
fn why_waiting(task: &Task) -> Option<String> {
    let err = task.status.as_ref().and_then(|s| s.err.as_deref()).filter(|e| !e.is_empty());
    let unscheduled =
        matches!(task_state(task), Some(TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING));
    match task.desired_state {
        Some(TaskState::READY | TaskState::RUNNING) if !is_running(task) => err.map(str::to_owned),
        // moby/moby#36699: a task that was never scheduled is never marked shut down. A
        // stop-first update or rollback waits for it (up to a minute) before starting the next.
        Some(TaskState::SHUTDOWN) if unscheduled => Some(format!(
            "it was never scheduled ({}) and Swarm may wait up to a minute for it to stop",
            err.unwrap_or("pending")
        )),
        _ => None,
    }
}

fn observe(
    service: &Service,
    tasks: &[Task],
    target: &Target<'_>,
    earlier_tasks: &HashSet<String>,
) -> Observation {
    let status = service.update_status.as_ref();
    let container =
        service.spec.as_ref().and_then(|s| s.task_template.as_ref()).and_then(|t| t.container_spec.as_ref());
    let service_image = container.and_then(|c| c.image.clone()).unwrap_or_default();
    let service_release =
        container.and_then(|c| c.labels.as_ref()).and_then(|l| l.get(LABEL_RELEASE)).cloned();
    let count = |pred: &dyn Fn(&Task) -> bool| {
        u32::try_from(tasks.iter().filter(|t| pred(t)).count()).unwrap_or(u32::MAX)
    };
    let running = count(&|t| is_running(t) && task_runs(t, target.image, Some(&target.release)));
    let current_running =
        count(&|t| is_running(t) && task_runs(t, &service_image, service_release.as_deref()));
    let mut ended: Vec<&Task> = tasks
        .iter()
        .filter(|t| task_runs(t, target.image, Some(&target.release)))
        .filter(|t| !t.id.as_ref().is_some_and(|id| earlier_tasks.contains(id)))
        .filter(|t| {
            matches!(task_state(t), Some(TaskState::FAILED | TaskState::REJECTED | TaskState::COMPLETE))
        })
        .collect();
    ended.sort_by_key(|t| t.version.as_ref().and_then(|v| v.index).unwrap_or_default());
    let waiting =
        tasks.iter().filter_map(|t| Some((t.id.clone().unwrap_or_default(), why_waiting(t)?))).collect();
    Observation {
        update_state: status.and_then(|s| s.state).filter(|s| *s != State::EMPTY),
        update_message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
        service_image,
        service_release: service_release.unwrap_or_default(),
        running,
        current_running,
        new_failures: ended
            .into_iter()
            .map(|t| Failure {
                task_id: t.id.clone().unwrap_or_default(),
                container_id: t
                    .status
                    .as_ref()
                    .and_then(|s| s.container_status.as_ref())
                    .and_then(|c| c.container_id.clone())
                    .filter(|id| !id.is_empty()),
                error: task_error(t),
            })
            .collect(),
        waiting,
    }
}

/// What one observation means for the deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// All replicas of the release run. `swarm_done` when Swarm reports the update completed
    /// (its monitor period passed); otherwise the caller waits one monitor period of stability.
    Converged { swarm_done: bool },
    /// Not there yet (including a rollback whose previous release is not running yet).
    Waiting,
    /// Swarm rolled back and the previous release runs; `swarm_done` when Swarm reports the
    /// rollback completed.
    RolledBack { swarm_done: bool },
    /// The release cannot run and nothing will change that.
    Failed(String),
}

fn judge(obs: &Observation, target: &Target<'_>) -> Verdict {
    let last_error = obs.new_failures.last().map(|f| f.error.as_str()).unwrap_or("no task error");
    match obs.update_state {
        Some(State::ROLLBACK_STARTED | State::ROLLBACK_COMPLETED) => {
            let reverted = obs.service_image != target.image || obs.service_release != target.release;
            if reverted && obs.current_running >= target.desired {
                Verdict::RolledBack { swarm_done: obs.update_state == Some(State::ROLLBACK_COMPLETED) }
            } else {
                Verdict::Waiting
            }
        }
        Some(State::ROLLBACK_PAUSED) => Verdict::Failed(format!(
            "the update failed and so did its rollback ({}); last task error: {last_error}",
            obs.update_message
        )),
        Some(State::PAUSED) => Verdict::Failed(format!(
            "Swarm paused the update ({}); last task error: {last_error}",
            obs.update_message
        )),
        _ if obs.new_failures.len() >= FAILED_TASKS_LIMIT as usize => {
            Verdict::Failed(format!("{} tasks failed, the last with: {last_error}", obs.new_failures.len()))
        }
        _ if obs.service_image != target.image || obs.running < target.desired => Verdict::Waiting,
        None | Some(State::EMPTY) => Verdict::Converged { swarm_done: false },
        Some(State::COMPLETED) => Verdict::Converged { swarm_done: true },
        // Updating: Swarm is still inside its monitor period.
        Some(_) => Verdict::Waiting,
    }
}

#[cfg(test)]
mod tests;
