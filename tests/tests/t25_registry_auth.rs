//! t25: the registry's token server. A real `docker-registry` with `auth: token`
//! pointing at a real scheduler's `/v2/token` (its `rootcertbundle` the token signer's
//! root, derived from the cluster CA), and the host's Docker engine pushing and pulling
//! with grants minted from the cluster CA: a grant for app A pushes and pulls A and nothing else, a
//! pull-only grant cannot push, an anonymous push fails, a grant from another cluster
//! does not log in; a token signed with an agent's, an operator's or a scheduler's own
//! TLS key (the scheduler's JWT shape, that certificate in `x5c`) is refused, the
//! scheduler's own token taken. Then the grants the scheduler itself hands out, checked
//! against the registry's HTTP API: a build pushes to a registry that takes tokens only
//! (with the grant its assignment carries), and the build grant a (fake) agent's
//! assignment carries pushes and pulls its app's repository and nothing else; an
//! anonymous manifest GET is answered 401; the pull grant the scheduler sends Swarm with
//! the app's service (read at the engine through an [`EngineTap`]) pulls and cannot push,
//! and is renewed before it expires without restarting a task (Swarm's task history over
//! two monitor periods) — all with the scheduler's HTTP side on TLS (`http.tls`), so the
//! engine gets every token from an https realm.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use slipway_proto as pb;
use slipway_proto::tls::Credentials;
use slipway_scheduler::deploy::LABEL_PULL_GRANT_EXPIRES;
use slipway_scheduler::security::pki::{pki_dir, Ca};
use slipway_scheduler::security::registry_auth::{issue_grant, token, Access, GRANT_USER, SERVICE};
use slipway_testkit::docker::docker_cli_as;
use slipway_testkit::{GitRepo, BASE_IMAGE};
use slipway_tests::{EngineTap, TestCluster};

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

/// Media types a manifest GET accepts (the registry answers an OCI or Docker manifest).
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Seconds since the epoch.
fn secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A registry request made the way the engine makes it: a token from the cluster's realm
/// for `actions` on `repo`, presenting `grant` (none: anonymous, no token), then the
/// request with that token. The registry's status; panics when the realm refuses the
/// grant (what is asserted here is what the registry lets a token do).
struct Registry<'a> {
    cluster: &'a TestCluster,
    http: reqwest::Client,
}

impl Registry<'_> {
    async fn token(&self, grant: &str, repo: &str, actions: &str) -> String {
        let url = format!(
            "{}://{}/v2/token?service={SERVICE}&scope=repository:{repo}:{actions}",
            self.cluster.http_scheme(),
            self.cluster.http_addr(1)
        );
        let answer = self.http.get(&url).basic_auth(GRANT_USER, Some(grant)).send().await.expect("the realm");
        let status = answer.status();
        let body: serde_json::Value =
            answer.json().await.unwrap_or_else(|e| panic!("the realm's answer ({status}): {e}"));
        assert!(status.is_success(), "the realm refused the grant for {repo}:{actions}: {status} {body}");
        body["token"].as_str().expect("a token").to_string()
    }

    /// GET of manifest `digest` in `repo` (a pull).
    async fn pull(&self, grant: Option<&str>, repo: &str, digest: &str) -> u16 {
        let url = format!("http://{}/v2/{repo}/manifests/{digest}", self.cluster.registry().addr());
        let mut request = self.http.get(url).header("accept", MANIFEST_TYPES);
        if let Some(grant) = grant {
            request = request.bearer_auth(self.token(grant, repo, "pull").await);
        }
        request.send().await.expect("the registry answers").status().as_u16()
    }

    /// HEAD of blob `digest` in `repo` (a pull).
    async fn has_blob(&self, grant: &str, repo: &str, digest: &str) -> u16 {
        let url = format!("http://{}/v2/{repo}/blobs/{digest}", self.cluster.registry().addr());
        let token = self.token(grant, repo, "pull").await;
        self.http.head(url).bearer_auth(token).send().await.expect("the registry answers").status().as_u16()
    }

    /// An upload of `blob` to `repo` (a push: the upload started, then its one chunk
    /// put): 201 when it is stored, else the first refusal.
    async fn push_blob(&self, grant: &str, repo: &str, blob: &[u8]) -> u16 {
        let addr = self.cluster.registry().addr();
        let token = self.token(grant, repo, "push,pull").await;
        let started = self.http.post(format!("http://{addr}/v2/{repo}/blobs/uploads/")).bearer_auth(&token);
        let started = started.send().await.expect("the registry answers");
        if started.status() != 202 {
            return started.status().as_u16();
        }
        let location = started.headers()["location"].to_str().expect("an upload location").to_string();
        let location = if location.starts_with('/') { format!("http://{addr}{location}") } else { location };
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{separator}digest={}", blob_digest(blob));
        let request =
            self.http.put(url).bearer_auth(&token).header("content-type", "application/octet-stream");
        request.body(blob.to_vec()).send().await.expect("the registry answers").status().as_u16()
    }
}

