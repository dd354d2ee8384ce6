//! The router's Swarm service, `<stack>_router`: Caddy on every node (global mode) on the
//! stack's overlay network, publishing `router.http_port` (host mode where the kernel has
//! no IPVS, the routing mesh otherwise), started from [`start_config`] — a Swarm config
//! object named after its digest — with its admin socket in the volume
//! `<stack>_router_admin` on each node, where the node's agent finds it.
//!
//! [`ensure`] creates the service when it is missing and updates it when its settings
//! changed (a label holds their digest), so running it every round restarts nothing.
//! Updates go stop-first: a host port cannot be held twice on one node. Fenced like a
//! deploy: only a member a quorum confirms as leader creates or updates it.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use bollard::models::{
    ConfigSpec, EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Mount, MountType, MountVolumeOptions, NetworkAttachmentConfig,
    ServiceSpec, ServiceSpecMode, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecConfigs,
    TaskSpecContainerSpecFile1, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::UpdateServiceOptions;
use bollard::Docker;
use slipway_common::Backoff;
use slipway_proto::router::admin_volume;

use super::caddy::{start_config, ADMIN_DIR, CONTAINER_PORT};
use crate::config::RouterSettings;
use crate::deploy::{
    engine_error, ensure_network, has_status, is_out_of_sequence, network_name, DeployError, PublishMode,
    LABEL_STACK_NAMESPACE,
};

/// Label telling slipway's own services apart: `router` on the router.
pub const LABEL_ROLE: &str = "io.slipway.role";
/// Service label: digest of the settings the router service was made with.
const LABEL_SPEC: &str = "io.slipway.router-spec";
/// Where the start config is mounted in the router's container.
const START_CONFIG_PATH: &str = "/etc/slipway/router.json";

/// The router's service name: `<stack>_router`.
pub fn service_name(stack: &str) -> String {
    format!("{stack}_router")
}

