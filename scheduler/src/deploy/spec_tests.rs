//! Tests of [`service_spec`] and the checks before it: what Swarm is asked for, field by
//! field, and which input is refused with which field named. Pure, no Docker.

use super::*;
use crate::deploy::tests::{container, shop, DIGEST};

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
    d.healthcheck = Some(Healthcheck {
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
fn an_app_publishes_nothing_and_is_reached_by_dns_round_robin() {
    let spec = service_spec(&shop()).unwrap();
    let endpoint = spec.endpoint_spec.as_ref().unwrap();
    assert_eq!(endpoint.mode, Some(EndpointSpecModeEnum::DNSRR));
    assert!(endpoint.ports.is_none(), "the container port is not published");
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

    // The publish mode matters only with a port to publish.
    let mut d = shop();
    d.publish_mode = PublishMode::Host;
    let spec = service_spec(&d).unwrap();
    assert_eq!(
        spec.update_config.as_ref().unwrap().order,
        Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
    );
    assert_eq!(spec.endpoint_spec.as_ref().unwrap().mode, Some(EndpointSpecModeEnum::DNSRR));
}

#[test]
fn an_ingress_port_goes_through_the_mesh_and_its_virtual_ip() {
    let mut d = shop();
    d.publish = Some(9000);
    let spec = service_spec(&d).unwrap();
    let endpoint = spec.endpoint_spec.as_ref().unwrap();
    assert_eq!(endpoint.mode, Some(EndpointSpecModeEnum::VIP), "Swarm refuses dnsrr with ingress ports");
    let ports = endpoint.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].target_port, Some(8080));
    assert_eq!(ports[0].published_port, Some(9000));
    assert_eq!(ports[0].protocol, Some(EndpointPortConfigProtocolEnum::TCP));
    assert_eq!(ports[0].publish_mode, Some(EndpointPortConfigPublishModeEnum::INGRESS));
    assert_eq!(
        spec.update_config.as_ref().unwrap().order,
        Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
    );
    assert_eq!(
        spec.rollback_config.as_ref().unwrap().order,
        Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST)
    );
}

#[test]
fn a_host_mode_port_updates_and_rolls_back_stop_first() {
    let mut d = shop();
    d.publish = Some(9000);
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
    let endpoint = spec.endpoint_spec.as_ref().unwrap();
    assert_eq!(endpoint.mode, Some(EndpointSpecModeEnum::DNSRR));
    let port = &endpoint.ports.as_ref().unwrap()[0];
    assert_eq!((port.target_port, port.published_port), (Some(8080), Some(9000)));
    assert_eq!(port.publish_mode, Some(EndpointPortConfigPublishModeEnum::HOST));
    assert_eq!(host_port(&d), Some(9000));
}

#[test]
fn constraints_go_to_the_task_placement() {
    assert!(service_spec(&shop()).unwrap().task_template.unwrap().placement.is_none());
    let mut d = shop();
    d.constraints = vec!["node.labels.gpu == true".into(), "node.role!=manager".into()];
    let spec = service_spec(&d).unwrap();
    let placement = spec.task_template.as_ref().unwrap().placement.as_ref().unwrap();
    assert_eq!(placement.constraints.as_deref().unwrap(), ["node.labels.gpu == true", "node.role!=manager"]);
}

#[test]
fn constraints_in_swarms_form_are_accepted() {
    for constraint in [
        "node.id == 2ivku8v2gvtg4",
        "node.hostname != node-2",
        "node.role==manager",
        "node.platform.os == linux",
        "node.platform.arch == x86_64",
        "node.labels.gpu == true",
        "node.labels.zone.rack-1 != a/b",
        "engine.labels.operatingsystem == ubuntu-24.04",
    ] {
        let mut d = shop();
        d.constraints = vec![constraint.into()];
        assert!(validate(&d).is_ok(), "{constraint}: {:?}", validate(&d));
    }
}

#[test]
fn spec_serializes_with_the_engine_api_names() {
    let mut d = shop();
    d.publish = Some(9000);
    d.publish_mode = PublishMode::Host;
    d.constraints = vec!["node.role != manager".into()];
    let json = serde_json::to_value(service_spec(&d).unwrap()).unwrap();
    assert_eq!(json["UpdateConfig"]["Order"], "stop-first");
    assert_eq!(json["UpdateConfig"]["FailureAction"], "rollback");
    assert_eq!(json["EndpointSpec"]["Mode"], "dnsrr");
    assert_eq!(json["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
    assert_eq!(json["TaskTemplate"]["Placement"]["Constraints"][0], "node.role != manager");
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
    d.persist_backend = PersistBackend::Nfs { addr: "10.0.0.5".into(), export_root: "/srv/slipway/".into() };
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
    assert!(slipway_proto::validate::image(&format!("127.0.0.1:5000/a/b@{DIGEST}")).is_ok());
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
        (|d| d.publish = Some(0), "invalid publish"),
        (
            |d| {
                d.publish = Some(9000);
                d.port = None;
            },
            "invalid publish",
        ),
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
fn bad_constraints_are_refused_with_the_constraint_and_the_form_named() {
    for (constraint, why) in [
        ("node.labels.gpu", "has no operator"),
        ("node.labels.gpu = true", "has no operator"),
        ("node.lables.gpu == true", "unknown attribute \"node.lables.gpu\""),
        ("node.labels. == true", "label name is empty"),
        ("node.labels.g pu == true", "label name"),
        ("engine.labels == x", "unknown attribute"),
        (" == manager", "unknown attribute \"\""),
        ("node.role == ", "has the value \"\""),
        ("node.role == manager == worker", "holds a character Swarm refuses"),
        ("node.role == a<b", "holds a character Swarm refuses"),
        ("node.role == manager\n", "control character"),
        ("node.role\t== manager", "control character"),
    ] {
        let mut d = shop();
        d.constraints = vec!["node.role == worker".into(), constraint.into()];
        let msg = refused(d);
        assert!(msg.starts_with("invalid placement constraint"), "{constraint:?}: {msg}");
        assert!(msg.contains(&format!("{constraint:?}")), "names the constraint: {msg}");
        assert!(msg.contains(why), "{constraint:?}: expected {why:?} in {msg}");
        assert!(msg.contains("`<attribute> == <value>` or `<attribute> != <value>`"), "{msg}");
        assert!(msg.contains("node.labels.<label>"), "{msg}");
    }
}

#[test]
fn monitor_period_covers_one_healthcheck_failure_window() {
    let hc = |interval, retries| Healthcheck {
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
