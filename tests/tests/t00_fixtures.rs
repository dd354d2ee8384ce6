//! t00: the fixtures themselves work on this machine: git repositories, the
//! registry, the base image, the example app, Swarm. If these fail, the higher
//! tiers' failures say nothing about slipway.

use std::process::Command;
use std::time::Duration;

use slipway_testkit::{
    base_image, docker_cli, engine_with_base, ensure_swarm, free_port, git, require_docker, require_registry,
    skip, unique_name, wait_for_http, GitRepo, Registry, StackCleanup,
};

#[test]
fn free_port_can_be_bound() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the free port binds");
}

#[test]
fn free_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("the ephemeral range");
    let floor: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).expect("its first port");
    let ports: std::collections::HashSet<u16> = (0..200).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 200, "a port was handed out twice");
    assert!(ports.iter().all(|p| (10_000..floor).contains(p)), "ports outside 10000..{floor}: {ports:?}");
}

#[tokio::test]
async fn wait_for_http_times_out_on_a_closed_port() {
    let url = format!("http://127.0.0.1:{}/", free_port());
    let err = wait_for_http(&url, Duration::from_millis(500)).await.unwrap_err();
    assert!(err.to_string().contains("did not answer"), "{err:#}");
}

#[test]
fn git_repo_from_example_commits_and_clones() {
    let repo = GitRepo::from_example("hello");
    let first = repo.head();
    assert_eq!(first.len(), 40, "a sha: {first}");
    assert!(repo.url().starts_with("file:///"));
    assert!(repo.path().join("slipway.toml").is_file());
    assert_eq!(repo.git(&["status", "--porcelain"]), "", "everything is committed");

    repo.write("www/version.txt", "2\n");
    let second = repo.commit("bump version");
    assert_ne!(first, second);
    assert_eq!(repo.head(), second);
    repo.tag("v2");
    assert_eq!(repo.git(&["rev-parse", "v2"]), second);
    assert_eq!(repo.git(&["rev-parse", "--abbrev-ref", "HEAD"]), "main");

    // The agent clones shallowly through the URL; modes survive (index.cgi is a CGI).
    let clone_dir = tempfile::tempdir().unwrap();
    let clone = clone_dir.path().join("hello");
    let status = Command::new("git")
        .args(["-c", "advice.detachedHead=false", "clone", "-q", "--depth=1", "--branch=v2"])
        .arg(repo.url())
        .arg(&clone)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(clone.join("www/version.txt")).unwrap(), "2\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(clone.join("www/cgi-bin/index.cgi")).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "index.cgi stays executable: {mode:o}");
}

#[test]
fn an_empty_git_repo_takes_files_and_commits() {
    let repo = GitRepo::empty();
    assert!(repo.path().is_dir());
    assert_eq!(repo.git(&["symbolic-ref", "--short", "HEAD"]), "main");
    let first = repo.commit_files(&[("a/b.txt", "one\n"), ("c.txt", "two\n")], "first");
    assert_eq!(repo.head(), first);
    assert_eq!(git(repo.path(), &["rev-list", "--count", "HEAD"]), "1", "no initial commit before it");
    assert_eq!(git(repo.path(), &["show", "HEAD:a/b.txt"]), "one");
}

