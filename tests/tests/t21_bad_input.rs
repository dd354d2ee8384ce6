//! t21: bad input gets a clear error and loses nothing. After a good release is live,
//! each bad deploy must end with an error naming its cause, record the build as failed
//! with that reason, record no release, and leave the running service untouched.

use std::time::Duration;

use slipway_proto as pb;
use slipway_testkit::GitRepo;
use slipway_tests::TestCluster;
use tonic::Code;

/// Asserts the deploy failed with `expect` in its error, as a failed build with no release.
async fn assert_failed_build(cluster: &TestCluster, app: &str, run: &slipway_tests::DeployRun, expect: &str) {
    let error = run.error();
    assert!(error.contains(expect), "error should mention {expect:?}: {error}");
    let builds = cluster.builds(app).await;
    let build = builds.iter().find(|b| b.id == run.build_id).expect("the build is recorded");
    assert_eq!(build.state, pb::BuildState::Failed as i32, "{build:?}");
    assert!(build.error.contains(expect), "recorded reason should mention {expect:?}: {}", build.error);
    assert_eq!(build.release, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn t21_bad_input_fails_clearly_and_changes_nothing() {
    let Some(mut cluster) = TestCluster::start("t21bad").await else { return };
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create app");
    let good = cluster.deploy("hello", None).await.live().clone();

    // Refused before anything is recorded.
    let unknown = cluster.deploy("nope", None).await;
    let status = unknown.refused.expect("unknown app refused");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("app \"nope\" not found"), "{}", status.message());

    let option = cluster.deploy("hello", Some("--upload-pack=touch /tmp/pwned")).await;
    let status = option.refused.expect("ref starting with - refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("starts with '-'"), "{}", status.message());

    for (name, repo_url, why) in [
        ("Bad_Name", "file:///x", "invalid app name"),
        ("evil", "-uevil", "invalid repository URL"),
        ("evil", "ext::sh -c touch% /tmp/pwned", "invalid repository URL"),
    ] {
        let status = cluster.create_app(name, repo_url).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(why), "{}", status.message());
    }
    let exists = cluster.create_app("hello", &repo.url()).await.expect_err("duplicate refused");
    assert_eq!(exists.code(), Code::AlreadyExists);

    // A ref that does not exist.
    let missing_ref = cluster.deploy("hello", Some("no-such-branch")).await;
    assert_failed_build(&cluster, "hello", &missing_ref, "no-such-branch").await;

    // A manifest that does not parse: the field is named.
    repo.write("slipway.toml", "name = \"hello\"\n[run]\nreplicas = \"two\"\n");
    repo.commit("break the manifest");
    let bad_manifest = cluster.deploy("hello", None).await;
    assert_failed_build(&cluster, "hello", &bad_manifest, "run.replicas").await;

    // A Dockerfile that fails: the failing step and its output are in the error.
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let dockerfile = std::fs::read_to_string(repo.path().join("Dockerfile")).unwrap();
    repo.write(
        "Dockerfile",
        dockerfile.replace("COPY www /app/www", "RUN echo about-to-fail && false\nCOPY www /app/www"),
    );
    repo.commit("a failing step");
    let bad_build = cluster.deploy("hello", None).await;
    assert_failed_build(&cluster, "hello", &bad_build, "RUN echo about-to-fail && false").await;
    assert!(bad_build.error().contains("about-to-fail"), "the step's output is shown: {}", bad_build.error());
    repo.git(&["revert", "--no-edit", "HEAD"]);

    // A repository that cannot be cloned.
    cluster.create_app("ghost", "file:///nonexistent/repo.git").await.expect("create app");
    let no_repo = cluster.deploy("ghost", None).await;
    assert_failed_build(&cluster, "ghost", &no_repo, "/nonexistent/repo.git").await;

    // An unreachable registry: the push fails and names it.
    let registry = cluster.registry().addr();
    cluster.registry_mut().stop();
    repo.write("www/version.txt", "never-pushed\n");
    repo.commit("a change that cannot be pushed");
    let no_registry = cluster.deploy("hello", None).await;
    assert_failed_build(&cluster, "hello", &no_registry, &registry).await;

    // Nothing above touched the running service or recorded a release.
    let releases = cluster.releases("hello").await;
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(cluster.service_image("hello"), good.image);
    let body =
        cluster.wait_for_app("hello", "/", Duration::from_secs(30)).await.expect("the app still answers");
    assert!(body.contains("hello from slipway"));

    // An engine the agent cannot reach: the build fails naming the socket.
    cluster.kill_agent(1);
    cluster.set_agent_docker_socket(1, "/nonexistent/docker.sock");
    cluster.start_agent(1);
    cluster.wait_for_ready_nodes(1).await;
    let no_engine = cluster.deploy("hello", None).await;
    let error = no_engine.error();
    assert!(error.contains("/nonexistent/docker.sock"), "{error}");
    assert_eq!(cluster.releases("hello").await.len(), 1);
    assert_eq!(cluster.service_image("hello"), good.image);

    // A Swarm manager the scheduler cannot reach: refused before a build is spent.
    cluster.kill_scheduler();
    cluster.set_scheduler_docker_socket("/nonexistent/manager.sock");
    cluster.start_scheduler().await;
    let builds_before = cluster.builds("hello").await.len();
    let no_manager = cluster.deploy("hello", None).await;
    let status = no_manager.refused.expect("deploy refused");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("/nonexistent/manager.sock"), "{}", status.message());
    assert_eq!(cluster.builds("hello").await.len(), builds_before, "no build was queued");
    assert_eq!(cluster.service_image("hello"), good.image);
}
