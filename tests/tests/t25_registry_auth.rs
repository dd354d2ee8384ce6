//! t25: the registry's token server. A real `docker-registry` with `auth: token`
//! pointing at a real scheduler's `/v2/token` (its `rootcertbundle` the token signer's
//! root, derived from the cluster CA), and the host's Docker engine pushing and pulling
//! with scheduler-issued grants: a grant for app A pushes and pulls A and nothing else, a
//! pull-only grant cannot push, an anonymous push fails, a grant from another cluster
//! does not log in; a token signed with an agent's, an operator's or a scheduler's own
//! TLS key (the scheduler's JWT shape, that certificate in `x5c`) is refused, the
//! scheduler's own token taken. Then the wiring: a build pushes to a registry that takes
//! tokens only (with the grant its assignment carries), an anonymous pull of the release
//! fails, and the pull grant stored with the app's service is renewed before it expires
//! without restarting the task — all with the scheduler's HTTP side on TLS (`http.tls`),
//! so the engine gets every token from an https realm.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use slipway_proto::tls::Credentials;
use slipway_scheduler::deploy::LABEL_PULL_GRANT_EXPIRES;
use slipway_scheduler::security::pki::{pki_dir, Ca};
use slipway_scheduler::security::registry_auth::{issue_grant, token, Access, GRANT_USER, SERVICE};
use slipway_testkit::docker::docker_cli_as;
use slipway_testkit::{GitRepo, BASE_IMAGE};
use slipway_tests::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_push_and_pull_their_own_app_only() {
    let Some(cluster) = TestCluster::start("t25reg").await else { return };
    // The cluster's registry takes tokens from member 1.
    let addr = cluster.registry().addr();
    let answer = reqwest::get(format!("http://{addr}/v2/")).await.expect("the registry answers");
    assert_eq!(answer.status(), 401, "the registry wants a token");
    let challenge = answer.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.contains(&format!("{}/v2/token", cluster.http_addr(1))), "{challenge}");

    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("docker-config");
    std::fs::create_dir_all(&client).unwrap();
    let ca = cluster.ca();
    let hour = Duration::from_secs(3600);
    let login = |grant: &str| {
        docker_cli_as(&client, &["login", "-u", GRANT_USER, "--password-stdin", &addr], Some(grant))
    };
    let image = |repo: &str| format!("{addr}/{repo}:1");
    for repo in ["alpha", "beta"] {
        docker_cli_as(&client, &["tag", BASE_IMAGE, &image(repo)], None).unwrap();
    }

    // Anonymous: nothing.
    let anonymous = docker_cli_as(&client, &["push", &image("alpha")], None).expect_err("an anonymous push");
    assert!(anonymous.contains("denied") || anonymous.contains("unauthorized"), "{anonymous}");

    // Push and pull on alpha; nothing on beta.
    login(&issue_grant(&ca, "alpha", &["push", "pull"], hour)).expect("log in with alpha's grant");
    docker_cli_as(&client, &["push", &image("alpha")], None).expect("alpha's grant pushes alpha");
    let beta =
        docker_cli_as(&client, &["push", &image("beta")], None).expect_err("alpha's grant pushes beta");
    assert!(beta.contains("denied"), "{beta}");
    docker_cli_as(&client, &["rmi", &image("alpha")], None).unwrap();
    docker_cli_as(&client, &["pull", &image("alpha")], None).expect("alpha's grant pulls alpha");

    // Pull only.
    login(&issue_grant(&ca, "alpha", &["pull"], hour)).expect("log in with a pull grant");
    docker_cli_as(&client, &["pull", &image("alpha")], None).expect("a pull grant pulls");
    docker_cli_as(&client, &["tag", BASE_IMAGE, &format!("{addr}/alpha:2")], None).unwrap();
    let push =
        docker_cli_as(&client, &["push", &format!("{addr}/alpha:2")], None).expect_err("a pull grant pushes");
    assert!(push.contains("denied"), "{push}");

    // Another cluster's grant, or an expired one, does not even log in.
    let foreign = login(&issue_grant(&Ca::create().unwrap(), "alpha", &["push", "pull"], hour))
        .expect_err("a foreign grant logs in");
    assert!(foreign.contains("not a registry grant from this cluster"), "{foreign}");
    let expired = issue_grant(&ca, "alpha", &["pull"], Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late = login(&expired).expect_err("an expired grant logs in");
    assert!(late.contains("expired"), "{late}");

    // Only the cluster's token signer: a token for alpha's repository (which none of them
    // holds a grant for) signed with the agent's, the operator's or the scheduler's TLS
    // key, its CA-issued certificate in x5c, is refused; the scheduler's token is taken.
    let tags = format!("http://{addr}/v2/alpha/tags/list");
    let http = reqwest::Client::new();
    let status_with = |token: String| {
        let request = http.get(&tags).bearer_auth(token);
        async move { request.send().await.expect("the registry answers").status() }
    };
    let alpha = || {
        vec![Access {
            kind: "repository".into(),
            name: "alpha".into(),
            actions: vec!["pull".into(), "push".into()],
        }]
    };
    let scheduler_tls = Credentials::load_dir(&pki_dir(&cluster.data_dir_of(1))).unwrap().unwrap();
    let keys = [
        ("agent", cluster.agent_credentials(1)),
        ("operator", cluster.admin_credentials().expect("the cluster runs TLS").clone()),
        ("scheduler TLS", scheduler_tls),
    ];
    for (who, creds) in keys {
        let forged = token(&creds, "grant:alpha", alpha()).expect("a JWT signed with that key").token;
        assert_eq!(status_with(forged).await, 401, "a token signed with the {who}'s key");
    }
    let answer: serde_json::Value = http
        .get(format!(
            "http://{}/v2/token?service={SERVICE}&scope=repository:alpha:pull",
            cluster.http_addr(1)
        ))
        .basic_auth(GRANT_USER, Some(issue_grant(&ca, "alpha", &["pull"], hour)))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("the realm answers a grant")
        .json()
        .await
        .unwrap();
    let real = answer["token"].as_str().expect("a token").to_string();
    assert_eq!(status_with(real).await, 200, "the scheduler's token");

    for tag in [image("alpha"), image("beta"), format!("{addr}/alpha:2")] {
        let _ = docker_cli_as(&client, &["rmi", &tag], None);
    }
}

