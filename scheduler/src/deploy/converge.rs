//! Converge: after the service is created or updated, poll it and its tasks every
//! [`POLL_INTERVAL`] until Swarm has converged on the release, rolled it back, or given up.
//! [`observe`] reduces one poll to an [`Observation`] and [`judge`] says what it means (both
//! pure, tested on hand-made engine answers in `converge_tests.rs`); [`converge`] turns the
//! changes into progress lines and a failed task into its error, healthcheck included. A task
//! of the release that Swarm cannot place is tracked across polls by a [`PlacementWatch`]
//! (pure too, given the time); once one has been unplaceable for the patience, [`give_up`]
//! says whether to ask Swarm to roll back or to fail.
//!
//! What Swarm does on Docker 20.10 (API 1.41), as seen by the deploy tests:
//! - With a healthcheck a task stays `starting` until its first healthy probe and only then
//!   becomes `running`: "running" means healthy. A task found unhealthy is stopped; if the app
//!   exits 0 on SIGTERM the task ends `complete` with *no error at all* (an app that ignores
//!   SIGTERM is killed and fails with `non-zero exit (137): dockerexec: unhealthy container`),
//!   so [`describe_failure`] adds the container's last healthcheck result when this engine
//!   runs it.
//! - An update with `failure_action=rollback` and `max_failure_ratio=0` rolls back on the first
//!   task that ends; UpdateStatus goes `updating` → `rollback_started` → `rollback_completed`.
//!   `completed` comes one monitor period after the last task runs, but `rollback_completed`
//!   comes as soon as the rollback's task is *started*: [`converge`] waits until the previous
//!   release runs again before it reports [`DeployError::RolledBack`] (or, when Swarm still
//!   says `rollback_started`, until the previous release has run for one monitor period).
//! - With host-mode ports a failed task's restart races the rollback: the restarted task
//!   cannot get the port yet and stays `pending`; once the rollback marks it for shutdown it
//!   is never cleaned up (moby/moby#36699), and the rollback's own stop-first task waits
//!   Swarm's one-minute timeout for it before starting. So a host-mode rollback sometimes
//!   takes a minute longer (about one test run in three here); [`converge`] says so in a
//!   progress line. Ingress mode (start-first) does not wait for old tasks.
//! - In host mode a stop-first update's new task waits a few seconds in `pending` ("no
//!   suitable node (host-mode port already in use on 1 node)") until the old task lets go.
//! - A task that no node can take (`no suitable node (scheduling constraints not satisfied on
//!   1 node)`, a host port another service holds, `insufficient resources`) stays `pending`
//!   for ever: Swarm's updater waits for it without a timeout and never rolls back on its
//!   own. [`converge`] gives up once such an error has lasted [`PLACEMENT_PATIENCE`]
//!   ([`PLACEMENT_PATIENCE_HOST_PORT`] for a release with a host-mode port, whose stop-first
//!   update waits for the old task legitimately): on a first deploy with
//!   [`DeployError::TasksFailed`], on an update by asking Swarm to roll back (`docker service
//!   rollback`) and waiting, as for Swarm's own rollbacks, until the previous release runs.
//!   A start-first rollback keeps the old task, which never stopped, and is over at once. A
//!   stop-first one (host-mode port) has already stopped the old task, and Swarm first waits
//!   its one-minute timeout for the never-scheduled task to stop (moby/moby#36699 again), so
//!   the previous release runs again about 60 s after the rollback is asked for.
//! - A task's spec as listed is not equal to the service's task template (the engine fills
//!   in defaults differently), hence the release label to tell tasks apart.
//! - A task whose image cannot be pulled is `rejected` with `No such image: …` and replaced
//!   after the restart delay; a first deploy has nothing to roll back to, so after
//!   [`FAILED_TASKS_LIMIT`] such failures [`converge`] reports [`DeployError::TasksFailed`] and
//!   leaves the service in place for `docker service ps` (remove it with
//!   [`remove_app`](super::remove_app)).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bollard::models::{HealthStatusEnum, Service, ServiceUpdateStatusStateEnum as State, Task, TaskState};
use bollard::Docker;

