//! t31: slipway on a fleet — three Docker engines in their own network namespaces,
//! one Swarm, one registry ([`Fleet`]), a scheduler and one agent per engine
//! ([`TestCluster::on_fleet`]). One scenario on one fleet (starting a fleet is the
//! slow part), in phases:
//!
//! 1. spread: three apps deployed one after another while the earlier builds still
//!    run land on three engines, ranked by headroom (engine 1's build filesystem is
//!    the fullest, so it gets the third);
//! 2. affinity: a redeploy goes to the engine that built the app last, and elsewhere
//!    once that engine drains;
//! 3. the floor: an engine whose build filesystem is below the floor gets no build;
//!    a build no engine can take waits, and its explanation names each engine's
//!    reason (`slipway builds show`);
//! 4. replicas: an app with 3 replicas runs one task per engine, each engine having
//!    pulled the image from the registry; every engine's router answers for it and
//!    spreads requests over the three tasks;
//! 5. node loss: an agent killed mid-build turns its node Down within the grace
//!    period, the build completes on another engine as a new attempt, one release;
//! 6. the fleet page in headless Chromium shows the three nodes with their headroom.
//!
//! Each agent's build root is a tmpfs of its own, so each engine has a build
//! filesystem to itself. Needs root, Docker, `docker-registry` and Chromium; skips
//! loudly without them (fails with SLIPWAY_REQUIRE_DOCKER=1).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use slipway_proto::deploy_event::Event;
use slipway_proto::{self as pb};
use slipway_testkit::{wait_for_http_as, GitRepo};
use slipway_tests::browser::{chromium, headless};
use slipway_tests::cluster::DeployRun;
use slipway_tests::{Fleet, TestCluster};
use tokio_stream::StreamExt;

/// Size of each engine's build filesystem.
const BUILD_FS: &str = "1g";
/// Engine 1's build filesystem holds this much besides builds: the least disk headroom.
const ENGINE_1_FILLER_MIB: u64 = 300;
/// Below the floor of 100 MiB (`slipway_tests::cluster::MIN_FREE_BYTES`).
const SMALL_BUILD_FS: &str = "64m";
/// TestCluster's `agents.down_after_secs`.
const GRACE: Duration = Duration::from_secs(5);
/// TestCluster's `agents.report_interval_secs`.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[test]
fn t31_fleet_placement() {
    let Some(chromium) = chromium() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        // Engine 3 has BuildKit turned off: its builds take the classic fallback.
        let Some(mut fleet) = Fleet::start_with_classic(3, &[3]).await else { return };
        for n in fleet.engine_numbers() {
            mount_tmpfs(&fleet.build_root(n), BUILD_FS);
        }
        let filler = fleet.build_root(1).join("not-slipway's");
        std::fs::write(&filler, vec![0u8; (ENGINE_1_FILLER_MIB << 20) as usize]).expect("fill engine 1's fs");
        let mut cluster = TestCluster::on_fleet("t31", &mut fleet).await;
        eprintln!("fleet, scheduler and 3 agents up in {:?}", started.elapsed());

        let apps = spread(&cluster).await;
        affinity(&cluster, &apps[0]).await;
        below_the_floor(&cluster, &fleet, &apps[1]).await;
        replicas(&cluster, &fleet).await;
        node_loss(&mut cluster).await;
        fleet_page(&cluster, &chromium).await;
        assert!(filler.exists(), "slipway never touches what is not its own");
        eprintln!("t31 done in {:?}", started.elapsed());
        drop(cluster);
    });
}

/// An app of this test: the example with its name and replicas set, and a build
/// step that takes `slow_secs` (its own, so no engine has it cached).
struct App {
    name: String,
    repo: GitRepo,
}

