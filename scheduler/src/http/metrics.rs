//! The scheduler's Prometheus metrics: a writer for the text exposition format
//! ([`Exposition`]), and [`render`], which turns an [`Overview`] (taken once per scrape) into the
//! `/metrics` page.
//!
//! Names and meanings (every family carries HELP and TYPE lines):
//!
//! ```text
//! slipway_scheduler_info{member_id,version} 1
//! slipway_raft_is_leader, slipway_raft_role{role}, slipway_raft_term, slipway_raft_leader_id,
//! slipway_raft_last_log_index, slipway_raft_commit_index, slipway_raft_last_applied,
//! slipway_raft_snapshot_index, slipway_raft_purged_index, slipway_raft_members, slipway_raft_voters,
//! slipway_raft_member_matched_index{member_id}           (leader only)
//! slipway_apps, slipway_nodes, slipway_builds{state}, slipway_build_queue_length,
//! slipway_build_queue_oldest_seconds, slipway_placement_decisions_total{outcome}
//! slipway_node_info{node,node_id}, slipway_node_draining{node,node_id}       (every member)
//! slipway_node_status{node,node_id,status}, slipway_node_build_fs_*_bytes, slipway_node_cpus,
//! slipway_node_cpu_usage_percent, slipway_node_load1, slipway_node_memory_*_bytes,
//! slipway_node_running_builds, slipway_node_build_slots, slipway_node_cache_bytes,
//! slipway_node_engine_healthy, slipway_node_last_report_age_seconds      (leader only)
//! slipway_report_delay_seconds (histogram)
//! ```
//!
//! Node reports and liveness are the leader's memory (see `fleet.rs`): a follower
//! exports the replicated node records (`slipway_node_info`, `slipway_node_draining`)
//! and none of the report gauges, so a dashboard summing over members counts each node
//! once. The HELP lines say so.

use std::fmt::Write as _;

use super::overview::Overview;
use crate::fleet::ReportDelays;
use crate::placement::Liveness;
use crate::state::BuildState;

