//! t27: a release points only at its own app. A real scheduler, its registry with token
//! auth and a real agent deploy `hello` honestly. Then the real node is drained and a
//! [`FakeAgent`] (a test client holding a valid agent certificate from the cluster CA,
//! over mutual TLS) takes the next builds of `hello` and reports success with another
//! app's repository, an image outside the fleet registry, a digest the registry does not
//! hold, a digest only another app's repository holds, and an invalid manifest: each
//! build fails with the reason, no release is recorded, and the service keeps running
//! release 1 untouched (same image, same Swarm version). Last, a report whose run spec
//! lies (a port, replicas, an injected variable): the release is recorded, with the run
//! spec of the manifest text the scheduler parsed itself, and goes live. And with the
//! registry down when a result arrives, the build fails naming the registry after a few
//! seconds of retries: nothing is recorded unchecked.

use std::time::Duration;

use slipway_proto::{self as pb};
use slipway_scheduler::security::registry_auth::{issue_grant, GRANT_USER};
use slipway_testkit::docker::docker_cli_as;
use slipway_testkit::{GitRepo, BASE_IMAGE};
use slipway_tests::{DeployRun, FakeAgent, TestCluster};

/// The example app's manifest, as the repository holds it.
const HELLO_MANIFEST: &str = include_str!("../../examples/hello/slipway.toml");

/// A digest no registry holds.
const NO_SUCH_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Deploys `hello`; the fake agent takes the build and reports `output(assignment)`.
async fn deploy_with(
    cluster: &TestCluster,
    fake: &mut FakeAgent,
    output: impl FnOnce(&pb::BuildAssignment) -> pb::BuildOutput,
) -> DeployRun {
    let agent = async {
        let assignment = fake.next_assignment(Duration::from_secs(60)).await;
        assert_eq!(assignment.app, "hello");
        fake.succeed(&assignment, output(&assignment)).await;
    };
    let (run, ()) = tokio::join!(cluster.deploy("hello", None), agent);
    run
}

/// The Swarm service's image and version: any update changes the version.
fn service_state(cluster: &TestCluster) -> String {
    cluster
        .swarm_cli(&[
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}} v{{.Version.Index}}",
            &cluster.service("hello"),
        ])
        .expect("inspect hello's service")
}

