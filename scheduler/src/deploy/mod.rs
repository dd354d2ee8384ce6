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
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EndpointSpec,
    EndpointSpecModeEnum, HealthConfig, HealthStatusEnum, Mount, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig, NetworkAttachmentConfig, NetworkCreateRequest, Service, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum, ServiceUpdateStatusStateEnum,
    Task, TaskSpec, TaskSpecContainerSpec, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
    TaskState,
};
use bollard::query_parameters::{ListTasksOptions, UpdateServiceOptions};
use bollard::Docker;
use slipway_proto::validate::{self, Invalid};

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
/// How many times an update is retried when Swarm answers "update out of sequence".
const UPDATE_ATTEMPTS: u32 = 5;
/// Docker's healthcheck defaults, used when a field of [`HealthcheckSpec`] is zero.
const DOCKER_DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const DOCKER_DEFAULT_HEALTH_RETRIES: u32 = 3;
/// Swarm service names are DNS labels.
const MAX_SERVICE_NAME_LEN: usize = 63;

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

/// The Swarm service name of an app: `<stack>_<app>`.
pub fn service_name(stack: &str, app: &str) -> String {
    format!("{stack}_{app}")
}

/// The stack's default overlay network: `<stack>_default`.
pub fn network_name(stack: &str) -> String {
    format!("{stack}_default")
}

/// The volume that holds `path` of an app: `<stack>_<app>_<sanitized path>`,
/// e.g. `/app/uploads` → `slipway_shop_app_uploads`.
pub fn volume_name(stack: &str, app: &str, path: &str) -> String {
    format!("{stack}_{app}_{}", sanitize_path(path))
}

/// A container path as a volume-name fragment: outer `/` dropped, every character other
/// than ASCII letters, digits, `.`, `-` and `_` replaced by `_` (`/app/uploads` → `app_uploads`).
pub fn sanitize_path(path: &str) -> String {
    path.trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect()
}

fn invalid(what: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid { what, reason: reason.into() }
}

/// Checks that `image` is pinned by digest: `<repository>@sha256:<64 lowercase hex>`.
pub fn validate_image(image: &str) -> Result<(), Invalid> {
    const WHAT: &str = "image";
    let Some((repository, digest)) = image.rsplit_once('@') else {
        return Err(invalid(
            WHAT,
            format!("{image:?} is not pinned by digest; expected <repository>@sha256:<64 hex>"),
        ));
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        return Err(invalid(
            WHAT,
            format!("{image:?} has digest {digest:?}; expected sha256: and 64 lowercase hex digits"),
        ));
    }
    if repository.is_empty() || repository.starts_with('-') || repository.contains('@') {
        return Err(invalid(WHAT, format!("{image:?} has no valid repository before '@'")));
    }
    if repository.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(WHAT, format!("{image:?} contains whitespace or control characters")));
    }
    Ok(())
}

/// Stack names: 1–63 characters of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit.
fn validate_stack(stack: &str) -> Result<(), Invalid> {
    const WHAT: &str = "stack name";
    if stack.is_empty() || stack.len() > MAX_SERVICE_NAME_LEN {
        return Err(invalid(WHAT, format!("{stack:?} must be 1 to {MAX_SERVICE_NAME_LEN} characters long")));
    }
    if !stack.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(invalid(WHAT, format!("{stack:?} must start with a lowercase letter or a digit")));
    }
    if let Some(c) =
        stack.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
    {
        return Err(invalid(
            WHAT,
            format!("{stack:?} contains {c:?}; use lowercase letters, digits, '-' and '_'"),
        ));
    }
    Ok(())
}

fn validate_names(stack: &str, app: &str) -> Result<(), Invalid> {
    validate_stack(stack)?;
    validate::app_name(app)?;
    let name = service_name(stack, app);
    if name.len() > MAX_SERVICE_NAME_LEN {
        return Err(invalid(
            "service name",
            format!(
                "{name:?} is longer than {MAX_SERVICE_NAME_LEN} characters; shorten the stack or app name"
            ),
        ));
    }
    Ok(())
}

fn validate_persist(spec: &ServiceDeploy) -> Result<(), Invalid> {
    const WHAT: &str = "persist path";
    let mut volumes = HashMap::new();
    for path in &spec.persist {
        if !path.starts_with('/') {
            return Err(invalid(WHAT, format!("{path:?} must be an absolute container path")));
        }
        let components: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        if components.is_empty() || components.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
            return Err(invalid(
                WHAT,
                format!("{path:?} must name a directory below / without empty, '.' or '..' parts"),
            ));
        }
        if path.chars().any(|c| c.is_control() || c == ',') {
            return Err(invalid(WHAT, format!("{path:?} contains a control character or ','")));
        }
        let volume = volume_name(&spec.stack, &spec.app, path);
        if volume.len() > 255 {
            return Err(invalid(WHAT, format!("{path:?} is too long for a volume name")));
        }
        if let Some(other) = volumes.insert(volume.clone(), path) {
            return Err(invalid(WHAT, format!("{path:?} and {other:?} would share the volume {volume:?}")));
        }
    }
    if let PersistBackend::Nfs { addr, export_root } = &spec.persist_backend {
        if addr.is_empty()
            || addr.chars().any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
        {
            return Err(invalid("NFS address", format!("{addr:?} must be a host name or an IP address")));
        }
        if !export_root.starts_with('/')
            || export_root.split('/').any(|c| c == "..")
            || export_root.chars().any(|c| c.is_control() || c.is_whitespace() || c == ',')
        {
            return Err(invalid(
                "NFS export root",
                format!("{export_root:?} must be an absolute path without '..', ',' or whitespace"),
            ));
        }
    }
    Ok(())
}

fn validate_healthcheck(hc: &HealthcheckSpec) -> Result<(), Invalid> {
    const WHAT: &str = "healthcheck";
    match hc.cmd.first().map(String::as_str) {
        Some("CMD") if hc.cmd.len() >= 2 => {}
        Some("CMD-SHELL") if hc.cmd.len() == 2 => {}
        Some("NONE") if hc.cmd.len() == 1 => {}
        _ => {
            return Err(invalid(
                WHAT,
                format!(
                    "cmd {:?} must be [\"CMD\", prog, args…], [\"CMD-SHELL\", command] or [\"NONE\"]",
                    hc.cmd
                ),
            ))
        }
    }
    for (field, d) in [("interval", hc.interval), ("timeout", hc.timeout), ("start_period", hc.start_period)]
    {
        if !d.is_zero() && d < Duration::from_millis(1) {
            return Err(invalid(WHAT, format!("{field} {d:?} must be 0 (Docker's default) or at least 1ms")));
        }
    }
    Ok(())
}

/// Checks everything about a [`ServiceDeploy`] that can be checked without Docker.
pub fn validate(spec: &ServiceDeploy) -> Result<(), Invalid> {
    validate_names(&spec.stack, &spec.app)?;
    validate_image(&spec.image)?;
    if spec.port == Some(0) {
        return Err(invalid("port", "0 is not a port; leave it out to publish nothing"));
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(
                "env",
                format!("{key:?} is not a variable name (empty, or holds '=' or NUL)"),
            ));
        }
        if value.contains('\0') {
            return Err(invalid("env", format!("the value of {key} holds a NUL character")));
        }
    }
    validate_persist(spec)?;
    if let Some(hc) = &spec.healthcheck {
        validate_healthcheck(hc)?;
    }
    Ok(())
}

