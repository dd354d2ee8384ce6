//! App config and scale on the control API (`GetConfig`, `SetConfig`, `Scale`): the
//! request checks (app name, POSIX keys, value sizes, replicas bounds) run before any
//! raft write; the change is one raft command ([`Command::SetConfig`] / [`Command::Scale`],
//! see `state/app_config.rs`), and its release's rollout streams like a rollback's.

use std::collections::BTreeMap;
use std::sync::Arc;

use slipway_proto::deploy_event::Event;
use slipway_proto::{self as pb, validate, DeployEvent};
use tonic::Status;

use super::control::{bounded_id, watch_deploy, EventStream, Topic};
use crate::context::Context;
use crate::convert;
use crate::error::Error;
use crate::events::release_topic;
use crate::state::{self, Command, Response as Applied};

/// Every field of a `SetConfig` request, checked before the app is looked up: keys are
/// POSIX variable names, values carry no NUL, and the keys and values set fit in
/// [`validate::MAX_CONFIG_BYTES`] (the state machine checks the merged config again).
pub(super) fn check_set_config(req: &pb::SetConfigRequest) -> Result<(), Error> {
    validate::app_name(&req.app)?;
    bounded_id("request id", &req.request_id)?;
    if req.set.is_empty() && req.unset.is_empty() {
        return Err(Error::Invalid(validate::Invalid {
            what: "config change",
            reason: "nothing to change: give KEY=VALUE pairs to set, or KEY names to unset".into(),
        }));
    }
    let mut bytes = 0;
    for (key, value) in &req.set {
        validate::env_name(key)?;
        validate::env_value(key, value)?;
        bytes += key.len() + value.len();
    }
    for key in &req.unset {
        validate::env_name(key)?;
    }
    if bytes > validate::MAX_CONFIG_BYTES {
        return Err(Error::Invalid(validate::Invalid {
            what: "config change",
            reason: format!(
                "the keys and values set are {bytes} bytes; an app's config is at most {} bytes",
                validate::MAX_CONFIG_BYTES
            ),
        }));
    }
    Ok(())
}

/// The app's environment with where each value comes from (see `AppConfig` in control.proto).
pub(super) fn app_config(app: &state::App, base: Option<&state::Release>) -> pb::AppConfig {
    let manifest = base.map(|r| r.run.env.clone()).unwrap_or_default();
    let mut entries: BTreeMap<&String, pb::ConfigEntry> = manifest
        .iter()
        .map(|(k, v)| {
            (
                k,
                pb::ConfigEntry {
                    key: k.clone(),
                    value: v.clone(),
                    source: "manifest".into(),
                    ..Default::default()
                },
            )
        })
        .collect();
    for (k, v) in &app.config {
        entries.insert(
            k,
            pb::ConfigEntry {
                key: k.clone(),
                value: v.clone(),
                source: "config".into(),
                overrides_manifest: manifest.contains_key(k),
            },
        );
    }
    pb::AppConfig {
        app: app.name.clone(),
        entries: entries.into_values().collect(),
        config_bytes: state::config_bytes(&app.config) as u64,
        max_config_bytes: validate::MAX_CONFIG_BYTES as u64,
        release: base.map_or(0, |r| r.number),
        scaled_replicas: app.replicas.unwrap_or(0),
        manifest_replicas: base.map_or(0, |r| r.run.replicas),
    }
}

pub(super) async fn get_config(ctx: &Context, app: &str) -> Result<pb::AppConfig, Status> {
    validate::app_name(app).map_err(Error::from)?;
    let config = ctx
        .store
        .read_current(|s| s.app(app).map(|a| app_config(a, s.change_base(app))))
        .await?
        .map_err(Error::from)?;
    Ok(config)
}

pub(super) async fn set_config(ctx: &Arc<Context>, req: pb::SetConfigRequest) -> Result<EventStream, Status> {
    check_set_config(&req)?;
    let request_id = ready_to_change(ctx, &req.app, req.request_id).await?;
    let cmd = Command::SetConfig {
        app: req.app,
        set: req.set.into_iter().collect(),
        unset: req.unset,
        request_id: Some(request_id),
        at_ms: slipway_common::now_ms(),
    };
    roll_out(ctx, cmd).await
}

pub(super) async fn scale(ctx: &Arc<Context>, req: pb::ScaleRequest) -> Result<EventStream, Status> {
    validate::app_name(&req.app).map_err(Error::from)?;
    bounded_id("request id", &req.request_id)?;
    let replicas = if req.reset {
        None
    } else {
        let n = state::check_replicas(u64::from(req.replicas)).map_err(Error::from)?;
        ctx.config
            .apps
            .check_replicas("replicas", u64::from(n))
            .map_err(|reason| Error::Invalid(validate::Invalid { what: "scale", reason }))?;
        Some(n)
    };
    let request_id = ready_to_change(ctx, &req.app, req.request_id).await?;
    let cmd = Command::Scale {
        app: req.app,
        replicas,
        request_id: Some(request_id),
        at_ms: slipway_common::now_ms(),
    };
    roll_out(ctx, cmd).await
}

