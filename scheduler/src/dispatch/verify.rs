//! What an agent reports at the end of a successful attempt, checked before anything is
//! recorded. An agent holding a build of app X is trusted to have built X (it cloned the
//! repository, so it decides which commit and manifest it built), and nothing more:
//!
//! - the repository must be the one the assignment named, `<registry.addr>/<app>`
//!   (another app's repository or another registry fails the build);
//! - the digest must exist in that repository of the fleet registry, which the leader
//!   asks itself, with its own pull token ([`registry_client`]), retrying briefly;
//! - the run spec comes from the scheduler's own parse of the `slipway.toml` text the
//!   agent sends ([`slipway_common::manifest`], the agent's parser), which must be valid
//!   and name the app. The run spec the agent reports is ignored, not compared and
//!   refused: a scheduler parsing the same text with the same parser gets the same spec
//!   from an honest agent, and ignoring it keeps builds from agents of a slightly other
//!   version working. A difference is logged, as it points at a lying or mismatched agent.
//!
//! A report failing any of these fails the build with the reason and records no release,
//! so the app's service keeps running what it ran. The checks run in the leader's
//! handling of the report, before the `FinishBuild` write: never on the raft apply path.
//! What the state machine checks when it applies the write (host names and ports held by
//! other apps, `state/claims.rs`) it checks on this run spec.

use slipway_common::manifest::{Manifest, MANIFEST_FILE};
use slipway_proto as pb;

use crate::context::Context;
use crate::convert;
use crate::security::registry_client::{self, Retry};
use crate::state::BuildOutput;

/// Checks an agent's report of a pushed image (module docs): the output to record, or
/// why the build fails.
pub async fn verify_success(
    ctx: &Context,
    build_id: &str,
    node_id: &str,
    reported: &pb::BuildOutput,
) -> Result<BuildOutput, String> {
    let (app, node) = ctx.store.read(|s| {
        let app = s.builds.get(build_id).map(|b| b.app.clone());
        let node = s.nodes.get(node_id).map_or(node_id.to_string(), |n| n.name.clone());
        (app, node)
    });
    let app = app.ok_or_else(|| format!("build {build_id} is not in the state any more"))?;
    let repository = ctx.config.registry.repository(&app);
    let max = &ctx.config.apps;
    let output = check_report(&app, &node, &repository, max, reported).inspect_err(|reason| {
        tracing::warn!(build = %build_id, %node, %reason, "refusing the agent's build result");
    })?;
    if let Some(run) = &reported.run {
        if convert::run_spec_from(run) != output.run {
            tracing::warn!(
                build = %build_id, %node,
                "the agent reported a run spec other than its manifest's; the release takes the manifest's"
            );
        }
    }
    let signer = ctx.registry_signer.as_deref();
    registry_client::manifest_exists(
        &ctx.config.registry.addr,
        signer,
        &app,
        &output.digest,
        Retry::default(),
    )
    .await
    .map_err(|e| {
        let reason = format!("the image node {node} reported is not recorded: {e}");
        tracing::warn!(build = %build_id, %node, %reason, "refusing the agent's build result");
        reason
    })?;
    Ok(output)
}

/// The checks that need no IO: the repository is `repository` (the assignment's), the
/// digest and commit are well-formed, the manifest text is valid and names `app`. The
/// output to record carries `repository` and the manifest's run spec.
pub(super) fn check_report(
    app: &str,
    node: &str,
    repository: &str,
    bounds: &crate::config::AppsConfig,
    reported: &pb::BuildOutput,
) -> Result<BuildOutput, String> {
    if reported.repository != repository {
        return Err(format!(
            "the agent on node {node} reported repository {:?}; this build pushes to {repository:?}, \
             so no release is recorded",
            bounded(&reported.repository)
        ));
    }
    let sha = &reported.git_sha;
    if !(4..=64).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the agent on node {node} reported the commit {:?}, which is not a git object id (4 to 64 hex digits)",
            bounded(sha)
        ));
    }
    let short = sha.get(..12).unwrap_or(sha);
    if reported.manifest.is_empty() {
        return Err(format!(
            "the agent on node {node} sent no {MANIFEST_FILE} text with its result, and the scheduler takes \
             the run spec from the manifest only; upgrade the agent on {node}"
        ));
    }
    let manifest =
        Manifest::parse(&reported.manifest).map_err(|e| format!("{MANIFEST_FILE} at {short}: {e}"))?;
    if manifest.name != app {
        return Err(format!(
            "{MANIFEST_FILE} at {short} names the app {:?}, but this build is for the app {app:?}",
            manifest.name
        ));
    }
    let run = convert::run_spec_from(&manifest.run_spec());
    bounds
        .check_replicas("run.replicas", u64::from(run.replicas))
        .map_err(|e| format!("{MANIFEST_FILE} at {short}: {e}"))?;
    convert::build_output_from(reported, repository.to_string(), run)
}

