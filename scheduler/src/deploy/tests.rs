//! Tests of the deploy entry points against the local Docker engine (skipped when none answers,
//! see [`slipway_testkit::require_docker`]), the test app they deploy, and the sample
//! [`ServiceDeploy`] ([`shop`]) that the tests of each part share.
//!
//! The engine, the single-node Swarm, the base image and the registry come from
//! `slipway-testkit`. `docker swarm init --advertise-addr 127.0.0.1` is accepted (Docker
//! 20.10): a single-node swarm on loopback is enough for these tests.

use std::path::Path;
use std::time::Instant;

use bollard::models::{
    EndpointSpecModeEnum, ServiceSpec, ServiceSpecUpdateConfigOrderEnum, TaskSpecContainerSpec,
};
use slipway_testkit::{
    base_image, docker_cli, ensure_swarm, free_port, require_docker, unique_name, wait_for_http, Registry,
    StackCleanup, BASE_IMAGE,
};

use super::engine::task_ids;
use super::*;

pub(super) const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(super) fn shop() -> ServiceDeploy {
    ServiceDeploy {
        secrets: Default::default(),
        stack: "slipway".into(),
        app: "shop".into(),
        image: format!("registry.local:5000/shop@{DIGEST}"),
        release: 7,
        replicas: 2,
        port: Some(8080),
        publish: None,
        constraints: vec![],
        env: BTreeMap::from([("LOG_LEVEL".into(), "info".into()), ("A".into(), "x=y".into())]),
        persist: vec!["/app/uploads".into(), "/app/data/".into()],
        healthcheck: Some(Healthcheck {
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

pub(super) fn container(spec: &ServiceSpec) -> &TaskSpecContainerSpec {
    spec.task_template.as_ref().unwrap().container_spec.as_ref().unwrap()
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
    let Some(docker) = require_docker().await else {
        return;
    };
    let started = Instant::now();
    ensure_swarm().await;
    ensure_swarm_manager(&docker).await.unwrap();
    base_image().await;
    let registry = Registry::start().await;
    let work = tempfile::tempdir().unwrap();
    let [v1, v2, v3] = ["v1", "v2", "v3"].map(|v| build_and_push(&registry, work.path(), "web", v, WEB_CMD));
    let crash =
        build_and_push(&registry, work.path(), "crash", "crash", r#"["sh", "-c", "echo crashing; exit 3"]"#);
    eprintln!("t30: images built and pushed after {:?}", started.elapsed());

    let stack = unique_name("swt30");
    let _cleanup = StackCleanup::new(&stack);
    let port = free_port();
    let progress = |line: String| eprintln!("t30 progress: {line}");
    let web = |image: &str, release: u64, healthcheck: Healthcheck| ServiceDeploy {
        secrets: Default::default(),
        stack: stack.clone(),
        app: "web".into(),
        image: image.to_owned(),
        release,
        replicas: 1,
        port: Some(port),
        publish: Some(port),
        constraints: vec![],
        env: BTreeMap::from([("PORT".into(), port.to_string())]),
        persist: vec!["/data/uploads".into()],
        healthcheck: Some(healthcheck),
        publish_mode: PublishMode::Host,
        persist_backend: PersistBackend::Local,
        // A host-mode rollback can wait a minute on Swarm (see converge.rs).
        converge_timeout: Duration::from_secs(120),
    };
    let crashing = ServiceDeploy {
        app: "crash".into(),
        image: crash.clone(),
        port: None,
        publish: None,
        persist: vec![],
        healthcheck: None,
        ..web(&crash, 1, http_healthcheck())
    };

    // First deploy of a healthy app and, at the same time, of one that exits at once.
    let release1 = web(&v1, 1, http_healthcheck());
    let (first, crashed) = tokio::join!(
        deploy(&docker, &release1, None, &progress),
        deploy(&docker, &crashing, None, &progress)
    );
    let first = first.unwrap();
    assert!(first.created);
    assert_eq!((first.running, first.desired, first.published_port), (1, 1, Some(port)));
    assert_eq!(http_get(port).await.as_deref(), Some("v1"));
    let service = docker.inspect_service(&service_name(&stack, "web"), None).await.unwrap();
    let spec = service.spec.unwrap();
    assert_eq!(container(&spec).image.as_deref(), Some(v1.as_str()), "the engine kept the digest as given");
    assert_eq!(spec.labels.as_ref().unwrap()[LABEL_RELEASE], "1");
    match crashed {
        Err(DeployError::TasksFailed { reason }) => {
            assert!(reason.contains("non-zero exit (3)"), "{reason}")
        }
        other => panic!("a crashing first deploy should fail, got {other:?}"),
    }
    eprintln!("t30: first deploys done after {:?}", started.elapsed());

    // It looks like `docker stack deploy` to operators.
    let stacks = docker_cli(&["stack", "ls", "--format", "{{.Name}}"]).unwrap();
    assert!(stacks.lines().any(|l| l == stack), "docker stack ls:\n{stacks}");
    let services = docker_cli(&["stack", "services", &stack, "--format", "{{.Name}} {{.Image}}"]).unwrap();
    assert!(services.lines().any(|l| l == format!("{stack}_web {v1}")), "docker stack services:\n{services}");
    let network = docker_cli(&[
        "network",
        "inspect",
        &network_name(&stack),
        "--format",
        &format!("{{{{.Driver}}}} {{{{.Attachable}}}} {{{{index .Labels \"{LABEL_STACK_NAMESPACE}\"}}}}"),
    ])
    .unwrap();
    assert_eq!(network, format!("overlay true {stack}"));
    let volume = volume_name(&stack, "web", "/data/uploads");
    let label = docker_cli(&[
        "volume",
        "inspect",
        &volume,
        "--format",
        &format!("{{{{index .Labels \"{LABEL_STACK_NAMESPACE}\"}}}}"),
    ])
    .unwrap();
    assert_eq!(label, stack);

    // A rolling update to the next release.
    let second = deploy(&docker, &web(&v2, 2, http_healthcheck()), None, &progress).await.unwrap();
    assert!(!second.created);
    assert_eq!(second.service_id, first.service_id);
    assert_eq!(http_get(port).await.as_deref(), Some("v2"));
    eprintln!("t30: update done after {:?}", started.elapsed());

    // A release whose healthcheck never passes: Swarm rolls back to release 2.
    let failing = Healthcheck { cmd: vec!["CMD".into(), "false".into()], ..http_healthcheck() };
    match deploy(&docker, &web(&v3, 3, failing), None, &progress).await {
        Err(DeployError::RolledBack { reason }) => assert!(reason.contains("unhealthy"), "{reason}"),
        other => panic!("expected an automatic rollback, got {other:?}"),
    }
    let service = docker.inspect_service(&service_name(&stack, "web"), None).await.unwrap();
    let spec = service.spec.unwrap();
    assert_eq!(container(&spec).image.as_deref(), Some(v2.as_str()));
    assert_eq!(spec.labels.as_ref().unwrap()[LABEL_RELEASE], "2");
    assert_eq!(http_get(port).await.as_deref(), Some("v2"));
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
    let Some(docker) = require_docker().await else {
        return;
    };
    let started = Instant::now();
    ensure_swarm().await;
    let stack = unique_name("swt31");
    let _cleanup = StackCleanup::new(&stack);
    let spec = ServiceDeploy {
        secrets: Default::default(),
        stack: stack.clone(),
        app: "ghost".into(),
        // Nothing listens on port 9: the pull fails and the image is not here.
        image: format!("127.0.0.1:9/slipway-test/ghost@sha256:{}", "0".repeat(64)),
        release: 1,
        replicas: 1,
        port: None,
        publish: None,
        constraints: vec![],
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
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("task") && l.contains("ended: No such image")));
    remove_app(&docker, &stack, "ghost").await.unwrap();
    eprintln!("t31: took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t35_an_update_below_the_release_the_service_runs_is_fenced_and_changes_nothing() {
    let Some(docker) = require_docker().await else {
        return;
    };
    ensure_swarm().await;
    let stack = unique_name("fen35");
    let _cleanup = StackCleanup::new(&stack);
    let release = |number: u64| ServiceDeploy {
        stack: stack.clone(),
        app: "ledger".into(),
        // Never pulled: the fence refuses before any task of it is asked for.
        image: format!("127.0.0.1:9/slipway-test/ledger@sha256:{}", "0".repeat(64)),
        release: number,
        replicas: 1,
        port: None,
        publish: None,
        constraints: vec![],
        env: BTreeMap::new(),
        persist: vec![],
        healthcheck: None,
        publish_mode: PublishMode::Host,
        persist_backend: PersistBackend::Local,
        converge_timeout: Duration::from_secs(30),
        secrets: Default::default(),
    };
    let name = service_name(&stack, "ledger");
    // What a newer leader left: the service at release 5.
    ensure_network(&docker, &stack).await.unwrap();
    super::engine::apply(&docker, &service_spec(&release(5)).unwrap(), None, &name, &|_| {}).await.unwrap();
    let before = docker.inspect_service(&name, None).await.unwrap();

    // A deposed leader deploying its stale release 3.
    match deploy(&docker, &release(3), None, &|_| {}).await {
        Err(DeployError::Fenced { service, running: 5, release: 3 }) => assert_eq!(service, name),
        other => panic!("expected the fence to refuse, got {other:?}"),
    }
    let after = docker.inspect_service(&name, None).await.unwrap();
    assert_eq!(after.version, before.version, "the refused update changed the service");
    let label = after.spec.and_then(|s| s.labels).and_then(|l| l.get(LABEL_RELEASE).cloned());
    assert_eq!(label.as_deref(), Some("5"));
    remove_app(&docker, &stack, "ledger").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t33_an_app_publishes_nothing_and_an_update_no_node_can_take_is_rolled_back_fast() {
    let Some(docker) = require_docker().await else {
        return;
    };
    ensure_swarm().await;
    base_image().await;
    let registry = Registry::start().await;
    let work = tempfile::tempdir().unwrap();
    let image = build_and_push(&registry, work.path(), "web", "v1", WEB_CMD);
    let stack = unique_name("swt33");
    let _cleanup = StackCleanup::new(&stack);
    let lines = std::sync::Mutex::new(Vec::new());
    let progress = |line: String| {
        eprintln!("t33 progress: {line}");
        lines.lock().unwrap().push(line);
    };
    let web = |release: u64, constraints: Vec<String>| ServiceDeploy {
        secrets: Default::default(),
        stack: stack.clone(),
        app: "web".into(),
        image: image.clone(),
        release,
        replicas: 1,
        port: Some(8080),
        publish: None,
        constraints,
        env: BTreeMap::from([("PORT".into(), "8080".into())]),
        persist: vec![],
        healthcheck: Some(http_healthcheck()),
        publish_mode: PublishMode::Ingress,
        persist_backend: PersistBackend::Local,
        converge_timeout: Duration::from_secs(60),
    };

    // Release 1 publishes nothing: DNS round robin, reached on the stack's network.
    let first = deploy(&docker, &web(1, vec![]), None, &progress).await.unwrap();
    assert_eq!((first.running, first.published_port), (1, None));
    let name = service_name(&stack, "web");
    let service = docker.inspect_service(&name, None).await.unwrap();
    let spec = service.spec.as_ref().unwrap();
    let endpoint = spec.endpoint_spec.as_ref().unwrap();
    assert_eq!(endpoint.mode, Some(EndpointSpecModeEnum::DNSRR));
    assert!(endpoint.ports.as_ref().is_none_or(Vec::is_empty), "{endpoint:?}");
    let published = service.endpoint.as_ref().and_then(|e| e.ports.clone()).unwrap_or_default();
    assert!(published.is_empty(), "nothing published: {published:?}");
    assert_eq!(
        spec.update_config.as_ref().unwrap().order,
        Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
    );
    let url = format!("http://tasks.{name}:8080/");
    let page = docker_cli(&[
        "run",
        "--rm",
        "--network",
        &network_name(&stack),
        BASE_IMAGE,
        "wget",
        "-q",
        "-O-",
        &url,
    ]);
    assert_eq!(page.as_deref().map(str::trim), Ok("v1"), "{url} on the stack's network");
    let release1_tasks = running_tasks(&docker, &name, "1").await;
    assert_eq!(release1_tasks.len(), 1);

    // Release 2 asks for a node that does not exist: Swarm leaves its task pending.
    let nowhere = vec!["node.labels.slipway-test-nowhere == true".to_owned()];
    let asked = Instant::now();
    let result = deploy(&docker, &web(2, nowhere), None, &progress).await;
    let took = asked.elapsed();
    eprintln!("t33: the unplaceable update failed after {took:?}");
    match result {
        Err(DeployError::RolledBack { reason }) => {
            assert!(reason.starts_with("a task of release 2 cannot be placed: no suitable node"), "{reason}");
            assert!(reason.contains("scheduling constraints not satisfied"), "{reason}");
        }
        other => panic!("expected RolledBack, got {other:?}"),
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("giving up on release 2")));
    let service = docker.inspect_service(&name, None).await.unwrap();
    assert_eq!(service.spec.unwrap().labels.unwrap()[LABEL_RELEASE], "1");
    // Release 1 runs once the deploy returns. Its task is usually the one from before the
    // update (start-first), but on a loaded machine Swarm has been seen to replace it while
    // release 2's task was pending (two release-2 tasks, then the rollback started a new
    // release-1 task), so the test asks only that release 1 runs.
    let running = running_tasks(&docker, &name, "1").await;
    assert_eq!(running.len(), 1, "release 1 runs again: {running:?} (before: {release1_tasks:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t34_a_host_port_another_app_holds_fails_the_first_deploy_fast() {
    let Some(docker) = require_docker().await else {
        return;
    };
    ensure_swarm().await;
    base_image().await;
    let registry = Registry::start().await;
    let work = tempfile::tempdir().unwrap();
    let image = build_and_push(&registry, work.path(), "web", "v1", WEB_CMD);
    let stack = unique_name("swt34");
    let _cleanup = StackCleanup::new(&stack);
    let port = free_port();
    let progress = |line: String| eprintln!("t34 progress: {line}");
    let app = |app: &str| ServiceDeploy {
        secrets: Default::default(),
        stack: stack.clone(),
        app: app.into(),
        image: image.clone(),
        release: 1,
        replicas: 1,
        port: Some(port),
        publish: Some(port),
        constraints: vec![],
        env: BTreeMap::from([("PORT".into(), port.to_string())]),
        persist: vec![],
        healthcheck: Some(http_healthcheck()),
        publish_mode: PublishMode::Host,
        persist_backend: PersistBackend::Local,
        converge_timeout: Duration::from_secs(60),
    };

    let web = deploy(&docker, &app("web"), None, &progress).await.unwrap();
    assert_eq!(web.published_port, Some(port));
    assert_eq!(http_get(port).await.as_deref(), Some("v1"));

    let asked = Instant::now();
    let result = deploy(&docker, &app("other"), None, &progress).await;
    let took = asked.elapsed();
    eprintln!("t34: the deploy of a second app on host port {port} failed after {took:?}");
    match result {
        Err(DeployError::TasksFailed { reason }) => {
            assert!(reason.starts_with("a task of release 1 cannot be placed"), "{reason}");
            assert!(reason.contains("host-mode port already in use"), "{reason}");
        }
        other => panic!("expected TasksFailed, got {other:?}"),
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(http_get(port).await.as_deref(), Some("v1"), "the first app keeps its port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_the_pull_grant_restarts_no_task() {
    let Some(docker) = require_docker().await else {
        return;
    };
    ensure_swarm().await;
    base_image().await;
    let registry = Registry::start().await;
    let work = tempfile::tempdir().unwrap();
    let image = build_and_push(&registry, work.path(), "web", "v1", WEB_CMD);
    let stack = unique_name("swrenew");
    let _cleanup = StackCleanup::new(&stack);
    let port = free_port();
    let spec = ServiceDeploy {
        secrets: Default::default(),
        stack: stack.clone(),
        app: "web".into(),
        image,
        release: 1,
        replicas: 1,
        port: Some(port),
        publish: Some(port),
        constraints: vec![],
        env: BTreeMap::from([("PORT".into(), port.to_string())]),
        persist: vec!["/data/uploads".into()],
        healthcheck: Some(http_healthcheck()),
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
    assert_eq!(http_get(port).await.as_deref(), Some("v1"));
}

/// The test app: busybox httpd serving /www on $PORT. PID 1 ignores SIGTERM unless it traps it,
/// so the shell exits on TERM instead of waiting for the 10 s kill.
const WEB_CMD: &str = r#"["sh", "-c", "trap 'exit 0' TERM; httpd -f -p $PORT -h /www & wait"]"#;

/// Probes often (a deploy waits for the first healthy probe) but tolerates a loaded
/// machine: a probe may take 5 s, and a task is unhealthy after 3 failures in a row (the
/// suite runs tests in parallel on 2 cores; a stricter check killed healthy tasks).
fn http_healthcheck() -> Healthcheck {
    Healthcheck {
        cmd: vec!["CMD-SHELL".into(), "wget -q -O /dev/null http://127.0.0.1:$PORT/".into()],
        interval: Duration::from_millis(500),
        timeout: Duration::from_secs(5),
        start_period: Duration::ZERO,
        retries: 3,
    }
}

/// Builds [`BASE_IMAGE`] + `/www/index.html` = `page` + `CMD cmd` as
/// `slipway-test/<name>:<page>`, pushes it to `registry`, and returns it pinned by digest.
fn build_and_push(registry: &Registry, work: &Path, name: &str, page: &str, cmd: &str) -> String {
    let context = work.join(format!("{name}-{page}"));
    std::fs::create_dir_all(context.join("www")).unwrap();
    std::fs::write(context.join("www/index.html"), format!("{page}\n")).unwrap();
    std::fs::write(context.join("Dockerfile"), format!("FROM {BASE_IMAGE}\nCOPY www /www\nCMD {cmd}\n"))
        .unwrap();
    registry.build_and_push(&context, &format!("slipway-test/{name}"), page)
}

/// IDs of the service's running tasks of `release`, sorted.
async fn running_tasks(docker: &Docker, service: &str, release: &str) -> Vec<String> {
    let tasks = super::engine::list_tasks(docker, service).await.unwrap();
    let mut ids: Vec<String> = tasks
        .into_iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(bollard::models::TaskState::RUNNING))
        .filter(|t| {
            let container = t.spec.as_ref().and_then(|s| s.container_spec.as_ref());
            container.and_then(|c| c.labels.as_ref()).and_then(|l| l.get(LABEL_RELEASE)).map(String::as_str)
                == Some(release)
        })
        .filter_map(|t| t.id)
        .collect();
    ids.sort();
    ids
}

/// GET / on 127.0.0.1:port until it answers 200 (for up to 10 s): the body, trimmed.
async fn http_get(port: u16) -> Option<String> {
    match wait_for_http(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(10)).await {
        Ok(body) => Some(body.trim().to_owned()),
        Err(e) => {
            eprintln!("{e:#}");
            None
        }
    }
}
