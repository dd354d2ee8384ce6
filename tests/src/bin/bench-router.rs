//! `cargo run -p slipway-tests --bin bench-router [ROUNDS]`: what the router changes,
//! measured against the real engine, registry, Swarm and Caddy in one run.
//!
//! - **Requests lost during a redeploy.** Two copies of the example app take the same
//!   steady load (4 clients, one request each every 10 ms) through a code-only
//!   redeploy, ROUNDS times each, interleaved: `direct` publishes its port on the host
//!   (`[run] publish`), as every app did before the router, so its updates go
//!   stop-first and the load hits the published port; `routed` publishes nothing and
//!   the load goes through the router, its updates start-first.
//! - **Time to a failed deploy.** A release whose command exits 1, and one whose
//!   constraint no node meets, each deployed once over `routed`: how long until
//!   `deploy` fails (before the router work, both ran into the 180 s converge timeout).
//! - **The router's added latency.** 2,000 sequential GETs of a static file of `direct`,
//!   alternating between its published port and the router (both keep-alive).
//!
//! Prints the settings it ran with and every figure.

use std::time::{Duration, Instant};

use slipway_testkit::{free_port, GitRepo};
use slipway_tests::{Load, LoadReport, TestCluster};

/// Clients of the steady load, and how often each sends a request.
const WORKERS: usize = 4;
const INTERVAL: Duration = Duration::from_millis(10);
/// Requests of the latency comparison, per path.
const LATENCY_REQUESTS: usize = 2000;

fn app_repo(name: &str, run: &str) -> GitRepo {
    let repo = GitRepo::from_example("hello");
    let manifest = std::fs::read_to_string(repo.path().join("slipway.toml")).expect("slipway.toml");
    let manifest = manifest
        .replace("name = \"hello\"", &format!("name = \"{name}\""))
        .replace("port = 8080\n", &format!("port = 8080\n{run}"));
    repo.write("slipway.toml", manifest);
    repo.write("www/version.txt", format!("{name} 0\n"));
    repo.commit("bench app");
    repo
}

