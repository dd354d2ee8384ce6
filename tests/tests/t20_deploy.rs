//! t20: the main job end to end against the real engine, registry and Swarm:
//! git repo → image built on local disk → registry → Swarm service pinned by digest,
//! a code-only redeploy that reuses the dependency layers, a rollback, and a
//! scheduler killed with -9 that comes back with everything it knew.

use std::time::Duration;

use slipway_testkit::{docker_cli, GitRepo};
use slipway_tests::TestCluster;

#[tokio::test(flavor = "multi_thread")]
async fn t20_deploy_redeploy_rollback_and_restart() {
    let Some(cluster) = TestCluster::start("t20main").await else { return };
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create app");

    // Release 1: a cold build, pushed and deployed by digest.
    let first = cluster.deploy("hello", None).await;
    let r1 = first.live().clone();
    assert_eq!(r1.number, 1);
    assert!(r1.digest.starts_with("sha256:") && r1.digest.len() == 71, "{}", r1.digest);
    assert_eq!(r1.image, format!("{}/hello@{}", cluster.registry().addr(), r1.digest));
    assert_eq!(cluster.service_image("hello"), r1.image, "the service runs release 1 pinned by digest");
    assert!(
        cluster.registry().has_manifest("hello", &r1.digest).await,
        "release 1's digest is in the registry"
    );
    let body = cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.expect("app answers");
    assert!(body.contains("hello from slipway"), "{body}");
    let cold = first.built.clone().expect("build output");
    assert!(cold.layers_pushed >= 2, "a cold push sends the base, dependency and code layers: {cold:?}");
    let stacks = docker_cli(&["stack", "services", &cluster.stack]).unwrap();
    assert!(stacks.contains(&cluster.service("hello")), "docker stack services lists it:\n{stacks}");

    // Release 2: a code-only change rebuilds only the last layer.
    repo.write("www/version.txt", "v2-code-only\n");
    let sha2 = repo.commit("code-only change");
    let second = cluster.deploy("hello", None).await;
    let r2 = second.live().clone();
    assert_eq!((r2.number, r2.git_sha.as_str()), (2, sha2.as_str()));
    assert_ne!(r2.digest, r1.digest);
    let warm = second.built.clone().expect("build output");
    assert!(warm.cache_hits >= 2, "the dependency steps come from the layer cache: {warm:?}");
    assert!(warm.layers_reused >= 2, "base and dependency layers already in the registry: {warm:?}");
    assert_eq!(warm.layers_pushed, 1, "only the code layer travels: {warm:?}");
    assert!(warm.bytes_pushed < cold.bytes_pushed, "{warm:?} vs {cold:?}");
    assert_eq!(cluster.service_image("hello"), r2.image);
    let body = cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.unwrap();
    assert!(body.contains("v2-code-only"), "{body}");

    // Release 3: rollback to release 1's image.
    let back = cluster.rollback("hello", None).await;
    let r3 = back.live().clone();
    assert_eq!((r3.number, r3.rollback_of, r3.digest.as_str()), (3, 1, r1.digest.as_str()));
    assert_eq!(cluster.service_image("hello"), r1.image);

    // kill -9 and restart: apps, builds and releases survive.
    let apps_before = cluster.apps().await;
    let builds_before = cluster.builds("hello").await;
    let releases_before = cluster.releases("hello").await;
    cluster.kill_scheduler();
    cluster.start_scheduler().await;
    assert_eq!(cluster.apps().await, apps_before);
    assert_eq!(cluster.builds("hello").await, builds_before);
    assert_eq!(cluster.releases("hello").await, releases_before);
    assert_eq!(releases_before.len(), 3);

    // The CLI prints what the issue promises in --json.
    let out = cluster.cli(&["releases", "hello", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("releases --json is JSON");
    for key in ["number", "digest", "image", "git_sha", "build_id", "node"] {
        assert!(json[0].get(key).is_some(), "releases --json lacks {key}: {json}");
    }
    cluster.wait_for_ready_nodes(1).await;
    let out = cluster.cli(&["nodes", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nodes --json is JSON");
    for key in [
        "id",
        "name",
        "status",
        "build_fs_available_bytes",
        "build_fs_total_bytes",
        "cpu_usage_percent",
        "running_builds",
    ] {
        assert!(json[0].get(key).is_some(), "nodes --json lacks {key}: {json}");
    }
    assert!(json[0]["build_fs_total_bytes"].as_u64().unwrap() > 0);
}
