//! [`Fleet`]: several Docker engines on this one machine, each a `dockerd` in its own
//! network namespace of a [`NetLab`], joined into one Swarm, with one registry all of
//! them reach — the machines a tier-30 test deploys to.
//!
//! ```text
//!   host: tests, registry 10.231.K.1:PORT, agents (host netns) ── bridge slwbrK
//!     ├── netns slwK-1  10.231.K.11  dockerd (Swarm manager)  /tmp/slipway-fleet-K/1/docker.sock
//!     ├── netns slwK-2  10.231.K.12  dockerd (worker)         /tmp/slipway-fleet-K/2/docker.sock
//!     └── …
//! ```
//!
//! Each engine has its own data root, exec root (its own managed `containerd`),
//! socket, pid file, log, containerd namespace `slwK-N`, cgroup parent
//! `/slipway-fleet-K-N` and host name `node-N` (a UTS namespace of its own, so
//! `docker node ls` tells the nodes apart). It runs without the default bridge and
//! without iptables (`--bridge=none --iptables=false --ip-masq=false`): services
//! live on Swarm overlay networks (VXLAN across the lab's bridge) and publish
//! ports in host mode (this kernel has no IPVS for the routing mesh). Its storage
//! driver is the host engine's (`SLIPWAY_FLEET_STORAGE_DRIVER` overrides it; `vfs`
//! always works, slowly). Every engine trusts the lab's whole subnet as an insecure
//! registry, so the registry on the host's bridge address works over plain http.
//! Engines start with [`BASE_IMAGE`] and [`ROUTER_IMAGE`] loaded from the host engine: nothing can be
//! pulled from the internet here.
//!
//! The fleet starts no slipway processes. The scheduler and agents are the caller's
//! (see `cluster.rs`); the fleet gives them what they need — see [`Fleet::agent_dir`]
//! for how an agent attaches to engine N.
//!
//! Teardown (on drop, also while unwinding from a panic) leaves the Swarm on every
//! engine, stops the `dockerd`s, kills whatever is left of them (containerd, shims,
//! containers — found by cgroup, by command line and by namespace), unmounts
//! everything under the fleet's directory, removes the cgroups, the directory, the
//! registry, the namespaces and the bridge. A test process killed outright leaves
//! all that behind; the next fleet that takes the same lab index `K` removes it
//! before starting (the lab index is exclusive, see [`NetLab`]).

use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::{ClientVersion, Docker};

use slipway_testkit::docker::{docker_cli, DOCKER_TIMEOUT};
use slipway_testkit::{
    base_image, require_docker, router_image, skip, NetLab, Registry, BASE_IMAGE, ROUTER_IMAGE,
};

/// Environment variable naming the storage driver of the fleet's engines.
pub const STORAGE_DRIVER_ENV: &str = "SLIPWAY_FLEET_STORAGE_DRIVER";

/// How long an engine may take to answer its socket after `dockerd` starts.
const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the Swarm may take to see every engine Ready.
const SWARM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `dockerd` gets to stop after SIGTERM before SIGKILL.
const ENGINE_STOP_GRACE: Duration = Duration::from_secs(10);

/// Docker engines in network namespaces, one Swarm, one registry; see the module docs.
pub struct Fleet {
    /// Engine `n` is `engines[n - 1]`.
    engines: Vec<Engine>,
    /// `/tmp/slipway-fleet-K`: every engine's and agent's files. Removed on drop,
    /// after everything mounted under it is unmounted.
    dir: PathBuf,
    /// The engines' storage driver.
    storage_driver: String,
    /// Engines whose `daemon.json` turns BuildKit off (`"features": {"buildkit": false}`).
    classic: Vec<u8>,
    /// API version the engines speak (their `/_ping` says), for [`Fleet::docker`].
    api_version: ClientVersion,
    /// On the lab's host address, its files under `dir`; dropped after the engines
    /// are gone.
    registry: Registry,
    /// Dropped last: the namespaces outlive the processes in them.
    lab: NetLab,
}

/// One engine of the fleet.
struct Engine {
    n: u8,
    /// The `dockerd` process while it runs (`nsenter` and `unshare` exec it, so this
    /// is dockerd's own pid).
    dockerd: Option<Child>,
}

