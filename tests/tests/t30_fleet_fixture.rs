//! Tier 30 fixtures: the network lab ([`NetLab`]) and the Docker fleet ([`Fleet`])
//! work on this machine, and leave nothing behind — also after a panic.
//!
//! Needs root (namespaces, bridges, iptables) and, for the fleet, Docker and
//! `docker-registry`; skips loudly without them.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use slipway_testkit::{wait_for_http, KillOnDrop, NetLab};
use slipway_tests::Fleet;

const PORT: u16 = 7000;

/// `busybox httpd` serving `hello.txt` on every address of node `n`, port [`PORT`].
fn serve(lab: &NetLab, n: u8, dir: &std::path::Path) -> KillOnDrop {
    std::fs::write(dir.join("hello.txt"), "hello from node 1\n").unwrap();
    let child = lab
        .command(n, "busybox")
        .args(["httpd", "-f", "-p", &PORT.to_string(), "-h"])
        .arg(dir)
        .stdin(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("start busybox httpd in node 1");
    let addr = SocketAddr::from((lab.ip(n), PORT));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "busybox httpd in node {n} does not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Does `GET http://ip:PORT/hello.txt` from node `from` succeed (2 s timeout)?
/// Returns the outcome and how long it took. (curl: Debian's `busybox wget -T`
/// segfaults.)
fn fetch_from_node(lab: &NetLab, from: u8, ip: Ipv4Addr) -> (bool, Duration) {
    let started = Instant::now();
    let output = lab
        .command(from, "curl")
        .args(["-sS", "--connect-timeout", "2", "--max-time", "3", &format!("http://{ip}:{PORT}/hello.txt")])
        .stdin(Stdio::null())
        .output()
        .expect("run busybox wget in a node");
    let ok = output.status.success() && String::from_utf8_lossy(&output.stdout).contains("hello from node 1");
    (ok, started.elapsed())
}

fn reachable_from_host(ip: Ipv4Addr) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((ip, PORT)), Duration::from_secs(2)).is_ok()
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn netlab_isolates_and_heals_a_node_and_leaves_nothing() {
    let Some(mut lab) = NetLab::try_new("t30-netlab") else { return };
    let k = lab.index();
    let ip1 = lab.add_node(1);
    let ip2 = lab.add_node(2);
    assert_eq!(lab.host_ip(), Ipv4Addr::new(10, 231, k, 1));
    assert_eq!((ip1, ip2), (Ipv4Addr::new(10, 231, k, 11), Ipv4Addr::new(10, 231, k, 12)));
    assert_eq!(lab.netns_path(1), std::path::PathBuf::from(format!("/var/run/netns/slw{k}-1")));

    let www = tempfile::tempdir().unwrap();
    let httpd = serve(&lab, 1, www.path());

    let (ok, _) = fetch_from_node(&lab, 2, ip1);
    assert!(ok, "node 2 reaches node 1 across the bridge");
    assert!(reachable_from_host(ip1), "the host reaches node 1");
    let (ok, _) = fetch_from_node(&lab, 1, ip1);
    assert!(ok, "node 1 reaches itself");

    lab.isolate(1);
    assert!(lab.is_isolated(1));
    let (ok, took) = fetch_from_node(&lab, 2, ip1);
    assert!(!ok, "node 2 must not reach an isolated node 1");
    assert!(took >= Duration::from_millis(1500), "dropped, so the connection times out (took {took:?})");
    assert!(reachable_from_host(ip1), "the host still reaches isolated node 1");
    let (ok, _) = fetch_from_node(&lab, 1, ip1);
    assert!(ok, "isolated node 1 still reaches itself");
    // And node 1 reaches the host, but not node 2.
    let out = lab
        .command(1, "busybox")
        .args(["ping", "-c", "1", "-W", "1"])
        .arg(lab.host_ip().to_string())
        .output();
    assert!(out.unwrap().status.success(), "isolated node 1 still reaches the host");
    let out = lab.command(1, "busybox").args(["ping", "-c", "1", "-W", "1"]).arg(ip2.to_string()).output();
    assert!(!out.unwrap().status.success(), "isolated node 1 must not reach node 2");

    lab.heal(1);
    assert!(!lab.is_isolated(1));
    let (ok, _) = fetch_from_node(&lab, 2, ip1);
    assert!(ok, "node 2 reaches node 1 again after heal");

    drop(httpd);
    drop(lab);

    let namespaces = command_output("ip", &["netns", "list"]);
    assert!(!namespaces.contains(&format!("slw{k}-")), "namespaces left behind:\n{namespaces}");
    let links = command_output("ip", &["-o", "link", "show"]);
    assert!(
        !links.contains(&format!("slwbr{k}")) && !links.contains(&format!("slwv{k}-")),
        "links left behind:\n{links}"
    );
    let forward = command_output("iptables", &["-S", "FORWARD"]);
    assert!(!forward.contains(&format!("slwbr{k} ")), "FORWARD rules left behind:\n{forward}");
}

/// What a fleet must leave behind once dropped: nothing. `k` is its lab index, `dir`
/// its directory.
fn assert_fleet_gone(k: u8, dir: &std::path::Path, registry_addr: &str) {
    let namespaces = command_output("ip", &["netns", "list"]);
    assert!(!namespaces.contains(&format!("slw{k}-")), "namespaces left behind:\n{namespaces}");
    let links = command_output("ip", &["-o", "link", "show"]);
    assert!(
        !links.contains(&format!("slwbr{k}:")) && !links.contains(&format!("slwv{k}-")),
        "links left behind:\n{links}"
    );
    let needle = format!("{}/", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&needle)).collect();
    assert!(left.is_empty(), "mounts left behind:\n{}", left.join("\n"));
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                processes.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
    }
    assert!(processes.is_empty(), "processes of the fleet left behind:\n{}", processes.join("\n"));
    assert!(!dir.exists(), "{} left behind", dir.display());
    let cgroups =
        command_output("sh", &["-c", &format!("ls -d /sys/fs/cgroup/*/slipway-fleet-{k}-* 2>/dev/null")]);
    assert!(cgroups.trim().is_empty(), "cgroups left behind:\n{cgroups}");
    let forward = command_output("iptables", &["-S", "FORWARD"]);
    assert!(!forward.contains(&format!("slwbr{k} ")), "FORWARD rules left behind:\n{forward}");
    // Not by connecting: with the bridge gone, 10.231.K.1 is routed out of the host,
    // and some networks (this sandbox's, below port 32768) accept any connection there.
    let registry: SocketAddr = registry_addr.parse().unwrap();
    assert!(!listening_on(registry.port()), "something still listens on the registry's port {registry}");
}

