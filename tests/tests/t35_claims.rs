//! t35: claims the README makes that no other test asserted, each through the real
//! binaries (and the real `slipway` CLI where the claim is about the CLI), each failing
//! when the claim is false:
//!
//! - `slipway deploy` streams the build log and the rollout and exits 0 when the release
//!   is live; a failed build exits non-zero naming the failing step;
//! - a build no node can take fails after `placement.queue_timeout_secs`, recorded as
//!   failed with why each node was rejected, and no release;
//! - the CLI retries with the same request id across a leader kill, so the retried
//!   deploy joins the first: one build, one release;
//! - a new leader takes writes within a bound derived from the raft configuration;
//! - a member cut off from the majority fails reads and writes within its bound
//!   (`WRITE_TIMEOUT`), with the scheduler's own error, not a client timeout;
//! - a rotated join token fails on every member, not only the one that rotated it.
//!
//! Stacks are named `clm…`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_proto::{self as pb};
use slipway_scheduler::config::SchedulerConfig;
use slipway_scheduler::raft::store::WRITE_TIMEOUT;
use slipway_testkit::GitRepo;
use slipway_tests::cluster::binary;
use slipway_tests::TestCluster;
use tonic::Code;

/// Member `id`'s configuration as the fixture wrote it (what the process loaded).
fn member_config(cluster: &TestCluster, id: u64) -> SchedulerConfig {
    let text = std::fs::read_to_string(cluster.dir.path().join(format!("scheduler-{id}.toml")))
        .expect("read the member's config");
    SchedulerConfig::parse(&text).expect("the fixture's config parses")
}

