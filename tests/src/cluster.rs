//! [`TestCluster`]: a real slipway on this machine — the `slipway-scheduler` and
//! `slipway-agent` binaries as child processes (so a test can `kill -9` them), a real
//! registry, the local Docker engine as a single-node Swarm — and a control-API client
//! that speaks for the test.
//!
//! Each cluster uses its own stack name, ports, data dir and build root, so test
//! binaries running at the same time do not meet; dropping it kills the processes and
//! removes the stack's services and network.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use slipway_proto::control_client::ControlClient;
use slipway_proto::deploy_event::Event;
use slipway_proto::{self as pb};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::{base_image, ensure_swarm, free_port, require_docker, workspace_root, Registry};

/// Path of a workspace binary, built once per test process if needed.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    BUILT.get_or_init(|| {
        // Cheap when up to date; makes `cargo test -p slipway-tests` self-sufficient.
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "slipway-scheduler", "-p", "slipway-agent", "--bins"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build for the slipway binaries");
        assert!(status.success(), "cargo build of the slipway binaries failed");
    });
    let path = target.join("debug").join(name);
    assert!(path.exists(), "{} is missing after cargo build", path.display());
    path
}

/// What a deploy or rollback stream said, collected.
#[derive(Debug, Default)]
pub struct DeployRun {
    pub build_id: String,
    pub events: Vec<pb::DeployEvent>,
    pub log: Vec<String>,
    pub built: Option<pb::BuildOutput>,
    pub release: Option<pb::Release>,
    pub done: Option<pb::DeployDone>,
    pub failed: Option<String>,
    /// An error status answered instead of a stream.
    pub refused: Option<tonic::Status>,
    pub elapsed: Duration,
}

impl DeployRun {
    /// The failure reason (from the stream or the refusal), or panics with what happened.
    pub fn error(&self) -> String {
        if let Some(f) = &self.failed {
            return f.clone();
        }
        if let Some(s) = &self.refused {
            return s.message().to_string();
        }
        panic!("expected the deploy to fail, but it ended with {:?}", self.done);
    }

    /// The live release, or panics with the log and the failure.
    pub fn live(&self) -> &pb::Release {
        match &self.done {
            Some(d) => d.release.as_ref().expect("done carries the release"),
            None => panic!(
                "deploy did not go live: failed={:?} refused={:?}\n--- log ---\n{}",
                self.failed,
                self.refused,
                self.log.join("\n")
            ),
        }
    }
}

/// A scheduler + agent + registry on the local engine.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    /// Engine socket the agent builds with (tests point it at nothing).
    agent_docker_socket: String,
    /// Engine socket the scheduler deploys with.
    scheduler_docker_socket: String,
    pub registry: Registry,
    pub stack: String,
    pub grpc_addr: String,
    pub http_addr: String,
    scheduler: Option<Child>,
    agent: Option<Child>,
}

