use std::time::Duration;

use super::apply::REMEMBERED_REQUESTS;
use super::*;

fn output(digest_char: char) -> BuildOutput {
    BuildOutput {
        git_sha: "abc".into(),
        digest: format!("sha256:{}", digest_char.to_string().repeat(64)),
        repository: "127.0.0.1:5000/shop".into(),
        run: RunSpec { replicas: 1, ..Default::default() },
        ..Default::default()
    }
}

fn state_with_app() -> State {
    let mut s = State::default();
    s.apply(&Command::CreateApp {
        name: "shop".into(),
        repo: "file:///r".into(),
        branch: "main".into(),
        at_ms: 1,
    });
    s.apply(&Command::RegisterNode {
        id: "n1".into(),
        name: "node-1".into(),
        labels: Default::default(),
        at_ms: 1,
    });
    s.apply(&Command::RegisterNode {
        id: "n2".into(),
        name: "node-2".into(),
        labels: Default::default(),
        at_ms: 1,
    });
    s
}

fn queue(s: &mut State, request_id: Option<&str>) -> Build {
    match s.apply(&Command::QueueBuild {
        app: "shop".into(),
        git_ref: "main".into(),
        no_cache: false,
        request_id: request_id.map(Into::into),
        at_ms: 2,
    }) {
        Response::Build(b) => b,
        other => panic!("unexpected {other:?}"),
    }
}

fn finish(s: &mut State, id: &str, attempt: u32, c: char) -> Response {
    s.apply(&Command::FinishBuild { build_id: id.into(), attempt, result: Ok(output(c)), at_ms: 3 })
}

fn deploy_ok(s: &mut State, number: u64) {
    s.apply(&Command::RecordDeploy { app: "shop".into(), release: number, result: Ok(()) });
}

#[test]
fn a_successful_build_records_exactly_one_release() {
    let mut s = state_with_app();
    let b = queue(&mut s, None);
    assert_eq!(b.id, "b-1");
    s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
    s.apply(&Command::StartBuild { build_id: b.id.clone(), attempt: 1 });
    let Response::Release(r) = finish(&mut s, &b.id, 1, 'a') else { panic!() };
    assert_eq!((r.number, r.node_id.as_str()), (1, "n1"));
    assert_eq!(r.image(), format!("127.0.0.1:5000/shop@sha256:{}", "a".repeat(64)));
    // A repeated result is stale and records nothing.
    assert_eq!(finish(&mut s, &b.id, 1, 'a'), Response::Stale);
    assert_eq!(s.releases["shop"].len(), 1);
    assert_eq!(s.builds[&b.id].state, BuildState::Pushed);
}

#[test]
fn a_late_result_from_a_lost_attempt_is_ignored() {
    let mut s = state_with_app();
    let b = queue(&mut s, None);
    s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
    s.apply(&Command::RequeueBuild {
        build_id: b.id.clone(),
        attempt: 1,
        reason: "node-1 down".into(),
        at_ms: 5,
    });
    s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n2".into(), attempt: 2 });
    assert_eq!(finish(&mut s, &b.id, 1, 'a'), Response::Stale);
    assert!(matches!(finish(&mut s, &b.id, 2, 'b'), Response::Release(_)));
    assert_eq!(s.releases["shop"].len(), 1);
    assert_eq!(s.releases["shop"][0].node_id, "n2");
}

#[test]
fn retried_requests_return_the_first_build() {
    let mut s = state_with_app();
    let a = queue(&mut s, Some("req-1"));
    let b = queue(&mut s, Some("req-1"));
    assert_eq!(a.id, b.id);
    assert_eq!(s.builds.len(), 1);
    assert_ne!(queue(&mut s, Some("req-2")).id, a.id);
}

#[test]
fn failures_record_the_reason_and_no_release() {
    let mut s = state_with_app();
    let b = queue(&mut s, None);
    s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
    let resp = s.apply(&Command::FinishBuild {
        build_id: b.id.clone(),
        attempt: 1,
        result: Err("Step 2/3 : RUN false: exit 1".into()),
        at_ms: 3,
    });
    let Response::Build(b) = resp else { panic!("{resp:?}") };
    assert_eq!(b.state, BuildState::Failed);
    assert!(b.error.unwrap().contains("RUN false"));
    assert!(!s.releases.contains_key("shop"));
}