#[tokio::test]
async fn registry_starts_answers_and_cleans_up() {
    if Registry::binary().is_none() {
        skip("docker-registry is not installed (apt-get install docker-registry)");
        return;
    }
    let registry = Registry::start().await;
    let addr = registry.addr();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let body = wait_for_http(&format!("http://{addr}/v2/"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(body.trim(), "{}");
    assert!(registry.tags("nothing/here").await.is_empty());
    assert!(registry.catalog().await.is_empty());
    let data_dir = registry.data_dir();
    assert!(data_dir.is_dir());

    drop(registry);
    assert!(!data_dir.exists(), "the registry's directory is removed on drop");
    let gone = wait_for_http(&format!("http://{addr}/v2/"), Duration::from_millis(300)).await;
    assert!(gone.is_err(), "the registry process is killed on drop");
}

#[tokio::test]
async fn pushed_image_manifest_is_found_by_digest() {
    let Some(_docker) = require_docker().await else { return };
    let base = base_image().await;
    let registry = Registry::start().await;
    let repo = "fixtures/busybox";
    let tag = unique_name("t00");
    let image = format!("{}:{tag}", registry.image(repo));
    docker_cli(&["tag", base, &image]).unwrap();
    let pushed = docker_cli(&["push", &image]);
    let _ = docker_cli(&["rmi", &image]);
    let pushed = pushed.unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", registry.log()));
    // The last line reads "<tag>: digest: sha256:… size: N".
    let digest = pushed
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in the push output: {pushed}"))
        .to_string();

    assert!(registry.has_manifest(repo, &digest).await);
    let other = format!("sha256:{}", "0".repeat(64));
    assert!(!registry.has_manifest(repo, &other).await);
    assert_eq!(registry.tags(repo).await, vec![tag.clone()]);
    assert_eq!(registry.manifest_digest(repo, &tag).await.as_deref(), Some(digest.as_str()));
    assert_eq!(registry.catalog().await, vec![repo.to_string()]);
}

#[tokio::test]
async fn built_images_are_pushed_pinned_and_untagged_on_drop() {
    let Some((_docker, base)) = engine_with_base().await else { return };
    let Some(registry) = require_registry().await else { return };
    let context = tempfile::tempdir().unwrap();
    let marker = unique_name("t00-built");
    std::fs::write(context.path().join("Dockerfile"), format!("FROM {base}\nENV MARKER={marker}\n")).unwrap();
    let tag = unique_name("v");
    let pinned = registry.build_and_push(context.path(), "fixtures/built", &tag);
    let prefix = format!("{}@sha256:", registry.image("fixtures/built"));
    assert!(pinned.starts_with(&prefix), "{pinned}");
    let digest = pinned.split_once('@').unwrap().1;
    assert!(registry.has_manifest("fixtures/built", digest).await);
    let tagged = format!("{}:{tag}", registry.image("fixtures/built"));
    assert!(docker_cli(&["image", "inspect", &tagged]).is_ok());

    drop(registry);
    assert!(docker_cli(&["image", "inspect", &tagged]).is_err(), "the tag is removed on drop");
    assert!(docker_cli(&["image", "inspect", &pinned]).is_err(), "so is the digest reference");
}

#[tokio::test]
async fn base_image_has_the_applets_the_example_needs() {
    let Some(_docker) = require_docker().await else { return };
    let base = base_image().await;
    // Twice in one process: the second is the once-per-process fast path.
    assert_eq!(base_image().await, base);
    let out =
        docker_cli(&["run", "--rm", base, "sh", "-c", "for a in httpd wget sh; do command -v $a; done"])
            .unwrap();
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[tokio::test]
async fn example_hello_builds_and_answers() {
    let Some(_docker) = require_docker().await else { return };
    base_image().await;
    let repo = GitRepo::from_example("hello");
    let image = unique_name("slipway-t00-hello");
    let path = repo.path().to_str().unwrap().to_string();
    docker_cli(&["build", "-q", "-t", &image, &path]).unwrap();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let container =
        docker_cli(&["run", "-d", "--rm", "-e", "GREETING=from t00", "-p", &publish, &image]).unwrap();
    let body = wait_for_http(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(30)).await;
    let _ = docker_cli(&["rm", "-f", &container]);
    let _ = docker_cli(&["rmi", &image]);
    let body = body.unwrap();
    assert!(body.contains("hello from slipway"), "{body}");
    assert!(body.contains("greeting: from t00"), "{body}");
    assert!(body.contains("version: 1"), "{body}");
}

#[tokio::test]
async fn swarm_is_active() {
    let Some(_docker) = require_docker().await else { return };
    let addr = ensure_swarm().await;
    assert!(!addr.is_empty());
    assert_eq!(docker_cli(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap(), "active");
    assert_eq!(docker_cli(&["info", "--format", "{{.Swarm.ControlAvailable}}"]).unwrap(), "true");
}

#[tokio::test]
async fn a_stack_cleanup_removes_its_services_network_and_volumes() {
    let Some((_docker, base)) = engine_with_base().await else { return };
    ensure_swarm().await;
    let stack = unique_name("t00stack");
    let label = format!("com.docker.stack.namespace={stack}");
    let network = format!("{stack}_default");
    let volume = format!("{stack}_data");
    let cleanup = StackCleanup::new(&stack);
    docker_cli(&["network", "create", "--driver", "overlay", "--label", &label, &network]).unwrap();
    docker_cli(&["volume", "create", "--label", &label, &volume]).unwrap();
    let mount = format!("type=volume,source={volume},target=/data");
    let service = format!("{stack}_web");
    docker_cli(&[
        "service",
        "create",
        "--detach",
        "--name",
        &service,
        "--label",
        &label,
        "--network",
        &network,
        "--mount",
        &mount,
        base,
        "sleep",
        "600",
    ])
    .unwrap();

    drop(cleanup);
    assert!(docker_cli(&["service", "inspect", &service]).is_err(), "the service is removed");
    assert!(docker_cli(&["network", "inspect", &network]).is_err(), "the network is removed");
    assert!(docker_cli(&["volume", "inspect", &volume]).is_err(), "the volume is removed");
}
