//! How the CLI prints: aligned tables for people, `--json` for programs. JSON field
//! names are part of the CLI's contract.

use serde_json::{json, Value};
use slipway_proto as pb;

/// Prints rows as a left-aligned table under a header.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub fn age(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let now = slipway_common::now_ms();
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

pub fn build_state(state: i32) -> &'static str {
    match pb::BuildState::try_from(state).unwrap_or_default() {
        pb::BuildState::Queued => "queued",
        pb::BuildState::Assigned => "assigned",
        pb::BuildState::Running => "running",
        pb::BuildState::Pushed => "pushed",
        pb::BuildState::Failed => "failed",
        pb::BuildState::Cancelled => "cancelled",
        pb::BuildState::Unspecified => "unknown",
    }
}

pub fn deploy_state(state: i32) -> &'static str {
    match pb::DeployState::try_from(state).unwrap_or_default() {
        pb::DeployState::Pending => "pending",
        pb::DeployState::Deployed => "deployed",
        pb::DeployState::Failed => "failed",
        pb::DeployState::Unspecified => "unknown",
    }
}

pub fn node_status(status: i32) -> &'static str {
    match pb::NodeStatus::try_from(status).unwrap_or_default() {
        pb::NodeStatus::Ready => "ready",
        pb::NodeStatus::Down => "down",
        pb::NodeStatus::Unknown | pb::NodeStatus::Unspecified => "unknown",
    }
}

pub fn app_json(a: &pb::App) -> Value {
    json!({
        "name": a.name, "repo": a.repo, "branch": a.branch, "service": a.service,
        "current_release": a.current_release, "created_at_ms": a.created_at_ms, "urls": a.urls,
    })
}

fn output_json(o: &pb::BuildOutput) -> Value {
    let t = o.timings.unwrap_or_default();
    json!({
        "git_sha": o.git_sha, "digest": o.digest, "repository": o.repository,
        "image_size_bytes": o.image_size_bytes, "layers_pushed": o.layers_pushed,
        "layers_reused": o.layers_reused, "bytes_pushed": o.bytes_pushed,
        "cache_hits": o.cache_hits, "steps": o.steps,
        "build_steps": o.build_steps.iter().map(|s| json!({
            "name": s.name, "cached": s.cached, "duration_ms": s.duration_ms,
        })).collect::<Vec<_>>(),
        "timings_ms": { "clone": t.clone_ms, "context": t.context_ms, "build": t.build_ms, "push": t.push_ms },
        "changed_paths": o.changed_paths.as_ref().map(|c| json!({
            "since": c.since, "paths": c.paths, "truncated": c.truncated, "unknown": c.unknown,
        })),
    })
}

pub fn build_json(b: &pb::Build) -> Value {
    json!({
        "id": b.id, "app": b.app, "git_ref": b.git_ref, "no_cache": b.no_cache,
        "state": build_state(b.state), "node_id": b.node_id, "attempt": b.attempt,
        "created_at_ms": b.created_at_ms, "finished_at_ms": b.finished_at_ms,
        "error": b.error, "release": b.release,
        "output": b.output.as_ref().map(output_json),
        "waiting_on": b.waiting_on.iter().map(|r| json!({"node_id": r.node_id, "node": r.node_name, "reason": r.reason})).collect::<Vec<_>>(),
        "cache_doctor": b.cache_doctor.as_ref().map(|d| json!({
            "step": d.step, "cause": d.cause, "changed_paths": d.changed_paths,
            "changed_paths_truncated": d.changed_paths_truncated,
            "rebuilt_steps": d.rebuilt_steps, "seconds": d.seconds,
            "bytes_pushed": d.bytes_pushed,
            "advice": (!d.advice.is_empty()).then_some(&d.advice),
        })),
    })
}

/// The cache doctor's finding as `builds show` prints it: a short paragraph.
pub fn cache_doctor_lines(d: &pb::CacheDoctor) -> Vec<String> {
    let mut lines = vec![
        format!("cache doctor: `{}` was rebuilt ({}),", d.step, d.cause),
        format!(
            "  and {} step(s) from it on: {:.1}s, {} pushed",
            d.rebuilt_steps,
            d.seconds,
            slipway_proto::human_bytes(d.bytes_pushed)
        ),
    ];
    if !d.changed_paths.is_empty() {
        lines.push(format!(
            "  changed files it copies: {}",
            slipway_proto::changed_paths_text(&d.changed_paths, d.changed_paths_truncated)
        ));
    }
    if !d.advice.is_empty() {
        lines.push(format!("  advice: {}", d.advice));
    }
    lines
}