impl Fleet {
    /// `n_engines` (1..=20) engines joined into one Swarm — engine 1 initialises it
    /// and is its only manager, the others join as workers — with [`BASE_IMAGE`]
    /// loaded, and a registry on the lab's host address. Returns once the manager
    /// sees every engine Ready. `None` after a loud [`skip`] where this machine
    /// cannot run a fleet (not root, no Docker engine, no `docker-registry`, no
    /// `dockerd`); panics (tearing down what it started) if starting fails.
    pub async fn start(n_engines: u8) -> Option<Fleet> {
        Fleet::start_with_classic(n_engines, &[]).await
    }

    /// [`Fleet::start`], with BuildKit turned off in the `daemon.json` of the engines
    /// numbered in `classic` (`"features": {"buildkit": false}`: they build with the
    /// classic builder only, and their `/_ping` says `Builder-Version: 1`).
    pub async fn start_with_classic(n_engines: u8, classic: &[u8]) -> Option<Fleet> {
        assert!((1..=20).contains(&n_engines), "a fleet has 1 to 20 engines, not {n_engines}");
        let host = require_docker().await?;
        if Registry::binary().is_none() {
            skip("a fleet needs docker-registry. Fix: apt-get install docker-registry");
            return None;
        }
        for (program, package) in [("dockerd", "docker.io"), ("unshare", "util-linux")] {
            if !program_exists(program) {
                skip(&format!("a fleet needs `{program}`. Fix: apt-get install {package}"));
                return None;
            }
        }
        base_image().await;
        router_image().await;
        let lab = NetLab::try_new("fleet")?;
        let k = lab.index();
        let dir = std::env::temp_dir().join(format!("slipway-fleet-{k}"));
        remove_leftovers(k, &dir);
        let storage_driver = match std::env::var(STORAGE_DRIVER_ENV) {
            Ok(driver) if !driver.is_empty() => driver,
            _ => host.info().await.ok().and_then(|info| info.driver).unwrap_or_else(|| "vfs".into()),
        };
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // In the fleet's directory, so the clean-up after a crashed run finds it too.
        let registry = Registry::try_start_in(lab.host_ip(), &dir)
            .await
            .unwrap_or_else(|e| panic!("cannot start the fleet's registry on {}: {e:#}", lab.host_ip()));
        // From here on, a panic drops the fleet, which tears everything down.
        let mut fleet = Fleet {
            engines: Vec::new(),
            dir,
            storage_driver,
            classic: classic.to_vec(),
            api_version: ClientVersion { major_version: 1, minor_version: 41 },
            registry,
            lab,
        };
        fleet.start_engines(n_engines);
        fleet.load_images();
        fleet.form_swarm();
        Some(fleet)
    }

    fn start_engines(&mut self, n_engines: u8) {
        for n in 1..=n_engines {
            self.lab.add_node(n);
            self.engines.push(Engine { n, dockerd: None });
            for sub in ["data", "exec", "agent/builds", "agent/state"] {
                let path = self.engine_dir(n).join(sub);
                fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
            }
            self.write_daemon_json(n);
            self.spawn_dockerd(n);
        }
        // They start in parallel; wait for each in turn.
        for n in 1..=n_engines {
            self.api_version = self.wait_engine(n);
        }
    }

    /// Every engine loads [`BASE_IMAGE`] and the router's image [`ROUTER_IMAGE`] from one
    /// `docker save` of the host engine.
    fn load_images(&self) {
        let tar = self.dir.join("images.tar");
        let tar_arg = tar.to_str().expect("the fleet dir is UTF-8");
        docker_cli(&["save", "-o", tar_arg, BASE_IMAGE, ROUTER_IMAGE]).unwrap_or_else(|e| {
            panic!("cannot save {BASE_IMAGE} and {ROUTER_IMAGE} from the host engine: {e}")
        });
        std::thread::scope(|scope| {
            for n in self.engine_numbers() {
                scope.spawn(move || {
                    self.docker_cli(n, &["load", "-q", "-i", tar_arg])
                        .unwrap_or_else(|e| panic!("engine {n} cannot load the images: {e}"));
                });
            }
        });
        let _ = fs::remove_file(&tar);
    }