/// The label on the app's service saying when its pull grant expires.
fn grant_expiry(cluster: &TestCluster, app: &str) -> Option<u64> {
    let label = format!("{{{{index .Spec.Labels \"{LABEL_PULL_GRANT_EXPIRES}\"}}}}");
    let out = cluster.swarm_cli(&["service", "inspect", "--format", &label, &cluster.service(app)]).ok()?;
    out.trim().parse().ok()
}

/// `registry.pull_grant_validity_secs` of the renewal test.
const GRANT_VALIDITY_SECS: u64 = 30;

/// The service's task template as Swarm holds it (JSON).
fn task_template(cluster: &TestCluster, app: &str) -> String {
    let format = "{{json .Spec.TaskTemplate}}";
    cluster.swarm_cli(&["service", "inspect", "--format", format, &cluster.service(app)]).unwrap()
}

/// The ids of the app's running tasks, sorted.
fn running_tasks(cluster: &TestCluster, app: &str) -> Vec<String> {
    let out = cluster
        .swarm_cli(&["service", "ps", "-q", "--filter", "desired-state=running", &cluster.service(app)])
        .unwrap();
    let mut ids: Vec<String> = out.lines().map(str::to_string).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_push_with_their_grant_and_services_keep_a_fresh_pull_grant() {
    // Short-lived pull grants (the default is 30 days): renewed about every 20 s. The
    // HTTP side over TLS, so the registry's realm is https: the engine fetches every
    // token (the build's push, the task's pull) there, trusting no slipway CA (the
    // registry is an http one, for which Docker does not check the realm's certificate).
    let Some(cluster) = TestCluster::start_with_http(
        "t25renew",
        &format!("pull_grant_validity_secs = {GRANT_VALIDITY_SECS}"),
        "tls = true",
    )
    .await
    else {
        return;
    };
    let challenge = reqwest::get(format!("http://{}/v2/", cluster.registry().addr())).await.unwrap();
    let challenge = challenge.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.contains("realm=\"https://"), "{challenge}");
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create app");

    // The registry takes tokens only, so the push itself shows the build's grant worked.
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let release = cluster.deploy("hello", None).await.live().clone();
    assert!(cluster.registry().has_manifest("hello", &release.digest).await);
    let anonymous = tempfile::tempdir().unwrap();
    let pull =
        docker_cli_as(anonymous.path(), &["pull", &release.image], None).expect_err("an anonymous pull");
    assert!(pull.contains("unauthorized") || pull.contains("denied"), "{pull}");
    cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.expect("app answers");

    let first = grant_expiry(&cluster, "hello").expect("the service records its grant's expiry");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(
        (before + 30..=now + 31).contains(&first),
        "a 30 s grant: expires {first}, deployed {before}..{now}"
    );
    let tasks = running_tasks(&cluster, "hello");
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let template = task_template(&cluster, "hello");

    // The leader renews it with a third (10 s) left; the task keeps running.
    let deadline = Instant::now() + Duration::from_secs(45);
    let renewed = loop {
        match grant_expiry(&cluster, "hello") {
            Some(expiry) if expiry > first => break expiry,
            _ => {}
        }
        assert!(Instant::now() < deadline, "the pull grant was not renewed within 45 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(renewed >= first + 10, "renewed {renewed}, first {first}");
    // Swarm replaces tasks when the task template changes (a force update included); the
    // renewal changes the service's labels and registry auth only. The running tasks are
    // then watched for a sixth of the grant's validity (5 s), long past the moment Swarm
    // starts replacing tasks after a template change (within a second).
    assert_eq!(task_template(&cluster, "hello"), template, "the renewal changed the task template");
    let watch = Instant::now() + Duration::from_secs(GRANT_VALIDITY_SECS / 6);
    while Instant::now() < watch {
        assert_eq!(running_tasks(&cluster, "hello"), tasks, "renewing the grant restarted a task");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = cluster.scheduler_log(1);
    assert!(log.contains("renewed the service's registry grant"), "{log}");
    // A grant's payload is base64 of `{"app":…`.
    assert!(!log.contains("eyJhcHAi"), "no grant in the scheduler's log");
    let agent_log = cluster.agent_log(1);
    assert!(!agent_log.contains("eyJhcHAi"), "no grant in the agent's log");
    cluster.wait_for_app("hello", "/", Duration::from_secs(5)).await.expect("still answers");
}
