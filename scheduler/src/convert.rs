//! Conversions between the replicated domain types ([`crate::state`]) and the wire types
//! of `slipway_proto`. The only place that knows both shapes.

use std::time::Duration;

use slipway_proto as pb;

use crate::state::{self, BuildState, DeployState};

/// An app as the control API shows it (its service named in `stack`).
pub fn app(a: &state::App, stack: &str, urls: Vec<String>) -> pb::App {
    pb::App {
        name: a.name.clone(),
        repo: a.repo.clone(),
        branch: a.branch.clone(),
        created_at_ms: a.created_at_ms,
        current_release: a.current_release,
        service: format!("{stack}_{}", a.name),
        urls,
    }
}

/// A build state on the wire.
pub fn build_state(s: BuildState) -> pb::BuildState {
    match s {
        BuildState::Queued => pb::BuildState::Queued,
        BuildState::Assigned => pb::BuildState::Assigned,
        BuildState::Running => pb::BuildState::Running,
        BuildState::Pushed => pb::BuildState::Pushed,
        BuildState::Failed => pb::BuildState::Failed,
        BuildState::Cancelled => pb::BuildState::Cancelled,
    }
}

/// A build on the wire, with why it waits (for a queued one).
pub fn build(b: &state::Build, waiting_on: Vec<pb::NodeRejection>) -> pb::Build {
    pb::Build {
        id: b.id.clone(),
        app: b.app.clone(),
        git_ref: b.git_ref.clone(),
        no_cache: b.no_cache,
        state: build_state(b.state) as i32,
        node_id: b.node_id.clone().unwrap_or_default(),
        attempt: b.attempt,
        created_at_ms: b.created_at_ms,
        finished_at_ms: b.finished_at_ms.unwrap_or_default(),
        error: b.error.clone().unwrap_or_default(),
        output: b.output.as_ref().map(build_output),
        release: b.release.unwrap_or_default(),
        waiting_on,
        cache_doctor: None,
    }
}

/// The cache doctor's finding on the wire.
pub fn cache_doctor(d: &state::cache_doctor::Diagnosis) -> pb::CacheDoctor {
    pb::CacheDoctor {
        step: d.step.clone(),
        cause: d.cause.clone(),
        changed_paths: d.changed_paths.clone(),
        changed_paths_truncated: d.changed_paths_truncated,
        rebuilt_steps: d.rebuilt_steps,
        seconds: d.rebuilt_ms as f64 / 1000.0,
        bytes_pushed: d.bytes_pushed,
        advice: d.advice.clone(),
    }
}

/// Phase timings on the wire.
pub fn timings(t: &state::PhaseTimings) -> pb::PhaseTimings {
    pb::PhaseTimings {
        clone_ms: t.clone_ms,
        context_ms: t.context_ms,
        build_ms: t.build_ms,
        push_ms: t.push_ms,
    }
}

fn timings_from(t: Option<&pb::PhaseTimings>) -> state::PhaseTimings {
    t.map(|t| state::PhaseTimings {
        clone_ms: t.clone_ms,
        context_ms: t.context_ms,
        build_ms: t.build_ms,
        push_ms: t.push_ms,
    })
    .unwrap_or_default()
}

/// What a build pushed, on the wire.
pub fn build_output(o: &state::BuildOutput) -> pb::BuildOutput {
    pb::BuildOutput {
        git_sha: o.git_sha.clone(),
        digest: o.digest.clone(),
        repository: o.repository.clone(),
        image_size_bytes: o.image_size_bytes,
        layers_pushed: o.layers_pushed,
        layers_reused: o.layers_reused,
        bytes_pushed: o.bytes_pushed,
        cache_hits: o.cache_hits,
        steps: o.steps,
        timings: Some(timings(&o.timings)),
        run: Some(run_spec(&o.run)),
        manifest: String::new(),
        build_steps: o
            .build_steps
            .iter()
            .map(|st| pb::BuildStep { name: st.name.clone(), cached: st.cached, duration_ms: st.duration_ms })
            .collect(),
        changed_paths: o.changed_paths.as_ref().map(|c| pb::ChangedPaths {
            since: c.since.clone(),
            paths: c.paths.clone(),
            truncated: c.truncated,
            unknown: c.unknown,
        }),
    }
}

pub use slipway_proto::validate::{MAX_BUILD_STEPS, MAX_STEP_NAME_CHARS};

