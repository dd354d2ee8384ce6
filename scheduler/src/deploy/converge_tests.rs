//! Tests of [`observe`] and [`judge`] on hand-made engine answers: when a deploy has
//! converged, is still waiting, was rolled back, or failed; which tasks Swarm cannot place,
//! for how long, and what the deploy then does. No Docker.

use super::*;
use bollard::models::{
    ObjectVersion, ServiceSpec, ServiceUpdateStatus, TaskSpec, TaskSpecContainerSpec, TaskStatus,
};

const IMAGE: &str = "r/shop@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OLD: &str = "r/shop@sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn target() -> Target<'static> {
    Target { image: IMAGE, release: "7".into(), desired: 2 }
}

fn service(image: &str, state: Option<State>, message: &str) -> Service {
    Service {
        spec: Some(ServiceSpec {
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        update_status: state.map(|s| ServiceUpdateStatus {
            state: Some(s),
            message: Some(message.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(
    id: &str,
    image: &str,
    release: &str,
    desired: TaskState,
    state: TaskState,
    err: &str,
    index: u64,
) -> Task {
    Task {
        id: Some(id.into()),
        version: Some(ObjectVersion { index: Some(index) }),
        spec: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image.into()),
                labels: Some(HashMap::from([(LABEL_RELEASE.to_owned(), release.to_owned())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        desired_state: Some(desired),
        status: Some(TaskStatus {
            state: Some(state),
            err: (!err.is_empty()).then(|| err.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

use TaskState::{COMPLETE, FAILED, PENDING, READY, REJECTED, RUNNING, SHUTDOWN, STARTING};

fn release_service(image: &str, release: &str, state: Option<State>, message: &str) -> Service {
    let mut svc = service(image, state, message);
    let container =
        svc.spec.as_mut().unwrap().task_template.as_mut().unwrap().container_spec.as_mut().unwrap();
    container.labels = Some(HashMap::from([(LABEL_RELEASE.to_owned(), release.to_owned())]));
    svc
}

#[test]
fn converged_when_all_replicas_of_the_release_run() {
    let svc = release_service(IMAGE, "7", None, "");
    let tasks = [
        task("a", IMAGE, "7", RUNNING, RUNNING, "", 10),
        task("b", IMAGE, "7", RUNNING, STARTING, "", 11),
        // The previous release still running (start-first) does not count.
        task("c", OLD, "6", RUNNING, RUNNING, "", 5),
    ];
    let obs = observe(&svc, &tasks, &target(), &HashSet::new());
    assert_eq!(obs.running, 1);
    assert_eq!(judge(&obs, &target()), Verdict::Waiting);

    let tasks =
        [task("a", IMAGE, "7", RUNNING, RUNNING, "", 10), task("b", IMAGE, "7", RUNNING, RUNNING, "", 12)];
    let obs = observe(&svc, &tasks, &target(), &HashSet::new());
    assert_eq!(judge(&obs, &target()), Verdict::Converged { swarm_done: false });

    let svc = release_service(IMAGE, "7", Some(State::UPDATING), "update in progress");
    let obs = observe(&svc, &tasks, &target(), &HashSet::new());
    assert_eq!(judge(&obs, &target()), Verdict::Waiting, "still inside the monitor period");

    let svc = release_service(IMAGE, "7", Some(State::COMPLETED), "update completed");
    let obs = observe(&svc, &tasks, &target(), &HashSet::new());
    assert_eq!(judge(&obs, &target()), Verdict::Converged { swarm_done: true });
}

#[test]
fn same_image_with_an_older_release_label_is_not_ours() {
    let svc = release_service(IMAGE, "7", None, "");
    let tasks =
        [task("a", IMAGE, "6", RUNNING, RUNNING, "", 1), task("b", IMAGE, "6", RUNNING, RUNNING, "", 2)];
    let obs = observe(&svc, &tasks, &target(), &HashSet::new());
    assert_eq!(obs.running, 0);
    assert_eq!(judge(&obs, &target()), Verdict::Waiting);
}

#[test]
fn rolled_back_once_the_previous_release_runs_again() {
    let one = Target { image: IMAGE, release: "7".into(), desired: 1 };
    // Stop-first: the new task was stopped after failing, the previous one is not back yet.
    let mut tasks = vec![
        task(
            "a",
            IMAGE,
            "7",
            SHUTDOWN,
            FAILED,
            "task: non-zero exit (137): dockerexec: unhealthy container",
            20,
        ),
        task(
            "c",
            OLD,
            "6",
            RUNNING,
            PENDING,
            "no suitable node (host-mode port already in use on 1 node)",
            25,
        ),
    ];
    let svc = release_service(
        OLD,
        "6",
        Some(State::ROLLBACK_STARTED),
        "update rolled back due to failure or early termination of task a",
    );
    let obs = observe(&svc, &tasks, &one, &HashSet::new());
    assert_eq!(judge(&obs, &one), Verdict::Waiting);
    assert_eq!(
        obs.waiting,
        [("c".to_owned(), "no suitable node (host-mode port already in use on 1 node)".to_owned())]
    );
    assert_eq!(
        progress_line("s_shop", &obs, &one),
        "service s_shop: rolling back to release 6: 0/1 tasks running (update rollback_started)"
    );

    // The failed task's restart never got the port; the rollback marked it for shutdown.
    tasks.push(task(
        "d",
        IMAGE,
        "7",
        SHUTDOWN,
        PENDING,
        "no suitable node (host-mode port already in use on 1 node)",
        22,
    ));
    let obs = observe(&svc, &tasks, &one, &HashSet::new());
    assert!(obs.waiting[1].1.contains("never scheduled"), "{:?}", obs.waiting);
    tasks.pop();

    tasks[1] = task("c", OLD, "6", RUNNING, RUNNING, "", 26);
    let obs = observe(&svc, &tasks, &one, &HashSet::new());
    assert_eq!(judge(&obs, &one), Verdict::RolledBack { swarm_done: false });
    assert_eq!(
        rollback_reason(Some(&obs.update_message), &obs),
        "update rolled back due to failure or early termination of task a; \
         task error: task: non-zero exit (137): dockerexec: unhealthy container"
    );

    let svc = release_service(OLD, "6", Some(State::ROLLBACK_COMPLETED), "rollback completed");
    let obs = observe(&svc, &tasks, &one, &HashSet::new());
    assert_eq!(judge(&obs, &one), Verdict::RolledBack { swarm_done: true });

    let svc = release_service(OLD, "6", Some(State::ROLLBACK_PAUSED), "rollback paused");
    let obs = observe(&svc, &tasks, &one, &HashSet::new());
    assert!(matches!(judge(&obs, &one), Verdict::Failed(r) if r.contains("so did its rollback")));
}

#[test]
fn repeated_task_failures_fail_the_deploy_but_earlier_ones_do_not_count() {
    let svc = release_service(IMAGE, "7", None, "");
    let tasks = [
        task("a", IMAGE, "7", SHUTDOWN, REJECTED, "No such image: r/shop@sha256:0123", 3),
        task("b", IMAGE, "7", SHUTDOWN, COMPLETE, "", 5),
        task("c", IMAGE, "7", SHUTDOWN, FAILED, "task: non-zero exit (1)", 9),
    ];
    let obs = observe(&svc, &tasks, &target(), &HashSet::new());
    assert_eq!(obs.new_failures.len(), 3);
    assert_eq!(obs.new_failures[1].error, "the container exited with code 0");
    assert_eq!(
        judge(&obs, &target()),
        Verdict::Failed("3 tasks failed, the last with: task: non-zero exit (1)".into())
    );

    let earlier = HashSet::from(["a".to_owned()]);
    let obs = observe(&svc, &tasks, &target(), &earlier);
    assert_eq!(obs.new_failures.len(), 2);
    assert_eq!(judge(&obs, &target()), Verdict::Waiting);
}

#[test]
fn the_rollback_names_the_failure_that_caused_it_not_a_later_incidental_one() {
    let one = Target { image: IMAGE, release: "7".into(), desired: 1 };
    let svc = release_service(
        OLD,
        "6",
        Some(State::ROLLBACK_COMPLETED),
        "update rolled back due to failure or early termination of task b",
    );
    let unhealthy = "task: non-zero exit (137): dockerexec: unhealthy container";
    let tasks = [
        task("c", OLD, "6", RUNNING, RUNNING, "", 40),
        // The task that failed its healthcheck, then its restart, stopped by the rollback.
        task("b", IMAGE, "7", SHUTDOWN, FAILED, unhealthy, 20),
        task(
            "d",
            IMAGE,
            "7",
            SHUTDOWN,
            FAILED,
            "error while removing network: network s_default has active endpoints",
            30,
        ),
    ];
    let obs = observe(&svc, &tasks, &one, &HashSet::new());
    assert_eq!(obs.new_failures.last().unwrap().task_id, "d", "the incidental one ended last");
    let message = obs.update_message.clone();
    assert_eq!(rollback_reason(Some(&message), &obs), format!("{message}; task error: {unhealthy}"));

    // Without a task named by Swarm, the first failure is the cause.
    let tasks = [tasks[0].clone(), tasks[2].clone(), task("b", IMAGE, "7", SHUTDOWN, FAILED, unhealthy, 20)];
    let obs = observe(&svc, &tasks, &one, &HashSet::new());
    assert_eq!(
        rollback_reason(Some("update rolled back"), &obs),
        format!("update rolled back; task error: {unhealthy}")
    );

    let svc = release_service(
        IMAGE,
        "7",
        Some(State::PAUSED),
        "update paused due to failure or early termination of task b",
    );
    let obs = observe(&svc, &tasks, &one, &HashSet::new());
    assert!(
        matches!(judge(&obs, &one), Verdict::Failed(r) if r.ends_with(unhealthy)),
        "{:?}",
        judge(&obs, &one)
    );
}

const CONSTRAINTS: &str = "no suitable node (scheduling constraints not satisfied on 1 node)";
const PORT_IN_USE: &str = "no suitable node (host-mode port already in use on 1 node)";

#[test]
fn placement_errors_are_what_swarms_scheduler_says_when_no_node_fits() {
    for err in [
        CONSTRAINTS,
        PORT_IN_USE,
        "no suitable node (1 node not available for new tasks; scheduling constraints not satisfied on 2 nodes)",
        "no suitable node (insufficient resources on 3 nodes)",
        "insufficient resources on 1 node",
    ] {
        assert!(is_placement_error(err), "{err}");
    }
    for err in ["No such image: r/shop@sha256:0123", "task: non-zero exit (1)", "pending task scheduling", ""]
    {
        assert!(!is_placement_error(err), "{err}");
    }
    assert_eq!(
        placement_reason("2", CONSTRAINTS),
        "a task of release 2 cannot be placed: no suitable node (scheduling constraints not satisfied on 1 node)"
    );
}

#[test]
fn only_unscheduled_tasks_of_the_release_that_should_run_are_unplaceable() {
    let svc = release_service(IMAGE, "7", Some(State::UPDATING), "update in progress");
    let tasks = [
        task("a", IMAGE, "7", RUNNING, PENDING, CONSTRAINTS, 10),
        // Stop-first: the new task waits as READY while the old one lets go of the port.
        task("b", IMAGE, "7", READY, PENDING, PORT_IN_USE, 11),
        // Marked for shutdown (by a rollback): it will not be placed, and need not be.
        task("c", IMAGE, "7", SHUTDOWN, PENDING, CONSTRAINTS, 12),
        // Another release's task.
        task("d", OLD, "6", RUNNING, PENDING, PORT_IN_USE, 13),
        // Pending for another reason.
        task("e", IMAGE, "7", RUNNING, PENDING, "", 14),
        task("f", IMAGE, "7", RUNNING, RUNNING, "", 15),
    ];
    let obs = observe(&svc, &tasks, &target(), &HashSet::new());
    assert_eq!(obs.unplaceable, [("a".into(), CONSTRAINTS.into()), ("b".into(), PORT_IN_USE.into())]);
}

#[test]
fn the_deploy_gives_up_once_one_task_stayed_unplaceable_for_the_patience() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut watch = PlacementWatch::new(Duration::from_secs(3));
    let seen = |tasks: &[(&str, &str)]| -> Vec<(String, String)> {
        tasks.iter().map(|(id, err)| ((*id).to_owned(), (*err).to_owned())).collect()
    };
    let (a, b) = (("a", PORT_IN_USE), ("b", CONSTRAINTS));
    assert_eq!(watch.check(&seen(&[a]), at(0)), None);
    assert_eq!(watch.check(&seen(&[a]), at(2_500)), None);
    // a was placed (a stop-first update's port came free); b starts its own count.
    assert_eq!(watch.check(&seen(&[b]), at(3_000)), None);
    assert_eq!(watch.check(&[], at(3_500)), None);
    assert_eq!(watch.check(&seen(&[b]), at(4_000)), None, "the count starts over");
    assert_eq!(watch.check(&seen(&[a, b]), at(6_500)), None);
    assert_eq!(watch.check(&seen(&[a, b]), at(7_000)), Some(CONSTRAINTS.to_owned()));
    // Swarm's latest error is the one reported.
    let b_now = ("b", "insufficient resources on 1 node");
    assert_eq!(watch.check(&seen(&[b_now]), at(7_500)), Some(b_now.1.to_owned()));
}

#[test]
fn an_unplaceable_update_is_rolled_back_and_a_first_deploy_fails() {
    let replaced = |image: &str, release: &str| Replaced { image: image.into(), release: release.into() };
    assert_eq!(give_up(None, &target()), GiveUp::Fail, "created by this deploy");
    assert_eq!(give_up(Some(&replaced(OLD, "6")), &target()), GiveUp::RollBack { to_release: "6".into() });
    assert_eq!(
        give_up(Some(&replaced(IMAGE, "6")), &target()),
        GiveUp::RollBack { to_release: "6".into() },
        "same image, another release"
    );
    assert_eq!(give_up(Some(&replaced(IMAGE, "7")), &target()), GiveUp::Fail, "the same release again");

    // After Swarm swapped in the previous spec, the rollback reason starts with the placement error.
    let one = Target { image: IMAGE, release: "7".into(), desired: 1 };
    let svc = release_service(OLD, "6", Some(State::ROLLBACK_COMPLETED), "rollback completed");
    let tasks = [
        task("a", IMAGE, "7", SHUTDOWN, PENDING, CONSTRAINTS, 10),
        task("c", OLD, "6", RUNNING, RUNNING, "", 5),
    ];
    let obs = observe(&svc, &tasks, &one, &HashSet::new());
    assert_eq!(judge(&obs, &one), Verdict::RolledBack { swarm_done: true });
    let reason = placement_reason("7", CONSTRAINTS);
    assert_eq!(rollback_reason(Some(&reason), &obs), reason);
    assert!(obs.unplaceable.is_empty());
}
