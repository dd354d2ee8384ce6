//! Deploy: create or update the Swarm service that runs one release of an app, then wait
//! until Swarm has converged on it, rolled it back, or given up.
//!
//! To operators the result looks exactly like `docker stack deploy`: the service is named
//! `<stack>_<app>` and labelled `com.docker.stack.namespace=<stack>` (so `docker stack ls` and
//! `docker stack services <stack>` list it), it is attached to the overlay network
//! `<stack>_default` with the alias `<app>`, and its named volumes are `<stack>_<app>_<path>`.
//!
//! Apps publish no host port: the stack's router (the Swarm service `<stack>_router`)
//! reaches each app's tasks over `<stack>_default` by the DNS name `tasks.<stack>_<app>` on the
//! app's container port. The service's endpoint mode is therefore `dnsrr` (the name resolves
//! to the tasks themselves, no virtual IP). A non-HTTP app may ask to publish one host port
//! ([`ServiceDeploy::publish`]); an ingress-mode one needs Swarm's virtual IP, a host-mode one
//! makes updates stop the old task first.
//!
//! ```text
//! mod.rs       deploy(ServiceDeploy, Option<PullAuth>, progress)
//! spec.rs        validate + service_spec (pure) ─► ServiceSpec
//! mod.rs         ensure_swarm_manager
//! engine.rs      ensure network <stack>_default (overlay, attachable)
//!                inspect <stack>_<app> ─► create, or update with its version index
//!                (whole spec replaced; retried on "update out of sequence"), unless the
//!                service's io.slipway.release is newer (the fence: DeployError::Fenced)
//! converge.rs    every 500 ms: service UpdateStatus + tasks ─► observe + judge (pure) ─► progress
//!                a task Swarm cannot place for PLACEMENT_PATIENCE ─► roll back (engine.rs) or fail
//!              ─► Ok(DeployOutcome) | RolledBack | TasksFailed | Timeout
//! grants.rs    renew_pull_grant, later and from the dispatcher: fresh pull credentials, no restart
//! ```
//!
//! A task "belongs" to this deploy when its image is the release's digest and its container
//! carries `io.slipway.release=<release>`: a release number therefore names exactly one spec.
//!
//! # Layout
//! - this file: what callers use: [`ServiceDeploy`], [`PullAuth`], [`DeployOutcome`],
//!   [`DeployError`], the labels and timings, and the entry points [`deploy`], [`remove_app`]
//!   and [`ensure_swarm_manager`] (the other public items are re-exported from the parts).
//! - `spec.rs`: names, validation and the Swarm service spec (pure).
//! - `engine.rs`: the engine calls with retries, and what their errors mean.
//! - `converge.rs`: observe and judge the service until it settles, and what Swarm was seen
//!   doing on the way (healthchecks, rollbacks, host-mode ports, tasks it cannot place).
//! - `grants.rs`: [`renew_pull_grant`], keeping a running service's registry credentials valid.
//! - `secrets.rs`: the Swarm secrets holding app secrets, their mounts, and pruning them.
//! - `observe.rs`: reads for operators, not deploys: an app's tasks (`apps show`) and what
//!   they print (`apps logs`).
//! - Tests: `spec_tests.rs`, `engine_tests.rs` and `converge_tests.rs` beside their part, pure;
//!   `tests.rs` deploys on the local Docker engine.

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::Docker;
use slipway_proto::validate::Invalid;

use crate::state::Healthcheck;

mod converge;
mod engine;
mod grants;
pub mod observe;
pub mod secrets;
mod spec;

pub use grants::{renew_pull_grant, Renewal};
pub use spec::{
    monitor_period, network_name, sanitize_path, service_name, service_spec, validate, volume_name,
};

use converge::converge;
use engine::apply;
pub(crate) use engine::{engine_error, ensure_network, has_status, is_out_of_sequence};
use spec::validate_names;

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
/// How long a task of the new release may stay unplaceable (Swarm's `no suitable node (…)`
/// or `insufficient resources`) before the deploy gives up on it. Swarm's scheduler decides
/// from the cluster's state as it is, so an error that outlasts a few polls will not clear.
pub const PLACEMENT_PATIENCE: Duration = Duration::from_secs(3);
/// [`PLACEMENT_PATIENCE`] for a release that publishes a host-mode port: its stop-first
/// update legitimately waits (`host-mode port already in use`) while the old task lets go
/// of the port, up to Docker's 10 s stop grace period for an app that ignores SIGTERM.
pub const PLACEMENT_PATIENCE_HOST_PORT: Duration = Duration::from_secs(15);