/// Builds, records and deploys releases 1 (digest of `a`s) and 2 (of `b`s) of shop.
fn two_deployed_releases(s: &mut State) {
    for c in ['a', 'b'] {
        let b = queue(s, None);
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
        let Response::Release(r) = finish(s, &b.id, 1, c) else { panic!() };
        deploy_ok(s, r.number);
    }
}

#[test]
fn collected_images_are_history_and_no_rollback_target() {
    let mut s = state_with_app();
    two_deployed_releases(&mut s);
    let (old, current) = (s.releases["shop"][0].digest.clone(), s.releases["shop"][1].digest.clone());
    // The current release's image is never collected.
    let in_use = s.apply(&Command::MarkCollected { app: "shop".into(), digests: vec![current.clone()] });
    assert!(matches!(in_use, Response::Refused(ApplyError::ImageInUse { number: 2, .. })), "{in_use:?}");
    assert!(!s.releases["shop"][1].collected);
    assert_eq!(s.apply(&Command::MarkCollected { app: "shop".into(), digests: vec![old] }), Response::Done);
    assert!(s.releases["shop"][0].collected && !s.releases["shop"][1].collected);
    for to in [Some(1), None] {
        let refused = s.apply(&Command::Rollback { app: "shop".into(), to, request_id: None, at_ms: 9 });
        assert_eq!(
            refused,
            Response::Refused(ApplyError::ReleaseCollected { app: "shop".into(), number: 1 })
        );
    }
    assert_eq!(s.releases["shop"].len(), 2, "nothing recorded");
}

#[test]
fn rollback_records_a_new_release_with_an_earlier_digest() {
    let mut s = state_with_app();
    two_deployed_releases(&mut s);
    assert_eq!(s.apps["shop"].current_release, 2);
    let Response::Release(r3) =
        s.apply(&Command::Rollback { app: "shop".into(), to: None, request_id: Some("rb".into()), at_ms: 9 })
    else {
        panic!()
    };
    assert_eq!((r3.number, r3.rollback_of), (3, Some(1)));
    assert_eq!(r3.digest, s.releases["shop"][0].digest);
    // The same request again returns release 3, not a release 4.
    let again =
        s.apply(&Command::Rollback { app: "shop".into(), to: None, request_id: Some("rb".into()), at_ms: 9 });
    assert_eq!(again, Response::Release(r3));
    let missing =
        s.apply(&Command::Rollback { app: "shop".into(), to: Some(42), request_id: None, at_ms: 9 });
    assert_eq!(missing, Response::Refused(ApplyError::NoSuchRelease { app: "shop".into(), number: 42 }));
}

#[test]
fn a_failed_deploy_keeps_the_current_release() {
    let mut s = state_with_app();
    let b = queue(&mut s, None);
    s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
    finish(&mut s, &b.id, 1, 'a');
    s.apply(&Command::RecordDeploy { app: "shop".into(), release: 1, result: Err("rolled back".into()) });
    assert_eq!(s.apps["shop"].current_release, 0);
    assert_eq!(s.releases["shop"][0].deploy, DeployState::Failed);
}

#[test]
fn a_late_deploy_result_changes_nothing() {
    let mut s = state_with_app();
    for (i, c) in ['a', 'b'].into_iter().enumerate() {
        let b = queue(&mut s, None);
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
        finish(&mut s, &b.id, 1, c);
        assert_eq!(s.releases["shop"][i].deploy, DeployState::Pending);
    }
    deploy_ok(&mut s, 2);
    // A deposed leader's deploy of release 1 reports late: release 2 stays current.
    s.apply(&Command::RecordDeploy { app: "shop".into(), release: 1, result: Ok(()) });
    assert_eq!(s.apps["shop"].current_release, 2);
    let again = s.apply(&Command::RecordDeploy { app: "shop".into(), release: 2, result: Err("x".into()) });
    assert_eq!(again, Response::Stale);
    assert_eq!(s.releases["shop"][1].deploy, DeployState::Deployed);
}

