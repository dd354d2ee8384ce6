//! Observe: what an app's Swarm service does now, read from the manager for operators.
//! [`service_view`] gives its tasks (node, state as Swarm names it, release, since, error)
//! for `apps show`; [`app_logs`] streams what they print for `apps logs`.
//!
//! A task's release is the `io.slipway.release` label of its container spec (every spec
//! slipway writes carries it, see `spec.rs`), so a task keeps naming the release it ran
//! after the service moved on.
//!
//! Logs are read per task (`GET /tasks/{id}/logs`, the same Swarm log broker `docker
//! service logs` reads) rather than per service: the service endpoint names a line's task
//! and node only with `details=true`, which bollard's `LogsOptions` cannot send, and per
//! task every line is attributed without parsing. With `follow`, the task list is read
//! again every [`FOLLOW_RESCAN`] and tasks started since are followed from the start.
//! Without it, a task whose node does not answer for [`LOG_IDLE_LIMIT`] ends with a note
//! instead of holding the command forever (Swarm's broker waits for every node).
//!
//! The pure parts ([`task_view`], [`release_of`], [`split_log_frame`]) are tested at the bottom.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::models::{Task, TaskState};
use bollard::query_parameters::{ListNodesOptions, LogsOptions};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::engine::list_tasks;
use super::{engine_error, has_status, service_name, DeployError, LABEL_RELEASE};

/// How often `follow` looks for tasks started since it began.
pub const FOLLOW_RESCAN: Duration = Duration::from_secs(2);
/// How long a task's log may stay silent, without `follow`, before it is given up.
pub const LOG_IDLE_LIMIT: Duration = Duration::from_secs(10);
/// Lines buffered between the task readers and the caller.
const LOG_BUFFER_LINES: usize = 256;

/// One Swarm task of an app, as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskView {
    /// Swarm's task id.
    pub id: String,
    /// Replica slot, 1-based (0 when Swarm gives none).
    pub slot: u64,
    /// The Swarm node's id (empty until assigned).
    pub node_id: String,
    /// The Swarm node's host name; its id when unknown; empty when unassigned.
    pub node: String,
    /// Swarm's name for the state: `running`, `failed`, `shutdown`…
    pub state: String,
    /// What Swarm wants the task to be (`running`, `shutdown`…).
    pub desired_state: String,
    /// The release its spec runs (0: no `io.slipway.release` label).
    pub release: u64,
    /// When the task entered `state` (ms since the epoch; 0 unknown).
    pub since_ms: u64,
    /// Swarm's error for the task (`task: non-zero exit (1)`; empty: none).
    pub error: String,
    /// Swarm's last message for the task (`started`).
    pub message: String,
    /// The image its spec runs.
    pub image: String,
    /// The container, once Swarm started one (tasks without one have no log).
    pub container_id: Option<String>,
}

/// An app's Swarm service as [`service_view`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// Replicas the service spec asks for.
    pub desired_replicas: u64,
    /// Every task Swarm keeps, by slot, newest first within a slot.
    pub tasks: Vec<TaskView>,
}

impl ServiceView {
    /// Tasks running now.
    pub fn running(&self) -> u64 {
        self.tasks.iter().filter(|t| t.state == "running").count() as u64
    }
}

/// The release a task runs: its container spec's [`LABEL_RELEASE`], 0 without one.
pub fn release_of(task: &Task) -> u64 {
    task.spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(LABEL_RELEASE))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn state_name(state: Option<&TaskState>) -> String {
    state.map(|s| s.to_string()).unwrap_or_default()
}