/// A code-only redeploy of `app` under the steady load on `url` (with `host`).
async fn redeploy_under_load(
    cluster: &TestCluster,
    repo: &GitRepo,
    app: &str,
    round: usize,
    url: &str,
    host: Option<&str>,
) -> LoadReport {
    let load = Load::start(url, host, WORKERS, INTERVAL);
    tokio::time::sleep(Duration::from_secs(2)).await;
    repo.write("www/version.txt", format!("{app} {}\n", round + 1));
    repo.commit("code-only change");
    cluster.deploy(app, None).await.live();
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop().await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let Some(cluster) = TestCluster::start("benchroute").await else {
        eprintln!("bench-router needs a Docker engine");
        std::process::exit(1);
    };
    let published = free_port();
    let direct = app_repo("direct", &format!("publish = {published}\n"));
    let routed = app_repo("routed", "");
    cluster.create_app("direct", &direct.url()).await.expect("create direct");
    cluster.create_app("routed", &routed.url()).await.expect("create routed");
    cluster.deploy("direct", None).await.live();
    cluster.deploy("routed", None).await.live();
    let router = format!("http://127.0.0.1:{}", cluster.router_port);
    let direct_url = format!("http://127.0.0.1:{published}/version.txt");
    let routed_url = format!("{router}/version.txt");
    cluster.wait_for_app("routed", "/version.txt", Duration::from_secs(30)).await.expect("routed answers");
    slipway_testkit::wait_for_http(&direct_url, Duration::from_secs(30)).await.expect("direct answers");
    println!(
        "bench-router: example app (busybox httpd), {rounds} code-only redeploys each, load {WORKERS} clients \
         x 1 request / {INTERVAL:?} (at most {} req/s), {LATENCY_REQUESTS} latency requests per path",
        WORKERS as u128 * 1000 / INTERVAL.as_millis()
    );

    let (mut before, mut after) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let b = redeploy_under_load(&cluster, &direct, "direct", round, &direct_url, None).await;
        println!("  round {round}: published port, stop-first: {b}");
        before.push(b);
        let host = cluster.app_host("routed");
        let a = redeploy_under_load(&cluster, &routed, "routed", round, &routed_url, Some(&host)).await;
        println!("  round {round}: router, start-first:        {a}");
        after.push(a);
    }
    let sum = |rs: &[LoadReport]| {
        (rs.iter().map(|r| r.failed).sum::<u64>(), rs.iter().map(|r| r.ok + r.failed).sum::<u64>())
    };
    let ((bf, bt), (af, at)) = (sum(&before), sum(&after));
    println!("requests failed during a code-only redeploy:");
    println!(
        "  before (host port, stop-first):  {bf} of {bt} ({:.2} %)",
        100.0 * bf as f64 / bt.max(1) as f64
    );
    println!(
        "  after (router, start-first):     {af} of {at} ({:.2} %)",
        100.0 * af as f64 / at.max(1) as f64
    );

    // Time to a failed deploy, over `routed` (its v{rounds} keeps serving).
    let manifest = std::fs::read_to_string(routed.path().join("slipway.toml")).unwrap();
    let dockerfile = std::fs::read_to_string(routed.path().join("Dockerfile")).unwrap();
    routed.write("Dockerfile", format!("{dockerfile}\nCMD [\"sh\", \"-c\", \"exit 1\"]\n"));
    routed.commit("a release that exits");
    let started = Instant::now();
    let exits = cluster.deploy("routed", None).await;
    let exits_took = started.elapsed();
    let exits_error = exits.error();
    routed.write("Dockerfile", dockerfile);
    routed.write(
        "slipway.toml",
        manifest.replace("port = 8080\n", "port = 8080\nconstraints = [\"node.labels.bench == nowhere\"]\n"),
    );
    routed.commit("a release no node can take");
    let started = Instant::now();
    let unplaceable = cluster.deploy("routed", None).await;
    let unplaceable_took = started.elapsed();
    let unplaceable_error = unplaceable.error();
    println!("time from `deploy` to its failure (build included; before: the 180 s converge timeout):");
    println!("  command exits 1:          {:>6.1} s  {exits_error}", exits_took.as_secs_f64());
    println!("  no node meets constraint: {:>6.1} s  {unplaceable_error}", unplaceable_took.as_secs_f64());
    cluster
        .wait_for_app("routed", "/version.txt", Duration::from_secs(5))
        .await
        .expect("routed still answers");

    // Latency: the same task, through its published port and through the router.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let host = cluster.app_host("direct");
    let (mut via_port, mut via_router) = (Vec::new(), Vec::new());
    for i in 0..2 * LATENCY_REQUESTS {
        let started = Instant::now();
        let response = if i % 2 == 0 {
            client.get(&direct_url).send().await
        } else {
            client.get(&routed_url).header(reqwest::header::HOST, &host).send().await
        };
        let ok = response.expect("answers").status().is_success();
        assert!(ok, "request {i} failed");
        if i % 2 == 0 { &mut via_port } else { &mut via_router }.push(started.elapsed());
    }
    via_port.sort();
    via_router.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, r50) = (percentile(&via_port, 0.5), percentile(&via_router, 0.5));
    let (p99, r99) = (percentile(&via_port, 0.99), percentile(&via_router, 0.99));
    println!("latency of GET /version.txt, {LATENCY_REQUESTS} each, interleaved, keep-alive:");
    println!("  published port: median {:.2} ms, p99 {:.2} ms", ms(p50), ms(p99));
    println!("  router:         median {:.2} ms, p99 {:.2} ms", ms(r50), ms(r99));
    println!("  router / port:  median x{:.2}, added {:.2} ms", ms(r50) / ms(p50), ms(r50) - ms(p50));
}