/// Checks the app exists and, if a change would roll out, that the Swarm manager answers
/// (fail fast, before anything is recorded). Returns the request id to record.
pub(super) async fn ready_to_change(ctx: &Context, app: &str, request_id: String) -> Result<String, Status> {
    let has_image = ctx
        .store
        .read_current(|s| s.app(app).map(|_| s.change_base(app).is_some()))
        .await?
        .map_err(Error::from)?;
    if has_image {
        ctx.docker().await?;
    }
    Ok(if request_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { request_id })
}

/// Writes the change and streams its release's rollout, or says why there is none.
async fn roll_out(ctx: &Arc<Context>, cmd: Command) -> Result<EventStream, Status> {
    let applied = ctx.store.write(cmd).await?;
    announce(ctx, applied)
}

/// Streams the rollout of the release a written change made, or says why there is none.
pub(super) fn announce(ctx: &Arc<Context>, applied: Applied) -> Result<EventStream, Status> {
    let (app, release, changed) = match applied {
        Applied::Configured { app, release, changed } => (app, release, changed),
        other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
    };
    let Some(release) = release else {
        let note = if changed {
            format!(
                "stored for {}; it has no release yet: the change applies at its first deploy (`slipway deploy {}`)",
                app.name, app.name
            )
        } else {
            format!("nothing changed: {} already has these values; no release made", app.name)
        };
        let only = Ok(DeployEvent { event: Some(Event::DeployProgress(note)) });
        return Ok(Box::pin(tokio_stream::iter([only])));
    };
    tracing::info!(app = %release.app, release = release.number, change = ?release.change, "config release recorded");
    ctx.dispatcher_wake();
    let topic = Topic::Release { app: release.app.clone(), number: release.number };
    let first = Event::Release(convert::release(&release));
    Ok(watch_deploy(ctx.clone(), Some(first), release_topic(&release), topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(set: &[(&str, &str)], unset: &[&str]) -> pb::SetConfigRequest {
        pb::SetConfigRequest {
            app: "shop".into(),
            set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            unset: unset.iter().map(|k| k.to_string()).collect(),
            request_id: String::new(),
        }
    }

    #[test]
    fn every_field_of_a_config_change_is_checked_naming_it() {
        assert!(check_set_config(&req(&[("DATABASE_URL", "postgres://x")], &["OLD"])).is_ok());
        let big = "x".repeat(validate::MAX_CONFIG_BYTES);
        for (r, why) in [
            (pb::SetConfigRequest { app: "Shop".into(), ..req(&[("A", "1")], &[]) }, "invalid app name"),
            (req(&[], &[]), "invalid config change: nothing to change"),
            (
                req(&[("9LIVES", "1")], &[]),
                "invalid config key: \"9LIVES\" is not an environment variable name",
            ),
            (req(&[], &["BAD-KEY"]), "invalid config key: \"BAD-KEY\""),
            (req(&[("A", "x\0")], &[]), "invalid config value: the value of A holds a NUL"),
            (req(&[("A", &big)], &[]), "invalid config change: the keys and values set are 65537 bytes"),
        ] {
            let status = Status::from(check_set_config(&r).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().starts_with(why), "{why}: {}", status.message());
        }
    }

    #[test]
    fn config_shows_where_each_value_comes_from() {
        let mut s = state::State::default();
        s.apply(&Command::CreateApp {
            name: "shop".into(),
            repo: "r".into(),
            branch: "main".into(),
            at_ms: 1,
        });
        let app = s.apps.get_mut("shop").unwrap();
        app.config = [("GREETING".to_string(), "config".to_string()), ("DB".into(), "x".into())].into();
        app.replicas = Some(3);
        let release = state::Release {
            secrets: Default::default(),
            app: "shop".into(),
            number: 4,
            digest: String::new(),
            repository: String::new(),
            git_sha: String::new(),
            build_id: String::new(),
            node_id: String::new(),
            created_at_ms: 0,
            rollback_of: None,
            deploy: state::DeployState::Deployed,
            deploy_error: None,
            run: state::RunSpec {
                replicas: 2,
                env: [("GREETING".to_string(), "manifest".to_string()), ("LOG".into(), "info".into())].into(),
                ..Default::default()
            },
            bytes_pushed: 0,
            timings: Default::default(),
            config: Default::default(),
            replicas: None,
            change: None,
            collected: false,
        };
        let c = app_config(&s.apps["shop"], Some(&release));
        let shown: Vec<(&str, &str, &str, bool)> = c
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.source.as_str(), e.overrides_manifest))
            .collect();
        assert_eq!(
            shown,
            [
                ("DB", "x", "config", false),
                ("GREETING", "config", "config", true),
                ("LOG", "info", "manifest", false)
            ]
        );
        assert_eq!((c.release, c.scaled_replicas, c.manifest_replicas, c.config_bytes), (4, 3, 2, 17));
    }
}
