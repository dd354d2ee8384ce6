//! `cargo run -p slipway-tests --bin bench-deploy [ROUNDS]`: deploy-path benchmark on
//! the example app against the real engine, registry and Swarm.
//!
//! Measures, in one run (the machine is shared and noisy, so only ratios within the
//! run mean much):
//! - a cold deploy through slipway (first build, everything pushed);
//! - code-only redeploys through slipway (dependency layers cached and already in the
//!   registry), ROUNDS times;
//! - the same code-only redeploy done by hand with the docker CLI — `git clone`,
//!   `docker build`, `docker push`, `docker service update --image …@digest` on a service
//!   with the same healthcheck, update monitor window and auto-rollback that slipway
//!   sets — ROUNDS times, interleaved with slipway's, as the baseline. Both go through
//!   the cluster's registry with token auth: the by-hand operator is logged in with a
//!   grant for its own app and updates `--with-registry-auth`.
//!
//! Prints medians, bytes pushed, and slipway / by-hand ratios.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use slipway_scheduler::security::registry_auth::{issue_grant, GRANT_USER};
use slipway_testkit::docker::{docker_cli, docker_cli_as};
use slipway_testkit::GitRepo;
use slipway_tests::TestCluster;

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The by-hand operator's docker CLI, with its client config `config`: logged in to the
/// cluster's registry (which takes tokens only) with a grant for the by-hand app.
fn docker(config: &Path, args: &[&str]) -> String {
    docker_cli_as(config, args, None).unwrap_or_else(|e| panic!("{e}"))
}

