//! App config and scale: the [`Command::SetConfig`] and [`Command::Scale`] halves of the
//! state machine. Both change the app record (its config, its scaled replicas) and, when
//! the app has an image, record in the same command a release that runs that image with
//! the change (no build: same digest, same build id, `change` says what changed). So a
//! change is one raft entry: it happens whole, or is refused and nothing changed.
//!
//! The image a change rolls out is the app's newest release that did not fail: the one
//! serving, or one still being deployed (then the change supersedes it with the same
//! image, and the code deploy is not lost). Builds take the app's config and scale when
//! they finish, so a code deploy keeps both.

use std::collections::BTreeMap;

use slipway_common::manifest::MAX_REPLICAS;
use slipway_proto::validate;

use super::{ApplyError, DeployState, PhaseTimings, Release, ReleaseChange, RequestOutcome, Response, State};

/// Bytes an app's config takes, as [`validate::MAX_CONFIG_BYTES`] counts them: every key
/// and value.
pub fn config_bytes(config: &BTreeMap<String, String>) -> usize {
    config.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// Checks a change (keys, values, the size of the result) and returns the config it makes.
/// A key both set and unset is refused: the intent is unclear.
pub fn apply_config_change(
    app: &str,
    current: &BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    unset: &[String],
) -> Result<BTreeMap<String, String>, ApplyError> {
    let invalid = |e: validate::Invalid| ApplyError::InvalidConfig(e.to_string());
    if set.is_empty() && unset.is_empty() {
        return Err(ApplyError::InvalidConfig(
            "nothing to change: give KEY=VALUE pairs to set, or KEY names to unset".into(),
        ));
    }
    for (key, value) in set {
        validate::env_name(key).map_err(invalid)?;
        validate::env_value(key, value).map_err(invalid)?;
    }
    let mut next = current.clone();
    for key in unset {
        validate::env_name(key).map_err(invalid)?;
        if set.contains_key(key) {
            return Err(ApplyError::InvalidConfig(format!(
                "config key {key} is both set and unset in one change; give it once"
            )));
        }
        if next.remove(key).is_none() {
            return Err(ApplyError::NotConfigured {
                app: app.to_string(),
                key: key.clone(),
                hint: format!("`slipway config {app}` lists the keys it has"),
            });
        }
    }
    next.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    let bytes = config_bytes(&next);
    if bytes > validate::MAX_CONFIG_BYTES {
        return Err(ApplyError::InvalidConfig(format!(
            "the config of app {app:?} would be {bytes} bytes; the limit is {} bytes (keys and values \
             together): unset keys it no longer needs, or keep large data in a file",
            validate::MAX_CONFIG_BYTES
        )));
    }
    Ok(next)
}

/// Refuses replicas outside the manifest's bounds (1 to [`MAX_REPLICAS`]).
pub fn check_replicas(replicas: u64) -> Result<u32, ApplyError> {
    u32::try_from(replicas)
        .ok()
        .filter(|n| (1..=MAX_REPLICAS).contains(n))
        .ok_or(ApplyError::InvalidReplicas { got: replicas, max: MAX_REPLICAS })
}

impl State {
    /// The release a config change or scale rolls out the image of: the newest that did
    /// not fail (see the module's doc).
    pub fn change_base(&self, app: &str) -> Option<&Release> {
        self.releases.get(app)?.iter().rev().find(|r| r.deploy != DeployState::Failed)
    }

    /// What a retried request got the first time, if it was remembered.
    pub(super) fn configured_before(&self, request_id: &Option<String>) -> Option<Response> {
        let (app, release) = match request_id.as_ref().and_then(|r| self.requests.get(r))? {
            RequestOutcome::Release { app, number } => (app, self.release(app, *number).cloned()),
            RequestOutcome::Configured { app } => (app, None),
            RequestOutcome::Build(_) => return None,
        };
        let app = self.apps.get(app)?.clone();
        Some(Response::Configured { app, release, changed: true })
    }

    pub(super) fn set_config(
        &mut self,
        app: &str,
        set: &BTreeMap<String, String>,
        unset: &[String],
        request_id: &Option<String>,
        at_ms: u64,
    ) -> Result<Response, ApplyError> {
        if let Some(first) = self.configured_before(request_id) {
            return Ok(first);
        }
        let current = &self.app(app)?.config;
        let next = apply_config_change(app, current, set, unset)?;
        let changed_keys: Vec<String> =
            set.iter().filter(|(k, v)| current.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        if changed_keys.is_empty() && unset.is_empty() {
            return Ok(Response::Configured { app: self.app(app)?.clone(), release: None, changed: false });
        }
        let change = ReleaseChange::Config { set: changed_keys, unset: unset.to_vec() };
        self.record_change(app, request_id, at_ms, change, |a| a.config = next)
    }

    pub(super) fn scale(
        &mut self,
        app: &str,
        replicas: Option<u32>,
        request_id: &Option<String>,
        at_ms: u64,
    ) -> Result<Response, ApplyError> {
        if let Some(first) = self.configured_before(request_id) {
            return Ok(first);
        }
        if let Some(n) = replicas {
            check_replicas(u64::from(n))?;
        }
        if self.app(app)?.replicas == replicas {
            return Ok(Response::Configured { app: self.app(app)?.clone(), release: None, changed: false });
        }
        self.record_change(app, request_id, at_ms, ReleaseChange::Scale { replicas }, |a| {
            a.replicas = replicas
        })
    }

    /// Changes the app record with `edit` and, if it has an image, records the release
    /// that rolls the change out. Everything is checked before anything changes.
    pub(super) fn record_change(
        &mut self,
        app: &str,
        request_id: &Option<String>,
        at_ms: u64,
        change: ReleaseChange,
        edit: impl FnOnce(&mut super::App),
    ) -> Result<Response, ApplyError> {
        let mut record = self.app(app)?.clone();
        edit(&mut record);
        let release = match self.change_base(app) {
            None => None,
            Some(base) => {
                self.check_claims(app, &base.run)?;
                let number = self.releases[app].last().map_or(1, |r| r.number + 1);
                Some(Release {
                    number,
                    created_at_ms: at_ms,
                    rollback_of: None,
                    deploy: DeployState::Pending,
                    deploy_error: None,
                    bytes_pushed: 0,
                    timings: PhaseTimings::default(),
                    config: record.config.clone(),
                    replicas: record.replicas,
                    change: Some(change),
                    secrets: record.secrets.clone(),
                    collected: false,
                    ..base.clone()
                })
            }
        };
        self.apps.insert(app.to_string(), record.clone());
        match &release {
            Some(r) => {
                self.releases.entry(app.to_string()).or_default().push(r.clone());
                self.remember(request_id, RequestOutcome::Release { app: app.to_string(), number: r.number });
            }
            None => self.remember(request_id, RequestOutcome::Configured { app: app.to_string() }),
        }
        Ok(Response::Configured { app: record, release, changed: true })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{BuildOutput, Command, RunSpec};
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    pub(in crate::state) fn app_with_release(deployed: bool) -> State {
        let mut s = State::default();
        s.apply(&Command::CreateApp {
            name: "shop".into(),
            repo: "r".into(),
            branch: "main".into(),
            at_ms: 1,
        });
        s.apply(&Command::RegisterNode {
            id: "n1".into(),
            name: "n1".into(),
            labels: Default::default(),
            at_ms: 1,
        });
        s.apply(&Command::QueueBuild {
            app: "shop".into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: None,
            at_ms: 2,
        });
        s.apply(&Command::AssignBuild { build_id: "b-1".into(), node_id: "n1".into(), attempt: 1 });
        let output = BuildOutput {
            digest: format!("sha256:{}", "a".repeat(64)),
            repository: "reg/shop".into(),
            run: RunSpec {
                replicas: 1,
                env: kv(&[("LOG_LEVEL", "info"), ("GREETING", "manifest")]),
                ..Default::default()
            },
            ..Default::default()
        };
        s.apply(&Command::FinishBuild { build_id: "b-1".into(), attempt: 1, result: Ok(output), at_ms: 3 });
        if deployed {
            s.apply(&Command::RecordDeploy { app: "shop".into(), release: 1, result: Ok(()) });
        }
        s
    }

    fn set_config_command(
        app: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
        request_id: Option<String>,
        at_ms: u64,
    ) -> Command {
        Command::SetConfig { app: app.to_string(), set, unset, request_id, at_ms }
    }

    fn set(s: &mut State, pairs: &[(&str, &str)], unset: &[&str]) -> Response {
        let unset = unset.iter().map(|k| k.to_string()).collect();
        s.apply(&set_config_command("shop", kv(pairs), unset, None, 10))
    }

    #[test]
    fn a_config_change_is_a_release_of_the_same_image_that_wins_over_the_manifest() {
        let mut s = app_with_release(true);
        let Response::Configured { release: Some(r2), changed: true, .. } =
            set(&mut s, &[("GREETING", "config")], &[])
        else {
            panic!()
        };
        let r1 = &s.releases["shop"][0];
        assert_eq!((r2.number, &r2.digest, &r2.build_id), (2, &r1.digest, &r1.build_id));
        assert_eq!(r2.change, Some(ReleaseChange::Config { set: vec!["GREETING".into()], unset: vec![] }));
        assert_eq!(r2.change.as_ref().unwrap().to_string(), "config: set GREETING");
        assert_eq!(r2.env(), kv(&[("GREETING", "config"), ("LOG_LEVEL", "info")]));
        assert_eq!(s.apps["shop"].config, kv(&[("GREETING", "config")]));
        // Setting what is there records nothing; unset removes the key in a new release.
        let before = s.clone();
        assert!(matches!(
            set(&mut s, &[("GREETING", "config")], &[]),
            Response::Configured { changed: false, release: None, .. }
        ));
        assert_eq!(s, before);
        let Response::Configured { release: Some(r3), .. } = set(&mut s, &[], &["GREETING"]) else {
            panic!()
        };
        assert_eq!(r3.env()["GREETING"], "manifest");
        assert!(s.apps["shop"].config.is_empty());
    }

    #[test]
    fn bad_config_changes_are_refused_whole_naming_the_key() {
        let mut s = app_with_release(true);
        set(&mut s, &[("KEEP", "1")], &[]);
        let before = s.clone();
        for (pairs, unset, says) in [
            (
                vec![("OK", "1"), ("1BAD", "x")],
                vec![],
                "invalid config key: \"1BAD\" is not an environment variable name",
            ),
            (vec![("A-B", "x")], vec![], "\"A-B\" is not an environment variable name; use letters"),
            (vec![("NUL", "a\0b")], vec![], "the value of NUL holds a NUL"),
            (vec![], vec!["MISSING"], "app \"shop\" has no config key MISSING; `slipway config shop` lists"),
            (vec![("KEEP", "2")], vec!["KEEP"], "KEEP is both set and unset"),
            (vec![], vec![], "nothing to change"),
        ] {
            let resp = set(&mut s, &pairs, &unset);
            let Response::Refused(err) = resp else { panic!("{pairs:?} {unset:?}: {resp:?}") };
            assert!(err.to_string().contains(says), "{says}: {err}");
            assert_eq!(s, before, "nothing half-applied");
        }
        // 64 KiB in all: two values that fit alone do not fit together.
        let half = "x".repeat(validate::MAX_CONFIG_BYTES / 2);
        assert!(matches!(set(&mut s, &[("A", &half)], &[]), Response::Configured { .. }));
        let before = s.clone();
        let Response::Refused(err) = set(&mut s, &[("B", &half)], &[]) else { panic!() };
        assert!(err.to_string().contains("would be 65543 bytes; the limit is 65536"), "{err}");
        assert_eq!(s, before);
    }

    #[test]
    fn an_app_without_an_image_keeps_its_config_for_the_first_build() {
        let mut s = State::default();
        s.apply(&Command::CreateApp {
            name: "shop".into(),
            repo: "r".into(),
            branch: "main".into(),
            at_ms: 1,
        });
        let resp = set(&mut s, &[("DATABASE_URL", "postgres://db")], &[]);
        assert!(matches!(resp, Response::Configured { release: None, changed: true, .. }), "{resp:?}");
        s.apply(&Command::Scale { app: "shop".into(), replicas: Some(3), request_id: None, at_ms: 2 });
        assert!(!s.releases.contains_key("shop"));
        // The first build's release carries both.
        let mut built = app_with_release(false);
        built.apps.get_mut("shop").unwrap().config = s.apps["shop"].config.clone();
        built.apps.get_mut("shop").unwrap().replicas = Some(3);
        built.releases.clear();
        built.builds.clear();
        built.next_build = 0;
        built.apply(&Command::QueueBuild {
            app: "shop".into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: None,
            at_ms: 2,
        });
        built.apply(&Command::AssignBuild { build_id: "b-1".into(), node_id: "n1".into(), attempt: 1 });
        let out = BuildOutput {
            digest: format!("sha256:{}", "b".repeat(64)),
            repository: "reg/shop".into(),
            run: RunSpec { replicas: 1, ..Default::default() },
            ..Default::default()
        };
        let Response::Release(r) = built.apply(&Command::FinishBuild {
            build_id: "b-1".into(),
            attempt: 1,
            result: Ok(out),
            at_ms: 3,
        }) else {
            panic!()
        };
        assert_eq!((r.env()["DATABASE_URL"].as_str(), r.effective_replicas()), ("postgres://db", 3));
    }

    #[test]
    fn scale_wins_over_the_manifest_until_reset_and_survives_a_rollback() {
        let mut s = app_with_release(true);
        let scale = |s: &mut State, n: Option<u32>| {
            s.apply(&Command::Scale { app: "shop".into(), replicas: n, request_id: None, at_ms: 5 })
        };
        let Response::Configured { release: Some(r), .. } = scale(&mut s, Some(4)) else { panic!() };
        assert_eq!((r.effective_replicas(), r.run.replicas), (4, 1));
        assert_eq!(r.change.as_ref().unwrap().to_string(), "scale to 4");
        for bad in [0, MAX_REPLICAS + 1] {
            let before = s.clone();
            let Response::Refused(err) = scale(&mut s, Some(bad)) else { panic!() };
            assert!(
                err.to_string()
                    .starts_with(&format!("replicas must be 1 to 1000 (the manifest's bounds), got {bad}")),
                "{err}"
            );
            assert_eq!(s, before);
        }
        s.apply(&Command::RecordDeploy { app: "shop".into(), release: 2, result: Ok(()) });
        set(&mut s, &[("A", "1")], &[]);
        s.apply(&Command::RecordDeploy { app: "shop".into(), release: 3, result: Ok(()) });
        assert_eq!(s.releases["shop"][2].effective_replicas(), 4, "a config release keeps the scale");
        // Rollback to v1: its config (none) comes back, the scale stays.
        let Response::Release(rb) =
            s.apply(&Command::Rollback { app: "shop".into(), to: Some(1), request_id: None, at_ms: 6 })
        else {
            panic!()
        };
        assert_eq!((rb.effective_replicas(), rb.config.len()), (4, 0));
        assert!(s.apps["shop"].config.is_empty());
        let Response::Configured { release: Some(r), .. } = scale(&mut s, None) else { panic!() };
        assert_eq!(r.effective_replicas(), 1);
        assert_eq!(r.change.unwrap().to_string(), "scale reset to the manifest's replicas");
    }

    #[test]
    fn a_change_during_a_deploy_rolls_out_the_image_being_deployed_and_retries_are_deduplicated() {
        let mut s = app_with_release(false);
        let cmd = set_config_command("shop", kv(&[("A", "1")]), vec![], Some("req".into()), 9);
        let Response::Configured { release: Some(r), .. } = s.apply(&cmd) else { panic!() };
        assert_eq!(r.digest, s.releases["shop"][0].digest);
        let again = s.apply(&cmd);
        assert_eq!(s.releases["shop"].len(), 2, "{again:?}");
        // A failed release is not the base: the one before it is.
        s.apply(&Command::RecordDeploy { app: "shop".into(), release: 2, result: Err("x".into()) });
        assert_eq!(s.change_base("shop").map(|r| r.number), Some(1));
    }
}