impl App {
    fn new(name: &str, replicas: u32, slow_secs: u32) -> App {
        let repo = GitRepo::from_example("hello");
        let manifest = std::fs::read_to_string(repo.path().join("slipway.toml")).unwrap();
        let manifest = manifest
            .replace("name = \"hello\"", &format!("name = \"{name}\""))
            .replace("replicas = 1", &format!("replicas = {replicas}"));
        repo.write("slipway.toml", manifest);
        let dockerfile = std::fs::read_to_string(repo.path().join("Dockerfile")).unwrap();
        let slow = format!("RUN echo 'app {name}' && sleep {slow_secs}\nCOPY www /app/www");
        repo.write("Dockerfile", dockerfile.replace("COPY www /app/www", &slow));
        repo.commit(&format!("app {name}"));
        App { name: name.to_string(), repo }
    }

    /// A code-only change, committed.
    fn change_code(&self, what: &str) {
        self.repo.write("www/version.txt", what);
        self.repo.commit(what);
    }
}

/// A deploy whose build has been placed: the node, and the rest of its stream.
struct Placed {
    build_id: String,
    node: String,
    rejected: Vec<pb::NodeRejection>,
    stream: tonic::Streaming<pb::DeployEvent>,
    started: Instant,
}

/// Starts a deploy of `app` and reads its stream until the build is placed.
async fn deploy_until_placed(cluster: &TestCluster, app: &str) -> Placed {
    let started = Instant::now();
    let req = pb::DeployRequest { app: app.into(), ..Default::default() };
    let mut stream = cluster.client().await.deploy(req).await.expect("deploy").into_inner();
    let mut build_id = String::new();
    while let Some(event) = stream.next().await {
        match event.expect("deploy stream").event {
            Some(Event::BuildQueued(id)) => build_id = id,
            Some(Event::Placement(p)) if p.node_name.is_empty() => {
                eprintln!("{app} waits for a node: {:?}", p.rejected);
            }
            Some(Event::Placement(p)) => {
                return Placed { build_id, node: p.node_name, rejected: p.rejected, stream, started }
            }
            Some(Event::Failed(f)) => panic!("deploy of {app} failed before placement: {f}"),
            _ => {}
        }
    }
    panic!("the deploy stream of {app} ended before placement");
}

/// Reads a placed deploy's stream to its end; panics unless it went live.
async fn finish(placed: Placed) -> DeployRun {
    let mut run = DeployRun { build_id: placed.build_id, ..Default::default() };
    let mut stream = placed.stream;
    while let Some(event) = stream.next().await {
        match event.expect("deploy stream").event {
            Some(Event::Log(l)) => run.log.push(l.line),
            Some(Event::DeployProgress(p)) => run.log.push(format!("[deploy] {p}")),
            Some(Event::Built(o)) => run.built = Some(o),
            Some(Event::Release(r)) => run.release = Some(r),
            Some(Event::Done(d)) => run.done = Some(d),
            Some(Event::Failed(f)) => run.failed = Some(f),
            _ => {}
        }
    }
    run.elapsed = placed.started.elapsed();
    run.live();
    run
}