impl TestCluster {
    /// Starts everything, or returns None after a loud skip where Docker is missing.
    pub async fn start(stack: &str) -> Option<TestCluster> {
        require_docker().await?;
        ensure_swarm().await;
        base_image().await;
        let registry = Registry::start().await;
        let dir = tempfile::Builder::new().prefix(&format!("slipway-{stack}-")).tempdir().expect("tempdir");
        let mut cluster = TestCluster {
            grpc_addr: format!("127.0.0.1:{}", free_port()),
            http_addr: format!("127.0.0.1:{}", free_port()),
            dir,
            agent_docker_socket: "/var/run/docker.sock".into(),
            scheduler_docker_socket: "/var/run/docker.sock".into(),
            registry,
            stack: stack.to_string(),
            scheduler: None,
            agent: None,
        };
        cluster.remove_stack();
        cluster.write_configs();
        cluster.start_scheduler().await;
        cluster.start_agent();
        cluster.wait_for_ready_nodes(1).await;
        Some(cluster)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write_configs(&self) {
        let scheduler = format!(
            "node_id = 1\nlisten = \"{}\"\nhttp_listen = \"{}\"\ndata_dir = \"{}\"\n\n[registry]\naddr = \"{}\"\n\n\
             [deploy]\nstack = \"{}\"\ndocker_socket = \"{}\"\npublish_mode = \"host\"\nconverge_timeout_secs = 120\n\n\
             [agents]\nreport_interval_secs = 1\ndown_after_secs = 5\n\n\
             [placement]\nmin_free_bytes = 104857600\nqueue_timeout_secs = 20\n",
            self.grpc_addr,
            self.http_addr,
            self.path("scheduler").display(),
            self.registry.addr(),
            self.stack,
            self.scheduler_docker_socket,
        );
        std::fs::write(self.path("scheduler.toml"), scheduler).expect("write scheduler.toml");
        let agent = format!(
            "schedulers = [\"{}\"]\nname = \"{}-node\"\nstate_dir = \"{}\"\nbuild_root = \"{}\"\nbuild_slots = 2\ndocker_socket = \"{}\"\n",
            self.grpc_addr,
            self.stack,
            self.path("agent").display(),
            self.path("builds").display(),
            self.agent_docker_socket,
        );
        std::fs::write(self.path("agent.toml"), agent).expect("write agent.toml");
    }

    fn spawn(&self, bin: &str, config: &str, log: &str) -> Child {
        let log_file =
            std::fs::OpenOptions::new().create(true).append(true).open(self.path(log)).expect("open log");
        Command::new(binary(bin))
            .arg("--config")
            .arg(self.path(config))
            .env("RUST_LOG", "info,openraft=warn,sled=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"))
    }