pub fn release_json(r: &pb::Release) -> Value {
    json!({
        "app": r.app, "number": r.number, "digest": r.digest, "image": r.image,
        "git_sha": r.git_sha, "build_id": r.build_id, "node": r.node,
        "created_at_ms": r.created_at_ms,
        "rollback_of": (r.rollback_of != 0).then_some(r.rollback_of),
        "deploy_state": deploy_state(r.deploy_state), "deploy_error": r.deploy_error,
        "bytes_pushed": r.bytes_pushed,
        "change": (!r.change.is_empty()).then_some(&r.change),
        "replicas": r.replicas, "config_keys": r.config_keys,
        "secrets": r.secrets.iter().map(|s| json!({"name": s.name, "version": s.version})).collect::<Vec<_>>(),
        "collected": r.collected, "rollbackable": r.rollbackable,
    })
}

pub fn node_json(n: &pb::Node) -> Value {
    let r = n.report.clone().unwrap_or_default();
    json!({
        "id": n.id, "name": n.name, "status": node_status(n.status), "draining": n.draining,
        "build_fs_available_bytes": r.build_fs_available_bytes,
        "build_fs_total_bytes": r.build_fs_total_bytes,
        // 0 unless a build ran out of space there: no builds until that much is free.
        "build_fs_floor_bytes": r.build_fs_floor_bytes,
        "build_fs_floor_reason": (!r.build_fs_floor_reason.is_empty()).then_some(&r.build_fs_floor_reason),
        "cpu_count": r.cpu_count, "cpu_usage_percent": r.cpu_usage_percent, "load_1m": r.load_1m,
        "memory_total_bytes": r.memory_total_bytes, "memory_available_bytes": r.memory_available_bytes,
        "running_builds": r.running_builds, "build_slots": r.build_slots,
        "cache_bytes": r.cache_bytes, "cached_apps": r.cached_apps,
        "docker_healthy": r.docker_healthy, "docker_version": r.docker_version,
        "builder": r.builder,
        "agent_version": r.agent_version, "last_report_age_ms": n.last_report_age_ms,
    })
}

pub fn short_digest(d: &str) -> String {
    d.strip_prefix("sha256:")
        .map(|h| format!("sha256:{}", &h[..h.len().min(12)]))
        .unwrap_or_else(|| d.to_string())
}

/// What `apps logs` puts before each line: `<app>.<slot>.<task id, 12>@<node>`, as `docker
/// service logs` names a task.
pub fn log_prefix(app: &str, l: &pb::AppLogLine) -> String {
    let task: String = l.task_id.chars().take(12).collect();
    let node = if l.node.is_empty() { "?" } else { l.node.as_str() };
    format!("{app}.{}.{task}@{node}", l.slot)
}

/// How a release runs, in one line: replicas, port, published port, domains, constraints,
/// volumes and the names (not values) of its environment.
pub fn run_summary(r: &pb::RunSpec) -> String {
    let mut parts = vec![format!("{} replica{}", r.replicas, if r.replicas == 1 { "" } else { "s" })];
    if r.port != 0 {
        parts.push(format!("port {}", r.port));
    }
    if r.publish != 0 {
        parts.push(format!("published on {}", r.publish));
    }
    if !r.domains.is_empty() {
        parts.push(format!("domains {}", r.domains.join(", ")));
    }
    if !r.constraints.is_empty() {
        parts.push(format!("constraints {}", r.constraints.join(", ")));
    }
    if !r.persist.is_empty() {
        parts.push(format!("persist {}", r.persist.join(", ")));
    }
    if !r.env.is_empty() {
        let mut names: Vec<&str> = r.env.keys().map(String::as_str).collect();
        names.sort_unstable();
        parts.push(format!("env {}", names.join(", ")));
    }
    parts.join("; ")
}

fn run_json(r: &pb::RunSpec) -> Value {
    let mut env: Vec<&String> = r.env.keys().collect();
    env.sort_unstable();
    json!({
        "replicas": r.replicas, "port": r.port, "publish": r.publish, "domains": r.domains,
        "constraints": r.constraints, "persist": r.persist, "env_names": env,
        "healthcheck": r.healthcheck.as_ref().is_some_and(|h| !h.cmd.is_empty()),
    })
}

