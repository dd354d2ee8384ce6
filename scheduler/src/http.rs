//! The scheduler's HTTP side: `/healthz` (the process runs), `/readyz` (a leader is
//! known, so writes can be served), `/metrics` (Prometheus text format).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::server::Shared;
use crate::state::BuildState;

/// Routes of the HTTP side.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(AxState(shared): AxState<Arc<Shared>>) -> (StatusCode, String) {
    match shared.raft.metrics().borrow().current_leader {
        Some(leader) => (StatusCode::OK, format!("ready: leader is member {leader}\n")),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader elected\n".into()),
    }
}

async fn metrics(AxState(shared): AxState<Arc<Shared>>) -> String {
    let m = shared.raft.metrics().borrow().clone();
    let mut out = String::new();
    let leader = i32::from(shared.is_leader());
    let _ = writeln!(out, "# HELP slipway_raft_is_leader 1 if this member leads the cluster.");
    let _ = writeln!(out, "# TYPE slipway_raft_is_leader gauge\nslipway_raft_is_leader {leader}");
    let _ = writeln!(out, "# TYPE slipway_raft_term gauge\nslipway_raft_term {}", m.current_term);
    let applied = m.last_applied.map_or(0, |l| l.index);
    let _ = writeln!(out, "# TYPE slipway_raft_last_applied gauge\nslipway_raft_last_applied {applied}");
    let counts = shared.read(|s| {
        let mut counts = [0u64; 6];
        for b in s.builds.values() {
            counts[b.state as usize] += 1;
        }
        (counts, s.apps.len(), s.nodes.len())
    });
    let _ = writeln!(out, "# HELP slipway_builds Builds by state.\n# TYPE slipway_builds gauge");
    let states = [
        BuildState::Queued,
        BuildState::Assigned,
        BuildState::Running,
        BuildState::Pushed,
        BuildState::Failed,
        BuildState::Cancelled,
    ];
    for state in states {
        let _ = writeln!(out, "slipway_builds{{state=\"{state:?}\"}} {}", counts.0[state as usize]);
    }
    write_report_delays(&mut out, &shared.fleet.report_delays());
    let _ = writeln!(out, "# TYPE slipway_apps gauge\nslipway_apps {}", counts.1);
    let _ = writeln!(out, "# TYPE slipway_nodes gauge\nslipway_nodes {}", counts.2);
    out
}

/// `slipway_report_delay_seconds`: how late agent reports reach this member (its clock
/// minus the agent's send time), as a Prometheus histogram.
fn write_report_delays(out: &mut String, d: &crate::agents::ReportDelays) {
    let _ = writeln!(
        out,
        "# HELP slipway_report_delay_seconds How late agent reports reach this scheduler (includes clock skew).\n\
         # TYPE slipway_report_delay_seconds histogram"
    );
    let mut cumulative = 0;
    for (bound, count) in crate::agents::ReportDelays::BOUNDS.iter().zip(d.counts) {
        cumulative += count;
        let _ = writeln!(out, "slipway_report_delay_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "slipway_report_delay_seconds_bucket{{le=\"+Inf\"}} {}", d.count());
    let _ = writeln!(out, "slipway_report_delay_seconds_sum {}", d.sum_seconds);
    let _ = writeln!(out, "slipway_report_delay_seconds_count {}", d.count());
}