/// `slipway deploy` through the real CLI, every member's address given.
fn cli_deploy(cluster: &TestCluster, app: &str) -> (bool, String, String, Duration) {
    let started = Instant::now();
    let out = cluster.cli(&["deploy", app]);
    let elapsed = started.elapsed();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    (out.status.success(), stdout, stderr, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clm_deploy_streams_and_exits_by_outcome_and_an_unplaceable_build_expires() {
    let Some(mut cluster) = TestCluster::start("clmcli").await else { return };
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create the app");

    // Success: the stream carries the queue, the build log, the image, the release and
    // the rollout, in that order, and the CLI exits 0.
    let (ok, stdout, stderr, _) = cli_deploy(&cluster, "hello");
    assert!(ok, "slipway deploy of a good app exits 0\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    let at =
        |needle: &str| stdout.find(needle).unwrap_or_else(|| panic!("the stream says {needle:?}:\n{stdout}"));
    let queued = at("==> build ");
    let building = at("==> building on ");
    let log_line = at("install-deps.sh");
    let image = at("==> image ");
    let recorded = at("==> release v1 of hello recorded");
    let live = at("==> release v1 is live: service ");
    assert!(
        queued < building && building < log_line && log_line < image && image < recorded && recorded < live,
        "the stream is in order (queued, placed, build log, image, release, live):\n{stdout}"
    );
    let rollout = &stdout[recorded..live];
    assert!(rollout.lines().skip(1).any(|l| l.starts_with("    ")), "deploy status lines stream:\n{stdout}");
    assert!(stdout.contains(&format!("http://hello.localhost:{}/", cluster.router_port)), "{stdout}");

    // A failing build step: non-zero, and the error names the step and its output.
    let dockerfile = std::fs::read_to_string(repo.path().join("Dockerfile")).expect("read Dockerfile");
    repo.write(
        "Dockerfile",
        dockerfile.replace("COPY www /app/www", "RUN echo clm-breaks-here && false\nCOPY www /app/www"),
    );
    repo.commit("a failing step");
    let (ok, stdout, stderr, _) = cli_deploy(&cluster, "hello");
    assert!(!ok, "slipway deploy of a failing build exits non-zero\n{stdout}\n{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        error.contains("RUN echo clm-breaks-here && false")
            || stderr.contains("RUN echo clm-breaks-here && false"),
        "the error names the failing step:\n{stderr}"
    );
    assert!(stderr.contains("clm-breaks-here"), "and shows its output:\n{stderr}");
    assert!(stdout.contains("clm-breaks-here"), "the step's output streamed as a log line:\n{stdout}");
    assert_eq!(cluster.releases("hello").await.len(), 1, "a failed build makes no release");
    repo.git(&["revert", "--no-edit", "HEAD"]);

    // No node can take a build: the only agent is gone. The scheduler restarts with a
    // short queue timeout (the fixture's 20 s, rewritten to 3 s); after the restart the
    // node is Unknown to the new leader until it reports, which it never does.
    cluster.kill_agent(1);
    cluster.kill_scheduler();
    let path = cluster.dir.path().join("scheduler-1.toml");
    let config = std::fs::read_to_string(&path).expect("read the scheduler's config");
    assert!(config.contains("queue_timeout_secs = 20\n"), "the fixture's queue timeout moved:\n{config}");
    std::fs::write(&path, config.replace("queue_timeout_secs = 20\n", "queue_timeout_secs = 3\n")).unwrap();
    cluster.start_scheduler().await;
    let timeout = Duration::from_secs(member_config(&cluster, 1).placement.queue_timeout_secs);
    assert_eq!(timeout, Duration::from_secs(3));

    let node = cluster.agent_name(1).to_string();
    let (ok, stdout, stderr, elapsed) = cli_deploy(&cluster, "hello");
    assert!(!ok, "an unplaceable deploy exits non-zero\n{stdout}\n{stderr}");
    assert!(stdout.contains("==> waiting for a node that can build:"), "it said it waits:\n{stdout}");
    assert!(stdout.contains(&format!("    {node}: node has not reported")), "and why:\n{stdout}");
    assert!(
        stderr.lines().any(|l| l.starts_with("error: build ")
            && l.contains(&format!(
                "failed: no node could take the build within 3 s: {node}: node has not reported"
            ))),
        "it fails after the queue timeout with the placement reasons:\n{stderr}"
    );
    // Not before the timeout; and well before a hang (the dispatcher ticks at least every
    // few seconds: a loaded machine gets 15 s more).
    assert!(elapsed >= timeout, "failed after {elapsed:?}, before the {timeout:?} queue timeout");
    assert!(elapsed < timeout + Duration::from_secs(15), "failed only after {elapsed:?}");

    let builds = cluster.builds("hello").await;
    let expired = builds.iter().max_by_key(|b| b.created_at_ms).expect("the build is recorded");
    assert_eq!(expired.state, pb::BuildState::Failed as i32, "{expired:?}");
    assert!(
        expired.error.contains("no node could take the build within 3 s") && expired.error.contains(&node),
        "the build records the placement reasons: {expired:?}"
    );
    assert_eq!(expired.release, 0, "{expired:?}");
    assert_eq!(cluster.releases("hello").await.len(), 1, "an expired build makes no release");
}

/// Polls `builds` on any member until `done` holds for them (deadline `within`).
async fn wait_builds(
    cluster: &TestCluster,
    app: &str,
    within: Duration,
    done: impl Fn(&[pb::Build]) -> bool,
) -> Vec<pb::Build> {
    let deadline = Instant::now() + within;
    loop {
        for id in cluster.running_members() {
            let Ok(mut client) = cluster.member_client(id).await else { continue };
            let req = pb::ListBuildsRequest { app: app.into() };
            if let Ok(builds) = client.list_builds(req).await.map(|r| r.into_inner().builds) {
                if done(&builds) {
                    return builds;
                }
            }
        }
        assert!(Instant::now() < deadline, "builds of {app} not there within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clm_cli_deploy_retried_across_a_leader_kill_joins_the_first_build() {
    let Some(cluster) = TestCluster::start_replicated("clmretry", 3, "").await else { return };
    let repo = GitRepo::from_example("hello");
    // A build step slow enough to kill the leader while the CLI follows it.
    let dockerfile = std::fs::read_to_string(repo.path().join("Dockerfile")).expect("read Dockerfile");
    repo.write("Dockerfile", dockerfile.replace("COPY www /app/www", "RUN sleep 8\nCOPY www /app/www"));
    repo.commit("a slow build step");
    cluster.create_app("hello", &repo.url()).await.expect("create the app");

    let mut child = Command::new(binary("slipway"))
        .args(["--scheduler", &cluster.grpc_addrs().join(","), "deploy", "hello"])
        .current_dir(cluster.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start slipway deploy");
    let stdout = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (pipe, stdout) = (child.stdout.take().expect("stdout"), stdout.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut out = stdout.lock().expect("stdout lock");
                out.push_str(&line);
                out.push('\n');
            }
        })
    };
    // The build runs (the CLI printed where): kill -9 the leader under the stream.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !stdout.lock().unwrap().contains("==> building on ") {
        assert!(child.try_wait().unwrap().is_none(), "the CLI ended early:\n{}", stdout.lock().unwrap());
        assert!(Instant::now() < deadline, "the build was not placed in 90 s:\n{}", stdout.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = cluster.leader().await;
    cluster.kill_member(leader);
    eprintln!("killed leader {leader} (kill -9) while `slipway deploy` followed the build");

    let status = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().expect("wait");
    reader.join().expect("reader");
    let stdout = stdout.lock().unwrap().clone();
    let stderr = String::from_utf8_lossy(&status.stderr).to_string();
    assert!(stderr.contains("; retrying"), "the CLI retried after the kill:\n{stderr}");
    assert!(
        status.status.success(),
        "the retried deploy went live\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    // "==> build b-1 queued" (each attempt), not "==> build b-1 attempt 1 done in …".
    let queued: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("==> build "))
        .filter(|l| l.ends_with(" queued"))
        .collect();
    assert!(queued.len() >= 2, "the retry was answered with the build again: {queued:?}\n{stdout}");
    assert!(queued.iter().all(|q| *q == queued[0]), "every attempt joined one build: {queued:?}");

    let builds = wait_builds(&cluster, "hello", Duration::from_secs(30), |b| !b.is_empty()).await;
    assert_eq!(builds.len(), 1, "one build, not two: {builds:?}");
    assert_eq!(format!("{} queued", builds[0].id), queued[0]);
    let releases = cluster.releases("hello").await;
    assert_eq!(releases.len(), 1, "one release: {releases:?}");
}

/// Queues a deploy through member `via` (a write); Ok once the cluster acknowledged it.
async fn write(cluster: &TestCluster, via: u64, app: &str, request_id: &str) -> Result<(), tonic::Status> {
    let mut client =
        cluster.member_client(via).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let req = pb::DeployRequest {
        app: app.into(),
        git_ref: request_id.into(),
        no_cache: false,
        request_id: request_id.into(),
    };
    let mut stream = client.deploy(req).await?.into_inner();
    match tokio_stream::StreamExt::next(&mut stream).await {
        Some(Ok(pb::DeployEvent { event: Some(pb::deploy_event::Event::BuildQueued(_)) })) => Ok(()),
        other => Err(tonic::Status::unknown(format!("unexpected first event: {other:?}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clm_failover_and_a_cut_off_member_keep_their_bounds() {
    let Some(mut cluster) = TestCluster::start_replicated("clmbound", 3, "").await else { return };
    cluster.kill_agent(1);
    cluster.create_app("ledger", "file:///nonexistent/ledger").await.expect("create the app");
    let raft = member_config(&cluster, 1).raft;
    write(&cluster, 1, "ledger", "clm-before").await.expect("a write before the faults");

    // Failover: a follower campaigns after its leader lease (the election timeout's
    // maximum) plus a random election timeout (at most the maximum), then one round
    // trip commits. README: "about 1.5 s". The bound: twice the maximum plus a second
    // for the commit, times three for a loaded 2-core machine.
    let max = Duration::from_millis(raft.election_timeout_max_ms);
    let bound = (max * 2 + Duration::from_secs(1)) * 3;
    let old = cluster.leader().await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let killed = Instant::now();
    cluster.kill_member(old);
    let mut n = 0;
    let took = loop {
        n += 1;
        let via = others[n % 2];
        let request_id = format!("clm-fo-{n}");
        let attempt =
            tokio::time::timeout(Duration::from_secs(2), write(&cluster, via, "ledger", &request_id));
        if matches!(attempt.await, Ok(Ok(()))) {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < bound * 2, "no write taken {:?} after the leader died", killed.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("a new leader took a write {took:?} after the old one died (bound {bound:?})");
    assert!(took <= bound, "failover took {took:?}, over {bound:?} (election timeout max {max:?})");
    cluster.start_member(old).await;
    cluster.leader().await;

    // A member cut off from the majority: its reads and writes fail with the
    // scheduler's own "unavailable" naming the quorum, within WRITE_TIMEOUT (as soon as
    // the leader's quorum check fails, at the latest when the timeout runs out), and
    // answer nothing stale. The client waits far longer than the bound, so a hang shows
    // as a hang, not as this error.
    let leader = cluster.leader().await;
    cluster.isolate(leader);
    let client_patience = WRITE_TIMEOUT * 4;
    let slack = Duration::from_secs(5);

    let started = Instant::now();
    let mut client = cluster.member_client(leader).await.expect("the test still reaches the cut-off member");
    let read = tokio::time::timeout(
        client_patience,
        client.list_builds(pb::ListBuildsRequest { app: "ledger".into() }),
    )
    .await
    .expect("the read returned before the client gave up (no hang)");
    let read_took = started.elapsed();
    let refused = read.expect_err("a cut-off member answers no read");
    eprintln!("read on the cut-off member: {:?} after {read_took:?}", refused.message());
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("quorum"), "{refused:?}");
    assert!(std::error::Error::source(&refused).is_none(), "the scheduler's answer, not a transport error");
    assert!(read_took < WRITE_TIMEOUT + slack, "read failed only after {read_took:?}");

    let started = Instant::now();
    let wrote = tokio::time::timeout(client_patience, write(&cluster, leader, "ledger", "clm-lonely"))
        .await
        .expect("the write returned before the client gave up (no hang)");
    let write_took = started.elapsed();
    let refused = wrote.expect_err("a cut-off member acknowledges no write");
    eprintln!("write on the cut-off member: {:?} after {write_took:?}", refused.message());
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(std::error::Error::source(&refused).is_none(), "the scheduler's answer, not a transport error");
    // A deploy checks the app with a current read first: it fails there, naming the
    // quorum; a write past that check would wait WRITE_TIMEOUT ("cannot reach a majority").
    assert!(refused.message().contains("quorum") || refused.message().contains("majority"), "{refused:?}");
    assert!(write_took < WRITE_TIMEOUT + slack, "write failed only after {write_took:?}");
    cluster.heal(leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clm_a_rotated_token_fails_on_every_member() {
    let Some(cluster) = TestCluster::start_replicated("clmtoken", 3, "").await else { return };
    let old = cluster.agent_token().to_string();
    let out = cluster.cli(&["cluster", "token", "agent", "--rotate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(new, old);

    for id in 1..=3 {
        let (status, log) =
            cluster.try_agent_join(id, &format!("clm-old-{id}"), &old, Duration::from_secs(15));
        assert!(
            status.is_some_and(|s| !s.success()),
            "the rotated-out token joined through member {id}:\n{log}"
        );
        assert!(log.contains("not valid here (rotated"), "member {id} says why:\n{log}");
    }
    // The new token joins through a follower (the refusals above were not of everything).
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let (status, log) = cluster.try_agent_join(follower, "clm-new", &new, Duration::from_secs(15));
    assert!(status.is_none(), "the current token joins through follower {follower}:\n{log}");
    assert!(log.contains("joined the cluster"), "{log}");
}