use super::engine::{engine_error, list_tasks, roll_back, Applied, Replaced};
use super::spec::host_port;
use super::{
    monitor_period, DeployError, DeployOutcome, ServiceDeploy, FAILED_TASKS_LIMIT, LABEL_RELEASE,
    PLACEMENT_PATIENCE, PLACEMENT_PATIENCE_HOST_PORT, POLL_INTERVAL,
};

/// Polls the service and its tasks until [`judge`] decides, or the timeout passes.
pub(super) async fn converge(
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
    let patience = if host_port(spec).is_some() { PLACEMENT_PATIENCE_HOST_PORT } else { PLACEMENT_PATIENCE };
    let mut placement = PlacementWatch::new(patience);
    // Set once the deploy gave up on a task Swarm cannot place (and asked for a rollback).
    let mut gave_up_placing = false;
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
        // Swarm's own rollback shuts the release's tasks down: nothing left to place.
        if !gave_up_placing && !obs.update_state.is_some_and(is_rollback) {
            if let Some(error) = placement.check(&obs.unplaceable, now) {
                gave_up_placing = true;
                let reason = placement_reason(&target.release, &error);
                match give_up(applied.replaced.as_ref(), &target) {
                    GiveUp::Fail => {
                        progress(format!(
                            "service {name}: deploy failed after {patience:?} of waiting: {reason}"
                        ));
                        return Err(DeployError::TasksFailed { reason });
                    }
                    GiveUp::RollBack { to_release } => {
                        progress(format!(
                            "service {name}: giving up on release {} after {patience:?} of waiting: \
                             {reason}; asking Swarm to roll back to release {to_release}",
                            spec.release
                        ));
                        if let Err(err) = roll_back(docker, &applied.id, name, spec.release).await {
                            return Err(DeployError::TasksFailed {
                                reason: format!("{reason}; and the rollback failed: {err}"),
                            });
                        }
                        rollback_message = Some(reason);
                    }
                }
            }
        }
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
                    published_port: published_port(&service, spec.publish, spec.port),
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

/// Why the update was rolled back: Swarm's message (or why the deploy gave up placing a task)
/// and the error of the task failure that caused it (see [`cause`]).
fn rollback_reason(message: Option<&str>, obs: &Observation) -> String {
    let message = message.filter(|m| !m.is_empty()).unwrap_or(obs.update_message.as_str());
    match cause(message, &obs.new_failures) {
        Some(cause) if message.is_empty() => format!("task error: {}", cause.error),
        Some(cause) => format!("{message}; task error: {}", cause.error),
        None if message.is_empty() => "Swarm gave no reason".to_owned(),
        None => message.to_owned(),
    }
}

/// The failed task of the release that made Swarm roll back or pause: the one its message
/// names ("update rolled back due to failure or early termination of task <id>"), else the
/// first to end. Those that end later are mostly tasks Swarm stopped on the way, whose errors
/// are incidental (`error while removing network: …`).
fn cause<'a>(message: &str, failures: &'a [Failure]) -> Option<&'a Failure> {
    failures
        .iter()
        .find(|f| !f.task_id.is_empty() && message.contains(f.task_id.as_str()))
        .or(failures.first())
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
    // A container that exited before its first probe is "unhealthy" with no result:
    // its exit is the reason, not the healthcheck.
    let Some(last) = health.log.unwrap_or_default().pop() else {
        return failure.error.clone();
    };
    let output = last.output.unwrap_or_default();
    let output = output.trim();
    let code = last.exit_code.unwrap_or_default();
    let probe = if output.is_empty() {
        format!("exit code {code}")
    } else {
        format!("exit code {code}: {}", output.chars().take(200).collect::<String>())
    };
    format!("{}; the container was unhealthy (last healthcheck: {probe})", failure.error)
}