/// At most 200 characters of what an agent sent, for a reason.
fn bounded(text: &str) -> String {
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPOSITORY: &str = "127.0.0.1:5000/shop";
    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const MANIFEST: &str = "name = \"shop\"\n[run]\nport = 8080\nenv = { MODE = \"prod\" }\n";

    fn honest() -> pb::BuildOutput {
        pb::BuildOutput {
            git_sha: SHA.into(),
            digest: DIGEST.into(),
            repository: REPOSITORY.into(),
            manifest: MANIFEST.into(),
            run: Some(pb::RunSpec { replicas: 1, port: 8080, ..Default::default() }),
            steps: 3,
            ..Default::default()
        }
    }

    fn check(o: &pb::BuildOutput) -> Result<BuildOutput, String> {
        check_report("shop", "node-a", REPOSITORY, &Default::default(), o)
    }

    #[test]
    fn an_honest_report_records_the_assigned_repository_and_the_manifests_run_spec() {
        let out = check(&honest()).unwrap();
        assert_eq!(
            (out.repository.as_str(), out.digest.as_str(), out.git_sha.as_str()),
            (REPOSITORY, DIGEST, SHA)
        );
        assert_eq!(out.run.port, Some(8080));
        assert_eq!(out.run.env.get("MODE").map(String::as_str), Some("prod"));
        assert_eq!(out.steps, 3);
    }

    #[test]
    fn the_reported_run_spec_is_ignored() {
        let lying = pb::BuildOutput {
            run: Some(pb::RunSpec {
                replicas: 50,
                port: 22,
                env: [("LD_PRELOAD".to_string(), "/evil.so".to_string())].into(),
                persist: vec!["/".into()],
                ..Default::default()
            }),
            ..honest()
        };
        let out = check(&lying).unwrap();
        assert_eq!(out.run, check(&honest()).unwrap().run);
        assert_eq!((out.run.replicas, out.run.port), (1, Some(8080)));
        assert!(!out.run.env.contains_key("LD_PRELOAD"));
    }

    #[test]
    fn another_apps_repository_or_another_registry_is_refused_by_name() {
        for other in ["127.0.0.1:5000/other", "evil.example:5000/shop", "127.0.0.1:5000/shop/x", "shop", ""] {
            let err = check(&pb::BuildOutput { repository: other.into(), ..honest() }).unwrap_err();
            assert!(
                err.contains(&format!("the agent on node node-a reported repository {other:?}"))
                    && err.contains(&format!("this build pushes to {REPOSITORY:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_digests_and_commits_are_refused() {
        let err = check(&pb::BuildOutput { digest: "sha256:abc".into(), ..honest() }).unwrap_err();
        assert!(err.contains("invalid image digest"), "{err}");
        for sha in ["", "xyz", "--upload-pack=x", &"a".repeat(65)] {
            let err = check(&pb::BuildOutput { git_sha: sha.into(), ..honest() }).unwrap_err();
            assert!(err.contains("not a git object id"), "{err}");
        }
    }

    #[test]
    fn the_manifest_must_be_sent_valid_and_the_apps() {
        let err = check(&pb::BuildOutput { manifest: String::new(), ..honest() }).unwrap_err();
        assert!(err.contains("sent no slipway.toml") && err.contains("upgrade the agent on node-a"), "{err}");
        let err =
            check(&pb::BuildOutput { manifest: "name = \"shop\"\n[run]\nreplicas = 0\n".into(), ..honest() })
                .unwrap_err();
        assert!(err.starts_with("slipway.toml at 0123456789ab: run.replicas: must be 1 to 1000"), "{err}");
        let err = check(&pb::BuildOutput { manifest: "name = \"other\"\n".into(), ..honest() }).unwrap_err();
        assert!(err.contains("names the app \"other\", but this build is for the app \"shop\""), "{err}");
        let big = format!("name = \"shop\"\n# {}\n", "x".repeat(70_000));
        let err = check(&pb::BuildOutput { manifest: big, ..honest() }).unwrap_err();
        assert!(err.contains("the limit is 65536 bytes"), "{err}");
    }

    #[test]
    fn the_manifests_replicas_are_bounded_by_the_fleets_max_replicas() {
        let manifest = |n: u32| format!("name = \"shop\"\n[run]\nreplicas = {n}\n");
        let bounds = crate::config::AppsConfig { max_replicas: 5 };
        let at = |n| {
            check_report(
                "shop",
                "node-a",
                REPOSITORY,
                &bounds,
                &pb::BuildOutput { manifest: manifest(n), ..honest() },
            )
        };
        assert_eq!(at(5).unwrap().run.replicas, 5);
        let err = at(6).unwrap_err();
        assert!(
            err.starts_with("slipway.toml at 0123456789ab: run.replicas 6 is over this fleet's bound of 5 replicas per app")
                && err.contains("`max_replicas` under [apps] in scheduler.toml (at most 1000)"),
            "{err}"
        );
        // The default bound is 100.
        assert!(check(&pb::BuildOutput { manifest: manifest(101), ..honest() })
            .unwrap_err()
            .contains("bound of 100"));
    }
}