/// The steps an agent reported, bounded for the raft log ([`MAX_BUILD_STEPS`],
/// [`MAX_STEP_NAME_CHARS`]) with control characters shown as spaces (names are printed
/// on operators' terminals).
fn build_steps_from(steps: &[pb::BuildStep]) -> Vec<state::BuildStep> {
    steps
        .iter()
        .take(MAX_BUILD_STEPS)
        .map(|st| {
            let mut name: String = st
                .name
                .chars()
                .take(MAX_STEP_NAME_CHARS)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if st.name.chars().nth(MAX_STEP_NAME_CHARS).is_some() {
                name.pop();
                name.push('…');
            }
            state::BuildStep { name, cached: st.cached, duration_ms: st.duration_ms }
        })
        .collect()
}

/// What an agent reported, as the record to replicate, with the repository and run spec
/// the scheduler determined itself (`dispatch::verify`): the report's own `repository`
/// and `run` are not taken. The digest's format is checked here.
pub fn build_output_from(
    o: &pb::BuildOutput,
    repository: String,
    run: state::RunSpec,
) -> Result<state::BuildOutput, String> {
    if !slipway_proto::validate::is_digest(&o.digest) {
        let digest: String = o.digest.chars().take(100).collect();
        return Err(format!("agent reported an invalid image digest {digest:?}"));
    }
    Ok(state::BuildOutput {
        git_sha: o.git_sha.clone(),
        digest: o.digest.clone(),
        repository,
        image_size_bytes: o.image_size_bytes,
        layers_pushed: o.layers_pushed,
        layers_reused: o.layers_reused,
        bytes_pushed: o.bytes_pushed,
        cache_hits: o.cache_hits,
        steps: o.steps,
        timings: timings_from(o.timings.as_ref()),
        run,
        build_steps: build_steps_from(&o.build_steps),
        changed_paths: o.changed_paths.as_ref().map(changed_paths_from),
    })
}

/// The changed paths an agent reported, bounded for the raft log
/// ([`slipway_proto::validate::bound_changed_paths`]) with control characters shown as
/// spaces (paths are printed on operators' terminals) and `since` cut at 64 characters.
fn changed_paths_from(c: &pb::ChangedPaths) -> state::ChangedPaths {
    let printable = |p: &String| p.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>();
    let (paths, cut) = if c.unknown {
        (Vec::new(), false)
    } else {
        slipway_proto::validate::bound_changed_paths(c.paths.iter().map(printable))
    };
    state::ChangedPaths {
        since: c.since.chars().take(64).filter(char::is_ascii_hexdigit).collect(),
        paths,
        truncated: c.truncated || cut,
        unknown: c.unknown,
    }
}

/// How a release runs, on the wire.
pub fn run_spec(r: &state::RunSpec) -> pb::RunSpec {
    pb::RunSpec {
        replicas: r.replicas,
        port: r.port.map(u32::from).unwrap_or_default(),
        env: r.env.clone().into_iter().collect(),
        persist: r.persist.clone(),
        healthcheck: r.healthcheck.as_ref().map(healthcheck),
        publish: r.publish.map(u32::from).unwrap_or_default(),
        domains: r.domains.clone(),
        constraints: r.constraints.clone(),
    }
}

/// How a release runs, from the wire (an empty healthcheck command means none).
pub fn run_spec_from(r: &pb::RunSpec) -> state::RunSpec {
    state::RunSpec {
        replicas: r.replicas.max(1),
        port: u16::try_from(r.port).ok().filter(|p| *p != 0),
        env: r.env.clone().into_iter().collect(),
        persist: r.persist.clone(),
        // A check without a command is the wire's empty message: no healthcheck.
        healthcheck: r.healthcheck.as_ref().filter(|h| !h.cmd.is_empty()).map(healthcheck_from),
        publish: u16::try_from(r.publish).ok().filter(|p| *p != 0),
        domains: r.domains.clone(),
        constraints: r.constraints.clone(),
    }
}

/// The healthcheck, domain → wire (durations as whole milliseconds, saturating).
pub fn healthcheck(h: &state::Healthcheck) -> pb::Healthcheck {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    pb::Healthcheck {
        cmd: h.cmd.clone(),
        interval_ms: ms(h.interval),
        timeout_ms: ms(h.timeout),
        retries: h.retries,
        start_period_ms: ms(h.start_period),
    }
}

/// The healthcheck, wire → domain.
pub fn healthcheck_from(h: &pb::Healthcheck) -> state::Healthcheck {
    state::Healthcheck {
        cmd: h.cmd.clone(),
        interval: Duration::from_millis(h.interval_ms),
        timeout: Duration::from_millis(h.timeout_ms),
        retries: h.retries,
        start_period: Duration::from_millis(h.start_period_ms),
    }
}

