//! t28: app secrets and failed config rollouts, against the real engine, registry and
//! Swarm, through the `slipway` CLI binary: `secrets set` delivers /run/secrets/NAME to
//! the app's tasks as a versioned Swarm secret, a second set rolls out the next version
//! and the old Swarm secret goes, `secrets list` shows versions and never values, `unset`
//! removes the file and the Swarm secret; the value is nowhere in the scheduler's data
//! dir (raft log and snapshots) nor in the scheduler's and agent's logs; bad input is
//! refused naming the field and leaves nothing behind. A config change that makes the
//! app exit is recorded failed with a reason while the previous release keeps serving.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::query_parameters::ListSecretsOptions;
use slipway_proto as pb;
use slipway_scheduler::state::sha256_hex;
use slipway_testkit::{docker_cli, GitRepo};
use slipway_tests::TestCluster;

/// `slipway ARGS` (with stdin when given): success, stdout, stderr.
fn run(cluster: &TestCluster, args: &[&str], input: Option<&[u8]>) -> (bool, String, String) {
    let out = match input {
        Some(input) => cluster.cli_with_input(args, input),
        None => cluster.cli(args),
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls the app through the router until its page contains `expected`; the last body.
async fn answers(cluster: &TestCluster, expected: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let body = cluster.wait_for_app("hello", "/", timeout).await.unwrap_or_default();
        if body.contains(expected) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Names of the Swarm secrets labelled as this stack's app `app`, from the engine.
async fn swarm_secrets(cluster: &TestCluster, app: &str) -> Vec<String> {
    let docker = bollard::Docker::connect_with_local_defaults().expect("docker");
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("com.docker.stack.namespace={}", cluster.stack), format!("io.slipway.app={app}")],
    )]);
    let mut names: Vec<String> = docker
        .list_secrets(Some(ListSecretsOptions { filters: Some(filters) }))
        .await
        .expect("list secrets")
        .into_iter()
        .filter_map(|s| s.spec.and_then(|s| s.name))
        .collect();
    names.sort();
    names
}