fn blob_digest(blob: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, blob);
    format!("sha256:{}", hash.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Refused by the registry: 401 (token auth) or 403.
fn denied(status: u16) -> bool {
    status == 401 || status == 403
}

/// Every task the app's service has had (the history Swarm keeps), sorted.
fn task_history(cluster: &TestCluster, app: &str) -> Vec<String> {
    let out = cluster.swarm_cli(&["service", "ps", "-q", "--no-trunc", &cluster.service(app)]).unwrap();
    let mut ids: Vec<String> = out.lines().map(str::to_string).collect();
    ids.sort();
    ids
}

/// The service's update monitor period (Swarm's default 5 s when unset).
fn monitor_period(cluster: &TestCluster, app: &str) -> Duration {
    let out = cluster
        .swarm_cli(&["service", "inspect", "--format", "{{json .Spec.UpdateConfig}}", &cluster.service(app)])
        .unwrap();
    let config: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    let nanos = config["Monitor"].as_u64().filter(|n| *n > 0).unwrap_or(5_000_000_000);
    Duration::from_nanos(nanos)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_hands_out_app_only_build_grants_and_pull_only_service_grants_renewed_in_time() {
    // Short-lived pull grants (the default is 30 days): renewed with a third (10 s) left,
    // checked every 5 s. The HTTP side over TLS, so the registry's realm is https: the
    // engine fetches every token (the build's push, the task's pull) there, trusting no
    // slipway CA (the registry is an http one, for which Docker does not check the
    // realm's certificate).
    let Some(mut cluster) =
        TestCluster::start_with_http("t25renew", "pull_grant_validity_secs = 30", "tls = true").await
    else {
        return;
    };
    // The scheduler talks to Swarm through a tap that keeps the credentials it sends.
    let engine = std::path::PathBuf::from(cluster.scheduler_docker_socket());
    let tap = EngineTap::start(&cluster.dir.path().join("engine-tap.sock"), &engine);
    cluster.set_scheduler_docker_socket(&tap.socket.display().to_string());
    cluster.kill_scheduler();
    cluster.start_scheduler().await;
    cluster.wait_for_ready_nodes(1).await;

    let challenge = reqwest::get(format!("http://{}/v2/", cluster.registry().addr())).await.unwrap();
    let challenge = challenge.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.contains("realm=\"https://"), "{challenge}");
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create app");
    cluster.create_app("t25other", &repo.url()).await.expect("create another app");

    // The registry takes tokens only, so the push itself shows the build's grant worked.
    let release = cluster.deploy("hello", None).await.live().clone();
    assert!(cluster.registry().has_manifest("hello", &release.digest).await);
    cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.expect("app answers");
    let registry = Registry { cluster: &cluster, http: cluster.http_client() };
    // Anonymous: the registry wants a token for the manifest the engine holds.
    assert_eq!(registry.pull(None, "hello", &release.digest).await, 401, "an anonymous manifest GET");

    // Another app's repository holds a blob (pushed with a grant minted for it).
    let other_blob = format!("t25 other {}", secs(SystemTime::now())).into_bytes();
    let other_grant = issue_grant(&cluster.ca(), "t25other", &["push", "pull"], Duration::from_secs(600));
    assert_eq!(registry.push_blob(&other_grant, "t25other", &other_blob).await, 201, "other's own grant");
    assert_eq!(registry.has_blob(&other_grant, "t25other", &blob_digest(&other_blob)).await, 200);

    // The build grant the scheduler hands an agent (a fake one, the real node drained):
    // push and pull on hello's repository, nothing on the other app's.
    let drain = pb::SetNodeDrainRequest { node: cluster.agent_name(1).into(), draining: true };
    cluster.client().await.set_node_drain(drain).await.expect("drain the real node");
    let mut fake = cluster.fake_agent("t25fake").await;
    let agent = async {
        let assignment = fake.next_assignment(Duration::from_secs(60)).await;
        assert_eq!(assignment.app, "hello");
        let login = assignment.registry_login.clone().expect("a build assignment carries a registry login");
        assert_eq!(login.username, GRANT_USER);
        let grant = login.password;
        let blob = format!("t25 build {}", assignment.build_id).into_bytes();
        assert_eq!(registry.push_blob(&grant, "hello", &blob).await, 201, "the build grant pushes its app");
        assert_eq!(registry.has_blob(&grant, "hello", &blob_digest(&blob)).await, 200);
        assert_eq!(registry.pull(Some(&grant), "hello", &release.digest).await, 200, "and pulls it");
        let push = registry.push_blob(&grant, "t25other", &blob).await;
        assert!(denied(push), "the build grant pushes another app's repository: {push}");
        let pull = registry.has_blob(&grant, "t25other", &blob_digest(&other_blob)).await;
        assert!(denied(pull), "the build grant pulls another app's repository: {pull}");
        let output = pb::BuildOutput {
            git_sha: release.git_sha.clone(),
            digest: release.digest.clone(),
            repository: assignment.repository.clone(),
            manifest: include_str!("../../examples/hello/slipway.toml").into(),
            steps: 1,
            ..Default::default()
        };
        fake.succeed(&assignment, output).await;
    };
    let (second, ()) = tokio::join!(cluster.deploy("hello", None), agent);
    let second = second.live().clone();
    assert_eq!(second.image, release.image);
    cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.expect("app answers");

    // The pull grant the scheduler stored with the service (as Swarm got it): it pulls
    // the app's image and pushes nothing.
    let writes = tap.service_writes();
    let deployed = writes.last().expect("the deploys wrote the service through the tap").clone();
    let pull_grant = deployed.password().expect("the service is written with registry credentials");
    let auth = deployed.registry_auth.as_ref().unwrap();
    assert_eq!(auth["username"], GRANT_USER, "{auth:?}");
    assert_eq!(auth["serveraddress"], cluster.registry().addr(), "{auth:?}");
    assert_eq!(registry.pull(Some(&pull_grant), "hello", &release.digest).await, 200, "the service's grant");
    let push = registry.push_blob(&pull_grant, "hello", b"t25 pushed with a pull grant").await;
    assert!(denied(push), "the service's pull grant pushes: {push}");
    let pull = registry.has_blob(&pull_grant, "t25other", &blob_digest(&other_blob)).await;
    assert!(denied(pull), "the service's pull grant pulls another app's repository: {pull}");

    // Its expiry, as the service's label says and as it was written.
    let first: u64 = deployed
        .label(LABEL_PULL_GRANT_EXPIRES)
        .and_then(|v| v.parse().ok())
        .expect("the service records its grant's expiry");
    let written = secs(deployed.at);
    assert!(
        (written + 29..=written + 31).contains(&first),
        "a 30 s grant: expires {first}, written {written}"
    );
    let tasks = task_history(&cluster, "hello");

    // The leader renews it with a third (10 s) left, before it expires.
    let deadline = Instant::now() + Duration::from_secs(45);
    let renewal = loop {
        let later = tap.service_writes().into_iter().skip(writes.len()).find(|w| w.password().is_some());
        if let Some(renewal) = later {
            break renewal;
        }
        assert!(Instant::now() < deadline, "the pull grant was not renewed within 45 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let renewed_at = secs(renewal.at);
    assert!(renewed_at < first, "renewed at {renewed_at}, after the first grant expired at {first}");
    let renewed: u64 =
        renewal.label(LABEL_PULL_GRANT_EXPIRES).and_then(|v| v.parse().ok()).expect("a new expiry");
    assert!(renewed >= first + 10, "renewed {renewed}, first {first}");
    let fresh = renewal.password().unwrap();
    assert_ne!(fresh, pull_grant);
    assert_eq!(registry.pull(Some(&fresh), "hello", &release.digest).await, 200, "the renewed grant");
    assert!(
        denied(registry.push_blob(&fresh, "hello", b"t25 renewed push").await),
        "the renewed grant pushes"
    );

    // No task restarted: the service's task history over twice its monitor period (Swarm
    // would have replaced a task whose spec changed within it) is the one before.
    let watch = monitor_period(&cluster, "hello") * 2;
    let until = Instant::now() + watch;
    while Instant::now() < until {
        assert_eq!(task_history(&cluster, "hello"), tasks, "renewing the grant restarted a task");
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
