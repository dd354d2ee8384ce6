//! Builds asked for by git pushes (`POST /hooks/APP`, [`super::Command::QueuePushBuild`]):
//! deduplicated by delivery id, coalesced while queued (a burst builds its newest commit
//! once), and held while an earlier build of the app runs.

use super::{ApplyError, Build, BuildState, RequestOutcome, Response, State};

impl State {
    /// [`Command::QueuePushBuild`]: join the app's queued, never placed build from a push
    /// (its commit becomes this one), or queue one.
    pub(super) fn queue_push_build(
        &mut self,
        app: &str,
        commit: &str,
        delivery: &str,
        at_ms: u64,
    ) -> Result<Response, ApplyError> {
        if let Some(RequestOutcome::Build(id)) = self.requests.get(delivery) {
            if let Some(build) = self.builds.get(id) {
                return Ok(Response::Build(build.clone()));
            }
        }
        self.app(app)?;
        let request_id = Some(delivery.to_string());
        let waiting = self
            .builds
            .values_mut()
            .find(|b| b.app == app && b.pushes > 0 && b.state == BuildState::Queued && b.attempt == 0);
        if let Some(build) = waiting {
            build.git_ref = commit.to_string();
            build.pushes += 1;
            let build = build.clone();
            self.remember(&request_id, RequestOutcome::Build(build.id.clone()));
            return Ok(Response::Build(build));
        }
        self.next_build += 1;
        let build = Build {
            id: format!("b-{}", self.next_build),
            app: app.to_string(),
            git_ref: commit.to_string(),
            no_cache: false,
            state: BuildState::Queued,
            node_id: None,
            attempt: 0,
            created_at_ms: at_ms,
            queued_at_ms: at_ms,
            finished_at_ms: None,
            error: None,
            output: None,
            release: None,
            pushes: 1,
        };
        self.builds.insert(build.id.clone(), build.clone());
        self.remember(&request_id, RequestOutcome::Build(build.id.clone()));
        Ok(Response::Build(build))
    }

    /// A queued build from a push waits while an earlier build of its app is placed or
    /// running, so a burst of pushes gives one build running and at most one queued
    /// (whose commit later pushes replace), never several built side by side.
    pub fn push_build_waits(&self, build: &Build) -> bool {
        build.pushes > 0
            && self.builds.values().any(|b| {
                b.app == build.app
                    && b.id != build.id
                    && matches!(b.state, BuildState::Assigned | BuildState::Running)
            })
    }
}