/// Polls until the app's Swarm secrets are exactly `expected`.
async fn wait_swarm_secrets(cluster: &TestCluster, expected: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names = swarm_secrets(cluster, "hello").await;
        if names == expected || Instant::now() > deadline {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

/// The secret's content as the running task's container reads it (`docker exec`).
fn secret_in_container(cluster: &TestCluster, name: &str) -> String {
    let filter = format!("label=com.docker.swarm.service.name={}", cluster.service("hello"));
    let ids = docker_cli(&["ps", "-q", "--filter", &filter]).unwrap();
    let id = ids.split_whitespace().next().expect("a running container of the service");
    docker_cli(&["exec", id, "cat", &format!("/run/secrets/{name}")]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn t28_secrets_are_versioned_swarm_secrets_never_stored_by_slipway() {
    let Some(cluster) = TestCluster::start("sec28").await else { return };
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create app");
    cluster.deploy("hello", None).await.live();
    cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.expect("app answers");
    let timeout = Duration::from_secs(60);

    // Values unique to this run, so nothing else on this machine holds them.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let first = format!("pw-one-{:x}", (nanos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let second = format!("pw-two-{:x}", (nanos as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));

    // secrets set: v1, a release of the same image that mounts /run/secrets/DB_PASSWORD.
    let releases_before = cluster.releases("hello").await;
    let started = Instant::now();
    let (ok, out, err) =
        run(&cluster, &["secrets", "set", "hello", "DB_PASSWORD"], Some(format!("{first}\n").as_bytes()));
    assert!(ok, "{out}{err}");
    assert!(out.contains("secret: set DB_PASSWORD (v1)") && out.contains("is live"), "{out}");
    let shown = format!("secret DB_PASSWORD: sha256:{}", sha256_hex(first.as_bytes()));
    let body = answers(&cluster, &shown, timeout).await;
    assert!(body.contains(&shown), "the task reads v1 (one trailing newline stripped): {body}");
    eprintln!("measured: secrets set to the new value served: {:?}", started.elapsed());
    assert_eq!(
        secret_in_container(&cluster, "DB_PASSWORD"),
        first,
        "docker exec cat /run/secrets/DB_PASSWORD"
    );
    let releases = cluster.releases("hello").await;
    let r_v1 = releases.last().unwrap().clone();
    assert_eq!(r_v1.digest, releases_before.last().unwrap().digest, "same image, no build");
    assert_eq!(r_v1.change, "secret: set DB_PASSWORD (v1)");
    assert_eq!(r_v1.secrets, [pb::SecretVersion { name: "DB_PASSWORD".into(), version: 1 }]);
    assert_eq!(swarm_secrets(&cluster, "hello").await, [format!("{}_hello_DB_PASSWORD_v1", cluster.stack)]);

    // A second set: v2 rolls out, the v1 Swarm secret goes once it runs.
    let started = Instant::now();
    let (ok, out, err) = run(&cluster, &["secrets", "set", "hello", "DB_PASSWORD"], Some(second.as_bytes()));
    assert!(ok && out.contains("secret: set DB_PASSWORD (v2)"), "{out}{err}");
    let shown2 = format!("secret DB_PASSWORD: sha256:{}", sha256_hex(second.as_bytes()));
    let body = answers(&cluster, &shown2, timeout).await;
    assert!(body.contains(&shown2), "the task reads v2: {body}");
    eprintln!("measured: second secrets set to the new value served: {:?}", started.elapsed());
    assert_eq!(secret_in_container(&cluster, "DB_PASSWORD"), second);
    let v2_only = [format!("{}_hello_DB_PASSWORD_v2", cluster.stack)];
    assert_eq!(wait_swarm_secrets(&cluster, &v2_only).await, v2_only, "the v1 Swarm secret is removed");
    let (ok, json, err) = run(&cluster, &["secrets", "list", "hello", "--json"], None);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&json).expect("secrets list --json is JSON");
    assert_eq!(listed["secrets"][0]["name"], "DB_PASSWORD", "{listed}");
    assert_eq!(listed["secrets"][0]["version"], 2, "{listed}");
    assert_eq!(listed["secrets"][0]["swarm_name"], v2_only[0].as_str(), "{listed}");
    let (_, table, _) = run(&cluster, &["secrets", "list", "hello"], None);
    assert!(table.contains("DB_PASSWORD") && table.contains("v2"), "{table}");
    let (_, releases_table, _) = run(&cluster, &["releases", "hello"], None);
    assert!(releases_table.contains("secret: set DB_PASSWORD (v2)"), "{releases_table}");
    let (ok, show, err) = run(&cluster, &["apps", "show", "hello", "--json"], None);
    assert!(ok, "{err}");
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["secret_names"], serde_json::json!(["DB_PASSWORD"]), "{show}");
    for text in [&json, &table, &releases_table, &show.to_string()] {
        assert!(!text.contains(&first) && !text.contains(&second), "no value shown:\n{text}");
    }

    // Bad input: refused naming the field or limit; nothing recorded, no Swarm secret left.
    let releases_before = cluster.releases("hello").await;
    let long_name = "N".repeat(60);
    let oversized = vec![b'x'; 500 * 1024 + 1];
    for (args, input, says) in [
        (
            vec!["secrets", "set", "hello", "../etc/passwd"],
            b"v".to_vec(),
            "invalid secret name: \"../etc/passwd\" is not allowed; secret names are 1 to 64",
        ),
        (vec!["secrets", "set", "hello", ".hidden"], b"v".to_vec(), "invalid secret name"),
        (
            vec!["secrets", "set", "hello", &long_name],
            b"v".to_vec(),
            "Swarm allows 64: use a shorter secret name",
        ),
        (vec!["secrets", "set", "hello", "BIG"], oversized.clone(), "500 KiB, Swarm's limit"),
        (vec!["secrets", "set", "hello", "EMPTY"], b"\n".to_vec(), "the secret's value is empty"),
        (vec!["secrets", "set", "nope", "A"], b"v".to_vec(), "app \"nope\" not found"),
        (vec!["secrets", "unset", "hello", "NEVER_SET"], vec![], "app \"hello\" has no secret NEVER_SET"),
    ] {
        let (ok, out, err) = run(&cluster, &args, Some(&input));
        assert!(!ok && err.contains(says), "{args:?}: expected {says:?}\n{out}{err}");
    }
    // The scheduler itself refuses an oversized value (the CLI is one client).
    let refused = cluster
        .client()
        .await
        .set_secret(pb::SetSecretRequest {
            app: "hello".into(),
            name: "BIG".into(),
            value: oversized,
            request_id: String::new(),
        })
        .await
        .expect_err("an oversized value is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("is 512001 bytes long; a secret is at most 512000 bytes"),
        "{refused:?}"
    );
    assert_eq!(cluster.releases("hello").await, releases_before, "nothing recorded");
    assert_eq!(swarm_secrets(&cluster, "hello").await, v2_only, "no Swarm secret left behind");

    // A config change that makes the app exit: recorded failed with a reason, the
    // previous release (secret v2) keeps serving, the records say which release holds what.
    let serving = cluster.releases("hello").await.last().unwrap().clone();
    let (ok, out, err) = run(&cluster, &["config", "set", "hello", "CRASH=1"], None);
    assert!(!ok, "a rollout that crashes fails the command:\n{out}{err}");
    let releases = cluster.releases("hello").await;
    let failed = releases.last().unwrap().clone();
    assert_eq!((failed.number, failed.change.as_str()), (serving.number + 1, "config: set CRASH"));
    assert_eq!(failed.deploy_state, pb::DeployState::Failed as i32, "{failed:?}");
    assert!(failed.deploy_error.contains("rolled the update back"), "the reason: {}", failed.deploy_error);
    assert_eq!(failed.config_keys, ["CRASH"], "the failed release holds the config change");
    let still = releases.iter().find(|r| r.number == serving.number).unwrap();
    assert_eq!(still.deploy_state, pb::DeployState::Deployed as i32);
    assert!(still.config_keys.is_empty(), "the serving release runs without it");
    let apps = cluster.apps().await;
    assert_eq!(apps.iter().find(|a| a.name == "hello").unwrap().current_release, serving.number);
    let body = answers(&cluster, &shown2, timeout).await;
    assert!(body.contains(&shown2), "the previous release still answers through the router: {body}");
    let label = cluster
        .swarm_cli(&[
            "service",
            "inspect",
            "--format",
            "{{index .Spec.Labels \"io.slipway.release\"}}",
            &cluster.service("hello"),
        ])
        .unwrap();
    assert_eq!(label.trim(), serving.number.to_string(), "Swarm rolled back to the serving release");
    assert_eq!(swarm_secrets(&cluster, "hello").await, v2_only, "the serving release's secret stays");
    let (ok, out, err) = run(&cluster, &["config", "unset", "hello", "CRASH"], None);
    assert!(ok, "unsetting the bad key rolls out again:\n{out}{err}");

    // Baseline for the figures: a code-only redeploy to the new code served.
    repo.write("www/version.txt", "v-sec28-code\n");
    repo.commit("code-only change");
    let started = Instant::now();
    cluster.deploy("hello", None).await.live();
    let body = answers(&cluster, "v-sec28-code", timeout).await;
    assert!(body.contains("v-sec28-code") && body.contains(&shown2), "code deploys keep the secret: {body}");
    eprintln!("measured: code-only redeploy to the new code served: {:?}", started.elapsed());

    // unset: a release without the file, then the Swarm secret goes.
    let (ok, out, err) = run(&cluster, &["secrets", "unset", "hello", "DB_PASSWORD"], None);
    assert!(ok && out.contains("secret: unset DB_PASSWORD"), "{out}{err}");
    let body = answers(&cluster, "hello from slipway", timeout).await;
    assert!(!body.contains("secret DB_PASSWORD"), "the file is gone: {body}");
    assert_eq!(wait_swarm_secrets(&cluster, &[]).await, Vec::<String>::new(), "the Swarm secret is removed");

    // The values are nowhere slipway keeps anything: data dir (raft log, snapshots, state)
    // and the scheduler's and agent's logs.
    for value in [&first, &second] {
        let found = files_containing(&cluster.data_dir_of(1), value.as_bytes());
        assert!(found.is_empty(), "a secret value is stored in {found:?}");
        assert!(!cluster.scheduler_log(1).contains(value.as_str()), "the scheduler logged a secret value");
        assert!(!cluster.agent_log(1).contains(value.as_str()), "the agent logged a secret value");
    }
    assert!(
        cluster.scheduler_log(1).contains("secret version recorded"),
        "the scheduler log is the one written"
    );
}