    /// Engine 1 initialises the Swarm (heartbeat 1 s, so a dead node shows soon);
    /// the others join as workers; waits until the manager sees all Ready.
    fn form_swarm(&self) {
        let manager = self.node_ip(1).to_string();
        self.docker_cli(1, &["swarm", "init", "--advertise-addr", &manager, "--dispatcher-heartbeat", "1s"])
            .unwrap_or_else(|e| panic!("swarm init on engine 1: {e}"));
        let token = self
            .docker_cli(1, &["swarm", "join-token", "-q", "worker"])
            .unwrap_or_else(|e| panic!("swarm join-token on engine 1: {e}"));
        let join_addr = format!("{manager}:2377");
        std::thread::scope(|scope| {
            for n in self.engine_numbers().into_iter().skip(1) {
                let (token, join_addr) = (&token, &join_addr);
                scope.spawn(move || {
                    let ip = self.node_ip(n).to_string();
                    self.docker_cli(
                        n,
                        &["swarm", "join", "--advertise-addr", &ip, "--token", token, join_addr],
                    )
                    .unwrap_or_else(|e| panic!("engine {n} cannot join the Swarm: {e}"));
                });
            }
        });
        self.wait_ready_nodes(self.size(), SWARM_TIMEOUT);
    }

    /// How many engines the fleet has.
    pub fn size(&self) -> u8 {
        self.engines.len() as u8
    }

    /// The engines' numbers, `1..=size`.
    pub fn engine_numbers(&self) -> Vec<u8> {
        self.engines.iter().map(|e| e.n).collect()
    }

    /// The network lab the engines live in ([`NetLab::isolate`] partitions one).
    pub fn lab(&self) -> &NetLab {
        &self.lab
    }

    /// `/tmp/slipway-fleet-K`: the fleet's files. Removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Engine `n`'s directory: `daemon.json`, `docker.sock`, `dockerd.log`,
    /// `docker.pid`, `data/`, `exec/`, `agent/`.
    pub fn engine_dir(&self, n: u8) -> PathBuf {
        self.dir.join(n.to_string())
    }

    /// Engine `n`'s API socket (on the host's filesystem: reachable from the host's
    /// network namespace like any unix socket).
    pub fn engine_socket(&self, n: u8) -> PathBuf {
        self.engine_dir(n).join("docker.sock")
    }

    /// `unix://<engine_socket(n)>`, for `docker -H` and `DOCKER_HOST`.
    pub fn docker_host(&self, n: u8) -> String {
        format!("unix://{}", self.engine_socket(n).display())
    }

    /// A client for engine `n` (API version as the engine said, timeout
    /// [`DOCKER_TIMEOUT`]).
    pub fn docker(&self, n: u8) -> Docker {
        self.engine(n);
        let socket = self.engine_socket(n);
        Docker::connect_with_unix(
            socket.to_str().expect("the fleet dir is UTF-8"),
            DOCKER_TIMEOUT.as_secs(),
            &self.api_version,
        )
        .unwrap_or_else(|e| panic!("cannot make a client for engine {n}: {e}"))
    }

    /// Runs `docker -H <engine n> args…`; its trimmed stdout, or an error with its stderr.
    pub fn docker_cli(&self, n: u8, args: &[&str]) -> Result<String, String> {
        let host = self.docker_host(n);
        let mut all = vec!["-H", &host];
        all.extend_from_slice(args);
        docker_cli(&all)
    }

    /// Engine `n`'s address on the lab's bridge (Swarm advertise address; host-mode
    /// published ports answer here).
    pub fn node_ip(&self, n: u8) -> Ipv4Addr {
        self.lab.ip(n)
    }

    /// Engine `n`'s host name, `node-N`: its Swarm node's name.
    pub fn hostname(&self, n: u8) -> String {
        format!("node-{n}")
    }

    /// The Swarm manager's engine number (1): the scheduler deploys through its socket.
    pub fn manager(&self) -> u8 {
        1
    }

