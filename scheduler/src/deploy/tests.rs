//! Tests of the deploy entry points against the local Docker engine (skipped when none answers,
//! see `fixture::docker_or_skip`), their fixture, and the sample [`ServiceDeploy`] ([`shop`])
//! that the tests of each part share.
//!
//! `docker swarm init --advertise-addr 127.0.0.1` is accepted (Docker 20.10): a single-node
//! swarm on loopback is enough for these tests.

use std::time::Instant;

use bollard::models::{ServiceSpec, TaskSpecContainerSpec};

use super::engine::task_ids;
use super::*;

pub(super) const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(super) fn shop() -> ServiceDeploy {
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
    let crash =
        registry.build_and_push(work.path(), "crash", "crash", r#"["sh", "-c", "echo crashing; exit 3"]"#);
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
        // A host-mode rollback can wait a minute on Swarm (see converge.rs).
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
    let stacks = fixture::docker_cli(&["stack", "ls", "--format", "{{.Name}}"]).unwrap();
    assert!(stacks.lines().any(|l| l == stack), "docker stack ls:\n{stacks}");
    let services =
        fixture::docker_cli(&["stack", "services", &stack, "--format", "{{.Name}} {{.Image}}"]).unwrap();
    assert!(services.lines().any(|l| l == format!("{stack}_web {v1}")), "docker stack services:\n{services}");
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
    let second = deploy(&docker, &web(&v2, 2, fixture::http_healthcheck()), None, &progress).await.unwrap();
    assert!(!second.created);
    assert_eq!(second.service_id, first.service_id);
    assert_eq!(fixture::http_get(port).as_deref(), Some("v2"));
    eprintln!("t30: update done after {:?}", started.elapsed());

    // A release whose healthcheck never passes: Swarm rolls back to release 2.
    let failing = HealthcheckSpec { cmd: vec!["CMD".into(), "false".into()], ..fixture::http_healthcheck() };
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
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("task") && l.contains("ended: No such image")));
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
                let volumes = docker_cli(&["volume", "ls", "-q", "--filter", &filter]).unwrap_or_default();
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
