//! Bounded build records: finished builds beyond the newest N per app leave the state,
//! with the request ids (client retry dedupe) that named them.
//!
//! Pruning runs inside [`State::apply`] whenever a build of an app finishes (pushed,
//! failed, cancelled, expired) and when the retention itself changes
//! ([`super::Command::SetBuildRetention`], proposed by the leader when its
//! `retention.finished_builds_per_app` differs from the state's), so it is
//! deterministic: every member removes the same builds at the same log index. N is
//! replicated state, not each member's own config, for the same reason.
//!
//! What stays whatever its age: unfinished builds, and the build of a release that is
//! the app's current one or still waits for its deploy outcome. Releases never go with
//! their build: a release carries everything a deploy or a rollback needs (digest,
//! repository, run spec, config). A build id that was issued but is no longer in the
//! state is answered with [`State::missing_build_reason`] rather than a bare "not found".

use std::collections::BTreeSet;

use super::{build_seq, DeployState, RequestOutcome, State};

/// Finished builds kept per app unless the scheduler config says otherwise.
pub const DEFAULT_KEEP_FINISHED_BUILDS: u64 = 50;

impl State {
    /// Finished builds kept per app (the replicated value; 0 in a state from an earlier
    /// version means the default).
    pub fn keep_finished_builds(&self) -> u64 {
        if self.keep_finished_builds == 0 {
            DEFAULT_KEEP_FINISHED_BUILDS
        } else {
            self.keep_finished_builds
        }
    }

    /// Removes `app`'s finished builds beyond the newest [`Self::keep_finished_builds`]
    /// (module doc for what stays). Returns how many went.
    pub(super) fn prune_finished_builds(&mut self, app: &str) -> usize {
        let keep = usize::try_from(self.keep_finished_builds()).unwrap_or(usize::MAX);
        let current = self.apps.get(app).map_or(0, |a| a.current_release);
        let pending: Vec<u64> = self
            .releases
            .get(app)
            .into_iter()
            .flatten()
            .filter(|r| r.deploy == DeployState::Pending)
            .map(|r| r.number)
            .collect();
        let mut finished: Vec<(u64, &str)> = self
            .builds
            .values()
            .filter(|b| b.app == app && b.state.is_terminal())
            .map(|b| (build_seq(&b.id), b.id.as_str()))
            .collect();
        if finished.len() <= keep {
            return 0;
        }
        // Newest first: the first `keep` stay.
        finished.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
        let doomed: Vec<String> = finished
            .into_iter()
            .skip(keep)
            .map(|(_, id)| id.to_string())
            .filter(|id| {
                let release = self.builds.get(id).and_then(|b| b.release);
                !release.is_some_and(|n| n == current || pending.contains(&n))
            })
            .collect();
        let count = doomed.len();
        for id in &doomed {
            self.builds.remove(id);
        }
        // A retried request of a pruned build would not find it anyway: its id goes too.
        if !doomed.is_empty() {
            let doomed: BTreeSet<&String> = doomed.iter().collect();
            let gone = |outcome: &RequestOutcome| matches!(outcome, RequestOutcome::Build(id) if doomed.contains(id));
            self.requests.retain(|_, outcome| !gone(outcome));
            let requests = &self.requests;
            self.request_order.retain(|r| requests.contains_key(r));
        }
        self.pruned_builds += count as u64;
        count
    }

    /// Prunes every app (after the retention changed).
    pub(super) fn prune_all_finished_builds(&mut self) -> usize {
        let apps: Vec<String> = self.apps.keys().cloned().collect();
        apps.iter().map(|app| self.prune_finished_builds(app)).sum()
    }