/// A release on the wire.
pub fn release(r: &state::Release) -> pb::Release {
    pb::Release {
        app: r.app.clone(),
        number: r.number,
        digest: r.digest.clone(),
        image: r.image(),
        git_sha: r.git_sha.clone(),
        build_id: r.build_id.clone(),
        node: r.node_id.clone(),
        created_at_ms: r.created_at_ms,
        rollback_of: r.rollback_of.unwrap_or_default(),
        deploy_state: match r.deploy {
            DeployState::Pending => pb::DeployState::Pending,
            DeployState::Deployed => pb::DeployState::Deployed,
            DeployState::Failed => pb::DeployState::Failed,
        } as i32,
        deploy_error: r.deploy_error.clone().unwrap_or_default(),
        run: Some(run_spec(&r.run)),
        bytes_pushed: r.bytes_pushed,
        timings: Some(timings(&r.timings)),
        change: r.change.as_ref().map(ToString::to_string).unwrap_or_default(),
        replicas: r.effective_replicas(),
        config_keys: r.config.keys().cloned().collect(),
        secrets: r
            .secrets
            .iter()
            .map(|(name, s)| pb::SecretVersion { name: name.clone(), version: s.version })
            .collect(),
        collected: r.collected,
        rollbackable: false,
    }
}

/// Why nodes could not take a build, on the wire.
pub fn rejections(rs: &[crate::placement::Rejection]) -> Vec<pb::NodeRejection> {
    rs.iter()
        .map(|r| pb::NodeRejection {
            node_id: r.node_id.clone(),
            node_name: r.node_name.clone(),
            reason: r.reason.clone(),
        })
        .collect()
}

/// What `apps show` tells of an app's settings: names only, never values.
#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    /// Its config keys, sorted.
    pub config_keys: Vec<String>,
    /// Its scale (0: not scaled).
    pub scaled_replicas: u32,
    /// Its secrets' names, sorted.
    pub secret_names: Vec<String>,
}

/// `apps show`: the app, its current release and what Swarm runs (`view`: `None` when
/// Swarm has no service for it).
pub fn app_status(
    app: pb::App,
    current: Option<pb::Release>,
    AppSettings { config_keys, scaled_replicas, secret_names }: AppSettings,
    view: Option<&crate::deploy::observe::ServiceView>,
) -> pb::AppStatusResponse {
    pb::AppStatusResponse {
        app: Some(app),
        current,
        deployed: view.is_some(),
        desired_replicas: view.map_or(0, |v| v.desired_replicas),
        running_replicas: view.map_or(0, |v| v.running()),
        tasks: view.map(|v| v.tasks.iter().map(app_task).collect()).unwrap_or_default(),
        config_keys,
        scaled_replicas,
        secret_names,
    }
}

fn app_task(t: &crate::deploy::observe::TaskView) -> pb::AppTask {
    pb::AppTask {
        id: t.id.clone(),
        slot: t.slot,
        node: t.node.clone(),
        node_id: t.node_id.clone(),
        state: t.state.clone(),
        desired_state: t.desired_state.clone(),
        release: t.release,
        since_ms: t.since_ms,
        error: t.error.clone(),
        message: t.message.clone(),
        image: t.image.clone(),
    }
}

/// One line an app's task wrote.
pub fn app_log_line(l: crate::deploy::observe::TaskLine) -> pb::AppLogLine {
    pb::AppLogLine {
        at_ms: l.at_ms,
        task_id: l.task_id,
        slot: l.slot,
        node: l.node,
        release: l.release,
        stream: l.source.as_str().to_owned(),
        line: l.line,
    }
}

