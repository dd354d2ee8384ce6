//! Claims: what an app holds on the fleet that no other app may have — the host names
//! the router serves it at (`run.domains`) and the host port it publishes
//! (`run.publish`). An app holds the claims of its current release and of any release
//! still waiting for its deploy, so a claim is free only once the release that dropped
//! it runs (a failed deploy leaves the previous release, and its names, serving).
//!
//! Checked where a release is recorded ([`State::check_claims`], from `FinishBuild` and
//! `Rollback`: every member refuses the same way), and earlier where it can be: the
//! build assignment carries the other apps' claims so the agent refuses a manifest
//! before the image is built. The router's own name for an app, `<app>.<domain>`,
//! depends on the scheduler's config and is checked by the leader (see
//! the router module).

use std::collections::BTreeMap;

use slipway_proto::validate;

use super::{ApplyError, DeployState, Release, RunSpec, State};

/// Host names and host ports held by apps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// Host name → the app the router serves there (from `run.domains`).
    pub hosts: BTreeMap<String, String>,
    /// Published host port → the app publishing it.
    pub ports: BTreeMap<u16, String>,
}

impl State {
    /// The releases whose claims `app` holds: its current release and every pending one.
    pub fn claiming_releases<'a>(&'a self, app: &str) -> impl Iterator<Item = &'a Release> + 'a {
        let current = self.apps.get(app).map_or(0, |a| a.current_release);
        self.releases
            .get(app)
            .into_iter()
            .flatten()
            .filter(move |r| r.number == current || r.deploy == DeployState::Pending)
    }

    /// Every claim held by an app other than `except` (`None`: all apps). When two apps
    /// hold one name (only possible in a state written before claims were checked), the
    /// first by app name keeps it.
    pub fn claims(&self, except: Option<&str>) -> Claims {
        let mut claims = Claims::default();
        for app in self.apps.keys().filter(|a| Some(a.as_str()) != except) {
            for release in self.claiming_releases(app) {
                for host in &release.run.domains {
                    claims.hosts.entry(host.clone()).or_insert_with(|| app.clone());
                }
                if let Some(port) = release.run.publish {
                    claims.ports.entry(port).or_insert_with(|| app.clone());
                }
            }
        }
        claims
    }

    /// Refuses a release of `app` running `run` if its routing fields are invalid (they
    /// come from an agent) or claim what another app holds, naming that app.
    pub fn check_claims(&self, app: &str, run: &RunSpec) -> Result<(), ApplyError> {
        for (i, host) in run.domains.iter().enumerate() {
            validate::host_name(host)
                .map_err(|e| ApplyError::InvalidRun(format!("run.domains[{i}]: {}", e.reason)))?;
        }
        for (i, constraint) in run.constraints.iter().enumerate() {
            validate::placement_constraint(constraint)
                .map_err(|e| ApplyError::InvalidRun(format!("run.constraints[{i}]: {}", e.reason)))?;
        }
        if run.publish.is_some() && run.port.is_none() {
            return Err(ApplyError::InvalidRun("run.publish is set but run.port is not".into()));
        }
        let held = self.claims(Some(app));
        if let Some((host, holder)) =
            run.domains.iter().find_map(|h| held.hosts.get(h).map(|holder| (h, holder)))
        {
            return Err(ApplyError::Claimed {
                field: "run.domains".into(),
                value: format!("host name {host:?}"),
                holder: holder.clone(),
            });
        }
        if let Some((port, holder)) = run.publish.and_then(|p| held.ports.get(&p).map(|holder| (p, holder))) {
            return Err(ApplyError::Claimed {
                field: "run.publish".into(),
                value: format!("host port {port}"),
                holder: holder.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BuildOutput, Command, Response};
    use super::*;

    fn run(domains: &[&str], publish: Option<u16>) -> RunSpec {
        RunSpec {
            replicas: 1,
            port: Some(8080),
            publish,
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Creates `app` and records a pushed release of it running `run`.
    fn release(s: &mut State, app: &str, run: RunSpec) -> Response {
        if !s.apps.contains_key(app) {
            s.apply(&Command::CreateApp {
                name: app.into(),
                repo: "file:///r".into(),
                branch: "main".into(),
                at_ms: 1,
            });
        }
        s.apply(&Command::RegisterNode {
            id: "n1".into(),
            name: "n1".into(),
            labels: Default::default(),
            at_ms: 1,
        });
        let Response::Build(b) = s.apply(&Command::QueueBuild {
            app: app.into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: None,
            at_ms: 2,
        }) else {
            panic!("not queued")
        };
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 1 });
        let output = BuildOutput {
            digest: format!("sha256:{}", "a".repeat(64)),
            repository: format!("127.0.0.1:5000/{app}"),
            run,
            ..Default::default()
        };
        s.apply(&Command::FinishBuild { build_id: b.id, attempt: 1, result: Ok(output), at_ms: 3 })
    }

    #[test]
    fn a_host_name_or_port_held_by_another_app_fails_the_build_naming_that_app() {
        let mut s = State::default();
        assert!(matches!(
            release(&mut s, "shop", run(&["shop.example.com"], Some(9000))),
            Response::Release(_)
        ));
        let Response::Build(b) =
            release(&mut s, "blog", run(&["blog.example.com", "shop.example.com"], None))
        else {
            panic!("a claimed host name must fail the build")
        };
        let error = b.error.unwrap();
        assert!(
            error.contains("run.domains")
                && error.contains("\"shop.example.com\"")
                && error.contains("app \"shop\""),
            "{error}"
        );
        let Response::Build(b) = release(&mut s, "blog", run(&[], Some(9000))) else { panic!("port") };
        assert!(b.error.unwrap().contains("host port 9000 is held by app \"shop\""));
        // The holder itself may keep them in its next release.
        assert!(matches!(
            release(&mut s, "shop", run(&["shop.example.com"], Some(9000))),
            Response::Release(_)
        ));
    }

    #[test]
    fn a_claim_is_free_once_the_release_that_dropped_it_runs() {
        let mut s = State::default();
        release(&mut s, "shop", run(&["shop.example.com"], None));
        s.apply(&Command::RecordDeploy { app: "shop".into(), release: 1, result: Ok(()) });
        release(&mut s, "shop", run(&[], None));
        // Release 2 may still fail and leave release 1 serving the name.
        assert_eq!(s.claims(None).hosts.get("shop.example.com").map(String::as_str), Some("shop"));
        s.apply(&Command::RecordDeploy { app: "shop".into(), release: 2, result: Ok(()) });
        assert!(s.claims(None).hosts.is_empty());
        assert!(matches!(release(&mut s, "blog", run(&["shop.example.com"], None)), Response::Release(_)));
    }

    #[test]
    fn invalid_routing_fields_from_an_agent_are_refused() {
        let s = State::default();
        let err = s.check_claims("a", &run(&["Bad.example"], None)).unwrap_err().to_string();
        assert!(err.contains("run.domains[0]"), "{err}");
        let bad = RunSpec { constraints: vec!["node.x = 1".into()], ..run(&[], None) };
        assert!(s.check_claims("a", &bad).unwrap_err().to_string().contains("run.constraints[0]"));
    }
}
