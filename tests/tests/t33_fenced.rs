//! Faults the way a trusted system's own tests inject them, on a three-member cluster
//! (each `slipway-scheduler` a process in its own network namespace,
//! [`TestCluster::start_replicated`]):
//!
//! - supervision: a panic injected into the leader's dispatcher ends the leader's
//!   process with one line naming the task, and another member leads within a bound
//!   derived from the raft timing;
//! - fencing: a leader cut off from its peers (but not from the Swarm manager) never
//!   moves a service to an older release than the one the new leader deployed.

use std::time::{Duration, Instant};

use slipway_tests::TestCluster;

/// Raft timing of these clusters (heartbeat, election timeout range), in ms.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MIN_MS: u64 = 600;
const ELECTION_MAX_MS: u64 = 1200;

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
async fn a_panic_in_the_leaders_dispatcher_ends_its_process_and_another_member_leads() {
    // Read by every member's debug build (the hook is compiled into debug builds only):
    // the member whose id the file holds panics in its dispatcher's next pass.
    let trigger_dir = tempfile::tempdir().expect("tempdir");
    let trigger = trigger_dir.path().join("panic-dispatcher");
    std::env::set_var("SLIPWAY_TEST_PANIC_DISPATCHER", &trigger);
    let Some(cluster) = TestCluster::start_replicated("fenpanic", 3, &raft_settings()).await else { return };
    let leader = cluster.leader().await;

    let injected = Instant::now();
    std::fs::write(&trigger, leader.to_string()).expect("write the trigger");
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