/// The kind of a metric family, as its `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes the Prometheus text exposition format (version 0.0.4): each family opens with
/// its HELP and TYPE lines, then its samples; label values and help text are escaped.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    /// Opens a family. Its samples must follow before the next family opens.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name), "bad metric name {name:?}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample of the family opened last (`name` may carry a histogram's
    /// `_bucket`/`_sum`/`_count` suffix).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                debug_assert!(valid_label_name(key), "bad label name {key:?}");
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label_value(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// `\`, `"` and newlines escaped, as label values need.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as Prometheus spells it (`NaN`, `+Inf`, `-Inf`, or a Go-parsable float).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// `^[a-zA-Z_:][a-zA-Z0-9_:]*$`
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `^[a-zA-Z_][a-zA-Z0-9_]*$`
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Build states in the order `slipway_builds{state}` lists them.
const BUILD_STATES: [BuildState; 6] = [
    BuildState::Queued,
    BuildState::Assigned,
    BuildState::Running,
    BuildState::Pushed,
    BuildState::Failed,
    BuildState::Cancelled,
];

const LEADER_ONLY: &str =
    "Exported by the leader only: node reports and liveness live in its memory, followers have none.";

/// The `/metrics` page for an overview of this member.
pub fn render(o: &Overview) -> String {
    let mut e = Exposition::default();
    let member = o.raft.member_id.to_string();
    e.family("slipway_scheduler_info", Kind::Gauge, "This scheduler: its raft member id and version.")
        .sample(
            "slipway_scheduler_info",
            &[("member_id", &member), ("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
    write_raft(&mut e, o);
    write_builds(&mut e, o);
    write_nodes(&mut e, o);
    write_report_delays(&mut e, &o.report_delays);
    e.finish()
}

fn write_raft(e: &mut Exposition, o: &Overview) {
    let r = &o.raft;
    let bool_f = |b: bool| if b { 1.0 } else { 0.0 };
    e.single("slipway_raft_is_leader", Kind::Gauge, "1 if this member leads the cluster.", bool_f(o.leading));
    e.family("slipway_raft_role", Kind::Gauge, "This member's raft role (1 for the current one).");
    for role in ["leader", "candidate", "follower", "learner", "shutdown"] {
        e.sample("slipway_raft_role", &[("role", role)], bool_f(r.role == role));
    }
    e.single("slipway_raft_term", Kind::Gauge, "Current raft term.", r.term as f64);
    e.single(
        "slipway_raft_leader_id",
        Kind::Gauge,
        "Member id of the leader this member knows (0: none).",
        r.leader_id.unwrap_or(0) as f64,
    );
    e.single(
        "slipway_raft_last_log_index",
        Kind::Gauge,
        "Index of the last entry in this member's log.",
        r.last_log_index as f64,
    );
    if let Some(committed) = r.commit_index {
        e.single(
            "slipway_raft_commit_index",
            Kind::Gauge,
            "Index of the last entry this member knows committed by a quorum.",
            committed as f64,
        );
    }
    e.single(
        "slipway_raft_last_applied",
        Kind::Gauge,
        "Index of the last entry applied to this member's state.",
        r.last_applied as f64,
    );
    e.single(
        "slipway_raft_snapshot_index",
        Kind::Gauge,
        "Last log index included in this member's snapshot (0: none).",
        r.snapshot_index as f64,
    );
    e.single(
        "slipway_raft_purged_index",
        Kind::Gauge,
        "Last log index purged from this member's log (0: none).",
        r.purged_index as f64,
    );
    e.single(
        "slipway_raft_members",
        Kind::Gauge,
        "Cluster members, voters and learners.",
        r.members.len() as f64,
    );
    let voters = r.members.iter().filter(|m| m.voter).count();
    e.single("slipway_raft_voters", Kind::Gauge, "Voting cluster members.", voters as f64);
    if o.leading {
        e.family(
            "slipway_raft_member_matched_index",
            Kind::Gauge,
            "Last log index the leader knows each member holds. Exported by the leader only.",
        );
        for m in &r.members {
            let id = m.id.to_string();
            e.sample(
                "slipway_raft_member_matched_index",
                &[("member_id", &id)],
                m.matched.unwrap_or(0) as f64,
            );
        }
    }
}

fn write_builds(e: &mut Exposition, o: &Overview) {
    e.single("slipway_apps", Kind::Gauge, "Apps.", o.apps.len() as f64);
    e.single("slipway_nodes", Kind::Gauge, "Registered nodes.", o.nodes.len() as f64);
    e.family("slipway_builds", Kind::Gauge, "Builds by state (as applied on this member).");
    for state in BUILD_STATES {
        e.sample("slipway_builds", &[("state", &format!("{state:?}"))], o.builds_in(state) as f64);
    }
    e.single(
        "slipway_build_queue_length",
        Kind::Gauge,
        "Builds waiting for a node (queued).",
        o.builds_in(BuildState::Queued) as f64,
    );
    e.single(
        "slipway_build_queue_oldest_seconds",
        Kind::Gauge,
        "How long the oldest queued build has waited (0: none waits).",
        o.oldest_queued_ms.map_or(0.0, |ms| o.now_ms.saturating_sub(ms) as f64 / 1000.0),
    );
    let (placed, no_node) = o.placements;
    e.family(
        "slipway_placement_decisions_total",
        Kind::Counter,
        "Placement decisions this member took as leader since it started: placed (a node took the build) \
         or no_node (no node could take it; the build waits and is tried again about every second).",
    )
    .sample("slipway_placement_decisions_total", &[("outcome", "placed")], placed as f64)
    .sample("slipway_placement_decisions_total", &[("outcome", "no_node")], no_node as f64);
}

/// One gauge family over the nodes that have a report (leader only).
fn node_gauge(
    e: &mut Exposition,
    o: &Overview,
    name: &str,
    help: &str,
    value: impl Fn(&slipway_proto::NodeReport) -> f64,
) {
    e.family(name, Kind::Gauge, &format!("{help} {LEADER_ONLY}"));
    for n in &o.nodes {
        if let Some(report) = n.soft.as_ref().and_then(|s| s.report.as_ref()) {
            e.sample(name, &[("node", &n.record.name), ("node_id", &n.record.id)], value(report));
        }
    }
}

fn write_nodes(e: &mut Exposition, o: &Overview) {
    e.family(
        "slipway_node_info",
        Kind::Gauge,
        "Registered nodes (replicated: every member exports them), always 1.",
    );
    for n in &o.nodes {
        e.sample("slipway_node_info", &[("node", &n.record.name), ("node_id", &n.record.id)], 1.0);
    }
    e.family("slipway_node_draining", Kind::Gauge, "1 if the node is draining (takes no new builds).");
    for n in &o.nodes {
        let v = if n.record.draining { 1.0 } else { 0.0 };
        e.sample("slipway_node_draining", &[("node", &n.record.name), ("node_id", &n.record.id)], v);
    }
    if !o.leading {
        return;
    }
    e.family(
        "slipway_node_status",
        Kind::Gauge,
        &format!("Node liveness as the leader sees it (1 for the current status). {LEADER_ONLY}"),
    );
    for n in &o.nodes {
        let Some(soft) = &n.soft else { continue };
        for (status, l) in
            [("ready", Liveness::Ready), ("down", Liveness::Down), ("unknown", Liveness::Unknown)]
        {
            let v = if soft.liveness == l { 1.0 } else { 0.0 };
            e.sample(
                "slipway_node_status",
                &[("node", &n.record.name), ("node_id", &n.record.id), ("status", status)],
                v,
            );
        }
    }
    e.family(
        "slipway_node_last_report_age_seconds",
        Kind::Gauge,
        &format!("Seconds since the node's last report reached the leader. {LEADER_ONLY}"),
    );
    for n in &o.nodes {
        if let Some(age) = n.soft.as_ref().and_then(|s| s.last_report_age) {
            e.sample(
                "slipway_node_last_report_age_seconds",
                &[("node", &n.record.name), ("node_id", &n.record.id)],
                age.as_secs_f64(),
            );
        }
    }
    node_gauge(
        e,
        o,
        "slipway_node_build_fs_available_bytes",
        "Free bytes on the node's build filesystem.",
        |r| r.build_fs_available_bytes as f64,
    );
    node_gauge(e, o, "slipway_node_build_fs_total_bytes", "Size of the node's build filesystem.", |r| {
        r.build_fs_total_bytes as f64
    });
    node_gauge(e, o, "slipway_node_cpus", "CPUs of the node.", |r| f64::from(r.cpu_count));
    node_gauge(e, o, "slipway_node_cpu_usage_percent", "CPU use of the whole node, 0-100.", |r| {
        f64::from(r.cpu_usage_percent)
    });
    node_gauge(e, o, "slipway_node_load1", "Load average over 1 minute.", |r| r.load_1m);
    node_gauge(e, o, "slipway_node_memory_total_bytes", "Memory of the node.", |r| {
        r.memory_total_bytes as f64
    });
    node_gauge(e, o, "slipway_node_memory_available_bytes", "Memory available on the node.", |r| {
        r.memory_available_bytes as f64
    });
    node_gauge(e, o, "slipway_node_running_builds", "Builds the agent runs, by its last report.", |r| {
        f64::from(r.running_builds)
    });
    node_gauge(e, o, "slipway_node_build_slots", "Builds the agent runs at once, at most.", |r| {
        f64::from(r.build_slots)
    });
    node_gauge(
        e,
        o,
        "slipway_node_cache_bytes",
        "Bytes held by slipway's images on the node's engine.",
        |r| r.cache_bytes as f64,
    );
    node_gauge(
        e,
        o,
        "slipway_node_engine_healthy",
        "1 if the node's Docker engine answers its agent.",
        |r| {
            if r.docker_healthy {
                1.0
            } else {
                0.0
            }
        },
    );
}

/// `slipway_report_delay_seconds`: how late agent reports reach this member (its clock
/// minus the agent's send time), as a Prometheus histogram.
fn write_report_delays(e: &mut Exposition, d: &ReportDelays) {
    let name = "slipway_report_delay_seconds";
    e.family(name, Kind::Histogram, "How late agent reports reach this scheduler (includes clock skew).");
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (bound, count) in ReportDelays::BOUNDS.iter().zip(d.counts) {
        cumulative += count;
        e.sample(&bucket, &[("le", &format_value(*bound))], cumulative as f64);
    }
    e.sample(&bucket, &[("le", "+Inf")], d.count() as f64);
    e.sample(&format!("{name}_sum"), &[], d.sum_seconds);
    e.sample(&format!("{name}_count"), &[], d.count() as f64);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use slipway_proto::NodeReport;

    use super::*;
    use crate::fleet::NodeSoftState;
    use crate::http::overview::{MemberRow, NodeRow, RaftOverview};
    use crate::state::NodeRecord;
    use slipway_testkit::exposition::{check, Sample};

    fn node(id: &str, name: &str, report: Option<NodeReport>) -> NodeRow {
        NodeRow {
            record: NodeRecord {
                id: id.into(),
                name: name.into(),
                labels: BTreeMap::new(),
                draining: false,
                registered_at_ms: 0,
            },
            soft: Some(NodeSoftState {
                liveness: if report.is_some() { Liveness::Ready } else { Liveness::Unknown },
                last_report_age: report.as_ref().map(|_| Duration::from_millis(1500)),
                report,
                connected: true,
                refusal: None,
            }),
            assigned: 0,
        }
    }

    fn overview(leading: bool) -> Overview {
        let report = NodeReport {
            build_fs_total_bytes: 100 << 30,
            build_fs_available_bytes: 40 << 30,
            cpu_count: 4,
            cpu_usage_percent: f32::NAN,
            load_1m: 0.5,
            memory_total_bytes: 8 << 30,
            memory_available_bytes: 6 << 30,
            build_slots: 2,
            running_builds: 1,
            cache_bytes: 123,
            docker_healthy: true,
            ..Default::default()
        };
        let mut nodes = vec![
            node("n-1", "plain", Some(report.clone())),
            node("n-2", "we\"ird\\na\nme", Some(report)),
            node("n-3", "silent", None),
        ];
        nodes[2].record.draining = true;
        if !leading {
            for n in &mut nodes {
                n.soft = None;
            }
        }
        let mut delays = ReportDelays::default();
        delays.counts[0] = 3;
        delays.sum_seconds = 0.002;
        Overview {
            now_ms: 10_000,
            leading,
            raft: RaftOverview {
                member_id: 1,
                role: if leading { "leader" } else { "follower" }.into(),
                term: 3,
                leader_id: Some(1),
                leader_addr: Some("10.0.0.1:7400".into()),
                last_log_index: 42,
                commit_index: Some(42),
                last_applied: 41,
                snapshot_index: 0,
                purged_index: 0,
                members: vec![
                    MemberRow { id: 1, addr: "10.0.0.1:7400".into(), voter: true, matched: Some(42) },
                    MemberRow { id: 2, addr: "10.0.0.2:7400".into(), voter: false, matched: None },
                ],
            },
            nodes,
            builds_by_state: [2, 0, 0, 5, 0, 0],
            oldest_queued_ms: Some(4_000),
            apps: Vec::new(),
            recent_builds: Vec::new(),
            recent_releases: Vec::new(),
            placements: (7, 11),
            report_delays: delays,
        }
    }

    fn find<'a>(samples: &'a [Sample], name: &str, node: &str) -> Option<&'a Sample> {
        samples.iter().find(|s| s.name == name && s.label("node").is_none_or(|n| n == node))
    }

    #[test]
    fn the_leaders_text_parses_back_with_every_family_typed() {
        let text = render(&overview(true));
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for s in &samples {
            assert!(valid_name(&s.name), "{s:?}");
        }
        let weird = "we\"ird\\na\nme";
        assert!(text.contains(r#"node="we\"ird\\na\nme""#), "escaped label:\n{text}");
        let fs = find(&samples, "slipway_node_build_fs_available_bytes", weird).expect("weird node's gauge");
        assert_eq!((fs.label("node_id"), fs.value), (Some("n-2"), (40u64 << 30) as f64));
        assert!(find(&samples, "slipway_node_cpu_usage_percent", "plain").unwrap().value.is_nan());
        assert_eq!(find(&samples, "slipway_node_last_report_age_seconds", "plain").unwrap().value, 1.5);
        let ready: Vec<_> = samples
            .iter()
            .filter(|s| s.name == "slipway_node_status" && s.label("status") == Some("ready"))
            .collect();
        assert_eq!(ready.iter().map(|s| s.value).collect::<Vec<_>>(), [1.0, 1.0, 0.0]);
        assert!(find(&samples, "slipway_node_cpus", "silent").is_none(), "no report, no report gauges");
        assert_eq!(find(&samples, "slipway_node_draining", "silent").unwrap().value, 1.0);
        let value = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
        assert_eq!(value("slipway_build_queue_length"), Some(2.0));
        assert_eq!(value("slipway_build_queue_oldest_seconds"), Some(6.0));
        assert_eq!(value("slipway_raft_commit_index"), Some(42.0));
        assert_eq!(value("slipway_raft_members"), Some(2.0));
        assert_eq!(value("slipway_raft_voters"), Some(1.0));
        assert_eq!(value("slipway_report_delay_seconds_count"), Some(3.0));
        let placed = samples
            .iter()
            .find(|s| s.name == "slipway_placement_decisions_total" && s.label("outcome") == Some("no_node"));
        assert_eq!(placed.map(|s| s.value), Some(11.0));
        assert!(text.contains("slipway_report_delay_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
    }

    #[test]
    fn a_follower_exports_node_records_without_report_gauges() {
        let text = render(&overview(false));
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: std::collections::BTreeSet<_> = samples.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains("slipway_node_info") && names.contains("slipway_node_draining"));
        assert_eq!(samples.iter().filter(|s| s.name == "slipway_node_info").count(), 3);
        for name in names {
            assert!(
                !name.starts_with("slipway_node_")
                    || name == "slipway_node_info"
                    || name == "slipway_node_draining",
                "{name} on a follower"
            );
            assert_ne!(name, "slipway_raft_member_matched_index");
        }
        assert!(samples
            .iter()
            .any(|s| s.name == "slipway_raft_role" && s.label("role") == Some("follower") && s.value == 1.0));
    }

    #[test]
    fn values_are_spelled_as_prometheus_does() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1e21), "1000000000000000000000");
    }
}
