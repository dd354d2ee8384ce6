//! t29: deploy on git push against the real engine, registry and Swarm. `POST /hooks/APP`
//! with GitHub-, GitLab- and Gitea-shaped push notifications signed with the secret the
//! real `slipway apps webhook --json` prints: a push deploys exactly the pushed commit,
//! every refusal gets its status and builds nothing, a redelivery deploys once, a burst
//! of five pushes builds at most twice (the last one the newest commit), `--rotate`
//! retires the old secret, and the scheduler's log never holds a secret.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use slipway_proto as pb;
use slipway_testkit::GitRepo;
use slipway_tests::TestCluster;

const APP: &str = "hookweb";

/// A build of the example, from clone to deployed service, takes well under this here;
/// the scheduler's queue timeout in the fixture is 20 s on top.
const DEPLOY_DEADLINE: Duration = Duration::from_secs(240);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 of `body` with `secret`, in hex: what GitHub and Gitea send.
fn mac(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    hex(ring::hmac::sign(&key, body).as_ref())
}

fn push_body(branch: &str, after: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0".repeat(40),
        "after": after,
        "repository": { "full_name": "acme/hookweb" },
        "commits": [],
    })
    .to_string()
    .into_bytes()
}

/// GitHub's headers for `body` signed with `secret`.
fn github(secret: &str, event: &str, delivery: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", event.to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        ("X-Hub-Signature-256", format!("sha256={}", mac(secret, body))),
    ]
}

struct Hooks<'a> {
    cluster: &'a TestCluster,
    url: String,
    client: reqwest::Client,
}