/// Node name → node, as the scheduler lists them.
async fn nodes(cluster: &TestCluster) -> Vec<pb::Node> {
    let mut nodes = cluster
        .client()
        .await
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("list nodes")
        .into_inner()
        .nodes;
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

fn cli_ok(cluster: &TestCluster, args: &[&str]) -> String {
    let out = cluster.cli(args);
    assert!(out.status.success(), "slipway {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Phase 1: three apps, each deployed while the earlier builds run.
async fn spread(cluster: &TestCluster) -> Vec<App> {
    let apps: Vec<App> = ["alpha", "bravo", "charlie"].iter().map(|name| App::new(name, 1, 8)).collect();
    let mut placed = Vec::new();
    for app in &apps {
        cluster.create_app(&app.name, &app.repo.url()).await.expect("create app");
        let p = deploy_until_placed(cluster, &app.name).await;
        eprintln!("{} placed on {}", app.name, p.node);
        placed.push(p);
    }
    let on: Vec<String> = placed.iter().map(|p| p.node.clone()).collect();
    assert_eq!(on.iter().collect::<BTreeSet<_>>().len(), 3, "three builds on three engines: {on:?}");
    assert_ne!(on[0], "node-1", "engine 1 has the least disk headroom: not the first choice");
    assert_eq!(on[2], "node-1", "engines 2 and 3 each run a build: engine 1 takes the third");
    for p in placed {
        let node = p.node.clone();
        let run = finish(p).await;
        eprintln!("deployed in {:?}", run.elapsed);
        let fallback = run.log.iter().any(|l| l.starts_with("==> builder: classic (fallback: the engine"));
        assert_eq!(fallback, node == "node-3", "only engine 3 (BuildKit off) falls back: {:#?}", run.log);
    }
    let builders: Vec<String> =
        nodes(cluster).await.iter().map(|n| n.report.clone().unwrap_or_default().builder).collect();
    assert_eq!(builders, ["buildkit", "buildkit", "classic"], "each engine's builder is reported");
    let table = cli_ok(cluster, &["nodes"]);
    assert!(
        table.contains("(classic)") && table.contains("(buildkit)"),
        "nodes shows each builder:\n{table}"
    );
    apps
}

/// Phase 2: a redeploy goes where the app's layers are; not to a draining node.
async fn affinity(cluster: &TestCluster, app: &App) {
    let builds = cluster.builds(&app.name).await;
    let last = nodes(cluster).await.into_iter().find(|n| n.id == builds[0].node_id).expect("its node").name;
    app.change_code("v2");
    let p = deploy_until_placed(cluster, &app.name).await;
    assert_eq!(p.node, last, "the redeploy goes to the engine that built {} last", app.name);
    let built = finish(p).await.built.expect("the build's output");
    assert!(built.cache_hits >= 3, "a warm build: its dependency steps come from the cache: {built:?}");

    cli_ok(cluster, &["nodes", "drain", &last]);
    app.change_code("v3");
    let p = deploy_until_placed(cluster, &app.name).await;
    assert_ne!(p.node, last, "not on the draining engine");
    let why = p.rejected.iter().find(|r| r.node_name == last).expect("the drained node is explained");
    assert!(why.reason.contains("draining"), "{why:?}");
    finish(p).await;
    cli_ok(cluster, &["nodes", "activate", &last]);
}

/// Phase 3: engine 3's build filesystem shrinks below the floor; with engines 1 and 2
/// drained, a build waits and says why, node by node; engine 3 never gets it.
async fn below_the_floor(cluster: &TestCluster, fleet: &Fleet, app: &App) {
    remount_tmpfs(&fleet.build_root(3), SMALL_BUILD_FS);
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes(cluster).await[2].report.as_ref().is_none_or(|r| r.build_fs_total_bytes > 64 << 20) {
        assert!(Instant::now() < deadline, "node-3 does not report its smaller build filesystem");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cli_ok(cluster, &["nodes", "drain", "node-1"]);
    cli_ok(cluster, &["nodes", "drain", "node-2"]);
    app.change_code("v2");
    let req = pb::DeployRequest { app: app.name.clone(), ..Default::default() };
    let started = Instant::now();
    let mut stream = cluster.client().await.deploy(req).await.expect("deploy").into_inner();
    let build_id = match stream.next().await {
        Some(Ok(pb::DeployEvent { event: Some(Event::BuildQueued(id)) })) => id,
        other => panic!("unexpected first event {other:?}"),
    };
    let waiting = wait_build(cluster, &build_id, |b| b.waiting_on.len() == 3).await;
    assert_eq!(waiting.state, pb::BuildState::Queued as i32, "{waiting:?}");
    let reason = |name: &str| {
        waiting.waiting_on.iter().find(|r| r.node_name == name).map(|r| r.reason.clone()).unwrap_or_default()
    };
    assert!(reason("node-1").contains("draining") && reason("node-2").contains("draining"), "{waiting:?}");
    assert!(
        reason("node-3").contains("build filesystem has") && reason("node-3").contains("needs at least"),
        "{waiting:?}"
    );
    let shown = cli_ok(cluster, &["builds", "show", &build_id]);
    assert!(shown.contains("node-3") && shown.contains("build filesystem has"), "builds show:\n{shown}");
    eprintln!("a build no engine can take explains itself:\n{shown}");

    cli_ok(cluster, &["nodes", "activate", "node-2"]);
    let placed = loop {
        match stream.next().await {
            Some(Ok(pb::DeployEvent { event: Some(Event::Placement(p)) })) if !p.node_name.is_empty() => {
                break p
            }
            Some(Ok(pb::DeployEvent { event: Some(Event::Placement(_)) })) => {} // still waiting
            other => panic!("expected the placement, got {other:?}"),
        }
    };
    assert_eq!(placed.node_name, "node-2");
    finish(Placed { build_id, node: placed.node_name, rejected: placed.rejected, stream, started }).await;
    cli_ok(cluster, &["nodes", "activate", "node-1"]);
    remount_tmpfs(&fleet.build_root(3), BUILD_FS);
}

/// Phase 4: three replicas, one per engine, each pulled from the registry.
async fn replicas(cluster: &TestCluster, fleet: &Fleet) {
    let app = App::new("replicated", 3, 1);
    cluster.create_app(&app.name, &app.repo.url()).await.expect("create app");
    let p = deploy_until_placed(cluster, &app.name).await;
    let built_on = p.node.clone();
    let run = finish(p).await;
    let release = run.live().clone();
    assert!(release.image.starts_with(&fleet.registry_addr()), "{release:?}");

    let tasks = cluster
        .swarm_cli(&[
            "service",
            "ps",
            &cluster.service(&app.name),
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}} {{.CurrentState}}",
        ])
        .expect("service ps");
    let running: BTreeSet<&str> =
        tasks.lines().filter(|l| l.contains("Running")).filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(running, BTreeSet::from(["node-1", "node-2", "node-3"]), "one task per engine:\n{tasks}");
    let host = cluster.app_host(&app.name);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    for n in fleet.engine_numbers() {
        fleet.docker_cli(n, &["image", "inspect", &release.image]).unwrap_or_else(|e| {
            panic!("engine {n} holds the release's image (built on {built_on}, pulled elsewhere): {e}")
        });
        // Every engine's router answers for the app and reaches all three tasks over
        // the overlay network, wherever they run.
        let router = format!("http://{}:{}/", fleet.node_ip(n), cluster.router_port);
        let body = wait_for_http_as(&router, Some(&host), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("engine {n}'s router does not answer for {host}: {e}"));
        assert!(body.contains("hello"), "engine {n} answered {body:?}");
        let mut tasks = BTreeSet::new();
        for _ in 0..30 {
            let response = client.get(&router).header(reqwest::header::HOST, &host).send().await;
            let body = response.expect("the router answers").text().await.unwrap();
            tasks.extend(body.lines().filter(|l| l.starts_with("host: ")).map(str::to_owned));
        }
        assert_eq!(tasks.len(), 3, "engine {n}'s router spreads requests over the 3 tasks: {tasks:?}");
    }
    // The registry takes tokens only, so the engines that did not build pulled with the
    // grant Swarm keeps with the service: anonymously, the manifest is refused. (Asked
    // over HTTP: an engine that holds the image answers `docker pull` of its digest
    // with "up to date" after the registry's 401, without fetching the manifest.)
    let manifest = format!("http://{}/v2/{}/manifests/{}", fleet.registry_addr(), app.name, release.digest);
    let anonymous = reqwest::get(&manifest).await.expect("GET the manifest");
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED, "anonymous GET {manifest}");
    let log = fleet.engine_log(1) + &fleet.engine_log(2) + &fleet.engine_log(3);
    assert!(!log.contains("docker.io/"), "no engine went to Docker Hub");
}

/// Phase 5: an agent dies mid-build; its node goes Down, another engine builds it.
async fn node_loss(cluster: &mut TestCluster) {
    let app = App::new("survivor", 1, 15);
    cluster.create_app(&app.name, &app.repo.url()).await.expect("create app");
    let p = deploy_until_placed(cluster, &app.name).await;
    let lost = p.node.clone();
    let n: u8 = lost.trim_start_matches("node-").parse().expect("node-N");
    wait_build(cluster, &p.build_id, |b| b.state == pb::BuildState::Running as i32).await;
    cluster.kill_agent(n);
    let killed = Instant::now();
    // Down comes once the scheduler heard nothing for the grace period: at most one
    // report interval after the kill plus the grace (the list computes liveness when
    // asked), with 2 s for a loaded machine.
    let down = loop {
        let node = nodes(cluster).await.into_iter().find(|x| x.name == lost).expect("the lost node");
        if node.status == pb::NodeStatus::Down as i32 {
            break node;
        }
        assert!(
            killed.elapsed() < REPORT_INTERVAL + GRACE + Duration::from_secs(2),
            "{lost} not Down in time: {node:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let silence = Duration::from_millis(down.last_report_age_ms);
    eprintln!(
        "{lost} Down {:?} after its agent was killed, {silence:?} after its last report (grace {GRACE:?})",
        killed.elapsed()
    );
    // Not before the grace period: measured from the last report the scheduler got (on
    // a loaded machine that can be seconds before the kill), not from the kill.
    assert!(silence >= GRACE, "Down after only {silence:?} without a report: {down:?}");

    let run = finish(p).await;
    let build = wait_build(cluster, &run.build_id, |b| b.release != 0).await;
    assert_eq!(build.attempt, 2, "placed again as a new attempt: {build:?}");
    let lost_id = nodes(cluster).await.into_iter().find(|x| x.name == lost).unwrap().id;
    assert_ne!(build.node_id, lost_id, "completed on another engine");

    // The agent comes back: whatever it remembers of the lost attempt changes nothing.
    // Its session's first report says what it holds; the leader has acted on that once
    // it took a report sent two report intervals after the restart.
    let restarted_ms = slipway_common::now_ms();
    cluster.start_agent(n);
    cluster.wait_for_ready_nodes(3).await;
    let settled_ms = restarted_ms + 2 * REPORT_INTERVAL.as_millis() as u64;
    let deadline = Instant::now() + GRACE * 4;
    loop {
        let node = nodes(cluster).await.into_iter().find(|x| x.name == lost).expect("the lost node");
        if node.report.as_ref().is_some_and(|r| r.sent_at_ms >= settled_ms) {
            break;
        }
        assert!(Instant::now() < deadline, "{lost} reported nothing since its restart: {node:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.releases(&app.name).await.len(), 1, "one release for one deploy");
    let after = cluster.client().await.get_build(pb::GetBuildRequest { id: run.build_id }).await.unwrap();
    assert_eq!(after.into_inner(), build, "the build record is final");
}

/// Phase 6: the fleet page, rendered by Chromium, shows every node's headroom.
async fn fleet_page(cluster: &TestCluster, chromium: &Path) {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let url = cluster.fleet_page_url(1);
    let nodes = nodes(cluster).await;
    let dom = tokio::task::block_in_place(|| headless(chromium, profile.path(), &["--dump-dom"], &url));
    for node in &nodes {
        let report = node.report.as_ref().expect("reported");
        let row = &dom[dom.find(&format!("data-node-id=\"{}\"", node.id)).expect("a row per node")..];
        let row = &row[..row.find("</tr>").expect("end of row")];
        assert!(row.contains(&format!("data-node-name=\"{}\"", node.name)), "{row}");
        assert!(row.contains("data-status=\"ready\""), "{row}");
        let total = slipway_proto::human_bytes(report.build_fs_total_bytes);
        assert!(row.contains(&format!("of {total}")), "{} build fs of {total}:\n{row}", node.name);
        assert!(row.contains(&format!("of {} cores idle", report.cpu_count)), "{row}");
    }
}

/// Polls the build until `done` holds (120 s at most).
async fn wait_build(cluster: &TestCluster, id: &str, done: impl Fn(&pb::Build) -> bool) -> pb::Build {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let build = cluster.client().await.get_build(pb::GetBuildRequest { id: id.into() }).await;
        let build = build.expect("get build").into_inner();
        if done(&build) {
            return build;
        }
        assert!(Instant::now() < deadline, "build {id} did not get there in 120 s: {build:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mount_tmpfs(path: &Path, size: &str) {
    run("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path.to_str().unwrap()]);
}

fn remount_tmpfs(path: &Path, size: &str) {
    run("mount", &["-o", &format!("remount,size={size}"), path.to_str().unwrap()]);
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