#[test]
fn refusals_change_nothing() {
    let mut s = state_with_app();
    let before = s.clone();
    let resp = s.apply(&Command::QueueBuild {
        app: "nope".into(),
        git_ref: "main".into(),
        no_cache: false,
        request_id: None,
        at_ms: 1,
    });
    assert_eq!(resp, Response::Refused(ApplyError::NoSuchApp("nope".into())));
    assert_eq!(s, before);
    let resp =
        s.apply(&Command::CreateApp { name: "shop".into(), repo: "x".into(), branch: "b".into(), at_ms: 1 });
    assert_eq!(resp, Response::Refused(ApplyError::AppExists("shop".into())));
    assert_eq!(s, before);
}

#[test]
fn healthcheck_keeps_its_stored_shape_in_milliseconds() {
    let old = r#"{"cmd":["CMD","/bin/check"],"interval_ms":5000,"timeout_ms":1500,"retries":3,"start_period_ms":10000}"#;
    let hc: Healthcheck = serde_json::from_str(old).unwrap();
    assert_eq!(
        hc,
        Healthcheck {
            cmd: vec!["CMD".into(), "/bin/check".into()],
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(1500),
            retries: 3,
            start_period: Duration::from_secs(10),
        }
    );
    assert_eq!(serde_json::to_string(&hc).unwrap(), old);
}

