//! App secrets: the [`Command::SetSecret`] and [`Command::UnsetSecret`] halves of the state
//! machine. The value never enters raft: the leader stores it as a Swarm secret first
//! (`api/secrets.rs`), and the command records only the name, the version and the Swarm
//! secret that holds it. Like a config change, a secret change is the app record changed
//! and, if the app has an image, a release of that image that mounts the app's secrets as
//! they are now (same digest, `change` names the secret and its version), in one entry.
//!
//! [`Command::SetSecret`]: super::Command::SetSecret
//! [`Command::UnsetSecret`]: super::Command::UnsetSecret

use slipway_proto::validate;

use super::{ApplyError, ReleaseChange, Response, SecretRecord, State};

impl State {
    /// The version the next `secrets set` of `name` gets: one past the newest the app's
    /// records hold for it (its current one, or one a release still mounts after an unset).
    pub fn next_secret_version(&self, app: &str, name: &str) -> u32 {
        let current = self.apps.get(app).and_then(|a| a.secrets.get(name)).map_or(0, |s| s.version);
        let mounted = self
            .releases
            .get(app)
            .into_iter()
            .flatten()
            .filter_map(|r| r.secrets.get(name))
            .map(|s| s.version)
            .max()
            .unwrap_or(0);
        current.max(mounted) + 1
    }

    pub(super) fn set_secret(
        &mut self,
        app: &str,
        name: &str,
        secret: &SecretRecord,
        request_id: &Option<String>,
    ) -> Result<Response, ApplyError> {
        if let Some(first) = self.configured_before(request_id) {
            return Ok(first);
        }
        validate::secret_name(name).map_err(|e| ApplyError::InvalidSecret(e.reason))?;
        self.app(app)?;
        let next = self.next_secret_version(app, name);
        if secret.version < next {
            return Err(ApplyError::StaleSecretVersion {
                app: app.to_string(),
                name: name.to_string(),
                current: next - 1,
            });
        }
        let change = ReleaseChange::Secret { name: name.to_string(), version: Some(secret.version) };
        let record = secret.clone();
        self.record_change(app, request_id, secret.set_at_ms, change, |a| {
            a.secrets.insert(name.to_string(), record);
        })
    }

    pub(super) fn unset_secret(
        &mut self,
        app: &str,
        name: &str,
        request_id: &Option<String>,
        at_ms: u64,
    ) -> Result<Response, ApplyError> {
        if let Some(first) = self.configured_before(request_id) {
            return Ok(first);
        }
        if !self.app(app)?.secrets.contains_key(name) {
            return Err(ApplyError::NoSuchSecret { app: app.to_string(), name: name.to_string() });
        }
        let change = ReleaseChange::Secret { name: name.to_string(), version: None };
        self.record_change(app, request_id, at_ms, change, |a| {
            a.secrets.remove(name);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::app_config::tests::app_with_release;
    use super::super::Command;
    use super::*;

    fn set(s: &mut State, name: &str, version: u32) -> Response {
        let secret = SecretRecord {
            version,
            swarm_name: format!("st_shop_{name}_v{version}"),
            swarm_id: format!("id{version}"),
            set_at_ms: 100 + u64::from(version),
        };
        s.apply(&Command::SetSecret { app: "shop".into(), name: name.into(), secret, request_id: None })
    }

    #[test]
    fn each_set_is_a_new_version_mounted_by_a_release_of_the_same_image() {
        let mut s = app_with_release(true);
        assert_eq!(s.next_secret_version("shop", "DB_PASSWORD"), 1);
        let Response::Configured { release: Some(r2), .. } = set(&mut s, "DB_PASSWORD", 1) else { panic!() };
        assert_eq!((r2.number, &r2.digest), (2, &s.releases["shop"][0].digest));
        assert_eq!(r2.secrets["DB_PASSWORD"].swarm_id, "id1");
        assert_eq!(r2.change.as_ref().unwrap().to_string(), "secret: set DB_PASSWORD (v1)");
        assert_eq!(s.next_secret_version("shop", "DB_PASSWORD"), 2);
        // A version not newer than the recorded one (two sets raced) is refused whole.
        let before = s.clone();
        let Response::Refused(err) = set(&mut s, "DB_PASSWORD", 1) else { panic!() };
        assert!(err.to_string().contains("is at version 1 already"), "{err}");
        assert_eq!(s, before);
        let Response::Configured { release: Some(r3), .. } = set(&mut s, "DB_PASSWORD", 2) else { panic!() };
        assert_eq!(r3.secrets["DB_PASSWORD"].version, 2);
        // A failed rollout leaves the records saying which release holds which version.
        s.apply(&Command::RecordDeploy { app: "shop".into(), release: 3, result: Err("rolled back".into()) });
        assert_eq!(s.releases["shop"][1].secrets["DB_PASSWORD"].version, 1);
        // A later build mounts the app's current versions; so does a rollback.
        let Response::Release(rb) =
            s.apply(&Command::Rollback { app: "shop".into(), to: Some(1), request_id: None, at_ms: 200 })
        else {
            panic!()
        };
        assert_eq!(rb.secrets["DB_PASSWORD"].version, 2);
    }

    #[test]
    fn unset_removes_the_mount_in_a_release_and_the_version_keeps_counting() {
        let mut s = app_with_release(true);
        set(&mut s, "TOKEN", 1);
        let before = s.clone();
        let Response::Refused(err) = s.apply(&Command::UnsetSecret {
            app: "shop".into(),
            name: "OTHER".into(),
            request_id: None,
            at_ms: 5,
        }) else {
            panic!()
        };
        assert!(err.to_string().starts_with("app \"shop\" has no secret OTHER; `slipway secrets list shop`"));
        assert_eq!(s, before);
        let Response::Configured { release: Some(r), .. } = s.apply(&Command::UnsetSecret {
            app: "shop".into(),
            name: "TOKEN".into(),
            request_id: None,
            at_ms: 5,
        }) else {
            panic!()
        };
        assert!(r.secrets.is_empty() && s.apps["shop"].secrets.is_empty());
        assert_eq!(r.change.unwrap().to_string(), "secret: unset TOKEN");
        assert_eq!(s.next_secret_version("shop", "TOKEN"), 2, "v1 is still named by a release");
        // Unknown app and bad names are refused, nothing recorded.
        let before = s.clone();
        let Response::Refused(err) = set(&mut s, "../x", 1) else { panic!() };
        assert!(err.to_string().starts_with("invalid secret: \"../x\" is not allowed"), "{err}");
        let secret = SecretRecord { version: 1, swarm_name: "x".into(), swarm_id: "y".into(), set_at_ms: 1 };
        let resp =
            s.apply(&Command::SetSecret { app: "nope".into(), name: "A".into(), secret, request_id: None });
        assert!(matches!(resp, Response::Refused(ApplyError::NoSuchApp(_))), "{resp:?}");
        assert_eq!(s, before);
    }
}
