//! t26: many apps on one engine behind the router (Caddy, the stack's `<stack>_router`),
//! against the real engine, registry, Swarm and proxy: two apps that both listen on 8080
//! answer at their own names without a host port; a code-only redeploy under a steady
//! stream of requests loses none; host names and published ports are unique across apps
//! (refused before the build, naming the app that holds them); a router killed comes
//! back with every route; a release that cannot
//! start or cannot be placed fails as soon as Swarm says so, with Swarm's reason, and the
//! previous release keeps answering.

use std::time::{Duration, Instant};

use slipway_testkit::{docker_cli, free_port, wait_for_http, GitRepo};
use slipway_tests::{Load, TestCluster};

/// The example app named `name`, with `[run]` lines added after `port = 8080`, serving
/// `version`.
fn app_repo(name: &str, version: &str, run: &str) -> GitRepo {
    let repo = GitRepo::from_example("hello");
    let manifest = std::fs::read_to_string(repo.path().join("slipway.toml")).expect("read slipway.toml");
    repo.write("slipway.toml", manifest.replace("name = \"hello\"", &format!("name = \"{name}\"")));
    set_run(&repo, run);
    repo.write("www/version.txt", format!("{version}\n"));
    repo.commit("the app under test");
    repo
}

/// Rewrites the manifest with `run` after `port = 8080` (not committed).
fn set_run(repo: &GitRepo, run: &str) {
    let manifest = std::fs::read_to_string(repo.path().join("slipway.toml")).expect("read slipway.toml");
    let base = manifest.split("port = 8080\n").next().expect("the example names its port");
    let rest = manifest.split("port = 8080\n").nth(1).expect("the example names its port");
    repo.write("slipway.toml", format!("{base}port = 8080\n{run}{rest}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t26_apps_side_by_side_behind_the_router() {
    let Some(cluster) = TestCluster::start("t26route").await else { return };
    let router = format!("http://127.0.0.1:{}", cluster.router_port);
    let alpha = app_repo("alpha", "alpha v1", "domains = [\"alpha.example.com\", \"gamma.localhost\"]\n");
    let beta = app_repo("beta", "beta v1", "");
    cluster.create_app("alpha", &alpha.url()).await.expect("create alpha");
    cluster.create_app("beta", &beta.url()).await.expect("create beta");
    let a1 = cluster.deploy("alpha", None).await;
    a1.live();
    cluster.deploy("beta", None).await.live();

    // Both listen on 8080 in their containers; each answers at its own names, and
    // neither holds a host port.
    let wait = Duration::from_secs(30);
    let body = |host: &'static str| wait_for_http_as_host(&router, host, wait);
    assert_eq!(body("alpha.localhost").await, "alpha v1\n");
    assert_eq!(body("alpha.example.com").await, "alpha v1\n");
    assert_eq!(body("beta.localhost").await, "beta v1\n");
    for app in ["alpha", "beta"] {
        let service = cluster.service(app);
        let ports =
            docker_cli(&["service", "inspect", "--format", "{{json .Endpoint.Ports}}", &service]).unwrap();
        assert!(matches!(ports.trim(), "null" | "[]"), "{service} publishes no port: {ports}");
        let mode =
            docker_cli(&["service", "inspect", "--format", "{{.Spec.EndpointSpec.Mode}}", &service]).unwrap();
        assert_eq!(mode.trim(), "dnsrr", "{service}: the router finds its tasks by DNS");
    }
    let unknown = reqwest::Client::new()
        .get(format!("{router}/"))
        .header(reqwest::header::HOST, "nobody.localhost")
        .send()
        .await
        .expect("the router answers");
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().await.unwrap().contains("no app is served at nobody.localhost"));
    let done = a1.done.as_ref().expect("deployed");
    let port = cluster.router_port;
    assert_eq!(
        done.urls,
        [
            format!("http://alpha.localhost:{port}/"),
            format!("http://alpha.example.com:{port}/"),
            format!("http://gamma.localhost:{port}/")
        ]
    );
    let out = cluster.cli(&["apps", "show", "alpha", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("apps show --json is JSON");
    assert_eq!(json["urls"][0], format!("http://alpha.localhost:{port}/"), "{json}");
    assert!(a1.events_text().contains("router: alpha answers at"), "{}", a1.events_text());

    // A code-only redeploy under a steady stream of requests: none fails, and the
    // answers switch from the old version to the new one.
    let load =
        Load::start(&format!("{router}/version.txt"), Some("alpha.localhost"), 4, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    alpha.write("www/version.txt", "alpha v2\n");
    alpha.commit("code-only change");
    cluster.deploy("alpha", None).await.live();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop().await;
    eprintln!("t26 redeploy under load: {report}");
    assert_eq!(report.failed, 0, "no request fails during a redeploy: {report}");
    assert_eq!(report.bodies, ["alpha v1\n", "alpha v2\n"], "{report}");
    assert!(report.ok > 500, "a steady stream: {report}");

    // A router that restarts comes back with its start config only; the node's agent
    // loads the routes into it again.
    let filter = format!("label=com.docker.swarm.service.name={}_router", cluster.stack);
    let routers = docker_cli(&["ps", "-q", "--filter", &filter]).expect("docker ps");
    assert_eq!(routers.split_whitespace().count(), 1, "one router task on this engine: {routers}");
    docker_cli(&["kill", routers.trim()]).expect("kill the router's container");
    let killed = Instant::now();
    assert_eq!(body("alpha.localhost").await, "alpha v2\n", "the restarted router serves the routes again");
    eprintln!("t26: a killed router served the routes again after {:?}", killed.elapsed());

    // Host names are unique: a second app claiming one is refused before its build,
    // naming the app that holds it; so is an app named like another's domain.
    set_run(&beta, "domains = [\"alpha.example.com\"]\n");
    beta.commit("claim alpha's name");
    let claimed = cluster.deploy("beta", None).await;
    let error = claimed.error();
    assert!(error.contains("run.domains[0]") && error.contains("held by app \"alpha\""), "{error}");
    assert!(claimed.built.is_none(), "refused before the image was built");
    let gamma = cluster.create_app("gamma", &beta.url()).await.expect_err("gamma.localhost is alpha's");
    assert!(gamma.message().contains("app \"alpha\""), "{}", gamma.message());
    assert_eq!(body("beta.localhost").await, "beta v1\n", "beta keeps serving");

    // A published port belongs to one app: beta publishes one, alpha may not.
    let published = free_port();
    let beta_run = beta.path().join("slipway.toml");
    let manifest =
        std::fs::read_to_string(&beta_run).unwrap().replace("domains = [\"alpha.example.com\"]\n", "");
    beta.write("slipway.toml", manifest);
    set_run(&beta, &format!("publish = {published}\n"));
    beta.commit("publish a host port");
    cluster.deploy("beta", None).await.live();
    let direct =
        wait_for_http(&format!("http://127.0.0.1:{published}/version.txt"), wait).await.expect("published");
    assert_eq!(direct, "beta v1\n");
    set_run(&alpha, &format!("publish = {published}\n"));
    alpha.commit("publish beta's port");
    let held = cluster.deploy("alpha", None).await;
    let error = held.error();
    assert!(
        error.contains(&format!("run.publish: host port {published} is held by app \"beta\"")),
        "{error}"
    );
    assert!(held.built.is_none(), "refused before the image was built");

    // A release whose command exits fails as soon as Swarm says so; alpha v2 keeps serving.
    let manifest = std::fs::read_to_string(alpha.path().join("slipway.toml")).unwrap();
    alpha.write("slipway.toml", manifest.replace(&format!("publish = {published}\n"), ""));
    let dockerfile = std::fs::read_to_string(alpha.path().join("Dockerfile")).unwrap();
    alpha.write("Dockerfile", format!("{dockerfile}\nCMD [\"sh\", \"-c\", \"echo broken >&2; exit 1\"]\n"));
    alpha.commit("a release that cannot start");
    let started = Instant::now();
    let broken = cluster.deploy("alpha", None).await;
    let error = broken.error();
    eprintln!("t26: a release whose command exits failed in {:?}: {error}", started.elapsed());
    assert!(error.contains("non-zero exit (1)"), "Swarm's reason: {error}");
    assert_eq!(body("alpha.localhost").await, "alpha v2\n", "the previous release keeps serving");

    // A release no node can take fails with Swarm's placement reason, just as fast.
    alpha.write("Dockerfile", dockerfile);
    set_run(&alpha, "constraints = [\"node.labels.slipway-t26 == nowhere\"]\n");
    alpha.commit("a release no node can take");
    let started = Instant::now();
    let unplaceable = cluster.deploy("alpha", None).await;
    let error = unplaceable.error();
    let took = started.elapsed();
    eprintln!("t26: a release no node can take failed in {took:?}: {error}");
    assert!(error.contains("scheduling constraints not satisfied"), "Swarm's reason: {error}");
    assert!(
        took < Duration::from_secs(90),
        "fails when Swarm says so, not after the 120 s timeout: {took:?}"
    );
    assert_eq!(body("alpha.localhost").await, "alpha v2\n", "the previous release keeps serving");
    let releases = cluster.releases("alpha").await;
    let last = releases.last().expect("releases");
    assert!(last.deploy_error.contains("scheduling constraints"), "slipway releases records it: {last:?}");
}

/// GET `base`/version.txt with `Host: host` until it answers 200; the body.
async fn wait_for_http_as_host(base: &str, host: &str, timeout: Duration) -> String {
    slipway_testkit::wait_for_http_as(&format!("{base}/version.txt"), Some(host), timeout)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
