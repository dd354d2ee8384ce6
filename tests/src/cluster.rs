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
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use slipway_proto::control_client::ControlClient;
use slipway_proto::deploy_event::Event;
use slipway_proto::tls::{Credentials, PeerIdentity, Role, Transport};
use slipway_proto::{self as pb};
use slipway_scheduler::security::pki::Ca;
use slipway_scheduler::security::realm_proxy;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use slipway_testkit::net::free_port_on;
use slipway_testkit::{
    base_image, docker_cli, ensure_swarm, free_port, require_docker, router_image, workspace_root, NetLab,
    Registry, ROUTER_IMAGE,
};

use crate::{cluster_token_auth, Fleet};

/// Environment variable naming the profile fixtures run the slipway binaries in:
/// `release` for benchmarks, debug otherwise.
pub const PROFILE_ENV: &str = "SLIPWAY_BIN_PROFILE";

/// Path of a workspace binary, built once per test process if needed (in the profile
/// [`PROFILE_ENV`] names).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let release = std::env::var(PROFILE_ENV).is_ok_and(|p| p == "release");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    BUILT.get_or_init(|| {
        // Cheap when up to date; makes `cargo test -p slipway-tests` self-sufficient.
        // Debug builds ask for exactly what `cargo nextest run --workspace` (CI) has just
        // built: the same packages and targets resolve the same dependency features, so
        // nothing is compiled again. (Building only the three binaries' packages resolved
        // other features for ring, rustls and bollard and recompiled them, minutes per CI
        // run.) Release builds are for the benches, which build only what they run.
        let args: &[&str] = if release {
            &[
                "build",
                "-q",
                "--release",
                "-p",
                "slipway-scheduler",
                "-p",
                "slipway-agent",
                "-p",
                "slipway-cli",
                "--bins",
            ]
        } else {
            &["build", "-q", "--workspace", "--all-targets"]
        };
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(args).current_dir(workspace_root());
        pin_rustc(&mut cargo);
        let status = cargo.status().expect("run cargo build for the slipway binaries");
        assert!(status.success(), "cargo build of the slipway binaries failed");
    });
    let path = target.join(if release { "release" } else { "debug" }).join(name);
    assert!(path.exists(), "{} is missing after cargo build", path.display());
    path
}

/// Started by hand rather than by cargo (a bench run as `target/release/bench-raft`), a
/// `cargo build` reaches rustup's `rustc` proxy with no toolchain named, and the proxy
/// then picks one by the directory it compiles in: `ff` pins Rust 1.56 in its own
/// `rust-toolchain.toml`, and the build fails. Name the `rustc` beside the cargo that
/// built this binary, as rustup does for a process cargo starts.
fn pin_rustc(cargo: &mut Command) {
    if std::env::var_os("RUSTUP_TOOLCHAIN").is_some() || std::env::var_os("RUSTC").is_some() {
        return;
    }
    let rustc = Path::new(env!("CARGO")).with_file_name("rustc");
    if rustc.exists() {
        cargo.env("RUSTC", rustc);
    }
}

/// What a deploy or rollback stream said, collected.
#[derive(Debug, Default)]
pub struct DeployRun {
    /// The build the deploy queued.
    pub build_id: String,
    /// Every event, in order.
    pub events: Vec<pb::DeployEvent>,
    /// The build log lines.
    pub log: Vec<String>,
    /// The image the build pushed.
    pub built: Option<pb::BuildOutput>,
    /// The release recorded.
    pub release: Option<pb::Release>,
    /// The deploy's success, if it succeeded.
    pub done: Option<pb::DeployDone>,
    /// The failure reason, if it failed.
    pub failed: Option<String>,
    /// An error status answered instead of a stream.
    pub refused: Option<tonic::Status>,
    /// How long the stream took.
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

