//! `cargo run --release -p slipway-tests --bin bench-rebuild [ROUNDS] [PACKAGES]`: on a
//! fleet, how much a rebuild gains from landing where the app's layers are.
//!
//! A fleet of two engines ([`Fleet`]), a scheduler and an agent per engine
//! ([`TestCluster::on_fleet`]). The app is the example with a heavier dependency step:
//! PACKAGES (default 40) packages of 2 MiB "installed" by its `install-deps.sh`
//! (0.4 s each, as if downloaded), about 80 MiB in one layer. It is built once on
//! engine 1. Then, ROUNDS times (default 3), a code-only change is deployed
//!
//! - warm: on engine 1 (engine 2 drained), which holds the app's layers: the
//!   dependency step comes from the local cache;
//! - cold: on engine 2 (engine 1 drained), from which the app's images and build
//!   cache are removed first: it has only the base image, and the engine's BuildKit
//!   reads the inline cache metadata of the app's last image in the registry (its
//!   `cache-from`), so the dependency layer travels instead of being rebuilt;
//!
//! and, once, a `--no-cache` rebuild (the dependency step re-run: what a cold engine
//! would pay without the registry as cache source). Prints the build phase (clone,
//! context, build, push as the agent measured them) and the whole deploy, medians,
//! and the ratio cold / warm. Placement would pick engine 1 by affinity on its own;
//! the drains make each round's engine explicit. The app's Swarm tasks run on engine 1
//! (engine 2 is drained in the Swarm), so nothing on engine 2 holds its images.

use std::time::Duration;

use slipway_agent::pipeline::docker::APP_LABEL;
use slipway_proto::{self as pb};
use slipway_testkit::{free_port, GitRepo};
use slipway_tests::cluster::DeployRun;
use slipway_tests::{Fleet, TestCluster};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// The agent's own measure of the build: clone + context + build + push.
fn build_phase(run: &DeployRun) -> Duration {
    let t = run.built.as_ref().and_then(|o| o.timings).expect("the build's timings");
    Duration::from_millis(t.clone_ms + t.context_ms + t.build_ms + t.push_ms)
}

