//! The chaos run, short and seed-fixed (see `slipway_tests::chaos`; the long run is
//! the `chaos` binary): a 3-member cluster of the real schedulers in network
//! namespaces, 4 clients, 12 nemesis events among every fault kind; the history must
//! be linearizable, no acknowledged write lost or applied twice, every member
//! converged and answering.
//!
//! And the checker must be able to fail: the same run with the schedulers' test-only
//! switch `SLIPWAY_TEST_UNSAFE_LOCAL_READS=1` (reads from a member's own state, without
//! the leader check) and isolations only must report a violation.

use std::time::Duration;

use slipway_scheduler::raft::store::UNSAFE_LOCAL_READS_ENV;
use slipway_tests::chaos::{self, ChaosConfig, Fault};

/// The suite's seed: change it only with a reason (a failure replays with it).
const SEED: u64 = 3636;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_short_run_finds_no_violation() {
    let config = ChaosConfig::new("chs-suite", SEED, 12);
    let Some(report) = chaos::run(&config).await else { return };
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_eq!(report.injected.values().sum::<usize>(), 12);
    assert_eq!(report.survived, report.injected, "{report}");
    let acked = |kind| report.outcomes.get(&(kind, "ok")).copied().unwrap_or(0);
    assert!(acked("create") > 0 && acked("get") > 0 && acked("deploy") > 0, "too few operations: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_catches_stale_reads_of_the_unsafe_switch() {
    // Whether a client reads from the isolated old leader after the new one took a write
    // is up to timing: one 4-event run missed it once in CI. Up to three runs (seeds
    // SEED, SEED+1, SEED+2) give the switch's stale reads three chances to show; the
    // checker must name them in one of them (a run with no stale read proves nothing).
    let mut reports = Vec::new();
    for attempt in 0..3 {
        let mut config = ChaosConfig::new(&format!("chs-unsafe{attempt}"), SEED + attempt, 4);
        config.faults = vec![Fault::Isolate];
        config.hold = (Duration::from_secs(5), Duration::from_secs(6));
        config.member_env.push((UNSAFE_LOCAL_READS_ENV.into(), "1".into()));
        let Some(report) = chaos::run(&config).await else { return };
        println!("{report}");
        if report.violations.iter().any(|v| v.starts_with("not linearizable")) {
            return;
        }
        reports.push(report.to_string());
    }
    panic!(
        "the checker missed the stale reads of {UNSAFE_LOCAL_READS_ENV}=1 in 3 runs: {}",
        reports.join("\n")
    );
}