    /// The deploy's progress lines, one per line.
    pub fn events_text(&self) -> String {
        use pb::deploy_event::Event;
        let lines = self.events.iter().filter_map(|e| match &e.event {
            Some(Event::DeployProgress(line)) => Some(line.as_str()),
            _ => None,
        });
        lines.collect::<Vec<_>>().join("\n")
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

/// One `slipway-scheduler` process of a [`TestCluster`].
struct Member {
    id: u64,
    grpc_addr: String,
    http_addr: String,
    /// Lab node it runs in (replicated clusters), or None on the host's loopback.
    netns: Option<u8>,
    /// The process, while it runs (a lock so tests can kill members shared with tasks).
    child: Mutex<Option<Child>>,
}

/// One `slipway-agent` process of a [`TestCluster`]: agent `n` (1-based) has its
/// config in `agent-N.toml` and its log in `agent-N.log`.
struct Agent {
    /// Node name it registers as.
    name: String,
    /// Engine socket it builds with (tests point it at nothing).
    docker_socket: String,
    build_root: PathBuf,
    state_dir: PathBuf,
    /// More of its `agent.toml` (e.g. `builder = "classic"`).
    extra: String,
    /// Its `push_retry_secs`, if not the default.
    push_retry_secs: Option<u64>,
    child: Option<Child>,
}

impl Member {
    /// Member `id` on the host's loopback, on free ports, not started.
    fn on_loopback(id: u64) -> Member {
        Member {
            id,
            grpc_addr: format!("127.0.0.1:{}", free_port()),
            http_addr: format!("127.0.0.1:{}", free_port()),
            netns: None,
            child: Mutex::default(),
        }
    }
}

/// A slipway on this machine: one scheduler on loopback ([`TestCluster::start`]) or a
/// raft cluster of several, each in its own network namespace so a test can cut one
/// off ([`TestCluster::start_replicated`]), with one agent on the local engine
/// following the leader, a registry, and the local engine as a single-node Swarm; or
/// one scheduler and an agent per engine of a [`Fleet`] ([`TestCluster::on_fleet`]).
pub struct TestCluster {
    /// Data dirs, logs and the CLI config of this cluster.
    pub dir: tempfile::TempDir,
    /// Engine socket the scheduler deploys with (tests point it at nothing).
    scheduler_docker_socket: String,
    /// Socket of the Swarm manager the stack lives on (for the test's own look).
    swarm_socket: String,
    /// The registry this cluster started (token auth, with the cluster as its token
    /// server); None on a fleet, whose registry it uses.
    registry: Option<Registry>,
    registry_addr: String,
    /// The registry's token realm in front of a replicated cluster's members
    /// (`slipway-scheduler realm-proxy`'s code, in this process); aborted on drop.
    realm_proxy: Option<tokio::task::JoinHandle<()>>,
    /// In a replicated cluster, what makes the registry's loopback port reach the host's
    /// registry from inside each member's namespace (the leader checks each build's
    /// image there); aborted on drop.
    registry_forwards: Vec<tokio::task::JoinHandle<()>>,
    /// The Swarm stack the cluster deploys into.
    pub stack: String,
    /// Host port the stack's router publishes (host mode) on every engine.
    pub router_port: u16,
    members: Vec<Member>,
    /// Extra `[raft]` settings written into every member's config.
    raft_settings: String,
    /// Extra `[tls]` settings written into every member's config.
    tls_settings: String,
    /// Extra `[registry]` settings written into every member's config.
    registry_settings: String,
    /// Extra `[http]` settings written into every member's config (`tls = true` makes
    /// the HTTP side, and so the registry's realm, https).
    http_settings: String,
    /// Agent `n` is `agents[n - 1]`.
    agents: Vec<Agent>,
    /// The cluster CA, made before any member starts so the registry can trust it;
    /// saved in `ca/`, every member's `tls.ca_dir`.
    ca: Ca,
    /// The agents' join token, once the cluster runs.
    agent_token: Option<String>,
    /// How the test reaches the schedulers: an operator certificate from the cluster CA.
    transport: Transport,
    /// Environment every member process starts with (test-only switches).
    member_env: Vec<(String, String)>,
    /// Dropped last: the namespaces outlive the processes in them.
    lab: Option<NetLab>,
}

/// The engine this machine runs (tests on one engine use it for everything).
const LOCAL_ENGINE: &str = "/var/run/docker.sock";

/// The build filesystem's floor, for schedulers and agents alike: 100 MiB.
pub const MIN_FREE_BYTES: u64 = 100 << 20;

/// Port every member of a replicated cluster listens on, in its own namespace.
const MEMBER_GRPC_PORT: u16 = 7400;
const MEMBER_HTTP_PORT: u16 = 7401;

impl TestCluster {
    /// One scheduler on loopback, an agent, a registry; or None after a loud skip
    /// where Docker is missing.
    pub async fn start(stack: &str) -> Option<TestCluster> {
        Self::start_with_tls(stack, "").await
    }

    /// [`start`](Self::start) with extra settings for the scheduler's `[tls]` section
    /// (e.g. `agent_cert_validity_secs = 30`).
    pub async fn start_with_tls(stack: &str, tls: &str) -> Option<TestCluster> {
        Self::start_single(stack, tls, "", "").await
    }

    /// [`start`](Self::start) with extra settings for the scheduler's `[registry]`
    /// section (e.g. `pull_grant_validity_secs = 30`); `{registry_config}` in them becomes
    /// the path of the cluster registry's `config.yml` (for `gc.command`).
    pub async fn start_with_registry(stack: &str, registry: &str) -> Option<TestCluster> {
        Self::start_single(stack, "", registry, "").await
    }

    /// [`start`](Self::start) with extra settings for the scheduler's `[registry]` and
    /// `[http]` sections (`http = "tls = true"`: the registry's realm is then https).
    pub async fn start_with_http(stack: &str, registry: &str, http: &str) -> Option<TestCluster> {
        Self::start_single(stack, "", registry, http).await
    }

    /// [`start`](Self::start) with whole TOML tables appended to the scheduler's config
    /// (e.g. `"[build_retention]\nfinished_builds_per_app = 4\n"`).
    pub async fn start_with_tables(stack: &str, tables: &str) -> Option<TestCluster> {
        // `[tls]` is the last table of the config written: tables after its keys stand alone.
        Self::start_single(stack, &format!("\n{tables}"), "", "").await
    }

    async fn start_single(stack: &str, tls: &str, registry: &str, http: &str) -> Option<TestCluster> {
        let mut cluster = Self::prepare(stack).await?;
        cluster.tls_settings = tls.to_string();
        cluster.registry_settings = registry.to_string();
        cluster.http_settings = http.to_string();
        cluster.members.push(Member::on_loopback(1));
        let realm = format!("{}://{}/v2/token", cluster.http_scheme(), cluster.member(1).http_addr);
        cluster.start_registry(&realm).await;
        // `{registry_config}` in the settings: the registry's config file (registry.gc.command).
        cluster.registry_settings = cluster
            .registry_settings
            .replace("{registry_config}", &cluster.registry().config_path().display().to_string());
        cluster.add_local_agent();
        cluster.write_configs();
        cluster.start_member(1).await;
        cluster.enroll().await;
        cluster.start_agent(1);
        cluster.wait_for_ready_nodes(1).await;
        Some(cluster)
    }

    /// One scheduler on loopback deploying to `fleet`'s Swarm (through its manager's
    /// socket) with the fleet's registry, and one agent per engine (named as the
    /// engine's host, `node-N`, in [`Fleet::agent_dir`]); returns once every agent
    /// reports. Drop it before the fleet: the agents' files live in the fleet's
    /// directory.
    ///
    /// The fleet's registry is restarted with token auth, this cluster its token server:
    /// the scheduler's HTTP side listens on the lab's host address, where every engine
    /// reaches it.
    pub async fn on_fleet(stack: &str, fleet: &mut Fleet) -> TestCluster {
        slipway_proto::tls::install_crypto_provider();
        let manager_socket = fleet.engine_socket(fleet.manager()).display().to_string();
        let mut cluster = Self::new(stack, &manager_socket, fleet.registry_addr());
        let host_ip = fleet.registry().ip();
        let member =
            Member { http_addr: format!("{host_ip}:{}", free_port_on(host_ip)), ..Member::on_loopback(1) };
        let realm = format!("http://{}/v2/token", member.http_addr);
        cluster.members.push(member);
        fleet
            .registry_mut()
            .require_tokens(cluster_token_auth(&realm, &cluster.ca()))
            .await
            .unwrap_or_else(|e| panic!("cannot restart the fleet's registry with token auth: {e:#}"));
        for n in fleet.engine_numbers() {
            cluster.agents.push(Agent {
                name: fleet.hostname(n),
                docker_socket: fleet.engine_socket(n).display().to_string(),
                build_root: fleet.build_root(n),
                state_dir: fleet.agent_state_dir(n),
                extra: String::new(),
                push_retry_secs: None,
                child: None,
            });
        }
        cluster.write_configs();
        cluster.start_member(1).await;
        cluster.enroll().await;
        for n in fleet.engine_numbers() {
            cluster.start_agent(n);
        }
        cluster.wait_for_ready_nodes(usize::from(fleet.size())).await;
        cluster
    }

    /// `n` schedulers founding one raft cluster (static members), each in its own
    /// network namespace, plus an agent and a registry (on the host's loopback, which
    /// each member reaches on its own loopback through
    /// [`NetLab::forward_to_host`]); returns once a leader is
    /// elected and the agent reports. `raft` is extra TOML for the `[raft]` section
    /// (e.g. `snapshot_every = 50`). None after a loud skip where Docker or root is
    /// missing.
    pub async fn start_replicated(stack: &str, n: u8, raft: &str) -> Option<TestCluster> {
        Self::start_replicated_with_env(stack, n, raft, &[]).await
    }

    /// [`start_replicated`](Self::start_replicated) with `env` set for every member
    /// process (e.g. a scheduler's test-only switch).
    pub async fn start_replicated_with_env(
        stack: &str,
        n: u8,
        raft: &str,
        env: &[(&str, &str)],
    ) -> Option<TestCluster> {
        let lab = NetLab::try_new(stack)?;
        let mut cluster = Self::prepare(stack).await?;
        cluster.raft_settings = raft.to_string();
        cluster.member_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        cluster.lab = Some(lab);
        for i in 1..=n {
            let ip = cluster.lab_mut().add_node(i);
            cluster.members.push(Member {
                id: u64::from(i),
                grpc_addr: format!("{ip}:{MEMBER_GRPC_PORT}"),
                http_addr: format!("{ip}:{MEMBER_HTTP_PORT}"),
                netns: Some(i),
                child: Mutex::default(),
            });
        }
        // Any member answers the registry's token requests; the realm proxy picks a live one.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the realm proxy");
        let realm = format!("http://{}/v2/token", listener.local_addr().expect("its address"));
        let members = cluster.members.iter().map(|m| m.http_addr.clone()).collect();
        cluster.realm_proxy = Some(tokio::spawn(realm_proxy::serve(listener, members)));
        cluster.start_registry(&realm).await;
        let port = cluster.registry().port();
        cluster.registry_forwards = (1..=n).map(|i| cluster.lab_mut().forward_to_host(i, port)).collect();
        cluster.add_local_agent();
        cluster.write_configs();
        for id in 1..=u64::from(n) {
            cluster.start_member(id).await;
        }
        cluster.enroll().await;
        cluster.start_agent(1);
        cluster.wait_for_ready_nodes(1).await;
        Some(cluster)
    }

    /// A cluster on the local engine; its registry starts once the members' addresses
    /// are known ([`start_registry`](Self::start_registry)).
    async fn prepare(stack: &str) -> Option<TestCluster> {
        slipway_proto::tls::install_crypto_provider();
        require_docker().await?;
        ensure_swarm().await;
        base_image().await;
        router_image().await;
        Some(Self::new(stack, LOCAL_ENGINE, String::new()))
    }

    /// This cluster's registry on loopback, taking tokens from `realm`.
    async fn start_registry(&mut self, realm: &str) {
        let auth = cluster_token_auth(realm, &self.ca());
        let registry = Registry::start_with([127, 0, 0, 1], &std::env::temp_dir(), Some(auth))
            .await
            .unwrap_or_else(|e| panic!("cannot start the test registry: {e:#}"));
        self.registry_addr = registry.addr();
        self.registry = Some(registry);
    }

    /// A cluster with nothing started yet but its CA, deploying through the Swarm
    /// manager at `swarm_socket`, its stack's leftovers from an earlier run removed.
    fn new(stack: &str, swarm_socket: &str, registry_addr: String) -> TestCluster {
        let dir = tempfile::Builder::new().prefix(&format!("slipway-{stack}-")).tempdir().expect("tempdir");
        let ca = Ca::create().expect("a CA");
        ca.save(&dir.path().join("ca")).expect("save the CA");
        let cluster = TestCluster {
            dir,
            scheduler_docker_socket: swarm_socket.into(),
            swarm_socket: swarm_socket.into(),
            registry: None,
            registry_addr,
            realm_proxy: None,
            registry_forwards: Vec::new(),
            stack: stack.to_string(),
            router_port: free_port(),
            members: Vec::new(),
            raft_settings: String::new(),
            tls_settings: String::new(),
            registry_settings: String::new(),
            http_settings: String::new(),
            agents: Vec::new(),
            ca,
            agent_token: None,
            transport: Transport::Insecure,
            member_env: Vec::new(),
            lab: None,
        };
        cluster.remove_stack();
        cluster
    }

    /// Once a scheduler runs: an operator certificate for the test (`admin/`, named in
    /// `.slipway/config.toml` for the CLI) and the agents' join token in their configs.
    async fn enroll(&mut self) {
        let admin = self
            .ca()
            .issue(&PeerIdentity::new(Role::Admin, "tests"), Duration::from_secs(24 * 3600))
            .expect("an operator certificate");
        admin.save_dir(&self.path("admin")).expect("save the operator certificate");
        self.transport = Transport::Tls(std::sync::Arc::new(admin));
        let schedulers: Vec<String> = self.grpc_addrs().iter().map(|a| format!("\"{a}\"")).collect();
        std::fs::create_dir_all(self.path(".slipway")).expect("mkdir .slipway");
        let cli = format!(
            "schedulers = [{}]\n\n[tls]\nca = \"../admin/ca.pem\"\ncert = \"../admin/cert.pem\"\nkey = \"../admin/key.pem\"\n",
            schedulers.join(", ")
        );
        std::fs::write(self.path(".slipway/config.toml"), cli).expect("write the CLI config");
        // A leader elected a moment ago may not hear its peers yet (they are still
        // starting on a loaded machine): its quorum check fails as unavailable. Retried.
        let deadline = Instant::now() + Duration::from_secs(30);
        let token = loop {
            let answer = self
                .client()
                .await
                .join_token(pb::JoinTokenRequest { role: "agent".into(), rotate: false })
                .await;
            match answer {
                Ok(token) => break token.into_inner().token,
                Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    eprintln!("the agents' join token: {}; asking again", status.message());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(status) => panic!("the agents' join token: {status:?}"),
            }
        };
        self.agent_token = Some(token);
        self.write_configs();
    }

    /// The operator credentials the test speaks with.
    pub fn admin_credentials(&self) -> Option<&Credentials> {
        match &self.transport {
            Transport::Tls(creds) => Some(creds),
            Transport::Insecure => None,
        }
    }

    /// The cluster CA.
    pub fn ca(&self) -> Ca {
        self.ca.clone()
    }

    /// The agents' join token.
    pub fn agent_token(&self) -> &str {
        self.agent_token.as_deref().expect("the cluster has enrolled")
    }

    /// The one agent of a cluster on the local engine.
    fn add_local_agent(&mut self) {
        self.agents.push(Agent {
            name: format!("{}-node", self.stack),
            docker_socket: LOCAL_ENGINE.into(),
            build_root: self.path("builds"),
            state_dir: self.path("agent"),
            extra: String::new(),
            push_retry_secs: None,
            child: None,
        });
    }

    /// The registry this cluster started (not on a fleet: use the fleet's).
    pub fn registry(&self) -> &Registry {
        self.registry.as_ref().expect("a cluster on a fleet uses the fleet's registry")
    }

    /// The registry, to restart or stop it.
    pub fn registry_mut(&mut self) -> &mut Registry {
        self.registry.as_mut().expect("a cluster on a fleet uses the fleet's registry")
    }

    fn lab_mut(&mut self) -> &mut NetLab {
        self.lab.as_mut().expect("a replicated cluster has a lab")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Member `id`'s `scheduler.toml`, as it starts with (for bounds derived from it).
    pub fn member_config_path(&self, id: u64) -> PathBuf {
        self.path(&format!("scheduler-{id}.toml"))
    }

    /// The agents' `build_secrets_dir` (shared by every agent of the cluster).
    pub fn build_secrets_dir(&self) -> PathBuf {
        self.path("build-secrets")
    }

    /// Puts `app`'s build secret `name` on the build nodes (`<build_secrets_dir>/<app>/<name>`).
    pub fn put_build_secret(&self, app: &str, name: &str, value: &str) {
        let dir = self.build_secrets_dir().join(app);
        std::fs::create_dir_all(&dir).expect("create build secrets dir");
        std::fs::write(dir.join(name), value).expect("write build secret");
    }

    fn member(&self, id: u64) -> &Member {
        self.members.iter().find(|m| m.id == id).unwrap_or_else(|| panic!("no scheduler {id}"))
    }

    fn member_mut(&mut self, id: u64) -> &mut Member {
        self.members.iter_mut().find(|m| m.id == id).unwrap_or_else(|| panic!("no scheduler {id}"))
    }

    /// Every member's gRPC address, in id order.
    pub fn grpc_addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.grpc_addr.clone()).collect()
    }

    /// Member `id`'s gRPC address.
    pub fn grpc_addr(&self, id: u64) -> String {
        self.member(id).grpc_addr.clone()
    }

    /// Ids of the members whose process runs.
    pub fn running_members(&self) -> Vec<u64> {
        self.members.iter().filter(|m| m.child.lock().expect("member lock").is_some()).map(|m| m.id).collect()
    }

    fn write_configs(&self) {
        let static_members = if self.members.len() > 1 {
            let list: Vec<String> = self
                .members
                .iter()
                .map(|m| format!("{{ id = {}, addr = \"{}\" }}", m.id, m.grpc_addr))
                .collect();
            format!("[cluster]\nmembers = [{}]\n\n", list.join(", "))
        } else {
            String::new()
        };
        for m in &self.members {
            self.write_member_config(m, &static_members);
        }
        let schedulers: Vec<String> = self.members.iter().map(|m| format!("\"{}\"", m.grpc_addr)).collect();
        for (i, agent) in self.agents.iter().enumerate() {
            // Port 0: agents sharing the host's loopback do not compete for one port.
            // The disk floor is the scheduler's (below).
            let config = format!(
                "schedulers = [{}]\nname = \"{}\"\nstate_dir = \"{}\"\nbuild_root = \"{}\"\nbuild_slots = 2\n\
                 docker_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\nmin_free_bytes = {MIN_FREE_BYTES}\n\
                 build_secrets_dir = \"{}\"\n{}{}{}",
                schedulers.join(", "),
                agent.name,
                agent.state_dir.display(),
                agent.build_root.display(),
                agent.docker_socket,
                self.build_secrets_dir().display(),
                self.agent_token.as_ref().map(|t| format!("join_token = \"{t}\"\n")).unwrap_or_default(),
                agent.push_retry_secs.map(|s| format!("push_retry_secs = {s}\n")).unwrap_or_default(),
                agent.extra,
            );
            std::fs::write(self.path(&format!("agent-{}.toml", i + 1)), config).expect("write agent config");
        }
    }

    /// Member `m`'s config; `cluster` is its `[cluster]` section (or nothing).
    fn write_member_config(&self, m: &Member, cluster: &str) {
        let config = format!(
            "node_id = {}\nlisten = \"{}\"\nhttp_listen = \"{}\"\ndata_dir = \"{}\"\n\n{cluster}\
             [raft]\n{}\n\n[registry]\naddr = \"{}\"\n{}\n\n\
             [deploy]\nstack = \"{}\"\ndocker_socket = \"{}\"\npublish_mode = \"host\"\nconverge_timeout_secs = 120\n\n\
             [router]\ndomain = \"localhost\"\nhttp_port = {}\nimage = \"{ROUTER_IMAGE}\"\n\n\
             [agents]\nreport_interval_secs = 1\ndown_after_secs = 5\n\n\
             [placement]\nmin_free_bytes = {MIN_FREE_BYTES}\nqueue_timeout_secs = 20\n\n[http]\n{}\n\n[tls]\n{}",
            m.id,
            m.grpc_addr,
            m.http_addr,
            self.data_dir_of(m.id).display(),
            self.raft_settings,
            self.registry_addr,
            self.registry_settings,
            self.stack,
            self.scheduler_docker_socket,
            self.router_port,
            self.http_settings,
            format!("ca_dir = \"{}\"\n", self.path("ca").display())
                + &self.tls_settings,
        );
        std::fs::write(self.path(&format!("scheduler-{}.toml", m.id)), config)
            .expect("write scheduler config");
    }

    /// Starts `slipway-agent` named `name` joining with `token` through member `id` alone
    /// and waits up to `wait` for it to exit: its exit status (None: still running, so
    /// it joined; it is stopped) and its log. For the tests of who may join.
    pub fn try_agent_join(
        &self,
        id: u64,
        name: &str,
        token: &str,
        wait: Duration,
    ) -> (Option<std::process::ExitStatus>, String) {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "schedulers = [\"{}\"]\nname = \"{name}\"\nstate_dir = \"{}\"\nbuild_root = \"{}\"\n\
             metrics_listen = \"\"\njoin_token = \"{token}\"\n",
            self.grpc_addr(id),
            dir.join("state").display(),
            dir.join("builds").display(),
        );
        std::fs::write(dir.join("agent.toml"), config).unwrap();
        let mut child = self.spawn(
            Command::new(binary("slipway-agent")),
            &format!("{name}/agent.toml"),
            &format!("{name}/agent.log"),
        );
        let deadline = Instant::now() + wait;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (status, std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default())
    }