/// Whether a TCP socket of this host's network namespace listens on `port`, any address
/// (`/proc/net/tcp` and `tcp6`: local address `HEX:PORT`, state `0A` is LISTEN).
fn listening_on(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1).and_then(|a| a.rsplit(':').next());
            local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                && fields.get(3) == Some(&"0A")
        })
    })
}

/// Waits until service `name` (on the manager) has `count` tasks running, on as many
/// different nodes; returns those nodes' names, sorted.
fn wait_running_tasks(fleet: &Fleet, name: &str, count: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let tasks = fleet
            .docker_cli(
                fleet.manager(),
                &[
                    "service",
                    "ps",
                    name,
                    "--filter",
                    "desired-state=running",
                    "--format",
                    "{{.Node}} {{.CurrentState}}",
                ],
            )
            .unwrap_or_default();
        let mut nodes: Vec<String> = tasks
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, state)| state.starts_with("Running"))
            .map(|(node, _)| node.to_string())
            .collect();
        nodes.sort();
        nodes.dedup();
        if nodes.len() == count {
            return nodes;
        }
        if Instant::now() >= deadline {
            let all = fleet.docker_cli(fleet.manager(), &["service", "ps", "--no-trunc", name]);
            panic!(
                "{name}: {count} running tasks expected after {timeout:?}, tasks:\n{all:?}\n{}",
                fleet.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test]
async fn fleet_builds_on_one_engine_runs_on_all_and_leaves_nothing() {
    let started = Instant::now();
    let Some(mut fleet) = Fleet::start(3).await else { return };
    eprintln!("fleet of 3 up in {:?} (storage driver {})", started.elapsed(), fleet.storage_driver());
    assert_eq!(fleet.ready_nodes(), ["node-1", "node-2", "node-3"]);
    let (k, dir, registry_addr) = (fleet.lab().index(), fleet.dir().to_path_buf(), fleet.registry_addr());
    assert_eq!(registry_addr, format!("{}:{}", fleet.lab().host_ip(), fleet.registry().port()));
    assert!(
        listening_on(fleet.registry().port()),
        "the registry listens: the check after teardown can see it"
    );
    for n in 1..=3 {
        assert!(fleet.engine_socket(n).starts_with(&dir));
        assert!(fleet.build_root(n).is_dir() && fleet.agent_state_dir(n).is_dir());
    }
    // The bollard client speaks to engine 2.
    let info = fleet.docker(2).info().await.expect("engine 2 answers bollard");
    assert_eq!(info.name.as_deref(), Some("node-2"));

    // Build on engine 2 through its socket, from the host, and push to the registry.
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM slipway/busybox:latest\nRUN echo 'hello from the fleet' > /www/index.html\n\
         CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
    let image = fleet.registry().image("t30/hello:1");
    let build = Instant::now();
    fleet
        .docker_cli(2, &["build", "-q", "-t", &image, context.path().to_str().unwrap()])
        .expect("build on engine 2");
    fleet.docker_cli(2, &["push", &image]).expect("push from engine 2");
    eprintln!("build + push on engine 2: {:?}", build.elapsed());
    let digest =
        fleet.registry().manifest_digest("t30/hello", "1").await.expect("the registry holds t30/hello:1");
    for n in [1, 3] {
        assert!(fleet.docker_cli(n, &["image", "inspect", &image]).is_err(), "engine {n} has not built it");
    }

    // Run it on all three engines by digest, on an overlay network as the scheduler
    // does, one task per node, ports published in host mode.
    let deploy = Instant::now();
    fleet
        .docker_cli(1, &["network", "create", "-d", "overlay", "--attachable", "t30-net"])
        .expect("overlay network");
    let by_digest = format!("{}/t30/hello@{digest}", fleet.registry_addr());
    fleet
        .docker_cli(
            1,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "t30-hello",
                "--replicas",
                "3",
                "--replicas-max-per-node",
                "1",
                "--network",
                "t30-net",
                "--publish",
                "mode=host,target=8080,published=18080",
                &by_digest,
            ],
        )
        .expect("service create on the manager");
    let nodes = wait_running_tasks(&fleet, "t30-hello", 3, Duration::from_secs(60));
    assert_eq!(nodes, ["node-1", "node-2", "node-3"]);
    for n in 1..=3 {
        let body = wait_for_http(&format!("http://{}:18080/", fleet.node_ip(n)), Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("engine {n}'s task does not answer: {e}\n{}", fleet.logs()));
        assert!(body.contains("hello from the fleet"), "engine {n} answered {body:?}");
    }
    eprintln!("3 tasks running and answering: {:?}", deploy.elapsed());

    // Engine 3 dies and comes back: the Swarm runs its task there again.
    let restart = Instant::now();
    fleet.kill_engine(3);
    assert!(!fleet.engine_running(3));
    assert!(fleet.docker_cli(3, &["version"]).is_err(), "a killed engine does not answer");
    assert!(
        TcpStream::connect_timeout(&SocketAddr::from((fleet.node_ip(3), 18080)), Duration::from_secs(1))
            .is_err(),
        "a killed engine's task is gone"
    );
    fleet.start_engine(3);
    fleet.wait_ready_nodes(3, Duration::from_secs(60));
    wait_running_tasks(&fleet, "t30-hello", 3, Duration::from_secs(60));
    wait_for_http(&format!("http://{}:18080/", fleet.node_ip(3)), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| {
            let ss = fleet.lab().command(3, "ss").arg("-ltnp").output().unwrap();
            panic!(
                "engine 3's task does not answer after its restart: {e}\ntasks: {:?}\nengine 3: {:?}\n{}\n{}",
                fleet.docker_cli(1, &["service", "ps", "--no-trunc", "t30-hello"]),
                fleet.docker_cli(3, &["ps", "-a"]),
                String::from_utf8_lossy(&ss.stdout),
                fleet.logs()
            )
        });
    eprintln!("engine 3 killed, restarted and serving again: {:?}", restart.elapsed());

    let teardown = Instant::now();
    drop(fleet);
    eprintln!("teardown: {:?}", teardown.elapsed());
    assert_fleet_gone(k, &dir, &registry_addr);
}

#[test]
fn fleet_is_torn_down_after_a_panic() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen_in_thread = seen.clone();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let Some(fleet) = Fleet::start(1).await else { return };
            fleet
                .docker_cli(1, &["run", "-d", "slipway/busybox:latest", "sleep", "600"])
                .expect("a container");
            *seen_in_thread.lock().unwrap() =
                Some((fleet.lab().index(), fleet.dir().to_path_buf(), fleet.registry_addr()));
            panic!("a test fails while the fleet runs (on purpose)");
        })
    })
    .join();
    let Some((k, dir, registry_addr)) = seen.lock().unwrap().take() else {
        assert!(outcome.is_ok(), "the fleet failed to start: see the panic above");
        return; // skipped
    };
    assert!(outcome.is_err(), "the test thread panicked on purpose");
    assert_fleet_gone(k, &dir, &registry_addr);
}