/// The host port published to `port` as the engine reports it, else the one asked for.
fn published_port(service: &Service, publish: Option<u16>, port: Option<u16>) -> Option<u16> {
    let publish = publish?;
    let from_endpoint = service
        .endpoint
        .as_ref()
        .and_then(|e| e.ports.as_ref())
        .and_then(|ports| {
            ports.iter().find(|p| port.is_some_and(|port| p.target_port == Some(i64::from(port))))
        })
        .and_then(|p| p.published_port)
        .and_then(|p| u16::try_from(p).ok());
    from_endpoint.or(Some(publish))
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
    /// Tasks of the target release that should run but that Swarm finds no node for, with
    /// its placement error (see [`placement_error`]).
    unplaceable: Vec<(String, String)>,
}

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

/// Swarm's error for a task of the release that should run but that its scheduler finds no
/// node for: the task is not scheduled yet and its error is a placement error (see
/// [`is_placement_error`]).
fn placement_error(task: &Task) -> Option<&str> {
    let err = task.status.as_ref().and_then(|s| s.err.as_deref())?;
    let unscheduled =
        matches!(task_state(task), Some(TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING));
    let should_run = matches!(task.desired_state, Some(TaskState::READY | TaskState::RUNNING));
    (should_run && unscheduled && is_placement_error(err)).then_some(err)
}

/// True for the errors swarmkit's scheduler leaves on a task it cannot place: `no suitable
/// node (<why> on <n> nodes; …)` (scheduling constraints, host-mode port in use, platform,
/// max replicas per node, nodes not available) and resource shortages (`insufficient
/// resources on <n> nodes`).
fn is_placement_error(err: &str) -> bool {
    err.starts_with("no suitable node") || err.contains("insufficient resources")
}

/// The reason a deploy gives when it gives up on a task Swarm cannot place.
fn placement_reason(release: &str, error: &str) -> String {
    format!("a task of release {release} cannot be placed: {error}")
}

/// How long each task of the release has been unplaceable, across polls.
#[derive(Debug)]
struct PlacementWatch {
    patience: Duration,
    /// Task ID → when it was first seen unplaceable (in this unbroken run of polls).
    since: HashMap<String, Instant>,
}

impl PlacementWatch {
    fn new(patience: Duration) -> Self {
        PlacementWatch { patience, since: HashMap::new() }
    }

    /// Records one poll's unplaceable tasks (task ID, error) seen at `now`, forgetting
    /// those no longer in it; Swarm's latest error for one that has been unplaceable for
    /// the patience, if any.
    fn check(&mut self, unplaceable: &[(String, String)], now: Instant) -> Option<String> {
        self.since.retain(|id, _| unplaceable.iter().any(|(task, _)| task == id));
        let mut overdue = None;
        for (task, error) in unplaceable {
            let since = *self.since.entry(task.clone()).or_insert(now);
            if overdue.is_none() && now.duration_since(since) >= self.patience {
                overdue = Some(error.clone());
            }
        }
        overdue
    }
}

/// What a deploy does about a task of its release that Swarm could not place in time.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GiveUp {
    /// Ask Swarm to roll back to the service's previous spec, which runs `to_release`.
    RollBack { to_release: String },
    /// Nothing else to go back to (first deploy, or the previous spec is this release):
    /// fail, and leave the service for `docker service ps`.
    Fail,
}

/// `replaced` is the spec this deploy's update replaced (see [`Applied::replaced`]), the one
/// Swarm's rollback returns to; `None` when the deploy created the service.
fn give_up(replaced: Option<&Replaced>, target: &Target<'_>) -> GiveUp {
    match replaced {
        Some(r) if r.image != target.image || r.release != target.release => {
            GiveUp::RollBack { to_release: r.release.clone() }
        }
        _ => GiveUp::Fail,
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
    let unplaceable = tasks
        .iter()
        .filter(|t| task_runs(t, target.image, Some(&target.release)))
        .filter_map(|t| Some((t.id.clone().unwrap_or_default(), placement_error(t)?.to_owned())))
        .collect();
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
        unplaceable,
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
    let cause_error =
        cause(&obs.update_message, &obs.new_failures).map(|f| f.error.as_str()).unwrap_or("no task error");
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
            "the update failed and so did its rollback ({}); task error: {cause_error}",
            obs.update_message
        )),
        Some(State::PAUSED) => Verdict::Failed(format!(
            "Swarm paused the update ({}); task error: {cause_error}",
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
#[path = "converge_tests.rs"]
mod tests;