    /// The registry (on [`NetLab::host_ip`]), with its HTTP helpers.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, to reconfigure (e.g. [`Registry::require_tokens`]).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// `10.231.K.1:PORT`: the registry part of image references, the same for every
    /// engine and for the host.
    pub fn registry_addr(&self) -> String {
        self.registry.addr()
    }

    /// The engines' storage driver.
    pub fn storage_driver(&self) -> &str {
        &self.storage_driver
    }

    /// Where agent `n` keeps its files: `<engine_dir(n)>/agent`, holding `builds/`
    /// ([`Fleet::build_root`]) and `state/` ([`Fleet::agent_state_dir`]). The fleet
    /// starts no agent. An agent attached to engine `n` runs in the host's network
    /// namespace (it reaches the schedulers on loopback or the lab, and the engine
    /// through its socket) with a config like
    ///
    /// ```toml
    /// schedulers = ["127.0.0.1:7400"]
    /// name = "node-N"                           # fleet.hostname(n)
    /// docker_socket = "/tmp/slipway-fleet-K/N/docker.sock"   # fleet.engine_socket(n)
    /// build_root = "/tmp/slipway-fleet-K/N/agent/builds"     # fleet.build_root(n)
    /// state_dir = "/tmp/slipway-fleet-K/N/agent/state"       # fleet.agent_state_dir(n)
    /// ```
    ///
    /// and the scheduler gets `deploy.docker_socket = fleet.engine_socket(fleet.manager())`,
    /// `deploy.publish_mode = "host"`, `registry.addr = fleet.registry_addr()`. The
    /// images an agent builds on engine `n` are pushed by engine `n` to the registry
    /// and pulled from it by whichever engines run the service. Kill the agents
    /// before the fleet drops: the directory goes with it.
    pub fn agent_dir(&self, n: u8) -> PathBuf {
        self.engine(n);
        self.engine_dir(n).join("agent")
    }

    /// Agent `n`'s `build_root`: `<agent_dir(n)>/builds`, on the host's disk.
    pub fn build_root(&self, n: u8) -> PathBuf {
        self.agent_dir(n).join("builds")
    }

    /// Agent `n`'s `state_dir`: `<agent_dir(n)>/state`.
    pub fn agent_state_dir(&self, n: u8) -> PathBuf {
        self.agent_dir(n).join("state")
    }

    /// Engine `n`'s Swarm node id.
    pub fn swarm_node_id(&self, n: u8) -> String {
        self.docker_cli(n, &["info", "--format", "{{.Swarm.NodeID}}"])
            .unwrap_or_else(|e| panic!("engine {n}: {e}"))
    }