fn short_digest(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The Swarm config object holding the start config: `<stack>_router_start_<digest>`.
fn start_config_name(stack: &str) -> String {
    format!("{stack}_router_start_{}", short_digest(&start_config()))
}

/// The router's service spec, given the start config object's id (pure).
pub fn service_spec(
    stack: &str,
    settings: &RouterSettings,
    publish_mode: PublishMode,
    start_config_id: &str,
) -> ServiceSpec {
    let config_name = start_config_name(stack);
    let fingerprint = short_digest(
        format!("{}|{}|{publish_mode:?}|{config_name}", settings.image, settings.http_port).as_bytes(),
    );
    let labels = HashMap::from([
        (LABEL_STACK_NAMESPACE.to_owned(), stack.to_owned()),
        (LABEL_ROLE.to_owned(), "router".to_owned()),
        (LABEL_SPEC.to_owned(), fingerprint),
    ]);
    let container = TaskSpecContainerSpec {
        image: Some(settings.image.clone()),
        labels: Some(HashMap::from([
            (LABEL_STACK_NAMESPACE.to_owned(), stack.to_owned()),
            (LABEL_ROLE.to_owned(), "router".to_owned()),
        ])),
        command: Some(["caddy", "run", "--config", START_CONFIG_PATH].map(String::from).to_vec()),
        configs: Some(vec![TaskSpecContainerSpecConfigs {
            file: Some(TaskSpecContainerSpecFile1 {
                name: Some(START_CONFIG_PATH.to_owned()),
                uid: Some("0".to_owned()),
                gid: Some("0".to_owned()),
                mode: Some(0o444),
            }),
            config_id: Some(start_config_id.to_owned()),
            config_name: Some(config_name),
            runtime: None,
        }]),
        mounts: Some(vec![Mount {
            target: Some(ADMIN_DIR.to_owned()),
            source: Some(admin_volume(stack)),
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                labels: Some(HashMap::from([(LABEL_STACK_NAMESPACE.to_owned(), stack.to_owned())])),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let (publish, endpoint_mode) = match publish_mode {
        PublishMode::Ingress => (EndpointPortConfigPublishModeEnum::INGRESS, EndpointSpecModeEnum::VIP),
        PublishMode::Host => (EndpointPortConfigPublishModeEnum::HOST, EndpointSpecModeEnum::DNSRR),
    };
    ServiceSpec {
        name: Some(service_name(stack)),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(2_000_000_000),
                max_attempts: Some(0),
                window: None,
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(network_name(stack)),
                aliases: None,
                driver_opts: None,
            }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode { global: Some(HashMap::new()), ..Default::default() }),
        update_config: Some(ServiceSpecUpdateConfig {
            parallelism: Some(1),
            delay: Some(0),
            failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
            monitor: None,
            max_failure_ratio: None,
            order: Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(endpoint_mode),
            ports: Some(vec![EndpointPortConfig {
                protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                target_port: Some(i64::from(CONTAINER_PORT)),
                published_port: Some(i64::from(settings.http_port)),
                publish_mode: Some(publish),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}

/// The id of the start config object, created if missing.
async fn ensure_start_config(docker: &Docker, stack: &str) -> Result<String, DeployError> {
    let name = start_config_name(stack);
    match docker.inspect_config(&name).await {
        Ok(config) => return Ok(config.id.unwrap_or(name)),
        Err(e) if has_status(&e, 404) => {}
        Err(e) => return Err(engine_error(docker, format!("inspect config {name}"), e)),
    }
    let spec = ConfigSpec {
        name: Some(name.clone()),
        labels: Some(HashMap::from([(LABEL_STACK_NAMESPACE.to_owned(), stack.to_owned())])),
        data: Some(base64::engine::general_purpose::STANDARD.encode(start_config())),
        ..Default::default()
    };
    match docker.create_config(spec).await {
        Ok(created) => Ok(created.id),
        // Made by another round in the meantime.
        Err(e) if has_status(&e, 409) => match docker.inspect_config(&name).await {
            Ok(config) => Ok(config.id.unwrap_or(name)),
            Err(e) => Err(engine_error(docker, format!("inspect config {name}"), e)),
        },
        Err(e) => Err(engine_error(docker, format!("create config {name}"), e)),
    }
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The service was missing and is created.
    Created,
    /// Its settings changed and it is updated (its tasks restart, stop-first).
    Updated,
    /// It runs with these settings already.
    Unchanged,
}

/// How many times an update is tried while Swarm answers "update out of sequence".
const UPDATE_ATTEMPTS: u32 = 5;

/// Creates or updates the router service so it runs with `settings`; see the module docs.
///
/// Fenced: `confirm` (a quorum confirming this member still leads) must succeed right
/// before each create or update, or nothing is written ([`DeployError::Unconfirmed`]).
/// An update names the version index it read, so a change made meanwhile (by a newer
/// leader) makes Swarm answer "update out of sequence": the service is read again,
/// leadership confirmed again, and the update tried again.
pub async fn ensure<F, Fut>(
    docker: &Docker,
    stack: &str,
    settings: &RouterSettings,
    publish_mode: PublishMode,
    confirm: F,
) -> Result<Ensured, DeployError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    ensure_network(docker, stack).await?;
    let config_id = ensure_start_config(docker, stack).await?;
    let spec = service_spec(stack, settings, publish_mode, &config_id);
    let name = service_name(stack);
    let mut last_error = String::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
    for _ in 0..UPDATE_ATTEMPTS {
        let current = match docker.inspect_service(&name, None).await {
            Ok(current) => current,
            Err(e) if has_status(&e, 404) => {
                fenced(&confirm, format!("create service {name}")).await?;
                return match docker.create_service(spec, None).await {
                    Ok(_) => Ok(Ensured::Created),
                    Err(e) => Err(engine_error(docker, format!("create service {name}"), e)),
                };
            }
            Err(e) => return Err(engine_error(docker, format!("inspect service {name}"), e)),
        };
        let label = |s: &ServiceSpec| s.labels.as_ref().and_then(|l| l.get(LABEL_SPEC)).cloned();
        if current.spec.as_ref().and_then(label) == label(&spec) {
            return Ok(Ensured::Unchanged);
        }
        let index = current.version.and_then(|v| v.index).unwrap_or_default();
        let version = i32::try_from(index).map_err(|_| DeployError::Api {
            action: format!("update service {name}"),
            message: format!("its version index {index} does not fit the API client's 32-bit field"),
        })?;
        let id = current.id.unwrap_or_else(|| name.clone());
        fenced(&confirm, format!("update service {name}")).await?;
        let options = UpdateServiceOptions { version, ..Default::default() };
        match docker.update_service(&id, spec.clone(), options, None).await {
            Ok(_) => return Ok(Ensured::Updated),
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

/// `confirm`'s refusal as the error of `action`.
async fn fenced<F, Fut>(confirm: &F, action: String) -> Result<(), DeployError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    confirm().await.map_err(|reason| DeployError::Unconfirmed { action, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_runs_caddy_on_every_node_with_its_start_config_and_admin_volume() {
        let settings = RouterSettings { http_port: 8080, ..Default::default() };
        let spec = service_spec("st", &settings, PublishMode::Host, "cfg-id");
        assert_eq!(spec.name.as_deref(), Some("st_router"));
        assert!(spec.mode.as_ref().unwrap().global.is_some());
        let task = spec.task_template.as_ref().unwrap();
        let container = task.container_spec.as_ref().unwrap();
        assert_eq!(container.command.as_ref().unwrap()[..2], ["caddy".to_owned(), "run".to_owned()]);
        let config = &container.configs.as_ref().unwrap()[0];
        assert_eq!(config.config_id.as_deref(), Some("cfg-id"));
        assert!(config.config_name.as_ref().unwrap().starts_with("st_router_start_"));
        assert_eq!(container.mounts.as_ref().unwrap()[0].source.as_deref(), Some("st_router_admin"));
        let endpoint = spec.endpoint_spec.as_ref().unwrap();
        assert_eq!(endpoint.mode, Some(EndpointSpecModeEnum::DNSRR));
        let port = &endpoint.ports.as_ref().unwrap()[0];
        assert_eq!((port.target_port, port.published_port), (Some(80), Some(8080)));
        assert_eq!(port.publish_mode, Some(EndpointPortConfigPublishModeEnum::HOST));
        // Other settings, another fingerprint: ensure() updates the service.
        let other =
            service_spec("st", &RouterSettings { http_port: 80, ..settings }, PublishMode::Host, "cfg-id");
        assert_ne!(spec.labels.unwrap()[LABEL_SPEC], other.labels.unwrap()[LABEL_SPEC]);
    }

    /// The router's fence, against the local engine (skipped when none answers): a member
    /// that cannot confirm its leadership creates and updates nothing, and an update that
    /// a newer change overtook ("update out of sequence") is confirmed and tried again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_router_service_is_written_only_by_a_confirmed_leader_and_retried_out_of_sequence() {
        use std::sync::atomic::{AtomicU32, Ordering};

        use slipway_testkit::{ensure_swarm, free_port, require_docker, unique_name, StackCleanup};

        let Some(docker) = require_docker().await else { return };
        ensure_swarm().await;
        let stack = unique_name("rtfence");
        let _cleanup = StackCleanup::new(&stack);
        let name = service_name(&stack);
        let settings = RouterSettings { http_port: free_port(), ..Default::default() };
        let deposed =
            || async { Err::<(), _>("a quorum did not confirm this member's leadership".to_owned()) };
        let leading = || async { Ok::<(), String>(()) };

        // Missing, and this member cannot prove it leads: not created.
        match ensure(&docker, &stack, &settings, PublishMode::Host, deposed).await {
            Err(err @ DeployError::Unconfirmed { .. }) => {
                let text = err.to_string();
                assert!(
                    text.starts_with(&format!("did not create service {name}: this member cannot prove")),
                    "{text}"
                );
                assert!(text.contains("a quorum did not confirm"), "{text}");
            }
            other => panic!("expected the fence to refuse, got {other:?}"),
        }
        let err = docker.inspect_service(&name, None).await.expect_err("no service was created");
        assert!(has_status(&err, 404), "{err}");

        assert_eq!(
            ensure(&docker, &stack, &settings, PublishMode::Host, leading).await.unwrap(),
            Ensured::Created
        );
        let created = docker.inspect_service(&name, None).await.unwrap();
        let spec_label = |s: &bollard::models::Service| {
            s.spec.as_ref().and_then(|s| s.labels.as_ref()).and_then(|l| l.get(LABEL_SPEC).cloned())
        };

        // New settings, a deposed member: the service keeps its version and settings.
        let moved = RouterSettings { http_port: free_port(), ..settings.clone() };
        match ensure(&docker, &stack, &moved, PublishMode::Host, deposed).await {
            Err(DeployError::Unconfirmed { action, .. }) => {
                assert_eq!(action, format!("update service {name}"))
            }
            other => panic!("expected the fence to refuse, got {other:?}"),
        }
        // The spec, not the version: Swarm's allocator bumps the version by itself when it
        // fills in the endpoint after a create (seen under load in CI).
        let refused = docker.inspect_service(&name, None).await.unwrap();
        assert_eq!(refused.spec, created.spec, "the refused update changed the service's spec");
        assert_eq!(spec_label(&refused), spec_label(&created));

        // A newer change lands between this member's read and its update (made from inside
        // the first confirmation): Swarm answers out of sequence, the service is read and
        // leadership confirmed again, and the second update goes through.
        let calls = AtomicU32::new(0);
        let overtaken = || {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            let (docker, name) = (docker.clone(), name.clone());
            async move {
                // Swarm's own task updates race this write too: it is tried until it lands.
                for attempt in 0.. {
                    if !first {
                        break;
                    }
                    let current = docker.inspect_service(&name, None).await.unwrap();
                    let mut spec = current.spec.unwrap();
                    spec.labels.get_or_insert_with(Default::default).insert("test.bump".into(), "1".into());
                    let version = i32::try_from(current.version.unwrap().index.unwrap()).unwrap();
                    let options = UpdateServiceOptions { version, ..Default::default() };
                    match docker.update_service(&name, spec, options, None).await {
                        Ok(_) => break,
                        Err(e) if is_out_of_sequence(&e) && attempt < 20 => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(e) => panic!("the newer change: {e}"),
                    }
                }
                Ok::<(), String>(())
            }
        };
        assert_eq!(
            ensure(&docker, &stack, &moved, PublishMode::Host, overtaken).await.unwrap(),
            Ensured::Updated
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "confirmed again after the out-of-sequence answer");
        let updated = docker.inspect_service(&name, None).await.unwrap();
        let expected =
            service_spec(&stack, &moved, PublishMode::Host, "any").labels.unwrap()[LABEL_SPEC].clone();
        assert_eq!(spec_label(&updated), Some(expected));
    }
}