/// Milliseconds since the epoch of an RFC 3339 time as Docker writes it (0 if unreadable).
fn rfc3339_ms(at: &str) -> u64 {
    humantime::parse_rfc3339_weak(at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A task as operators read it; `node_names` maps Swarm node ids to host names.
pub fn task_view(task: &Task, node_names: &HashMap<String, String>) -> TaskView {
    let status = task.status.as_ref();
    let node_id = task.node_id.clone().unwrap_or_default();
    let node = node_names.get(&node_id).cloned().unwrap_or_else(|| node_id.clone());
    TaskView {
        id: task.id.clone().unwrap_or_default(),
        slot: task.slot.unwrap_or(0).max(0) as u64,
        node,
        node_id,
        state: state_name(status.and_then(|s| s.state.as_ref())),
        desired_state: state_name(task.desired_state.as_ref()),
        release: release_of(task),
        since_ms: status.and_then(|s| s.timestamp.as_deref()).map(rfc3339_ms).unwrap_or(0),
        error: status.and_then(|s| s.err.clone()).unwrap_or_default(),
        message: status.and_then(|s| s.message.clone()).unwrap_or_default(),
        image: task
            .spec
            .as_ref()
            .and_then(|s| s.container_spec.as_ref())
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        container_id: status
            .and_then(|s| s.container_status.as_ref())
            .and_then(|c| c.container_id.clone())
            .filter(|id| !id.is_empty()),
    }
}

/// Sorts tasks by slot, newest first within a slot.
fn sort_tasks(tasks: &mut [TaskView]) {
    tasks.sort_by(|a, b| a.slot.cmp(&b.slot).then(b.since_ms.cmp(&a.since_ms)).then(a.id.cmp(&b.id)));
}

async fn node_names(docker: &Docker) -> Result<HashMap<String, String>, DeployError> {
    let nodes = docker
        .list_nodes(None::<ListNodesOptions>)
        .await
        .map_err(|e| engine_error(docker, "list the Swarm nodes", e))?;
    Ok(nodes
        .into_iter()
        .filter_map(|n| Some((n.id?, n.description.and_then(|d| d.hostname).unwrap_or_default())))
        .filter(|(_, name)| !name.is_empty())
        .collect())
}

/// The app's service and its tasks; `None` when Swarm has no service for it.
pub async fn service_view(
    docker: &Docker,
    stack: &str,
    app: &str,
) -> Result<Option<ServiceView>, DeployError> {
    let name = service_name(stack, app);
    let service = match docker.inspect_service(&name, None).await {
        Ok(service) => service,
        Err(e) if has_status(&e, 404) => return Ok(None),
        Err(e) => return Err(engine_error(docker, format!("inspect service {name}"), e)),
    };
    let desired_replicas = service
        .spec
        .as_ref()
        .and_then(|s| s.mode.as_ref())
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(0)
        .max(0) as u64;
    let id = service.id.unwrap_or(name);
    let tasks = list_tasks(docker, &id).await?;
    let names = node_names(docker).await?;
    let mut tasks: Vec<TaskView> = tasks.iter().map(|t| task_view(t, &names)).collect();
    sort_tasks(&mut tasks);
    Ok(Some(ServiceView { desired_replicas, tasks }))
}

/// Which lines [`app_logs`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogQuery {
    /// Keep reading as the tasks write.
    pub follow: bool,
    /// Lines from the end of each task's log (`None`: all).
    pub tail: Option<u32>,
    /// Only lines written at or after this time (seconds since the epoch; 0: all).
    pub since_unix_secs: i32,
}

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The task's standard output (or its terminal).
    Stdout,
    /// The task's standard error.
    Stderr,
    /// A note from slipway about the task's log (its node did not answer, an engine error).
    Slipway,
}

impl LogSource {
    /// The name on the wire (`AppLogLine.stream`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Slipway => "slipway",
        }
    }
}

/// One line a task wrote (or a note about it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLine {
    /// When it was written (ms since the epoch; 0 unknown).
    pub at_ms: u64,
    /// The task that wrote it, its slot, node and release (as in [`TaskView`]).
    pub task_id: String,
    /// See [`TaskView::slot`].
    pub slot: u64,
    /// See [`TaskView::node`].
    pub node: String,
    /// See [`TaskView::release`].
    pub release: u64,
    /// Standard output or error, or a note from slipway.
    pub source: LogSource,
    /// The line, without its ending.
    pub line: String,
}