    /// Why a build id that is not in the state is missing: `Some` when the id was issued
    /// here (so it was removed by the retention, or with its app), `None` when it never
    /// existed.
    pub fn missing_build_reason(&self, id: &str) -> Option<String> {
        let seq = id.strip_prefix("b-")?.parse::<u64>().ok()?;
        if seq == 0 || seq > self.next_build || self.builds.contains_key(id) {
            return None;
        }
        Some(format!(
            "build {id} was removed by the build retention: the scheduler keeps the last {} finished \
             builds of each app (scheduler config retention.finished_builds_per_app) and none of a \
             deleted app; its release, if it made one, stays in `slipway releases APP`",
            self.keep_finished_builds()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn state_with(apps: &[&str]) -> State {
        let mut s = State::default();
        for app in apps {
            s.apply(&Command::CreateApp {
                name: app.to_string(),
                repo: "file:///r".into(),
                branch: "main".into(),
                at_ms: 1,
            });
        }
        s.apply(&Command::RegisterNode {
            id: "n1".into(),
            name: "node-1".into(),
            labels: Default::default(),
            at_ms: 1,
        });
        s
    }

    fn output(n: u64) -> BuildOutput {
        BuildOutput {
            git_sha: format!("{n:040x}"),
            digest: format!("sha256:{n:064x}"),
            repository: "127.0.0.1:5000/shop".into(),
            run: RunSpec { replicas: 1, ..Default::default() },
            ..Default::default()
        }
    }

    /// Queues, assigns, starts and finishes one build of `app`: pushed (a release, which is
    /// then deployed) or failed with a reason of a few hundred bytes.
    fn one_build(s: &mut State, app: &str, ok: bool) -> String {
        let Response::Build(b) = s.apply(&Command::QueueBuild {
            app: app.into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: Some(format!("req-{}", s.next_build + 1)),
            at_ms: 2,
        }) else {
            panic!("queue refused")
        };
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
        s.apply(&Command::StartBuild { build_id: b.id.clone(), attempt: 1 });
        let seq = build_seq(&b.id);
        let result = if ok { Ok(output(seq)) } else { Err(format!("step 3/7 failed: {}", "x".repeat(300))) };
        match s.apply(&Command::FinishBuild { build_id: b.id.clone(), attempt: 1, result, at_ms: 3 }) {
            Response::Release(r) => {
                s.apply(&Command::RecordDeploy { app: app.into(), release: r.number, result: Ok(()) });
            }
            Response::Build(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        b.id
    }

    #[test]
    fn only_the_newest_finished_builds_of_each_app_stay() {
        let mut s = state_with(&["shop", "blog"]);
        s.apply(&Command::SetBuildRetention { keep_finished_builds_per_app: 3 });
        for i in 0..6 {
            one_build(&mut s, "shop", i % 2 == 0);
        }
        one_build(&mut s, "blog", false);
        let shop: Vec<&str> = s.builds.values().filter(|b| b.app == "shop").map(|b| b.id.as_str()).collect();
        // b-1..b-6 are shop's: the newest three stay (b-5 is the current release's build).
        assert_eq!(shop, ["b-4", "b-5", "b-6"]);
        assert!(s.builds.contains_key("b-7"), "blog's only build stays");
        assert_eq!(s.pruned_builds, 3);
        // Releases stay.
        assert_eq!(s.releases["shop"].len(), 3);
        let reason = s.missing_build_reason("b-1").unwrap();
        assert!(reason.contains("retention") && reason.contains("last 3"), "{reason}");
        assert_eq!(s.missing_build_reason("b-5"), None, "kept");
        assert_eq!(s.missing_build_reason("b-99"), None, "never issued");
        assert_eq!(s.missing_build_reason("x"), None);
    }

    #[test]
    fn the_current_release_and_pending_deploys_keep_their_builds() {
        let mut s = state_with(&["shop"]);
        s.apply(&Command::SetBuildRetention { keep_finished_builds_per_app: 2 });
        let current = one_build(&mut s, "shop", true);
        // A pushed build whose deploy is still pending.
        let Response::Build(b) = s.apply(&Command::QueueBuild {
            app: "shop".into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: None,
            at_ms: 2,
        }) else {
            panic!()
        };
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
        s.apply(&Command::FinishBuild {
            build_id: b.id.clone(),
            attempt: 1,
            result: Ok(output(2)),
            at_ms: 3,
        });
        // An unfinished build.
        let Response::Build(running) = s.apply(&Command::QueueBuild {
            app: "shop".into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: None,
            at_ms: 2,
        }) else {
            panic!()
        };
        for _ in 0..4 {
            one_build(&mut s, "shop", false);
        }
        for id in [&current, &b.id, &running.id] {
            assert!(s.builds.contains_key(id), "{id} must stay");
        }
        // Lowering the retention prunes at once; raising it brings nothing back.
        s.apply(&Command::SetBuildRetention { keep_finished_builds_per_app: 1 });
        let finished = s.builds.values().filter(|b| b.state.is_terminal()).count();
        assert_eq!(finished, 3, "the newest, the current release's and the pending one's");
    }

    #[test]
    fn a_state_from_before_keeps_the_default() {
        let mut s = state_with(&["shop"]);
        s.keep_finished_builds = 0;
        assert_eq!(s.keep_finished_builds(), DEFAULT_KEEP_FINISHED_BUILDS);
        let json = serde_json::to_value(&s).unwrap();
        let mut obj = json.as_object().unwrap().clone();
        obj.remove("keep_finished_builds");
        obj.remove("pruned_builds");
        let back: State = serde_json::from_value(serde_json::Value::Object(obj)).unwrap();
        assert_eq!(back.keep_finished_builds(), DEFAULT_KEEP_FINISHED_BUILDS);
    }

    /// The snapshot (the state as `raft/state_machine.rs` serializes it) stays flat while
    /// finished builds pile up. Failed builds make no release; pushed ones each add a
    /// release, which stays (releases are not pruned here), so they are measured apart.
    #[test]
    fn the_snapshot_stays_flat_as_finished_builds_pile_up() {
        let size = |s: &State| serde_json::to_vec(s).unwrap().len();
        let mut s = state_with(&["shop"]);
        for _ in 0..100 {
            one_build(&mut s, "shop", false);
        }
        let after_100 = size(&s);
        for _ in 100..1_000 {
            one_build(&mut s, "shop", false);
        }
        let after_1000 = size(&s);
        println!("snapshot of the state after 100 failed builds: {after_100} bytes; after 1,000: {after_1000} bytes");
        assert_eq!(s.builds.len() as u64, DEFAULT_KEEP_FINISHED_BUILDS);
        assert_eq!(
            s.requests.len() as u64,
            DEFAULT_KEEP_FINISHED_BUILDS,
            "request ids of pruned builds go too"
        );
        // Slack: ids grow by a digit (b-99 → b-999, req-99 → req-999).
        assert!(after_1000 <= after_100 + 1_024, "{after_100} → {after_1000}");

        // Pushed builds: the builds are bounded, each release stays.
        let mut p = state_with(&["shop"]);
        let mut pushed = Vec::new();
        for n in [100, 1_000] {
            while p.next_build < n {
                one_build(&mut p, "shop", true);
            }
            pushed.push(size(&p));
        }
        let per_release = (pushed[1] - pushed[0]) / 900;
        println!(
            "pushed builds (each makes a release, and releases stay): after 100: {} bytes; after 1,000: {} bytes; {per_release} bytes per release",
            pushed[0], pushed[1]
        );
        assert_eq!(p.builds.len() as u64, DEFAULT_KEEP_FINISHED_BUILDS);
    }
}