/// Nanoseconds for the Engine API; zero (Docker's default) becomes `None`.
fn nanos(d: Duration) -> Option<i64> {
    if d.is_zero() {
        None
    } else {
        // Durations beyond i64 nanoseconds (292 years) are clamped.
        Some(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }
}

fn health_config(hc: &HealthcheckSpec) -> HealthConfig {
    HealthConfig {
        test: Some(hc.cmd.clone()),
        interval: nanos(hc.interval),
        timeout: nanos(hc.timeout),
        start_period: nanos(hc.start_period),
        retries: (hc.retries > 0).then_some(i64::from(hc.retries)),
        start_interval: None,
    }
}

/// How long Swarm watches each updated task for failure: one healthcheck failure window
/// (`interval × retries`, Docker's defaults for zero fields) or [`DEFAULT_MONITOR`] without one.
pub fn monitor_period(healthcheck: Option<&HealthcheckSpec>) -> Duration {
    match healthcheck {
        Some(hc) if hc.cmd.first().map(String::as_str) != Some("NONE") => {
            let interval = if hc.interval.is_zero() { DOCKER_DEFAULT_HEALTH_INTERVAL } else { hc.interval };
            let retries = if hc.retries == 0 { DOCKER_DEFAULT_HEALTH_RETRIES } else { hc.retries };
            interval.saturating_mul(retries).max(Duration::from_secs(1))
        }
        _ => DEFAULT_MONITOR,
    }
}

fn mount(spec: &ServiceDeploy, path: &str) -> Mount {
    let labels = HashMap::from([
        (LABEL_STACK_NAMESPACE.to_owned(), spec.stack.clone()),
        (LABEL_APP.to_owned(), spec.app.clone()),
    ]);
    let driver_config = match &spec.persist_backend {
        PersistBackend::Local => None,
        PersistBackend::Nfs { addr, export_root } => Some(MountVolumeOptionsDriverConfig {
            name: Some("local".to_owned()),
            options: Some(HashMap::from([
                ("type".to_owned(), "nfs".to_owned()),
                ("o".to_owned(), format!("addr={addr},rw,nfsvers=4")),
                (
                    "device".to_owned(),
                    format!(":{}/{}/{}", export_root.trim_end_matches('/'), spec.app, sanitize_path(path)),
                ),
            ])),
        }),
    };
    Mount {
        target: Some(path.to_owned()),
        source: Some(volume_name(&spec.stack, &spec.app, path)),
        typ: Some(MountType::VOLUME),
        volume_options: Some(MountVolumeOptions {
            labels: Some(labels),
            driver_config,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The complete Swarm service spec for a deploy, as `docker stack deploy` would build it plus
/// slipway's labels, update and rollback policy. Pure: no Docker needed.
pub fn service_spec(spec: &ServiceDeploy) -> Result<ServiceSpec, DeployError> {
    validate(spec)?;
    let release = spec.release.to_string();
    let service_labels = HashMap::from([
        (LABEL_STACK_NAMESPACE.to_owned(), spec.stack.clone()),
        (LABEL_STACK_IMAGE.to_owned(), spec.image.clone()),
        (LABEL_APP.to_owned(), spec.app.clone()),
        (LABEL_RELEASE.to_owned(), release.clone()),
    ]);
    let container_labels = HashMap::from([
        (LABEL_STACK_NAMESPACE.to_owned(), spec.stack.clone()),
        (LABEL_APP.to_owned(), spec.app.clone()),
        (LABEL_RELEASE.to_owned(), release),
    ]);
    let container = TaskSpecContainerSpec {
        image: Some(spec.image.clone()),
        labels: Some(container_labels),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        mounts: Some(spec.persist.iter().map(|path| mount(spec, path)).collect()),
        health_check: spec.healthcheck.as_ref().map(health_config),
        ..Default::default()
    };
    let (update_order, rollback_order) = match spec.publish_mode {
        PublishMode::Ingress => {
            (ServiceSpecUpdateConfigOrderEnum::START_FIRST, ServiceSpecRollbackConfigOrderEnum::START_FIRST)
        }
        PublishMode::Host => {
            (ServiceSpecUpdateConfigOrderEnum::STOP_FIRST, ServiceSpecRollbackConfigOrderEnum::STOP_FIRST)
        }
    };
    let monitor = nanos(monitor_period(spec.healthcheck.as_ref()));
    let ports = spec.port.map(|port| {
        vec![EndpointPortConfig {
            protocol: Some(EndpointPortConfigProtocolEnum::TCP),
            target_port: Some(i64::from(port)),
            published_port: Some(i64::from(port)),
            publish_mode: Some(match spec.publish_mode {
                PublishMode::Ingress => EndpointPortConfigPublishModeEnum::INGRESS,
                PublishMode::Host => EndpointPortConfigPublishModeEnum::HOST,
            }),
            ..Default::default()
        }]
    });
    Ok(ServiceSpec {
        name: Some(service_name(&spec.stack, &spec.app)),
        labels: Some(service_labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: nanos(RESTART_DELAY),
                max_attempts: Some(0),
                window: None,
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(network_name(&spec.stack)),
                aliases: Some(vec![spec.app.clone()]),
                driver_opts: None,
            }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(i64::from(spec.replicas)) }),
            ..Default::default()
        }),
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
            monitor,
            max_failure_ratio: Some(0.0),
            order: Some(update_order),
        }),
        rollback_config: Some(ServiceSpecRollbackConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
            monitor,
            max_failure_ratio: Some(0.0),
            order: Some(rollback_order),
        }),
        networks: None,
        endpoint_spec: Some(EndpointSpec { mode: Some(EndpointSpecModeEnum::VIP), ports }),
    })
}

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
fn engine_error(docker: &Docker, action: impl Into<String>, err: BollardError) -> DeployError {
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

fn has_status(err: &BollardError, status: u16) -> bool {
    matches!(err, BollardError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

fn is_out_of_sequence(err: &BollardError) -> bool {
    matches!(err, BollardError::DockerResponseServerError { message, .. } if message.contains("update out of sequence"))
}

/// A concurrent creation won: Docker says 409, or swarmkit's "name conflicts with an existing
/// object" (HTTP 500 on Docker 20.10).
fn is_already_exists(err: &BollardError) -> bool {
    has_status(err, 409)
        || matches!(err, BollardError::DockerResponseServerError { message, .. }
            if message.contains("already exists") || message.contains("name conflicts with an existing object"))
}

/// Fails with [`DeployError::NotAManager`] unless the engine manages an active Swarm.
pub async fn ensure_swarm_manager(docker: &Docker) -> Result<(), DeployError> {
    // GET /swarm answers only on managers (503 "not a swarm manager" otherwise).
    docker.inspect_swarm().await.map(drop).map_err(|e| engine_error(docker, "inspect the swarm", e))
}

/// Creates the stack's overlay network if it is missing; a concurrent creation is fine.
async fn ensure_network(docker: &Docker, stack: &str) -> Result<(), DeployError> {
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
async fn task_ids(docker: &Docker, service_id: &str) -> Result<HashSet<String>, DeployError> {
    Ok(list_tasks(docker, service_id).await?.into_iter().filter_map(|t| t.id).collect())
}

async fn list_tasks(docker: &Docker, service_id: &str) -> Result<Vec<Task>, DeployError> {
    let filters = HashMap::from([("service".to_owned(), vec![service_id.to_owned()])]);
    docker
        .list_tasks(Some(ListTasksOptions { filters: Some(filters) }))
        .await
        .map_err(|e| engine_error(docker, format!("list the tasks of service {service_id}"), e))
}

/// The service as it exists after [`apply`].
struct Applied {
    id: String,
    created: bool,
    /// Tasks that existed before this deploy.
    earlier_tasks: HashSet<String>,
}

/// Creates the service, or replaces the spec of the existing one (with its version index,
/// retrying when Swarm answers "update out of sequence").
async fn apply(
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
    for attempt in 1..=UPDATE_ATTEMPTS {
        let current = match docker.inspect_service(name, None).await {
            Ok(current) => current,
            Err(e) if has_status(&e, 404) => {
                match docker.create_service(spec.clone(), credentials.clone()).await {
                    Ok(created) => {
                        for warning in created.warnings.unwrap_or_default() {
                            progress(format!("service {name}: engine warning: {warning}"));
                        }
                        let id = created.id.unwrap_or_else(|| name.to_owned());
                        return Ok(Applied { id, created: true, earlier_tasks: HashSet::new() });
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
                return Ok(Applied { id, created: false, earlier_tasks });
            }
            Err(e) if is_out_of_sequence(&e) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(100) * attempt).await;
            }
            Err(e) => return Err(engine_error(docker, format!("update service {name}"), e)),
        }
    }
    Err(DeployError::Api {
        action: format!("update service {name}"),
        message: format!("gave up after {UPDATE_ATTEMPTS} attempts: {last_error}"),
    })
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
mod tests {
    use super::*;
    use bollard::models::{ObjectVersion, ServiceUpdateStatus, TaskStatus};

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn shop() -> ServiceDeploy {
        ServiceDeploy {
            stack: "slipway".into(),
            app: "shop".into(),
            image: format!("registry.local:5000/shop@{DIGEST}"),
            release: 7,
            replicas: 2,
            port: Some(8080),
            env: BTreeMap::from([("LOG_LEVEL".into(), "info".into()), ("A".into(), "x=y".into())]),
            persist: vec!["/app/uploads".into(), "/app/data/".into()],
            healthcheck: Some(HealthcheckSpec {
                cmd: vec!["CMD".into(), "/bin/check".into()],
                interval: Duration::from_secs(5),
                timeout: Duration::from_millis(1500),
                start_period: Duration::from_secs(10),
                retries: 3,
            }),
            publish_mode: PublishMode::Ingress,
            persist_backend: PersistBackend::Local,
            converge_timeout: Duration::from_secs(120),
        }
    }

    fn container(spec: &ServiceSpec) -> &TaskSpecContainerSpec {
        spec.task_template.as_ref().unwrap().container_spec.as_ref().unwrap()
    }

    #[test]
    fn spec_is_what_docker_stack_deploy_would_create_plus_slipway_labels() {
        let spec = service_spec(&shop()).unwrap();
        assert_eq!(spec.name.as_deref(), Some("slipway_shop"));
        let labels = spec.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_STACK_NAMESPACE], "slipway");
        assert_eq!(labels[LABEL_STACK_IMAGE], format!("registry.local:5000/shop@{DIGEST}"));
        assert_eq!(labels[LABEL_APP], "shop");
        assert_eq!(labels[LABEL_RELEASE], "7");

        let c = container(&spec);
        assert_eq!(c.image.as_deref(), Some(format!("registry.local:5000/shop@{DIGEST}").as_str()));
        let clabels = c.labels.as_ref().unwrap();
        assert_eq!(clabels[LABEL_STACK_NAMESPACE], "slipway");
        assert_eq!(clabels[LABEL_RELEASE], "7");
        assert_eq!(c.env.as_deref().unwrap(), ["A=x=y", "LOG_LEVEL=info"]);

        let task = spec.task_template.as_ref().unwrap();
        let nets = task.networks.as_ref().unwrap();
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].target.as_deref(), Some("slipway_default"));
        assert_eq!(nets[0].aliases.as_deref().unwrap(), ["shop"]);
        let restart = task.restart_policy.as_ref().unwrap();
        assert_eq!(restart.condition, Some(TaskSpecRestartPolicyConditionEnum::ANY));
        assert_eq!(restart.delay, Some(3_000_000_000));

        let mode = spec.mode.as_ref().unwrap().replicated.as_ref().unwrap();
        assert_eq!(mode.replicas, Some(2));
    }

    #[test]
    fn healthcheck_durations_become_nanoseconds() {
        let spec = service_spec(&shop()).unwrap();
        let hc = container(&spec).health_check.as_ref().unwrap();
        assert_eq!(hc.test.as_deref().unwrap(), ["CMD", "/bin/check"]);
        assert_eq!(hc.interval, Some(5_000_000_000));
        assert_eq!(hc.timeout, Some(1_500_000_000));
        assert_eq!(hc.start_period, Some(10_000_000_000));
        assert_eq!(hc.retries, Some(3));

        // Zero means Docker's default: the field is left out.
        let mut d = shop();
        d.healthcheck = Some(HealthcheckSpec {
            cmd: vec!["CMD-SHELL".into(), "wget -q -O- http://127.0.0.1:8080/".into()],
            interval: Duration::ZERO,
            timeout: Duration::ZERO,
            start_period: Duration::ZERO,
            retries: 0,
        });
        let spec = service_spec(&d).unwrap();
        let hc = container(&spec).health_check.as_ref().unwrap();
        assert_eq!((hc.interval, hc.timeout, hc.start_period, hc.retries), (None, None, None, None));

        d.healthcheck = None;
        assert!(container(&service_spec(&d).unwrap()).health_check.is_none());
    }

    #[test]
    fn ingress_updates_start_first_and_publishes_through_the_mesh() {
        let spec = service_spec(&shop()).unwrap();
        let update = spec.update_config.as_ref().unwrap();
        assert_eq!(update.parallelism, Some(1));
        assert_eq!(update.order, Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST));
        assert_eq!(update.failure_action, Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK));
        assert_eq!(update.max_failure_ratio, Some(0.0));
        // interval 5 s × 3 retries
        assert_eq!(update.monitor, Some(15_000_000_000));
        let rollback = spec.rollback_config.as_ref().unwrap();
        assert_eq!(rollback.parallelism, Some(1));
        assert_eq!(rollback.order, Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST));

        let ports = spec.endpoint_spec.as_ref().unwrap().ports.as_ref().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].target_port, Some(8080));
        assert_eq!(ports[0].published_port, Some(8080));
        assert_eq!(ports[0].protocol, Some(EndpointPortConfigProtocolEnum::TCP));
        assert_eq!(ports[0].publish_mode, Some(EndpointPortConfigPublishModeEnum::INGRESS));
    }

    #[test]
    fn host_mode_updates_and_rolls_back_stop_first() {
        let mut d = shop();
        d.publish_mode = PublishMode::Host;
        d.healthcheck = None;
        let spec = service_spec(&d).unwrap();
        assert_eq!(
            spec.update_config.as_ref().unwrap().order,
            Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST)
        );
        assert_eq!(spec.update_config.as_ref().unwrap().monitor, Some(5_000_000_000));
        assert_eq!(
            spec.rollback_config.as_ref().unwrap().order,
            Some(ServiceSpecRollbackConfigOrderEnum::STOP_FIRST)
        );
        let port = &spec.endpoint_spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(port.publish_mode, Some(EndpointPortConfigPublishModeEnum::HOST));

        d.port = None;
        let spec = service_spec(&d).unwrap();
        assert!(spec.endpoint_spec.as_ref().unwrap().ports.is_none());
    }

    #[test]
    fn spec_serializes_with_the_engine_api_names() {
        let mut d = shop();
        d.publish_mode = PublishMode::Host;
        let json = serde_json::to_value(service_spec(&d).unwrap()).unwrap();
        assert_eq!(json["UpdateConfig"]["Order"], "stop-first");
        assert_eq!(json["UpdateConfig"]["FailureAction"], "rollback");
        assert_eq!(json["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["HealthCheck"]["Interval"], 5_000_000_000_i64);
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Type"], "volume");
        assert_eq!(json["TaskTemplate"]["RestartPolicy"]["Condition"], "any");
        assert_eq!(json["Mode"]["Replicated"]["Replicas"], 2);
    }

    #[test]
    fn persist_paths_become_named_local_volumes() {
        assert_eq!(sanitize_path("/app/uploads"), "app_uploads");
        assert_eq!(sanitize_path("/app/data/"), "app_data");
        assert_eq!(sanitize_path("/var/lib/my app+x"), "var_lib_my_app_x");
        assert_eq!(volume_name("slipway", "shop", "/app/uploads"), "slipway_shop_app_uploads");

        let spec = service_spec(&shop()).unwrap();
        let mounts = container(&spec).mounts.as_ref().unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[0].target.as_deref(), Some("/app/uploads"));
        assert_eq!(mounts[0].source.as_deref(), Some("slipway_shop_app_uploads"));
        assert_eq!(mounts[1].source.as_deref(), Some("slipway_shop_app_data"));
        let options = mounts[0].volume_options.as_ref().unwrap();
        assert_eq!(options.labels.as_ref().unwrap()[LABEL_STACK_NAMESPACE], "slipway");
        assert!(options.driver_config.is_none());
    }

    #[test]
    fn nfs_persist_uses_the_local_driver_with_nfs_options() {
        let mut d = shop();
        d.persist_backend =
            PersistBackend::Nfs { addr: "10.0.0.5".into(), export_root: "/srv/slipway/".into() };
        let spec = service_spec(&d).unwrap();
        let mount = &container(&spec).mounts.as_ref().unwrap()[0];
        assert_eq!(mount.source.as_deref(), Some("slipway_shop_app_uploads"));
        let driver = mount.volume_options.as_ref().unwrap().driver_config.as_ref().unwrap();
        assert_eq!(driver.name.as_deref(), Some("local"));
        let opts = driver.options.as_ref().unwrap();
        assert_eq!(opts["type"], "nfs");
        assert_eq!(opts["o"], "addr=10.0.0.5,rw,nfsvers=4");
        assert_eq!(opts["device"], ":/srv/slipway/shop/app_uploads");
    }

    fn refused(d: ServiceDeploy) -> String {
        match service_spec(&d) {
            Err(DeployError::Invalid(invalid)) => invalid.to_string(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn images_must_be_pinned_by_digest() {
        for image in [
            "registry/shop:latest",
            "registry/shop",
            "registry/shop@sha256:abc",
            "registry/shop@sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            &format!("registry/shop@{}", DIGEST.to_uppercase().replace("SHA256", "sha256")),
            &format!("@{DIGEST}"),
            &format!("-x@{DIGEST}"),
            &format!("a b@{DIGEST}"),
        ] {
            let mut d = shop();
            d.image = image.to_owned();
            let msg = refused(d);
            assert!(msg.starts_with("invalid image"), "{image}: {msg}");
        }
        assert!(validate_image(&format!("127.0.0.1:5000/a/b@{DIGEST}")).is_ok());
    }

    #[test]
    fn bad_input_is_refused_with_the_field_named() {
        type Break = fn(&mut ServiceDeploy);
        let cases: Vec<(Break, &str)> = vec![
            (|d| d.app = "Shop".into(), "invalid app name"),
            (|d| d.app = "-x".into(), "invalid app name"),
            (|d| d.stack = "".into(), "invalid stack name"),
            (|d| d.stack = "a/b".into(), "invalid stack name"),
            (|d| d.stack = "s".repeat(60), "invalid service name"),
            (|d| d.port = Some(0), "invalid port"),
            (|d| _ = d.env.insert("A=B".into(), "x".into()), "invalid env"),
            (|d| d.persist = vec!["relative".into()], "invalid persist path"),
            (|d| d.persist = vec!["/".into()], "invalid persist path"),
            (|d| d.persist = vec!["/app/../etc".into()], "invalid persist path"),
            (|d| d.persist = vec!["/a/b".into(), "/a_b".into()], "invalid persist path"),
            (|d| d.healthcheck.as_mut().unwrap().cmd = vec!["/bin/check".into()], "invalid healthcheck"),
            (|d| d.healthcheck.as_mut().unwrap().cmd = vec!["CMD".into()], "invalid healthcheck"),
            (|d| d.healthcheck.as_mut().unwrap().interval = Duration::from_micros(5), "invalid healthcheck"),
            (
                |d| d.persist_backend = PersistBackend::Nfs { addr: "h,ro".into(), export_root: "/x".into() },
                "invalid NFS address",
            ),
            (
                |d| d.persist_backend = PersistBackend::Nfs { addr: "h".into(), export_root: "x".into() },
                "invalid NFS export root",
            ),
        ];
        for (break_it, expected) in cases {
            let mut d = shop();
            break_it(&mut d);
            let msg = refused(d);
            assert!(msg.starts_with(expected), "expected {expected:?}, got {msg:?}");
        }
    }

    #[test]
    fn monitor_period_covers_one_healthcheck_failure_window() {
        let hc = |interval, retries| HealthcheckSpec {
            cmd: vec!["CMD".into(), "true".into()],
            interval,
            timeout: Duration::ZERO,
            start_period: Duration::ZERO,
            retries,
        };
        assert_eq!(monitor_period(None), DEFAULT_MONITOR);
        assert_eq!(monitor_period(Some(&hc(Duration::from_secs(2), 3))), Duration::from_secs(6));
        assert_eq!(monitor_period(Some(&hc(Duration::ZERO, 0))), Duration::from_secs(90));
        assert_eq!(monitor_period(Some(&hc(Duration::from_millis(100), 2))), Duration::from_secs(1));
    }

    #[test]
    fn engine_errors_are_sorted_for_the_caller() {
        let docker =
            &Docker::connect_with_http("http://127.0.0.1:1", 1, bollard::API_DEFAULT_VERSION).unwrap();
        let not_manager = BollardError::DockerResponseServerError {
            status_code: 503,
            message: "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.".into(),
        };
        let err = engine_error(docker, "inspect the swarm", not_manager);
        assert!(matches!(err, DeployError::NotAManager(_)));
        assert!(err.to_string().contains("run `docker swarm init`"));

        let refused =
            BollardError::DockerResponseServerError { status_code: 400, message: "invalid mount".into() };
        let err = engine_error(docker, "create service s_a", refused);
        assert_eq!(err.to_string(), "Docker refused to create service s_a: invalid mount (HTTP 400)");

        let down = BollardError::IOError { err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused) };
        let err = engine_error(docker, "inspect the swarm", down);
        assert!(matches!(err, DeployError::Engine { .. }));
        assert!(err.to_string().contains("check that dockerd is running"), "{err}");
    }

    // ---- observe + judge, on hand-made engine answers ----

    const IMAGE: &str = "r/shop@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const OLD: &str = "r/shop@sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn target() -> Target<'static> {
        Target { image: IMAGE, release: "7".into(), desired: 2 }
    }

    fn service(image: &str, state: Option<State>, message: &str) -> Service {
        Service {
            spec: Some(ServiceSpec {
                task_template: Some(TaskSpec {
                    container_spec: Some(TaskSpecContainerSpec {
                        image: Some(image.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_status: state.map(|s| ServiceUpdateStatus {
                state: Some(s),
                message: Some(message.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(
        id: &str,
        image: &str,
        release: &str,
        desired: TaskState,
        state: TaskState,
        err: &str,
        index: u64,
    ) -> Task {
        Task {
            id: Some(id.into()),
            version: Some(ObjectVersion { index: Some(index) }),
            spec: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.into()),
                    labels: Some(HashMap::from([(LABEL_RELEASE.to_owned(), release.to_owned())])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                err: (!err.is_empty()).then(|| err.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    use TaskState::{COMPLETE, FAILED, PENDING, REJECTED, RUNNING, SHUTDOWN, STARTING};

    fn release_service(image: &str, release: &str, state: Option<State>, message: &str) -> Service {
        let mut svc = service(image, state, message);
        let container =
            svc.spec.as_mut().unwrap().task_template.as_mut().unwrap().container_spec.as_mut().unwrap();
        container.labels = Some(HashMap::from([(LABEL_RELEASE.to_owned(), release.to_owned())]));
        svc
    }

    #[test]
    fn converged_when_all_replicas_of_the_release_run() {
        let svc = release_service(IMAGE, "7", None, "");
        let tasks = [
            task("a", IMAGE, "7", RUNNING, RUNNING, "", 10),
            task("b", IMAGE, "7", RUNNING, STARTING, "", 11),
            // The previous release still running (start-first) does not count.
            task("c", OLD, "6", RUNNING, RUNNING, "", 5),
        ];
        let obs = observe(&svc, &tasks, &target(), &HashSet::new());
        assert_eq!(obs.running, 1);
        assert_eq!(judge(&obs, &target()), Verdict::Waiting);

        let tasks = [
            task("a", IMAGE, "7", RUNNING, RUNNING, "", 10),
            task("b", IMAGE, "7", RUNNING, RUNNING, "", 12),
        ];
        let obs = observe(&svc, &tasks, &target(), &HashSet::new());
        assert_eq!(judge(&obs, &target()), Verdict::Converged { swarm_done: false });

        let svc = release_service(IMAGE, "7", Some(State::UPDATING), "update in progress");
        let obs = observe(&svc, &tasks, &target(), &HashSet::new());
        assert_eq!(judge(&obs, &target()), Verdict::Waiting, "still inside the monitor period");

        let svc = release_service(IMAGE, "7", Some(State::COMPLETED), "update completed");
        let obs = observe(&svc, &tasks, &target(), &HashSet::new());
        assert_eq!(judge(&obs, &target()), Verdict::Converged { swarm_done: true });
    }

    #[test]
    fn same_image_with_an_older_release_label_is_not_ours() {
        let svc = release_service(IMAGE, "7", None, "");
        let tasks =
            [task("a", IMAGE, "6", RUNNING, RUNNING, "", 1), task("b", IMAGE, "6", RUNNING, RUNNING, "", 2)];
        let obs = observe(&svc, &tasks, &target(), &HashSet::new());
        assert_eq!(obs.running, 0);
        assert_eq!(judge(&obs, &target()), Verdict::Waiting);
    }

    #[test]
    fn rolled_back_once_the_previous_release_runs_again() {
        let one = Target { image: IMAGE, release: "7".into(), desired: 1 };
        // Stop-first: the new task was stopped after failing, the previous one is not back yet.
        let mut tasks = vec![
            task(
                "a",
                IMAGE,
                "7",
                SHUTDOWN,
                FAILED,
                "task: non-zero exit (137): dockerexec: unhealthy container",
                20,
            ),
            task(
                "c",
                OLD,
                "6",
                RUNNING,
                PENDING,
                "no suitable node (host-mode port already in use on 1 node)",
                25,
            ),
        ];
        let svc = release_service(
            OLD,
            "6",
            Some(State::ROLLBACK_STARTED),
            "update rolled back due to failure or early termination of task a",
        );
        let obs = observe(&svc, &tasks, &one, &HashSet::new());
        assert_eq!(judge(&obs, &one), Verdict::Waiting);
        assert_eq!(
            obs.waiting,
            [("c".to_owned(), "no suitable node (host-mode port already in use on 1 node)".to_owned())]
        );
        assert_eq!(
            progress_line("s_shop", &obs, &one),
            "service s_shop: rolling back to release 6: 0/1 tasks running (update rollback_started)"
        );

        // The failed task's restart never got the port; the rollback marked it for shutdown.
        tasks.push(task(
            "d",
            IMAGE,
            "7",
            SHUTDOWN,
            PENDING,
            "no suitable node (host-mode port already in use on 1 node)",
            22,
        ));
        let obs = observe(&svc, &tasks, &one, &HashSet::new());
        assert!(obs.waiting[1].1.contains("never scheduled"), "{:?}", obs.waiting);
        tasks.pop();

        tasks[1] = task("c", OLD, "6", RUNNING, RUNNING, "", 26);
        let obs = observe(&svc, &tasks, &one, &HashSet::new());
        assert_eq!(judge(&obs, &one), Verdict::RolledBack { swarm_done: false });
        assert_eq!(
            rollback_reason(Some(&obs.update_message), &obs),
            "update rolled back due to failure or early termination of task a; \
             last task error: task: non-zero exit (137): dockerexec: unhealthy container"
        );

        let svc = release_service(OLD, "6", Some(State::ROLLBACK_COMPLETED), "rollback completed");
        let obs = observe(&svc, &tasks, &one, &HashSet::new());
        assert_eq!(judge(&obs, &one), Verdict::RolledBack { swarm_done: true });

        let svc = release_service(OLD, "6", Some(State::ROLLBACK_PAUSED), "rollback paused");
        let obs = observe(&svc, &tasks, &one, &HashSet::new());
        assert!(matches!(judge(&obs, &one), Verdict::Failed(r) if r.contains("so did its rollback")));
    }

    #[test]
    fn repeated_task_failures_fail_the_deploy_but_earlier_ones_do_not_count() {
        let svc = release_service(IMAGE, "7", None, "");
        let tasks = [
            task("a", IMAGE, "7", SHUTDOWN, REJECTED, "No such image: r/shop@sha256:0123", 3),
            task("b", IMAGE, "7", SHUTDOWN, COMPLETE, "", 5),
            task("c", IMAGE, "7", SHUTDOWN, FAILED, "task: non-zero exit (1)", 9),
        ];
        let obs = observe(&svc, &tasks, &target(), &HashSet::new());
        assert_eq!(obs.new_failures.len(), 3);
        assert_eq!(obs.new_failures[1].error, "the container exited with code 0");
        assert_eq!(
            judge(&obs, &target()),
            Verdict::Failed("3 tasks failed, the last with: task: non-zero exit (1)".into())
        );

        let earlier = HashSet::from(["a".to_owned()]);
        let obs = observe(&svc, &tasks, &target(), &earlier);
        assert_eq!(obs.new_failures.len(), 2);
        assert_eq!(judge(&obs, &target()), Verdict::Waiting);
    }

    // ---- against the real engine ----

    #[tokio::test]
    async fn t32_an_unreachable_engine_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        // A socket file nobody listens on: connection refused.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let docker =
            Docker::connect_with_unix(socket.to_str().unwrap(), 5, bollard::API_DEFAULT_VERSION).unwrap();
        let err = deploy(&docker, &shop(), None, &|_| {}).await.unwrap_err();
        assert!(matches!(err, DeployError::Engine { .. }), "{err:?}");
        assert!(err.to_string().contains(socket.to_str().unwrap()), "names the socket: {err}");
        assert!(err.to_string().contains("check that dockerd is running"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn t30_deploy_update_and_automatic_rollback_on_a_real_swarm() {
        let Some(docker) =
            fixture::docker_or_skip("t30_deploy_update_and_automatic_rollback_on_a_real_swarm").await
        else {
            return;
        };
        let started = Instant::now();
        fixture::ensure_swarm();
        ensure_swarm_manager(&docker).await.unwrap();
        fixture::ensure_base_image();
        let registry = fixture::Registry::start();
        let work = tempfile::tempdir().unwrap();
        let [v1, v2, v3] =
            ["v1", "v2", "v3"].map(|v| registry.build_and_push(work.path(), "web", v, fixture::WEB_CMD));
        let crash = registry.build_and_push(
            work.path(),
            "crash",
            "crash",
            r#"["sh", "-c", "echo crashing; exit 3"]"#,
        );
        eprintln!("t30: images built and pushed after {:?}", started.elapsed());

        let stack = fixture::unique_stack("t30");
        let _cleanup = fixture::StackCleanup::new(&stack, &["web", "crash"]);
        let port = fixture::free_port();
        let progress = |line: String| eprintln!("t30 progress: {line}");
        let web = |image: &str, release: u64, healthcheck: HealthcheckSpec| ServiceDeploy {
            stack: stack.clone(),
            app: "web".into(),
            image: image.to_owned(),
            release,
            replicas: 1,
            port: Some(port),
            env: BTreeMap::from([("PORT".into(), port.to_string())]),
            persist: vec!["/data/uploads".into()],
            healthcheck: Some(healthcheck),
            publish_mode: PublishMode::Host,
            persist_backend: PersistBackend::Local,
            // A host-mode rollback can wait a minute on Swarm (see the module doc).
            converge_timeout: Duration::from_secs(120),
        };
        let crashing = ServiceDeploy {
            app: "crash".into(),
            image: crash.clone(),
            port: None,
            persist: vec![],
            healthcheck: None,
            ..web(&crash, 1, fixture::http_healthcheck())
        };

        // First deploy of a healthy app and, at the same time, of one that exits at once.
        let release1 = web(&v1, 1, fixture::http_healthcheck());
        let (first, crashed) = tokio::join!(
            deploy(&docker, &release1, None, &progress),
            deploy(&docker, &crashing, None, &progress)
        );
        let first = first.unwrap();
        assert!(first.created);
        assert_eq!((first.running, first.desired, first.published_port), (1, 1, Some(port)));
        assert_eq!(fixture::http_get(port).as_deref(), Some("v1"));
        let service = docker.inspect_service(&service_name(&stack, "web"), None).await.unwrap();
        let spec = service.spec.unwrap();
        assert_eq!(
            container(&spec).image.as_deref(),
            Some(v1.as_str()),
            "the engine kept the digest as given"
        );
        assert_eq!(spec.labels.as_ref().unwrap()[LABEL_RELEASE], "1");
        match crashed {
            Err(DeployError::TasksFailed { reason }) => {
                assert!(reason.contains("non-zero exit (3)"), "{reason}")
            }
            other => panic!("a crashing first deploy should fail, got {other:?}"),
        }
        eprintln!("t30: first deploys done after {:?}", started.elapsed());

        // It looks like `docker stack deploy` to operators.
        let stacks = fixture::docker_cli(&["stack", "ls", "--format", "{{.Name}}"]).unwrap();
        assert!(stacks.lines().any(|l| l == stack), "docker stack ls:\n{stacks}");
        let services =
            fixture::docker_cli(&["stack", "services", &stack, "--format", "{{.Name}} {{.Image}}"]).unwrap();
        assert!(
            services.lines().any(|l| l == format!("{stack}_web {v1}")),
            "docker stack services:\n{services}"
        );
        let network = fixture::docker_cli(&[
            "network",
            "inspect",
            &network_name(&stack),
            "--format",
            &format!("{{{{.Driver}}}} {{{{.Attachable}}}} {{{{index .Labels \"{LABEL_STACK_NAMESPACE}\"}}}}"),
        ])
        .unwrap();
        assert_eq!(network, format!("overlay true {stack}"));
        let volume = volume_name(&stack, "web", "/data/uploads");
        let label = fixture::docker_cli(&[
            "volume",
            "inspect",
            &volume,
            "--format",
            &format!("{{{{index .Labels \"{LABEL_STACK_NAMESPACE}\"}}}}"),
        ])
        .unwrap();
        assert_eq!(label, stack);

        // A rolling update to the next release.
        let second =
            deploy(&docker, &web(&v2, 2, fixture::http_healthcheck()), None, &progress).await.unwrap();
        assert!(!second.created);
        assert_eq!(second.service_id, first.service_id);
        assert_eq!(fixture::http_get(port).as_deref(), Some("v2"));
        eprintln!("t30: update done after {:?}", started.elapsed());

        // A release whose healthcheck never passes: Swarm rolls back to release 2.
        let failing =
            HealthcheckSpec { cmd: vec!["CMD".into(), "false".into()], ..fixture::http_healthcheck() };
        match deploy(&docker, &web(&v3, 3, failing), None, &progress).await {
            Err(DeployError::RolledBack { reason }) => assert!(reason.contains("unhealthy"), "{reason}"),
            other => panic!("expected an automatic rollback, got {other:?}"),
        }
        let service = docker.inspect_service(&service_name(&stack, "web"), None).await.unwrap();
        let spec = service.spec.unwrap();
        assert_eq!(container(&spec).image.as_deref(), Some(v2.as_str()));
        assert_eq!(spec.labels.as_ref().unwrap()[LABEL_RELEASE], "2");
        assert_eq!(fixture::http_get(port).as_deref(), Some("v2"));
        eprintln!("t30: rollback done after {:?}", started.elapsed());

        // Deleting the app removes its service; doing it twice is fine.
        remove_app(&docker, &stack, "web").await.unwrap();
        remove_app(&docker, &stack, "web").await.unwrap();
        remove_app(&docker, &stack, "crash").await.unwrap();
        let gone = docker.inspect_service(&service_name(&stack, "web"), None).await.unwrap_err();
        assert!(has_status(&gone, 404), "{gone:?}");
        eprintln!("t30: took {:?}", started.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn t31_a_first_deploy_of_a_missing_image_fails_with_the_task_error() {
        let Some(docker) =
            fixture::docker_or_skip("t31_a_first_deploy_of_a_missing_image_fails_with_the_task_error").await
        else {
            return;
        };
        let started = Instant::now();
        fixture::ensure_swarm();
        let stack = fixture::unique_stack("t31");
        let _cleanup = fixture::StackCleanup::new(&stack, &["ghost"]);
        let spec = ServiceDeploy {
            stack: stack.clone(),
            app: "ghost".into(),
            // Nothing listens on port 9: the pull fails and the image is not here.
            image: format!("127.0.0.1:9/slipway-test/ghost@sha256:{}", "0".repeat(64)),
            release: 1,
            replicas: 1,
            port: None,
            env: BTreeMap::new(),
            persist: vec![],
            healthcheck: None,
            publish_mode: PublishMode::Host,
            persist_backend: PersistBackend::Local,
            converge_timeout: Duration::from_secs(60),
        };
        let lines = std::sync::Mutex::new(Vec::new());
        let progress = |line: String| {
            eprintln!("t31 progress: {line}");
            lines.lock().unwrap().push(line);
        };
        match deploy(&docker, &spec, None, &progress).await {
            Err(DeployError::TasksFailed { reason }) => assert!(reason.contains("No such image"), "{reason}"),
            other => panic!("expected TasksFailed, got {other:?}"),
        }
        assert!(lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("task") && l.contains("ended: No such image")));
        remove_app(&docker, &stack, "ghost").await.unwrap();
        eprintln!("t31: took {:?}", started.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renewing_the_pull_grant_restarts_no_task() {
        let Some(docker) = fixture::docker_or_skip("renewing_the_pull_grant_restarts_no_task").await else {
            return;
        };
        fixture::ensure_swarm();
        fixture::ensure_base_image();
        let registry = fixture::Registry::start();
        let work = tempfile::tempdir().unwrap();
        let image = registry.build_and_push(work.path(), "web", "v1", fixture::WEB_CMD);
        let stack = fixture::unique_stack("renew");
        let _cleanup = fixture::StackCleanup::new(&stack, &["web"]);
        let port = fixture::free_port();
        let spec = ServiceDeploy {
            stack: stack.clone(),
            app: "web".into(),
            image,
            release: 1,
            replicas: 1,
            port: Some(port),
            env: BTreeMap::from([("PORT".into(), port.to_string())]),
            persist: vec!["/data/uploads".into()],
            healthcheck: Some(fixture::http_healthcheck()),
            publish_mode: PublishMode::Host,
            persist_backend: PersistBackend::Local,
            converge_timeout: Duration::from_secs(60),
        };
        // The registry takes anyone; the credentials are only carried along.
        let auth = |user: &str, expires: u64| PullAuth {
            credentials: DockerCredentials {
                username: Some(user.into()),
                password: Some("secret".into()),
                serveraddress: Some("127.0.0.1".into()),
                ..Default::default()
            },
            expires,
        };
        deploy(&docker, &spec, Some(&auth("first", 1000)), &|_| {}).await.unwrap();
        let name = service_name(&stack, "web");
        let tasks_before = task_ids(&docker, &name).await.unwrap();
        // The release lookup knows release 1 (or, below, nothing).
        let known = |n: u64| (n == 1).then(|| spec.clone());
        let renew = |app: &'static str, user: &str, expires: u64, before: u64, knows: bool| {
            let auth = auth(user, expires);
            let (docker, stack) = (docker.clone(), stack.clone());
            async move {
                let lookup = |n: u64| if knows { known(n) } else { None };
                renew_pull_grant(&docker, &stack, app, lookup, &auth, before).await.unwrap()
            }
        };
        assert_eq!(renew("web", "x", 2000, 900, true).await, Renewal::Fresh, "good past the renewal point");
        assert_eq!(renew("ghost", "x", 2000, 2000, true).await, Renewal::NoService);
        let unknown = renew("web", "x", 2000, 2000, false).await;
        assert!(matches!(&unknown, Renewal::Postponed(why) if why.contains("does not know")), "{unknown:?}");
        assert_eq!(renew("web", "second", 3000, 2000, true).await, Renewal::Renewed);
        let service = docker.inspect_service(&name, None).await.unwrap();
        assert_eq!(service.spec.as_ref().unwrap().labels.as_ref().unwrap()[LABEL_PULL_GRANT_EXPIRES], "3000");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let tasks_after = task_ids(&docker, &name).await.unwrap();
        assert_eq!(tasks_after, tasks_before, "no task was replaced");
        assert_eq!(fixture::http_get(port).as_deref(), Some("v1"));
    }

    /// Engine, swarm, base image and registry for the tests above, through the docker CLI.
    mod fixture {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::path::Path;
        use std::process::{Child, Command, Stdio};
        use std::time::{Duration, Instant};

        use bollard::Docker;

        use super::super::HealthcheckSpec;

        /// The test app: busybox httpd serving /www on $PORT. PID 1 ignores SIGTERM unless it
        /// traps it, so the shell exits on TERM instead of waiting for the 10 s kill.
        pub const WEB_CMD: &str = r#"["sh", "-c", "trap 'exit 0' TERM; httpd -f -p $PORT -h /www & wait"]"#;
        pub const BASE_IMAGE: &str = "slipway-test/busybox:latest";

        pub fn http_healthcheck() -> HealthcheckSpec {
            HealthcheckSpec {
                cmd: vec!["CMD-SHELL".into(), "wget -q -O /dev/null http://127.0.0.1:$PORT/".into()],
                interval: Duration::from_millis(500),
                timeout: Duration::from_secs(1),
                start_period: Duration::ZERO,
                retries: 2,
            }
        }

        pub async fn docker_or_skip(test: &str) -> Option<Docker> {
            let connect = async {
                let docker = Docker::connect_with_unix_defaults()?.negotiate_version().await?;
                docker.ping().await?;
                Ok::<_, bollard::errors::Error>(docker)
            };
            let error = match tokio::time::timeout(Duration::from_secs(10), connect).await {
                Ok(Ok(docker)) => return Some(docker),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 10 s".to_owned(),
            };
            if std::env::var("SLIPWAY_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("{test}: SLIPWAY_REQUIRE_DOCKER=1 but the Docker engine does not answer: {error}");
            }
            eprintln!(
                "\n!!!!!!!! SKIPPED {test}: no Docker engine answers on $DOCKER_HOST or /var/run/docker.sock ({error}).\n\
                 !!!!!!!! Set SLIPWAY_REQUIRE_DOCKER=1 to make this a failure.\n"
            );
            None
        }

        /// Runs the docker CLI; Ok(trimmed stdout) or Err(stderr).
        pub fn docker_cli(args: &[&str]) -> Result<String, String> {
            let out =
                Command::new("docker").args(args).output().map_err(|e| format!("cannot run docker: {e}"))?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            } else {
                Err(format!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
            }
        }

        /// Makes this engine a single-node Swarm manager unless it already is one, and leaves it
        /// so (other tests use it). Loopback is accepted as advertise address on Docker 20.10.
        pub fn ensure_swarm() {
            let state = docker_cli(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap();
            if state == "active" {
                return;
            }
            match docker_cli(&["swarm", "init", "--advertise-addr", "127.0.0.1"]) {
                Ok(_) => {}
                Err(e) if e.contains("already part of a swarm") => {}
                Err(e) => {
                    eprintln!("swarm init on 127.0.0.1 refused ({e}); trying without --advertise-addr");
                    match docker_cli(&["swarm", "init"]) {
                        Ok(_) => {}
                        Err(e) if e.contains("already part of a swarm") => {}
                        Err(e) => panic!("cannot make this engine a Swarm manager: {e}"),
                    }
                }
            }
        }

        /// `slipway-test/busybox:latest`: Debian's static busybox and its applet links, imported
        /// from a tarball (nothing can be pulled from the internet here).
        pub fn ensure_base_image() {
            if docker_cli(&["image", "inspect", BASE_IMAGE]).is_ok() {
                return;
            }
            let busybox = ["/bin/busybox", "/usr/bin/busybox"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .expect("no /bin/busybox: apt-get install -y busybox-static");
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("rootfs");
            for sub in ["bin", "www", "tmp"] {
                std::fs::create_dir_all(root.join(sub)).unwrap();
            }
            std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
            let list = Command::new(busybox).arg("--list").output().unwrap();
            for applet in
                String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox")
            {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
            let tarball = dir.path().join("rootfs.tar");
            let tar =
                Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".").status().unwrap();
            assert!(tar.success(), "tar failed");
            docker_cli(&["import", tarball.to_str().unwrap(), BASE_IMAGE]).unwrap();
        }

        pub fn free_port() -> u16 {
            TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
        }

        /// A unique, valid stack name for one test run.
        pub fn unique_stack(test: &str) -> String {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            format!("sw{test}-{}-{nanos:x}", std::process::id())
        }

        /// GET / on 127.0.0.1:port; the body, trimmed.
        pub fn http_get(port: u16) -> Option<String> {
            for _ in 0..10 {
                let attempt = || -> std::io::Result<String> {
                    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
                    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                    let mut response = String::new();
                    stream.read_to_string(&mut response)?;
                    Ok(response)
                };
                match attempt() {
                    Ok(response) => {
                        if let Some((_, body)) = response.split_once("\r\n\r\n") {
                            return Some(body.trim().to_owned());
                        }
                        eprintln!("GET 127.0.0.1:{port}: unexpected answer {response:?}");
                    }
                    Err(e) => eprintln!("GET 127.0.0.1:{port}: {e}"),
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            None
        }

        /// A throwaway registry (Debian's `docker-registry`) on a free loopback port, killed on drop.
        pub struct Registry {
            child: Child,
            port: u16,
            /// Tags and digest references pushed, removed from the engine on drop.
            references: std::sync::Mutex<Vec<String>>,
            _dir: tempfile::TempDir,
        }

        impl Registry {
            pub fn start() -> Registry {
                let dir = tempfile::tempdir().unwrap();
                let port = free_port();
                let config = dir.path().join("config.yml");
                std::fs::write(
                    &config,
                    format!(
                        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                         http:\n  addr: 127.0.0.1:{port}\n",
                        dir.path().join("data").display()
                    ),
                )
                .unwrap();
                let child = Command::new("docker-registry")
                    .arg("serve")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("cannot run docker-registry: apt-get install -y docker-registry");
                let registry = Registry { child, port, references: Default::default(), _dir: dir };
                let deadline = Instant::now() + Duration::from_secs(10);
                while TcpStream::connect(("127.0.0.1", port)).is_err() {
                    assert!(Instant::now() < deadline, "the registry did not listen on 127.0.0.1:{port}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                registry
            }

            /// Builds `FROM slipway-test/busybox` + `/www/index.html` = `page` + `CMD cmd`, pushes
            /// it, and returns it pinned by digest: `127.0.0.1:<port>/slipway-test/<name>@sha256:…`.
            pub fn build_and_push(&self, work: &Path, name: &str, page: &str, cmd: &str) -> String {
                let context = work.join(format!("{name}-{page}"));
                std::fs::create_dir_all(context.join("www")).unwrap();
                std::fs::write(context.join("www/index.html"), format!("{page}\n")).unwrap();
                std::fs::write(
                    context.join("Dockerfile"),
                    format!("FROM {BASE_IMAGE}\nCOPY www /www\nCMD {cmd}\n"),
                )
                .unwrap();
                let repository = format!("127.0.0.1:{}/slipway-test/{name}", self.port);
                let tag = format!("{repository}:{page}");
                docker_cli(&["build", "-q", "-t", &tag, context.to_str().unwrap()]).unwrap();
                docker_cli(&["push", &tag]).unwrap();
                let digests =
                    docker_cli(&["inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", &tag])
                        .unwrap();
                let pinned = digests.lines().find(|d| d.starts_with(&format!("{repository}@sha256:")));
                let pinned =
                    pinned.unwrap_or_else(|| panic!("no digest of {repository} in {digests:?}")).to_owned();
                self.references.lock().unwrap().extend([tag, pinned.clone()]);
                pinned
            }
        }

        impl Drop for Registry {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                // Untag only: the layers stay in the engine's cache for the next run.
                for reference in self.references.lock().map(|r| r.clone()).unwrap_or_default() {
                    let _ = docker_cli(&["image", "rm", &reference]);
                }
            }
        }

        /// Removes a test stack's services, network and volumes, even when the test failed.
        pub struct StackCleanup {
            stack: String,
            apps: Vec<String>,
        }

        impl StackCleanup {
            pub fn new(stack: &str, apps: &[&str]) -> StackCleanup {
                StackCleanup { stack: stack.to_owned(), apps: apps.iter().map(|a| a.to_string()).collect() }
            }
        }

        impl Drop for StackCleanup {
            fn drop(&mut self) {
                for app in &self.apps {
                    let _ = docker_cli(&["service", "rm", &format!("{}_{app}", self.stack)]);
                }
                // The network and volumes stay busy until the tasks' containers are gone.
                let deadline = Instant::now() + Duration::from_secs(20);
                let network = format!("{}_default", self.stack);
                let filter = format!("label=com.docker.stack.namespace={}", self.stack);
                loop {
                    let network_gone = docker_cli(&["network", "inspect", &network]).is_err()
                        || docker_cli(&["network", "rm", &network]).is_ok();
                    let volumes =
                        docker_cli(&["volume", "ls", "-q", "--filter", &filter]).unwrap_or_default();
                    let volumes_gone = volumes
                        .lines()
                        .filter(|v| !v.is_empty())
                        .all(|v| docker_cli(&["volume", "rm", v]).is_ok());
                    if (network_gone && volumes_gone) || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}