    /// The host names of the Swarm nodes the manager sees Ready, sorted.
    pub fn ready_nodes(&self) -> Vec<String> {
        let list = self
            .docker_cli(self.manager(), &["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])
            .unwrap_or_default();
        let mut ready: Vec<String> = list
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(_, status)| *status == "Ready")
            .map(|(host, _)| host.to_string())
            .collect();
        ready.sort();
        ready
    }

    /// Waits until the manager sees `count` nodes Ready; panics after `timeout` with
    /// what it sees and the engines' logs.
    pub fn wait_ready_nodes(&self, count: u8, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self.ready_nodes();
            if ready.len() == usize::from(count) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the Swarm has {} Ready nodes ({ready:?}), not {count}, after {timeout:?}\n{}",
                    ready.len(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Is engine `n`'s `dockerd` running (started and not killed)?
    pub fn engine_running(&mut self, n: u8) -> bool {
        let engine = self.engine_mut(n);
        match engine.dockerd.as_mut().map(|child| child.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                engine.dockerd = None;
                false
            }
            None => false,
        }
    }

    /// Engine `n`'s machine dies: `kill -9` of its `dockerd`, then of every process
    /// it left (containerd, shims, containers, and anything else in node `n`'s
    /// network namespace); its mounts are undone. Its data root stays, so
    /// [`Fleet::start_engine`] brings it back into the Swarm. (Its agent, in the
    /// host's namespace, is the caller's to kill.)
    pub fn kill_engine(&mut self, n: u8) {
        if let Some(mut child) = self.engine_mut(n).dockerd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut pids = pids_in_cgroups(&cgroup_dirs(self.lab.index(), Some(n)));
        pids.extend(pids_with_arg(&format!("{}/", self.engine_dir(n).display())));
        pids.extend(netns_pids(&self.lab.netns_name(n)));
        kill_and_wait(pids);
        unmount_under(&self.engine_dir(n));
        // The dead processes' pid files: a killed process may linger as a zombie for
        // a moment, and a restarted dockerd that finds its containerd's pid "alive"
        // waits for that containerd's socket instead of starting a new one.
        let dir = self.engine_dir(n);
        for stale in ["docker.sock", "docker.pid", "exec/containerd/containerd.pid"] {
            let _ = fs::remove_file(dir.join(stale));
        }
    }

    /// Starts engine `n`'s `dockerd` again (from its data root) and waits until it
    /// answers and is back in the Swarm (its local state active). A worker is started
    /// only once the manager no longer shows it Ready (about 3 s after
    /// [`Fleet::kill_engine`]): sooner, its tasks would never leave Preparing. The
    /// manager may take a heartbeat more to show it Ready again: see
    /// [`Fleet::wait_ready_nodes`].
    pub fn start_engine(&mut self, n: u8) {
        assert!(!self.engine_running(n), "engine {n} is running already");
        let manager = self.manager();
        if n != manager && self.engine_running(manager) {
            // Like a machine that comes back: after the others noticed it was gone.
            // Back sooner (a second after the kill), the engine rejoins under a new
            // gossip incarnation the others still hold the old one of, and its tasks
            // stay in Preparing (overlay attachment) for good.
            let deadline = Instant::now() + SWARM_TIMEOUT;
            while self.ready_nodes().contains(&self.hostname(n)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.spawn_dockerd(n);
        self.wait_engine(n);
        let deadline = Instant::now() + SWARM_TIMEOUT;
        loop {
            let state = self.docker_cli(n, &["info", "--format", "{{.Swarm.LocalNodeState}}"]);
            if state.as_deref() == Ok("active") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "engine {n} is not back in the Swarm after {SWARM_TIMEOUT:?} (state {state:?})\n{}",
                self.engine_log(n)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`kill_engine`](Self::kill_engine), then [`start_engine`](Self::start_engine).
    pub fn restart_engine(&mut self, n: u8) {
        self.kill_engine(n);
        self.start_engine(n);
    }

    /// Engine `n`'s `dockerd` log so far.
    pub fn engine_log(&self, n: u8) -> String {
        fs::read_to_string(self.engine_dir(n).join("dockerd.log")).unwrap_or_default()
    }

    /// The last lines of every engine's log and the registry's, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in self.engine_numbers() {
            out.push_str(&format!("--- engine {n} (dockerd.log, last 15 lines) ---\n"));
            out.push_str(&tail(&self.engine_log(n), 15));
        }
        out.push_str("--- registry (last 15 lines) ---\n");
        out.push_str(&tail(&self.registry.log(), 15));
        out
    }

    fn engine(&self, n: u8) -> &Engine {
        self.engines.iter().find(|e| e.n == n).unwrap_or_else(|| panic!("the fleet has no engine {n}"))
    }

    fn engine_mut(&mut self, n: u8) -> &mut Engine {
        self.engines.iter_mut().find(|e| e.n == n).unwrap_or_else(|| panic!("the fleet has no engine {n}"))
    }

    fn write_daemon_json(&self, n: u8) {
        let dir = self.engine_dir(n);
        let k = self.lab.index();
        let config = serde_json::json!({
            "data-root": dir.join("data"),
            "exec-root": dir.join("exec"),
            "pidfile": dir.join("docker.pid"),
            "hosts": [self.docker_host(n)],
            "storage-driver": self.storage_driver,
            "bridge": "none",
            "iptables": false,
            "ip-masq": false,
            // The subnet for pulls and pushes; the registry as `http://host:port` too: the
            // engine's BuildKit (20.10) reads a build's cache source from the registry
            // over plain http only for an entry written with `http://` (the engine
            // strips the scheme for its own pulls and pushes).
            "insecure-registries": [self.lab.subnet(), format!("http://{}", self.registry.addr())],
            "containerd-namespace": format!("slw{k}-{n}"),
            "cgroup-parent": format!("/slipway-fleet-{k}-{n}"),
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "log-driver": "json-file",
            "log-opts": { "max-size": "10m", "max-file": "2" },
        });
        let mut config = config;
        if self.classic.contains(&n) {
            config["features"] = serde_json::json!({ "buildkit": false });
        }
        let text = serde_json::to_string_pretty(&config).expect("daemon.json serialises");
        fs::write(dir.join("daemon.json"), text).expect("write daemon.json");
    }

    /// `nsenter --net=<node n> -- unshare --uts -- sh -c 'hostname node-n && exec dockerd …'`.
    /// (A config file of its own: the default `/etc/docker/daemon.json` is the host
    /// engine's, and dockerd refuses a setting given both there and as a flag.)
    fn spawn_dockerd(&mut self, n: u8) {
        let dir = self.engine_dir(n);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .expect("open dockerd.log");
        let child = self
            .lab
            .command(n, "unshare")
            .args(["--uts", "--", "sh", "-c", "hostname \"$0\" && exec dockerd --config-file \"$1\""])
            .arg(self.hostname(n))
            .arg(dir.join("daemon.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd for engine {n}: {e}"));
        self.engine_mut(n).dockerd = Some(child);
    }

    /// Waits until engine `n` answers `GET /_ping`; returns the API version it says.
    fn wait_engine(&mut self, n: u8) -> ClientVersion {
        let socket = self.engine_socket(n);
        let deadline = Instant::now() + ENGINE_START_TIMEOUT;
        loop {
            if let Some(version) = ping(&socket) {
                return version;
            }
            if !self.engine_running(n) {
                panic!(
                    "dockerd of engine {n} exited during start; its log:\n{}",
                    tail(&self.engine_log(n), 40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "engine {n} does not answer {} after {ENGINE_START_TIMEOUT:?}; its log:\n{}",
                    socket.display(),
                    tail(&self.engine_log(n), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything `Drop` does; see the module docs. Never panics.
    fn teardown(&mut self) {
        let running: Vec<u8> =
            self.engine_numbers().into_iter().filter(|&n| self.engine_running(n)).collect();
        // Leave the Swarm first: that stops and removes the tasks' containers.
        std::thread::scope(|scope| {
            for &n in &running {
                let host = self.docker_host(n);
                scope.spawn(move || {
                    let _ = Command::new("timeout")
                        .args(["20", "docker", "-H", &host, "swarm", "leave", "--force"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                });
            }
        });
        // Then SIGTERM every dockerd (it unmounts what it mounted), SIGKILL the slow.
        for engine in &mut self.engines {
            if let Some(child) = &engine.dockerd {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            }
        }
        let deadline = Instant::now() + ENGINE_STOP_GRACE;
        for engine in &mut self.engines {
            if let Some(mut child) = engine.dockerd.take() {
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let namespaces: Vec<String> = self.lab.nodes().into_iter().map(|n| self.lab.netns_name(n)).collect();
        let mut pids = Vec::new();
        for ns in &namespaces {
            pids.extend(netns_pids(ns));
        }
        kill_and_wait(pids);
        remove_leftovers(self.lab.index(), &self.dir);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // eprintln!, not a raw write: libtest shows it with the failing test's output.
            eprintln!("fleet logs:\n{}", self.logs());
        }
        self.teardown();
        // Then the registry (its own drop) and the lab's namespaces and bridge.
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("dir", &self.dir)
            .field("engines", &self.engines.len())
            .field("registry", &self.registry.addr())
            .field("lab", &self.lab)
            .finish()
    }
}

/// Removes what fleet `k` left in `dir` and the cgroups: kills the processes in its
/// cgroups and those naming `dir` on their command line, unmounts everything under
/// `dir`, removes the cgroups and, if nothing is mounted under it any more, `dir`.
/// Best effort, never panics. (The lab removes the namespaces and what runs there.)
fn remove_leftovers(k: u8, dir: &Path) {
    let cgroups = cgroup_dirs(k, None);
    let mut pids = pids_in_cgroups(&cgroups);
    pids.extend(pids_with_arg(&format!("{}/", dir.display())));
    kill_and_wait(pids);
    unmount_under(dir);
    for cgroup in &cgroups {
        remove_cgroup(cgroup);
    }
    if !dir.exists() {
        return;
    }
    if mounts_under(dir).is_empty() {
        if let Err(e) = fs::remove_dir_all(dir) {
            let _ = writeln!(std::io::stderr(), "warning: cannot remove {}: {e}", dir.display());
        }
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "warning: {} still has mounts under it ({:?}); left in place",
            dir.display(),
            mounts_under(dir)
        );
    }
}

/// `GET /_ping` on a Docker socket: the `Api-Version` it answers with, if it answers OK.
fn ping(socket: &Path) -> Option<ClientVersion> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if !response.starts_with("HTTP/1.0 200") && !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    let version = response
        .lines()
        .find_map(|line| line.strip_prefix("Api-Version: ").or_else(|| line.strip_prefix("api-version: ")))?;
    let (major, minor) = version.trim().split_once('.')?;
    Some(ClientVersion { major_version: major.parse().ok()?, minor_version: minor.parse().ok()? })
}

fn program_exists(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .any(|dir| dir.join(program).is_file())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

/// Fleet `k`'s cgroups (engine `n`'s, or every engine's), in every hierarchy:
/// `/sys/fs/cgroup/<controller>/slipway-fleet-K-N` (v1) or
/// `/sys/fs/cgroup/slipway-fleet-K-N` (v2).
fn cgroup_dirs(k: u8, n: Option<u8>) -> Vec<PathBuf> {
    let prefix = format!("slipway-fleet-{k}-");
    let matches = |name: &str| match name.strip_prefix(&prefix) {
        Some(rest) => match n {
            Some(n) => rest == n.to_string(),
            None => rest.parse::<u8>().is_ok(),
        },
        None => false,
    };
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(root) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() || path.is_symlink() {
            continue;
        }
        if matches(&entry.file_name().to_string_lossy()) {
            found.push(path);
            continue;
        }
        for child in fs::read_dir(&path).into_iter().flatten().flatten() {
            if child.path().is_dir() && matches(&child.file_name().to_string_lossy()) {
                found.push(child.path());
            }
        }
    }
    found
}

/// Every pid in the cgroups and their descendants.
fn pids_in_cgroups(cgroups: &[PathBuf]) -> Vec<u32> {
    fn walk(dir: &Path, pids: &mut Vec<u32>) {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), pids);
            }
        }
    }
    let mut pids = Vec::new();
    for cgroup in cgroups {
        walk(cgroup, &mut pids);
    }
    pids
}

/// Removes a cgroup and its descendants (deepest first); they must hold no process.
fn remove_cgroup(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Pids (not this process's) with an argument containing `needle`.
fn pids_with_arg(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// The pids in network namespace `ns` (`ip netns pids`).
fn netns_pids(ns: &str) -> Vec<u32> {
    let output = Command::new("ip").args(["netns", "pids", ns]).stderr(Stdio::null()).output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `kill -9` the pids, then waits (up to 5 s) until they are gone or zombies.
fn kill_and_wait(mut pids: Vec<u32>) {
    let me = std::process::id();
    pids.retain(|&p| p != me);
    pids.sort_unstable();
    pids.dedup();
    if pids.is_empty() {
        return;
    }
    let args: Vec<String> = pids.iter().map(u32::to_string).collect();
    let _ = Command::new("kill").arg("-KILL").args(&args).stderr(Stdio::null()).status();
    let alive = |pid: &u32| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mount points at or under `dir` (from `/proc/self/mountinfo`), deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().trim_end_matches('/').to_string();
    let inside = format!("{dir}/");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|point| *point == dir || point.starts_with(&inside))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    mounts.dedup();
    mounts
}

/// `/proc/self/mountinfo` writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let octal: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&octal, 8) {
                Ok(byte) => out.push(byte as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&octal);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lazily unmounts everything mounted at or under `dir`, deepest first (a few
/// rounds: a mount may hide another one).
fn unmount_under(dir: &Path) {
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for point in mounts {
            let _ = Command::new("umount").args(["-l", &point]).stderr(Stdio::null()).status();
        }
    }
}
