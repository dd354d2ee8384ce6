//! The chaos run's sequential specification: one app's slice of the scheduler's state,
//! as the control API shows it, for [`crate::linearizability`].
//!
//! Every write carries the id of the operation that made it, so reads tell which write
//! they see: a create's repository URL is `https://git.invalid/chaos/c<ID>.git`, a
//! deploy's git ref `chaos-d<ID>`. An app key's state is then "absent" or "created by
//! operation C, holding the builds queued by deploys D1, D2, …".

use std::collections::BTreeSet;

use crate::linearizability::Model;

/// What a client asked about one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `CreateApp` with the repository URL naming operation `id`.
    Create {
        /// The operation's id.
        id: u64,
    },
    /// `DeleteApp`.
    Delete,
    /// `Deploy` (a `QueueBuild`) of the git ref naming operation `id`, request id unique too.
    Deploy {
        /// The operation's id.
        id: u64,
    },
    /// `GetApp` (or this app's part of a `ListApps`).
    Get,
    /// `ListBuilds` of the app.
    ListBuilds,
}

/// What the client heard (definite refusals included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The app was created.
    Created,
    /// `AlreadyExists`.
    Exists,
    /// The app was deleted.
    Deleted,
    /// `NotFound`: no such app.
    NotFound,
    /// `FailedPrecondition`: the app has a build or deploy in flight.
    Busy,
    /// The build was queued.
    Queued,
    /// The app exists, created by operation `create`.
    App {
        /// The create operation that made it.
        create: u64,
    },
    /// The app exists with builds of these deploy operations.
    Builds(BTreeSet<u64>),
}

/// One app's state: absent, or created by an operation with its builds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppState {
    /// The create operation that made it.
    pub create: u64,
    /// The deploy operations whose builds it holds.
    pub builds: BTreeSet<u64>,
}

/// The model: per app, `Option<AppState>`.
pub struct AppModel;

impl Model for AppModel {
    type Input = Input;
    type Output = Output;
    type State = Option<AppState>;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, input: &Input, output: Option<&Output>) -> Vec<Self::State> {
        use Output as O;
        let same = vec![state.clone()];
        match (input, state, output) {
            (Input::Create { id }, None, Some(O::Created) | None) => {
                vec![Some(AppState { create: *id, builds: BTreeSet::new() })]
            }
            (Input::Create { .. }, Some(_), Some(O::Exists) | None) => same,
            (Input::Delete, Some(_), Some(O::Deleted)) => vec![None],
            // Refused while a build is queued: the model does not know the builds'
            // phases (queued ones time out), so any app with builds may be busy.
            (Input::Delete, Some(app), Some(O::Busy)) if !app.builds.is_empty() => same,
            (Input::Delete, Some(app), None) if !app.builds.is_empty() => vec![None, state.clone()],
            (Input::Delete, Some(_), None) => vec![None],
            (Input::Delete, None, Some(O::NotFound) | None) => same,
            (Input::Deploy { id }, Some(app), Some(O::Queued) | None) => {
                let mut app = app.clone();
                app.builds.insert(*id);
                vec![Some(app)]
            }
            (Input::Deploy { .. }, None, Some(O::NotFound) | None) => same,
            (Input::Get | Input::ListBuilds, _, None) => same,
            (Input::Get, Some(app), Some(O::App { create })) if app.create == *create => same,
            (Input::ListBuilds, Some(app), Some(O::Builds(b))) if app.builds == *b => same,
            (Input::Get | Input::ListBuilds, None, Some(O::NotFound)) => same,
            _ => vec![],
        }
    }
}

/// The repository URL a create operation `id` uses.
pub fn repo_url(id: u64) -> String {
    format!("https://git.invalid/chaos/c{id}.git")
}

/// The create operation a repository URL names, if it is one of ours.
pub fn create_of(repo: &str) -> Option<u64> {
    repo.strip_prefix("https://git.invalid/chaos/c")?.strip_suffix(".git")?.parse().ok()
}

/// The git ref a deploy operation `id` queues.
pub fn git_ref(id: u64) -> String {
    format!("chaos-d{id}")
}

/// The deploy operation a git ref names, if it is one of ours.
pub fn deploy_of(git_ref: &str) -> Option<u64> {
    git_ref.strip_prefix("chaos-d")?.parse().ok()
}