    /// Starts `command --config <config>`, its output appended to `<log>` (both paths
    /// relative to the cluster's directory): how every slipway process of a test runs.
    pub fn spawn(&self, mut command: Command, config: &str, log: &str) -> Child {
        let log_file =
            std::fs::OpenOptions::new().create(true).append(true).open(self.path(log)).expect("open log");
        command
            .arg("--config")
            .arg(self.path(config))
            .env("RUST_LOG", "info,openraft=warn,sled=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"))
    }

    /// Starts (or restarts, from its data dir) member `id` and waits until it serves.
    pub async fn start_member(&self, id: u64) {
        let m = self.member(id);
        {
            let mut child = m.child.lock().expect("member lock");
            assert!(child.is_none(), "scheduler {id} already running");
            let mut command = match (m.netns, &self.lab) {
                (Some(node), Some(lab)) => lab.command(node, binary("slipway-scheduler")),
                _ => Command::new(binary("slipway-scheduler")),
            };
            command.envs(self.member_env.iter().map(|(k, v)| (k, v)));
            *child =
                Some(self.spawn(command, &format!("scheduler-{id}.toml"), &format!("scheduler-{id}.log")));
        }
        let url = format!("{}://{}/healthz", self.http_scheme(), m.http_addr);
        let client = self.http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "scheduler {id} not serving after 30 s\n{}",
                self.scheduler_log(id)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts (or restarts) the single scheduler and waits until it leads.
    pub async fn start_scheduler(&self) {
        self.start_member(1).await;
        self.leader().await;
    }

    /// `kill -9` member `id`.
    pub fn kill_member(&self, id: u64) {
        if let Some(mut child) = self.member(id).child.lock().expect("member lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How member `id`'s process ended, once it has ended on its own (it then no longer
    /// counts as running); None while it runs (or was never started).
    pub fn member_exited(&self, id: u64) -> Option<std::process::ExitStatus> {
        let mut child = self.member(id).child.lock().expect("member lock");
        let status = child.as_mut()?.try_wait().expect("wait for the member")?;
        *child = None;
        Some(status)
    }

    /// `kill -9` the single scheduler.
    pub fn kill_scheduler(&self) {
        self.kill_member(1);
    }

    /// Cuts member `id` off from the other members (both ways); the test still reaches it.
    pub fn isolate(&self, id: u64) {
        let node = self.member(id).netns.expect("only members of a replicated cluster can be cut off");
        self.lab.as_ref().expect("lab").isolate(node);
    }

    /// `kill -STOP` member `id` (a paused process: its sockets stay open, nothing
    /// answers); [`resume_member`](Self::resume_member) continues it.
    pub fn pause_member(&self, id: u64) {
        self.signal_member(id, "-STOP");
    }

    /// `kill -CONT` member `id`.
    pub fn resume_member(&self, id: u64) {
        self.signal_member(id, "-CONT");
    }

    fn signal_member(&self, id: u64, signal: &str) {
        if let Some(pid) = self.member_pid(id) {
            let status = Command::new("kill").args([signal, &pid.to_string()]).status();
            assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid} (scheduler {id}) failed");
        }
    }

    /// The network lab a replicated cluster's members run in (for finer faults than
    /// [`isolate`](Self::isolate)).
    pub fn lab(&self) -> Option<&NetLab> {
        self.lab.as_ref()
    }

    /// The lab node member `id` runs in, in a replicated cluster.
    pub fn member_node(&self, id: u64) -> Option<u8> {
        self.member(id).netns
    }

    /// The gRPC port every member of a replicated cluster listens on.
    pub fn member_grpc_port(&self) -> u16 {
        MEMBER_GRPC_PORT
    }

    /// Ids of every member, running or not.
    pub fn member_ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// Undoes [`isolate`](Self::isolate) and the lab's finer faults on member `id`.
    pub fn heal(&self, id: u64) {
        let node = self.member(id).netns.expect("only members of a replicated cluster can be cut off");
        self.lab.as_ref().expect("lab").heal(node);
    }

    /// Kills member `id`, empties its data dir and starts it again as a new scheduler
    /// `new_id` at the same address, waiting to be added (`join = true`).
    pub async fn replace_member(&mut self, id: u64, new_id: u64) {
        self.kill_member(id);
        std::fs::remove_dir_all(self.data_dir_of(id)).expect("wipe the data dir");
        let m = self.member_mut(id);
        m.id = new_id;
        let m = self.member(new_id);
        self.write_member_config(m, "[cluster]\njoin = true\n\n");
        self.start_member(new_id).await;
    }

    /// The cluster as member `id` sees it.
    pub async fn status_of(&self, id: u64) -> Result<pb::ClusterStatusResponse, tonic::Status> {
        let mut client =
            self.member_client(id).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        client.cluster_status(pb::ClusterStatusRequest {}).await.map(|r| r.into_inner())
    }

    /// Waits (up to 30 s) until every running member (of a cluster: not one waiting to
    /// join) names the same leader, itself running and claiming to lead; returns its id.
    pub async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut views = Vec::new();
            for id in self.running_members() {
                let view = self.status_of(id).await.ok();
                // A scheduler waiting to join belongs to no cluster yet: it has no say.
                if view.as_ref().is_none_or(|v| !v.members.is_empty()) {
                    views.push(view);
                }
            }
            let leaders: std::collections::BTreeSet<u64> =
                views.iter().map(|v| v.as_ref().map_or(0, |v| v.leader_id)).collect();
            if let [leader] = leaders.into_iter().collect::<Vec<_>>()[..] {
                let claims = views.iter().flatten().any(|v| v.node_id == leader && v.state == "Leader");
                if leader != 0 && claims {
                    return leader;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader after 30 s: {views:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Adds `toml` to agent `n`'s `agent.toml`, replacing what an earlier call added
    /// (takes effect at its next start), e.g. `builder = "classic"`.
    pub fn set_agent_extra(&mut self, n: u8, toml: &str) {
        self.agent_mut(n).extra = toml.to_string();
        self.write_configs();
    }

    /// Sets agent `n`'s `push_retry_secs`: how long its pushes wait for an unreachable
    /// registry (takes effect at its next start).
    pub fn set_agent_push_retry(&mut self, n: u8, secs: u64) {
        self.agent_mut(n).push_retry_secs = Some(secs);
        self.write_configs();
    }

    /// Points agent `n` at another engine socket (takes effect at its next start).
    pub fn set_agent_docker_socket(&mut self, n: u8, socket: &str) {
        self.agent_mut(n).docker_socket = socket.to_string();
        self.write_configs();
    }

    /// The engine socket the schedulers deploy through.
    pub fn scheduler_docker_socket(&self) -> &str {
        &self.scheduler_docker_socket
    }

    /// Points the schedulers at another engine socket (takes effect at their next start).
    pub fn set_scheduler_docker_socket(&mut self, socket: &str) {
        self.scheduler_docker_socket = socket.to_string();
        self.write_configs();
    }

    fn agent(&self, n: u8) -> &Agent {
        self.agents.get(usize::from(n).wrapping_sub(1)).unwrap_or_else(|| panic!("no agent {n}"))
    }

    fn agent_mut(&mut self, n: u8) -> &mut Agent {
        self.agents.get_mut(usize::from(n).wrapping_sub(1)).unwrap_or_else(|| panic!("no agent {n}"))
    }

    /// Starts (or restarts) agent `n`.
    pub fn start_agent(&mut self, n: u8) {
        assert!(self.agent(n).child.is_none(), "agent {n} already running");
        let child = self.spawn(
            Command::new(binary("slipway-agent")),
            &format!("agent-{n}.toml"),
            &format!("agent-{n}.log"),
        );
        self.agent_mut(n).child = Some(child);
    }

    /// `kill -9` agent `n`.
    pub fn kill_agent(&mut self, n: u8) {
        if let Some(mut child) = self.agent_mut(n).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Agent `n`'s `build_root`.
    pub fn agent_build_root(&self, n: u8) -> &std::path::Path {
        &self.agent(n).build_root
    }

    /// Node name agent `n` registers as.
    pub fn agent_name(&self, n: u8) -> &str {
        &self.agent(n).name
    }

    /// Agent `n`'s own certificate and key, as it enrolled them (`<state_dir>/tls/`).
    pub fn agent_credentials(&self, n: u8) -> Credentials {
        let dir = self.agent(n).state_dir.join("tls");
        Credentials::load_dir(&dir)
            .unwrap_or_else(|e| panic!("agent {n}'s credentials in {}: {e}", dir.display()))
            .unwrap_or_else(|| panic!("agent {n} has not enrolled: no certificate in {}", dir.display()))
    }

    /// Member `id`'s log so far.
    pub fn scheduler_log(&self, id: u64) -> String {
        std::fs::read_to_string(self.path(&format!("scheduler-{id}.log"))).unwrap_or_default()
    }

    /// Process id of agent `n`, while it runs.
    pub fn agent_pid(&self, n: u8) -> Option<u32> {
        self.agent(n).child.as_ref().map(Child::id)
    }

    /// Process id of member `id`, while it runs.
    pub fn member_pid(&self, id: u64) -> Option<u32> {
        self.member(id).child.lock().expect("member lock").as_ref().map(Child::id)
    }

    /// Agent `n`'s log so far.
    pub fn agent_log(&self, n: u8) -> String {
        std::fs::read_to_string(self.path(&format!("agent-{n}.log"))).unwrap_or_default()
    }

    /// Member `id`'s HTTP address (health, `/metrics`, the fleet page).
    pub fn http_addr(&self, id: u64) -> String {
        self.member(id).http_addr.clone()
    }

    /// Member `id`'s HTTP bearer token (`<data_dir>/http-token`), which the fleet page
    /// and `/metrics` ask for.
    pub fn http_token(&self, id: u64) -> String {
        let path = self.data_dir_of(id).join("http-token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// `http` or, with `http.tls`, `https`: how the members' HTTP sides are reached.
    pub fn http_scheme(&self) -> &'static str {
        if self.http_settings.contains("tls = true") {
            "https"
        } else {
            "http"
        }
    }

    /// An HTTP client for the members' HTTP sides (trusting the cluster CA).
    pub fn http_client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca.cert_pem.as_bytes()).expect("the CA's PEM");
        reqwest::Client::builder().add_root_certificate(ca).build().expect("an HTTP client")
    }

    /// `GET <member id's HTTP side><path>` with its bearer token.
    pub async fn http_get(&self, id: u64, path: &str) -> reqwest::Response {
        let url = format!("{}://{}{path}", self.http_scheme(), self.http_addr(id));
        self.http_client()
            .get(&url)
            .bearer_auth(self.http_token(id))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// The URL a browser opens member `id`'s fleet page at, with its token as the Basic
    /// password (`http://slipway:TOKEN@host:port/`).
    pub fn fleet_page_url(&self, id: u64) -> String {
        format!("{}://slipway:{}@{}/", self.http_scheme(), self.http_token(id), self.http_addr(id))
    }

    /// A control-API client for member `id`.
    pub async fn member_client(&self, id: u64) -> Result<ControlClient<Channel>, tonic::transport::Error> {
        let endpoint = self
            .transport
            .endpoint(&self.member(id).grpc_addr)
            .unwrap_or_else(|e| panic!("{e}"))
            .connect_timeout(Duration::from_secs(2));
        Ok(ControlClient::new(endpoint.connect().await?))
    }

    /// A control-API client for the leader (waiting for one).
    pub async fn client(&self) -> ControlClient<Channel> {
        let leader = self.leader().await;
        self.member_client(leader).await.expect("connect to the leader")
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
                "{ready} of {n} nodes ready after 30 s\n--- agent 1 ---\n{}",
                self.agent_log(1),
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates app `name` from `repo` (branch main).
    pub async fn create_app(&self, name: &str, repo: &str) -> Result<pb::App, tonic::Status> {
        let req = pb::CreateAppRequest { name: name.into(), repo: repo.into(), branch: "main".into() };
        self.client().await.create_app(req).await.map(|r| r.into_inner())
    }

    /// Deploys and follows the stream to its end.
    pub async fn deploy(&self, app: &str, git_ref: Option<&str>) -> DeployRun {
        let req = pb::DeployRequest {
            app: app.into(),
            git_ref: git_ref.unwrap_or_default().into(),
            ..Default::default()
        };
        self.deploy_request(req).await
    }

    /// Starts a deploy of `app` (its branch) and returns the future following its
    /// stream, which does not borrow the cluster: spawn it, and meanwhile stop, restart
    /// or fill what the deploy meets.
    pub async fn deploy_detached(
        &self,
        app: &str,
    ) -> impl std::future::Future<Output = DeployRun> + Send + 'static {
        let mut client = self.client().await;
        let req = pb::DeployRequest { app: app.into(), ..Default::default() };
        async move {
            let started = Instant::now();
            let stream = client.deploy(req).await;
            collect(stream, started).await
        }
    }

    /// Sends `req` and follows the stream to its end.
    pub async fn deploy_request(&self, req: pb::DeployRequest) -> DeployRun {
        let started = Instant::now();
        let stream = self.client().await.deploy(req).await;
        collect(stream, started).await
    }

    /// `slipway config set` of `set` on `app` sent to member `id` alone (not to whichever
    /// leads: while a cut-off member still claims to lead, no leader is agreed), its
    /// rollout followed to the end.
    pub async fn set_config_via(&self, id: u64, app: &str, set: &[(&str, &str)]) -> DeployRun {
        let req = pb::SetConfigRequest {
            app: app.into(),
            set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let started = Instant::now();
        let mut client =
            self.member_client(id).await.unwrap_or_else(|e| panic!("connect to member {id}: {e}"));
        collect(client.set_config(req).await, started).await
    }

    /// Rolls `app` back (to release `to`, or the one before the current).
    pub async fn rollback(&self, app: &str, to: Option<u64>) -> DeployRun {
        let req = pb::RollbackRequest { app: app.into(), to: to.unwrap_or(0), request_id: String::new() };
        let started = Instant::now();
        let stream = self.client().await.rollback(req).await;
        collect(stream, started).await
    }

    /// The releases of `app`.
    pub async fn releases(&self, app: &str) -> Vec<pb::Release> {
        self.try_releases(app).await.expect("list releases")
    }

    /// The releases of `app`, or the status a member answered (a cluster that is
    /// electing a leader answers Unavailable for a moment).
    pub async fn try_releases(&self, app: &str) -> Result<Vec<pb::Release>, tonic::Status> {
        let req = pb::ListReleasesRequest { app: app.into() };
        Ok(self.client().await.list_releases(req).await?.into_inner().releases)
    }

    /// The builds of `app`.
    pub async fn builds(&self, app: &str) -> Vec<pb::Build> {
        let req = pb::ListBuildsRequest { app: app.into() };
        self.client().await.list_builds(req).await.expect("list builds").into_inner().builds
    }

    /// Every app.
    pub async fn apps(&self) -> Vec<pb::App> {
        self.client().await.list_apps(pb::ListAppsRequest {}).await.expect("list apps").into_inner().apps
    }

    /// Swarm service name of an app.
    pub fn service(&self, app: &str) -> String {
        format!("{}_{app}", self.stack)
    }

    /// The router's name for `app` (`<app>.localhost`: the clusters' router domain).
    pub fn app_host(&self, app: &str) -> String {
        format!("{app}.localhost")
    }

    /// Waits until `app` answers 200 at `path` through the stack's router on this host
    /// (its published port on loopback, `Host: <app>.localhost`); the body.
    pub async fn wait_for_app(&self, app: &str, path: &str, timeout: Duration) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.router_port);
        slipway_testkit::wait_for_http_as(&url, Some(&self.app_host(app)), timeout).await
    }

    /// The image the app's Swarm service runs (`docker service inspect`).
    pub fn service_image(&self, app: &str) -> String {
        self.swarm_cli(&[
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

    /// Runs the `slipway` CLI binary against this cluster (every member's address).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("slipway"))
            .args(["--scheduler", &self.grpc_addrs().join(",")])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run slipway")
    }

    /// `slipway ARGS` with `input` on its stdin (`secrets set` reads the value there).
    pub fn cli_with_input(&self, args: &[&str], input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(binary("slipway"))
            .args(["--scheduler", &self.grpc_addrs().join(",")])
            .args(args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start slipway");
        let mut stdin = child.stdin.take().expect("stdin");
        // The CLI may refuse before reading it all (a value over the limit): ignore EPIPE.
        let _ = stdin.write_all(input);
        drop(stdin);
        child.wait_with_output().expect("run slipway")
    }

    /// `slipway ARGS` started in the background with its output piped, for commands
    /// that stream (`apps logs --follow`); the caller kills it.
    pub fn cli_spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(binary("slipway"))
            .args(["--scheduler", &self.grpc_addrs().join(",")])
            .args(args)
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start slipway")
    }

    /// `docker ARGS` against the Swarm manager the stack lives on.
    pub fn swarm_cli(&self, args: &[&str]) -> Result<String, String> {
        let host = format!("unix://{}", self.swarm_socket);
        docker_cli(&[&["-H", host.as_str()], args].concat())
    }

    fn remove_stack(&self) {
        let filter = format!("label=com.docker.stack.namespace={}", self.stack);
        if let Ok(ids) = self.swarm_cli(&["service", "ls", "-q", "--filter", &filter]) {
            for id in ids.split_whitespace() {
                let _ = self.swarm_cli(&["service", "rm", id]);
            }
        }
        let _ = self.swarm_cli(&["network", "rm", &format!("{}_default", self.stack)]);
        // App secrets (`slipway secrets set`), once the services that mount them are gone.
        if let Ok(ids) = self.swarm_cli(&["secret", "ls", "-q", "--filter", &filter]) {
            for id in ids.split_whitespace() {
                let _ = self.swarm_cli(&["secret", "rm", id]);
            }
        }
    }

    /// The build root of agent `n` (build dirs and logs).
    pub fn build_root(&self, n: u8) -> PathBuf {
        self.agent(n).build_root.clone()
    }

    /// Data dir of member `id`.
    pub fn data_dir_of(&self, id: u64) -> PathBuf {
        self.path(&format!("scheduler-{id}"))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in 1..=self.agents.len() as u8 {
            self.kill_agent(n);
        }
        let ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        for &id in &ids {
            self.kill_member(id);
        }
        self.remove_stack();
        for forward in self.registry_forwards.drain(..) {
            forward.abort();
        }
        if let Some(proxy) = self.realm_proxy.take() {
            proxy.abort();
        }
        if std::thread::panicking() {
            for id in ids {
                eprintln!("--- scheduler {id} log (tail) ---\n{}", tail(&self.scheduler_log(id), 40));
            }
            for n in 1..=self.agents.len() as u8 {
                eprintln!("--- agent {n} log (tail) ---\n{}", tail(&self.agent_log(n), 60));
            }
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