fn cli(cluster: &TestCluster, args: &[&str]) {
    let out = cluster.cli(args);
    assert!(out.status.success(), "slipway {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Leaves engine `n` with none of `app`'s images or build cache: only the base image.
fn make_cold(fleet: &Fleet, n: u8, app: &str) {
    let images = fleet
        .docker_cli(n, &["image", "ls", "-q", "--filter", &format!("label={APP_LABEL}={app}")])
        .unwrap_or_default();
    let repo = format!("{}/{app}", fleet.registry_addr());
    let tagged = fleet.docker_cli(n, &["image", "ls", "-q", &repo]).unwrap_or_default();
    let ids: std::collections::BTreeSet<&str> =
        images.split_whitespace().chain(tagged.split_whitespace()).collect();
    if !ids.is_empty() {
        let mut args = vec!["image", "rm", "-f"];
        args.extend(ids);
        fleet.docker_cli(n, &args).unwrap_or_else(|e| panic!("engine {n}: {e}"));
    }
    fleet.docker_cli(n, &["image", "prune", "-f"]).unwrap_or_else(|e| panic!("engine {n}: {e}"));
    fleet.docker_cli(n, &["builder", "prune", "-af"]).unwrap_or_else(|e| panic!("engine {n}: {e}"));
}

async fn deploy(cluster: &TestCluster, app: &str, no_cache: bool) -> DeployRun {
    let run =
        cluster.deploy_request(pb::DeployRequest { app: app.into(), no_cache, ..Default::default() }).await;
    run.live();
    run
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let packages: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(40);
    let Some(mut fleet) = Fleet::start(2).await else {
        eprintln!("bench-rebuild needs root, Docker and docker-registry");
        std::process::exit(1);
    };
    let cluster = TestCluster::on_fleet("bench-rebuild", &mut fleet).await;
    // The app's tasks run on engine 1 only: engine 2 must be able to drop its images.
    fleet
        .docker_cli(fleet.manager(), &["node", "update", "--availability", "drain", &fleet.hostname(2)])
        .expect("drain engine 2 in the Swarm");

    let repo = GitRepo::from_example("hello");
    let manifest = std::fs::read_to_string(repo.path().join("slipway.toml")).expect("manifest");
    repo.write("slipway.toml", manifest.replace("port = 8080", &format!("port = {}", free_port())));
    let deps: String = (0..packages).map(|i| format!("package-{i:03} 1.0.{i} 2048\n")).collect();
    repo.write("deps.txt", deps);
    repo.commit("a dependency-heavy hello");
    cluster.create_app("hello", &repo.url()).await.expect("create app");

    cli(&cluster, &["nodes", "drain", "node-2"]);
    let first = deploy(&cluster, "hello", false).await;
    let size = first.built.as_ref().map_or(0, |o| o.image_size_bytes);
    eprintln!(
        "first build on node-1: {} s, image {}",
        secs(build_phase(&first)),
        slipway_proto::human_bytes(size)
    );

    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        repo.write("www/version.txt", format!("round {round} warm\n"));
        repo.commit("code-only change");
        cli(&cluster, &["nodes", "activate", "node-1"]);
        cli(&cluster, &["nodes", "drain", "node-2"]);
        let run = deploy(&cluster, "hello", false).await;
        eprintln!("round {round} warm: build {} s, deploy {} s", secs(build_phase(&run)), secs(run.elapsed));
        warm.push(run);

        repo.write("www/version.txt", format!("round {round} cold\n"));
        repo.commit("code-only change");
        make_cold(&fleet, 2, "hello");
        cli(&cluster, &["nodes", "activate", "node-2"]);
        cli(&cluster, &["nodes", "drain", "node-1"]);
        let run = deploy(&cluster, "hello", false).await;
        eprintln!("round {round} cold: build {} s, deploy {} s", secs(build_phase(&run)), secs(run.elapsed));
        cold.push(run);
    }
    cli(&cluster, &["nodes", "activate", "node-1"]);
    cli(&cluster, &["nodes", "drain", "node-2"]);
    let no_cache = deploy(&cluster, "hello", true).await;

    let summary = |runs: &[DeployRun]| {
        let builds: Vec<Duration> = runs.iter().map(build_phase).collect();
        let deploys: Vec<Duration> = runs.iter().map(|r| r.elapsed).collect();
        let hits: Vec<String> = runs
            .iter()
            .map(|r| r.built.as_ref().map_or("?".into(), |o| format!("{}/{}", o.cache_hits, o.steps)))
            .collect();
        (median(builds.clone()), median(deploys), builds, hits)
    };
    let (wb, wd, wbs, wh) = summary(&warm);
    let (cb, cd, cbs, ch) = summary(&cold);
    println!(
        "bench-rebuild: example app with {packages} packages of 2 MiB (image {}), {rounds} rounds",
        slipway_proto::human_bytes(size)
    );
    println!("                       build phase   whole deploy   builds (s)          cached steps");
    println!(
        "  warm engine          {:>8} s    {:>8} s    {:?}  {wh:?}",
        secs(wb),
        secs(wd),
        wbs.iter().map(|d| secs(*d)).collect::<Vec<_>>()
    );
    println!(
        "  cold engine          {:>8} s    {:>8} s    {:?}  {ch:?}",
        secs(cb),
        secs(cd),
        cbs.iter().map(|d| secs(*d)).collect::<Vec<_>>()
    );
    println!(
        "  no cache (once)      {:>8} s    {:>8} s",
        secs(build_phase(&no_cache)),
        secs(no_cache.elapsed)
    );
    println!(
        "  ratio cold / warm    {:>8.2}      {:>8.2}",
        cb.as_secs_f64() / wb.as_secs_f64(),
        cd.as_secs_f64() / wd.as_secs_f64()
    );
    println!("  ratio no-cache / warm {:>7.2}", build_phase(&no_cache).as_secs_f64() / wb.as_secs_f64());
    drop(cluster);
}
