//! t00: the fixtures themselves work on this machine: git repositories, the
//! registry, the base image, the example app, Swarm. If these fail, the higher
//! tiers' failures say nothing about slipway.

use std::process::Command;
use std::time::Duration;

use slipway_testkit::{
    base_image, docker_cli, ensure_swarm, free_port, require_docker, skip, wait_for_http, GitRepo, Registry,
};

/// A name unique to this test run, for images and containers.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), free_port())
}

#[test]
fn free_port_can_be_bound() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the free port binds");
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
    let tag = unique("t00");
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
    let image = unique("slipway-t00-hello");
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