pub fn task_json(t: &pb::AppTask) -> Value {
    json!({
        "id": t.id, "slot": t.slot, "node": t.node, "node_id": t.node_id, "state": t.state,
        "desired_state": t.desired_state, "release": t.release, "since_ms": t.since_ms,
        "error": t.error, "message": t.message, "image": t.image,
    })
}

/// `apps show --json`: the app's fields (as `apps list --json`), its current release with
/// how it runs, replicas, and its tasks.
pub fn app_status_json(s: &pb::AppStatusResponse) -> Value {
    let mut v = s.app.as_ref().map(app_json).unwrap_or_else(|| json!({}));
    let current = s.current.as_ref().map(|r| {
        let mut rj = release_json(r);
        rj["run"] = r.run.as_ref().map(run_json).unwrap_or(Value::Null);
        rj
    });
    v["release"] = current.unwrap_or(Value::Null);
    v["deployed"] = json!(s.deployed);
    v["replicas"] = json!({ "desired": s.desired_replicas, "running": s.running_replicas });
    v["tasks"] = Value::Array(s.tasks.iter().map(task_json).collect());
    v["config_keys"] = json!(s.config_keys);
    v["secret_names"] = json!(s.secret_names);
    v["scaled_replicas"] = if s.scaled_replicas == 0 { Value::Null } else { json!(s.scaled_replicas) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_is_prefixed_with_its_task_and_node() {
        let line = pb::AppLogLine {
            task_id: "x3k9a8b1c2d4e5f6g7h8".into(),
            slot: 2,
            node: "worker-1".into(),
            line: "hello".into(),
            ..Default::default()
        };
        assert_eq!(log_prefix("shop", &line), "shop.2.x3k9a8b1c2d4@worker-1");
        let unplaced = pb::AppLogLine { task_id: "short".into(), slot: 1, ..Default::default() };
        assert_eq!(log_prefix("shop", &unplaced), "shop.1.short@?");
    }

    #[test]
    fn the_cache_doctor_is_a_paragraph_and_json() {
        let d = pb::CacheDoctor {
            step: "[3/5] COPY . .".into(),
            cause: "files it copies changed since the previous build".into(),
            rebuilt_steps: 3,
            seconds: 50.3,
            bytes_pushed: 2_000_000,
            advice: "copy the lockfile first".into(),
            ..Default::default()
        };
        let lines = cache_doctor_lines(&d);
        assert_eq!(
            lines[0],
            "cache doctor: `[3/5] COPY . .` was rebuilt (files it copies changed since the previous build),"
        );
        assert!(lines[1].contains("3 step(s) from it on: 50.3s"), "{}", lines[1]);
        assert_eq!(lines.last().map(String::as_str), Some("  advice: copy the lockfile first"));
        assert_eq!(lines.len(), 3, "no changed paths known: no line for them");
        let b = pb::Build { cache_doctor: Some(d.clone()), ..Default::default() };
        let j = build_json(&b);
        assert_eq!(j["cache_doctor"]["step"], "[3/5] COPY . .");
        assert_eq!(j["cache_doctor"]["rebuilt_steps"], 3);
        assert_eq!(build_json(&pb::Build::default())["cache_doctor"], Value::Null);
        // The changed files: all of them in the JSON, the first ten in the text.
        let paths: Vec<String> = (0..12).map(|i| format!("src/f{i}.py")).collect();
        let d = pb::CacheDoctor { changed_paths: paths.clone(), changed_paths_truncated: true, ..d };
        let lines = cache_doctor_lines(&d);
        assert!(lines[2].starts_with("  changed files it copies: src/f0.py, src/f1.py,"), "{}", lines[2]);
        assert!(lines[2].ends_with("src/f9.py, and 2+ more"), "{}", lines[2]);
        let j = build_json(&pb::Build { cache_doctor: Some(d), ..Default::default() });
        assert_eq!(j["cache_doctor"]["changed_paths"].as_array().map(Vec::len), Some(12));
        assert_eq!(j["cache_doctor"]["changed_paths_truncated"], true);
    }

    #[test]
    fn run_summary_names_env_keys_not_values() {
        let run = pb::RunSpec {
            replicas: 2,
            port: 8080,
            env: [("GREETING".to_owned(), "hi".to_owned()), ("A".to_owned(), "secret".to_owned())].into(),
            ..Default::default()
        };
        let s = run_summary(&run);
        assert_eq!(s, "2 replicas; port 8080; env A, GREETING");
        assert_eq!(run_json(&run)["env_names"], json!(["A", "GREETING"]));
    }
}