/// Splits a log frame read with `timestamps=true` into its lines, each with its time
/// (ms since the epoch, 0 when a line carries none) and without the line ending.
pub fn split_log_frame(frame: &str) -> Vec<(u64, String)> {
    frame
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(' ') {
            Some((at, rest)) if rfc3339_ms(at) != 0 => (rfc3339_ms(at), rest.to_owned()),
            _ if rfc3339_ms(l) != 0 => (rfc3339_ms(l), String::new()),
            _ => (0, l.to_owned()),
        })
        .collect()
}

fn note(task: &TaskView, line: String) -> TaskLine {
    TaskLine {
        at_ms: slipway_common::now_ms(),
        task_id: task.id.clone(),
        slot: task.slot,
        node: task.node.clone(),
        release: task.release,
        source: LogSource::Slipway,
        line,
    }
}

/// The stream's next item, or `None` when `limit` passed first.
async fn next_within<S: futures::Stream + Unpin>(
    stream: &mut S,
    limit: Option<Duration>,
) -> Option<Option<S::Item>> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, stream.next()).await.ok(),
        None => Some(stream.next().await),
    }
}

/// Reads one task's log into `tx` until it ends, the caller goes away, or (without
/// `follow`) it stays silent for [`LOG_IDLE_LIMIT`].
async fn read_task_log(docker: Docker, task: TaskView, query: LogQuery, tx: mpsc::Sender<TaskLine>) {
    let options = LogsOptions {
        follow: query.follow,
        stdout: true,
        stderr: true,
        since: query.since_unix_secs,
        timestamps: true,
        tail: query.tail.map_or_else(|| "all".to_owned(), |n| n.to_string()),
        ..Default::default()
    };
    let mut stream = Box::pin(docker.task_logs(&task.id, Some(options)));
    loop {
        let idle_limit = (!query.follow).then_some(LOG_IDLE_LIMIT);
        let next = tokio::select! {
            _ = tx.closed() => return,
            next = next_within(&mut stream, idle_limit) => match next {
                Some(next) => next,
                None => {
                    let why = format!(
                        "node {} did not answer for {}s; this task's log may be incomplete",
                        task.node,
                        LOG_IDLE_LIMIT.as_secs()
                    );
                    let _ = tx.send(note(&task, why)).await;
                    return;
                }
            },
        };
        let (source, message) = match next {
            None => return,
            Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                (LogSource::Stdout, message)
            }
            Some(Ok(LogOutput::StdErr { message })) => (LogSource::Stderr, message),
            Some(Ok(LogOutput::StdIn { .. })) => continue,
            Some(Err(e)) => {
                let e = engine_error(&docker, format!("read the log of task {}", task.id), e);
                let _ = tx.send(note(&task, e.to_string())).await;
                return;
            }
        };
        for (at_ms, line) in split_log_frame(&String::from_utf8_lossy(&message)) {
            let line = TaskLine {
                at_ms,
                task_id: task.id.clone(),
                slot: task.slot,
                node: task.node.clone(),
                release: task.release,
                source,
                line,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
}

/// Streams what the app's tasks (those with a container) print, per `query`. The
/// receiver ends when every task's log ended (never with `follow`: then when the
/// receiver is dropped, every reader stops).
pub fn app_logs(
    docker: Docker,
    stack: String,
    app: String,
    first: ServiceView,
    query: LogQuery,
) -> mpsc::Receiver<TaskLine> {
    let (tx, rx) = mpsc::channel(LOG_BUFFER_LINES);
    let span = tracing::info_span!("app_logs", app = %app, follow = query.follow);
    let started_unix_secs = (slipway_common::now_ms() / 1000) as i32;
    tokio::spawn(
        async move {
            let mut seen = HashSet::new();
            let spawn_readers = |tasks: Vec<TaskView>, query: LogQuery, seen: &mut HashSet<String>| {
                for task in tasks.into_iter().filter(|t| t.container_id.is_some()) {
                    if seen.insert(task.id.clone()) {
                        let span = tracing::info_span!("task_log", task = %task.id);
                        tokio::spawn(read_task_log(docker.clone(), task, query, tx.clone()).instrument(span));
                    }
                }
            };
            spawn_readers(first.tasks, query, &mut seen);
            if !query.follow {
                return;
            }
            // Tasks started later: everything they wrote since this command began.
            let later = LogQuery { follow: true, tail: None, since_unix_secs: started_unix_secs };
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(FOLLOW_RESCAN) => {}
                }
                match service_view(&docker, &stack, &app).await {
                    Ok(Some(view)) => spawn_readers(view.tasks, later, &mut seen),
                    Ok(None) => return,
                    Err(e) => tracing::warn!(error = %e, "cannot list the app's tasks to follow new ones"),
                }
            }
        }
        .instrument(span),
    );
    rx
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerStatus, TaskSpec, TaskSpecContainerSpec, TaskStatus};

    use super::*;

    fn task(id: &str, slot: i64, release: Option<&str>, state: TaskState, at: &str) -> Task {
        let labels = release.map(|r| HashMap::from([(LABEL_RELEASE.to_owned(), r.to_owned())]));
        Task {
            id: Some(id.into()),
            slot: Some(slot),
            node_id: Some("n1".into()),
            desired_state: Some(TaskState::RUNNING),
            spec: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some("reg/hello@sha256:ab".into()),
                    labels,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(TaskStatus {
                timestamp: Some(at.into()),
                state: Some(state),
                err: Some("task: non-zero exit (1)".into()),
                message: Some("started".into()),
                container_status: Some(ContainerStatus {
                    container_id: Some("c1".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_maps_to_the_release_its_container_spec_names() {
        let names = HashMap::from([("n1".to_owned(), "worker-1".to_owned())]);
        let t = task_view(&task("t1", 2, Some("7"), TaskState::RUNNING, "2024-05-01T10:00:00.5Z"), &names);
        assert_eq!(
            (t.release, t.slot, t.node.as_str(), t.state.as_str(), t.desired_state.as_str()),
            (7, 2, "worker-1", "running", "running")
        );
        assert_eq!(t.since_ms, 1_714_557_600_500);
        assert_eq!((t.error.as_str(), t.image.as_str()), ("task: non-zero exit (1)", "reg/hello@sha256:ab"));
        assert_eq!(t.container_id.as_deref(), Some("c1"));
        // No label (a service not written by slipway) or a garbled one: release 0, not a panic.
        assert_eq!(release_of(&task("t2", 1, None, TaskState::FAILED, "")), 0);
        assert_eq!(release_of(&task("t3", 1, Some("x"), TaskState::FAILED, "")), 0);
        // A node Swarm does not name shows its id.
        assert_eq!(task_view(&task("t4", 1, None, TaskState::FAILED, ""), &HashMap::new()).node, "n1");
    }

    #[test]
    fn tasks_sort_by_slot_newest_first() {
        let names = HashMap::new();
        let mut tasks = vec![
            task_view(&task("old", 1, Some("1"), TaskState::SHUTDOWN, "2024-05-01T10:00:00Z"), &names),
            task_view(&task("two", 2, Some("2"), TaskState::RUNNING, "2024-05-01T10:00:05Z"), &names),
            task_view(&task("new", 1, Some("2"), TaskState::RUNNING, "2024-05-01T10:00:09Z"), &names),
        ];
        sort_tasks(&mut tasks);
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["new", "old", "two"]);
    }

    #[test]
    fn a_log_frame_splits_into_timed_lines() {
        let frame = "2024-05-01T10:00:00.123456789Z hello: listening on 8080\n";
        assert_eq!(split_log_frame(frame), vec![(1_714_557_600_123, "hello: listening on 8080".to_owned())]);
        // Several lines, a CR, a line without a time, an empty line written by the app.
        let frame = "2024-05-01T10:00:01Z a b\r\nno time here\n2024-05-01T10:00:02Z\n";
        assert_eq!(
            split_log_frame(frame),
            vec![
                (1_714_557_601_000, "a b".to_owned()),
                (0, "no time here".to_owned()),
                (1_714_557_602_000, String::new()),
            ]
        );
    }
}