/// The registry credentials a service's tasks pull with: Swarm keeps them with the
/// service (sent as `X-Registry-Auth`) and hands them to whichever node runs a task.
/// `Debug` leaves the secret out.
#[derive(Clone)]
pub struct PullAuth {
    /// The login the engines pull with (a pull-only grant for the app).
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
    /// Container port the app listens on (the caller gives it to the app as `$PORT`). Not
    /// published: the router reaches it at `tasks.<stack>_<app>:<port>`.
    pub port: Option<u16>,
    /// Host port published to `port` (tcp, as `publish_mode` says), only for a non-HTTP app
    /// that asks for one. Needs `port`.
    pub publish: Option<u16>,
    /// Swarm placement constraints, e.g. `node.labels.gpu == true`, `node.role != manager`
    /// or `node.hostname == n1` (see [`validate`] for the form); all must hold.
    pub constraints: Vec<String>,
    /// Environment, passed as `K=V`.
    pub env: BTreeMap<String, String>,
    /// Absolute container paths that become volume mounts (see [`PersistBackend`]).
    pub persist: Vec<String>,
    /// Swarm secrets mounted at `/run/secrets/<name>`.
    pub secrets: Vec<secrets::SecretMount>,
    /// Container healthcheck; overrides the image's `HEALTHCHECK`.
    pub healthcheck: Option<Healthcheck>,
    /// How `publish` is published.
    pub publish_mode: PublishMode,
    /// Where `persist` directories live.
    pub persist_backend: PersistBackend,
    /// How long [`deploy`] waits for Swarm to converge (or finish a rollback).
    pub converge_timeout: Duration,
}

/// How a published port ([`ServiceDeploy::publish`]) reaches the tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PublishMode {
    /// Swarm's routing mesh: the port answers on every node (IPVS), through the service's
    /// virtual IP (endpoint mode `vip`). Updates start the new task before stopping the old.
    #[default]
    Ingress,
    /// The port is bound on the node that runs the task (single node, tests, no IPVS).
    /// Two tasks cannot hold one host port on one node, so updates stop the old task first.
    Host,
}

impl From<crate::config::PublishModeConfig> for PublishMode {
    fn from(mode: crate::config::PublishModeConfig) -> Self {
        match mode {
            crate::config::PublishModeConfig::Ingress => PublishMode::Ingress,
            crate::config::PublishModeConfig::Host => PublishMode::Host,
        }
    }
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
    /// Host port published ([`ServiceDeploy::publish`]), if any.
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
    /// The new release's tasks keep failing, or Swarm cannot place one, and there is nothing
    /// to roll back to (first deploy); or Swarm paused the update or the rollback. The reason
    /// is the task's error, e.g. `No such image: …`, `task: non-zero exit (1)`, an unhealthy
    /// container, or `a task of release 1 cannot be placed: no suitable node (…)`.
    #[error("the release's tasks failed: {reason}")]
    TasksFailed {
        /// Swarm's last task error or update message.
        reason: String,
    },
    /// Swarm rolled the update back (on its own when a task failed, or asked to when a task
    /// could not be placed): the previous release keeps running.
    #[error("Swarm rolled the update back, the previous release keeps running: {reason}")]
    RolledBack {
        /// Swarm's update message (or the placement error) and the task error of the new
        /// release that caused the rollback.
        reason: String,
    },
    /// The service already runs a newer release than the one being applied: a newer
    /// leader deployed it, and this update would move the service backwards. Nothing
    /// was changed (the fence, see [`fence`]).
    #[error(
        "service {service} runs release {running}, newer than release {release}: not moving it \
         backwards (a newer leader deployed it; this member may have lost its leadership)"
    )]
    Fenced {
        /// The service.
        service: String,
        /// The release its label names.
        running: u64,
        /// The release this update would have applied.
        release: u64,
    },
    /// A write to Swarm outside a deploy's own fence (the router's service) was not made:
    /// this member could not prove, right before it, that it still leads. Nothing was
    /// changed; whoever leads makes the change.
    #[error("did not {action}: this member cannot prove it still leads ({reason})")]
    Unconfirmed {
        /// What was not done, e.g. `update service slipway_router`.
        action: String,
        /// Why leadership was not confirmed.
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

/// The fence on a service: an update applying `release` may proceed unless the service's
/// [`LABEL_RELEASE`] (`running`, as the engine has it) names a newer release, which is
/// returned. Release numbers only grow (a rollback is a new release), so a deposed
/// leader acting on its stale state can never move a service to an older release than a
/// newer leader deployed. A label that is not a number (a service slipway did not make)
/// does not fence. Pure.
pub fn fence(running: Option<&str>, release: u64) -> Result<(), u64> {
    match running.and_then(|label| label.parse::<u64>().ok()) {
        Some(running) if running > release => Err(running),
        _ => Ok(()),
    }
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

#[cfg(test)]
mod tests;