/// The deploy failed saying `reason`, its build failed with it, and nothing else moved.
async fn refused(cluster: &TestCluster, run: &DeployRun, reason: &str, service_before: &str, what: &str) {
    let error = run.error();
    assert!(error.contains(reason), "{what}: the deploy should fail with {reason:?}, got {error:?}");
    assert!(run.release.is_none(), "{what}: a release was announced: {:?}", run.release);
    let build = cluster.builds("hello").await.into_iter().find(|b| b.id == run.build_id).expect("the build");
    assert_eq!(build.state(), pb::BuildState::Failed, "{what}: {build:?}");
    assert!(build.error.contains(reason), "{what}: the build says {:?}", build.error);
    assert_eq!(build.release, 0, "{what}");
    let releases = cluster.releases("hello").await;
    assert_eq!(releases.len(), 1, "{what}: no release is recorded: {releases:?}");
    assert_eq!(service_state(cluster), service_before, "{what}: the service is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_agent_cannot_point_a_release_anywhere_else() {
    let Some(mut cluster) = TestCluster::start("t27lie").await else { return };
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create hello");
    cluster.create_app("other", &repo.url()).await.expect("create other");
    let registry = cluster.registry().addr();

    // The honest path: the real agent builds and pushes, release 1 goes live.
    let first = cluster.deploy("hello", None).await.live().clone();
    assert_eq!(first.image, format!("{registry}/hello@{}", first.digest));
    let service_before = service_state(&cluster);
    assert!(service_before.starts_with(&first.image), "{service_before}");

    // An image only `other`'s repository holds (pushed with other's grant).
    let docker_config = tempfile::tempdir().unwrap();
    let other_tag = format!("{registry}/other:1");
    docker_cli_as(docker_config.path(), &["tag", BASE_IMAGE, &other_tag], None).unwrap();
    let grant = issue_grant(&cluster.ca(), "other", &["push", "pull"], Duration::from_secs(600));
    docker_cli_as(
        docker_config.path(),
        &["login", "-u", GRANT_USER, "--password-stdin", &registry],
        Some(&grant),
    )
    .expect("log in with other's grant");
    docker_cli_as(docker_config.path(), &["push", &other_tag], None).expect("push other:1");
    let _ = docker_cli_as(docker_config.path(), &["rmi", &other_tag], None);
    let other_digest = cluster.registry().manifest_digest("other", "1").await.expect("other:1 is pushed");
    assert_ne!(other_digest, first.digest);
    assert!(!cluster.registry().has_manifest("hello", &other_digest).await);

    // From here on builds go to the fake agent only.
    let drain = pb::SetNodeDrainRequest { node: cluster.agent_name(1).into(), draining: true };
    cluster.client().await.set_node_drain(drain).await.expect("drain the real node");
    let mut fake = cluster.fake_agent("fake-node").await;
    let report = |repository: String, digest: &str| pb::BuildOutput {
        git_sha: first.git_sha.clone(),
        digest: digest.into(),
        repository,
        manifest: HELLO_MANIFEST.into(),
        steps: 1,
        ..Default::default()
    };

    // (a) Another app's repository, with an image that is there.
    let run = deploy_with(&cluster, &mut fake, |_| report(format!("{registry}/other"), &other_digest)).await;
    let reason = format!(
        "the agent on node fake-node reported repository \"{registry}/other\"; this build pushes to \"{registry}/hello\""
    );
    refused(&cluster, &run, &reason, &service_before, "another app's repository").await;

    // (b) An image outside the fleet registry.
    let run =
        deploy_with(&cluster, &mut fake, |_| report("evil.example:5000/hello".into(), &first.digest)).await;
    let reason = format!(
        "the agent on node fake-node reported repository \"evil.example:5000/hello\"; this build pushes to \"{registry}/hello\""
    );
    refused(&cluster, &run, &reason, &service_before, "another registry").await;

    // (c) The right repository, a digest the registry does not hold.
    let run = deploy_with(&cluster, &mut fake, |a| report(a.repository.clone(), NO_SUCH_DIGEST)).await;
    let reason = format!("{NO_SUCH_DIGEST} is not in the fleet registry's repository {registry}/hello");
    refused(&cluster, &run, &reason, &service_before, "a digest nowhere").await;

    // (d) The right repository, a digest only another app's repository holds.
    let run = deploy_with(&cluster, &mut fake, |a| report(a.repository.clone(), &other_digest)).await;
    let reason = format!("{other_digest} is not in the fleet registry's repository {registry}/hello");
    refused(&cluster, &run, &reason, &service_before, "a digest of another app").await;

    // (e) An invalid manifest fails with the parser's error.
    let run = deploy_with(&cluster, &mut fake, |a| pb::BuildOutput {
        manifest: "name = \"hello\"\n[run]\nreplicas = 0\n".into(),
        ..report(a.repository.clone(), &first.digest)
    })
    .await;
    refused(&cluster, &run, "run.replicas: must be 1 to 1000, got 0", &service_before, "an invalid manifest")
        .await;

    // (f) An image that is there, with a run spec that lies: the release is recorded
    // with the manifest's run spec, not the report's.
    let run = deploy_with(&cluster, &mut fake, |a| pb::BuildOutput {
        run: Some(pb::RunSpec {
            replicas: 3,
            port: 2222,
            env: [("INJECTED".to_string(), "1".to_string())].into(),
            persist: vec!["/etc".into()],
            ..Default::default()
        }),
        ..report(a.repository.clone(), &first.digest)
    })
    .await;
    let second = run.live().clone();
    assert_eq!((second.number, second.image.as_str()), (2, first.image.as_str()));
    let spec = second.run.expect("a run spec");
    assert_eq!((spec.replicas, spec.port), (1, 8080), "{spec:?}");
    assert_eq!(spec.env.get("GREETING").map(String::as_str), Some("hello, operator"));
    assert!(!spec.env.contains_key("INJECTED") && spec.persist.is_empty(), "{spec:?}");
    assert_eq!(spec, first.run.expect("release 1's run spec"), "the manifest's, as the real agent's");
    let log = cluster.scheduler_log(1);
    assert!(log.contains("the agent reported a run spec other than its manifest's"), "{log}");
    assert!(log.contains("refusing the agent's build result"), "{log}");

    // (g) The registry is down when the result arrives: the leader retries for a few
    // seconds, then fails the build naming the registry rather than record it unchecked.
    let service_before = service_state(&cluster);
    cluster.registry_mut().stop();
    let started = std::time::Instant::now();
    let run = deploy_with(&cluster, &mut fake, |a| report(a.repository.clone(), &first.digest)).await;
    let reason = format!("the fleet registry at {registry} did not confirm hello@{}", first.digest);
    let error = run.error();
    assert!(error.contains(&reason) && error.contains("(5 tries)"), "{error}");
    assert!(started.elapsed() >= Duration::from_secs(2), "retried before failing: {:?}", started.elapsed());
    assert_eq!(cluster.releases("hello").await.len(), 2, "no release 3");
    assert_eq!(service_state(&cluster), service_before, "the service is untouched");
}