#[test]
fn join_secrets_are_never_kept_in_clear() {
    let old = "ab".repeat(32);
    let mut s = State::default();
    // An entry an earlier version logged, replayed: kept as the secret's hash.
    let logged: Command =
        serde_json::from_str(&format!(r#"{{"SetJoinSecret":{{"role":"agent","secret":"{old}"}}}}"#)).unwrap();
    assert_eq!(s.apply(&logged), Response::Done);
    assert_eq!(s.join_secrets["agent"], JoinSecret::Sha256 { hash: sha256_hex(old.as_bytes()) });
    // Now: a nonce; a first use does not replace a token that exists, a rotation does.
    let nonce =
        |n: &str, replace| Command::SetJoinNonce { role: "scheduler".into(), nonce: n.into(), replace };
    s.apply(&nonce("n1", false));
    s.apply(&nonce("n2", false));
    assert_eq!(s.join_secrets["scheduler"], JoinSecret::Derived { nonce: "n1".into() });
    s.apply(&nonce("n3", true));
    assert_eq!(s.join_secrets["scheduler"], JoinSecret::Derived { nonce: "n3".into() });
    let snapshot = serde_json::to_string(&s).unwrap();
    assert!(!snapshot.contains(&old), "{snapshot}");
    assert_eq!(serde_json::from_str::<State>(&snapshot).unwrap(), s);
}

#[test]
fn a_state_from_before_reads_its_clear_join_secrets_as_hashes() {
    let (agent, scheduler) = ("0a".repeat(32), "1b".repeat(32));
    let before = format!(
        r#"{{"apps":{{}},"builds":{{}},"releases":{{}},"nodes":{{}},"next_build":3,"requests":{{}},
        "request_order":[],"join_secrets":{{"agent":"{agent}","scheduler":"{scheduler}"}}}}"#
    );
    let s: State = serde_json::from_str(&before).unwrap();
    assert_eq!(s.next_build, 3);
    assert_eq!(s.join_secrets["agent"], JoinSecret::from_clear(&agent));
    assert_eq!(s.join_secrets["scheduler"], JoinSecret::from_clear(&scheduler));
    let again = serde_json::to_string(&s).unwrap();
    assert!(!again.contains(&agent) && !again.contains(&scheduler), "{again}");
    // Older still: no join secrets at all.
    let older = before.split(r#","join_secrets""#).next().unwrap().to_string() + "}";
    assert!(serde_json::from_str::<State>(&older).unwrap().join_secrets.is_empty());
}

fn push(s: &mut State, commit: char, delivery: &str) -> Build {
    let cmd = Command::QueuePushBuild {
        app: "shop".into(),
        commit: commit.to_string().repeat(40),
        delivery: format!("hook:github:{delivery}"),
        at_ms: 5,
    };
    match s.apply(&cmd) {
        Response::Build(b) => b,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_burst_of_pushes_builds_one_running_and_one_queued_with_the_newest_commit() {
    let mut s = state_with_app();
    let first = push(&mut s, 'a', "d1");
    assert_eq!((first.id.as_str(), first.pushes, first.git_ref.as_str()), ("b-1", 1, &*"a".repeat(40)));
    // Not placed yet: the next push joins it.
    let joined = push(&mut s, 'b', "d2");
    assert_eq!((joined.id.as_str(), joined.pushes, joined.git_ref.as_str()), ("b-1", 2, &*"b".repeat(40)));
    s.apply(&Command::AssignBuild { build_id: "b-1".into(), node_id: "n1".into(), attempt: 1 });
    // Placed: the next push queues a second build, which waits for the first.
    let second = push(&mut s, 'c', "d3");
    assert_eq!(second.id, "b-2");
    assert!(s.push_build_waits(&s.builds["b-2"]));
    for (c, d) in [('d', "d4"), ('e', "d5")] {
        assert_eq!(push(&mut s, c, d).id, "b-2");
    }
    assert_eq!(s.builds.len(), 2);
    assert_eq!(s.builds["b-2"].git_ref, "e".repeat(40));
    assert_eq!(s.builds["b-2"].pushes, 3);
    // A redelivery of any of them changes nothing and names the build it made or joined.
    let before = s.clone();
    assert_eq!(push(&mut s, 'a', "d1").id, "b-1");
    assert_eq!(push(&mut s, 'c', "d3").id, "b-2");
    assert_eq!(s, before);
    // Once the first ends, the second may be placed.
    finish(&mut s, "b-1", 1, 'a');
    assert!(!s.push_build_waits(&s.builds["b-2"]));
}

#[test]
fn a_push_never_joins_an_operators_build_or_one_placed_before() {
    let mut s = state_with_app();
    let deploy = queue(&mut s, None);
    let pushed = push(&mut s, 'a', "d1");
    assert_ne!(pushed.id, deploy.id, "an operator's deploy keeps its ref");
    assert_eq!(s.builds[&deploy.id].git_ref, "main");
    assert!(!s.push_build_waits(&s.builds[&deploy.id]), "only builds from pushes wait");
    // Placed, then its node lost: queued again, but no longer joined by pushes.
    s.apply(&Command::AssignBuild { build_id: pushed.id.clone(), node_id: "n1".into(), attempt: 1 });
    s.apply(&Command::RequeueBuild { build_id: pushed.id.clone(), attempt: 1, reason: "x".into(), at_ms: 6 });
    let next = push(&mut s, 'b', "d2");
    assert_ne!(next.id, pushed.id);
    assert_eq!(s.builds[&pushed.id].git_ref, "a".repeat(40));
    // An unknown app is refused, changing nothing.
    let before = s.clone();
    let cmd = Command::QueuePushBuild {
        app: "nope".into(),
        commit: "a".repeat(40),
        delivery: "hook:gitlab:x".into(),
        at_ms: 7,
    };
    assert_eq!(s.apply(&cmd), Response::Refused(ApplyError::NoSuchApp("nope".into())));
    assert_eq!(s, before);
}

#[test]
fn rotating_the_webhook_bumps_its_generation() {
    let mut s = state_with_app();
    assert_eq!(s.apps["shop"].webhook_generation, 0);
    let Response::App(app) = s.apply(&Command::RotateWebhook { app: "shop".into() }) else { panic!() };
    assert_eq!(app.webhook_generation, 1);
    assert_eq!(
        s.apply(&Command::RotateWebhook { app: "nope".into() }),
        Response::Refused(ApplyError::NoSuchApp("nope".into()))
    );
    // A record from before the field reads as generation 0.
    let old = r#"{"name":"a","repo":"r","branch":"main","created_at_ms":1,"current_release":0}"#;
    assert_eq!(serde_json::from_str::<App>(old).unwrap().webhook_generation, 0);
}

#[test]
fn request_memory_is_bounded() {
    let mut s = state_with_app();
    for i in 0..(REMEMBERED_REQUESTS + 5) {
        s.remember(&Some(format!("r{i}")), RequestOutcome::Build("b-1".into()));
    }
    assert_eq!(s.requests.len(), REMEMBERED_REQUESTS);
    assert!(!s.requests.contains_key("r0"));
}