/// A registry GC's report, on the wire.
pub fn gc_report(r: &crate::state::retention::GcReport) -> pb::GcResponse {
    pb::GcResponse {
        dry_run: r.dry_run,
        apps: r
            .apps
            .iter()
            .map(|a| pb::GcApp {
                app: a.app.clone(),
                policy: a.policy.clone(),
                oldest_kept: a.oldest_kept,
                kept: a.kept.clone(),
                deleted: a
                    .deleted
                    .iter()
                    .map(|d| pb::GcImage {
                        digest: d.digest.clone(),
                        releases: d.releases.clone(),
                        deleted: d.deleted,
                    })
                    .collect(),
            })
            .collect(),
        bytes_reclaimed: r.bytes_reclaimed,
        pause_ms: r.pause.as_millis() as u64,
        blob_gc: r.blob_gc.clone(),
        blob_gc_ok: r.blob_gc_ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_build_steps_are_bounded_before_they_are_recorded() {
        let step = |i: usize| pb::BuildStep {
            name: format!("[{i}/300] RUN make"),
            cached: i.is_multiple_of(2),
            duration_ms: i as u64,
        };
        let mut steps: Vec<pb::BuildStep> = (1..=300).map(step).collect();
        steps[0].name = format!("[1/300] RUN {}\x1b[2J", "é".repeat(400));
        steps[1].name = format!("[2/300] RUN a\nb{}", "x".repeat(MAX_STEP_NAME_CHARS - 15));
        let reported = pb::BuildOutput {
            digest: format!("sha256:{}", "a".repeat(64)),
            build_steps: steps,
            ..Default::default()
        };
        let out = build_output_from(&reported, "r/shop".into(), state::RunSpec::default()).unwrap();
        assert_eq!(out.build_steps.len(), MAX_BUILD_STEPS, "the rest dropped");
        let long = &out.build_steps[0].name;
        assert_eq!(long.chars().count(), MAX_STEP_NAME_CHARS);
        assert!(long.starts_with("[1/300] RUN éé") && long.ends_with("é…"), "{long}");
        let exact = &out.build_steps[1].name;
        assert_eq!(exact.chars().count(), MAX_STEP_NAME_CHARS, "{exact}");
        assert!(exact.starts_with("[2/300] RUN a b") && exact.ends_with('x'), "not cut: {exact}");
        let last = &out.build_steps[MAX_BUILD_STEPS - 1];
        assert_eq!((last.name.as_str(), last.cached, last.duration_ms), ("[200/300] RUN make", true, 200));
        // Back on the wire as recorded.
        let wire = build_output(&out);
        assert_eq!(wire.build_steps.len(), MAX_BUILD_STEPS);
        assert_eq!(wire.build_steps[199].name, "[200/300] RUN make");
    }

    #[test]
    fn reported_changed_paths_are_bounded_and_printable() {
        let reported = |paths: Vec<String>, unknown: bool| pb::BuildOutput {
            digest: format!("sha256:{}", "a".repeat(64)),
            changed_paths: Some(pb::ChangedPaths {
                since: format!("{}\x1b", "ab".repeat(40)),
                paths,
                truncated: false,
                unknown,
            }),
            ..Default::default()
        };
        let many: Vec<String> = (0..1500).map(|i| format!("src/f{i}.py")).collect();
        let out = build_output_from(&reported(many, false), "r/shop".into(), Default::default()).unwrap();
        let c = out.changed_paths.clone().unwrap();
        assert_eq!(
            (c.paths.len(), c.truncated, c.unknown),
            (slipway_proto::validate::MAX_CHANGED_PATHS, true, false)
        );
        assert_eq!(c.since, "ab".repeat(32), "hex only, at most 64");
        assert_eq!(build_output(&out).changed_paths.unwrap().paths.len(), c.paths.len(), "back on the wire");
        let odd = vec!["a\nb.py".to_string()];
        let out = build_output_from(&reported(odd, false), "r/shop".into(), Default::default()).unwrap();
        assert_eq!(out.changed_paths.unwrap().paths, vec!["a b.py".to_string()]);
        let out = build_output_from(&reported(vec!["x".into()], true), "r/shop".into(), Default::default())
            .unwrap();
        assert_eq!(out.changed_paths.unwrap().paths, Vec::<String>::new(), "unknown lists nothing");
        let none = pb::BuildOutput { digest: format!("sha256:{}", "a".repeat(64)), ..Default::default() };
        assert_eq!(
            build_output_from(&none, "r/shop".into(), Default::default()).unwrap().changed_paths,
            None
        );
    }

    #[test]
    fn a_build_recorded_before_build_steps_reads_with_none() {
        // No steps are written, as a record of an older scheduler has none.
        let old = serde_json::to_string(&state::BuildOutput::default()).unwrap();
        assert!(!old.contains("build_steps"), "{old}");
        let out: Result<state::BuildOutput, _> = serde_json::from_str(&old);
        assert!(out.as_ref().is_ok_and(|o| o.build_steps.is_empty()), "{out:?}");
    }

    #[test]
    fn a_healthcheck_survives_the_wire_and_an_empty_one_is_none() {
        let hc = state::Healthcheck {
            cmd: vec!["CMD".into(), "/bin/check".into()],
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(1500),
            retries: 3,
            start_period: Duration::ZERO,
        };
        let wire = healthcheck(&hc);
        assert_eq!(
            (wire.interval_ms, wire.timeout_ms, wire.retries, wire.start_period_ms),
            (5000, 1500, 3, 0)
        );
        assert_eq!(healthcheck_from(&wire), hc);
        let run = pb::RunSpec { healthcheck: Some(pb::Healthcheck::default()), ..Default::default() };
        assert_eq!(run_spec_from(&run).healthcheck, None);
    }
}
