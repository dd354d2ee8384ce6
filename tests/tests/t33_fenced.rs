//! Faults the way a trusted system's own tests inject them, on a three-member cluster
//! (each `slipway-scheduler` a process in its own network namespace,
//! [`TestCluster::start_replicated`]), one cluster for both scenarios (starts are slow):
//!
//! - fencing: a leader cut off from its peers (but not from the Swarm manager) aborts
//!   the deploy it was running, and the service never moves to an older release than
//!   the one the new leader deployed;
//! - supervision: a panic injected into the leader's dispatcher ends the leader's
//!   process with one line naming the task, and another member leads within a bound
//!   derived from the raft timing.
//!
//! Both switches are read by every member's debug build (compiled into debug builds
//! only): `SLIPWAY_TEST_HOLD_DEPLOY` and `SLIPWAY_TEST_PANIC_DISPATCHER` each name a
//! file, and the member whose id the file holds holds its next deploy right before the
//! Swarm update, or panics in its dispatcher's next pass.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_proto as pb;
use slipway_testkit::{docker_cli, GitRepo};
use slipway_tests::TestCluster;

/// Raft timing of these clusters (heartbeat, election timeout range), in ms.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MIN_MS: u64 = 600;
const ELECTION_MAX_MS: u64 = 1200;

/// What a deploy says when its member cannot prove it still leads
/// (`slipway_scheduler::dispatch`'s `ABORTED`).
const ABORTED: &str = "deploy aborted: this member cannot prove it still leads";
/// How often a running deploy re-confirms its leadership (`LEADERSHIP_RECHECK`).
const LEADERSHIP_RECHECK: Duration = Duration::from_secs(1);
/// The bound on one leadership confirmation (the store's `WRITE_TIMEOUT`).
const CONFIRM_BOUND: Duration = Duration::from_secs(10);

fn raft_settings() -> String {
    format!(
        "heartbeat_ms = {HEARTBEAT_MS}\nelection_timeout_min_ms = {ELECTION_MIN_MS}\n\
         election_timeout_max_ms = {ELECTION_MAX_MS}"
    )
}