/// The code-only redeploy done by hand: clone, build, push, update the service.
fn by_hand(config: &Path, repo: &GitRepo, image: &str, service: &str, round: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    sh("git", &["clone", "-q", "--depth", "1", &repo.url(), dir.path().to_str().unwrap()]);
    let tag = format!("{image}:manual-{round}");
    docker(config, &["build", "-q", "-t", &tag, dir.path().to_str().unwrap()]);
    docker(config, &["push", "-q", &tag]);
    let digest = docker(config, &["inspect", "--format", "{{index .RepoDigests 0}}", &tag]);
    docker(config, &["service", "update", "-q", "--with-registry-auth", "--image", digest.trim(), service]);
    started.elapsed()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let Some(mut cluster) = TestCluster::start("bench").await else {
        eprintln!("bench-deploy needs a Docker engine");
        std::process::exit(1);
    };
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create app");

    let cold = cluster.deploy("hello", None).await;
    cold.live();
    let cold_out = cold.built.clone().unwrap();

    // The by-hand baseline gets its own service and image, warmed once (not timed).
    let manual_image = cluster.registry().image("hello-manual");
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path();
    let grant = issue_grant(&cluster.ca(), "hello-manual", &["push", "pull"], Duration::from_secs(24 * 3600));
    let registry = cluster.registry().addr();
    docker_cli_as(config, &["login", "-u", GRANT_USER, "--password-stdin", &registry], Some(&grant))
        .unwrap_or_else(|e| panic!("{e}"));
    let manual_service = format!("{}_hello-manual", cluster.stack);
    let warm_tag = format!("{manual_image}:warm");
    docker(config, &["build", "-q", "-t", &warm_tag, repo.path().to_str().unwrap()]);
    docker(config, &["push", "-q", &warm_tag]);
    let warm_digest = docker(config, &["inspect", "--format", "{{index .RepoDigests 0}}", &warm_tag]);
    docker(
        config,
        &[
            "service",
            "create",
            "-q",
            "--with-registry-auth",
            "--name",
            &manual_service,
            "--label",
            &format!("com.docker.stack.namespace={}", cluster.stack),
            // As slipway runs it: on the stack's network, found by DNS, no host port.
            "--network",
            &format!("{}_default", cluster.stack),
            "--endpoint-mode",
            "dnsrr",
            // The same safety slipway applies: healthcheck, monitor window, auto-rollback.
            // Start-first, as slipway's rollouts behind the router go.
            "--health-cmd",
            "wget -q -O /dev/null http://127.0.0.1:${PORT:-8080}/",
            "--health-interval",
            "2s",
            "--health-retries",
            "3",
            "--update-order",
            "start-first",
            "--update-monitor",
            "6s",
            "--update-failure-action",
            "rollback",
            warm_digest.trim(),
        ],
    );

    let (mut slipway_times, mut hand_times, mut pushed) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        repo.write("www/version.txt", format!("slipway round {round}\n"));
        repo.commit("code-only change");
        let run = cluster.deploy("hello", None).await;
        run.live();
        slipway_times.push(run.elapsed);
        pushed.push(run.built.clone().unwrap());
        hand_times.push(by_hand(config, &repo, &manual_image, &manual_service, round));
    }
    let _ = docker_cli(&["service", "rm", &manual_service]);

    // The same code-only redeploy with the agent on the classic builder
    // (`builder = "classic"` in its agent.toml), after one untimed warm-up build.
    cluster.kill_agent(1);
    cluster.set_agent_extra(1, "builder = \"classic\"\n");
    cluster.start_agent(1);
    let mut classic = Vec::new();
    for round in 0..=rounds {
        repo.write("www/version.txt", format!("classic round {round}\n"));
        repo.commit("code-only change");
        let run = cluster.deploy("hello", None).await;
        run.live();
        assert!(run.log.iter().any(|l| l.starts_with("==> builder: classic")), "{:#?}", run.log);
        if round > 0 {
            classic.push((run.elapsed, run.built.clone().unwrap()));
        }
    }

    let warm_bytes: Vec<u64> = pushed.iter().map(|o| o.bytes_pushed).collect();
    let (s, h) = (median(slipway_times.clone()), median(hand_times.clone()));
    println!("bench-deploy: example app, {rounds} code-only rounds");
    println!(
        "  cold deploy (slipway)            {:>8.2} s  pushed {} layers, {} bytes, {} reused",
        cold.elapsed.as_secs_f64(),
        cold_out.layers_pushed,
        cold_out.bytes_pushed,
        cold_out.layers_reused
    );
    println!(
        "  code-only redeploy (slipway)     {:>8.2} s  median of {:?}",
        s.as_secs_f64(),
        slipway_times.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>()
    );
    println!(
        "  code-only redeploy (docker CLI)  {:>8.2} s  median of {:?}",
        h.as_secs_f64(),
        hand_times.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>()
    );
    println!("  ratio slipway / by hand          {:>8.2}", s.as_secs_f64() / h.as_secs_f64());
    println!("  bytes pushed per code-only deploy {warm_bytes:?} (layers pushed {:?}, reused {:?}, cached steps {:?})",
        pushed.iter().map(|o| o.layers_pushed).collect::<Vec<_>>(),
        pushed.iter().map(|o| o.layers_reused).collect::<Vec<_>>(),
        pushed.iter().map(|o| format!("{}/{}", o.cache_hits, o.steps)).collect::<Vec<_>>());
    for (i, o) in pushed.iter().enumerate() {
        let t = o.timings.unwrap_or_default();
        let build_side = t.clone_ms + t.context_ms + t.build_ms + t.push_ms;
        println!(
            "  round {i}: clone {} ms, context {} ms, build {} ms, push {} ms; the rest (placement, release, Swarm update) {} ms",
            t.clone_ms,
            t.context_ms,
            t.build_ms,
            t.push_ms,
            (slipway_times[i].as_millis() as u64).saturating_sub(build_side)
        );
    }
    let build_ms = |outs: &mut dyn Iterator<Item = &slipway_proto::BuildOutput>| {
        let mut ms: Vec<u64> = outs.map(|o| o.timings.unwrap_or_default().build_ms).collect();
        ms.sort();
        (ms[ms.len() / 2], ms)
    };
    let (bk_build, bk_all) = build_ms(&mut pushed.iter());
    let (cl_build, cl_all) = build_ms(&mut classic.iter().map(|(_, o)| o));
    let cl_total = median(classic.iter().map(|(d, _)| *d).collect());
    println!("  build phase, BuildKit            {:>8.2} s  median of {bk_all:?} ms", bk_build as f64 / 1e3);
    println!(
        "  build phase, classic builder     {:>8.2} s  median of {cl_all:?} ms (cached steps {:?})",
        cl_build as f64 / 1e3,
        classic.iter().map(|(_, o)| format!("{}/{}", o.cache_hits, o.steps)).collect::<Vec<_>>()
    );
    println!("  ratio BuildKit / classic (build) {:>8.2}", bk_build as f64 / (cl_build.max(1)) as f64);
    println!("  code-only redeploy, classic      {:>8.2} s  (whole deploy, median)", cl_total.as_secs_f64());
    println!(
        "  cold / code-only bytes pushed    {:>8.0}x",
        cold_out.bytes_pushed as f64 / (*warm_bytes.iter().max().unwrap_or(&1)).max(1) as f64
    );
}