impl Hooks<'_> {
    /// POSTs `body` to `app`'s hook with `headers`: the status and the JSON answer.
    async fn post(&self, app: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, serde_json::Value) {
        let url = self.url.replace(&format!("/hooks/{APP}"), &format!("/hooks/{app}"));
        let mut req = self.client.post(&url).header("content-type", "application/json").body(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("the answer's body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer {status} {text:?} is not JSON: {e}"));
        (status, json)
    }

    /// The builds of the app.
    async fn builds(&self) -> Vec<pb::Build> {
        self.cluster.builds(APP).await
    }

    /// Waits until build `id` leaves the queue: how long that took from `since`.
    async fn placed_after(&self, id: &str, since: Instant) -> Duration {
        let deadline = Instant::now() + DEPLOY_DEADLINE;
        loop {
            let builds = self.builds().await;
            let build =
                builds.iter().find(|b| b.id == id).unwrap_or_else(|| panic!("build {id}: {builds:?}"));
            if build.state != pb::BuildState::Queued as i32 {
                return since.elapsed();
            }
            assert!(Instant::now() < deadline, "build {id} still queued: {build:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the app's current release is a deployed build of `sha`, with no build
    /// of the app left unfinished; that release.
    async fn deployed(&self, sha: &str) -> pb::Release {
        let deadline = Instant::now() + DEPLOY_DEADLINE;
        loop {
            let releases = self.cluster.releases(APP).await;
            let builds = self.builds().await;
            let busy = builds.iter().any(|b| {
                [pb::BuildState::Queued, pb::BuildState::Assigned, pb::BuildState::Running]
                    .iter()
                    .any(|s| *s as i32 == b.state)
            });
            let app = self.cluster.apps().await.into_iter().find(|a| a.name == APP).expect("the app");
            let current = releases.iter().find(|r| r.number == app.current_release);
            // (Read one after the other: a release read pending may be current by now.)
            let live = |r: &&pb::Release| r.deploy_state == pb::DeployState::Deployed as i32;
            if let Some(r) = current.filter(|r| r.git_sha == sha && !busy).filter(live) {
                return r.clone();
            }
            let failed: Vec<_> = builds.iter().filter(|b| b.state == pb::BuildState::Failed as i32).collect();
            assert!(failed.is_empty(), "a build failed: {failed:?}");
            assert!(
                Instant::now() < deadline,
                "{sha} not deployed in time: releases {releases:?}\nbuilds {builds:?}\n{}",
                self.cluster.scheduler_log(1)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `POST` with a declared `Content-Length` over the limit and no body sent: the answer.
fn post_declaring(http_addr: &str, app: &str, length: usize) -> String {
    let mut tcp = std::net::TcpStream::connect(http_addr).expect("connect to the HTTP side");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /hooks/{app} HTTP/1.1\r\nHost: {http_addr}\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: {length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).expect("send the head");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn webhook(cluster: &TestCluster, rotate: bool) -> (String, String) {
    let mut args = vec!["apps", "webhook", APP, "--json"];
    if rotate {
        args.push("--rotate");
    }
    let out = cluster.cli(&args);
    assert!(out.status.success(), "slipway {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("apps webhook --json is JSON");
    let (url, secret) = (json["url"].as_str().unwrap(), json["secret"].as_str().unwrap());
    assert_eq!(secret.len(), 64, "{json}");
    (url.to_string(), secret.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t29_deploy_on_push() {
    let Some(cluster) = TestCluster::start("hook29").await else { return };
    let repo = GitRepo::from_example("hello");
    let manifest = std::fs::read_to_string(repo.path().join("slipway.toml")).expect("the example's manifest");
    repo.commit_files(
        &[("slipway.toml", &manifest.replace("name = \"hello\"", &format!("name = \"{APP}\"")))],
        "rename",
    );
    cluster.create_app(APP, &repo.url()).await.expect("create the app");
    let (url, secret) = webhook(&cluster, false);
    assert_eq!(url, format!("http://{}/hooks/{APP}", cluster.http_addr(1)));
    assert_eq!(webhook(&cluster, false).1, secret, "shown again, the same");
    let hooks = Hooks { cluster: &cluster, url, client: reqwest::Client::new() };

    // Refusals: each its status, none builds.
    let sha1 = repo.head();
    let body = push_body("main", &sha1);
    let mut forged = github(&secret, "push", "r-1", &body);
    forged[2].1 = format!("sha256={}", mac("not the secret", &body));
    assert_eq!(hooks.post(APP, &forged, body.clone()).await.0, 401, "a bad signature");
    let unsigned = &github(&secret, "push", "r-2", &body)[..2];
    assert_eq!(hooks.post(APP, unsigned, body.clone()).await.0, 401, "no signature");
    let (status, answer) =
        hooks.post("nosuchapp", &github(&secret, "push", "r-3", &body), body.clone()).await;
    assert_eq!(status, 404, "an unknown app: {answer}");
    let junk = b"{\"ref\": \"refs/heads/main\", ".to_vec();
    assert_eq!(hooks.post(APP, &github(&secret, "push", "r-4", &junk), junk).await.0, 400, "malformed JSON");
    let no_sha = push_body("main", "abc123");
    assert_eq!(
        hooks.post(APP, &github(&secret, "push", "r-5", &no_sha), no_sha).await.0,
        400,
        "not a full sha"
    );
    let answer = post_declaring(&cluster.http_addr(1), APP, (1 << 20) + 1);
    assert!(answer.starts_with("HTTP/1.1 413"), "a body over 1 MiB: {answer}");
    let other = push_body("feature", &sha1);
    let (status, answer) = hooks.post(APP, &github(&secret, "push", "r-6", &other), other).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("ignored")), "another branch: {answer}");
    assert!(answer["reason"].as_str().unwrap().contains("feature"), "{answer}");
    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
    let (status, answer) = hooks.post(APP, &github(&secret, "ping", "r-7", &ping), ping).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("pong")), "{answer}");
    assert!(hooks.builds().await.is_empty(), "no refusal built anything");

    // A signed push deploys that exact commit; its redelivery changes nothing.
    let deliver = github(&secret, "push", "d-1", &body);
    let (status, answer) = hooks.post(APP, &deliver, body.clone()).await;
    let accepted = Instant::now();
    assert_eq!((status, answer["status"].as_str()), (202, Some("queued")), "{answer}");
    let build = answer["build"].as_str().unwrap().to_string();
    let (status, again) = hooks.post(APP, &deliver, body.clone()).await;
    assert!(status == 200 || status == 202, "{again}");
    assert_eq!(again["build"].as_str(), Some(build.as_str()), "a redelivery names the same build");
    let latency = hooks.placed_after(&build, accepted).await;
    eprintln!("t29: webhook 2xx → build {build} placed: {} ms", latency.as_millis());
    let r1 = hooks.deployed(&sha1).await;
    assert_eq!(cluster.service_image(APP), r1.image, "the service runs the pushed commit's image");
    assert_eq!(hooks.builds().await.len(), 1, "the same delivery twice built once");
    cluster.wait_for_app(APP, "/", Duration::from_secs(60)).await.expect("the app answers");

    // A burst: five commits pushed in quick succession, newest last.
    let before = hooks.builds().await.len();
    let mut shas = Vec::new();
    let mut accepted = Vec::new();
    for i in 1..=5 {
        let sha = repo.commit_files(&[("www/version.txt", &format!("burst-{i}\n"))], &format!("burst {i}"));
        let body = push_body("main", &sha);
        let (status, answer) =
            hooks.post(APP, &github(&secret, "push", &format!("burst-{i}"), &body), body).await;
        assert_eq!(status, 202, "{answer}");
        accepted.push(answer["status"].as_str().unwrap().to_string());
        shas.push(sha);
    }
    let newest = shas.last().unwrap().clone();
    let r = hooks.deployed(&newest).await;
    let builds = hooks.builds().await;
    let burst = &builds[before..];
    eprintln!(
        "t29: five pushes answered {accepted:?}; built {:?}",
        burst.iter().map(|b| (&b.id, &b.git_ref[..8])).collect::<Vec<_>>()
    );
    assert!(burst.len() <= 2, "five pushes built at most twice: {burst:?}");
    assert_eq!(burst.last().unwrap().git_ref, newest, "the last build is of the newest commit");
    assert_eq!(cluster.service_image(APP), r.image);
    let page = cluster.wait_for_app(APP, "/version.txt", Duration::from_secs(60)).await.expect("answers");
    assert!(page.contains("burst-5"), "{page}");

    // GitLab: the secret as X-Gitlab-Token, checkout_sha, X-Gitlab-Event-UUID.
    let sha_gl = repo.commit_files(&[("www/version.txt", "gitlab\n")], "from gitlab");
    let mut body: serde_json::Value = serde_json::from_slice(&push_body("main", &sha_gl)).unwrap();
    body["object_kind"] = "push".into();
    body["checkout_sha"] = sha_gl.clone().into();
    let body = body.to_string().into_bytes();
    let gitlab = |token: &str| {
        vec![
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Event-UUID", "4f5a2b1c-0000-4000-8000-000000000001".to_string()),
            ("X-Gitlab-Token", token.to_string()),
        ]
    };
    assert_eq!(hooks.post(APP, &gitlab("wrong"), body.clone()).await.0, 401, "a wrong GitLab token");
    let (status, answer) = hooks.post(APP, &gitlab(&secret), body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(hooks.deployed(&sha_gl).await.git_sha, sha_gl);

    // Gitea / Forgejo: X-Gitea-Signature, bare hex.
    let sha_gt = repo.commit_files(&[("www/version.txt", "gitea\n")], "from gitea");
    let body = push_body("main", &sha_gt);
    let gitea = |sig: String| {
        vec![
            ("X-Gitea-Event", "push".to_string()),
            ("X-Gitea-Delivery", "6c2e1f0a-0000-4000-8000-000000000002".to_string()),
            ("X-Gitea-Signature", sig),
        ]
    };
    assert_eq!(
        hooks.post(APP, &gitea(mac("wrong", &body)), body.clone()).await.0,
        401,
        "a wrong Gitea signature"
    );
    let (status, answer) = hooks.post(APP, &gitea(mac(&secret, &body)), body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(hooks.deployed(&sha_gt).await.git_sha, sha_gt);

    // --rotate: the old secret is refused, the new one verifies.
    let (_, rotated) = webhook(&cluster, true);
    assert_ne!(rotated, secret);
    let body = push_body("feature", &sha_gt);
    assert_eq!(hooks.post(APP, &github(&secret, "push", "rot-1", &body), body.clone()).await.0, 401);
    let (status, answer) = hooks.post(APP, &github(&rotated, "push", "rot-2", &body), body).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("ignored")), "{answer}");

    // What was logged: every refusal with its reason, never a secret or a signature.
    let log = cluster.scheduler_log(1);
    assert!(log.contains("webhook refused"), "refusals are logged");
    for secret in [&secret, &rotated] {
        assert!(!log.contains(secret.as_str()), "a webhook secret is in the scheduler's log");
    }
    assert!(!log.contains(&mac(&secret, &push_body("main", &sha1))), "a signature is in the log");
}