/// The dispatcher passes at least once a second; the followers elect a leader once an
/// election timeout passes without heartbeats; a split vote costs another timeout.
/// Allowed: the dispatcher's second plus three election timeouts, plus one for the
/// processes on this shared machine.
fn failover_bound() -> Duration {
    Duration::from_secs(1) + Duration::from_millis(4 * ELECTION_MAX_MS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fenced_deploys_and_supervised_dispatcher_on_three_members() {
    let switches = tempfile::tempdir().expect("tempdir");
    let hold = switches.path().join("hold-deploy");
    let trigger = switches.path().join("panic-dispatcher");
    let env = [
        ("SLIPWAY_TEST_HOLD_DEPLOY", hold.to_str().expect("utf-8 path")),
        ("SLIPWAY_TEST_PANIC_DISPATCHER", trigger.to_str().expect("utf-8 path")),
    ];
    let Some(cluster) = TestCluster::start_replicated_with_env("fen33", 3, &raft_settings(), &env).await
    else {
        return;
    };
    a_cut_off_leader_aborts_its_deploy_and_the_service_never_goes_back_a_release(&cluster, &hold).await;
    a_panic_in_the_leaders_dispatcher_ends_its_process_and_another_member_leads(&cluster, &trigger).await;
}

/// Holds a deploy on the leader right before its Swarm update, cuts the leader off from
/// its peers (not from the Swarm manager: the engine is a local socket), deploys a newer
/// release through the new leader, then lets the held deploy go on. The old leader's
/// deploy must abort on its own leadership re-check, and the service's release label,
/// read all along, must never go down.
async fn a_cut_off_leader_aborts_its_deploy_and_the_service_never_goes_back_a_release(
    cluster: &TestCluster,
    hold: &std::path::Path,
) {
    // The example names itself `hello`; the stack (`fen33`) keeps it apart from other tests.
    const APP: &str = "hello";
    let repo = GitRepo::from_example("hello");
    cluster.create_app(APP, &repo.url()).await.expect("create the app");
    let first = cluster.deploy(APP, None).await;
    assert_eq!(first.live().number, 1);
    eprintln!("release 1 built and deployed in {:?}", first.elapsed);
    let service = cluster.service(APP);

    // The release label of the service, read the whole time from here on.
    let watch = LabelWatch::start(&service);
    let leader = cluster.leader().await;
    std::fs::write(hold, leader.to_string()).expect("write the hold switch");
    {
        // Release 2 (a config change, no build): its deploy starts on the leader and is
        // held. The stream is not followed: the held deploy will not finish here.
        let mut client = cluster.member_client(leader).await.expect("connect to the leader");
        let req = pb::SetConfigRequest {
            app: APP.into(),
            set: [("GREETING".to_string(), "from the old leader".to_string())].into(),
            ..Default::default()
        };
        client.set_config(req).await.expect("release 2 recorded");
    }
    wait_for_log(cluster, leader, "SLIPWAY_TEST_HOLD_DEPLOY holds this deploy", Duration::from_secs(30))
        .await;

    cluster.isolate(leader);
    let cut = Instant::now();
    let new_leader = loop {
        let mut leaders = Vec::new();
        for id in cluster.member_ids().into_iter().filter(|&id| id != leader) {
            if let Ok(status) = cluster.status_of(id).await {
                if status.state == "Leader" && status.node_id == id {
                    leaders.push(id);
                }
            }
        }
        if let [id] = leaders[..] {
            break id;
        }
        assert!(cut.elapsed() < failover_bound(), "no member leads {:?} after the cut", cut.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("leader {leader} cut off; member {new_leader} leads after {:?}", cut.elapsed());

    // A newer release through the new leader (it finds release 2 pending as well, and
    // deploys the newest).
    let newer = cluster.set_config_via(new_leader, APP, &[("GREETING", "from the new leader")]).await;
    let newer = newer.live().number;
    assert!(newer >= 3, "the new leader's release is {newer}");

    // Let the held deploy go on, and wait until it ended one way or another: aborted,
    // or (were it not fenced by its re-checks) failed or deployed and unrecorded once its
    // write to the lost quorum timed out.
    std::fs::write(hold, "").expect("release the hold");
    let released = Instant::now();
    let bound = LEADERSHIP_RECHECK + CONFIRM_BOUND + Duration::from_secs(10);
    let ends = [ABORTED, "deploy failed", "release deployed", "could not be recorded"];
    let outcome = loop {
        let log = strip_ansi(&cluster.scheduler_log(leader));
        let after_hold = log.split_once(HELD).map(|(_, rest)| rest.to_owned()).unwrap_or_default();
        if let Some(line) = after_hold.lines().find(|l| ends.iter().any(|end| l.contains(end))) {
            break Some(line.to_owned());
        }
        if released.elapsed() > bound {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Healed: the old leader steps down, one leader is agreed, the newer release stays.
    cluster.heal(leader);
    let agreed = cluster.leader().await;
    let releases = cluster.releases(APP).await;
    let current = releases.iter().max_by_key(|r| r.number).expect("releases");
    assert_eq!(current.number, newer, "{releases:?}");
    assert_eq!(current.deploy_state, pb::DeployState::Deployed as i32, "{releases:?}");
    let seen = watch.stop();
    eprintln!(
        "leader {leader} cut off with release 2's deploy held; member {new_leader} deployed release \
         {newer}; after healing member {agreed} leads; release labels seen on {service}: {seen:?}"
    );

    let labels: Vec<u64> = seen.iter().map(|(_, label)| label.parse().expect("a release number")).collect();
    assert_eq!(labels.first(), Some(&1), "{seen:?}");
    assert!(labels.windows(2).all(|w| w[0] <= w[1]), "the service went back a release: {seen:?}");
    assert_eq!(labels.last(), Some(&newer), "{seen:?}");
    let log = cluster.scheduler_log(leader);
    let Some(outcome) = outcome else {
        panic!("the held deploy did not end within {bound:?} of its release:\n{log}");
    };
    assert!(outcome.contains(ABORTED), "the old leader's held deploy ended with: {outcome}\n{log}");
}

/// The hook's line when it holds a deploy.
const HELD: &str = "SLIPWAY_TEST_HOLD_DEPLOY holds this deploy";

/// `text` without the terminal colour codes the members' log lines carry.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits up to `bound` until member `id`'s log has a line containing `needle`.
async fn wait_for_log(cluster: &TestCluster, id: u64, needle: &str, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let log = strip_ansi(&cluster.scheduler_log(id));
        if log.lines().any(|l| l.contains(needle)) {
            return;
        }
        assert!(Instant::now() < deadline, "no line {needle:?} in member {id}'s log after {bound:?}:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The release label (`io.slipway.release`) of a service, read over and over from the
/// Swarm manager in a thread until stopped: each change, with when it was seen.
struct LabelWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Duration, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LabelWatch {
    fn start(service: &str) -> LabelWatch {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (thread_stop, thread_seen, service) = (stop.clone(), seen.clone(), service.to_owned());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let format = "{{index .Spec.Labels \"io.slipway.release\"}}";
            while !thread_stop.load(Ordering::SeqCst) {
                let label = docker_cli(&["service", "inspect", "--format", format, &service])
                    .unwrap_or_else(|e| panic!("inspect service {service}: {e}"));
                let label = label.trim().to_owned();
                let mut seen = thread_seen.lock().expect("label lock");
                if seen.last().is_none_or(|(_, last): &(Duration, String)| *last != label) {
                    seen.push((started.elapsed(), label));
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        LabelWatch { stop, seen, thread: Some(thread) }
    }

    /// Stops reading (after one more read); every change seen.
    fn stop(mut self) -> Vec<(Duration, String)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the label watch panicked");
        }
        self.seen.lock().expect("label lock").clone()
    }
}

/// Makes the leader's dispatcher panic: its process must exit, naming the task and the
/// panic, and another member lead within [`failover_bound`].
async fn a_panic_in_the_leaders_dispatcher_ends_its_process_and_another_member_leads(
    cluster: &TestCluster,
    trigger: &std::path::Path,
) {
    let leader = cluster.leader().await;

    let injected = Instant::now();
    std::fs::write(trigger, leader.to_string()).expect("write the trigger");
    let status = loop {
        if let Some(status) = cluster.member_exited(leader) {
            break status;
        }
        assert!(
            injected.elapsed() < failover_bound(),
            "leader {leader} still runs {:?} after the injected panic\n{}",
            injected.elapsed(),
            cluster.scheduler_log(leader)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited = injected.elapsed();
    assert_eq!(status.code(), Some(slipway_common::supervise::EXIT_TASK_FAILED), "{status:?}");
    let log = cluster.scheduler_log(leader);
    assert!(
        log.lines().any(|l| l.contains("supervised task dispatcher died")
            && l.contains("it panicked")
            && l.contains("SLIPWAY_TEST_PANIC_DISPATCHER")),
        "no line naming the task and the cause in leader {leader}'s log:\n{log}"
    );

    let new_leader = loop {
        let mut leaders = Vec::new();
        for id in cluster.running_members() {
            if let Ok(status) = cluster.status_of(id).await {
                if status.state == "Leader" && status.node_id == id {
                    leaders.push(id);
                }
            }
        }
        if let [id] = leaders[..] {
            break id;
        }
        assert!(
            injected.elapsed() < failover_bound(),
            "no member leads {:?} after the injected panic (bound {:?})",
            injected.elapsed(),
            failover_bound()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let failover = injected.elapsed();
    assert_ne!(new_leader, leader);
    eprintln!(
        "injected a panic into leader {leader}'s dispatcher: the process exited after {exited:?}, \
         member {new_leader} leads after {failover:?} (bound {:?})",
        failover_bound()
    );
    // The new leader's /readyz speaks for its dispatcher.
    let deadline = Instant::now() + failover_bound();
    loop {
        let response = cluster.http_get(new_leader, "/readyz").await;
        let ok = response.status().is_success();
        let body = response.text().await.unwrap_or_default();
        if ok && body.contains("dispatcher alive, last pass") {
            break;
        }
        assert!(Instant::now() < deadline, "the new leader's /readyz: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
