//! Spec: the pure half of a deploy. The names a stack's objects get (`<stack>_<app>`,
//! `<stack>_default`, `<stack>_<app>_<path>`), the checks a [`ServiceDeploy`] must pass before
//! anything reaches Docker, and the complete Swarm [`ServiceSpec`] built from it: labels,
//! healthcheck, volume mounts (local or NFS), placement constraints, endpoint (`dnsrr`, and the
//! published port if any), update and rollback policy. No Docker needed; the tests are in
//! `spec_tests.rs`.
//!
//! The engine does not resolve images itself for API ≥ 1.30 (that is a client-side option of
//! the docker CLI), so the spec keeps exactly the `repo@sha256:…` we send.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EndpointSpec,
    EndpointSpecModeEnum, HealthConfig, Mount, MountType, MountVolumeOptions, MountVolumeOptionsDriverConfig,
    NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecRollbackConfig, ServiceSpecRollbackConfigFailureActionEnum,
    ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use slipway_proto::validate::{self, Invalid};

use crate::state::Healthcheck;

use super::{
    DeployError, PersistBackend, PublishMode, ServiceDeploy, DEFAULT_MONITOR, LABEL_APP, LABEL_RELEASE,
    LABEL_STACK_IMAGE, LABEL_STACK_NAMESPACE, RESTART_DELAY,
};

/// Docker's healthcheck defaults, used when a field of [`Healthcheck`] is zero.
const DOCKER_DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const DOCKER_DEFAULT_HEALTH_RETRIES: u32 = 3;
/// Swarm service names are DNS labels.
const MAX_SERVICE_NAME_LEN: usize = 63;
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

pub(super) fn validate_names(stack: &str, app: &str) -> Result<(), Invalid> {
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

fn validate_healthcheck(hc: &Healthcheck) -> Result<(), Invalid> {
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

/// Checks everything about a [`ServiceDeploy`] that can be checked without Docker: names,
/// the image's digest, ports (`publish` needs `port`; neither is 0), env, persist paths,
/// the healthcheck, and each placement constraint, which must read `<attribute> == <value>`
/// or `<attribute> != <value>` with an attribute Swarm knows: `node.id`, `node.hostname`,
/// `node.role`, `node.platform.os`, `node.platform.arch`, `node.labels.<label>` or
/// `engine.labels.<label>`.
pub fn validate(spec: &ServiceDeploy) -> Result<(), Invalid> {
    validate_names(&spec.stack, &spec.app)?;
    validate::image(&spec.image)?;
    if spec.port == Some(0) {
        return Err(invalid("port", "0 is not a port; leave it out when the app listens on none"));
    }
    match (spec.publish, spec.port) {
        (Some(0), _) => return Err(invalid("publish", "0 is not a port; leave it out to publish nothing")),
        (Some(publish), None) => {
            return Err(invalid(
                "publish",
                format!("host port {publish} would be published to the app's port, but the app has none"),
            ))
        }
        _ => {}
    }
    for constraint in &spec.constraints {
        validate::placement_constraint(constraint)?;
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
    for secret in &spec.secrets {
        validate::secret_name(&secret.name)?;
    }
    if let Some(hc) = &spec.healthcheck {
        validate_healthcheck(hc)?;
    }
    Ok(())
}

/// The host-mode port the service publishes, if it does: its updates and rollbacks stop the
/// old task first, and its new tasks may wait for the port (see [`PLACEMENT_PATIENCE_HOST_PORT`]).
///
/// [`PLACEMENT_PATIENCE_HOST_PORT`]: super::PLACEMENT_PATIENCE_HOST_PORT
pub(super) fn host_port(spec: &ServiceDeploy) -> Option<u16> {
    spec.publish.filter(|_| spec.publish_mode == PublishMode::Host)
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

pub(super) fn health_config(hc: &Healthcheck) -> HealthConfig {
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
pub fn monitor_period(healthcheck: Option<&Healthcheck>) -> Duration {
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
        secrets: (!spec.secrets.is_empty()).then(|| super::secrets::secret_refs(&spec.secrets)),
        ..Default::default()
    };
    // Two tasks cannot hold one host port on one node: the old one must go first.
    let (update_order, rollback_order) = if host_port(spec).is_some() {
        (ServiceSpecUpdateConfigOrderEnum::STOP_FIRST, ServiceSpecRollbackConfigOrderEnum::STOP_FIRST)
    } else {
        (ServiceSpecUpdateConfigOrderEnum::START_FIRST, ServiceSpecRollbackConfigOrderEnum::START_FIRST)
    };
    let monitor = nanos(monitor_period(spec.healthcheck.as_ref()));
    let ports = spec.publish.zip(spec.port).map(|(published, target)| {
        vec![EndpointPortConfig {
            protocol: Some(EndpointPortConfigProtocolEnum::TCP),
            target_port: Some(i64::from(target)),
            published_port: Some(i64::from(published)),
            publish_mode: Some(match spec.publish_mode {
                PublishMode::Ingress => EndpointPortConfigPublishModeEnum::INGRESS,
                PublishMode::Host => EndpointPortConfigPublishModeEnum::HOST,
            }),
            ..Default::default()
        }]
    });
    // DNS round robin: `tasks.<service>` and the service name resolve to the tasks, which is
    // what the router balances over. Swarm refuses it with an ingress-mode port, which needs
    // the virtual IP.
    let endpoint_mode = if spec.publish.is_some() && spec.publish_mode == PublishMode::Ingress {
        EndpointSpecModeEnum::VIP
    } else {
        EndpointSpecModeEnum::DNSRR
    };
    let placement = (!spec.constraints.is_empty())
        .then(|| TaskSpecPlacement { constraints: Some(spec.constraints.clone()), ..Default::default() });
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
            placement,
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
        endpoint_spec: Some(EndpointSpec { mode: Some(endpoint_mode), ports }),
    })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