/// Deploy operations listed more than once (a write applied twice).
pub fn duplicates(deploys: &[u64]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    let mut twice = BTreeSet::new();
    for d in deploys {
        if !seen.insert(*d) {
            twice.insert(*d);
        }
    }
    twice.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::{check, Operation, DEFAULT_STEP_BUDGET};

    type Op = Operation<Input, Output>;

    fn op(id: u64, client: usize, input: Input, output: Option<Output>, call: u64, ret: u64) -> Op {
        let ret = output.as_ref().map(|_| ret);
        Operation { id, client, key: "app".into(), input, output, call, ret }
    }

    fn builds(ids: &[u64]) -> Output {
        Output::Builds(ids.iter().copied().collect())
    }

    fn offending(history: &[Op]) -> Vec<u64> {
        let report = check(&AppModel, history, DEFAULT_STEP_BUDGET);
        assert_eq!(report.violations.len(), 1, "expected one violation: {report:?}");
        eprintln!("{}", report.violations[0]);
        report.violations[0].offending.iter().map(|o| o.id).collect()
    }

    /// Create, two concurrent deploys (one unknown), reads, a refused and an accepted
    /// delete, reads overlapping the delete: linearizable.
    fn good_history() -> Vec<Op> {
        vec![
            op(1, 0, Input::Create { id: 1 }, Some(Output::Created), 0, 10),
            op(2, 1, Input::Get, Some(Output::App { create: 1 }), 11, 12),
            op(3, 0, Input::Deploy { id: 3 }, Some(Output::Queued), 20, 30),
            op(4, 1, Input::Deploy { id: 4 }, None, 21, 0),
            op(5, 2, Input::ListBuilds, Some(builds(&[3])), 25, 26),
            op(6, 2, Input::ListBuilds, Some(builds(&[3, 4])), 40, 41),
            op(7, 3, Input::Delete, Some(Output::Busy), 42, 43),
            op(8, 3, Input::Delete, Some(Output::Deleted), 50, 60),
            op(9, 2, Input::Get, Some(Output::App { create: 1 }), 51, 52),
            op(10, 1, Input::Get, Some(Output::NotFound), 55, 70),
            op(11, 0, Input::Create { id: 11 }, Some(Output::Created), 80, 90),
            op(12, 2, Input::ListBuilds, Some(builds(&[])), 91, 92),
        ]
    }

    #[test]
    fn a_linearizable_history_passes() {
        let report = check(&AppModel, &good_history(), DEFAULT_STEP_BUDGET);
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.linearizable_keys, 1);
    }

    #[test]
    fn a_stale_read_is_reported_with_the_read() {
        // The read starts after the delete was acknowledged but still sees the app.
        let mut h = good_history();
        h.push(op(13, 3, Input::Get, Some(Output::App { create: 1 }), 61, 62));
        assert_eq!(offending(&h), vec![13]);
    }

    #[test]
    fn a_lost_write_is_reported_with_the_read_missing_it() {
        // The acknowledged deploy 3 is missing from a read that started after it.
        let h = vec![
            op(1, 0, Input::Create { id: 1 }, Some(Output::Created), 0, 10),
            op(3, 0, Input::Deploy { id: 3 }, Some(Output::Queued), 20, 30),
            op(5, 2, Input::ListBuilds, Some(builds(&[])), 35, 36),
        ];
        assert_eq!(offending(&h), vec![5]);
        // Same for an acknowledged create that a later read does not find.
        let h = vec![
            op(1, 0, Input::Create { id: 1 }, Some(Output::Created), 0, 10),
            op(2, 1, Input::Get, Some(Output::NotFound), 11, 12),
        ];
        assert_eq!(offending(&h), vec![2]);
    }

    #[test]
    fn a_write_applied_twice_is_reported() {
        // Create 1 is seen again after it was deleted and app 5 created: create 1 took
        // effect twice (a replayed request).
        let h = vec![
            op(1, 0, Input::Create { id: 1 }, Some(Output::Created), 0, 10),
            op(2, 1, Input::Delete, Some(Output::Deleted), 11, 20),
            op(3, 2, Input::Get, Some(Output::App { create: 1 }), 30, 31),
        ];
        assert_eq!(offending(&h), vec![3]);
        // A deploy listed twice is caught before the checker: a set cannot show it.
        assert_eq!(duplicates(&[3, 4, 3]), vec![3]);
        assert!(duplicates(&[3, 4]).is_empty());
    }

    #[test]
    fn an_unknown_create_may_appear_late_but_only_once() {
        let seen_late = vec![
            op(1, 0, Input::Create { id: 1 }, None, 0, 0),
            op(2, 1, Input::Get, Some(Output::NotFound), 5, 6),
            op(3, 1, Input::Get, Some(Output::App { create: 1 }), 100, 101),
        ];
        assert!(check(&AppModel, &seen_late, DEFAULT_STEP_BUDGET).ok());
        let mut gone_and_back = seen_late.clone();
        gone_and_back.push(op(4, 2, Input::Delete, Some(Output::Deleted), 110, 111));
        gone_and_back.push(op(5, 1, Input::Get, Some(Output::App { create: 1 }), 120, 121));
        assert_eq!(offending(&gone_and_back), vec![5]);
    }

    #[test]
    fn ids_round_trip_through_urls_and_refs() {
        assert_eq!(create_of(&repo_url(42)), Some(42));
        assert_eq!(deploy_of(&git_ref(7)), Some(7));
        assert_eq!(create_of("https://example.com/x.git"), None);
        slipway_proto::validate::repo_url(&repo_url(u64::MAX)).expect("a valid repository URL");
        slipway_proto::validate::git_ref(&git_ref(u64::MAX)).expect("a valid git ref");
    }
}