    /// Starts (or restarts) the scheduler from its data dir and waits until it leads.
    pub async fn start_scheduler(&mut self) {
        assert!(self.scheduler.is_none(), "scheduler already running");
        self.scheduler = Some(self.spawn("slipway-scheduler", "scheduler.toml", "scheduler.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{}/readyz", self.http_addr);
        loop {
            if let Ok(resp) = reqwest::get(&url).await {
                if resp.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "scheduler not ready after 30 s\n{}", self.scheduler_log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Points the agent at another engine socket (takes effect at its next start).
    pub fn set_agent_docker_socket(&mut self, socket: &str) {
        self.agent_docker_socket = socket.to_string();
        self.write_configs();
    }

    /// Points the scheduler at another engine socket (takes effect at its next start).
    pub fn set_scheduler_docker_socket(&mut self, socket: &str) {
        self.scheduler_docker_socket = socket.to_string();
        self.write_configs();
    }

    /// `kill -9` the scheduler.
    pub fn kill_scheduler(&mut self) {
        if let Some(mut child) = self.scheduler.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        self.agent = Some(self.spawn("slipway-agent", "agent.toml", "agent.log"));
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn scheduler_log(&self) -> String {
        std::fs::read_to_string(self.path("scheduler.log")).unwrap_or_default()
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// A fresh control-API client.
    pub async fn client(&self) -> ControlClient<Channel> {
        ControlClient::connect(format!("http://{}", self.grpc_addr)).await.expect("connect to the scheduler")
    }

    /// Waits until `n` nodes report Ready.
    pub async fn wait_for_ready_nodes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes =
                self.client().await.list_nodes(pb::ListNodesRequest {}).await.map(|r| r.into_inner().nodes);
            let ready = nodes
                .as_ref()
                .map_or(0, |ns| ns.iter().filter(|n| n.status == pb::NodeStatus::Ready as i32).count());
            if ready >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{ready} of {n} nodes ready after 30 s\n--- agent ---\n{}\n--- scheduler ---\n{}",
                self.agent_log(),
                self.scheduler_log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn create_app(&self, name: &str, repo: &str) -> Result<pb::App, tonic::Status> {
        let req = pb::CreateAppRequest { name: name.into(), repo: repo.into(), branch: "main".into() };
        self.client().await.create_app(req).await.map(|r| r.into_inner())
    }

    /// Deploys and follows the stream to its end.
    pub async fn deploy(&self, app: &str, git_ref: Option<&str>) -> DeployRun {
        let req = pb::DeployRequest {
            app: app.into(),
            git_ref: git_ref.unwrap_or_default().into(),
            no_cache: false,
            request_id: String::new(),
        };
        let started = Instant::now();
        let stream = self.client().await.deploy(req).await;
        collect(stream, started).await
    }

    pub async fn rollback(&self, app: &str, to: Option<u64>) -> DeployRun {
        let req = pb::RollbackRequest { app: app.into(), to: to.unwrap_or(0), request_id: String::new() };
        let started = Instant::now();
        let stream = self.client().await.rollback(req).await;
        collect(stream, started).await
    }

    pub async fn releases(&self, app: &str) -> Vec<pb::Release> {
        let req = pb::ListReleasesRequest { app: app.into() };
        self.client().await.list_releases(req).await.expect("list releases").into_inner().releases
    }

    pub async fn builds(&self, app: &str) -> Vec<pb::Build> {
        let req = pb::ListBuildsRequest { app: app.into() };
        self.client().await.list_builds(req).await.expect("list builds").into_inner().builds
    }

    pub async fn apps(&self) -> Vec<pb::App> {
        self.client().await.list_apps(pb::ListAppsRequest {}).await.expect("list apps").into_inner().apps
    }

    /// Swarm service name of an app.
    pub fn service(&self, app: &str) -> String {
        format!("{}_{app}", self.stack)
    }

    /// The image the app's Swarm service runs (`docker service inspect`).
    pub fn service_image(&self, app: &str) -> String {
        crate::docker::docker_cli(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            &self.service(app),
        ])
        .unwrap_or_else(|e| panic!("inspect service {}: {e}", self.service(app)))
        .trim()
        .to_string()
    }

    /// Runs the `slipway` CLI binary against this cluster.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("slipway"))
            .args(["--scheduler", &self.grpc_addr])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run slipway")
    }

    fn remove_stack(&self) {
        let filter = format!("label=com.docker.stack.namespace={}", self.stack);
        if let Ok(ids) = crate::docker::docker_cli(&["service", "ls", "-q", "--filter", &filter]) {
            for id in ids.split_whitespace() {
                let _ = crate::docker::docker_cli(&["service", "rm", id]);
            }
        }
        let _ = crate::docker::docker_cli(&["network", "rm", &format!("{}_default", self.stack)]);
    }

    /// The build root of the agent (build dirs and logs).
    pub fn build_root(&self) -> PathBuf {
        self.path("builds")
    }

    /// Data dir of the scheduler.
    pub fn data_dir(&self) -> PathBuf {
        self.path("scheduler")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.kill_agent();
        self.kill_scheduler();
        self.remove_stack();
        if std::thread::panicking() {
            eprintln!("--- scheduler log (tail) ---\n{}", tail(&self.scheduler_log(), 60));
            eprintln!("--- agent log (tail) ---\n{}", tail(&self.agent_log(), 60));
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn collect(
    stream: Result<tonic::Response<tonic::Streaming<pb::DeployEvent>>, tonic::Status>,
    started: Instant,
) -> DeployRun {
    let mut run = DeployRun::default();
    let mut stream = match stream {
        Ok(s) => s.into_inner(),
        Err(status) => {
            run.refused = Some(status);
            return run;
        }
    };
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(status) => {
                run.failed = Some(format!("stream broke: {status}"));
                break;
            }
        };
        match &event.event {
            Some(Event::BuildQueued(id)) => run.build_id = id.clone(),
            Some(Event::Log(l)) => run.log.push(l.line.clone()),
            Some(Event::Built(o)) => run.built = Some(o.clone()),
            Some(Event::Release(r)) => run.release = Some(r.clone()),
            Some(Event::DeployProgress(p)) => run.log.push(format!("[deploy] {p}")),
            Some(Event::Done(d)) => run.done = Some(d.clone()),
            Some(Event::Failed(f)) => run.failed = Some(f.clone()),
            Some(Event::Placement(_)) | None => {}
        }
        run.events.push(event);
    }
    run.elapsed = started.elapsed();
    run
}

/// Rewrites the example app's port (its manifest and healthcheck) so tests running at
/// the same time do not compete for one host port.
pub fn set_app_port(repo: &crate::GitRepo, port: u16) {
    let path: &Path = repo.path();
    let manifest = std::fs::read_to_string(path.join("slipway.toml")).expect("read slipway.toml");
    let manifest = manifest.replace("port = 8080", &format!("port = {port}"));
    repo.write("slipway.toml", manifest);
}
